"""Running the origin (`origin/`): `run_origin` for tests and the demo, `chordcdn origin` for people.

Owns the origin's process life: the HTTP listener, the publishing and
availability-checking tasks with their DHT connection (mutual TLS with a client
certificate, `--ring-cert`), periodic stats log lines, and stopping on SIGTERM or
Ctrl-C.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from dht.addresses import split_address
from dht.client import DhtClient
from dht.identity import Role
from dht.tcp import open_tcp_transport
from dht.tls import TlsCredentials
from edge.httpserver import Limits, bound_port, serve_http

from .argtypes import address, byte_size, checked, positive
from .edgerun import advertise_or_bound
from .httplimits import add_limit_options, limits_from
from .noderun import prepare_server_process, wait_for_signal
from .config import add_config_option
from .security import add_credential_options, credentials_from, keep_fresh

from origin.availability import DEFAULT_CHECK_INTERVAL, DEFAULT_CHECK_RATE
from origin.server import DEFAULT_RESCAN, Origin, OriginConfig, parse_cache_control_rule

log = logging.getLogger(__name__)

STATS_INTERVAL = 60.0  # seconds between stats log lines, when there was traffic
EXIT_CANNOT_LISTEN = 3  # as `chordcdn node` (tools.cli.EXIT_UNREACHABLE)


@dataclass(frozen=True)
class RunningOrigin:
    """What `nursery.start(run_origin, ...)` returns."""

    origin: Origin
    port: int


async def run_origin(
    config: OriginConfig,
    listen_host: str,
    listen_port: int,
    dhtaddress: str | None = None,
    *,
    limits: Limits = Limits(),
    ring_tls: TlsCredentials | None = None,
    task_status: trio.TaskStatus[RunningOrigin] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `config.root` over HTTP until cancelled, publishing into the ring at
    `dhtaddress` when given. Starts as soon as the listener is bound."""
    origin = Origin(config)
    try:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(serve_http, origin.handle, listen_host, listen_port, limits)
            if dhtaddress is not None:
                nursery.start_soon(_publish, origin, dhtaddress, ring_tls)
            nursery.start_soon(_log_stats, origin)
            task_status.started(RunningOrigin(origin, bound_port(listeners)))
    finally:
        origin.log_stats()


async def _publish(origin: Origin, dhtaddress: str, ring_tls: TlsCredentials | None) -> None:
    """Publish, and check what was published when checks are on, over one transport."""
    async with open_tcp_transport(None, tls=ring_tls) as transport, trio.open_nursery() as nursery:
        connect = functools.partial(DhtClient.via, transport, dhtaddress)
        nursery.start_soon(origin.publish_forever, connect)
        if origin.config.check_interval > 0:
            nursery.start_soon(origin.check_forever, connect)


async def _log_stats(origin: Origin) -> None:
    logged = 0
    while True:
        await trio.sleep(STATS_INTERVAL)
        if origin.stats.requests != logged:
            logged = origin.stats.requests
            origin.log_stats()


# -- the command ----------------------------------------------------------------------


def add_origin_command(subparsers: Any) -> None:
    """Register `chordcdn origin` on the subcommand parsers of `tools.cli`."""
    parser = subparsers.add_parser("origin", help="serve a directory over HTTP and publish its files into the ring")
    parser.add_argument("--root", required=True, metavar="DIR", help="the directory to serve")
    parser.add_argument("--listen", type=address, required=True, metavar="HOST:PORT", help="port 0 picks a free one")
    parser.add_argument("--advertise", type=address, metavar="HOST:PORT", help="the address edges use, when it differs from --listen")
    parser.add_argument("--dht", type=address, metavar="HOST:PORT", help="any ring node; publish every file through it")
    parser.add_argument(
        "--cache-control", type=checked(parse_cache_control_rule), action="append", default=[], metavar="PREFIX=VALUE",
        help="Cache-Control for paths starting with PREFIX (repeatable; the longest prefix wins; "
        'default "public, max-age=60")',
    )
    parser.add_argument("--rescan", type=positive(), default=DEFAULT_RESCAN, metavar="SECONDS",
                        help="how often to look for changed files to publish again")
    parser.add_argument("--check-interval", type=checked(non_negative), default=DEFAULT_CHECK_INTERVAL, metavar="SECONDS",
                        help="pause between checks that the ring still holds every published block, putting back what "
                        f"it lost (0: no checks; default {DEFAULT_CHECK_INTERVAL:g})")
    parser.add_argument("--check-rate", type=checked(rate_per_second), default=DEFAULT_CHECK_RATE, metavar="SIZE",
                        help="file bytes a check reads and has the ring prove per second, e.g. 16MiB (the default)")
    add_credential_options(parser, prefix="ring-")
    add_limit_options(parser)
    add_config_option(parser)
    parser.set_defaults(run=cmd_origin)


def non_negative(text: str) -> float:
    """A number of seconds, zero or more; ValueError otherwise."""
    value = float(text)
    if not 0 <= value < float("inf"):
        raise ValueError(f"must be zero or a positive number of seconds, got {text}")
    return value


def rate_per_second(text: str) -> int:
    """A positive byte size (`argtypes.byte_size`), read as bytes per second."""
    try:
        value = byte_size(text)
    except argparse.ArgumentTypeError as exc:
        raise ValueError(str(exc)) from None
    if value <= 0:
        raise ValueError(f"must be a positive size, got {text}")
    return value


def cmd_origin(args: argparse.Namespace) -> int:
    """Serve until SIGTERM or Ctrl-C; the ready line goes to stdout, like `chordcdn
    node`'s. A missing root is a ValueError, which `tools.cli.main` exits 2 on."""
    if not os.path.isdir(args.root):
        raise ValueError(f"--root {args.root}: no such directory")
    config = OriginConfig(
        Path(args.root), tuple(args.cache_control), rescan=args.rescan, check_interval=args.check_interval, check_rate=args.check_rate
    )
    host, port = split_address(args.listen)
    ring_tls = credentials_from(args, Role.CLIENT) if args.dht else None
    prepare_server_process()
    try:
        trio.run(_serve_until_signal, config, host, port, args.dht, ring_tls, args.advertise, limits_from(args))
    except* OSError as group:
        log.error("cannot listen on %s: %s", args.listen, _first_leaf(group))
        exit_code = EXIT_CANNOT_LISTEN
    else:
        exit_code = 0
    return exit_code


def _first_leaf(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


async def _serve_until_signal(
    config: OriginConfig, host: str, port: int, dht: str | None, ring_tls: TlsCredentials | None, advertise: str | None,
    limits: Limits = Limits(),
) -> None:
    async with trio.open_nursery() as nursery:
        serve = functools.partial(run_origin, config, host, port, dht, ring_tls=ring_tls, limits=limits)
        running: RunningOrigin = await nursery.start(serve)
        nursery.start_soon(keep_fresh, ring_tls)
        publishing = f", publishing via {dht}" if dht else ""
        shown = advertise_or_bound(host, running.port, advertise)
        print(f"origin serving {config.root}, listening on {shown}{publishing}", flush=True)
        signum = await wait_for_signal()
        log.info("%s received: stopping", signal.Signals(signum).name)
        nursery.cancel_scope.cancel()
