"""Registry API verbs (OCI distribution spec) over one :class:`RegistryHTTP`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import quote

import httpx

from imagesync.engine.errors import RegistryError
from imagesync.engine.manifest import ACCEPT, SCHEMA1_TYPES, Manifest, detect_media_type, sha256_digest
from imagesync.engine.transport import (
    TRANSIENT_STATUSES,
    RegistryHTTP,
    pull_scope,
    push_scope,
    registry_error_code,
    registry_error_detail,
)

# Blobs up to this size are uploaded with one monolithic PUT; bigger ones with PATCH + PUT.
MONOLITHIC_MAX = 8 * 1024 * 1024
# Errors a registry reports for a request that may well succeed when sent again.
_RETRYABLE_CODES = frozenset({"DIGEST_INVALID", "BLOB_UPLOAD_INVALID", "BLOB_UPLOAD_UNKNOWN", "TOOMANYREQUESTS"})


@dataclass(frozen=True)
class ManifestHead:
    digest: str
    media_type: str


def registry_error(response: httpx.Response, what: str) -> RegistryError:
    """A RegistryError carrying the registry's own message; transient or not by status and code."""
    code = registry_error_code(response)
    detail = registry_error_detail(response)
    status = response.status_code
    reason = {401: "unauthorized", 403: "denied", 404: "not found", 429: "too many requests"}.get(status, "")
    text = f"{what}: {status}{' ' + reason if reason else ''}{': ' + detail if detail else ''}"
    retryable = status in TRANSIENT_STATUSES or (code in _RETRYABLE_CODES)
    return RegistryError(text, status=status, code=code, retryable=retryable)


class RegistryClient:
    def __init__(self, http: RegistryHTTP) -> None:
        self.http = http

    @property
    def host(self) -> str:
        return self.http.endpoint.host

    # -- tags ----------------------------------------------------------------------------------

    async def list_tags(self, repo: str, page_size: int = 1000) -> list[str]:
        """Every tag, following the ``Link`` header across pages."""
        tags: list[str] = []
        path: str | None = f"/v2/{repo}/tags/list?n={page_size}"
        while path:
            response = await self.http.request("GET", path, scopes=[pull_scope(repo)])
            if response.status_code != 200:
                raise registry_error(response, f"listing tags of {self.host}/{repo}")
            try:
                page = response.json().get("tags") or []
            except (ValueError, AttributeError) as exc:
                raise RegistryError(f"listing tags of {self.host}/{repo}: unreadable answer",
                                    retryable=True) from exc
            tags.extend(str(t) for t in page)
            next_link = response.links.get("next", {}).get("url")
            path = str(response.url.join(next_link)) if next_link else None
        return tags

    # -- manifests -----------------------------------------------------------------------------

    async def head_manifest(self, repo: str, reference: str) -> ManifestHead | None:
        """The manifest's digest without its body (Docker Hub does not count HEADs against pull limits)."""
        response = await self.http.request("HEAD", f"/v2/{repo}/manifests/{reference}",
                                           scopes=[pull_scope(repo)], headers={"Accept": ACCEPT})
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise registry_error(response, f"checking manifest {self.host}/{repo}:{reference}")
        digest = response.headers.get("docker-content-digest", "")
        if not digest:
            return None  # registry does not say: the caller falls back to GET
        return ManifestHead(digest, response.headers.get("content-type", "").split(";")[0].strip())

    async def get_manifest(self, repo: str, reference: str) -> Manifest:
        response = await self.http.request("GET", f"/v2/{repo}/manifests/{reference}",
                                           scopes=[pull_scope(repo)], headers={"Accept": ACCEPT})
        if response.status_code != 200:
            raise registry_error(response, f"reading manifest {self.host}/{repo}:{reference}")
        data = response.content
        media_type = detect_media_type(data, response.headers.get("content-type", ""))
        if media_type in SCHEMA1_TYPES:
            # Signed schema 1 is digested without its signature (re-signed on every GET): the caller
            # reports the type as unsupported, so there is nothing to verify.
            return Manifest(data, media_type, response.headers.get("docker-content-digest", ""))
        digest = sha256_digest(data)
        expected = reference if reference.startswith("sha256:") else response.headers.get("docker-content-digest")
        if expected and expected.startswith("sha256:") and expected != digest:
            raise RegistryError(
                f"manifest {self.host}/{repo}:{reference} arrived corrupted (digest {digest}, expected {expected})",
                retryable=True, code="DIGEST_INVALID")
        return Manifest(data, media_type, digest)

    async def put_manifest(self, repo: str, reference: str, manifest: Manifest) -> None:
        response = await self.http.request(
            "PUT", f"/v2/{repo}/manifests/{reference}", scopes=[push_scope(repo)],
            headers={"Content-Type": manifest.media_type}, content=manifest.data)
        if response.status_code not in (200, 201, 202):
            raise registry_error(response, f"pushing manifest {self.host}/{repo}:{reference}")
        pushed = response.headers.get("docker-content-digest")
        if pushed and pushed != manifest.digest:
            raise RegistryError(
                f"{self.host}/{repo}:{reference} stored the manifest under {pushed}, not {manifest.digest}",
                retryable=False)

    # -- blobs ---------------------------------------------------------------------------------

    async def blob_exists(self, repo: str, digest: str) -> bool:
        response = await self.http.request("HEAD", f"/v2/{repo}/blobs/{digest}", scopes=[pull_scope(repo)])
        if response.status_code == 200:
            return True
        if response.status_code == 404:
            return False
        raise registry_error(response, f"checking blob {digest} in {self.host}/{repo}")

    async def mount_blob(self, repo: str, digest: str, from_repo: str) -> str | None:
        """Cross-repository mount. None when mounted; else the upload URL the registry opened instead."""
        response = await self.http.request(
            "POST", f"/v2/{repo}/blobs/uploads/", params={"mount": digest, "from": from_repo},
            scopes=[pull_scope(from_repo), push_scope(repo)])
        if response.status_code == 201:
            return None
        if response.status_code == 202:
            return self._location(response, f"starting upload to {self.host}/{repo}")
        raise registry_error(response, f"mounting blob {digest} into {self.host}/{repo}")

    async def start_upload(self, repo: str) -> str:
        response = await self.http.request("POST", f"/v2/{repo}/blobs/uploads/", scopes=[push_scope(repo)])
        if response.status_code != 202:
            raise registry_error(response, f"starting upload to {self.host}/{repo}")
        return self._location(response, f"starting upload to {self.host}/{repo}")

    def _location(self, response: httpx.Response, what: str) -> str:
        location = response.headers.get("location")
        if not location:
            raise RegistryError(f"{what}: registry sent no upload location", retryable=True)
        return str(response.url.join(location))

    @asynccontextmanager
    async def open_blob(self, repo: str, digest: str) -> AsyncIterator[httpx.Response]:
        async with self.http.stream("GET", f"/v2/{repo}/blobs/{digest}", scopes=[pull_scope(repo)]) as response:
            if response.status_code != 200:
                await response.aread()
                raise registry_error(response, f"reading blob {digest} from {self.host}/{repo}")
            yield response

    async def upload_blob(self, repo: str, location: str, digest: str, size: int,
                          body: AsyncIterator[bytes]) -> None:
        """Upload a blob into the session at ``location``; the registry checks the digest on commit.

        Blobs up to MONOLITHIC_MAX go in one streamed ``PUT ?digest=`` (one request less per blob);
        bigger ones are streamed in one PATCH and then committed with an empty ``PUT ?digest=``, which
        every registry accepts (some refuse a monolithic PUT of a large layer). Our reader checks the
        digest while streaming too, so a corrupted transfer is never committed.
        """
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        if size <= MONOLITHIC_MAX:
            async with self.http.stream("PUT", _with_digest(location, digest), scopes=[push_scope(repo)],
                                        content=body, headers=headers) as response:
                await response.aread()
                if response.status_code not in (201, 204):
                    raise registry_error(response, f"uploading blob {digest} to {self.host}/{repo}")
            return
        async with self.http.stream("PATCH", location, scopes=[push_scope(repo)], content=body,
                                    headers=headers) as response:
            await response.aread()
            if response.status_code not in (201, 202, 204):
                raise registry_error(response, f"uploading blob {digest} to {self.host}/{repo}")
            commit_url = self._location(response, f"uploading blob {digest} to {self.host}/{repo}")
        committed = await self.http.request("PUT", _with_digest(commit_url, digest), scopes=[push_scope(repo)],
                                            headers={"Content-Length": "0"})
        if committed.status_code not in (201, 204):
            raise registry_error(committed, f"committing blob {digest} to {self.host}/{repo}")


def _with_digest(url: str, digest: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}digest={quote(digest)}"
