"""Registry API verbs (OCI distribution spec) over one :class:`RegistryHTTP`.

Every name that goes into a URL path is checked and percent-encoded here (:func:`_repo_path`,
:func:`_reference`, :func:`_digest`): tags listed by a registry and digests read from a manifest are
untrusted, and ``../../other/manifests/x`` or ``a?b`` must not address another repository or add a query.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from imagesync.engine.errors import RegistryError, clip
from imagesync.engine.manifest import ACCEPT, OCI_INDEX, SCHEMA1_TYPES, Manifest, detect_media_type, sha256_digest
from imagesync.engine.reference import ReferenceError, check_digest, check_repository_path, check_tag
from imagesync.engine.transport import (
    MANIFEST_MAX_BYTES,
    SMALL_BODY_MAX_BYTES,
    TRANSIENT_STATUSES,
    RegistryHTTP,
    buffered,
    pull_scope,
    push_scope,
    read_limited,
    registry_error_code,
    registry_error_detail,
)

# Blobs up to this size are uploaded with one monolithic PUT; bigger ones with PATCH + PUT.
MONOLITHIC_MAX = 8 * 1024 * 1024
# Errors a registry reports for a request that may well succeed when sent again.
_RETRYABLE_CODES = frozenset({"DIGEST_INVALID", "BLOB_UPLOAD_INVALID", "BLOB_UPLOAD_UNKNOWN", "TOOMANYREQUESTS"})
# Tag listing bounds: a hostile or broken registry must not page us forever or fill memory. 100,000 tags
# is far beyond any real repository; a page may be the whole list (docker-registry ignores n).
MAX_TAG_PAGES = 1000
MAX_TAGS = 100_000
TAG_PAGE_MAX_BYTES = 4 * 1024 * 1024
# Catalog listing bounds (whole-registry and namespace sources), the same kind as the tags'.
MAX_CATALOG_PAGES = 1000
MAX_REPOSITORIES = 100_000
CATALOG_SCOPE = "registry:catalog:*"
# Referrers API pages followed at most (each page bounded by MANIFEST_MAX_BYTES).
MAX_REFERRER_PAGES = 100
# How registries without the referrers API answer its route: 404 (docker-registry 2.8), or a refusal of the
# path or method. 401/403 are errors: the pull scope that reads the manifests covers the referrers too.
_NO_REFERRERS_API = frozenset({400, 404, 405, 406, 501})


class TagList(list[str]):
    """The valid tags a registry listed, in order; ``invalid`` holds what it listed that is no tag (clipped)."""

    def __init__(self) -> None:
        super().__init__()
        self.invalid: list[str] = []


class RepositoryList(TagList):
    """The valid repository paths a registry's ``_catalog`` listed; ``invalid`` what is no repository name."""


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
        # Whether the registry serves the OCI 1.1 referrers API / indexes a pushed manifest's subject:
        # learned from the first answer (None: not known yet), so a registry without it is asked once.
        self.referrers_api: bool | None = None
        # Blob uploads (engine/blobs.py): the smallest chunk the registry announced (``OCI-Chunk-Min-Length``),
        # and whether its uploads go in chunks, because it announced one or a streamed upload broke or was refused.
        self.chunk_min_length: int | None = None
        self.chunked_uploads = False

    @property
    def host(self) -> str:
        return self.http.endpoint.host

    # -- tags ----------------------------------------------------------------------------------

    async def list_tags(self, repo: str, page_size: int = 1000) -> TagList:
        """Every tag, following the ``Link`` header across pages (bounded, loops refused).

        A listed name that is not a tag by the distribution spec's grammar is never used as one: it goes to
        ``invalid`` for the caller to report, and the valid tags are still returned.
        """
        what = f"listing tags of {self.host}/{repo}"
        tags = TagList()
        await self._list_paged(f"{_repo_path(repo)}/tags/list?n={page_size}", "tags", [pull_scope(repo)], what,
                               _is_tag, tags, MAX_TAG_PAGES, MAX_TAGS)
        return tags

    async def list_repositories(self, page_size: int = 1000) -> RepositoryList:
        """Every repository of the registry's ``_catalog``, paged with ``n``/``last`` by the ``Link`` header
        (the same bounds and loop refusal as tags). A listed name that is not a repository path by the
        distribution grammar goes to ``invalid``, never into a URL.

        A registry that refuses the catalog (401/403 without the ``registry:catalog:*`` grant, 404/405/501
        without the route) or answers with something that is not a repository list gives one error naming
        the registry and the reason.
        """
        what = f"listing the repositories of {self.host} (_catalog)"
        repositories = RepositoryList()
        try:
            await self._list_paged(f"/v2/_catalog?n={page_size}", "repositories", [CATALOG_SCOPE], what,
                                   _is_repository, repositories, MAX_CATALOG_PAGES, MAX_REPOSITORIES)
        except RegistryError as exc:
            if exc.status in (401, 403):
                raise RegistryError(f"{self.host} refuses to list its repositories: {exc} (a whole-registry or "
                                    f"namespace source needs the catalog: the registry:catalog:* grant)",
                                    status=exc.status, code=exc.code, retryable=False) from exc
            if exc.status in (400, 404, 405, 501) or exc.code == "UNSUPPORTED":
                raise RegistryError(f"{self.host} does not serve the repository catalog: {exc} (a whole-registry "
                                    f"or namespace source needs GET /v2/_catalog; name the repositories instead)",
                                    status=exc.status, code=exc.code, retryable=False) from exc
            raise
        return repositories

    async def _list_paged(self, path: str | None, key: str, scopes: list[str], what: str, valid: Any,
                          into: TagList, max_pages: int, max_names: int) -> None:
        """A paged name list (tags/list, _catalog): every page the ``Link`` header leads to, bounded."""
        fetched: set[str] = set()
        while path:
            if len(fetched) >= max_pages:
                raise RegistryError(f"{what}: more than {max_pages} pages; stopped", retryable=False)
            response = await self.http.request("GET", path, scopes=scopes, max_body=TAG_PAGE_MAX_BYTES)
            fetched.add(str(response.url))
            if response.status_code != 200:
                raise registry_error(response, what)
            try:
                body = response.json()
            except (ValueError, RecursionError) as exc:  # RecursionError: thousands of nested brackets
                raise RegistryError(f"{what}: unreadable answer (not JSON)", code="UNSUPPORTED",
                                    retryable=key == "tags") from exc
            page = body.get(key) if isinstance(body, dict) else None
            if page is None and isinstance(body, dict) and (key == "tags" or key in body):
                page = []  # docker-registry: "tags": null for a repository without tags
            if not isinstance(page, list):
                raise RegistryError(f"{what}: unreadable answer ({key} is not a list)", code="UNSUPPORTED",
                                    retryable=False)
            for name in page:
                if isinstance(name, str) and valid(name):
                    into.append(name)
                elif isinstance(name, str):
                    into.invalid.append(clip(name, 80))
                else:  # 1 or null, not "1": quoted as it was sent, so the report does not show a valid tag
                    into.invalid.append(f"{clip(json.dumps(name), 60)} (not a JSON string)")
            if len(into) + len(into.invalid) > max_names:
                raise RegistryError(f"{what}: more than {max_names} {key}; stopped", retryable=False)
            next_link = response.links.get("next", {}).get("url")
            path = str(response.url.join(next_link)) if next_link else None
            if path in fetched:
                raise RegistryError(f"{what}: the Link header leads back to a page already read "
                                    f"({clip(path.split('?', 1)[0])}); stopped", retryable=False)

    # -- manifests -----------------------------------------------------------------------------

    async def head_manifest(self, repo: str, reference: str) -> ManifestHead | None:
        """The manifest's digest without its body (Docker Hub does not count HEADs against pull limits)."""
        response = await self.http.request("HEAD", _manifest_path(repo, reference),
                                           scopes=[pull_scope(repo)], headers={"Accept": ACCEPT})
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise registry_error(response, f"checking manifest {self.host}/{repo}:{reference}")
        digest = response.headers.get("docker-content-digest", "")
        if not digest:
            return None  # registry does not say: the caller falls back to GET
        return ManifestHead(clip(digest, 100), clip(response.headers.get("content-type", "").split(";")[0], 100))

    async def get_manifest(self, repo: str, reference: str) -> Manifest:
        try:
            response = await self.http.request("GET", _manifest_path(repo, reference), scopes=[pull_scope(repo)],
                                               headers={"Accept": ACCEPT}, max_body=MANIFEST_MAX_BYTES)
        except RegistryError as exc:
            if exc.code != "TOO_LARGE":
                raise
            raise RegistryError(f"manifest {self.host}/{repo}:{reference} is too large (over "
                                f"{MANIFEST_MAX_BYTES // 2**20} MiB, the distribution spec's manifest limit): "
                                f"refused", code="TOO_LARGE",
                                retryable=False) from exc
        if response.status_code != 200:
            raise registry_error(response, f"reading manifest {self.host}/{repo}:{reference}")
        data = response.content
        media_type = detect_media_type(data, response.headers.get("content-type", ""))
        if media_type in SCHEMA1_TYPES:
            # Signed schema 1 is digested without its signature (re-signed on every GET): the caller
            # reports the type as unsupported, so there is nothing to verify.
            return Manifest(data, media_type, response.headers.get("docker-content-digest", ""))
        digest = sha256_digest(data)
        header_digest = clip(response.headers.get("docker-content-digest", ""), 100)
        expected = reference if reference.startswith("sha256:") else header_digest
        if expected and expected.startswith("sha256:") and expected != digest:
            raise RegistryError(
                f"manifest {self.host}/{repo}:{reference} arrived corrupted (digest {digest}, expected {expected})",
                retryable=True, code="DIGEST_INVALID")
        return Manifest(data, media_type, digest)

    async def put_manifest(self, repo: str, reference: str, manifest: Manifest) -> httpx.Headers:
        """Push the manifest's bytes; the answer's headers (``OCI-Subject`` says the registry indexed a subject)."""
        response = await self.http.request(
            "PUT", _manifest_path(repo, reference), scopes=[push_scope(repo)],
            headers={"Content-Type": manifest.media_type}, content=manifest.data)
        if response.status_code not in (200, 201, 202):
            raise registry_error(response, f"pushing manifest {self.host}/{repo}:{reference}")
        pushed = response.headers.get("docker-content-digest")
        if pushed and pushed != manifest.digest:
            raise RegistryError(
                f"{self.host}/{repo}:{reference} stored the manifest under {clip(pushed, 100)}, not {manifest.digest}",
                retryable=False)
        return response.headers

    async def delete_manifest(self, repo: str, reference: str) -> bool | None:
        """``DELETE /v2/<name>/manifests/<reference>`` (pruning): a tag untags where the registry supports it,
        a digest deletes the manifest and every tag on it. True when deleted, False when it was not there,
        None when the registry refuses this kind of delete: distribution 2.8 answers a tag with 400
        DIGEST_INVALID, a registry without ``storage.delete.enabled`` answers 405 UNSUPPORTED."""
        response = await self.http.request("DELETE", _manifest_path(repo, reference),
                                           scopes=[f"repository:{repo}:delete"])
        if response.status_code in (200, 202, 204):
            return True
        if response.status_code == 404:
            return False
        if response.status_code in (400, 405, 501) or registry_error_code(response) == "UNSUPPORTED":
            return None
        raise registry_error(response, f"deleting {self.host}/{repo}{'@' if ':' in reference else ':'}{reference}")

    # -- referrers (OCI distribution 1.1) ------------------------------------------------------

    async def get_referrers(self, repo: str, digest: str, artifact_type: str | None = None) -> list[Any] | None:
        """The descriptors the referrers API lists for ``digest`` (every page), or None when the registry has
        no referrers API: a 404 (docker-registry 2.8 answers so for the unknown route), 400/405/406/501, or an
        answer that is not an image index. Each page is read within the manifest size limit; pages are bounded.

        With ``artifact_type`` the registry may filter (``OCI-Filters-Applied``); callers filter again anyway.
        """
        what = f"listing referrers of {self.host}/{repo}@{digest}"
        path: str | None = f"{_repo_path(repo)}/referrers/{_digest(digest)}"
        params = {"artifactType": artifact_type} if artifact_type else None
        entries: list[Any] = []
        fetched: set[str] = set()
        while path:
            if len(fetched) >= MAX_REFERRER_PAGES:
                raise RegistryError(f"{what}: more than {MAX_REFERRER_PAGES} pages; stopped", retryable=False)
            try:
                response = await self.http.request("GET", path, scopes=[pull_scope(repo)], params=params,
                                                   headers={"Accept": OCI_INDEX}, max_body=MANIFEST_MAX_BYTES)
            except RegistryError as exc:
                if exc.code == "TOO_LARGE":
                    raise RegistryError(f"{what}: a page is larger than {MANIFEST_MAX_BYTES // 2**20} MiB: "
                                        f"refused", code="TOO_LARGE", retryable=False) from exc
                raise
            params = None  # the Link header carries the query of later pages
            fetched.add(str(response.url))
            if response.status_code in _NO_REFERRERS_API:
                if len(fetched) > 1:  # a later page vanished: an error, not a registry without the API
                    raise registry_error(response, what)
                return None
            if response.status_code != 200:
                raise registry_error(response, what)
            try:
                body = response.json()
            except ValueError:
                return None  # not an index: no referrers API (some registries answer the route with a web page)
            manifests = body.get("manifests") if isinstance(body, dict) else None
            if not isinstance(manifests, list) or detect_media_type(response.content, "") != OCI_INDEX:
                return None
            entries.extend(manifests)
            next_link = response.links.get("next", {}).get("url")
            path = str(response.url.join(next_link)) if next_link else None
            if path in fetched:
                raise RegistryError(f"{what}: the Link header leads back to a page already read; stopped",
                                    retryable=False)
        return entries

    # -- blobs ---------------------------------------------------------------------------------

    async def blob_exists(self, repo: str, digest: str) -> bool:
        response = await self.http.request("HEAD", _blob_path(repo, digest), scopes=[pull_scope(repo)])
        if response.status_code == 200:
            return True
        if response.status_code == 404:
            return False
        raise registry_error(response, f"checking blob {digest} in {self.host}/{repo}")

    async def mount_blob(self, repo: str, digest: str, from_repo: str) -> str | None:
        """Cross-repository mount. None when mounted; else the upload URL the registry opened instead."""
        response = await self.http.request(
            "POST", f"{_repo_path(repo)}/blobs/uploads/", params={"mount": _digest(digest), "from": from_repo},
            scopes=[pull_scope(from_repo), push_scope(repo)])
        if response.status_code == 201:
            return None
        if response.status_code == 202:
            return self._location(response, f"starting upload to {self.host}/{repo}")
        raise registry_error(response, f"mounting blob {digest} into {self.host}/{repo}")

    async def start_upload(self, repo: str) -> str:
        response = await self.http.request("POST", f"{_repo_path(repo)}/blobs/uploads/", scopes=[push_scope(repo)])
        if response.status_code != 202:
            raise registry_error(response, f"starting upload to {self.host}/{repo}")
        return self._location(response, f"starting upload to {self.host}/{repo}")

    async def cancel_upload(self, repo: str, location: str) -> None:
        """``DELETE`` an upload session we opened and do not need (best effort: registries also expire them)."""
        await self.http.request("DELETE", location, scopes=[push_scope(repo)])

    def _location(self, response: httpx.Response, what: str) -> str:
        location = response.headers.get("location")
        if not location:
            raise RegistryError(f"{what}: registry sent no upload location", retryable=True)
        minimum = response.headers.get("oci-chunk-min-length", "").strip()
        if minimum.isdigit() and int(minimum) > 0:
            self.chunk_min_length = int(minimum)
            self.chunked_uploads = True
        return str(response.url.join(location))

    @asynccontextmanager
    async def open_blob(self, repo: str, digest: str, start: int = 0) -> AsyncIterator[httpx.Response]:
        """The blob's bytes; from ``start`` on asks for a ``Range``: the answer is 206 if the registry honours it,
        or 200 with the whole blob if it does not (the caller checks ``Content-Range``)."""
        headers = {"Range": f"bytes={start}-"} if start else None
        async with self.http.stream("GET", _blob_path(repo, digest), scopes=[pull_scope(repo)],
                                    headers=headers) as response:
            if response.status_code not in ((200, 206) if start else (200,)):
                raise registry_error(await buffered(response), f"reading blob {digest} from {self.host}/{repo}")
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
                if response.status_code not in (201, 204):
                    raise registry_error(await buffered(response), f"uploading blob {digest} to {self.host}/{repo}")
                await read_limited(response, SMALL_BODY_MAX_BYTES)
            return
        async with self.http.stream("PATCH", location, scopes=[push_scope(repo)], content=body,
                                    headers=headers) as response:
            if response.status_code not in (201, 202, 204):
                raise registry_error(await buffered(response), f"uploading blob {digest} to {self.host}/{repo}")
            await read_limited(response, SMALL_BODY_MAX_BYTES)
            commit_url = self._location(response, f"uploading blob {digest} to {self.host}/{repo}")
        await self.commit_upload(repo, commit_url, digest)

    async def commit_upload(self, repo: str, location: str, digest: str) -> None:
        """``PUT ?digest=`` without a body: the session at ``location`` holds the whole blob."""
        committed = await self.http.request("PUT", _with_digest(location, digest), scopes=[push_scope(repo)],
                                            headers={"Content-Length": "0"})
        if committed.status_code not in (201, 204):
            raise registry_error(committed, f"committing blob {digest} to {self.host}/{repo}")


def _with_digest(url: str, digest: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}digest={quote(_digest(digest))}"


def _is_tag(tag: str) -> bool:
    # reference.TAG_PATTERN's \w also matches non-ASCII letters; the spec's grammar is ASCII only.
    try:
        check_tag(tag)
    except ReferenceError:
        return False
    return tag.isascii()


def _is_repository(name: str) -> bool:
    try:
        check_repository_path(name)
    except ReferenceError:
        return False
    return True


def _repo_path(repo: str) -> str:
    """``/v2/<name>``. Names come from parsed rules (already valid); encoded anyway, '/' kept as separator."""
    return "/v2/" + quote(repo, safe="/")


def _reference(reference: str) -> str:
    """A manifest reference (tag or digest), checked and encoded as one path segment."""
    if ":" in reference:
        return _digest(reference)
    if not _is_tag(reference):
        raise RegistryError(f"refused to use {clip(reference, 80)!r} as a tag: not a tag by the distribution "
                            f"spec (no request sent)", retryable=False)
    return quote(reference, safe="")


def _digest(digest: str) -> str:
    """A digest (from a manifest: untrusted), checked; encoded as one path segment with ':' kept."""
    try:
        check_digest(digest)
    except ReferenceError as exc:
        raise RegistryError(f"refused to use a digest: {clip(str(exc), 120)} (no request sent)",
                            retryable=False) from exc
    return quote(digest, safe=":")


def _manifest_path(repo: str, reference: str) -> str:
    return f"{_repo_path(repo)}/manifests/{_reference(reference)}"


def _blob_path(repo: str, digest: str) -> str:
    return f"{_repo_path(repo)}/blobs/{_digest(digest)}"
