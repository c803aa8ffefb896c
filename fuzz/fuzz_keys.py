"""Fuzz the key codecs at the edges: ``wgpy.keys.from_base64`` and ``from_hex``.

Invariants: arbitrary text either decodes to 32 bytes or raises :class:`InvalidKeyError` (a ``ValueError``) whose
message does not echo the text; whatever decodes re-encodes to exactly the same text (base64: wg's canonical form
is the only accepted one) or its lowercase (hex); and every 32-byte key round-trips through both codecs.

    python3 fuzz/fuzz_keys.py -runs=100000
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["wgpy"]):
    from wgpy import keys


def _decode(fn_name: str, text: str) -> bytes | None:
    fn = keys.from_base64 if fn_name == "base64" else keys.from_hex
    try:
        key = fn(text)
    except keys.InvalidKeyError as exc:
        if len(text) >= 8:
            assert text not in str(exc), "a refused key is echoed in the error message"
        return None
    assert isinstance(key, bytes) and len(key) == keys.KEY_LEN, (fn_name, len(key))
    return key


def TestOneInput(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    mode = fdp.ConsumeIntInRange(0, 3)
    if mode == 0:
        text = fdp.ConsumeUnicode(64)
    elif mode == 1:
        # Mostly the right shape: 43 characters of the base64 alphabet (or near it) and a final "=".
        text = fdp.ConsumeString(43) + "="
    elif mode == 2:
        text = fdp.ConsumeBytes(64).decode("latin-1")
    else:
        raw = fdp.ConsumeBytes(32).ljust(32, b"\0")
        assert keys.from_base64(keys.to_base64(raw)) == raw
        assert keys.from_hex(keys.to_hex(raw)) == raw
        assert keys.from_hex(keys.to_hex(raw).upper()) == raw
        assert len(keys.public_key(raw)) == keys.KEY_LEN
        assert keys.is_zero(raw) == (raw == bytes(32))
        text = keys.to_base64(raw)
    key = _decode("base64", text)
    if key is not None:
        assert keys.to_base64(key) == text, "a non-canonical base64 key was accepted"
    key = _decode("hex", text)
    if key is not None:
        assert keys.to_hex(key) == text.lower()


def seeds() -> list[bytes]:
    return [b"\x03" + bytes(range(32)), b"\x01" + b"A" * 43, b"\x00" + b"0123456789abcdef" * 4]


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
