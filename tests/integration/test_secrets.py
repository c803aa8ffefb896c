"""No private or preshared key ever reaches a log, an error message or a readable file.

wgpyd runs with LOG_LEVEL=debug and no key log, against wireguard-go: handshake, traffic, a PSK change followed by
a handshake under the new PSK, then UAPI sets with bad keys (made from the real keys, one character wrong, so an
error that echoed its input would show most of a real key). Then every private and preshared key is looked for in
wgpyd's output (standard output and error, the only places it logs) and in the audit log, in hex and in base64,
in pieces of 6 base64 characters or 10 hex digits. The same for the ``wgpy`` CLI's error messages on bad key
input; and the files that wgpy commands create with keys in them must be mode 0600.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from tests.integration.test_daemon_lab import (
    WGPYD,
    WIREGUARD_GO,
    Node,
    genkey,
    genpsk,
    interface_block,
    peer_block,
    uapi,
)
from tests.integration.test_soak import readd_peer, set_psk
from tests.netns import Lab, netlab  # noqa: F401  (the fixture)
from wgpy import keys

pytestmark = pytest.mark.netns


# A leaked piece this long is no coincidence: 6 base64 characters are 36 bits of the key, 10 hex digits 40.
PIECE_B64 = 6
PIECE_HEX = 10


def forms(key_b64: str) -> list[str]:
    """Every piece of the key, in base64 and in lowercase hex, long enough to count as a leak (a truncated
    "PrivateKey=abcdefghi..." in an error message leaks as surely as the whole key, only less of it)."""
    hex_text = keys.from_base64(key_b64).hex()
    body = key_b64.rstrip("=")  # the final '=' is no secret
    out = [body[i:i + PIECE_B64] for i in range(len(body) - PIECE_B64 + 1)]
    out += [hex_text[i:i + PIECE_HEX] for i in range(len(hex_text) - PIECE_HEX + 1)]
    return out


def leaks(text: str, secrets: dict[str, str]) -> list[str]:
    lower = text.lower()
    found = []
    for name, key in secrets.items():
        for piece in forms(key):
            if piece in text or (all(c in "0123456789abcdef" for c in piece) and piece in lower):
                found.append(f"{name}: {piece!r}")
                break
    return found


def one_wrong(text: str, bad: str) -> str:
    """The key text with its last character replaced by an invalid one."""
    return text[:-1] + bad


def test_no_key_in_daemon_logs_or_errors(netlab: Lab, tmp_path: Path) -> None:  # noqa: F811
    ns_a, ns_b = netlab.namespace(), netlab.namespace()
    netlab.veth(ns_a, ["198.18.0.1/24"], ns_b, ["198.18.0.2/24"])
    a = Node(ns_a, netlab.interface(), WGPYD, "198.18.0.1", "", "10.0.0.1", "fd00:a::1")
    b = Node(ns_b, netlab.interface(), WIREGUARD_GO, "198.18.0.2", "", "10.0.0.2", "fd00:a::2")
    a.log.unlink(missing_ok=True)
    audit = tmp_path / "audit.log"
    # Debug logging, key log explicitly off (an empty WGPY_KEYLOG means none).
    a.start(extra_env={"LOG_LEVEL": "debug", "WGPY_KEYLOG": "", "WGPY_AUDIT_LOG": str(audit)})
    b.start(extra_env={"LOG_LEVEL": "error"})
    psk1 = genpsk()
    b.setconf(interface_block(b) + peer_block(a, "10.0.0.1/32,fd00:a::1/128", psk=psk1))
    a.setconf(interface_block(a) + peer_block(b, "10.0.0.2/32,fd00:a::2/128", f"{b.outer4}:{b.port}", psk1))
    a.ns.wait_ping(b.inner4, 20)
    assert b.ns.ping(a.inner4, count=20).returncode == 0
    # A PSK change, then a handshake that can only complete under the new PSK.
    psk2 = genpsk()
    set_psk(b, a, psk2)
    set_psk(a, b, psk2)
    readd_peer(a, b, psk2)
    a.ns.wait_ping(b.inner4, 20)

    # Bad keys over the UAPI: wrong characters, wrong lengths, made from the real secrets.
    spare_private, _ = genkey()
    a_hex = keys.from_base64(a.private).hex()
    psk2_hex = keys.from_base64(psk2).hex()
    spare_hex = keys.from_base64(spare_private).hex()
    b_hex = keys.from_base64(b.public).hex()
    bad_sets = [
        f"set=1\nprivate_key={one_wrong(a_hex, 'g')}\n\n",
        f"set=1\nprivate_key={spare_hex[:-2]}\n\n",
        f"set=1\nprivate_key={spare_hex}00\n\n",
        f"set=1\nprivate_key={spare_private}\n\n",  # base64 where hex is expected
        f"set=1\npublic_key={b_hex}\npreshared_key={one_wrong(psk2_hex, 'x')}\n\n",
        f"set=1\npublic_key={b_hex}\npreshared_key={psk2}\n\n",
        f"set=1\nprivate_key={spare_hex}\nlisten_port=notaport\n\n",  # valid key, request refused later on
        f"set=1\nprivate_key={spare_hex}\npublic_key={b_hex}\nendpoint=bogus\n\n",
    ]
    for request in bad_sets:
        answer = uapi(a.iface, request)
        assert answer.startswith("errno=-") or "\nerrno=-" in answer, (request[:20], answer)
        assert not leaks(answer, {"spare": spare_private, "a": a.private, "psk2": psk2})
    # Nothing changed: the tunnel still works under the real keys.
    assert a.ns.ping(b.inner4).returncode == 0

    assert a.ns.ping(b.inner4).returncode == 0
    pid = a.pids()[0]
    os.kill(pid, 15)
    for _ in range(100):
        if not a.pids():
            break
        subprocess.run(["sleep", "0.05"], check=True)
    log = a.log.read_text()
    assert "Handshake completed" in log or "handshake" in log.lower(), log[-2000:]  # debug logging was on
    secrets = {"wgpyd private": a.private, "wireguard-go private": b.private, "psk1": psk1, "psk2": psk2,
               "spare private": spare_private}
    assert not leaks(log, secrets), (leaks(log, secrets), log[-3000:])
    if audit.exists():
        assert not leaks(audit.read_text(), secrets)
        assert stat.S_IMODE(audit.stat().st_mode) == 0o600


CLI_CASES = {
    "set-private-key-bad-char": lambda key, psk, peer: (["set", "{iface}", "private-key", "{file}"], key[:-1] + "!\n"),
    "set-psk-bad-char": lambda key, psk, peer: (["set", "{iface}", "peer", peer, "preshared-key", "{file}"],
                                                psk[:-2] + "*=\n"),
    "pubkey-bad-char": lambda key, psk, peer: (["pubkey"], key[:-1] + "*\n"),
    "pubkey-short": lambda key, psk, peer: (["pubkey"], key[:30] + "\n"),
    "setconf-bad-private-key": lambda key, psk, peer: (["setconf", "{iface}", "{file}"],
                                                       f"[Interface]\nPrivateKey = {key[:-1]}#\n"),
    "setconf-private-key-outside-section": lambda key, psk, peer: (["setconf", "{iface}", "{file}"],
                                                                   f"PrivateKey = {key}\n[Interface]\n"),
    "setconf-psk-outside-section": lambda key, psk, peer: (["setconf", "{iface}", "{file}"],
                                                           f"PresharedKey={psk}\n[Interface]\n"),
    "setconf-short-psk": lambda key, psk, peer: (
        ["setconf", "{iface}", "{file}"],
        f"[Interface]\nPrivateKey = {key}\n[Peer]\nPublicKey = {peer}\nPresharedKey = {psk[:-3]}\n"),
    "setconf-psk-in-interface": lambda key, psk, peer: (["setconf", "{iface}", "{file}"],
                                                        f"[Interface]\nPresharedKey = {psk}\n"),
}


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_cli_errors_do_not_echo_keys(netlab: Lab, tmp_path: Path, case: str) -> None:  # noqa: F811
    """wgpy refuses bad key input with a clear error on standard error that repeats no piece of the key."""
    ns = netlab.namespace()
    node = Node(ns, netlab.interface(), WGPYD, "", "", "10.0.0.1", "fd00:a::1")
    node.start(extra_env={"LOG_LEVEL": "error"})
    key, _ = genkey()
    psk = genpsk()
    _, peer = genkey()
    args, content = CLI_CASES[case](key, psk, peer)
    path = tmp_path / "input"
    path.write_text(content)
    argv = ["wgpy", *(a.format(iface=node.iface, file=path) for a in args)]
    proc = ns.run(argv, check=False, input=content if args == ["pubkey"] else None)
    assert proc.returncode != 0, (argv, proc.stdout)
    assert proc.stderr.strip(), argv  # a clear error...
    found = leaks(proc.stdout + proc.stderr, {"private key": key, "psk": psk})
    assert not found, (case, found, proc.stderr)  # ...that does not repeat the key


def test_key_files_created_by_wgpy_are_private(tmp_path: Path) -> None:
    """Files that wgpy writes with keys in them are 0600 whatever the umask."""
    server_private, _server_public = genkey()
    server_conf = tmp_path / "wgs0.conf"
    server_conf.write_text(f"[Interface]\nAddress = 10.9.0.1/24\nListenPort = 51820\nPrivateKey = {server_private}\n")
    client_conf = tmp_path / "clients" / "alice.conf"
    audit = tmp_path / "audit.log"
    old = os.umask(0o022)
    try:
        out = subprocess.run(
            ["wgpy", "peer", "add", "--config", str(server_conf), "--endpoint", "198.18.0.1:51820", "--no-apply",
             "--no-qr", "--output", str(client_conf), "--audit-log", str(audit), "wgs0", "alice"],
            capture_output=True, text=True, timeout=60,
        )
    finally:
        os.umask(old)
    assert out.returncode == 0, out.stderr
    for path in (server_conf, client_conf, audit):
        assert path.exists(), path
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, (path, oct(path.stat().st_mode))
    client_text = client_conf.read_text()
    assert "PrivateKey" in client_text and "PresharedKey" in client_text
    # The printed output may show the QR-less client summary but never the client's private key or the PSK.
    private = next(line.split("=", 1)[1].strip() for line in client_text.splitlines() if line.startswith("PrivateKey"))
    psk = next(line.split("=", 1)[1].strip() for line in client_text.splitlines() if line.startswith("PresharedKey"))
    assert not leaks(audit.read_text(), {"client private": private, "psk": psk, "server private": server_private})
    assert not leaks(out.stderr, {"client private": private, "psk": psk, "server private": server_private})
