"""`chordcdn cluster init` and `chordcdn cluster issue`: a cluster's CA and its
members' certificates, as files.

Owns the files: DIR/ca.crt and DIR/ca.key for the CA, DIR/NAME.crt and
DIR/NAME.key for each holder; keys are written readable by their owner only. An
existing key is reused when a certificate is issued again under the same name,
so a renewed node keeps its ring ID; `--new-key` makes a new one (and so, for a
node, a new place in the ring). What goes inside a certificate is `dht.pki`'s.
`LocalCluster` makes the same files for the demo and the tests.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from cryptography import x509

from dht.addresses import split_address
from dht.identity import Role, node_id_of_key
from dht.ids import IdSpace
from dht.pki import CA_DAYS, LEAF_DAYS, Issued, issue, load_key, make_ca
from dht.tls import TlsCredentials, TlsFiles

from .argtypes import checked, integer

Report = Callable[[str], None]
NAME_CHARACTERS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


class ClusterError(ValueError):
    """A cluster directory or name that cannot be used; the CLI exits 2 on it."""


@dataclass(frozen=True)
class Written:
    certificate: Path
    key: Path
    node_id: int | None


def holder_name(text: str) -> str:
    if not text or len(text) > 64 or not set(text) <= NAME_CHARACTERS or text.startswith("."):
        raise ValueError(f"name {text[:64]!r} must be 1..64 letters, digits, '-', '_' or '.', not starting with '.'")
    if text == "ca":
        raise ValueError('"ca" is the CA\'s own name in the directory; choose another')
    return text


def init_cluster(directory: Path, name: str = "chordcdn cluster", force: bool = False) -> Written:
    """Make a new CA in `directory` (created if missing); refuse to replace one."""
    certificate, key = directory / "ca.crt", directory / "ca.key"
    if not force and (certificate.exists() or key.exists()):
        raise ClusterError(f"{directory} already holds a CA; use it, or pass --force to replace it (every certificate it issued stops working)")
    ca = make_ca(name, CA_DAYS)
    _write(directory, "ca", ca)
    return Written(certificate, key, None)


def issue_certificate(
    directory: Path, name: str, role: Role, hosts: tuple[str, ...] = (), days: int = LEAF_DAYS, new_key: bool = False
) -> Written:
    """Issue (or renew) NAME's certificate under the CA in `directory`."""
    ca = _read_ca(directory)
    key_path = directory / f"{name}.key"
    key = None
    if key_path.exists() and not new_key:
        try:
            key = load_key(key_path.read_bytes())
        except (OSError, ValueError) as exc:
            raise ClusterError(f"cannot reuse {key_path}: {exc}; pass --new-key to replace it") from None
    issued = issue(ca, name, role, hosts, days, key)
    _write(directory, name, issued)
    certificate = x509.load_pem_x509_certificate(issued.certificate_pem)
    node_id = node_id_of_key(certificate.public_key(), IdSpace()) if role is Role.NODE else None
    return Written(directory / f"{name}.crt", key_path, node_id)


def _read_ca(directory: Path) -> Issued:
    try:
        return Issued((directory / "ca.key").read_bytes(), (directory / "ca.crt").read_bytes())
    except OSError as exc:
        raise ClusterError(f"no cluster CA in {directory} ({exc.strerror or exc}); make one with `chordcdn cluster init {directory}`") from None


def _write(directory: Path, name: str, issued: Issued) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        _write_private(directory / f"{name}.key", issued.key_pem)
        (directory / f"{name}.crt").write_bytes(issued.certificate_pem)
    except OSError as exc:
        raise ClusterError(f"cannot write to {directory}: {exc.strerror or exc}") from None


def _write_private(path: Path, data: bytes) -> None:
    temporary = path.with_name(path.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(temporary, path)


# -- the command ------------------------------------------------------------------------------


def add_cluster_command(commands: Any) -> None:
    cluster = commands.add_parser("cluster", help="make a cluster CA and issue certificates for nodes, clients and edges")
    actions = cluster.add_subparsers(dest="action", required=True, metavar="ACTION")
    init = actions.add_parser("init", help="make a new cluster CA: DIR/ca.crt and DIR/ca.key")
    init.add_argument("directory", metavar="DIR")
    init.add_argument("--name", default="chordcdn cluster", help="the CA's name (default: %(default)s)")
    init.add_argument("--force", action="store_true", help="replace an existing CA")
    init.set_defaults(run=cmd_cluster_init)
    issued = actions.add_parser("issue", help="issue DIR/NAME.crt and DIR/NAME.key (an existing key is kept)")
    issued.add_argument("directory", metavar="DIR")
    issued.add_argument("--role", required=True, choices=[role.value for role in Role],
                        help="node: a ring member; client: may put and get; reader: may only get (an edge)")
    issued.add_argument("--name", required=True, type=checked(holder_name), help="the holder's name, also the file name")
    issued.add_argument("--address", action="append", default=[], metavar="HOST[:PORT]",
                        help="a host the holder is reached at, recorded in the certificate (repeatable)")
    issued.add_argument("--days", type=integer(1, CA_DAYS), default=LEAF_DAYS, help="validity (default: %(default)s days)")
    issued.add_argument("--new-key", action="store_true", help="make a new key even if NAME.key exists (a node then gets a new ID)")
    issued.set_defaults(run=cmd_cluster_issue)


def cmd_cluster_init(args: argparse.Namespace) -> int:
    written = init_cluster(Path(args.directory), args.name, args.force)
    print(f"cluster CA: {written.certificate} (private key {written.key}: keep it off the nodes)")
    return 0


def cmd_cluster_issue(args: argparse.Namespace) -> int:
    hosts = tuple(_host_of(address) for address in args.address)
    written = issue_certificate(Path(args.directory), args.name, Role(args.role), hosts, args.days, args.new_key)
    print(f"{args.role} certificate: {written.certificate}, key: {written.key}")
    if written.node_id is not None:
        print(f"ring ID: {written.node_id:064x}")
    return 0


def _host_of(address: str) -> str:
    if address.count(":") == 0 or (address.startswith("[") and address.endswith("]")):
        return address.strip("[]")
    try:
        return split_address(address)[0]
    except ValueError as exc:
        raise ClusterError(f"--address: {exc}") from None


class LocalCluster:
    """A cluster CA in a directory and credentials issued from it on demand: the
    demo's and the tests' throwaway PKI, made exactly as `chordcdn cluster` makes one."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        if not (directory / "ca.crt").exists():
            init_cluster(directory)

    def files(self, name: str, role: Role) -> TlsFiles:
        """NAME's certificate, key and the CA, issuing the certificate if missing."""
        if not (self.directory / f"{name}.crt").exists():
            issue_certificate(self.directory, holder_name(name), role)
        return TlsFiles.of(self.directory / f"{name}.crt", self.directory / f"{name}.key", self.directory / "ca.crt")

    def credentials(self, name: str, role: Role) -> TlsCredentials:
        return TlsCredentials(self.files(name, role), IdSpace())

    def flags(self, name: str, role: Role, prefix: str = "") -> list[str]:
        """Command-line flags naming NAME's credentials."""
        files = self.files(name, role)
        return [f"--{prefix}cert", str(files.cert), f"--{prefix}key", str(files.key), f"--{prefix}ca", str(files.ca)]
