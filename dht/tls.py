"""Mutual TLS for ring links: credentials from files, the contexts built from them,
and who the peer of a finished handshake is.

Owns the TLS settings every chordcdn link uses: TLS 1.3 only, a certificate
required on both ends and checked against the cluster CA (no public CAs), and no
hostname check, because a node is recognised by the ID its key gives
(`dht.identity`), which binds tighter than a name. Credentials are three files
(certificate, key, CA); `reload_if_changed` picks up renewed files without a
restart, refusing a node certificate whose key, and so whose ring ID, differs.
"""

from __future__ import annotations

import functools
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from .errors import CertificateError
from .identity import PeerIdentity, Role, identity_of_certificate, identity_of_der
from .ids import IdSpace

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TlsFiles:
    """Where a holder's credentials live."""

    cert: Path
    key: Path
    ca: Path

    @classmethod
    def of(cls, cert: str | Path, key: str | Path, ca: str | Path) -> "TlsFiles":
        return cls(Path(cert), Path(key), Path(ca))

    def stamp(self) -> tuple[tuple[int, int], ...]:
        """Modification time and size of each file: what a renewal changes."""
        stamps = []
        for path in (self.cert, self.key, self.ca):
            try:
                info = path.stat()
            except OSError as exc:
                raise CertificateError(f"cannot read {path}: {exc.strerror or exc}") from None
            stamps.append((info.st_mtime_ns, info.st_size))
        return tuple(stamps)


class TlsCredentials:
    """One holder's TLS contexts (server and client side) and identity."""

    def __init__(self, files: TlsFiles, space: IdSpace) -> None:
        self.files = files
        self.space = space
        self._stamp = files.stamp()
        self.identity, self.server_context, self.client_context = self._load()

    @property
    def node_id(self) -> int | None:
        """The ring ID this holder's key gives, when it is a node."""
        return self.identity.node_id if self.identity.role is Role.NODE else None

    def _load(self) -> tuple[PeerIdentity, ssl.SSLContext, ssl.SSLContext]:
        try:
            certificate = x509.load_pem_x509_certificate(self.files.cert.read_bytes())
        except OSError as exc:
            raise CertificateError(f"cannot read certificate {self.files.cert}: {exc.strerror or exc}") from None
        except ValueError as exc:
            raise CertificateError(f"{self.files.cert} is not a PEM certificate: {exc}") from None
        identity = identity_of_certificate(certificate, self.space)
        return identity, self._context(ssl.PROTOCOL_TLS_SERVER), self._context(ssl.PROTOCOL_TLS_CLIENT)

    def _context(self, protocol: int) -> ssl.SSLContext:
        context = ssl.SSLContext(protocol)
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        context.check_hostname = False
        context.verify_mode = ssl.CERT_REQUIRED
        try:
            context.load_verify_locations(cafile=str(self.files.ca))
            context.load_cert_chain(str(self.files.cert), str(self.files.key))
        except FileNotFoundError as exc:
            raise CertificateError(f"cannot read {exc.filename}: no such file") from None
        except (ssl.SSLError, OSError) as exc:
            raise CertificateError(f"cannot use {self.files.cert} with {self.files.key} under {self.files.ca}: {_reason(exc)}") from None
        return context

    def reload_if_changed(self) -> bool:
        """Load the files again if they changed; True when new credentials took
        effect (for new connections; open ones keep theirs). Bad or unfit new
        files raise CertificateError and the old credentials stay."""
        stamp = self.files.stamp()
        if stamp == self._stamp:
            return False
        identity, server_context, client_context = self._load()
        if self.identity.role is Role.NODE and identity.node_id != self.identity.node_id:
            raise CertificateError(
                f"the new certificate in {self.files.cert} has another key, which would give this node another ring ID; "
                "renew with the same key (`chordcdn cluster issue` keeps an existing key) or restart the node"
            )
        self._stamp = stamp
        self.identity, self.server_context, self.client_context = identity, server_context, client_context
        log.info("loaded renewed credentials from %s", self.files.cert)
        return True

    def peer_identity(self, der: bytes | None) -> PeerIdentity:
        """Who presented this certificate (already verified by the handshake)."""
        if not der:
            raise CertificateError("the peer presented no certificate")
        return _identity_of_der(der, self.space)


@functools.lru_cache(maxsize=4096)
def _identity_of_der(der: bytes, space: IdSpace) -> PeerIdentity:
    return identity_of_der(der, space)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return exc.reason.replace("_", " ").lower()
    return getattr(exc, "strerror", None) or str(exc)


def handshake_failure(exc: BaseException) -> str:
    """A handshake error (or the stream error wrapping it) in words a log reader acts on."""
    cause = exc.__cause__ or exc
    reason = _reason(cause) if isinstance(cause, (ssl.SSLError, OSError)) else str(cause)
    hints = {
        "wrong version number": "not TLS (a plaintext client, or --insecure on one side)",
        "peer did not return a certificate": "no client certificate",
        "tlsv1 alert unknown ca": "our certificate is not from the peer's CA",
        "certificate verify failed": "a certificate not from this cluster's CA, or expired",
        "http request": "an HTTP request, not the ring protocol",
    }
    for needle, hint in hints.items():
        if needle in reason:
            return f"{reason}: {hint}"
    return reason or type(exc).__name__


def load_credentials(cert: str | None, key: str | None, ca: str | None, space: IdSpace) -> TlsCredentials:
    """Credentials from three paths, all given; CertificateError names what is missing."""
    missing = [flag for flag, value in (("--cert", cert), ("--key", key), ("--ca", ca)) if not value]
    if missing:
        raise CertificateError(f"mutual TLS needs a certificate, its key and the cluster CA; missing {', '.join(missing)}")
    return TlsCredentials(TlsFiles.of(cert, key, ca), space)  # type: ignore[arg-type]

