"""`wgpy genkey|genpsk|pubkey|set|setconf|addconf|syncconf` against Debian `wg`.

Key commands: same output and same errors and exit codes on the same input. Configuration commands: two
daemons of the same kind in two namespaces, one configured with `wg`, the other with `wgpy`, the same
command sequence on both; after every step their `wg showconf` must describe the same device. Mistakes in a
config file give one `FILE:LINE: message` line, a non-zero exit and leave the device untouched.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator

import pytest

from tests.cli.test_show import (
    DAEMONS,
    WGPY,
    Rig,
    build_rig,
    key_file,
    normalise_stderr,
    run,
    run_ok,
    start_daemon,
)
from tests.netns import Lab, lab
from wgpy import config, keys
from wgpy.config import Config

B = keys.to_base64


# --- genkey / genpsk / pubkey -------------------------------------------------------------------------------


def test_genkey_output_is_a_clamped_key_wg_accepts() -> None:
    for command in ("genkey", "genpsk"):
        out = run([*WGPY, command])
        assert out.returncode == 0 and out.stderr == ""
        assert len(out.stdout) == 45 and out.stdout.endswith("\n")
        key = keys.from_base64(out.stdout.strip())
        theirs = run(["wg", "pubkey"], input=out.stdout)
        assert theirs.returncode == 0
        ours = run([*WGPY, "pubkey"], input=out.stdout)
        assert ours.stdout == theirs.stdout
        if command == "genkey":
            assert key[0] & 7 == 0 and key[31] & 0x80 == 0 and key[31] & 0x40


PUBKEY_INPUTS = [
    "",
    "abc",
    "A" * 43,
    "A" * 44,
    "A" * 42 + "B=",
    "A" * 43 + "=",
    "A" * 43 + "= x",
    "A" * 43 + "=\n\n\t \r\v\f",
    "A" * 43 + "=\0\0\n",
    "A" * 43 + "==",
    " " + "A" * 43 + "=",
    "A" * 41 + "*A=",
]


@pytest.mark.parametrize("text", PUBKEY_INPUTS)
def test_pubkey_equals_wg(text: str) -> None:
    ours = run([*WGPY, "pubkey"], input=text)
    theirs = run(["wg", "pubkey"], input=text)
    assert (ours.returncode, ours.stdout, normalise_stderr(ours.stderr)) == (
        theirs.returncode, theirs.stdout, theirs.stderr)


def test_pubkey_of_random_keys_equals_wg() -> None:
    for _ in range(10):
        text = B(os.urandom(32)) + "\n"
        assert run([*WGPY, "pubkey"], input=text).stdout == run(["wg", "pubkey"], input=text).stdout


@pytest.mark.parametrize("args", [["genkey", "x"], ["genpsk", "x"], ["pubkey", "x"]])
def test_key_command_usage_equals_wg(args: list[str]) -> None:
    ours = run([*WGPY, *args])
    theirs = run(["wg", *args])
    assert (ours.returncode, ours.stdout, normalise_stderr(ours.stderr)) == (
        theirs.returncode, theirs.stdout, theirs.stderr)


def test_genkey_warns_about_world_readable_files_like_wg() -> None:
    with tempfile.TemporaryDirectory() as d:
        results = []
        for tool in (WGPY, ["wg"]):
            for mode in (0o644, 0o600):
                path = os.path.join(d, f"k{mode:o}")
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
                os.fchmod(fd, mode)
                proc = subprocess.run([*tool, "genkey"], stdout=fd, stderr=subprocess.PIPE, text=True)
                os.close(fd)
                results.append((proc.returncode, proc.stderr))
        assert results[:2] == results[2:]
        assert "world accessible" in results[0][1] and results[1][1] == ""


# --- live configuration commands ----------------------------------------------------------------------------


def showconf(iface: str) -> Config:
    """The device as `wg showconf` describes it, independent of the daemon's peer and prefix order."""
    text = run_ok(["wg", "showconf", iface]).stdout
    parsed = config.parse(text, iface, wg_quick=False)
    parsed.path = None
    parsed.peers.sort(key=lambda p: p.public_key)
    for peer in parsed.peers:
        peer.allowed_ips.sort(key=str)
    return parsed


class Twins:
    """The same daemon kind twice, in two namespaces: `theirs` configured by wg, `ours` by wgpy."""

    def __init__(self, the_lab: Lab, kind: str, tmp: str) -> None:
        self.tmp = tmp
        self.theirs = the_lab.interface()
        self.ours = the_lab.interface()
        for name in (self.theirs, self.ours):
            start_daemon(the_lab.namespace(), kind, name)

    def both(self, args: list[str], adjust: Callable[[Config], None] | None = None) -> None:
        """`wg ARGS` on theirs and `wgpy ARGS` on ours (IFACE in args is a placeholder); same result.

        `adjust` edits wg's result first, where wgpy deliberately differs from Debian's wg."""
        theirs = run(["wg", *[self.theirs if a == "IFACE" else a for a in args]])
        ours = run([*WGPY, *[self.ours if a == "IFACE" else a for a in args]])
        assert (ours.returncode, ours.stdout, normalise_stderr(ours.stderr)) == (
            theirs.returncode, theirs.stdout, theirs.stderr), (args, ours, theirs)
        assert ours.returncode == 0, ours.stderr
        ours_conf, theirs_conf = showconf(self.ours), showconf(self.theirs)
        if adjust is not None:
            adjust(theirs_conf)
        assert config.dumps(ours_conf) == config.dumps(theirs_conf), args
        assert ours_conf == theirs_conf

    def file(self, name: str, text: str) -> str:
        path = os.path.join(self.tmp, name)
        with open(path, "w") as f:
            f.write(text)
        return path


@pytest.fixture(params=DAEMONS)
def twins(request: pytest.FixtureRequest) -> Iterator[Twins]:
    with lab() as the_lab, tempfile.TemporaryDirectory() as tmp:
        yield Twins(the_lab, request.param, tmp)


def pub() -> bytes:
    return keys.public_key(keys.generate_private_key())


@pytest.mark.netns
def test_config_commands_leave_the_same_device_as_wg(twins: Twins) -> None:
    private, p1, p2, p3, p4, p5 = keys.generate_private_key(), pub(), pub(), pub(), pub(), pub()
    psk1, psk2 = keys.generate_preshared_key(), keys.generate_preshared_key()
    first = twins.file("first.conf", f"""
[Interface]
PrivateKey = {B(private)}
ListenPort = 51820
FwMark = 0x2a

[Peer]  # with everything
PublicKey = {B(p1)}
PresharedKey = {B(psk1)}
AllowedIPs = 10.1.0.0/16, fd00:1::/64
AllowedIPs = 10.2.0.1/32, 10.2.9.9/24
Endpoint = 198.18.5.5:51820
PersistentKeepalive = 25

[Peer]
PublicKey = {B(p2)}
Endpoint = [fd00:5::5]:1234
AllowedIPs = 10.3.0.0/24

[Peer]
PublicKey = {B(p3)}
""")
    twins.both(["setconf", "IFACE", first])
    # addconf: a new peer, more prefixes for p2 (replaced: the [Peer] sets them anew), p3's keepalive.
    more = twins.file("more.conf", f"""
[Peer]
PublicKey = {B(p4)}
AllowedIPs = 10.4.0.0/16
[Peer]
PublicKey = {B(p2)}
AllowedIPs = 10.3.1.0/24, 0.0.0.0/1
[Peer]
PublicKey = {B(p3)}
PersistentKeepalive = 7
""")
    twins.both(["addconf", "IFACE", more])
    psk_file = key_file(twins.tmp, psk2)
    new_private = key_file(twins.tmp, keys.generate_private_key())
    empty = twins.file("empty", "")
    for args in (
        ["set", "IFACE", "peer", B(p4), "remove"],
        ["set", "IFACE", "peer", B(p2), "allowed-ips", ""],
        ["set", "IFACE", "peer", B(p4), "allowed-ips", "10.4.5.6/16,fd00:4::1/64,10.4.0.9"],  # warns
        ["set", "IFACE", "peer", B(p1), "persistent-keepalive", "off", "endpoint", "[fd00:5::6]:1"],
        ["set", "IFACE", "private-key", new_private, "fwmark", "off"],
        ["set", "IFACE", "peer", B(p3), "preshared-key", psk_file, "allowed-ips", "10.9.0.0/16, fd00:9::/64"],
        ["set", "IFACE", "peer", B(p1), "preshared-key", empty],
        ["set", "IFACE", "peer", B(p5), "allowed-ips", "10.5.0.1/32", "endpoint", "localhost:7",
         "peer", B(p2), "persistent-keepalive", "65535"],
        ["set", "IFACE", "listen-port", "51821", "fwmark", "1234"],
        ["set", "IFACE", "peer", B(p5), "remove", "peer", B(p4), "remove"],
    ):
        twins.both(args)
    # syncconf: p2 goes, p4 comes back, p1 and p3 stay (updated in place). The file gives p3 neither a
    # preshared key nor a keepalive: wgpy clears both, as current wireguard-tools' sync_conf does; Debian's
    # wg 1.0.20210914 predates that fix and leaves the old ones in place.
    sync = twins.file("sync.conf", f"""
[Interface]
PrivateKey = {B(private)}
ListenPort = 51822
[Peer]
PublicKey = {B(p1)}
AllowedIPs = 10.1.0.0/16
[Peer]
PublicKey = {B(p3)}
AllowedIPs = 10.9.0.0/16
[Peer]
PublicKey = {B(p4)}
PresharedKey = {B(psk1)}
""")

    def upstream_sync(conf: Config) -> None:
        kept = conf.peer(p3)
        assert kept is not None and kept.preshared_key == psk2 and kept.persistent_keepalive == 7
        kept.preshared_key = None
        kept.persistent_keepalive = None

    twins.both(["syncconf", "IFACE", sync], adjust=upstream_sync)
    state = showconf(twins.ours)
    assert [p.public_key for p in state.peers] == sorted([p1, p3, p4])
    twins.both(["setconf", "IFACE", twins.file("bare.conf", "[Interface]\nListenPort = 51823\n")])
    assert showconf(twins.ours).peers == []
    assert showconf(twins.ours).interface.private_key is None
    twins.both(["syncconf", "IFACE", first])
    no_peers = twins.file("nopeers.conf", f"[Interface]\nPrivateKey = {B(private)}\nListenPort = 51829\n")
    twins.both(["syncconf", "IFACE", no_peers])
    assert showconf(twins.ours).peers == []


BAD_CONFIGS = [
    ("[Interface]\nPrivateKey = {key}\nListenPrt = 1\n", 3, "unknown key `ListenPrt'"),
    ("[Interface]\n\n[Peer]\nPublicKey = {peer}\nAllowedIPs = 10.0.0.0/33\n", 5, "AllowedIP is not in the correct"),
    ("[Peer]\nPublicKey = {peer}\n\n[Peer]\nPublicKey = {peer}\n", 4, "duplicate peer"),
    ("[Peer]\nPublicKey = abc=\n", 2, "PublicKey is not the correct length or format"),
    ("[Interface]\nAddress = 10.0.0.1/24\n", 2, "wg-quick key"),
    ("[Peer]\nPublicKey = {peer}\nEndpoint = no-such-host.invalid:51820\n", 1, "Name or service not known"),
    ("[Peer]\nAllowedIPs = 10.0.0.0/8\n", 1, "A peer is missing a public key"),
    ("[Interface]\nFwMark = 0x1000000000\n", 2, "Fwmark is neither 0/off nor 0-0xffffffff"),
]


@pytest.mark.netns
@pytest.mark.parametrize("kind", DAEMONS)
def test_bad_configs_are_one_clear_error_and_change_nothing(kind: str) -> None:
    with lab() as the_lab, tempfile.TemporaryDirectory() as tmp:
        iface = the_lab.interface()
        start_daemon(the_lab.namespace(), kind, iface)
        good = os.path.join(tmp, "good.conf")
        with open(good, "w") as f:
            f.write(f"[Interface]\nPrivateKey = {B(keys.generate_private_key())}\nListenPort = 51820\n"
                    f"[Peer]\nPublicKey = {B(pub())}\nAllowedIPs = 10.0.0.2/32\n")
        run_ok([*WGPY, "setconf", iface, good])
        before = run_ok(["wg", "showconf", iface]).stdout
        private = B(keys.generate_private_key())
        for n, (template, line, fragment) in enumerate(BAD_CONFIGS):
            path = os.path.join(tmp, f"bad{n}.conf")
            with open(path, "w") as f:
                f.write(template.format(key=private, peer=B(pub())))
            for command in ("setconf", "addconf", "syncconf"):
                out = run([*WGPY, command, iface, path])
                assert out.returncode == 1 and out.stdout == ""
                assert out.stderr.count("\n") == 1 and out.stderr.startswith(f"{path}:{line}: "), out.stderr
                assert fragment in out.stderr and private not in out.stderr
                assert run_ok(["wg", "showconf", iface]).stdout == before
        missing = os.path.join(tmp, "missing.conf")
        out = run([*WGPY, "setconf", iface, missing])
        assert out.returncode == 1 and out.stderr == f"{missing}:0: cannot read the file: No such file or directory\n"
        assert run_ok(["wg", "showconf", iface]).stdout == before


@pytest.mark.netns
def test_set_errors_equal_wg_and_change_nothing() -> None:
    with lab() as the_lab, tempfile.TemporaryDirectory() as tmp:
        iface = the_lab.interface()
        start_daemon(the_lab.namespace(), "wireguard-go", iface)
        peer = B(pub())
        run_ok(["wg", "set", iface, "listen-port", "51820", "peer", peer, "allowed-ips", "10.0.0.2/32"])
        before = run_ok(["wg", "showconf", iface]).stdout
        trailing = os.path.join(tmp, "trailing")
        with open(trailing, "w") as f:
            f.write(B(keys.generate_private_key()) + "\nx")
        short = os.path.join(tmp, "short")
        with open(short, "w") as f:
            f.write("abc\n")
        for args in (
            ["set", iface],
            ["set", iface, "bogus"],
            ["set", iface, "remove"],
            ["set", iface, "peer"],
            ["set", iface, "peer", "abc"],
            ["set", iface, "fwmark", "0x1_0"],
            ["set", iface, "fwmark", "-1"],
            ["set", iface, "listen-port", "nosuchservice"],
            ["set", iface, "listen-port", ""],
            ["set", iface, "peer", peer, "persistent-keepalive", "x"],
            ["set", iface, "peer", peer, "persistent-keepalive", "65536"],
            ["set", iface, "peer", peer, "allowed-ips", "10.0.0.0/33"],
            ["set", iface, "peer", peer, "allowed-ips", "10.0.0/8"],
            ["set", iface, "peer", peer, "endpoint", "1.2.3.4"],
            ["set", iface, "peer", peer, "endpoint", "[fd00::1"],
            ["set", iface, "peer", peer, "endpoint", "no-such-host.invalid:1"],
            ["set", iface, "peer", peer, "endpoint", ""],
            ["set", iface, "private-key", os.path.join(tmp, "missing")],
            ["set", iface, "private-key", trailing],
            ["set", iface, "private-key", short],
            ["set", iface, "peer", peer, "preshared-key", trailing],
            ["set", iface, "fwmark", "1", "peer", peer, "listen-port", "1"],
            ["set", "wgpynosuch0", "listen-port", "1"],
        ):
            ours = run([*WGPY, *args])
            theirs = run(["wg", *args])
            assert (ours.returncode, ours.stdout, normalise_stderr(ours.stderr)) == (
                theirs.returncode, theirs.stdout, theirs.stderr), args
            assert ours.returncode == 1
            assert run_ok(["wg", "showconf", iface]).stdout == before


@pytest.mark.netns
@pytest.mark.parametrize("kind", DAEMONS)
def test_syncconf_keeps_sessions_of_unchanged_peers(kind: str) -> None:
    with lab() as the_lab, tempfile.TemporaryDirectory() as tmp:
        rig: Rig = build_rig(the_lab, kind, tmp)
        iface = rig.a.iface
        handshakes = dict(line.split("\t") for line in run_ok(["wg", "show", iface, "latest-handshakes"])
                          .stdout.splitlines())
        real = [B(n.public) for n in rig.others]
        assert all(int(handshakes[k]) for k in real)
        conf = config.parse(run_ok([*WGPY, "showconf", iface]).stdout, "running", wg_quick=False)
        conf.peers = [p for p in conf.peers if p.public_key not in (rig.fake[0], rig.fake[2])]
        kept = conf.peer(rig.fake[1])
        assert kept is not None
        kept.allowed_ips = [config.parse_allowed_ips("10.77.0.0/16")[0]]
        path = os.path.join(tmp, "sync.conf")
        with open(path, "w") as f:
            f.write(config.dumps(conf, wg_quick=False))
        time.sleep(1.1)  # a re-handshake now would show a different second
        run_ok([*WGPY, "syncconf", iface, path])
        after = dict(line.split("\t") for line in run_ok(["wg", "show", iface, "latest-handshakes"])
                     .stdout.splitlines())
        assert sorted(after) == sorted([*real, B(rig.fake[1])])
        assert all(after[k] == handshakes[k] for k in real)
        assert "10.77.0.0/16" in run_ok(["wg", "show", iface, "allowed-ips"]).stdout
        # The sessions still carry traffic without a new handshake.
        for node in rig.others:
            rig.a.ns.wait_ping(node.tunnel4)
        final = dict(line.split("\t") for line in run_ok(["wg", "show", iface, "latest-handshakes"])
                     .stdout.splitlines())
        assert all(final[k] == handshakes[k] for k in real)


# --- the dispatcher -------------------------------------------------------------------------------------------


def test_dispatch_to_other_modules_and_missing_ones(monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from wgpy.cli import main

    assert main.main(["strip", "--help"]) == 0  # wgpy.cli.quick.COMMANDS["strip"] gets ["--help"]
    assert "strip" in capsys.readouterr().err
    monkeypatch.setitem(main.EXTERNAL, "up", ("wgpy.cli.no_such_module", "COMMANDS"))
    assert main.main(["up", "wg0"]) == 1
    assert capsys.readouterr().err == (
        "wgpy: `up' is not available in this installation (wgpy.cli.no_such_module is missing)\n")
    monkeypatch.setitem(main.EXTERNAL, "peer", ("wgpy.cli.terminal", "COMMANDS"))
    assert main.main(["peer"]) == 1
    assert "does not provide it" in capsys.readouterr().err
    assert main.main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("wgpy v")
    assert main.main(["nonsense"]) == 1
    assert capsys.readouterr().err.startswith("Invalid subcommand: `nonsense'\nUsage: wgpy <cmd> [<args>]\n")
