"""HTTP/1.1 for the registry clients: an httpx transport that speaks h11 over asyncio's own sockets, with a
pool of kept-alive connections per origin.

httpx's default transport (httpcore) runs under asyncio through anyio: every lock, read and write of a request
went through anyio's layer, and its asyncio backend cost 15 ms to import at a run's first request (a tenth of
a one-image no-op). Its pool also rescanned every connection on every request start and end (work growing
with the square of its connections). Registries speak plain HTTP/1.1 and need none of what httpcore adds
(HTTP/2, proxies: an ``HTTPS_PROXY`` still goes through httpx's own transport, which httpx mounts for it).

The protocol is h11's (the same state machine httpcore drives); this module only moves bytes, keeps
connections, and says what went wrong in httpx's exception types, with h11's and the socket's own words.
"""

from __future__ import annotations

import asyncio
import select
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any, NoReturn

import h11
import httpx

# The most one read hands to h11: asyncio receives up to 256 KiB at a time, and each read costs a trip through
# h11 and httpx (measured on 256 MiB layers: per-read overhead was a third of the engine's CPU per byte).
READ_SIZE = 256 * 1024
# Bytes received and not yet read, above which the socket is no longer read (the sender is held by TCP).
_PAUSE_READING_ABOVE = 4 * READ_SIZE
_DEFAULT_PORTS = {b"http": 80, b"https": 443}
# The largest answer head accepted (status line and headers), as httpcore's.
_MAX_HEAD_BYTES = 100 * 1024

Origin = tuple[bytes, bytes, int]  # scheme, host, port


def _timeout(request: httpx.Request, kind: str) -> float | None:
    value = request.extensions.get("timeout", {}).get(kind)
    return None if value is None else float(value)


class _Socket(asyncio.Protocol):
    """One TCP (or TLS) connection as asyncio hands it over: what arrived waits here until it is read, and
    writes wait while the kernel's buffer is full."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._received: deque[bytes] = deque()
        self._buffered = 0
        self._reading_paused = False
        self._eof = False
        self._error: BaseException | None = None
        self._readable: asyncio.Future[None] | None = None
        self._writable: asyncio.Future[None] | None = None
        self.closed = False  # the connection is gone, either side having closed it

    # -- asyncio's callbacks -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._received.append(data)
        self._buffered += len(data)
        if self._buffered > _PAUSE_READING_ABOVE and not self._reading_paused and self._transport is not None:
            self._reading_paused = True
            self._transport.pause_reading()
        self._wake_reader()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake_reader()
        return False  # close our side too: HTTP/1.1 has no use for a half-closed connection

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._eof = True
        self._error = exc
        self._wake_reader()
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    def pause_writing(self) -> None:
        if self._writable is None or self._writable.done():
            self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    def _wake_reader(self) -> None:
        if self._readable is not None and not self._readable.done():
            self._readable.set_result(None)

    # -- what the connection uses ----------------------------------------------------------------------

    @property
    def has_unread_data(self) -> bool:
        """Whether anything arrived, an end of stream included, that nobody read: asked of an idle connection,
        which should have received nothing. The kernel is asked as well as asyncio, whose callbacks may not
        have run yet (a server that closes right after its answer: its FIN is there, eof_received not yet)."""
        if self._received or self._eof:
            return True
        sock = self._transport.get_extra_info("socket") if self._transport is not None else None
        fd = sock.fileno() if sock is not None else -1
        if fd < 0:
            return True
        poll = select.poll()
        poll.register(fd, select.POLLIN)
        return bool(poll.poll(0))

    async def read(self, timeout: float | None) -> bytes:
        """What has arrived, at most :data:`READ_SIZE` bytes (waiting for it); b"" at the end of the stream."""
        while not self._received:
            if self._error is not None:
                raise httpx.ReadError(_describe(self._error))
            if self._eof:
                return b""
            self._readable = asyncio.get_running_loop().create_future()
            await _within(self._readable, timeout, httpx.ReadTimeout)
        data = self._received.popleft()
        while self._received and len(data) + len(self._received[0]) <= READ_SIZE:
            data += self._received.popleft()  # several small segments in one trip through h11
        self._buffered -= len(data)
        if self._reading_paused and self._buffered <= READ_SIZE and self._transport is not None:
            self._reading_paused = False
            self._transport.resume_reading()
        return data

    async def write(self, data: bytes, timeout: float | None) -> None:
        if self.closed or self._transport is None or self._transport.is_closing():
            raise httpx.WriteError(_describe(self._error) if self._error else "connection closed")
        self._transport.write(data)
        if self._writable is not None and not self._writable.done():
            await _within(self._writable, timeout, httpx.WriteTimeout)
            if self.closed:
                raise httpx.WriteError(_describe(self._error) if self._error else "connection closed")

    def close(self) -> None:
        if self._transport is not None and not self.closed:
            self._transport.abort()  # nothing of ours is left to send: an HTTP exchange ended or was given up
        self.closed = True


async def _within(waiter: asyncio.Future[None], timeout: float | None, error: type[httpx.TimeoutException]) -> None:
    if timeout is None:
        await waiter
        return
    handle = asyncio.get_running_loop().call_later(timeout, _expire, waiter)
    try:
        await waiter
    except _Expired:
        raise error(f"no progress in {timeout:g} s") from None
    finally:
        handle.cancel()


class _Expired(Exception):
    pass


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(_Expired())


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


class Connection:
    """One kept-alive HTTP/1.1 connection to one origin: one request at a time, h11's state machine."""

    def __init__(self, origin: Origin, sock: _Socket) -> None:
        self.origin = origin
        self._socket = sock
        self._h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=_MAX_HEAD_BYTES)
        self.idle_since = time.monotonic()

    def reusable(self, now: float, keepalive_expiry: float | None) -> bool:
        """Whether a request may go out on it: idle, not closed (the server closes idle connections when it
        likes), nothing arrived since its last answer, and not idle for longer than ``keepalive_expiry``."""
        if self._socket.closed or self._socket.has_unread_data or self._h11.our_state is not h11.IDLE:
            return False
        return keepalive_expiry is None or now - self.idle_since <= keepalive_expiry

    def close(self) -> None:
        self._socket.close()

    async def send(self, request: httpx.Request) -> h11.Response:
        """Send ``request`` (its body streamed) and read the answer's head; its body is read with :meth:`body`."""
        write_timeout = _timeout(request, "write")
        target = request.url.raw_path
        headers = [(name, value) for name, value in request.headers.raw]
        try:
            await self._write(h11.Request(method=request.method.encode(), target=target, headers=headers),
                              write_timeout)
            assert isinstance(request.stream, httpx.AsyncByteStream)
            async for chunk in request.stream:
                await self._write(h11.Data(data=chunk), write_timeout)
            await self._write(h11.EndOfMessage(), write_timeout)
        except httpx.WriteError:
            # The server may answer before it has read the whole request (a refused upload) and close: its
            # answer is worth more than our write error. As httpcore does, read on; if nothing comes, the
            # read says so.
            pass
        read_timeout = _timeout(request, "read")
        while True:
            event = await self._next_event(read_timeout)
            if isinstance(event, h11.Response):
                return event
            if not isinstance(event, h11.InformationalResponse):  # 1xx: the real answer follows
                raise httpx.RemoteProtocolError(f"unexpected {type(event).__name__} before the answer's head")

    async def body(self, read_timeout: float | None) -> AsyncIterator[bytes]:
        """The answer's body as it arrives; ends at the end of the message."""
        while True:
            event = await self._next_event(read_timeout)
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return
            else:
                raise httpx.RemoteProtocolError(f"unexpected {type(event).__name__} in the answer's body")

    def finish(self) -> bool:
        """After an answer read to its end: ready for the next request (True), or not worth keeping."""
        if self._h11.our_state is h11.DONE and self._h11.their_state is h11.DONE and not self._socket.closed:
            self._h11.start_next_cycle()
            self.idle_since = time.monotonic()
            return True
        return False

    def finish_without_reading(self) -> bool:
        """:meth:`finish` if what h11 already holds completes the answer (no more bytes are read for it)."""
        try:
            event = self._h11.next_event()
        except h11.RemoteProtocolError:
            return False
        return isinstance(event, h11.EndOfMessage) and self.finish()

    async def _write(self, event: h11.Event, timeout: float | None) -> None:
        try:
            data = self._h11.send(event)
        except h11.LocalProtocolError as exc:
            raise httpx.LocalProtocolError(str(exc)) from exc
        if data:
            await self._socket.write(data, timeout)

    async def _next_event(self, read_timeout: float | None) -> Any:
        while True:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as exc:
                raise httpx.RemoteProtocolError(str(exc)) from exc
            if event is not h11.NEED_DATA:
                return event
            data = await self._socket.read(read_timeout)
            if not data and self._h11.their_state is h11.SEND_RESPONSE:
                raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
            try:
                self._h11.receive_data(data)
            except h11.RemoteProtocolError as exc:
                raise httpx.RemoteProtocolError(str(exc)) from exc


class _Body(httpx.AsyncByteStream):
    """An answer's body: read to its end, it gives its connection back to the pool; closed before that, the
    connection is closed (the rest of the answer would be in the way of the next one)."""

    def __init__(self, connection: Connection, read_timeout: float | None, release: Callable[[bool], None]) -> None:
        self._connection = connection
        self._read_timeout = read_timeout
        self._release: Callable[[bool], None] | None = release
        self._complete = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._connection.body(self._read_timeout):
            yield chunk
        self._complete = True
        self._end(self._connection.finish())

    async def aclose(self) -> None:
        # Closed at the very end of the answer (its reader stopped at the last byte, or there was no body to
        # read, as for a HEAD) the connection is still good; anywhere before, it is not.
        self._end(self._release is not None and self._connection.finish_without_reading())

    def _end(self, keep: bool) -> None:
        release, self._release = self._release, None
        if release is not None:
            release(keep)


class HTTP11Transport(httpx.AsyncBaseTransport):
    """An httpx transport: kept-alive HTTP/1.1 connections, at most ``max_connections`` open at a time over
    all origins, the most recently used idle one reused first (the others may then expire)."""

    def __init__(self, ssl_context: ssl.SSLContext, max_connections: int,
                 keepalive_expiry: float | None = 5.0) -> None:
        self._ssl_context = ssl_context
        self._max_connections = max_connections
        self._keepalive_expiry = keepalive_expiry
        self._idle: dict[Origin, list[Connection]] = {}
        self._open = 0  # connections open or being opened, idle or not
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._connections: set[Connection] = set()  # every open one, idle or not
        self.connections_opened = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        origin = _origin(request.url)
        connection = await self._checkout(origin, request)
        try:
            head = await connection.send(request)
        except BaseException:
            self._release(connection, keep=False)
            raise
        return httpx.Response(
            head.status_code, headers=head.headers.raw_items(),
            stream=_Body(connection, _timeout(request, "read"), lambda keep: self._release(connection, keep)),
            extensions={"http_version": b"HTTP/" + head.http_version, "reason_phrase": head.reason})

    async def aclose(self) -> None:
        for connection in list(self._connections):
            self._drop(connection)
        self._idle.clear()

    async def _checkout(self, origin: Origin, request: httpx.Request) -> Connection:
        deadline = None
        pool_timeout = _timeout(request, "pool")
        if pool_timeout is not None:
            deadline = time.monotonic() + pool_timeout
        while True:
            idle = self._idle.get(origin)
            now = time.monotonic()
            while idle:
                connection = idle.pop()
                if connection.reusable(now, self._keepalive_expiry):
                    return connection
                self._drop(connection)
            if self._open < self._max_connections:
                return await self._connect(origin, request)
            if self._close_oldest_idle():
                continue  # room made by closing another origin's idle connection
            await self._wait_for_room(deadline)

    async def _connect(self, origin: Origin, request: httpx.Request) -> Connection:
        self._open += 1
        scheme, host, port = origin
        tls = scheme == b"https"
        timeout = _timeout(request, "connect")
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                _, sock = await loop.create_connection(
                    _Socket, host.decode("ascii"), port, ssl=self._ssl_context if tls else None,
                    server_hostname=host.decode("ascii") if tls else None,
                    ssl_handshake_timeout=timeout if tls else None)
        except BaseException as exc:
            self._open -= 1
            self._wake_one()
            _raise_connect_error(exc, timeout)
        self.connections_opened += 1
        connection = Connection(origin, sock)
        self._connections.add(connection)
        return connection

    def _release(self, connection: Connection, keep: bool) -> None:
        if keep:
            self._idle.setdefault(connection.origin, []).append(connection)
        else:
            self._drop(connection)
        self._wake_one()

    def _drop(self, connection: Connection) -> None:
        if connection in self._connections:
            self._connections.remove(connection)
            self._open -= 1
        connection.close()

    def _close_oldest_idle(self) -> bool:
        oldest: Connection | None = None
        for connections in self._idle.values():
            if connections and (oldest is None or connections[0].idle_since < oldest.idle_since):
                oldest = connections[0]
        if oldest is None:
            return False
        self._idle[oldest.origin].remove(oldest)
        self._drop(oldest)
        return True

    async def _wait_for_room(self, deadline: float | None) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        try:
            async with asyncio.timeout_at(None if deadline is None else _loop_time(deadline)):
                await waiter
        except TimeoutError:
            raise httpx.PoolTimeout("no connection free within the pool timeout") from None
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._wake_one()  # woken, then cancelled before it could take the room: the next one takes it
            raise
        finally:
            if waiter in self._waiting:
                self._waiting.remove(waiter)

    def _wake_one(self) -> None:
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return


def _loop_time(deadline: float) -> float:
    """A time.monotonic() deadline on the event loop's clock."""
    return asyncio.get_running_loop().time() + (deadline - time.monotonic())


def _origin(url: httpx.URL) -> Origin:
    scheme = url.raw_scheme
    return scheme, url.raw_host, url.port or _DEFAULT_PORTS.get(scheme, 80)


def _raise_connect_error(exc: BaseException, timeout: float | None) -> NoReturn:
    if isinstance(exc, TimeoutError):
        raise httpx.ConnectTimeout(f"no connection within {timeout:g} s") from None
    if isinstance(exc, OSError):  # ssl.SSLError included: the handshake is part of connecting
        raise httpx.ConnectError(_describe(exc)) from exc
    raise exc
