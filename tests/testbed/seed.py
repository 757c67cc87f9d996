"""Seed test registries with images, and read them back, with raw Registry API calls.

Deliberately independent of ``imagesync.engine``: a test that seeds with the code under test proves
nothing. Everything here is plain synchronous httpx following the distribution spec: blob uploads
(monolithic ``POST`` + ``PUT``, streamed ``POST`` + ``PATCH`` + ``PUT``, cross-repository mounts), manifests
(Docker v2 schema 2, OCI image manifest, Docker manifest list, OCI index, signed Docker schema 1), and the
Basic / Bearer-token dance, kept minimal.

Every helper takes a *target*: a :class:`~testbed.registry.RegistryProcess` (a short-lived client is made
with the registry's own credentials and CA) or a :class:`RegistryAPI` (reused: cheaper when seeding many
images, and the way to seed with other credentials).
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import re
import ssl
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from testbed.registry import RegistryProcess

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"

# Everything we can read back; without it the registry may answer with a converted schema 1 manifest.
ACCEPT_ALL = ", ".join([OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST,
                        DOCKER_SCHEMA1_SIGNED, DOCKER_SCHEMA1])

# Layers up to this size are generated in memory and uploaded in one PUT; bigger ones are streamed.
STREAM_THRESHOLD = 16 * 1024 * 1024
_CHUNK = 1024 * 1024

# Fixed so that the same seed always gives the same config blob, hence the same manifest digest.
_CREATED = "2024-01-01T00:00:00Z"

Platform = tuple[str, str]  # (os, architecture)
DEFAULT_PLATFORMS: tuple[Platform, ...] = (("linux", "amd64"), ("linux", "arm64"))


class SeedError(RuntimeError):
    """A registry refused a seeding request: the test bed, not the code under test, is broken."""


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# -- results ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Blob:
    """A blob present in ``repo`` of the registry it was pushed to."""

    digest: str
    size: int
    media_type: str
    repo: str

    def descriptor(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "size": self.size, "digest": self.digest}


@dataclass(frozen=True)
class SeededImage:
    """A manifest (image or index) as pushed: the exact bytes, their media type and digest.

    ``blobs`` lists the config and layers an image references (for an index: those of all children,
    without duplicates); ``children`` the index's child manifests, in index order.
    """

    repo: str
    tag: str | None
    manifest: bytes
    media_type: str
    digest: str
    blobs: tuple[Blob, ...]
    children: tuple[SeededImage, ...] = ()
    platform: Platform | None = None

    @property
    def reference(self) -> str:
        """``repo:tag``, or ``repo@digest`` for an untagged manifest."""
        return f"{self.repo}:{self.tag}" if self.tag else f"{self.repo}@{self.digest}"

    def ref(self, host: str) -> str:
        """The full image reference on the registry ``host`` (``127.0.0.1:PORT``)."""
        return f"{host}/{self.reference}"

    @property
    def total_size(self) -> int:
        return sum(blob.size for blob in self.blobs)


# -- the client ------------------------------------------------------------------------------------

_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="..",service=".."`` -> ("bearer", {"realm": .., "service": ..})."""
    scheme, _, rest = header.strip().partition(" ")
    return scheme.lower(), dict(_CHALLENGE_PARAM.findall(rest))


class RegistryAPI:
    """A minimal synchronous Registry API client for seeding: Basic or Bearer auth, nothing clever.

    It learns the auth scheme from ``GET /v2/`` once; with Bearer it asks the realm for a token per set of
    scopes (cached for the client's life) before the request, so streamed bodies are never sent twice.
    """

    def __init__(self, url: str, *, credentials: tuple[str, str] | None = None,
                 ca_file: str | Path | None = None, timeout: float = 120.0) -> None:
        """``url``: ``http(s)://host:port``; ``credentials``: for Basic auth or the token realm;
        ``ca_file``: PEM file to trust for an HTTPS registry (and its token realm)."""
        self.url = url.rstrip("/")
        self.credentials = credentials
        verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=str(ca_file)) if ca_file else True
        self._client = httpx.Client(verify=verify, timeout=timeout)
        self._scheme: str | None = None
        self._challenge: dict[str, str] = {}
        self._tokens: dict[tuple[str, ...], str] = {}

    @classmethod
    def for_registry(cls, registry: RegistryProcess, *, credentials: tuple[str, str] | None = None,
                     anonymous: bool = False) -> RegistryAPI:
        """A client for ``registry`` with ``credentials``, else the registry's own account unless
        ``anonymous``."""
        creds = None if anonymous else (credentials or registry.credentials)
        return cls(registry.url, credentials=creds, ca_file=registry.ca_file)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> RegistryAPI:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _auth_scheme(self) -> str:
        if self._scheme is None:
            response = self._client.get(f"{self.url}/v2/")
            if response.status_code == 401:
                self._scheme, self._challenge = parse_challenge(response.headers.get("WWW-Authenticate", ""))
            else:
                self._scheme = "none"
        return self._scheme

    def token(self, scopes: Sequence[str]) -> str:
        """A Bearer token for ``scopes`` from the registry's realm (cached)."""
        key = tuple(sorted(scopes))
        if key not in self._tokens:
            params = httpx.QueryParams([("service", self._challenge.get("service", "")),
                                        *(("scope", scope) for scope in key)])
            response = self._client.get(self._challenge["realm"], params=params,
                                        auth=httpx.BasicAuth(*self.credentials) if self.credentials else None)
            if response.status_code != 200:
                raise SeedError(f"token request for {list(key)} failed: "
                                f"{response.status_code} {response.text}")
            body = response.json()
            self._tokens[key] = str(body.get("token") or body["access_token"])
        return self._tokens[key]

    def _headers(self, scopes: Sequence[str]) -> dict[str, str]:
        scheme = self._auth_scheme()
        if scheme == "basic" and self.credentials:
            user, password = self.credentials
            return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
        if scheme == "bearer":
            return {"Authorization": f"Bearer {self.token(scopes)}"}
        return {}

    def request(self, method: str, path_or_url: str, *, scopes: Sequence[str],
                headers: Mapping[str, str] | None = None, content: bytes | Iterable[bytes] | None = None,
                params: Mapping[str, str] | None = None) -> httpx.Response:
        """One request with auth; ``path_or_url`` is ``/v2/...`` or an absolute URL (upload Locations)."""
        url = path_or_url if "://" in path_or_url else f"{self.url}{path_or_url}"
        all_headers = {**self._headers(scopes), **(headers or {})}
        return self._client.request(method, url, headers=all_headers, content=content, params=params)

    @contextmanager
    def stream(self, method: str, path: str, *, scopes: Sequence[str],
               headers: Mapping[str, str] | None = None) -> Iterator[httpx.Response]:
        all_headers = {**self._headers(scopes), **(headers or {})}
        with self._client.stream(method, f"{self.url}{path}", headers=all_headers) as response:
            yield response


Target = RegistryProcess | RegistryAPI


@contextmanager
def open_api(target: Target) -> Iterator[RegistryAPI]:
    """``target`` itself when it is a client, else a client for the registry closed afterwards."""
    if isinstance(target, RegistryAPI):
        yield target
        return
    with RegistryAPI.for_registry(target) as api:
        yield api


def pull_scope(repo: str) -> str:
    return f"repository:{repo}:pull"


def push_scope(repo: str) -> str:
    return f"repository:{repo}:pull,push"


def _check(response: httpx.Response, expected: int | tuple[int, ...], what: str) -> httpx.Response:
    allowed = (expected,) if isinstance(expected, int) else expected
    if response.status_code not in allowed:
        raise SeedError(f"{what}: {response.request.method} {response.request.url.path} -> "
                        f"{response.status_code} {response.text[:500]}")
    return response


def _with_digest(location: str, digest: str) -> str:
    return f"{location}{'&' if '?' in location else '?'}digest={quote(digest)}"


def _absolute(api: RegistryAPI, location: str) -> str:
    return location if "://" in location else f"{api.url}{location}"


# -- deterministic content ----------------------------------------------------------------------------


def random_chunks(size: int, seed: int | str, chunk_size: int = _CHUNK) -> Iterator[bytes]:
    """``size`` pseudo-random bytes in chunks, a function of (size, seed) only: re-running gives the same
    bytes, so digests are stable across runs, and different seeds give different blobs."""
    rng = random.Random(f"imagesync-testbed:{seed}:{size}")
    remaining = size
    while remaining > 0:
        n = min(chunk_size, remaining)
        yield rng.randbytes(n)
        remaining -= n


def random_bytes(size: int, seed: int | str) -> bytes:
    """The same bytes :func:`random_chunks` streams, in memory."""
    return b"".join(random_chunks(size, seed))


def random_digest(size: int, seed: int | str) -> str:
    """The digest of :func:`random_bytes` ``(size, seed)`` without holding it in memory."""
    hasher = hashlib.sha256()
    for chunk in random_chunks(size, seed):
        hasher.update(chunk)
    return "sha256:" + hasher.hexdigest()


# -- blobs ---------------------------------------------------------------------------------------------


def push_blob(target: Target, repo: str, data: bytes, *,
              media_type: str = "application/octet-stream") -> Blob:
    """Monolithic upload: ``POST /blobs/uploads/`` then ``PUT <location>?digest=`` with the whole body."""
    digest = sha256_digest(data)
    with open_api(target) as api:
        scopes = [push_scope(repo)]
        started = _check(api.request("POST", f"/v2/{repo}/blobs/uploads/", scopes=scopes), 202,
                         f"starting upload to {repo}")
        location = _absolute(api, started.headers["Location"])
        _check(api.request("PUT", _with_digest(location, digest), scopes=scopes, content=data,
                           headers={"Content-Type": "application/octet-stream"}), 201,
               f"uploading {digest} to {repo}")
    return Blob(digest, len(data), media_type, repo)


def push_blob_stream(target: Target, repo: str, chunks: Iterable[bytes], *,
                     media_type: str = "application/octet-stream") -> Blob:
    """Streamed upload: ``POST``, one chunked ``PATCH`` fed by ``chunks`` (hashed on the way), then
    ``PUT ?digest=``. Memory stays at one chunk whatever the blob size."""
    hasher = hashlib.sha256()
    size = 0

    def body() -> Iterator[bytes]:
        nonlocal size
        for chunk in chunks:
            hasher.update(chunk)
            size += len(chunk)
            yield chunk

    with open_api(target) as api:
        scopes = [push_scope(repo)]
        started = _check(api.request("POST", f"/v2/{repo}/blobs/uploads/", scopes=scopes), 202,
                         f"starting upload to {repo}")
        patched = _check(api.request("PATCH", _absolute(api, started.headers["Location"]), scopes=scopes,
                                     content=body(), headers={"Content-Type": "application/octet-stream"}),
                         202, f"streaming a blob to {repo}")
        digest = "sha256:" + hasher.hexdigest()
        _check(api.request("PUT", _with_digest(_absolute(api, patched.headers["Location"]), digest),
                           scopes=scopes, content=b""), 201, f"finishing upload of {digest} to {repo}")
    return Blob(digest, size, media_type, repo)


def push_random_blob(target: Target, repo: str, size: int, seed: int | str, *,
                     media_type: str = DOCKER_LAYER) -> Blob:
    """A pseudo-random blob of ``size`` bytes from ``seed`` (streamed above :data:`STREAM_THRESHOLD`)."""
    if size > STREAM_THRESHOLD:
        return push_blob_stream(target, repo, random_chunks(size, seed), media_type=media_type)
    return push_blob(target, repo, random_bytes(size, seed), media_type=media_type)


def blob_exists(target: Target, repo: str, digest: str) -> bool:
    with open_api(target) as api:
        response = api.request("HEAD", f"/v2/{repo}/blobs/{digest}", scopes=[pull_scope(repo)])
    return _check(response, (200, 404), f"checking {digest} in {repo}").status_code == 200


def mount_blob(target: Target, repo: str, blob: Blob) -> Blob:
    """Make ``blob`` (pushed to ``blob.repo``) present in ``repo`` of the same registry, by mounting."""
    if blob.repo == repo:
        return blob
    with open_api(target) as api:
        response = api.request("POST", f"/v2/{repo}/blobs/uploads/",
                               params={"mount": blob.digest, "from": blob.repo},
                               scopes=[push_scope(repo), pull_scope(blob.repo)])
        if response.status_code == 202:
            # The registry started an upload instead: the source does not have it (or we may not read it).
            api.request("DELETE", _absolute(api, response.headers["Location"]), scopes=[push_scope(repo)])
        _check(response, 201, f"mounting {blob.digest} from {blob.repo} into {repo}")
    return Blob(blob.digest, blob.size, blob.media_type, repo)


def blob_sha256(target: Target, repo: str, digest: str) -> str:
    """``sha256:<hex>`` of the blob's bytes as the registry serves them (streamed, any size)."""
    hasher = hashlib.sha256()
    with open_api(target) as api, api.stream("GET", f"/v2/{repo}/blobs/{digest}",
                                             scopes=[pull_scope(repo)]) as response:
        if response.status_code != 200:
            response.read()
            _check(response, 200, f"reading blob {digest} of {repo}")
        for chunk in response.iter_bytes(_CHUNK):
            hasher.update(chunk)
    return "sha256:" + hasher.hexdigest()


# -- manifests -----------------------------------------------------------------------------------------


def encode_json(document: Mapping[str, Any]) -> bytes:
    """How the helpers serialise manifests: indented, so byte-identity checks catch re-serialisation."""
    return json.dumps(document, indent=3).encode()


def push_manifest(target: Target, repo: str, reference: str, manifest: bytes, media_type: str) -> str:
    """``PUT /manifests/<reference>``; returns the registry's ``Docker-Content-Digest``."""
    with open_api(target) as api:
        response = _check(api.request("PUT", f"/v2/{repo}/manifests/{reference}", scopes=[push_scope(repo)],
                                      content=manifest, headers={"Content-Type": media_type}),
                          201, f"pushing manifest {repo}:{reference}")
    digest = str(response.headers.get("Docker-Content-Digest", ""))
    if media_type != DOCKER_SCHEMA1_SIGNED and digest != sha256_digest(manifest):
        raise SeedError(f"registry digest {digest} != sha256 of the pushed bytes {sha256_digest(manifest)}")
    return digest


def get_manifest(target: Target, repo: str, reference: str, *,
                 accept: str = ACCEPT_ALL) -> tuple[bytes, str, str]:
    """(bytes, media type, ``Docker-Content-Digest``) as the registry serves ``repo:reference``."""
    with open_api(target) as api:
        response = _check(api.request("GET", f"/v2/{repo}/manifests/{reference}", scopes=[pull_scope(repo)],
                                      headers={"Accept": accept}),
                          200, f"reading manifest {repo}:{reference}")
    media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
    return response.content, media_type, response.headers.get("Docker-Content-Digest", "")


def manifest_exists(target: Target, repo: str, reference: str) -> bool:
    with open_api(target) as api:
        response = api.request("HEAD", f"/v2/{repo}/manifests/{reference}", scopes=[pull_scope(repo)],
                               headers={"Accept": ACCEPT_ALL})
    return _check(response, (200, 404), f"checking manifest {repo}:{reference}").status_code == 200


def delete_manifest(target: Target, repo: str, digest: str) -> None:
    """Delete by digest (the registry runs with ``storage.delete.enabled``); its tags go with it."""
    with open_api(target) as api:
        _check(api.request("DELETE", f"/v2/{repo}/manifests/{digest}",
                           scopes=[f"repository:{repo}:delete"]), 202, f"deleting {repo}@{digest}")


def _paged_list(api: RegistryAPI, path: str, key: str, scopes: Sequence[str], what: str) -> list[str] | None:
    """Items under ``key`` across every page, following ``Link: <...>; rel="next"``; None on 404."""
    items: list[str] = []
    url: str | None = path
    while url:
        response = api.request("GET", url, scopes=scopes)
        if response.status_code == 404:
            return None
        _check(response, 200, what)
        items.extend(response.json().get(key) or [])
        next_link = response.links.get("next", {}).get("url")
        url = str(response.url.join(next_link)) if next_link else None
    return items


def list_tags(target: Target, repo: str, *, page_size: int | None = None) -> list[str]:
    """All tags of ``repo`` as the registry orders them; [] when the repository does not exist.

    Distribution 2.8 ignores ``n`` on the tags list (one page, unsorted); ``page_size`` is for registries
    that page.
    """
    query = f"?n={page_size}" if page_size else ""
    with open_api(target) as api:
        tags = _paged_list(api, f"/v2/{repo}/tags/list{query}", "tags", [pull_scope(repo)],
                           f"listing tags of {repo}")
    return tags or []


def list_repositories(target: Target, *, page_size: int | None = None) -> list[str]:
    """The registry's catalog (``/v2/_catalog``, which distribution pages with ``Link``)."""
    query = f"?n={page_size}" if page_size else ""
    with open_api(target) as api:
        repos = _paged_list(api, f"/v2/_catalog{query}", "repositories", ["registry:catalog:*"],
                            "listing the catalog")
    return repos or []


# -- images --------------------------------------------------------------------------------------------

LayerSpec = int | bytes | Blob  # a size (pseudo-random content), literal content, or an existing blob


def _ensure_layers(api: RegistryAPI, repo: str, layers: Sequence[LayerSpec], seed: int | str,
                   media_type: str) -> list[Blob]:
    blobs = []
    for index, layer in enumerate(layers):
        if isinstance(layer, Blob):
            blobs.append(mount_blob(api, repo, layer))
        elif isinstance(layer, bytes):
            blobs.append(push_blob(api, repo, layer, media_type=media_type))
        else:
            blobs.append(push_random_blob(api, repo, layer, f"{seed}/layer{index}", media_type=media_type))
    return blobs


def image_config(platform: Platform, layers: Sequence[Blob], *,
                 labels: Mapping[str, str] | None = None) -> bytes:
    """A config blob valid enough for registries and skopeo. ``diff_ids`` repeats the layer digests:
    the layers are random bytes, not gzip, so there is no uncompressed digest to put there."""
    os_name, architecture = platform
    config = {
        "architecture": architecture,
        "os": os_name,
        "created": _CREATED,
        "config": {"Labels": dict(labels or {})},
        "rootfs": {"type": "layers", "diff_ids": [blob.digest for blob in layers]},
        "history": [{"created": _CREATED, "created_by": f"imagesync test layer {i}"}
                    for i in range(len(layers))],
    }
    return json.dumps(config, sort_keys=True).encode()


def push_config(target: Target, repo: str, platform: Platform, layers: Sequence[Blob], *, oci: bool = False,
                labels: Mapping[str, str] | None = None) -> Blob:
    return push_blob(target, repo, image_config(platform, layers, labels=labels),
                     media_type=OCI_CONFIG if oci else DOCKER_CONFIG)


def push_image(target: Target, repo: str, tag: str | None = "latest", *,
               layers: Sequence[LayerSpec] = (1024,), seed: int | str = 0, oci: bool = False,
               platform: Platform = ("linux", "amd64"),
               labels: Mapping[str, str] | None = None,
               annotations: Mapping[str, str] | None = None) -> SeededImage:
    """Push layers, a config and a Docker v2 schema 2 (default) or OCI image manifest.

    ``layers``: sizes (pseudo-random content from ``seed``), literal bytes, or :class:`Blob`s already in
    the registry (mounted from their repository when needed, e.g. a base layer shared between repos).
    The config carries ``seed``, so two images differ by seed even with the same layers.
    ``tag=None`` pushes by digest only (an untagged manifest, like an index child).
    """
    layer_type = OCI_LAYER if oci else DOCKER_LAYER
    with open_api(target) as api:
        layer_blobs = _ensure_layers(api, repo, layers, seed, layer_type)
        config = push_config(api, repo, platform, layer_blobs, oci=oci,
                             labels={"dev.imagesync.test.seed": str(seed), **(labels or {})})
        document: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST if oci else DOCKER_MANIFEST,
            "config": config.descriptor(),
            "layers": [Blob(b.digest, b.size, layer_type, repo).descriptor() for b in layer_blobs],
        }
        if annotations:
            document["annotations"] = dict(annotations)
        media_type = document["mediaType"]
        manifest = encode_json(document)
        digest = push_manifest(api, repo, tag or sha256_digest(manifest), manifest, media_type)
    return SeededImage(repo, tag, manifest, media_type, digest, (config, *layer_blobs), platform=platform)


def push_index(target: Target, repo: str, tag: str | None = "latest", *,
               platforms: Sequence[Platform] = DEFAULT_PLATFORMS, oci: bool = True,
               layers: Sequence[LayerSpec] = (1024,), seed: int | str = 0) -> SeededImage:
    """An OCI image index (default) or Docker manifest list over one image per platform.

    Children (OCI or Docker manifests to match) are pushed first, by digest, each with its own content
    (seed ``<seed>/<os>/<arch>``), then the index under ``tag``.
    """
    with open_api(target) as api:
        children = [push_image(api, repo, None, layers=layers, seed=f"{seed}/{os_name}/{arch}", oci=oci,
                               platform=(os_name, arch)) for os_name, arch in platforms]
        document = {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX if oci else DOCKER_MANIFEST_LIST,
            "manifests": [
                {"mediaType": child.media_type, "size": len(child.manifest), "digest": child.digest,
                 "platform": {"architecture": child.platform[1], "os": child.platform[0]}}
                for child in children if child.platform is not None
            ],
        }
        media_type = str(document["mediaType"])
        manifest = encode_json(document)
        digest = push_manifest(api, repo, tag or sha256_digest(manifest), manifest, media_type)
    blobs = tuple(dict.fromkeys(blob for child in children for blob in child.blobs))
    return SeededImage(repo, tag, manifest, media_type, digest, blobs, tuple(children))


# -- Docker schema 1 -------------------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _libtrust_key_id(key: ec.EllipticCurvePublicKey) -> str:
    """libtrust's key ID: base32 of the first 240 bits of sha256(SPKI DER), in groups of four."""
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    encoded = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode("ascii").rstrip("=")
    return ":".join(encoded[i:i + 4] for i in range(0, len(encoded), 4))


def sign_schema1(payload: bytes, key: ec.EllipticCurvePrivateKey | None = None) -> bytes:
    """A libtrust "pretty" JWS around a schema 1 manifest, as ``docker push`` produced.

    The signed bytes are ``payload`` minus its closing brace; the protected header records that cut
    (``formatLength``/``formatTail``) so a verifier can rebuild the payload from the signed document.
    """
    key = key or ec.generate_private_key(ec.SECP256R1())
    close = payload.rstrip().rfind(b"}")
    format_length = len(payload[:close].rstrip())
    tail = payload[format_length:]
    protected = _b64url(json.dumps({"formatLength": format_length, "formatTail": _b64url(tail),
                                    "time": _CREATED}).encode())
    signing_input = f"{protected}.{_b64url(payload)}".encode()
    r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
    numbers = key.public_key().public_numbers()
    signature = {
        "header": {
            "jwk": {"crv": "P-256", "kid": _libtrust_key_id(key.public_key()), "kty": "EC",
                    "x": _b64url(numbers.x.to_bytes(32, "big")), "y": _b64url(numbers.y.to_bytes(32, "big"))},
            "alg": "ES256",
        },
        "signature": _b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big")),
        "protected": protected,
    }
    signatures = json.dumps([signature], indent=3)
    signed = payload[:format_length] + b',\n   "signatures": ' + signatures.encode()
    return signed + b"\n" + tail.lstrip(b"\n")


def push_schema1(target: Target, repo: str, tag: str = "latest", *, layers: Sequence[LayerSpec] = (1024,),
                 seed: int | str = 0, architecture: str = "amd64") -> SeededImage:
    """A signed Docker schema 1 manifest (``...v1+prettyjws``).

    Needs a registry started with ``schema1=True`` (distribution 2.8 refuses schema 1 pushes unless
    ``compatibility.schema1.enabled``), and it must be signed: the registry verifies the JWS.
    The returned digest is the registry's ``Docker-Content-Digest`` for the stored bytes.
    """
    with open_api(target) as api:
        layer_blobs = _ensure_layers(api, repo, layers, seed, DOCKER_LAYER)
        # fsLayers and history run from the top layer down to the base.
        ids = [hashlib.sha256(f"{seed}/{i}/{blob.digest}".encode()).hexdigest()
               for i, blob in enumerate(layer_blobs)]
        history = []
        for i in reversed(range(len(layer_blobs))):
            v1: dict[str, Any] = {"id": ids[i], "created": _CREATED, "architecture": architecture,
                                  "os": "linux"}
            if i > 0:
                v1["parent"] = ids[i - 1]
            history.append({"v1Compatibility": json.dumps(v1, sort_keys=True)})
        document = {
            "schemaVersion": 1,
            "name": repo,
            "tag": tag,
            "architecture": architecture,
            "fsLayers": [{"blobSum": b.digest} for b in reversed(layer_blobs)],
            "history": history,
        }
        manifest = sign_schema1(encode_json(document))
        digest = push_manifest(api, repo, tag, manifest, DOCKER_SCHEMA1_SIGNED)
    return SeededImage(repo, tag, manifest, DOCKER_SCHEMA1_SIGNED, digest, tuple(layer_blobs),
                       platform=("linux", architecture))
