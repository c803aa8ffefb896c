"""tshark decodes wgpyd's messages as WireGuard, and with wgpyd's key log decrypts the handshake and the transport
data (as initiator and as responder)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_daemon_lab import WGPYD, WIREGUARD_GO, Node, make_pair
from tests.netns import Lab, lab

pytestmark = pytest.mark.netns


@pytest.fixture
def netlab() -> Iterator[Lab]:
    with lab() as the_lab:
        yield the_lab


def tshark_fields(capture: Path, *options: str, fields: list[str], display: str) -> list[list[str]]:
    out = subprocess.run(
        ["tshark", "-n", "-r", str(capture), "-d", "udp.port==51820,wg", *options, "-Y", display,
         "-T", "fields", *[x for f in fields for x in ("-e", f)]],
        capture_output=True, text=True, timeout=60, check=True,
    )
    return [line.split("\t") for line in out.stdout.splitlines() if line.strip()]


@pytest.mark.parametrize("psk", [False, True], ids=["no-psk", "psk"])
@pytest.mark.parametrize("wgpyd_initiates", [True, False], ids=["wgpyd-initiator", "wgpyd-responder"])
def test_tshark_decodes_and_decrypts(netlab: Lab, tmp_path: Path, wgpyd_initiates: bool, psk: bool) -> None:
    keylog = tmp_path / "wg.keys"
    capture = tmp_path / "wg.pcap"
    dumpers: list[subprocess.Popen[bytes]] = []

    def start_capture(a: Node, b: Node) -> None:
        """Capture on B's veth before either side is configured, so the whole handshake is in it."""
        veth = b.ns.run(["ip", "-o", "-4", "addr", "show", "to", b.outer4]).stdout.split()[1]
        dumper = b.ns.popen(["tshark", "-n", "-i", veth, "-f", "udp", "-w", str(capture)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        assert dumper.stderr is not None
        line = b""
        deadline = time.monotonic() + 20
        while b"Capturing on" not in line and time.monotonic() < deadline:
            line = dumper.stderr.readline()
        assert b"Capturing on" in line
        # dumpcap announces itself a moment before its socket sees packets: probe until one is captured.
        for _ in range(50):
            a.ns.run(["python3", "-c", "import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM)"
                      f".sendto(b'probe', ('{b.outer4}', 9))"])
            if capture.exists() and capture.stat().st_size > 400:  # header and interface block: ~300 bytes
                break
            time.sleep(0.1)
        dumpers.append(dumper)

    a, b = make_pair(netlab, WGPYD, WIREGUARD_GO, psk=psk, a_knows_b=wgpyd_initiates,
                     b_knows_a=not wgpyd_initiates, a_args=["--keylog", str(keylog)], before_config=start_capture)
    dumper = dumpers[0]
    initiator, responder = (a, b) if wgpyd_initiates else (b, a)
    initiator.ns.wait_ping(responder.inner4, 20)
    assert initiator.ns.ping(responder.inner4, count=3).returncode == 0
    time.sleep(0.5)
    dumper.terminate()
    dumper.wait(timeout=10)

    # Without keys: every message is recognised as WireGuard, of the right types.
    types = {row[0] for row in tshark_fields(capture, fields=["wg.type"], display="wg")}
    assert {"1", "2", "4"} <= types
    # With wgpyd's key log: the initiator's static key and timestamp decrypt, and the ICMP inside the tunnel shows.
    text = keylog.read_text()
    assert "LOCAL_EPHEMERAL_PRIVATE_KEY = " in text and ("PRESHARED_KEY = " in text) == psk
    opts = ["-o", f"wg.keylog_file:{keylog}", "-o", "wg.dissect_packet:TRUE"]
    statics = tshark_fields(capture, *opts, fields=["wg.static"], display="wg.type == 1 && wg.static")
    assert statics and statics[0][0]
    inner = tshark_fields(capture, *opts, fields=["ip.src", "ip.dst", "icmp.type"], display="wg && icmp")
    pairs = {(row[0].split(",")[-1], row[1].split(",")[-1]) for row in inner}
    assert (initiator.inner4, responder.inner4) in pairs and (responder.inner4, initiator.inner4) in pairs
