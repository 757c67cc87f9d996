"""The one HTTP layer per registry host.

Every request to a registry goes through :class:`RegistryHTTP`, which owns, for that host: the pooled
keep-alive connections, the scheme (see :class:`Endpoint`: HTTPS unless the user said otherwise), authentication
(anonymous, Basic, or Bearer tokens from the ``WWW-Authenticate`` challenge, cached per scope until they
expire), the request-rate limit (``--qps``), the bandwidth limit (``--limit-rate`` / ``limitRate``: a
:class:`ByteBucket` over request and response bodies, shared by every transfer to or from the host), the
request quota the registry announces (:class:`QuotaGate`: ``ratelimit-*`` / ``RateLimit-*`` headers; pulls
wait for the window to reset rather than earn a 429) and retries of transient failures with backoff.

Callers (``registry.py``) deal in registry verbs and status codes; nothing above this module knows how a
token is obtained or that a request was retried.

A registry is not trusted beyond its own answers (issue 11):

- Credentials (Basic, or a Bearer token) go only to the registry's own origin: the scheme, host and port of
  the endpoint we reached, as containerd and go-containerregistry do. A ``Location`` or ``Link`` naming
  another origin is followed without credentials; httpx drops them on cross-origin redirects. A 401 from
  another origin teaches us no challenge, so a foreign host cannot name the realm our password goes to.
- An HTTPS registry is never followed to plain HTTP (``Location``, ``Link``, redirects, token realm).
- The token realm: an absolute http(s) URL without user info, learned only from the registry's own
  origin. It may be on another host (Docker Hub's is auth.docker.io), since the registry, reached over
  verified TLS, names its token service. It gets Basic credentials over HTTPS only; plain HTTP only when
  the registry itself is plain HTTP, which happens only for an endpoint the user marked ``plainHTTP`` (or
  ``insecure``, and then without credentials).
- Credentials travel over plain HTTP only to a registry the user marked ``plainHTTP`` (issue 11, point 9);
  no failure ever turns HTTPS into plain HTTP for a registry that holds credentials.
- Bodies are read with caps (:func:`read_limited`), decompressing ourselves so that a gzip bomb stops at
  the cap; registry messages are clipped before they reach an error.
"""

from __future__ import annotations

import asyncio
import datetime
import email.utils
import logging
import math
import random
import re
import ssl
import time
import zlib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx

from imagesync.engine.errors import RegistryError, clip
from imagesync.engine.http11 import HTTP11Transport

log = logging.getLogger(__name__)

# Statuses worth another try: the registry (or a proxy in front of it) is busy or briefly broken.
TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
USER_AGENT = "imagesync/0.1"
# What we hold in memory from one answer. 4 MiB is the manifest size the distribution spec says registries
# should accept; token responses and error bodies are small documents.
MANIFEST_MAX_BYTES = 4 * 1024 * 1024
SMALL_BODY_MAX_BYTES = 64 * 1024
# The encodings read_limited() decodes itself (bounded); we ask for nothing else.
ACCEPT_ENCODING = "gzip, deflate"
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    base_delay: float = 0.2
    max_delay: float = 10.0
    # A registry asking us to wait longer than this is treated as an outage, not throttling.
    max_retry_after: float = 60.0
    # The longest we wait for an announced request quota to reset before failing the request instead
    # (Docker Hub's window is six hours: a run does not sit that long, it fails the images left and says why).
    max_quota_wait: float = 900.0

    def backoff(self, attempt: int) -> float:
        """Full-jitter exponential backoff: spreads retries of many concurrent transfers apart."""
        ceiling: float = min(self.max_delay, self.base_delay * (2**attempt))
        return random.uniform(ceiling / 2, ceiling)


@dataclass(frozen=True)
class Endpoint:
    """How to reach and log in to one registry host.

    The scheme, chosen once per run (:meth:`schemes`), with no fallback between explicit settings:

    - default: HTTPS, the certificate verified (system trust store plus ``ca_file``);
    - ``skip_tls_verify``: HTTPS, the certificate not verified. Never plain HTTP: a handshake a man in
      the middle breaks fails the registry. Credentials go over this unverified TLS (that is the cost);
    - ``plain_http``: plain HTTP only, never HTTPS; credentials and tokens travel in clear, because the
      user said so for this registry;
    - ``insecure`` (image-syncer's setting, alone): HTTPS without verification, and if no TLS connection
      can be made, plain HTTP *without credentials* (one warning per host). image-syncer documents
      ``insecure: true`` as "the registry is a plain HTTP service" and implements it as that fallback, so
      image-syncer files for anonymous HTTP registries keep working. The fallback is decided by whoever
      answers the handshake, a man in the middle included, so it must not carry anything worth stealing:
      over plain HTTP such a registry gets no password and no Basic-authenticated token request; a login
      it asks for fails the image with a message naming ``plainHTTP``. What it can still do (serve other
      content) it could already do through the unverified HTTPS that ``insecure`` also means.
    """

    host: str  # API host[:port], e.g. registry-1.docker.io or 127.0.0.1:5000
    insecure: bool = False  # image-syncer's: see above
    ca_file: str | None = None
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    skip_tls_verify: bool = False
    plain_http: bool = False

    @property
    def has_credentials(self) -> bool:
        return bool(self.username or self.password)

    def schemes(self) -> list[str]:
        """The schemes to try, in order (more than one only for ``insecure`` alone)."""
        if self.plain_http:
            return ["http"]
        if self.skip_tls_verify or not self.insecure:
            return ["https"]
        return ["https", "http"]

    @property
    def verifies_tls(self) -> bool:
        return not (self.insecure or self.skip_tls_verify or self.plain_http)


@dataclass(frozen=True)
class Challenge:
    scheme: str  # "basic" or "bearer", lower case
    params: Mapping[str, str]


_CHALLENGE_PARAM = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))')


def parse_challenge(header: str) -> Challenge | None:
    """Parse a ``WWW-Authenticate`` header such as ``Bearer realm="...",service="...",scope="..."``."""
    header = header.strip()
    if not header:
        return None
    scheme, _, rest = header.partition(" ")
    params = {m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3)
              for m in _CHALLENGE_PARAM.finditer(rest)}
    return Challenge(scheme.lower(), params)


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000" (RFC 5322's unknown zone) parses naive: HTTP dates are GMT
        when = when.replace(tzinfo=datetime.UTC)
    return max(0.0, when.timestamp() - time.time())


class RateLimiter:
    """Evenly spaced requests: at most ``qps`` request starts per second for one registry."""

    def __init__(self, qps: float) -> None:
        self._interval = 1.0 / qps
        self._next = 0.0
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        async with self._lock:
            now = time.monotonic()
            wait = self._next - now
            self._next = max(now, self._next) + self._interval
        if wait > 0:
            await asyncio.sleep(wait)


# -- bandwidth and quota (issue 10, points 3 and 4) ---------------------------------------------------

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)(b?)\s*(?:/\s*s)?\s*$", re.IGNORECASE)
_UNIT_POWER = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}


def parse_rate(text: str) -> float:
    """Bytes per second from ``50MiB/s``, ``20M``, ``1.5GB/s``, ``512k`` or ``1000000``.

    K/M/G/T are powers of 1000, Ki/Mi/Gi/Ti powers of 1024; the ``B`` and the ``/s`` are optional. The
    one error names the value and the accepted forms.
    """
    match = _RATE.match(str(text))
    value = float(match.group(1)) if match else 0.0
    if not match or (match.group(3) and not match.group(2)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{clip(str(text), 60)!r} is not a rate: use a positive number of bytes per second "
                         f"with an optional unit, e.g. 50MiB/s, 20M, 512KiB, 1.5GB/s (K, M, G = 1000^n; "
                         f"Ki, Mi, Gi = 1024^n)")
    base = 1024 if match.group(3) else 1000
    rate = value * float(base ** _UNIT_POWER[match.group(2).lower()])
    if rate < 1:
        raise ValueError(f"{clip(str(text), 60)!r} is less than one byte per second")
    return rate


def format_rate(rate: float) -> str:
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if rate >= size:
            return f"{rate / size:.4g} {unit}/s"
    return f"{rate:.4g} B/s"


class ByteBucket:
    """A token bucket over body bytes, shared by every transfer to or from one registry (``--limit-rate``).

    ``rate`` bytes flow in per second up to ``burst``. :meth:`reserve` takes ``n`` bytes at once, going
    into debt when the bucket holds fewer, and answers how long the caller must wait before they may
    move: later callers queue behind that debt, so the long-run rate is ``rate`` however many transfers
    share the bucket and however large their chunks are. Pure apart from the clock (injectable).
    """

    def __init__(self, rate: float, burst: float | None = None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = float(rate)
        # A tenth of a second of traffic (at least 64 KiB): enough to keep chunks flowing, too little to
        # show as a burst in any per-second graph of the link.
        self.burst = float(burst) if burst is not None else max(self.rate / 10, 64 * 1024.0)
        self._clock = clock
        self._tokens = self.burst
        self._stamp = clock()

    def reserve(self, n: int) -> float:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        self._tokens -= n
        return -self._tokens / self.rate if self._tokens < 0 else 0.0

    async def acquire(self, n: int) -> None:
        wait = self.reserve(n)
        if wait > 0:
            await asyncio.sleep(wait)


class _MeteredStream(httpx.AsyncByteStream):
    """A response body read through a :class:`ByteBucket`."""

    def __init__(self, inner: httpx.AsyncByteStream, bucket: ByteBucket) -> None:
        self._inner = inner
        self._bucket = bucket

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            await self._bucket.acquire(len(chunk))
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


class _RedirectBody(httpx.AsyncByteStream):
    """The body of a redirect httpx is about to follow, which nobody reads: httpx would read it whole and
    decoded (``aread``), and 200 KiB of gzip inflate to 200 MiB. At most a small answer's worth of raw
    bytes is drained (so that the connection can be reused) and nothing is handed on."""

    def __init__(self, inner: httpx.AsyncByteStream) -> None:
        self._inner = inner

    async def __aiter__(self) -> AsyncIterator[bytes]:
        drained = 0
        async for chunk in self._inner:
            drained += len(chunk)
            if drained > SMALL_BODY_MAX_BYTES:
                break  # not worth keeping the connection for: it is closed instead
        yield b""  # the body, as far as httpx is concerned

    async def aclose(self) -> None:
        await self._inner.aclose()


async def _discard_redirect_body(response: httpx.Response) -> None:
    """A response hook: sees every answer before httpx follows it, redirects included."""
    if response.has_redirect_location:
        assert isinstance(response.stream, httpx.AsyncByteStream)
        response.stream = _RedirectBody(response.stream)
        response.headers.pop("content-encoding", None)  # nothing left to decode


async def _metered(content: AsyncIterator[bytes], bucket: ByteBucket) -> AsyncIterator[bytes]:
    async for chunk in content:
        await bucket.acquire(len(chunk))
        yield chunk


@dataclass(frozen=True)
class Quota:
    """A request quota a registry announced: Docker Hub's ``ratelimit-limit: 100;w=21600`` and
    ``ratelimit-remaining: 76;w=21600``, or the IETF draft's ``RateLimit-Limit`` / ``-Remaining`` /
    ``-Reset`` (seconds; an epoch timestamp is read as one) or its combined ``RateLimit: limit=100,
    remaining=50, reset=30``."""

    remaining: int
    limit: int | None = None
    window: float | None = None  # seconds (the w= parameter)
    reset: float | None = None  # seconds until the window resets, when announced

    def as_dict(self) -> dict[str, float | int]:
        data: dict[str, float | int] = {"remaining": self.remaining}
        if self.limit is not None:
            data["limit"] = self.limit
        if self.window is not None:
            data["windowSeconds"] = self.window
        if self.reset is not None:
            data["resetSeconds"] = round(self.reset, 3)
        return data


_QUOTA_ITEM = re.compile(r"^\s*(\d+)\s*((?:;[^,]*)?)$")
_QUOTA_WINDOW = re.compile(r";\s*w\s*=\s*(\d+(?:\.\d+)?)", re.IGNORECASE)
_QUOTA_PARAM = re.compile(r"\b(limit|remaining|reset)\s*=\s*(\d+(?:\.\d+)?)", re.IGNORECASE)


def _quota_value(header: str | None) -> tuple[int, float | None] | None:
    """The smallest value of a header such as ``76;w=21600`` or ``10, 10;w=1, 1000;w=3600`` and its window."""
    if not header:
        return None
    best: tuple[int, float | None] | None = None
    for item in header.split(","):
        match = _QUOTA_ITEM.match(item)
        if not match:
            continue
        window = _QUOTA_WINDOW.search(match.group(2))
        value = (int(match.group(1)), float(window.group(1)) if window else None)
        if best is None or value[0] < best[0]:
            best = value
    return best


def _reset_seconds(value: float, now: float | None = None) -> float:
    # Some servers send the epoch time of the reset rather than the delay the draft specifies.
    if value > 1e9:
        return max(0.0, value - (time.time() if now is None else now))
    return value


def parse_quota(headers: Mapping[str, str]) -> Quota | None:
    """The quota a response announces, or None. ``headers`` is case-insensitive (httpx.Headers)."""
    combined = headers.get("ratelimit")
    if combined:
        params = {m.group(1).lower(): float(m.group(2)) for m in _QUOTA_PARAM.finditer(combined)}
        if "remaining" in params:
            return Quota(int(params["remaining"]), int(params["limit"]) if "limit" in params else None,
                         reset=_reset_seconds(params["reset"]) if "reset" in params else None)
    remaining = _quota_value(headers.get("ratelimit-remaining"))
    if remaining is None:
        return None
    limit = _quota_value(headers.get("ratelimit-limit"))
    reset_text = (headers.get("ratelimit-reset") or "").split(",")[0].strip()
    reset = _reset_seconds(float(reset_text)) if re.fullmatch(r"\d+(?:\.\d+)?", reset_text) else None
    window = remaining[1] if remaining[1] is not None else (limit[1] if limit else None)
    return Quota(remaining[0], limit[0] if limit else None, window, reset)


# How long we assume a window lasts when a registry announces a quota but neither a window nor a reset.
DEFAULT_QUOTA_WINDOW = 60.0


class QuotaGate:
    """Registry rate-limit etiquette: stop before an announced quota runs out, not after a 429.

    One per registry host. Once the registry has announced a quota (:meth:`observe`), every request
    that counts against it takes one from our estimate of what is left (:meth:`reserve`); at ``reserve``
    left, further requests wait until the window resets. The estimate is conservative: the registry's
    ``remaining`` minus our other requests still in flight (the registry may not have counted them
    yet), and within one window it only goes down, so a late answer carrying an older, higher number
    cannot reopen the gate. Without an announced reset we assume the window ends ``w`` seconds (the
    announced window) after we learned the quota, which is never earlier than the registry's own reset.
    At the reset the estimate becomes the announced limit (or one probe when none was announced), so
    waiting requests do not all rush out at once. Pure apart from the clock (injectable).

    What counts: a pull as Docker Hub defines it (``GET`` of a manifest), plus any other kind of request
    (method and the manifests/blobs/tags/other part of the path) whose answers carried quota headers.
    ``HEAD`` never counts: Docker Hub documents it as free, and a registry that counts it still
    corrects our estimate with its headers.
    """

    def __init__(self, *, reserve: int = 0, clock: Callable[[], float] = time.monotonic) -> None:
        self.reserve_left = reserve
        self._clock = clock
        self.announced: Quota | None = None  # the latest quota the registry announced, for the summary
        self._estimate: int | None = None  # requests we may still send in this window; None: no quota known
        self._reset_at: float | None = None
        self._window: float | None = None
        self._generation = 0
        self._in_flight = 0
        self._counted_kinds: set[tuple[str, str]] = set()
        self._logged_generation = -1

    @staticmethod
    def kind(method: str, path: str) -> tuple[str, str]:
        part = path.split("?", 1)[0]
        for name in ("manifests", "blobs", "tags", "referrers"):
            if f"/{name}/" in part:
                return method.upper(), name
        return method.upper(), "other"

    def counts(self, method: str, path: str) -> bool:
        kind = self.kind(method, path)
        if kind[0] == "HEAD":
            return False
        return kind == ("GET", "manifests") or kind in self._counted_kinds

    def _roll(self, now: float) -> None:
        if self._reset_at is not None and now >= self._reset_at:
            limit = self.announced.limit if self.announced else None
            self._generation += 1
            self._estimate = max(limit - self._in_flight, 1) if limit is not None else 1
            self._reset_at = now + (self._window or DEFAULT_QUOTA_WINDOW)

    def reserve(self) -> tuple[float, int]:
        """(0, generation) when a counted request may go now (it is then in flight until :meth:`release`),
        else (seconds to wait before asking again, -1)."""
        now = self._clock()
        self._roll(now)
        if self._estimate is not None:
            if self._estimate <= self.reserve_left:
                assert self._reset_at is not None
                return max(self._reset_at - now, 0.001), -1
            self._estimate -= 1
        self._in_flight += 1
        return 0.0, self._generation

    def first_wait_in_window(self) -> bool:
        """True once per window, for one log line however many requests wait."""
        if self._logged_generation == self._generation:
            return False
        self._logged_generation = self._generation
        return True

    def release(self) -> None:
        self._in_flight = max(0, self._in_flight - 1)

    def observe(self, quota: Quota | None, *, method: str = "GET", path: str = "/", counted: bool = False,
                generation: int | None = None, status: int = 200, retry_after: float | None = None) -> None:
        """Learn from one answer (``counted``: the request holds a reservation of ``generation`` and is still
        in flight). Once a quota is known, a 429 empties the estimate until Retry-After (at least) has passed."""
        now = self._clock()
        self._roll(now)
        if quota is None and (status != 429 or self._estimate is None):
            return
        if quota is not None:
            self.announced = quota
            kind = self.kind(method, path)
            if kind[0] != "HEAD":
                self._counted_kinds.add(kind)
            if quota.window:
                self._window = quota.window
        if self._estimate is not None and generation is not None and generation != self._generation:
            return  # sent in an earlier window: its numbers say nothing about this one
        others = self._in_flight - (1 if counted else 0)
        estimate = (0 if status == 429 or quota is None else quota.remaining) - others
        if quota is not None and quota.reset is not None:
            ends = now + quota.reset
        else:
            ends = now + (self._window or DEFAULT_QUOTA_WINDOW)
        if self._estimate is None or self._reset_at is None:
            self._estimate, self._reset_at = estimate, ends
            return
        # Same window: never raise the estimate (a late answer may carry an older number).
        self._estimate = min(self._estimate, estimate)
        if quota is not None and quota.reset is not None:
            self._reset_at = ends  # the registry says when its window ends
        if status == 429:
            self._reset_at = max(self._reset_at, now + (retry_after if retry_after is not None else 0.0))


@dataclass
class _Token:
    value: str = field(repr=False)
    expires: float


class _NoCookies(httpx.Cookies):
    """A cookie jar that keeps nothing."""

    def extract_cookies(self, response: httpx.Response) -> None:
        return None


class _Client(httpx.AsyncClient):
    """httpx's client without cookies. Registries do not use them (docker, containerd and skopeo keep none), and
    httpx looked for them in every answer through urllib's request machinery (a py-spy profile of 1000 tiny
    images: 4.6 % of the engine's samples). A registry or a redirect target cannot plant one either."""

    @property
    def cookies(self) -> httpx.Cookies:
        return _NO_COOKIES

    @cookies.setter
    def cookies(self, cookies: Any) -> None:
        raise TypeError("imagesync's registry clients keep no cookies")


_NO_COOKIES = _NoCookies()


def _ssl_context(ca_file: str | None) -> ssl.SSLContext:
    # The system trust store (not certifi's bundle) so that corporate CAs installed on the host work,
    # plus the CA file the user names for a registry with a private CA.
    context = ssl.create_default_context()
    if ca_file:
        try:
            context.load_verify_locations(cafile=ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise RegistryError(f"cannot load CA file {ca_file}: {exc}", retryable=False) from exc
    return context


_warned: set[str] = set()


def _warn_once(host: str, message: str) -> None:
    if host not in _warned:
        _warned.add(host)
        log.warning("%s", message)


def _insecure_context() -> ssl.SSLContext:
    # Verifies nothing, so no trust store: create_default_context() would load the system's (~16 ms a registry).
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


Scopes = Sequence[str]


def pull_scope(repo: str) -> str:
    return f"repository:{repo}:pull"


def push_scope(repo: str) -> str:
    return f"repository:{repo}:pull,push"


class RegistryHTTP:
    """All HTTP traffic to one registry host."""

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        limiter: RateLimiter | None = None,
        bandwidth: ByteBucket | None = None,
        quota: QuotaGate | None = None,
        retry: RetryPolicy | None = None,
        max_connections: int = 32,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: httpx.Timeout | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.retry = retry or RetryPolicy()
        # Shared by every RegistryHTTP of one host (several credentials may address one registry).
        self._limiter = limiter
        self._bandwidth = bandwidth  # body bytes up and down (--limit-rate / limitRate)
        self.quota = quota or QuotaGate()  # the request quota the registry announces, if it does
        self._transport = transport
        self._timeout = timeout or httpx.Timeout(connect=15.0, read=120.0, write=120.0, pool=600.0)
        self._max_connections = max_connections
        # Requests wait here, in the order they came, for one of the registry's connections.
        self._slots = asyncio.Semaphore(max_connections)
        self._client: httpx.AsyncClient | None = None
        self._base = ""
        self._origin: tuple[str, str, int | None] | None = None  # (scheme, host, port) of self._base
        self._challenge: Challenge | None = None
        self._tokens: dict[tuple[str, ...], _Token] = {}
        # One fetch per scope set at a time (concurrent requests for one repository share it), and
        # different scope sets in parallel once a login has succeeded: until then one fetch at a time,
        # so that a refused login is seen by every waiting request instead of retried per repository.
        self._token_locks: dict[tuple[str, ...], asyncio.Lock] = {}
        self._first_login = asyncio.Lock()
        self._logged_in = False
        # Token fetches get their own connection pool: sharing the registry's, they evicted its kept-alive
        # connections whenever it was full (measured through a 40 ms link: 44 target connections opened
        # for 7 slots), and each re-opened connection costs a round trip.
        self._token_client: httpx.AsyncClient | None = None
        self._push_repositories: set[str] = set()  # see expect_push
        self._verify: ssl.SSLContext | None = None  # the TLS settings _ensure_ready chose, for the token client
        self._ready = asyncio.Lock()
        # Once the registry has refused our credentials, every further login would be refused too:
        # fail fast instead of sending the same wrong password once per image.
        self._login_refused: RegistryError | None = None
        self._basic_refused = False
        self.requests_sent = 0

    @property
    def login_refused(self) -> bool:
        """The registry (or its token server) refused our credentials at least once this run."""
        return self._login_refused is not None or self._basic_refused

    # -- connection set-up ---------------------------------------------------------------------

    def _make_client(self, verify: ssl.SSLContext) -> httpx.AsyncClient:
        transport = self._transport or HTTP11Transport(verify, self._max_connections)
        return _Client(
            transport=transport, timeout=self._timeout, headers={"User-Agent": USER_AGENT},
            follow_redirects=True,
            event_hooks={"request": [self._refuse_downgrade], "response": [_discard_redirect_body]},
        )

    async def _refuse_downgrade(self, request: httpx.Request) -> None:
        # Sees every request httpx sends, redirects included: those never pass through url().
        if self._origin is not None and self._origin[0] == "https" and request.url.scheme != "https":
            raise RegistryError(f"{self.endpoint.host} is HTTPS but sent us to {_redact(request.url)}: "
                                f"refused (an HTTPS registry is never followed to plain HTTP)", retryable=False)

    def _same_origin(self, url: httpx.URL) -> bool:
        return self._origin is not None and _origin(url) == self._origin

    async def _ensure_ready(self) -> None:
        """Pick the scheme and learn the auth challenge from ``GET /v2/`` (once per run)."""
        if self._client is not None:
            return
        async with self._ready:
            if self._client is not None:
                return
            ep = self.endpoint
            context = _ssl_context(ep.ca_file) if ep.verifies_tls else _insecure_context()
            last_error: Exception | None = None
            for scheme in ep.schemes():
                client = self._make_client(context)
                base = f"{scheme}://{ep.host}"
                try:
                    response = await self._ping(client, base)
                except (httpx.TransportError, RegistryError) as exc:
                    if self._transport is None:  # an injected transport is shared by the candidates
                        await client.aclose()
                    last_error = exc
                    if isinstance(exc, RegistryError):
                        break  # it answered over this scheme, only not as a registry: no other scheme
                    continue
                if scheme == "http" and not ep.plain_http:
                    _warn_once(ep.host, f"{ep.host}: insecure: true and no TLS connection could be made "
                                        f"({_describe(last_error)}): using plain HTTP without credentials. Say "
                                        f"plainHTTP: true or skipTLSVerify: true for this registry instead")
                self._client, self._base, self._origin = client, base, _origin(httpx.URL(base))
                self._verify = context
                if response.status_code == 401:
                    self._challenge = parse_challenge(response.headers.get("www-authenticate", ""))
                return
            raise RegistryError(f"cannot reach registry {ep.host}: {_describe(last_error)}", retryable=True)

    def _check_cleartext(self) -> None:
        """Refuse to put credentials on a plain-HTTP connection the user did not ask for (see Endpoint)."""
        if (self.endpoint.has_credentials and not self.endpoint.plain_http
                and self._origin is not None and self._origin[0] != "https"):
            raise RegistryError(
                f"{self.endpoint.host} answers only plain HTTP and asks for a login: its credentials are not "
                f"sent in clear (insecure: true falls back to plain HTTP without them); if this registry "
                f"really is plain HTTP, say plainHTTP: true for it", code="CLEARTEXT_REFUSED", retryable=False)

    async def _ping(self, client: httpx.AsyncClient, base: str) -> httpx.Response:
        for attempt in range(self.retry.attempts):
            await self._throttle()
            try:
                self.requests_sent += 1
                response = await client.send(client.build_request("GET", f"{base}/v2/"), stream=True)
                try:
                    await read_limited(response, SMALL_BODY_MAX_BYTES)  # drained so the connection is reused
                finally:
                    await response.aclose()
                self._observe(response, "GET", "/v2/")
            except httpx.ConnectError:
                raise  # wrong scheme or nothing listening: let the caller try the next candidate
            except httpx.TransportError:
                if attempt + 1 >= self.retry.attempts:
                    raise
                await asyncio.sleep(self.retry.backoff(attempt))
                continue
            if response.status_code in TRANSIENT_STATUSES and attempt + 1 < self.retry.attempts:
                await asyncio.sleep(self._delay(response, attempt))
                continue
            if response.status_code not in (200, 401):
                raise RegistryError(
                    f"{self.endpoint.host} does not answer as a registry (GET /v2/ -> {response.status_code})",
                    status=response.status_code, retryable=response.status_code in TRANSIENT_STATUSES,
                )
            return response
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        if self._token_client is not None:
            await self._token_client.aclose()
            self._token_client = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _client_for_realm(self, realm: httpx.URL) -> httpx.AsyncClient:
        """The registry's own client when the realm is on its origin, else one kept for token servers."""
        assert self._client is not None and self._verify is not None
        if self._same_origin(realm) or self._transport is not None:
            return self._client
        if self._token_client is None:
            self._token_client = self._make_client(self._verify)
        return self._token_client

    # -- authentication ------------------------------------------------------------------------

    async def _auth_header(self, scopes: Scopes) -> dict[str, str]:
        challenge = self._challenge
        if challenge is None:
            return {}
        if challenge.scheme == "basic":
            if not self.endpoint.has_credentials:
                return {}
            self._check_cleartext()
            return {"Authorization": httpx.BasicAuth(self.endpoint.username or "",
                                                     self.endpoint.password or "")._auth_header}
        if challenge.scheme == "bearer":
            token = await self._token(challenge, scopes)
            return {"Authorization": f"Bearer {token}"} if token else {}
        return {}

    async def warm_up(self, scopes: Scopes) -> None:
        """Set up now what the first request for ``scopes`` would wait for: the scheme and the challenge
        (``GET /v2/``), then the token. No request of its own: each is one the run makes anyway."""
        await self._ensure_ready()
        await self._auth_header(scopes)

    def expect_push(self, repo: str) -> None:
        """Tokens for ``repo`` ask for push as well as pull from the first request on: the manifest HEAD
        that starts an image's copy would otherwise get a pull token, and the first upload a second one
        (measured: about one extra token, and one extra round trip, per target repository)."""
        self._push_repositories.add(repo)

    def _token_key(self, scopes: Scopes) -> tuple[str, ...]:
        if not self._push_repositories:
            return tuple(sorted(set(scopes)))
        widened = set()
        for scope in scopes:
            repo = scope.removeprefix("repository:").removesuffix(":pull")
            widened.add(push_scope(repo) if scope == pull_scope(repo) and repo in self._push_repositories else scope)
        return tuple(sorted(widened))

    async def _token(self, challenge: Challenge, scopes: Scopes) -> str:
        key = self._token_key(scopes)
        cached = self._tokens.get(key)
        if cached and cached.expires > time.monotonic():
            return cached.value
        async with self._token_locks.setdefault(key, asyncio.Lock()):
            cached = self._tokens.get(key)
            if cached and cached.expires > time.monotonic():
                return cached.value
            token: _Token | None = None
            if not self._logged_in:
                async with self._first_login:
                    if not self._logged_in:  # else another scope's fetch logged in while this one waited
                        token = await self._fetch_token(challenge, key)
                        self._logged_in = True
            if token is None:
                token = await self._fetch_token(challenge, key)
            self._tokens[key] = token
            return token.value

    async def _fetch_token(self, challenge: Challenge, scopes: tuple[str, ...]) -> _Token:
        if self._login_refused is not None:
            raise self._login_refused
        realm = self._realm(challenge)
        params: list[tuple[str, str | int | float | bool | None]] = []
        if "service" in challenge.params:
            params.append(("service", challenge.params["service"]))
        params.extend(("scope", scope) for scope in scopes)
        auth: httpx.BasicAuth | None = None
        if self.endpoint.has_credentials:
            self._check_cleartext()
            params.append(("account", self.endpoint.username or ""))
            auth = httpx.BasicAuth(self.endpoint.username or "", self.endpoint.password or "")
        client = self._client_for_realm(realm)
        response: httpx.Response | None = None
        for attempt in range(self.retry.attempts):
            await self._throttle()
            try:
                self.requests_sent += 1
                streamed = await client.send(client.build_request("GET", realm, params=params),
                                             auth=auth, stream=True)
                try:
                    body, more = await read_limited(streamed, SMALL_BODY_MAX_BYTES)
                finally:
                    await streamed.aclose()
                response = _with_body(streamed, body)
            except httpx.TransportError as exc:
                if attempt + 1 >= self.retry.attempts:
                    raise RegistryError(f"token server {realm} unreachable: {_describe(exc)}",
                                        retryable=True) from exc
                await asyncio.sleep(self.retry.backoff(attempt))
                continue
            if response.status_code in TRANSIENT_STATUSES and attempt + 1 < self.retry.attempts:
                await asyncio.sleep(self._delay(response, attempt))
                continue
            break
        assert response is not None
        if response.status_code in (401, 403):
            error = RegistryError(
                f"login to {self.endpoint.host} rejected by its token server "
                f"({response.status_code}{_registry_message(response)})",
                status=response.status_code, code="UNAUTHORIZED", retryable=False,
            )
            self._login_refused = error
            raise error
        if response.status_code == 200 and more:
            raise RegistryError(f"token server for {self.endpoint.host} sent an answer larger than "
                                f"{_size(SMALL_BODY_MAX_BYTES)}: refused", retryable=False)
        if response.status_code != 200:
            raise RegistryError(
                f"token server for {self.endpoint.host} answered {response.status_code}"
                f"{_registry_message(response)}",
                status=response.status_code, retryable=response.status_code in TRANSIENT_STATUSES,
            )
        try:
            body = response.json()
            value = body.get("token") or body.get("access_token")
            expires_in = float(body.get("expires_in") or 60)
        except (ValueError, AttributeError, TypeError) as exc:
            raise RegistryError(f"token server for {self.endpoint.host} sent no usable token",
                                retryable=False) from exc
        if not value:
            raise RegistryError(f"token server for {self.endpoint.host} sent no token", retryable=False)
        # Renew a little before the registry would start refusing the token.
        return _Token(str(value), time.monotonic() + max(expires_in - 10, expires_in / 2))

    def _realm(self, challenge: Challenge) -> httpx.URL:
        """The token realm, if it is one we send requests (and perhaps credentials) to; see the module doc."""
        realm = challenge.params.get("realm")
        if not realm:
            raise RegistryError(f"{self.endpoint.host} asks for a token but names no realm", retryable=False)
        try:
            url = httpx.URL(realm)
        except httpx.InvalidURL as exc:
            raise RegistryError(f"{self.endpoint.host} names an invalid token realm {clip(realm)!r}",
                                retryable=False) from exc
        if url.scheme not in _DEFAULT_PORTS or not url.host or url.userinfo:
            raise RegistryError(f"{self.endpoint.host} names a token realm we do not use: {clip(realm)!r} "
                                f"(an http(s) URL without user info is needed)", retryable=False)
        if url.scheme != "https" and not (self._origin is not None and self._origin[0] == "http"):
            # Basic credentials in clear, or a token a man in the middle could swap: an HTTPS registry's
            # realm must be HTTPS. A plain-HTTP registry sends everything in clear (and gets
            # credentials only when the user said plainHTTP: _check_cleartext).
            raise RegistryError(f"{self.endpoint.host} is HTTPS but its token realm {_redact(url)} is plain "
                                f"HTTP: refused (credentials and tokens would travel in clear)",
                                retryable=False)
        return url

    def _handle_unauthorized(self, response: httpx.Response, scopes: Scopes) -> bool:
        """Learn from a 401 of the registry's own origin. True when a new attempt with fresh credentials is
        worthwhile."""
        challenge = parse_challenge(response.headers.get("www-authenticate", ""))
        if challenge is None:
            return False
        if self._challenge is None or self._challenge.scheme != challenge.scheme:
            self._challenge = challenge
            return challenge.scheme == "bearer" or self.endpoint.has_credentials
        if challenge.scheme == "bearer":
            key = self._token_key(scopes)
            stale = self._tokens.pop(key, None)
            # A token we just fetched was refused: more tokens will not help. An old one may have expired.
            return stale is not None and stale.expires - time.monotonic() < 30
        return False

    # -- requests ------------------------------------------------------------------------------

    async def _throttle(self) -> None:
        if self._limiter is not None:
            await self._limiter.acquire()

    def _observe(self, response: httpx.Response, method: str, path: str, generation: int | None = None) -> None:
        self.quota.observe(parse_quota(response.headers), method=method, path=path,
                           counted=generation is not None, generation=generation, status=response.status_code,
                           retry_after=parse_retry_after(response.headers.get("retry-after")))

    async def _await_quota(self, method: str, path: str) -> int | None:
        """Wait while the registry's announced quota is used up; the reservation's generation, or None
        for a request that does not count against the quota."""
        if not self.quota.counts(method, path):
            return None
        started = time.monotonic()
        while True:
            wait, generation = self.quota.reserve()
            if generation >= 0:
                return generation
            if time.monotonic() - started + wait > self.retry.max_quota_wait:
                announced = self.quota.announced
                what = (f"{announced.remaining} of {announced.limit} left" if announced and announced.limit
                        else "none left")
                raise RegistryError(
                    f"{method} {self._where(path)}: the registry's request quota is used up "
                    f"({what}); it resets in {wait:.0f} s, longer than we wait ({self.retry.max_quota_wait:.0f} s)",
                    status=429, code="TOOMANYREQUESTS", retryable=False)
            if self.quota.first_wait_in_window():
                log.info("%s: announced request quota used up, waiting up to %.1f s for its window to reset",
                         self.endpoint.host, wait)
            # Ask again at least every second: an answer still in flight may announce an earlier reset.
            await asyncio.sleep(min(wait, 1.0))

    def _delay(self, response: httpx.Response, attempt: int) -> float:
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        if retry_after is not None:
            return min(retry_after, self.retry.max_retry_after)
        return self.retry.backoff(attempt)

    def _where(self, path_or_url: str) -> str:
        """A request's target for a message: host and API path, or the absolute URL the registry handed out."""
        if path_or_url.startswith(("http://", "https://")):
            return _redact(path_or_url)
        return f"{self.endpoint.host}{_redact(path_or_url)}"

    def url(self, path_or_url: str) -> httpx.URL:
        """An API path on the registry, or an absolute URL the registry handed out (``Location``, ``Link``)."""
        if path_or_url.startswith(("http://", "https://")):
            url = httpx.URL(path_or_url)
            if self._origin is not None and self._origin[0] == "https" and url.scheme != "https":
                raise RegistryError(f"{self.endpoint.host} is HTTPS but sent us to {_redact(url)}: refused "
                                    f"(an HTTPS registry is never followed to plain HTTP)", retryable=False)
            return url
        if not path_or_url.startswith("/"):
            # Appended to the base, "@host/..." or ".host/..." would change where the request goes.
            raise RegistryError(f"{self.endpoint.host}: not an API path: {clip(path_or_url)!r}", retryable=False)
        return httpx.URL(f"{self._base}{path_or_url}")

    async def request(
        self,
        method: str,
        path: str,
        *,
        scopes: Scopes = (),
        headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
        params: Mapping[str, str] | None = None,
        max_body: int = SMALL_BODY_MAX_BYTES,
    ) -> httpx.Response:
        """Send a request whose body can be replayed, retrying transient failures; body read in full.

        At most ``max_body`` decoded bytes are held: a successful answer that is bigger is an error, a
        bigger error answer is cut (it only feeds a message).
        """
        request_headers = {"Accept-Encoding": ACCEPT_ENCODING, **(headers or {})}
        # stream() retries what fails before the answer arrives; a GET or HEAD whose body breaks off is sent
        # again here (measured: one tags/list cut mid-body failed its whole all-tags rule otherwise).
        attempts = self.retry.attempts if method in ("GET", "HEAD") else 1
        for attempt in range(attempts):
            try:
                async with self.stream(method, path, scopes=scopes, headers=request_headers, content=content,
                                       params=params) as response:
                    body, more = await read_limited(response, max_body)
                break
            except httpx.TransportError as exc:
                if attempt + 1 >= attempts:
                    raise RegistryError(f"{method} {self._where(path)}: {_describe(exc)}",
                                        retryable=True) from exc
                log.debug("retrying %s %s: its answer broke off (%s)", method, _redact(path), _describe(exc))
                await asyncio.sleep(self.retry.backoff(attempt))
        if more and response.is_success:
            raise RegistryError(f"{method} {self._where(path)}: the answer is larger than "
                                f"{_size(max_body)}: refused", code="TOO_LARGE", retryable=False)
        return _with_body(response, body)

    @asynccontextmanager
    async def stream(
        self,
        method: str,
        path: str,
        *,
        scopes: Scopes = (),
        headers: Mapping[str, str] | None = None,
        content: bytes | AsyncIterator[bytes] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> AsyncIterator[httpx.Response]:
        """Open a response whose body the caller reads as a stream.

        Transient failures before the response arrives are retried when the request body can be sent
        again (none, or bytes); a streamed request body is sent once and the caller retries at its level.
        """
        await self._ensure_ready()
        assert self._client is not None
        async with self._slots, self._stream_unlimited(method, path, scopes=scopes, headers=headers,
                                                       content=content, params=params) as response:
            yield response

    @asynccontextmanager
    async def _stream_unlimited(
        self,
        method: str,
        path: str,
        *,
        scopes: Scopes,
        headers: Mapping[str, str] | None,
        content: bytes | AsyncIterator[bytes] | None,
        params: Mapping[str, str] | None,
    ) -> AsyncIterator[httpx.Response]:
        assert self._client is not None
        replayable = content is None or isinstance(content, bytes)
        attempts = self.retry.attempts if replayable else 1
        bucket = self._bandwidth
        if bucket is not None and content is not None and not isinstance(content, bytes):
            content = _metered(content, bucket)  # sent once (not replayable): wrapped once
        reauthed = False
        attempt = 0
        while True:
            await self._throttle()
            url = self.url(path)
            request_headers = dict(headers or {})
            if self._same_origin(url):
                request_headers.update(await self._auth_header(scopes))
            request = self._client.build_request(method, url, headers=request_headers,
                                                 content=content, params=params)
            if bucket is not None and isinstance(content, bytes):
                await bucket.acquire(len(content))
            generation = await self._await_quota(method, path)
            try:
                self.requests_sent += 1
                response = await self._client.send(request, stream=True)
                self._observe(response, method, path, generation)
            except httpx.TransportError as exc:
                attempt += 1
                if attempt >= attempts:
                    raise RegistryError(f"{method} {self._where(path)}: {_describe(exc)}",
                                        retryable=True) from exc
                log.debug("retrying %s %s after %s", method, _redact(path), _describe(exc))
                await asyncio.sleep(self.retry.backoff(attempt - 1))
                continue
            finally:
                if generation is not None:
                    self.quota.release()
            if (response.status_code == 401 and not reauthed and replayable
                    and self._same_origin(response.url)):
                try:
                    body, _ = await read_limited(response, SMALL_BODY_MAX_BYTES)
                finally:
                    await response.aclose()
                reauthed = True
                if self._handle_unauthorized(response, scopes):
                    continue
                if self.endpoint.has_credentials and self._challenge and self._challenge.scheme == "basic":
                    self._basic_refused = True
                yield _with_body(response, body)
                return
            if response.status_code in TRANSIENT_STATUSES and attempt + 1 < attempts:
                try:
                    await read_limited(response, SMALL_BODY_MAX_BYTES)
                finally:
                    await response.aclose()
                delay = self._delay(response, attempt)
                attempt += 1
                log.debug("retrying %s %s after %s in %.2fs", method, _redact(path), response.status_code, delay)
                await asyncio.sleep(delay)
                continue
            if bucket is not None and method != "HEAD":
                assert isinstance(response.stream, httpx.AsyncByteStream)
                response.stream = _MeteredStream(response.stream, bucket)
            try:
                yield response
            finally:
                await response.aclose()
            return


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown error"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text != type(exc).__name__ else text


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return (url.scheme, url.host.lower(), url.port or _DEFAULT_PORTS.get(url.scheme))


def _redact(url: httpx.URL | str) -> str:
    """A URL for a message: without its query, which in upload locations may carry signed state."""
    return clip(str(url).split("?", 1)[0])


def _size(limit: int) -> str:
    return f"{limit // (1024 * 1024)} MiB" if limit >= 1024 * 1024 else f"{limit // 1024} KiB"


async def read_limited(response: httpx.Response, limit: int) -> tuple[bytes, bool]:
    """Up to ``limit`` bytes of the decoded body, and whether there was more (reading stops there).

    We decode gzip and deflate ourselves: httpx inflates each network chunk whole, and one 64 KiB chunk of
    gzip can hold 64 MiB of zeros. zlib's ``max_length`` bounds every step, so a gzip bomb costs at most
    ``limit`` bytes of memory however far it would inflate.
    """
    try:
        data = response.content  # already buffered (by _with_body): nothing more to read
    except httpx.ResponseNotRead:
        pass
    else:
        return data[:limit], len(data) > limit
    encoding = response.headers.get("content-encoding", "").strip().lower()
    decoder: Any = None
    if encoding in ("gzip", "x-gzip"):
        decoder = zlib.decompressobj(zlib.MAX_WBITS | 16)
    elif encoding == "deflate":
        decoder = zlib.decompressobj()
    elif encoding not in ("", "identity"):
        raise RegistryError(f"{response.url.host} answered with Content-Encoding {clip(encoding, 40)!r}, "
                            f"which we did not ask for", retryable=False)
    body = bytearray()
    try:
        async for chunk in response.aiter_raw():
            pending = chunk
            while pending:
                room = limit + 1 - len(body)
                if decoder is None:
                    body += pending[:room]
                    pending = b""
                else:
                    body += decoder.decompress(pending, room)
                    pending = decoder.unconsumed_tail
                if len(body) > limit:
                    return bytes(body[:limit]), True
    except zlib.error as exc:
        raise RegistryError(f"{response.url.host} sent a corrupt {encoding} body: {exc}", retryable=True) from exc
    return bytes(body), False


async def buffered(response: httpx.Response, limit: int = SMALL_BODY_MAX_BYTES) -> httpx.Response:
    """A streamed (error) answer read up to ``limit`` bytes, so that its message can be quoted."""
    body, _ = await read_limited(response, limit)
    return _with_body(response, body)


def _with_body(response: httpx.Response, body: bytes) -> httpx.Response:
    """A closed response holding ``body`` (already decoded), for callers that read ``.content`` and ``.json()``."""
    headers = [(name, value) for name, value in response.headers.multi_items()
               if name.lower() not in ("content-encoding", "content-length", "transfer-encoding")]
    return httpx.Response(response.status_code, headers=headers, content=body, request=response.request)


def _registry_message(response: httpx.Response) -> str:
    """The registry's own error text (``{"errors": [{"code", "message"}]}``), for the user."""
    detail = registry_error_detail(response)
    return f": {detail}" if detail else ""


def registry_error_detail(response: httpx.Response) -> str:
    try:
        body: Any = response.json()
    except (ValueError, httpx.ResponseNotRead):
        return ""
    errors = body.get("errors") if isinstance(body, dict) else None
    if isinstance(errors, list) and errors:
        parts = []
        for error in errors[:3]:
            if isinstance(error, dict):
                code, message = error.get("code", ""), error.get("message", "")
                parts.append(f"{code} {message}".strip())
        return clip("; ".join(p for p in parts if p))
    if isinstance(body, dict) and isinstance(body.get("details"), str):
        return clip(str(body["details"]))
    return ""


def registry_error_code(response: httpx.Response) -> str | None:
    try:
        body: Any = response.json()
    except (ValueError, httpx.ResponseNotRead):
        return None
    errors = body.get("errors") if isinstance(body, dict) else None
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        code = errors[0].get("code")
        return clip(str(code), 60) if code else None
    return None
