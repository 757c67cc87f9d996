"""A scripted HTTP(S) listener for attack tests: it answers what the test says and records what it was sent.

It plays a hostile registry (lying ``Location``, ``Link`` and ``realm``, decompression bombs, endless pages) or
the foreign host such a registry points us to (:class:`Witness`), so a test can assert what reached it,
Authorization included. Each listener is a real HTTP server on 127.0.0.1 with its own port, served from a thread
of the test process; the engine scopes credentials to scheme, host and port, so two listeners are two hosts.
"""

from __future__ import annotations

import contextlib
import functools
import ssl
import sys
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

from testbed.certs import ServerCertificate
from testbed.net import LOOPBACK


@dataclass(frozen=True)
class Received:
    """One request the server read."""

    method: str
    target: str  # path and query, as sent
    headers: dict[str, str]  # lower-case names
    body: bytes = b""

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def authorization(self) -> str | None:
        return self.headers.get("authorization")


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    # Instead of ``body``: chunks made on demand (a huge body never held in the test's memory); the
    # headers then say the length (or the connection closes when the chunks run out).
    stream: Callable[[], Iterable[bytes]] | None = None


Handler = Callable[[Received], Reply]


class HostileServer:
    def __init__(self, handler: Handler, *, tls: ServerCertificate | None = None) -> None:
        self.handler = handler
        self._tls = tls
        self._lock = threading.Lock()
        self._received: list[Received] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Self:
        server = _Server((LOOPBACK, 0), _handler_for(self))
        server.daemon_threads = True
        if self._tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(self._tls.cert_file, self._tls.key_file)
            server.socket = context.wrap_socket(server.socket, server_side=True)
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self._server is not None and self._thread is not None
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    @property
    def host(self) -> str:
        assert self._server is not None
        return f"{LOOPBACK}:{self._server.server_address[1]}"

    @property
    def url(self) -> str:
        return f"{'https' if self._tls else 'http'}://{self.host}"

    @property
    def received(self) -> list[Received]:
        """Every request so far (a copy), oldest first."""
        with self._lock:
            return list(self._received)

    def _record(self, request: Received) -> None:
        with self._lock:
            self._received.append(request)


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up on us (closing a connection it did not read to the end resets it) is
        # no error of the server's: no traceback on standard error, where tests look for ours.
        if isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            return
        super().handle_error(request, client_address)


def _handler_for(server: HostileServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out in separate writes: with Nagle's algorithm, the body of every answer on a
        # kept-alive connection would wait for the client's delayed ACK (40 ms a request).
        disable_nagle_algorithm = True

        def _serve(self) -> None:
            request = Received(self.command, self.path, {k.lower(): v for k, v in self.headers.items()},
                               self._body())
            server._record(request)
            reply = server.handler(request)
            self.send_response(reply.status)
            length = {} if reply.stream is not None else {"Content-Length": str(len(reply.body))}
            headers = {**length, **reply.headers}
            if "Content-Length" not in headers:
                self.close_connection = True  # the body ends when the connection does
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD":
                # The client may stop reading early (that is the point of a cap): not an error here.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError, ssl.SSLError):
                    for chunk in reply.stream() if reply.stream is not None else (reply.body,):
                        self.wfile.write(chunk)

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                data = bytearray()
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        self.rfile.readline()
                        return bytes(data)
                    data += self.rfile.read(size)
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: ``received`` is the log."""

    return Handler


class Witness(HostileServer):
    """The other host a hostile registry points us to. It records every request (``received``, Authorization
    included) and answers each one with a lure: 401 and a Bearer challenge naming a token realm on itself, so
    a client that learned challenges from a foreign host would send it the registry's credentials."""

    def __init__(self, *, tls: ServerCertificate | None = None) -> None:
        super().__init__(self._lure, tls=tls)

    def _lure(self, request: Received) -> Reply:
        return Reply(401, {"WWW-Authenticate": f'Bearer realm="{self.url}/token",service="witness"',
                           "Content-Type": "application/json"}, b'{"errors": [{"code": "UNAUTHORIZED"}]}')

    def authorizations(self) -> list[Received]:
        """The requests that carried an Authorization header: none, unless a credential leaked here."""
        return [r for r in self.received if r.authorization is not None]


@functools.cache
def gzip_bomb(inflated: int, chunk: int = 1024 * 1024) -> bytes:
    """A gzip stream of ``inflated`` zero bytes (about inflated / 1000 bytes long), built without ever
    holding the inflated bytes (once per process: 200 MiB take a second)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    zeros = bytes(chunk)
    parts = [compressor.compress(zeros) for _ in range(inflated // chunk)]
    parts.append(compressor.flush())
    return b"".join(parts)


def endless_bytes(size: int, fill: bytes = b"{", chunk: int = 1024 * 1024) -> Callable[[], Iterator[bytes]]:
    """A :attr:`Reply.stream` of ``size`` bytes of ``fill``, made a chunk at a time."""
    block = fill * (chunk // len(fill))

    def chunks() -> Iterator[bytes]:
        left = size
        while left > 0:
            yield block[:left]
            left -= len(block)

    return chunks


def basic_challenge() -> Reply:
    return Reply(401, {"WWW-Authenticate": 'Basic realm="hostile"'})


def json_reply(body: str, status: int = 200, **headers: str) -> Reply:
    return Reply(status, {"Content-Type": "application/json", **headers}, body.encode())


def paths(received: list[Received]) -> Iterator[str]:
    return (r.path for r in received)
