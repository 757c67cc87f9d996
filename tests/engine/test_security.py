"""Issue 11, findings 1-3, at the engine's seams: a hostile registry cannot take our credentials elsewhere,
address another repository through the names it lists, or exhaust our memory or time. Each test is an attack.

The attacker is :class:`testbed.hostile.HostileServer` (a scripted listener that records what it receives), alone or
in front of a real registry at the transport seam. ``test_hostile_registry.py`` runs the same attacks through the
installed CLI in one run, and measures the process's peak RSS under decompression bombs.
"""

from __future__ import annotations

import base64
import json
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import yaml
from cli_helpers import auth_for

from imagesync.engine import registry as registry_module
from imagesync.engine.config import load_auth
from imagesync.engine.copy import SyncOptions, sync
from imagesync.engine.errors import RegistryError
from imagesync.engine.reference import Repository
from imagesync.engine.referrers import SignatureGate
from imagesync.engine.registry import RegistryClient
from imagesync.engine.rules import parse_rules
from imagesync.engine.signatures import MAX_PAYLOAD_BYTES, SignedPayload
from imagesync.engine.stats import SyncStats
from imagesync.engine.transport import Endpoint, RegistryHTTP, RetryPolicy
from testbed import seed
from testbed.certs import CertificateAuthority
from testbed.hostile import HostileServer, Received, Reply, basic_challenge, gzip_bomb, json_reply
from testbed.registry import RegistryProcess

USER, PASSWORD = "alice", "s3cret-password"
BASIC = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
FAST = RetryPolicy(attempts=2, base_delay=0.01, max_delay=0.02)
MiB = 1024 * 1024


class BasicRegistry:
    """A hostile registry behind Basic auth: ``routes`` maps (method, path) to the answer."""

    def __init__(self, routes: dict[tuple[str, str], Reply]) -> None:
        self.routes = routes

    def __call__(self, request: Received) -> Reply:
        if request.authorization != BASIC:
            return basic_challenge()
        if request.path == "/v2/":
            return json_reply("{}")
        return self.routes.get((request.method, request.path), json_reply('{"errors": []}', 404))


def client_for(server: HostileServer, *, ca_file: Path | None = None, credentials: bool = True) -> RegistryClient:
    endpoint = Endpoint(server.host, plain_http=ca_file is None, ca_file=str(ca_file) if ca_file else None,
                        username=USER if credentials else None, password=PASSWORD if credentials else None)
    return RegistryClient(RegistryHTTP(endpoint, retry=FAST))


async def one_chunk(data: bytes) -> AsyncIterator[bytes]:
    yield data


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority(tmp_path / "ca")


# -- 1. credentials only to their registry -------------------------------------------------------------

async def test_upload_location_on_another_host_gets_no_credentials() -> None:
    """The registry opens an upload on a foreign host, which then names its own token realm: neither the
    upload nor a token request with our password reaches it."""
    def foreign(request: Received) -> Reply:
        return Reply(401, {"WWW-Authenticate": f'Bearer realm="{elsewhere.url}/token",service="x"'})

    with HostileServer(foreign) as elsewhere:
        location = f"{elsewhere.url}/upload/1?_state=signed-upload-secret"
        hostile = BasicRegistry({("POST", "/v2/app/blobs/uploads/"): Reply(202, {"Location": location})})
        with HostileServer(hostile) as server:
            client = client_for(server)
            try:
                got = await client.start_upload("app")
                data = b"layer"
                with pytest.raises(RegistryError) as failure:
                    await client.upload_blob("app", got, seed.sha256_digest(data), len(data), one_chunk(data))
                # Retried once more, the 401 having taught us nothing: still no credentials leave.
                with pytest.raises(RegistryError):
                    await client.upload_blob("app", got, seed.sha256_digest(data), len(data), one_chunk(data))
            finally:
                await client.http.aclose()
        assert got == location
        assert [r.method for r in elsewhere.received] == ["PUT", "PUT"]
        assert all(r.authorization is None for r in elsewhere.received)
        assert "/token" not in [r.path for r in elsewhere.received]
        assert any(r.authorization == BASIC for r in server.received)  # the registry itself did get them
        message = str(failure.value)
        assert "401" in message and "signed-upload-secret" not in message and "\n" not in message


async def test_tag_page_link_to_another_host_gets_no_credentials() -> None:
    with HostileServer(lambda request: json_reply('{"tags": ["c"]}')) as elsewhere:
        link = f'<{elsewhere.url}/v2/app/tags/list?last=b>; rel="next"'
        hostile = BasicRegistry({("GET", "/v2/app/tags/list"): json_reply('{"tags": ["a", "b"]}', Link=link)})
        with HostileServer(hostile) as server:
            client = client_for(server)
            try:
                tags = await client.list_tags("app")
            finally:
                await client.http.aclose()
    assert tags == ["a", "b", "c"]
    (followed,) = elsewhere.received
    assert followed.path == "/v2/app/tags/list" and followed.authorization is None


async def test_https_registry_is_never_followed_to_plain_http(ca: CertificateAuthority) -> None:
    """A Link, an upload Location and a redirect from an HTTPS registry to http:// are all refused: nothing,
    credentials least of all, goes out in clear."""
    with HostileServer(lambda request: json_reply('{"tags": []}')) as plain:
        hostile = BasicRegistry({
            ("GET", "/v2/app/tags/list"): json_reply('{"tags": ["a"]}',
                                                     Link=f'<{plain.url}/v2/app/tags/list?last=a>; rel="next"'),
            ("POST", "/v2/app/blobs/uploads/"): Reply(202, {"Location": f"{plain.url}/upload/1"}),
            ("GET", f"/v2/app/blobs/{seed.sha256_digest(b'x')}"): Reply(307, {"Location": f"{plain.url}/blob"}),
        })
        with HostileServer(hostile, tls=ca.issue_server()) as server:
            client = client_for(server, ca_file=ca.ca_file)
            try:
                with pytest.raises(RegistryError, match="never followed to plain HTTP"):
                    await client.list_tags("app")
                location = await client.start_upload("app")
                with pytest.raises(RegistryError, match="never followed to plain HTTP"):
                    await client.upload_blob("app", location, seed.sha256_digest(b"x"), 1, one_chunk(b"x"))
                with pytest.raises(RegistryError, match="never followed to plain HTTP"):
                    async with client.open_blob("app", seed.sha256_digest(b"x")):
                        pass
            finally:
                await client.http.aclose()
        assert plain.received == []
        assert any(r.authorization == BASIC for r in server.received)


async def test_plain_http_token_realm_of_an_https_registry_gets_no_credentials(ca: CertificateAuthority) -> None:
    with HostileServer(lambda request: json_reply('{"token": "t"}')) as realm:
        def hostile(request: Received) -> Reply:
            return Reply(401, {"WWW-Authenticate": f'Bearer realm="{realm.url}/token",service="s"'})

        with HostileServer(hostile, tls=ca.issue_server()) as server:
            client = client_for(server, ca_file=ca.ca_file)
            try:
                with pytest.raises(RegistryError, match=r"token realm .* is plain HTTP: refused"):
                    await client.list_tags("app")
            finally:
                await client.http.aclose()
    assert realm.received == []  # no Basic credentials, and no request at all


async def test_token_realm_with_user_info_is_refused() -> None:
    def hostile(request: Received) -> Reply:
        return Reply(401, {"WWW-Authenticate": 'Bearer realm="http://user:pw@127.0.0.1:9/token"'})

    with HostileServer(hostile) as server:
        client = client_for(server)
        try:
            with pytest.raises(RegistryError, match="token realm we do not use"):
                await client.list_tags("app")
        finally:
            await client.http.aclose()


async def test_real_registry_upload_location_rewritten_to_a_recorder(basic_registry: RegistryProcess,
                                                                     registry: RegistryProcess,
                                                                     tmp_path: Path) -> None:
    """A whole sync into a real Basic-auth registry whose upload Location is rewritten to another host: the
    image fails with one clear line, the recorder never sees the password, other images are unaffected."""
    seed.push_image(registry, "src/app", "1", layers=(1000,), seed="loc")
    seed.push_image(registry, "src/other", "1", layers=(1000,), seed="other")

    with HostileServer(lambda request: Reply(404)) as recorder:
        class RewriteLocation(httpx.AsyncBaseTransport):
            def __init__(self) -> None:
                self._inner = httpx.AsyncHTTPTransport(retries=0)

            async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
                response = await self._inner.handle_async_request(request)
                if (request.method == "POST" and request.url.path == "/v2/mirror/app/blobs/uploads/"
                        and "location" in response.headers):
                    response.headers["Location"] = f"{recorder.url}/stolen/upload"
                return response

        stats = await run_sync(tmp_path, (basic_registry, registry), {
            f"{registry.host}/src/app:1": f"{basic_registry.host}/mirror/app",
            f"{registry.host}/src/other:1": f"{basic_registry.host}/mirror/other",
        }, lambda endpoint: RewriteLocation())
    assert recorder.received and all(r.authorization is None for r in recorder.received)
    (failure,) = stats.failed()
    assert "mirror/app" in failure.target and "\n" not in failure.reason
    assert seed.manifest_exists(basic_registry, "mirror/other", "1")


# -- 2. registry-supplied names are untrusted -----------------------------------------------------------

BAD_TAGS = ["../../victim/manifests/pwned", "a?b", "x#y", "%2e%2e", "t" * 200, "ünïcode"]


class ExtraTags(httpx.AsyncBaseTransport):
    """In front of a real registry: its tag list for ``repo`` also names ``extra``."""

    def __init__(self, repo: str, extra: list[str]) -> None:
        self._inner = httpx.AsyncHTTPTransport(retries=0)
        self.repo, self.extra = repo, extra

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._inner.handle_async_request(request)
        if request.url.path == f"/v2/{self.repo}/tags/list" and response.status_code == 200:
            body = json.loads(await response.aread())
            body["tags"] = [*body["tags"], *self.extra]
            return httpx.Response(200, json=body, request=request)
        return response


async def run_sync(tmp_path: Path, registries: tuple[RegistryProcess, ...], images: dict[str, str],
                   transport: object, extra_auth: dict[str, object] | None = None) -> SyncStats:
    auth_file = tmp_path / "auth.yaml"
    auth_file.write_text(yaml.safe_dump({**auth_for(*registries), **(extra_auth or {})}))
    rules, errors = parse_rules(images)
    assert not errors
    return await sync(rules, errors, load_auth(str(auth_file)),
                      SyncOptions(retries=0, retry_policy=FAST), transport_factory=transport)  # type: ignore[arg-type]


async def test_listed_traversal_and_query_tags_never_leave_the_repository(registry: RegistryProcess,
                                                                          registry2: RegistryProcess,
                                                                          tmp_path: Path) -> None:
    good = [seed.push_image(registry, "src/app", tag, layers=(2000,), seed=tag) for tag in ("1", "v2.0_rc-1")]
    # The source really has what the traversal names: the old code copied it to mirror/victim on the target.
    seed.push_image(registry, "src/victim", "pwned", layers=(100,), seed="victim")
    source_mark, target_mark = registry.log_mark(), registry2.log_mark()

    rules = {f"{registry.host}/src/app": f"{registry2.host}/mirror/app"}
    stats = await run_sync(tmp_path, (registry, registry2), rules, lambda endpoint: ExtraTags("src/app", BAD_TAGS))

    for image in good:
        assert seed.get_manifest(registry2, "mirror/app", image.tag)[2] == image.digest
    assert sorted(o.source for o in stats.outcomes.values() if o.outcome == "synced") == [
        f"{registry.host}/src/app:1", f"{registry.host}/src/app:v2.0_rc-1"]
    reasons = [o.reason for o in stats.failed()]
    assert len(reasons) == len(BAD_TAGS)
    assert any("'../../victim/manifests/pwned', which is not a valid tag" in r for r in reasons)
    assert all(f"{registry.host}/src/app" in r and len(r) < 300 for r in reasons)
    # Nothing reached another repository, on either side, and no query was smuggled in.
    source = registry.request_log(source_mark)
    assert {r.path for r in source if not r.path.startswith("/v2/src/app/")} <= {"/v2/"}
    target = registry2.request_log(target_mark)
    assert {r.path for r in target if not r.path.startswith("/v2/mirror/app/")} <= {"/v2/"}
    assert all("?" not in r.path and "#" not in r.target for r in target)
    assert not seed.manifest_exists(registry2, "mirror/victim", "pwned")


async def test_untrusted_references_are_checked_before_any_request() -> None:
    """Digests come from manifests (an index's children, an image's layers): a bad one is never a path."""
    with HostileServer(lambda request: json_reply("{}")) as server:
        client = client_for(server, credentials=False)
        try:
            with pytest.raises(RegistryError, match="not a tag"):
                await client.head_manifest("app", "../../victim/manifests/pwned")
            for bad in ("sha256:../../victim", "sha256:" + "a" * 63 + "?", "md5:abc"):
                with pytest.raises(RegistryError, match="refused to use a digest"):
                    await client.get_manifest("app", bad)
                with pytest.raises(RegistryError, match="refused to use a digest"):
                    await client.blob_exists("app", bad)
        finally:
            await client.http.aclose()
    assert [r.path for r in server.received] == []  # not even the /v2/ ping: nothing was to be sent


# -- 3. bounded reads ------------------------------------------------------------------------------------

async def test_plain_oversized_manifest_and_error_body_are_cut() -> None:
    def hostile(request: Received) -> Reply:
        if request.path.endswith("/manifests/big"):
            return Reply(200, {"Content-Type": "application/vnd.oci.image.manifest.v1+json"}, b"{" * (5 * MiB))
        if request.path.endswith("/manifests/gone"):
            message = ("line one\nline two\r\n" + "x" * 30_000)
            body = json.dumps({"errors": [{"code": "MANIFEST_UNKNOWN", "message": message}]}).encode()
            return Reply(404, {"Content-Type": "application/json"}, body + b" " * (8 * MiB))
        return json_reply("{}")

    with HostileServer(hostile) as server:
        client = client_for(server, credentials=False)
        try:
            with pytest.raises(RegistryError, match="too large"):
                await client.get_manifest("app", "big")
            with pytest.raises(RegistryError) as failure:
                await client.get_manifest("app", "gone")
        finally:
            await client.http.aclose()
    message = str(failure.value)
    # The body was cut at 64 KiB, so its JSON is incomplete: the status speaks, the 8 MiB never arrive.
    assert message.startswith(f"reading manifest {server.host}/app:gone: 404 not found") and len(message) < 500


async def test_long_registry_message_is_clipped_to_one_line() -> None:
    message = "first line\nsecond\tline " + "y" * 20_000
    body = json.dumps({"errors": [{"code": "DENIED", "message": message}]})
    with HostileServer(lambda r: json_reply(body, 403) if "/manifests/" in r.path else json_reply("{}")) as server:
        client = client_for(server, credentials=False)
        try:
            with pytest.raises(RegistryError) as failure:
                await client.get_manifest("app", "1")
        finally:
            await client.http.aclose()
    text = str(failure.value)
    assert "DENIED first line second line yyy" in text and text.endswith("…")
    assert "\n" not in text and len(text) < 400


async def test_huge_token_response_is_refused() -> None:
    def hostile(request: Received) -> Reply:
        if request.path == "/token":
            return json_reply(json.dumps({"token": "t" * MiB}))
        return Reply(401, {"WWW-Authenticate": f'Bearer realm="{server.url}/token",service="s"'})

    with HostileServer(hostile) as server:
        client = client_for(server)
        try:
            with pytest.raises(RegistryError, match=r"token server .* larger than 64 KiB"):
                await client.list_tags("app")
        finally:
            await client.http.aclose()



async def test_signature_payload_bomb_is_read_within_its_cap() -> None:
    """A cosign payload blob (at most 64 KiB) sent as gzip inflating to 32 MiB: read within the cap, the
    bomb never inflated (httpx's own decoding inflated each network chunk whole: 32 MiB held)."""
    digest = "sha256:" + "1" * 64
    bomb = gzip_bomb(32 * MiB)
    hostile = BasicRegistry({("GET", f"/v2/app/blobs/{digest}"): Reply(
        200, {"Content-Type": "application/octet-stream", "Content-Encoding": "gzip"}, bomb)})
    with HostileServer(hostile) as server:
        client = client_for(server)
        tracemalloc.start()
        try:
            payload = await SignatureGate._payload(client, Repository(server.host, "app"),
                                                   SignedPayload(digest, MAX_PAYLOAD_BYTES, "c2ln"))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
            await client.http.aclose()
    assert peak < 8 * MiB, f"{peak / MiB:.1f} MiB held while reading a {MAX_PAYLOAD_BYTES // 1024} KiB payload"
    assert payload == bytes(MAX_PAYLOAD_BYTES)


@pytest.mark.parametrize("loop", ["self", "two pages"])
async def test_tag_link_loop_ends_with_a_clear_error(loop: str) -> None:
    def hostile(request: Received) -> Reply:
        if request.path != "/v2/app/tags/list":
            return json_reply("{}")
        back = "/v2/app/tags/list?n=1000"
        target = back if loop == "self" or "last=" in request.target else "/v2/app/tags/list?last=a"
        return json_reply('{"tags": ["a"]}', Link=f'<{target}>; rel="next"')

    with HostileServer(hostile) as server:
        client = client_for(server, credentials=False)
        try:
            with pytest.raises(RegistryError, match="Link header leads back to a page already read"):
                await client.list_tags("app")
        finally:
            await client.http.aclose()
    assert len([r for r in server.received if r.path.endswith("/tags/list")]) == (1 if loop == "self" else 2)


async def test_endless_tag_pages_and_too_many_tags_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry_module, "MAX_TAG_PAGES", 25)
    monkeypatch.setattr(registry_module, "MAX_TAGS", 1000)

    def hostile(request: Received) -> Reply:
        if request.path == "/v2/endless/tags/list":
            n = sum(1 for r in server.received if r.path == request.path)
            return json_reply(f'{{"tags": ["t{n}"]}}', Link=f'</v2/endless/tags/list?last=t{n}>; rel="next"')
        if request.path == "/v2/many/tags/list":
            return json_reply(json.dumps({"tags": [f"t{i}" for i in range(1001)]}))
        return json_reply("{}")

    with HostileServer(hostile) as server:
        client = client_for(server, credentials=False)
        try:
            with pytest.raises(RegistryError, match="more than 25 pages; stopped"):
                await client.list_tags("endless")
            with pytest.raises(RegistryError, match="more than 1000 tags; stopped"):
                await client.list_tags("many")
        finally:
            await client.http.aclose()
    assert len([r for r in server.received if r.path == "/v2/endless/tags/list"]) == 25
