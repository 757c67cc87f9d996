"""A bad link in front of a real registry: an HTTP/1.1 proxy that cuts connections and can play registry quirks.

:class:`CutProxy` forwards each request to the registry on ``upstream_port`` (one exchange per connection:
``Connection: close`` both ways) and counts the bytes that cross it in each direction (``bytes_up``: client to
registry, heads included; ``bytes_down``: back). With ``cut_up_every`` / ``cut_down_every`` it cuts the link each
time that direction's running total crosses another multiple of the figure: the bytes up to the boundary go
through, then both connections are reset. ``max_cuts`` stops cutting after that many cuts.

``buffer_requests``: a request reaches the registry only once its whole body arrived, as behind nginx's default
``proxy_request_buffering on`` (the usual ingress in front of a registry). A cut upload then leaves the registry's
session as it was; without it, docker-registry 2.8 keeps the partial body and drops the session at the next request.

Quirks of registries we cannot run: ``answer(request)`` may answer a request itself (the body is read and
dropped), ``forward_target(request)`` may change the path and query the registry is sent, ``drop_headers`` names
request headers the registry never sees, and ``rewrite(request, status, headers)`` may change the registry's status
line and headers.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field

from testbed.net import LOOPBACK, ThreadedServer

PIECE = 256 * 1024


@dataclass
class Request:
    """One request the proxy read (its head) and, once known, the status the client was sent."""

    method: str
    target: str
    headers: dict[str, str]  # lower-case names
    status: int | None = None
    forwarded: bool = False  # reached the registry

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def query(self) -> str:
        return self.target.split("?", 1)[1] if "?" in self.target else ""

    @property
    def length(self) -> int:
        return int(self.headers.get("content-length", "0") or 0)


@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""


Answer = Callable[[Request], Reply | None]
Rewrite = Callable[[Request, int, list[tuple[str, str]]], tuple[int, list[tuple[str, str]]]]


class _Cut(Exception):
    """The link breaks here."""


_REASONS = {200: "OK", 201: "Created", 202: "Accepted", 204: "No Content", 206: "Partial Content",
            400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 416: "Requested Range Not Satisfiable"}


class CutProxy:
    def __init__(self, upstream_port: int, *, cut_up_every: int | None = None, cut_down_every: int | None = None,
                 max_cuts: int | None = None, buffer_requests: bool = False, answer: Answer | None = None,
                 rewrite: Rewrite | None = None, forward_target: Callable[[Request], str] | None = None,
                 drop_headers: frozenset[str] = frozenset()) -> None:
        self.upstream_port = upstream_port
        self.cut_up_every = cut_up_every
        self.cut_down_every = cut_down_every
        self.max_cuts = max_cuts
        self.buffer_requests = buffer_requests
        self.answer = answer
        self.rewrite = rewrite
        self.forward_target = forward_target
        self.drop_headers = drop_headers
        self.bytes_up = 0
        self.bytes_down = 0
        self.cuts_up = 0
        self.cuts_down = 0
        self.requests: list[Request] = []
        self.port = 0
        self._server = ThreadedServer(self._handle, "cut-proxy", limit=1024 * 1024)

    @property
    def host(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def __enter__(self) -> CutProxy:
        self.port = self._server.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.stop()

    # -- counting and cutting ------------------------------------------------------------------------

    @property
    def cuts(self) -> int:
        return self.cuts_up + self.cuts_down

    def _allowed(self, n: int, up: bool) -> int:
        """How many of the next ``n`` bytes in this direction cross before a cut (n: no cut); counts them."""
        every = self.cut_up_every if up else self.cut_down_every
        total = self.bytes_up if up else self.bytes_down
        allowed = n
        if every and (self.max_cuts is None or self.cuts < self.max_cuts):
            boundary = (total // every + 1) * every
            if total + n >= boundary:
                allowed = boundary - total
        if up:
            self.bytes_up += allowed
        else:
            self.bytes_down += allowed
        return allowed

    def _cut(self, up: bool) -> _Cut:
        if up:
            self.cuts_up += 1
        else:
            self.cuts_down += 1
        return _Cut()

    async def _send(self, writer: asyncio.StreamWriter, data: bytes, up: bool) -> None:
        allowed = self._allowed(len(data), up)
        writer.write(data[:allowed])
        await writer.drain()
        if allowed < len(data):
            raise self._cut(up)

    async def _received(self, data: bytes, up: bool) -> bytes:
        """Bytes read from one side, counted; a cut drops the rest and breaks the exchange."""
        allowed = self._allowed(len(data), up)
        if allowed < len(data):
            raise self._cut(up)
        return data

    # -- one exchange --------------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_writer: asyncio.StreamWriter | None = None
        try:
            head = await self._received(await reader.readuntil(b"\r\n\r\n"), up=True)
            request_line, *lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
            method, target, _ = request_line.split(" ", 2)
            headers: dict[str, str] = {}
            kept: list[str] = []
            for line in lines:
                name, sep, value = line.partition(":")
                if not sep or name.strip().lower() in ("connection", "keep-alive"):
                    continue
                headers[name.strip().lower()] = value.strip()
                if name.strip().lower() not in self.drop_headers:
                    kept.append(line)
            request = Request(method, target, headers)
            self.requests.append(request)
            forwarded_target = self.forward_target(request) if self.forward_target else target
            kept.insert(0, f"{method} {forwarded_target} HTTP/1.1")
            forwarded_head = ("\r\n".join([*kept, "Connection: close"]) + "\r\n\r\n").encode("latin-1")

            reply = self.answer(request) if self.answer else None
            if reply is not None or self.buffer_requests:
                with tempfile.SpooledTemporaryFile(max_size=16 * 1024 * 1024) as body:
                    remaining = request.length
                    while remaining:
                        data = await reader.read(min(PIECE, remaining))
                        if not data:
                            return
                        body.write(await self._received(data, up=True))
                        remaining -= len(data)
                    if reply is not None:
                        await self._reply(writer, request, reply)
                        return
                    upstream_reader, upstream_writer = await asyncio.open_connection(LOOPBACK, self.upstream_port)
                    request.forwarded = True
                    upstream_writer.write(forwarded_head)
                    body.seek(0)
                    while data := body.read(PIECE):
                        upstream_writer.write(data)
                        await upstream_writer.drain()
            else:
                upstream_reader, upstream_writer = await asyncio.open_connection(LOOPBACK, self.upstream_port)
                request.forwarded = True
                upstream_writer.write(forwarded_head)
                remaining = request.length
                while remaining:
                    data = await reader.read(min(PIECE, remaining))
                    if not data:
                        return
                    allowed = self._allowed(len(data), up=True)
                    upstream_writer.write(data[:allowed])
                    await upstream_writer.drain()
                    if allowed < len(data):
                        raise self._cut(up=True)
                    remaining -= len(data)
            await upstream_writer.drain()

            response_head = await upstream_reader.readuntil(b"\r\n\r\n")
            status_line, *response_lines = response_head.decode("latin-1").rstrip("\r\n").split("\r\n")
            status = int(status_line.split(" ", 2)[1])
            response_headers = [(n.strip(), v.strip()) for n, s, v in (line.partition(":") for line in response_lines)
                                if s]
            if self.rewrite is not None:
                status, response_headers = self.rewrite(request, status, response_headers)
            request.status = status
            await self._send(writer, _head(status, response_headers), up=False)
            while data := await upstream_reader.read(PIECE):
                await self._send(writer, data, up=False)
            writer.close()
        except (_Cut, ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            for w in (writer, upstream_writer):
                if w is not None and not w.is_closing():
                    w.transport.abort()
        finally:
            if upstream_writer is not None and not upstream_writer.is_closing():
                upstream_writer.close()

    async def _reply(self, writer: asyncio.StreamWriter, request: Request, reply: Reply) -> None:
        request.status = reply.status
        headers = [*reply.headers, ("Content-Length", str(len(reply.body)))]
        await self._send(writer, _head(reply.status, headers) + reply.body, up=False)
        writer.close()


def _head(status: int, headers: list[tuple[str, str]]) -> bytes:
    kept = [(n, v) for n, v in headers if n.lower() != "connection"]
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}", *(f"{n}: {v}" for n, v in kept),
             "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
