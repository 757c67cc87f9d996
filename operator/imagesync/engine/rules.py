"""image-syncer's rule language -> rules -> image pairs. Pure functions, no I/O.

A rules mapping has a source per key and a target string, a list of target strings, or nothing (the
default registry/namespace) per value:

- ``registry/namespace/repo``            every tag of the repository
- ``repo:t1,t2``                         these tags
- ``repo:/regex/``                       tags the regex finds (a search, as Go's MatchString: anchor it
                                          with ``^...$`` for a full match)
- ``repo@sha256:...``                    one manifest by digest
- target ``repo``                        same tags (or digest) as the source
- target ``repo:x,y``                    source tags renamed left to right (``src:a,b -> dst:x,y``)
- target ``repo@sha256:...``             must equal the source digest
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from imagesync.engine.errors import RuleError
from imagesync.engine.reference import (
    ImageRef,
    ReferenceError,
    Repository,
    check_digest,
    check_tag,
    parse_repository,
    split_reference,
)


@dataclass(frozen=True)
class SourceSpec:
    repo: Repository
    tags: tuple[str, ...] = ()
    regex: str | None = None
    digest: str | None = None

    @property
    def all_tags(self) -> bool:
        return not self.tags and self.regex is None and self.digest is None


@dataclass(frozen=True)
class TargetSpec:
    repo: Repository
    tags: tuple[str, ...] = ()
    digest: str | None = None


@dataclass(frozen=True)
class Rule:
    text: str  # "source -> target" as the user wrote it, for messages
    source: SourceSpec
    target: TargetSpec


@dataclass(frozen=True)
class ImagePair:
    source: ImageRef
    target: ImageRef
    rule: str


def _parse_source(text: str) -> SourceSpec:
    if ":/" in text and text.endswith("/"):
        # A tag regex may itself hold ':' and '/': the repository name ends at the first ':/'.
        name, _, pattern = text.partition(":/")
        regex = pattern[:-1]
        if not regex:
            raise ReferenceError("empty tag regex: write repo:/regex/")
        try:
            re.compile(regex)
        except re.error as exc:
            raise ReferenceError(f"invalid tag regex /{regex}/: {exc}") from exc
        return SourceSpec(parse_repository(name), regex=regex)
    name, tag_part, digest = split_reference(text)
    repo = parse_repository(name)
    if digest is not None and tag_part:
        raise ReferenceError("give tags or a digest, not both")
    if digest is not None:
        return SourceSpec(repo, digest=check_digest(digest))
    if tag_part is not None:
        tags = tuple(t.strip() for t in tag_part.split(","))
        if not all(tags):
            raise ReferenceError("empty tag in the tag list")
        return SourceSpec(repo, tags=tuple(dict.fromkeys(check_tag(t) for t in tags)))
    return SourceSpec(repo)


def _parse_target(text: str, source: SourceSpec) -> TargetSpec:
    name, tag_part, digest = split_reference(text)
    repo = parse_repository(name)
    if digest is not None:
        if tag_part:
            raise ReferenceError("the target gives tags and a digest: give one")
        check_digest(digest)
        if source.digest is None:
            raise ReferenceError("a target digest needs a source digest")
        if digest != source.digest:
            raise ReferenceError(f"the target digest {digest} differs from the source digest {source.digest}")
        return TargetSpec(repo, digest=digest)
    if tag_part is None:
        return TargetSpec(repo)
    tags = tuple(check_tag(t.strip()) for t in tag_part.split(","))
    if source.all_tags or source.regex is not None:
        raise ReferenceError("the target may name tags only when the source lists its tags")
    wanted = 1 if source.digest else len(source.tags)
    if len(tags) != wanted:
        raise ReferenceError(f"the target names {len(tags)} tag(s) for {wanted} source tag(s); "
                             f"they are matched left to right, so the counts must be equal")
    return TargetSpec(repo, tags=tags)


def _default_target(source: SourceSpec, default_registry: str | None, default_namespace: str | None) -> str:
    if not default_registry or not default_namespace:
        raise ReferenceError("the target is empty and no default registry and namespace are set "
                             "(--registry/--namespace or DEFAULT_REGISTRY/DEFAULT_NAMESPACE)")
    return f"{default_registry}/{default_namespace}/{source.repo.path.rsplit('/', 1)[-1]}"


def parse_rules(images: Mapping[str, object], default_registry: str | None = None,
                default_namespace: str | None = None) -> tuple[list[Rule], list[RuleError]]:
    """Every well-formed rule, plus a RuleError for each malformed one (the others still run)."""
    rules: list[Rule] = []
    errors: list[RuleError] = []
    if not isinstance(images, Mapping):
        return [], [RuleError(type(images).__name__, "the rules must be a mapping of source -> target")]
    for key, value in images.items():
        source_text = str(key).strip()
        targets: list[object]
        if value is None or value == "":
            targets = [None]
        elif isinstance(value, str):
            targets = [value]
        elif isinstance(value, list) and value:
            targets = list(value)
        else:
            errors.append(RuleError(source_text, "the target must be a string, a list of strings, or empty"))
            continue
        try:
            source = _parse_source(source_text)
        except ReferenceError as exc:
            errors.append(RuleError(f"{source_text} -> {_describe_targets(targets)}", f"source: {exc}"))
            continue
        for target in targets:
            text = f"{source_text} -> {_shown(target) if target else '(default target)'}"
            if target is not None and not isinstance(target, str):
                errors.append(RuleError(text, "each target must be a string"))
                continue
            try:
                target_text = target.strip() if target and target.strip() else _default_target(
                    source, default_registry, default_namespace)
                rules.append(Rule(text, source, _parse_target(target_text, source)))
            except ReferenceError as exc:
                errors.append(RuleError(text, f"target: {exc}"))
    return rules, errors


_SHOWN_CHARS = 120


def _shown(value: object) -> str:
    """A target as a message quotes it: a misplaced list or mapping could print for pages."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "..."


def _describe_targets(targets: Sequence[object]) -> str:
    return ", ".join(_shown(t) if t else "(default target)" for t in targets)


def source_needs_tag_list(rule: Rule) -> bool:
    return rule.source.all_tags or rule.source.regex is not None


def expand_rule(rule: Rule, source_tags: Sequence[str] | None = None) -> list[ImagePair]:
    """The image pairs a rule stands for, given the source's tags when the rule needs them."""
    source, target = rule.source, rule.target
    if source.digest is not None:
        target_tag = target.tags[0] if target.tags else None
        return [ImagePair(ImageRef(source.repo, digest=source.digest),
                          ImageRef(target.repo, tag=target_tag, digest=None if target_tag else source.digest),
                          rule.text)]
    if source.tags:
        names = target.tags or source.tags
        return [ImagePair(ImageRef(source.repo, tag=tag), ImageRef(target.repo, tag=name), rule.text)
                for tag, name in zip(source.tags, names, strict=True)]
    if source_tags is None:
        raise RuleError(rule.text, "the source's tag list is needed to expand this rule")
    tags = sorted(set(source_tags))
    if source.regex is not None:
        pattern = re.compile(source.regex)
        tags = [t for t in tags if pattern.search(t)]
    return [ImagePair(ImageRef(source.repo, tag=tag), ImageRef(target.repo, tag=tag), rule.text) for tag in tags]


def shard_of(pair: ImagePair, count: int) -> int:
    """Stable across processes and runs (not Python's salted hash()): every worker agrees."""
    digest = hashlib.sha256(str(pair.target).encode()).digest()
    return int.from_bytes(digest[:8], "big") % count


def shard(pairs: Sequence[ImagePair], index: int, count: int) -> list[ImagePair]:
    """The pairs worker ``index`` of ``count`` copies: disjoint across workers, together all of them."""
    if count <= 1:
        return list(pairs)
    return [pair for pair in pairs if shard_of(pair, count) == index]
