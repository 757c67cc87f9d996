"""Loopback ports, and a server thread for test proxies."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Awaitable, Callable

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

LOOPBACK = "127.0.0.1"


def free_port(address: str = LOOPBACK) -> int:
    """A TCP port on ``address`` (default 127.0.0.1) that nobody listens on right now.

    Another process may take it before our server binds it (pytest-xdist runs workers in parallel);
    callers that start a server on it retry with a new port when the bind fails.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((address, 0))
        port: int = sock.getsockname()[1]
        return port


class ThreadedServer:
    """An asyncio TCP server on 127.0.0.1 in a thread of its own, for the test proxies (the test's own code, and the
    engine's event loop, stay free to block or run while it serves)."""

    def __init__(self, handler: Handler, name: str, *, limit: int = 64 * 1024) -> None:
        self._handler = handler
        self._limit = limit
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=name)
        self.port = 0

    def start(self) -> int:
        """Start serving; the port."""
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError(f"{self._thread.name} did not start")
        return self.port

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def serve() -> None:
            server = await asyncio.start_server(self._handler, LOOPBACK, 0, limit=self._limit)
            self.port = server.sockets[0].getsockname()[1]
            self._started.set()
            await server.serve_forever()

        with contextlib.suppress(asyncio.CancelledError):
            self._loop.run_until_complete(serve())
        pending = asyncio.all_tasks(self._loop)
        for task in pending:
            task.cancel()
        self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self._loop.close()

    def call(self, function: Callable[[], None]) -> None:
        """Run ``function`` in the server's loop and wait (up to 5 s) until it ran."""
        done = threading.Event()

        def run() -> None:
            function()
            done.set()
        self._loop.call_soon_threadsafe(run)
        done.wait(5)

    def stop(self) -> None:
        """Stop serving: every connection still open is reset."""
        def cancel_all() -> None:
            for task in asyncio.all_tasks():
                task.cancel()
        self._loop.call_soon_threadsafe(cancel_all)
        self._thread.join(10)
