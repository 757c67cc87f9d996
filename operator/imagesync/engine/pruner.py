"""Pruning, the registry side: list each target repository's tags, read their digests, delete what
:mod:`imagesync.engine.prune` decides. Every request goes through the rule's :class:`RegistryClient`.

Per target repository, after the copy:

1. ``tags/list`` of the target; the candidates are the tags a rule's scope covers that its source (as listed
   while planning) no longer has and that no rule copies there;
2. a HEAD (GET when the registry gives no digest) of every tag of the repository: candidates and kept tags;
3. unconfirmed (the default), nothing more: the report lists what would go, by the digest rules below (what a
   registry that cannot untag does; one that can untags the shared tags too);
4. confirmed: each candidate is untagged (``DELETE .../manifests/<tag>``) while the registry accepts that, and
   checked gone by a HEAD. Where a tag shares its manifest with a kept tag (or a kept index holds it), the
   manifest is checked still there afterwards, and put back (its bytes were read before) if the registry
   deleted it with the tag. A registry
   that refuses tag deletes (distribution 2.8: 400) is remembered as such, and the rest go by digest, only
   where no kept tag points at the manifest nor holds it in its index.

An error in one repository is one line in its entry; the other repositories still prune.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from imagesync.engine.errors import ImageSyncError, RegistryError, clip
from imagesync.engine.manifest import INDEX_TYPES, Manifest
from imagesync.engine.prune import (
    PruneAction,
    PruneReport,
    PruneScope,
    RepositoryPrune,
    keep_referrer_tags,
    plan_by_digest,
    plan_by_untag,
    prune_candidates,
    prune_scope,
)
from imagesync.engine.reference import Repository
from imagesync.engine.registry import RegistryClient
from imagesync.engine.rules import ImagePair, Rule, TargetSpec

log = logging.getLogger(__name__)

# HEADs in flight per repository while reading digests, and repositories pruned at once (a namespace rule
# may expand to thousands).
DIGEST_READS = 8
REPOSITORIES_AT_ONCE = 8
REASON_MAX_CHARS = 1000


@dataclass(frozen=True)
class PlannedRule:
    """A rule as planning expanded it (a catalog repository of a registry/namespace rule is one), with the
    tags its source listed; only rules whose listing succeeded are planned, so a failed listing never prunes."""

    rule: Rule
    source_tags: Collection[str]


class Pruner:
    def __init__(self, client_for: Callable[[Repository], RegistryClient], *, confirmed: bool) -> None:
        self._client_for = client_for
        self.confirmed = confirmed
        # Per registry host: whether a tag DELETE untags (learned from the first answer; absent: not known).
        self._untags: dict[str, bool] = {}
        # Every repository with candidates, as far as it got; those still running when stopped are unfinished.
        self._entries: list[RepositoryPrune] = []
        self._unfinished: set[str] = set()

    async def prune(self, planned: Sequence[PlannedRule], pairs: Sequence[ImagePair],
                    unplanned: Sequence[TargetSpec] = (), malformed_rules: int = 0) -> PruneReport:
        """``unplanned``: targets of rules that could not be expanded; ``malformed_rules``: rules that did not
        parse. Either means some rule's tags are unknown: it might copy a candidate to the same repository."""
        if malformed_rules:
            return PruneReport(self.confirmed, [], refused=f"{malformed_rules} rule(s) could not be read, so their "
                                                           f"targets are unknown: nothing pruned")
        copied: dict[Repository, set[str]] = {}
        for pair in pairs:
            if pair.target.tag is not None:
                copied.setdefault(pair.target.repo, set()).add(pair.target.tag)
        scoped: dict[Repository, list[tuple[Rule, PruneScope, Collection[str]]]] = {}
        for entry in planned:
            scope = prune_scope(entry.rule)
            if isinstance(scope, str):
                log.debug("prune: rule %s: %s", entry.rule.text, scope)
                continue
            scoped.setdefault(entry.rule.target.repo, []).append((entry.rule, scope, entry.source_tags))
        for repo in [repo for repo in scoped if any(_targets(target, repo) for target in unplanned)]:
            rules = scoped.pop(repo)
            self._entries.append(RepositoryPrune(str(repo), sorted({rule.text for rule, _, _ in rules}), [], [],
                                                 "not pruned: a rule targeting it could not be planned (its tags "
                                                 "are unknown)"))
        slots = asyncio.Semaphore(REPOSITORIES_AT_ONCE)

        async def one(repo: Repository, rules: list[tuple[Rule, PruneScope, Collection[str]]]) -> None:
            async with slots:
                await self._prune_repository(repo, rules, copied.get(repo, set()))

        await asyncio.gather(*(one(repo, rules) for repo, rules in scoped.items()))
        return self.report_so_far("")

    def report_so_far(self, stopped: str) -> PruneReport:
        """The report of what is done; a repository still in progress gets ``stopped`` as its error."""
        for entry in self._entries:
            if entry.repository in self._unfinished and not entry.error:
                entry.error = stopped
        return PruneReport(self.confirmed, sorted(self._entries, key=lambda r: r.repository))

    async def _prune_repository(self, repo: Repository, rules: Sequence[tuple[Rule, PruneScope, Collection[str]]],
                                copied_here: Collection[str]) -> None:
        """One target repository; it enters the report when it has candidates (or an error)."""
        entry = RepositoryPrune(str(repo), sorted({rule.text for rule, _, _ in rules}), [], [])
        client = self._client_for(repo)
        self._unfinished.add(entry.repository)
        try:
            try:
                target_tags = list(await client.list_tags(repo.path))
            except RegistryError as exc:
                if exc.status == 404:  # the repository does not exist (yet): nothing to prune
                    return
                raise
            candidates = sorted({tag for _, scope, source_tags in rules
                                 for tag in prune_candidates(scope, source_tags, target_tags, copied_here)})
            if not candidates:
                return
            self._entries.append(entry)
            found = await self._digests(client, repo, target_tags)
            digests: dict[str, str | None] = {tag: digest for tag, (digest, _) in found.items()}
            indexes = {tag: digest for tag, (digest, media_type) in found.items() if media_type in INDEX_TYPES}
            wanted = {tag: digests[tag] for tag in candidates if tag in digests}
            kept = {tag: digest for tag, digest in digests.items() if tag not in wanted}
            children = await self._children(client, repo, kept, indexes)
            wanted, referrers = keep_referrer_tags(wanted, kept, children)
            entry.kept.extend(referrers)
            kept.update((action.tag, action.digest) for action in referrers)
            if not self.confirmed:
                self._record(entry, plan_by_digest(wanted, kept, children))
            else:
                await self._delete(client, repo, entry, wanted, kept, children)
        except ImageSyncError as exc:
            entry.error = clip(str(exc), REASON_MAX_CHARS)
            log.error("prune %s: %s", repo, entry.error)
            if entry not in self._entries:
                self._entries.append(entry)
        # Cancelled (the deadline) it stays unfinished: the report says where it stopped.
        self._unfinished.discard(entry.repository)

    async def _delete(self, client: RegistryClient, repo: Repository, entry: RepositoryPrune,
                      wanted: dict[str, str | None], kept: dict[str, str | None], children: dict[str, str]) -> None:
        """Confirmed: untag while the registry untags, the rest by digest where no kept tag needs it."""
        left = dict(wanted)
        for action in plan_by_untag(wanted):
            if self._untags.get(client.host) is False:
                break
            if await self._untag(client, repo, entry, action, kept, children):
                entry.deleted.append(action)
                log.info("prune: deleted tag %s:%s", repo, action.tag)
                del left[action.tag]
        if not left:
            return
        actions = plan_by_digest(left, kept, children)
        deleted_digests: set[str] = set()
        for action in actions:
            if action.method == "digest" and action.digest is not None and action.digest not in deleted_digests:
                answer = await client.delete_manifest(repo.path, action.digest)
                if answer is None:
                    raise RegistryError(f"{client.host} refuses to delete manifests (tags and digests alike; "
                                        f"distribution needs storage.delete.enabled: true)")
                deleted_digests.add(action.digest)
                log.info("prune: deleted %s@%s (tag %s)", repo, action.digest, action.tag)
        self._record(entry, actions)

    async def _untag(self, client: RegistryClient, repo: Repository, entry: RepositoryPrune, action: PruneAction,
                     kept: dict[str, str | None], children: dict[str, str]) -> bool:
        """Untag one candidate: True when the tag is gone; False when the registry does not untag (remembered
        as such). A manifest a kept tag shares or a kept index holds is checked still there afterwards."""
        holders = sorted(tag for tag, digest in kept.items() if digest is not None and digest == action.digest)
        index = children.get(action.digest) if action.digest is not None else None
        saved: Manifest | None = None
        if (holders or index) and action.digest is not None:  # read before, to put back if the registry deletes it
            saved = await client.get_manifest(repo.path, action.digest)
        answer = await client.delete_manifest(repo.path, action.tag)
        gone = answer is not None and await client.head_manifest(repo.path, action.tag) is None
        if not gone:  # refused, or "done" (or "not there") while the tag still resolves: no untag here
            self._untags[client.host] = False
            return False
        self._untags[client.host] = True
        if saved is not None and await client.head_manifest(repo.path, saved.digest) is None:
            # The registry deleted the manifest with the tag: put back by digest (a kept index's child) and under
            # the kept tags that shared it.
            for reference in (saved.digest, *holders):
                await client.put_manifest(repo.path, reference, saved)
            self._untags[client.host] = False
            needed = ", ".join([*holders, *([f"kept index {index}"] if index else [])])
            entry.error = (f"deleting tag {action.tag} deleted its manifest {saved.digest} too (the registry does "
                           f"not untag): put it back for {needed}; tag deletes are no longer used on {client.host}")
            log.error("prune %s: %s", repo, entry.error)
        return True

    def _record(self, entry: RepositoryPrune, actions: Sequence[PruneAction]) -> None:
        for action in actions:
            (entry.kept if action.method == "keep" else entry.deleted).append(action)

    async def _digests(self, client: RegistryClient, repo: Repository,
                       tags: Sequence[str]) -> dict[str, tuple[str, str]]:
        """tag -> (digest, media type) for every tag still there (a HEAD; a GET when it gives no digest)."""
        slots = asyncio.Semaphore(DIGEST_READS)

        async def read(tag: str) -> tuple[str, str, str] | None:
            async with slots:
                head = await client.head_manifest(repo.path, tag)
                if head is not None:
                    return tag, head.digest, head.media_type
                try:
                    manifest = await client.get_manifest(repo.path, tag)
                except RegistryError as exc:
                    if exc.status == 404:  # deleted meanwhile
                        return None
                    raise
                return tag, manifest.digest, manifest.media_type

        found = await asyncio.gather(*(read(tag) for tag in tags))
        return {entry[0]: (entry[1], entry[2]) for entry in found if entry is not None}

    async def _children(self, client: RegistryClient, repo: Repository, kept: dict[str, str | None],
                        indexes: dict[str, str]) -> dict[str, str]:
        """child digest -> the kept tag whose index holds it (``indexes``: tag -> digest of the tags that are
        indexes; each kept index read once)."""
        children: dict[str, str] = {}
        read: set[str] = set()
        for tag in sorted(kept):
            digest = indexes.get(tag)
            if digest is None or digest in read:
                continue
            read.add(digest)
            manifest = await client.get_manifest(repo.path, digest)
            if manifest.is_index:
                for child in manifest.children():
                    children.setdefault(child.digest, tag)
        return children


def _targets(target: TargetSpec, repo: Repository) -> bool:
    """Whether a rule's target is, or (a prefix) may expand to, this repository."""
    if not target.prefix:
        return target.repo == repo
    prefix = target.repo
    return prefix.registry == repo.registry and (not prefix.path or repo.path.startswith(prefix.path + "/"))
