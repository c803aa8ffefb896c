"""The UAPI client: parsing the reference answer, framing, errors, listing; live against wireguard-go and wgpyd."""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator

import pytest

from tests.cli.test_show import DAEMONS, start_daemon
from tests.conftest import VECTORS
from tests.netns import lab
from wgpy import keys
from wgpy.uapi import client
from wgpy.uapi.client import DeviceChange, PeerChange, UapiError


def sample_lines() -> list[str]:
    text = (VECTORS / "uapi-get-sample.txt").read_text()
    return [line for line in text.splitlines() if line and not line.startswith("errno=")]


def test_parse_reference_sample() -> None:
    state = client.parse_get("wg0", sample_lines())
    private = bytes.fromhex("f8da0f6143c2a52dee75d1b9d411a2f0cc6f39d7026a30189ad7eba25578b672")
    assert state.private_key == private and state.public_key == keys.public_key(private)
    assert state.listen_port == 51820 and state.fwmark == 0
    (peer,) = state.peers
    assert peer.public_key.hex() == "12b4b55bedafeb67dc4e7c842bbcfc6db97e97fe62b4fbca6270457937941223"
    assert peer.preshared_key is None  # all zero: none
    assert peer.endpoint == ("192.0.2.2", 51820)
    assert peer.last_handshake == (1795562967, 235200898)
    assert (peer.tx_bytes, peer.rx_bytes, peer.persistent_keepalive) == (276, 220, 0)
    assert peer.allowed_ips == [ipaddress.ip_network("10.99.0.2/32")]
    assert "f8da0f61" not in repr(state)


def test_endpoint_and_prefix_text_like_glibc() -> None:
    assert client.parse_endpoint("[fd00:0:0::1]:5") == ("fd00::1", 5)
    assert client.parse_endpoint("[::ffff:1.2.3.4]:5") == ("::ffff:1.2.3.4", 5)
    assert client.format_endpoint(("::ffff:1.2.3.4", 5)) == "[::ffff:1.2.3.4]:5"
    assert client.format_network(ipaddress.ip_network("::ffff:1.2.3.0/120")) == "::ffff:1.2.3.0/120"
    with pytest.raises(ValueError):
        client.parse_endpoint("1.2.3.4:99999")


def test_request_lines_in_wg_order() -> None:
    private, peer, psk = bytes(range(32)), bytes([7]) * 32, bytes([9]) * 32
    change = DeviceChange(private_key=private, listen_port=51820, fwmark=0, replace_peers=True, peers=[
        PeerChange(public_key=peer, preshared_key=psk, endpoint=("fd00::1", 5), persistent_keepalive=25,
                   replace_allowed_ips=True, allowed_ips=[ipaddress.ip_network("10.0.0.0/8")]),
        PeerChange(public_key=psk, remove=True, allowed_ips=[ipaddress.ip_network("10.1.0.0/16")]),
        PeerChange(public_key=private, update_only=True),
    ])
    assert client.request_lines(change) == [
        f"private_key={private.hex()}", "listen_port=51820", "fwmark=0", "replace_peers=true",
        f"public_key={peer.hex()}", f"preshared_key={psk.hex()}", "endpoint=[fd00::1]:5",
        "persistent_keepalive_interval=25", "replace_allowed_ips=true", "allowed_ip=10.0.0.0/8",
        f"public_key={psk.hex()}", "remove=true",
        f"public_key={private.hex()}", "update_only=true",
    ]
    assert "000102" not in repr(change)


class FakeDaemon:
    """A UAPI socket in a private directory that answers like wireguard-go (real socket, real framing)."""

    def __init__(self, directory: str, name: str, answers: dict[bytes, bytes]) -> None:
        self.path = os.path.join(directory, name + ".sock")
        self.answers = answers
        self.requests: list[bytes] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(8)
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                data = b""
                while not data.endswith(b"\n\n"):
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                if not data:
                    continue
                self.requests.append(data)
                op = data.split(b"\n", 1)[0]
                reply = self.answers.get(op, b"")
                # Dribble the answer out in small pieces: the client must reassemble lines.
                for i in range(0, len(reply), 7):
                    conn.sendall(reply[i:i + 7])

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def run_dir() -> Iterator[str]:
    with tempfile.TemporaryDirectory() as d:
        yield d


def test_get_set_and_list_with_a_fake_daemon(run_dir: str, monkeypatch: pytest.MonkeyPatch) -> None:
    sample = (VECTORS / "uapi-get-sample.txt").read_bytes()
    daemon = FakeDaemon(run_dir, "fake0", {b"get=1": sample + b"\n" if not sample.endswith(b"\n\n") else sample,
                                           b"set=1": b"errno=-22\n\n"})
    try:
        # A stale socket (nobody listening), a regular file and a bare ".sock" are not interfaces.
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(os.path.join(run_dir, "stale0.sock"))
        stale.close()
        open(os.path.join(run_dir, "file0.sock"), "w").close()
        open(os.path.join(run_dir, ".sock"), "w").close()
        assert client.list_interfaces(run_dir) == ["fake0"]
        monkeypatch.setenv("WGPY_RUN_DIR", run_dir)
        assert client.list_interfaces() == ["fake0"]
        state = client.get("fake0")
        assert state == client.parse_get("fake0", sample_lines())
        assert daemon.requests[-1] == b"get=1\n\n"
        with pytest.raises(UapiError) as err:
            client.set("fake0", ["listen_port=1"])
        assert err.value.errno == errno.EINVAL and str(err.value).endswith("Invalid argument")
        assert daemon.requests[-1] == b"set=1\nlisten_port=1\n\n"
        with pytest.raises(UapiError) as err:
            client.get("stale0")
        assert err.value.errno in (errno.EPROTONOSUPPORT, errno.ENODEV)
        with pytest.raises(UapiError):
            client.get("../fake0")
    finally:
        daemon.close()


def test_truncated_answer_is_eproto(run_dir: str) -> None:
    daemon = FakeDaemon(run_dir, "cut0", {b"get=1": b"listen_port=1\n"})
    try:
        with pytest.raises(UapiError) as err:
            client.get("cut0", run_dir=run_dir)
        assert err.value.errno == errno.EPROTO
    finally:
        daemon.close()


@pytest.mark.netns
@pytest.mark.parametrize("kind", DAEMONS)
def test_live_get_and_set(kind: str) -> None:
    with lab() as the_lab:
        iface = the_lab.interface()
        start_daemon(the_lab.namespace(), kind, iface)
        assert iface in client.list_interfaces()
        private, peer, psk = keys.generate_private_key(), keys.public_key(keys.generate_private_key()), \
            keys.generate_preshared_key()
        client.apply(iface, DeviceChange(private_key=private, listen_port=51820, fwmark=7, peers=[
            PeerChange(public_key=peer, preshared_key=psk, endpoint=("fd00:1::5", 9), persistent_keepalive=30,
                       replace_allowed_ips=True,
                       allowed_ips=[ipaddress.ip_network("10.1.0.0/16"), ipaddress.ip_network("fd00:7::/64")]),
        ]))
        state = client.get(iface)
        assert state.private_key == private and state.public_key == keys.public_key(private)
        assert (state.listen_port, state.fwmark) == (51820, 7)
        (p,) = state.peers
        assert (p.public_key, p.preshared_key, p.endpoint, p.persistent_keepalive) == (peer, psk, ("fd00:1::5", 9), 30)
        assert sorted(map(str, p.allowed_ips)) == ["10.1.0.0/16", "fd00:7::/64"]
        dump = subprocess.run(["wg", "show", iface, "dump"], capture_output=True, text=True).stdout
        assert f"{keys.to_base64(peer)}\t{keys.to_base64(psk)}\t[fd00:1::5]:9\t" in dump
        with pytest.raises(UapiError) as err:
            client.set(iface, ["listen_port=notanumber"])
        assert err.value.errno == errno.EINVAL
        client.apply(iface, DeviceChange(peers=[PeerChange(public_key=peer, remove=True)]))
        assert client.get(iface).peers == []


def test_missing_interface_errno_as_wg() -> None:
    with pytest.raises(UapiError) as err:
        client.get("wgpynosuch0")
    expected = subprocess.run(["wg", "show", "wgpynosuch0"], capture_output=True, text=True).stderr
    assert err.value.errno is not None
    assert expected == f"Unable to access interface: {os.strerror(err.value.errno)}\n"
