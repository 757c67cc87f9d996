"""Real registries for tests: Debian's ``docker-registry`` (CNCF distribution 2.8) as a subprocess.

One :class:`RegistryProcess` is one registry on 127.0.0.1 with its own port, storage, config and logs,
in plain HTTP, htpasswd Basic auth, TLS (own CA) or token-auth mode (with a :class:`TokenServer`).
Its access log (Apache combined format on stdout, one line per request, written when the response
completes) is kept in a file so tests can count the requests a client made: :meth:`request_log`.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import shutil
import ssl
import subprocess
import time
import uuid
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, NamedTuple, Protocol
from urllib.parse import urlsplit

import bcrypt
import httpx
import yaml

from testbed.certs import CertificateAuthority, TokenSigningKey
from testbed.net import LOOPBACK, free_port
from testbed.tokenserver import AnonymousPolicy, TokenServer

REGISTRY_BINARY = "docker-registry"

AuthMode = Literal["none", "basic", "token"]

# The fixture-level names for common set-ups (``make_registry(mode)``), as RegistryProcess options.
RegistryMode = Literal["plain", "basic", "tls", "token", "basic+tls", "token+tls"]
MODE_OPTIONS: dict[str, dict[str, Any]] = {
    "plain": {},
    "basic": {"auth": "basic"},
    "tls": {"tls": True},
    "token": {"auth": "token"},
    "basic+tls": {"auth": "basic", "tls": True},
    "token+tls": {"auth": "token", "tls": True},
}

_START_TIMEOUT_S = 15.0
_SYNC_TIMEOUT_S = 5.0

# Apache combined log format, as gorilla/handlers writes it for distribution:
# 127.0.0.1 - - [24/Nov/2026:15:15:10 +0000] "GET /v2/ HTTP/1.1" 200 2 "" "curl/7.88.1"
_ACCESS_LINE = re.compile(
    r'^(?P<remote>\S+) \S+ (?P<user>\S+) \[(?P<time>[^\]]+)\] '
    r'"(?P<method>[A-Z]+) (?P<target>\S+) (?P<proto>[^"]+)" (?P<status>\d{3}) (?P<size>\d+|-)'
)
# Requests the test bed itself sends to find the end of the log; never reported.
_SYNC_PREFIX = "/v2/_testbed/sync/"


class LoggedRequest(NamedTuple):
    """One line of a registry's access log.

    ``path`` is without the query string, so it compares equal across pages and upload states; the query
    (``digest=`` of an upload's final PUT, ``mount=``/``from=`` of a mount, ``n=``/``last=``) is in ``query``.
    """

    method: str
    path: str
    status: int
    query: str = ""

    @property
    def target(self) -> str:
        """The request target as sent: path and query."""
        return f"{self.path}?{self.query}" if self.query else self.path


class MakeRegistry(Protocol):
    """The ``make_registry`` fixture: ``make_registry("token", anonymous="pull")``."""

    def __call__(self, mode: RegistryMode = "plain", **options: Any) -> RegistryProcess: ...


class RegistryStartError(RuntimeError):
    """The registry process exited or never answered ``GET /v2/``."""


def registry_binary() -> str | None:
    """The path of ``docker-registry``, or None when it is not installed."""
    return shutil.which(REGISTRY_BINARY)


def bcrypt_htpasswd(users: Mapping[str, str]) -> str:
    """An htpasswd file body with bcrypt entries (the only format distribution accepts).

    Cost 4, the minimum: the registry runs bcrypt on every request, and at the usual cost of 10 it
    would spend ~50 ms of CPU per request, which would dominate test run time.
    """
    lines = [f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()}"
             for user, password in users.items()]
    return "\n".join(lines) + "\n"


def _kill(process: subprocess.Popen[bytes]) -> None:
    """Last-resort cleanup for a registry nobody stopped (garbage collection or interpreter exit)."""
    if process.poll() is None:
        process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=5)


class RegistryProcess:
    """A running ``docker-registry serve``; use as a context manager or call :meth:`start`/:meth:`stop`.

    Attributes once started: :attr:`host` (``127.0.0.1:PORT``), :attr:`url` (``http(s)://127.0.0.1:PORT``),
    :attr:`username`/:attr:`password` (None without auth), :attr:`ca_file` (None without TLS),
    :attr:`token_server` (None unless ``auth="token"``), :attr:`storage_dir`.
    """

    def __init__(self, workdir: Path, *, auth: AuthMode = "none", tls: bool = False,
                 username: str = "imagesync", password: str | None = None,
                 extra_users: Mapping[str, str] | None = None,
                 anonymous: AnonymousPolicy = "none",
                 token_acl: Mapping[str, Mapping[str, list[str]]] | None = None,
                 token_ttl_seconds: int = 300,
                 ca: CertificateAuthority | None = None,
                 storage_dir: Path | None = None,
                 schema1: bool = False,
                 log_level: str = "info",
                 extra_config: Mapping[str, Any] | None = None,
                 binary: str | None = None,
                 address: str = LOOPBACK) -> None:
        self.workdir = workdir
        # Where it listens: loopback, or (for pods on a test cluster's node) the node's bridge address.
        self.address = address
        workdir.mkdir(parents=True, exist_ok=True)
        self.auth: AuthMode = auth
        self.tls = tls
        self.username: str | None = username if auth != "none" else None
        self.password: str | None = (password or secrets.token_urlsafe(12)) if auth != "none" else None
        self.users: dict[str, str] = {}
        if self.username is not None and self.password is not None:
            self.users = {self.username: self.password, **(extra_users or {})}
        self.storage_dir = storage_dir or workdir / "storage"
        self.config_file = workdir / "config.yml"
        self.access_log_file = workdir / "access.log"
        self.stderr_file = workdir / "registry.log"
        self.binary = binary or registry_binary() or REGISTRY_BINARY
        self.port: int | None = None
        self.ca_file: Path | None = None
        self.token_server: TokenServer | None = None
        self._ca = ca
        self._anonymous: AnonymousPolicy = anonymous
        self._token_acl = token_acl
        self._token_ttl_seconds = token_ttl_seconds
        self._schema1 = schema1
        self._log_level = log_level
        self._extra_config = dict(extra_config or {})
        self._process: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self._ssl_context: ssl.SSLContext | None = None
        self._mark = 0
        self._prepared = False
        # Signs upload state tokens: kept across restarts so an upload can resume, as with a real registry.
        self._http_secret = secrets.token_hex(16)

    # -- derived names ---------------------------------------------------------------------------

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def host(self) -> str:
        if self.port is None:
            raise RuntimeError("registry not started")
        return f"{self.address}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}"

    @property
    def credentials(self) -> tuple[str, str] | None:
        """(username, password) of the primary account, None without auth."""
        if self.username is None or self.password is None:
            return None
        return (self.username, self.password)

    @property
    def verify(self) -> ssl.SSLContext | bool:
        """What to pass as httpx's ``verify=`` to talk to this registry."""
        if self._ssl_context is not None:
            return self._ssl_context
        if self.ca_file is not None:
            self._ssl_context = ssl.create_default_context(cafile=str(self.ca_file))
            return self._ssl_context
        return True

    @property
    def pid(self) -> int | None:
        """The registry process id while started."""
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def __repr__(self) -> str:
        where = self.url if self.port is not None else "not started"
        return f"<RegistryProcess {self.auth}{'+tls' if self.tls else ''} {where}>"

    # -- lifecycle -------------------------------------------------------------------------------

    def _prepare(self) -> None:
        """Certificates, htpasswd file and token server: made once, kept across restarts."""
        if self._prepared:
            return
        if self.tls:
            ca = self._ca or CertificateAuthority(self.workdir / "pki")
            self._server_cert = ca.issue_server(f"registry-{uuid.uuid4().hex[:8]}")
            self.ca_file = ca.ca_file
        if self.auth == "basic":
            self._htpasswd_file = self.workdir / "htpasswd"
            self._htpasswd_file.write_text(bcrypt_htpasswd(self.users))
        if self.auth == "token":
            self._signing_key = TokenSigningKey(self.workdir / "token")
            self.token_server = TokenServer(
                self._signing_key, users=self.users, anonymous=self._anonymous,
                acl=self._token_acl, ttl_seconds=self._token_ttl_seconds,
                tls=self._server_cert if self.tls else None,
            ).start()
        self._prepared = True

    def config(self) -> dict[str, Any]:
        """The registry's configuration (written to :attr:`config_file` on start)."""
        if self.port is None:
            raise RuntimeError("no port chosen yet")
        config: dict[str, Any] = {
            "version": 0.1,
            "log": {"level": self._log_level, "formatter": "text", "accesslog": {"disabled": False}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.storage_dir)},
                "delete": {"enabled": True},
                # The in-memory descriptor cache is what production registries run with.
                "cache": {"blobdescriptor": "inmemory"},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {"addr": f"{self.address}:{self.port}", "secret": self._http_secret},
        }
        if self.tls:
            config["http"]["tls"] = {"certificate": str(self._server_cert.cert_file),
                                     "key": str(self._server_cert.key_file)}
        if self.auth == "basic":
            config["auth"] = {"htpasswd": {"realm": "imagesync-test", "path": str(self._htpasswd_file)}}
        elif self.auth == "token":
            assert self.token_server is not None
            config["auth"] = {"token": {
                "realm": self.token_server.realm,
                "service": self.token_server.service,
                "issuer": self.token_server.issuer,
                "rootcertbundle": str(self._signing_key.cert_file),
            }}
        if self._schema1:
            config["compatibility"] = {"schema1": {"enabled": True}}
        _deep_merge(config, self._extra_config)
        return config

    def start(self) -> RegistryProcess:
        """Start (or restart on the same port and storage) and wait until ``GET /v2/`` answers.

        A restart takes a new port only if another process took the old one meanwhile.
        """
        if self.running:
            return self
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def _start(self) -> None:
        self._prepare()
        keep_port = self.port is not None
        for attempt in range(5):
            if not keep_port or attempt > 0:
                self.port = free_port(self.address)
            self.config_file.write_text(yaml.safe_dump(self.config(), sort_keys=False))
            if self._launch():
                break
        else:
            raise RegistryStartError(f"could not bind a port for {self!r}: {self._stderr_tail()}")
        self.clear_log()

    def _launch(self) -> bool:
        """Start the process; False when the port was taken meanwhile, raises on other failures."""
        with self.access_log_file.open("ab") as stdout, self.stderr_file.open("ab") as stderr:
            process = subprocess.Popen([self.binary, "serve", str(self.config_file)], stdout=stdout,
                                       stderr=stderr, stdin=subprocess.DEVNULL, cwd=self.workdir)
        self._process = process
        self._finalizer = weakref.finalize(self, _kill, process)
        deadline = time.monotonic() + _START_TIMEOUT_S
        with httpx.Client(verify=self.verify, timeout=1.0) as client:
            while time.monotonic() < deadline:
                if process.poll() is not None:
                    self._forget_process()
                    if "address already in use" in self._stderr_tail():
                        return False
                    raise RegistryStartError(f"{self.binary} exited with {process.returncode}: "
                                             f"{self._stderr_tail()}")
                try:
                    response = client.get(f"{self.url}/v2/")
                except httpx.TransportError:
                    time.sleep(0.01)
                    continue
                if response.status_code in (200, 401):
                    return True
                time.sleep(0.01)
        self.stop()
        raise RegistryStartError(f"{self!r} did not answer GET /v2/ within {_START_TIMEOUT_S} s: "
                                 f"{self._stderr_tail()}")

    def _stderr_tail(self, lines: int = 5) -> str:
        try:
            return " | ".join(self.stderr_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def _forget_process(self) -> None:
        if self._finalizer is not None:
            self._finalizer.detach()
        self._finalizer = None
        self._process = None

    def stop(self) -> None:
        """Stop the registry process and wait for it; storage and logs stay for another :meth:`start`."""
        process = self._process
        if process is not None:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=5)
            self._forget_process()

    def close(self) -> None:
        """Stop the registry and its token server."""
        self.stop()
        if self.token_server is not None:
            self.token_server.stop()

    def __enter__(self) -> RegistryProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- access log ------------------------------------------------------------------------------

    def _all_requests(self) -> list[LoggedRequest]:
        try:
            text = self.access_log_file.read_text(errors="replace")
        except FileNotFoundError:
            return []
        requests = []
        # A line without its newline is still being written: leave it for the next read.
        for line in text.splitlines(keepends=True):
            if not line.endswith("\n"):
                break
            match = _ACCESS_LINE.match(line)
            if match is None:
                continue
            target = urlsplit(match["target"])
            if target.path.startswith(_SYNC_PREFIX):
                continue
            requests.append(LoggedRequest(match["method"], target.path, int(match["status"]), target.query))
        return requests

    def _sync_log(self) -> None:
        """Wait until every request answered so far is in the access log file.

        The registry writes a request's line once its handler returns, so a client can hold the response
        a moment before the line exists. A marker request sent now is logged after every earlier completed
        request; once the marker's line is in the file, so are theirs.
        """
        if not self.running:
            return
        marker = f"{_SYNC_PREFIX}{uuid.uuid4().hex}"
        with contextlib.suppress(httpx.TransportError):
            httpx.get(f"{self.url}{marker}", verify=self.verify, timeout=5.0)
        deadline = time.monotonic() + _SYNC_TIMEOUT_S
        while time.monotonic() < deadline:
            with contextlib.suppress(FileNotFoundError):
                if marker.encode() in self.access_log_file.read_bytes()[-65536:]:
                    return
            time.sleep(0.005)
        raise RuntimeError(f"{self!r}: access log did not show the marker request {marker}")

    def log_mark(self) -> int:
        """A position in the access log: pass it to :meth:`request_log` to see only later requests."""
        self._sync_log()
        return len(self._all_requests())

    def clear_log(self) -> None:
        """Make :meth:`request_log` (without ``since``) report only requests from now on."""
        self._mark = self.log_mark()

    def request_log(self, since: int | None = None) -> list[LoggedRequest]:
        """Requests the registry answered after ``since`` (a :meth:`log_mark`) or the last :meth:`clear_log`.

        The start-up readiness probes are never included (``start`` clears the log).
        """
        self._sync_log()
        return self._all_requests()[self._mark if since is None else since:]


def _deep_merge(into: dict[str, Any], overrides: Mapping[str, Any]) -> None:
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value)
        else:
            into[key] = value
