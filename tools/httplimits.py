"""The options that bound an HTTP server's clients, for `chordcdn edge` and `origin`.

Owns turning `--max-connections`, `--max-body`, and the head, body, send and idle
deadlines into the server's `Limits`; each option's default is the server's own.
"""

from __future__ import annotations

import argparse

from edge.httpserver import Limits

from .argtypes import byte_size, integer, positive

DEFAULTS = Limits()


def add_limit_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("client limits")
    group.add_argument(
        "--max-connections", type=integer(1, 10_000_000), metavar="N",
        help="open client connections at most; idle ones are closed first near it (default: 3/4 of the open-file limit)",
    )
    group.add_argument("--max-body", type=byte_size, default=DEFAULTS.max_body_bytes, metavar="SIZE", help="largest request body (default 64MiB)")
    group.add_argument(
        "--header-timeout", type=positive(3600), default=DEFAULTS.header_timeout, metavar="SECONDS",
        help=f"time for a whole request head (default {DEFAULTS.header_timeout:g})",
    )
    group.add_argument(
        "--body-timeout", type=positive(3600), default=DEFAULTS.body_timeout, metavar="SECONDS",
        help=f"grace for a request body, beyond which it must keep --min-body-rate (default {DEFAULTS.body_timeout:g})",
    )
    group.add_argument(
        "--min-body-rate", type=byte_size, default=int(DEFAULTS.min_body_rate), metavar="BYTES",
        help=f"bytes per second a request body must average after its grace (default {DEFAULTS.min_body_rate:g})",
    )
    group.add_argument(
        "--send-timeout", type=positive(3600), default=DEFAULTS.send_timeout, metavar="SECONDS",
        help=f"drop a client that takes no byte of a response for this long (default {DEFAULTS.send_timeout:g})",
    )
    group.add_argument(
        "--idle-timeout", type=positive(86400), default=DEFAULTS.idle_timeout, metavar="SECONDS",
        help=f"how long a keep-alive connection may wait for its next request (default {DEFAULTS.idle_timeout:g})",
    )


def limits_from(args: argparse.Namespace) -> Limits:
    return Limits(
        max_body_bytes=args.max_body,
        header_timeout=args.header_timeout,
        idle_timeout=args.idle_timeout,
        body_timeout=args.body_timeout,
        min_body_rate=float(args.min_body_rate),
        send_timeout=args.send_timeout,
        max_connections=args.max_connections,
    )
