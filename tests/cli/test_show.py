"""`wgpy show` / `wgpy showconf` against Debian `wg`, byte for byte, on live daemons in namespaces.

The daemon under test (wireguard-go, and wgpyd) runs in namespace A with several peers: two real ones
(wireguard-go in namespaces B and C, so there are real handshakes and transfer counters) and made-up ones with
and without preshared keys, IPv4/IPv6 endpoints and keepalives. Every form of `show` is run with `wg` and with
`wgpy` back to back; the comparison only counts when `wg show dump` and the wall-clock second were the same
before and after (nothing moved in between), and is retried otherwise.
"""

from __future__ import annotations

import json
import os
import pty
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import pytest

from tests.netns import Lab, Namespace, lab
from wgpy import keys
from wgpy.cli import show
from wgpy.cli.terminal import filter_ansi
from wgpy.uapi import client

WGPY = [sys.executable, "-m", "wgpy.cli.main"]
DAEMONS = ["wireguard-go", "wgpyd"]


def daemon_command(kind: str) -> list[str]:
    if kind == "wgpyd":
        exe = shutil.which("wgpyd")
        return [exe] if exe else [sys.executable, "-m", "wgpy.daemon.main"]
    return ["wireguard-go"]


def run(args: Sequence[str], env: dict[str, str] | None = None, input: str | None = None,
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=60, input=input,
                          env=None if env is None else {**os.environ, **env})


def start_daemon(ns: Namespace, kind: str, name: str) -> None:
    ns.run([*daemon_command(kind), name], env={"LOG_LEVEL": "silent"})
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if name in client.list_interfaces():
            try:
                client.get(name, timeout=2)
                return
            except OSError:
                pass
        time.sleep(0.05)
    raise AssertionError(f"{kind} did not create {name}")


def key_file(directory: str, key: bytes) -> str:
    path = os.path.join(directory, keys.to_base64(keys.public_key(key))[:8].replace("/", "_"))
    keys.write_private_key_file(path, key)
    return path


@dataclass
class Node:
    ns: Namespace
    iface: str
    private: bytes
    underlay4: str
    underlay6: str
    tunnel4: str
    tunnel6: str

    @property
    def public(self) -> bytes:
        return keys.public_key(self.private)


@dataclass
class Rig:
    lab: Lab
    kind: str
    a: Node
    others: list[Node] = field(default_factory=list)
    fake: list[bytes] = field(default_factory=list)
    tmp: str = ""


def build_rig(the_lab: Lab, kind: str, tmp: str, *, real_peers: int = 2, handshake: bool = True) -> Rig:
    """A in the middle, `real_peers` wireguard-go nodes around it, and made-up peers on A."""
    ns_a = the_lab.namespace()
    a = Node(ns_a, the_lab.interface(), keys.generate_private_key(), "198.18.0.1", "fd00:1::1", "10.0.0.1",
             "fd00:aa::1")
    rig = Rig(the_lab, kind, a, tmp=tmp)
    start_daemon(ns_a, kind, a.iface)
    for n in range(real_peers):
        ns = the_lab.namespace()
        subnet = n + 1
        the_lab.veth(ns_a, [f"198.18.{subnet}.1/24", f"fd00:{subnet}::1/64"],
                     ns, [f"198.18.{subnet}.2/24", f"fd00:{subnet}::2/64"])
        node = Node(ns, the_lab.interface(), keys.generate_private_key(), f"198.18.{subnet}.2",
                    f"fd00:{subnet}::2", f"10.0.0.{n + 2}", f"fd00:aa::{n + 2}")
        start_daemon(ns, "wireguard-go", node.iface)
        rig.others.append(node)
    if not real_peers:
        the_lab.veth(ns_a, ["198.18.1.1/24", "fd00:1::1/64"], the_lab.namespace(),
                     ["198.18.1.2/24", "fd00:1::2/64"])
    psk = keys.generate_preshared_key()
    psk_path = key_file(tmp, psk)
    run_ok(["wg", "set", a.iface, "private-key", key_file(tmp, a.private), "listen-port", "51820"])
    for n, node in enumerate(rig.others):
        args = ["wg", "set", a.iface, "peer", keys.to_base64(node.public),
                "allowed-ips", f"{node.tunnel4}/32,{node.tunnel6}/128"]
        # The first real peer over IPv4 with a preshared key, the second over IPv6 without.
        if n == 0:
            args += ["endpoint", f"{node.underlay4}:51820", "preshared-key", psk_path,
                     "persistent-keepalive", "25"]
        else:
            args += ["endpoint", f"[{node.underlay6}]:51820"]
        run_ok(args)
        back = ["wg", "set", node.iface, "private-key", key_file(tmp, node.private), "listen-port", "51820",
                "peer", keys.to_base64(a.public), "allowed-ips", f"{a.tunnel4}/32,{a.tunnel6}/128,10.9.0.0/16"]
        if n == 0:
            back += ["preshared-key", psk_path]
        run_ok(back)
        for addr in (f"{node.tunnel4}/24", f"{node.tunnel6}/64"):
            node.ns.run(["ip", "addr", "add", addr, "dev", node.iface, *(["nodad"] if ":" in addr else [])])
        node.ns.run(["ip", "link", "set", node.iface, "up"])
    # Made-up peers: never answer, send nothing (no endpoint, or no keepalive and no traffic routed to them).
    fakes = [keys.public_key(keys.generate_private_key()) for _ in range(3)]
    rig.fake = fakes
    run_ok(["wg", "set", a.iface,
            "peer", keys.to_base64(fakes[0]), "endpoint", "[fd00:1::99]:51999", "preshared-key", psk_path,
            "allowed-ips", "10.50.0.0/16,fd00:50::/64,10.70.0.0/31",
            "peer", keys.to_base64(fakes[1]), "persistent-keepalive", "3661",
            "peer", keys.to_base64(fakes[2]), "endpoint", "198.18.1.99:7", "allowed-ips", "10.60.0.1/32"])
    for addr in (f"{a.tunnel4}/24", f"{a.tunnel6}/64"):
        ns_a.run(["ip", "addr", "add", addr, "dev", a.iface, *(["nodad"] if ":" in addr else [])])
    ns_a.run(["ip", "link", "set", a.iface, "up"])
    if handshake:
        for node in rig.others:
            ns_a.wait_ping(node.tunnel4, seconds=30)
            ns_a.wait_ping(node.tunnel6, seconds=30)
    return rig


def run_ok(args: Sequence[str]) -> subprocess.CompletedProcess[str]:
    out = run(args)
    assert out.returncode == 0, f"{args}: {out.stderr}"
    return out


@pytest.fixture(params=DAEMONS)
def rig(request: pytest.FixtureRequest) -> Iterator[Rig]:
    with lab() as the_lab, tempfile.TemporaryDirectory() as tmp:
        yield build_rig(the_lab, request.param, tmp)


def snapshot(iface: str) -> tuple[int, str]:
    return int(time.time()), run(["wg", "show", iface, "dump"]).stdout


def normalise_stderr(text: str) -> str:
    return text.replace("Usage: wgpy ", "Usage: wg ").replace("wgpy: ", "wg: ")


def assert_same(iface: str, args: Sequence[str], env: dict[str, str] | None = None,
                wgpy_args: Sequence[str] | None = None) -> str:
    """Run `wgpy ARGS` and `wg ARGS` until both saw the same device; assert identical output and status.

    Counters and "ago" times move, and wireguard-go lists peers in Go map order (a random rotation per
    `get`), so a difference only fails the test when it persists over many attempts.
    """
    last = ""
    for _ in range(40):
        ours = run([*WGPY, *(args if wgpy_args is None else wgpy_args)], env=env)
        theirs = run(["wg", *args], env=env)
        if (ours.stdout, ours.returncode, normalise_stderr(ours.stderr)) == (
            theirs.stdout, theirs.returncode, theirs.stderr
        ):
            return ours.stdout
        last = f"wgpy {args} ({ours.returncode}):\n{ours.stdout}{ours.stderr}\nwg ({theirs.returncode}):\n" \
               f"{theirs.stdout}{theirs.stderr}"
    raise AssertionError(f"outputs differ:\n{last}")


FORMS = [[], *([f] for f in show.FIELDS)]


@pytest.mark.netns
def test_every_show_form_equals_wg(rig: Rig) -> None:
    iface = rig.a.iface
    text = assert_same(iface, ["show", iface])
    # The state really is the interesting one: handshakes, transfer, PSKs, both endpoint families, keepalive.
    assert "latest handshake" in text and "transfer" in text and "preshared key: (hidden)" in text
    assert "endpoint: [fd00:" in text and "every 1 hour, 1 minute, 1 second" in text
    for form in FORMS:
        assert_same(iface, ["show", iface, *form])
    for env in ({"WG_HIDE_KEYS": "never"}, {"WG_COLOR_MODE": "always"},
                {"WG_COLOR_MODE": "always", "WG_HIDE_KEYS": "never"}, {"WG_COLOR_MODE": "never"}):
        coloured = assert_same(iface, ["show", iface], env=env)
        if env.get("WG_COLOR_MODE") == "always":
            assert "\x1b[" in coloured
    assert_same(iface, ["showconf", iface])
    # Each real peer is shown in its own namespace's daemon too (wireguard-go: the reference's own view).
    for node in rig.others:
        assert_same(node.iface, ["show", node.iface])
        assert_same(node.iface, ["showconf", node.iface])


@pytest.mark.netns
def test_peer_order_is_by_latest_handshake(rig: Rig) -> None:
    iface = rig.a.iface
    text = assert_same(iface, ["show", iface])
    order = [line.split(": ", 1)[1] for line in text.splitlines() if line.startswith("peer: ")]
    state = client.get(iface)
    handshaken = sorted((p for p in state.peers if p.last_handshake != (0, 0)), key=lambda p: p.last_handshake,
                        reverse=True)
    assert len(handshaken) == 2
    assert order[:2] == [keys.to_base64(p.public_key) for p in handshaken]
    assert sorted(order) == sorted(keys.to_base64(p.public_key) for p in state.peers)
    # The single fields and dump keep the daemon's order (for wireguard-go, Go map order).
    listed = assert_same(iface, ["show", iface, "peers"]).split()
    assert sorted(listed) == sorted(order)


def test_sort_peers_like_show_c() -> None:
    def peer(n: int, hs: tuple[int, int]) -> client.PeerState:
        return client.PeerState(public_key=bytes([n]) * 32, last_handshake=hs)

    peers = [peer(1, (0, 0)), peer(2, (10, 5)), peer(3, (0, 7)), peer(4, (10, 9)), peer(5, (0, 0)),
             peer(6, (11, 0))]
    assert [p.public_key[0] for p in show.sort_peers(peers)] == [6, 4, 2, 3, 1, 5]


def only(text: str, mine: set[str], pretty: bool) -> str:
    """The parts of `show all` output that belong to our interfaces (others' daemons come and go)."""
    if pretty:
        blocks = text.split("\n\ninterface: ")
        blocks = [b if i == 0 else "interface: " + b for i, b in enumerate(blocks)]
        return "\n\n".join(b.rstrip("\n") for b in blocks if b.split("\n", 1)[0].split(": ", 1)[-1] in mine)
    lines, keep = [], False
    for line in text.splitlines(keepends=True):
        first = line.split("\t", 1)[0]
        # `show all endpoints` names the interface on its first line only (Debian's wg): a line that starts
        # with a key belongs to the interface above it.
        if not (len(first) == 44 and first.endswith("=")):
            keep = first in mine
        if keep:
            lines.append(line)
    return "".join(lines)


@pytest.mark.netns
def test_show_all_and_interfaces(rig: Rig) -> None:
    """`all` and `interfaces` list every daemon on the machine (other tests' too): compare our parts."""
    mine = {rig.a.iface, *(n.iface for n in rig.others)}
    for _ in range(20):
        theirs = run(["wg", "show", "interfaces"]).stdout
        ours = run([*WGPY, "show", "interfaces"]).stdout
        if ours == theirs:
            break
    assert ours == theirs and mine <= set(ours.split())
    for form in ([], ["dump"], ["peers"], ["listen-port"], ["endpoints"], ["transfer"]):
        for _ in range(40):
            ours_all = run([*WGPY, "show", "all", *form])
            theirs_all = run(["wg", "show", "all", *form])
            ours, theirs = only(ours_all.stdout, mine, not form), only(theirs_all.stdout, mine, not form)
            if ours == theirs:
                break
        assert ours == theirs, f"{form}\nours:\n{ours}\ntheirs:\n{theirs}"
        assert ours_all.returncode == theirs_all.returncode == 0
        if form:
            assert {line.split("\t")[0] for line in ours.splitlines()} >= mine
        else:
            assert all(f"interface: {i}" in ours for i in mine)


@pytest.mark.netns
def test_json_round_trips(rig: Rig) -> None:
    iface = rig.a.iface

    def canonical(state: client.DeviceState) -> client.DeviceState:
        state.peers.sort(key=lambda p: p.public_key)  # wireguard-go lists peers in Go map order
        return state

    for _ in range(20):
        state = canonical(client.get(iface))
        out = run([*WGPY, "show", iface, "dump", "--json"])
        (back,) = show.from_json(out.stdout)
        if canonical(client.get(iface)) == state:
            break
    assert out.returncode == 0
    assert canonical(back) == state
    assert json.loads(run([*WGPY, "show", iface, "dump", "--json"]).stdout)["interface"] == iface
    assert back.private_key == rig.a.private
    hidden = json.loads(run([*WGPY, "show", iface, "--json"]).stdout)
    assert hidden["private_key"] == "(hidden)"
    assert {p["preshared_key"] for p in hidden["peers"]} == {"(hidden)", None}
    assert keys.to_base64(rig.a.private) not in json.dumps(hidden)
    everything = json.loads(run([*WGPY, "show", "all", "dump", "--json"]).stdout)
    assert iface in {d["interface"] for d in everything}


@pytest.mark.netns
def test_colours_on_a_terminal_equal_wg(rig: Rig) -> None:
    """On a pty (no WG_COLOR_MODE) both colour; the bytes are identical."""
    iface = rig.a.iface

    def on_pty(args: list[str]) -> bytes:
        master, slave = pty.openpty()
        env = {k: v for k, v in os.environ.items() if k != "WG_COLOR_MODE"}
        proc = subprocess.Popen(args, stdout=slave, stderr=subprocess.DEVNULL, env=env)
        os.close(slave)
        data = b""
        while True:
            ready, _, _ = select.select([master], [], [], 10)
            if not ready:
                break
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            data += chunk
        proc.wait(timeout=30)
        os.close(master)
        return data

    for _ in range(40):  # until both saw the same peer order and second (see assert_same)
        ours = on_pty([*WGPY, "show", iface])
        theirs = on_pty(["wg", "show", iface])
        if ours == theirs:
            break
    assert b"\x1b[32m" in theirs
    assert ours == theirs


@pytest.mark.netns
@pytest.mark.parametrize("kind", DAEMONS)
def test_bare_devices_equal_wg(kind: str) -> None:
    """No peers: a fresh device, then one with a key, a port and a fwmark."""
    with lab() as the_lab, tempfile.TemporaryDirectory() as tmp:
        ns = the_lab.namespace()
        iface = the_lab.interface()
        start_daemon(ns, kind, iface)
        run_ok(["wg", "set", iface, "listen-port", "0"])
        for form in FORMS:
            assert_same(iface, ["show", iface, *form])
        assert_same(iface, ["showconf", iface])
        run_ok(["wg", "set", iface, "private-key", key_file(tmp, keys.generate_private_key()),
                "listen-port", "40000", "fwmark", "0x2a"])
        for form in FORMS:
            assert_same(iface, ["show", iface, *form])
        assert_same(iface, ["showconf", iface])
        run_ok(["wg", "set", iface, "fwmark", "off", "private-key", "/dev/null"])
        for form in FORMS:
            assert_same(iface, ["show", iface, *form])
        assert_same(iface, ["showconf", iface])


def test_errors_equal_wg() -> None:
    name = "wgpynosuch0"
    for args in (["show", name], ["show", name, "peers"], ["showconf", name], ["show", "a", "b", "c"],
                 ["show", "interfaces", "x"], ["show", "--help"], ["showconf"]):
        ours = run([*WGPY, *args])
        theirs = run(["wg", *args])
        assert (ours.returncode, ours.stdout, normalise_stderr(ours.stderr)) == (
            theirs.returncode, theirs.stdout, theirs.stderr), args
    # The top-level usage lists wgpy's extra subcommands after wg's, each of wg's lines word for word.
    for args in (["bogus"], ["--help"]):
        ours = run([*WGPY, *args])
        theirs = run(["wg", *args])
        assert ours.returncode == theirs.returncode
        ours_text = normalise_stderr(ours.stdout + ours.stderr)
        theirs_lines = (theirs.stdout + theirs.stderr).splitlines()
        assert [line for line in ours_text.splitlines() if line in theirs_lines] == theirs_lines


@pytest.mark.netns
def test_invalid_parameter_equals_wg() -> None:
    with lab() as the_lab:
        ns = the_lab.namespace()
        iface = the_lab.interface()
        start_daemon(ns, "wireguard-go", iface)
        for args in (["show", iface, "bogus"], ["show", "all", "bogus"]):
            ours = run([*WGPY, *args])
            theirs = run(["wg", *args])
            assert (ours.returncode, normalise_stderr(ours.stderr)) == (theirs.returncode, theirs.stderr)
            assert ours.returncode == 1 and "Invalid parameter: `bogus'" in ours.stderr


# --- formatting helpers, checked against show.c's rules ---------------------------------------------------


def test_pretty_time_and_ago() -> None:
    plain = filter_ansi
    assert plain(show.pretty_time(63)) == "1 minute, 3 seconds"
    assert plain(show.pretty_time(1)) == "1 second"
    assert plain(show.pretty_time(3600 * 24 * 366 + 7200)) == "1 year, 1 day, 2 hours"
    assert plain(show.every(25)) == "every 25 seconds"
    assert plain(show.ago(100, now=100)) == "Now"
    assert plain(show.ago(100, now=163)) == "1 minute, 3 seconds ago"
    assert plain(show.ago(200, now=100)) == "(System clock wound backward; connection problems may ensue.)"
    assert show.pretty_time(2) == "2 \x1b[36mseconds\x1b[0m"


def test_human_bytes() -> None:
    plain = filter_ansi
    assert plain(show.human_bytes(0)) == "0 B"
    assert plain(show.human_bytes(1023)) == "1023 B"
    assert plain(show.human_bytes(1024)) == "1.00 KiB"
    assert plain(show.human_bytes(1290000)) == "1.23 MiB"
    assert plain(show.human_bytes(5 * 1024**3)) == "5.00 GiB"
    assert plain(show.human_bytes(3 * 1024**4 + 1)) == "3.00 TiB"


def test_filter_ansi_like_terminal_c() -> None:
    assert filter_ansi("\x1b[0m\x1b[32m\x1b[1minterface\x1b[0m: x\n") == "interface: x\n"
    assert filter_ansi("ab\x1b[") == "ab\x1b["  # the last two characters are never examined
    assert filter_ansi("x\x1b[12") == "x"
