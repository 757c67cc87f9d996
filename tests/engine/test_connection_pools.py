"""The engine's connection handling against a minimal real HTTP/1.1 server on 127.0.0.1: kept-alive connections
are reused across the pools a registry's connections are spread over (transport._PoolShards), every response gives
its pool slot back, and a connection the server closed while idle is noticed before a request is put on it
(transport._readable); no cookie a server sets is ever sent back; and answers are read through the engine's own
network backend (transport._LargeReads)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest

from imagesync.engine import transport
from imagesync.engine.transport import POOL_SHARD_CONNECTIONS, Endpoint, RegistryHTTP

BODY = b"x" * 3000


@dataclass
class Server:
    """Answers every request 200 with BODY; ``close_after_answer`` closes each connection once it answered
    (without saying so: the client believes it kept alive)."""

    close_after_answer: bool = False
    hold: asyncio.Event | None = None  # while set up and not set, answers wait (to force concurrent connections)
    connections: int = 0
    requests: int = 0
    served_by: list[int] = field(default_factory=list)  # for each request, the number of its connection
    heads: list[bytes] = field(default_factory=list)
    waiting: int = 0
    all_waiting: asyncio.Event = field(default_factory=asyncio.Event)
    expect_waiting: int = 0
    host: str = ""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        connection = self.connections
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.heads.append(head)
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                await reader.readexactly(length)
                self.requests += 1
                self.served_by.append(connection)
                if self.hold is not None and not self.hold.is_set():
                    self.waiting += 1
                    if self.waiting >= self.expect_waiting:
                        self.all_waiting.set()
                    await self.hold.wait()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                             b"Set-Cookie: session=planted\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY))
                await writer.drain()
                if self.close_after_answer:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@asynccontextmanager
async def serving(server: Server) -> AsyncIterator[RegistryHTTP]:
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    http = RegistryHTTP(Endpoint(f"127.0.0.1:{port}", plain_http=True), max_connections=3 * POOL_SHARD_CONNECTIONS)
    try:
        yield http
    finally:
        await http.aclose()
        listener.close()
        await listener.wait_closed()


async def get(http: RegistryHTTP) -> None:
    response = await http.request("GET", "/v2/some/blobs/sha256:00")
    assert response.status_code == 200 and response.content == BODY


async def test_connections_spread_over_pools_are_kept_and_reused() -> None:
    concurrent = 3 * POOL_SHARD_CONNECTIONS  # fills every pool
    server = Server(expect_waiting=concurrent)
    async with serving(server) as http:
        await get(http)  # the /v2/ probe and this request: one connection
        server.hold = hold = asyncio.Event()
        gets = asyncio.gather(*(get(http) for _ in range(concurrent)))
        await asyncio.wait_for(server.all_waiting.wait(), 30)  # every request on its own connection
        hold.set()
        await gets
        assert server.connections == concurrent
        # One at a time from here on: every response gave its slot back, so each request goes to the first pool
        # and to the same idle kept-alive connection there (a slot never given back would leave its pool looking
        # busy, and the requests would turn to the other pools' connections).
        before = len(server.served_by)
        for _ in range(3 * concurrent):
            await get(http)
        assert server.connections == concurrent
        assert len(set(server.served_by[before:])) == 1, server.served_by[before:]
        assert http.requests_sent == 1 + 1 + concurrent + 3 * concurrent


async def test_a_connection_the_server_closed_while_idle_is_not_used_again() -> None:
    server = Server(close_after_answer=True)
    async with serving(server) as http:
        for _ in range(10):
            await get(http)
        # Each request went out once, on a new connection: none was sent on a closed one and retried.
        assert http.requests_sent == 1 + 10
        assert server.requests == 11 and server.connections == 11


async def test_a_cookie_the_server_sets_is_not_sent_back() -> None:
    server = Server()
    async with serving(server) as http:
        for _ in range(3):
            await get(http)
    assert len(server.heads) == 4
    assert not any(b"cookie:" in head.lower() for head in server.heads), server.heads


async def test_every_answer_is_read_through_the_large_read_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    # transport.http_transport replaces httpx's private pool to put its network backend in (httpx has no parameter
    # for one; pyproject pins httpx 0.28.x). Should an httpx upgrade build its pool elsewhere, requests would go
    # through httpx's own reads of 64 KiB again, silently (B: 2.3 instead of 1.7 CPU-s per GiB): this fails then.
    asked: list[int] = []
    original = transport._LargeReads.read

    async def recorded(self: transport._LargeReads, max_bytes: int, timeout: float | None = None) -> bytes:
        asked.append(max_bytes)
        return await original(self, max_bytes, timeout)

    monkeypatch.setattr(transport._LargeReads, "read", recorded)
    server = Server()
    async with serving(server) as http:
        for _ in range(3):
            await get(http)
    assert len(asked) >= 4, asked  # the /v2/ probe's answer and the three GETs', at least one read each
