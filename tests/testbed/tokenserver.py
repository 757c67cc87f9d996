"""A Docker Registry v2 token server (the ``auth.token`` realm) for tests, running in a thread.

It speaks the protocol of distribution's ``spec/auth/token.md``: ``GET /token?service=S&scope=...`` with
optional Basic credentials, answered with a JWT signed by :class:`~testbed.certs.TokenSigningKey`. Real
registries only accept what it grants, so tests exercise real authorisation decisions, not a stub.
It counts every request, so tests can assert that a client caches tokens and does not retry in a storm.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime as dt
import fnmatch
import json
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

import jwt

from testbed.certs import ServerCertificate, TokenSigningKey
from testbed.net import LOOPBACK

# What an anonymous client (no Authorization header) gets:
#   "none"   -> a token granting nothing (what Docker Hub does for private repositories),
#   "pull"   -> a token granting pull on every repository,
#   "refuse" -> 401, like realms that demand credentials.
AnonymousPolicy = Literal["none", "pull", "refuse"]

TOKEN_PATH = "/token"


@dataclass(frozen=True)
class TokenRequest:
    """One request the token server answered."""

    account: str | None  # the authenticated user; None when anonymous or refused
    service: str
    scopes: tuple[str, ...]
    status: int


@dataclass(frozen=True)
class Scope:
    """``type:name:actions`` (the name may itself contain ``:``, e.g. a ``host:port`` prefix)."""

    type: str
    name: str
    actions: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> Scope | None:
        head, sep, actions = text.rpartition(":")
        resource_type, sep2, name = head.partition(":")
        if not sep or not sep2 or not name:
            return None
        # A resource class such as "repository(plugin)" names the same kind of resource.
        resource_type = resource_type.split("(", 1)[0]
        return cls(resource_type, name, tuple(a for a in actions.split(",") if a))


class _Listener(ThreadingHTTPServer):
    # socketserver's listen backlog is 5: a client opening tens of connections at once (imagesync at --proc 16
    # fetching 50 repositories' tokens) had SYNs dropped and waited out the kernel's 1 s retransmit, a stall no
    # real token server (Docker Hub's, Harbor's: Go or nginx, backlog 4096 here) would cause.
    request_queue_size = 1024


class TokenServer:
    """Issues registry tokens to ``users`` (name -> password).

    By default a valid user gets every action in ``user_actions`` on every repository and ``*`` on the
    catalog. ``acl`` narrows that per user: ``{"alice": {"team/*": ["pull"]}}`` (fnmatch patterns on the
    repository name; a user listed in ``acl`` gets nothing outside it). A wrong password or unknown user is
    answered 401, and so is an anonymous request when ``anonymous="refuse"``.
    """

    def __init__(self, signing_key: TokenSigningKey, *, users: Mapping[str, str],
                 issuer: str = "imagesync-test-issuer", service: str = "imagesync-test-registry",
                 anonymous: AnonymousPolicy = "none",
                 user_actions: Sequence[str] = ("pull", "push", "delete"),
                 acl: Mapping[str, Mapping[str, Sequence[str]]] | None = None,
                 ttl_seconds: int = 300, tls: ServerCertificate | None = None) -> None:
        self.signing_key = signing_key
        self.users = dict(users)
        self.issuer = issuer
        self.service = service
        self.anonymous: AnonymousPolicy = anonymous
        self.user_actions = tuple(user_actions)
        self.acl = {user: dict(rules) for user, rules in (acl or {}).items()}
        self.ttl_seconds = ttl_seconds
        # A slow token server: each GET is answered this much later. With it, max_in_flight shows whether a
        # client fetches tokens for different scopes at once.
        self.answer_delay_s = 0.0
        self.in_flight = 0
        self.max_in_flight = 0
        self._tls = tls
        self._lock = threading.Lock()
        self._requests: list[TokenRequest] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._port = 0  # kept across stop/start so the registry's configured realm stays valid
        self._connections: set[socket.socket] = set()

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> TokenServer:
        """Listen (on the same port as before after a :meth:`stop`) and serve in a thread."""
        if self._server is not None:
            return self
        server = _Listener((LOOPBACK, self._port), _handler_for(self))
        self._port = int(server.server_address[1])
        server.daemon_threads = True
        if self._tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(self._tls.cert_file, self._tls.key_file)
            server.socket = context.wrap_socket(server.socket, server_side=True)
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"token-server-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and cut open keep-alive connections, so the realm is really down."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> TokenServer:
        return self.start() if self._server is None else self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("token server not started")
        return self._port

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def realm(self) -> str:
        """The URL the registry's challenge points clients to."""
        scheme = "https" if self._tls is not None else "http"
        return f"{scheme}://{LOOPBACK}:{self.port}{TOKEN_PATH}"

    # -- observation -----------------------------------------------------------------------------

    @property
    def requests(self) -> list[TokenRequest]:
        """Every request answered so far (a copy), oldest first."""
        with self._lock:
            return list(self._requests)

    @property
    def request_count(self) -> int:
        with self._lock:
            return len(self._requests)

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    # -- decisions -------------------------------------------------------------------------------

    def authenticate(self, authorization: str | None) -> tuple[bool, str | None]:
        """(accepted, account) for an Authorization header value; (True, None) is anonymous."""
        if not authorization:
            return (self.anonymous != "refuse", None)
        scheme, _, encoded = authorization.partition(" ")
        if scheme.lower() != "basic":
            return (False, None)
        try:
            user, sep, password = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return (False, None)
        if not sep or user not in self.users or self.users[user] != password:
            return (False, None)
        return (True, user)

    def allowed_actions(self, account: str | None, scope: Scope) -> tuple[str, ...]:
        """The actions of ``scope`` this account may have."""
        if scope.type == "registry":
            allowed: Sequence[str] = ("*",) if account is not None and scope.name == "catalog" else ()
        elif scope.type != "repository":
            allowed = ()
        elif account is None:
            allowed = ("pull",) if self.anonymous == "pull" else ()
        elif account in self.acl:
            allowed = [action for pattern, actions in self.acl[account].items()
                       if fnmatch.fnmatchcase(scope.name, pattern) for action in actions]
        else:
            allowed = self.user_actions
        return tuple(a for a in scope.actions if a in allowed or "*" in allowed)

    def issue(self, account: str | None, scopes: Sequence[Scope]) -> dict[str, Any]:
        """The JSON body of a successful token response."""
        now = int(time.time())
        access = []
        for scope in scopes:
            granted = self.allowed_actions(account, scope)
            if granted:
                access.append({"type": scope.type, "name": scope.name, "actions": list(granted)})
        claims = {
            "iss": self.issuer,
            "aud": self.service,
            "sub": account or "",
            "iat": now,
            # A little slack: the registry compares against its own clock, truncated to seconds.
            "nbf": now - 5,
            "exp": now + self.ttl_seconds,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        token = jwt.encode(claims, self.signing_key.private_key, algorithm=self.signing_key.algorithm,
                           headers={"x5c": self.signing_key.x5c})
        issued_at = dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {"token": token, "access_token": token, "expires_in": self.ttl_seconds, "issued_at": issued_at}

    def _record(self, request: TokenRequest) -> None:
        with self._lock:
            self._requests.append(request)


def _handler_for(server: TokenServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out in two writes: with Nagle's algorithm the body waited for the client's
        # delayed ACK of the headers, 40 ms per token on loopback (no real token server does that).
        disable_nagle_algorithm = True

        def setup(self) -> None:
            super().setup()
            with server._lock:
                server._connections.add(self.connection)

        def finish(self) -> None:
            with server._lock:
                server._connections.discard(self.connection)
            with contextlib.suppress(OSError):  # the connection may have been cut by stop()
                super().finish()

        def do_GET(self) -> None:
            with server._lock:
                server.in_flight += 1
                server.max_in_flight = max(server.max_in_flight, server.in_flight)
            try:
                if server.answer_delay_s:
                    time.sleep(server.answer_delay_s)
                self._answer_get()
            finally:
                with server._lock:
                    server.in_flight -= 1

        def _answer_get(self) -> None:
            # Each request is recorded before it is answered: a client that has its answer can count on
            # seeing its request in `requests`.
            url = urlsplit(self.path)
            query = parse_qs(url.query)
            service = (query.get("service") or [""])[0]
            raw_scopes = tuple(s for value in query.get("scope", []) for s in value.split(" ") if s)
            if url.path != TOKEN_PATH:
                server._record(TokenRequest(None, service, raw_scopes, 404))
                self._send(404, {"errors": [{"code": "NOT_FOUND", "message": "no such path"}]})
                return
            accepted, account = server.authenticate(self.headers.get("Authorization"))
            if not accepted:
                server._record(TokenRequest(None, service, raw_scopes, 401))
                self._send(401, {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]},
                           {"WWW-Authenticate": 'Basic realm="imagesync test token server"'})
                return
            if service != server.service:
                server._record(TokenRequest(account, service, raw_scopes, 400))
                self._send(400, {"errors": [{"code": "INVALID_REQUEST",
                                             "message": f"unknown service {service!r}"}]})
                return
            scopes = [s for s in (Scope.parse(text) for text in raw_scopes) if s is not None]
            token = server.issue(account, scopes)
            server._record(TokenRequest(account, service, raw_scopes, 200))
            self._send(200, token)

        def do_POST(self) -> None:
            # The OAuth2 form (refresh tokens) is optional; 404 tells clients to fall back to GET.
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            self._send(404, {"errors": [{"code": "NOT_FOUND", "message": "use GET"}]})
            server._record(TokenRequest(None, "", (), 404))

        def _send(self, status: int, body: Mapping[str, Any],
                  headers: Mapping[str, str] | None = None) -> None:
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the request list is the log."""

    return Handler
