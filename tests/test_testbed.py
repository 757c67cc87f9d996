"""Contract tests of the test bed itself: if these fail, no engine, CLI or operator test means anything.

They check the registries behave like the real thing in each mode (challenges, TLS trust, token grants),
that seeded images read back byte-identical under the right digest, that request counting is exact,
and that skopeo sees the same bytes we do.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
from collections import Counter
from typing import Any
from urllib.parse import parse_qs

import httpx
import jwt
import pytest

from testbed import seed
from testbed.registry import MakeRegistry, RegistryProcess, RegistryStartError
from testbed.seed import RegistryAPI, SeedError
from testbed.skopeo import Skopeo
from testbed.system import require_system_part
from testbed.tokenserver import Scope

# -- plain registry and the access log ---------------------------------------------------------------


def test_plain_registry_answers_and_logs_each_request(registry: RegistryProcess) -> None:
    assert registry.host.startswith("127.0.0.1:")
    assert registry.url == f"http://{registry.host}"
    assert (registry.username, registry.password, registry.ca_file, registry.token_server) == (None,) * 4

    response = httpx.get(f"{registry.url}/v2/")
    assert response.status_code == 200
    assert response.headers["Docker-Distribution-Api-Version"] == "registry/2.0"
    assert httpx.get(f"{registry.url}/v2/no/such/tags/list?n=5").status_code == 404

    # Start-up probes are not reported; the query string is kept apart from the path.
    assert registry.request_log() == [("GET", "/v2/", 200, ""), ("GET", "/v2/no/such/tags/list", 404, "n=5")]
    assert registry.request_log()[1].target == "/v2/no/such/tags/list?n=5"


def test_request_log_marks_and_clear(registry: RegistryProcess) -> None:
    httpx.get(f"{registry.url}/v2/")
    mark = registry.log_mark()
    with httpx.Client() as client:
        for _ in range(7):
            client.head(f"{registry.url}/v2/r/manifests/t")
    assert registry.request_log(since=mark) == [("HEAD", "/v2/r/manifests/t", 404, "")] * 7
    assert len(registry.request_log()) == 8

    registry.clear_log()
    assert registry.request_log() == []
    blob = seed.push_blob(registry, "r", b"hello")
    probe, start, upload = registry.request_log()
    assert probe == ("GET", "/v2/", 200, "")  # the seeder learns the auth scheme first
    assert start == ("POST", "/v2/r/blobs/uploads/", 202, "")
    assert (upload.method, upload.status) == ("PUT", 201)
    assert parse_qs(upload.query)["digest"] == [blob.digest]


def test_stop_leaves_no_process_and_start_reuses_port_and_storage(registry: RegistryProcess) -> None:
    image = seed.push_image(registry, "keep/me", "v1")
    host, pid = registry.host, registry.pid
    assert pid is not None

    registry.stop()
    assert not registry.running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # reaped, not a zombie
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", registry.port or 0), timeout=1):
        pass

    registry.start()
    assert registry.host == host
    assert seed.get_manifest(registry, "keep/me", "v1") == (image.manifest, image.media_type, image.digest)


def test_a_registry_that_cannot_start_says_why(make_registry: MakeRegistry) -> None:
    broken = {"http": {"tls": {"certificate": "/nonexistent/cert.pem", "key": "/nonexistent/key.pem"}}}
    with pytest.raises(RegistryStartError, match=r"exited with \d+: .*nonexistent"):
        make_registry("plain", extra_config=broken)


def test_make_registry_rejects_unknown_mode(make_registry: MakeRegistry) -> None:
    with pytest.raises(ValueError, match="unknown registry mode"):
        make_registry("kerberos")  # type: ignore[arg-type]


# -- auth modes --------------------------------------------------------------------------------------


def test_basic_registry_challenges_and_checks_the_password(basic_registry: RegistryProcess) -> None:
    assert basic_registry.username and basic_registry.password
    url = f"{basic_registry.url}/v2/"

    anonymous = httpx.get(url)
    assert anonymous.status_code == 401
    assert anonymous.headers["WWW-Authenticate"] == 'Basic realm="imagesync-test"'
    assert httpx.get(url, auth=(basic_registry.username, "wrong")).status_code == 401
    assert httpx.get(url, auth=(basic_registry.username, basic_registry.password)).status_code == 200


def test_tls_registry_is_trusted_only_with_its_ca(tls_registry: RegistryProcess) -> None:
    assert tls_registry.url.startswith("https://127.0.0.1:")
    assert tls_registry.ca_file is not None and tls_registry.ca_file.exists()

    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{tls_registry.url}/v2/")
    trusted = ssl.create_default_context(cafile=str(tls_registry.ca_file))
    assert httpx.get(f"{tls_registry.url}/v2/", verify=trusted).status_code == 200
    # The certificate also names localhost, for clients that prefer a DNS name.
    assert httpx.get(f"https://localhost:{tls_registry.port}/v2/", verify=trusted).status_code == 200
    # Plain HTTP on the TLS port is refused by the Go server itself.
    assert httpx.get(f"http://{tls_registry.host}/v2/").status_code == 400


def test_token_registry_challenges_with_the_realm(token_registry: RegistryProcess) -> None:
    server = token_registry.token_server
    assert server is not None

    root = httpx.get(f"{token_registry.url}/v2/")
    assert root.status_code == 401
    assert root.headers["WWW-Authenticate"] == f'Bearer realm="{server.realm}",service="{server.service}"'
    tags = httpx.get(f"{token_registry.url}/v2/team/app/tags/list")
    assert tags.headers["WWW-Authenticate"].endswith(',scope="repository:team/app:pull"')


def test_token_server_refuses_wrong_password_and_counts_requests(token_registry: RegistryProcess) -> None:
    server = token_registry.token_server
    assert server is not None and token_registry.username is not None
    params = {"service": server.service, "scope": "repository:team/app:pull"}

    refused = httpx.get(server.realm, params=params, auth=(token_registry.username, "wrong"))
    assert refused.status_code == 401
    assert "token" not in refused.json()
    assert httpx.get(server.realm, params=params, auth=("nobody", "x")).status_code == 401
    assert httpx.get(server.realm, params={**params, "service": "other"},
                     auth=token_registry.credentials).status_code == 400

    assert server.request_count == 3
    assert [(r.account, r.status) for r in server.requests] == [(None, 401), (None, 401),
                                                                (token_registry.username, 400)]
    server.clear_requests()
    assert server.request_count == 0


def _claims(token_registry: RegistryProcess, token: str) -> dict[str, object]:
    """Decode and verify a token as the registry would: signature, issuer, audience, time window."""
    server = token_registry.token_server
    assert server is not None
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "ES256" and header["x5c"] == server.signing_key.x5c
    public_key = server.signing_key.private_key.public_key()
    claims: dict[str, object] = jwt.decode(token, public_key, algorithms=["ES256"],
                                           audience=server.service, issuer=server.issuer)
    assert {"sub", "exp", "nbf", "iat", "jti", "access"} <= claims.keys()
    return claims


def test_token_server_grants_what_the_user_may_have(token_registry: RegistryProcess) -> None:
    server = token_registry.token_server
    assert server is not None
    scopes = httpx.QueryParams([("service", server.service), ("scope", "repository:team/app:pull,push"),
                                ("scope", "repository:other:pull"), ("scope", "registry:catalog:*")])

    answer = httpx.get(server.realm, params=scopes, auth=token_registry.credentials)
    assert answer.status_code == 200
    body = answer.json()
    assert body["token"] == body["access_token"] and body["expires_in"] == 300 and body["issued_at"]
    claims = _claims(token_registry, body["token"])
    assert claims["sub"] == token_registry.username
    assert claims["access"] == [
        {"type": "repository", "name": "team/app", "actions": ["pull", "push"]},
        {"type": "repository", "name": "other", "actions": ["pull"]},
        {"type": "registry", "name": "catalog", "actions": ["*"]},
    ]

    anonymous = httpx.get(server.realm, params=scopes)
    assert anonymous.status_code == 200
    assert _claims(token_registry, anonymous.json()["token"])["access"] == []


def test_token_server_goes_down_and_comes_back_on_the_same_realm(token_registry: RegistryProcess) -> None:
    server = token_registry.token_server
    assert server is not None
    realm = server.realm
    params = {"service": server.service, "scope": "repository:a:pull"}
    with httpx.Client() as client:
        assert client.get(realm, params=params, auth=token_registry.credentials).status_code == 200
        server.stop()
        # Also the kept-alive connection is cut: a "down" realm answers nothing.
        with pytest.raises(httpx.TransportError):
            client.get(realm, params=params, auth=token_registry.credentials)
    with pytest.raises(httpx.ConnectError):
        seed.push_image(token_registry, "down/app", "v1")
    server.start()
    assert server.realm == realm
    image = seed.push_image(token_registry, "back/app", "v1")
    assert seed.get_manifest(token_registry, "back/app", "v1")[2] == image.digest


def test_registry_enforces_the_token_grants(make_registry: MakeRegistry) -> None:
    registry = make_registry("token", anonymous="pull", extra_users={"reader": "reader-pw"},
                             token_acl={"reader": {"team/*": ["pull"]}})
    image = seed.push_image(registry, "team/app", "v1")
    seed.push_image(registry, "private/app", "v1")

    with RegistryAPI.for_registry(registry, anonymous=True) as anonymous:
        assert seed.get_manifest(anonymous, "team/app", "v1")[2] == image.digest
        with pytest.raises(SeedError, match="401"):
            seed.push_blob(anonymous, "team/app", b"not allowed")
    with RegistryAPI.for_registry(registry, credentials=("reader", "reader-pw")) as reader:
        assert seed.list_tags(reader, "team/app") == ["v1"]
        with pytest.raises(SeedError, match="401"):
            seed.list_tags(reader, "private/app")


def test_token_registry_with_tls_serves_the_realm_over_https(make_registry: MakeRegistry) -> None:
    registry = make_registry("token+tls")
    assert registry.token_server is not None and registry.token_server.realm.startswith("https://")
    image = seed.push_index(registry, "secure/app", "v1")
    assert seed.get_manifest(registry, "secure/app", "v1")[2] == image.digest


def test_scope_parsing() -> None:
    assert Scope.parse("repository:a/b:pull,push") == Scope("repository", "a/b", ("pull", "push"))
    assert Scope.parse("repository(plugin):a:pull") == Scope("repository", "a", ("pull",))
    assert Scope.parse("repository:host:5000/a:pull") == Scope("repository", "host:5000/a", ("pull",))
    assert Scope.parse("garbage") is None


# -- seeding -----------------------------------------------------------------------------------------


def _assert_reads_back(registry: RegistryProcess | RegistryAPI, image: seed.SeededImage) -> None:
    ref = image.tag or image.digest
    assert seed.get_manifest(registry, image.repo, ref) == (image.manifest, image.media_type, image.digest)
    assert image.digest == seed.sha256_digest(image.manifest)
    assert json.loads(image.manifest)["mediaType"] == image.media_type
    for blob in image.blobs:
        assert seed.blob_sha256(registry, image.repo, blob.digest) == blob.digest
    for child in image.children:
        _assert_reads_back(registry, child)


@pytest.mark.parametrize(("kind", "media_type", "children"), [
    ("docker", seed.DOCKER_MANIFEST, 0),
    ("oci", seed.OCI_MANIFEST, 0),
    ("docker-list", seed.DOCKER_MANIFEST_LIST, 2),
    ("oci-index", seed.OCI_INDEX, 2),
])
def test_seeded_manifests_read_back_byte_identical(registry: RegistryProcess, kind: str, media_type: str,
                                                   children: int) -> None:
    if kind in ("docker", "oci"):
        image = seed.push_image(registry, f"seed/{kind}", "v1", layers=(3000, 5000), oci=kind == "oci")
        assert [b.size for b in image.blobs[1:]] == [3000, 5000]
    else:
        image = seed.push_index(registry, f"seed/{kind}", "v1", oci=kind == "oci-index")
        assert [c.platform for c in image.children] == [("linux", "amd64"), ("linux", "arm64")]
        assert {c.media_type for c in image.children} == {seed.OCI_MANIFEST if kind == "oci-index"
                                                          else seed.DOCKER_MANIFEST}
        # Children are pushed by digest only: the index is the one tag.
        assert seed.list_tags(registry, image.repo) == ["v1"]
    assert image.media_type == media_type and len(image.children) == children
    _assert_reads_back(registry, image)


@pytest.mark.parametrize("mode", ["basic", "tls", "token"])
def test_seeding_works_in_every_auth_mode(make_registry: MakeRegistry, mode: str) -> None:
    registry = make_registry(mode)  # type: ignore[arg-type]
    base = seed.push_random_blob(registry, "base/os", 2048, "base")
    image = seed.push_image(registry, f"{mode}/app", "v1", layers=(base, 1024))
    _assert_reads_back(registry, image)
    assert seed.list_tags(registry, f"{mode}/app") == ["v1"]


def test_seed_is_deterministic() -> None:
    assert seed.random_bytes(5000, "x") == seed.random_bytes(5000, "x")
    assert seed.random_bytes(5000, "x") != seed.random_bytes(5000, "y")
    assert seed.random_bytes(5000, "x")[:100] != seed.random_bytes(6000, "x")[:100]
    size = 3 * 1024 * 1024 + 7
    assert seed.random_digest(size, 1) == seed.sha256_digest(seed.random_bytes(size, 1))
    assert sum(len(c) for c in seed.random_chunks(2 * 1024 * 1024 + 1, 0)) == 2 * 1024 * 1024 + 1


def test_same_seed_same_digest_across_registries(registry: RegistryProcess,
                                                  registry2: RegistryProcess) -> None:
    first = seed.push_index(registry, "a/b", "v1", seed=42)
    second = seed.push_index(registry2, "a/b", "v1", seed=42)
    other = seed.push_index(registry2, "a/b", "v2", seed=43)
    assert first.digest == second.digest != other.digest


def test_big_layers_are_streamed(registry: RegistryProcess) -> None:
    size = seed.STREAM_THRESHOLD + 4 * 1024 * 1024 + 3
    blob = seed.push_random_blob(registry, "big/one", size, "big")
    assert blob.size == size and blob.digest == seed.random_digest(size, "big")
    assert seed.blob_sha256(registry, "big/one", blob.digest) == blob.digest
    methods = [r.method for r in registry.request_log() if "/blobs/uploads/" in r.path]
    assert methods == ["POST", "PATCH", "PUT"]


def test_blob_from_another_repository_is_mounted(registry: RegistryProcess) -> None:
    base = seed.push_random_blob(registry, "lib/base", 4096, "shared")
    registry.clear_log()
    image = seed.push_image(registry, "app/one", "v1", layers=(base,))
    assert image.blobs[1] == seed.Blob(base.digest, base.size, seed.DOCKER_LAYER, "app/one")
    mounts = [r for r in registry.request_log() if r.method == "POST" and r.status == 201]
    assert [r.path for r in mounts] == ["/v2/app/one/blobs/uploads/"]
    assert "from=lib%2Fbase" in mounts[0].query
    assert seed.blob_exists(registry, "app/one", base.digest)
    assert not seed.blob_exists(registry, "app/two", base.digest)


def test_tags_listing_and_delete(registry: RegistryProcess) -> None:
    """Distribution 2.8 ignores ``n``/``last`` on the tags list: one page, all tags, in no particular
    order. (Link paging of tags cannot be exercised against it; its ``_catalog`` does page.)"""
    images = [seed.push_image(registry, "many/tags", f"t{i}", seed=i) for i in range(5)]
    registry.clear_log()
    assert sorted(seed.list_tags(registry, "many/tags", page_size=2)) == [f"t{i}" for i in range(5)]
    assert Counter(r.path for r in registry.request_log())["/v2/many/tags/tags/list"] == 1
    seed.push_image(registry, "other/repo", "v1")
    registry.clear_log()
    assert seed.list_repositories(registry, page_size=1) == ["many/tags", "other/repo"]
    assert Counter(r.path for r in registry.request_log())["/v2/_catalog"] == 2  # Link paging followed
    seed.delete_manifest(registry, "many/tags", images[0].digest)
    assert not seed.manifest_exists(registry, "many/tags", "t0")
    assert seed.list_tags(registry, "nothing/here") == []


def test_schema1_needs_the_compatibility_switch(make_registry: MakeRegistry,
                                                registry: RegistryProcess) -> None:
    """Distribution 2.8 takes a signed schema 1 manifest only with ``compatibility.schema1.enabled``. It
    stores the unsigned payload, names it by that payload's digest, and re-signs it with its own key on
    every GET: the bytes served differ from the bytes pushed and from one GET to the next (``time``)."""
    old = make_registry("plain", schema1=True)
    image = seed.push_schema1(old, "old/style", "v1", layers=(100, 200))
    served, media_type, digest = seed.get_manifest(old, "old/style", "v1")
    assert media_type == seed.DOCKER_SCHEMA1_SIGNED
    assert digest == image.digest
    payload = image.manifest[:image.manifest.index(b',\n   "signatures"')] + b"\n}"
    assert digest == seed.sha256_digest(payload)
    assert json.loads(served)["fsLayers"] == json.loads(image.manifest)["fsLayers"]
    assert seed.get_manifest(old, "old/style", digest)[2] == digest

    seed.push_random_blob(registry, "old/style", 100, "0/layer0")
    seed.push_random_blob(registry, "old/style", 200, "0/layer1")
    with pytest.raises(SeedError, match="500"):
        seed.push_manifest(registry, "old/style", "v1", image.manifest, seed.DOCKER_SCHEMA1_SIGNED)


# -- skopeo ------------------------------------------------------------------------------------------


def test_skopeo_inspect_raw_gives_the_served_bytes(skopeo: Skopeo, basic_registry: RegistryProcess) -> None:
    image = seed.push_index(basic_registry, "team/app", "v1")
    skopeo.login(basic_registry)
    raw = skopeo.inspect_raw(image.ref(basic_registry.host))
    assert raw == seed.get_manifest(basic_registry, "team/app", "v1")[0] == image.manifest
    assert skopeo.inspect_raw(f"{basic_registry.host}/team/app@{image.children[1].digest}") == \
        image.children[1].manifest


def test_skopeo_sync_preserves_digests(skopeo: Skopeo, token_registry: RegistryProcess,
                                       registry: RegistryProcess) -> None:
    index = seed.push_index(token_registry, "team/app", "v1")
    image = seed.push_image(token_registry, "team/lib", "v2", oci=True)
    skopeo.login(token_registry)
    source: dict[str, Any] = {token_registry.host: {"images": {"team/app": [], "team/lib": []}}}
    skopeo.sync(source, f"{registry.host}/mirror")
    assert seed.get_manifest(registry, "mirror/app", "v1")[2] == index.digest
    assert seed.get_manifest(registry, "mirror/lib", "v2")[2] == image.digest
    assert skopeo.cache_isolated
    assert list(skopeo.cache_dir.iterdir()), "skopeo's blob-info cache should be in its own directory"


# -- the skip/fail rule ------------------------------------------------------------------------------


def test_missing_system_part_skips_locally_and_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    require_system_part("/usr/bin/true", "true", "coreutils")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="not-here is not installed"):
        require_system_part(None, "not-here", "not-here")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="not-here is not installed"):
        require_system_part(None, "not-here", "not-here")
