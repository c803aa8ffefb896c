"""`wgpy`: one command for everything `wg` and `wg-quick` do, plus wgpy's own tools.

The dispatch mirrors wg.c: no argument means `show`; `-v`/`--version`/`version` and `-h`/`--help`/`help` as
the only argument; an unknown subcommand prints the usage on stderr and exits 1. The wg-quick half
(:mod:`wgpy.cli.quick`), the operations tools (:mod:`wgpy.ops.cli`) and the demo are imported only when their
subcommand runs, so a missing or broken one never stops `wgpy show` from working.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import TextIO

from wgpy import __version__
from wgpy.cli import show, wg

PROG_NAME = "wgpy"

Command = Callable[[list[str]], int]

# (name, description) in the order of the usage text; the first block is wg's, word for word.
SUBCOMMANDS: tuple[tuple[str, str], ...] = (
    ("show", "Shows the current configuration and device information"),
    ("showconf", "Shows the current configuration of a given WireGuard interface, for use with `setconf'"),
    ("set", "Change the current configuration, add peers, remove peers, or change peers"),
    ("setconf", "Applies a configuration file to a WireGuard interface"),
    ("addconf", "Appends a configuration file to a WireGuard interface"),
    ("syncconf", "Synchronizes a configuration file to a WireGuard interface"),
    ("genkey", "Generates a new private key and writes it to stdout"),
    ("genpsk", "Generates a new preshared key and writes it to stdout"),
    ("pubkey", "Reads a private key from stdin and writes a public key to stdout"),
    ("up", "Sets up a WireGuard interface from a wg-quick configuration (like wg-quick up)"),
    ("down", "Tears down a WireGuard interface set up by `up' (like wg-quick down)"),
    ("save", "Saves the running configuration of an interface to its file (like wg-quick save)"),
    ("strip", "Prints a wg-quick configuration without its wg-quick keys (like wg-quick strip)"),
    ("peer", "Adds, lists and removes peers with their addresses and client configurations"),
    ("rotate", "Rotates an interface's private key or a peer's preshared key"),
    ("exporter", "Serves Prometheus metrics for WireGuard interfaces"),
    ("audit", "Shows the audit log of configuration changes"),
    ("demo", "Runs a self-contained demonstration in network namespaces"),
)

# Subcommands that live in modules other engineers own: (module, attribute holding the COMMANDS dict).
EXTERNAL: dict[str, tuple[str, str | None]] = {
    "up": ("wgpy.cli.quick", "COMMANDS"),
    "down": ("wgpy.cli.quick", "COMMANDS"),
    "save": ("wgpy.cli.quick", "COMMANDS"),
    "strip": ("wgpy.cli.quick", "COMMANDS"),
    "peer": ("wgpy.ops.cli", "COMMANDS"),
    "rotate": ("wgpy.ops.cli", "COMMANDS"),
    "exporter": ("wgpy.ops.cli", "COMMANDS"),
    "audit": ("wgpy.ops.cli", "COMMANDS"),
    "demo": ("wgpy.demo", None),  # wgpy.demo.main(argv)
}


def show_usage(stream: TextIO) -> None:
    stream.write(f"Usage: {PROG_NAME} <cmd> [<args>]\n\nAvailable subcommands:\n")
    for name, description in SUBCOMMANDS:
        stream.write(f"  {name}: {description}\n")
    stream.write("You may pass `--help' to any of these subcommands to view usage.\n")


def _builtin(name: str) -> Command | None:
    table: dict[str, Command] = {
        "show": show.show_main,
        "showconf": show.showconf_main,
        "set": wg.set_main,
        "setconf": wg.setconf_main,
        "addconf": wg.setconf_main,
        "syncconf": wg.setconf_main,
        "genkey": wg.genkey_main,
        "genpsk": wg.genkey_main,
        "pubkey": wg.pubkey_main,
    }
    return table.get(name)


def _run_external(name: str, args: list[str]) -> int:
    """Import the module behind `name` only now; `args` are the arguments after the subcommand name."""
    module_name, attribute = EXTERNAL[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is not None and module_name.startswith(e.name):
            sys.stderr.write(f"{PROG_NAME}: `{name}' is not available in this installation "
                             f"({module_name} is missing)\n")
            return 1
        raise
    entry = getattr(module, "main", None) if attribute is None else getattr(module, attribute, {}).get(name)
    if entry is None:
        sys.stderr.write(f"{PROG_NAME}: `{name}' is not available in this installation "
                         f"({module_name} does not provide it)\n")
        return 1
    result = entry(args)
    return int(result or 0)


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(sys.argv[1:] if argv is None else argv)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`wgpy show | head`): exit quietly, as wg does, without a traceback at exit.
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


def _main(args: list[str]) -> int:
    if len(args) == 1 and args[0] in ("-v", "--version", "version"):
        sys.stdout.write(f"{PROG_NAME} v{__version__} - userspace WireGuard in Python\n")
        return 0
    if len(args) == 1 and args[0] in ("-h", "--help", "help"):
        show_usage(sys.stdout)
        return 0
    if not args:
        return show.show_main(["show"])
    name = args[0]
    builtin = _builtin(name)
    if builtin is not None:
        return builtin(args)
    if name in EXTERNAL:
        return _run_external(name, args[1:])
    sys.stderr.write(f"Invalid subcommand: `{name}'\n")
    show_usage(sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
