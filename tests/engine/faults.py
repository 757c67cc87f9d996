"""Fault injection at the transport seam, in front of a real registry.

The registry still answers every request that gets through; this only breaks some of them the way
networks and overloaded registries do: connection resets, 5xx, 429 with Retry-After, corrupted bytes.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import httpx

Predicate = Callable[[httpx.Request], bool]


def is_blob_get(request: httpx.Request) -> bool:
    return request.method == "GET" and "/blobs/sha256:" in request.url.path


@dataclass
class FaultPlan:
    """Which faults to inject: a fixed list of the first matching requests, or a random rate."""

    reset_rate: float = 0.0
    status_rate: float = 0.0
    statuses: tuple[int, ...] = (503,)
    retry_after: str | None = None
    corrupt_first: int = 0  # corrupt the body of the first N blob GETs
    only: Predicate | None = None
    seed: int = 7
    injected: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)

    def roll(self, rate: float) -> bool:
        return rate > 0 and self._random.random() < rate


class _CorruptedStream(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream) -> None:
        self._inner = inner
        self._done = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            if chunk and not self._done:
                chunk = bytes([chunk[0] ^ 0xFF]) + chunk[1:]
                self._done = True
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


class FaultyTransport(httpx.AsyncBaseTransport):
    def __init__(self, inner: httpx.AsyncBaseTransport, plan: FaultPlan) -> None:
        self._inner = inner
        self.plan = plan

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        plan = self.plan
        targeted = plan.only is None or plan.only(request)
        if targeted and request.url.path != "/v2/":
            if plan.roll(plan.reset_rate):
                plan.injected["reset"] += 1
                raise httpx.ReadError("connection reset by peer (injected)", request=request)
            if plan.roll(plan.status_rate):
                status = plan._random.choice(plan.statuses)
                plan.injected[str(status)] += 1
                headers = {"Retry-After": plan.retry_after} if plan.retry_after and status == 429 else {}
                return httpx.Response(status, headers=headers, request=request,
                                      json={"errors": [{"code": "UNAVAILABLE", "message": "injected"}]})
        response = await self._inner.handle_async_request(request)
        if is_blob_get(request) and response.status_code == 200 and plan.corrupt_first > 0:
            plan.corrupt_first -= 1
            plan.injected["corrupt"] += 1
            assert isinstance(response.stream, httpx.AsyncByteStream)
            response.stream = _CorruptedStream(response.stream)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


class TagPagingTransport(httpx.AsyncBaseTransport):
    """Pages ``tags/list`` answers as the distribution spec describes (``n``, ``last``, ``Link``).

    docker-registry 2.8 ignores ``n`` for tag lists and always answers in one page, so the engine's
    ``Link``-following would go untested against it. This pages the real registry's full answer.
    """

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self._inner = inner
        self.pages_served = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not (request.method == "GET" and request.url.path.endswith("/tags/list")
                and "n" in request.url.params):
            return await self._inner.handle_async_request(request)
        size = int(request.url.params["n"])
        last = request.url.params.get("last")
        full_url = request.url.copy_remove_param("n").copy_remove_param("last")
        response = await self._inner.handle_async_request(httpx.Request("GET", full_url, headers=request.headers))
        await response.aread()
        if response.status_code != 200:
            return response
        body = json.loads(response.content)
        tags = sorted(body.get("tags") or [])
        remaining = [t for t in tags if last is None or t > last]
        page = remaining[:size]
        headers = {"Content-Type": "application/json"}
        if len(remaining) > size:
            headers["Link"] = f'<{request.url.path}?n={size}&last={page[-1]}>; rel="next"'
        self.pages_served += 1
        return httpx.Response(200, headers=headers, json={"name": body.get("name"), "tags": page},
                              request=request)

    async def aclose(self) -> None:
        await self._inner.aclose()
