"""A Prometheus exporter for WireGuard interfaces, compatible with prometheus_wireguard_exporter's metrics.

A custom collector reads the UAPI (``get=1``) of each interface on every scrape, so the numbers are never
stale and nothing runs between scrapes. Metric names and labels are those of MindFlavor's
prometheus_wireguard_exporter, so existing dashboards and alerts keep working:

* ``wireguard_sent_bytes_total``, ``wireguard_received_bytes_total`` (counters),
  ``wireguard_latest_handshake_seconds`` (Unix time, 0 when never) and
  ``wireguard_latest_handshake_delay_seconds`` (seconds since it, only for peers that had one), labelled
  ``interface``, ``public_key``, ``allowed_ips`` (comma-separated), ``friendly_name`` (only when the
  configuration has ``# friendly_name = ...`` for the peer) and, with ``--endpoint-labels``, ``remote_ip``
  and ``remote_port`` (only when the peer has an endpoint);
* ``wireguard_peers{interface}``: the number of peers.

Against wgpyd the collector also asks for wgpy's ``wgpy_stats=1`` extension and exports its counters as
``wgpy_drops_total{interface,reason}`` and ``wgpy_<name>_total{interface}``; wireguard-go does not answer that
request (it closes the connection), and the exporter then simply leaves those metrics out.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from wgpy import config as wgconfig
from wgpy import keys
from wgpy.uapi import client as uapi

DEFAULT_PORT = 9586
DEFAULT_ADDRESS = "127.0.0.1"
NO_STATS_RETRY = 300.0
CONFIG_DIR = Path("/etc/wireguard")


def _stats(interface: str) -> dict[str, int] | None:
    """wgpyd's ``wgpy_stats=1`` answer as name -> value, or None when the daemon does not speak it."""
    try:
        return uapi.stats(interface)
    except (uapi.UapiError, OSError):
        return None


class WireGuardCollector(Collector):
    def __init__(
        self,
        interfaces: Sequence[str] | None = None,
        configs: dict[str, Path] | None = None,
        *,
        endpoint_labels: bool = False,
        config_dir: Path = CONFIG_DIR,
        clock: Callable[[], float] = time.time,
        wgpy_stats: bool = True,
    ) -> None:
        self.interfaces = list(interfaces or [])
        self.configs = dict(configs or {})
        self.endpoint_labels = endpoint_labels
        self.config_dir = config_dir
        self.clock = clock
        self.wgpy_stats = wgpy_stats
        # Interfaces whose daemon did not answer wgpy_stats=1, and until when we stop asking (wireguard-go logs
        # every unknown request; an interface may be restarted under another daemon, hence not forever).
        self._no_stats_until: dict[str, float] = {}

    def friendly_names(self, interface: str) -> dict[bytes, str]:
        """Public key -> friendly name from the interface's configuration (read on every scrape, so edits by
        `wgpy peer add` show up at once). A missing or broken file just means no names."""
        path = self.configs.get(interface, self.config_dir / f"{interface}.conf")
        try:
            cfg = wgconfig.load(str(path))
        except wgconfig.ConfigError:
            return {}
        return {p.public_key: p.friendly_name for p in cfg.peers if p.friendly_name}

    def _labels(self, interface: str, peer: uapi.PeerState, names: dict[bytes, str]) -> dict[str, str]:
        labels = {
            "interface": interface,
            "public_key": keys.to_base64(peer.public_key),
            "allowed_ips": ",".join(uapi.format_network(n) for n in peer.allowed_ips),
        }
        name = names.get(peer.public_key)
        if name is not None:
            labels["friendly_name"] = name
        if self.endpoint_labels and peer.endpoint is not None:
            labels["remote_ip"], labels["remote_port"] = peer.endpoint[0], str(peer.endpoint[1])
        return labels

    def collect(self) -> Iterator[Metric]:
        sent = CounterMetricFamily("wireguard_sent_bytes", "Bytes sent to the peer")
        received = CounterMetricFamily("wireguard_received_bytes", "Bytes received from the peer")
        handshake = GaugeMetricFamily("wireguard_latest_handshake_seconds",
                                      "UNIX timestamp seconds of the last handshake")
        delay = GaugeMetricFamily("wireguard_latest_handshake_delay_seconds",
                                  "Seconds from the last handshake")
        peers = GaugeMetricFamily("wireguard_peers", "Number of peers of the interface", labels=["interface"])
        up = GaugeMetricFamily("wireguard_up", "1 if the interface answered the UAPI on this scrape",
                               labels=["interface"])
        drops = CounterMetricFamily("wgpy_drops", "Packets wgpyd dropped, by reason",
                                    labels=["interface", "reason"])
        extra: dict[str, CounterMetricFamily] = {}
        now = self.clock()
        for interface in self.interfaces or uapi.list_interfaces():
            try:
                state = uapi.get(interface)
            except (uapi.UapiError, OSError):
                up.add_metric([interface], 0)
                continue
            up.add_metric([interface], 1)
            peers.add_metric([interface], len(state.peers))
            names = self.friendly_names(interface)
            for peer in state.peers:
                labels = self._labels(interface, peer, names)
                sent.add_sample("wireguard_sent_bytes_total", labels, peer.tx_bytes)
                received.add_sample("wireguard_received_bytes_total", labels, peer.rx_bytes)
                seconds = peer.last_handshake[0]
                handshake.add_sample("wireguard_latest_handshake_seconds", labels, seconds)
                if seconds:
                    delay.add_sample("wireguard_latest_handshake_delay_seconds", labels,
                                     max(0.0, now - (seconds + peer.last_handshake[1] / 1e9)))
            stats = None
            if self.wgpy_stats and self._no_stats_until.get(interface, 0.0) <= now:
                stats = _stats(interface)
                if stats is None:
                    self._no_stats_until[interface] = now + NO_STATS_RETRY
            for name, value in (stats or {}).items():
                if name.startswith("drop_"):
                    drops.add_metric([interface, name[len("drop_"):]], value)
                else:
                    family = extra.get(name)
                    if family is None:
                        family = extra[name] = CounterMetricFamily(
                            f"wgpy_{name}", f"wgpyd counter {name}", labels=["interface"])
                    family.add_metric([interface], value)
        yield from (sent, received, handshake, delay, peers, up)
        if drops.samples:
            yield drops
        yield from extra.values()


def serve(
    port: int = DEFAULT_PORT, address: str = DEFAULT_ADDRESS, **collector_args: Any
) -> tuple[Any, CollectorRegistry]:
    """Start the HTTP server in a daemon thread; returns (server, registry). ``server.shutdown()`` stops it."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(WireGuardCollector(**collector_args))
    server, _thread = start_http_server(port, address, registry)
    return server, registry


def main(argv: Sequence[str]) -> int:
    import argparse
    import sys

    p = argparse.ArgumentParser(prog="wgpy exporter", description=__doc__.split("\n\n")[0])
    p.add_argument("-p", "--port", type=int, default=DEFAULT_PORT)
    p.add_argument("-l", "--address", default=DEFAULT_ADDRESS,
                   help="listen address (default 127.0.0.1: put a reverse proxy or an SSH tunnel in front)")
    p.add_argument("-i", "--interface", action="append", default=[], help="repeatable; default: every one")
    p.add_argument("-n", "--config", action="append", default=[],
                   help="IFACE=PATH: where friendly names come from (default /etc/wireguard/IFACE.conf)")
    p.add_argument("-r", "--endpoint-labels", action="store_true", help="add remote_ip and remote_port labels")
    args = p.parse_args(argv)
    configs: dict[str, Path] = {}
    for item in args.config:
        iface, eq, path = item.partition("=")
        if not eq:
            print("wgpy exporter: --config takes IFACE=PATH", file=sys.stderr)
            return 2
        configs[iface] = Path(path)
    try:
        server, _registry = serve(args.port, args.address, interfaces=args.interface, configs=configs,
                                  endpoint_labels=args.endpoint_labels)
    except OSError as e:
        print(f"wgpy exporter: cannot listen on {args.address}:{args.port}: {e.strerror}", file=sys.stderr)
        return 1
    print(f"wgpy exporter: serving http://{args.address}:{server.server_port}/metrics", file=sys.stderr)

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
    return 0
