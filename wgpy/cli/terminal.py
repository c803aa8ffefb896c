"""ANSI colours exactly as wireguard-tools' terminal.c applies them.

wg formats every ``terminal_printf`` call with its escape sequences, then either writes it as is (colour mode)
or removes each ``ESC [`` ... up to and including the next ASCII letter. Colour mode is ``WG_COLOR_MODE=always``,
``never``, or otherwise whether stdout is a terminal. The filter runs per call and ignores an ``ESC [`` in the
last two characters of a call: :class:`Terminal` reproduces both details so the output is byte for byte wg's.
"""

from __future__ import annotations

import os
from typing import TextIO

RESET = "\x1b[0m"
BOLD = "\x1b[1m"
FG_RED = "\x1b[31m"
FG_GREEN = "\x1b[32m"
FG_YELLOW = "\x1b[33m"
FG_CYAN = "\x1b[36m"


def color_mode(stream: TextIO) -> bool:
    var = os.environ.get("WG_COLOR_MODE")
    if var == "always":
        return True
    if var == "never":
        return False
    try:
        return os.isatty(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return False


def _is_alpha(c: str) -> bool:
    return ("a" <= c <= "z") or ("A" <= c <= "Z")


def filter_ansi(text: str) -> str:
    """wg's filter_ansi: drop ``ESC [`` and everything up to the next letter (inclusive)."""
    n = len(text)
    if n < 2:
        return text
    chars: list[str | None] = list(text)
    for i in range(n - 2):
        if chars[i] == "\x1b" and chars[i + 1] == "[":
            chars[i] = chars[i + 1] = None
            j = i + 2
            while j < n:
                c = chars[j]
                if c is not None and _is_alpha(c):
                    break
                chars[j] = None
                j += 1
            if j < n:
                chars[j] = None
    return "".join(c for c in chars if c is not None)


class Terminal:
    """Writes chunks to `stream`, coloured or filtered like wg's terminal_printf."""

    def __init__(self, stream: TextIO, color: bool | None = None) -> None:
        self.stream = stream
        self.color = color_mode(stream) if color is None else color

    def printf(self, text: str) -> None:
        self.stream.write(text if self.color else filter_ansi(text))
