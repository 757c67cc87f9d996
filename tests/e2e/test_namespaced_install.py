"""The operator installed for one namespace (examples/kustomize/single-namespace/), on real nodes.

It watches only that namespace, with a Role there instead of cluster-wide rights: it runs a job in it,
and the API server refuses it Secrets and Jobs anywhere else. Runs with the real-node mode of
test_real_cluster.py (IMAGESYNC_E2E_OPERATOR_IMAGE and IMAGESYNC_E2E_NODE_ADDRESS), before it.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_real_cluster import (  # the shared cluster helpers (names only: no tests are imported)
    GROUP,
    INSTALLED,
    NODE_ADDRESS,
    OPERATOR_IMAGE,
    OPERATOR_NAMESPACE,
    ROOT,
    VERSION,
    api,
    apply,
    kubectl,
    load_yaml_dir,
    wait_crds_established,
)

from testbed import seed

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(not (os.environ.get("KUBECONFIG") and INSTALLED and NODE_ADDRESS),
                                 reason="needs real nodes: KUBECONFIG, IMAGESYNC_E2E_OPERATOR_IMAGE, "
                                        "IMAGESYNC_E2E_NODE_ADDRESS")]
OVERLAY = ROOT / "examples" / "kustomize" / "single-namespace"
OPERATOR = f"system:serviceaccount:{OPERATOR_NAMESPACE}:imagesync-operator"
__all__ = ["api"]  # a fixture this module uses by name


@pytest.fixture(scope="module")
def watched(api: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A namespace, and the overlay installed for it as its comments tell a user: the namespace put in
    the marked places, the image set."""
    import kubernetes

    core = kubernetes.client.CoreV1Api(api)
    namespace = f"imagesync-ns-{secrets.token_hex(3)}"
    core.create_namespace({"metadata": {"name": namespace}})
    apply(api, load_yaml_dir(ROOT / "crds"))
    wait_crds_established(api)
    worker_rbac = [d for d in yaml.safe_load_all((ROOT / "deploy" / "30-worker-rbac.yaml").read_text()) if d]
    for doc in worker_rbac:
        for subject in doc.get("subjects") or []:
            subject["namespace"] = namespace
    apply(api, worker_rbac, namespace=namespace)
    overlay = tmp_path_factory.mktemp("single-namespace")
    name, _, tag = OPERATOR_IMAGE.rpartition(":")
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "resources": [os.path.relpath(OVERLAY, overlay)],
        "images": [{"name": "ghcr.io/imagesync-dev/imagesync", "newName": name, "newTag": tag}]}))
    rendered = kubectl("kustomize", str(overlay)).replace("team-a", namespace)
    assert rendered.count(namespace) == 3, "the overlay marks three places for the namespace"
    done = subprocess.run(["kubectl", "--kubeconfig", os.environ["KUBECONFIG"], "apply", "-f", "-"],
                          input=rendered, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    kubectl("-n", OPERATOR_NAMESPACE, "rollout", "status", "deployment/imagesync-operator", "--timeout=180s")
    yield namespace
    custom = kubernetes.client.CustomObjectsApi(api)
    custom.delete_collection_namespaced_custom_object(GROUP, VERSION, namespace, "imagesyncjobs")
    kubectl("-n", namespace, "wait", "--for=delete", "imagesyncjobs", "--all", "--timeout=120s")
    kubectl("delete", "namespace/" + OPERATOR_NAMESPACE, "--timeout=120s")
    kubectl("delete", "--wait=false", "clusterrole/imagesync-operator", "clusterrolebinding/imagesync-operator",
            "namespace/" + namespace)


def can_i(verb: str, resource: str, namespace: str) -> bool:
    done = subprocess.run(["kubectl", "--kubeconfig", os.environ["KUBECONFIG"], "auth", "can-i", verb, resource,
                           "-n", namespace, "--as", OPERATOR], capture_output=True, text=True, timeout=60)
    return done.stdout.strip() == "yes"


def test_single_namespace_operator_runs_its_namespace_and_nothing_else(
        api: Any, watched: str, make_registry: Callable[..., Any]) -> None:
    import kubernetes

    source, target = make_registry(address=NODE_ADDRESS), make_registry(address=NODE_ADDRESS)
    image = seed.push_image(source, "ns/app", "1", seed="namespaced")
    custom = kubernetes.client.CustomObjectsApi(api)
    for host in (source.host, target.host):
        custom.create_namespaced_custom_object(GROUP, VERSION, watched, "registrycredentials", {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "RegistryCredential",
            "metadata": {"name": "r-" + host.replace(":", "-").replace(".", "-")},
            "spec": {"registry": host, "insecure": True}})
    custom.create_namespaced_custom_object(GROUP, VERSION, watched, "imagesyncjobs", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "ImageSyncJob", "metadata": {"name": "one"},
        "spec": {"images": {f"{source.host}/ns/app:1": f"{target.host}/ns/app"}}})
    kubectl("-n", watched, "wait", "--for=condition=Ready", "isj/one", "--timeout=180s")
    assert seed.get_manifest(target, "ns/app", "1")[2] == image.digest

    # Its rights end at the namespace it watches (and its own Pod and leader-election Lease).
    assert can_i("get", "secrets", watched) and can_i("create", "jobs", watched)
    # Each run's report Role: created there, which it may because it holds patch on ConfigMaps there.
    assert can_i("create", "roles", watched) and can_i("patch", "configmaps", watched)
    for namespace in ("default", "kube-system"):
        for verb, resource in (("get", "secrets"), ("create", "secrets"), ("create", "jobs"), ("list", "pods"),
                               ("create", "roles"), ("create", "rolebindings"), ("patch", "configmaps")):
            assert not can_i(verb, resource, namespace), (verb, resource, namespace)
    assert can_i("get", "pods", OPERATOR_NAMESPACE) and not can_i("get", "secrets", OPERATOR_NAMESPACE)
    assert can_i("update", "leases/imagesync-operator", OPERATOR_NAMESPACE)
    assert not can_i("update", "leases/another", OPERATOR_NAMESPACE) and not can_i("create", "leases", watched)


def test_the_overlay_renders_what_its_comments_say() -> None:
    docs = [d for d in yaml.safe_load_all(subprocess.run(
        ["kubectl", "kustomize", str(OVERLAY)], capture_output=True, text=True, check=True).stdout) if d]
    (cluster_role,) = [d for d in docs if d["kind"] == "ClusterRole"]
    assert {r for rule in cluster_role["rules"] for r in rule["resources"]} == {"customresourcedefinitions",
                                                                                "namespaces"}
    assert all(set(rule["verbs"]) == {"list", "watch"} for rule in cluster_role["rules"])
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["IMAGESYNC_NAMESPACES"] == "team-a"
    assert Path(OVERLAY / "kustomization.yaml").is_file()
