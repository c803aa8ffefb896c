"""QR codes decode (zxing-cpp, no inversion allowed) to exactly the client configuration."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest
import zxingcpp
from PIL import Image

from wgpy.ops import qr

CONFIG = """[Interface]
PrivateKey = yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=
Address = 10.0.0.2/32, fd00::2/128
DNS = 10.0.0.1

[Peer]
PublicKey = xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=
PresharedKey = FpCyhws9cxwWoV4xELtfJvjJN+zQVRPISllRWgeopVE=
AllowedIPs = 0.0.0.0/0, ::/0
Endpoint = vpn.example.net:51820
"""

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_LIGHT = {"█": (True, True), "▀": (True, False), "▄": (False, True), " ": (False, False)}


def decode(image: Image.Image) -> list[str]:
    return [b.text for b in zxingcpp.read_barcodes(image, try_invert=False)]


def rasterise(rendering: str, *, light_glyphs: bool = True, px: int = 6) -> Image.Image:
    """Paint each half block as the terminal would: glyph pixels in the foreground colour."""
    lines = [_ANSI.sub("", line) for line in rendering.splitlines()]
    width = len(lines[0])
    assert all(len(line) == width for line in lines)
    img = Image.new("L", (width * px, len(lines) * 2 * px), 0)
    fg, bg = (255, 0) if light_glyphs else (0, 255)
    for y, line in enumerate(lines):
        for x, ch in enumerate(line):
            for half, lit in enumerate(_LIGHT[ch]):
                box = (x * px, (2 * y + half) * px, (x + 1) * px, (2 * y + half + 1) * px)
                img.paste(fg if lit else bg, box)
    return img


def test_png_and_svg_decode_to_config(tmp_path: Path) -> None:
    png = tmp_path / "c.png"
    qr.save_png(CONFIG, png)
    assert stat.S_IMODE(os.stat(png).st_mode) == 0o600
    assert decode(Image.open(png)) == [CONFIG]
    svg = tmp_path / "c.svg"
    qr.save_svg(CONFIG, svg)
    assert stat.S_IMODE(os.stat(svg).st_mode) == 0o600
    assert svg.read_text().lstrip().startswith("<?xml")


def test_terminal_rendering_decodes_with_correct_polarity() -> None:
    text = qr.render_terminal(CONFIG)
    lines = text.splitlines()
    assert all(line.startswith("\x1b[97;40m") and line.endswith("\x1b[0m") for line in lines)
    # ANSI pins white glyphs on black: rasterised as a terminal shows it; the reader may not invert.
    assert decode(rasterise(text)) == [CONFIG]
    # The quiet zone: the first two lines and the first/last four columns are all light (full blocks).
    plain = [_ANSI.sub("", line) for line in lines]
    assert set(plain[0]) == {"█"} and set(plain[1]) == {"█"}
    assert all(line[:4] == "████" and line[-4:] == "████" for line in plain)
    # Wrong polarity would not decode without inversion: the check is real.
    assert decode(rasterise(text, light_glyphs=False)) == []


@pytest.mark.parametrize("invert", [False, True])
def test_plain_rendering(invert: bool) -> None:
    text = qr.render_terminal(CONFIG, ansi=False, invert=invert)
    assert "\x1b" not in text
    # plain, not inverted: for light-on-dark terminals (glyphs light); inverted: for dark-on-light terminals.
    assert decode(rasterise(text, light_glyphs=not invert)) == [CONFIG]
