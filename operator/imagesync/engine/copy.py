"""The copy pipeline: index -> image -> blob.

One blob-level pool of ``proc`` transfers is shared by every image, so an image with one huge layer
holds one slot while the others keep moving. Each level is short:

- :meth:`Syncer.sync_image` decides whether the image needs copying at all (manifest digests compared
  by HEAD) and pushes the top manifest last;
- :meth:`Syncer._copy_manifest` copies what one manifest references (children of an index, blobs of
  an image) and then the manifest itself, byte for byte;
- :meth:`Syncer._ensure_blob` makes one blob present at the target: skip, mount, or stream-copy with
  the digest verified on the fly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import httpx

from imagesync.engine.blobs import Progress, copy_blob, put_blob, read_blob
from imagesync.engine.config import AuthTable
from imagesync.engine.errors import ImageSyncError, RegistryError, RuleError, clip
from imagesync.engine.manifest import (
    INDEX_TYPES,
    Descriptor,
    Manifest,
    ManifestError,
    PlatformFilter,
    check_supported,
    filter_index,
)
from imagesync.engine.prune import PruneMode
from imagesync.engine.pruner import PlannedRule, Pruner
from imagesync.engine.reference import ImageRef, Repository
from imagesync.engine.referrers import ReferrerCopier, ReferrerOptions, SignatureGate
from imagesync.engine.registry import ManifestHead, RegistryClient, RepositoryList, TagList
from imagesync.engine.rules import (
    ImagePair,
    Rule,
    TargetSpec,
    expand_prefix_rule,
    expand_rule,
    shard,
    source_needs_tag_list,
)
from imagesync.engine.signatures import SignatureOptions
from imagesync.engine.stats import ImageOutcome, SyncStats
from imagesync.engine.transport import (
    ByteBucket,
    Endpoint,
    QuotaGate,
    RateLimiter,
    RegistryHTTP,
    RetryPolicy,
    pull_scope,
)

log = logging.getLogger(__name__)

# Blobs up to this size are latency-bound, not bandwidth-bound: see transfer_limits.
SMALL_BLOB_BYTES = 1024 * 1024
SMALL_TRANSFERS_PER_PROC = 6
# Blobs up to this size are read from the source while the target is asked whether it has them (the HEAD and
# the POST that opens the upload, see _transfer_blob_once): one round trip less per image on a distant link, at
# the cost of a wasted read of at most this much when the target has the blob. 64 KiB crosses a 10 MB/s link in
# less time than one 40 ms round trip. Configs and thin layers are this small.
SPECULATIVE_READ_BYTES = 64 * 1024
# A target repository with at least this many images in the run gets one tags/list at the start: a tag it does
# not list needs no manifest HEAD (a cold copy into a 1000-tag repository: 1000 requests and a round trip per
# image saved), and for a tag it lists, the target's and the source's HEADs go out together. Fewer images than
# this: the per-tag HEAD costs less than the listing would on a no-op run.
TARGET_LIST_MIN_IMAGES = 8
CANCEL_UPLOADS_WAIT_SECONDS = 5.0

# Invalid tags a source lists are reported one by one up to this many, then counted in one more line.
INVALID_TAGS_REPORTED = 10
# A failure reason stays one readable line (registry text in it is clipped shorter where it is quoted).
REASON_MAX_CHARS = 1000


@dataclass(frozen=True)
class SyncOptions:
    proc: int = 5
    retries: int = 2
    force: bool = False
    # Missing-only: one tags/list per target repository decides; a tag present at the target is not copied
    # (nor compared: a tag moved at the source is not noticed). For registries whose tags are immutable.
    skip_existing: bool = False
    qps: float | None = None
    limit_rate: float | None = None  # bytes/second per registry, up and down (--limit-rate; limitRate wins)
    ca_file: str | None = None  # trusted for every HTTPS registry without a caFile of its own
    platforms: PlatformFilter = field(default_factory=PlatformFilter)
    retry_policy: RetryPolicy = field(default_factory=RetryPolicy)
    referrers: ReferrerOptions = field(default_factory=ReferrerOptions)  # signatures, attestations, SBOMs
    # --timeout: seconds per request to connect, and of inactivity while reading or writing (None: the defaults,
    # connect 15 s, read and write 120 s); --deadline: seconds for the whole sync (None: no deadline).
    timeout: float | None = None
    deadline: float | None = None
    signatures: SignatureOptions = field(default_factory=SignatureOptions)  # --only-signed, --signature-key
    prune: PruneMode | None = None  # --prune: target tags the source no longer has (engine/prune.py); None: off


TransportFactory = Callable[[Endpoint], httpx.AsyncBaseTransport | None]


class Registries:
    """One :class:`RegistryClient` per (registry host, credential), one rate limiter per host."""

    def __init__(self, auth: AuthTable, options: SyncOptions,
                 transport_factory: TransportFactory | None = None) -> None:
        self._auth = auth
        self._options = options
        self._transport_factory = transport_factory
        self._clients: dict[tuple[str, str | None], RegistryClient] = {}
        self._limiters: dict[str, RateLimiter] = {}
        self._buckets: dict[str, ByteBucket | None] = {}
        self._gates: dict[str, QuotaGate] = {}

    def client_for(self, repo: Repository) -> RegistryClient:
        entry = self._auth.lookup(repo)
        key = (repo.api_host, entry.key if entry else None)
        client = self._clients.get(key)
        if client is None:
            endpoint = Endpoint(
                host=repo.api_host,
                insecure=bool(entry and entry.insecure),
                skip_tls_verify=bool(entry and entry.skip_tls_verify),
                plain_http=bool(entry and entry.plain_http),
                ca_file=(entry.ca_file if entry and entry.ca_file else None) or self._options.ca_file,
                username=entry.username if entry else None,
                password=entry.password if entry else None,
            )
            limiter = None
            if self._options.qps:
                limiter = self._limiters.setdefault(repo.api_host, RateLimiter(self._options.qps))
            if repo.api_host not in self._buckets:
                rate = self._auth.limit_rate(repo) or self._options.limit_rate
                self._buckets[repo.api_host] = ByteBucket(rate) if rate else None
            gate = self._gates.setdefault(repo.api_host, QuotaGate())
            transport = self._transport_factory(endpoint) if self._transport_factory else None
            # One request slot more than there are blob transfers (transfer_limits): a transfer holds at most
            # a GET and a PUT or PATCH at once, so this never deadlocks even when source and target are one
            # registry. Slots are what a distant registry's round trips overlap with: with proc + 2 of them,
            # a 40 ms link spent its time with the small requests of 5 images queued behind 7 slots.
            timeout = self._options.timeout
            http = RegistryHTTP(endpoint, limiter=limiter, bandwidth=self._buckets[repo.api_host], quota=gate,
                                retry=self._options.retry_policy,
                                max_connections=sum(transfer_limits(self._options.proc)) + 2, transport=transport,
                                timeout=httpx.Timeout(timeout, pool=600.0) if timeout else None)
            client = self._clients[key] = RegistryClient(http)
        return client

    async def warm_up(self, targets: Sequence[Repository]) -> None:
        """Set up the target registries (their ``/v2/`` probes, and tokens to push to ``targets``; an empty
        path: the probe alone) while the planner lists the sources. Through a 40 ms link, the first images
        otherwise waited 4 round trips for them after planning (bench/long_distance.py). A failure is left
        to the requests that need what failed: they report it (or succeed, if it was passing)."""

        async def warm(repo: Repository) -> None:
            http = self.client_for(repo).http
            if repo.path:
                http.expect_push(repo.path)
            try:
                await http.warm_up([pull_scope(repo.path)] if repo.path else [])
            except ImageSyncError as exc:
                log.debug("setting up %s ahead of the copy: %s", repo, exc)

        await asyncio.gather(*(warm(repo) for repo in targets))

    def login_results(self) -> tuple[list[str], list[str]]:
        """Auth-file keys whose credentials were used: (accepted, refused), for RegistryCredential status."""
        used = [(key, client.http) for (_, key), client in self._clients.items()
                if key and client.http.endpoint.has_credentials and client.http.requests_sent]
        refused = sorted({key for key, http in used if http.login_refused})
        return sorted({key for key, _ in used} - set(refused)), refused

    def quotas(self) -> dict[str, dict[str, float | int]]:
        """The request quota each registry last announced (ratelimit-* headers), by host."""
        return {host: gate.announced.as_dict() for host, gate in sorted(self._gates.items()) if gate.announced}

    @property
    def requests_sent(self) -> int:
        return sum(c.http.requests_sent for c in self._clients.values())

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.http.aclose()


@dataclass(frozen=True)
class ToCopy:
    """An image :meth:`Syncer.decide` found missing or different at the target: the manifest to push (the
    source's, or its platform-filtered index) and a note for its outcome."""

    manifest: Manifest
    note: str = ""
    new_at_target: bool = False  # the target had nothing under the image's tag (or digest)


def transfer_limits(proc: int) -> tuple[int, int]:
    """How many blob transfers run at once: (blobs over SMALL_BLOB_BYTES, smaller ones).

    ``--proc`` bounds the big transfers, which share the link's bandwidth and hold a chunk buffer each.
    Small blobs (configs, thin layers) cost round trips, not bandwidth: on a distant link, capping them at
    ``proc`` too left the link idle between their requests (measured through a 40 ms round trip: the
    many-small set took 4x its latency floor), so they get SMALL_TRANSFERS_PER_PROC times as many slots.
    6 rather than 3: a multi-arch image has 6 blobs (2 platforms x config and 2 layers), and with 3 per proc
    the blobs of ``proc`` such images queued for half as many slots (through 40 ms: 1.91 s against 1.67 s for
    the multi-arch set, 3.55 s against 2.75 s for many-small; the same on loopback within noise; peak RSS on
    set A 57.6 -> 71.2 MiB at --proc 8, and up to 6 x proc + proc + 2 connections per registry).
    """
    proc = max(1, proc)
    return proc, SMALL_TRANSFERS_PER_PROC * proc


def target_lists_wanted(pairs: Sequence[ImagePair], skip_existing: bool) -> list[Repository]:
    """The target repositories whose tags the run lists at its start: every one with --skip-existing (the
    listing decides what is copied), else those with at least TARGET_LIST_MIN_IMAGES tagged images."""
    counts: dict[Repository, int] = {}
    for pair in pairs:
        if pair.target.tag is not None:
            counts[pair.target.repo] = counts.get(pair.target.repo, 0) + 1
    return [repo for repo, count in counts.items() if skip_existing or count >= TARGET_LIST_MIN_IMAGES]


def targets_to_warm_up(rules: Sequence[Rule], count: int) -> list[Repository]:
    """The target repositories of the first ``count`` rules that name one (the first images copied go
    there), and the registry alone (empty path) of each other target: see :meth:`Registries.warm_up`."""
    named: list[Repository] = []
    hosts: dict[str, Repository] = {}
    for rule in rules:
        repo = rule.target.repo
        if not rule.target.prefix and repo.path and len(named) < count:
            if repo not in named:
                named.append(repo)
        else:
            hosts.setdefault(repo.registry, Repository(repo.registry, ""))
    covered = {repo.registry for repo in named}
    return named + [repo for host, repo in hosts.items() if host not in covered]


def _unseen(pairs: Iterable[ImagePair], seen: set[tuple[str, str]]) -> list[ImagePair]:
    """The pairs whose (source, target) is not in ``seen`` yet, once each; ``seen`` gains them. Two rules may
    name one copy: it is planned once."""
    fresh = []
    for pair in pairs:
        key = (str(pair.source), str(pair.target))
        if key not in seen:
            seen.add(key)
            fresh.append(pair)
    return fresh


def _reference(image: ImageRef) -> str:
    ref = image.digest or image.tag
    if not ref:
        raise ImageSyncError(f"{image} names neither a tag nor a digest")
    return ref


class Syncer:
    def __init__(self, registries: Registries, options: SyncOptions, stats: SyncStats | None = None) -> None:
        self.registries = registries
        self.options = options
        self.stats = stats or SyncStats()
        big, small = transfer_limits(options.proc)
        self._pool = asyncio.Semaphore(big)
        self._small_pool = asyncio.Semaphore(small)
        self._cancels: set[asyncio.Task[None]] = set()  # upload sessions being cancelled (see _transfer_blob_once)
        # Images in flight: enough to keep the blob pool busy, few enough to bound open manifests.
        self._images = asyncio.Semaphore(max(4, options.proc * 4))
        self._blob_tasks: dict[tuple[str, str, str], asyncio.Task[None]] = {}
        # (target host, digest) -> (repository, task) of the first transfer of that blob to that registry:
        # later repositories mount from it instead of uploading the same bytes again.
        self._first_copy: dict[tuple[str, str], tuple[str, asyncio.Task[None]]] = {}
        # Each source repository's tag list, read once per run: by the planner and by the referrers'
        # fallback-tag lookup alike (listing it twice cost a round trip per repository).
        self._source_tag_lists: dict[tuple[str, str], asyncio.Task[TagList]] = {}
        # Target repositories' tags as listed at the start of run() (see TARGET_LIST_MIN_IMAGES).
        self._target_tags: dict[Repository, frozenset[str]] = {}
        self.referrers = ReferrerCopier(self, options.referrers) if options.referrers.enabled else None
        # --deadline: the event loop's clock reading by which the whole sync ends (set by sync()).
        self.deadline_at: float | None = None
        self.signatures = (SignatureGate(self, options.signatures, self.referrers)
                           if options.signatures.only_signed else None)
        # The rules plan() expanded with their source's tags (what pruning compares the targets with), and the
        # targets of those it could not expand (their tags are unknown: pruning leaves those repositories alone).
        self.planned: list[PlannedRule] = []
        self.unplanned: list[TargetSpec] = []
        self.malformed_rules = 0

    # -- planning ------------------------------------------------------------------------------

    async def source_tags(self, repo: Repository) -> TagList:
        """The tags of a source repository, listed once per run (a failed listing is tried again)."""
        client = self.registries.client_for(repo)
        key = (client.host, repo.path)
        task = self._source_tag_lists.get(key)
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
            task = self._source_tag_lists[key] = asyncio.create_task(client.list_tags(repo.path))
        return await asyncio.shield(task)

    async def plan(self, rules: Sequence[Rule], rule_errors: Sequence[RuleError] = (),
                   expanded_one: Callable[[list[ImagePair]], None] | None = None,
                   ) -> tuple[list[ImagePair], list[ImageOutcome]]:
        """Expand rules into image pairs, plus a failed outcome for each rule that cannot be expanded.
        ``expanded_one`` is handed each repository's pairs as soon as they are known (see :meth:`plan_and_run`)."""
        failures = [ImageOutcome(error.rule_text, "", "failed", error.reason) for error in rule_errors]
        self.malformed_rules = len(rule_errors)
        catalogs: dict[int, asyncio.Task[RepositoryList]] = {}

        async def expand(rule: Rule, from_catalog: bool = False) -> list[ImagePair]:
            if rule.source.prefix:
                return await expand_prefix(rule)
            tags: list[str] | None = None
            if source_needs_tag_list(rule):
                repo = rule.source.repo
                try:
                    tags = listed = await self.source_tags(repo)
                except ImageSyncError as exc:
                    failures.append(ImageOutcome(rule.text, "", "failed", clip(str(exc), REASON_MAX_CHARS)))
                    self.unplanned.append(rule.target)
                    return []
                if not listed and not listed.invalid:
                    # "tags": [] or null (docker-registry's answer once every tag is deleted): an empty repository
                    # is not an error (exit 0), but a rule that copies nothing is worth one line. A repository a
                    # catalog listed gets it at INFO: a registry may hold many emptied ones.
                    log.log(logging.INFO if from_catalog else logging.WARNING,
                            "rule %s: %s lists no tags (an empty repository): nothing to copy", rule.text, repo)
                # Never used as a tag (it could address another repository): reported, the rest still syncs.
                # Outcomes are keyed by source: each names its tag.
                for bad in listed.invalid[:INVALID_TAGS_REPORTED]:
                    reason = f"{repo} lists {bad!r}, which is not a valid tag: skipped (rule {rule.text})"
                    log.warning("%s", reason)
                    failures.append(ImageOutcome(f"{repo}:{bad}", "", "failed", reason))
                if len(listed.invalid) > INVALID_TAGS_REPORTED:
                    more = len(listed.invalid) - INVALID_TAGS_REPORTED
                    failures.append(ImageOutcome(f"{repo} (more invalid tags)", "", "failed",
                                                 f"{repo} lists {more} more invalid tags: skipped (rule {rule.text})"))
            try:
                expanded = expand_rule(rule, tags)
            except RuleError as exc:
                failures.append(ImageOutcome(rule.text, "", "failed", exc.reason))
                self.unplanned.append(rule.target)
                return []
            if tags is not None:
                self.planned.append(PlannedRule(rule, frozenset(tags)))
            if expanded_one is not None:
                expanded_one(expanded)
            return expanded

        async def expand_prefix(rule: Rule) -> list[ImagePair]:
            """A whole registry or namespace: its _catalog (listed once per registry client), then each
            selected repository as an all-tags rule of its own."""
            client = self.registries.client_for(rule.source.repo)
            task = catalogs.get(id(client))
            if task is None:
                task = catalogs[id(client)] = asyncio.create_task(client.list_repositories())
            try:
                catalog = await asyncio.shield(task)
            except ImageSyncError as exc:
                failures.append(ImageOutcome(rule.text, "", "failed", clip(str(exc), REASON_MAX_CHARS)))
                self.unplanned.append(rule.target)
                return []
            source = rule.source.repo
            relevant = [bad for bad in catalog.invalid if rule.source.relative(bad) is not None]
            for bad in relevant[:INVALID_TAGS_REPORTED]:
                reason = (f"{source.registry}'s catalog lists {bad!r}, which is not a valid repository name: "
                          f"skipped (rule {rule.text})")
                log.warning("%s", reason)
                failures.append(ImageOutcome(f"{source.registry}/{bad}", "", "failed", reason))
            if len(relevant) > INVALID_TAGS_REPORTED:
                more = len(relevant) - INVALID_TAGS_REPORTED
                failures.append(ImageOutcome(f"{source} (more invalid repository names)", "", "failed",
                                             f"{source.registry}'s catalog lists {more} more invalid repository "
                                             f"names: skipped (rule {rule.text})"))
            selected = expand_prefix_rule(rule, catalog)
            if not selected:
                failures.append(ImageOutcome(rule.text, "", "failed",
                                             f"no repository of {source.registry}'s catalog ({len(catalog)} listed) "
                                             f"is under {source.path or 'the registry'} and selected by the "
                                             f"rule's repositories include/exclude"))
                return []
            groups = await asyncio.gather(*(expand(sub, from_catalog=True) for sub in selected))
            return [pair for group in groups for pair in group]

        async def expand_in_time(rule: Rule) -> list[ImagePair]:
            try:
                async with asyncio.timeout_at(self.deadline_at):
                    return await expand(rule)
            except TimeoutError:
                failures.append(ImageOutcome(rule.text, "", "failed", self._deadline_reason("while planning")))
                self.unplanned.append(rule.target)
                return []

        expanded = await asyncio.gather(*(expand_in_time(rule) for rule in rules))
        seen: set[tuple[str, str]] = set()
        pairs = [pair for group in expanded for pair in _unseen(group, seen)]
        return pairs, failures

    async def plan_shard(self, rules: Sequence[Rule], rule_errors: Sequence[RuleError], shard_index: int = 0,
                         shard_count: int = 1) -> tuple[list[ImagePair], list[ImagePair], list[ImageOutcome]]:
        """Start the --deadline clock, plan, and take this shard's share: (every pair, this shard's pairs, the
        planning failures it reports). With several shards every worker plans the same pairs; rules that could
        not be planned are reported by shard 0 alone, so the folded status counts each failure once. The copy
        (:func:`sync`) and the dry run (engine/plan.py) both start here."""
        self._start_deadline()
        every, failures = await self.plan(rules, rule_errors)
        if shard_count <= 1:
            return every, every, failures
        return every, shard(every, shard_index, shard_count), failures if shard_index == 0 else []

    # -- running -------------------------------------------------------------------------------

    async def run(self, pairs: Sequence[ImagePair], planning_failures: Sequence[ImageOutcome] = ()) -> SyncStats:
        """Sync every pair; failed images get ``retries`` more rounds unless their failure is permanent."""
        for failure in planning_failures:
            self.stats.record(failure)
        self.stats.images_total = len(pairs) + len(planning_failures)
        await self._retry_rounds(await self._first_round(pairs))
        return await self._tidy_up()

    async def plan_and_run(self, rules: Sequence[Rule], rule_errors: Sequence[RuleError]) -> list[ImagePair]:
        """Plan and sync a whole run in one go (a single shard): each repository's images start as soon as its
        tags are listed, not once every source repository is (through a 40 ms link the last of 10 listings ended
        3 round trips after the first, and every image waited for it; a registry's whole catalog waits longer).
        The pairs, the outcomes and the retries are those of :meth:`plan_shard` then :meth:`run`. Returns every
        planned pair (what pruning compares the targets with)."""
        self._start_deadline()
        seen: set[tuple[str, str]] = set()
        rounds: list[asyncio.Task[list[ImagePair]]] = []

        def expanded_one(pairs: list[ImagePair]) -> None:
            fresh = _unseen(pairs, seen)
            self.stats.images_total += len(fresh)
            if fresh:
                rounds.append(asyncio.create_task(self._first_round(fresh)))

        try:
            every, failures = await self.plan(rules, rule_errors, expanded_one)
            for failure in failures:
                self.stats.record(failure)
            self.stats.images_total += len(failures)
            retries = [pair for pending in await asyncio.gather(*rounds) for pair in pending]
        finally:
            for task in rounds:
                task.cancel()
        await self._retry_rounds(retries)
        await self._tidy_up()
        return every

    def _start_deadline(self) -> None:
        if self.options.deadline is not None:
            self.deadline_at = asyncio.get_running_loop().time() + self.options.deadline

    async def _first_round(self, pairs: Sequence[ImagePair]) -> list[ImagePair]:
        """The first attempt at each pair; the pairs worth another round."""
        for pair in pairs:
            self.registries.client_for(pair.target.repo).http.expect_push(pair.target.repo.path)
        return await self._attempt(await self.list_targets(pairs))

    async def _retry_rounds(self, pending: list[ImagePair]) -> None:
        for round_number in range(1, 1 + max(0, self.options.retries)):
            if not pending:
                break
            log.info("retry round %d for %d image(s)", round_number, len(pending))
            pending = await self._attempt(pending)

    async def _attempt(self, pairs: Sequence[ImagePair]) -> list[ImagePair]:
        """Sync each pair once, together; the pairs that failed in a way worth another round."""
        results = await asyncio.gather(*(self._sync_one(pair) for pair in pairs))
        return [pair for pair, retry in zip(pairs, results, strict=True) if retry]

    async def _tidy_up(self) -> SyncStats:
        if self._cancels:  # before the connections close; at most a few seconds, they only tidy up
            await asyncio.wait(list(self._cancels), timeout=CANCEL_UPLOADS_WAIT_SECONDS)
        return self.stats

    async def list_targets(self, pairs: Sequence[ImagePair]) -> list[ImagePair]:
        """List the target repositories target_lists_wanted names; the pairs left to check, which with
        --skip-existing are those whose tag was not listed (the others are recorded as skipped)."""
        if self.options.force:
            return list(pairs)
        with contextlib.suppress(TimeoutError):  # past the deadline every pair left fails as such, in the caller
            async with asyncio.timeout_at(self.deadline_at):
                await self._list_targets(target_lists_wanted(pairs, self.options.skip_existing))
        return self._drop_existing(pairs) if self.options.skip_existing else list(pairs)

    async def _list_targets(self, repos: Sequence[Repository]) -> None:
        """One tags/list per repository, at once, into _target_tags. A repository that does not exist yet lists
        nothing; one whose listing fails is left out (its images get the per-tag HEAD). A warning only when
        --skip-existing asked for the listing: else it is an optimisation (a registry may grant push but not list)."""
        level = logging.WARNING if self.options.skip_existing else logging.INFO

        async def listed(repo: Repository) -> frozenset[str] | None:
            try:
                return frozenset(await self.registries.client_for(repo).list_tags(repo.path))
            except ImageSyncError as exc:
                if isinstance(exc, RegistryError) and exc.status == 404:  # NAME_UNKNOWN: not there yet
                    return frozenset()
                log.log(level, "%s; checking each tag of %s instead", exc, repo)
                return None

        for repo, tags in zip(repos, await asyncio.gather(*(listed(repo) for repo in repos)), strict=True):
            if tags is not None:
                self._target_tags[repo] = tags

    def _drop_existing(self, pairs: Sequence[ImagePair]) -> list[ImagePair]:
        """--skip-existing: pairs whose target tag the target repository listed are recorded as skipped without
        a request of their own. A pair pushed by digest alone still gets its HEAD; a target repository whose
        listing failed falls back to the per-tag check."""
        pending = []
        for pair in pairs:
            present = self._target_tags.get(pair.target.repo) if pair.target.tag is not None else None
            if present is not None and pair.target.tag in present:
                self.stats.record(ImageOutcome(str(pair.source), str(pair.target), "skipped"))
            else:
                pending.append(pair)
        if len(pending) < len(pairs):
            log.info("--skip-existing: %d image(s) whose tag the target has: skipped, digests not compared",
                     len(pairs) - len(pending))
        return pending

    def _deadline_reason(self, doing: str = "") -> str:
        limit = self.options.deadline
        return f"deadline exceeded{' ' + doing if doing else ''} (--deadline {limit:g} s)"

    async def _sync_one(self, pair: ImagePair) -> bool:
        """Sync one image and record its outcome; True when it failed in a way worth retrying."""
        try:
            async with asyncio.timeout_at(self.deadline_at):
                return await self._sync_one_in_time(pair)
        except TimeoutError:
            reason = self._deadline_reason()
            self.stats.record(ImageOutcome(str(pair.source), str(pair.target), "failed", reason))
            log.warning("failed %s -> %s: %s", pair.source, pair.target, reason)
            return False

    async def prune(self, pairs: Sequence[ImagePair], *, confirmed: bool | None = None) -> None:
        """After the copy: prune the rules' targets (engine/pruner.py) into the stats, within the deadline.
        ``confirmed``: False for a dry run's report whatever the options say (None: as --prune-confirm says)."""
        delete = self.options.prune == "delete" if confirmed is None else confirmed
        pruner = Pruner(self.registries.client_for, confirmed=delete)
        try:
            async with asyncio.timeout_at(self.deadline_at):
                self.stats.prune = await pruner.prune(self.planned, pairs, self.unplanned, self.malformed_rules)
        except TimeoutError:
            self.stats.prune = pruner.report_so_far(self._deadline_reason("while pruning"))

    async def cancel_transfers(self) -> None:
        """Blob transfers still running (past the deadline nothing waits for them): cancelled and awaited."""
        leftovers = [task for task in self._blob_tasks.values() if not task.done()]
        for task in leftovers:
            task.cancel()
        await asyncio.gather(*leftovers, return_exceptions=True)
        if self.referrers is not None:
            self.referrers.cancel_prefetches()

    async def _sync_one_in_time(self, pair: ImagePair) -> bool:
        async with self._images:
            try:
                outcome = await self.sync_image(pair)
                if self.referrers is not None:  # the artifacts that refer to the image (engine/referrers.py)
                    outcome = await self.referrers.after_image(pair, outcome)
            except ImageSyncError as exc:
                reason = clip(str(exc), REASON_MAX_CHARS)
                self.stats.record(ImageOutcome(str(pair.source), str(pair.target), "failed", reason))
                log.warning("failed %s -> %s: %s", pair.source, pair.target, reason)
                return isinstance(exc, RegistryError) and exc.retryable
            self.stats.record(outcome)
            log.info("%s %s -> %s", outcome.outcome, pair.source, pair.target)
            return False

    async def sync_image(self, pair: ImagePair) -> ImageOutcome:
        decision = await self.decide(pair)
        if isinstance(decision, ImageOutcome):
            return decision
        source, target, manifest = pair.source, pair.target, decision.manifest
        src, dst = self.registries.client_for(source.repo), self.registries.client_for(target.repo)
        if self.referrers is not None:
            self.referrers.prefetch(src, source.repo, manifest)
        await self._copy_references(src, source.repo, dst, target.repo, manifest, decision.new_at_target)
        await dst.put_manifest(target.repo.path, _reference(target), manifest)
        self.stats.manifests_pushed += 1
        return ImageOutcome(str(source), str(target), "synced", digest=manifest.digest, note=decision.note)

    async def decide(self, pair: ImagePair) -> ImageOutcome | ToCopy:
        """Whether the image needs copying (reads only): the outcome when it does not (up to date, refused by
        --only-signed), else the manifest to push. The copy and the dry-run plan (engine/plan.py) share it."""
        source, target = pair.source, pair.target
        src = self.registries.client_for(source.repo)
        dst = self.registries.client_for(target.repo)
        src_ref = _reference(source)
        filtering = self.options.platforms.active

        existing, head = await self._manifest_heads(pair, src, dst)
        if existing is not None and head is not None and not (filtering and head.media_type in INDEX_TYPES):
            if source.digest and head.digest != source.digest:
                raise RegistryError(f"{source}: the source answered with digest {head.digest}", retryable=False)
            if existing.digest == head.digest:
                return ImageOutcome(str(source), str(target), "skipped", digest=head.digest)

        manifest = await self._read_manifest(src, source.repo, src_ref, str(source))
        if source.digest and manifest.digest != source.digest:
            raise RegistryError(f"{source}: the source served digest {manifest.digest}", retryable=False)
        if existing is not None and existing.digest == manifest.digest and not filtering:
            # The source's HEAD gave no digest (some registries omit it): the GET settled it.
            return ImageOutcome(str(source), str(target), "skipped", digest=manifest.digest)
        if target.digest and manifest.digest != target.digest and not filtering:
            raise ImageSyncError(f"{target}: target digest differs from the source digest {manifest.digest}")
        if self.signatures is not None:  # --only-signed: before any of the image is copied (engine/signatures.py)
            refusal = await self.signatures.refusal(src, source.repo, manifest.digest, source.tag)
            if refusal is not None:
                return ImageOutcome(str(source), str(target), "skipped", refusal, manifest.digest)

        note = ""
        if filtering and manifest.is_index:
            filtered = filter_index(manifest, self.options.platforms)
            if filtered.digest != manifest.digest:
                kept = ", ".join(c.platform_name for c in filtered.children())
                note = (f"index filtered to {kept}: digest changed from {manifest.digest} "
                        f"to {filtered.digest}")
                if target.digest:
                    raise ImageSyncError(f"{target}: a platform filter rewrites the index, so it cannot be "
                                         f"pushed by digest")
                if existing is not None and existing.digest == filtered.digest:
                    return ImageOutcome(str(source), str(target), "skipped", digest=filtered.digest, note=note)
            manifest = filtered
        return ToCopy(manifest, note, new_at_target=existing is None)

    async def _manifest_heads(self, pair: ImagePair, src: RegistryClient,
                              dst: RegistryClient) -> tuple[ManifestHead | None, ManifestHead | None]:
        """The target's manifest HEAD (None: the target lacks it) and, when the target has it, the source's.

        The target first: when it lacks the image (the common case of a cold run) the source's digest is not
        needed before the GET, which saves a request per new image. When the run listed the target repository's
        tags, a tag not listed gets no HEAD at all, and for a listed one both HEADs go out together."""
        source, target = pair.source, pair.target
        if self.options.force:
            return None, None
        listed = self._target_tags.get(target.repo) if target.tag is not None and not target.digest else None
        if listed is not None and target.tag not in listed:
            return None, None
        if listed is not None:
            existing, head = await asyncio.gather(dst.head_manifest(target.repo.path, _reference(target)),
                                                  src.head_manifest(source.repo.path, _reference(source)))
            return existing, head if existing is not None else None
        existing = await dst.head_manifest(target.repo.path, _reference(target))
        if existing is None:
            return None, None
        return existing, await src.head_manifest(source.repo.path, _reference(source))

    async def _read_manifest(self, src: RegistryClient, repo: Repository, ref: str, name: str) -> Manifest:
        try:
            manifest = await src.get_manifest(repo.path, ref)
        except RegistryError as exc:
            if exc.status == 404:
                raise RegistryError(f"{name}: manifest unknown at the source ({exc})", status=404,
                                    code="MANIFEST_UNKNOWN", retryable=False) from exc
            raise
        try:
            check_supported(manifest.media_type)
        except ManifestError as exc:
            # The media type in the message is the registry's text.
            raise ManifestError(f"{name}: {clip(str(exc))}") from exc
        return manifest

    async def _copy_references(self, src: RegistryClient, src_repo: Repository, dst: RegistryClient,
                               dst_repo: Repository, manifest: Manifest, new_at_target: bool = False) -> None:
        """Make everything the manifest references present at the target (children before an index).
        ``new_at_target``: the target had nothing under the index's tag, so most likely none of its children."""
        if manifest.is_index:
            await _gather_all(self._copy_child(src, src_repo, dst, dst_repo, child, new_at_target)
                              for child in manifest.children())
        else:
            await _gather_all(self._ensure_blob(src, src_repo, dst, dst_repo, blob)
                              for blob in manifest.blobs())

    async def _copy_child(self, src: RegistryClient, src_repo: Repository, dst: RegistryClient,
                          dst_repo: Repository, child: Descriptor, new_index: bool) -> None:
        name = f"{src_repo}@{child.digest} ({child.platform_name})"
        if self.options.force:
            manifest = await self._read_manifest(src, src_repo, child.digest, name)
        elif new_index:
            # The target lacks the index: the child's GET goes out with its HEAD instead of after it (a round trip
            # less per index through a distant link; a child the target has after all costs one needless GET).
            existing, read = await asyncio.gather(dst.head_manifest(dst_repo.path, child.digest),
                                                  self._read_manifest(src, src_repo, child.digest, name),
                                                  return_exceptions=True)
            if isinstance(existing, BaseException):
                raise existing
            if existing is not None and existing.digest == child.digest:
                return
            if isinstance(read, BaseException):
                raise read
            manifest = read
        else:
            existing = await dst.head_manifest(dst_repo.path, child.digest)
            if existing is not None and existing.digest == child.digest:
                return
            manifest = await self._read_manifest(src, src_repo, child.digest, name)
        await self._copy_references(src, src_repo, dst, dst_repo, manifest)
        await dst.put_manifest(dst_repo.path, child.digest, manifest)
        self.stats.manifests_pushed += 1

    # -- blobs ---------------------------------------------------------------------------------

    async def _ensure_blob(self, src: RegistryClient, src_repo: Repository, dst: RegistryClient,
                           dst_repo: Repository, blob: Descriptor) -> None:
        """Shared per (target repository, digest): concurrent images needing one blob transfer it once."""
        key = (dst.host, dst_repo.path, blob.digest)
        task = self._blob_tasks.get(key)
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
            task = asyncio.create_task(self._transfer_blob(src, src_repo, dst, dst_repo, blob))
            self._blob_tasks[key] = task
            first = self._first_copy.get((dst.host, blob.digest))
            if first is None or (first[1].done() and first[1].exception() is not None):
                self._first_copy[(dst.host, blob.digest)] = (dst_repo.path, task)
        await asyncio.shield(task)

    def _cancel_upload_later(self, dst: RegistryClient, dst_repo: Repository, location: str) -> None:
        async def cancel() -> None:
            try:
                await dst.cancel_upload(dst_repo.path, location)
            except ImageSyncError as exc:  # the registry expires it anyway
                log.debug("cancelling an unneeded upload to %s/%s: %s", dst.host, dst_repo.path, exc)

        task = asyncio.create_task(cancel())
        self._cancels.add(task)
        task.add_done_callback(self._cancels.discard)

    async def _mount_source(self, src: RegistryClient, src_repo: Repository, dst: RegistryClient,
                            dst_repo: Repository, digest: str) -> str | None:
        """A repository on the target registry that has (or is about to have) the blob."""
        if src.host == dst.host and src_repo.path != dst_repo.path:
            return src_repo.path
        first = self._first_copy.get((dst.host, digest))
        if first is None or first[0] == dst_repo.path:
            return None
        with contextlib.suppress(Exception):
            await asyncio.shield(first[1])
        return first[0] if first[1].done() and first[1].exception() is None else None

    async def _transfer_blob(self, src: RegistryClient, src_repo: Repository, dst: RegistryClient,
                             dst_repo: Repository, blob: Descriptor) -> None:
        policy = self.options.retry_policy
        for attempt in range(policy.attempts):
            try:
                await self._transfer_blob_once(src, src_repo, dst, dst_repo, blob)
                return
            except RegistryError as exc:
                if not exc.retryable or attempt + 1 >= policy.attempts:
                    raise
                log.info("retrying blob %s -> %s/%s: %s", blob.digest, dst.host, dst_repo.path, exc)
                await asyncio.sleep(policy.backoff(attempt))

    async def _transfer_blob_once(self, src: RegistryClient, src_repo: Repository, dst: RegistryClient,
                                  dst_repo: Repository, blob: Descriptor) -> None:
        mount_from = await self._mount_source(src, src_repo, dst, dst_repo, blob.digest)
        async with self._pool if blob.size > SMALL_BLOB_BYTES else self._small_pool:
            if mount_from is None and blob.size <= SPECULATIVE_READ_BYTES:
                await self._copy_small_blob(src, src_repo, dst, dst_repo, blob)
                return
            # The HEAD that skips a blob the target has, and the POST that mounts it or opens its upload, in
            # parallel: one round trip instead of two for every blob of a cold run. A session opened for a
            # blob that turns out present is cancelled off the image's critical path.
            exists, location = await asyncio.gather(
                dst.blob_exists(dst_repo.path, blob.digest),
                dst.start_upload(dst_repo.path) if mount_from is None
                else dst.mount_blob(dst_repo.path, blob.digest, mount_from))
            if location is None:  # mounted (the HEAD may have raced the mount and seen its result)
                self.stats.blobs_mounted += 1
                return
            if exists:
                self.stats.blobs_skipped += 1
                self._cancel_upload_later(dst, dst_repo, location)
                return
            with self._copying(dst, dst_repo, blob) as progress:
                # Verified on the fly; broken reads and uploads resumed where the registries allow (engine/blobs.py).
                await copy_blob(src, src_repo.path, dst, dst_repo.path, blob, location,
                                policy=self.options.retry_policy, progress=progress)
            self.stats.blobs_copied += 1

    async def _copy_small_blob(self, src: RegistryClient, src_repo: Repository, dst: RegistryClient,
                               dst_repo: Repository, blob: Descriptor) -> None:
        """A blob of at most SPECULATIVE_READ_BYTES: the HEAD, the POST and the source's GET (read whole and
        verified) go out together, then one PUT commits it. Two round trips instead of three."""
        with self._copying(dst, dst_repo, blob) as progress:
            exists, location, pieces = await asyncio.gather(
                dst.blob_exists(dst_repo.path, blob.digest), dst.start_upload(dst_repo.path),
                read_blob(src, src_repo.path, blob, policy=self.options.retry_policy), return_exceptions=True)
            if isinstance(location, str) and (exists is not False or isinstance(pieces, BaseException)):
                self._cancel_upload_later(dst, dst_repo, location)
            if exists is True:  # whatever became of the read
                self.stats.blobs_skipped += 1
                return
            for result in (exists, location, pieces):
                if isinstance(result, BaseException):
                    raise result
            assert isinstance(location, str) and isinstance(pieces, list)
            await put_blob(dst, dst_repo.path, blob, location, pieces)
            progress(blob.size)
        self.stats.blobs_copied += 1

    @contextlib.contextmanager
    def _copying(self, dst: RegistryClient, dst_repo: Repository, blob: Descriptor) -> Iterator[Progress]:
        """One blob's copy: its bytes counted as they go (and taken back if the copy fails), shown among the
        transfers in flight, and a broken connection turned into a retryable failure."""
        counted = 0
        transfer = self.stats.transfer_started(f"{dst.host}/{dst_repo.path}", blob.digest, blob.size)

        def progress(new_bytes: int) -> None:
            nonlocal counted
            counted += new_bytes
            transfer.copied = counted
            self.stats.bytes_copied += new_bytes

        try:
            yield progress
        except httpx.HTTPError as exc:
            self.stats.bytes_copied -= counted
            raise RegistryError(f"copying blob {blob.digest} to {dst.host}/{dst_repo.path}: "
                                f"{type(exc).__name__}: {exc}", retryable=True) from exc
        except BaseException:
            self.stats.bytes_copied -= counted
            raise
        finally:
            self.stats.transfer_ended(transfer)


async def _gather_all(awaitables: Iterable[Awaitable[None]]) -> None:
    """Run all; when several fail, raise the first failure after every one has finished.

    Letting the others finish keeps shared blob transfers (awaited by other images too) intact.
    """
    results = await asyncio.gather(*awaitables, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


async def sync(rules: Sequence[Rule], rule_errors: Sequence[RuleError], auth: AuthTable,
               options: SyncOptions, stats: SyncStats | None = None, *,
               shard_index: int = 0, shard_count: int = 1,
               transport_factory: TransportFactory | None = None) -> SyncStats:
    """Plan and run a whole sync (this shard's share: :meth:`Syncer.plan_shard`); the one entry point the CLI
    and the worker call."""
    registries = Registries(auth, options, transport_factory)
    syncer = Syncer(registries, options, stats)
    # A shard copies only some rules' images: it sets up the target registries, not repositories' tokens.
    warm_up = targets_to_warm_up(rules, options.proc if shard_count == 1 else 0)
    warming = asyncio.create_task(registries.warm_up(warm_up))
    try:
        if shard_count <= 1:
            planned_pairs = await syncer.plan_and_run(rules, rule_errors)
            stats = syncer.stats
        else:  # every shard plans every rule, then copies its share of the pairs
            planned_pairs, pairs, failures = await syncer.plan_shard(rules, rule_errors, shard_index, shard_count)
            stats = await syncer.run(pairs, failures)
        if options.prune is not None and shard_index == 0:  # one worker prunes, knowing every shard's pairs
            await syncer.prune(planned_pairs)
        return stats
    finally:
        syncer.stats.finished = time.monotonic()
        syncer.stats.logins_accepted, syncer.stats.logins_rejected = registries.login_results()
        syncer.stats.quotas = registries.quotas()
        warming.cancel()  # done by now, unless the run failed early
        await asyncio.gather(warming, return_exceptions=True)
        await syncer.cancel_transfers()
        await registries.aclose()
