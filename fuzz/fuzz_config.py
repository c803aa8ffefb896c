"""Fuzz the wg / wg-quick configuration parser: ``wgpy.config.parse(text, path)``.

Invariants: arbitrary text either parses or raises :class:`ConfigError` naming the path and a line that exists
(1..number of lines; a whole-file problem would be line 0), whose message never contains the value of a
PrivateKey or PresharedKey line; a configuration that parses is written by ``dumps`` into text that parses back
to an equal configuration (and ``dumps`` of that is identical: the writer is a fixed point).

Inputs are either raw text or assembled from a small grammar of real lines with fuzzed values, so that most of
the time is spent past the section and key matching.

    python3 fuzz/fuzz_config.py -runs=100000
"""

from __future__ import annotations

import re
import sys

import atheris

with atheris.instrument_imports(include=["wgpy"]):
    from wgpy import config, keys
    from wgpy.config import ConfigError

_PATH = "fuzz.conf"

_WG_WHITESPACE = re.compile(r"[ \t\n\v\f\r]")
_KEY_A = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk="
_KEY_B = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="
_KEY_C = "TrMvSoP4jYQlY6RIzBgbssQqY3vxI2Pi+y71lOWWXX0="
_LINES = (
    "[Interface]", "[Peer]", "[interface]", "[ Peer ]", "[Nope]",
    "PrivateKey = {k}", "ListenPort = {n}", "FwMark = {v}", "Address = {a}", "DNS = {v}", "MTU = {n}",
    "Table = {v}", "SaveConfig = {v}", "PreUp = {v}", "PostUp = {v}", "PreDown = {v}", "PostDown = {v}",
    "PublicKey = {k}", "PresharedKey = {k}", "AllowedIPs = {a}", "Endpoint = {v}:{n}", "Endpoint = [{a}]:{n}",
    "PersistentKeepalive = {n}", "# friendly_name = {v}", "# {v} = {v}", "{v} = {v}", "{v}", "",
)
_KEYS = (_KEY_A, _KEY_B, _KEY_C, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")
_ADDRESSES = ("10.0.0.1/24", "fd00::1/64", "0.0.0.0/0", "::/0", "192.0.2.1", "fe80::1%eth0/64", "1.2.3.4/33")


def _grammar(fdp: atheris.FuzzedDataProvider) -> str:
    lines: list[str] = []
    for _ in range(fdp.ConsumeIntInRange(1, 24)):
        template = _LINES[fdp.ConsumeIntInRange(0, len(_LINES) - 1)]
        choice = fdp.ConsumeIntInRange(0, 3)
        key = _KEYS[choice] if choice < 3 else fdp.ConsumeUnicodeNoSurrogates(48)
        address = _ADDRESSES[fdp.ConsumeIntInRange(0, len(_ADDRESSES) - 1)]
        if fdp.ConsumeBool():
            address = fdp.ConsumeUnicodeNoSurrogates(24)
        number = str(fdp.ConsumeIntInRange(0, 70000)) if fdp.ConsumeBool() else fdp.ConsumeUnicodeNoSurrogates(8)
        value = fdp.ConsumeUnicodeNoSurrogates(24)
        lines.append(template.replace("{k}", key).replace("{a}", address).replace("{n}", number).replace("{v}", value))
    return "\n".join(lines)


def _secrets(text: str) -> tuple[list[str], str]:
    """Values of PrivateKey / PresharedKey lines that are real keys (and not also some peer's public key), and
    the text of every other line (what an error message may legitimately quote)."""
    found: list[str] = []
    public: set[str] = set()
    others: list[str] = []
    for line in text.splitlines():
        name, _, value = line.partition("#")[0].partition("=")
        name = _WG_WHITESPACE.sub("", name).lower()
        value = _WG_WHITESPACE.sub("", value)
        if name == "publickey":
            public.add(value)
        elif name in ("privatekey", "presharedkey"):
            try:
                keys.from_base64(value)
            except ValueError:
                pass
            else:
                found.append(value)
                continue
        others.append(line)
    return [s for s in found if s not in public], "\n".join(others)


def _leaks(secret: str, message: str, others: str) -> bool:
    """Whether 8 consecutive characters of ``secret`` (48 bits of a key) that no other line holds appear in
    ``message``."""
    return any(secret[i : i + 8] in message and secret[i : i + 8] not in others for i in range(len(secret) - 7))


def _check(text: str, wg_quick: bool) -> None:
    try:
        parsed = config.parse(text, _PATH, wg_quick=wg_quick)
    except ConfigError as exc:
        assert exc.path == _PATH
        assert 1 <= exc.line <= max(1, len(text.splitlines())), (exc.line, len(text.splitlines()))
        message = str(exc)
        assert message.startswith(f"{_PATH}:{exc.line}: ")
        secrets, others = _secrets(text)
        for secret in secrets:
            # Found by this harness: a PrivateKey line outside any section used to leak 9 base64 characters of the
            # key ("Line unrecognized"); fixed in 49414ef, regression in tests/fuzz/regressions/.
            assert not _leaks(secret, message, others), f"key material leaks into a ConfigError: {message!r}"
        return
    written = config.dumps(parsed, wg_quick=wg_quick)
    again = config.parse(written, _PATH, wg_quick=wg_quick)
    assert again == parsed, (text, written)
    assert config.dumps(again, wg_quick=wg_quick) == written


def TestOneInput(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    mode = fdp.ConsumeIntInRange(0, 2)
    if mode == 0:
        text = fdp.ConsumeUnicode(fdp.remaining_bytes())
    elif mode == 1:
        text = fdp.ConsumeBytes(fdp.remaining_bytes()).decode("utf-8", "replace")
    else:
        text = _grammar(fdp)
    _check(text, wg_quick=True)
    _check(text, wg_quick=False)


def seeds() -> list[bytes]:
    sample = (
        f"[Interface]\nPrivateKey = {_KEY_A}\nListenPort = 51820\nAddress = 10.0.0.1/24, fd00::1/64\n"
        "DNS = 10.0.0.53, example.com\nPostUp = echo up\n# owner = ops\n\n"
        f"[Peer]\n# friendly_name = laptop\nPublicKey = {_KEY_B}\nPresharedKey = {_KEY_C}\n"
        "AllowedIPs = 10.0.0.2/32, fd00::2/128\nEndpoint = [2001:db8::1]:51820\nPersistentKeepalive = 25\n"
    )
    return [b"\x01" + sample.encode(), b"\x00" + sample.encode()]


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
