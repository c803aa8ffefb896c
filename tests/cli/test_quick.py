"""`wgpy up|down|save|strip` against Debian's wg-quick, which is the specification.

The namespace tests bring the same configuration up with `wgpy up` in one fresh namespace and with `wg-quick up`
in another, and compare what the kernel holds afterwards (addresses, every routing table, rules, MTU, nft
ruleset, src_valid_mark), with interface names, indexes and random link-local addresses masked. `down` must then
give back exactly the namespace the test started with: no link, rule, route, firewall table, socket, state
file or process. DNS goes to a fake `resolvconf` early in PATH that records its arguments and input: the real
/etc/resolv.conf is never touched.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.netns import WG_RUN_DIR, Lab, Namespace, lab
from wgpy import keys
from wgpy.cli import quick

WGPY = [sys.executable, "-m", "wgpy"]
WG_QUICK = "/usr/bin/wg-quick"
IMPLEMENTATIONS = ["wireguard-go", "wgpyd"]


def _key() -> tuple[str, str]:
    private = keys.generate_private_key()
    return keys.to_base64(private), keys.to_base64(keys.public_key(private))


def write_conf(directory: Path, iface: str, text: str, mode: int = 0o600) -> Path:
    path = directory / f"{iface}.conf"
    path.write_text(text)
    path.chmod(mode)
    return path


# --- no namespace needed -------------------------------------------------------------------------------------

STRIP_SAMPLE = """\
# a comment before any section
[Interface]
PrivateKey = {priv}
  Address = 10.0.0.1/24, fd00::1/64   # addresses
address=10.0.0.5/32
ListenPort = 51820
DNS = 10.0.0.53, example.com
MTU = 1380
Table = auto
PreUp = echo pre %i # not a comment for bash, but wg-quick cuts it
PostUp = echo post
PreDown = true
PostDown = true
SaveConfig = false
\t# indented comment

[Peer]
PublicKey = {pub}
Address = 10.0.0.9/32
AllowedIPs = 10.0.0.2/32
Endpoint = 198.18.0.2:51820
[interface]
mtu = 1400
FwMark = 0x10"""


def test_strip_matches_wg_quick(tmp_path: Path) -> None:
    priv, _ = _key()
    _, pub = _key()
    path = write_conf(tmp_path, "wgstrip0", STRIP_SAMPLE.format(priv=priv, pub=pub))
    theirs = subprocess.run([WG_QUICK, "strip", str(path)], capture_output=True, text=True, check=True)
    ours = subprocess.run([*WGPY, "strip", str(path)], capture_output=True, text=True)
    assert ours.returncode == 0, ours.stderr
    assert ours.stdout == theirs.stdout
    assert "Address" not in ours.stdout.split("[Peer]")[0] and "PrivateKey" in ours.stdout
    assert "Address = 10.0.0.9/32" in ours.stdout  # a [Peer] section keeps what wg-quick keeps
    assert ours.stderr == theirs.stderr == ""


@pytest.mark.parametrize("text", [
    "[Interface]\r\nAddress = 10.0.0.1\n\n   \n[Peer]\nDNS = 1.1.1.1\n#x=y\nlast line without newline",
    "",
    "\n\n",
    "  [Interface]  # c\n\tTable=off\nPostUp=a=b # c\n[InterFACE]\nsaveconfig = true\n[x]\nMTU = 1\n",
    "[Interface]\nAddress\n= 10.0.0.1\nback\\slash = \\n\n",
])
def test_strip_text_edge_cases_match_wg_quick(tmp_path: Path, text: str) -> None:
    path = write_conf(tmp_path, "wgedge0", text)
    theirs = subprocess.run([WG_QUICK, "strip", str(path)], capture_output=True, check=True)
    assert quick.strip_text(text) == theirs.stdout.decode()  # bytes: text mode would turn \r\n into \n


def test_world_accessible_warning_like_wg_quick(tmp_path: Path) -> None:
    priv, _ = _key()
    tmp_path.chmod(0o755)
    path = write_conf(tmp_path, "wgworld0", f"[Interface]\nPrivateKey = {priv}\n", mode=0o644)
    theirs = subprocess.run([WG_QUICK, "strip", str(path)], capture_output=True, text=True, check=True)
    ours = subprocess.run([*WGPY, "strip", str(path)], capture_output=True, text=True)
    assert ours.returncode == 0
    assert ours.stderr == theirs.stderr == f"Warning: `{path}' is world accessible\n"
    path.chmod(0o600)
    ours = subprocess.run([*WGPY, "strip", str(path)], capture_output=True, text=True)
    assert ours.stderr == ""


@pytest.mark.parametrize(("name", "message"), [
    ("does-not-exist", "wgpy: `/etc/wireguard/does-not-exist.conf' does not exist"),
    ("/nonexistent/dir/wg0.conf", "wgpy: `/nonexistent/dir/wg0.conf' does not exist"),
])
def test_missing_file_is_one_line(name: str, message: str) -> None:
    ours = subprocess.run([*WGPY, "up", name], capture_output=True, text=True)
    assert ours.returncode == 1
    assert ours.stderr == message + "\n"


def test_bad_file_name_and_bad_config(tmp_path: Path) -> None:
    bad = tmp_path / "not a valid interface name.conf"
    bad.write_text("[Interface]\n")
    ours = subprocess.run([*WGPY, "up", str(bad)], capture_output=True, text=True)
    assert (ours.returncode, ours.stderr) == (
        1, "wgpy: The config file must be a valid interface name, followed by .conf\n")
    path = write_conf(tmp_path, "wgbad0", "[Interface]\nAddress = 10.0.0.1/24\nMTU = lots\n")
    ours = subprocess.run([*WGPY, "up", str(path)], capture_output=True, text=True)
    assert ours.returncode == 1
    assert ours.stderr.count("\n") == 1 and ours.stderr.startswith(f"wgpy: {path}:3: ")


def test_usage() -> None:
    ours = subprocess.run([*WGPY, "up"], capture_output=True, text=True)
    assert ours.returncode == 1 and ours.stderr.startswith("Usage: wgpy [ up | down | save | strip ]")
    assert quick.COMMANDS["strip"](["--help"]) == 0


def test_table_names() -> None:
    assert quick.table_id("1234") == 1234
    assert quick.table_id("main") == 254
    with pytest.raises(quick.QuickError):
        quick.table_id("no-such-table-name")


# --- namespaces ------------------------------------------------------------------------------------------------


@pytest.fixture
def netlab() -> Iterator[Lab]:
    """tests.netns's lab, which also removes the `up` records of its interfaces when a test failed midway."""
    with lab() as the_lab:
        try:
            yield the_lab
        finally:
            for name in the_lab.interfaces:
                Path(quick.STATE_DIR_DEFAULT, f"{name}.json").unlink(missing_ok=True)


def fake_resolvconf(directory: Path) -> tuple[Path, Path]:
    """A `resolvconf` that records each call (arguments, then standard input) and answers -l from its records."""
    bindir = directory / "bin"
    bindir.mkdir()
    log = directory / "resolvconf.log"
    script = bindir / "resolvconf"
    script.write_text(f"""#!/bin/bash
log={log}
if [[ $1 == -a ]]; then input=$(cat); printf '%s\\n' "$input" > {directory}/resolvconf.$2; fi
if [[ $1 == -l ]]; then cat {directory}/resolvconf.$2 2>/dev/null; exit 0; fi
if [[ $1 == -d ]]; then rm -f {directory}/resolvconf.$2; fi
{{ echo "ARGS $*"; [[ $1 == -a ]] && printf '%s\\n' "$input"; }} >> "$log"
exit 0
""")
    script.chmod(0o755)
    return bindir, log


def settle(ns: Namespace, ifname: str, seconds: float = 10) -> None:
    """Wait for the link-local address the kernel gives a new link (DAD done), so later snapshots compare."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        out = ns.run(["ip", "-6", "address", "show", "dev", ifname, "scope", "link"]).stdout
        if "fe80::" in out and "tentative" not in out:
            return
        time.sleep(0.1)
    raise AssertionError(f"{ifname} in {ns.name} got no usable link-local address in {seconds} s")


class Side:
    """One namespace under test: a client with a veth to its own (silent) peer namespace."""

    def __init__(self, lab: Lab, iface: str, *, default_route: bool = False, underlay_mtu: int = 1500,
                 setup: tuple[str, ...] = ()) -> None:
        self.lab = lab
        self.iface = iface
        self.ns = lab.namespace()
        self.peer = lab.namespace()
        self.veth, _ = lab.veth(self.ns, ["198.18.0.1/24", "fd00:18::1/64"], self.peer,
                                ["198.18.0.2/24", "fd00:18::2/64"])
        if underlay_mtu != 1500:
            self.ns.run(["ip", "link", "set", self.veth, "mtu", str(underlay_mtu)])
        if default_route:
            self.ns.run(["ip", "route", "add", "default", "via", "198.18.0.2"])
        settle(self.ns, self.veth)
        for command in setup:
            self.ns.sh(command.replace("UNDERLAY", self.veth))

    def snapshot(self) -> dict[str, Any]:
        return snapshot(self.ns, {self.iface: "WG", self.veth: "UNDERLAY"})


def _ip_json(ns: Namespace, args: list[str]) -> Any:
    out = ns.run(["ip", "-j", *args]).stdout
    return json.loads(out) if out.strip() else []


_LINK_LOCAL = re.compile(r"^fe80::[0-9a-f:]+$")


def _mask(value: Any, names: dict[str, str]) -> Any:
    if isinstance(value, str):
        if value in names:
            return names[value]
        if _LINK_LOCAL.match(value):
            return "fe80::LINK-LOCAL"
        return value
    if isinstance(value, list):
        return [_mask(v, names) for v in value]
    if isinstance(value, dict):
        return {k: _mask(v, names) for k, v in value.items() if k not in ("ifindex", "link_index")}
    return value


def snapshot(ns: Namespace, names: dict[str, str]) -> dict[str, Any]:
    """What wg-quick changes, with interface names replaced by roles and random link-local addresses masked."""
    links = {}
    for link in _ip_json(ns, ["-d", "address", "show"]):
        role = names.get(link["ifname"], link["ifname"])
        addrs = sorted(json.dumps(_mask({k: a.get(k) for k in ("family", "local", "prefixlen", "scope",
                                                                    "noprefixroute", "address")}, names))
                       for a in link.get("addr_info", []))
        links[role] = {"mtu": link["mtu"], "flags": sorted(link["flags"]), "addresses": addrs,
                       "operstate": link.get("operstate")}
    routes = []
    for family in ("-4", "-6"):
        routes += [json.dumps(_mask(r, names), sort_keys=True)
                   for r in _ip_json(ns, [family, "-d", "route", "show", "table", "all"])]
    rules = [_ip_json(ns, [family, "rule", "show"]) for family in ("-4", "-6")]
    ruleset = ns.run(["nft", "list", "ruleset"]).stdout
    for name, role in names.items():
        ruleset = ruleset.replace(name, role)
    ruleset = re.sub(r"fe80::[0-9a-f:]+", "fe80::LINK-LOCAL", ruleset)
    sysctl = ns.run(["cat", "/proc/sys/net/ipv4/conf/all/src_valid_mark"]).stdout.strip()
    return {"links": links, "routes": sorted(routes), "rules": rules, "nft": ruleset, "src_valid_mark": sysctl}


def run_wgpy(ns: Namespace, command: str, target: str, impl: str = "wireguard-go",
             path_prefix: Path | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {"WG_QUICK_USERSPACE_IMPLEMENTATION": impl}
    if path_prefix is not None:
        env["PATH"] = f"{path_prefix}:{os.environ['PATH']}"
    return ns.run([*WGPY, command, target], env=env, check=check)


def run_wg_quick(ns: Namespace, command: str, target: str, path_prefix: Path | None = None,
                 check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {"WG_QUICK_USERSPACE_IMPLEMENTATION": "wireguard-go"}
    if path_prefix is not None:
        env["PATH"] = f"{path_prefix}:{os.environ['PATH']}"
    return ns.run([WG_QUICK, command, target], env=env, check=check)


def assert_same(a: dict[str, Any], b: dict[str, Any]) -> None:
    """Equal snapshots, or a message that lists only what differs."""
    for key in a:
        if isinstance(a[key], list) and key == "routes":
            assert sorted(set(a[key]) - set(b[key])) == sorted(set(b[key]) - set(a[key])) == [], key
        assert a[key] == b[key], key


def assert_gone(side: Side, before: dict[str, Any]) -> None:
    """Nothing of the tunnel is left: the namespace is as it was, no process, socket or state file."""
    assert_same(side.snapshot(), before)
    pids = subprocess.run(["ip", "netns", "pids", side.ns.name], capture_output=True, text=True).stdout.split()
    assert [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in pids] == []
    assert not (WG_RUN_DIR / f"{side.iface}.sock").exists()
    assert not Path(quick.STATE_DIR_DEFAULT, f"{side.iface}.json").exists()


PEER_PRIV, PEER_PUB = _key()

VARIANTS: dict[str, dict[str, Any]] = {
    "split": {"allowed": "10.0.0.2/32, 10.9.0.0/16, fd00:9::/48, fd00::2/128"},
    "full": {"allowed": "0.0.0.0/0, ::/0"},
    "full-v4-fwmark": {"allowed": "0.0.0.0/0, 10.9.0.0/16", "extra": "FwMark = 0x1234\n"},
    "table-1234": {"allowed": "10.0.0.0/24, 10.9.0.0/16, 0.0.0.0/0, fd00:9::/48", "extra": "Table = 1234\n"},
    "table-off": {"allowed": "0.0.0.0/0, ::/0, 10.9.0.0/16", "extra": "Table = off\n"},
    "mtu-and-no-endpoint": {"allowed": "10.9.0.0/16", "endpoint": None, "extra": "MTU = 1280\n"},
    "default-route-mtu": {"allowed": "10.9.0.0/16", "endpoint": None, "default_route": True,
                          "underlay_mtu": 1400},
    "endpoint-route-mtu": {"allowed": "10.9.0.0/16", "endpoint": "198.19.7.1:51820",
                           "setup": ("ip route add 198.19.7.0/24 via 198.18.0.2 mtu 1300",)},
    "v6-endpoint-full-v6": {"allowed": "::/0, 10.9.0.0/16", "endpoint": "[fd00:18::2]:51820",
                            "underlay_mtu": 1380},
}


def variant_conf(variant: dict[str, Any], priv: str) -> str:
    endpoint = variant.get("endpoint", "198.18.0.2:51820")
    text = (f"[Interface]\nPrivateKey = {priv}\nAddress = 10.0.0.1/24, fd00::1/64\nListenPort = 51820\n"
            f"{variant.get('extra', '')}\n[Peer]\nPublicKey = {PEER_PUB}\nAllowedIPs = {variant['allowed']}\n")
    if endpoint:
        text += f"Endpoint = {endpoint}\n"
    return text


def _wgpyd_usable() -> bool:
    return shutil.which("wgpyd") is not None


@pytest.mark.netns
@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("name", list(VARIANTS))
def test_up_matches_wg_quick_and_down_undoes_it(netlab: Lab, tmp_path: Path, name: str, impl: str) -> None:
    if impl == "wgpyd" and not _wgpyd_usable():
        pytest.fail("wgpyd is not installed")
    variant = VARIANTS[name]
    priv, _ = _key()
    sides = [Side(netlab, netlab.interface(), default_route=variant.get("default_route", False),
                  underlay_mtu=variant.get("underlay_mtu", 1500), setup=variant.get("setup", ()))
             for _ in range(2)]
    ours, theirs = sides
    before = [s.snapshot() for s in sides]
    assert before[0] == before[1]
    our_conf = write_conf(tmp_path, ours.iface, variant_conf(variant, priv))
    their_conf = write_conf(tmp_path, theirs.iface, variant_conf(variant, priv))

    up = run_wgpy(ours.ns, "up", str(our_conf), impl)
    assert "[#] ip link set mtu" in up.stderr
    run_wg_quick(theirs.ns, "up", str(their_conf))
    after = [s.snapshot() for s in sides]
    assert_same(after[0], after[1])
    assert after[0] != before[0]
    expected_mtu = {"mtu-and-no-endpoint": 1280, "default-route-mtu": 1320, "endpoint-route-mtu": 1220,
                    "v6-endpoint-full-v6": 1300}.get(name, 1420)
    assert after[0]["links"]["WG"]["mtu"] == expected_mtu
    assert ours.ns.run(["wg", "show", ours.iface, "fwmark"]).stdout == \
        theirs.ns.run(["wg", "show", theirs.iface, "fwmark"]).stdout

    run_wgpy(ours.ns, "down", str(our_conf))
    run_wg_quick(theirs.ns, "down", str(their_conf))
    assert_gone(ours, before[0])
    # wg-quick leaves net.ipv4.conf.all.src_valid_mark at 1 after a full IPv4 tunnel; wgpy puts it back.
    assert_same({**theirs.snapshot(), "src_valid_mark": "0"}, before[1])


@pytest.mark.netns
def test_down_by_wg_quick_after_wgpy_up_and_the_reverse(netlab: Lab, tmp_path: Path) -> None:
    """The two are interchangeable: each one's `down` cleans up the other's full-tunnel `up`."""
    side = Side(netlab, netlab.interface())
    before = side.snapshot()
    priv, _ = _key()
    conf = write_conf(tmp_path, side.iface, variant_conf(VARIANTS["full"], priv))
    run_wgpy(side.ns, "up", str(conf))
    run_wg_quick(side.ns, "down", str(conf))
    assert_same({**side.snapshot(), "src_valid_mark": "0"}, before)
    side.ns.run(["sysctl", "-q", "-w", "net.ipv4.conf.all.src_valid_mark=0"])
    run_wg_quick(side.ns, "up", str(conf))
    run_wgpy(side.ns, "down", str(conf))
    assert_gone(side, before)


@pytest.mark.netns
def test_down_without_state_file_discovers_like_wg_quick(netlab: Lab, tmp_path: Path) -> None:
    side = Side(netlab, netlab.interface())
    before = side.snapshot()
    priv, _ = _key()
    conf = write_conf(tmp_path, side.iface, variant_conf(VARIANTS["full"], priv))
    run_wgpy(side.ns, "up", str(conf))
    Path(quick.STATE_DIR_DEFAULT, f"{side.iface}.json").unlink()
    down = run_wgpy(side.ns, "down", str(conf))
    assert "rule delete" in down.stderr
    # Without the record nobody knows src_valid_mark's old value: like wg-quick, it stays at 1.
    assert_same({**side.snapshot(), "src_valid_mark": "0"}, before)
    assert subprocess.run(["ip", "netns", "pids", side.ns.name], capture_output=True, text=True).stdout == ""
    assert not (WG_RUN_DIR / f"{side.iface}.sock").exists()


@pytest.mark.netns
@pytest.mark.parametrize("failure", ["postup-fails", "duplicate-address", "resolvconf-fails", "bad-table"])
def test_half_failed_up_is_cleaned_up(netlab: Lab, tmp_path: Path, failure: str) -> None:
    side = Side(netlab, netlab.interface())
    before = side.snapshot()
    priv, _ = _key()
    extra = {
        "postup-fails": "PostUp = false\n",
        "duplicate-address": "Address = 10.0.0.1/24\n",
        "resolvconf-fails": "DNS = 10.0.0.53\n",
        "bad-table": "Table = no-such-table\n",
    }[failure]
    variant = {**VARIANTS["full"], "extra": extra}
    if failure == "bad-table":
        variant["allowed"] = "10.9.0.0/16"
    conf = write_conf(tmp_path, side.iface, variant_conf(variant, priv))
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "resolvconf").write_text("#!/bin/sh\ncat >/dev/null\nexit 3\n")
    (bindir / "resolvconf").chmod(0o755)
    result = run_wgpy(side.ns, "up", str(conf), path_prefix=bindir, check=False)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("wgpy: "), result.stderr
    assert "Traceback" not in result.stderr
    if failure != "bad-table":
        assert "[#] ip link delete dev" in result.stderr
    assert_gone(side, before)


@pytest.mark.netns
def test_hooks_run_with_interface_name(netlab: Lab, tmp_path: Path) -> None:
    side = Side(netlab, netlab.interface())
    before = side.snapshot()
    priv, _ = _key()
    out = tmp_path / "hooks.log"
    hooks = "".join(f"{k} = echo {k} %i $(ip link show dev %i >/dev/null 2>&1 && echo present) >> {out}\n"
                    for k in ("PreUp", "PostUp", "PreDown", "PostDown"))
    conf = write_conf(tmp_path, side.iface, variant_conf({**VARIANTS["split"], "extra": hooks}, priv))
    run_wgpy(side.ns, "up", str(conf))
    run_wgpy(side.ns, "down", str(conf))
    i = side.iface
    assert out.read_text() == f"PreUp {i}\nPostUp {i} present\nPreDown {i} present\nPostDown {i}\n"
    assert_gone(side, before)


@pytest.mark.netns
def test_dns_through_resolvconf_like_wg_quick(netlab: Lab, tmp_path: Path) -> None:
    priv, _ = _key()
    logs = []
    for tool in ("wgpy", "wg-quick"):
        side = Side(netlab, netlab.interface())
        workdir = tmp_path / tool
        workdir.mkdir()
        bindir, log = fake_resolvconf(workdir)
        extra = "DNS = 10.0.0.53, fd00::53, example.com, corp.example\n"
        conf = write_conf(workdir, side.iface, variant_conf({**VARIANTS["split"], "extra": extra}, priv))
        runner = run_wgpy if tool == "wgpy" else run_wg_quick
        runner(side.ns, "up", str(conf), path_prefix=bindir)
        runner(side.ns, "down", str(conf), path_prefix=bindir)
        logs.append(log.read_text().replace(side.iface, "IFACE"))
    assert logs[0] == logs[1]
    assert logs[0] == ("ARGS -a IFACE -m 0 -x\nnameserver 10.0.0.53\nnameserver fd00::53\n"
                       "search example.com corp.example\nARGS -d IFACE -f\n")


def peers_sorted(text: str) -> str:
    """wireguard-go lists peers in Go map order, which changes from one `get` to the next: sort the sections."""
    head, *peers = text.rstrip("\n").split("\n\n[Peer]\n")
    return "\n\n[Peer]\n".join([head, *sorted(peers)]) + "\n"


@pytest.mark.netns
def test_save_config_on_down_matches_wg_quick_save(netlab: Lab, tmp_path: Path) -> None:
    side = Side(netlab, netlab.interface())
    before = side.snapshot()
    priv, _ = _key()
    bindir, _log = fake_resolvconf(tmp_path)
    extra = "SaveConfig = true\nMTU = 1400\nDNS = 10.0.0.53\nPostUp = true %i\nPreDown = true\n"
    conf = write_conf(tmp_path, side.iface, variant_conf({**VARIANTS["split"], "extra": extra}, priv))
    run_wgpy(side.ns, "up", str(conf), path_prefix=bindir)
    _, new_peer = _key()
    side.ns.run(["wg", "set", side.iface, "peer", new_peer, "allowed-ips", "10.0.0.77/32"])
    side.ns.run(["ip", "address", "add", "10.0.0.99/24", "dev", side.iface])
    # wg-quick's own `save` of the same interface, to a copy of the file with the same name, is the reference.
    reference_dir = tmp_path / "reference"
    reference_dir.mkdir(mode=0o700)
    reference = reference_dir / conf.name
    shutil.copy(conf, reference)
    run_wg_quick(side.ns, "save", str(reference), path_prefix=bindir)
    run_wgpy(side.ns, "down", str(conf), path_prefix=bindir)
    saved = conf.read_text()
    assert peers_sorted(saved) == peers_sorted(reference.read_text())
    assert new_peer in saved and "Address = 10.0.0.99/24" in saved and "SaveConfig = true" in saved
    assert "DNS = 10.0.0.53" in saved and "MTU = 1400" in saved and "PostUp = true %i" in saved
    assert conf.stat().st_mode & 0o777 == 0o600
    assert_gone(side, before)


@pytest.mark.netns
def test_save_matches_wg_quick_save(netlab: Lab, tmp_path: Path) -> None:
    side = Side(netlab, netlab.interface())
    priv, _ = _key()
    conf = write_conf(tmp_path, side.iface, variant_conf({**VARIANTS["full"], "extra": "Table = auto\n"}, priv))
    run_wgpy(side.ns, "up", str(conf))
    reference_dir = tmp_path / "reference"
    reference_dir.mkdir()
    reference = reference_dir / conf.name
    shutil.copy(conf, reference)
    run_wg_quick(side.ns, "save", str(reference))
    run_wgpy(side.ns, "save", str(conf))
    assert peers_sorted(conf.read_text()) == peers_sorted(reference.read_text())
    assert "FwMark = 0xca6c" in conf.read_text() and "Table = auto" in conf.read_text()
    run_wgpy(side.ns, "down", str(conf))


@pytest.mark.netns
def test_up_twice_and_down_of_unknown(netlab: Lab, tmp_path: Path) -> None:
    side = Side(netlab, netlab.interface())
    before = side.snapshot()
    priv, _ = _key()
    conf = write_conf(tmp_path, side.iface, variant_conf(VARIANTS["split"], priv))
    down = run_wgpy(side.ns, "down", str(conf), check=False)
    assert (down.returncode, down.stderr) == (1, f"wgpy: `{side.iface}' is not a WireGuard interface\n")
    run_wgpy(side.ns, "up", str(conf))
    again = run_wgpy(side.ns, "up", str(conf), check=False)
    assert (again.returncode, again.stderr) == (1, f"wgpy: `{side.iface}' already exists\n")
    run_wgpy(side.ns, "down", str(conf))
    assert_gone(side, before)


# --- traffic ---------------------------------------------------------------------------------------------------


@pytest.mark.netns
@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_full_tunnel_traffic(netlab: Lab, tmp_path: Path, impl: str) -> None:
    """client --veth-- server --veth-- host. With 0.0.0.0/0 and ::/0 through the tunnel the client reaches
    the host behind the server, its own handshake UDP still leaves by the underlay (no loop), and `down`
    restores direct routing."""
    client_ns, server, host = netlab.namespace(), netlab.namespace(), netlab.namespace()
    client_veth, server_veth = netlab.veth(client_ns, ["198.18.0.1/24"], server, ["198.18.0.2/24"])
    netlab.veth(server, ["198.19.0.1/24", "fd00:19::1/64"], host, ["198.19.0.2/24", "fd00:19::2/64"])
    server.run(["sysctl", "-q", "-w", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"])
    host.run(["ip", "route", "add", "default", "via", "198.19.0.1"])
    host.run(["ip", "-6", "route", "add", "default", "via", "fd00:19::1"])

    client_priv, client_pub = _key()
    server_iface, client_iface = netlab.interface(), netlab.interface()
    server_conf = tmp_path / "server.conf"
    server_conf.write_text(f"[Interface]\nPrivateKey = {PEER_PRIV}\nListenPort = 51820\n\n[Peer]\n"
                           f"PublicKey = {client_pub}\nAllowedIPs = 10.0.0.1/32, fd00::1/128\n")
    server.run(["wireguard-go", server_iface])
    server.run(["wg", "setconf", server_iface, str(server_conf)])
    server.run(["ip", "address", "add", "10.0.0.2/24", "dev", server_iface])
    server.run(["ip", "-6", "address", "add", "fd00::2/64", "dev", server_iface, "nodad"])
    server.run(["ip", "link", "set", server_iface, "up"])

    conf = write_conf(tmp_path, client_iface, variant_conf(VARIANTS["full"], client_priv))
    run_wgpy(client_ns, "up", str(conf), impl)
    client_ns.wait_ping("10.0.0.2", seconds=30)
    client_ns.wait_ping("198.19.0.2")
    client_ns.wait_ping("fd00:19::2")
    # The host is reached through the tunnel, the server's UDP endpoint around it.
    assert f"dev {client_iface}" in client_ns.run(["ip", "route", "get", "198.19.0.2"]).stdout
    assert f"dev {client_veth}" in client_ns.run(["ip", "route", "get", "198.18.0.2", "mark", "51820"]).stdout
    endpoints = server.run(["wg", "show", server_iface, "endpoints"]).stdout
    assert "198.18.0.1:51820" in endpoints
    transfer = client_ns.run(["wg", "show", client_iface, "transfer"]).stdout.split()
    assert int(transfer[1]) > 0 and int(transfer[2]) > 0
    run_wgpy(client_ns, "down", str(conf))
    assert client_ns.ping("198.19.0.2", count=1).returncode != 0  # no route any more: nothing goes anywhere
    assert subprocess.run(["ip", "netns", "pids", client_ns.name], capture_output=True, text=True).stdout == ""
    assert server_veth  # the server side of the underlay was used above


@pytest.mark.netns
def test_daemon_that_fails_or_is_missing(netlab: Lab, tmp_path: Path) -> None:
    side = Side(netlab, netlab.interface())
    before = side.snapshot()
    priv, _ = _key()
    conf = write_conf(tmp_path, side.iface, variant_conf(VARIANTS["full"], priv))
    failed = run_wgpy(side.ns, "up", str(conf), impl="false", check=False)
    assert failed.returncode == 1
    assert failed.stderr.splitlines()[-1] == f"wgpy: `false {side.iface}' failed with exit status 1"
    missing = run_wgpy(side.ns, "up", str(conf), impl="no-such-wireguard-daemon", check=False)
    assert missing.returncode == 1
    assert missing.stderr.splitlines()[-1] == \
        "wgpy: `no-such-wireguard-daemon' (WG_QUICK_USERSPACE_IMPLEMENTATION) is not installed"
    assert_gone(side, before)


@pytest.mark.netns
def test_down_after_up_was_killed_midway(netlab: Lab, tmp_path: Path) -> None:
    """`up` killed with SIGKILL during PostUp leaves its record; `down` undoes everything from it."""
    side = Side(netlab, netlab.interface())
    before = side.snapshot()
    priv, _ = _key()
    mark = tmp_path / "postup-started"
    extra = f"PostUp = echo $$ > {mark}.tmp; mv {mark}.tmp {mark}; exec sleep 60\n"
    conf = write_conf(tmp_path, side.iface, variant_conf({**VARIANTS["full"], "extra": extra}, priv))
    up = subprocess.Popen(side.ns.cmd([*WGPY, "up", str(conf)]), start_new_session=True,
                          env={**os.environ, "WG_QUICK_USERSPACE_IMPLEMENTATION": "wireguard-go"},
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not mark.exists():
            assert time.monotonic() < deadline and up.poll() is None, "up never reached PostUp"
            time.sleep(0.05)
    finally:
        os.killpg(up.pid, 9)  # our own session: wgpy, nothing else
        up.wait(timeout=10)
    os.kill(int(mark.read_text()), 9)  # the hook (in a session of its own), which wgpy could not end
    record = json.loads(Path(quick.STATE_DIR_DEFAULT, f"{side.iface}.json").read_text())
    assert not record["complete"] and len(record["rules"]) == 4 and record["nft_tables"]
    down = run_wgpy(side.ns, "down", str(conf))
    assert "ip -4 rule delete not fwmark 51820 table 51820" in down.stderr
    assert_gone(side, before)


@pytest.mark.netns
def test_sigterm_during_up_undoes_it(netlab: Lab, tmp_path: Path) -> None:
    """SIGTERM while PostUp runs: the hook is ended and everything `up` did is undone (wg-quick's trap)."""
    side = Side(netlab, netlab.interface())
    before = side.snapshot()
    priv, _ = _key()
    mark = tmp_path / "postup-started"
    extra = f"PostUp = touch {mark}; sleep 60; true\n"
    conf = write_conf(tmp_path, side.iface, variant_conf({**VARIANTS["full"], "extra": extra}, priv))
    up = subprocess.Popen(side.ns.cmd([*WGPY, "up", str(conf)]), text=True,
                          env={**os.environ, "WG_QUICK_USERSPACE_IMPLEMENTATION": "wireguard-go"},
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    netlab.processes.append(up)  # type: ignore[arg-type]
    deadline = time.monotonic() + 30
    while not mark.exists():
        assert time.monotonic() < deadline and up.poll() is None, "up never reached PostUp"
        time.sleep(0.05)
    up.terminate()  # `ip netns exec` execs wgpy: this is wgpy's PID
    _, stderr = up.communicate(timeout=30)
    assert up.returncode == 1
    assert stderr.splitlines()[-1] == "wgpy: interrupted; what `up' had done is undone"
    assert "[#] ip link delete dev" in stderr
    assert_gone(side, before)


@pytest.mark.netns
def test_down_after_the_daemon_died(netlab: Lab, tmp_path: Path) -> None:
    """The daemon is gone (and with it the link): `down` still removes the rules and firewall `up` added."""
    side = Side(netlab, netlab.interface())
    before = side.snapshot()
    priv, _ = _key()
    conf = write_conf(tmp_path, side.iface, variant_conf(VARIANTS["full"], priv))
    run_wgpy(side.ns, "up", str(conf))
    record = json.loads(Path(quick.STATE_DIR_DEFAULT, f"{side.iface}.json").read_text())
    assert record["complete"] and record["daemon_pid"] > 0
    os.kill(record["daemon_pid"], 9)  # the wireguard-go this test started, by its recorded PID
    deadline = time.monotonic() + 10
    while side.ns.run(["ip", "link", "show", "dev", side.iface], check=False).returncode == 0:
        assert time.monotonic() < deadline, "the link outlived its daemon"
        time.sleep(0.05)
    down = run_wgpy(side.ns, "down", str(conf))
    assert "ip -6 rule delete table main suppress_prefixlength 0" in down.stderr
    assert_gone(side, before)  # the socket a SIGKILLed wireguard-go leaves behind included
