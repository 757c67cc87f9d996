"""One blob from a source registry to a target upload session, surviving bad links (issue 12, point 3).

Two halves, both keeping memory bounded and the sha256 of the whole blob verified:

- :class:`SourceFeed` reads the source blob once, in order, hashing as it goes. A read that breaks mid-body is
  resumed with ``Range: bytes=<offset>-``; the answer's ``Content-Range`` must start there, and a registry that
  ignores ``Range`` (200 with the whole blob) has the bytes before the offset skipped, unhashed: the running hash
  already covers the bytes read before the cut. The digest is checked before the last bytes are handed out, so a
  corrupted blob never completes an upload. The feed can also :meth:`~SourceFeed.rewind` to an earlier offset
  (an upload the target must resume from there): it reopens the source at the nearest hash checkpoint (one every
  chunk) and hashes its way forward.
- :func:`copy_blob` uploads it. Blobs up to ``MONOLITHIC_MAX`` are read (and verified) whole, then go in one
  ``PUT ?digest=``; bigger ones in one streamed ``PATCH`` and a commit ``PUT``, or, once a registry announced
  ``OCI-Chunk-Min-Length`` or a streamed upload to it broke or was refused, in ``PATCH`` chunks of
  ``max(OCI-Chunk-Min-Length, 8 MiB)`` held in memory. After a broken or refused ``PATCH`` the upload session is
  asked where it stands (``GET`` on its location: ``204`` with ``Range: 0-<last byte>``) and the upload goes on
  from there: from the chunk still in memory, or from the source reopened at that offset. A registry that dropped
  the session (docker-registry 2.8 does, as soon as part of a ``PATCH`` body reached it: see docs/guarantees.md)
  gets a new session, from byte 0.

Registry quirks met on the way: a ``PATCH`` answered ``201`` (ECR), a ``Range`` of ``0-0`` for both an empty
session and one holding one byte (distribution), a ``Content-Range`` the registry ignores and appends anyway
(distribution 2.8: so we always send exactly from the offset it reported), relative ``Location`` headers.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
from collections.abc import AsyncIterator, Callable, Sequence
from types import TracebackType
from typing import Any

import httpx

from imagesync.engine.errors import RegistryError, clip
from imagesync.engine.manifest import Descriptor
from imagesync.engine.registry import MONOLITHIC_MAX, RegistryClient, registry_error
from imagesync.engine.transport import SMALL_BODY_MAX_BYTES, RetryPolicy, buffered, push_scope, read_limited

log = logging.getLogger(__name__)

# What one network read hands over (and the piece size of a request body we send).
PIECE_SIZE = 256 * 1024
# Chunked uploads: the chunk we hold in memory, unless the registry asks for more; a registry asking for more
# than CHUNK_MAX gets one streamed PATCH instead (its chunk rule does not apply to a single, last chunk).
CHUNK_SIZE = 8 * 1024 * 1024
CHUNK_MAX = 64 * 1024 * 1024
# A broken source read is resumed at once while each attempt brings at least this much; attempts that bring
# less count against the retry policy's attempts, with its backoff between them.
RESUME_PROGRESS = 1024 * 1024
# Statuses of a streamed PATCH that mean "not like this" rather than "not at all": chunks may be accepted.
_STREAM_REFUSALS = frozenset({400, 405, 411, 413, 416, 501})
_RANGE = re.compile(r"^\s*(?:bytes[= ])?0-(\d+)\s*$", re.IGNORECASE)
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)

Progress = Callable[[int], None]


class SourceFailed(RegistryError):
    """The source failed while we were uploading its bytes: the error is the source's, not the upload's."""


class SourceFeed:
    """The source blob as one in-order byte sequence (see the module doc). Use as an async context manager."""

    def __init__(self, client: RegistryClient, repo: str, blob: Descriptor, *, policy: RetryPolicy,
                 progress: Progress | None = None, checkpoint_every: int = CHUNK_SIZE) -> None:
        self._client = client
        self._repo = repo
        self.blob = blob
        self._policy = policy
        self._progress = progress
        self._checkpoint_every = checkpoint_every
        self.name = f"blob {blob.digest} from {client.host}/{repo}"
        self.pos = 0  # the offset of the next byte read() hands out
        # The offset of the next byte from the network (pushback first): every byte before it is in _hash. Equal to
        # pos, except after a rewind to a checkpoint before pos.
        self._net = 0
        self._hash = hashlib.sha256()
        self._checkpoints: list[tuple[int, Any]] = [(0, hashlib.sha256())]
        self._reached = 0  # the furthest offset handed out, for progress (bytes read again are not counted twice)
        self._pushback = b""  # bytes at _net already received, not yet hashed
        self._stack: contextlib.AsyncExitStack | None = None
        self._pieces: AsyncIterator[bytes] | None = None
        self._opened_at = 0
        self._stalls = 0
        self.resumes = 0  # reads reopened with Range after a break
        self.rewinds = 0

    async def __aenter__(self) -> SourceFeed:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self._close()

    async def _close(self) -> None:
        stack, self._stack, self._pieces = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    async def _open(self, start: int) -> None:
        """A response whose next bytes are the blob's from ``start`` (a range, or the whole blob skipped to it)."""
        await self._close()
        size = self.blob.size
        stack = contextlib.AsyncExitStack()
        try:
            response = await stack.enter_async_context(self._client.open_blob(self._repo, self.blob.digest, start))
            length = _content_length(response)
            skip = 0
            if response.status_code == 206:
                match = _CONTENT_RANGE.match(response.headers.get("content-range", ""))
                if (match is None or int(match.group(1)) != start or int(match.group(2)) != size - 1
                        or match.group(3) not in ("*", str(size))):
                    raise RegistryError(f"{self.name}: asked for bytes {start}- and got "
                                        f"{clip(response.headers.get('content-range', 'no Content-Range'), 80)}",
                                        code="SIZE_INVALID", retryable=True)
                expected = size - start
            else:
                if start:
                    log.info("%s: the registry ignores Range: reading it again from byte 0 to %d", self.name, start)
                skip, expected = start, size
            if length is not None and length != expected:
                # A length that lies either leaves us waiting for bytes that never come or leaves the surplus on
                # the connection: refused before reading (closing the unread response closes its connection).
                raise RegistryError(f"{self.name} arrived corrupted (Content-Length {length}; expected {expected} "
                                    f"bytes)", code="SIZE_INVALID", retryable=True)
            pieces = response.aiter_raw()  # as the connection reads them (up to http11.READ_SIZE): no re-chunking
            while skip:  # the bytes before start, already read and hashed before the cut
                piece = await anext(pieces, b"")
                if not piece:
                    raise RegistryError(f"{self.name}: the body ended before byte {start}", retryable=True)
                self._pushback, skip = piece[skip:], max(0, skip - len(piece))
        except BaseException:
            await stack.aclose()
            raise
        self._stack, self._pieces, self._opened_at = stack, pieces, start

    async def _next_piece(self) -> bytes:
        """The bytes at ``_net``: the pushback, or the network's, reopening a broken read there with Range."""
        while True:
            if self._pushback:
                piece, self._pushback = self._pushback, b""
                return piece
            try:
                if self._pieces is None:
                    await self._open(self._net)
                    if self._pushback:
                        continue
                assert self._pieces is not None
                piece = await anext(self._pieces, b"")
                if not piece:
                    raise RegistryError(f"{self.name}: the body ended at byte {self._net} of {self.blob.size}",
                                        code="SIZE_INVALID", retryable=True)
                return piece
            except (httpx.HTTPError, RegistryError) as exc:
                await self._close()
                await self._after_break(exc)

    async def _after_break(self, exc: httpx.HTTPError | RegistryError) -> None:
        """Resume at once while reads make progress; reads that bring little count against the retry policy."""
        if self._net - self._opened_at >= RESUME_PROGRESS:
            self._stalls = 0
        self._stalls += 1
        if isinstance(exc, RegistryError):
            if not exc.retryable or self._stalls >= self._policy.attempts:
                raise SourceFailed(str(exc), status=exc.status, code=exc.code, retryable=exc.retryable) from exc
        elif self._stalls >= self._policy.attempts:
            raise SourceFailed(f"{self.name}: reading it failed ({type(exc).__name__}: "
                               f"{clip(str(exc) or 'no detail')})", retryable=True) from exc
        self.resumes += 1
        self._opened_at = self._net
        log.info("%s: the read broke at byte %d (%s): resuming there", self.name, self._net,
                 clip(str(exc) or type(exc).__name__, 120))
        if self._stalls > 1:
            await asyncio.sleep(self._policy.backoff(self._stalls - 2))

    async def read(self, limit: int = PIECE_SIZE) -> bytes:
        """Up to ``limit`` bytes from ``pos`` (b"" at the end). The bytes that complete the blob are handed out only
        once the whole blob's digest matched."""
        size = self.blob.size
        if size == 0:
            self._hash_forward(b"")  # nothing to read: the digest must still be the empty blob's
        while self.pos < size:
            piece = await self._next_piece()
            start = self._net
            if start + len(piece) > self.pos + limit:  # the rest waits for the next read, unhashed
                self._pushback = piece[self.pos + limit - start:]
                piece = piece[:self.pos + limit - start]
            if start + len(piece) > size:
                raise SourceFailed(f"{self.name} arrived corrupted (more than the {size} bytes expected)",
                                   code="SIZE_INVALID", retryable=True)
            self._hash_forward(piece)
            if self._net == size:
                await self._read_end()
            if self._net <= self.pos:
                continue  # before pos: rewinding from a checkpoint
            piece = piece[self.pos - start:]
            self.pos = self._net
            if self.pos > self._reached:
                if self._progress is not None:
                    self._progress(self.pos - self._reached)
                self._reached = self.pos
            return piece
        return b""

    async def _read_end(self) -> None:
        """Read the response to its end once the blob is whole: a response closed before its end closes its
        connection too (httpcore cannot reuse it), and every blob would then cost a new connection and its
        round trip (measured through a 40 ms link: 83 source connections for 60 blob reads). Bytes past the
        blob's size are an error, as they would be before it."""
        if self._pieces is None or self._pushback:
            return
        try:
            tail = await anext(self._pieces, b"")
        except httpx.HTTPError:
            return  # every byte is here and verified: only the connection is lost
        if tail:
            raise SourceFailed(f"{self.name} arrived corrupted (more than the {self.blob.size} bytes expected)",
                               code="SIZE_INVALID", retryable=True)

    def _hash_forward(self, piece: bytes) -> None:
        """Hash ``piece`` (the bytes at ``_net``), keeping a checkpoint every ``checkpoint_every`` bytes, and check the
        digest once the whole blob is hashed."""
        step = self._checkpoint_every
        while piece:
            boundary = (self._net // step + 1) * step
            part, piece = piece[:boundary - self._net], piece[boundary - self._net:]
            self._hash.update(part)
            self._net += len(part)
            if self._net == boundary and self._net > self._checkpoints[-1][0]:
                self._checkpoints.append((self._net, self._hash.copy()))
        if self._net == self.blob.size:
            actual = "sha256:" + self._hash.hexdigest()
            if actual != self.blob.digest:
                raise SourceFailed(f"{self.name} arrived corrupted ({self.blob.size} bytes, digest {actual})",
                                   code="DIGEST_INVALID", retryable=True)

    async def rewind(self, offset: int) -> None:
        """Make ``offset`` (at most what was handed out) the next byte read() hands out: the source is reopened at
        the last hash checkpoint before it."""
        if not 0 <= offset <= self._reached:
            raise RegistryError(f"{self.name}: cannot go back to byte {offset}", retryable=True)
        self.rewinds += 1
        while self._checkpoints and self._checkpoints[-1][0] > offset:
            self._checkpoints.pop()
        if not self._checkpoints:  # forget_before() dropped those before offset: hash again from byte 0
            self._checkpoints.append((0, hashlib.sha256()))
        at, state = self._checkpoints[-1]
        await self._close()
        self._hash, self._net, self._pushback = state.copy(), at, b""
        self.pos = offset

    def forget_before(self, offset: int) -> None:
        """The target holds every byte before ``offset`` for good: checkpoints before the last one up to it go."""
        keep = [c for c in self._checkpoints if c[0] <= offset][-1:]
        self._checkpoints = keep + [c for c in self._checkpoints if c[0] > offset]

    async def stream(self, first: Sequence[bytes] = ()) -> AsyncIterator[bytes]:
        """The pieces ``first`` and then the rest of the blob, as a request body."""
        for piece in first:
            yield piece
        while piece := await self.read():
            yield piece


class _Broken(Exception):
    """A PATCH that did not go through as sent: ask the session where it stands."""

    def __init__(self, reason: str, refused: bool = False) -> None:
        super().__init__(reason)
        self.refused = refused


class _Upload:
    """The PATCH/PUT side of one big blob; see the module doc.

    ``pending`` holds the chunk in memory as the feed's pieces (never joined: one copy of a chunk at most), the
    bytes from ``offset`` to ``feed.pos`` while a chunk is under way.
    """

    def __init__(self, client: RegistryClient, repo: str, blob: Descriptor, location: str, feed: SourceFeed,
                 policy: RetryPolicy) -> None:
        self.client = client
        self.repo = repo
        self.blob = blob
        self.location = location
        self.feed = feed
        self.policy = policy
        self.offset = 0  # bytes the session holds, as the registry last told us
        self.pending: list[bytes] = []  # bytes from offset on, read from the feed and not yet acknowledged
        self.what = f"uploading blob {blob.digest} to {client.host}/{repo}"
        self.restarts = 0

    def chunk_size(self) -> int | None:
        """The chunk for this registry, or None for one streamed PATCH of the rest."""
        if not self.client.chunked_uploads:
            return None
        size = max(self.client.chunk_min_length or 0, CHUNK_SIZE)
        return size if size <= CHUNK_MAX else None

    async def run(self) -> None:
        stalls = 0
        while self.offset < self.blob.size:
            before = self.offset
            chunk = self.chunk_size()
            try:
                if chunk is None:
                    await self._send_rest()
                else:
                    await self._send_chunk(chunk)
                stalls = 0
                continue
            except _Broken as exc:
                if chunk is None and not self.client.chunked_uploads:
                    log.info("%s: a streamed upload %s: chunked uploads from now on", self.client.host,
                             "was refused" if exc.refused else "broke")
                    self.client.chunked_uploads = True
                await self._resync(str(exc))
            stalls = 0 if self.offset > before else stalls + 1
            if stalls >= self.policy.attempts:
                raise RegistryError(f"{self.what}: no progress after {stalls} attempts", retryable=True)
            if stalls:
                await asyncio.sleep(self.policy.backoff(stalls - 1))
        await self._commit()

    async def _patch(self, body: AsyncIterator[bytes], length: int, content_range: bool) -> httpx.Headers:
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(length)}
        if content_range:
            headers["Content-Range"] = f"{self.offset}-{self.offset + length - 1}"
        try:
            async with self.client.http.stream("PATCH", self.location, scopes=[push_scope(self.repo)],
                                               content=body, headers=headers) as response:
                if response.status_code in (201, 202, 204):  # 201: ECR
                    await read_limited(response, SMALL_BODY_MAX_BYTES)
                    return response.headers
                answer = await buffered(response)
        except SourceFailed:
            raise
        except (httpx.HTTPError, RegistryError) as exc:
            if isinstance(exc, RegistryError) and not exc.retryable:
                raise
            raise _Broken(clip(str(exc) or type(exc).__name__, 200)) from exc
        if answer.status_code in _STREAM_REFUSALS or answer.status_code in (404, *range(500, 600)):
            raise _Broken(str(registry_error(answer, self.what)), refused=answer.status_code in _STREAM_REFUSALS)
        raise registry_error(answer, self.what)

    async def _send_rest(self) -> None:
        """One streamed PATCH of everything from ``offset`` on."""
        length = self.blob.size - self.offset
        first, self.pending = self.pending, []
        headers = await self._patch(self.feed.stream(first), length, content_range=self.offset > 0)
        self._acknowledged(headers, self.blob.size)

    async def _send_chunk(self, chunk: int) -> None:
        want = min(chunk, self.blob.size - self.offset)
        held = sum(map(len, self.pending))
        while held < want:
            piece = await self.feed.read(want - held)
            if not piece:
                raise RegistryError(f"{self.feed.name}: ended early", retryable=True)
            self.pending.append(piece)
            held += len(piece)
        pieces = list(self.pending)

        async def body() -> AsyncIterator[bytes]:  # sent once: never replayed by the transport's retries
            for piece in pieces:
                yield piece

        headers = await self._patch(body(), held, content_range=True)
        self._acknowledged(headers, self.offset + held)

    def _acknowledged(self, headers: httpx.Headers, expected: int) -> None:
        """A PATCH went through: the registry holds ``expected`` bytes (its Range header should say so)."""
        self._new_location(headers)
        reported = _offset(headers.get("range"), expected)
        if reported is not None and reported != expected:
            # ECR has been seen dropping later chunks while answering 202: ask the session where it stands.
            raise _Broken(f"the session holds {reported} bytes after we sent {expected}")
        self.offset, self.pending = expected, []
        self.feed.forget_before(expected)

    def _new_location(self, headers: httpx.Headers) -> None:
        location = headers.get("location")
        if location:
            self.location = str(httpx.URL(self.location).join(location))

    async def _resync(self, reason: str) -> None:
        """After a broken PATCH: go on from what the session holds, or from byte 0 in a new session."""
        status = await self.client.http.request("GET", self.location, scopes=[push_scope(self.repo)])
        held = _offset(status.headers.get("range"), self.offset) if status.status_code in (200, 204) else None
        sent = self.feed.pos
        if held is None or held > sent:
            await self._restart(reason, status)
            return
        self._new_location(status.headers)
        log.info("%s: %s; the session holds %d bytes: going on from there", self.what, reason, held)
        # The chunk in memory holds the bytes from buffered_from to feed.pos (after a streamed PATCH: none).
        buffered_from = sent - sum(map(len, self.pending))
        if buffered_from <= held:
            self._drop(held - buffered_from)
        else:
            self.pending = []
            await self.feed.rewind(held)
        self.offset = held

    async def _restart(self, reason: str, status: httpx.Response) -> None:
        self.restarts += 1
        if self.restarts >= self.policy.attempts:
            raise RegistryError(f"{self.what}: {reason}; the upload session cannot go on (its status: "
                                f"{status.status_code}) and {self.restarts} new ones failed too", retryable=True)
        log.info("%s: %s; the session cannot go on (its status: %s): starting again from byte 0", self.what, reason,
                 status.status_code)
        self.location = await self.client.start_upload(self.repo)
        self.offset, self.pending = 0, []
        await self.feed.rewind(0)

    def _drop(self, count: int) -> None:
        """The first ``count`` bytes of the chunk in memory reached the registry."""
        while count and self.pending:
            first = self.pending[0]
            if len(first) > count:
                self.pending[0] = first[count:]
                break
            count -= len(first)
            self.pending.pop(0)

    async def _commit(self) -> None:
        try:
            await self.client.commit_upload(self.repo, self.location, self.blob.digest)
        except RegistryError:
            # The answer may have been lost after the registry committed: then the blob is there.
            if await self.client.blob_exists(self.repo, self.blob.digest):
                return
            raise


def _offset(range_header: str | None, acknowledged: int) -> int | None:
    """The bytes an upload session holds by its ``Range: 0-<last>`` header (None: no usable header).

    ``0-0`` is what distribution answers for an empty session and for one holding one byte: read as the byte we
    know it has when it acknowledged one, else as empty (a wrong guess fails the digest check at the commit).
    """
    match = _RANGE.match(range_header or "")
    if match is None:
        return None
    last = int(match.group(1))
    if last == 0:
        return 1 if acknowledged == 1 else 0
    return last + 1


def _content_length(response: httpx.Response) -> int | None:
    value = response.headers.get("content-length", "").strip()
    return int(value) if value.isdigit() else None


async def read_blob(src: RegistryClient, src_repo: str, blob: Descriptor, *, policy: RetryPolicy,
                    progress: Progress | None = None) -> list[bytes]:
    """A blob up to MONOLITHIC_MAX read whole and verified (a broken read resumed where the source allows):
    at most one chunk's worth in memory, and a corrupted blob never reaches the target, not even as a body
    the registry would refuse."""
    async with SourceFeed(src, src_repo, blob, policy=policy, progress=progress) as feed:
        return [piece async for piece in feed.stream()]


async def put_blob(dst: RegistryClient, dst_repo: str, blob: Descriptor, location: str, pieces: list[bytes]) -> None:
    """Commit a blob read by read_blob into the upload session at ``location`` (one ``PUT ?digest=``)."""
    async def body() -> AsyncIterator[bytes]:
        for piece in pieces:
            yield piece

    await dst.upload_blob(dst_repo, location, blob.digest, blob.size, body())


async def copy_blob(src: RegistryClient, src_repo: str, dst: RegistryClient, dst_repo: str, blob: Descriptor,
                    location: str, *, policy: RetryPolicy, progress: Progress | None = None) -> None:
    """Copy ``blob`` into the upload session at ``location``, verified, resuming broken reads and uploads."""
    if blob.size <= MONOLITHIC_MAX:
        await put_blob(dst, dst_repo, blob, location,
                       await read_blob(src, src_repo, blob, policy=policy, progress=progress))
        return
    async with SourceFeed(src, src_repo, blob, policy=policy, progress=progress) as feed:
        await _Upload(dst, dst_repo, blob, location, feed, policy).run()
