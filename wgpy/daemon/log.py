"""Logging in wireguard-go's style, chosen by ``LOG_LEVEL`` as wireguard-go chooses it.

wireguard-go has two levels: ``verbose`` (also spelled ``debug``) and ``error``, plus ``silent``; anything else
means ``error``. Its lines go to standard output and look like::

    DEBUG: (wg0) 2026/11/25 16:36:37 UAPI: Updating private key
    ERROR: (wg0) 2026/11/25 16:36:37 IPC error -22: invalid UAPI device key: foo

wgpy's loggers map onto that: DEBUG and INFO print as ``DEBUG:`` and only at the verbose level, WARNING and above
print as ``ERROR:`` (so that warnings, such as the key log one, are seen at the default level).
"""

from __future__ import annotations

import logging
import sys
import time
from enum import Enum
from typing import TextIO


class LogLevel(Enum):
    SILENT = 0
    ERROR = 1
    VERBOSE = 2


def level_from_env(value: str | None) -> LogLevel:
    if value in ("verbose", "debug"):
        return LogLevel.VERBOSE
    if value == "silent":
        return LogLevel.SILENT
    return LogLevel.ERROR


class WireguardGoFormatter(logging.Formatter):
    def __init__(self, interface: str) -> None:
        super().__init__()
        self.prefix = f"({interface}) "

    def format(self, record: logging.LogRecord) -> str:
        kind = "ERROR" if record.levelno >= logging.WARNING else "DEBUG"
        stamp = time.strftime("%Y/%m/%d %H:%M:%S", time.localtime(record.created))
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return f"{kind}: {self.prefix}{stamp} {text}"


def setup(interface: str, level: LogLevel, stream: TextIO | None = None) -> logging.Logger:
    """Configure the ``wgpy`` logger tree for the daemon and return the daemon's logger."""
    root = logging.getLogger("wgpy")
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.propagate = False
    if level is LogLevel.SILENT:
        root.addHandler(logging.NullHandler())
        root.setLevel(logging.CRITICAL + 1)
    else:
        handler = logging.StreamHandler(stream or sys.stdout)
        handler.setFormatter(WireguardGoFormatter(interface))
        root.addHandler(handler)
        root.setLevel(logging.DEBUG if level is LogLevel.VERBOSE else logging.WARNING)
    return logging.getLogger("wgpy.daemon")
