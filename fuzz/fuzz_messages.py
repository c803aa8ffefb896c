"""Fuzz the wire-format parsers: ``message_type`` and ``Initiation/Response/CookieReply.parse``.

Invariants: parsing arbitrary bytes never raises; whatever parses re-serialises to exactly the input
(``parse(x).to_bytes() == x``); bytes, bytearray and memoryview inputs parse alike; ``message_type`` agrees with
the first four bytes. Half of the inputs are forced into the right length and type word, so that the fuzzer
spends its time inside the field layout rather than in the length check.

    python3 fuzz/fuzz_messages.py -runs=100000
    python3 fuzz/fuzz_messages.py -max_total_time=600 fuzz/corpus/messages
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["wgpy"]):
    from wgpy.protocol.messages import (
        COOKIE_REPLY_SIZE,
        INITIATION_SIZE,
        RESPONSE_SIZE,
        CookieReply,
        Initiation,
        Response,
        mac_offsets,
        message_type,
    )

_PARSERS: tuple[tuple[type[Initiation] | type[Response] | type[CookieReply], int, int], ...] = (
    (Initiation, 1, INITIATION_SIZE),
    (Response, 2, RESPONSE_SIZE),
    (CookieReply, 3, COOKIE_REPLY_SIZE),
)
_VECTORS = Path(__file__).resolve().parent.parent.parent / "shared" / "vectors"


def _check(data: bytes) -> None:
    kind = message_type(data)
    if len(data) < 4:
        assert kind is None
    else:
        word = struct.unpack_from("<I", data)[0]
        assert kind == (word if 1 <= word <= 4 else None), (kind, word)
    offsets = mac_offsets(len(data))
    assert (offsets is not None) == (len(data) in (INITIATION_SIZE, RESPONSE_SIZE))
    for cls, type_byte, size in _PARSERS:
        parsed = cls.parse(data)
        ok = len(data) == size and data[:4] == bytes((type_byte, 0, 0, 0))
        assert (parsed is not None) == ok, (cls.__name__, len(data), data[:4].hex())
        assert cls.parse(bytearray(data)) == parsed
        assert cls.parse(memoryview(data)) == parsed
        if parsed is not None:
            assert parsed.to_bytes() == data
            assert cls.parse(parsed.to_bytes()) == parsed


def TestOneInput(data: bytes) -> None:
    _check(data)
    if not data:
        return
    # Forced shape: selector byte, then the body of one message type at its exact length.
    cls, type_byte, size = _PARSERS[data[0] % 3]
    body = data[1 : size - 3].ljust(size - 4, b"\0")
    framed = bytes((type_byte, 0, 0, 0)) + body
    _check(framed)
    parsed = cls.parse(framed)
    assert parsed is not None and parsed.to_bytes() == framed
    # A transport header is read with the same struct the Device uses.
    if len(data) >= 16:
        _check(b"\x04\0\0\0" + data[4:])


def seeds() -> list[bytes]:
    """Real messages from the shared vectors (when present), as starting points for mutation."""
    out: list[bytes] = []
    path = _VECTORS / "handshake-deterministic.json"
    if path.is_file():
        det = json.loads(path.read_text())
        for case in det.get("cases", []):
            for name in ("initiation", "response"):
                if name in case and "bytes" in case[name]:
                    out.append(bytes.fromhex(case[name]["bytes"]))
        reply = det.get("cookie", {}).get("cookie_reply", {}).get("bytes")
        if reply:
            out.append(bytes.fromhex(reply))
    out.append(b"\x04\0\0\0" + bytes(28))
    return out


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
