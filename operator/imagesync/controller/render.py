"""ImageSyncJob -> the run's manifests (pure, deterministic): its Secret and batch/v1 Job, and its report
ConfigMap with the Role and RoleBinding that let the run's workers patch it and nothing else.

Credentials (and spec.signatureKeys' public keys) go only into the Secret, which the Job mounts read-only:
never into the Job's args, env or annotations.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import yaml

from imagesync.controller.settings import OperatorSettings
from imagesync.controller.spec import JobSpec

API_VERSION = "imagesync.dev/v1alpha1"
KIND = "ImageSyncJob"
LABEL_JOB = "imagesync.dev/job"
LABEL_RUN = "imagesync.dev/run"
# Each shard merge-patches its report into one key of the run's report ConfigMap (issue 11, finding 5):
# the worker's only grant is patch on that one ConfigMap, never on Pods.
REPORT_KEY_PREFIX = "shard-"
RBAC_GROUP = "rbac.authorization.k8s.io"
CONFIG_DIR = "/etc/imagesync/config"
# Room for the pod suffixes Kubernetes appends to a Job's name (-<index>-<5 random>).
MAX_NAME = 52
# The worker container's resources when spec.worker.resources is empty. The engine's measured peak is about
# 80 MiB at --proc 8 (docs/benchmarks.md): the limit leaves room for higher concurrency and big manifests
# lists, and a runaway worker is OOM-killed alone instead of pressing its node. No CPU limit: throttling
# only slows a copy down, and the request already orders it behind what needs the CPU.
# New pods the Job makes for a shard whose pod failed (spec.backoffLimitPerIndex, where the cluster has it).
RETRIES_PER_SHARD = 1
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


def report_name(isj_name: str, run: int) -> str:
    """The run's report ConfigMap, and the Role and RoleBinding that let its workers patch it."""
    return run_name(isj_name, run) + "-report"


def report_key(index: int) -> str:
    """The report ConfigMap's key of shard ``index``."""
    return f"{REPORT_KEY_PREFIX}{index}"


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
    if spec.only_signed:
        options["onlySigned"] = True
        # The keys themselves are files of the run's Secret, beside options.json (never in args or env).
        options["signatureKeys"] = [signature_key_file(i) for i in range(len(spec.signature_keys))]
    return options


def signature_key_file(index: int) -> str:
    """The run Secret's file holding spec.signatureKeys[index]'s public key (PEM)."""
    return f"signature-key-{index}.pem"


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def render_config_secret(isj: Mapping[str, Any], run: int, spec: JobSpec, auth: Mapping[str, Any],
                         ca_files: Mapping[str, str], signature_keys: Sequence[str] = ()) -> dict[str, Any]:
    """``signature_keys``: the PEM public keys of spec.signatureKeys, in order (controller/credentials.py)."""
    if len(signature_keys) != len(spec.signature_keys):
        raise ValueError(f"{len(spec.signature_keys)} spec.signatureKeys but {len(signature_keys)} keys given")
    files = {
        "auth.yaml": yaml.safe_dump(dict(auth), sort_keys=True),
        "images.yaml": yaml.safe_dump(dict(spec.images), sort_keys=True),
        "options.json": json.dumps(worker_options(spec), sort_keys=True),
        **ca_files,
        **{signature_key_file(i): pem for i, pem in enumerate(signature_keys)},
    }
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {"name": run_name(isj["metadata"]["name"], run), "namespace": isj["metadata"]["namespace"],
                     "labels": labels(isj, run), "ownerReferences": [owner_reference(isj)]},
        "data": {name: _b64(content) for name, content in files.items()},
    }


def _run_metadata(isj: Mapping[str, Any], run: int, name: str) -> dict[str, Any]:
    return {"name": name, "namespace": isj["metadata"]["namespace"], "labels": labels(isj, run),
            "ownerReferences": [owner_reference(isj)]}


def render_report_configmap(isj: Mapping[str, Any], run: int) -> dict[str, Any]:
    """Empty: each shard adds its own key (``shard-<index>``) with a JSON merge patch."""
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": _run_metadata(isj, run, report_name(isj["metadata"]["name"], run))}


def render_report_role(isj: Mapping[str, Any], run: int) -> dict[str, Any]:
    """patch on the run's report ConfigMap, by name, and nothing else: a worker cannot touch Pods, other
    runs' reports or any other object (RBAC grants by name only for get, update, patch and delete)."""
    name = report_name(isj["metadata"]["name"], run)
    return {"apiVersion": f"{RBAC_GROUP}/v1", "kind": "Role", "metadata": _run_metadata(isj, run, name),
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": [name], "verbs": ["patch"]}]}


def render_report_rolebinding(isj: Mapping[str, Any], run: int, service_account: str) -> dict[str, Any]:
    """The report Role, bound to the ServiceAccount the run's worker pods run as."""
    name = report_name(isj["metadata"]["name"], run)
    return {"apiVersion": f"{RBAC_GROUP}/v1", "kind": "RoleBinding", "metadata": _run_metadata(isj, run, name),
            "roleRef": {"apiGroup": RBAC_GROUP, "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": service_account,
                          "namespace": isj["metadata"]["namespace"]}]}


def worker_service_account(spec: JobSpec, settings: OperatorSettings) -> str:
    return spec.worker.service_account or settings.worker_service_account


def render_job(isj: Mapping[str, Any], run: int, spec: JobSpec, settings: OperatorSettings) -> dict[str, Any]:
    name = run_name(isj["metadata"]["name"], run)
    run_labels = labels(isj, run)
    shards = spec.parallelism
    env = [
        {"name": "IMAGESYNC_CONFIG_DIR", "value": CONFIG_DIR},
        {"name": "IMAGESYNC_SHARDS", "value": str(shards)},
        {"name": "IMAGESYNC_REPORT", "value": "configmap"},
        {"name": "IMAGESYNC_REPORT_CONFIGMAP", "value": report_name(isj["metadata"]["name"], run)},
        # The pod's name and uid go into each report: the operator counts a report only when it names a
        # pod of the run's Job at that shard, and tells a retried shard's attempts apart.
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
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
        "serviceAccountName": worker_service_account(spec, settings),
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
        # A failed pod is retried by the engine's own rounds first; the Job adds little on top: a worker that
        # dies (killed, evicted, its node gone) gets RETRIES_PER_SHARD new pods, and the shards together no more.
        "backoffLimit": RETRIES_PER_SHARD * shards,
        "template": {"metadata": {"labels": run_labels}, "spec": pod_spec},
    }
    if shards > 1:
        # Shards scale out only across nodes (docs/scale-out.md: on one node they share its CPUs with each
        # other): spread them, preferred, not required, so a one-node cluster still runs every shard.
        pod_spec["topologySpreadConstraints"] = [{
            "maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": {LABEL_JOB: run_labels[LABEL_JOB], LABEL_RUN: run_labels[LABEL_RUN]}}}]
        job_spec["completionMode"] = "Indexed"
        # Per shard on clusters that have it (1.28+ with the JobBackoffLimitPerIndex gate, on by default from
        # 1.29): one shard failing over and over cannot use up the others' retries, and every shard runs to
        # its end (maxFailedIndexes: all of them may fail without stopping the rest). An older API server drops
        # both fields and backoffLimit alone applies, as before; the total above stays a cap either way.
        job_spec["backoffLimitPerIndex"] = RETRIES_PER_SHARD
        job_spec["maxFailedIndexes"] = shards
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
