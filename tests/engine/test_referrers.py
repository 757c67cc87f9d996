"""Referrers (signatures, attestations, SBOMs) travel with their images.

The artifacts are made by clients we did not write, or by hand following their documented layout:

- ``oras`` (the ORAS Python SDK from PyPI) pushes an in-toto attestation, an SPDX SBOM and a per-platform
  Notation-style signature, each a manifest carrying ``subject``;
- cosign's tag-based signature (``sha256-<hex>.sig``: a simple-signing payload layer with the
  ``dev.cosignproject.cosign/signature`` annotation, as cosign's SIGNATURE_SPEC documents it) and attestation
  (``sha256-<hex>.att``: a DSSE envelope layer with ``predicateType``) are built by hand.

docker-registry 2.8 has no referrers API (``GET /v2/<name>/referrers/<digest>`` is a 404) and ignores
``subject`` (no ``OCI-Subject`` header on the manifest PUT). So the registry tests exercise the fallbacks:
at the source the referrers tag schema (the test maintains the ``sha256-<hex>`` index, as a client must on
such a registry), at the target the fallback index imagesync maintains. The API paths are exercised by
:func:`test_referrers_api_recording`, against responses served by a test transport (see its docstring).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import oras.oci
import oras.provider
import pytest
from cli_helpers import auth_for, mutating_requests, run_sync

from imagesync.engine.config import parse_auth
from imagesync.engine.copy import SyncOptions, sync
from imagesync.engine.manifest import OCI_INDEX, OCI_MANIFEST
from imagesync.engine.referrers import ReferrerOptions, fallback_tag, merge_index
from imagesync.engine.rules import parse_rules
from testbed import seed
from testbed.registry import RegistryProcess

IN_TOTO = "application/vnd.in-toto+json"
SPDX = "application/spdx+json"
NOTATION = "application/vnd.cncf.notary.signature"
COSIGN_PAYLOAD = "application/vnd.dev.cosign.simplesigning.v1+json"
DSSE = "application/vnd.dsse.envelope.v1+json"


# -- making artifacts ------------------------------------------------------------------------------


def descriptor(registry: RegistryProcess, repo: str, digest: str) -> dict[str, Any]:
    """The referrers-index descriptor of a pushed manifest, as the distribution spec defines it."""
    data, media_type, _ = seed.get_manifest(registry, repo, digest)
    body = json.loads(data)
    entry: dict[str, Any] = {"mediaType": media_type, "digest": digest, "size": len(data),
                             "artifactType": body.get("artifactType") or body["config"]["mediaType"]}
    if body.get("annotations"):
        entry["annotations"] = body["annotations"]
    return entry


def oras_push(registry: RegistryProcess, repo: str, subject: seed.SeededImage, artifact_type: str,
              content: bytes, layer_type: str, tmp_path: Path, name: str) -> str:
    """ORAS pushes an artifact (config media type = artifact type) with ``subject``; returns its digest.

    oras-py pushes to a tag (``<name>``); on a registry without the API it does not maintain the fallback
    tag, which :func:`add_to_fallback_index` does next, as the spec asks of a client.
    """
    path = tmp_path / f"{name}.json"
    path.write_bytes(content)
    client = oras.provider.Registry(hostname=registry.host, insecure=True)
    response = client.push(
        target=f"{registry.host}/{repo}:{name}", files=[f"{path}:{layer_type}"], disable_path_validation=True,
        manifest_config=f"{tmp_path / 'no-config'}:{artifact_type}",
        manifest_annotations={"org.opencontainers.image.created": "2026-11-27T00:00:00Z"},
        subject=oras.oci.Subject(mediaType=subject.media_type, digest=subject.digest, size=len(subject.manifest)),
        quiet=True)
    digest = str(response.headers["Docker-Content-Digest"])
    data, _, _ = seed.get_manifest(registry, repo, digest)
    assert json.loads(data)["subject"]["digest"] == subject.digest
    return digest


def add_to_fallback_index(registry: RegistryProcess, repo: str, subject: str, digests: list[str]) -> str:
    """The referrers tag schema at a registry without the API: ``sha256-<hex>`` lists the referrers."""
    tag = fallback_tag(subject)
    existing = (json.loads(seed.get_manifest(registry, repo, tag)[0])
                if seed.manifest_exists(registry, repo, tag) else None)
    merged = merge_index(existing, [descriptor(registry, repo, d) for d in digests])
    assert merged is not None
    return seed.push_manifest(registry, repo, tag, seed.encode_json(merged), OCI_INDEX)


def cosign_tag_artifact(registry: RegistryProcess, repo: str, subject: seed.SeededImage, suffix: str) -> str:
    """cosign's tag-based artifact built by hand from its documented layout; returns the manifest digest.

    ``.sig``: one layer per signature, the simple-signing payload (critical.image.docker-manifest-digest is
    the subject), annotated with the base64 signature. ``.att``: a DSSE envelope layer with predicateType.
    """
    if suffix == ".sig":
        payload = json.dumps({
            "critical": {"identity": {"docker-reference": f"{registry.host}/{repo}"},
                         "image": {"docker-manifest-digest": subject.digest},
                         "type": "cosign container image signature"},
            "optional": None}).encode()
        layer_type = COSIGN_PAYLOAD
        annotations = {"dev.cosignproject.cosign/signature":
                       base64.b64encode(hashlib.sha512(payload).digest()).decode()}
    else:
        statement = json.dumps({"_type": "https://in-toto.io/Statement/v0.1",
                                "predicateType": "https://slsa.dev/provenance/v0.2",
                                "subject": [{"name": repo, "digest": {"sha256": subject.digest[7:]}}],
                                "predicate": {}}).encode()
        payload = json.dumps({"payloadType": "application/vnd.in-toto+json",
                              "payload": base64.b64encode(statement).decode(), "signatures": []}).encode()
        layer_type = DSSE
        annotations = {"predicateType": "https://slsa.dev/provenance/v0.2"}
    layer = seed.push_blob(registry, repo, payload)
    config = seed.push_blob(registry, repo, json.dumps(
        {"architecture": "", "os": "", "config": {},
         "rootfs": {"type": "layers", "diff_ids": [layer.digest]}}).encode())
    document = {
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": config.size,
                   "digest": config.digest},
        "layers": [{"mediaType": layer_type, "size": layer.size, "digest": layer.digest,
                    "annotations": annotations}],
    }
    return seed.push_manifest(registry, repo, fallback_tag(subject.digest) + suffix, seed.encode_json(document),
                              OCI_MANIFEST)


class Signed:
    """A signed image and a signed multi-arch index at the source, and every artifact made for them."""

    def __init__(self, registry: RegistryProcess, tmp_path: Path) -> None:
        self.image = seed.push_image(registry, "lib/app", "v1", oci=True, seed="app")
        self.sig = cosign_tag_artifact(registry, "lib/app", self.image, ".sig")
        self.att_tag = cosign_tag_artifact(registry, "lib/app", self.image, ".att")
        self.attestation = oras_push(registry, "lib/app", self.image, IN_TOTO,
                                     b'{"predicateType":"https://slsa.dev/provenance/v1"}', DSSE, tmp_path, "att")
        self.sbom = oras_push(registry, "lib/app", self.image, SPDX, b'{"spdxVersion":"SPDX-2.3"}', SPDX,
                              tmp_path, "sbom")
        add_to_fallback_index(registry, "lib/app", self.image.digest, [self.attestation, self.sbom])

        self.index = seed.push_index(registry, "lib/multi", "v1", seed="multi")
        self.index_sig = cosign_tag_artifact(registry, "lib/multi", self.index, ".sig")
        self.child_sigs = [cosign_tag_artifact(registry, "lib/multi", child, ".sig")
                           for child in self.index.children]
        first = self.index.children[0]
        self.child_notation = oras_push(registry, "lib/multi", first, NOTATION, b"jws-bytes",
                                        "application/jose+json", tmp_path, "notation")
        add_to_fallback_index(registry, "lib/multi", first.digest, [self.child_notation])
        # cosign tags: 1 + 1 (app) + 1 + 2 (multi); subject manifests: 2 (app) + 1 (multi child)
        self.count = 8


def rules(src: RegistryProcess, dst: RegistryProcess, prefix: str = "mirror") -> dict[str, str]:
    return {f"{src.host}/lib/app:v1": f"{dst.host}/{prefix}/app",
            f"{src.host}/lib/multi:v1": f"{dst.host}/{prefix}/multi"}


def same_manifest(src: RegistryProcess, src_repo: str, dst: RegistryProcess, dst_repo: str, ref: str) -> str:
    data, media_type, digest = seed.get_manifest(src, src_repo, ref)
    copied, copied_type, copied_digest = seed.get_manifest(dst, dst_repo, ref)
    assert (copied, copied_type, copied_digest) == (data, media_type, digest), ref
    return digest


# -- tests with real registries --------------------------------------------------------------------


def test_signatures_attestations_sboms_and_per_platform_signatures(
        registry: RegistryProcess, registry2: RegistryProcess, tmp_path: Path) -> None:
    """Every artifact is discoverable at the target as at the source, digests identical; a second run PUTs
    nothing. Both registries are docker-registry 2.8 (no referrers API): fallback tags on both sides."""
    made = Signed(registry, tmp_path)
    code, result = run_sync(tmp_path, rules(registry, registry2), auth_for(registry, registry2))
    assert code == 0, result
    assert (result["referrersCopied"], result["referrersSkipped"], result["referrersFailed"]) == (made.count, 0, 0)

    app, multi = made.image, made.index
    # cosign's tags: same tag, same digest, same bytes (so the signature verifies at the target).
    for repo, subject, suffix in [("app", app, ".sig"), ("app", app, ".att"), ("multi", multi, ".sig"),
                                  *[("multi", child, ".sig") for child in multi.children]]:
        same_manifest(registry, f"lib/{repo}", registry2, f"mirror/{repo}", fallback_tag(subject.digest) + suffix)
    # Referrers with a subject: the fallback index at the target lists them (here the source's very bytes),
    # and each is there by digest, byte for byte, with its blobs.
    assert same_manifest(registry, "lib/app", registry2, "mirror/app", fallback_tag(app.digest))
    listed = json.loads(seed.get_manifest(registry2, "mirror/app", fallback_tag(app.digest))[0])["manifests"]
    assert [(e["digest"], e["artifactType"]) for e in listed] == [(made.attestation, IN_TOTO), (made.sbom, SPDX)]
    for digest in (made.attestation, made.sbom):
        same_manifest(registry, "lib/app", registry2, "mirror/app", digest)
        for blob in json.loads(seed.get_manifest(registry2, "mirror/app", digest)[0])["layers"]:
            assert seed.blob_sha256(registry2, "mirror/app", blob["digest"]) == blob["digest"]
    child = multi.children[0].digest
    same_manifest(registry, "lib/multi", registry2, "mirror/multi", fallback_tag(child))
    same_manifest(registry, "lib/multi", registry2, "mirror/multi", made.child_notation)
    # The oras push tags (att, sbom, notation) are not referrers and were not asked for.
    assert "sbom" not in seed.list_tags(registry2, "mirror/app")

    src_mark, dst_mark = registry.log_mark(), registry2.log_mark()
    code, again = run_sync(tmp_path, rules(registry, registry2), auth_for(registry, registry2), name="again")
    assert code == 0, again
    assert (again["referrersCopied"], again["referrersSkipped"], again["referrersFailed"]) == (0, made.count, 0)
    assert mutating_requests(registry2, dst_mark) == []
    assert again["manifestsPushed"] == 0 and again["blobsCopied"] == 0
    # What a no-op run costs (the README quotes these numbers).
    print(f"no-op run: {len(registry.request_log(src_mark))} source requests, "
          f"{len(registry2.request_log(dst_mark))} target requests")


def test_new_signature_on_an_unchanged_image_and_fallback_merge(
        registry: RegistryProcess, registry2: RegistryProcess, tmp_path: Path) -> None:
    """--no-referrers copies the image alone; a later run adds its SBOM; a signature added after the image was
    mirrored is copied; the target's fallback index keeps entries only it has (merged, not replaced)."""
    image = seed.push_image(registry, "lib/app", "v1", oci=True, seed="late")
    sbom = oras_push(registry, "lib/app", image, SPDX, b'{"spdxVersion":"SPDX-2.3"}', SPDX, tmp_path, "sbom")
    add_to_fallback_index(registry, "lib/app", image.digest, [sbom])
    rule = {f"{registry.host}/lib/app:v1": f"{registry2.host}/mirror/app"}
    code, result = run_sync(tmp_path, rule, auth_for(registry, registry2), "--no-referrers")
    assert code == 0 and result["imagesSynced"] == 1 and result["referrersCopied"] == 0
    assert not seed.manifest_exists(registry2, "mirror/app", sbom)

    # A referrer only the target has, listed in the target's own fallback index (as its client would).
    own = oras_push(registry2, "mirror/app", image, IN_TOTO, b"{}", DSSE, tmp_path, "own")
    add_to_fallback_index(registry2, "mirror/app", image.digest, [own])
    code, result = run_sync(tmp_path, rule, auth_for(registry, registry2), name="with-referrers")
    assert code == 0, result
    assert (result["imagesSkipped"], result["referrersCopied"]) == (1, 1)
    listed = json.loads(seed.get_manifest(registry2, "mirror/app", fallback_tag(image.digest))[0])["manifests"]
    assert [e["digest"] for e in listed] == [own, sbom]

    sig = cosign_tag_artifact(registry, "lib/app", image, ".sig")
    code, result = run_sync(tmp_path, rule, auth_for(registry, registry2), name="later")
    assert code == 0, result
    assert (result["imagesSkipped"], result["referrersCopied"], result["referrersSkipped"]) == (1, 1, 1)
    assert same_manifest(registry, "lib/app", registry2, "mirror/app", fallback_tag(image.digest) + ".sig") == sig


def test_type_filters(registry: RegistryProcess, registry2: RegistryProcess, tmp_path: Path) -> None:
    made = Signed(registry, tmp_path)
    code, result = run_sync(tmp_path, rules(registry, registry2), auth_for(registry, registry2),
                            "--referrers-type", "application/vnd.dev.cosign.*,application/spdx+json")
    assert code == 0, result
    assert result["referrersCopied"] == 6  # 5 cosign tags, the SBOM; not the attestation, not the notation
    assert seed.manifest_exists(registry2, "mirror/app", made.sbom)
    assert not seed.manifest_exists(registry2, "mirror/app", made.attestation)
    listed = json.loads(seed.get_manifest(registry2, "mirror/app", fallback_tag(made.image.digest))[0])["manifests"]
    assert [e["digest"] for e in listed] == [made.sbom]

    code, result = run_sync(tmp_path, rules(registry, registry2, "other"), auth_for(registry, registry2),
                            "--referrers-exclude-type", "application/vnd.dev.cosign.artifact.att.v1+json",
                            name="exclude")
    assert code == 0, result
    assert (result["referrersCopied"], result["referrersSkipped"]) == (made.count - 1, 0)
    assert not seed.manifest_exists(registry2, "other/app", fallback_tag(made.image.digest) + ".att")
    assert seed.manifest_exists(registry2, "other/app", fallback_tag(made.image.digest) + ".sig")


def test_failed_referrer_fails_its_image_unless_optional(
        registry: RegistryProcess, registry2: RegistryProcess, tmp_path: Path) -> None:
    image = seed.push_image(registry, "lib/app", "v1", oci=True, seed="broken")
    sig = cosign_tag_artifact(registry, "lib/app", image, ".sig")
    # The fallback index lists a signature that is no longer in the repository (deleted after it was listed).
    gone = oras_push(registry, "lib/app", image, NOTATION, b"jws", "application/jose+json", tmp_path, "gone")
    add_to_fallback_index(registry, "lib/app", image.digest, [gone])
    seed.delete_manifest(registry, "lib/app", gone)
    rule = {f"{registry.host}/lib/app:v1": f"{registry2.host}/mirror/app"}
    code, result = run_sync(tmp_path, rule, auth_for(registry, registry2))
    assert code == 1
    assert (result["referrersCopied"], result["referrersFailed"]) == (1, 1)
    assert "referrer(s) not copied" in result["failedImages"][0]["reason"]
    assert gone in result["failedImages"][0]["reason"]

    code, result = run_sync(tmp_path, rule, auth_for(registry, registry2), "--referrers-optional", name="optional")
    assert code == 0, result
    assert (result["imagesSkipped"], result["referrersSkipped"], result["referrersFailed"]) == (1, 1, 1)
    assert "referrer(s) not copied" in result["skippedImages"][0]["note"]
    assert seed.manifest_exists(registry2, "mirror/app", sig)


# -- the referrers API, from responses served by a test transport -----------------------------------

# The answers follow the distribution spec v1.1 ("Listing Referrers", "Pushing Manifests with Subject"): the
# referrers index (filtered to one artifact type when asked, with OCI-Filters-Applied; an empty index for a
# digest without referrers), and OCI-Subject on the PUT of a manifest that has a subject.
API_HOST = "api.registry.test"


def _json(document: dict[str, Any]) -> bytes:
    return json.dumps(document, indent=2).encode()


class _Stream(httpx.AsyncByteStream):
    """A body the client streams (``content=`` bytes would be read eagerly, and blobs are streamed)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.data


class RecordedRegistry:
    """An in-memory registry answering through ``httpx.MockTransport``: the referrers API (source role) with
    the recorded index bodies, and ``OCI-Subject`` on the PUT of a manifest with a subject (target role)."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.manifests: dict[str, tuple[bytes, str]] = {}
        self.tags: dict[str, str] = {}
        self.requests: list[tuple[str, str]] = []
        self.uploads = 0

    def add_blob(self, data: bytes) -> dict[str, Any]:
        digest = seed.sha256_digest(data)
        self.blobs[digest] = data
        return {"mediaType": "application/octet-stream", "digest": digest, "size": len(data)}

    def add_manifest(self, document: dict[str, Any], tag: str | None = None) -> tuple[str, int]:
        data = _json(document)
        digest = seed.sha256_digest(data)
        self.manifests[digest] = (data, document["mediaType"])
        if tag:
            self.tags[tag] = digest
        return digest, len(data)

    def referrers(self, subject: str, artifact_type: str | None) -> dict[str, Any]:
        entries = []
        for digest, (data, media_type) in self.manifests.items():
            body = json.loads(data)
            if (body.get("subject") or {}).get("digest") == subject:
                kind = body.get("artifactType") or body["config"]["mediaType"]
                if artifact_type in (None, kind):
                    entries.append({"mediaType": media_type, "digest": digest, "size": len(data),
                                    "artifactType": kind, **({"annotations": body["annotations"]}
                                                             if body.get("annotations") else {})})
        return {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}

    async def handle(self, request: httpx.Request) -> httpx.Response:
        await request.aread()  # streamed blob uploads
        method, path = request.method, request.url.path
        self.requests.append((method, path))
        if path == "/v2/":
            return httpx.Response(200, json={})
        parts = path.split("/")
        kind, ref = parts[-2], parts[-1]
        if path.endswith("/tags/list"):
            return httpx.Response(200, json={"name": "lib/app", "tags": sorted(self.tags)})
        if kind == "referrers":
            wanted = request.url.params.get("artifactType")
            headers = {"Content-Type": OCI_INDEX, **({"OCI-Filters-Applied": "artifactType"} if wanted else {})}
            return httpx.Response(200, content=_json(self.referrers(ref, wanted)), headers=headers)
        if kind == "manifests":
            digest = self.tags.get(ref, ref)
            if method == "PUT":
                body = request.content
                digest = seed.sha256_digest(body)
                self.manifests[digest] = (body, request.headers["content-type"])
                if not ref.startswith("sha256:"):
                    self.tags[ref] = digest
                headers = {"Docker-Content-Digest": digest}
                subject = json.loads(body).get("subject")
                if subject:
                    headers["OCI-Subject"] = subject["digest"]
                return httpx.Response(201, headers=headers)
            if digest not in self.manifests:
                return httpx.Response(404, json={"errors": [{"code": "MANIFEST_UNKNOWN"}]})
            data, media_type = self.manifests[digest]
            return httpx.Response(200, content=b"" if method == "HEAD" else data,
                                  headers={"Content-Type": media_type, "Docker-Content-Digest": digest,
                                           "Content-Length": str(len(data))})
        if kind == "blobs" and method in ("GET", "HEAD"):
            if ref not in self.blobs:
                return httpx.Response(404)
            data = self.blobs[ref]
            return httpx.Response(200, stream=_Stream(b"" if method == "HEAD" else data),
                                  headers={"Content-Length": str(len(data)), "Docker-Content-Digest": ref})
        if path.endswith("/blobs/uploads/") and method == "POST":
            self.uploads += 1
            return httpx.Response(202, headers={"Location": f"{path}{self.uploads}"})
        if "/blobs/uploads/" in path and method == "PUT":
            digest = request.url.params["digest"]
            self.blobs[digest] = request.content
            return httpx.Response(201, headers={"Docker-Content-Digest": digest})
        return httpx.Response(404)


def seed_recorded(registry: RecordedRegistry) -> tuple[str, list[str]]:
    """An image with a Notation signature and an SBOM that refer to it."""
    config = registry.add_blob(b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}')
    layer = registry.add_blob(b"layer")
    image, size = registry.add_manifest({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {**config, "mediaType": "application/vnd.oci.image.config.v1+json"},
        "layers": [{**layer, "mediaType": "application/vnd.oci.image.layer.v1.tar"}]}, tag="v1")
    empty = registry.add_blob(b"{}")
    artifacts = []
    for artifact_type, content in ((NOTATION, b"jws"), (SPDX, b'{"spdxVersion":"SPDX-2.3"}')):
        blob = registry.add_blob(content)
        digest, _ = registry.add_manifest({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": artifact_type,
            "config": {**empty, "mediaType": "application/vnd.oci.empty.v1+json"},
            "layers": [{**blob, "mediaType": artifact_type}],
            "subject": {"mediaType": OCI_MANIFEST, "digest": image, "size": size},
            "annotations": {"org.opencontainers.image.created": "2026-11-27T00:00:00Z"}})
        artifacts.append(digest)
    return image, artifacts


@pytest.fixture
def recorded() -> Iterator[tuple[RecordedRegistry, RecordedRegistry]]:
    yield RecordedRegistry(), RecordedRegistry()


async def test_referrers_api_recording(registry2: RegistryProcess,
                                       recorded: tuple[RecordedRegistry, RecordedRegistry]) -> None:
    """A RECORDING, not a live registry: no registry with the referrers API installs here (not on PyPI; zot and
    distribution 3 are not in Debian bookworm), so the API answers come from a test transport, shaped as the
    OCI distribution spec v1.1 documents them (referrers index, ``OCI-Filters-Applied``, ``OCI-Subject``).

    Read path: source with the API -> docker-registry 2.8 target (fallback index written). Write path: the
    same source -> a target that answers ``OCI-Subject``: no fallback tag is pushed. Filter: ``artifactType``
    is sent when one literal type is wanted.
    """
    source, api_target = recorded
    image, artifacts = seed_recorded(source)

    def transports(endpoint: Any) -> httpx.AsyncBaseTransport | None:
        if endpoint.host == API_HOST:
            return httpx.MockTransport(source.handle)
        if endpoint.host == "target.registry.test":
            return httpx.MockTransport(api_target.handle)
        return None

    auth = parse_auth({API_HOST: {"plainHTTP": True}, "target.registry.test": {"plainHTTP": True},
                       registry2.host: {"plainHTTP": True}}, "test")

    async def run(target: str, referrers: ReferrerOptions) -> dict[str, Any]:
        parsed, errors = parse_rules({f"{API_HOST}/lib/app:v1": target}, None, None)
        stats = await sync(parsed, errors, auth, SyncOptions(referrers=referrers), transport_factory=transports)
        return stats.result()

    result = await run(f"{registry2.host}/mirror/app", ReferrerOptions())
    assert result["imagesSynced"] == 1 and result["referrersCopied"] == 2, result
    listed = json.loads(seed.get_manifest(registry2, "mirror/app", fallback_tag(image))[0])["manifests"]
    assert sorted(e["digest"] for e in listed) == sorted(artifacts)
    for digest in artifacts:
        assert seed.get_manifest(registry2, "mirror/app", digest)[0] == source.manifests[digest][0]
    assert ("GET", f"/v2/lib/app/referrers/{image}") in source.requests

    result = await run("target.registry.test/mirror/app", ReferrerOptions(include=(SPDX,)))
    assert result["referrersCopied"] == 1, result
    assert fallback_tag(image) not in api_target.tags  # the target indexed the subject itself
    assert api_target.referrers(image, None)["manifests"][0]["digest"] == artifacts[1]
    assert any(p == f"/v2/lib/app/referrers/{image}" for _, p in source.requests)

    before = len(api_target.requests)
    result = await run("target.registry.test/mirror/app", ReferrerOptions(include=(SPDX,)))
    assert (result["referrersCopied"], result["referrersSkipped"]) == (0, 1), result
    assert not [r for r in api_target.requests[before:] if r[0] in ("PUT", "POST", "PATCH")]


def signed(registry: RecordedRegistry, subject: str, size: int, media_type: str = OCI_MANIFEST) -> str:
    """A Notation-style signature referring to ``subject``; its digest."""
    empty, blob = registry.add_blob(b"{}"), registry.add_blob(f"jws of {subject}".encode())
    digest, _ = registry.add_manifest({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": NOTATION,
        "config": {**empty, "mediaType": "application/vnd.oci.empty.v1+json"},
        "layers": [{**blob, "mediaType": NOTATION}],
        "subject": {"mediaType": media_type, "digest": subject, "size": size}})
    return digest


async def test_an_index_s_children_referrers_are_listed_while_it_is_copied(
        recorded: tuple[RecordedRegistry, RecordedRegistry]) -> None:
    """Once the source is known to have the referrers API, the referrers of an index's children are listed
    while the index is copied (not after its push), and the index is not read back from the target to find
    its children. A RECORDING, as above. The index's push is held until every child's listing went out:
    chained, it would wait out the hold's 10 s and fail."""
    source, target = recorded
    first, _ = seed_recorded(source)  # lib/app:v1, a single image: its listing teaches the API
    children = []
    for arch in ("amd64", "arm64"):
        config = source.add_blob(f'{{"architecture":"{arch}","os":"linux"}}'.encode())
        layer = source.add_blob(f"layer {arch}".encode())
        child, size = source.add_manifest({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {**config, "mediaType": "application/vnd.oci.image.config.v1+json"},
            "layers": [{**layer, "mediaType": "application/vnd.oci.image.layer.v1.tar"}]})
        signed(source, child, size)
        children.append({"mediaType": OCI_MANIFEST, "digest": child, "size": size,
                         "platform": {"architecture": arch, "os": "linux"}})
    index, _ = source.add_manifest({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": children}, tag="v2")
    child_digests = {c["digest"] for c in children}

    api_known, children_listed = asyncio.Event(), asyncio.Event()
    listed: set[str] = set()

    async def at_source(request: httpx.Request) -> httpx.Response:
        parts = request.url.path.split("/")
        if request.method == "GET" and parts[-2:] == ["manifests", "v2"]:
            await asyncio.wait_for(api_known.wait(), 10)  # the index starts once v1's listing was answered
        response = await source.handle(request)
        if parts[-2] == "referrers":
            api_known.set()
            listed.add(parts[-1])
            if child_digests <= listed:
                children_listed.set()
        return response

    async def at_target(request: httpx.Request) -> httpx.Response:
        if request.method == "PUT" and request.url.path.endswith("/manifests/v2"):
            await asyncio.wait_for(children_listed.wait(), 10)
        return await target.handle(request)

    def transports(endpoint: Any) -> httpx.AsyncBaseTransport:
        return httpx.MockTransport(at_source if endpoint.host == API_HOST else at_target)

    auth = parse_auth({API_HOST: {"plainHTTP": True}, "target.registry.test": {"plainHTTP": True}}, "test")
    parsed, errors = parse_rules({f"{API_HOST}/lib/app": "target.registry.test/mirror/app"}, None, None)
    stats = await sync(parsed, errors, auth, SyncOptions(retries=0), transport_factory=transports)
    result = stats.result()
    assert (result["imagesSynced"], result["referrersCopied"], result["imagesFailed"]) == (2, 4, 0), result
    for child in child_digests:
        assert target.referrers(child, None)["manifests"], f"the signature of {child} was not copied"
    assert ("GET", f"/v2/mirror/app/manifests/{index}") not in target.requests, "the index was read back"
    assert first in listed


def test_pure_helpers() -> None:
    digest = "sha256:" + "0f" * 32
    assert fallback_tag(digest) == "sha256-" + "0f" * 32
    options = ReferrerOptions(include=("application/vnd.dev.cosign.*", SPDX), exclude=("*.att.v1+json",))
    assert options.wants("application/vnd.dev.cosign.artifact.sig.v1+json")
    assert not options.wants("application/vnd.dev.cosign.artifact.att.v1+json")
    assert not options.wants(IN_TOTO)
    assert options.api_filter is None and ReferrerOptions(include=(SPDX,)).api_filter == SPDX
    one = {"mediaType": OCI_MANIFEST, "digest": digest, "size": 3}
    assert merge_index({"manifests": [one]}, [one]) is None  # nothing missing: nothing to push
    assert merge_index(None, [one]) == {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [one]}
