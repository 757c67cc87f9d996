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

A value may also be a mapping, the extended form: ``target: repo`` or ``targets: [repo, ...]`` (the same
target strings; neither: the default target) plus tag filters (``semver``, ``prereleases``, ``exclude``,
``latest``: :mod:`imagesync.engine.tagfilter`), which narrow the tags an all-tags or ``/regex/`` source lists.

A source ending in ``/`` is a whole registry (``host/``) or a namespace (``host/team/``): its repositories
come from the registry's ``_catalog``, narrowed by the extended form's ``repositories: {include, exclude}``
globs (matched against the path below the prefix), and each goes to the target prefix (``host2/mirror/``,
also ending in ``/``) under the same relative path (:func:`expand_prefix_rule`).
"""

from __future__ import annotations

import hashlib
import re
import re._compiler
import re._parser as sre_parse  # the stdlib's own parse tree, to inspect a user's pattern before it runs
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from imagesync.engine.errors import RuleError
from imagesync.engine.reference import (
    ImageRef,
    ReferenceError,
    Repository,
    check_digest,
    check_tag,
    parse_prefix,
    parse_repository,
    split_reference,
)
from imagesync.engine.tagfilter import FILTER_KEYS, FilterError, TagFilter, parse_tag_filter, select_tags

# Tags are at most 128 characters by the distribution spec's grammar (listed tags are checked against it);
# a regex never sees a longer string. Patterns are bounded too, and the shapes that make Python's
# backtracking engine take exponential (or high polynomial) time are refused; image-syncer uses Go's RE2,
# which has neither backreferences nor lookarounds, so no pattern that worked there is lost to that rule.
# The shape check is a heuristic over the alphabet of tags (the input is what bounds the rest): a repetition
# whose body can start again where an inner unbounded repetition could go on ("(a+)+", "(.*a){20}",
# "(aa*)*"), alternatives that can start alike under a repetition ("(a|ab)*"), or three or more unbounded
# repetitions that can eat the same characters with nothing between them (".*.*.*") are refused;
# separator-led repetitions, the usual tag idiom ("v[0-9]+(\.[0-9]+)*", "[a-z]+(-[a-z0-9]+)*"), pass.
MAX_TAG_LENGTH = 128
MAX_REGEX_LENGTH = 512
_TAG_ALPHABET = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")
_NOT_RE2 = {sre_parse.GROUPREF: "backreferences", sre_parse.GROUPREF_EXISTS: "conditional groups",
            sre_parse.ASSERT: "lookarounds", sre_parse.ASSERT_NOT: "lookarounds"}
_REPEATS = (sre_parse.MAX_REPEAT, sre_parse.MIN_REPEAT, sre_parse.POSSESSIVE_REPEAT)
# A repetition of at most this many rounds multiplies the work by at most n^_FEW (n <= 128): not refused.
_FEW = 3
_SINGLE_CHAR = (sre_parse.LITERAL, sre_parse.NOT_LITERAL, sre_parse.IN, sre_parse.ANY)


class _Checker:
    def __init__(self, regex: str, tree: Any) -> None:
        self.regex = regex
        self.state = tree.state

    def refuse(self, why: str) -> ReferenceError:
        return ReferenceError(f"tag regex /{self.regex}/: {why}: refused")

    def chars(self, item: tuple[Any, Any]) -> frozenset[str]:
        """The tag characters one single-character item matches."""
        compiled = re._compiler.compile(sre_parse.SubPattern(self.state, [item]))
        return frozenset(c for c in _TAG_ALPHABET if compiled.match(c))

    def first(self, items: Any) -> tuple[frozenset[str], bool]:
        """The characters a match of ``items`` can start with, and whether it can match the empty string."""
        found: set[str] = set()
        for op, av in items:
            if op in _SINGLE_CHAR:
                return frozenset(found | self.chars((op, av))), False
            if op in _REPEATS:
                body, empty = self.first(av[2])
                found |= body
                if av[0] > 0 and not empty:
                    return frozenset(found), False
            elif op in (sre_parse.SUBPATTERN, sre_parse.ATOMIC_GROUP):
                body, empty = self.first(av[-1] if op == sre_parse.SUBPATTERN else av)
                found |= body
                if not empty:
                    return frozenset(found), False
            elif op == sre_parse.BRANCH:
                empties = False
                for branch in av[1]:
                    body, empty = self.first(branch)
                    found |= body
                    empties = empties or empty
                if not empties:
                    return frozenset(found), False
            # AT (anchors) and the like match no character: look further.
        return frozenset(found), True

    def unbounded_inside(self, items: Any) -> list[Any]:
        """The bodies of every unbounded repetition within ``items``."""
        bodies = []
        for op, av in items:
            if op in _REPEATS:
                if av[1] == sre_parse.MAXREPEAT:
                    bodies.append(av[2])
                bodies += self.unbounded_inside(av[2])
            elif op == sre_parse.SUBPATTERN:
                bodies += self.unbounded_inside(av[-1])
            elif op == sre_parse.ATOMIC_GROUP:
                bodies += self.unbounded_inside(av)
            elif op == sre_parse.BRANCH:
                for branch in av[1]:
                    bodies += self.unbounded_inside(branch)
        return bodies

    def check(self, items: Any) -> None:
        chain: frozenset[str] = frozenset()  # what the unseparated unbounded repetitions so far can eat
        chained = 0
        for op, av in items:
            if op in _NOT_RE2:
                raise self.refuse(f"{_NOT_RE2[op]} are not supported (Go's RE2 syntax, as image-syncer)")
            if op in _REPEATS:
                low, high, body = av
                if high > _FEW:
                    starts, _ = self.first(body)
                    for inner in self.unbounded_inside(body):
                        if self.first(inner)[0] & starts or self.first(inner)[1]:
                            raise self.refuse("a repetition inside a repetition that can start alike, like (a+)+, "
                                              "can take exponential time")
                    if high == sre_parse.MAXREPEAT:
                        self.check_alternatives(body)
                        eats, _ = self.first(body)
                        chained = chained + 1 if eats & chain else 1
                        chain = eats if chained == 1 else chain | eats
                        if chained >= 3:
                            raise self.refuse("three unbounded repetitions over the same characters in a row, "
                                              "like .*.*.*, can take a very long time")
                        self.check(body)
                        continue
                self.check(body)
                if low > 0 and not self.first(body)[0] & chain:
                    chain, chained = frozenset(), 0
            elif op in _SINGLE_CHAR:
                if not self.chars((op, av)) & chain:
                    chain, chained = frozenset(), 0
            elif op == sre_parse.SUBPATTERN:
                self.check(av[-1])
            elif op == sre_parse.ATOMIC_GROUP:
                self.check(av)
            elif op == sre_parse.BRANCH:
                for branch in av[1]:
                    self.check(branch)

    def check_alternatives(self, body: Any) -> None:
        """Under a repetition, alternatives that can start with the same character: (a|ab)*."""
        for op, av in body:
            if op == sre_parse.SUBPATTERN:
                self.check_alternatives(av[-1])
            elif op == sre_parse.BRANCH:
                seen: set[str] = set()
                for branch in av[1]:
                    starts, empty = self.first(branch)
                    if starts & seen or empty:
                        raise self.refuse("alternatives that can start alike under a repetition, like (a|ab)*, "
                                          "can take exponential time")
                    seen |= starts
            if op not in (sre_parse.AT,):
                return  # only the body's first element decides how an iteration starts


def check_tag_regex(regex: str) -> re.Pattern[str]:
    """A user's tag regex, compiled, or a ReferenceError saying why it is refused."""
    if len(regex) > MAX_REGEX_LENGTH:
        raise ReferenceError(f"tag regex longer than {MAX_REGEX_LENGTH} characters: refused")
    try:
        pattern = re.compile(regex)
        tree = sre_parse.parse(regex)
    except re.error as exc:
        raise ReferenceError(f"invalid tag regex /{regex}/: {exc}") from exc
    _Checker(regex, tree).check(tree)
    return pattern


# Repository globs (``repositories: {include, exclude}``): bounded, and matched component by component
# with no backtracking beyond one component, so a hostile pattern or catalog name costs little.
MAX_REPOSITORY_PATTERNS = 64
MAX_REPOSITORY_PATTERN_LENGTH = 256
_GLOB_CHARS = re.compile(r"[a-z0-9._\-*?/]+")


def _component_match(pattern: str, text: str) -> bool:
    """``*`` (any run) and ``?`` (one character) within one path component; linear-ish two-pointer match."""
    p = t = 0
    star, mark = -1, 0
    while t < len(text):
        if p < len(pattern) and (pattern[p] == "?" or pattern[p] == text[t]):
            p, t = p + 1, t + 1
        elif p < len(pattern) and pattern[p] == "*":
            star, mark, p = p, t, p + 1
        elif star >= 0:
            p, mark = star + 1, mark + 1
            t = mark
        else:
            return False
    while p < len(pattern) and pattern[p] == "*":
        p += 1
    return p == len(pattern)


def glob_match(pattern: str, path: str) -> bool:
    """A repository glob against a relative path: ``*``/``?`` within a component, ``**`` (a whole component)
    any number of components, zero included: ``**`` is everything, ``tools/**`` everything under tools."""
    parts, names = pattern.split("/"), path.split("/")
    memo: dict[tuple[int, int], bool] = {}

    def match(i: int, j: int) -> bool:
        key = (i, j)
        if key not in memo:
            if i == len(parts):
                memo[key] = j == len(names)
            elif parts[i] == "**":
                memo[key] = any(match(i + 1, k) for k in range(j, len(names) + 1))
            else:
                memo[key] = j < len(names) and _component_match(parts[i], names[j]) and match(i + 1, j + 1)
        return memo[key]

    return match(0, 0)


@dataclass(frozen=True)
class RepositorySelector:
    include: tuple[str, ...] = ("**",)
    exclude: tuple[str, ...] = ()

    def selects(self, relative: str) -> bool:
        return (any(glob_match(p, relative) for p in self.include)
                and not any(glob_match(p, relative) for p in self.exclude))


@dataclass(frozen=True)
class SourceSpec:
    repo: Repository  # for a prefix source, the namespace ("" for a whole registry)
    tags: tuple[str, ...] = ()
    regex: str | None = None
    digest: str | None = None
    tag_filter: TagFilter | None = None  # the extended form's filters, applied to the listed tags
    prefix: bool = False  # a whole registry or namespace: repositories from _catalog
    selector: RepositorySelector = field(default_factory=RepositorySelector)

    @property
    def all_tags(self) -> bool:
        return not self.tags and self.regex is None and self.digest is None

    def relative(self, path: str) -> str | None:
        """A catalog path below this prefix source, relative to it; None when it is not below it."""
        if not self.repo.path:
            return path
        return path[len(self.repo.path) + 1:] if path.startswith(self.repo.path + "/") else None


@dataclass(frozen=True)
class TargetSpec:
    repo: Repository  # for a prefix target, the namespace ("" for a whole registry)
    tags: tuple[str, ...] = ()
    digest: str | None = None
    prefix: bool = False


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
    if text.endswith("/") and ":/" not in text:
        # A whole registry (host/) or namespace (host/team/): a repository name never ends with '/'.
        return SourceSpec(parse_prefix(text), prefix=True)
    if ":/" in text and text.endswith("/"):
        # A tag regex may itself hold ':' and '/': the repository name ends at the first ':/'.
        name, _, pattern = text.partition(":/")
        if name.endswith("/"):
            raise ReferenceError("a tag regex cannot follow a registry or namespace prefix: write the prefix "
                                 "alone (host/team/) and narrow its tags with the mapping form (exclude, semver, "
                                 "latest)")
        regex = pattern[:-1]
        if not regex:
            raise ReferenceError("empty tag regex: write repo:/regex/")
        check_tag_regex(regex)
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
    if source.prefix:
        if not text.endswith("/"):
            what = "names a namespace, not a repository" if source.repo.path else \
                "names a registry but no repository"
            raise ReferenceError(f"the source {what}: that is a whole-registry or namespace source, whose target "
                                 f"must be a prefix too: end it with '/' (host/ or host/namespace/), not "
                                 f"{_shown(text)!r}")
        return TargetSpec(parse_prefix(text), prefix=True)
    if text.endswith("/") and ":/" not in text:
        raise ReferenceError("a registry or namespace target (ending in '/') needs a registry or namespace source")
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
    if source.prefix:
        return f"{default_registry}/{default_namespace}/"
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
        tag_filter: TagFilter | None = None
        selector: RepositorySelector | None = None
        if value is None or value == "":
            targets = [None]
        elif isinstance(value, str):
            targets = [value]
        elif isinstance(value, list) and value:
            targets = list(value)
        elif isinstance(value, Mapping):
            try:
                targets, tag_filter, selector = _parse_extended(value)
            except FilterError as exc:
                errors.append(RuleError(source_text, str(exc)))
                continue
        else:
            errors.append(RuleError(source_text, "the target must be a string, a list of strings, a mapping "
                                                 "(target/targets and tag filters), or empty"))
            continue
        try:
            source = _parse_source(source_text)
            if tag_filter is not None:
                if not (source.all_tags or source.regex is not None):
                    raise ReferenceError("semver, exclude and latest filter the tags the source lists: use them "
                                         "with repo (every tag) or repo:/regex/, not a tag list or a digest")
                source = replace(source, tag_filter=tag_filter)
            if selector is not None:
                if not source.prefix:
                    raise ReferenceError("repositories (include/exclude) selects among a registry's or namespace's "
                                         "repositories: use it with a source ending in '/' (host/ or host/team/)")
                source = replace(source, selector=selector)
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


_EXTENDED_KEYS = ("target", "targets", "repositories", *FILTER_KEYS)


def _patterns(value: object, key: str) -> tuple[str, ...]:
    patterns = [value] if isinstance(value, str) else value
    if not isinstance(patterns, list) or not patterns or not all(isinstance(p, str) and p for p in patterns):
        raise FilterError(f"repositories.{key} must be a non-empty glob or a non-empty list of them")
    if len(patterns) > MAX_REPOSITORY_PATTERNS:
        raise FilterError(f"repositories.{key}: more than {MAX_REPOSITORY_PATTERNS} patterns")
    for pattern in patterns:
        if len(pattern) > MAX_REPOSITORY_PATTERN_LENGTH:
            raise FilterError(f"repositories.{key}: a pattern longer than {MAX_REPOSITORY_PATTERN_LENGTH} characters")
        if not _GLOB_CHARS.fullmatch(pattern) or "" in pattern.split("/"):
            raise FilterError(f"repositories.{key}: {_shown(pattern)!r} is not a repository glob (lower-case "
                              f"path characters, '/' between components, and the wildcards *, ?, **)")
    return tuple(patterns)


def _parse_selector(value: object) -> RepositorySelector:
    if not isinstance(value, Mapping) or not value:
        raise FilterError("repositories must be a mapping with include and/or exclude (repository globs)")
    unknown = [str(key) for key in value if key not in ("include", "exclude")]
    if unknown:
        raise FilterError(f"repositories: unknown key(s) {', '.join(map(repr, unknown))[:_SHOWN_CHARS]} "
                          f"(known: include, exclude)")
    return RepositorySelector(_patterns(value["include"], "include") if "include" in value else ("**",),
                              _patterns(value["exclude"], "exclude") if "exclude" in value else ())


def _parse_extended(value: Mapping[Any, object]) -> tuple[list[object], TagFilter | None, RepositorySelector | None]:
    """The targets and the tag filter of a rule written as a mapping, or a FilterError naming the key."""
    unknown = [str(key) for key in value if key not in _EXTENDED_KEYS]
    if unknown:
        raise FilterError(f"unknown key(s) {', '.join(map(repr, unknown))[:_SHOWN_CHARS]} "
                          f"(known: {', '.join(_EXTENDED_KEYS)})")
    if "target" in value and "targets" in value:
        raise FilterError("give target (one) or targets (a list), not both")
    targets: list[object]
    if "targets" in value:
        listed = value["targets"]
        if not isinstance(listed, list) or not listed:
            raise FilterError("targets must be a non-empty list of target strings")
        targets = list(listed)
    else:
        target = value.get("target")
        if target is not None and not isinstance(target, str):
            raise FilterError(f"target must be a string (or targets: a list), got {_shown(target)}")
        targets = [target or None]
    selector = _parse_selector(value["repositories"]) if "repositories" in value else None
    return targets, parse_tag_filter(value, check_tag_regex), selector


_SHOWN_CHARS = 120


def _shown(value: object) -> str:
    """A target as a message quotes it: a misplaced list or mapping could print for pages."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "..."


def _describe_targets(targets: Sequence[object]) -> str:
    return ", ".join(_shown(t) if t else "(default target)" for t in targets)


def source_needs_tag_list(rule: Rule) -> bool:
    return rule.source.all_tags or rule.source.regex is not None


def expand_prefix_rule(rule: Rule, catalog: Sequence[str]) -> list[Rule]:
    """A registry/namespace rule -> one all-tags rule per catalog repository below its prefix that its
    ``repositories`` globs select, each to the target prefix under the same relative path (tag filters kept).
    ``catalog`` holds repository paths already checked against the name grammar."""
    source, target = rule.source, rule.target
    rules = []
    for path in sorted(set(catalog)):
        relative = source.relative(path)
        if relative is None or not source.selector.selects(relative):
            continue
        target_path = f"{target.repo.path}/{relative}" if target.repo.path else relative
        rules.append(Rule(rule.text,
                          SourceSpec(Repository(source.repo.registry, path), tag_filter=source.tag_filter),
                          TargetSpec(Repository(target.repo.registry, target_path))))
    return rules


def expand_rule(rule: Rule, source_tags: Sequence[str] | None = None) -> list[ImagePair]:
    """The image pairs a rule stands for, given the source's tags when the rule needs them."""
    source, target = rule.source, rule.target
    if source.prefix:
        raise RuleError(rule.text, "a registry or namespace rule is expanded from the catalog first")
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
        tags = [t for t in tags if len(t) <= MAX_TAG_LENGTH and pattern.search(t)]
    if source.tag_filter is not None:
        tags = select_tags(source.tag_filter, tags)
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
