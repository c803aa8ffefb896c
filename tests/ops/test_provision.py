"""Provisioning edits the server configuration line by line: everything else stays byte-for-byte."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import random
import stat
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wgpy import config as wgconfig
from wgpy import keys
from wgpy.ops import provision
from wgpy.ops.cli import COMMANDS
from wgpy.ops.expiry import expire, expired_peers
from wgpy.ops.provision import AddRequest, ConfigText, Layout, ProvisionError, Target

from .test_qr import decode, rasterise


def _server_text() -> str:
    k = keys.to_base64
    return (
        "# the office VPN -- hand edited, keep my comments\n"
        "[Interface]\n"
        "Address = 10.7.0.1/24, fd00:7::1/64\n"
        "ListenPort = 51820\n"
        f"PrivateKey = {k(keys.generate_private_key())}\n"
        "\n"
        "[Peer]\n"
        "# friendly_name = alice laptop\n"
        "#   an unrelated remark\n"
        f"PublicKey   =   {k(keys.public_key(keys.generate_private_key()))}\n"
        "AllowedIPs = 10.7.0.2/32,fd00:7::2/128   # trailing comment\n"
        "\n"
        "[Peer]\n"
        "# friendly_name = bob\n"
        f"PublicKey = {k(keys.public_key(keys.generate_private_key()))}\n"
        "AllowedIPs = 10.7.0.3/32, 10.7.0.8/29\n"
    )


@pytest.fixture
def server(tmp_path: Path) -> Target:
    path = tmp_path / "wgx.conf"
    path.write_text(_server_text())
    return Target(path, "wgx-not-running")


def test_add_appends_and_keeps_every_other_byte(server: Target) -> None:
    before = server.path.read_text()
    result = provision.add_peer(server, AddRequest("carol phone", endpoint="vpn.example.net:51820"))
    after = server.path.read_text()
    # The only changes: the remembered endpoint line in [Interface] and the appended peer.
    assert after.startswith(before.split("\n[Peer]")[0].replace(
        "[Interface]\n", "[Interface]\n# endpoint = vpn.example.net:51820\n"))
    rest_before = before[before.index("\n[Peer]"):]
    assert rest_before in after
    assert stat.S_IMODE(os.stat(server.path).st_mode) == 0o600
    cfg = wgconfig.load(str(server.path))
    assert [p.friendly_name for p in cfg.peers] == ["alice laptop", "bob", "carol phone"]
    carol = cfg.peers[-1]
    assert [str(n) for n in carol.allowed_ips] == ["10.7.0.4/32", "fd00:7::3/128"]
    assert carol.preshared_key is not None
    # The client configuration is parseable and matches the server's view.
    client = wgconfig.parse(result.client_text, "client")
    assert result.client_private_key is not None
    assert client.interface.private_key == result.client_private_key
    assert keys.public_key(result.client_private_key) == carol.public_key
    assert [str(a) for a in client.interface.addresses] == ["10.7.0.4/32", "fd00:7::3/128"]
    assert client.interface.dns == ["10.7.0.1", "fd00:7::1"]
    (server_peer,) = client.peers
    assert server_peer.preshared_key == carol.preshared_key
    assert [str(n) for n in server_peer.allowed_ips] == ["0.0.0.0/0", "::/0"]
    assert server_peer.endpoint == "vpn.example.net:51820"
    # Removing the peer again restores the file byte-for-byte (but for the remembered endpoint).
    provision.remove_peer(server, "carol phone")
    assert server.path.read_text() == before.replace(
        "[Interface]\n", "[Interface]\n# endpoint = vpn.example.net:51820\n")


def test_remove_middle_peer_keeps_others(server: Target) -> None:
    before = server.path.read_text()
    provision.remove_peer(server, "alice laptop")
    after = server.path.read_text()
    bob_block = before[before.index("[Peer]\n# friendly_name = bob"):]
    assert after == before[:before.index("[Peer]")] + bob_block


def test_public_key_brought_by_client(server: Target) -> None:
    client_key = keys.generate_private_key()
    pub = keys.public_key(client_key)
    result = provision.add_peer(server, AddRequest("dave", endpoint="198.18.0.1:51820", public_key=pub))
    assert result.client_private_key is None
    assert provision.PLACEHOLDER_PRIVATE_KEY in result.client_text
    assert keys.to_base64(client_key) not in server.path.read_text() + result.client_text
    assert wgconfig.load(str(server.path)).peers[-1].public_key == pub


def test_layouts(server: Target) -> None:
    hub = provision.add_peer(server, AddRequest("spoke", layout=Layout.HUB_AND_SPOKE, endpoint="h:1"))
    hub_client = wgconfig.parse(hub.client_text)
    assert [str(n) for n in hub_client.peers[0].allowed_ips] == ["10.7.0.0/24", "fd00:7::/64"]
    assert hub_client.interface.dns == []
    cfg = wgconfig.load(str(server.path))
    assert provision.FORWARDING_V4 in cfg.interface.post_up and provision.FORWARDING_V6 in cfg.interface.post_up
    site = provision.add_peer(server, AddRequest(
        "branch", layout=Layout.SITE_TO_SITE, endpoint="h:1", routes=[ipaddress.ip_network("10.20.0.0/24")],
        server_routes=[ipaddress.ip_network("10.10.0.0/24")]))
    assert [str(n) for n in site.peer.allowed_ips] == ["10.7.0.5/32", "fd00:7::4/128", "10.20.0.0/24"]
    site_client = wgconfig.parse(site.client_text)
    assert [str(n) for n in site_client.peers[0].allowed_ips] == ["10.7.0.0/24", "fd00:7::/64", "10.10.0.0/24"]
    cfg = wgconfig.load(str(server.path))
    assert cfg.interface.post_up.count(provision.FORWARDING_V4) == 1
    assert cfg.interface.metadata["routes"] == "10.10.0.0/24"
    with pytest.raises(ProvisionError, match="overlaps"):
        provision.add_peer(server, AddRequest("other", layout=Layout.SITE_TO_SITE, endpoint="h:1",
                                              routes=[ipaddress.ip_network("10.20.0.128/25")]))
    with pytest.raises(ProvisionError, match="exists already"):
        provision.add_peer(server, AddRequest("branch", endpoint="h:1"))


def test_endpoint_required(server: Target) -> None:
    with pytest.raises(ProvisionError, match="--endpoint"):
        provision.add_peer(server, AddRequest("x"))


def test_expiry(server: Target) -> None:
    provision.add_peer(server, AddRequest("temp", endpoint="h:1", expires=dt.date(2026, 12, 31)))
    cfg = wgconfig.load(str(server.path))
    assert cfg.peers[-1].metadata["expires"] == "2026-12-31"
    assert expired_peers(cfg, dt.date(2026, 12, 31)) == []
    before_add = _strip_endpoint(server.path.read_text())
    result = expire(server, dt.date(2027, 1, 1))
    assert [p.friendly_name for p in result.removed] == ["temp"] and not result.applied_live
    after = _strip_endpoint(server.path.read_text())
    assert "temp" not in after and after in before_add


def _strip_endpoint(text: str) -> str:
    return text.replace("# endpoint = h:1\n", "")


def test_import_names_peers(tmp_path: Path) -> None:
    k = keys.to_base64
    source = tmp_path / "old.conf"
    source.write_text(
        "[Interface]\nAddress = 10.9.0.1/24\n"
        f"PrivateKey = {k(keys.generate_private_key())}\n\n"
        f"[Peer]\n# Laptop of Eve\nPublicKey = {k(keys.public_key(keys.generate_private_key()))}\n"
        "AllowedIPs = 10.9.0.2/32, 10.9.0.64/26, 192.168.5.0/24\n\n"
        f"[Peer]\nPublicKey = {k(keys.public_key(keys.generate_private_key()))}\nAllowedIPs = 10.9.0.3/32\n"
        f"\n[Peer]\n# friendly_name = kept\nPublicKey = {k(keys.public_key(keys.generate_private_key()))}\n"
    )
    dest = tmp_path / "etc" / "wg9.conf"
    assert COMMANDS["peer"](["import", str(source), "wg9", "--config", str(dest)]) == 0
    cfg = wgconfig.load(str(dest))
    assert [p.friendly_name for p in cfg.peers] == ["Laptop of Eve", "peer2", "kept"]
    (warning,) = provision.wide_allowed_ips(cfg)
    assert "Laptop of Eve" in warning and "10.9.0.64/26" in warning
    assert stat.S_IMODE(os.stat(dest).st_mode) == 0o600


def test_cli_add_writes_client_config_and_prints_qr(server: Target, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    png = tmp_path / "q.png"
    log = tmp_path / "audit.log"
    rc = COMMANDS["peer"](["add", server.interface, "erin", "--config", str(server.path),
                           "--endpoint", "vpn.example.net:51820", "--qr-png", str(png), "--expires", "2030-01-01",
                           "--audit-log", str(log)])
    assert rc == 0
    out = capsys.readouterr().out
    client_path = server.client_path("erin")
    assert stat.S_IMODE(os.stat(client_path).st_mode) == 0o600
    client_text = client_path.read_text()
    import zxingcpp
    from PIL import Image
    assert [b.text for b in zxingcpp.read_barcodes(Image.open(png))] == [client_text]
    # The QR code printed on the terminal (stdout is not a tty here: plain half blocks) decodes to it too.
    assert decode(rasterise(out)) == [client_text]
    # The audit log names the peer by public key and carries no private or preshared key.
    client = wgconfig.parse(client_text)
    secrets_ = [client.interface.private_key, client.peers[0].preshared_key]
    audit_text = log.read_text()
    assert '"event":"peer_added"' in audit_text
    for secret in secrets_:
        assert secret is not None
        assert keys.to_base64(secret) not in audit_text and secret.hex() not in audit_text
    assert COMMANDS["peer"](["list", server.interface, "--config", str(server.path)]) == 0
    listing = capsys.readouterr().out
    assert "erin" in listing and "alice laptop" in listing and "2030-01-01" in listing


def test_config_text_set_value_in_place() -> None:
    ct = ConfigText.from_text(_server_text())
    cfg = ct.parse()
    bob = cfg.peers[1]
    before = ct.text
    psk = keys.generate_preshared_key()
    ct.set_value(ct.peer_range(bob.public_key), "PresharedKey", keys.to_base64(psk), after="PublicKey")
    assert ct.parse().peers[1].preshared_key == psk
    assert ct.text.replace(f"PresharedKey = {keys.to_base64(psk)}\n", "") == before


def test_concurrent_adds_serialise(server: Target) -> None:
    from concurrent.futures import ThreadPoolExecutor

    names = [f"c{i}" for i in range(12)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        list(pool.map(lambda n: provision.add_peer(server, AddRequest(n, endpoint="h:1")), names))
    cfg = wgconfig.load(str(server.path))
    assert sorted(p.friendly_name or "" for p in cfg.peers[2:]) == sorted(names)
    addresses = [str(n) for p in cfg.peers for n in p.allowed_ips]
    assert len(addresses) == len(set(addresses))


_filler = st.sampled_from(["\n", "# a comment\n", "   \n", "# key-like = comment\n", "#\n"])


@st.composite
def server_texts(draw: st.DrawFn) -> str:
    k = keys.to_base64
    lines = [*draw(st.lists(_filler, max_size=2)), "[Interface]\n", "Address = 10.3.0.1/24\n",
             *draw(st.lists(_filler, max_size=2)), f"PrivateKey = {k(keys.generate_private_key())}\n"]
    for n in range(draw(st.integers(min_value=0, max_value=3))):
        lines += draw(st.lists(_filler, max_size=2))
        lines += ["[Peer]\n", *draw(st.lists(_filler, max_size=1)),
                  draw(st.sampled_from(["PublicKey = {}\n", "PublicKey={}\n", "  PublicKey =  {}  # me\n"]))
                  .format(k(keys.public_key(keys.generate_private_key()))),
                  f"AllowedIPs = 10.3.0.{10 + n}/32\n"]
    lines += draw(st.lists(_filler, max_size=2))
    return "".join(lines)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(server_texts(), st.integers(min_value=1, max_value=3), st.randoms(use_true_random=False))
def test_add_then_remove_restores_every_byte(tmp_path: Path, text: str, count: int, rnd: random.Random) -> None:
    path = tmp_path / f"h{rnd.randrange(10**9)}.conf"
    path.write_text(text)
    target = Target(path, "wgh-not-running")
    names = [f"n{i}" for i in range(count)]
    for name in names:
        provision.add_peer(target, AddRequest(name, endpoint="h:1"))
    rnd.shuffle(names)
    for name in names:
        provision.remove_peer(target, name)
    assert path.read_text() == text.replace("[Interface]\n", "[Interface]\n# endpoint = h:1\n", 1)
