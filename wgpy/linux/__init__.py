"""Linux data plane: the TUN device (tun.py), the UDP sockets (udp.py), segmentation offload (offload.py) and
the internet checksum (checksum.py). Nothing here knows WireGuard: it moves IP packets and UDP datagrams in
batches."""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from contextlib import contextmanager

CLONE_NEWNET = 0x40000000


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextmanager
def in_netns(netns: str) -> Iterator[None]:
    """Run the body with the calling thread in another network namespace (a name under /var/run/netns or a
    path).

    Devices and sockets created inside stay in that namespace after the block; their file descriptors keep
    working from anywhere. That is how a daemon (or a test) opens a TUN device or binds a socket in a
    namespace it does not live in; Python 3.11 has no os.setns, hence ctypes. Only the calling thread moves.
    """
    path = netns if "/" in netns else f"/var/run/netns/{netns}"
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(own)
