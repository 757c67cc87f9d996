"""The engine's connections (engine.http11) against a minimal real HTTP/1.1 server on 127.0.0.1: kept-alive
connections are reused, the most recent first; a registry's limit of connections holds however many requests
wait; a connection the server closed while idle, or whose answer was left unread, is never used again; a server
that answers an upload before reading it is heard; no cookie a server sets is ever sent back; and every request
goes through this transport, not httpx's default one."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httpx
import pytest

from imagesync.engine import http11
from imagesync.engine.transport import Endpoint, RegistryHTTP

BODY = b"x" * 3000
LIMIT = 6  # the registry's connections in these tests


@dataclass
class Server:
    """Answers every request 200 with BODY; ``close_after_answer`` closes each connection once it answered
    (without saying so: the client believes it kept alive)."""

    close_after_answer: bool = False
    hold: asyncio.Event | None = None  # while set up and not set, answers wait (to force concurrent connections)
    big_body: bytes = b""  # the answer to a path with /big in it
    connections: int = 0
    open_now: int = 0
    most_open: int = 0
    requests: int = 0
    served_by: list[int] = field(default_factory=list)  # for each request, the number of its connection
    heads: list[bytes] = field(default_factory=list)
    waiting: int = 0
    all_waiting: asyncio.Event = field(default_factory=asyncio.Event)
    expect_waiting: int = 0
    host: str = ""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
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
                body = self.big_body if b"/big" in head.split(b"\r\n", 1)[0] else BODY
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                             b"Set-Cookie: session=planted\r\nContent-Length: %d\r\n\r\n%s"
                             % (len(body), body))
                await writer.drain()
                if self.close_after_answer:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.open_now -= 1
            writer.close()


@asynccontextmanager
async def serving(server: Server) -> AsyncIterator[RegistryHTTP]:
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    http = RegistryHTTP(Endpoint(f"127.0.0.1:{port}", plain_http=True), max_connections=LIMIT)
    try:
        yield http
    finally:
        await http.aclose()
        listener.close()
        await listener.wait_closed()


async def get(http: RegistryHTTP) -> None:
    response = await http.request("GET", "/v2/some/blobs/sha256:00")
    assert response.status_code == 200 and response.content == BODY


async def test_connections_are_kept_and_the_most_recent_is_reused() -> None:
    server = Server(expect_waiting=LIMIT)
    async with serving(server) as http:
        await get(http)  # the /v2/ probe and this request: one connection
        server.hold = hold = asyncio.Event()
        gets = asyncio.gather(*(get(http) for _ in range(LIMIT)))
        await asyncio.wait_for(server.all_waiting.wait(), 30)  # every request on its own connection
        hold.set()
        await gets
        assert server.connections == LIMIT
        # One at a time from here on: every answer gave its connection back, and each request takes the one
        # given back last (the others may expire unused).
        before = len(server.served_by)
        for _ in range(3 * LIMIT):
            await get(http)
        assert server.connections == LIMIT
        assert len(set(server.served_by[before:])) == 1, server.served_by[before:]
        assert http.requests_sent == 1 + 1 + LIMIT + 3 * LIMIT


async def test_the_limit_of_connections_holds_for_any_number_of_requests() -> None:
    # Straight on the transport (RegistryHTTP queues its requests before it): 5 times the limit at once.
    server = Server(expect_waiting=LIMIT)
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    pool = http11.HTTP11Transport(ssl.create_default_context(), max_connections=LIMIT)
    try:
        async with httpx.AsyncClient(transport=pool) as client:
            server.hold = hold = asyncio.Event()
            gets = asyncio.gather(*(client.get(f"http://127.0.0.1:{port}/{i}") for i in range(5 * LIMIT)))
            await asyncio.wait_for(server.all_waiting.wait(), 30)
            await asyncio.sleep(0.2)  # a connection over the limit would have had time to reach the server
            assert server.connections == LIMIT
            hold.set()
            answers = await gets
    finally:
        listener.close()
        await listener.wait_closed()
    assert [a.content for a in answers] == [BODY] * (5 * LIMIT)
    assert server.most_open == LIMIT and server.connections == LIMIT
    assert pool.connections_opened == LIMIT


async def test_an_answer_left_unread_closes_its_connection_and_one_read_to_its_end_keeps_it() -> None:
    server = Server(big_body=b"y" * 3 * http11.READ_SIZE)
    async with serving(server) as http:
        async with http.stream("GET", "/v2/some/blobs/big") as response:
            async for _ in response.aiter_raw():
                break  # the rest of this answer would be in the way of the next one on the connection
        assert server.connections == 1  # the /v2/ probe's, kept for this GET
        async with http.stream("GET", "/v2/some/blobs/big") as response:
            assert len(b"".join([chunk async for chunk in response.aiter_raw()])) == len(server.big_body)
        async with http.stream("GET", "/v2/some/blobs/big") as response:
            await response.aread()
        await get(http)
        await asyncio.sleep(0.05)
        assert server.connections == 2  # the cut answer's connection was closed; the whole ones' kept
        assert server.open_now == 1


async def test_a_server_that_answers_an_upload_before_reading_it_is_heard() -> None:
    # A registry refusing an upload may answer at once and close, before our body is sent: the answer is
    # what the engine must see (its status and message), not the write that failed.
    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbig!")
        await writer.drain()
        writer.close()

    listener = await asyncio.start_server(refuse, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]

    async def body() -> AsyncIterator[bytes]:
        for _ in range(64):
            yield b"z" * 1024 * 1024
            await asyncio.sleep(0)

    try:
        async with httpx.AsyncClient(transport=http11.HTTP11Transport(ssl.create_default_context(), 2)) as client:
            response = await client.put(f"http://127.0.0.1:{port}/upload", content=body())
    finally:
        listener.close()
        await listener.wait_closed()
    assert response.status_code == 413 and response.content == b"big!"


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


async def test_every_answer_is_read_through_the_engine_s_transport(monkeypatch: pytest.MonkeyPatch) -> None:
    # httpx builds its own default transport (httpcore) for any client not given one: were a client of the engine
    # ever made without it, its requests would silently go back to httpcore and anyio (start-up and CPU per
    # request: docs/benchmarks.md). Every read of these answers must be one of engine.http11's.
    reads: list[int] = []
    original = http11._Socket.read

    async def recorded(self: http11._Socket, timeout: float | None) -> bytes:
        data = await original(self, timeout)
        reads.append(len(data))
        return data

    monkeypatch.setattr(http11._Socket, "read", recorded)
    server = Server()
    async with serving(server) as http:
        for _ in range(3):
            await get(http)
    assert len(reads) >= 4 and sum(reads) >= 4 * len(BODY), reads  # the /v2/ probe's answer and the 3 GETs'


async def test_an_idle_connection_past_its_keepalive_expiry_is_not_used_again() -> None:
    server = Server()
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    pool = http11.HTTP11Transport(ssl.create_default_context(), max_connections=2, keepalive_expiry=0.2)
    try:
        async with httpx.AsyncClient(transport=pool) as client:
            await client.get(f"http://127.0.0.1:{port}/a")
            await client.get(f"http://127.0.0.1:{port}/b")  # at once: the same connection
            await asyncio.sleep(0.4)
            await client.get(f"http://127.0.0.1:{port}/c")  # past the expiry: a new one
    finally:
        listener.close()
        await listener.wait_closed()
    assert server.served_by == [1, 1, 2]


async def test_interim_answers_and_chunked_bodies_are_read_as_httpx_reads_them() -> None:
    # A 100 Continue before the answer, then a chunked body: the answer is the 200, its body the chunks joined,
    # and the connection stays good for the next request.
    requests = 0

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal requests
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                requests += 1
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n"
                             b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                             b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    listener = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    pool = http11.HTTP11Transport(ssl.create_default_context(), max_connections=2)
    try:
        async with httpx.AsyncClient(transport=pool) as client:
            first = await client.get(f"http://127.0.0.1:{port}/one")
            second = await client.get(f"http://127.0.0.1:{port}/two")
    finally:
        listener.close()
        await listener.wait_closed()
    assert (first.status_code, first.content, first.http_version) == (200, b"hello world", "HTTP/1.1")
    assert second.content == b"hello world" and requests == 2
    assert pool.connections_opened == 1
