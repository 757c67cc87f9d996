"""Pruning (issue 8 point 5): ``--prune`` lists, ``--prune --prune-confirm`` deletes the target tags a rule's
selector covers that its source no longer has. Nothing outside a rule's scope is touched (asserted from the
target's access log), and a tag whose manifest a kept tag shares stays (distribution 2.8 cannot untag: a
delete by digest would take the kept tag with it).

The decisions are unit-tested; the runs go against real docker-registry instances (``storage.delete.enabled``),
the target seeded directly, not by our engine. Two transports in front of the real target stand for registries
2.8 is not: one that untags (distribution 3, Quay) and one whose tag DELETE deletes the manifest.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from cli_helpers import auth_for, run_sync

from imagesync.engine.config import load_auth
from imagesync.engine.copy import SyncOptions, sync
from imagesync.engine.prune import (
    PruneAction,
    PruneScope,
    keep_referrer_tags,
    plan_by_digest,
    prune_candidates,
    prune_scope,
)
from imagesync.engine.referrers import ReferrerOptions
from imagesync.engine.rules import parse_rules
from imagesync.engine.stats import SyncStats
from imagesync.engine.transport import Endpoint
from testbed import seed
from testbed.registry import RegistryProcess

pytestmark = pytest.mark.usefixtures("restore_logging")


def scope_of(key: str, value: object = "dst.example/app") -> PruneScope | str:
    rules, errors = parse_rules({key: value})
    assert not errors and len(rules) == 1
    return prune_scope(rules[0])


# -- decisions ---------------------------------------------------------------------------------------------


def test_tag_list_and_digest_rules_never_prune() -> None:
    assert "never prunes" in str(scope_of("src.example/app:a,b"))
    assert "never prunes" in str(scope_of("src.example/app@sha256:" + "0" * 64))
    assert "catalog" in str(scope_of("src.example/team/", "dst.example/mirror/"))


def test_the_scope_is_the_rules_selector() -> None:
    every = scope_of("src.example/app")
    regex = scope_of("src.example/app:/^v1\\./")
    filtered = scope_of("src.example/app", {"target": "dst.example/app", "semver": ">=1.20", "exclude": "-rc"})
    assert isinstance(every, PruneScope) and isinstance(regex, PruneScope) and isinstance(filtered, PruneScope)
    assert every.covers("anything") and every.covers("latest")
    assert regex.covers("v1.2") and not regex.covers("v2.0") and not regex.covers("latest")
    assert filtered.covers("1.21.0") and not filtered.covers("1.19.0") and not filtered.covers("stable")


def test_latest_n_limits_the_copy_not_the_prune() -> None:
    """Dropping out of the newest N is not a deletion: the count is ignored, versions-only is not."""
    scope = scope_of("src.example/app", {"target": "dst.example/app", "latest": 2, "semver": "<3"})
    assert isinstance(scope, PruneScope)
    source = ["1.0.0", "1.1.0", "1.2.0"]  # the newest two are copied; 1.0.0 is only older
    target = ["0.9.0", "1.0.0", "1.1.0", "1.2.0", "3.0.0", "stable"]
    assert prune_candidates(scope, source, target, copied_here={"1.1.0", "1.2.0"}) == ["0.9.0"]
    latest_only = scope_of("src.example/app", {"target": "dst.example/app", "latest": 1})
    assert isinstance(latest_only, PruneScope)
    assert not latest_only.covers("stable") and not latest_only.covers("1.0.0-rc.1") and latest_only.covers("1.0")


def test_candidates_are_in_scope_gone_at_the_source_and_copied_by_no_rule() -> None:
    scope = scope_of("src.example/app:/^[a-c]$/")
    assert isinstance(scope, PruneScope)
    assert prune_candidates(scope, {"a"}, ["a", "b", "c", "d"], copied_here=set()) == ["b", "c"]
    # Another rule copies c into the same repository (its own source has it): c stays.
    assert prune_candidates(scope, {"a"}, ["a", "b", "c", "d"], copied_here={"a", "c"}) == ["b"]


def test_a_digest_is_deleted_only_when_no_kept_tag_needs_it() -> None:
    one, two, three, child = ("sha256:" + x * 64 for x in "1234")
    actions = plan_by_digest({"b": two, "c": one, "e": three, "f": three, "g": child},
                             kept={"a": one, "z": one, "idx": "sha256:" + "9" * 64},
                             kept_children={child: "idx"})
    assert actions == [
        PruneAction("b", two, "digest"),
        PruneAction("c", one, "keep", "digest shared with kept tag a"),
        PruneAction("e", three, "digest"),  # e and f share a manifest no kept tag has: both go
        PruneAction("f", three, "digest"),
        PruneAction("g", child, "keep", "its manifest is part of kept tag idx's index"),
    ]


def test_referrer_tags_of_kept_images_stay() -> None:
    """The copy makes a sha256-<hex> fallback index at a target without the referrers API; the source may have
    none, so it is no candidate while its subject stays."""
    kept_digest, gone_digest, child = ("sha256:" + x * 64 for x in "abc")
    candidates = {f"sha256-{'a' * 64}": "sha256:" + "1" * 64, f"sha256-{'a' * 64}.sig": "sha256:" + "2" * 64,
                  f"sha256-{'c' * 64}.att": "sha256:" + "3" * 64, f"sha256-{'b' * 64}.sig": "sha256:" + "4" * 64,
                  "old": gone_digest}
    left, keeps = keep_referrer_tags(candidates, {"a": kept_digest, "idx": "sha256:" + "9" * 64}, {child: "idx"})
    assert sorted(left) == ["old", f"sha256-{'b' * 64}.sig"]
    assert [(a.tag, a.reason) for a in keeps] == [(f"sha256-{'a' * 64}", "refers to kept tag a"),
                                                  (f"sha256-{'a' * 64}.sig", "refers to kept tag a"),
                                                  (f"sha256-{'c' * 64}.att", "refers to kept tag idx")]


# -- against real registries -------------------------------------------------------------------------------


class Seeded:
    """Source lib/app has a and e; target mirror/app has a (same image), b, c (a's manifest) and d; the rule
    ^[a-c]$ does not cover d. mirror/other (in no rule) and mirror/pinned (a tag-list rule) have stale tags."""

    def __init__(self, source: RegistryProcess, target: RegistryProcess) -> None:
        self.source, self.target = source, target
        self.a = seed.push_image(source, "lib/app", "a", seed="a")
        seed.push_image(source, "lib/app", "e", seed="e")
        assert seed.push_image(target, "mirror/app", "a", seed="a").digest == self.a.digest
        self.b = seed.push_image(target, "mirror/app", "b", seed="b")
        seed.push_manifest(target, "mirror/app", "c", self.a.manifest, self.a.media_type)
        self.d = seed.push_image(target, "mirror/app", "d", seed="d")
        seed.push_image(target, "mirror/other", "b", seed="other-b")
        seed.push_image(target, "mirror/pinned", "old", seed="old")
        self.images = {
            f"{source.host}/lib/app:/^[a-c]$/": f"{target.host}/mirror/app",
            f"{source.host}/lib/app:a": f"{target.host}/mirror/pinned",
        }

    def tags(self, repo: str) -> set[str]:
        return set(seed.list_tags(self.target, repo))

    def deletes(self, since: int) -> list[tuple[str, int]]:
        return [(r.path, r.status) for r in self.target.request_log(since) if r.method == "DELETE"]


def test_prune_lists_then_confirmed_deletes_in_scope_only_and_keeps_the_shared_digest(
        registry: RegistryProcess, registry2: RegistryProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--prune alone deletes nothing and lists b (would go) and c (kept: a shares its manifest); confirmed,
    b goes and nothing else: not d (outside the selector), not the repositories of no rule or a tag-list rule."""
    world = Seeded(registry, registry2)
    mark = registry2.log_mark()
    code, result = run_sync(tmp_path, world.images, auth_for(registry, registry2), "--prune")
    assert code == 0, result
    assert world.deletes(mark) == []
    assert world.tags("mirror/app") == {"a", "b", "c", "d"}
    assert result["prune"] == {
        "confirmed": False, "wouldDelete": 1, "kept": 1, "errors": 0,
        "repositories": [{
            "repository": f"{registry2.host}/mirror/app",
            "rules": [f"{registry.host}/lib/app:/^[a-c]$/ -> {registry2.host}/mirror/app"],
            "wouldDelete": [{"tag": "b", "digest": world.b.digest, "method": "digest"}],
            "kept": [{"tag": "c", "digest": world.a.digest, "reason": "digest shared with kept tag a"}],
        }],
    }
    # --dry-run --prune: the plan carries the same report; still nothing deleted.
    code, plan = run_sync(tmp_path, world.images, auth_for(registry, registry2), "--dry-run", "--prune", name="plan")
    assert code == 0 and plan["dryRun"] is True and plan["prune"] == result["prune"], plan
    assert world.deletes(mark) == []

    mark = registry2.log_mark()
    code, result = run_sync(tmp_path, world.images, auth_for(registry, registry2), "--prune", "--prune-confirm",
                            name="confirm")
    assert code == 0, result
    # 2.8 refuses the untag (400), then b goes by its own digest; no other DELETE reached the registry.
    assert world.deletes(mark) == [("/v2/mirror/app/manifests/b", 400),
                                   (f"/v2/mirror/app/manifests/{world.b.digest}", 202)]
    assert world.tags("mirror/app") == {"a", "c", "d"}
    assert seed.get_manifest(registry2, "mirror/app", "a")[2] == world.a.digest
    assert seed.get_manifest(registry2, "mirror/app", "d")[2] == world.d.digest
    assert world.tags("mirror/other") == {"b"} and world.tags("mirror/pinned") == {"a", "old"}
    entry = result["prune"]["repositories"][0]
    assert result["prune"]["confirmed"] is True and result["prune"]["deleted"] == 1
    assert entry["deleted"] == [{"tag": "b", "digest": world.b.digest, "method": "digest"}]
    assert entry["kept"] == [{"tag": "c", "digest": world.a.digest, "reason": "digest shared with kept tag a"}]
    assert f"  {registry2.host}/mirror/app: deleted b; kept c (digest shared with kept tag a)" in \
        capsys.readouterr().out
    # A second confirmed run finds only c (still shared): its untag is tried, refused, and nothing is deleted.
    mark = registry2.log_mark()
    code, result = run_sync(tmp_path, world.images, auth_for(registry, registry2), "--prune", "--prune-confirm",
                            name="again")
    assert code == 0 and result["prune"]["deleted"] == 0 and result["prune"]["kept"] == 1
    assert world.deletes(mark) == [("/v2/mirror/app/manifests/c", 400)]
    assert world.tags("mirror/app") == {"a", "c", "d"}


def test_rules_whose_tags_are_unknown_stop_pruning_where_they_could_copy(
        registry: RegistryProcess, registry2: RegistryProcess, tmp_path: Path) -> None:
    """A rule that cannot be planned (its source is missing) might copy any tag to its target: that repository is
    not pruned, though another rule's source lacks its tags. A rule that does not parse leaves every target
    unknown: nothing is pruned."""
    seed.push_image(registry, "lib/app", "a", seed="a")
    seed.push_image(registry2, "mirror/app", "x", seed="x")
    auth = auth_for(registry, registry2)
    mark = registry2.log_mark()
    code, result = run_sync(tmp_path, {f"{registry.host}/lib/app": f"{registry2.host}/mirror/app",
                                       f"{registry.host}/lib/missing": f"{registry2.host}/mirror/app"},
                            auth, "--prune", "--prune-confirm")
    assert code == 1 and result["failedImagesTotal"] == 1
    [entry] = result["prune"]["repositories"]
    assert entry["error"] == "not pruned: a rule targeting it could not be planned (its tags are unknown)"
    assert entry["deleted"] == [] and result["prune"]["errors"] == 1

    code, result = run_sync(tmp_path, {f"{registry.host}/lib/app": f"{registry2.host}/mirror/app",
                                       f"{registry.host}/lib/app:/(/": f"{registry2.host}/mirror/app"},
                            auth, "--prune", "--prune-confirm", name="malformed")
    assert code == 1
    assert result["prune"]["error"] == "1 rule(s) could not be read, so their targets are unknown: nothing pruned"
    assert [r for r in registry2.request_log(mark) if r.method == "DELETE"] == []
    assert set(seed.list_tags(registry2, "mirror/app")) == {"a", "x"}


def test_a_namespace_rule_prunes_the_repositories_its_catalog_lists(
        registry: RegistryProcess, registry2: RegistryProcess, tmp_path: Path) -> None:
    """lib/ -> mirror/: mirror/app loses old (lib/app no longer has it) but keeps the signature tag of its kept
    image a; mirror/gone, whose source repository is gone from the catalog, is left as it is."""
    a = seed.push_image(registry, "lib/app", "a", seed="a")
    seed.push_image(registry2, "mirror/app", "a", seed="a")
    signature = f"sha256-{a.digest.removeprefix('sha256:')}.sig"
    seed.push_image(registry2, "mirror/app", signature, seed="sig")
    old = seed.push_image(registry2, "mirror/app", "old", seed="old")
    seed.push_image(registry2, "mirror/gone", "z", seed="z")
    mark = registry2.log_mark()
    code, result = run_sync(tmp_path, {f"{registry.host}/lib/": f"{registry2.host}/mirror/"},
                            auth_for(registry, registry2), "--prune", "--prune-confirm", "--no-referrers")
    assert code == 0, result
    [entry] = result["prune"]["repositories"]
    assert entry["repository"] == f"{registry2.host}/mirror/app"
    assert [d["tag"] for d in entry["deleted"]] == ["old"]
    assert [(k["tag"], k["reason"]) for k in entry["kept"]] == [(signature, "refers to kept tag a")]
    assert {r.path for r in registry2.request_log(mark) if r.method == "DELETE"} == {
        "/v2/mirror/app/manifests/old", f"/v2/mirror/app/manifests/{old.digest}"}
    assert set(seed.list_tags(registry2, "mirror/app")) == {"a", signature}
    assert seed.list_tags(registry2, "mirror/gone") == ["z"]


@pytest.mark.parametrize("flags, message", [
    (["--prune-confirm"], "--prune-confirm confirms --prune"),
    (["--prune", "--prune-confirm", "--dry-run"], "--dry-run deletes nothing"),
])
def test_flag_mistakes_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str],
                                    message: str) -> None:
    code, _ = run_sync(tmp_path, {"src.example/app": "dst.example/app"}, None, *flags)
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


# -- registries that are not distribution 2.8 --------------------------------------------------------------


class TagDeleteTransport(httpx.AsyncBaseTransport):
    """A tag DELETE answered as another registry would, built from 2.8's own requests.

    ``untag``: the tag alone goes (distribution 3, Quay): the manifest is deleted by digest and put back under
    the other tags that shared it. ``untag=False``: the manifest goes with every tag on it (what our untag must
    survive)."""

    def __init__(self, untag: bool) -> None:
        self._inner = httpx.AsyncHTTPTransport(retries=0)
        self.untag = untag
        self.tag_deletes: list[str] = []

    async def _send(self, method: str, url: httpx.URL, **kwargs: Any) -> httpx.Response:
        response = await self._inner.handle_async_request(httpx.Request(method, url, **kwargs))
        await response.aread()
        return response

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if request.method != "DELETE" or "/manifests/" not in path or "sha256:" in path:
            return await self._inner.handle_async_request(request)
        repo_path, tag = path.rsplit("/manifests/", 1)
        self.tag_deletes.append(tag)
        accept = {"Accept": "application/vnd.oci.image.manifest.v1+json, "
                            "application/vnd.docker.distribution.manifest.v2+json"}
        got = await self._send("GET", request.url, headers=accept)
        if got.status_code != 200:
            return httpx.Response(404, request=request)
        digest = got.headers["docker-content-digest"]
        others = []
        if self.untag:
            listed = await self._send("GET", request.url.copy_with(path=f"{repo_path}/tags/list"))
            for other in listed.json()["tags"]:
                head = await self._send("HEAD", request.url.copy_with(path=f"{repo_path}/manifests/{other}"),
                                        headers=accept)
                if other != tag and head.headers.get("docker-content-digest") == digest:
                    others.append(other)
        deleted = await self._send("DELETE", request.url.copy_with(path=f"{repo_path}/manifests/{digest}"))
        for other in others:
            await self._send("PUT", request.url.copy_with(path=f"{repo_path}/manifests/{other}"),
                             content=got.content, headers={"Content-Type": got.headers["content-type"]})
        return httpx.Response(deleted.status_code, request=request)

    async def aclose(self) -> None:
        await self._inner.aclose()


async def prune_through(tmp_path: Path, source: RegistryProcess, target: RegistryProcess, images: dict[str, str],
                        transport: TagDeleteTransport) -> SyncStats:
    auth_file = tmp_path / "auth.yaml"
    auth_file.write_text(yaml.safe_dump(auth_for(source, target)))
    rules, errors = parse_rules(images)
    assert not errors

    def transports(endpoint: Endpoint) -> httpx.AsyncBaseTransport:
        return transport

    return await sync(rules, errors, load_auth(str(auth_file)),
                      SyncOptions(prune="delete", referrers=ReferrerOptions(enabled=False)),
                      transport_factory=transports)


async def test_a_registry_that_untags_loses_the_shared_tag_alone(
        registry: RegistryProcess, registry2: RegistryProcess, tmp_path: Path) -> None:
    world = Seeded(registry, registry2)
    transport = TagDeleteTransport(untag=True)
    stats = await prune_through(tmp_path, registry, registry2, world.images, transport)
    assert stats.prune is not None
    report = stats.prune.as_dict()
    assert report["deleted"] == 2 and report["kept"] == 0 and report["errors"] == 0, report
    assert transport.tag_deletes == ["b", "c"]
    assert world.tags("mirror/app") == {"a", "d"}
    assert seed.get_manifest(registry2, "mirror/app", "a")[2] == world.a.digest
    assert world.tags("mirror/other") == {"b"} and world.tags("mirror/pinned") == {"a", "old"}


async def test_a_tag_delete_that_takes_the_manifest_is_undone_for_the_kept_tag(
        registry: RegistryProcess, registry2: RegistryProcess, tmp_path: Path) -> None:
    world = Seeded(registry, registry2)
    transport = TagDeleteTransport(untag=False)
    stats = await prune_through(tmp_path, registry, registry2, world.images, transport)
    assert stats.prune is not None
    [entry] = stats.prune.repositories
    # b went by tag (its manifest was its own); c's delete took a's manifest too: a was put back, and the
    # registry is no longer trusted with tag deletes.
    assert [a.tag for a in entry.deleted] == ["b", "c"]
    assert "put it back for a;" in entry.error
    assert transport.tag_deletes == ["b", "c"]
    assert world.tags("mirror/app") == {"a", "d"}
    assert seed.get_manifest(registry2, "mirror/app", "a")[2] == world.a.digest
    assert json.loads(json.dumps(stats.result()))["prune"]["errors"] == 1


async def test_a_tag_delete_that_takes_a_kept_indexs_child_is_undone(
        registry: RegistryProcess, registry2: RegistryProcess, tmp_path: Path) -> None:
    """c names a child of the kept index idx; the registry's tag DELETE removes that child: it is put back."""
    index = seed.push_index(registry, "lib/app", "idx", seed="idx")
    assert seed.push_index(registry2, "mirror/app", "idx", seed="idx").digest == index.digest
    child = index.children[0]
    seed.push_manifest(registry2, "mirror/app", "c", child.manifest, child.media_type)
    stats = await prune_through(tmp_path, registry, registry2,
                                {f"{registry.host}/lib/app": f"{registry2.host}/mirror/app"},
                                TagDeleteTransport(untag=False))
    assert stats.prune is not None
    [entry] = stats.prune.repositories
    assert [a.tag for a in entry.deleted] == ["c"] and "put it back for kept index idx" in entry.error
    assert seed.list_tags(registry2, "mirror/app") == ["idx"]
    assert seed.manifest_exists(registry2, "mirror/app", child.digest)
