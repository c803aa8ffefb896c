"""`wgpy peer`, `wgpy rotate`, `wgpy exporter` and `wgpy audit`: the operator's commands.

:data:`COMMANDS` maps each command to a function taking its arguments (after the command name) and returning the
exit status; :mod:`wgpy.cli.main` dispatches to it. Errors are one line on stderr and status 1, never a key.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from wgpy import config as wgconfig
from wgpy import keys
from wgpy.config import Config, ConfigError
from wgpy.ops import qr
from wgpy.ops.audit import AuditError, AuditLog
from wgpy.ops.provision import (
    AddRequest,
    Layout,
    ProvisionError,
    Target,
    add_peer,
    import_config,
    interface_running,
    parse_date,
    parse_networks,
    peer_label,
    remove_peer,
    resolve_target,
    sync_live,
    wide_allowed_ips,
)
from wgpy.uapi import client as uapi


class UsageError(Exception):
    pass


def _parser(prog: str, description: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=prog, description=description)


def _add_target_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("interface", help="interface name (configuration /etc/wireguard/IFACE.conf) or a path")
    p.add_argument("--config", help="the server configuration file (default /etc/wireguard/IFACE.conf)")


def _target(args: argparse.Namespace) -> Target:
    return resolve_target(args.interface, args.config)


def _audit(args: argparse.Namespace) -> AuditLog | None:
    path = getattr(args, "audit_log", None)
    return AuditLog(path) if path else AuditLog.from_env()


def _run(fn: Callable[[], int]) -> int:
    try:
        return fn()
    except (ProvisionError, ConfigError, AuditError, UsageError, keys.InvalidKeyError) as e:
        print(f"wgpy: {e}", file=sys.stderr)
        return 1
    except uapi.UapiError as e:
        print(f"wgpy: the interface refused the change: {e.strerror}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"wgpy: {e.filename or 'error'}: {e.strerror or e}", file=sys.stderr)
        return 1
    except ValueError as e:  # ipaddress and date parsing: messages name the bad value, never a key
        print(f"wgpy: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _print_qr(text: str, png: str | None, svg: str | None, terminal: bool) -> None:
    if png:
        qr.save_png(text, png)
        print(f"QR code written to {png}", file=sys.stderr)
    if svg:
        qr.save_svg(text, svg)
        print(f"QR code written to {svg}", file=sys.stderr)
    if terminal:
        sys.stdout.write(qr.render_terminal(text, ansi=sys.stdout.isatty()))
        sys.stdout.flush()


# --------------------------------------------------------------------------------------------------------
# wgpy peer


def _peer_add(argv: Sequence[str]) -> int:
    p = _parser("wgpy peer add", "Provision a new peer: address, keys, server [Peer], client config, QR code.")
    _add_target_args(p)
    p.add_argument("name", help="friendly name (kept as '# friendly_name = NAME' in the server config)")
    p.add_argument("--layout", choices=[lay.value for lay in Layout], default=Layout.ROAD_WARRIOR.value)
    p.add_argument("--endpoint", help="HOST:PORT clients connect to (remembered in the server config)")
    p.add_argument("--public-key", help="the client's own public key: no client private key on this host")
    p.add_argument("--no-psk", action="store_true", help="no preshared key")
    p.add_argument("--dns", action="append", help="DNS for road-warrior clients (default: the server's)")
    p.add_argument("--no-dns", action="store_true")
    p.add_argument("--routes", action="append", default=[], help="site-to-site: the client's subnets")
    p.add_argument("--server-routes", action="append", help="site-to-site: subnets behind the server")
    p.add_argument("--address", action="append", help="explicit client address(es) instead of the next free")
    p.add_argument("--expires", help="YYYY-MM-DD: removed by `wgpy peer expire` after that day")
    p.add_argument("--keepalive", type=int, default=25, help="client PersistentKeepalive (0: none)")
    p.add_argument("--output", help="client configuration file (default IFACE.clients/NAME.conf beside it)")
    p.add_argument("--no-qr", action="store_true", help="do not print the QR code on the terminal")
    p.add_argument("--qr-png")
    p.add_argument("--qr-svg")
    p.add_argument("--no-apply", action="store_true", help="only edit files, even if the interface runs")
    p.add_argument("--audit-log")
    args = p.parse_args(argv)

    def go() -> int:
        target = _target(args)
        dns: list[str] | None = [] if args.no_dns else (
            [d.strip() for item in args.dns for d in item.split(",") if d.strip()] if args.dns else None)
        request = AddRequest(
            name=args.name, layout=Layout(args.layout), endpoint=args.endpoint,
            public_key=keys.from_base64(args.public_key) if args.public_key else None,
            psk=not args.no_psk, dns=dns, routes=parse_networks(args.routes),
            server_routes=parse_networks(args.server_routes) if args.server_routes else None,
            expires=parse_date(args.expires) if args.expires else None,
            keepalive=args.keepalive or None,
            addresses=[ipaddress.ip_interface(a.strip()) for item in args.address for a in item.split(",")]
            if args.address else None,
            output=Path(args.output) if args.output else None,
        )
        audit = _audit(args)
        result = add_peer(target, request)
        out = result.client_path
        applied = None if args.no_apply else sync_live(target.interface, _load(target))
        pub = keys.to_base64(result.peer.public_key)
        if audit is not None:
            audit.event("peer_added", actor="cli", public_key=pub, name=args.name, interface=target.interface,
                        allowed_ips=[str(n) for n in result.peer.allowed_ips], layout=args.layout,
                        expires=args.expires, live=applied is not None)
        print(f"peer {args.name!r} ({pub}) added to {target.path}"
              f"{' and the running interface' if applied is not None else ''}", file=sys.stderr)
        print(f"client configuration written to {out} (mode 0600)", file=sys.stderr)
        if _load(target).interface.save_config:
            print("warning: SaveConfig = true: `wg-quick down` rewrites this file from the running interface and "
                  "drops every '# friendly_name' and '# expires'; set it to false", file=sys.stderr)
        if result.forwarding_added:
            print("this host now routes between peers: PostUp lines enabling IP forwarding were added; on the "
                  "running system run them now (sysctl -w net.ipv4.ip_forward=1, and net.ipv6.conf.all."
                  "forwarding=1 for IPv6)", file=sys.stderr)
        if result.client_private_key is None:
            print("the client brought its own key: put its private key in place of the placeholder",
                  file=sys.stderr)
            if args.qr_png or args.qr_svg:
                raise UsageError("no QR code without the client's private key (it never came here)")
        else:
            _print_qr(result.client_text, args.qr_png, args.qr_svg, not args.no_qr)
        return 0

    return _run(go)


def _load(target: Target) -> Config:
    return wgconfig.load(str(target.path))


def _peer_remove(argv: Sequence[str]) -> int:
    p = _parser("wgpy peer remove", "Remove a peer from the server configuration and the running interface.")
    _add_target_args(p)
    p.add_argument("peer", help="friendly name or public key")
    p.add_argument("--keep-client-config", action="store_true")
    p.add_argument("--audit-log")
    args = p.parse_args(argv)

    def go() -> int:
        target = _target(args)
        audit = _audit(args)
        peer = remove_peer(target, args.peer)
        applied = sync_live(target.interface, _load(target))
        if peer.friendly_name and not args.keep_client_config:
            try:
                target.client_path(peer.friendly_name).unlink()
            except FileNotFoundError:
                pass
        if audit is not None:
            audit.event("peer_removed", actor="cli", public_key=keys.to_base64(peer.public_key),
                        name=peer.friendly_name, interface=target.interface, live=applied is not None)
        print(f"peer {peer_label(peer)!r} removed", file=sys.stderr)
        return 0

    return _run(go)


def _human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    return f"{n} B"


def _ago(ts: int, now: float) -> str:
    if not ts:
        return "never"
    seconds = int(now - ts)
    if seconds < 120:
        return f"{seconds}s ago"
    if seconds < 7200:
        return f"{seconds // 60}m ago"
    if seconds < 172800:
        return f"{seconds // 3600}h ago"
    return f"{seconds // 86400}d ago"


def _peer_list(argv: Sequence[str]) -> int:
    p = _parser("wgpy peer list", "Peers with names, addresses, expiry and (when running) handshake and transfer.")
    _add_target_args(p)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    def go() -> int:
        target = _target(args)
        cfg = _load(target)
        live: dict[bytes, uapi.PeerState] = {}
        if interface_running(target.interface):
            live = {peer.public_key: peer for peer in uapi.get(target.interface).peers}
        now = time.time()
        rows: list[dict[str, Any]] = []
        for peer in cfg.peers:
            state = live.get(peer.public_key)
            rows.append({
                "name": peer.friendly_name,
                "public_key": keys.to_base64(peer.public_key),
                "allowed_ips": [str(n) for n in peer.allowed_ips],
                "expires": peer.metadata.get("expires"),
                "running": state is not None,
                "endpoint": uapi.format_endpoint(state.endpoint) if state and state.endpoint else None,
                "latest_handshake": state.last_handshake[0] if state else None,
                "rx_bytes": state.rx_bytes if state else None,
                "tx_bytes": state.tx_bytes if state else None,
            })
        if args.json:
            print(json.dumps(rows, indent=2))
            return 0
        header = ("NAME", "PUBLIC KEY", "ALLOWED IPS", "EXPIRES", "HANDSHAKE", "RECEIVED", "SENT")
        table = [header]
        for r in rows:
            running = r["running"]
            table.append((
                str(r["name"] or "-"), str(r["public_key"])[:10] + "…", ", ".join(r["allowed_ips"]),
                str(r["expires"] or "-"),
                _ago(r["latest_handshake"], now) if running else "not running",
                _human_bytes(r["rx_bytes"]) if running else "-",
                _human_bytes(r["tx_bytes"]) if running else "-",
            ))
        widths = [max(len(row[i]) for row in table) for i in range(len(header))]
        for row in table:
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        return 0

    return _run(go)


def _peer_import(argv: Sequence[str]) -> int:
    p = _parser("wgpy peer import", "Take an existing server configuration under wgpy's management.")
    p.add_argument("source", help="the existing configuration (e.g. an old wg0.conf)")
    p.add_argument("interface", nargs="?", help="interface name (default: the source's file name)")
    p.add_argument("--config", help="where the managed configuration goes (default /etc/wireguard/IFACE.conf)")
    args = p.parse_args(argv)

    def go() -> int:
        source = Path(args.source)
        target = resolve_target(args.interface or source.stem, args.config)
        if target.path.resolve() == source.resolve():
            raise UsageError("import into a different file (use --config), or use the configuration in place")
        names = import_config(source, target)
        print(f"imported {len(names)} peer(s) into {target.path}: {', '.join(names)}", file=sys.stderr)
        for warning in wide_allowed_ips(_load(target)):
            print(f"warning: {warning}", file=sys.stderr)
        return 0

    return _run(go)


def _peer_expire(argv: Sequence[str]) -> int:
    from wgpy.ops.expiry import expire

    p = _parser("wgpy peer expire", "Remove peers whose '# expires' date has passed (file and running interface).")
    _add_target_args(p)
    p.add_argument("--today", help="YYYY-MM-DD (default: today, UTC)")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--audit-log")
    args = p.parse_args(argv)

    def go() -> int:
        today = parse_date(args.today) if args.today else None
        result = expire(_target(args), today, _audit(args), dry_run=args.dry_run)
        for peer in result.removed:
            verb = "would remove" if args.dry_run else "removed"
            print(f"{verb} {peer_label(peer)!r} (expired {peer.metadata.get('expires')})", file=sys.stderr)
        return 0

    return _run(go)


def _peer_reresolve(argv: Sequence[str]) -> int:
    from wgpy.ops.reresolve import reresolve_loop, reresolve_once

    p = _parser("wgpy peer reresolve", "Re-resolve host-name endpoints of peers without a recent handshake.")
    _add_target_args(p)
    p.add_argument("--once", action="store_true", help="one pass, then exit (for a timer)")
    p.add_argument("--interval", type=float, default=30.0)
    p.add_argument("--audit-log")
    args = p.parse_args(argv)

    def go() -> int:
        target = _target(args)
        if args.once:
            for change in reresolve_once(target, audit=_audit(args)):
                print(f"{keys.to_base64(change.public_key)}: endpoint now {uapi.format_endpoint(change.new)}",
                      file=sys.stderr)
            return 0
        reresolve_loop(target, args.interval, _audit(args))
        return 0

    return _run(go)


def _peer_show(argv: Sequence[str]) -> int:
    p = _parser("wgpy peer show", "Print an issued client configuration (and its QR code) again.")
    _add_target_args(p)
    p.add_argument("name")
    p.add_argument("--qr", action="store_true", help="print the QR code instead of the text")
    p.add_argument("--qr-png")
    p.add_argument("--qr-svg")
    args = p.parse_args(argv)

    def go() -> int:
        path = _target(args).client_path(args.name)
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise UsageError(f"no issued client configuration {path}") from None
        if not (args.qr or args.qr_png or args.qr_svg):
            sys.stdout.write(text)
        _print_qr(text, args.qr_png, args.qr_svg, args.qr)
        return 0

    return _run(go)


PEER_COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "add": _peer_add, "remove": _peer_remove, "list": _peer_list, "import": _peer_import,
    "expire": _peer_expire, "reresolve": _peer_reresolve, "show": _peer_show,
}


def _dispatch(name: str, table: dict[str, Callable[[Sequence[str]], int]], argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(f"usage: wgpy {name} {{{','.join(table)}}} ...", file=sys.stderr if argv else sys.stdout)
        return 0 if argv else 1
    fn = table.get(argv[0])
    if fn is None:
        print(f"wgpy {name}: unknown subcommand {argv[0]!r} (one of {', '.join(table)})", file=sys.stderr)
        return 1
    return fn(argv[1:])


def peer_main(argv: list[str]) -> int:
    return _dispatch("peer", PEER_COMMANDS, argv)


# --------------------------------------------------------------------------------------------------------
# wgpy audit


def audit_main(argv: list[str]) -> int:
    p = _parser("wgpy audit", "Show the audit log (WGPY_AUDIT_LOG), optionally filtered.")
    p.add_argument("path", nargs="?", default=os.environ.get("WGPY_AUDIT_LOG"))
    p.add_argument("--event", action="append", help="only these event kinds")
    p.add_argument("--peer", help="only events about this public key")
    p.add_argument("--since", help="YYYY-MM-DD or an RFC 3339 time")
    p.add_argument("--json", action="store_true", help="print the JSON lines as they are")
    args = p.parse_args(argv)

    def go() -> int:
        if not args.path or args.path == "journal":
            raise UsageError("name the audit log file (or set WGPY_AUDIT_LOG); read the journal with journalctl")
        since = args.since or ""
        with open(args.path, encoding="utf-8") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    print(f"wgpy audit: skipping a malformed line: {line[:40]!r}", file=sys.stderr)
                    continue
                if args.event and record.get("event") not in args.event:
                    continue
                if args.peer and record.get("public_key") != args.peer:
                    continue
                if since and str(record.get("ts", "")) < since:
                    continue
                if args.json:
                    sys.stdout.write(line)
                    continue
                rest = " ".join(f"{k}={v}" for k, v in record.items() if k not in ("ts", "event", "actor"))
                print(f"{record.get('ts')} {record.get('event'):<20} {record.get('actor'):<6} {rest}")
        return 0

    return _run(go)


# --------------------------------------------------------------------------------------------------------
# wgpy rotate


def _every(interval: str | None, once: Callable[[], int]) -> int:
    """Run `once` now and, with --every, again after each interval (a failed round is reported, not fatal)."""
    from wgpy.ops.rotate import parse_duration

    if interval is None:
        return _run(once)
    seconds = parse_duration(interval)
    while True:
        status = _run(once)
        if status == 130:
            return status
        try:
            time.sleep(seconds)
        except KeyboardInterrupt:
            return 0


def _rotate_psk(argv: Sequence[str]) -> int:
    from wgpy.ops.rotate import parse_client_interfaces, read_psk, rotate_psk

    p = _parser("wgpy rotate psk", "New preshared keys on both ends this host manages, applied live.")
    _add_target_args(p)
    p.add_argument("--peer", action="append", help="name or public key (repeatable; default: every peer)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--from-file", help="an externally negotiated PSK (base64), e.g. from Rosenpass")
    source.add_argument("--stdin", action="store_true", help="read the PSK (base64) from standard input")
    p.add_argument("--apply-client", action="append", default=[], metavar="NAME=IFACE",
                   help="also update this client interface running on this host")
    p.add_argument("--every", help="keep running: rotate again every interval (30m, 12h, 1d, ...)")
    p.add_argument("--audit-log")
    args = p.parse_args(argv)

    def once() -> int:
        psk = None
        if args.from_file:
            psk = read_psk(Path(args.from_file).read_text())
        elif args.stdin:
            psk = read_psk(sys.stdin.read())
        done = rotate_psk(_target(args), args.peer, psk=psk,
                          client_interfaces=parse_client_interfaces(args.apply_client), audit=_audit(args))
        for r in done:
            extra = f", client config {r.client_path}" if r.client_path else ", no issued client config"
            print(f"new PSK for {peer_label(r.peer)!r}{extra}", file=sys.stderr)
        return 0

    if args.every and (args.from_file or args.stdin):
        print("wgpy rotate psk: --every generates keys; it does not combine with --from-file/--stdin",
              file=sys.stderr)
        return 1
    return _every(args.every, once)


def _rotate_client_key(argv: Sequence[str]) -> int:
    import datetime as dt

    from wgpy.ops.rotate import DEFAULT_GRACE, parse_duration, rotate_client_key

    p = _parser("wgpy rotate client-key", "New static key for an issued client, old key kept for a grace period.")
    _add_target_args(p)
    p.add_argument("name")
    p.add_argument("--grace", help="how long the old key keeps working (default 7d)")
    p.add_argument("--public-key", help="the client's own new public key (it keeps its private key to itself)")
    p.add_argument("--apply-client", metavar="IFACE", help="the client's interface, if it runs on this host")
    p.add_argument("--no-qr", action="store_true")
    p.add_argument("--qr-png")
    p.add_argument("--qr-svg")
    p.add_argument("--audit-log")
    args = p.parse_args(argv)

    def go() -> int:
        grace = dt.timedelta(seconds=parse_duration(args.grace)) if args.grace else DEFAULT_GRACE
        r = rotate_client_key(_target(args), args.name, grace=grace, client_interface=args.apply_client,
                              new_public_key=keys.from_base64(args.public_key) if args.public_key else None,
                              audit=_audit(args))
        where = f"client config re-issued at {r.client_path}" if r.client_text else "the client keeps its own key"
        print(f"{r.name!r}: new key {keys.to_base64(r.new_public_key)}; {where}; the old key works until "
              f"{r.grace_until.isoformat()} or until the new one handshakes and `wgpy rotate finish` runs",
              file=sys.stderr)
        if r.client_text is not None:
            _print_qr(r.client_text, args.qr_png, args.qr_svg, not args.no_qr)
        return 0

    return _run(go)


def _rotate_finish(argv: Sequence[str]) -> int:
    from wgpy.ops.rotate import finish_rotations

    p = _parser("wgpy rotate finish", "Complete client-key rotations whose new key handshook or whose grace ended.")
    _add_target_args(p)
    p.add_argument("--force", action="store_true", help="complete every pending rotation now")
    p.add_argument("--watch", metavar="INTERVAL", help="keep checking every interval (e.g. 30s)")
    p.add_argument("--audit-log")
    args = p.parse_args(argv)

    def once() -> int:
        for d in finish_rotations(_target(args), audit=_audit(args), force=args.force):
            print(f"{d.name!r}: now {keys.to_base64(d.new_public_key)} only ({d.reason})", file=sys.stderr)
        return 0

    return _every(args.watch, once)


def _rotate_server_key(argv: Sequence[str]) -> int:
    from wgpy.ops.rotate import parse_client_interfaces, rotate_server_key

    p = _parser("wgpy rotate server-key", "New server static key; re-issues the client configs (sessions end).")
    _add_target_args(p)
    p.add_argument("--apply-client", action="append", default=[], metavar="NAME=IFACE")
    p.add_argument("--yes", action="store_true", help="confirm: every client must get its new configuration")
    p.add_argument("--audit-log")
    args = p.parse_args(argv)

    def go() -> int:
        if not args.yes:
            raise UsageError("rotating the server key ends every session until each client has its new "
                             "configuration; run again with --yes (see `wgpy rotate --help`)")
        r = rotate_server_key(_target(args), client_interfaces=parse_client_interfaces(args.apply_client),
                              audit=_audit(args))
        print(f"server key now {keys.to_base64(r.new_public_key)}", file=sys.stderr)
        for path in r.reissued:
            print(f"re-issued {path}: give it to the client (wgpy peer show ... --qr)", file=sys.stderr)
        for name in r.not_reissued:
            print(f"{name!r}: configured elsewhere: tell it the new server public key", file=sys.stderr)
        return 0

    return _run(go)


ROTATE_COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "psk": _rotate_psk, "client-key": _rotate_client_key, "finish": _rotate_finish,
    "server-key": _rotate_server_key,
}


def rotate_main(argv: list[str]) -> int:
    if argv and argv[0] in ("-h", "--help"):
        from wgpy.ops import rotate

        print("usage: wgpy rotate {psk,client-key,finish,server-key} ...\n")
        print(rotate.__doc__)
        return 0
    return _dispatch("rotate", ROTATE_COMMANDS, argv)


def exporter_main(argv: list[str]) -> int:
    from wgpy.ops.exporter import main

    return main(argv)


COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "peer": peer_main,
    "rotate": rotate_main,
    "exporter": exporter_main,
    "audit": audit_main,
}
