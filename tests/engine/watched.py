"""A transport for tests that watch the engine's requests: the engine's own (engine.http11), with a hook that
sees, and may hold, each request before it is sent (``sync(..., transport_factory=...)``)."""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable

import httpx

from imagesync.engine.http11 import HTTP11Transport


class Watched(httpx.AsyncBaseTransport):
    """The engine's own transport, with a hook that sees (and may hold) each request before it is sent."""

    def __init__(self, before: Callable[[httpx.Request], Awaitable[None]]) -> None:
        self._inner = HTTP11Transport(ssl.create_default_context(), max_connections=8)
        self._before = before

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await self._before(request)
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()
