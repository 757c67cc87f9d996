"""The rule language: every form, every error, expansion and sharding (pure functions)."""

from __future__ import annotations

import pytest

from imagesync.engine.reference import ImageRef, ReferenceError, Repository, parse_image, parse_repository
from imagesync.engine.rules import ImagePair, expand_rule, parse_rules, shard, source_needs_tag_list

DIGEST = "sha256:" + "a" * 64


def pairs(images: dict[str, object], tags: list[str] | None = None, **defaults: str) -> list[tuple[str, str]]:
    rules, errors = parse_rules(images, defaults.get("registry"), defaults.get("namespace"))
    assert errors == []
    out = []
    for rule in rules:
        for pair in expand_rule(rule, tags if source_needs_tag_list(rule) else None):
            out.append((str(pair.source), str(pair.target)))
    return out


@pytest.mark.parametrize(("name", "registry", "path", "api"), [
    ("nginx", "docker.io", "library/nginx", "registry-1.docker.io"),
    ("user/app", "docker.io", "user/app", "registry-1.docker.io"),
    ("registry.hub.docker.com/library/nginx", "docker.io", "library/nginx", "registry-1.docker.io"),
    ("quay.io/coreos/kube-rbac-proxy", "quay.io", "coreos/kube-rbac-proxy", "quay.io"),
    ("localhost/app", "localhost", "app", "localhost"),
    ("127.0.0.1:5000/a/b/c", "127.0.0.1:5000", "a/b/c", "127.0.0.1:5000"),
])
def test_repository_normalisation(name: str, registry: str, path: str, api: str) -> None:
    repo = parse_repository(name)
    assert (repo.registry, repo.path, repo.api_host) == (registry, path, api)


@pytest.mark.parametrize(("text", "why"), [
    ("", "empty"), ("quay.io/", "no repository"), ("quay.io/Upper/app", "invalid repository path"),
    ("app:bad tag", "invalid tag"), ("app@md5:abc", "only sha256"), ("app@sha256:xyz", "invalid digest"),
])
def test_bad_references(text: str, why: str) -> None:
    with pytest.raises(ReferenceError, match=why):
        parse_image(text)


def test_all_tags_needs_the_tag_list_and_keeps_tags() -> None:
    assert pairs({"quay.io/a/app": "reg.example.com/b/app"}, ["2", "1"]) == [
        ("quay.io/a/app:1", "reg.example.com/b/app:1"), ("quay.io/a/app:2", "reg.example.com/b/app:2")]


def test_tag_list_and_renamed_tags() -> None:
    assert pairs({"quay.io/a/app:1,2": "r.io/b/app"}) == [("quay.io/a/app:1", "r.io/b/app:1"),
                                                         ("quay.io/a/app:2", "r.io/b/app:2")]
    assert pairs({"quay.io/a/app:1,2": "r.io/b/app:x,y"}) == [("quay.io/a/app:1", "r.io/b/app:x"),
                                                             ("quay.io/a/app:2", "r.io/b/app:y")]


def test_regex_is_a_search_like_go() -> None:
    tags = ["1.0", "v1.0", "2.0", "latest"]
    assert [s for s, _ in pairs({"r.io/a/app:/1\\./": "t.io/a/app"}, tags)] == ["r.io/a/app:1.0", "r.io/a/app:v1.0"]
    assert [s for s, _ in pairs({"r.io/a/app:/^1\\.0$/": "t.io/a/app"}, tags)] == ["r.io/a/app:1.0"]


def test_digest_source_and_matching_target_digest() -> None:
    assert pairs({f"r.io/a/app@{DIGEST}": "t.io/a/app"}) == [(f"r.io/a/app@{DIGEST}", f"t.io/a/app@{DIGEST}")]
    assert pairs({f"r.io/a/app@{DIGEST}": f"t.io/a/app@{DIGEST}"}) == [(f"r.io/a/app@{DIGEST}",
                                                                        f"t.io/a/app@{DIGEST}")]
    assert pairs({f"r.io/a/app@{DIGEST}": "t.io/a/app:pinned"}) == [(f"r.io/a/app@{DIGEST}", "t.io/a/app:pinned")]


def test_several_targets_and_default_target() -> None:
    assert pairs({"r.io/a/app:1": ["t.io/x/app", "u.io/y/app"]}) == [("r.io/a/app:1", "t.io/x/app:1"),
                                                                     ("r.io/a/app:1", "u.io/y/app:1")]
    assert pairs({"r.io/team/app:1": ""}, registry="t.io", namespace="mirror") == [
        ("r.io/team/app:1", "t.io/mirror/app:1")]
    assert pairs({"nginx:1.27": None}, registry="t.io", namespace="hub") == [
        ("docker.io/library/nginx:1.27", "t.io/hub/nginx:1.27")]


@pytest.mark.parametrize(("images", "quoted", "why"), [
    ({"r.io/a/app:1,2": "t.io/a/app:x"}, "r.io/a/app:1,2", "counts must be equal"),
    ({"r.io/a/app": "t.io/a/app:x"}, "r.io/a/app", "only when the source lists its tags"),
    ({"r.io/a/app:/[/": "t.io/a/app"}, "r.io/a/app:/[/", "invalid tag regex"),
    ({"r.io/a/app:1": ""}, "r.io/a/app:1", "no default registry"),
    ({"r.io/a/app:1": {"nested": 1}}, "r.io/a/app:1", "unknown key(s) 'nested'"),
    ({f"r.io/a/app@{DIGEST}": "t.io/a/app@sha256:" + "b" * 64}, "r.io/a/app", "differs from the source digest"),
])
def test_malformed_rules_quote_the_rule_and_say_why(images: dict[str, object], quoted: str, why: str) -> None:
    good = {"r.io/ok/app:1": "t.io/ok/app"}
    rules, errors = parse_rules({**good, **images})
    assert [r.text for r in rules] == ["r.io/ok/app:1 -> t.io/ok/app"]  # the others still run
    (error,) = errors
    assert quoted in str(error) and why in str(error)


def test_shards_are_disjoint_covering_stable_and_balanced() -> None:
    repo = Repository("t.io", "a/app")
    all_pairs = [ImagePair(ImageRef(repo, tag=str(i)), ImageRef(repo, tag=str(i)), "r") for i in range(400)]
    shards = [shard(all_pairs, i, 4) for i in range(4)]
    flat = [p for s in shards for p in s]
    assert sorted(map(str, (p.target for p in flat))) == sorted(map(str, (p.target for p in all_pairs)))
    assert len(flat) == len(set(flat))
    assert all(60 < len(s) < 140 for s in shards)
    assert shard(list(reversed(all_pairs)), 2, 4) == list(reversed(shards[2]))
