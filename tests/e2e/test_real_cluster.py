"""The operator flow against a real Kubernetes API server (skipped unless KUBECONFIG names one).

Written to real Kubernetes semantics: CRDs applied from crds/, RBAC from deploy/, the operator running
in this process with its ServiceAccount's token (a TokenRequest), the API server validating, pruning
and garbage-collecting.

Where the cluster has nodes that can pull the worker image and reach the registries, worker Pods run
for real (IMAGESYNC_E2E_WORKER_IMAGE names the image; registries must be reachable from the nodes:
IMAGESYNC_E2E_SOURCE / IMAGESYNC_E2E_TARGET). Where it has none (an API server with controllers but no
kubelet), IMAGESYNC_E2E_PLAY_KUBELET=1 makes this suite play the kubelet: it runs each scheduled
worker Pod's command locally with that Pod's Secret files and environment, against local registries,
and writes the Pod's status back through the API, so the Job controller and the operator see a real
Job complete.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import secrets
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(not os.environ.get("KUBECONFIG"), reason="KUBECONFIG names no cluster")]

ROOT = Path(__file__).resolve().parents[2]
PLAY_KUBELET = os.environ.get("IMAGESYNC_E2E_PLAY_KUBELET") == "1"


@pytest.fixture(scope="module")
def api() -> Iterator[Any]:
    import kubernetes

    kubernetes.config.load_kube_config(config_file=os.environ["KUBECONFIG"])
    client = kubernetes.client.ApiClient()
    yield client
    client.close()


def apply(api: Any, documents: list[dict[str, Any]], namespace: str | None = None) -> None:
    """Server-side apply each document (idempotent, like kubectl apply --server-side)."""
    import kubernetes

    dynamic = kubernetes.dynamic.DynamicClient(api)
    for doc in documents:
        if not doc:
            continue
        resource = dynamic.resources.get(api_version=doc["apiVersion"], kind=doc["kind"])
        ns = doc["metadata"].get("namespace") or (namespace if resource.namespaced else None)
        if ns:
            doc["metadata"]["namespace"] = ns
        resource.server_side_apply(body=doc, name=doc["metadata"]["name"], namespace=ns,
                                   field_manager="imagesync-e2e", force_conflicts=True)


def load_yaml_dir(directory: Path) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(directory.glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


@pytest.fixture(scope="module")
def namespace(api: Any) -> Iterator[str]:
    import kubernetes

    core = kubernetes.client.CoreV1Api(api)
    name = f"imagesync-e2e-{secrets.token_hex(3)}"
    core.create_namespace({"metadata": {"name": name}})
    apply(api, load_yaml_dir(ROOT / "crds"))
    operator_docs = load_yaml_dir(ROOT / "deploy")
    # The operator's own RBAC objects, and the worker's per-namespace Role, into this test namespace.
    rbac = [d for d in operator_docs if d["kind"] in (
        "ClusterRole", "ClusterRoleBinding", "ServiceAccount", "Role", "RoleBinding")]
    for doc in rbac:
        doc["metadata"].pop("namespace", None)
        for subject in doc.get("subjects") or []:
            subject["namespace"] = name  # every ServiceAccount lives in the test namespace here
    apply(api, rbac, namespace=name)
    yield name
    core.delete_namespace(name)  # the API server's GC removes everything in it


@pytest.fixture
async def operator(api: Any, namespace: str) -> AsyncIterator[None]:
    """The operator in this process, authenticated as its ServiceAccount (its RBAC applies)."""
    import kopf
    import kubernetes

    from imagesync.controller.handlers import Context, configure, register
    from imagesync.controller.kube import Kube
    from imagesync.controller.settings import OperatorSettings

    operator_sa = next(d for d in load_yaml_dir(ROOT / "deploy") if d["kind"] == "ServiceAccount"
                       and "operator" in d["metadata"]["name"])
    sa_namespace = namespace  # the fixture created it there
    core = kubernetes.client.CoreV1Api(api)
    token = core.create_namespaced_service_account_token(
        operator_sa["metadata"]["name"], sa_namespace,
        {"spec": {"audiences": [], "expirationSeconds": 3600}}).status.token
    configuration = kubernetes.client.Configuration()
    base = api.configuration
    configuration.host, configuration.ssl_ca_cert, configuration.verify_ssl = \
        base.host, base.ssl_ca_cert, base.verify_ssl
    configuration.api_key = {"authorization": f"Bearer {token}"}
    sa_client = kubernetes.client.ApiClient(configuration)

    registry = kopf.OperatorRegistry()
    worker_image = os.environ.get("IMAGESYNC_E2E_WORKER_IMAGE", "imagesync:e2e")
    register(registry, Context(Kube(sa_client), OperatorSettings(worker_image=worker_image),
                               schedule_interval=2))

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=base.host, ca_path=base.ssl_ca_cert, token=token,
                                   insecure=not base.verify_ssl)

    @kopf.on.startup(registry=registry)
    def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        configure(settings)

    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(kopf.operator(registry=registry, namespaces=[namespace], standalone=True,
                                             stop_flag=stop, ready_flag=ready))
    await asyncio.wait_for(ready.wait(), 30)
    yield
    stop.set()
    with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
        await asyncio.wait_for(task, 30)
    sa_client.close()


async def play_kubelet(api: Any, namespace: str, job_name: str, workdir: Path) -> None:
    """Run the Job's Pods locally as a kubelet would, and report their end through the API."""
    import kubernetes

    core = kubernetes.client.CoreV1Api(api)
    done: set[str] = set()
    deadline = asyncio.get_running_loop().time() + 240
    while asyncio.get_running_loop().time() < deadline:
        job = kubernetes.client.BatchV1Api(api).read_namespaced_job(job_name, namespace)
        if any(c.type in ("Complete", "Failed") and c.status == "True" for c in job.status.conditions or []):
            return
        pods = core.list_namespaced_pod(namespace, label_selector=f"job-name={job_name}").items
        for pod in pods:
            if pod.metadata.name in done or pod.status.phase in ("Succeeded", "Failed"):
                continue
            done.add(pod.metadata.name)
            volume = next(v for v in pod.spec.volumes if v.secret)
            secret = core.read_namespaced_secret(volume.secret.secret_name, namespace)
            config_dir = workdir / pod.metadata.name
            config_dir.mkdir(parents=True)
            for key, value in (secret.data or {}).items():
                (config_dir / key).write_bytes(base64.b64decode(value))
            container = pod.spec.containers[0]
            env = {"PATH": os.environ.get("PATH", ""), "HOME": str(workdir)}
            for item in container.env or []:
                if item.value is not None:
                    env[item.name] = item.value
                elif item.value_from and item.value_from.field_ref:
                    path = item.value_from.field_ref.field_path
                    env[item.name] = {"metadata.name": pod.metadata.name,
                                      "metadata.namespace": namespace}.get(path, "")
            index = (pod.metadata.annotations or {}).get("batch.kubernetes.io/job-completion-index")
            if index is not None:
                env["JOB_COMPLETION_INDEX"] = index
            env["IMAGESYNC_CONFIG_DIR"] = str(config_dir)
            env["IMAGESYNC_KUBE_API"] = api.configuration.host
            token = core.create_namespaced_service_account_token(
                pod.spec.service_account_name, namespace, {"spec": {"expirationSeconds": 3600}}).status.token
            (workdir / f"{pod.metadata.name}-sa").mkdir()
            (workdir / f"{pod.metadata.name}-sa" / "token").write_text(token)
            if api.configuration.ssl_ca_cert:
                (workdir / f"{pod.metadata.name}-sa" / "ca.crt").write_text(
                    Path(api.configuration.ssl_ca_cert).read_text())
            env["IMAGESYNC_SA_DIR"] = str(workdir / f"{pod.metadata.name}-sa")
            process = await asyncio.create_subprocess_exec(sys.executable, "-m", "imagesync.cli.main", "worker",
                                                           env=env)
            code = await process.wait()
            now = kubernetes.client.ApiClient().sanitize_for_serialization(
                __import__("datetime").datetime.now(__import__("datetime").UTC))
            terminated = {"exitCode": code, "reason": "Completed" if code == 0 else "Error",
                          "startedAt": now, "finishedAt": now}
            core.patch_namespaced_pod_status(pod.metadata.name, namespace, {"status": {
                "phase": "Succeeded" if code == 0 else "Failed",
                "conditions": [{"type": "Ready", "status": "False", "reason": "PodCompleted"}],
                "containerStatuses": [{"name": container.name, "image": container.image, "imageID": "",
                                       "ready": False, "restartCount": 0,
                                       "state": {"terminated": terminated}}]}})
        await asyncio.sleep(1)
    raise AssertionError(f"Job {job_name} did not finish")


async def wait_phase(api: Any, namespace: str, name: str, phases: set[str], timeout: float = 300) -> dict[str, Any]:
    import kubernetes

    custom = kubernetes.client.CustomObjectsApi(api)
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        obj: dict[str, Any] = custom.get_namespaced_custom_object("imagesync.dev", "v1alpha1", namespace,
                                                                  "imagesyncjobs", name)
        if (obj.get("status") or {}).get("phase") in phases:
            return obj
        await asyncio.sleep(1)
    raise AssertionError(f"{name} never reached {phases}")


@pytest.mark.skipif(not PLAY_KUBELET and not os.environ.get("IMAGESYNC_E2E_WORKER_IMAGE"),
                    reason="needs nodes with IMAGESYNC_E2E_WORKER_IMAGE, or IMAGESYNC_E2E_PLAY_KUBELET=1")
async def test_sync_job_completes_on_a_real_cluster(api: Any, namespace: str, operator: None,
                                                    make_registry, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import kubernetes

    from testbed import seed

    if PLAY_KUBELET:
        source, target = make_registry(), make_registry()
        image = seed.push_index(source, "e2e/app", "1", seed="e2e")
        source_host, target_host = source.host, target.host
    else:
        source_host, target_host = os.environ["IMAGESYNC_E2E_SOURCE"], os.environ["IMAGESYNC_E2E_TARGET"]
        image = None
    custom = kubernetes.client.CustomObjectsApi(api)
    for name, host in (("source", source_host), ("target", target_host)):
        custom.create_namespaced_custom_object("imagesync.dev", "v1alpha1", namespace, "registrycredentials", {
            "apiVersion": "imagesync.dev/v1alpha1", "kind": "RegistryCredential", "metadata": {"name": name},
            "spec": {"registry": host, "insecure": True}})
    custom.create_namespaced_custom_object("imagesync.dev", "v1alpha1", namespace, "imagesyncjobs", {
        "apiVersion": "imagesync.dev/v1alpha1", "kind": "ImageSyncJob", "metadata": {"name": "e2e"},
        "spec": {"images": {f"{source_host}/e2e/app:1": f"{target_host}/mirror/app"}, "parallelism": 2}})
    if PLAY_KUBELET:
        status: dict[str, Any] = {}
        while not status.get("jobName"):
            await asyncio.sleep(1)
            status = custom.get_namespaced_custom_object("imagesync.dev", "v1alpha1", namespace, "imagesyncjobs",
                                                         "e2e").get("status") or {}
        await play_kubelet(api, namespace, status["jobName"], tmp_path)
    obj = await wait_phase(api, namespace, "e2e", {"Succeeded", "PartiallyFailed", "Failed"})
    status = obj["status"]
    assert status["phase"] == "Succeeded", status
    assert status["progress"]["imagesSynced"] + status["progress"]["imagesSkipped"] == 1
    if image is not None:
        assert seed.get_manifest(target, "mirror/app", "1")[2] == image.digest

    # Deleting the ImageSyncJob lets the API server's garbage collector remove the Job and the Secret.
    custom.delete_namespaced_custom_object("imagesync.dev", "v1alpha1", namespace, "imagesyncjobs", "e2e")
    batch = kubernetes.client.BatchV1Api(api)
    for _ in range(60):
        if not batch.list_namespaced_job(namespace, label_selector="imagesync.dev/job=e2e").items:
            break
        await asyncio.sleep(1)
    assert not batch.list_namespaced_job(namespace, label_selector="imagesync.dev/job=e2e").items
