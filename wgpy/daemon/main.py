"""``wgpyd [-f|--foreground] [--keylog PATH] IFACE``: a drop-in for ``wireguard-go IFACE``.

So that ``WG_QUICK_USERSPACE_IMPLEMENTATION=wgpyd wg-quick up wg0`` works, wgpyd behaves as wireguard-go does:

- it daemonises by default and returns only once the interface and its UAPI socket exist: it forks, the child
  does all the set-up and reports success or the error through a pipe, and the parent exits with that status;
- ``-f``/``--foreground`` or ``WG_PROCESS_FOREGROUND=1`` keep it attached;
- ``WG_TUN_FD`` and ``WG_UAPI_FD`` hand it an already open TUN device and listening UAPI socket;
- ``LOG_LEVEL=verbose|debug|error|silent`` selects the log level (default ``error``); a daemonised wgpyd keeps
  standard output for its log only when LOG_LEVEL is set and not silent, like wireguard-go;
- ``--version`` prints the version.

``--keylog PATH`` or ``WGPY_KEYLOG=PATH`` writes every session's keys for Wireshark (see ``keylog.py``): a
debugging aid that defeats the encryption, off by default and announced with a warning.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from wgpy.daemon import log as daemon_log
from wgpy.daemon.keylog import KeyLog

USAGE = "Usage: wgpyd [-f/--foreground] [--keylog PATH] INTERFACE-NAME\n"
# Linux interface names: at most 15 bytes, no '/', no whitespace, not '.' or '..' (dev_valid_name()).
_IFNAME = re.compile(r"[^/\s:]{1,15}")


def _version() -> str:
    try:
        return version("wgpy")
    except PackageNotFoundError:
        return "unknown"


class Options:
    def __init__(self) -> None:
        self.foreground = False
        self.interface = ""
        self.keylog: str | None = None


def parse_args(argv: list[str]) -> Options | int:
    """wireguard-go's tiny command line, plus ``--keylog``. Returns an exit status when there is nothing to run."""
    opts = Options()
    rest: list[str] = []
    args = iter(argv)
    for arg in args:
        if arg in ("--version", "-v"):
            sys.stdout.write(
                f"wgpyd v{_version()}\n\nUserspace WireGuard daemon in Python for Linux.\n"
                "A drop-in for wireguard-go; information available at https://www.wireguard.com.\n"
            )
            return 0
        if arg in ("-f", "--foreground"):
            opts.foreground = True
        elif arg == "--keylog":
            opts.keylog = next(args, None)
            if opts.keylog is None:
                sys.stderr.write(USAGE)
                return 2
        elif arg.startswith("--keylog="):
            opts.keylog = arg.partition("=")[2]
        elif arg in ("-h", "--help"):
            sys.stdout.write(USAGE)
            return 0
        else:
            rest.append(arg)
    if len(rest) != 1:
        sys.stderr.write(USAGE)
        return 2
    opts.interface = rest[0]
    if not _IFNAME.fullmatch(opts.interface) or opts.interface in (".", ".."):
        sys.stderr.write(f"wgpyd: invalid interface name {opts.interface!r}\n")
        return 2
    if os.environ.get("WG_PROCESS_FOREGROUND") == "1":
        opts.foreground = True
    if opts.keylog is None and os.environ.get("WGPY_KEYLOG"):
        opts.keylog = os.environ["WGPY_KEYLOG"]
    return opts


def main(argv: list[str] | None = None) -> int:
    parsed = parse_args(sys.argv[1:] if argv is None else argv)
    if isinstance(parsed, int):
        return parsed
    opts = parsed
    level_text = os.environ.get("LOG_LEVEL")
    level = daemon_log.level_from_env(level_text)
    if opts.keylog:
        sys.stderr.write(
            f"WARNING: wgpyd key log is ON: the keys of every session of {opts.interface} are written to "
            f"{opts.keylog}. Anyone who can read that file can decrypt all traffic. Use only for debugging.\n"
        )
    if opts.foreground:
        daemon_log.setup(opts.interface, level)
        return run(opts, ready_fd=None)

    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid > 0:
        os.close(ready_w)
        report = b""
        while chunk := os.read(ready_r, 4096):
            report += chunk
        os.close(ready_r)
        if report[:1] == b"\x00":
            return 0
        message = report[1:].decode(errors="replace") or "the daemon exited during set-up"
        sys.stderr.write(f"wgpyd: {message}\n")
        return 1

    # The child: a session of its own, standard input from /dev/null, standard output kept for the log only when
    # asked for (as wireguard-go does), so that whoever started us is not kept waiting on our output.
    os.close(ready_r)
    os.setsid()
    _close_inherited_fds(keep={ready_w, *_env_fds()})
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    if not level_text or level is daemon_log.LogLevel.SILENT:
        os.dup2(null, 1)
        os.dup2(null, 2)
    os.close(null)
    daemon_log.setup(opts.interface, level)
    try:
        status = run(opts, ready_fd=ready_w)
    except BaseException:
        daemon_log.logging.getLogger("wgpy.daemon").exception("wgpyd ended by an unexpected error")
        status = 1
    os._exit(status)


def _env_fds() -> set[int]:
    fds = set()
    for name in ("WG_TUN_FD", "WG_UAPI_FD"):
        value = os.environ.get(name, "")
        if value.isdigit():
            fds.add(int(value))
    return fds


def _close_inherited_fds(keep: set[int]) -> None:
    """A daemon must not hold its starter's pipes open (whoever waits for their end would wait for ours), as
    wireguard-go's child, started with only the files it needs, does not."""
    low = 3
    for fd in sorted(keep | {os.sysconf("SC_OPEN_MAX")}):
        if fd >= low:
            os.closerange(low, fd)
            low = fd + 1


def _report(ready_fd: int | None, ok: bool, message: str = "") -> None:
    if ready_fd is None:
        return
    try:
        os.write(ready_fd, (b"\x00" if ok else b"\x01") + message.encode())
    except OSError:
        pass
    os.close(ready_fd)


def run(opts: Options, ready_fd: int | None) -> int:
    """Set up the interface, the sockets and the loop; report readiness; run until told to stop.

    SIGINT or SIGTERM may come as soon as the socket file exists, before the loop takes the signals over: they
    are remembered meanwhile, so that the daemon still stops cleanly (socket file and interface removed) instead
    of dying of the signal half set up. The handlers in place before are back when this returns, however it ends.
    """
    early: list[int] = []
    previous = {
        sig: signal.signal(sig, lambda signum, frame: early.append(signum)) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        return _run(opts, ready_fd, early)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run(opts: Options, ready_fd: int | None, early: list[int]) -> int:
    # Imported here so that --version and usage errors need none of the kernel interfaces.
    from wgpy.daemon.loop import EventLoop
    from wgpy.linux.tun import Tun
    from wgpy.linux.udp import UdpSocket
    from wgpy.protocol.device import Device
    from wgpy.uapi import server as uapi_server

    log = daemon_log.logging.getLogger("wgpy.daemon")
    log.debug("Starting wgpyd version %s", _version())
    tun = udp = listener = None
    created_socket: Path | None = None
    try:
        tun_fd = os.environ.get("WG_TUN_FD")
        tun = Tun.adopt(int(tun_fd)) if tun_fd else Tun.create(opts.interface, mtu=1420)
        uapi_fd = os.environ.get("WG_UAPI_FD")
        socket_file: Path | None
        if uapi_fd:
            listener = socket.socket(fileno=int(uapi_fd))
            name = listener.getsockname()
            socket_file = Path(name) if isinstance(name, str) and name else None
        else:
            listener = uapi_server.listen(opts.interface)
            socket_file = created_socket = uapi_server.socket_path(opts.interface)
        udp = UdpSocket(port=0)
        device = Device(mtu=tun.mtu)
        if opts.keylog:
            device.keylog = KeyLog(opts.keylog, device)
            log.warning("Key log enabled: session keys are written to %s", opts.keylog)
        loop = EventLoop(opts.interface, tun, udp, device, listener, socket_file)
    except Exception as exc:
        message = f"failed to set up {opts.interface}: {exc}"
        log.error("%s", message)
        for thing in (udp, listener, tun):
            if thing is not None:
                try:
                    thing.close()
                except OSError:
                    pass
        if created_socket is not None:
            created_socket.unlink(missing_ok=True)
        if ready_fd is None:
            sys.stderr.write(f"wgpyd: {message}\n")
        else:
            _report(ready_fd, False, message)
        return 1
    for signum in early:
        loop.stop(f"received {signal.Signals(signum).name}")
    log.debug("UAPI listener started")
    _report(ready_fd, True)
    try:
        loop.run()
    finally:
        loop.close()
    log.debug("Shutting down")
    return 0


if __name__ == "__main__":
    sys.exit(main())
