"""Referrers: the signatures, attestations and SBOMs that travel with an image.

For every image the copy pipeline has made present at the target (synced or already up to date), the
artifacts that refer to it, and to each child of an index (per-platform signatures), are copied too,
byte for byte, so their digests stay identical and signatures still verify at the target.

Reading (source):

- the OCI 1.1 referrers API, ``GET /v2/<name>/referrers/<digest>`` (with ``artifactType`` when one
  literal type is wanted; we filter again, a registry need not);
- when the registry lacks it (404, or an answer that is not an image index), the referrers tag schema:
  the image index tagged ``sha256-<hex>``. A registry is probed once: the answer is kept on its client;
- cosign's tag-based artifacts, ``sha256-<hex>.sig`` / ``.att`` / ``.sbom``, found in the repository's
  tag list (read once per source repository and run).

Writing (target): each referrer is pushed by digest with its ``subject``. A registry that processes
``subject`` says so with the ``OCI-Subject`` header on that PUT; one that does not (docker-registry 2.8)
gets the fallback index tag ``sha256-<hex>`` maintained for it: what is there, merged with what we copied,
pushed only when something is missing, after the referrers themselves. When the target had no such tag and
the merge is exactly the source's fallback index, the source's bytes are pushed (same digest). Cosign's
tags are copied as tags.

Pure helpers (:func:`fallback_tag`, :func:`descriptor_for`, :func:`merge_index`...) hold no I/O.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from imagesync.engine.errors import ImageSyncError, RegistryError, clip
from imagesync.engine.manifest import INDEX_TYPES, OCI_INDEX, Manifest, ManifestError, check_supported
from imagesync.engine.reference import ReferenceError, Repository, check_digest
from imagesync.engine.registry import RegistryClient
from imagesync.engine.signatures import (
    COSIGN_SIGNATURE_TYPE,
    DOES_NOT_VERIFY,
    MAX_PAYLOAD_BYTES,
    UNSIGNED,
    SignatureOptions,
    SignedPayload,
    first_valid,
    is_signature_type,
    load_public_key,
    signed_payloads,
)
from imagesync.engine.stats import ImageOutcome, ReferrerOutcome
from imagesync.engine.transport import read_limited

if TYPE_CHECKING:
    from imagesync.engine.copy import Syncer
    from imagesync.engine.rules import ImagePair

log = logging.getLogger(__name__)

# cosign's tag-based artifacts: tag suffix -> the artifact type cosign gives them in OCI 1.1 mode
# (sigstore/cosign pkg/oci/remote: "application/vnd.dev.cosign.artifact.<name>.v1+json").
COSIGN_SUFFIXES: Mapping[str, str] = {
    ".sig": "application/vnd.dev.cosign.artifact.sig.v1+json",
    ".att": "application/vnd.dev.cosign.artifact.att.v1+json",
    ".sbom": "application/vnd.dev.cosign.artifact.sbom.v1+json",
}
# Referrers of referrers (a signature over an SBOM) are followed this deep below the image.
MAX_DEPTH = 3
# Artifacts listed for one subject at most (a hostile registry must not make us copy forever).
MAX_REFERRERS_PER_SUBJECT = 1000
# A tag of the referrers tag schema or of cosign: its subject's digest in group 1.
REFERRER_TAG = re.compile(r"^sha256-([0-9a-f]{64})(?:\.sig|\.att|\.sbom)?$")
# Failure reasons quoted in an image's failure line.
REASONS_SHOWN = 3


@dataclass(frozen=True)
class ReferrerOptions:
    """``--referrers`` and its filters: artifact types as shell patterns (``application/vnd.dev.cosign.*``)."""

    enabled: bool = True
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    optional: bool = False  # a failed artifact copy is counted and noted, the image still succeeds

    def wants(self, artifact_type: str) -> bool:
        if self.include and not any(fnmatch.fnmatchcase(artifact_type, p) for p in self.include):
            return False
        return not any(fnmatch.fnmatchcase(artifact_type, p) for p in self.exclude)

    @property
    def api_filter(self) -> str | None:
        """The ``artifactType`` query for the referrers API: only when exactly one literal type is wanted."""
        if len(self.include) == 1 and not any(c in self.include[0] for c in "*?["):
            return self.include[0]
        return None


# -- pure helpers ------------------------------------------------------------------------------


def _retrieved(task: asyncio.Task[Any]) -> None:
    """A done callback that takes a task's exception, which whoever awaits the task still gets: without it,
    asyncio logs an exception nobody asked for as an error."""
    if not task.cancelled():
        task.exception()


def fallback_tag(digest: str) -> str:
    """The referrers tag schema's tag for ``digest``: ``<alg>-<hex>``."""
    algorithm, _, encoded = digest.partition(":")
    return f"{algorithm}-{encoded}"[:128]


def cosign_tags(digest: str) -> dict[str, str]:
    """cosign's tags for artifacts of ``digest``, each with its artifact type."""
    base = fallback_tag(digest)
    return {base + suffix: artifact_type for suffix, artifact_type in COSIGN_SUFFIXES.items()}


def _json_object(manifest: Manifest) -> dict[str, Any]:
    try:
        body = json.loads(manifest.data)
    except ValueError as exc:
        raise ManifestError(f"manifest {manifest.digest} is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise ManifestError(f"manifest {manifest.digest} is not a JSON object")
    return body


def artifact_type_of(entry: Mapping[str, Any]) -> str:
    """A manifest's or descriptor's artifact type: ``artifactType``, else the config's media type (the spec's
    rule for manifests without one)."""
    value = entry.get("artifactType")
    if isinstance(value, str) and value:
        return value
    config = entry.get("config")
    if isinstance(config, dict) and isinstance(config.get("mediaType"), str):
        return str(config["mediaType"])
    return ""


def subject_of(manifest: Manifest) -> str | None:
    subject = _json_object(manifest).get("subject")
    if isinstance(subject, dict) and isinstance(subject.get("digest"), str):
        return str(subject["digest"])
    return None


def descriptor_for(manifest: Manifest) -> dict[str, Any]:
    """The referrers-index descriptor of a manifest, as the distribution spec builds it: media type, digest,
    size, artifact type and the manifest's annotations."""
    body = _json_object(manifest)
    entry: dict[str, Any] = {"mediaType": manifest.media_type, "digest": manifest.digest, "size": len(manifest.data)}
    artifact_type = artifact_type_of(body)
    if artifact_type:
        entry["artifactType"] = artifact_type
    if isinstance(body.get("annotations"), dict) and body["annotations"]:
        entry["annotations"] = body["annotations"]
    return entry


def valid_entries(entries: Iterable[Any]) -> list[dict[str, Any]]:
    """Descriptors with a checkable digest and a size; anything else a registry lists is dropped."""
    result = []
    seen: set[str] = set()
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("digest"), str):
            continue
        if not isinstance(entry.get("size"), int) or isinstance(entry.get("size"), bool) or entry["size"] < 0:
            continue
        try:
            check_digest(entry["digest"])
        except ReferenceError:
            continue
        if entry["digest"] not in seen:
            seen.add(entry["digest"])
            result.append(entry)
    return result[:MAX_REFERRERS_PER_SUBJECT]


def empty_index() -> dict[str, Any]:
    return {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}


def merge_index(existing: Mapping[str, Any] | None, entries: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The fallback index with ``entries`` added (by digest; what is there stays, in its order), or None when
    every entry is listed already. Fields of the existing index other than ``manifests`` are kept."""
    body = dict(existing) if existing else empty_index()
    manifests = [m for m in body.get("manifests") or [] if isinstance(m, dict)]
    listed = {m.get("digest") for m in manifests}
    added = [dict(e) for e in entries if e.get("digest") not in listed]
    if not added:
        return None
    body["manifests"] = manifests + added
    body.setdefault("schemaVersion", 2)
    body.setdefault("mediaType", OCI_INDEX)
    return body


def index_manifest(body: Mapping[str, Any]) -> Manifest:
    from imagesync.engine.manifest import sha256_digest

    data = json.dumps(body, separators=(",", ":")).encode()
    return Manifest(data, OCI_INDEX, sha256_digest(data))


# -- the copy ----------------------------------------------------------------------------------


@dataclass
class SubjectResult:
    """What copying the referrers of one subject did: per artifact key, an outcome; failure reasons."""

    outcomes: dict[str, ReferrerOutcome] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    retryable: bool = False

    def add(self, other: SubjectResult) -> None:
        self.outcomes.update(other.outcomes)
        self.reasons.extend(other.reasons)
        self.retryable = self.retryable or other.retryable

    def fail(self, key: str, reason: str, exc: BaseException) -> None:
        self.outcomes[key] = "failed"
        self.reasons.append(reason)
        self.retryable = self.retryable or (isinstance(exc, RegistryError) and exc.retryable)

    @property
    def failed(self) -> int:
        return sum(1 for o in self.outcomes.values() if o == "failed")


class ReferrerCopier:
    """Copies the referrers of images for one :class:`Syncer` (sharing its registries, blob pool and stats)."""

    def __init__(self, syncer: Syncer, options: ReferrerOptions) -> None:
        self.syncer = syncer
        self.options = options
        self._subjects: dict[tuple[str, str, str], asyncio.Task[SubjectResult]] = {}
        # Per source repository: its tag listing, that listing as a set, and whether any tag is a referrers
        # fallback tag (sha256-...). Built once per listing, not per image: per image it was work growing with
        # the square of a repository's tags.
        self._tag_sets: dict[tuple[str, str], tuple[list[str], frozenset[str], bool]] = {}
        # Source listings started while their image is copied (prefetch), by (host, repository, subject).
        self._prefetched: dict[tuple[str, str, str], asyncio.Task[tuple[list[dict[str, Any]], Manifest | None]]] = {}
        self._probing: set[str] = set()  # source hosts whose first prefetch tells whether they have the API
        # Indexes being copied, by digest: their children need not be read back from the target after the push.
        self._indexes: dict[str, Manifest] = {}

    def prefetch(self, src: RegistryClient, repo: Repository, manifest: Manifest) -> None:
        """Start listing the source's referrers of an image whose copy is starting, and of an index's children
        once the registry is known to have the API: the listings' round trips overlap the copy instead of
        following it (on a registry with the referrers API; without it the fallback reads the tag list the
        planner already has, and there is nothing to overlap). Referrers pushed to the source during the copy
        are left to the next run, as those pushed after it are."""
        if manifest.is_index:
            self._indexes[manifest.digest] = manifest
        self._prefetch(src, repo, manifest.digest)
        if manifest.is_index and src.referrers_api:
            for child in manifest.children():
                self._prefetch(src, repo, child.digest)

    def _prefetch(self, src: RegistryClient, repo: Repository, subject: str) -> None:
        if src.referrers_api is False:
            return
        if src.referrers_api is None and src.host in self._probing:
            return  # whether the registry has the API is being learned: one listing at a time until then
        key = (src.host, repo.path, subject)
        if key not in self._prefetched:
            task = asyncio.create_task(self._source_referrers(src, repo, subject))
            task.add_done_callback(_retrieved)  # an image that fails never asks for its listing
            self._prefetched[key] = task
            if src.referrers_api is None:
                self._probing.add(src.host)
                task.add_done_callback(lambda _: self._probing.discard(src.host))

    def cancel_prefetches(self) -> None:
        for task in self._prefetched.values():
            task.cancel()
        self._prefetched.clear()
        self._indexes.clear()

    async def after_image(self, pair: ImagePair, outcome: ImageOutcome) -> ImageOutcome:
        """Copy the referrers of an image that is now at the target; a failure fails the image unless optional."""
        if outcome.outcome == "failed" or not outcome.digest:
            return outcome
        if outcome.outcome == "skipped" and outcome.reason:  # refused by --only-signed: not at the target
            return outcome
        source, target = pair.source, pair.target
        src = self.syncer.registries.client_for(source.repo)
        dst = self.syncer.registries.client_for(target.repo)
        result = await self.copy_for_image(src, source.repo, dst, target.repo, outcome.digest)
        stats = self.syncer.stats
        for key, artifact_outcome in result.outcomes.items():
            stats.record_referrer(key, artifact_outcome)
        if not result.reasons:
            return outcome
        shown = "; ".join(result.reasons[:REASONS_SHOWN])
        more = f" (and {len(result.reasons) - REASONS_SHOWN} more)" if len(result.reasons) > REASONS_SHOWN else ""
        text = f"{result.failed} referrer(s) not copied: {shown}{more}"
        if self.options.optional:
            note = f"{outcome.note}; {text}" if outcome.note else text
            return ImageOutcome(outcome.source, outcome.target, outcome.outcome, outcome.reason, outcome.digest, note)
        raise RegistryError(f"{target}: {text}", retryable=result.retryable)

    async def copy_for_image(self, src: RegistryClient, src_repo: Repository, dst: RegistryClient,
                             dst_repo: Repository, digest: str) -> SubjectResult:
        result = await self._subject(src, src_repo, dst, dst_repo, digest, 0)
        fallback_tags = await self._has_fallback_tags(src, src_repo)
        if src.referrers_api is False and not fallback_tags:
            return result  # no API and no referrer tag in the repository: no child can have referrers
        manifest = self._indexes.pop(digest, None)  # the index this run just pushed, if it did
        try:
            manifest = manifest or await dst.get_manifest(dst_repo.path, digest)
        except ImageSyncError as exc:
            result.fail(f"{dst.host}/{dst_repo.path}@{digest}", f"reading {digest} at the target: {exc}", exc)
            return result
        if manifest.media_type in INDEX_TYPES:
            try:
                children = [c.digest for c in manifest.children()]
            except ManifestError as exc:
                result.fail(f"{dst.host}/{dst_repo.path}@{digest}", str(exc), exc)
                return result
            for child_result in await asyncio.gather(
                    *(self._subject(src, src_repo, dst, dst_repo, child, 0) for child in children)):
                result.add(child_result)
        return result

    # -- per subject -----------------------------------------------------------------------------

    async def _subject(self, src: RegistryClient, src_repo: Repository, dst: RegistryClient, dst_repo: Repository,
                       digest: str, depth: int) -> SubjectResult:
        """Shared per (target repository, subject): one fallback-index writer per tag, each artifact counted once."""
        key = (dst.host, dst_repo.path, digest)
        task = self._subjects.get(key)
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None
                                             or task.result().reasons)):
            task = asyncio.create_task(self._copy_subject(src, src_repo, dst, dst_repo, digest, depth))
            self._subjects[key] = task
        return await asyncio.shield(task)

    async def _copy_subject(self, src: RegistryClient, src_repo: Repository, dst: RegistryClient,
                            dst_repo: Repository, subject: str, depth: int) -> SubjectResult:
        result = SubjectResult()
        where = f"{dst.host}/{dst_repo.path}"
        try:
            prefetched = self._prefetched.pop((src.host, src_repo.path, subject), None)
            entries, source_index = await (prefetched or self._source_referrers(src, src_repo, subject))
            tags = await self._source_tags(src, src_repo)
        except ImageSyncError as exc:
            result.fail(f"{where}@{subject} (referrers)", f"listing referrers of {subject}: {exc}", exc)
            return result
        wanted = [e for e in entries if self.options.wants(artifact_type_of(e))]
        cosign = {tag: kind for tag, kind in cosign_tags(subject).items() if tag in tags and self.options.wants(kind)}
        if len(wanted) < len(entries):
            log.debug("%s@%s: %d referrer(s) excluded by type", src_repo, subject, len(entries) - len(wanted))

        for tag in cosign:
            try:
                copied = await self._copy_tag(src, src_repo, dst, dst_repo, tag)
                result.outcomes[f"{where}:{tag}"] = "copied" if copied else "skipped"
            except ImageSyncError as exc:
                result.fail(f"{where}:{tag}", f"{tag}: {clip(str(exc), 300)}", exc)
        if not wanted:
            return result

        try:
            listed, target_index = await self._target_referrers(dst, dst_repo, subject)
        except ImageSyncError as exc:
            result.fail(f"{where}@{subject} (referrers)", f"listing referrers of {subject} at the target: {exc}", exc)
            return result
        present: list[dict[str, Any]] = []
        nested: list[str] = []
        for entry in wanted:
            digest = entry["digest"]
            key = f"{where}@{digest}"
            try:
                if digest in listed:
                    result.outcomes[key] = "skipped"
                elif await self._copy_referrer(src, src_repo, dst, dst_repo, digest):
                    result.outcomes[key] = "copied"
                else:
                    result.outcomes[key] = "skipped"
                present.append(entry)
                nested.append(digest)
            except ImageSyncError as exc:
                result.fail(key, f"{artifact_type_of(entry) or 'artifact'} {digest}: {clip(str(exc), 300)}", exc)

        if dst.referrers_api is False and present:
            try:
                await self._update_fallback(dst, dst_repo, subject, target_index, present, source_index)
            except ImageSyncError as exc:
                result.fail(f"{where}:{fallback_tag(subject)}", f"referrers tag {fallback_tag(subject)}: "
                                                                 f"{clip(str(exc), 300)}", exc)
        if depth + 1 < MAX_DEPTH:
            for nested_result in await asyncio.gather(
                    *(self._subject(src, src_repo, dst, dst_repo, d, depth + 1) for d in nested)):
                result.add(nested_result)
        return result

    # -- reading ---------------------------------------------------------------------------------

    async def _source_tags(self, src: RegistryClient, repo: Repository) -> frozenset[str]:
        """The source repository's tags (the planner's listing when it made one; none for a 404)."""
        return (await self._tag_set(src, repo))[1]

    async def _has_fallback_tags(self, src: RegistryClient, repo: Repository) -> bool:
        """Whether any of the source repository's tags is a referrers fallback tag (``sha256-...``)."""
        return (await self._tag_set(src, repo))[2]

    async def _tag_set(self, src: RegistryClient, repo: Repository) -> tuple[list[str], frozenset[str], bool]:
        try:
            tags: list[str] = await self.syncer.source_tags(repo)
        except RegistryError as exc:
            if exc.status == 404:
                return [], frozenset(), False
            raise
        key = (src.host, repo.path)
        known = self._tag_sets.get(key)
        if known is None or known[0] is not tags:  # a listing tried again after a failure is a new list
            known = self._tag_sets[key] = (tags, frozenset(tags), any(t.startswith("sha256-") for t in tags))
        return known

    async def _source_referrers(self, src: RegistryClient, repo: Repository,
                                subject: str) -> tuple[list[dict[str, Any]], Manifest | None]:
        """The source's referrers of ``subject`` (API, else the fallback tag), and the fallback index read."""
        if src.referrers_api is not False:
            entries = await src.get_referrers(repo.path, subject, self.options.api_filter)
            if entries is not None:
                src.referrers_api = True
                return valid_entries(entries), None
            src.referrers_api = False
        tag = fallback_tag(subject)
        if tag not in await self._source_tags(src, repo):
            return [], None
        index = await src.get_manifest(repo.path, tag)
        if index.media_type not in INDEX_TYPES:
            raise ManifestError(f"{src.host}/{repo.path}:{tag} is a {clip(index.media_type, 80)}, not an image index")
        return valid_entries(_json_object(index).get("manifests") or []), index

    async def _target_referrers(self, dst: RegistryClient, repo: Repository,
                                subject: str) -> tuple[set[str], dict[str, Any] | None]:
        """Digests the target lists as referrers of ``subject`` (API or fallback tag), and its fallback index."""
        if dst.referrers_api is not False:
            entries = await dst.get_referrers(repo.path, subject)
            if entries is not None:
                dst.referrers_api = True
                return {e["digest"] for e in valid_entries(entries)}, None
            dst.referrers_api = False
        try:
            index = await dst.get_manifest(repo.path, fallback_tag(subject))
        except RegistryError as exc:
            if exc.status == 404:
                return set(), None
            raise
        body = _json_object(index)
        return {e["digest"] for e in valid_entries(body.get("manifests") or [])}, body

    # -- writing ---------------------------------------------------------------------------------

    async def _copy_referrer(self, src: RegistryClient, src_repo: Repository, dst: RegistryClient,
                             dst_repo: Repository, digest: str) -> bool:
        """Make the referrer manifest ``digest`` present at the target; True when it was pushed."""
        if not self.syncer.options.force:
            existing = await dst.head_manifest(dst_repo.path, digest)
            if existing is not None and existing.digest == digest:
                return False
        manifest = await self.syncer._read_manifest(src, src_repo, digest, f"{src_repo}@{digest}")
        await self.syncer._copy_references(src, src_repo, dst, dst_repo, manifest)
        headers = await dst.put_manifest(dst_repo.path, digest, manifest)
        self.syncer.stats.manifests_pushed += 1
        if "oci-subject" in headers:
            dst.referrers_api = True
        elif subject_of(manifest) is not None:
            dst.referrers_api = False  # the registry did not index the subject: the fallback tag is ours
        return True

    async def _copy_tag(self, src: RegistryClient, src_repo: Repository, dst: RegistryClient,
                        dst_repo: Repository, tag: str) -> bool:
        """A cosign tag: copied when the target's tag is missing or names another digest."""
        head = await src.head_manifest(src_repo.path, tag)
        if head is not None and not self.syncer.options.force:
            existing = await dst.head_manifest(dst_repo.path, tag)
            if existing is not None and existing.digest == head.digest:
                return False
        manifest = await self.syncer._read_manifest(src, src_repo, tag, f"{src_repo}:{tag}")
        if head is None and not self.syncer.options.force:
            existing = await dst.head_manifest(dst_repo.path, tag)
            if existing is not None and existing.digest == manifest.digest:
                return False
        await self.syncer._copy_references(src, src_repo, dst, dst_repo, manifest)
        await dst.put_manifest(dst_repo.path, tag, manifest)
        self.syncer.stats.manifests_pushed += 1
        return True

    async def _update_fallback(self, dst: RegistryClient, repo: Repository, subject: str,
                               existing: dict[str, Any] | None, entries: Sequence[dict[str, Any]],
                               source_index: Manifest | None) -> None:
        """Merge ``entries`` into the target's ``sha256-<hex>`` index; pushed only when something is missing."""
        merged = merge_index(existing, entries)
        if merged is None:
            return
        manifest = index_manifest(merged)
        if existing is None and source_index is not None:
            source_entries = valid_entries(_json_object(source_index).get("manifests") or [])
            if source_entries == valid_entries(merged["manifests"]):
                manifest = source_index  # the same list as the source's: the same bytes, the same digest
        check_supported(manifest.media_type)
        await dst.put_manifest(repo.path, fallback_tag(subject), manifest)
        self.syncer.stats.manifests_pushed += 1


# -- only signed images --------------------------------------------------------------------------


class SignatureGate:
    """``--only-signed``: finds an image's signatures at the source and, with keys, verifies them
    (engine/signatures.py says what counts) before anything of the image is copied.

    The ``.sig`` tag is looked at first (one GET when it verifies); signature referrers only when it is
    missing or does not verify. Any error reading them fails the image: nothing unchecked is pushed.
    """

    def __init__(self, syncer: Syncer, options: SignatureOptions, copier: ReferrerCopier | None) -> None:
        self.syncer = syncer
        self.options = options
        self.keys = [load_public_key(pem) for pem in options.keys]
        # The tag list is the referrer copier's when there is one (read once per repository and run).
        self._tags = copier or ReferrerCopier(syncer, ReferrerOptions())
        self._decisions: dict[tuple[str, str, str], asyncio.Task[str | None]] = {}

    async def refusal(self, src: RegistryClient, repo: Repository, digest: str, tag: str | None = None) -> str | None:
        """None when the image ``digest`` (tagged ``tag`` at the source) may be copied, else the skip reason.

        A referrer tag an all-tags rule lists (``sha256-<hex>.sig``, ``.att``, ``.sbom``, the fallback index
        ``sha256-<hex>``) follows its subject: copied when the subject would be, else skipped with its reason.
        """
        match = REFERRER_TAG.match(tag or "")
        if match and f"sha256:{match[1]}" != digest:
            subject = f"sha256:{match[1]}"
            why = await self._decision(src, repo, subject)
            return None if why is None else f"{why} (the subject of this referrer tag, {subject}, is skipped)"
        return await self._decision(src, repo, digest)

    async def _decision(self, src: RegistryClient, repo: Repository, digest: str) -> str | None:
        """Decided once per (source repository, digest) and run."""
        key = (src.host, repo.path, digest)
        task = self._decisions.get(key)
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
            task = self._decisions[key] = asyncio.create_task(self._decide(src, repo, digest))
        return await asyncio.shield(task)

    async def _decide(self, src: RegistryClient, repo: Repository, digest: str) -> str | None:
        tags = await self._tags._source_tags(src, repo)
        sig_tag = fallback_tag(digest) + ".sig"
        reason = None
        if sig_tag in tags:
            if not self.keys:
                return None
            reason = await self._check(src, repo, digest, sig_tag)
            if reason is None:
                return None
        entries = [e for e in await self._referrers(src, repo, digest, tags)
                   if is_signature_type(artifact_type_of(e))]
        if not entries:
            return reason or UNSIGNED
        if not self.keys:
            return None
        for entry in entries:
            if artifact_type_of(entry) == COSIGN_SIGNATURE_TYPE:
                reason = await self._check(src, repo, digest, entry["digest"])
                if reason is None:
                    return None
        return reason or f"{DOES_NOT_VERIFY}: no cosign simple-signing signature to verify (only " \
                         f"{', '.join(sorted({artifact_type_of(e) for e in entries}))[:200]})"

    async def _check(self, src: RegistryClient, repo: Repository, digest: str, reference: str) -> str | None:
        """None when the cosign signature manifest ``reference`` holds a payload that verifies."""
        manifest = await self.syncer._read_manifest(src, repo, reference, f"{repo}:{reference}")
        candidates = [(await self._payload(src, repo, p), p.signature) for p in signed_payloads(manifest.data)]
        why = first_valid(self.keys, candidates, digest)
        return None if why is None else f"{DOES_NOT_VERIFY}: {clip(why, 300)}"

    @staticmethod
    async def _payload(src: RegistryClient, repo: Repository, layer: SignedPayload) -> bytes:
        """The payload layer's bytes (at most MAX_PAYLOAD_BYTES, decoded by read_limited: a gzip bomb stops
        there). Its digest is not checked here: the signature is over these very bytes."""
        async with src.open_blob(repo.path, layer.digest) as response:
            data, _ = await read_limited(response, MAX_PAYLOAD_BYTES)
        return data

    @staticmethod
    async def _referrers(src: RegistryClient, repo: Repository, digest: str,
                         tags: frozenset[str]) -> list[dict[str, Any]]:
        """The source's referrers of ``digest``: the API, else the fallback index tag."""
        if src.referrers_api is not False:
            entries = await src.get_referrers(repo.path, digest)
            if entries is not None:
                src.referrers_api = True
                return valid_entries(entries)
            src.referrers_api = False
        tag = fallback_tag(digest)
        if tag not in tags:
            return []
        index = await src.get_manifest(repo.path, tag)
        if index.media_type not in INDEX_TYPES:
            return []
        return valid_entries(_json_object(index).get("manifests") or [])
