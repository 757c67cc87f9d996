"""Dry runs: what a sync would do, computed without writing (``imagesync sync --dry-run``, ``spec.dryRun``).

For every pair the rules expand to, the plan takes the copy's own decision (:meth:`Syncer.decide`: the
same up-to-date rule, ``--force``, ``--skip-existing``, platform filter and ``--only-signed``), and for an
image that would be copied it walks what the copy would walk (an index's children the target lacks, then
each image's config and layers) and HEADs each blob at the target. Only GET and HEAD requests are sent.

Bytes are those of the blobs the target repository lacks, read from the manifests' descriptors, so they
are exact for what the copy uploads, with two kinds of estimate said so in the plan:

- a blob missing from a target repository on the source's own registry is mounted by the copy, not
  uploaded; the plan counts its bytes (an upper bound) and marks the pair and the plan as estimates;
- referrers (signatures, attestations, SBOMs) are not planned; a note says so when they are enabled.

Totals count a blob once per target registry (the copy uploads it once and mounts it into the other
repositories); a pair's own bytes are all the blobs its target repository lacks, so pairs that share
layers may together show more than the total.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from imagesync.engine.config import AuthTable
from imagesync.engine.copy import REASON_MAX_CHARS, Registries, Syncer, SyncOptions, ToCopy, TransportFactory
from imagesync.engine.errors import ImageSyncError, RuleError, clip
from imagesync.engine.manifest import Descriptor, Manifest
from imagesync.engine.prune import PruneReport
from imagesync.engine.reference import Repository
from imagesync.engine.registry import RegistryClient
from imagesync.engine.rules import ImagePair, Rule
from imagesync.engine.stats import ImageOutcome

PairState = Literal["up-to-date", "copy", "skipped", "failed"]

REFERRERS_NOT_PLANNED = ("referrers (signatures, attestations, SBOMs) are not planned: their bytes are not "
                         "counted (--no-referrers or spec.referrers.enabled: false leaves them out of the copy)")


@dataclass
class PairPlan:
    """One pair's fate: up to date, to copy (``bytes`` in ``blobs`` the target lacks), skipped (--only-signed)
    or failed (it could not be planned: ``reason``)."""

    source: str
    target: str
    state: PairState
    bytes: int = 0
    blobs: int = 0
    reason: str = ""
    exact: bool = True

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"source": self.source, "target": self.target, "state": self.state}
        if self.state == "copy":
            data.update(bytes=self.bytes, blobs=self.blobs, exact=self.exact)
        if self.reason:
            data["reason"] = self.reason
        return data


@dataclass
class Plan:
    entries: list[PairPlan] = field(default_factory=list)
    # Each missing blob once per target registry (host, digest) -> size; mountable ones besides.
    missing: dict[tuple[str, str], int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    duration_seconds: float = 0.0
    prune: PruneReport | None = None  # with --prune: what pruning would delete (never deleted in a dry run)

    def count(self, state: PairState) -> int:
        return sum(1 for entry in self.entries if entry.state == state)

    @property
    def exact(self) -> bool:
        return all(entry.exact for entry in self.entries)

    @property
    def bytes_to_copy(self) -> int:
        return sum(self.missing.values())

    def totals(self) -> dict[str, Any]:
        return {"pairs": len(self.entries), "upToDate": self.count("up-to-date"), "toCopy": self.count("copy"),
                "skipped": self.count("skipped"), "failed": self.count("failed"),
                "bytesToCopy": self.bytes_to_copy, "blobsToCopy": len(self.missing), "exact": self.exact}

    def as_dict(self, limit: int | None = None) -> dict[str, Any]:
        """Totals, notes and the pairs (the first ``limit`` of them; ``pairs`` is the full count)."""
        entries = self.entries if limit is None else self.entries[:limit]
        return {**self.totals(), "notes": list(self.notes), "entries": [entry.as_dict() for entry in entries]}


class Planner:
    """Plans pairs with a :class:`Syncer`'s clients and decision; sends GET and HEAD requests only."""

    def __init__(self, syncer: Syncer) -> None:
        self.syncer = syncer
        self.registries = syncer.registries
        self.options = syncer.options
        self._pairs = asyncio.Semaphore(max(4, self.options.proc * 4))  # as many as the copy has in flight
        self._heads = asyncio.Semaphore(max(1, self.options.proc))
        self._blobs: dict[tuple[str, str, str], asyncio.Task[bool]] = {}  # (host, repo, digest) -> present
        self._children: dict[tuple[str, str, str], asyncio.Task[Manifest]] = {}  # child manifests read once

    async def plan(self, pairs: Sequence[ImagePair], planning_failures: Sequence[ImageOutcome] = ()) -> Plan:
        """Every pair in order, after the rules that could not be expanded."""
        result = Plan(entries=[PairPlan(f.source, f.target, "failed", reason=f.reason) for f in planning_failures])
        # The copy's own listing of target repositories: with --skip-existing a pair it drops is up to date.
        pending = await self.syncer.list_targets(pairs)
        to_plan = {id(pair) for pair in pending}
        planned = iter(await asyncio.gather(*(self._plan_in_time(pair, result) for pair in pending)))
        result.entries.extend(next(planned) if id(pair) in to_plan else
                              PairPlan(str(pair.source), str(pair.target), "up-to-date") for pair in pairs)
        if self.options.referrers.enabled:
            result.notes.append(REFERRERS_NOT_PLANNED)
        if not result.exact:
            result.notes.append("some blobs are missing from target repositories on their source's own registry: "
                                "the copy mounts them there rather than uploading them, so their bytes (counted) "
                                "are an upper bound")
        return result

    async def _plan_in_time(self, pair: ImagePair, result: Plan) -> PairPlan:
        try:
            async with self._pairs, asyncio.timeout_at(self.syncer.deadline_at):
                return await self._plan_pair(pair, result)
        except TimeoutError:
            return PairPlan(str(pair.source), str(pair.target), "failed",
                            reason=self.syncer._deadline_reason("while planning"))
        except ImageSyncError as exc:
            return PairPlan(str(pair.source), str(pair.target), "failed", reason=clip(str(exc), REASON_MAX_CHARS))

    async def _plan_pair(self, pair: ImagePair, result: Plan) -> PairPlan:
        source, target = pair.source, pair.target
        decision = await self.syncer.decide(pair)
        if isinstance(decision, ImageOutcome):
            if decision.reason:  # --only-signed refused it: the copy would skip it, and why
                return PairPlan(str(source), str(target), "skipped", reason=decision.reason)
            return PairPlan(str(source), str(target), "up-to-date")
        src = self.registries.client_for(source.repo)
        dst = self.registries.client_for(target.repo)
        missing = await self._missing(src, source.repo, dst, target.repo, decision)
        # The copy mounts from the source repository when both are on one registry (Syncer._mount_source).
        mountable = src.host == dst.host and source.repo.path != target.repo.path
        for blob in missing:
            result.missing.setdefault((dst.host, blob.digest), blob.size)
        return PairPlan(str(source), str(target), "copy", bytes=sum(b.size for b in missing), blobs=len(missing),
                        reason=decision.note, exact=not (mountable and missing))

    async def _missing(self, src: RegistryClient, src_repo: Repository, dst: RegistryClient, dst_repo: Repository,
                       decision: ToCopy) -> list[Descriptor]:
        """The blobs the copy would upload for this image: those of every image manifest it would push that
        the target repository lacks (an index's children only when the target lacks them, as
        :meth:`Syncer._copy_child` decides)."""
        images = await self._images(src, src_repo, dst, dst_repo, decision.manifest)
        blobs = list({blob.digest: blob for image in images for blob in image.blobs()}.values())
        present = await asyncio.gather(*(self._present(dst, dst_repo, blob.digest) for blob in blobs))
        return [blob for blob, there in zip(blobs, present, strict=True) if not there]

    async def _images(self, src: RegistryClient, src_repo: Repository, dst: RegistryClient, dst_repo: Repository,
                      manifest: Manifest) -> list[Manifest]:
        if not manifest.is_index:
            return [manifest]
        children = await asyncio.gather(*(self._child(src, src_repo, dst, dst_repo, child)
                                          for child in manifest.children()))
        return [image for images in children for image in images]

    async def _child(self, src: RegistryClient, src_repo: Repository, dst: RegistryClient, dst_repo: Repository,
                     child: Descriptor) -> list[Manifest]:
        """The image manifests below an index child the copy would push (none when the target has the child);
        each child is read from the source once, however many tags share it."""
        if not self.options.force:
            async with self._heads:
                existing = await dst.head_manifest(dst_repo.path, child.digest)
            if existing is not None and existing.digest == child.digest:
                return []
        key = (src.host, src_repo.path, child.digest)
        task = self._children.get(key)
        if task is None:
            task = self._children[key] = asyncio.create_task(self.syncer._read_manifest(
                src, src_repo, child.digest, f"{src_repo}@{child.digest} ({child.platform_name})"))
        return await self._images(src, src_repo, dst, dst_repo, await asyncio.shield(task))

    async def _present(self, dst: RegistryClient, repo: Repository, digest: str) -> bool:
        """One HEAD per (target repository, blob) however many images share the blob."""
        key = (dst.host, repo.path, digest)
        task = self._blobs.get(key)
        if task is None:
            task = self._blobs[key] = asyncio.create_task(self._head_blob(dst, repo, digest))
        return await asyncio.shield(task)

    async def _head_blob(self, dst: RegistryClient, repo: Repository, digest: str) -> bool:
        async with self._heads:
            return await dst.blob_exists(repo.path, digest)


async def dry_run(rules: Sequence[Rule], rule_errors: Sequence[RuleError], auth: AuthTable, options: SyncOptions,
                  *, shard_index: int = 0, shard_count: int = 1,
                  transport_factory: TransportFactory | None = None) -> Plan:
    """Plan a whole sync as :func:`imagesync.engine.copy.sync` would run it (the same pairs and shards)."""
    started = time.monotonic()
    registries = Registries(auth, options, transport_factory)
    syncer = Syncer(registries, options)
    try:
        planned_pairs, pairs, failures = await syncer.plan_shard(rules, rule_errors, shard_index, shard_count)
        plan = await Planner(syncer).plan(pairs, failures)
        if options.prune is not None and shard_index == 0:  # listed, never deleted, whatever options.prune says
            await syncer.prune(planned_pairs, confirmed=False)
            plan.prune = syncer.stats.prune
    finally:
        await registries.aclose()
    plan.duration_seconds = round(time.monotonic() - started, 3)
    return plan
