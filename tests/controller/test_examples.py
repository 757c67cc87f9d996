"""examples/*.yaml as a user applies them (`kubectl apply -n TEAM -f examples/...`): valid against the CRD
schemas and Kubernetes' own, accepted by the operator's spec parser and rule parser, free of a pinned
namespace, with every RegistryCredential, Secret and ConfigMap they name shipped alongside, and one
ImageSyncJob per scenario of the seeds (image-syncer's and image-transfer's documentation)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from test_schemas import CRDS, K8S_VERSION, validate_cr

from imagesync.controller.credentials import DOCKERCONFIGJSON, resolve_credential
from imagesync.controller.spec import JobSpec, parse_job_spec
from imagesync.engine.config import auth_key_matches
from imagesync.engine.reference import Repository
from imagesync.engine.rules import Rule, expand_rule, parse_rules, source_needs_tag_list

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES_DIR = ROOT / "examples"
PLACEHOLDER = "REPLACE-ME"


def example_documents() -> list[tuple[str, dict[str, Any]]]:
    """(file name, object) for every document of every top-level examples/*.yaml."""
    found = []
    for path in sorted(EXAMPLES_DIR.glob("*.yaml")):
        found += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return found


DOCS = example_documents()
BY_KIND: dict[str, dict[str, dict[str, Any]]] = {}
for _file, _doc in DOCS:
    BY_KIND.setdefault(_doc["kind"], {})[_doc["metadata"]["name"]] = _doc
JOBS = [(file, doc) for file, doc in DOCS if doc["kind"] == "ImageSyncJob"]
REGCREDS = BY_KIND.get("RegistryCredential", {})
SECRETS = BY_KIND.get("Secret", {})
CONFIGMAPS = BY_KIND.get("ConfigMap", {})


def doc_id(item: tuple[str, dict[str, Any]]) -> str:
    file, doc = item
    return f"{file}:{doc['kind']}/{doc['metadata']['name']}"


def rules_of(spec: JobSpec) -> list[Rule]:
    rules, errors = parse_rules(spec.images, spec.default_registry, spec.default_namespace)
    assert errors == []
    return rules


def scenario_of(file: str) -> str:
    """imagesyncjob-<scenario>.yaml -> <scenario>; imagesyncjob.yaml (the overview) -> overview."""
    return file.removesuffix(".yaml").removeprefix("imagesyncjob").removeprefix("-") or "overview"


# --- every document -----------------------------------------------------------------------------------


@pytest.mark.parametrize("item", DOCS, ids=doc_id)
def test_no_example_pins_a_namespace(item: tuple[str, dict[str, Any]]) -> None:
    """`kubectl apply -n TEAM` sets it; a pinned one fails (namespaces "platform" not found) or conflicts."""
    _, doc = item
    assert "namespace" not in doc["metadata"]


@pytest.mark.parametrize("item", DOCS, ids=doc_id)
def test_every_example_document_is_valid(item: tuple[str, dict[str, Any]]) -> None:
    _, doc = item
    assert doc["kind"] in {"ImageSyncJob", "RegistryCredential", "Secret", "ConfigMap"}
    if doc["kind"] in CRDS:
        validate_cr(doc)
    else:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_example_names_are_unique_per_kind() -> None:
    """`kubectl apply -f examples/` must not let one file overwrite another's object."""
    keys = [(doc["kind"], doc["metadata"]["name"]) for _, doc in DOCS]
    assert len(keys) == len(set(keys)), sorted(k for k in keys if keys.count(k) > 1)


# --- ImageSyncJobs ------------------------------------------------------------------------------------


@pytest.mark.parametrize("item", JOBS, ids=doc_id)
def test_every_job_parses_and_its_rules_expand(item: tuple[str, dict[str, Any]]) -> None:
    _, doc = item
    spec = parse_job_spec(doc["spec"])
    rules = rules_of(spec)
    assert len(rules) >= len(spec.images)
    for rule in rules:
        tags = ["latest", "1.0", "v2.53.1", "v3.1.0", "v0.27.0", "1.27.3", "7.4.1"]
        pairs = expand_rule(rule, tags if source_needs_tag_list(rule) else None)
        assert all(pair.target.repo.registry for pair in pairs)
    # Parallel shards beyond the number of rules would idle (and a CEL rule may reject them).
    assert spec.parallelism <= len(spec.images)


@pytest.mark.parametrize("item", JOBS, ids=doc_id)
def test_every_credential_a_job_names_is_shipped_and_applies(item: tuple[str, dict[str, Any]]) -> None:
    _, doc = item
    spec = parse_job_spec(doc["spec"])
    names = list(spec.credentials or [])
    missing = [name for name in names if name not in REGCREDS]
    assert missing == [], f"no RegistryCredential example named {missing}"
    for name in names:  # a named credential that applies to none of the job's registries is a typo
        key = REGCREDS[name]["spec"]["registry"]
        assert any(auth_key_matches(key, repo) for repo in spec.repositories), f"{name} ({key}) serves nothing"
    # Every target is pushed with a credential: a named one, or (none named) one of the namespace.
    usable = [REGCREDS[n] for n in names] if spec.credentials is not None else list(REGCREDS.values())
    for rule in rules_of(spec):
        assert any(auth_key_matches(c["spec"]["registry"], rule.target.repo) for c in usable), \
            f"no credential for the target {rule.target.repo}"


@pytest.mark.parametrize("item", JOBS, ids=doc_id)
def test_every_job_file_has_a_header_naming_what_it_expects(item: tuple[str, dict[str, Any]]) -> None:
    file, doc = item
    text = (EXAMPLES_DIR / file).read_text()
    header = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    assert text.startswith("# ") and "kubectl apply -n TEAM" in header
    for name in parse_job_spec(doc["spec"]).credentials or []:
        assert name in header, f"{file}: the header does not name the RegistryCredential {name}"
        secret = (REGCREDS[name]["spec"].get("secretRef") or {}).get("name")
        assert secret is None or secret in header, f"{file}: the header does not name the Secret {secret}"


# --- RegistryCredentials, Secrets, ConfigMaps ---------------------------------------------------------


@pytest.mark.parametrize("name", sorted(REGCREDS))
def test_every_registry_credential_resolves_with_the_shipped_secret(name: str) -> None:
    """Through the operator's own resolver: the Secret exists, has the right keys (a dockerconfigjson has
    an entry for this registry), the CA bundle's ConfigMap or Secret exists with its key."""
    spec = REGCREDS[name]["spec"]
    secret = None
    if spec.get("secretRef"):
        secret = SECRETS.get(spec["secretRef"]["name"])
        assert secret is not None, f"{name}: no Secret example named {spec['secretRef']['name']}"
    bundle = spec.get("caBundle") or {}
    ca_source = None
    if bundle.get("configMapKeyRef"):
        ca_source = CONFIGMAPS.get(bundle["configMapKeyRef"]["name"])
    elif bundle.get("secretKeyRef"):
        ca_source = SECRETS.get(bundle["secretKeyRef"]["name"])
    if bundle and not bundle.get("inline"):
        assert ca_source is not None, f"{name}: the caBundle's ConfigMap/Secret is not among the examples"
    resolved = resolve_credential(REGCREDS[name], secret, ca_source)
    if secret is not None:
        assert resolved.username and resolved.password == PLACEHOLDER


@pytest.mark.parametrize("name", sorted(SECRETS))
def test_every_secret_is_an_obvious_placeholder_in_plain_sight(name: str) -> None:
    """Passwords are clearly fake, in stringData (not base64 `data`, which hides what a user must replace)."""
    secret = SECRETS[name]
    assert "data" not in secret
    values = secret["stringData"]
    if secret["type"] == DOCKERCONFIGJSON:
        auths = json.loads(values[".dockerconfigjson"])["auths"]
        assert auths and all(entry["password"] == PLACEHOLDER for entry in auths.values())
    else:
        assert values["password"] == PLACEHOLDER
    header = (EXAMPLES_DIR / next(f for f, d in DOCS if d is secret)).read_text().splitlines()[0]
    assert "Placeholder" in header


def test_every_secret_and_configmap_is_used_by_a_registry_credential() -> None:
    used: set[tuple[str, str]] = set()
    for regcred in REGCREDS.values():
        spec = regcred["spec"]
        if spec.get("secretRef"):
            used.add(("Secret", spec["secretRef"]["name"]))
        bundle = spec.get("caBundle") or {}
        if bundle.get("secretKeyRef"):
            used.add(("Secret", bundle["secretKeyRef"]["name"]))
        if bundle.get("configMapKeyRef"):
            used.add(("ConfigMap", bundle["configMapKeyRef"]["name"]))
    shipped = {("Secret", n) for n in SECRETS} | {("ConfigMap", n) for n in CONFIGMAPS}
    assert shipped == used


# --- scenarios ----------------------------------------------------------------------------------------


def _registries(rules: list[Rule], side: str) -> set[str]:
    return {getattr(rule, side).repo.registry for rule in rules}


ScenarioCheck = Callable[[Mapping[str, Any], JobSpec, list[Rule]], bool]
SCENARIOS: dict[str, ScenarioCheck] = {
    "quay-to-private": lambda doc, spec, rules: any(
        r.source.repo.registry == "quay.io" and r.target.repo.registry != "quay.io" for r in rules),
    "harbor-to-acr": lambda doc, spec, rules: any(
        "harbor" in r.source.repo.registry and r.target.repo.registry.endswith(".aliyuncs.com") for r in rules),
    "many-to-many": lambda doc, spec, rules: len(_registries(rules, "source")) >= 2
    and len(_registries(rules, "target")) >= 2,
    "tag-list": lambda doc, spec, rules: any(len(r.source.tags) >= 2 for r in rules),
    "tag-regex": lambda doc, spec, rules: any(r.source.regex for r in rules),
    "digest": lambda doc, spec, rules: any(r.source.digest for r in rules),
    "several-targets": lambda doc, spec, rules: any(
        isinstance(v, list) and len(v) >= 2 for v in doc["spec"]["images"].values()),
    "default-target": lambda doc, spec, rules: spec.default_registry is not None
    and "" in doc["spec"]["images"].values(),
    "platform-filter": lambda doc, spec, rules: len(spec.platforms) >= 1,
    "schedule": lambda doc, spec, rules: spec.schedule is not None,
    "parallel-shards": lambda doc, spec, rules: spec.parallelism > 1,
}


def test_one_image_sync_job_per_seed_scenario() -> None:
    scenario_files = {scenario_of(file): doc for file, doc in JOBS if file.startswith("imagesyncjob-")}
    assert set(SCENARIOS) <= set(scenario_files), sorted(set(SCENARIOS) - set(scenario_files))
    assert len(scenario_files) >= 8 and len(JOBS) >= 8
    per_file = {file: sum(1 for f, _ in JOBS if f == file) for file, _ in JOBS}
    assert set(per_file.values()) == {1}, "one ImageSyncJob per file"
    # A whole-namespace (Harbor project) migration is not supported yet: no example may pretend it is.
    assert not any("namespace" in s or "project" in s for s in scenario_files)


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_each_scenario_example_shows_its_feature(scenario: str) -> None:
    file = f"imagesyncjob-{scenario}.yaml"
    ((_, doc),) = [(f, d) for f, d in JOBS if f == file]
    spec = parse_job_spec(doc["spec"])
    assert doc["metadata"]["name"] == scenario
    assert SCENARIOS[scenario](doc, spec, rules_of(spec)), f"{file} does not show {scenario}"


def test_the_tag_regex_example_takes_releases_and_leaves_candidates() -> None:
    doc = BY_KIND["ImageSyncJob"]["tag-regex"]
    (rule,) = rules_of(parse_job_spec(doc["spec"]))
    tags = ["v2.49.1", "v2.53.1", "v3.0.0-rc.0", "v3.1.0", "main", "latest"]
    assert [p.source.tag for p in expand_rule(rule, tags)] == ["v2.53.1", "v3.1.0"]


def test_the_default_target_example_lands_under_the_default_namespace() -> None:
    doc = BY_KIND["ImageSyncJob"]["default-target"]
    spec = parse_job_spec(doc["spec"])
    targets = {str(p.target) for r in rules_of(spec) for p in expand_rule(r)}
    assert "example.tencentcloudcr.com/mirror/nginx:1.27" in targets
    assert "example.tencentcloudcr.com/databases/postgres:16" in targets


def test_the_digest_example_keeps_the_digest_and_adds_a_tag() -> None:
    doc = BY_KIND["ImageSyncJob"]["digest"]
    pairs = [p for r in rules_of(parse_job_spec(doc["spec"])) for p in expand_rule(r)]
    assert {(p.target.tag, p.target.digest) for p in pairs} == {
        (None, pairs[0].source.digest), ("3.20-pinned", None)}


# --- the commands that point at examples ----------------------------------------------------------------


def test_every_example_path_the_readme_and_docs_mention_exists() -> None:
    texts = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    mentioned = {m for path in texts if path.exists()
                 for m in re.findall(r"examples/[\w.*/-]+\.yaml", path.read_text())}
    for pattern in mentioned:
        assert list(ROOT.glob(pattern)), f"{pattern} is mentioned but matches no file"


def test_repositories_of_jobs_are_normalised() -> None:
    """Docker Hub short names reach credential matching as docker.io (what registrycredential-basic names)."""
    spec = parse_job_spec(BY_KIND["ImageSyncJob"]["tag-list"]["spec"])
    assert Repository("docker.io", "library/nginx") in spec.repositories
