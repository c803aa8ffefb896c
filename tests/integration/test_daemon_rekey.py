"""A rekey on the real clock: with traffic flowing, wgpyd (the initiator) starts a new handshake once the session
is REKEY_AFTER_TIME (120 s) old, and the tunnel carries on without a gap."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest

from tests.integration.test_daemon_lab import WGPYD, WIREGUARD_GO, Node, make_pair
from tests.netns import Lab, lab

pytestmark = [pytest.mark.netns, pytest.mark.slow]


@pytest.fixture
def netlab() -> Iterator[Lab]:
    with lab() as the_lab:
        yield the_lab


def handshake_time(node: Node) -> int:
    return int(node.wg("show", node.iface, "latest-handshakes").stdout.split()[1])


def test_rekey_after_120_seconds(netlab: Lab) -> None:
    a, b = make_pair(netlab, WGPYD, WIREGUARD_GO, b_knows_a=False)
    a.ns.wait_ping(b.inner4, 20)
    first = handshake_time(a)
    assert first > 0
    started = time.monotonic()
    pinger = a.ns.run(["ping", "-c", "270", "-i", "0.5", "-W", "2", b.inner4], check=False, timeout=200)
    elapsed = time.monotonic() - started
    assert elapsed >= 130
    second = handshake_time(a)
    assert second - first >= 115, (first, second)
    assert handshake_time(b) == second or abs(handshake_time(b) - second) <= 1
    received = int(re.search(r"(\d+) received", pinger.stdout).group(1))  # type: ignore[union-attr]
    assert received >= 268, pinger.stdout  # at most a packet or two in flight during the switch
    stats = {k: v for k, v in (line.split("=") for line in a.uapi("wgpy_stats=1\n\n").splitlines() if "=" in line)}
    assert int(stats["handshakes_completed"]) >= 2
