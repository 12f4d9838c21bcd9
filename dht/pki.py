"""A cluster's private certificate authority: making it and issuing certificates.

Owns what a cluster certificate contains. The CA and every holder use Ed25519
keys. A holder's certificate names it (subject CN), gives its role (subject OU:
node, client or reader), may name the host it is reached at (subjectAltName), and
is good for both ends of a TLS link. Pure: it returns PEM bytes; writing them to
files is the caller's business (`tools/cluster.py`).
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .identity import Role

CA_DAYS = 3650
LEAF_DAYS = 365
_BACKDATE = datetime.timedelta(minutes=5)  # tolerate clocks a little behind


@dataclass(frozen=True)
class Issued:
    """A key and its certificate, both PEM."""

    key_pem: bytes
    certificate_pem: bytes


def new_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def key_pem(key: ed25519.Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def load_key(pem: bytes) -> ed25519.Ed25519PrivateKey:
    """An Ed25519 private key from PEM; ValueError for anything else."""
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ValueError("cluster keys are Ed25519; this key is another type")
    return key


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def make_ca(name: str = "chordcdn cluster", days: int = CA_DAYS) -> Issued:
    """A new self-signed CA that may sign holders' certificates but no other CA."""
    key = new_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} CA")])
    start = _now() - _BACKDATE
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, None)
    )
    return Issued(key_pem(key), certificate.public_bytes(serialization.Encoding.PEM))


def issue(
    ca: Issued,
    name: str,
    role: Role,
    hosts: tuple[str, ...] = (),
    days: int = LEAF_DAYS,
    key: ed25519.Ed25519PrivateKey | None = None,
) -> Issued:
    """A certificate for `name` in `role`, signed by the CA; a new key unless one
    is given (reusing a node's key keeps its ring ID across renewals)."""
    if not name or len(name) > 64:
        raise ValueError("a certificate name must be 1..64 characters")
    ca_key = load_key(ca.key_pem)
    ca_certificate = x509.load_pem_x509_certificate(ca.certificate_pem)
    key = key or new_key()
    start = _now() - _BACKDATE
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role.value),
            x509.NameAttribute(NameOID.COMMON_NAME, name),
        ]))
        .issuer_name(ca_certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(min(start + datetime.timedelta(days=days), ca_certificate.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if hosts:
        builder = builder.add_extension(x509.SubjectAlternativeName([_general_name(host) for host in hosts]), critical=False)
    certificate = builder.sign(ca_key, None)
    return Issued(key_pem(key), certificate.public_bytes(serialization.Encoding.PEM))


def _key_usage(ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not ca, content_commitment=False, key_encipherment=False, data_encipherment=False,
        key_agreement=False, key_cert_sign=ca, crl_sign=ca, encipher_only=False, decipher_only=False,
    )


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)
