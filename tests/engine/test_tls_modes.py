"""Issue 11, point 9: how a registry is reached is the user's explicit choice, never a fallback.

- ``skipTLSVerify``: HTTPS without certificate verification, and nothing else;
- ``plainHTTP``: plain HTTP, credentials included, because the user said so for that registry;
- ``insecure`` (image-syncer's): HTTPS without verification, then plain HTTP *without credentials*.

Against real registries (TLS with a throw-away CA, plain HTTP with Basic auth) and against listeners that
record what reaches them: a man in the middle who breaks the TLS handshake gets no downgrade that carries a
credential.
"""

from __future__ import annotations

import base64
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_helpers import run_sync

from imagesync.engine.config import load_auth
from imagesync.engine.errors import ConfigError, RegistryError
from imagesync.engine.reference import parse_repository
from imagesync.engine.registry import RegistryClient
from imagesync.engine.transport import Endpoint, RegistryHTTP, RetryPolicy
from testbed import seed
from testbed.hostile import HostileServer, Received, Reply, basic_challenge, json_reply
from testbed.net import LOOPBACK
from testbed.registry import MakeRegistry, RegistryProcess

USER, PASSWORD = "alice", "s3cret-password"
BASIC = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
FAST = RetryPolicy(attempts=2, base_delay=0.01, max_delay=0.02)


def client(endpoint: Endpoint) -> RegistryClient:
    return RegistryClient(RegistryHTTP(endpoint, retry=FAST))


async def tags_of(endpoint: Endpoint, repo: str) -> tuple[list[str], str]:
    """The repository's tags, and the base URL the client settled on."""
    registry = client(endpoint)
    try:
        return await registry.list_tags(repo), registry.http._base
    finally:
        await registry.http.aclose()


class RawListener:
    """Accepts TCP connections, keeps the first bytes of each and closes it: a handshake broken by a man in the
    middle. Plain HTTP reaching it would start with a method; TLS starts with a handshake record (0x16)."""

    def __init__(self) -> None:
        self._socket = socket.socket()
        self._socket.bind((LOOPBACK, 0))
        self._socket.listen(16)
        self._socket.settimeout(0.1)
        self.streams: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def host(self) -> str:
        return f"{LOOPBACK}:{self._socket.getsockname()[1]}"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._socket.accept()
            except TimeoutError:
                continue
            with connection:
                connection.settimeout(2)
                try:
                    self.streams.append(connection.recv(65536))
                except OSError:
                    self.streams.append(b"")

    def __enter__(self) -> RawListener:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._socket.close()


@pytest.fixture
def raw_listener() -> Iterator[RawListener]:
    with RawListener() as listener:
        yield listener


# -- skipTLSVerify ---------------------------------------------------------------------------------------------

async def test_skip_tls_verify_reaches_a_tls_registry_with_credentials_over_https(make_registry: MakeRegistry) -> None:
    registry = make_registry("basic+tls")
    seed.push_image(registry, "team/app", "1", seed="skip-verify")
    assert registry.credentials is not None
    username, password = registry.credentials
    tags, base = await tags_of(Endpoint(registry.host, skip_tls_verify=True, username=username,
                                        password=password), "team/app")
    assert tags == ["1"] and base == f"https://{registry.host}"


async def test_without_the_ca_a_tls_registry_fails_and_nothing_falls_back(tls_registry: RegistryProcess) -> None:
    seed.push_image(tls_registry, "team/app", "1", seed="verify")
    with pytest.raises(RegistryError, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
        await tags_of(Endpoint(tls_registry.host), "team/app")
    assert tls_registry.ca_file is not None
    tags, base = await tags_of(Endpoint(tls_registry.host, ca_file=str(tls_registry.ca_file)), "team/app")
    assert tags == ["1"] and base.startswith("https://")


async def test_skip_tls_verify_never_tries_plain_http(basic_registry: RegistryProcess) -> None:
    """A plain-HTTP registry marked skipTLSVerify: HTTPS fails, and no request goes out in clear."""
    since = len(basic_registry.request_log(0))
    with pytest.raises(RegistryError, match="cannot reach registry"):
        await tags_of(Endpoint(basic_registry.host, skip_tls_verify=True, username=USER, password=PASSWORD),
                      "team/app")
    assert basic_registry.request_log(since) == []


# -- plain HTTP with credentials -------------------------------------------------------------------------------

async def test_plain_http_registry_with_credentials_needs_plain_http(basic_registry: RegistryProcess) -> None:
    seed.push_image(basic_registry, "team/app", "1", seed="plain")
    assert basic_registry.credentials is not None
    username, password = basic_registry.credentials
    since = len(basic_registry.request_log(0))
    with pytest.raises(RegistryError, match="plainHTTP: true") as refused:
        await tags_of(Endpoint(basic_registry.host, insecure=True, username=username, password=password),
                      "team/app")
    assert refused.value.code == "CLEARTEXT_REFUSED" and not refused.value.retryable
    assert password not in str(refused.value)
    # What reached the registry: the anonymous ping and tag request, never a login.
    assert all(r.method == "GET" for r in basic_registry.request_log(since))
    tags, base = await tags_of(Endpoint(basic_registry.host, plain_http=True, username=username,
                                        password=password), "team/app")
    assert tags == ["1"] and base == f"http://{basic_registry.host}"


async def test_insecure_alone_still_reaches_an_anonymous_plain_http_registry(registry: RegistryProcess) -> None:
    """image-syncer's documented use of ``insecure: true`` (an HTTP registry) keeps working without credentials."""
    seed.push_image(registry, "team/app", "1", seed="anon")
    tags, base = await tags_of(Endpoint(registry.host, insecure=True), "team/app")
    assert tags == ["1"] and base == f"http://{registry.host}"


def test_sync_through_auth_files(basic_registry: RegistryProcess, registry2: RegistryProcess,
                                 tmp_path: Path) -> None:
    """The auth file's settings end to end: ``insecure`` with credentials on plain HTTP fails the image with a
    message naming ``plainHTTP``; ``plainHTTP: true`` copies it."""
    seed.push_image(basic_registry, "team/app", "1", seed="files")
    assert basic_registry.credentials is not None
    username, password = basic_registry.credentials
    images = {f"{basic_registry.host}/team/app:1": f"{registry2.host}/team/app"}
    login = {"username": username, "password": password}
    code, result = run_sync(tmp_path, images, {basic_registry.host: {**login, "insecure": True},
                                               registry2.host: {"plainHTTP": True}}, name="insecure")
    assert code == 1 and "plainHTTP: true" in str(result) and password not in str(result)
    code, _ = run_sync(tmp_path, images, {basic_registry.host: {**login, "plainHTTP": True},
                                          registry2.host: {"plainHTTP": True}}, name="plain")
    assert code == 0 and seed.list_tags(registry2, "team/app") == ["1"]


def test_auth_file_settings_load_and_contradictions_are_refused(tmp_path: Path) -> None:
    auth = tmp_path / "auth.yaml"
    auth.write_text("a.io:\n  skipTLSVerify: true\nb.io:\n  plainHTTP: true\n  username: u\n  password: p\n"
                    "c.io:\n  insecure: true\n")
    table = load_auth(auth)
    a, b, c = (table.lookup(parse_repository(f"{h}/x/y")) for h in ("a.io", "b.io", "c.io"))
    assert a is not None and a.skip_tls_verify and not a.plain_http and not a.insecure
    assert b is not None and b.plain_http and not b.skip_tls_verify
    assert c is not None and c.insecure and not (c.plain_http or c.skip_tls_verify)
    for text, message in [
        ("a.io:\n  skipTLSVerify: true\n  plainHTTP: true\n", "exclude each other"),
        ("a.io:\n  plainHTTP: 'yes'\n", "plainHTTP must be true or false"),
        ("a.io:\n  skipTLSVerify: 1\n", "skipTLSVerify must be true or false"),
    ]:
        auth.write_text(text)
        with pytest.raises(ConfigError, match=message):
            load_auth(auth)


def test_endpoint_repr_holds_no_credential() -> None:
    endpoint = Endpoint("r.io", username="robot-user", password=PASSWORD)
    assert PASSWORD not in repr(endpoint) and "robot-user" not in repr(endpoint)


# -- a broken handshake never downgrades a credential -----------------------------------------------------------

@pytest.mark.parametrize("mode", ["verify", "skip_tls_verify"])
async def test_broken_handshake_does_not_downgrade(raw_listener: RawListener, mode: str) -> None:
    endpoint = Endpoint(raw_listener.host, skip_tls_verify=mode == "skip_tls_verify", username=USER,
                        password=PASSWORD)
    with pytest.raises(RegistryError, match="cannot reach registry"):
        await tags_of(endpoint, "team/app")
    assert raw_listener.streams, "the client never connected"
    # Every connection began a TLS handshake (a record of type 22): not one plain HTTP request.
    assert all(stream[:1] == b"\x16" for stream in raw_listener.streams if stream)
    assert not any(b"GET " in stream or b"Authorization" in stream for stream in raw_listener.streams)


async def test_insecure_falls_back_to_plain_http_without_credentials(raw_listener: RawListener) -> None:
    """image-syncer's ``insecure``: after the broken handshake it tries plain HTTP, anonymously."""
    with pytest.raises(RegistryError):
        await tags_of(Endpoint(raw_listener.host, insecure=True, username=USER, password=PASSWORD), "team/app")
    assert any(stream.startswith(b"GET /v2/ ") for stream in raw_listener.streams)
    assert not any(b"Authorization" in stream or BASIC.encode() in stream for stream in raw_listener.streams)


@pytest.mark.parametrize("challenge", ["basic", "bearer"])
async def test_man_in_the_middle_speaking_http_gets_no_credentials(challenge: str) -> None:
    """The attacker answers the TLS ClientHello in plain HTTP, so ``insecure`` falls back to it, and then asks
    for a login: with Basic, or with a token realm of its own. Neither the password nor a Basic-authenticated
    token request reaches it; the image fails naming ``plainHTTP``."""
    def attacker(request: Received) -> Reply:
        if request.path == "/token":
            return json_reply('{"token": "t"}')
        if challenge == "basic":
            return basic_challenge()
        return Reply(401, {"WWW-Authenticate": f'Bearer realm="{server.url}/token",service="s"'})

    with HostileServer(attacker) as server:
        with pytest.raises(RegistryError, match="plainHTTP: true"):
            await tags_of(Endpoint(server.host, insecure=True, username=USER, password=PASSWORD), "team/app")
        assert server.received
        assert all(r.authorization is None for r in server.received)
        assert "/token" not in [r.path for r in server.received]
        # The same attacker with plainHTTP said by the user does get the login: that is what plainHTTP means.
        with pytest.raises(RegistryError):
            await tags_of(Endpoint(server.host, plain_http=True, username=USER, password=PASSWORD), "team/app")
        assert any(r.authorization == BASIC for r in server.received)


async def test_skip_tls_verify_against_plain_http_sends_nothing_in_clear() -> None:
    with HostileServer(lambda request: basic_challenge()) as server:
        with pytest.raises(RegistryError, match="cannot reach registry"):
            await tags_of(Endpoint(server.host, skip_tls_verify=True, username=USER, password=PASSWORD), "x/y")
        assert server.received == []  # the ClientHello is no HTTP request: nothing reached the handler
