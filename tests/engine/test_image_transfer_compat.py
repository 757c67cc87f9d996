"""image-transfer's command line and files (``--securityFile``, ``--ruleFile``, ``--ns``, ``--registry``,
``--routines``, ``--retry``, ``--qps``): its users' scripts run unchanged against real registries."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import yaml

from imagesync.cli.main import build_parser, load_image_transfer, main
from imagesync.engine.errors import ConfigError
from imagesync.engine.image_transfer import split_name, translate_rules
from imagesync.engine.rules import expand_rule, parse_rules
from testbed import seed
from testbed.registry import MakeRegistry, RegistryProcess

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "image-transfer"


@pytest.mark.parametrize(("text", "expected"), [
    ("nginx", ("docker.io", "library", "nginx", "")),
    ("demo-ns/nginx:latest", ("docker.io", "demo-ns", "nginx", "latest")),
    ("registry.hub.docker.com/ns1/repo1", ("docker.io", "ns1", "repo1", "")),
    ("ccr.ccs.tencentyun.com/ns/a/b:v1,v2", ("ccr.ccs.tencentyun.com", "ns", "a/b", "v1,v2")),
    ("registry.example.com/app:1", ("registry.example.com", "", "app", "1")),
    ("127.0.0.1:5000/app:1", ("127.0.0.1:5000", "", "app", "1")),  # docker's reading; image-transfer: a Hub ns
])
def test_names_split_as_image_transfer_does(text: str, expected: tuple[str, str, str, str]) -> None:
    name = split_name(text)
    assert (name.registry, name.namespace, name.repo, name.tag) == expected


def test_rules_translate_to_image_syncer_language() -> None:
    images, errors = translate_rules({
        "demo-ns/nginx:latest": "tcr.example.com/demo-ns/nginx:latest",
        "registry.hub.docker.com/library/redis": "tcr.example.com/library/redis",
        "quay.io/coreos/etcd:v1,v2": "tcr.example.com/coreos/etcd:v1,v2",  # the same list: allowed
        "quay.io/team/tools/kubectl:1.30": "",  # default target: everything after the namespace
        "alpine:3.20": "tcr.example.com/base/alpine:stable",  # one tag renamed
        "library/alpine:3.20": "tcr.example.com/copy/alpine",  # the same source as the line above
    }, "ccr.example.com", "default")
    assert errors == []
    assert images == {
        "docker.io/demo-ns/nginx:latest": "tcr.example.com/demo-ns/nginx:latest",
        "docker.io/library/redis": "tcr.example.com/library/redis",
        "quay.io/coreos/etcd:v1,v2": "tcr.example.com/coreos/etcd",
        "quay.io/team/tools/kubectl:1.30": "ccr.example.com/default/tools/kubectl",
        "docker.io/library/alpine:3.20": ["tcr.example.com/base/alpine:stable", "tcr.example.com/copy/alpine"],
    }
    rules, rule_errors = parse_rules(images)
    assert rule_errors == []
    assert {(str(p.source), str(p.target)) for r in rules for p in expand_rule(r, ["latest"])} >= {
        ("docker.io/library/alpine:3.20", "tcr.example.com/base/alpine:stable"),
        ("quay.io/team/tools/kubectl:1.30", "ccr.example.com/default/tools/kubectl:1.30"),
    }


@pytest.mark.parametrize(("rule", "message"), [
    ({"nginx:1": ""}, "no default registry and namespace are set (--registry and --ns)"),
    ({"quay.io/a/b": "x.io/a/b:v1"}, "names no tag"),
    ({"quay.io/a/b:v1,v2": "x.io/a/b:v3"}, "several tags"),
    ({"quay.io/a/b:v1": ["x.io/a/b", "y.io/a/b"]}, "one target string"),
    ({"a/b/c:1": "x.io/a/b"}, "not a registry host"),
    ({"quay.io/a/b:x:y": "x.io/a/b"}, "invalid repository url"),
])
def test_rules_image_transfer_refuses_are_refused(rule: dict[str, object], message: str) -> None:
    images, errors = translate_rules(rule)
    assert images == {} and len(errors) == 1 and message in str(errors[0])


def test_flags_map_to_the_engine_settings() -> None:
    args = build_parser().parse_args([
        "sync", "--securityFile=./registry-secret.yaml", "--ruleFile=./transfer-rule.yaml", "--ns=default",
        "--registry=ccr.ccs.tencentyun.com", "--routines=7", "--retry=3", "--qps=50"])
    assert (args.security_file, args.rule_file, args.namespace, args.registry, args.proc, args.retries, args.qps) \
        == ("./registry-secret.yaml", "./transfer-rule.yaml", "default", "ccr.ccs.tencentyun.com", 7, 3, 50.0)
    defaults = build_parser().parse_args(["sync", "--ruleFile=r.yaml"])
    assert (defaults.namespace, defaults.proc, defaults.retries, defaults.qps) == (None, 5, 2, None)


def test_qps_defaults_to_image_transfers_with_its_files(tmp_path: Path) -> None:
    rules = tmp_path / "transfer-rule.yaml"
    rules.write_text("quay.io/a/b:1: quay.io/c/b\n")
    args = build_parser().parse_args(["sync", f"--ruleFile={rules}"])
    auth, parsed, errors = load_image_transfer(args)
    assert len(auth) == 0 and len(parsed) == 1 and errors == [] and args.qps == 100
    args = build_parser().parse_args(["sync", f"--ruleFile={rules}", "--qps=7"])
    load_image_transfer(args)
    assert args.qps == 7


@pytest.mark.parametrize("argv", [
    ["--securityFile=s.yaml"],
    ["--ruleFile=r.yaml", "--images=i.yaml"],
])
def test_mixing_the_formats_is_refused(argv: list[str]) -> None:
    with pytest.raises(ConfigError):
        load_image_transfer(build_parser().parse_args(["sync", *argv]))


def test_example_files_load() -> None:
    args = argparse.Namespace(security_file=str(EXAMPLES / "registry-secret.yaml"),
                              rule_file=str(EXAMPLES / "transfer-rule.yaml"), auth=None, images=None, config=None,
                              registry="ccr.ccs.tencentyun.com", namespace="default", qps=None)
    auth, rules, errors = load_image_transfer(args)
    assert errors == [] and len(rules) == 4 and len(auth) == 4
    assert {str(r.target.repo) for r in rules} >= {"ccr.ccs.tencentyun.com/default/busybox"}


def test_an_image_transfer_invocation_syncs(registry: RegistryProcess, make_registry: MakeRegistry,
                                            tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """README example 1, flag for flag: the source is plain HTTP (insecure: true, as image-transfer's users
    write it), the target HTTPS with a self-signed certificate and Basic auth (insecure: true as well)."""
    source, target = registry, make_registry("basic+tls")
    seeded = {
        "app:v1": seed.push_image(source, "team/app", "v1", seed="app1"),
        "tool:1.0": seed.push_image(source, "team/tool", "1.0", seed="tool1"),
        "tool:2.0": seed.push_image(source, "team/tool", "2.0", seed="tool2"),
        "web:v1": seed.push_image(source, "team/web", "v1", seed="web1"),
        "web:v2": seed.push_image(source, "team/web", "v2", seed="web2"),
        "lonely:1": seed.push_image(source, "lonely", "1", seed="lonely"),
    }
    seed.push_image(source, "team/web", "v3", seed="web3")  # not listed: not copied
    monkeypatch.chdir(tmp_path)
    Path("registry-secret.yaml").write_text(yaml.safe_dump({
        source.host: {"insecure": True},
        target.host: {"username": target.username, "password": target.password, "insecure": True}}))
    Path("transfer-rule.yaml").write_text(
        "## tag, default target\n"
        f"{source.host}/team/app:v1: ''\n"
        "## repo\n"
        f"{source.host}/team/tool: {target.host}/tools/tool\n"
        "## several tags\n"
        f"{source.host}/team/web:v1,v2: {target.host}/web/web\n"
        "## registry/repo (no namespace), renamed tag\n"
        f"{source.host}/lonely:1: {target.host}/misc/lonely:one\n")

    code = main(["--securityFile=./registry-secret.yaml", "--ruleFile=./transfer-rule.yaml",
                 "--ns=default", f"--registry={target.host}", "--routines=5", "--retry=3",
                 "--result-file=result.json"])
    result = json.loads(Path("result.json").read_text())
    assert code == 0, result
    expected = {("default/app", "v1"): "app:v1", ("tools/tool", "1.0"): "tool:1.0", ("tools/tool", "2.0"): "tool:2.0",
                ("web/web", "v1"): "web:v1", ("web/web", "v2"): "web:v2", ("misc/lonely", "one"): "lonely:1"}
    for (repo, tag), key in expected.items():
        assert seed.get_manifest(target, repo, tag)[2] == seeded[key].digest, (repo, tag)
    assert seed.list_tags(target, "web/web") == ["v1", "v2"]
