"""The debugging key log, in the format Wireshark's WireGuard dissector reads (preference ``wg.keylog_file``).

For every ephemeral key the daemon creates (as initiator or responder) it appends::

    LOCAL_STATIC_PRIVATE_KEY = <base64>
    REMOTE_STATIC_PUBLIC_KEY = <base64>
    LOCAL_EPHEMERAL_PRIVATE_KEY = <base64>
    PRESHARED_KEY = <base64>            (only when the peer has one; it belongs to the ephemeral key before it)

which is what Wireshark's ``extract-handshakes.sh`` produces for the kernel module. With it Wireshark decrypts the
handshake's static key and timestamp and every transport message of the session.

The log holds secrets that decrypt all traffic: it is off by default, the file is created 0600 (and an existing
file is made 0600), and the daemon warns loudly at start when it is on.

The hook into the core is :class:`EphemeralKeySink`: ``Device.keylog`` is called with the peer and the fresh
ephemeral private key each time the Device creates one, before it is used.
"""

from __future__ import annotations

import base64
import os
from typing import Protocol

from wgpy.protocol.device import Device
from wgpy.protocol.peer import Peer


class EphemeralKeySink(Protocol):
    """What ``Device.keylog`` is: called with (peer, ephemeral private key) for every ephemeral key created."""

    def __call__(self, peer: Peer, ephemeral_private: bytes) -> None: ...


def _b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def format_entry(
    local_static_private: bytes, remote_static_public: bytes, local_ephemeral_private: bytes,
    preshared_key: bytes | None,
) -> str:
    lines = [
        f"LOCAL_STATIC_PRIVATE_KEY = {_b64(local_static_private)}",
        f"REMOTE_STATIC_PUBLIC_KEY = {_b64(remote_static_public)}",
        f"LOCAL_EPHEMERAL_PRIVATE_KEY = {_b64(local_ephemeral_private)}",
    ]
    if preshared_key is not None:
        lines.append(f"PRESHARED_KEY = {_b64(preshared_key)}")
    return "".join(line + "\n" for line in lines)


class KeyLog:
    """Appends key log entries for one Device; install with ``device.keylog = KeyLog(path, device)``."""

    def __init__(self, path: str, device: Device) -> None:
        self.path = path
        self.device = device
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        os.fchmod(self.fd, 0o600)

    def __call__(self, peer: Peer, ephemeral_private: bytes) -> None:
        local = self.device.private_key
        if local is None:
            return
        entry = format_entry(local, peer.public_key, ephemeral_private, peer.preshared_key).encode()
        try:
            os.write(self.fd, entry)  # one write per entry, O_APPEND: entries never interleave
        except OSError:
            pass  # a full disk must not stop the tunnel

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __repr__(self) -> str:
        return f"KeyLog({self.path!r})"
