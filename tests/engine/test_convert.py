"""``imagesync convert``: manifests that the CRD schemas and the operator accept, passwords in Secrets only,
and the converted job copying the same image pairs as the original files (by expansion, and live through the
worker against real registries)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from controller.test_schemas import K8S_VERSION, validate_cr

from imagesync.cli.convert import PLACEHOLDER, k8s_name
from imagesync.cli.main import main
from imagesync.controller.credentials import auth_document, resolve_credential
from imagesync.controller.render import worker_options
from imagesync.controller.spec import parse_job_spec
from imagesync.engine.config import load_auth, load_images, load_legacy_config
from imagesync.engine.image_transfer import load_rules as load_transfer_rules
from imagesync.engine.rules import Rule, expand_rule, parse_rules, source_needs_tag_list
from imagesync.worker.main import run_worker
from testbed import seed
from testbed.registry import RegistryProcess

ROOT = Path(__file__).resolve().parents[2]
SYNCER = ROOT / "examples" / "image-syncer"
TRANSFER = ROOT / "examples" / "image-transfer"

# Passwords nobody would write into a rule or a name, so that finding one in a text means a leak.
MADE_UP_AUTH: dict[str, dict[str, Any]] = {
    "quay.io": {"username": "quay-robot", "password": "Pw-quay-7f3a9c", "insecure": True},
    "quay.io/coreos": {"username": "coreos-bot", "password": "Pw-coreos-2b8e41"},
    "registry.example.com:5000": {"username": "ci-pusher", "password": "Pw-$ecret'\"with: yaml # chars",
                                  "plainHTTP": True},
    "docker.io": {"username": "hubuser", "password": "0123"},  # YAML would read 0123 unquoted as a number
}
MADE_UP_IMAGES = {
    "quay.io/coreos/kube-rbac-proxy:v1.1,v1.2": "registry.example.com:5000/mirror/kube-rbac-proxy",
    "docker.io/library/nginx:/^1\\.2[0-9]$/": ["registry.example.com:5000/mirror/nginx",
                                               "registry.example.com:5000/backup/nginx"],
    "quay.io/prometheus/node-exporter": "",
}
MADE_UP_PASSWORDS = [str(e["password"]) for e in MADE_UP_AUTH.values()]


def convert_output(capsys: pytest.CaptureFixture[str], *argv: str) -> list[dict[str, Any]]:
    code = main(["convert", *argv])
    out, err = capsys.readouterr()
    assert code == 0, err
    return [doc for doc in yaml.safe_load_all(out) if doc]


def by_kind(documents: Sequence[Mapping[str, Any]], kind: str) -> list[Mapping[str, Any]]:
    return [doc for doc in documents if doc["kind"] == kind]


def strings(value: Any) -> list[str]:
    """Every key and string value of a document, nested."""
    if isinstance(value, Mapping):
        return [*(str(k) for k in value), *(s for v in value.values() for s in strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in strings(v)]
    return [value] if isinstance(value, str) else []


def write_made_up(tmp_path: Path, form: str = "yaml") -> tuple[Path, Path]:
    auth, images = tmp_path / f"auth.{form}", tmp_path / f"images.{form}"
    for path, document in ((auth, MADE_UP_AUTH), (images, MADE_UP_IMAGES)):
        path.write_text(json.dumps(document, indent=2) if form == "json" else yaml.safe_dump(document))
    return auth, images


def transfer_pair(tmp_path: Path) -> tuple[Path, Path]:
    """A made-up image-transfer pair of files, in its own naming (Docker Hub short names, an empty target)."""
    security, rules = tmp_path / "registry-secret.yaml", tmp_path / "transfer-rule.yaml"
    security.write_text(yaml.safe_dump({
        "ccr.ccs.tencentyun.com": {"username": "1000001", "password": "Pw-ccr-5d1e0f", "insecure": True},
        "image-transfer.tencentcloudcr.com": {"username": "tcr$robot", "password": "Pw-tcr-a9c2d7"},
        "registry.hub.docker.com": {"username": "hub", "password": "Pw-hub-3e7b11"},
    }))
    rules.write_text(
        "demo-ns/nginx:latest : image-transfer.tencentcloudcr.com/demo-ns/nginx:latest\n"
        "registry.hub.docker.com/library/redis: image-transfer.tencentcloudcr.com/library/redis\n"
        "quay.io/coreos/etcd:v3.5.0,v3.5.1: image-transfer.tencentcloudcr.com/coreos/etcd\n"
        "alpine:3.20: image-transfer.tencentcloudcr.com/base/alpine:stable\n"
        "quay.io/team/tools/kubectl:1.30: ''\n")
    return security, rules


INPUTS = {
    "syncer-json": ["--auth", str(SYNCER / "auth.json"), "--images", str(SYNCER / "images.json")],
    "syncer-yaml": ["--auth", str(SYNCER / "auth.yaml"), "--images", str(SYNCER / "images.yaml")],
    "syncer-legacy": ["--config", str(SYNCER / "config.json")],
    "transfer-example": ["--securityFile", str(TRANSFER / "registry-secret.yaml"),
                         "--ruleFile", str(TRANSFER / "transfer-rule.yaml"),
                         "--registry=ccr.ccs.tencentyun.com", "--ns=default"],
}


@pytest.mark.parametrize("secrets", [True, False], ids=["secrets", "no-secrets"])
@pytest.mark.parametrize("name", sorted(INPUTS))
def test_output_is_valid_for_the_crds_the_api_server_and_the_operator(
        name: str, secrets: bool, capsys: pytest.CaptureFixture[str]) -> None:
    flags = [] if secrets else ["--no-secrets"]
    documents = convert_output(capsys, *INPUTS[name], "--parallelism=2", *flags)
    jobs = by_kind(documents, "ImageSyncJob")
    assert len(jobs) == 1
    credentials = by_kind(documents, "RegistryCredential")
    secret_docs = by_kind(documents, "Secret")
    assert credentials and secret_docs and len(documents) == 1 + len(credentials) + len(secret_docs)
    for doc in documents:
        assert "namespace" not in doc["metadata"], "no namespace unless --namespace asks for one"
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", doc["metadata"]["name"])
        if doc["kind"] == "Secret":
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
            assert doc["metadata"]["labels"] == {"imagesync.dev/credential": "true"}  # the operator's opt-in
        else:
            validate_cr(dict(doc))
    spec = parse_job_spec(jobs[0]["spec"])
    assert spec.parallelism == 2
    assert set(spec.credentials or ()) == {c["metadata"]["name"] for c in credentials}
    referenced = {c["spec"]["secretRef"]["name"] for c in credentials if "secretRef" in c["spec"]}
    assert referenced == {s["metadata"]["name"] for s in secret_docs}


def test_namespace_and_name_when_asked(capsys: pytest.CaptureFixture[str]) -> None:
    documents = convert_output(capsys, *INPUTS["syncer-yaml"], "--namespace", "mirror", "--name", "From README")
    assert {doc["metadata"]["namespace"] for doc in documents} == {"mirror"}
    assert by_kind(documents, "ImageSyncJob")[0]["metadata"]["name"] == "from-readme"


@pytest.mark.parametrize("form", ["yaml", "json"])
def test_passwords_only_in_secrets_and_every_credential_survives_the_operator(
        form: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    auth_file, images_file = write_made_up(tmp_path, form)
    documents = convert_output(capsys, "--auth", str(auth_file), "--images", str(images_file),
                               "--default-registry", "registry.example.com:5000", "--default-namespace", "mirror")
    in_secrets = []
    for doc in documents:
        if doc["kind"] == "Secret":
            in_secrets.append(doc["stringData"]["password"])
        else:
            found = [p for p in MADE_UP_PASSWORDS for text in strings(doc) if p in text]
            assert not found, f"a password in a {doc['kind']}"
    assert sorted(in_secrets) == sorted(MADE_UP_PASSWORDS)
    # What the operator makes of each RegistryCredential and its Secret is the original auth entry.
    secrets = {s["metadata"]["name"]: s for s in by_kind(documents, "Secret")}
    resolved = [resolve_credential(c, secrets.get(c["spec"].get("secretRef", {}).get("name", "")))
                for c in by_kind(documents, "RegistryCredential")]
    original = load_auth(auth_file)
    assert {r.registry: (r.username, r.password, r.insecure, r.plain_http) for r in resolved} == {
        key: (e["username"], e["password"], e.get("insecure", False), e.get("plainHTTP", False))
        for key, e in MADE_UP_AUTH.items()}
    assert len(original) == len(resolved)


def test_no_secrets_output_holds_no_credential(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    auth_file, images_file = write_made_up(tmp_path)
    code = main(["convert", "--auth", str(auth_file), "--images", str(images_file), "--no-secrets",
                 "--default-registry", "registry.example.com:5000", "--default-namespace", "mirror"])
    out, err = capsys.readouterr()
    assert code == 0
    for value in [*MADE_UP_PASSWORDS, *(str(e["username"]) for e in MADE_UP_AUTH.values())]:
        assert value not in out and value not in err
    secrets = by_kind(list(yaml.safe_load_all(out)), "Secret")
    assert len(secrets) == len(MADE_UP_AUTH)
    assert all(s["stringData"] == {"username": PLACEHOLDER, "password": PLACEHOLDER} for s in secrets)

    security, rules = transfer_pair(tmp_path)
    code = main(["convert", "--securityFile", str(security), "--ruleFile", str(rules), "--no-secrets",
                 "--registry", "ccr.ccs.tencentyun.com", "--ns", "default"])
    out, err = capsys.readouterr()
    assert code == 0 and "Pw-" not in out + err and "tcr$robot" not in out


def test_output_dir_writes_one_file_per_kind(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "gitops"
    out_dir.mkdir()
    assert main(["convert", *INPUTS["syncer-yaml"], "--output-dir", str(out_dir), "--name", "mirror"]) == 0
    assert capsys.readouterr().out == ""
    files = sorted(p.name for p in out_dir.iterdir())
    assert files == ["mirror-imagesyncjob.yaml", "mirror-registrycredentials.yaml", "mirror-secrets.yaml"]
    assert (out_dir / "mirror-secrets.yaml").stat().st_mode & 0o077 == 0
    kinds = {p.name: {d["kind"] for d in yaml.safe_load_all(p.read_text()) if d} for p in out_dir.iterdir()}
    assert kinds["mirror-secrets.yaml"] == {"Secret"} and kinds["mirror-imagesyncjob.yaml"] == {"ImageSyncJob"}


@pytest.mark.parametrize(("argv", "message"), [
    (["--images", "{images}"], "empty and no default registry"),
    (["--auth", "{auth}"], "no rules given"),
    (["--images", "{images}", "--ruleFile", "{images}"], "not both"),
    (["--securityFile", "{auth}"], "--securityFile needs --ruleFile"),
])
def test_refusals(argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    auth_file, images_file = write_made_up(tmp_path)
    code = main(["convert", *(a.format(images=images_file, auth=auth_file) for a in argv)])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert message in err
    with pytest.raises(SystemExit):
        main(["convert", "--images", str(images_file), "--parallelism", "101"])
    assert "between 1 and 100" in capsys.readouterr().err


def test_names_are_dns_subdomains() -> None:
    assert k8s_name("job", "registry.example.com:5000/Team") == "job-registry-example-com-5000-team"
    long = k8s_name("x" * 300)
    assert len(long) == 253 and re.fullmatch(r"[a-z0-9-]+", long)


# --- round trip: the converted job expands to the same image pairs as the original files ---------------------

FAKE_TAGS = ["1.19", "1.20", "1.21", "latest", "v1.0", "v1.1", "v3.5.0"]


def pairs(rules: Sequence[Rule]) -> set[tuple[str, str]]:
    found = set()
    for rule in rules:
        tags = FAKE_TAGS if source_needs_tag_list(rule) else None
        found |= {(str(p.source), str(p.target)) for p in expand_rule(rule, tags)}
    return found


def job_pairs(documents: Sequence[Mapping[str, Any]]) -> set[tuple[str, str]]:
    spec = parse_job_spec(by_kind(documents, "ImageSyncJob")[0]["spec"])
    rules, errors = parse_rules(spec.images, spec.default_registry, spec.default_namespace)
    assert errors == []
    return pairs(rules)


@pytest.mark.parametrize("name", ["syncer-json", "syncer-yaml", "syncer-legacy"])
def test_round_trip_image_syncer_examples(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    documents = convert_output(capsys, *INPUTS[name])
    if name == "syncer-legacy":
        images: Mapping[str, object] = load_legacy_config(SYNCER / "config.json")[1]
    else:
        images = load_images(SYNCER / f"images.{name.rsplit('-', 1)[1]}")
    rules, errors = parse_rules(images)
    assert errors == [] and rules
    assert job_pairs(documents) == pairs(rules)


def test_round_trip_with_default_target_and_regex(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    auth_file, images_file = write_made_up(tmp_path)
    documents = convert_output(capsys, "--auth", str(auth_file), "--images", str(images_file),
                               "--default-registry", "registry.example.com:5000", "--default-namespace", "mirror")
    rules, errors = parse_rules(load_images(images_file), "registry.example.com:5000", "mirror")
    assert errors == []
    expected = pairs(rules)
    assert ("docker.io/library/nginx:1.20", "registry.example.com:5000/backup/nginx:1.20") in expected
    assert ("quay.io/prometheus/node-exporter:latest", "registry.example.com:5000/mirror/node-exporter:latest") \
        in expected
    assert job_pairs(documents) == expected


def test_round_trip_image_transfer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    security, rule_file = transfer_pair(tmp_path)
    documents = convert_output(capsys, "--securityFile", str(security), "--ruleFile", str(rule_file),
                               "--registry", "ccr.ccs.tencentyun.com", "--ns", "default", "--routines=8", "--retry=3")
    rules, errors = load_transfer_rules(rule_file, "ccr.ccs.tencentyun.com", "default")
    assert errors == []
    expected = pairs(rules)
    assert expected >= {
        ("docker.io/demo-ns/nginx:latest", "image-transfer.tencentcloudcr.com/demo-ns/nginx:latest"),
        ("docker.io/library/alpine:3.20", "image-transfer.tencentcloudcr.com/base/alpine:stable"),
        ("quay.io/coreos/etcd:v3.5.1", "image-transfer.tencentcloudcr.com/coreos/etcd:v3.5.1"),
        # image-transfer's default target keeps everything after the namespace: tools/kubectl
        ("quay.io/team/tools/kubectl:1.30", "ccr.ccs.tencentyun.com/default/tools/kubectl:1.30"),
    }
    assert job_pairs(documents) == expected
    spec = by_kind(documents, "ImageSyncJob")[0]["spec"]
    assert (spec["concurrency"], spec["retries"], spec["qps"]) == (8, 3, 100)  # qps: image-transfer's default


# --- live: the converted job, run by the real worker, copies what `imagesync sync` plans for the original ----


def dry_run(capsys: pytest.CaptureFixture[str], *argv: str) -> set[str]:
    """The pairs a dry run plans, as "source -> target" lines (from its JSON plan)."""
    code = main(["sync", *argv, "--dry-run", "--output", "json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return {f"{entry['source']} -> {entry['target']}" for entry in json.loads(out)["entries"]}


def test_live_round_trip_through_the_worker(registry: RegistryProcess, basic_registry: RegistryProcess,
                                            tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source, target = registry, basic_registry
    images = {f"{source.host}/team/app": f"{target.host}/mirror/app",
              f"{source.host}/team/tool:1.0,2.0": [f"{target.host}/mirror/tool", f"{target.host}/backup/tool"],
              f"{source.host}/team/web:/^v[0-9]$/": ""}
    seeded = {
        ("team/app", "v1"): seed.push_image(source, "team/app", "v1", seed="app1"),
        ("team/app", "v2"): seed.push_image(source, "team/app", "v2", seed="app2"),
        ("team/tool", "1.0"): seed.push_image(source, "team/tool", "1.0", seed="tool1"),
        ("team/tool", "2.0"): seed.push_image(source, "team/tool", "2.0", seed="tool2"),
        ("team/web", "v1"): seed.push_image(source, "team/web", "v1", seed="web1"),
    }
    seed.push_image(source, "team/web", "v10", seed="web10")  # not matched by the regex
    auth = {source.host: {"plainHTTP": True},
            target.host: {"username": target.username, "password": target.password, "plainHTTP": True}}
    auth_file, images_file = tmp_path / "auth.yaml", tmp_path / "images.yaml"
    auth_file.write_text(yaml.safe_dump(auth))
    images_file.write_text(yaml.safe_dump(images))
    defaults = ["--registry", target.host, "--namespace", "defaults"]
    planned = dry_run(capsys, "--auth", str(auth_file), "--images", str(images_file), *defaults)
    assert len(planned) == 7

    documents = convert_output(capsys, "--auth", str(auth_file), "--images", str(images_file),
                               "--default-registry", target.host, "--default-namespace", "defaults")
    # What the operator would put into the run's Secret: the resolved credentials, the rules, the options.
    secrets = {s["metadata"]["name"]: s for s in by_kind(documents, "Secret")}
    resolved = [resolve_credential(c, secrets.get(c["spec"].get("secretRef", {}).get("name", "")))
                for c in by_kind(documents, "RegistryCredential")]
    spec = parse_job_spec(by_kind(documents, "ImageSyncJob")[0]["spec"])
    config_dir = tmp_path / "run-secret"
    config_dir.mkdir()
    document = auth_document(resolved)
    (config_dir / "auth.yaml").write_text(yaml.safe_dump(document.auth))
    (config_dir / "images.yaml").write_text(yaml.safe_dump(dict(spec.images)))
    (config_dir / "options.json").write_text(json.dumps(worker_options(spec)))
    # The job's own plan, from the run Secret's files, is the original's plan.
    assert dry_run(capsys, "--auth", str(config_dir / "auth.yaml"), "--images", str(config_dir / "images.yaml"),
                   "--registry", target.host, "--namespace", "defaults") == planned

    assert asyncio.run(run_worker({"IMAGESYNC_CONFIG_DIR": str(config_dir)})) == 0
    capsys.readouterr()
    arrived = set()
    for line in planned:
        src, dst = line.split(" -> ")
        (repo, tag), (dst_repo, dst_tag) = (r.split("/", 1)[1].rsplit(":", 1) for r in (src, dst))
        digest = seed.get_manifest(target, dst_repo, dst_tag)[2]
        assert digest == seeded[(repo, tag)].digest
        arrived.add(dst)
    assert f"{target.host}/defaults/web:v1" in arrived and len(arrived) == 7
    assert seed.list_tags(target, "defaults/web") == ["v1"]
