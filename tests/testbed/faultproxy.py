"""A faulty link in front of a real registry: a plain-HTTP proxy that breaks a seeded share of the requests it carries.

:class:`FaultProxy` forwards each exchange (one per connection, ``Connection: close`` both ways) to the registry
``upstream``. With probability ``FaultMix.rate`` a request gets one fault, drawn by weight among the kinds
that fit it:

- ``reset``: the connection is reset before the registry sees the request;
- ``500`` / ``502`` / ``503``: the proxy answers instead of the registry;
- ``429``: the proxy answers Too Many Requests with ``Retry-After`` in seconds (one of ``retry_after``);
- ``stall``: the proxy reads the request and sends nothing for ``stall_s`` seconds, then resets (at most
  ``max_stalls`` of them: each costs the client its whole ``--timeout``);
- ``truncate``: an upload's body is cut halfway (the registry got part of it), or the registry's answer to a GET
  is cut halfway through its body; either way the connection is reset;
- ``flip``: one byte in the middle of a blob body is inverted: a blob GET's answer, or an upload's body (the
  registry then refuses the digest on commit).

Bodies are buffered whole (the test's blobs are at most a few MiB). ``seen`` counts every request read,
``injected`` the faults dealt by kind. With ``check_manifests``, every manifest PUT that reaches the registry is
first checked against it (``manifest_puts_checked``): a manifest pushed before the blobs or child manifests it
references is recorded in ``violations``.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections import Counter
from dataclasses import dataclass, field

from testbed import checker, seed
from testbed.net import LOOPBACK, ThreadedServer
from testbed.registry import RegistryProcess

STATUS_KINDS = ("500", "502", "503", "429")
KINDS = ("reset", *STATUS_KINDS, "stall", "truncate", "flip")


@dataclass(frozen=True)
class FaultMix:
    rate: float = 0.2
    weights: dict[str, float] = field(default_factory=lambda: {
        "reset": 3, "500": 1, "502": 1, "503": 1, "429": 2, "stall": 1, "truncate": 2, "flip": 2})
    retry_after: tuple[str, ...] = ("0", "1")
    stall_s: float = 5.0
    max_stalls: int = 2
    seed: int | str = 0


@dataclass
class _Exchange:
    method: str
    target: str
    head: bytes  # as forwarded: hop-by-hop headers dropped, Connection: close added
    length: int

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def is_blob_get(self) -> bool:
        return self.method == "GET" and "/blobs/sha256:" in self.path

    @property
    def is_manifest_put(self) -> bool:
        return self.method == "PUT" and "/manifests/" in self.path


async def _read_exchange(reader: asyncio.StreamReader) -> _Exchange:
    raw = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    request_line, *header_lines = raw.rstrip("\r\n").split("\r\n")
    method, target, _ = request_line.split(" ", 2)
    kept = [request_line]
    length = 0
    for line in header_lines:
        name = line.partition(":")[0].strip().lower()
        if name in ("connection", "keep-alive"):
            continue
        if name == "content-length":
            length = int(line.partition(":")[2].strip() or 0)
        kept.append(line)
    kept.append("Connection: close")
    return _Exchange(method, target, ("\r\n".join(kept) + "\r\n\r\n").encode("latin-1"), length)


def _flip_middle(data: bytes, start: int = 0) -> bytes:
    middle = start + (len(data) - start) // 2
    return data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:]


def _status_reply(kind: str, retry_after: str) -> bytes:
    body = b'{"errors":[{"code":"UNAVAILABLE","message":"injected fault"}]}'
    headers = [f"HTTP/1.1 {kind} Injected", "Content-Type: application/json", f"Content-Length: {len(body)}",
               "Connection: close"]
    if kind == "429":
        headers.append(f"Retry-After: {retry_after}")
    return ("\r\n".join(headers) + "\r\n\r\n").encode("latin-1") + body


class FaultProxy:
    def __init__(self, upstream: RegistryProcess, mix: FaultMix, *, check_manifests: bool = False) -> None:
        assert upstream.port is not None, "the registry is not running"
        self.upstream_port = upstream.port
        self.mix = mix
        self.enabled = True
        self.seen = 0
        self.injected: Counter[str] = Counter()
        self.violations: list[str] = []
        self.manifest_puts_checked = 0
        self._random = random.Random(mix.seed)
        self._check_manifests = check_manifests
        self._api = seed.RegistryAPI.for_registry(upstream) if check_manifests else None
        self._api_lock = threading.Lock()
        self._server = ThreadedServer(self._handle, "fault-proxy", limit=1024 * 1024)
        self.port = 0

    @property
    def host(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def injected_total(self) -> int:
        return sum(self.injected.values())

    def __enter__(self) -> FaultProxy:
        self.port = self._server.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.stop()
        if self._api is not None:
            self._api.close()

    def _draw(self, exchange: _Exchange) -> str | None:
        """The fault this request gets, if any (drawn in the proxy's loop: one seeded sequence)."""
        if not self.enabled or self._random.random() >= self.mix.rate:
            return None
        fitting = ["reset", *STATUS_KINDS]
        if self.injected["stall"] < self.mix.max_stalls:
            fitting.append("stall")
        if exchange.length > 0 or exchange.method == "GET":
            fitting.append("truncate")
        if exchange.is_blob_get or (exchange.length > 0 and "/blobs/uploads/" in exchange.path):
            fitting.append("flip")
        return self._random.choices(fitting, [self.mix.weights.get(kind, 0) for kind in fitting])[0]

    def _missing_references(self, exchange: _Exchange, manifest: bytes) -> list[str]:
        assert self._api is not None
        repo = exchange.path.removeprefix("/v2/").rsplit("/manifests/", 1)[0]
        with self._api_lock:
            return checker.missing_references(self._api, repo, manifest)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_writer: asyncio.StreamWriter | None = None
        try:
            exchange = await _read_exchange(reader)
            self.seen += 1
            fault = self._draw(exchange)
            if fault == "reset":
                self.injected[fault] += 1
                return
            if fault == "stall":
                self.injected[fault] += 1
                await asyncio.sleep(self.mix.stall_s)
                return
            body = await reader.readexactly(exchange.length)
            if fault in STATUS_KINDS:
                self.injected[fault] += 1
                writer.write(_status_reply(fault, self._random.choice(self.mix.retry_after)))
                await writer.drain()
                writer.close()
                return
            if fault == "flip" and body:
                self.injected[fault] += 1
                body = _flip_middle(body)
            if exchange.is_manifest_put and self._check_manifests and fault != "truncate":
                self.manifest_puts_checked += 1
                missing = await asyncio.to_thread(self._missing_references, exchange, body)
                if missing:
                    self.violations.append(f"PUT {exchange.target} before the registry had {', '.join(missing)}")
            upstream_reader, upstream_writer = await asyncio.open_connection(LOOPBACK, self.upstream_port)
            if fault == "truncate" and body:
                self.injected[fault] += 1
                upstream_writer.write(exchange.head + body[:len(body) // 2])
                await upstream_writer.drain()
                return
            upstream_writer.write(exchange.head + body)
            await upstream_writer.drain()
            answer = await upstream_reader.read(-1)
            body_start = answer.find(b"\r\n\r\n") + 4
            if fault == "truncate":
                self.injected[fault] += 1
                writer.write(answer[:body_start + (len(answer) - body_start) // 2])
                await writer.drain()
                return
            if fault == "flip" and exchange.is_blob_get and answer.startswith(b"HTTP/1.1 200") \
                    and len(answer) > body_start:
                self.injected[fault] += 1
                answer = _flip_middle(answer, body_start)
            writer.write(answer)
            await writer.drain()
            writer.close()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass  # the client or the registry went away mid-exchange
        finally:
            _reset_unless_closed(writer, upstream_writer)


def _reset_unless_closed(*writers: asyncio.StreamWriter | None) -> None:
    """A connection not closed cleanly after a whole answer is reset: what a faulty link does."""
    for connection in writers:
        if connection is not None and not connection.is_closing():
            connection.transport.abort()
