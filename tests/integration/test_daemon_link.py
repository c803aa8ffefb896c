"""Taking wgpyd's interface down and up again, as wireguard-go and Linux handle it: down erases every session and
refuses traffic; up brings the tunnel back (at once with a persistent keepalive, else on the next packet)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.test_daemon_lab import WGPYD, WIREGUARD_GO, make_pair, wait_until
from tests.netns import Lab, lab

pytestmark = pytest.mark.netns


@pytest.fixture
def netlab() -> Iterator[Lab]:
    with lab() as the_lab:
        yield the_lab


def test_link_down_erases_sessions_and_up_restores_the_tunnel(netlab: Lab) -> None:
    a, b = make_pair(netlab, WGPYD, WIREGUARD_GO)
    a.ns.wait_ping(b.inner4, 20)
    before = a.uapi("wgpy_stats=1\n\n")
    assert "errno=0" in before

    a.ns.run(["ip", "link", "set", a.iface, "down"])
    # wireguard-go still holds a session and keeps sending; wgpyd refuses it all and counts it.
    b.ns.run(["ping", "-c", "3", "-i", "0.2", "-W", "1", a.inner4], check=False)
    wait_until(lambda: "drop_link_down=0\n" not in a.uapi("wgpy_stats=1\n\n"), 10, "link-down drops counted")

    a.ns.run(["ip", "link", "set", a.iface, "up"])
    # A fresh handshake (the old session was erased) carries traffic again in both directions.
    a.ns.wait_ping(b.inner4, 20)
    b.ns.wait_ping(a.inner4, 20)
    assert "drop_decrypt_failed=0\n" in a.uapi("wgpy_stats=1\n\n")
