"""A flaky Kubernetes API server: an HTTP proxy in front of a real one that injects faults on a seeded schedule.

The operator's client points at ``ApiProxy.url`` (plain HTTP on 127.0.0.1); the proxy forwards each request
to ``upstream`` (HTTPS verified with ``ca_file``, or plain HTTP for the kmock emulator), passing the client's
own ``Authorization`` header through, so the client's RBAC applies as it would without the proxy.

Faults (each drawn per request from ``random.Random(seed)``; :attr:`ApiProxy.injected` counts them by kind):

- ``server_error``: 500 or 503 with a Status body, and the request never reaches the API server (any
  non-watch request).
- ``lost_response``: a create (POST) reaches the API server and takes effect, but the client is answered 504
  Gateway Timeout, as when a load balancer gives up waiting: a retry then meets the real 409 AlreadyExists.
  This is where a careless operator would make a second Job.
- ``conflict``: 409 Conflict (reason Conflict, the API server's own message) on a PATCH or PUT, not forwarded.
  A real API server sends it to an update or patch carrying a stale resourceVersion; the operator's merge
  patches carry none, so this is harsher than a real server: it checks that a refused write is written
  again. Never on a POST: a 409 there means AlreadyExists, and faking it would only tell the operator a lie.
- ``watch_cut``: a watch stream is cut (the connection dropped) after a drawn number of events (1 to 5) or
  ``watch_cut_after`` seconds, whichever comes first.
- ``delay``: 0.5 to 2 s before the answer (any request, on top of any other fault).

``only(request)`` may restrict faults to some requests (by default all are eligible); ``paused`` forwards
everything untouched while set.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import random
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from testbed.net import LOOPBACK

FAULT_KINDS = ("server_error", "lost_response", "conflict", "watch_cut", "delay")
# Hop-by-hop and framing headers: aiohttp sets its own on each leg.
SKIPPED_HEADERS = {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "accept-encoding",
                   "content-encoding"}


@dataclass(frozen=True)
class FaultRates:
    """The chance of each fault per eligible request (0 to 1)."""

    server_error: float = 0.1
    lost_response: float = 0.25
    conflict: float = 0.2
    watch_cut: float = 0.5
    delay: float = 0.1
    watch_cut_after: float = 5.0  # seconds: a cut watch lasts at most this long


@dataclass(frozen=True)
class Seen:
    """What the proxy saw of one request (for ``only`` and the log)."""

    method: str
    path: str
    watch: bool
    user_agent: str


@dataclass
class Decision:
    server_error: int | None = None  # the status to answer instead of forwarding
    lost_response: bool = False
    conflict: bool = False
    cut_after_events: int | None = None
    delay: float = 0.0


def status_body(code: int, reason: str, message: str) -> bytes:
    """A metav1.Status as the API server writes it."""
    return json.dumps({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                       "message": message, "reason": reason, "code": code}).encode()


@dataclass
class FaultSchedule:
    """Which fault each request gets: pure, seeded, so a unit test can check it without a network."""

    rates: FaultRates
    seed: int
    _random: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)

    def decide(self, seen: Seen) -> Decision:
        draw, rates = self._random.random, self.rates
        decision = Decision()
        if draw() < rates.delay:
            decision.delay = 0.5 + 1.5 * draw()
        if seen.watch:
            if draw() < rates.watch_cut:
                decision.cut_after_events = 1 + int(draw() * 5)
            return decision
        if draw() < rates.server_error:
            decision.server_error = 500 if draw() < 0.5 else 503
        elif seen.method == "POST" and draw() < rates.lost_response:
            decision.lost_response = True
        elif seen.method in ("PATCH", "PUT") and not seen.user_agent.startswith("kopf/") and draw() < rates.conflict:
            decision.conflict = True
        return decision


class ApiProxy:
    """The proxy, serving in a thread of its own (the operator's event loop and threads stay its clients)."""

    def __init__(self, upstream: str, *, seed: int = 0, rates: FaultRates | None = None, ca_file: str | None = None,
                 verify: bool = True, client_cert: tuple[str, str] | None = None,
                 only: Callable[[Seen], bool] | None = None) -> None:
        self.upstream = upstream.rstrip("/")
        self.schedule = FaultSchedule(rates or FaultRates(), seed)
        self.only = only
        self.injected: collections.Counter[str] = collections.Counter()
        self.forwarded = 0
        self.log: list[str] = []  # "<METHOD> <path?query> <what happened>", for a failing test's message
        self.paused = threading.Event()
        self._lock = threading.Lock()
        self._ssl: ssl.SSLContext | bool = False
        if self.upstream.startswith("https://"):
            context = ssl.create_default_context(cafile=ca_file) if verify else ssl._create_unverified_context()
            if client_cert:
                context.load_cert_chain(*client_cert)
            self._ssl = context
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="apiproxy")
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {kind: self.injected[kind] for kind in FAULT_KINDS}

    def _count(self, kind: str) -> None:
        with self._lock:
            self.injected[kind] += 1

    def start(self) -> ApiProxy:
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("the API proxy did not start")
        return self

    def close(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(15)

    def __enter__(self) -> ApiProxy:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.close()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())
        pending = asyncio.all_tasks(self._loop)
        for task in pending:
            task.cancel()
        self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self._loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        # No total timeout: watch streams last as long as the API server keeps them.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
        # No connection limit: every open watch holds one upstream connection.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self._ssl, limit=0), timeout=timeout,
                                         auto_decompress=False) as session:
            app = web.Application(client_max_size=64 * 1024 * 1024)

            async def handle(request: web.Request) -> web.StreamResponse:
                return await self._handle(session, request)

            app.router.add_route("*", "/{tail:.*}", handle)
            # handler_cancellation: a client that goes away ends its request here too, so a watch the client
            # dropped does not keep its upstream stream open.
            runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1,
                                   handler_cancellation=True)
            await runner.setup()
            site = web.TCPSite(runner, LOOPBACK, 0)
            await site.start()
            server = site._server
            assert isinstance(server, asyncio.base_events.Server)
            self.port = server.sockets[0].getsockname()[1]
            self._started.set()
            await self._stop.wait()
            await runner.cleanup()

    def _decide(self, seen: Seen) -> Decision:
        with self._lock:
            if self.paused.is_set() or (self.only is not None and not self.only(seen)):
                return Decision()
            return self.schedule.decide(seen)

    async def _handle(self, session: aiohttp.ClientSession, request: web.Request) -> web.StreamResponse:
        watch = request.query.get("watch") in ("true", "1")
        seen = Seen(request.method, request.path, watch, request.headers.get("User-Agent", ""))
        decision = self._decide(seen)
        self.log.append(f"{request.method} {request.path_qs} {decision}")
        if decision.delay:
            self._count("delay")
            await asyncio.sleep(decision.delay)
        if decision.server_error is not None:
            self._count("server_error")
            reason = "InternalError" if decision.server_error == 500 else "ServiceUnavailable"
            return web.Response(status=decision.server_error, content_type="application/json",
                                body=status_body(decision.server_error, reason, "injected by the test's API proxy"))
        if decision.conflict:
            self._count("conflict")
            message = (f"Operation cannot be fulfilled on {request.path.rsplit('/', 2)[-2]}: the object has been "
                       "modified; please apply your changes to the latest version and try again")
            return web.Response(status=409, content_type="application/json",
                                body=status_body(409, "Conflict", message))
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in SKIPPED_HEADERS}
        # skip_auto_headers: a body the client sent without a Content-Type goes on without one. The kubernetes
        # client sends its creates so, and the API server reads them as JSON; aiohttp would otherwise label the
        # bytes application/octet-stream, which the API server refuses with 415 Unsupported Media Type.
        async with session.request(request.method, self.upstream + request.path_qs, headers=headers,
                                   data=body or None, skip_auto_headers=("Content-Type",),
                                   allow_redirects=False) as upstream:
            with self._lock:
                self.forwarded += 1
            if decision.lost_response:
                await upstream.read()
                self._count("lost_response")
                return web.Response(status=504, content_type="application/json",
                                    body=status_body(504, "Timeout", "injected by the test's API proxy: the "
                                                                     "request was applied, its answer lost"))
            response = web.StreamResponse(status=upstream.status, headers={
                k: v for k, v in upstream.headers.items() if k.lower() not in SKIPPED_HEADERS})
            await response.prepare(request)
            if not watch:
                await response.write(await upstream.read())
                await response.write_eof()
                return response
            try:
                return await self._stream_watch(request, upstream, response, decision.cut_after_events)
            except (ConnectionError, aiohttp.ClientError):
                return response  # the client or the API server closed the stream: so does the proxy

    async def _stream_watch(self, request: web.Request, upstream: aiohttp.ClientResponse,
                            response: web.StreamResponse, cut_after_events: int | None) -> web.StreamResponse:
        """Pass the watch's events through line by line; drop the connection when the cut is due."""
        deadline = asyncio.get_running_loop().time() + self.schedule.rates.watch_cut_after
        events = 0
        while True:
            try:
                if cut_after_events is None:
                    line = await upstream.content.readline()
                else:
                    left = deadline - asyncio.get_running_loop().time()
                    line = await asyncio.wait_for(upstream.content.readline(), max(left, 0.01))
            except TimeoutError:
                line = b""
                events = cut_after_events or 0  # due by time
            if line:
                await response.write(line)
                events += 1
            if cut_after_events is not None and events >= cut_after_events:
                self._count("watch_cut")
                if request.transport is not None:
                    request.transport.close()  # no end of stream: the connection just goes
                return response
            if not line:
                with contextlib.suppress(ConnectionError):
                    await response.write_eof()
                return response


__all__ = ["FAULT_KINDS", "ApiProxy", "FaultRates", "FaultSchedule", "Seen"]
