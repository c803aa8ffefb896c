"""QR codes for client configurations: terminal (UTF-8 half blocks), PNG and SVG, all through segno.

A phone camera needs three things from a terminal rendering: the 4-module quiet zone the standard requires,
dark modules that really are dark, and square modules. Half blocks give square modules (a character cell is
about twice as tall as wide, so each cell carries two rows). Polarity is the trap: in a terminal the glyph is
drawn in the *foreground* colour, so on the usual light-on-dark terminal we must draw the *light* modules and
leave the dark ones as background. With ``ansi=True`` (the default) we also pin the colours (bright white on
black) so the result is right on light-background terminals too; ``ansi=False`` gives plain text for pipes,
assuming a light-on-dark terminal unless ``invert=True``.

The QR code carries the client's private key: image files are written 0600.
"""

from __future__ import annotations

import os
from pathlib import Path

import segno

QUIET_ZONE = 4
_ANSI_ON = "\x1b[97;40m"  # bright white foreground, black background
_ANSI_OFF = "\x1b[0m"

# (upper module light, lower module light) -> glyph drawn in the foreground (light) colour
_GLYPHS = {(True, True): "█", (True, False): "▀", (False, True): "▄", (False, False): " "}


def make(text: str) -> segno.QRCode:
    """A full-size QR code (never micro); segno raises the error level as far as the size allows."""
    return segno.make(text, error="L", micro=False, boost_error=True)


def matrix(text: str, border: int = QUIET_ZONE) -> list[list[bool]]:
    """The module matrix with its quiet zone, True for dark."""
    return [[bool(m) for m in row] for row in make(text).matrix_iter(scale=1, border=border)]


def render_terminal(text: str, *, ansi: bool = True, invert: bool = False) -> str:
    """The QR code as UTF-8 half-block lines ending in a newline."""
    rows = matrix(text)
    if len(rows) % 2:
        rows.append([False] * len(rows[0]))  # one more light row: the quiet zone only grows
    lines = []
    for top, bottom in zip(rows[0::2], rows[1::2], strict=True):
        # Glyphs paint light modules unless the terminal is light-on-dark's opposite and uncoloured.
        paint_dark = invert and not ansi
        chars = "".join(
            _GLYPHS[(t if paint_dark else not t, b if paint_dark else not b)]
            for t, b in zip(top, bottom, strict=True)
        )
        lines.append(f"{_ANSI_ON}{chars}{_ANSI_OFF}" if ansi else chars)
    return "\n".join(lines) + "\n"


def _write_private(path: str | Path, data_kind: str, text: str, scale: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), 0o600)
        make(text).save(f, kind=data_kind, scale=scale, border=QUIET_ZONE, dark="black", light="white")


def save_png(text: str, path: str | Path, scale: int = 8) -> None:
    _write_private(path, "png", text, scale)


def save_svg(text: str, path: str | Path, scale: int = 8) -> None:
    _write_private(path, "svg", text, scale)
