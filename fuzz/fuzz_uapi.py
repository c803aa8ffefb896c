"""Fuzz the UAPI: the request parser, the all-or-nothing apply step, and the socket server's framing.

Invariants:

- ``parse_request`` on arbitrary lines returns a request or raises :class:`UapiError` with a negative errno (an
  unknown operation line is the documented :class:`KeyError`: the server hangs up). The error message never holds
  the value of a ``private_key`` / ``preshared_key`` line.
- ``apply_set`` of any request that parsed never fails with -EIO (its "this cannot happen" path), and the resulting
  configuration, read back with ``format_get`` and sent again as a ``set``, gives the same configuration.
- The client's ``parse_get`` reads back exactly what the device holds, and on arbitrary lines raises only its
  ``UapiError`` (EPROTO), without quoting a key.
- The server, fed arbitrary bytes on a real Unix socket, answers every request with ``errno=N`` (N <= 0) and an
  empty line, never raises out of ``handle``, and ends the connection.

    python3 fuzz/fuzz_uapi.py -runs=100000
"""

from __future__ import annotations

import ipaddress
import logging
import os
import random
import select
import socket
import sys
import tempfile

import atheris

with atheris.instrument_imports(include=["wgpy"]):
    from wgpy.protocol.device import Device
    from wgpy.uapi import client
    from wgpy.uapi.apply import apply_set, format_get
    from wgpy.uapi.request import EIO, OPERATIONS, GetRequest, Request, SetRequest, UapiError, parse_request
    from wgpy.uapi.server import UapiServer

_KEYS = (
    "e84b5a6d2717c1003a13b431570353dbaca9146cf150c5f8575680feba52027a",
    "c3b1f2f2de7bf8b3d9bd49e8bcac8e2f2b3b37c1f4c3b6f5d8ae5e2a6b8e0f6a",
    "0000000000000000000000000000000000000000000000000000000000000000",
    "58FF5A4CCC3D96E6E7D7E7B3A6D2B1C0A9F8E7D6C5B4A39281706F5E4D3C2B1A",
)
_LINES = (
    "private_key={k}", "listen_port={n}", "fwmark={n}", "replace_peers={b}", "public_key={k}", "remove={b}",
    "update_only={b}", "preshared_key={k}", "endpoint={v}:{n}", "endpoint=[{v}]:{n}", "endpoint=192.0.2.{n}:{n}",
    "persistent_keepalive_interval={n}", "replace_allowed_ips={b}", "allowed_ip={v}/{n}", "allowed_ip=10.{n}.0.0/{n}",
    "allowed_ip=fd00::{n}/{n}", "protocol_version={n}", "{v}={v}", "{v}",
)
_CONFIG_KEYS = ("private_key", "listen_port", "fwmark", "public_key", "preshared_key", "endpoint",
                "persistent_keepalive_interval", "allowed_ip")


class _Rng:
    """Deterministic randomness, so that a crashing input replays identically."""

    def __init__(self) -> None:
        self.r = random.Random(7)

    def token_bytes(self, n: int) -> bytes:
        return self.r.randbytes(n)

    def index(self) -> int:
        return self.r.getrandbits(32)

    def jitter(self, max_seconds: float) -> float:
        return 0.0


def _secrets(lines: list[str]) -> tuple[list[str], str]:
    """Values of ``private_key`` / ``preshared_key`` lines that are keys (64 hex digits, not zero), and the text of
    every other line (which an error message may legitimately quote)."""
    found: list[str] = []
    others: list[str] = []
    for line in lines:
        key, _, value = line.partition("=")
        if (key in ("private_key", "preshared_key") and len(value) == 64 and value.strip("0")
                and all(c in "0123456789abcdefABCDEF" for c in value)):
            found.append(value.lower())
        else:
            others.append(line.lower())
    return found, "\n".join(others)


def _leaks(lines: list[str], message: str) -> bool:
    """Whether 8 consecutive hex digits of a key, found in no other line, appear in ``message``."""
    secrets, others = _secrets(lines)
    message = message.lower()
    return any(
        secret[i : i + 8] in message and secret[i : i + 8] not in others
        for secret in secrets
        for i in range(len(secret) - 7)
    )


def _check_message(lines: list[str], exc: UapiError) -> None:
    assert exc.code < 0, exc.code
    assert not _leaks(lines, str(exc)), f"key material in a UAPI error: {exc}"


def _as_set(get_body: str) -> list[str]:
    return [line for line in get_body.splitlines() if line.partition("=")[0] in _CONFIG_KEYS]


def _config_of(device: Device) -> list[str]:
    return _as_set(format_get(device))


def _apply(request: SetRequest) -> Device:
    device = Device(rng=_Rng())
    try:
        apply_set(device, request, 1.0, 1_800_000_000.0)
    except UapiError as exc:
        assert exc.code != EIO, "apply_set hit its internal-error path"
        raise
    return device


def _check_request(operation: str, lines: list[str]) -> None:
    if operation not in OPERATIONS:
        try:
            parse_request(operation, lines)
        except KeyError:
            return
        raise AssertionError("an unknown operation was accepted")
    try:
        request = parse_request(operation, lines)
    except UapiError as exc:
        _check_message(lines, exc)
        return
    if not isinstance(request, SetRequest):
        assert not lines
        return
    device = _apply(request)
    _check_client_reads(device)
    config = _config_of(device)
    # The configuration read back, sent again, is a fixed point.
    again = parse_request("set=1", config)
    assert isinstance(again, SetRequest)
    assert _config_of(_apply(again)) == config, config


def _check_client_reads(device: Device) -> None:
    """What ``wg`` (our client) reads back from a ``get`` answer is what the device holds."""
    state = client.parse_get("fz", format_get(device).splitlines())
    assert state.private_key == device.private_key and state.listen_port == device.listen_port
    assert state.fwmark == device.fwmark
    assert [p.public_key for p in state.peers] == [p.public_key for p in device.peers()]
    for seen, peer in zip(state.peers, device.peers(), strict=True):
        assert seen.preshared_key == peer.preshared_key
        assert seen.persistent_keepalive == peer.persistent_keepalive
        assert seen.allowed_ips == device.allowed_ips.entries_for(peer)
        if peer.endpoint is None:
            assert seen.endpoint is None
        else:
            assert seen.endpoint is not None and seen.endpoint[1] == peer.endpoint[1]
            assert ipaddress.ip_address(seen.endpoint[0]) == ipaddress.ip_address(peer.endpoint[0])


def _check_client_parse(lines: list[str]) -> None:
    """The client's parser of ``get`` answers, fed what a hostile or broken daemon could send."""
    try:
        client.parse_get("fz", lines)
    except client.UapiError as exc:
        assert exc.errno is not None and exc.errno > 0
        assert not _leaks(lines, str(exc)), f"key material in a client error: {exc}"


def _grammar(fdp: atheris.FuzzedDataProvider) -> list[str]:
    lines = []
    for _ in range(fdp.ConsumeIntInRange(0, 16)):
        template = _LINES[fdp.ConsumeIntInRange(0, len(_LINES) - 1)]
        choice = fdp.ConsumeIntInRange(0, 4)
        key = _KEYS[choice] if choice < 4 else fdp.ConsumeUnicodeNoSurrogates(64)
        number = str(fdp.ConsumeIntInRange(0, 70000)) if fdp.ConsumeBool() else fdp.ConsumeUnicodeNoSurrogates(6)
        flag = "true" if fdp.ConsumeBool() else fdp.ConsumeUnicodeNoSurrogates(5)
        value = fdp.ConsumeUnicodeNoSurrogates(20)
        lines.append(template.replace("{k}", key).replace("{n}", number).replace("{b}", flag).replace("{v}", value))
    return lines


# --- the server, on a real Unix socket ---------------------------------------------------------------------------

_server: UapiServer | None = None
_socket_path = ""


def _handler(request: Request) -> tuple[str, int]:
    if isinstance(request, SetRequest):
        _apply(request)
        return "", 0
    if isinstance(request, GetRequest):
        return "listen_port=0\n", 0
    return "", 0


def _get_server() -> UapiServer:
    global _server, _socket_path
    if _server is None:
        directory = tempfile.mkdtemp(prefix="wgpy-fuzz-uapi-")
        _socket_path = os.path.join(directory, "fz.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(_socket_path)
        listener.listen(16)
        _server = UapiServer(listener, _handler, select.epoll(), max_request=2048)
    return _server


def _check_server(data: bytes) -> None:
    server = _get_server()
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        client.connect(_socket_path)
        server.handle(server.fileno(), select.EPOLLIN)
        assert len(server.clients) == 1
        client.sendall(data)
        client.shutdown(socket.SHUT_WR)
        client.setblocking(False)
        received = bytearray()
        for _ in range(64):
            for fd in list(server.clients):
                server.handle(fd, select.EPOLLIN | select.EPOLLOUT)
            try:
                while chunk := client.recv(65536):
                    received += chunk
            except BlockingIOError:
                pass
            if not server.clients:
                break
        assert not server.clients, "the server kept a connection whose client sent everything and hung up"
        try:
            while chunk := client.recv(65536):
                received += chunk
        except BlockingIOError:
            pass
    finally:
        client.close()
    text = received.decode()
    assert text == "" or text.endswith("\n\n"), text[-80:]
    for answer in text.split("\n\n")[:-1]:
        last = answer.rsplit("\n", 1)[-1]
        assert last.startswith("errno="), answer[-80:]
        assert int(last[6:]) <= 0


def TestOneInput(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    mode = fdp.ConsumeIntInRange(0, 4)
    if mode == 4:
        _check_client_parse(_grammar(fdp) if fdp.ConsumeBool() else
                            fdp.ConsumeBytes(fdp.remaining_bytes()).decode("utf-8", "replace").split("\n"))
        return
    if mode == 3:
        _check_server(fdp.ConsumeBytes(fdp.remaining_bytes()))
        return
    if mode == 2:
        operation = ("set=1", "get=1", "wgpy_stats=1")[fdp.ConsumeIntInRange(0, 2)]
        lines = _grammar(fdp)
    else:
        text = fdp.ConsumeBytes(fdp.remaining_bytes()).decode("utf-8", "replace")
        operation, _, rest = text.partition("\n")
        lines = rest.split("\n")
        if mode == 1:
            operation = "set=1"
        # The server hands the parser the lines before the first empty one.
        if "" in lines:
            lines = lines[: lines.index("")]
    _check_request(operation, lines)


def seeds() -> list[bytes]:
    request = (
        "set=1\nprivate_key=" + _KEYS[0] + "\nlisten_port=51820\nreplace_peers=true\npublic_key=" + _KEYS[1]
        + "\npreshared_key=" + _KEYS[3] + "\nendpoint=[2001:db8::1]:51820\npersistent_keepalive_interval=25\n"
        "replace_allowed_ips=true\nallowed_ip=10.0.0.2/32\nallowed_ip=fd00::2/128\n\n"
    ).encode()
    return [b"\x00" + request, b"\x03" + request + b"get=1\n\n", b"\x03get=1\n\nbogus\n"]


def main() -> None:
    # The server logs every refused request; a campaign would drown its own statistics in them.
    logging.getLogger("wgpy").disabled = True
    logging.getLogger("wgpy.uapi").disabled = True
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
