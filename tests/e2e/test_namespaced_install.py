"""The operator installed as deploy/ ships it (namespaced mode, the default), on real nodes.

It watches imagesync-jobs only, with a RoleBinding there instead of cluster-wide rights: it runs a job
in it, and the API server refuses it Secrets and Jobs anywhere else. Runs with the real-node mode of
test_real_cluster.py (IMAGESYNC_E2E_OPERATOR_IMAGE and IMAGESYNC_E2E_NODE_ADDRESS), before it; it
uninstalls what it installed but the CRDs, which test_real_cluster.py then installs cluster-wide.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml
from test_real_cluster import (  # the shared cluster helpers (names only: no tests are imported)
    GROUP,
    INSTALL_CLUSTER_OBJECTS,
    INSTALL_NAMESPACES,
    INSTALLED,
    NODE_ADDRESS,
    OPERATOR_IMAGE,
    OPERATOR_NAMESPACE,
    ROOT,
    VERSION,
    api,
    kubectl,
    wait_for_namespaces_gone,
)

from testbed import seed

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(not (os.environ.get("KUBECONFIG") and INSTALLED and NODE_ADDRESS),
                                 reason="needs real nodes: KUBECONFIG, IMAGESYNC_E2E_OPERATOR_IMAGE, "
                                        "IMAGESYNC_E2E_NODE_ADDRESS")]
WATCHED = "imagesync-jobs"  # deploy/'s one watched namespace (deploy/jobs-namespace/)
OPERATOR = f"system:serviceaccount:{OPERATOR_NAMESPACE}:imagesync-operator"
__all__ = ["api"]  # a fixture this module uses by name


@pytest.fixture(scope="module")
def other(api: Any) -> Iterator[str]:
    """A namespace the operator does not watch, with a Secret in it."""
    import kubernetes

    core = kubernetes.client.CoreV1Api(api)
    namespace = f"imagesync-other-{secrets.token_hex(3)}"
    core.create_namespace({"metadata": {"name": namespace}})
    core.create_namespaced_secret(namespace, {"metadata": {"name": "not-yours"}, "stringData": {"k": "v"}})
    yield namespace
    kubectl("delete", "--wait=false", "namespace/" + namespace)


@pytest.fixture(scope="module")
def watched(api: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """deploy/ installed as it is, as the README tells a user: `kubectl apply -k` of an overlay that only
    sets the image."""
    import kubernetes

    overlay = tmp_path_factory.mktemp("namespaced")
    name, _, tag = OPERATOR_IMAGE.rpartition(":")
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "resources": [os.path.relpath(ROOT / "deploy", overlay)],
        "images": [{"name": "ghcr.io/imagesync-dev/imagesync", "newName": name, "newTag": tag}]}))
    wait_for_namespaces_gone(api, INSTALL_NAMESPACES)
    kubectl("apply", "-k", str(overlay))
    kubectl("-n", OPERATOR_NAMESPACE, "rollout", "status", "deployment/imagesync-operator", "--timeout=180s")
    yield WATCHED
    # ImageSyncJobs and RegistryCredentials (for its timers) carry the operator's finalizer: remove them while
    # the operator still runs, or their namespace never finishes terminating.
    custom = kubernetes.client.CustomObjectsApi(api)
    for plural in ("imagesyncjobs", "registrycredentials"):
        custom.delete_collection_namespaced_custom_object(GROUP, VERSION, WATCHED, plural)
        kubectl("-n", WATCHED, "wait", "--for=delete", plural, "--all", "--timeout=120s")
    # The operator first, then its rights; waited for, so test_real_cluster.py's install finds them gone.
    kubectl("delete", "namespace/" + OPERATOR_NAMESPACE, "--timeout=120s")
    kubectl("delete", "namespace/" + WATCHED, *INSTALL_CLUSTER_OBJECTS, "--timeout=120s")


def can_i(verb: str, resource: str, namespace: str | None) -> bool:
    """The API server's answer (SubjectAccessReview) for the operator's ServiceAccount; None: all namespaces."""
    where = ["-n", namespace] if namespace else ["--all-namespaces"]
    done = subprocess.run(["kubectl", "--kubeconfig", os.environ["KUBECONFIG"], "auth", "can-i", verb, resource,
                           *where, "--as", OPERATOR], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() in ("yes", "no"), done.stderr
    return done.stdout.strip() == "yes"


def test_the_namespaced_install_runs_its_namespace_and_reaches_nothing_else(
        api: Any, watched: str, other: str, make_registry: Callable[..., Any]) -> None:
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
    for namespace in (other, "default", "kube-system"):
        for verb, resource in (("get", "secrets"), ("create", "secrets"), ("create", "jobs"), ("list", "pods"),
                               ("create", "roles"), ("create", "rolebindings"), ("patch", "configmaps")):
            assert not can_i(verb, resource, namespace), (verb, resource, namespace)
    for verb, resource in (("get", "secrets"), ("list", "secrets"), ("create", "jobs")):
        assert not can_i(verb, resource, None), (verb, resource, "all namespaces")
    # And the request itself, as the operator, is refused.
    done = subprocess.run(["kubectl", "--kubeconfig", os.environ["KUBECONFIG"], "-n", other, "get", "secret",
                           "not-yours", "--as", OPERATOR], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "forbidden" in done.stderr.lower(), (done.stdout, done.stderr)
    # What it holds cluster-wide: kopf's reads of the CRDs and namespaces.
    assert can_i("list", "customresourcedefinitions.apiextensions.k8s.io", None) and can_i("watch", "namespaces", None)
    assert can_i("get", "pods", OPERATOR_NAMESPACE) and not can_i("get", "secrets", OPERATOR_NAMESPACE)
    assert can_i("update", "leases/imagesync-operator", OPERATOR_NAMESPACE)
    assert not can_i("update", "leases/another", OPERATOR_NAMESPACE) and not can_i("create", "leases", watched)
