"""What the registries alone can do: the yardsticks bench/run.py measures the tools against.

- :func:`raw_ceiling` (copying): GET every blob from the source and stream it to the target (POST +
  PUT), 8 at a time, then PUT the manifests. No HEADs, no digest checks, no retries.
- :func:`push_floor` (pushing many small images): the same images, already in memory, pushed to the
  target from 8 threads on plain keep-alive ``http.client`` connections: POST + PUT per blob, PUT per
  manifest, nothing else. The lightest client Python has, so that the floor is the target
  registry's, not the floor client's.

Both read what to copy with :func:`inventory`: every tag's manifest (and an index's children) and the
blobs they reference, from the source's Registry API (plain HTTP, no auth, as bench/run.py's registries).
"""

from __future__ import annotations

import asyncio
import http.client
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx

# Every manifest media type the seeded sets use; without them docker-registry may convert to schema 1.
ACCEPT = ", ".join([
    "application/vnd.oci.image.index.v1+json", "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
])
CONCURRENCY = 8


@dataclass(frozen=True)
class Manifest:
    repo: str
    reference: str  # a tag, or the digest of an index's child
    data: bytes
    media_type: str
    is_index: bool


@dataclass
class Inventory:
    """What a copy of ``repos`` must write: manifests (children before their index) and unique blobs."""

    manifests: list[Manifest] = field(default_factory=list)
    blobs: dict[tuple[str, str], int] = field(default_factory=dict)  # (repo, digest) -> size

    @property
    def tags(self) -> int:
        return sum(1 for m in self.manifests if not m.reference.startswith("sha256:"))


def inventory(client: httpx.Client, source_url: str, repos: Iterable[str]) -> Inventory:
    found = Inventory()
    for repo in repos:
        tags = client.get(f"{source_url}/v2/{repo}/tags/list").raise_for_status().json()["tags"]
        for tag in tags:
            response = client.get(f"{source_url}/v2/{repo}/manifests/{tag}", headers={"Accept": ACCEPT})
            document = response.raise_for_status().json()
            images = []
            for child in document.get("manifests") or []:
                c = client.get(f"{source_url}/v2/{repo}/manifests/{child['digest']}", headers={"Accept": ACCEPT})
                images.append(c.raise_for_status().json())
                found.manifests.append(Manifest(repo, child["digest"], c.content, c.headers["content-type"], False))
            for image in images or [document]:
                for descriptor in [image["config"], *image["layers"]]:
                    found.blobs[(repo, descriptor["digest"])] = descriptor["size"]
            found.manifests.append(Manifest(repo, tag, response.content, response.headers["content-type"],
                                            bool(images)))
    return found


def _put_manifests(client: httpx.Client, target_url: str, manifests: list[Manifest]) -> None:
    for m in manifests:
        client.put(f"{target_url}/v2/{m.repo}/manifests/{m.reference}", content=m.data,
                   headers={"Content-Type": m.media_type}).raise_for_status()


def raw_ceiling(source_url: str, target_url: str, repos: list[str]) -> float:
    """Seconds to copy ``repos`` the rawest way: list, GET manifests, stream every blob, PUT manifests."""
    started = time.monotonic()
    with httpx.Client(timeout=300) as client:
        found = inventory(client, source_url, repos)

        async def copy_blobs() -> None:
            slots = asyncio.Semaphore(CONCURRENCY)
            async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=32)) as stream_client:

                async def copy(repo: str, digest: str) -> None:
                    async with slots:
                        started_upload = await stream_client.post(f"{target_url}/v2/{repo}/blobs/uploads/")
                        location = str(httpx.URL(target_url).join(started_upload.headers["location"]))
                        async with stream_client.stream("GET", f"{source_url}/v2/{repo}/blobs/{digest}") as body:
                            sep = "&" if "?" in location else "?"
                            put = await stream_client.put(
                                f"{location}{sep}digest={digest}", content=body.aiter_raw(),
                                headers={"Content-Length": body.headers["content-length"]})
                            put.raise_for_status()

                await asyncio.gather(*(copy(repo, digest) for repo, digest in found.blobs))

        asyncio.run(copy_blobs())
        _put_manifests(client, target_url, found.manifests)
    return time.monotonic() - started


@dataclass
class LoadedImages:
    """An :class:`Inventory` with every blob's bytes in memory: what :func:`push_floor` pushes."""

    manifests: list[Manifest]
    blobs: dict[tuple[str, str], bytes]


def load(source_url: str, repos: list[str]) -> LoadedImages:
    """Read everything :func:`push_floor` will push (meant for small sets: blobs are held in memory)."""
    with httpx.Client(timeout=300) as client:
        found = inventory(client, source_url, repos)
        blobs = {(repo, digest): client.get(f"{source_url}/v2/{repo}/blobs/{digest}").raise_for_status().content
                 for repo, digest in found.blobs}
    return LoadedImages(found.manifests, blobs)


class _Connections:
    """One keep-alive ``http.client`` connection per thread to the target."""

    def __init__(self, target_url: str) -> None:
        parts = urlsplit(target_url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self._local = threading.local()
        self._all: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def request(self, method: str, path: str, body: bytes = b"",
                headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
        connection: http.client.HTTPConnection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = http.client.HTTPConnection(self.host, self.port, timeout=300)
            self._local.connection = connection
            with self._lock:
                self._all.append(connection)
        connection.request(method, path, body=body, headers={"Content-Length": str(len(body)), **(headers or {})})
        response = connection.getresponse()
        response.read()  # the connection is reusable only once the body is consumed
        if response.status >= 300:
            raise RuntimeError(f"push floor: {method} {path} -> {response.status}")
        return response

    def close(self) -> None:
        for connection in self._all:
            connection.close()


def push_floor(target_url: str, images: LoadedImages) -> float:
    """Seconds to push ``images`` into the (empty) target: blobs, then image manifests, then indexes,
    each phase ``CONCURRENCY`` requests at a time, no HEAD or check of any kind."""
    connections = _Connections(target_url)

    def push_blob(key: tuple[str, str]) -> None:
        repo, digest = key
        started = connections.request("POST", f"/v2/{repo}/blobs/uploads/")
        location = urlsplit(started.headers["Location"])
        query = f"{location.query}&digest={digest}" if location.query else f"digest={digest}"
        connections.request("PUT", f"{location.path}?{query}", images.blobs[key],
                            {"Content-Type": "application/octet-stream"})

    def push_manifest(m: Manifest) -> None:
        connections.request("PUT", f"/v2/{m.repo}/manifests/{m.reference}", m.data, {"Content-Type": m.media_type})

    started = time.monotonic()
    try:
        with ThreadPoolExecutor(CONCURRENCY) as pool:
            # list(): pool.map re-raises a failure only when its result is read
            list(pool.map(push_blob, images.blobs))
            list(pool.map(push_manifest, [m for m in images.manifests if not m.is_index]))
            list(pool.map(push_manifest, [m for m in images.manifests if m.is_index]))
    finally:
        connections.close()
    return time.monotonic() - started
