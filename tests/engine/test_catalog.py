"""Whole registries and namespaces as a source (issue 8 point 2): ``host/`` and ``host/team/`` rules list
repositories through ``_catalog`` (paged), select them with ``repositories: {include, exclude}`` globs and
map each to the target prefix under the same relative path."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from cli_helpers import auth_for, run_sync

from imagesync.controller.spec import parse_job_spec
from imagesync.engine.errors import RegistryError
from imagesync.engine.reference import Repository
from imagesync.engine.registry import RegistryClient
from imagesync.engine.rules import expand_prefix_rule, glob_match, parse_rules
from imagesync.engine.transport import Endpoint, RegistryHTTP
from testbed import seed
from testbed.registry import MakeRegistry, RegistryProcess

# Two namespaces (one nested deeper), plus a repository outside both.
REPOSITORIES = ["team/app", "team/app-old", "team/tools/lint", "team/tools/fmt", "team/web",
                "infra/db", "infra/cache", "solo"]


def seed_repositories(registry: RegistryProcess, repositories: list[str] = REPOSITORIES) -> None:
    for repo in repositories:
        image = seed.push_image(registry, repo, "1.0.0", seed="catalog")
        for tag in ("1.1.0", "2.0.0-rc.1"):
            seed.push_manifest(registry, repo, tag, image.manifest, image.media_type)


def auth(*registries: RegistryProcess) -> dict[str, object]:
    return auth_for(*registries)


# -- pure parts ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("pattern", "path", "expected"), [
    ("**", "a/b/c", True), ("*", "a", True), ("*", "a/b", False), ("tools/**", "tools", True),
    ("tools/**", "tools/x/y", True), ("app-*", "app-old", True), ("app-*", "app", False),
    ("a?c", "abc", True), ("**/lint", "tools/lint", True), ("**/lint", "lint", True),
    ("*a*a*a*a*a*a*a*b", "a" * 250, False),
])
def test_repository_globs(pattern: str, path: str, expected: bool) -> None:
    assert glob_match(pattern, path) is expected


def test_prefix_rules_parse_and_expand() -> None:
    rules, errors = parse_rules({
        "src.example.com/team/": {"target": "dst.example.com/mirror/",
                                  "repositories": {"include": ["app*", "tools/**"], "exclude": "*-old"},
                                  "latest": 1},
        "src.example.com/": "dst.example.com/",
    })
    assert errors == []
    catalog = ["team/app", "team/app-old", "team/tools/lint", "team/web", "teamx/app", "infra/db"]
    namespace = expand_prefix_rule(rules[0], catalog)
    assert [(str(r.source.repo), str(r.target.repo)) for r in namespace] == [
        ("src.example.com/team/app", "dst.example.com/mirror/app"),
        ("src.example.com/team/tools/lint", "dst.example.com/mirror/tools/lint"),
    ]
    assert all(r.source.tag_filter == rules[0].source.tag_filter for r in namespace)
    whole = expand_prefix_rule(rules[1], catalog)
    assert [str(r.target.repo) for r in whole] == [f"dst.example.com/{p}" for p in sorted(catalog)]


@pytest.mark.parametrize(("images", "message"), [
    ({"src.example.com/team/": "dst.example.com/mirror"}, "end it with '/'"),
    ({"src.example.com/team/": "dst.example.com/mirror:v1/"}, "invalid"),
    ({"team/": "dst.example.com/"}, "names its registry"),
    ({"src.example.com/team/:/^v/": "dst.example.com/"}, "cannot follow a registry or namespace prefix"),
    ({"src.example.com/app": "dst.example.com/mirror/"}, "needs a registry or namespace source"),
    ({"src.example.com/app": {"target": "dst.example.com/app", "repositories": {"include": "x"}}},
     "use it with a source ending in '/'"),
    ({"src.example.com/": {"target": "dst.example.com/", "repositories": {"only": "x"}}}, "unknown key"),
    ({"src.example.com/": {"target": "dst.example.com/", "repositories": {"include": "A*"}}},
     "is not a repository glob"),
    ({"src.example.com/": {"target": "dst.example.com/", "repositories": {"include": []}}}, "non-empty"),
])
def test_malformed_prefix_rules_are_named(images: dict[str, object], message: str) -> None:
    rules, errors = parse_rules(images)
    assert rules == [] and len(errors) == 1 and message in errors[0].reason, errors


def test_default_target_of_a_prefix_rule() -> None:
    rules, errors = parse_rules({"src.example.com/team/": None}, "dst.example.com", "mirror")
    assert errors == [] and rules[0].target.prefix and str(rules[0].target.repo) == "dst.example.com/mirror"


def test_an_imagesyncjob_takes_a_prefix_rule() -> None:
    spec = parse_job_spec({"images": {"src.example.com/team/": {
        "target": "dst.example.com/mirror/", "repositories": {"exclude": ["legacy/**"]}}}})
    assert spec.repositories == (Repository("src.example.com", "team"), Repository("dst.example.com", "mirror"))


# -- live ----------------------------------------------------------------------------------------------


def test_namespace_rule_with_include_and_exclude(registry: RegistryProcess, registry2: RegistryProcess,
                                                 tmp_path: Path) -> None:
    seed_repositories(registry)
    images = {f"{registry.host}/team/": {
        "target": f"{registry2.host}/mirror/",
        "repositories": {"include": ["app*", "tools/**"], "exclude": ["*-old", "tools/fmt"]},
        "semver": ">=1.0"}}
    code, result = run_sync(tmp_path, images, auth(registry, registry2))
    assert code == 0, result
    assert sorted(seed.list_repositories(registry2)) == ["mirror/app", "mirror/tools/lint"]
    for repo in ("mirror/app", "mirror/tools/lint"):
        assert sorted(seed.list_tags(registry2, repo)) == ["1.0.0", "1.1.0"]  # the tag filter, per repository


def test_registry_rule_with_a_prefix_rewrite_and_paging(registry: RegistryProcess, registry2: RegistryProcess,
                                                        tmp_path: Path) -> None:
    seed_repositories(registry)
    mark = registry.log_mark()

    async def pages() -> list[str]:
        http = RegistryHTTP(Endpoint(host=registry.host, plain_http=True))
        try:
            return list(await RegistryClient(http).list_repositories(page_size=3))
        finally:
            await http.aclose()

    assert sorted(asyncio.run(pages())) == sorted(REPOSITORIES)
    catalog_requests = [r for r in registry.request_log(mark) if r.path == "/v2/_catalog"]
    assert len(catalog_requests) >= 3 and all("n=3" in r.query for r in catalog_requests)
    assert any("last=" in r.query for r in catalog_requests)

    code, result = run_sync(tmp_path, {f"{registry.host}/": f"{registry2.host}/old/"},
                            auth(registry, registry2))
    assert code == 0, result
    assert sorted(seed.list_repositories(registry2)) == sorted(f"old/{r}" for r in REPOSITORIES)
    assert sorted(seed.list_tags(registry2, "old/team/tools/lint")) == ["1.0.0", "1.1.0", "2.0.0-rc.1"]


def test_a_refused_catalog_gives_one_clear_error(make_registry: MakeRegistry, registry2: RegistryProcess,
                                                 tmp_path: Path) -> None:
    # Token auth, anonymous pull only: the token server grants registry:catalog:* to no anonymous client.
    source = make_registry("token", anonymous="pull")
    seed.push_image(source, "team/app", "1.0.0", seed="refused")
    auth_file = auth(registry2)
    auth_file[source.host] = {"plainHTTP": True} if not source.tls else {"caFile": str(source.ca_file)}
    code, result = run_sync(tmp_path, {f"{source.host}/team/": f"{registry2.host}/mirror/"}, auth_file)
    assert code == 1, result
    (failure,) = result["failedImages"]
    assert source.host in failure["reason"] and "refuses to list its repositories" in failure["reason"]
    assert "401" in failure["reason"] or "403" in failure["reason"]
    assert seed.list_repositories(registry2) == []


def test_a_registry_without_a_catalog_route(registry2: RegistryProcess, tmp_path: Path) -> None:
    # docker-registry has no switch to turn _catalog off: the request goes to a route it does not have,
    # which it answers 404 as a registry without the catalog does.
    async def refused() -> str:
        http = RegistryHTTP(Endpoint(host=registry2.host, plain_http=True))
        client = RegistryClient(http)
        client.http.request = _answer_404(client.http.request)  # type: ignore[method-assign]
        try:
            await client.list_repositories()
        except RegistryError as exc:
            return str(exc)
        finally:
            await http.aclose()
        return ""

    message = asyncio.run(refused())
    assert registry2.host in message and "does not serve the repository catalog" in message and "404" in message


def _answer_404(request):  # type: ignore[no-untyped-def]
    async def wrapped(method: str, path: str, **kwargs):  # type: ignore[no-untyped-def]
        return await request(method, path.replace("/v2/_catalog", "/v2/_no_catalog"), **kwargs)
    return wrapped
