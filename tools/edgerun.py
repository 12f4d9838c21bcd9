"""`chordcdn edge`: one caching edge in the foreground.

Owns the edge's process life: parsing its options, opening the DHT connection when
ring nodes are named (`--dht`, several allowed; mutual TLS with a reader certificate,
`--ring-cert`), serving until SIGTERM or Ctrl-C, and closing cleanly.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import signal
from typing import Any, Callable
from urllib.parse import urlsplit

import trio

from dht.addresses import advertised_address
from dht.identity import Role
from dht.tcp import open_tcp_transport
from dht.tls import TlsCredentials
from edge.accesslog import FORMATS, AccessLog, logged, open_sink, running
from edge.httpserver import Limits, bound_port, serve_http
from edge.messages import Handler
from edge.proxy import Edge, EdgeConfig
from edge.upstream import DhtSource, ring_addresses

from .argtypes import address, byte_size, host_and_port, positive
from .noderun import prepare_server_process, wait_for_signal
from .config import add_config_option
from .httplimits import add_limit_options, limits_from
from .security import add_credential_options, credentials_from, keep_fresh

log = logging.getLogger(__name__)


def url(text: str) -> str:
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise argparse.ArgumentTypeError(f"{text!r} is not an http:// or https:// URL")
    return text.rstrip("/")


def peers(text: str) -> dict[str, str]:
    """NAME=URL,NAME=URL"""
    found: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, address = item.partition("=")
        if not sep or not name:
            raise argparse.ArgumentTypeError(f"peer {item!r} is not NAME=URL")
        found[name] = url(address)
    return found


def ring_nodes(text: str) -> list[str]:
    """HOST:PORT,HOST:PORT"""
    found = [address(part) for part in ring_addresses(text)]
    if not found:
        raise argparse.ArgumentTypeError("--dht needs at least one HOST:PORT")
    return found


def disk_cache(text: str) -> tuple[str, int]:
    """DIR:SIZE"""
    directory, sep, size = text.rpartition(":")
    if not sep or not directory:
        raise argparse.ArgumentTypeError(f"disk cache {text!r} is not DIR:SIZE")
    return directory, byte_size(size)


def add_edge_command(commands: Any) -> None:
    edge = commands.add_parser("edge", help="run a caching HTTP edge in the foreground")
    edge.add_argument("--listen", type=host_and_port, required=True, metavar="HOST:PORT")
    edge.add_argument("--advertise", type=address, metavar="HOST:PORT", help="the address clients and peers use, when it differs from --listen")
    edge.add_argument("--name", required=True, help="this edge's name on the edges' hash ring")
    edge.add_argument("--origin", type=url, required=True, metavar="URL")
    edge.add_argument(
        "--dht", type=ring_nodes, action="extend", metavar="HOST:PORT,...",
        help="ring nodes to read bodies from by CID (repeatable); more are learned from the ring, and a dead one is replaced",
    )
    edge.add_argument("--peers", type=peers, default={}, metavar="NAME=URL,...", help="the other edges of the cluster")
    edge.add_argument("--parent", type=url, metavar="URL", help="a parent edge to ask before the DHT and the origin")
    edge.add_argument("--mem-cache", type=byte_size, default=256 * 1024**2, metavar="SIZE", help="memory tier budget (default 256MiB)")
    edge.add_argument("--disk-cache", type=disk_cache, metavar="DIR:SIZE", help="disk tier directory and budget")
    edge.add_argument("--upstream-timeout", type=positive(3600), default=10.0, metavar="SECONDS")
    edge.add_argument(
        "--purge-token", default=os.environ.get("CHORDCDN_PURGE_TOKEN") or None, metavar="TOKEN",
        help="allow `PURGE <path>` with `Authorization: Bearer TOKEN` (default: $CHORDCDN_PURGE_TOKEN; unset passes PURGE to the origin)",
    )
    edge.add_argument(
        "--access-log", metavar="FILE|-|off",
        help="one line per request: appended to FILE, on stdout (-) or nowhere (off); default: on stderr with the log, at --log-level INFO or DEBUG",
    )
    edge.add_argument("--access-log-format", choices=FORMATS, default="text", help="the access log's lines: text (default) or json")
    add_limit_options(edge)
    add_credential_options(edge, prefix="ring-")
    add_config_option(edge)
    edge.set_defaults(run=cmd_edge)


def cmd_edge(args: argparse.Namespace) -> int:
    config = EdgeConfig(
        name=args.name,
        origin=args.origin,
        peers=args.peers,
        parent=args.parent,
        dht=tuple(args.dht) if args.dht else None,
        memory_budget=args.mem_cache,
        disk_dir=args.disk_cache[0] if args.disk_cache else None,
        disk_budget=args.disk_cache[1] if args.disk_cache else 0,
        upstream_timeout=args.upstream_timeout,
        purge_token=args.purge_token,
    )
    host, port = args.listen
    ring_tls = credentials_from(args, Role.READER) if config.dht else None
    prepare_server_process()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per upstream request otherwise
    access = _access_log(args)
    run = functools.partial(run_edge_until_signal, limits=limits_from(args))
    trio.run(run, config, host, port, functools.partial(print, flush=True), ring_tls, args.advertise, access)
    return 0


def _access_log(args: argparse.Namespace) -> AccessLog | None:
    """The log `--access-log` and `--access-log-format` ask for; None when it is off."""
    try:
        sink = open_sink(args.access_log)
    except OSError as exc:
        raise ValueError(f"--access-log {args.access_log}: {exc.strerror or exc}") from None
    return None if sink is None else AccessLog(sink, args.access_log_format)


async def run_edge_until_signal(
    config: EdgeConfig, host: str, port: int, report: Callable[[str], None], ring_tls: TlsCredentials | None = None,
    advertise: str | None = None, access: AccessLog | None = None, limits: Limits = Limits(),
) -> None:
    async with trio.open_nursery() as nursery:
        edge = await nursery.start(run_edge, config, host, port, limits, ring_tls, access)
        nursery.start_soon(keep_fresh, ring_tls)
        shown = advertise_or_bound(host, edge.port, advertise)
        ring = f", DHT via {', '.join(ring_addresses(config.dht))}" if config.dht else ""
        report(f"edge {config.name} listening on {shown}, origin {config.origin}{ring}")
        signum = await wait_for_signal()
        log.info("%s received: stopping", signal.Signals(signum).name)
        nursery.cancel_scope.cancel()


def advertise_or_bound(host: str, port: int, advertise: str | None) -> str:
    """What an HTTP server reports as its address: the advertised one, or the bound
    one (a wildcard bind is fine for HTTP, and reported as it is)."""
    try:
        return advertised_address(host, port, advertise)
    except ValueError:
        return f"{host or '0.0.0.0'}:{port}"


async def run_edge(
    config: EdgeConfig,
    host: str,
    port: int,
    limits: Limits = Limits(),
    ring_tls: TlsCredentials | None = None,
    access: AccessLog | None = None,
    *,
    task_status: trio.TaskStatus[Edge] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve an edge until cancelled; `nursery.start` returns the Edge, its bound
    port in `edge.port`. Ring links use `ring_tls` (plaintext without it). Each
    request gets a line in `access` (written out, to the last, once the server stops)."""
    async with open_tcp_transport(None, tls=ring_tls) as transport, running(access), trio.open_nursery() as nursery:
        dht = DhtSource(transport, config.dht, config.cid_timeout) if config.dht else None
        if dht is not None:
            nursery.start_soon(dht.keep_contacts)
        edge = Edge(config, nursery, dht)
        try:
            listeners = await nursery.start(functools.partial(serve_http, _logged(edge, access), host, port, limits))
            edge.port = bound_port(listeners)
            task_status.started(edge)
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await edge.aclose()


def _logged(edge: Edge, access: AccessLog | None) -> Handler:
    """The edge's handler, recording one access-log line per request when there is a log."""
    return edge.handle if access is None else logged(edge.handle, access)
