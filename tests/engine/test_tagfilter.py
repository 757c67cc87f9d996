"""Tag filters of the extended rule form (semver, prereleases, exclude, latest): pure functions, exhaustively,
then through the rule parser and expansion (the same path the CLI, the worker and the operator take)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import auth_for, run_sync

from imagesync.controller.spec import SpecError, parse_job_spec
from imagesync.engine.rules import check_tag_regex, expand_rule, parse_rules, source_needs_tag_list
from imagesync.engine.tagfilter import (
    MAX_EXCLUDES,
    MAX_RANGE_LENGTH,
    FilterError,
    TagFilter,
    check_range,
    parse_tag_filter,
    parse_version,
    select_tags,
)
from testbed import seed
from testbed.registry import RegistryProcess

TAGS = ["v1.19.0", "v1.20.0", "1.20.1", "v1.21.0-rc.1", "1.21.0", "1.22", "v1.22.0", "1.22.1-alpine",
        "v1.23.0-beta.2", "latest", "stable", "v2.0.0-rc.1", "v2.0.0", "2.0.0", "20240101", "1",
        "1.2.3.4", "sha-0123abc", "V1.24.0"]


def select(tags: list[str] = TAGS, **options: Any) -> list[str]:
    tag_filter = parse_tag_filter(options, check_tag_regex)
    assert tag_filter is not None
    return select_tags(tag_filter, tags)


# -- which tags are versions ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("tag", "version", "prerelease"), [
    ("1.2.3", "1.2.3", []),
    ("v1.2.3", "1.2.3", []),
    ("0.0.0", "0.0.0", []),
    ("1.22", "1.22.0", []),  # two parts: MAJOR.MINOR reads as .0
    ("v1.22", "1.22.0", []),
    ("1.21.0-rc.1", "1.21.0-rc.1", ["rc", 1]),
    ("v1.21.0-rc.1", "1.21.0-rc.1", ["rc", 1]),
    ("1.22-rc.1", "1.22.0-rc.1", ["rc", 1]),
    ("1.25.3-alpine", "1.25.3-alpine", ["alpine"]),  # semver reads a -suffix as a pre-release
    ("10.200.3000", "10.200.3000", []),
])
def test_version_tags(tag: str, version: str, prerelease: list[object]) -> None:
    parsed = parse_version(tag)
    assert parsed is not None
    assert parsed.version == version
    assert parsed.prerelease == prerelease


@pytest.mark.parametrize("tag", [
    "latest", "stable", "main", "1", "v1", "20240101", "1.2.3.4", "01.2.3", "1.02.3", "1.2.03", "1.2.3-01",
    "V1.2.3", "vv1.2.3", "1.2.3_b", "1.2.", "1..3", "1.2.3-", "sha-0123abc", "x1.2.3", "1.2.3-a..b", "",
    "9" * 129,
])
def test_tags_that_are_not_versions(tag: str) -> None:
    assert parse_version(tag) is None


def test_a_hostile_tag_is_parsed_quickly() -> None:
    started = time.monotonic()
    for tag in ["1." * 63 + "1", "1.2.3-" + "a." * 60 + "a", "1.2.3-" + "-" * 122, "v" * 128, "1" * 128]:
        parse_version(tag)
    assert time.monotonic() - started < 1


# -- semver ranges -------------------------------------------------------------------------------------------


def test_range_with_and_without_v() -> None:
    # Pre-releases, non-version tags, bare numbers and V-prefixed tags are all dropped.
    assert select(semver=">=1.20 <2") == ["v1.20.0", "1.20.1", "1.21.0", "1.22", "v1.22.0"]
    assert select(semver=">=v1.20 <v2") == select(semver=">=1.20 <2")


@pytest.mark.parametrize(("text", "expected"), [
    ("^1.20", ["v1.20.0", "1.20.1", "1.21.0", "1.22", "v1.22.0"]),
    ("~1.20", ["v1.20.0", "1.20.1"]),
    ("1.22.x", ["1.22", "v1.22.0"]),
    ("1.20 - 1.21", ["v1.20.0", "1.20.1", "1.21.0"]),
    ("<1.20 || >=2", ["v1.19.0", "v2.0.0", "2.0.0"]),
    (">2", []),
    ("2", ["v2.0.0", "2.0.0"]),
    ("=1.20.1", ["1.20.1"]),
    ("*", ["v1.19.0", "v1.20.0", "1.20.1", "1.21.0", "1.22", "v1.22.0", "v2.0.0", "2.0.0"]),
    ("  >=1.22   <2  ", ["1.22", "v1.22.0"]),  # whitespace collapsed
])
def test_range_grammar(text: str, expected: list[str]) -> None:
    assert select(semver=text) == expected


def test_prereleases_are_kept_only_when_asked() -> None:
    # Pre-releases are compared by semver precedence: 1.21.0-rc.1 < 1.21.0, and 2.0.0-rc.1 < 2.0.0.
    assert select(semver=">=1.21 <2", prereleases=True) == [
        "1.21.0", "1.22", "v1.22.0", "1.22.1-alpine", "v1.23.0-beta.2", "v2.0.0-rc.1"]
    assert select(semver=">=1.21.0-0 <2.0.0-0", prereleases=True) == [
        "v1.21.0-rc.1", "1.21.0", "1.22", "v1.22.0", "1.22.1-alpine", "v1.23.0-beta.2"]
    # Even a range that names a pre-release keeps none without prereleases: true (simpler than npm's rule).
    assert select(semver=">=1.21.0-rc.1 <2") == ["1.21.0", "1.22", "v1.22.0"]
    # A pre-release of the upper bound is below it: <2.0.0-0 keeps the 2.0.0 pre-releases out.
    assert "v2.0.0-rc.1" in select(semver="<2", prereleases=True)
    assert "v2.0.0-rc.1" not in select(semver="<2.0.0-0", prereleases=True)
    assert select(semver=">=2.0.0-0", prereleases=True) == ["v2.0.0-rc.1", "v2.0.0", "2.0.0"]


# -- exclude ---------------------------------------------------------------------------------------------------


def test_exclude_alone_keeps_non_version_tags() -> None:
    assert select(exclude=["-", "^[vV]", "^[0-9]+$"]) == ["1.20.1", "1.21.0", "1.22", "latest", "stable", "2.0.0",
                                                           "1.2.3.4"]
    assert select(["a", "b", "ab"], exclude="a") == ["b"]  # one regex may be a plain string


def test_exclude_is_a_search_like_the_source_regex() -> None:
    assert select(semver=">=1.20 <3", exclude=["-rc", r"^v2\."]) == ["v1.20.0", "1.20.1", "1.21.0", "1.22",
                                                                    "v1.22.0", "2.0.0"]
    assert select(semver="*", exclude=[r"^1\.22$"]) == ["v1.19.0", "v1.20.0", "1.20.1", "1.21.0", "v1.22.0",
                                                       "v2.0.0", "2.0.0"]


# -- latest ----------------------------------------------------------------------------------------------------


def test_latest_counts_versions_and_keeps_every_tag_of_a_tie() -> None:
    # v2.0.0 and 2.0.0 are one version, 1.22 and v1.22.0 another: latest 2 keeps all four tags.
    assert select(latest=2) == ["1.22", "v1.22.0", "v2.0.0", "2.0.0"]
    assert select(latest=1) == ["v2.0.0", "2.0.0"]
    assert select(latest=3) == ["1.21.0", "1.22", "v1.22.0", "v2.0.0", "2.0.0"]
    assert select(latest=100) == select(semver="*")  # fewer versions than N: all of them


def test_latest_ignores_non_version_tags() -> None:
    assert select(["latest", "stable", "main"], latest=5) == []
    assert select(["latest", "1.0.0", "20240101"], latest=5) == ["1.0.0"]


def test_latest_orders_by_semver_not_by_text() -> None:
    tags = ["1.9.0", "1.10.0", "1.2.0", "v1.10.1", "1.10.0-rc.1", "0.99.99"]
    assert select(tags, latest=2) == ["1.10.0", "v1.10.1"]
    assert select(tags, latest=3) == ["1.9.0", "1.10.0", "v1.10.1"]
    assert select(tags, latest=3, prereleases=True) == ["1.10.0", "v1.10.1", "1.10.0-rc.1"]


def test_filters_combine_in_order_semver_exclude_latest() -> None:
    # exclude comes before latest: the newest two that are left, not the newest two minus the excluded.
    assert select(semver=">=1.20 <3", exclude=[r"^v?2\."], latest=2) == ["1.21.0", "1.22", "v1.22.0"]
    assert select(semver=">=1.20 <3", exclude=["^v"], latest=2, prereleases=True) == [
        "1.22.1-alpine", "2.0.0"]


def test_the_order_of_the_listed_tags_is_kept() -> None:
    assert select(["2.0.0", "1.0.0", "1.5.0"], latest=2) == ["2.0.0", "1.5.0"]


# -- invalid values --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("options", "message"), [
    ({"semver": 1.2}, "quoted string"),  # YAML reads semver: 1.20 as the number 1.2
    ({"semver": ""}, "empty"),
    ({"semver": "   "}, "empty"),
    ({"semver": None}, "quoted string"),
    ({"semver": "garbage"}, "not a range"),
    ({"semver": ">=1.20,<2"}, "not a range"),  # PEP 440 / Masterminds comma syntax is not npm's
    ({"semver": "1.2.3.4"}, "not a range"),
    ({"semver": ">=1.20 <" + "2" * MAX_RANGE_LENGTH}, "longer than"),
    ({"semver": "1" + " " * 5000 + "<"}, "not a range"),  # node-semver's whitespace ReDoS: collapsed first
    ({"latest": 0}, ">= 1"),
    ({"latest": -3}, ">= 1"),
    ({"latest": "5"}, ">= 1"),
    ({"latest": True}, ">= 1"),
    ({"latest": 2.5}, ">= 1"),
    ({"latest": None}, "empty"),
    ({"prereleases": "yes", "latest": 1}, "true or false"),
    ({"prereleases": True}, "semver and latest"),
    ({"prereleases": True, "exclude": ["x"]}, "semver and latest"),
    ({"exclude": None}, "exclude must be"),
    ({"exclude": [""]}, "exclude must be"),
    ({"exclude": [1]}, "exclude must be"),
    ({"exclude": {"a": 1}}, "exclude must be"),
    ({"exclude": ["("]}, "invalid tag regex"),
    ({"exclude": ["(a+)+$"]}, "exponential"),  # the same backtracking check as the source's /regex/
    ({"exclude": [r"(a)\1"]}, "backreferences"),
    ({"exclude": ["a" * 513]}, "longer than 512"),
    ({"exclude": ["a"] * (MAX_EXCLUDES + 1)}, "at most"),
])
def test_invalid_values(options: dict[str, Any], message: str) -> None:
    started = time.monotonic()
    with pytest.raises(FilterError, match=message) as caught:
        parse_tag_filter(options, check_tag_regex)
    assert time.monotonic() - started < 1
    key = next(iter(options))
    assert key in str(caught.value)  # the message names the key


def test_no_filter_keys_is_no_filter() -> None:
    assert parse_tag_filter({"target": "x"}, check_tag_regex) is None
    assert parse_tag_filter({"exclude": []}, check_tag_regex) == TagFilter()


def test_range_is_normalised() -> None:
    assert check_range("  >=1.20\t<2 ") == ">=1.20 <2"


# -- through the rule parser: the CLI's images file and the ImageSyncJob's spec.images -----------------------

SRC = "src.example.com/lib/app"


def expanded(images: dict[str, object], tags: list[str] = TAGS) -> list[tuple[str, str]]:
    rules, errors = parse_rules(images)
    assert errors == []
    return [(str(p.source), str(p.target)) for rule in rules
            for p in expand_rule(rule, tags if source_needs_tag_list(rule) else None)]


def test_extended_rule_expands_to_the_filtered_tags() -> None:
    images: dict[str, object] = {SRC: {"target": "dst.example.com/m/app", "semver": ">=1.20 <2",
                                       "exclude": ["^1\\.22$"], "latest": 2}}
    assert expanded(images) == [(f"{SRC}:1.21.0", "dst.example.com/m/app:1.21.0"),
                                (f"{SRC}:v1.22.0", "dst.example.com/m/app:v1.22.0")]


def test_extended_rule_with_several_targets_and_a_source_regex() -> None:
    images: dict[str, object] = {f"{SRC}:/^v/": {"targets": ["d1.example.com/a", "d2.example.com/b"], "latest": 1}}
    assert expanded(images) == [(f"{SRC}:v2.0.0", "d1.example.com/a:v2.0.0"),
                                (f"{SRC}:v2.0.0", "d2.example.com/b:v2.0.0")]


def test_extended_rule_without_filters_takes_every_source_form() -> None:
    digest = "sha256:" + "a" * 64
    assert expanded({f"{SRC}:1.0,2.0": {"target": "dst.example.com/m/app:one,two"}}) == [
        (f"{SRC}:1.0", "dst.example.com/m/app:one"), (f"{SRC}:2.0", "dst.example.com/m/app:two")]
    assert expanded({f"{SRC}@{digest}": {"targets": ["dst.example.com/m/app"]}}) == [
        (f"{SRC}@{digest}", f"dst.example.com/m/app@{digest}")]
    rules, errors = parse_rules({SRC: {}}, "reg.example.com", "ns")
    assert errors == [] and str(rules[0].target.repo) == "reg.example.com/ns/app"


def test_string_forms_are_unchanged() -> None:
    assert expanded({SRC: "dst.example.com/m/app"}, ["b", "a"]) == [
        (f"{SRC}:a", "dst.example.com/m/app:a"), (f"{SRC}:b", "dst.example.com/m/app:b")]


@pytest.mark.parametrize(("value", "message"), [
    ({"target": "d.example.com/x", "semver": "nope"}, "semver 'nope' is not a range"),
    ({"target": "d.example.com/x", "colour": "red"}, "unknown key"),
    ({"target": "d.example.com/x", "targets": ["d.example.com/y"]}, "not both"),
    ({"targets": []}, "non-empty list"),
    ({"targets": "d.example.com/x"}, "non-empty list"),
    ({"target": ["d.example.com/x"]}, "target must be a string"),
    ({"target": "d.example.com/x:a,b", "latest": 1}, "target may name tags only"),
    ({"targets": [3]}, "each target must be a string"),
])
def test_a_bad_rule_is_named_and_the_others_still_run(value: dict[str, object], message: str) -> None:
    images: dict[str, object] = {SRC: value, "src.example.com/lib/ok": {"target": "d.example.com/ok", "latest": 1}}
    rules, errors = parse_rules(images)
    assert [str(r.source.repo) for r in rules] == ["src.example.com/lib/ok"]
    assert len(errors) == 1
    assert SRC in errors[0].rule_text and message in errors[0].reason


@pytest.mark.parametrize("source", [f"{SRC}:1.0,2.0", f"{SRC}@sha256:{'a' * 64}"])
def test_filters_need_a_source_that_lists_its_tags(source: str) -> None:
    _, errors = parse_rules({source: {"target": "d.example.com/x", "semver": "*"}})
    assert len(errors) == 1 and "not a tag list or a digest" in errors[0].reason


def test_an_imagesyncjob_spec_takes_the_extended_form() -> None:
    spec = parse_job_spec({"images": {
        "quay.io/prometheus/prometheus": {"target": "registry.example.com/mirror/prometheus",
                                          "semver": ">=2.50 <3", "exclude": ["-rc", "^v2\\.51\\."], "latest": 5},
        "nginx:1.25": "registry.example.com/mirror/nginx",
    }})
    assert spec.images["quay.io/prometheus/prometheus"] == {  # passed to the worker as written
        "target": "registry.example.com/mirror/prometheus", "semver": ">=2.50 <3",
        "exclude": ["-rc", "^v2\\.51\\."], "latest": 5}
    assert [str(r) for r in spec.repositories] == [
        "quay.io/prometheus/prometheus", "registry.example.com/mirror/prometheus",
        "docker.io/library/nginx", "registry.example.com/mirror/nginx"]
    with pytest.raises(SpecError, match="latest must be a whole number"):
        parse_job_spec({"images": {"quay.io/p/p": {"target": "r.example.com/p", "latest": 0}}})


# -- live: `imagesync sync` against real registries ------------------------------------------------------------

LIVE_TAGS = ["v1.19.0", "v1.20.0", "1.20.1", "v1.21.0-rc.1", "1.21.0", "1.22", "1.22.1", "v1.23.0-beta.1",
             "v1.23.0", "1.23.0", "1.23.1-alpine", "latest", "stable", "v2.0.0-rc.1", "v2.0.0", "2.0.1",
             "20240101", "sha-abc123"]


def test_sync_copies_exactly_the_filtered_tags(registry: RegistryProcess, registry2: RegistryProcess,
                                               tmp_path: Path) -> None:
    # One small image, re-tagged by manifest PUTs: cheap, and every tag is a real manifest.
    image = seed.push_image(registry, "lib/app", LIVE_TAGS[0], seed="tagfilter")
    for tag in LIVE_TAGS[1:]:
        seed.push_manifest(registry, "lib/app", tag, image.manifest, image.media_type)
    assert sorted(seed.list_tags(registry, "lib/app")) == sorted(LIVE_TAGS)
    src, dst = f"{registry.host}/lib/app", f"{registry2.host}"
    images: dict[str, object] = {
        # 1.20 <= v < 2, releases only, not the floating 1.22, then the newest three versions: 1.23.0 is spelt
        # twice (v1.23.0, 1.23.0), a tie, so both arrive.
        src: {"target": f"{dst}/semver/app", "semver": ">=1.20 <2", "exclude": [r"^1\.22$"], "latest": 3},
        # A source regex narrowed further, pre-releases asked for, two targets.
        f"{src}:/^v/": {"targets": [f"{dst}/pre/app", f"{dst}/pre2/app"], "semver": ">=1.21.0-0",
                        "prereleases": True},
        # exclude alone keeps tags that are not versions.
        f"{src}:/./": {"target": f"{dst}/named/app", "exclude": ["[0-9]"]},
        # A bad filter value: reported with the rule named, the rules above still run.
        f"{registry.host}/lib/other": {"target": f"{dst}/bad/app", "latest": 0},
    }
    code, result = run_sync(tmp_path, images, auth_for(registry, registry2))
    assert code == 1, result
    (failure,) = result["failedImages"]
    assert f"{registry.host}/lib/other" in failure["source"] and "latest must be" in failure["reason"]
    assert sorted(seed.list_tags(registry2, "semver/app")) == ["1.21.0", "1.22.1", "1.23.0", "v1.23.0"]
    expected_pre = ["v1.21.0-rc.1", "v1.23.0", "v1.23.0-beta.1", "v2.0.0", "v2.0.0-rc.1"]
    assert sorted(seed.list_tags(registry2, "pre/app")) == expected_pre
    assert sorted(seed.list_tags(registry2, "pre2/app")) == expected_pre
    assert sorted(seed.list_tags(registry2, "named/app")) == ["latest", "stable"]
    assert seed.list_tags(registry2, "bad/app") == []
    assert result["imagesSynced"] == 4 + 2 * 5 + 2
    data, _, digest = seed.get_manifest(registry2, "semver/app", "1.23.0")
    assert data == image.manifest and digest == image.digest
