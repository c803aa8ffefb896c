"""A deterministic simulated network and clock for driving several :class:`Device` objects.

The simulation is event-driven: it always advances the clock to the earliest of (a datagram arriving, a device's
next timer), so ten simulated minutes take milliseconds and every send time is exact. Loss, duplication,
reordering, delay and address changes are controlled by a seeded :class:`random.Random`.
"""

from __future__ import annotations

import heapq
import ipaddress
import random
import struct
from dataclasses import dataclass, field

from wgpy.protocol.crypto import generate_private_key
from wgpy.protocol.device import Device, Tunables
from wgpy.protocol.peer import Endpoint

WALL_EPOCH = 1_800_000_000.0


class SeededRandom:
    """A RandomSource for tests: reproducible, with jitter switchable off so timer moments are exact."""

    def __init__(self, seed: int, jitter: bool = False) -> None:
        self.r = random.Random(seed)
        self.use_jitter = jitter

    def token_bytes(self, n: int) -> bytes:
        return self.r.randbytes(n)

    def index(self) -> int:
        return self.r.getrandbits(32)

    def jitter(self, max_seconds: float) -> float:
        return self.r.random() * max_seconds if self.use_jitter else 0.0


def message_type(datagram: bytes) -> int:
    return datagram[0]


def udp4(src: str, dst: str, payload: bytes, sport: int = 1000, dport: int = 2000) -> bytes:
    """A minimal IPv4/UDP packet (checksums are not checked by the core, which trusts authenticated packets)."""
    total = 20 + 8 + len(payload)
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, total, 0, 0, 64, 17, 0,
        ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed,
    )
    return header + struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def udp6(src: str, dst: str, payload: bytes) -> bytes:
    udp = struct.pack("!HHHH", 1000, 2000, 8 + len(payload), 0) + payload
    return struct.pack("!IHBB", 6 << 28, len(udp), 17, 64) + ipaddress.IPv6Address(src).packed + \
        ipaddress.IPv6Address(dst).packed + udp


@dataclass
class Node:
    name: str
    device: Device
    address: Endpoint
    tunnel_ip: str
    delivered: list[bytes] = field(default_factory=list)
    online: bool = True


@dataclass(order=True)
class _Flight:
    at: float
    seq: int
    src: Endpoint = field(compare=False)
    dst: Endpoint = field(compare=False)
    data: bytes = field(compare=False)


@dataclass
class Sent:
    at: float
    src: str
    dst: Endpoint
    type: int
    size: int


class SimNetwork:
    def __init__(
        self, seed: int = 1, loss: float = 0.0, duplicate: float = 0.0, delay: float = 0.01,
        reorder: float = 0.0,
    ) -> None:
        self.rand = random.Random(seed)
        self.now = 0.0
        self.loss = loss
        self.duplicate = duplicate
        self.delay = delay
        self.reorder = reorder
        self.nodes: dict[str, Node] = {}
        self._flights: list[_Flight] = []
        self._seq = 0
        self.log: list[Sent] = []

    @property
    def wall(self) -> float:
        return WALL_EPOCH + self.now

    def add_node(self, name: str, host: str, port: int, tunnel_ip: str, seed: int,
                 tunables: Tunables | None = None, jitter: bool = False) -> Node:
        rng = SeededRandom(seed, jitter)
        device = Device(rng=rng, tunables=tunables)
        device.set_private_key(generate_private_key(rng), self.now)
        node = Node(name, device, (host, port), tunnel_ip)
        self.nodes[name] = node
        return node

    def connect(self, a: Node, b: Node, psk: bytes | None = None, endpoint_on: tuple[bool, bool] = (True, True),
                keepalive: int = 0) -> None:
        """Configure a and b as each other's peers (routing each other's tunnel /32)."""
        for x, y, has_endpoint in ((a, b, endpoint_on[0]), (b, a, endpoint_on[1])):
            assert y.device.public_key is not None
            peer = x.device.add_peer(y.device.public_key, self.now)
            x.device.set_preshared_key(peer, psk)
            x.device.add_allowed_ip(peer, ipaddress.ip_network(f"{y.tunnel_ip}/32"))
            if has_endpoint:
                peer.endpoint = y.address
            if keepalive:
                x.device.set_persistent_keepalive(peer, keepalive, self.now, self.wall)
        self.pump()

    def node_at(self, address: Endpoint) -> Node | None:
        for node in self.nodes.values():
            if node.address == address and node.online:
                return node
        return None

    def pump(self) -> None:
        """Collect every device's outputs into the network and the delivered lists."""
        for node in self.nodes.values():
            for endpoint, datagrams in node.device.take_datagrams():
                for data in datagrams:
                    self.log.append(Sent(self.now, node.name, endpoint, message_type(data), len(data)))
                    if node.online:  # an offline node's datagrams go nowhere
                        self._transmit(node.address, endpoint, data)
            node.delivered.extend(node.device.take_packets())

    def _transmit(self, src: Endpoint, dst: Endpoint, data: bytes) -> None:
        if self.loss and self.rand.random() < self.loss:
            return
        copies = 2 if self.duplicate and self.rand.random() < self.duplicate else 1
        for _ in range(copies):
            delay = self.delay + (self.rand.random() * self.reorder if self.reorder else 0.0)
            self._seq += 1
            heapq.heappush(self._flights, _Flight(self.now + delay, self._seq, src, dst, data))

    def send_ip(self, node: Node, packets: list[bytes]) -> None:
        node.device.send(packets, self.now, self.wall)
        self.pump()

    def next_event(self) -> float | None:
        times = [f.at for f in self._flights[:1]]
        for node in self.nodes.values():
            deadline = node.device.next_deadline()
            if deadline is not None:
                times.append(deadline)
        return min(times) if times else None

    def run_until(self, t: float) -> None:
        for _ in range(10_000_000):
            nxt = self.next_event()
            if nxt is None or nxt > t:
                break
            self.now = max(self.now, nxt)
            while self._flights and self._flights[0].at <= self.now:
                flight = heapq.heappop(self._flights)
                target = self.node_at(flight.dst)
                if target is not None:
                    target.device.receive([(flight.data, flight.src)], self.now, self.wall)
            for node in self.nodes.values():
                deadline = node.device.next_deadline()
                if deadline is not None and deadline <= self.now:
                    node.device.tick(self.now, self.wall)
            self.pump()
        else:
            raise AssertionError("simulation did not settle: a timer keeps firing without advancing")
        self.now = max(self.now, t)

    def sent(self, name: str, type_: int | None = None) -> list[Sent]:
        return [s for s in self.log if s.src == name and (type_ is None or s.type == type_)]
