"""Manifest digests are checked both ways: a manifest GET by digest must hash to that digest (whatever the
registry's Docker-Content-Digest says), and a PUT whose answer names another digest is an error.

A transport in front of a real registry plays the registry that lies: it serves another manifest (with that
manifest's own, consistent Docker-Content-Digest) for a GET by digest, or names another digest in a PUT's
answer. The GET-by-tag case (a header that does not match the body) is in test_bad_registry_answers.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
import yaml
from cli_helpers import auth_for

from imagesync.engine.config import load_auth
from imagesync.engine.copy import SyncOptions, sync
from imagesync.engine.errors import RegistryError
from imagesync.engine.manifest import Manifest, sha256_digest
from imagesync.engine.registry import RegistryClient
from imagesync.engine.rules import parse_rules
from imagesync.engine.transport import Endpoint, RegistryHTTP, RetryPolicy
from testbed import seed
from testbed.registry import RegistryProcess

Rewrite = Callable[[httpx.Request, httpx.Response], httpx.Response]


class Lying(httpx.AsyncBaseTransport):
    """Passes every request to the registry, then lets ``rewrite`` change the answer."""

    def __init__(self, rewrite: Rewrite) -> None:
        self._inner = httpx.AsyncHTTPTransport(retries=0)
        self._rewrite = rewrite

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._inner.handle_async_request(request)
        await response.aread()
        return self._rewrite(request, response)

    async def aclose(self) -> None:
        await self._inner.aclose()


def serve_instead(asked: str, served: bytes) -> Rewrite:
    """A GET of manifest ``asked`` answers ``served``, with the served bytes' own digest in the header."""
    def rewrite(request: httpx.Request, response: httpx.Response) -> httpx.Response:
        if request.method == "GET" and request.url.path.endswith(f"/manifests/{asked}"):
            headers = httpx.Headers(response.headers)
            headers["Docker-Content-Digest"] = sha256_digest(served)
            headers["Content-Length"] = str(len(served))
            return httpx.Response(200, headers=headers, content=served, request=request)
        return response
    return rewrite


def put_answers_digest(digest: str) -> Rewrite:
    def rewrite(request: httpx.Request, response: httpx.Response) -> httpx.Response:
        if request.method == "PUT" and "/manifests/" in request.url.path and response.status_code == 201:
            headers = httpx.Headers(response.headers)
            headers["Docker-Content-Digest"] = digest
            return httpx.Response(201, headers=headers, content=response.content, request=request)
        return response
    return rewrite


@pytest.fixture
async def lying_client() -> AsyncIterator[Callable[[RegistryProcess, Rewrite], RegistryClient]]:
    opened: list[RegistryHTTP] = []

    def make(registry: RegistryProcess, rewrite: Rewrite) -> RegistryClient:
        http = RegistryHTTP(Endpoint(registry.host, plain_http=True), transport=Lying(rewrite),
                            retry=RetryPolicy(attempts=1))
        opened.append(http)
        return RegistryClient(http)

    yield make
    for http in opened:
        await http.aclose()


async def test_a_get_by_digest_that_serves_another_manifest_is_refused(
        registry: RegistryProcess, lying_client: Callable[[RegistryProcess, Rewrite], RegistryClient]) -> None:
    wanted = seed.push_image(registry, "lie/app", "a", seed="a")
    other = seed.push_image(registry, "lie/app", "b", seed="b")
    client = lying_client(registry, serve_instead(wanted.digest, other.manifest))
    with pytest.raises(RegistryError, match=f"arrived corrupted \\(digest {other.digest}, expected {wanted.digest}\\)"):
        await client.get_manifest("lie/app", wanted.digest)
    # The same client reads an honest answer: the refusal is about the bytes, not the request.
    honest = await client.get_manifest("lie/app", other.digest)
    assert honest.digest == other.digest and honest.data == other.manifest


async def test_a_put_answered_with_another_digest_is_an_error(
        registry: RegistryProcess, lying_client: Callable[[RegistryProcess, Rewrite], RegistryClient]) -> None:
    image = seed.push_image(registry, "lie/app", "a", seed="a")
    elsewhere = "sha256:" + "e" * 64
    client = lying_client(registry, put_answers_digest(elsewhere))
    manifest = Manifest(image.manifest, image.media_type, image.digest)
    with pytest.raises(RegistryError, match=f"stored the manifest under {elsewhere}, not {image.digest}"):
        await client.put_manifest("lie/app", "copy-a", manifest)  # its blobs are there
    honest = lying_client(registry, put_answers_digest(image.digest))
    await honest.put_manifest("lie/app", "copy-b", manifest)


async def test_an_index_child_served_wrong_fails_the_image_and_pushes_no_index(
        registry: RegistryProcess, registry2: RegistryProcess, tmp_path: Path) -> None:
    index = seed.push_index(registry, "lie/multi", "1", seed="multi")
    first, second = index.children[0], index.children[1]
    auth_file = tmp_path / "auth.yaml"
    auth_file.write_text(yaml.safe_dump(auth_for(registry, registry2)))
    rules, errors = parse_rules({f"{registry.host}/lie/multi:1": f"{registry2.host}/copy/multi"})
    rewrite = serve_instead(first.digest, second.manifest)
    stats = await sync(rules, errors, load_auth(str(auth_file)),
                       SyncOptions(retries=0, retry_policy=RetryPolicy(attempts=1)),
                       transport_factory=lambda endpoint: Lying(rewrite) if endpoint.host == registry.host else None)
    (failure,) = stats.failed()
    assert f"expected {first.digest}" in failure.reason
    assert not seed.manifest_exists(registry2, "copy/multi", "1")
    assert not seed.manifest_exists(registry2, "copy/multi", first.digest)
