"""Credentials on the command line: the options every ring-facing command takes,
loading them, and keeping them fresh while a process runs.

Owns how a user names a certificate: `--cert FILE --key FILE --ca FILE` (for
origin and edge, `--ring-cert`, `--ring-key`, `--ring-ca`), falling back to the
environment (CHORDCDN_CERT, CHORDCDN_KEY, CHORDCDN_CA) and, through `--config`,
the config file. Plaintext needs `--insecure`, which is logged as a warning.
Running processes reload renewed files every minute and on SIGHUP.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal

import trio

from dht.errors import CertificateError
from dht.ids import DEFAULT_BITS, IdSpace
from dht.identity import Role
from dht.tls import TlsCredentials, load_credentials

log = logging.getLogger(__name__)

RELOAD_INTERVAL = 60.0  # seconds between looks at the credential files
ENVIRONMENT = {"cert": "CHORDCDN_CERT", "key": "CHORDCDN_KEY", "ca": "CHORDCDN_CA"}


def add_credential_options(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    """--cert, --key, --ca and --insecure (with `prefix`, e.g. "ring-", on the
    first three: for a process whose own listener is something else)."""
    group = parser.add_argument_group("ring credentials (mutual TLS under the cluster CA)")
    for name, variable in ENVIRONMENT.items():
        group.add_argument(
            f"--{prefix}{name}", dest=f"ring_{name}", default=os.environ.get(variable) or None, metavar="FILE",
            help=f"{_WHAT[name]} (default: ${variable})",
        )
    group.add_argument("--insecure", action="store_true", help="plaintext ring links, no certificates: for a trusted test network only")


_WHAT = {
    "cert": "this holder's certificate, from `chordcdn cluster issue`",
    "key": "its private key",
    "ca": "the cluster CA certificate (ca.crt)",
}


def credentials_from(args: argparse.Namespace, *roles: Role, bits: int = DEFAULT_BITS) -> TlsCredentials | None:
    """The credentials the options name, or None with --insecure. ValueError
    (which the CLI reports as bad usage) when they are missing or unusable, or
    when the certificate's role is not one of `roles` (any, when none are given)."""
    if args.insecure:
        if any((args.ring_cert, args.ring_key, args.ring_ca)) and not _from_environment_only(args):
            raise ValueError("--insecure and certificates exclude each other; drop one")
        log.warning("--insecure: ring links are plaintext and anyone who can reach them may call any RPC")
        return None
    if bits != DEFAULT_BITS:
        raise ValueError(f"node IDs come from certificates in the {DEFAULT_BITS}-bit space; other sizes need --insecure")
    try:
        credentials = load_credentials(args.ring_cert, args.ring_key, args.ring_ca, IdSpace(bits))
    except CertificateError as exc:
        raise ValueError(f"{exc} (or run with --insecure for plaintext)") from None
    if roles and credentials.identity.role not in roles:
        wanted = " or ".join(role.value for role in roles)
        raise ValueError(f"{args.ring_cert} is a {credentials.identity.role.value} certificate; this needs a {wanted} certificate")
    return credentials


def _from_environment_only(args: argparse.Namespace) -> bool:
    return all(getattr(args, f"ring_{name}") in (None, os.environ.get(variable)) for name, variable in ENVIRONMENT.items())


async def keep_fresh(credentials: TlsCredentials | None, interval: float = RELOAD_INTERVAL) -> None:
    """Reload renewed credential files every `interval` seconds and on SIGHUP,
    until cancelled. A bad renewal is logged and the old credentials stay.
    Without credentials it still takes SIGHUP, so a reload never kills a process."""
    with trio.open_signal_receiver(signal.SIGHUP) as hangups:
        while True:
            with trio.move_on_after(interval if credentials else math.inf):
                await hangups.__anext__()
                log.info("SIGHUP: checking the credential files" if credentials else "SIGHUP: no credentials to reload (--insecure)")
            if credentials is None:
                continue
            try:
                credentials.reload_if_changed()
            except CertificateError as exc:
                log.error("keeping the current credentials: %s", exc)
