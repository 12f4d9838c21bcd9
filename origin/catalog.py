"""The origin's view of its files: URL paths to files under one root, and what
each file is (size, modification time, CID, media type).

Owns path safety and content identity; knows nothing of HTTP. `resolve` maps a
percent-decoded URL path to a regular file inside the root and refuses everything
else with a typed error: NUL bytes and relative paths (BadPath), `..` segments and
missing files (NotFoundError), symlinks whose target leaves the root
(ForbiddenPath). Directories answer with their index.html, never a listing.

`FileInfo` is computed lazily and cached per file under the file's signature
(size, mtime_ns, ctime_ns, inode): any write, truncation or replacement by
rename changes it and the CID is computed again. Hashing runs in a worker
thread, and one file is hashed at most once at a time. The CID is the root of
the same Merkle DAG `DhtClient.put_file` builds, so an edge can fetch the bytes
from the DHT by the CID the origin advertises.
"""

from __future__ import annotations

import logging
import mimetypes
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import trio

from dht.merkle import DEFAULT_CHUNK, DEFAULT_FANOUT, DagBuilder

log = logging.getLogger(__name__)

INDEX = "index.html"
HASH_ATTEMPTS = 3
DEFAULT_TYPE = "application/octet-stream"
# mimetypes reports compressed files as (inner type, encoding); we serve them as
# they are on disk, so the type is the compression format's, never Content-Encoding.
_ENCODING_TYPES = {
    "gzip": "application/gzip",
    "bzip2": "application/x-bzip2",
    "xz": "application/x-xz",
    "compress": "application/x-compress",
    "br": "application/x-brotli",
}
_TEXTUAL = frozenset({"application/javascript", "application/json", "application/xml", "image/svg+xml"})
# The built-in table only, so a file's type does not depend on the host's /etc/mime.types.
_TYPES = mimetypes.MimeTypes()


class CatalogError(Exception):
    """A URL path that does not name a servable file."""


class BadPath(CatalogError):
    """A path that is malformed rather than merely absent: NUL bytes, not absolute."""


class NotFoundError(CatalogError):
    """No regular file at this path inside the root (including `..` attempts)."""


class ForbiddenPath(CatalogError):
    """The path exists but leads outside the root, through a symlink."""


class FileChanging(CatalogError):
    """The file kept changing while being hashed or opened."""


class BadRoot(CatalogError, ValueError):
    """The root to serve is not a directory."""


@dataclass(frozen=True, slots=True)
class Signature:
    """What identifies one version of a file's bytes without reading them."""

    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int

    @classmethod
    def of(cls, st: os.stat_result) -> "Signature":
        return cls(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


@dataclass(frozen=True)
class FileInfo:
    """One version of one file, as the origin advertises it."""

    path: Path
    size: int
    mtime: float
    cid: str
    content_type: str
    signature: Signature


def cid_of(source: BinaryIO, chunk_size: int = DEFAULT_CHUNK, fanout: int = DEFAULT_FANOUT) -> str:
    """The CID `DhtClient.put_file` would return for these bytes, without a DHT."""
    builder = DagBuilder(chunk_size, fanout)
    while chunk := source.read(chunk_size):
        builder.add_chunk(chunk)
    return builder.finish()[1].hex()


def content_type_of(path: Path) -> str:
    """The media type for a file name, with charset=utf-8 for text."""
    kind, encoding = _TYPES.guess_type(path.name, strict=False)
    if encoding is not None:
        return _ENCODING_TYPES.get(encoding, DEFAULT_TYPE)
    if kind is None:
        return DEFAULT_TYPE
    if kind.startswith("text/") or kind in _TEXTUAL:
        return f"{kind}; charset=utf-8"
    return kind


def _hash_version(path: Path, expected: Signature) -> str | None:
    """The CID of the file at path if it still has signature `expected` before and
    after reading it; None when it changed. Blocking: run it in a thread."""
    with open(path, "rb") as source:
        if Signature.of(os.fstat(source.fileno())) != expected:
            return None
        cid = cid_of(source)
        return cid if Signature.of(os.fstat(source.fileno())) == expected else None


class Catalog:
    """The files under `root`, resolved safely and described with cached CIDs."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise BadRoot(f"{root}: not a directory")
        self._infos: dict[Path, FileInfo] = {}
        self._locks: dict[Path, trio.Lock] = {}

    # -- paths --------------------------------------------------------------------------

    def resolve(self, url_path: str) -> Path:
        """The regular file a percent-decoded URL path names, resolved (no symlinks
        left), inside the root; a directory gives its index.html."""
        segments = _segments(url_path)
        path = self._inside(self.root.joinpath(*segments), url_path)
        if path.is_dir():
            path = self._inside(path / INDEX, url_path)
        elif url_path.endswith("/"):
            raise NotFoundError(f"{url_path!r}: not a directory")
        if not _is_regular(path):
            raise NotFoundError(f"{url_path!r}: no such file")
        return path

    def _inside(self, candidate: Path, url_path: str) -> Path:
        try:
            resolved = candidate.resolve(strict=True)
        except (OSError, RuntimeError):  # missing, a dangling link, or a symlink loop
            raise NotFoundError(f"{url_path!r}: no such file") from None
        if not resolved.is_relative_to(self.root):
            raise ForbiddenPath(f"{url_path!r}: a symlink leads outside the root")
        return resolved

    def url_path_of(self, path: Path) -> str:
        """The canonical URL path of a resolved file inside the root."""
        return "/" + path.relative_to(self.root).as_posix()

    async def files(self) -> dict[str, Path]:
        """Every servable file now, by canonical URL path; forgets the rest."""
        found = await trio.to_thread.run_sync(self.scan)
        self._forget_missing(set(found.values()))
        return found

    def scan(self) -> dict[str, Path]:
        """Every servable file, by canonical URL path. Blocking: run it in a thread.
        Symlinked directories are not followed; names that are not UTF-8 are skipped."""
        found: dict[str, Path] = {}
        for directory, _, names in os.walk(self.root):
            for name in names:
                url = self.url_path_of(Path(directory, name))
                if not _utf8(url):
                    continue
                try:
                    path = self.resolve(url)
                except CatalogError:
                    continue
                found[self.url_path_of(path)] = path
        return found

    def _forget_missing(self, present: set[Path]) -> None:
        for path in [path for path in self._infos if path not in present]:
            del self._infos[path]
            self._locks.pop(path, None)

    # -- descriptions -------------------------------------------------------------------

    async def lookup(self, url_path: str) -> FileInfo:
        """The FileInfo of the file a URL path names, hashing it if it changed."""
        return await self.describe(self.resolve(url_path))

    async def describe(self, path: Path) -> FileInfo:
        """The FileInfo of a resolved file, from cache while its signature holds."""
        lock = self._locks.setdefault(path, trio.Lock())
        async with lock:
            for _ in range(HASH_ATTEMPTS):
                signature = _signature(path)
                cached = self._infos.get(path)
                if cached is not None and cached.signature == signature:
                    return cached
                cid = await trio.to_thread.run_sync(_hash_version, path, signature)
                if cid is not None:
                    info = _info(path, signature, cid)
                    self._infos[path] = info
                    log.debug("hashed %s: %d bytes, cid %s", path, info.size, cid)
                    return info
        raise FileChanging(f"{path}: changed {HASH_ATTEMPTS} times while being hashed")

    async def open(self, url_path: str) -> tuple[int, FileInfo]:
        """A read-only descriptor for the file a URL path names and the FileInfo of
        exactly the version it reads (barring writes in place while it is read).
        The caller closes the descriptor."""
        for _ in range(HASH_ATTEMPTS):
            info = await self.lookup(url_path)
            try:
                fd = os.open(info.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except FileNotFoundError:
                continue  # removed or replaced between lookup and open
            if Signature.of(os.fstat(fd)) == info.signature:
                return fd, info
            os.close(fd)
        raise FileChanging(f"{url_path!r}: changed {HASH_ATTEMPTS} times while being opened")


def _segments(url_path: str) -> list[str]:
    if "\x00" in url_path:
        raise BadPath("NUL byte in path")
    if not url_path.startswith("/"):
        raise BadPath(f"{url_path[:80]!r}: not an absolute path")
    segments = [segment for segment in url_path.split("/") if segment not in ("", ".")]
    if ".." in segments:
        raise NotFoundError(f"{url_path[:80]!r}: '..' segments are not served")
    return segments


def _signature(path: Path) -> Signature:
    try:
        st = os.stat(path)
    except OSError:
        raise NotFoundError(f"{path}: no such file") from None
    if not stat.S_ISREG(st.st_mode):
        raise NotFoundError(f"{path}: not a regular file")
    return Signature.of(st)


def _is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _info(path: Path, signature: Signature, cid: str) -> FileInfo:
    return FileInfo(path, signature.size, signature.mtime_ns / 1e9, cid, content_type_of(path), signature)
