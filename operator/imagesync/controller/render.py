"""ImageSyncJob -> the run's Secret and batch/v1 Job manifests (pure, deterministic).

Credentials go only into the Secret, which the Job mounts read-only: never into the Job's args, env or
annotations.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

import yaml

from imagesync.controller.settings import OperatorSettings
from imagesync.controller.spec import JobSpec

API_VERSION = "imagesync.dev/v1alpha1"
KIND = "ImageSyncJob"
LABEL_JOB = "imagesync.dev/job"
LABEL_RUN = "imagesync.dev/run"
PROGRESS_ANNOTATION = "imagesync.dev/progress"
CONFIG_DIR = "/etc/imagesync/config"
# Room for the pod suffixes Kubernetes appends to a Job's name (-<index>-<5 random>).
MAX_NAME = 52
# The worker container's resources when spec.worker.resources is empty. The engine's measured peak is about
# 80 MiB at --proc 8 (docs/benchmarks.md): the limit leaves room for higher concurrency and big manifests
# lists, and a runaway worker is OOM-killed alone instead of pressing its node. No CPU limit: throttling
# only slows a copy down, and the request already orders it behind what needs the CPU.
DEFAULT_WORKER_RESOURCES: dict[str, dict[str, str]] = {
    "requests": {"cpu": "100m", "memory": "128Mi"},
    "limits": {"memory": "512Mi"},
}


def run_name(isj_name: str, run: int) -> str:
    """``<name>-r<run>``, shortened with a hash when too long: the same inputs always give the same name."""
    name = f"{isj_name}-r{run}"
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    suffix = f"-{digest}-r{run}"
    return isj_name[:MAX_NAME - len(suffix)].rstrip("-.") + suffix


def owner_reference(isj: Mapping[str, Any]) -> dict[str, Any]:
    meta = isj["metadata"]
    return {"apiVersion": API_VERSION, "kind": KIND, "name": meta["name"], "uid": meta["uid"],
            "controller": True, "blockOwnerDeletion": True}


def labels(isj: Mapping[str, Any], run: int) -> dict[str, str]:
    return {"app.kubernetes.io/name": "imagesync-worker", "app.kubernetes.io/managed-by": "imagesync",
            LABEL_JOB: isj["metadata"]["name"], LABEL_RUN: str(run)}


def worker_options(spec: JobSpec) -> dict[str, Any]:
    options: dict[str, Any] = {"proc": spec.concurrency, "retries": spec.retries, "force": spec.force}
    if spec.qps:
        options["qps"] = spec.qps
    if spec.skip_existing:
        options["skipExisting"] = True
    if spec.dry_run:
        options["dryRun"] = True
    if spec.bandwidth:
        options["limitRate"] = spec.bandwidth
    if spec.prune.enabled:
        options["prune"] = "dry-run" if spec.prune.dry_run else "delete"
    referrers = spec.referrers
    options["referrers"] = {"enabled": referrers.enabled, "includeTypes": list(referrers.include_types),
                            "excludeTypes": list(referrers.exclude_types), "optional": referrers.optional}
    if spec.platforms:
        options["platforms"] = list(spec.platforms)
    if spec.default_registry:
        options["defaultRegistry"] = spec.default_registry
        options["defaultNamespace"] = spec.default_namespace
    return options


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def render_config_secret(isj: Mapping[str, Any], run: int, spec: JobSpec, auth: Mapping[str, Any],
                         ca_files: Mapping[str, str]) -> dict[str, Any]:
    files = {
        "auth.yaml": yaml.safe_dump(dict(auth), sort_keys=True),
        "images.yaml": yaml.safe_dump(dict(spec.images), sort_keys=True),
        "options.json": json.dumps(worker_options(spec), sort_keys=True),
        **ca_files,
    }
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {"name": run_name(isj["metadata"]["name"], run), "namespace": isj["metadata"]["namespace"],
                     "labels": labels(isj, run), "ownerReferences": [owner_reference(isj)]},
        "data": {name: _b64(content) for name, content in files.items()},
    }


def render_job(isj: Mapping[str, Any], run: int, spec: JobSpec, settings: OperatorSettings) -> dict[str, Any]:
    name = run_name(isj["metadata"]["name"], run)
    run_labels = labels(isj, run)
    shards = spec.parallelism
    env = [
        {"name": "IMAGESYNC_CONFIG_DIR", "value": CONFIG_DIR},
        {"name": "IMAGESYNC_SHARDS", "value": str(shards)},
        {"name": "IMAGESYNC_REPORT", "value": "pod-annotation"},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
    ]
    container: dict[str, Any] = {
        "name": "worker",
        "image": spec.worker.image or settings.worker_image,
        "command": ["imagesync", "worker"],
        "env": env,
        "volumeMounts": [{"name": "config", "mountPath": CONFIG_DIR, "readOnly": True}],
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}},
    }
    # The user's resources as given (a partial one is theirs to choose: Kubernetes fills requests from limits).
    container["resources"] = dict(spec.worker.resources) if spec.worker.resources else \
        {kind: dict(values) for kind, values in DEFAULT_WORKER_RESOURCES.items()}
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "serviceAccountName": spec.worker.service_account or settings.worker_service_account,
        # fsGroup: the kubelet writes Secret files as root; group 65532 plus mode 0440 lets the worker read
        # them and no one else (without it a real kubelet's files were unreadable: "Permission denied").
        "securityContext": {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container],
        "volumes": [{"name": "config", "secret": {"secretName": name, "defaultMode": 0o440}}],
    }
    if spec.worker.node_selector:
        pod_spec["nodeSelector"] = dict(spec.worker.node_selector)
    if spec.worker.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in spec.worker.tolerations]
    job_spec: dict[str, Any] = {
        "parallelism": shards,
        "completions": shards,
        # A failed pod is retried by the engine's own rounds first; the Job adds little on top.
        "backoffLimit": 1 if shards == 1 else shards,
        "template": {"metadata": {"labels": run_labels}, "spec": pod_spec},
    }
    if shards > 1:
        job_spec["completionMode"] = "Indexed"
    if settings.worker_deadline_seconds:
        # Kubernetes stops the Job's pods and fails it (reason DeadlineExceeded); the run folds as failed.
        job_spec["activeDeadlineSeconds"] = settings.worker_deadline_seconds
    if settings.worker_ttl_seconds:
        job_spec["ttlSecondsAfterFinished"] = settings.worker_ttl_seconds
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": isj["metadata"]["namespace"], "labels": run_labels,
                     "ownerReferences": [owner_reference(isj)]},
        "spec": job_spec,
    }


def dropped_job_fields(rendered: Mapping[str, Any], stored: Mapping[str, Any]) -> str | None:
    """Why the Job the API server stored cannot run as rendered, or None.

    An API server silently drops fields it does not know: before Kubernetes 1.22 (1.21 with the
    IndexedJob feature gate) that includes ``completionMode``, and every pod of a sharded run would
    then take the same shard.
    """
    wanted = (rendered.get("spec") or {}).get("completionMode")
    if wanted == "Indexed" and (stored.get("spec") or {}).get("completionMode") != "Indexed":
        shards = rendered["spec"].get("parallelism")
        return (f"spec.parallelism is {shards}, but this cluster does not run Indexed Jobs (the API server dropped "
                "the Job's completionMode: Indexed; it needs Kubernetes 1.22 or later, or 1.21 with the "
                "IndexedJob feature gate): set spec.parallelism to 1 or upgrade the cluster")
    return None


def runs_to_prune(runs: Iterable[int], current: int, keep: int) -> list[int]:
    """Finished runs beyond the ``keep`` newest (the current run counts as one of them)."""
    return sorted(run for run in set(runs) if run <= current - keep)
