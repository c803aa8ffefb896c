"""wgpy.keys against Debian `wg`: same keys, same acceptance of base64 text, same public keys."""

from __future__ import annotations

import base64
import os
import stat
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wgpy import keys


def wg_pubkey(text: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["wg", "pubkey"], input=text, capture_output=True, text=True, timeout=10)


def test_generated_private_keys_are_clamped_and_distinct() -> None:
    a, b = keys.generate_private_key(), keys.generate_private_key()
    assert a != b and len(a) == 32
    assert a[0] & 7 == 0 and a[31] & 0x80 == 0 and a[31] & 0x40
    assert len(keys.generate_preshared_key()) == 32


def test_public_key_matches_wg_pubkey() -> None:
    for _ in range(5):
        private = keys.generate_private_key()
        out = wg_pubkey(keys.to_base64(private) + "\n")
        assert out.returncode == 0
        assert out.stdout == keys.to_base64(keys.public_key(private)) + "\n"


def test_public_key_of_unclamped_key_matches_wg() -> None:
    raw = bytes(range(32))  # low bits set in byte 0 and a high bit in byte 31: wg clamps before multiplying
    out = wg_pubkey(keys.to_base64(raw))
    assert out.stdout.strip() == keys.to_base64(keys.public_key(raw))


def test_base64_round_trip_and_hex() -> None:
    key = keys.generate_private_key()
    assert keys.from_base64(keys.to_base64(key)) == key
    assert keys.from_hex(keys.to_hex(key)) == key
    assert keys.from_hex(keys.to_hex(key).upper()) == key
    for bad in ("", "00" * 31, "zz" * 32, "0" * 65):
        with pytest.raises(keys.InvalidKeyError):
            keys.from_hex(bad)


BAD_BASE64 = [
    "",
    "A" * 43,  # no '='
    "A" * 42 + "==",  # 31 bytes
    "A" * 44,
    "A" * 42 + "B=",  # non-zero padding bits
    "A" * 42 + "F=",  # non-canonical last char
    "A" * 41 + "*A=",  # bad alphabet
    "A" * 41 + "-A=",  # url-safe alphabet
    "A" * 43 + "=" + "A",
    " " + "A" * 42 + "=",
]


@pytest.mark.parametrize("text", BAD_BASE64)
def test_bad_base64_rejected_like_wg(text: str) -> None:
    with pytest.raises(keys.InvalidKeyError) as err:
        keys.from_base64(text)
    assert "A" * 20 not in str(err.value)
    assert wg_pubkey(text).returncode == 1


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=-_ ", min_size=43,
               max_size=45))
def test_acceptance_equals_python_strict_canonical(text: str) -> None:
    """Accepted exactly when the text is canonical base64 of 32 bytes (what wg's decoder checks)."""
    try:
        raw = base64.b64decode(text, validate=True)
        canonical = len(raw) == 32 and base64.b64encode(raw).decode() == text
    except ValueError:
        canonical = False
    try:
        keys.from_base64(text)
        accepted = True
    except keys.InvalidKeyError:
        accepted = False
    assert accepted == canonical


@settings(max_examples=25, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.integers(min_value=0, max_value=63))
def test_last_character_acceptance_matches_wg(raw: bytes, last: int) -> None:
    text = base64.b64encode(raw).decode()
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    text = text[:42] + alphabet[last] + "="
    try:
        ours: str | None = keys.to_base64(keys.public_key(keys.from_base64(text))) + "\n"
    except keys.InvalidKeyError:
        ours = None
    theirs = wg_pubkey(text)
    assert (theirs.stdout if theirs.returncode == 0 else None) == ours


def test_write_private_key_file_mode(tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "private")
    old = os.umask(0o022)
    try:
        key = keys.generate_private_key()
        keys.write_private_key_file(path, key)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with open(path) as f:
        assert keys.from_base64(f.read().strip()) == key
    os.chmod(path, 0o644)
    keys.write_private_key_file(path, key)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_is_zero() -> None:
    assert keys.is_zero(None) and keys.is_zero(bytes(32)) and not keys.is_zero(b"\x01" * 32)
