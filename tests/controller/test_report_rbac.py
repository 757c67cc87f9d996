"""Issue 11, finding 5: a worker may patch its own run's report ConfigMap and nothing else.

The per-run objects as the operator renders them (the ConfigMap, a Role granting exactly patch on it by
name, a RoleBinding to the ServiceAccount the run's pods use), and the shipped RBAC that makes them
possible: the worker's ServiceAccount holds nothing of its own, and the operator holds every right it
grants (the API server refuses a Role that grants more than its creator holds). The e2e suite checks the
same against a real API server (tests/e2e/test_real_cluster.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from imagesync.controller.render import (
    LABEL_JOB,
    LABEL_RUN,
    render_job,
    render_report_configmap,
    render_report_role,
    render_report_rolebinding,
    report_key,
    report_name,
    worker_service_account,
)
from imagesync.controller.reports import shard_of_key
from imagesync.controller.settings import OperatorSettings
from imagesync.controller.spec import parse_job_spec

ROOT = Path(__file__).resolve().parents[2]
K8S_VERSION = kubernetes_validate.latest_version()
ISJ = {"apiVersion": "imagesync.dev/v1alpha1", "kind": "ImageSyncJob",
       "metadata": {"name": "a-rather-long-image-sync-job-name-for-testing-limits", "namespace": "team",
                    "uid": "0b7c1a0e-9a43-4a0b-a3d5-5b1e1b7e2f10", "generation": 3}}
SPECS = [{"images": {"r.io/a/app:1": "t.io/a/app"}},
         {"images": {"r.io/a/app:1": "t.io/a/app"}, "parallelism": 3, "worker": {"serviceAccountName": "sync"}}]


def rendered(spec_doc: dict[str, Any], run: int = 7) -> tuple[dict[str, Any], ...]:
    spec, settings = parse_job_spec(spec_doc), OperatorSettings()
    return (render_job(ISJ, run, spec, settings), render_report_configmap(ISJ, run), render_report_role(ISJ, run),
            render_report_rolebinding(ISJ, run, worker_service_account(spec, settings)))


@pytest.mark.parametrize("spec_doc", SPECS)
def test_the_run_s_role_grants_patch_on_its_report_configmap_only(spec_doc: dict[str, Any]) -> None:
    job, configmap, role, binding = rendered(spec_doc)
    for obj in (configmap, role, binding):
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        # Owned like the run's Secret and Job: deleted with the ImageSyncJob, found by the run's labels.
        (owner,) = obj["metadata"]["ownerReferences"]
        assert owner["uid"] == ISJ["metadata"]["uid"] and owner["controller"] is True
        assert obj["metadata"]["labels"] == job["metadata"]["labels"]
        assert {LABEL_JOB, LABEL_RUN} <= set(obj["metadata"]["labels"])  # what the operator's watch selects
        assert obj["metadata"]["namespace"] == "team"
    name = configmap["metadata"]["name"]
    assert name == report_name(ISJ["metadata"]["name"], 7) == role["metadata"]["name"] == binding["metadata"]["name"]
    assert "data" not in configmap  # the shards write their own keys
    assert role["rules"] == [{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": [name],
                              "verbs": ["patch"]}]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name}
    pod = job["spec"]["template"]["spec"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": pod["serviceAccountName"], "namespace": "team"}]
    # The worker learns where to write and who it is (the operator checks the pod named in each report).
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["IMAGESYNC_REPORT"]["value"] == "configmap"
    assert env["IMAGESYNC_REPORT_CONFIGMAP"]["value"] == name
    assert env["POD_UID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.uid"
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


def test_another_run_s_role_names_another_configmap() -> None:
    _, _, role7, _ = rendered(SPECS[0], 7)
    _, configmap8, role8, _ = rendered(SPECS[0], 8)
    assert configmap8["metadata"]["name"] not in role7["rules"][0]["resourceNames"]
    assert role8["rules"][0]["resourceNames"] == [configmap8["metadata"]["name"]]


def test_the_worker_s_keys_are_the_keys_the_operator_reads() -> None:
    assert [shard_of_key(report_key(i), 100) for i in range(100)] == list(range(100))


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def triples(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {(group, resource, verb) for rule in role["rules"] for group in rule["apiGroups"]
            for resource in rule["resources"] for verb in rule["verbs"]}


def test_the_worker_s_serviceaccount_has_no_rights_of_its_own() -> None:
    (account,) = documents(ROOT / "deploy" / "watched-namespace" / "worker-serviceaccount.yaml")
    assert account["kind"] == "ServiceAccount"
    assert account["metadata"]["name"] == OperatorSettings().worker_service_account


def test_the_operator_holds_what_it_grants_and_may_create_the_run_s_objects() -> None:
    # The rules it holds in each watched namespace (bound there by a RoleBinding, or everywhere by the
    # cluster-wide overlay's ClusterRoleBinding: the same rules either way).
    (role,) = [d for d in documents(ROOT / "deploy" / "10-operator-rbac.yaml")
               if d["kind"] == "ClusterRole" and d["metadata"]["name"] == "imagesync-operator"]
    held = triples(role)
    # RBAC's escalation check: creating (and binding) a Role that grants patch on a ConfigMap needs that
    # right, unless the creator has escalate/bind, which it must not.
    assert triples(rendered(SPECS[0])[2]) <= held
    for resource in ("roles", "rolebindings"):
        assert {verb for group, res, verb in held if (group, res) == ("rbac.authorization.k8s.io", resource)} \
            == {"create", "delete"}
    assert {verb for group, res, verb in held if (group, res) == ("", "configmaps")} == \
        {"get", "list", "watch", "create", "patch", "delete"}
    assert not {verb for _, _, verb in held} & {"escalate", "bind", "impersonate", "*"}
    # It writes no Pods either: it reads them for phases (its own, for its image, through another Role).
    assert {verb for group, res, verb in held if (group, res) == ("", "pods")} == {"list", "watch"}
