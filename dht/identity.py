"""Who is on the other end of a connection: roles, identities, and node IDs bound
to keys.

Owns the rules of membership that a certificate carries. A cluster certificate
names its holder (subject CN) and one role (subject OU): `node` may make ring
calls, `client` may put and get, `reader` may only get. A node's ring ID is the
hash of its certificate's public key (SubjectPublicKeyInfo, DER), so no node can
choose where it sits, and a reference [address, id] is only believed once the
certificate seen at that address gives that ID (at a virtual node's address
"host/i", the ID derived from it for position i). Pure: it parses certificates
handed to it and does no I/O; chain and expiry checks happen in the TLS handshake.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.x509.oid import NameOID

if TYPE_CHECKING:
    from .routing import NodeRef

from .addresses import vnode_index
from .errors import CertificateError
from .ids import IdSpace


class Role(enum.Enum):
    """What a certificate's holder may do."""

    NODE = "node"
    CLIENT = "client"
    READER = "reader"

    @classmethod
    def parse(cls, text: str) -> "Role":
        try:
            return cls(text)
        except ValueError:
            raise ValueError(f"role must be one of {', '.join(r.value for r in cls)}, got {text[:40]!r}") from None


@dataclass(frozen=True, slots=True)
class PeerIdentity:
    """The caller of an RPC, or the peer a connection reached.

    `node_id` is the ring ID its key gives (for every role; only a node's is used
    as a ring position). `authenticated` is False on plaintext links, where every
    peer is trusted as a node (`--insecure`)."""

    role: Role
    name: str
    node_id: int | None = None
    authenticated: bool = True

    def may(self, allowed: frozenset[Role]) -> bool:
        return self.role in allowed

    def __str__(self) -> str:
        if not self.authenticated:
            return "an unauthenticated peer"
        return f"{self.role.value} {self.name!r}"


UNAUTHENTICATED = PeerIdentity(Role.NODE, "", None, authenticated=False)


def key_bytes(public_key: PublicKeyTypes) -> bytes:
    """The DER SubjectPublicKeyInfo of a key: what a node ID is derived from."""
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def node_id_of_key(public_key: PublicKeyTypes, space: IdSpace) -> int:
    """The ring ID of the node holding this key."""
    return space.position(hashlib.sha256(key_bytes(public_key)).digest())


def _one_attribute(name: x509.Name, oid: x509.ObjectIdentifier, what: str) -> str:
    values = name.get_attributes_for_oid(oid)
    if len(values) != 1 or not isinstance(values[0].value, str):
        raise CertificateError(f"a cluster certificate carries exactly one {what}, this one has {len(values)}")
    return values[0].value


def identity_of_certificate(certificate: x509.Certificate, space: IdSpace) -> PeerIdentity:
    """Role, name and node ID from a cluster certificate; CertificateError when it
    carries no valid role."""
    role_text = _one_attribute(certificate.subject, NameOID.ORGANIZATIONAL_UNIT_NAME, "role (subject OU)")
    try:
        role = Role.parse(role_text)
    except ValueError as exc:
        raise CertificateError(f"certificate role: {exc}") from None
    name = _one_attribute(certificate.subject, NameOID.COMMON_NAME, "name (subject CN)")
    return PeerIdentity(role, name[:128], node_id_of_key(certificate.public_key(), space))


def identity_of_der(der: bytes, space: IdSpace) -> PeerIdentity:
    """As identity_of_certificate, from the DER bytes a TLS handshake gives."""
    try:
        certificate = x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise CertificateError(f"unreadable peer certificate: {exc}") from None
    return identity_of_certificate(certificate, space)


def gives_position(identity: PeerIdentity, node: "NodeRef", space: IdSpace) -> bool:
    """Whether the holder of `identity` may answer as `node`: the ID its key gives
    at its plain address, or at "host/i" the ID of its virtual node i
    (`IdSpace.vnode_id`), so no process chooses where any of its positions sit."""
    if identity.node_id is None:
        return False
    if node.id == identity.node_id:
        return True
    try:
        index = vnode_index(node.address)
    except ValueError:
        return False
    return index > 0 and node.id == space.vnode_id(identity.node_id, index)
