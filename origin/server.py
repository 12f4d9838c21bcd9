"""The origin: the authoritative HTTP server for one directory, and its publisher.

Owns what the origin answers and what it puts into the DHT. `Origin.handle`
serves GET and HEAD for the files `Catalog` resolves, each with a strong
`ETag: "<cid>"` and `X-Content-CID`, Last-Modified, Content-Type, a per-prefix
Cache-Control and `Accept-Ranges: bytes`; preconditions, If-Range and ranges are
answered by `edge.represent`, shared with the edges. `/cid/<CID>` names a
published file by the version it was published at (immutable; 404 once the file
has changed): an edge whose ring lost part of a file asks for the rest there,
with `Range` and `If-Match: "<CID>"`. Bodies stream from the very
file descriptor whose version the CID names, 64 KiB at a time, read in a worker
thread. Status codes for bad paths: NUL bytes or a path that is not absolute →
400; `..` segments (encoded or not) and missing files → 404; a symlink whose
target leaves the root → 403 (the file exists, the origin refuses it); other
methods → 405 with `Allow: GET, HEAD`.

Publishing puts every file into the DHT and re-puts a file whenever its
signature (size, mtime, ctime, inode) changes, from a background task that
rescans the tree; serving never waits for it. Another background task checks,
every `check_interval` seconds (0: never), that the ring still holds every block
of every published file, and puts back what it lost (`origin.availability`).
What is served is counted in `OriginStats`, and what the checks found in
`AvailabilityStats`, read as attributes or in log lines, never over HTTP.
"""

from __future__ import annotations

import io
import logging
import os
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterable, AsyncIterator, Awaitable, Callable

import trio

from dht.client import DhtClient
from dht.errors import ChordError
from edge.httpserver import Request, Response, simple_response
from edge.represent import represent
from edge.validators import format_http_date

from .availability import DEFAULT_CHECK_INTERVAL, DEFAULT_CHECK_RATE, AvailabilityCheck, AvailabilityStats, FileMoved, Pacer
from .catalog import BadPath, Catalog, CatalogError, FileChanging, FileInfo, ForbiddenPath, NotFoundError, Signature

log = logging.getLogger(__name__)

DEFAULT_CACHE_CONTROL = "public, max-age=60"
DEFAULT_RESCAN = 2.0
READ_CHUNK = 64 * 1024
ALLOWED_METHODS = ("GET", "HEAD")
CID_PREFIX = "/cid/"
IMMUTABLE = "public, max-age=31536000, immutable"
_CID = re.compile(r"[0-9a-f]{64}")

Connect = Callable[[], Awaitable[DhtClient]]


# -- configuration ----------------------------------------------------------------------


def parse_cache_control_rule(text: str) -> tuple[str, str]:
    """"PREFIX=VALUE" → (prefix, value); raise ValueError when malformed."""
    prefix, sep, value = text.partition("=")
    if not sep:
        raise ValueError(f"cache-control rule {text!r} is not PREFIX=VALUE")
    return _checked_rule(prefix, value.strip())


def _checked_rule(prefix: str, value: str) -> tuple[str, str]:
    if not prefix.startswith("/"):
        raise ValueError(f"cache-control prefix {prefix!r} must start with '/'")
    _check_field_value(value)
    return prefix, value


def _check_field_value(value: str) -> None:
    if not value or not value.isascii() or any(ord(c) < 0x20 and c != "\t" or c == "\x7f" for c in value):
        raise ValueError(f"cache-control value {value!r} must be non-empty printable ASCII")


@dataclass(frozen=True)
class OriginConfig:
    """What to serve and how. `cache_control` rules are (URL path prefix, field
    value); the longest prefix matching a request's path wins, plain string
    prefixes ("/img" matches "/images/x" too), else `default_cache_control`."""

    root: Path
    cache_control: tuple[tuple[str, str], ...] = ()
    default_cache_control: str = DEFAULT_CACHE_CONTROL
    rescan: float = DEFAULT_RESCAN
    check_interval: float = DEFAULT_CHECK_INTERVAL  # seconds between availability checks; 0: none
    check_rate: float = DEFAULT_CHECK_RATE  # file bytes an availability check reads per second

    def __post_init__(self) -> None:
        for prefix, value in self.cache_control:
            _checked_rule(prefix, value)
        _check_field_value(self.default_cache_control)
        if not self.rescan > 0:
            raise ValueError(f"rescan interval must be positive, not {self.rescan}")
        if not self.check_interval >= 0:
            raise ValueError(f"check interval must be zero (no checks) or positive, not {self.check_interval}")
        if not self.check_rate > 0:
            raise ValueError(f"check rate must be positive, not {self.check_rate}")

    def cache_control_for(self, url_path: str) -> str:
        matches = [(len(prefix), value) for prefix, value in self.cache_control if url_path.startswith(prefix)]
        return max(matches)[1] if matches else self.default_cache_control


@dataclass
class OriginStats:
    """What the origin has served. `bodies` counts GET bodies (200/206) per request
    path; `body_bytes` counts body bytes actually sent, framing included."""

    requests: int = 0
    body_bytes: int = 0
    bodies: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)

    def summary(self) -> str:
        statuses = " ".join(f"{status}:{count}" for status, count in sorted(self.statuses.items()))
        return f"{self.requests} requests, {sum(self.bodies.values())} bodies, {self.body_bytes} body bytes; {statuses}"


class BodyReadFailed(Exception):
    """The file failed or shrank while its body was being sent. The response is
    already promised at full length, so the only honest end is to break the
    connection, which the HTTP server does when a body raises."""


# -- serving ------------------------------------------------------------------------------


class _FileSource:
    """An open file as an `edge.represent.BodySource`: spans read in a worker thread,
    since an origin's files may be cold on disk."""

    def __init__(self, file: io.FileIO, info: FileInfo) -> None:
        self._file = file  # keeps the descriptor open while spans read it
        self.fd = file.fileno()
        self.size = info.size
        self.path = info.path

    async def span(self, start: int, end: int) -> AsyncIterator[bytes]:
        offset = start
        while offset < end:
            try:
                chunk = await trio.to_thread.run_sync(os.pread, self.fd, min(READ_CHUNK, end - offset), offset)
            except OSError as exc:
                raise BodyReadFailed(f"{self.path}: read failed at byte {offset}: {exc}") from exc
            if not chunk:
                raise BodyReadFailed(f"{self.path}: shrank to {offset} bytes while being sent")
            offset += len(chunk)
            yield chunk


class Origin:
    """Serves `config.root` over HTTP and publishes it into the DHT.

    `body_serving` False answers GET bodies (200/206) with 503 while HEAD, 304,
    412 and 416 still work, so a test can prove an edge took a body elsewhere.
    `published` maps each canonical URL path to the CID last put into the DHT.
    """

    def __init__(self, config: OriginConfig) -> None:
        self.config = config
        self.catalog = Catalog(config.root)
        self.stats = OriginStats()
        self.body_serving = True
        self.published: dict[str, str] = {}
        self.availability = AvailabilityStats()
        self._settled = trio.Event()

    async def handle(self, request: Request) -> Response:
        self.stats.requests += 1
        response = await self._respond(request)
        self.stats.statuses[response.status] += 1
        log.debug("%s %s %s -> %d", request.client, request.method, request.target, response.status)
        return response

    async def _respond(self, request: Request) -> Response:
        if request.method not in ALLOWED_METHODS:
            return simple_response(405, f"{request.method} is not allowed", [("Allow", ", ".join(ALLOWED_METHODS))])
        by_cid = self._published_as(request.path)
        opened = await self._open(request.path if by_cid is None else by_cid[0], None if by_cid is None else by_cid[1])
        if isinstance(opened, Response):
            return opened
        file, info = opened
        fields = self.metadata(request.path, info) if by_cid is None else self.metadata_by_cid(info)
        response = represent(request, fields, _FileSource(file, info))
        if isinstance(response.body, bytes):  # no body from the file: HEAD, 304, 412, 416
            file.close()
            return response
        if not self.body_serving:
            file.close()
            return simple_response(503, "body serving is disabled", [("Cache-Control", "no-store")])
        self.stats.bodies[request.path] += 1
        response.body = self._counted(response.body, file)
        return response

    def _published_as(self, url_path: str) -> tuple[str, str] | None:
        """For `/cid/<CID>` of a published file, (its path, the CID); else None,
        and the target is an ordinary path. A scan of `published`: /cid/
        requests come only from an edge whose ring lost part of a file."""
        cid = url_path.removeprefix(CID_PREFIX).lower()
        if not url_path.startswith(CID_PREFIX) or not _CID.fullmatch(cid):
            return None
        path = next((path for path, published in self.published.items() if published == cid), None)
        return None if path is None else (path, cid)

    async def _open(self, url_path: str, cid: str | None = None) -> tuple[io.FileIO, FileInfo] | Response:
        """The file a path names and its version's info, or the error response;
        404 when `cid` is given and the file is no longer that version."""
        try:
            fd, info = await self.catalog.open(url_path)
        except BadPath as exc:
            return simple_response(400, str(exc))
        except NotFoundError:
            return simple_response(404)
        except (ForbiddenPath, PermissionError):
            return simple_response(403)
        except FileChanging as exc:
            return simple_response(503, str(exc), [("Retry-After", "1")])
        if cid is not None and info.cid != cid:
            os.close(fd)
            return simple_response(404)
        return io.FileIO(fd), info  # a FileIO closes the descriptor even if the body is never read

    def metadata(self, url_path: str, info: FileInfo) -> list[tuple[str, str]]:
        """The end-to-end fields of a file's representation."""
        return [
            ("Content-Type", info.content_type),
            ("ETag", f'"{info.cid}"'),
            ("X-Content-CID", info.cid),
            ("Last-Modified", format_http_date(min(info.mtime, time.time()))),  # never in the future (§8.8.2.1)
            ("Cache-Control", self.config.cache_control_for(url_path)),
            ("Accept-Ranges", "bytes"),
        ]

    def metadata_by_cid(self, info: FileInfo) -> list[tuple[str, str]]:
        """The fields of a file named by its CID: that version, forever."""
        fields = [(name, value) for name, value in self.metadata(CID_PREFIX, info) if name != "Cache-Control"]
        return [*fields, ("Cache-Control", IMMUTABLE)]

    async def _counted(self, body: AsyncIterable[bytes], file: io.FileIO) -> AsyncIterator[bytes]:
        """The body as sent, counted; closes the file when done or abandoned."""
        try:
            async for chunk in body:
                self.stats.body_bytes += len(chunk)
                yield chunk
        finally:
            file.close()
            aclose = getattr(body, "aclose", None)
            if aclose is not None:
                await aclose()

    def log_stats(self) -> None:
        log.info("origin stats: %s", self.stats.summary())

    # -- publishing --------------------------------------------------------------------------

    async def wait_published(self) -> None:
        """Return once a scan pass has left every file published at its current CID.
        Changes made on disk since the last pass count only after the next one."""
        await self._settled.wait()

    async def publish_forever(self, connect: Connect, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Publish the tree, then what changed every `config.rescan` seconds, until
        cancelled. A ring that cannot be reached is retried at the next pass."""
        task_status.started()
        await _every(self.config.rescan, connect, self.publish_all, "publishing")

    async def publish_all(self, client: DhtClient) -> int:
        """One pass: put every file whose CID is not yet published; return how many
        were put. Raises ChordError when the ring fails (the pass stops there)."""
        files = await self.catalog.files()
        for gone in self.published.keys() - files.keys():
            log.info("unpublished %s: no longer on disk", gone)
            del self.published[gone]
        clean, count = True, 0
        for url_path, path in files.items():
            done = await self._publish_if_changed(client, url_path, path)
            clean, count = clean and done is not None, count + bool(done)
        if clean:
            self._settled.set()
        return count

    async def _publish_if_changed(self, client: DhtClient, url_path: str, path: Path) -> bool | None:
        """True when put now, False when already published, None when it failed."""
        try:
            info = await self.catalog.describe(path)
        except NotFoundError:
            return False  # removed since the scan; the next pass forgets it
        except (FileChanging, OSError) as exc:
            log.warning("cannot publish %s: %s", url_path, exc)
            return None
        if self.published.get(url_path) == info.cid:
            return False
        if self._settled.is_set():
            self._settled = trio.Event()
        return await self._publish(client, url_path, info) or None

    async def _publish(self, client: DhtClient, url_path: str, info: FileInfo) -> bool:
        started = time.monotonic()
        try:
            with open(info.path, "rb") as source:
                if Signature.of(os.fstat(source.fileno())) != info.signature:
                    return False  # changed since it was hashed; the next pass sees the new version
                cid = await client.put_file(source)
        except OSError as exc:
            log.warning("cannot publish %s: %s", url_path, exc)
            return False
        if cid != info.cid:
            log.warning("%s changed while being published; will publish it again", url_path)
            return False
        self.published[url_path] = cid
        log.info("published %s cid %s (%d bytes) in %.2fs", url_path, cid, info.size, time.monotonic() - started)
        return True

    # -- checking what was published -------------------------------------------------------------

    async def check_forever(self, connect: Connect) -> None:
        """Every `config.check_interval` seconds after the last pass ended, check
        that the ring holds every published file whole, until cancelled."""
        await trio.sleep(self.config.check_interval)
        await _every(self.config.check_interval, connect, self.check_published, "availability check")

    async def check_published(self, client: DhtClient) -> int:
        """One pass over every published file; return how many blocks were put
        again. Raises ChordError when the ring cannot be asked."""
        started, check = time.monotonic(), AvailabilityCheck(client, Pacer(self.config.check_rate), self.availability)
        republished = 0
        for url_path, cid in list(self.published.items()):
            republished += await self._check_one(check, url_path, cid)
        self.availability.passes += 1
        level = logging.WARNING if republished else logging.INFO
        log.log(level, "availability check: %d blocks republished in %.2fs; totals: %s",
                republished, time.monotonic() - started, self.availability.summary())
        return republished

    async def _check_one(self, check: AvailabilityCheck, url_path: str, cid: str) -> int:
        """Check one file if it is still the version published as `cid`."""
        try:
            info = await self.catalog.lookup(url_path)
            if info.cid != cid:
                return 0  # changed on disk: the publisher puts the new version
            return await check.check_file(url_path, info)
        except (CatalogError, FileMoved, OSError) as exc:
            log.info("availability check skipped %s: %s", url_path, exc)
            return 0


async def _every(interval: float, connect: Connect, work: Callable[[DhtClient], Awaitable[int]], what: str) -> None:
    """Do `work` with a ring client, then wait `interval` seconds, until cancelled.
    A ring that fails is logged, and asked afresh (a new client) the next time."""
    client: DhtClient | None = None
    while True:
        try:
            client = client or await connect()
            await work(client)
        except ChordError as exc:
            log.warning("%s failed, retrying in %gs: %s", what, interval, exc)
            client = None
        await trio.sleep(interval)
