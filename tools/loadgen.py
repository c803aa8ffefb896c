"""Load processes for the scale and soak tests: many real WireGuard clients, and sequence-numbered UDP flows.

    python3 -m tools.loadgen clients --server 198.18.3.1:51820 --server-key B64 --seed HEX --count 1000
        [--bind 198.18.3.2|198.19.250.0/24] [--server-inner 10.0.0.1] [--pings 3] [--handshake-rate 200] [--seconds 120]
    python3 -m tools.loadgen flow --bind 10.0.0.1 --peer 10.0.0.2 [--port 7000] [--rate 1000] [--seconds 60]

``clients``: N WireGuard clients in one process, each a :class:`wgpy.protocol.device.Device` with its own private
key (derived from ``--seed`` and its number, so the test that configures the server knows every public key: see
:func:`client_keys`), its own UDP socket and therefore its own source port, and its own inner address
(:func:`client_address`: 10.1.0.0/16 upwards). Each client pings the server's inner address with ICMP echo
requests built here; the first one makes its core start a handshake (paced at ``--handshake-rate`` new clients per
second, so that the server is not put under load by the test itself), and the server's kernel answers through its
TUN. The run ends when every client has all its echo replies, or after ``--seconds``; it prints a JSON summary with
the clients that failed. Timers (retransmits, keepalives, cookies) are the core's own: the loop feeds it time.

``flow``: one UDP socket that sends sequence-numbered datagrams to a peer at a fixed rate and receives the peer's,
checking that no sequence number arrives twice (and counting losses and reordering). Two of them, one each side of
a tunnel, make the soak test's traffic.

Every loop here is bounded in time (``--seconds``, at most 3600) and stops by itself.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import ipaddress
import json
import os
import resource
import select
import socket
import struct
import sys
import time
from dataclasses import dataclass, field
from typing import Final

from wgpy.protocol.crypto import public_key
from wgpy.protocol.device import Device
from wgpy.protocol.peer import Peer

CLIENT_NET: Final = ipaddress.IPv4Network("10.1.0.0/16")
MAX_SECONDS: Final = 3600.0
_IPV4: Final = struct.Struct("!BBHHHBBH4s4s")
_ICMP: Final = struct.Struct("!BBHHH")


# --- keys and addresses shared with the tests -----------------------------------------------------------------


def client_private_key(seed: bytes, index: int) -> bytes:
    """Client ``index``'s private key: BLAKE2s(seed, index), clamped. Deterministic so the test can configure the
    server with every client's public key without a round trip; the seed is drawn at random per run."""
    key = bytearray(hashlib.blake2s(index.to_bytes(4, "big"), key=seed).digest())
    key[0] &= 248
    key[31] = (key[31] & 127) | 64
    return bytes(key)


def client_keys(seed: bytes, count: int) -> list[tuple[bytes, bytes]]:
    """(private, public) for clients 0..count-1."""
    out = []
    for i in range(count):
        private = client_private_key(seed, i)
        out.append((private, public_key(private)))
    return out


def client_address(index: int) -> str:
    """Client ``index``'s inner IPv4 address: 10.1.0.1 upwards (65,533 clients at most)."""
    if not 0 <= index < CLIENT_NET.num_addresses - 3:
        raise ValueError("client index out of range")
    return str(CLIENT_NET.network_address + 1 + index)


def bind_address(bind: str, n: int) -> str:
    """``bind`` itself, or for a network (``198.19.250.0/24``) its n-th host address: one source address per
    client, so that per-address limits (the responder's rate limiter under load) apply to each client alone."""
    if "/" not in bind:
        return bind
    net = ipaddress.ip_network(bind, strict=False)
    if n >= net.num_addresses - 2:
        raise ValueError(f"{bind} has fewer than {n + 1} host addresses")
    return str(net.network_address + 1 + n)


# --- ICMP echo, built by hand because no library builds raw IPv4 packets for a TUN-less core ----------------------


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def echo_request(src: str, dst: str, ident: int, seq: int, payload: bytes = b"wgpy-loadgen") -> bytes:
    icmp = _ICMP.pack(8, 0, 0, ident, seq) + payload
    icmp = icmp[:2] + struct.pack("!H", checksum(icmp)) + icmp[4:]
    header = _IPV4.pack(0x45, 0, 20 + len(icmp), ident, 0, 64, 1, 0, socket.inet_aton(src), socket.inet_aton(dst))
    header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    return header + icmp


def parse_echo_reply(packet: bytes) -> tuple[str, int, int] | None:
    """(destination, ident, seq) of an ICMP echo reply, or None for anything else."""
    if len(packet) < 28 or packet[0] >> 4 != 4 or packet[9] != 1:
        return None
    ihl = (packet[0] & 0xF) * 4
    icmp_type, _code, _sum, ident, seq = _ICMP.unpack_from(packet, ihl)
    if icmp_type != 0:
        return None
    return socket.inet_ntoa(packet[16:20]), ident, seq


# --- many clients ----------------------------------------------------------------------------------------------


@dataclass
class Client:
    index: int
    address: str
    device: Device
    peer: Peer
    sock: socket.socket
    replies: set[int] = field(default_factory=set)
    sent: int = 0
    started: bool = False

    @property
    def ident(self) -> int:
        return self.index & 0xFFFF


def run_clients(
    server: tuple[str, int], server_key: bytes, server_inner: str, seed: bytes, count: int, bind: str,
    pings: int, handshake_rate: float, seconds: float, first: int = 0,
) -> dict[str, object]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < count + 64:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, count + 1024), hard))
    monotonic, wall_clock = time.monotonic, time.time
    now, wall = monotonic(), wall_clock()
    epoll = select.epoll()
    clients: list[Client] = []
    by_fd: dict[int, Client] = {}
    for i, (private, _public) in enumerate(client_keys(seed, first + count)[first:], start=first):
        device = Device()
        device.set_private_key(private, now)
        peer = device.add_peer(server_key, now)
        device.add_allowed_ip(peer, ipaddress.ip_network(f"{server_inner}/32"))
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.bind((bind_address(bind, i - first), 0))
        client = Client(i, client_address(i), device, peer, sock)
        clients.append(client)
        by_fd[sock.fileno()] = client
        epoll.register(sock.fileno(), select.EPOLLIN)
    setup_time = monotonic() - now

    def flush(c: Client) -> None:
        for endpoint, batch in c.device.take_datagrams():
            for datagram in batch:
                try:
                    c.sock.sendto(datagram, endpoint)
                except OSError:
                    pass
        for packet in c.device.take_packets():
            reply = parse_echo_reply(packet)
            if reply is not None and reply[0] == c.address and reply[1] == c.ident:
                c.replies.add(reply[2])

    def ping(c: Client, seq: int, now: float, wall: float) -> None:
        c.device.send([echo_request(c.address, server_inner, c.ident, seq)], now, wall)
        c.sent += 1
        flush(c)

    start = monotonic()
    deadline = start + seconds
    next_start = 0
    last_resend = start
    done = 0
    while monotonic() < deadline:
        now, wall = monotonic(), wall_clock()
        # Start new clients at the handshake rate: each one's first echo request triggers its handshake.
        due = len(clients) if handshake_rate <= 0 else min(len(clients), int((now - start) * handshake_rate) + 1)
        while next_start < due:
            c = clients[next_start]
            c.device.set_endpoint(c.peer, server, now, wall)
            for seq in range(pings):
                ping(c, seq, now, wall)
            c.started = True
            next_start += 1
        # Echo requests that got no answer in 2 s are sent again (a handshake may have been refused or lost).
        if now - last_resend >= 2.0:
            last_resend = now
            for c in clients[:next_start]:
                for seq in range(pings):
                    if seq not in c.replies:
                        ping(c, seq, now, wall)
        for fd, _mask in epoll.poll(0.02):
            c = by_fd[fd]
            batch = []
            while True:
                try:
                    data, source = c.sock.recvfrom(4096)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    break
                batch.append((data, (source[0], source[1])))
            if batch:
                c.device.receive(batch, now, wall)
                flush(c)
        for c in clients[:next_start]:
            deadline_c = c.device.next_deadline()
            if deadline_c is not None and deadline_c <= now:
                c.device.tick(now, wall)
                flush(c)
        done = sum(1 for c in clients if len(c.replies) >= pings)
        if done == len(clients):
            break
    elapsed = monotonic() - start
    failed = [c.index for c in clients if len(c.replies) < pings]
    stats = {
        "handshakes_completed": sum(c.device.stats.handshakes_completed for c in clients),
        "cookie_replies_received": sum(c.device.stats.cookie_replies_received for c in clients),
        "handshakes_initiated": sum(c.device.stats.handshakes_initiated for c in clients),
    }
    local_ports = {c.sock.getsockname()[1] for c in clients}
    for c in clients:
        epoll.unregister(c.sock.fileno())
        c.sock.close()
    epoll.close()
    return {
        "clients": len(clients),
        "complete": done,
        "failed": failed[:50],
        "failed_count": len(failed),
        "echo_sent": sum(c.sent for c in clients),
        "echo_replies": sum(len(c.replies) for c in clients),
        "distinct_source_ports": len(local_ports),
        "setup_s": setup_time,
        "elapsed_s": elapsed,
        **stats,
    }


# --- sequence-numbered flows -------------------------------------------------------------------------------------

FLOW_MAGIC: Final = b"WGPF"
_FLOW: Final = struct.Struct("!4sQQ")  # magic, run id, sequence number


class SeqReceiver:
    """Counts datagrams by sequence number: duplicates (the property under test), reordering, losses."""

    def __init__(self) -> None:
        self.seen = bytearray(1 << 16)
        self.received = 0
        self.duplicates = 0
        self.reordered = 0
        self.highest = -1
        self.run: int | None = None
        self.foreign = 0

    def add(self, data: bytes) -> None:
        if len(data) < _FLOW.size:
            self.foreign += 1
            return
        magic, run, seq = _FLOW.unpack_from(data)
        if magic != FLOW_MAGIC or (self.run is not None and run != self.run):
            self.foreign += 1
            return
        self.run = run
        while seq >= len(self.seen) * 8:
            self.seen.extend(bytes(len(self.seen)))
        byte, bit = divmod(seq, 8)
        if self.seen[byte] >> bit & 1:
            self.duplicates += 1
            return
        self.seen[byte] |= 1 << bit
        self.received += 1
        if seq < self.highest:
            self.reordered += 1
        else:
            self.highest = seq


def run_flow(bind: str, peer: str, port: int, rate: float, seconds: float, size: int, grace: float) -> dict[str, int]:
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind((bind, port))
    sock.setblocking(False)
    run_id = int.from_bytes(os.urandom(8), "big")
    padding = bytes(max(0, size - _FLOW.size))
    receiver = SeqReceiver()
    send_errors = 0
    start = time.monotonic()
    end = start + seconds
    stop = end + grace
    seq = 0
    print("ready", flush=True)
    while True:
        now = time.monotonic()
        if now >= stop:
            break
        # Send what is due (the sender may fall behind under CPU contention; it then catches up in bursts of 64).
        if now < end:
            due = int((now - start) * rate)
            burst = 0
            while seq < due and burst < 64:
                try:
                    sock.sendto(_FLOW.pack(FLOW_MAGIC, run_id, seq) + padding, (peer, port))
                except OSError:
                    send_errors += 1  # e.g. ENOKEY-like transient errors while a route moves: counted as lost
                seq += 1
                burst += 1
        readable, _, _ = select.select([sock], [], [], 0.002)
        if readable:
            for _ in range(256):
                try:
                    data = sock.recv(65536)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    break
                receiver.add(data)
    sock.close()
    return {
        "sent": seq,
        "send_errors": send_errors,
        "received": receiver.received,
        "duplicates": receiver.duplicates,
        "reordered": receiver.reordered,
        "highest": receiver.highest,
        "foreign": receiver.foreign,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m tools.loadgen", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("clients", help="N WireGuard clients that handshake and ping the server")
    c.add_argument("--server", required=True, help="HOST:PORT of the server's UDP socket")
    c.add_argument("--server-key", required=True, help="the server's public key, base64")
    c.add_argument("--server-inner", default="10.0.0.1")
    c.add_argument("--seed", required=True, help="hex seed the client keys are derived from")
    c.add_argument("--count", type=int, default=1000)
    c.add_argument("--first", type=int, default=0, help="index of the first client")
    c.add_argument("--bind", default="0.0.0.0",
                   help="local address of every client socket, or a network: one host address per client")
    c.add_argument("--pings", type=int, default=3, help="echo requests per client, all must be answered")
    c.add_argument("--handshake-rate", type=float, default=200.0, help="new clients started per second")
    c.add_argument("--seconds", type=float, default=120.0)
    f = sub.add_parser("flow", help="sequence-numbered UDP both ways with one peer; checks for duplicates")
    f.add_argument("--bind", required=True)
    f.add_argument("--peer", required=True)
    f.add_argument("--port", type=int, default=7000)
    f.add_argument("--rate", type=float, default=1000.0, help="datagrams per second")
    f.add_argument("--size", type=int, default=200)
    f.add_argument("--seconds", type=float, default=60.0)
    f.add_argument("--grace", type=float, default=3.0, help="keep receiving this long after sending stops")
    args = parser.parse_args(argv)
    if not 0 < args.seconds <= MAX_SECONDS:
        parser.error(f"--seconds must be in (0, {MAX_SECONDS:.0f}]")
    if args.command == "flow":
        result: dict[str, object] = dict(
            run_flow(args.bind, args.peer, args.port, args.rate, args.seconds, args.size, args.grace))
    else:
        host, _, port = args.server.rpartition(":")
        server_key = base64.b64decode(args.server_key)
        result = run_clients((host, int(port)), server_key, args.server_inner, bytes.fromhex(args.seed), args.count,
                             args.bind, args.pings, args.handshake_rate, args.seconds, args.first)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
