"""Pruning: which target tags a rule deletes, and how. Pure functions, no I/O (the registry side is
:mod:`imagesync.engine.pruner`).

A rule prunes only its own target repository, and there only the tags its selector covers that its source no
longer has:

- Only rules that *select* tags prune: every tag (``repo``), a ``/regex/``, and the extended form's filters.
  A tag list (``repo:a,b``) or a digest names its images one by one: there is nothing it selects that the
  source could stop having, so it never prunes (:func:`prune_scope` says why).
- The selector is the rule's ``/regex/`` and its ``semver``, ``prereleases`` and ``exclude`` filters, applied
  to the target's tags. ``latest: N`` limits what is *copied*, not what is pruned: a tag that merely falls out
  of the newest N is kept while the source still has it; a tag the source deleted is pruned when it is a
  version the rest of the filter selects (``latest`` selects versions only, so a ``latest``-only rule never
  prunes ``stable`` or ``sha-abc``).
- A tag another rule copies to the same repository (any rule of the run) is never pruned.
- A registry/namespace rule prunes each repository its catalog lists, as the all-tags rule it expands to; a
  repository the source no longer lists is not touched (repositories are never deleted).

How a tag is deleted: by tag (``DELETE /v2/<name>/manifests/<tag>``, an untag) where the registry supports it;
otherwise by digest, which deletes the manifest and every tag pointing at it, so only when no kept tag of the
repository has that digest or holds it in its index (:func:`plan_by_digest`).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Literal

from imagesync.engine.referrers import REFERRER_TAG
from imagesync.engine.rules import MAX_TAG_LENGTH, Rule
from imagesync.engine.tagfilter import TagFilter, select_tags

# "tag": untag (DELETE by tag); "digest": delete the manifest by digest (its other tags go with it, so only
# when none is kept); "keep": not deleted, the reason says why.
Method = Literal["tag", "digest", "keep"]
# --prune alone reports ("dry-run"); --prune --prune-confirm deletes ("delete").
PruneMode = Literal["dry-run", "delete"]
# A worker's report (and status.prune) lists this many tags, each text clipped: the result file lists all.
STATUS_ENTRIES = 10
STATUS_TEXT = 300


@dataclass(frozen=True)
class PruneScope:
    """The tags a rule's selector covers: its regex and filters, without ``latest``'s count."""

    regex: str | None
    tag_filter: TagFilter | None

    def covers(self, tag: str) -> bool:
        if len(tag) > MAX_TAG_LENGTH:
            return False
        if self.regex is not None and not re.search(self.regex, tag):
            return False
        return self.tag_filter is None or bool(select_tags(self.tag_filter, [tag]))


@dataclass(frozen=True)
class PruneAction:
    tag: str
    digest: str | None
    method: Method
    reason: str = ""  # for "keep": why the tag stays


def prune_scope(rule: Rule) -> PruneScope | str:
    """The rule's prune scope, or the reason it prunes nothing."""
    source = rule.source
    if source.prefix:
        return "a registry or namespace rule prunes the repositories its catalog expands to, one by one"
    if source.digest is not None:
        return "a digest rule names one manifest: it selects nothing that could disappear, so it never prunes"
    if source.tags:
        return "a tag-list rule names its tags one by one: it never prunes (a listed tag the source lacks fails)"
    tag_filter = source.tag_filter
    if tag_filter is not None and tag_filter.latest is not None:
        # Without the count, but still versions only: semver "*" admits what latest alone would consider.
        tag_filter = replace(tag_filter, latest=None, semver=tag_filter.semver or "*")
    return PruneScope(source.regex, tag_filter)


def prune_candidates(scope: PruneScope, source_tags: Collection[str], target_tags: Iterable[str],
                     copied_here: Collection[str]) -> list[str]:
    """The target tags to prune, sorted: covered by the scope, absent at the source, and copied to this
    repository by no rule of the run (``copied_here``: every target tag any rule's pairs name here)."""
    return sorted({tag for tag in target_tags
                   if tag not in source_tags and tag not in copied_here and scope.covers(tag)})


def keep_referrer_tags(candidates: Mapping[str, str | None], kept: Mapping[str, str | None],
                      kept_children: Mapping[str, str]) -> tuple[dict[str, str | None], list[PruneAction]]:
    """Referrer tags (cosign's ``sha256-<hex>.sig``/``.att``/``.sbom``, the referrers fallback index
    ``sha256-<hex>``) whose subject is still a kept tag's manifest (or in a kept index) stay: the copy makes the
    fallback index at a target without the referrers API, so its source need not list it. The candidates left,
    and the kept ones."""
    subjects = {digest: tag for tag, digest in sorted(kept.items(), reverse=True) if digest is not None}
    left: dict[str, str | None] = {}
    keeps = []
    for tag, digest in sorted(candidates.items()):
        match = REFERRER_TAG.fullmatch(tag)
        subject = f"sha256:{match[1]}" if match else None
        holder = subject and (subjects.get(subject) or kept_children.get(subject))
        if holder:
            keeps.append(PruneAction(tag, digest, "keep", f"refers to kept tag {holder}"))
        else:
            left[tag] = digest
    return left, keeps


def plan_by_untag(candidates: Mapping[str, str | None]) -> list[PruneAction]:
    """Where the registry deletes a tag alone: every candidate is untagged, shared digests or not."""
    return [PruneAction(tag, digest, "tag") for tag, digest in sorted(candidates.items())]


def plan_by_digest(candidates: Mapping[str, str | None], kept: Mapping[str, str | None],
                   kept_children: Mapping[str, str]) -> list[PruneAction]:
    """Where the registry cannot untag: a candidate's manifest is deleted by digest unless a kept tag points
    at it (``kept``: tag -> digest) or a kept index holds it (``kept_children``: child digest -> that index's
    tag); a kept tag whose digest is unknown (None) blocks nothing it could not be shown to share.

    Candidates that share a digest with each other are deleted together (one DELETE removes them all)."""
    holders: dict[str, str] = {}
    for tag, digest in sorted(kept.items(), reverse=True):  # the first tag by name names the reason
        if digest is not None:
            holders[digest] = tag
    actions = []
    for tag, digest in sorted(candidates.items()):
        if digest is None:
            actions.append(PruneAction(tag, None, "keep", "the registry gives no digest for it"))
        elif digest in holders:
            actions.append(PruneAction(tag, digest, "keep", f"digest shared with kept tag {holders[digest]}"))
        elif digest in kept_children:
            actions.append(PruneAction(tag, digest, "keep",
                                       f"its manifest is part of kept tag {kept_children[digest]}'s index"))
        else:
            actions.append(PruneAction(tag, digest, "digest"))
    return actions


@dataclass
class RepositoryPrune:
    """What pruning did (or, unconfirmed, would do) in one target repository."""

    repository: str  # host/path
    rules: list[str]
    deleted: list[PruneAction]  # confirmed: deleted; unconfirmed: would be deleted
    kept: list[PruneAction]  # gone at the source and in scope, but kept (the reason says why)
    error: str = ""

    def as_dict(self, confirmed: bool) -> dict[str, object]:
        data: dict[str, object] = {
            "repository": self.repository,
            "rules": list(self.rules),
            "deleted" if confirmed else "wouldDelete": [_action_dict(a) for a in self.deleted],
            "kept": [_action_dict(a) for a in self.kept],
        }
        if self.error:
            data["error"] = self.error
        return data


@dataclass
class PruneReport:
    confirmed: bool  # False: a dry run, nothing was deleted
    repositories: list[RepositoryPrune]
    refused: str = ""  # why nothing was pruned at all

    def count(self, what: Literal["deleted", "kept", "errors"]) -> int:
        if what == "errors":
            return sum(1 for r in self.repositories if r.error) + bool(self.refused)
        return sum(len(getattr(r, what)) for r in self.repositories)

    def as_dict(self) -> dict[str, object]:
        data: dict[str, object] = {"confirmed": self.confirmed,
                                   "deleted" if self.confirmed else "wouldDelete": self.count("deleted"),
                                   "kept": self.count("kept"), "errors": self.count("errors"),
                                   "repositories": [r.as_dict(self.confirmed) for r in self.repositories]}
        if self.refused:
            data["error"] = self.refused
        return data

    def status(self, limit: int = STATUS_ENTRIES) -> dict[str, object]:
        """The shape a worker reports and status.prune shows: counts, and the first ``limit`` entries flat
        (``{repository, tag, action: deleted | wouldDelete | kept | error, reason}``), text clipped."""
        done = self.count("deleted")
        entries: list[dict[str, str]] = []
        if self.refused:
            entries.append({"repository": "", "tag": "", "action": "error", "reason": self.refused})
        for repo in self.repositories:
            if repo.error:
                entries.append({"repository": repo.repository, "tag": "", "action": "error", "reason": repo.error})
            for action in repo.deleted:
                entries.append({"repository": repo.repository, "tag": action.tag,
                                "action": "deleted" if self.confirmed else "wouldDelete"})
            for action in repo.kept:
                entries.append({"repository": repo.repository, "tag": action.tag, "action": "kept",
                                "reason": action.reason})
        return {"dryRun": not self.confirmed, "deleted": done if self.confirmed else 0,
                "wouldDelete": 0 if self.confirmed else done, "kept": self.count("kept"),
                "errors": self.count("errors"),
                "entries": [{key: value[:STATUS_TEXT] for key, value in entry.items()} for entry in entries[:limit]]}

    def lines(self) -> list[str]:
        """The summary's prune section: one line per repository."""
        head = "Prune" if self.confirmed else "Prune (dry run: nothing deleted; --prune-confirm deletes)"
        lines = [f"{head}: {self.count('deleted')} {'deleted' if self.confirmed else 'would be deleted'}, "
                 f"{self.count('kept')} kept (shared), {self.count('errors')} repository error(s)"]
        if self.refused:
            lines.append(f"  {self.refused}")
        for repo in self.repositories:
            parts = []
            if repo.deleted:
                verb = "deleted" if self.confirmed else "would delete"
                parts.append(f"{verb} {', '.join(a.tag for a in repo.deleted)}")
            parts.extend(f"kept {a.tag} ({a.reason})" for a in repo.kept)
            if repo.error:
                parts.append(f"error: {repo.error}")
            lines.append(f"  {repo.repository}: {'; '.join(parts)}")
        return lines


def _action_dict(action: PruneAction) -> dict[str, str]:
    data = {"tag": action.tag}
    if action.digest:
        data["digest"] = action.digest
    if action.method != "keep":
        data["method"] = action.method
    if action.reason:
        data["reason"] = action.reason
    return data
