"""Handshake-initiation flood generator, and the listener that counts what comes back.

    python3 -m tools.flood send --target 198.18.2.1:51820 --server-key B64 [--mode valid|badmac1|garbage]
        [--sources 250] [--source-net 198.19.0.0/16] [--source-port 40000] [--rate 25000] [--count N]
        [--seconds 5]
    python3 -m tools.flood listen [--port 40000] [--seconds 10]

``send`` writes pre-built IPv4/UDP datagrams through a raw socket (``IPPROTO_RAW``, which implies
``IP_HDRINCL``), so every message can carry its own spoofed source address. Modes:

- ``valid``: well-formed 148-byte initiations whose mac1 is valid (the attacker knows the server's public key, which
  is not secret) and whose mac2 is zero. The rest of the message is random, so a responder that goes as far as
  Diffie-Hellman fails on the encrypted static key. This is the flood the cookie mechanism exists for.
- ``badmac1``: the same shape with a random mac1: must cost the responder one keyed BLAKE2s and nothing else.
- ``garbage``: random lengths and bytes: must be dropped on the type word or the length.

The rate is paced against the clock (``--rate 0``: as fast as one core sends); the run ends after ``--count``
messages or ``--seconds``, whichever comes first, and prints a JSON summary. Datagrams are built before the clock
starts, and the loop does nothing but ``sendto`` and an occasional clock read.

``capture`` (in the server's namespace) records WireGuard transport messages arriving on an interface for a UDP
port (an ``AF_PACKET`` socket), with their source address and port; ``replay`` (in the flooder's namespace) sends
them again, from that same (spoofed) source, through the raw socket: every one must be dropped by the receiver's
replay window, and nothing delivered twice.

``listen`` binds a UDP port on every local address (the test routes the spoofed /16 to ``lo`` with
``ip route add local``) and counts, per destination address (``IP_PKTINFO``) and per message type, what the
server sent back to the spoofed sources: cookie replies, and any handshake response (there must be none).

Safety: the target and the spoofed sources must lie in 198.18.0.0/15 (the benchmarking range); anything else is
refused. Run it inside a network namespace the test created (``ip netns exec``).
"""

from __future__ import annotations

import argparse
import base64
import ipaddress
import json
import os
import random
import signal
import socket
import struct
import sys
import time
from collections import Counter
from typing import Final

from wgpy.protocol.crypto import hash as blake2s_hash
from wgpy.protocol.crypto import mac
from wgpy.protocol.messages import INITIATION_MAC1_OFFSET, INITIATION_SIZE

ALLOWED_NET: Final = ipaddress.IPv4Network("198.18.0.0/15")
LABEL_MAC1: Final = b"mac1----"
IP_PKTINFO: Final = 8
_IPV4: Final = struct.Struct("!BBHHHBBH4s4s")
_UDP: Final = struct.Struct("!HHHH")
MODES: Final = ("valid", "badmac1", "garbage")


def check_address(address: str) -> ipaddress.IPv4Address:
    ip = ipaddress.IPv4Address(address)
    if ip not in ALLOWED_NET:
        raise SystemExit(f"flood: {address} is outside {ALLOWED_NET}: refused")
    return ip


def spoofed_sources(network: str, count: int) -> list[ipaddress.IPv4Address]:
    """``count`` host addresses from ``network`` (which must lie inside 198.18.0.0/15), in order."""
    net = ipaddress.IPv4Network(network)
    if not net.subnet_of(ALLOWED_NET):
        raise SystemExit(f"flood: source network {net} is outside {ALLOWED_NET}: refused")
    if count > net.num_addresses - 2:
        raise SystemExit(f"flood: {net} has fewer than {count} host addresses")
    first = int(net.network_address) + 1
    return [ipaddress.IPv4Address(first + i) for i in range(count)]


def initiation(rng: random.Random, mac1_key: bytes | None) -> bytes:
    """A 148-byte initiation: random sender and body; mac1 valid under ``mac1_key`` (or random if None);
    mac2 zero."""
    body = struct.pack("<II", 1, rng.getrandbits(32)) + rng.randbytes(32 + 48 + 28)
    assert len(body) == INITIATION_MAC1_OFFSET
    mac1 = mac(mac1_key, body) if mac1_key is not None else rng.randbytes(16)
    message = body + mac1 + bytes(16)
    assert len(message) == INITIATION_SIZE
    return message


def garbage(rng: random.Random) -> bytes:
    size = rng.choice((1, 3, 4, 16, 31, 32, 64, 91, 92, 93, 147, 148, 149, 200, rng.randrange(1, 1400)))
    data = bytearray(rng.randbytes(size))
    if size >= 4 and rng.random() < 0.5:
        data[0:4] = struct.pack("<I", rng.randrange(1, 5))  # a valid type word with a wrong length or content
    return bytes(data)


def datagram(src: ipaddress.IPv4Address, sport: int, dst: ipaddress.IPv4Address, dport: int, payload: bytes) -> bytes:
    """IPv4 + UDP header + payload. The kernel fills in the IP checksum, total length and ID for IP_HDRINCL;
    a zero UDP checksum means "none" on IPv4."""
    udp = _UDP.pack(sport, dport, 8 + len(payload), 0)
    ip = _IPV4.pack(0x45, 0, 20 + len(udp) + len(payload), 0, 0x4000, 64, socket.IPPROTO_UDP, 0, src.packed,
                    dst.packed)
    return ip + udp + payload


def build(
    mode: str, server_key: bytes | None, target: tuple[ipaddress.IPv4Address, int],
    sources: list[ipaddress.IPv4Address], source_port: int, distinct: int, seed: int,
) -> list[bytes]:
    """Pre-build ``distinct`` datagrams, cycling round-robin over the sources."""
    rng = random.Random(seed)
    mac1_key = blake2s_hash(LABEL_MAC1, server_key) if server_key is not None else None
    out = []
    for i in range(distinct):
        if mode == "valid":
            payload = initiation(rng, mac1_key)
        elif mode == "badmac1":
            payload = initiation(rng, None)
        else:
            payload = garbage(rng)
        out.append(datagram(sources[i % len(sources)], source_port, target[0], target[1], payload))
    return out


def send(
    packets: list[bytes], target: ipaddress.IPv4Address, rate: float, count: int, seconds: float
) -> dict[str, float]:
    """Send ``packets`` round-robin at ``rate`` per second (0: flat out) until ``count`` or ``seconds``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    address = (str(target), 0)
    sendto = sock.sendto
    n_packets = len(packets)
    monotonic = time.monotonic
    start = monotonic()
    end = start + seconds
    sent = errors = 0
    step = 64
    while sent < count:
        now = monotonic()
        if now >= end:
            break
        if rate > 0:
            ahead = start + sent / rate - now
            if ahead > 0:
                time.sleep(min(ahead, end - now))
                continue
        burst = min(step, count - sent)
        i = sent % n_packets
        for _ in range(burst):
            try:
                sendto(packets[i], address)
            except OSError:  # ENOBUFS when the qdisc is full: count and carry on
                errors += 1
            i += 1
            if i == n_packets:
                i = 0
        sent += burst
    elapsed = monotonic() - start
    sock.close()
    return {"sent": sent - errors, "errors": errors, "elapsed": elapsed,
            "rate": (sent - errors) / elapsed if elapsed > 0 else 0.0}


def listen(port: int, seconds: float, ready: bool = True) -> dict[str, object]:
    """Count datagrams arriving on ``port`` per destination address and per WireGuard message type."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
    sock.bind(("0.0.0.0", port))
    per_source: Counter[str] = Counter()
    by_type: Counter[int] = Counter()
    stop = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    if ready:
        print("ready", flush=True)
    end = time.monotonic() + seconds
    while not stop:
        left = end - time.monotonic()
        if left <= 0:
            break
        sock.settimeout(min(left, 0.2))
        try:
            data, ancillary, _flags, _addr = sock.recvmsg(2048, socket.CMSG_SPACE(12))
        except TimeoutError:
            continue
        except InterruptedError:
            continue
        destination = "?"
        for level, kind, value in ancillary:
            if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(value) >= 12:
                destination = socket.inet_ntoa(value[8:12])  # struct in_pktinfo: ifindex, spec_dst, addr
        per_source[destination] += 1
        by_type[data[0] if data else 0] += 1
    sock.close()
    counts = list(per_source.values())
    return {
        "total": sum(counts),
        "sources": len(per_source),
        "per_source_max": max(counts, default=0),
        "per_source_min": min(counts, default=0),
        "by_type": {str(k): v for k, v in sorted(by_type.items())},
    }


ETH_P_IP: Final = 0x0800


def capture(iface: str, port: int, count: int, seconds: float) -> list[tuple[str, int, bytes]]:
    """Up to ``count`` IPv4/UDP datagrams to ``port`` whose payload is a WireGuard transport message (type 4)."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP))
    sock.bind((iface, ETH_P_IP))
    sock.settimeout(0.2)
    out: list[tuple[str, int, bytes]] = []
    print("ready", flush=True)
    end = time.monotonic() + seconds
    while len(out) < count and time.monotonic() < end:
        try:
            packet = sock.recv(65536)
        except TimeoutError:
            continue
        if len(packet) < 28 or packet[0] >> 4 != 4 or packet[9] != socket.IPPROTO_UDP:
            continue
        ihl = (packet[0] & 0xF) * 4
        sport, dport, _length, _sum = _UDP.unpack_from(packet, ihl)
        payload = packet[ihl + 8:]
        if dport == port and len(payload) >= 32 and payload[:4] == b"\x04\0\0\0":
            out.append((socket.inet_ntoa(packet[12:16]), sport, payload))
    sock.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m tools.flood", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("send", help="send a bounded flood from spoofed sources")
    s.add_argument("--target", required=True, help="HOST:PORT of the daemon (inside 198.18.0.0/15)")
    s.add_argument("--server-key", help="the daemon's public key, base64 (needed for --mode valid)")
    s.add_argument("--mode", choices=MODES, default="valid")
    s.add_argument("--sources", type=int, default=250, help="number of spoofed source addresses")
    s.add_argument("--source-net", default="198.19.0.0/16")
    s.add_argument("--source-port", type=int, default=40000)
    s.add_argument("--rate", type=float, default=25000.0, help="messages per second; 0 = as fast as possible")
    s.add_argument("--count", type=int, default=10_000_000, help="stop after this many messages")
    s.add_argument("--seconds", type=float, default=5.0, help="stop after this long (at most 600)")
    s.add_argument("--distinct", type=int, default=8192, help="distinct pre-built datagrams to cycle through")
    s.add_argument("--seed", type=int, default=None)
    c = sub.add_parser("capture", help="record transport messages arriving for a UDP port (JSON lines)")
    c.add_argument("--iface", required=True)
    c.add_argument("--port", type=int, default=51820)
    c.add_argument("--count", type=int, default=200)
    c.add_argument("--seconds", type=float, default=10.0)
    c.add_argument("--out", required=True, help="file for the captured messages")
    r = sub.add_parser("replay", help="send captured messages again from their own (spoofed) source")
    r.add_argument("--file", required=True)
    r.add_argument("--target", required=True, help="HOST:PORT to send them to (inside 198.18.0.0/15)")
    r.add_argument("--times", type=int, default=1, help="send the whole capture this many times")
    li = sub.add_parser("listen", help="count what comes back to the spoofed sources")
    li.add_argument("--port", type=int, default=40000)
    li.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args(argv)

    if args.command == "capture":
        captured = capture(args.iface, args.port, args.count, min(args.seconds, 600.0))
        with open(args.out, "w") as f:
            for host, sport, payload in captured:
                f.write(json.dumps({"source": host, "port": sport, "payload": payload.hex()}) + "\n")
        print(json.dumps({"captured": len(captured)}), flush=True)
        return 0
    if args.command == "replay":
        host, _, port_text = args.target.rpartition(":")
        target_ip, target_port = check_address(host), int(port_text)
        datagrams = []
        with open(args.file) as f:
            for line in f:
                item = json.loads(line)
                datagrams.append(datagram(check_address(item["source"]), int(item["port"]), target_ip, target_port,
                                          bytes.fromhex(item["payload"])))
        if not datagrams or not 0 < args.times <= 100:
            parser.error("nothing to replay, or --times outside 1..100")
        result = send(datagrams, target_ip, 0.0, len(datagrams) * args.times, 60.0)
        print(json.dumps({"replayed": result["sent"], "distinct": len(datagrams)}), flush=True)
        return 0
    if args.command == "listen":
        print(json.dumps(listen(args.port, min(args.seconds, 600.0))), flush=True)
        return 0

    host, _, port_text = args.target.rpartition(":")
    target = (check_address(host), int(port_text))
    server_key = base64.b64decode(args.server_key) if args.server_key else None
    if args.mode == "valid" and (server_key is None or len(server_key) != 32):
        parser.error("--mode valid needs --server-key (32 bytes, base64)")
    if args.seconds <= 0 or args.seconds > 600 or args.count <= 0 or args.rate < 0:
        parser.error("--seconds must be in (0, 600], --count positive, --rate >= 0")
    sources = spoofed_sources(args.source_net, args.sources)
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(8), "big")
    # At least one datagram per source, so that every source takes part.
    distinct = max(1, args.distinct, len(sources))
    packets = build(args.mode, server_key, target, sources, args.source_port, distinct, seed)
    result = send(packets, target[0], args.rate, args.count, args.seconds)
    print(json.dumps({"mode": args.mode, "sources": len(sources), **result}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
