"""CRDs, examples, rendered Jobs/Secrets and written statuses checked against the schemas a real API
server applies (the emulator validates nothing, so these tests stand in for admission and pruning)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from imagesync.controller.handlers import ZERO_PROGRESS
from imagesync.controller.render import render_config_secret, render_job, run_name
from imagesync.controller.settings import OperatorSettings
from imagesync.controller.spec import parse_job_spec
from imagesync.controller.status import fold_progress, make_condition

ROOT = Path(__file__).resolve().parents[2]
K8S_VERSION = kubernetes_validate.latest_version()
JUNCTORS = ("anyOf", "oneOf", "allOf", "not")
INT_OR_STRING = [{"type": "integer"}, {"type": "string"}]
FORBIDDEN_IN_JUNCTORS = {"type", "description", "default", "additionalProperties", "nullable"}


def documents(directory: Path) -> Iterator[dict[str, Any]]:
    """Kubernetes objects of a directory's manifests (its kustomization.yaml is kustomize's, not the API's)."""
    for path in sorted(directory.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield doc


CRDS = {doc["spec"]["names"]["kind"]: doc for doc in documents(ROOT / "crds")}


def schema_of(kind: str) -> dict[str, Any]:
    schema: dict[str, Any] = CRDS[kind]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def structural_problems(node: dict[str, Any], path: str = "", in_junctor: bool = False) -> list[str]:
    """Kubernetes' structural-schema rules, as far as this project's CRDs use them."""
    problems = []
    preserves = node.get("x-kubernetes-preserve-unknown-fields") or node.get("x-kubernetes-int-or-string")
    if in_junctor:
        problems += [f"{path}: {key} inside {JUNCTORS}" for key in FORBIDDEN_IN_JUNCTORS & set(node)]
    elif "type" not in node and not preserves:
        problems.append(f"{path}: no type")
    for name, child in (node.get("properties") or {}).items():
        problems += structural_problems(child, f"{path}.{name}", in_junctor)
    if isinstance(node.get("additionalProperties"), dict):
        problems += structural_problems(node["additionalProperties"], f"{path}.*", in_junctor)
    if isinstance(node.get("items"), dict):
        problems += structural_problems(node["items"], f"{path}[]", in_junctor)
    for junctor in JUNCTORS:
        if node.get("x-kubernetes-int-or-string") and node.get(junctor) == INT_OR_STRING:
            continue  # the one typed junctor Kubernetes allows
        for branch in node.get(junctor) or []:
            problems += structural_problems(branch, f"{path}({junctor})", True)
    return problems


def to_jsonschema(node: Any) -> Any:
    """OpenAPI v3 schema -> JSON Schema: drop Kubernetes extensions; int-or-string accepts both."""
    if isinstance(node, dict):
        converted = {k: to_jsonschema(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
        if node.get("x-kubernetes-int-or-string"):
            converted.pop("anyOf", None)
            converted["type"] = ["integer", "string"]
        return converted
    if isinstance(node, list):
        return [to_jsonschema(v) for v in node]
    return node


def validate_cr(obj: dict[str, Any]) -> None:
    jsonschema.validate(obj, to_jsonschema(schema_of(obj["kind"])))


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_crds_are_structural_and_well_named(kind: str) -> None:
    crd = CRDS[kind]
    assert structural_problems(schema_of(kind)) == []
    version = crd["spec"]["versions"][0]
    assert crd["spec"]["group"] == "imagesync.dev" and version["name"] == "v1alpha1"
    assert version["subresources"] == {"status": {}}
    assert crd["spec"]["names"]["categories"] == ["imagesync"]
    assert crd["spec"]["names"]["shortNames"] == [{"ImageSyncJob": "isj", "RegistryCredential": "regcred"}[kind]]
    kubernetes_validate.validate(crd, K8S_VERSION, strict=True)


def test_printer_columns() -> None:
    columns = [c["name"] for c in CRDS["ImageSyncJob"]["spec"]["versions"][0]["additionalPrinterColumns"]]
    assert columns == ["Phase", "Synced", "Failed", "Progress", "Age"]


EXAMPLES = [doc for doc in documents(ROOT / "examples") if doc["kind"] in CRDS]


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_every_example_cr_is_valid(example: dict[str, Any]) -> None:
    validate_cr(example)
    if example["kind"] == "ImageSyncJob":
        parse_job_spec(example["spec"])


def test_example_secrets_and_deploy_manifests_are_valid_kubernetes() -> None:
    checked = 0
    for doc in [*documents(ROOT / "deploy"), *documents(ROOT / "deploy" / "watched-namespace"),
                *(d for d in documents(ROOT / "examples") if d["kind"] == "Secret")]:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        checked += 1
    assert checked >= 9


def test_the_deploy_kustomization_installs_crds_and_every_cluster_wide_manifest() -> None:
    kustomization = yaml.safe_load((ROOT / "deploy" / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    # jobs-namespace: the watched namespace's RoleBinding and workers' ServiceAccount (deploy/watched-namespace/)
    assert listed == {"../crds", "jobs-namespace"} | {p.name for p in (ROOT / "deploy").glob("*.yaml")} \
        - {"kustomization.yaml"}
    crds = yaml.safe_load((ROOT / "crds" / "kustomization.yaml").read_text())
    assert set(crds["resources"]) == {p.name for p in (ROOT / "crds").glob("*.yaml")} - {"kustomization.yaml"}
    (image,) = kustomization["images"]
    (container,) = next(d for d in documents(ROOT / "deploy") if d["kind"] == "Deployment")["spec"]["template"][
        "spec"]["containers"]
    assert container["image"].startswith(image["name"] + ":")
    # The workers' image follows the operator's (no second place to set it): the Pod learns its own name.
    env = {e["name"]: e for e in container["env"]}
    assert "IMAGESYNC_WORKER_IMAGE" not in env
    assert env["IMAGESYNC_POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


BASE = {"apiVersion": "imagesync.dev/v1alpha1", "kind": "ImageSyncJob", "metadata": {"name": "j"},
        "spec": {"images": {"r.io/a/app:1": "t.io/a/app"}}}


def schema_errors(obj: dict[str, Any]) -> list[tuple[str, str]]:
    """Every error the CRD's schema finds: (path, the schema keyword that failed)."""
    validator = jsonschema.Draft202012Validator(to_jsonschema(schema_of(obj["kind"])))
    return sorted(("/".join(map(str, error.absolute_path)), str(error.validator))
                  for error in validator.iter_errors(obj))


# Each bad value is refused at its own field, for the reason named, and nothing else is found wrong: a schema
# that refused the document for another reason (or one field's rule moved elsewhere) fails here.
@pytest.mark.parametrize(("change", "error"), [
    ({"concurrency": 0}, ("spec/concurrency", "minimum")), ({"parallelism": 101}, ("spec/parallelism", "maximum")),
    ({"retries": -1}, ("spec/retries", "minimum")), ({"platforms": ["linux"]}, ("spec/platforms/0", "pattern")),
    ({"images": {}}, ("spec/images", "minProperties")), ({"force": "yes"}, ("spec/force", "type")),
    ({"defaultTarget": {"registry": "r.io"}}, ("spec/defaultTarget", "required")),
    ({"schedule": "every day"}, ("spec/schedule", "pattern")),
    ({"worker": {"tolerations": [{"operator": "Maybe"}]}}, ("spec/worker/tolerations/0/operator", "enum")),
])
def test_invalid_crs_are_rejected_by_the_schema(change: dict[str, Any], error: tuple[str, str]) -> None:
    assert schema_errors(BASE) == []
    bad = copy.deepcopy(BASE)
    bad["spec"].update(change)
    assert schema_errors(bad) == [error]
    with pytest.raises(jsonschema.ValidationError):  # and the helper the other tests use agrees
        validate_cr(bad)


def test_registry_credential_schema_rejects_bad_registry() -> None:
    good: dict[str, Any] = {"apiVersion": "imagesync.dev/v1alpha1", "kind": "RegistryCredential",
                            "metadata": {"name": "c"}, "spec": {"registry": "registry.example.com"}}
    assert schema_errors(good) == []
    for registry in ("https://registry.example.com", "registry.example.com/Team", "registry.example.com:port"):
        bad = copy.deepcopy(good)
        bad["spec"]["registry"] = registry
        assert schema_errors(bad) == [("spec/registry", "pattern")], registry


ISJ = {"apiVersion": "imagesync.dev/v1alpha1", "kind": "ImageSyncJob",
       "metadata": {"name": "a-rather-long-image-sync-job-name-for-testing-limits", "namespace": "team",
                    "uid": "0b7c1a0e-9a43-4a0b-a3d5-5b1e1b7e2f10", "generation": 3}}
SPECS = [
    {"images": {"r.io/a/app:1": "t.io/a/app"}},
    {"images": {"r.io/a/app": ["t.io/a/app", "u.io/b/app"]}, "parallelism": 3, "qps": 20,
     "platforms": ["linux/arm64/v8"], "defaultTarget": {"registry": "t.io", "namespace": "m"},
     "worker": {"image": "registry.example.com/imagesync:1", "serviceAccountName": "sync",
                "resources": {"limits": {"memory": "256Mi", "cpu": 1}}, "nodeSelector": {"pool": "io"},
                "tolerations": [{"key": "io", "operator": "Exists", "effect": "NoSchedule"}]}},
]
SECRET_AUTH = {"r.io": {"username": "robot", "password": "pa$$w0rd-VERY-SECRET"}}


@pytest.mark.parametrize("spec_doc", SPECS)
def test_rendered_job_and_secret_are_valid_and_carry_no_credentials(spec_doc: dict[str, Any]) -> None:
    spec = parse_job_spec(spec_doc)
    job = render_job(ISJ, 7, spec, OperatorSettings())
    secret = render_config_secret(ISJ, 7, spec, SECRET_AUTH, {"ca-0.pem": "-----BEGIN CERTIFICATE-----"})
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    kubernetes_validate.validate(secret, K8S_VERSION, strict=True)
    assert "VERY-SECRET" not in yaml.safe_dump(job)
    assert job["metadata"]["name"] == secret["metadata"]["name"] == run_name(ISJ["metadata"]["name"], 7)
    assert len(job["metadata"]["name"]) <= 52
    for obj in (job, secret):
        (owner,) = obj["metadata"]["ownerReferences"]
        assert owner["uid"] == ISJ["metadata"]["uid"] and owner["controller"] is True
    assert (job["spec"].get("completionMode") == "Indexed") == (spec.parallelism > 1)
    # The worker's uid reads its Secret files, which a kubelet writes as root: only through fsGroup and a
    # group-readable mode (a real node's first run failed on exactly this; a played kubelet cannot show it).
    pod = job["spec"]["template"]["spec"]
    (volume,) = pod["volumes"]
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"] == 65532
    assert volume["secret"]["defaultMode"] & 0o040 and not volume["secret"]["defaultMode"] & 0o007


def undeclared(value: Any, schema: dict[str, Any], path: str = "status") -> list[str]:
    """Fields a real API server would prune: present in the object, absent from the schema."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    if isinstance(value, dict):
        found = []
        properties = schema.get("properties") or {}
        for key, child in value.items():
            if key in properties:
                found += undeclared(child, properties[key], f"{path}.{key}")
            elif isinstance(schema.get("additionalProperties"), dict):
                found += undeclared(child, schema["additionalProperties"], f"{path}.{key}")
            else:
                found.append(f"{path}.{key}")
        return found
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [p for i, item in enumerate(value) for p in undeclared(item, schema["items"], f"{path}[{i}]")]
    return []


def report(i: int, done: bool, failed: int = 0) -> dict[str, Any]:
    return {"imagesTotal": 5, "imagesSynced": 5 - failed, "imagesSkipped": 0, "imagesFailed": failed,
            "blobsCopied": 3, "blobsMounted": 1, "blobsSkipped": 2, "bytesCopied": 1000, "bytesPerSecond": 10.5,
            "durationSeconds": 1.0, "manifestsPushed": 5, "done": done, "shard": i,
            "failedImages": [{"source": f"s{j}", "target": f"t{j}", "reason": "r"} for j in range(failed)],
            "failedImagesTotal": failed}


@pytest.mark.parametrize("reports", [{}, {0: report(0, False)}, {0: report(0, True), 1: report(1, True, 60)}])
def test_every_status_field_the_operator_writes_is_declared(reports: dict[int, Any]) -> None:
    status_schema = schema_of("ImageSyncJob")["properties"]["status"]
    folded = fold_progress(reports, 2, {0: "Running"})
    status = {
        **folded, "phase": "Running", "observedGeneration": 3, "run": 2, "runGeneration": 3,
        "pendingGeneration": 4, "jobName": "j-r2", "secretName": "j-r2", "startTime": "2026-01-01T00:00:00Z",
        "completionTime": "2026-01-01T00:10:00Z", "lastScheduleTime": "2026-01-01T00:00:00Z",
        "nextScheduleTime": "2026-01-02T00:00:00Z",
        "conditions": make_condition(None, "Complete", "True", "Succeeded", "m", 3, "2026-01-01T00:10:00Z"),
    }
    assert undeclared(status, status_schema) == []
    assert undeclared({"progress": ZERO_PROGRESS}, status_schema) == []
    jsonschema.validate({**BASE, "status": status}, to_jsonschema(schema_of("ImageSyncJob")))


def test_registry_credential_status_is_declared() -> None:
    schema = schema_of("RegistryCredential")["properties"]["status"]
    status = {"observedGeneration": 1, "lastCheckTime": "2026-01-01T00:00:00Z",
              "conditions": make_condition(None, "Ready", "False", "SecretMissing", "m", 1, "2026-01-01T00:00:00Z")}
    assert undeclared(status, schema) == []
