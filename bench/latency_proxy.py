"""A user-space latency-injecting TCP proxy for the long-distance benchmark (no netem on this machine).

    python bench/latency_proxy.py --map 5001:5000 --map 5003:5002 --delay-ms 20 --stats stats.json
    python bench/latency_proxy.py --map 5001:5000 --delay-ms 20 --rate 12.5MB/s

Each ``--map LISTEN:TARGET`` listens on 127.0.0.1:LISTEN and forwards every accepted connection to
127.0.0.1:TARGET. Data is delayed by ``--delay-ms`` in each direction (default 20 ms each way, a 40 ms
round trip), in order: a chunk read at time t is written at t + delay (plus its serialisation time
under ``--rate``, a per-direction per-connection bandwidth cap). The connection set-up costs one round
trip as well: nothing the client sent is forwarded before accept + 2 x delay, as a TCP handshake over
the link would cost (the client's connect itself returns at once on loopback).

The delay is made by scheduling writes, never by sleeping per byte: each direction keeps a queue of
(due time, bytes) and one timer for the head of the queue, so the cost is one read, one timer and one
write per chunk (chunks are up to 256 KiB). Reading stops while a direction holds more than 16 MiB
not yet due (back-pressure), which caps one connection at 16 MiB per delay, 800 MiB/s at 20 ms.

On SIGTERM or SIGINT the proxy writes its statistics as JSON to ``--stats`` (or stdout) and exits:
connections accepted per mapping, bytes each way, and the process's own CPU seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import resource
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

LOOPBACK = "127.0.0.1"
CHUNK = 256 * 1024
HIGH_WATER = 16 * 1024 * 1024


@dataclass
class MapStats:
    listen: int
    target: int
    accepts: int = 0
    bytes_up: int = 0  # client -> registry
    bytes_down: int = 0  # registry -> client
    open_now: int = 0
    open_max: int = 0


@dataclass
class Direction:
    """One direction of one connection: chunks wait in ``queue`` until due, then are written in order."""

    loop: asyncio.AbstractEventLoop
    writer: asyncio.StreamWriter
    delay: float
    rate: float | None
    queue: collections.deque[tuple[float, bytes | None]] = field(default_factory=collections.deque)
    queued: int = 0
    link_free: float = 0.0
    timer: asyncio.TimerHandle | None = None
    room: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.room.set()

    def push(self, data: bytes | None, not_before: float = 0.0) -> None:
        """Queue a chunk (None: end of stream) read now; it is written at now + delay (+ serialisation)."""
        now = self.loop.time()
        start = max(now, not_before)
        if self.rate and data:
            start = max(start, self.link_free)
            self.link_free = start + len(data) / self.rate
            start = self.link_free
        self.queue.append((start + self.delay, data))
        if data:
            self.queued += len(data)
            if self.queued > HIGH_WATER:
                self.room.clear()
        if self.timer is None:
            self.timer = self.loop.call_at(self.queue[0][0], self.flush)

    def flush(self) -> None:
        self.timer = None
        now = self.loop.time()
        while self.queue and self.queue[0][0] <= now:
            _, data = self.queue.popleft()
            if data is None:
                if self.writer.can_write_eof():
                    with contextlib.suppress(OSError):
                        self.writer.write_eof()
                self.done.set()
                continue
            self.queued -= len(data)
            if not self.writer.is_closing():
                self.writer.write(data)
        if self.queued <= HIGH_WATER:
            self.room.set()
        if self.queue:
            self.timer = self.loop.call_at(self.queue[0][0], self.flush)

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.done.set()
        self.room.set()


async def pump(reader: asyncio.StreamReader, direction: Direction, count: list[int], not_before: float) -> None:
    """Read until EOF, handing every chunk to ``direction``; waits for its writer when too much is queued."""
    try:
        while True:
            await direction.room.wait()
            data = await reader.read(CHUNK)
            if not data:
                break
            count[0] += len(data)
            direction.push(data, not_before)
            # Keep the transport's own buffer bounded too (it holds what flush() already wrote).
            if direction.writer.transport.get_write_buffer_size() > HIGH_WATER:
                await direction.writer.drain()
    except (ConnectionError, OSError):
        pass
    direction.push(None, not_before)


class Proxy:
    def __init__(self, maps: list[tuple[int, int]], delay: float, rate: float | None, handshake: bool) -> None:
        self.stats = [MapStats(listen, target) for listen, target in maps]
        self.delay = delay
        self.rate = rate
        self.handshake = handshake
        self.servers: list[asyncio.Server] = []

    async def start(self) -> None:
        for stats in self.stats:
            server = await asyncio.start_server(self._handler_for(stats), LOOPBACK, stats.listen, backlog=1024)
            self.servers.append(server)

    def _handler_for(self, stats: MapStats) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter],
                                                        Awaitable[None]]:
        """The connection handler of one mapping (its own statistics)."""
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self.handle(reader, writer, stats)
        return handler

    async def handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter, stats: MapStats) -> None:
        loop = asyncio.get_running_loop()
        accepted = loop.time()
        stats.accepts += 1
        stats.open_now += 1
        stats.open_max = max(stats.open_max, stats.open_now)
        try:
            try:
                up_r, up_w = await asyncio.open_connection(LOOPBACK, stats.target)
            except OSError:
                client_w.close()
                return
            # The handshake's round trip: the client's first bytes leave no earlier than accept + RTT.
            not_before = accepted + 2 * self.delay if self.handshake else 0.0
            up = Direction(loop, up_w, self.delay, self.rate)
            down = Direction(loop, client_w, self.delay, self.rate)
            counts_up, counts_down = [0], [0]
            await asyncio.gather(pump(client_r, up, counts_up, not_before), pump(up_r, down, counts_down, 0.0))
            await asyncio.gather(up.done.wait(), down.done.wait())
            stats.bytes_up += counts_up[0]
            stats.bytes_down += counts_down[0]
            for writer in (up_w, client_w):
                with contextlib.suppress(ConnectionError, OSError):
                    await writer.drain()
                writer.close()
            up.cancel()
            down.cancel()
        except asyncio.CancelledError:
            pass  # connections still open at shutdown (a client's idle keep-alive ones)
        finally:
            stats.open_now -= 1

    def report(self, started: float) -> dict[str, object]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {"delay_ms": self.delay * 1000, "rate": self.rate, "wall_s": time.monotonic() - started,
                "cpu_s": usage.ru_utime + usage.ru_stime, "user_s": usage.ru_utime, "sys_s": usage.ru_stime,
                "maps": [vars(s) for s in self.stats]}


def parse_rate(text: str) -> float:
    units = {"kb/s": 1e3, "mb/s": 1e6, "gb/s": 1e9, "kib/s": 1024, "mib/s": 1024 ** 2, "gib/s": 1024 ** 3, "b/s": 1}
    lowered = text.strip().lower()
    for unit in sorted(units, key=len, reverse=True):
        if lowered.endswith(unit):
            return float(lowered[: -len(unit)]) * units[unit]
    return float(lowered)


async def serve(args: argparse.Namespace) -> None:
    maps = [(int(a), int(b)) for a, b in (m.split(":") for m in args.map)]
    proxy = Proxy(maps, args.delay_ms / 1000, parse_rate(args.rate) if args.rate else None, not args.no_handshake)
    started = time.monotonic()
    await proxy.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    await stop.wait()
    for server in proxy.servers:
        server.close()
    text = json.dumps(proxy.report(started))
    if args.stats:
        Path(args.stats).write_text(text)
    else:
        print(text, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--map", action="append", required=True, metavar="LISTEN:TARGET",
                        help="listen on 127.0.0.1:LISTEN, forward to 127.0.0.1:TARGET (repeatable)")
    parser.add_argument("--delay-ms", type=float, default=20.0, help="one-way delay, each direction (default 20)")
    parser.add_argument("--rate", help="bandwidth cap per connection and direction, e.g. 12.5MB/s (default none)")
    parser.add_argument("--no-handshake", action="store_true", help="do not charge a round trip per connection")
    parser.add_argument("--stats", help="write the statistics JSON here on exit (default stdout)")
    args = parser.parse_args()
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
