"""The one HTTP layer per registry host.

Every request to a registry goes through :class:`RegistryHTTP`, which owns, for that host: the pooled
keep-alive connections, the scheme (see :class:`Endpoint`: HTTPS unless the user said otherwise), authentication
(anonymous, Basic, or Bearer tokens from the ``WWW-Authenticate`` challenge, cached per scope until they
expire), the request-rate limit (``--qps``) and retries of transient failures with backoff.

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
import email.utils
import logging
import random
import re
import ssl
import time
import zlib
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx

from imagesync.engine.errors import RegistryError, clip

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
    except (TypeError, ValueError):
        return None
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


@dataclass
class _Token:
    value: str = field(repr=False)
    expires: float


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
    context = ssl.create_default_context()
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
        retry: RetryPolicy | None = None,
        max_connections: int = 32,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: httpx.Timeout | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.retry = retry or RetryPolicy()
        # Shared by every RegistryHTTP of one host (several credentials may address one registry).
        self._limiter = limiter
        self._transport = transport
        self._timeout = timeout or httpx.Timeout(connect=15.0, read=120.0, write=120.0, pool=600.0)
        self._limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        # Requests wait here rather than in httpcore's pool, whose queue handling rescans every
        # connection for every waiting request (measured: a third of the CPU of a many-image sync).
        self._slots = asyncio.Semaphore(max_connections)
        self._client: httpx.AsyncClient | None = None
        self._base = ""
        self._origin: tuple[str, str, int | None] | None = None  # (scheme, host, port) of self._base
        self._challenge: Challenge | None = None
        self._tokens: dict[tuple[str, ...], _Token] = {}
        self._token_lock = asyncio.Lock()
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
        transport = self._transport or httpx.AsyncHTTPTransport(verify=verify, limits=self._limits, retries=0)
        return httpx.AsyncClient(
            transport=transport, timeout=self._timeout, headers={"User-Agent": USER_AGENT},
            follow_redirects=True, event_hooks={"request": [self._refuse_downgrade]},
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
        if self._client is not None:
            await self._client.aclose()
            self._client = None

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

    async def _token(self, challenge: Challenge, scopes: Scopes) -> str:
        key = tuple(sorted(set(scopes)))
        cached = self._tokens.get(key)
        if cached and cached.expires > time.monotonic():
            return cached.value
        # One fetch at a time per registry: cheap (tokens are cached), and a refused login is then
        # seen by every waiting request instead of being retried once per repository.
        async with self._token_lock:
            cached = self._tokens.get(key)
            if cached and cached.expires > time.monotonic():
                return cached.value
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
        assert self._client is not None
        response: httpx.Response | None = None
        for attempt in range(self.retry.attempts):
            await self._throttle()
            try:
                self.requests_sent += 1
                streamed = await self._client.send(self._client.build_request("GET", realm, params=params),
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
            key = tuple(sorted(set(scopes)))
            stale = self._tokens.pop(key, None)
            # A token we just fetched was refused: more tokens will not help. An old one may have expired.
            return stale is not None and stale.expires - time.monotonic() < 30
        return False

    # -- requests ------------------------------------------------------------------------------

    async def _throttle(self) -> None:
        if self._limiter is not None:
            await self._limiter.acquire()

    def _delay(self, response: httpx.Response, attempt: int) -> float:
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        if retry_after is not None:
            return min(retry_after, self.retry.max_retry_after)
        return self.retry.backoff(attempt)

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
        async with self.stream(method, path, scopes=scopes, headers=request_headers, content=content,
                               params=params) as response:
            try:
                body, more = await read_limited(response, max_body)
            except httpx.TransportError as exc:
                raise RegistryError(f"{method} {self.endpoint.host}{_redact(path)}: {_describe(exc)}",
                                    retryable=True) from exc
        if more and response.is_success:
            raise RegistryError(f"{method} {self.endpoint.host}{_redact(path)}: the answer is larger than "
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
            try:
                self.requests_sent += 1
                response = await self._client.send(request, stream=True)
            except httpx.TransportError as exc:
                attempt += 1
                if attempt >= attempts:
                    raise RegistryError(f"{method} {self.endpoint.host}{_redact(path)}: {_describe(exc)}",
                                        retryable=True) from exc
                log.debug("retrying %s %s after %s", method, _redact(path), _describe(exc))
                await asyncio.sleep(self.retry.backoff(attempt - 1))
                continue
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
