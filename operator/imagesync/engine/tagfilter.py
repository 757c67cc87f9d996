"""Tag filters of the extended rule form: ``semver``, ``prereleases``, ``exclude``, ``latest``. Pure functions.

A rule whose value is a mapping may narrow the tags its source lists (every tag, or those a ``/regex/``
finds) with these keys, applied in this order:

1. ``semver: ">=1.20 <2"`` keeps the tags that are semantic versions within the range;
2. ``exclude: ["-rc", "^v2\\.51\\."]`` drops every tag one of the regexes finds (a search, like the
   source's ``/regex/``, with the same bounds);
3. ``latest: N`` keeps the tags of the N highest versions left.

A tag is a *version* when it is ``MAJOR.MINOR.PATCH`` or ``MAJOR.MINOR``, with an optional pre-release
(``-rc.1``) and an optional leading ``v``: ``v1.20.0``, ``1.20.1``, ``1.22`` (read as 1.22.0),
``v1.21.0-rc.1``. A bare number (``1``, ``20240101``) is not: dates, build numbers and short commit ids
look like that. Every other tag (``latest``, ``stable``, ``1.2.3.4``, ``sha-abc``) is *not a version*:
``semver`` and ``latest`` drop it (``exclude`` alone keeps it). A pre-release tag (any ``-suffix``:
``1.21.0-rc.1``, and also ``1.25.3-alpine``, which semver reads as a pre-release) is dropped by ``semver``
and ``latest`` unless ``prereleases: true``. With it, a pre-release is compared by semver precedence, below
its release (``1.21.0-rc.1 < 1.21.0``): ``>=1.21`` leaves 1.21.0-rc.1 out and ``<2`` lets 2.0.0-rc.1 in;
``>=1.21.0-0 <2.0.0-0`` says the opposite of both. ``latest`` counts distinct versions: tags that spell
the same version (``v2.0.0`` and ``2.0.0``, ``1.22`` and ``1.22.0``) are one version, and all of them are
kept.

The range grammar is npm's, through node-semver (a port of npm's own): comparators separated by spaces
are all required (``>=1.20 <2``), ``||`` separates alternatives, and ``^1.20``, ``~1.20``, ``1.x``,
``1.20 - 1.25`` are its shorthands; after an operator a partial version means ``.0`` (``>=1.20`` is
``>=1.20.0``), alone it is an x-range (``2`` is ``2.x``); a leading ``v`` is allowed. The library was
chosen for that grammar, the one most users already know: python-semver compares versions but has no
range grammar (one comparison per call), and packaging's ``SpecifierSet`` is PEP 440 (``>=1.20,<2``), which
refuses semver pre-release tags such as ``1.25.3-alpine``.
"""

from __future__ import annotations

import functools
import importlib
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

# The keys of the extended rule form that filter tags (the others, target/targets, name where tags go).
FILTER_KEYS = ("semver", "prereleases", "exclude", "latest")
# A range is short; longer text is refused before the library sees it (its regexes backtrack on long
# runs of spaces, node-semver's CVE-2022-25883: runs of whitespace are collapsed to one space first).
MAX_RANGE_LENGTH = 256
MAX_EXCLUDES = 64
MAX_TAG_LENGTH = 128

_TWO_PART = re.compile(r"(v?)(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(-[0-9A-Za-z.-]+)?")


class FilterError(ValueError):
    """A filter value a user must fix; the message names the key."""


@dataclass(frozen=True)
class TagFilter:
    semver: str | None = None  # the range, whitespace collapsed
    prereleases: bool = False
    exclude: tuple[str, ...] = ()  # regexes, already checked against the tag-regex bounds
    latest: int | None = None

    @property
    def by_version(self) -> bool:
        """Whether only version tags can pass (``semver`` or ``latest`` given)."""
        return self.semver is not None or self.latest is not None


@functools.cache
def _semver() -> ModuleType:
    """nodesemver, imported on first use: it is one of the slowest imports of ``imagesync sync``'s start-up
    (``python -X importtime``), and most runs name no semver filter."""
    return importlib.import_module("nodesemver")


def parse_version(tag: str) -> Any | None:
    """The semantic version a tag spells (a ``nodesemver.SemVer``), or None when it spells none."""
    if len(tag) > MAX_TAG_LENGTH:
        return None
    two = _TWO_PART.fullmatch(tag)
    # MAJOR.MINOR reads as MAJOR.MINOR.0; a bare MAJOR stays refused (the library wants three numbers).
    text = f"{two[1]}{two[2]}.{two[3]}.0{two[4] or ''}" if two else tag
    try:
        return _semver().make_semver(text, loose=False)
    except ValueError:
        return None


def check_range(value: object) -> str:
    """A ``semver`` value, normalised, or a FilterError saying why it is refused."""
    if not isinstance(value, str):
        raise FilterError(f"semver must be a quoted string such as \">=1.20 <2\", got {value!r} "
                          f"(YAML reads an unquoted 1.20 as the number 1.2)")
    text = " ".join(value.split())
    if not text:
        raise FilterError('semver is empty (write "*" for every version)')
    if len(text) > MAX_RANGE_LENGTH:
        raise FilterError(f"semver range longer than {MAX_RANGE_LENGTH} characters: refused")
    try:
        _semver().make_range(text, loose=False)
    except ValueError as exc:
        raise FilterError(f"semver {text!r} is not a range ({exc}); write e.g. \">=1.20 <2\", \"^1.20\" "
                          f"or \">=1.20 <2 || >=3.1\"") from None
    return text


def parse_tag_filter(options: Mapping[str, object],
                     check_regex: Callable[[str], re.Pattern[str]]) -> TagFilter | None:
    """The filter the ``FILTER_KEYS`` of a rule mapping give (None when they give none).

    ``check_regex`` compiles a user's regex with the bounds of the source's tag regexes, or raises
    ValueError saying why it is refused.
    """
    if not any(key in options for key in FILTER_KEYS):
        return None
    semver = check_range(options["semver"]) if "semver" in options else None

    prereleases = options.get("prereleases", False)
    if not isinstance(prereleases, bool):
        raise FilterError(f"prereleases must be true or false, got {prereleases!r}")

    latest = options.get("latest")
    if latest is not None and (isinstance(latest, bool) or not isinstance(latest, int) or latest < 1):
        raise FilterError(f"latest must be a whole number >= 1, got {latest!r}")
    if "latest" in options and latest is None:
        raise FilterError("latest is empty: give a whole number >= 1")
    if prereleases and semver is None and latest is None:
        raise FilterError("prereleases applies to semver and latest: give one of them")

    raw = options.get("exclude", [])
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not all(isinstance(r, str) and r for r in raw):
        raise FilterError(f"exclude must be a regex or a list of regexes (non-empty strings), got {raw!r}")
    if len(raw) > MAX_EXCLUDES:
        raise FilterError(f"exclude lists {len(raw)} regexes; at most {MAX_EXCLUDES}")
    for regex in raw:
        try:
            check_regex(regex)
        except ValueError as exc:
            raise FilterError(f"exclude: {exc}") from None
    return TagFilter(semver=semver, prereleases=prereleases, exclude=tuple(dict.fromkeys(raw)), latest=latest)


def _newest_first(a: Any, b: Any) -> int:
    return int(b.compare(a))


def select_tags(tag_filter: TagFilter, tags: Iterable[str]) -> list[str]:
    """The tags that pass the filter, in their given order."""
    kept = [t for t in tags if len(t) <= MAX_TAG_LENGTH]
    versions: dict[str, Any] = {}
    if tag_filter.by_version:
        for tag in kept:
            version = parse_version(tag)
            if version is not None and (tag_filter.prereleases or not version.prerelease):
                versions[tag] = version
        kept = [t for t in kept if t in versions]
    if tag_filter.semver is not None:
        # Versions are parsed without the library's include_prerelease, which would compare 2.0.0-rc.1 as equal
        # to 2.0.0; include_prerelease on the test only lifts npm's rule that keeps pre-releases out of ranges.
        wanted = _semver().make_range(tag_filter.semver, loose=False)
        kept = [t for t in kept if wanted.test(versions[t], include_prerelease=tag_filter.prereleases)]
    if tag_filter.exclude:
        patterns = [re.compile(regex) for regex in tag_filter.exclude]
        kept = [t for t in kept if not any(p.search(t) for p in patterns)]
    if tag_filter.latest is not None:
        distinct: dict[str, Any] = {}
        for tag in kept:
            distinct.setdefault(versions[tag].version, versions[tag])
        newest = sorted(distinct.values(), key=functools.cmp_to_key(_newest_first))[: tag_filter.latest]
        top = {v.version for v in newest}
        kept = [t for t in kept if versions[t].version in top]
    return kept

