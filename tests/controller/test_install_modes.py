"""Issue 11, finding 6: the install modes as kustomize renders them, and what the operator may do where.

deploy/ (namespaced, the default) binds the operator's rules only in the namespaces it watches;
examples/kustomize/team-namespaces/ adds namespaces the way its comments tell a user;
examples/kustomize/cluster-wide/ binds them everywhere, and says so. The rights are computed from the
rendered RoleBindings and ClusterRoleBindings as the API server's RBAC authorizer combines them; the e2e
suite asks the real API server the same (tests/e2e/test_namespaced_install.py, `kubectl auth can-i`).
"""

from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
OPERATOR = ("imagesync-system", "imagesync-operator")
BASE, TEAMS, CLUSTER_WIDE = "deploy", "examples/kustomize/team-namespaces", "examples/kustomize/cluster-wide"
Grant = tuple[str, str, str]  # (apiGroup, resource, verb)

pytestmark = pytest.mark.skipif(not shutil.which("kubectl"), reason="renders with `kubectl kustomize`")


@functools.cache  # kubectl takes about a second per rendering; no test alters the documents
def render(path: str) -> list[dict[str, Any]]:
    done = subprocess.run(["kubectl", "kustomize", str(ROOT / path)], capture_output=True, text=True,
                          timeout=60, check=True)
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def binds_operator(binding: dict[str, Any]) -> bool:
    return any((s.get("kind"), s.get("namespace"), s.get("name")) == ("ServiceAccount", *OPERATOR)
               for s in binding.get("subjects") or [])


def rules_of(docs: list[dict[str, Any]], role_ref: dict[str, Any], namespace: str | None) -> set[Grant]:
    kind, name = role_ref["kind"], role_ref["name"]
    (role,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name
               and (kind == "ClusterRole" or d["metadata"].get("namespace") == namespace)]
    return {(group, resource, verb) for rule in role["rules"] for group in rule["apiGroups"]
            for resource in rule["resources"] for verb in rule["verbs"]}


def operator_rights(docs: list[dict[str, Any]], namespace: str) -> set[Grant]:
    """What the operator's ServiceAccount may do in the namespace: its ClusterRoleBindings' rules and its
    RoleBindings' there (RBAC only adds; nothing here is limited by resourceNames but the Lease)."""
    rights: set[Grant] = set()
    for doc in docs:
        if doc["kind"] == "ClusterRoleBinding" and binds_operator(doc):
            rights |= rules_of(docs, doc["roleRef"], None)
        elif doc["kind"] == "RoleBinding" and binds_operator(doc) and doc["metadata"]["namespace"] == namespace:
            rights |= rules_of(docs, doc["roleRef"], namespace)
    return rights


def watched_namespaces(docs: list[dict[str, Any]]) -> list[str]:
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    (value,) = [e["value"] for e in container["env"] if e["name"] == "IMAGESYNC_NAMESPACES"]
    return [n for n in value.split(",") if n]


DANGEROUS = {("", "secrets", "get"), ("", "secrets", "create"), ("batch", "jobs", "create"),
             ("rbac.authorization.k8s.io", "roles", "create"), ("", "configmaps", "get")}


@pytest.mark.parametrize("path, watched", [(BASE, ["imagesync-jobs"]),
                                           (TEAMS, ["imagesync-jobs", "team-a", "team-b"])])
def test_namespaced_modes_grant_secrets_and_jobs_only_in_the_watched_namespaces(path: str,
                                                                                watched: list[str]) -> None:
    docs = render(path)
    assert watched_namespaces(docs) == watched
    created = {d["metadata"]["name"] for d in docs if d["kind"] == "Namespace"}
    for namespace in watched:
        # Everything the operator does in a namespace it watches, and the workers' ServiceAccount there.
        assert operator_rights(docs, namespace) >= DANGEROUS, namespace
        assert [d for d in docs if d["kind"] == "ServiceAccount" and d["metadata"]["name"] == "imagesync-worker"
                and d["metadata"]["namespace"] == namespace], namespace
        assert namespace in created, f"{namespace}: nothing in {path} creates it"
    # Elsewhere only kopf's cluster-scoped reads, and in its own namespace its Pod and its Lease.
    discovery = {("apiextensions.k8s.io", "customresourcedefinitions", verb) for verb in ("list", "watch")} \
        | {("", "namespaces", verb) for verb in ("list", "watch")}
    for namespace in ("default", "kube-system", "team-unlisted"):
        assert operator_rights(docs, namespace) == discovery, namespace
    own = operator_rights(docs, OPERATOR[0]) - discovery
    assert own == {("", "pods", "get"), ("coordination.k8s.io", "leases", "create"),
                   ("coordination.k8s.io", "leases", "get"), ("coordination.k8s.io", "leases", "update")}
    # A binding to a namespace the operator does not watch would be a grant nobody uses.
    bound = {d["metadata"]["namespace"] for d in docs if d["kind"] == "RoleBinding" and binds_operator(d)}
    assert bound == set(watched) | {OPERATOR[0]}


def test_the_cluster_wide_overlay_grants_secrets_and_jobs_everywhere_and_warns() -> None:
    docs = render(CLUSTER_WIDE)
    assert watched_namespaces(docs) == []  # every namespace
    for namespace in ("default", "kube-system", "team-unlisted"):
        assert operator_rights(docs, namespace) >= DANGEROUS, namespace
    for name in ("kustomization.yaml", "operator-clusterrolebinding.yaml"):
        assert (ROOT / CLUSTER_WIDE / name).read_text().startswith("# WARNING:"), name


@pytest.mark.parametrize("path", [BASE, TEAMS, CLUSTER_WIDE])
def test_every_namespaced_object_goes_to_a_namespace_the_install_creates(path: str) -> None:
    """So each applies to an empty cluster as it is (`kubectl apply -k`)."""
    docs = render(path)
    created = {d["metadata"]["name"] for d in docs if d["kind"] == "Namespace"}
    homes = {d["metadata"]["namespace"] for d in docs if d["metadata"].get("namespace")}
    assert homes <= created, homes - created


POLICY = ROOT / "examples" / "admission" / "validatingadmissionpolicy-operator.yaml"


def test_the_example_admission_policy_admits_what_the_operator_renders() -> None:
    """The policy's CEL runs on 1.30+ API servers only (none here): this checks its YAML and that the labels
    and ServiceAccount names it requires are those of the operator's install and of what it renders."""
    from imagesync.controller.render import (
        render_config_secret,
        render_job,
        render_report_configmap,
        render_report_role,
        render_report_rolebinding,
        worker_service_account,
    )
    from imagesync.controller.settings import OperatorSettings
    from imagesync.controller.spec import parse_job_spec

    policy, binding = [d for d in yaml.safe_load_all(POLICY.read_text()) if d]
    assert (policy["kind"], binding["kind"]) == ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    (condition,) = policy["spec"]["matchConditions"]
    assert condition["expression"].endswith(f"'system:serviceaccount:{OPERATOR[0]}:{OPERATOR[1]}'")
    labels_rule, job_rule, secret_rule = (v["expression"] for v in policy["spec"]["validations"])
    isj = {"metadata": {"name": "app", "namespace": "team", "uid": "0b7c1a0e-9a43-4a0b-a3d5-5b1e1b7e2f10"}}
    spec, settings = parse_job_spec({"images": {"r.io/a/app:1": "t.io/a/app"}}), OperatorSettings()
    job = render_job(isj, 3, spec, settings)
    objects = [job, render_config_secret(isj, 3, spec, {}, {}), render_report_configmap(isj, 3),
               render_report_role(isj, 3), render_report_rolebinding(isj, 3, worker_service_account(spec, settings))]
    for obj in objects:
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/managed-by"] == "imagesync" and labels["imagesync.dev/job"] \
            and labels["imagesync.dev/run"], obj["kind"]
        for key in ("app.kubernetes.io/managed-by", "imagesync.dev/job", "imagesync.dev/run"):
            assert f'[?"{key}"]' in labels_rule, key
    assert job["spec"]["template"]["spec"]["serviceAccountName"] == settings.worker_service_account
    assert f'in ["{settings.worker_service_account}"]' in job_rule
    assert objects[1]["type"] == "Opaque" and '== "Opaque"' in secret_rule
