"""Issue 11, point 8 against the emulator: an ImageSyncJob whose spec.worker names an image, ServiceAccount or
toleration the operator's settings do not allow is refused (Valid=False/WorkerNotAllowed, Stalled, a Warning
event) and no Job or run Secret is created; fixing the spec, or allowing the value in the operator's settings
(an operator restart), lets the run start."""

from __future__ import annotations

from typing import Any

import pytest
from kube.conftest import Cluster, Operator
from kube.objects import NAMESPACE, isj

PATH = f"/apis/imagesync.dev/v1alpha1/namespaces/{NAMESPACE}/imagesyncjobs"
IMAGES = {"r.example.com/a/app:1": "t.example.com/a/app"}


def condition_of(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(c for c in status.get("conditions") or [] if c["type"] == kind)


def refused(status: dict[str, Any]) -> bool:
    return any(c["type"] == "Valid" and c["status"] == "False" for c in status.get("conditions") or [])


def run_objects(cluster: Cluster, name: str) -> list[str]:
    return [o["metadata"]["name"] for o in cluster.jobs() + cluster.secrets()
            if o["metadata"]["name"].startswith(f"{name}-")]


async def test_a_worker_the_operator_does_not_allow_is_refused_until_the_spec_is_fixed(
        cluster: Cluster, operator: Operator) -> None:
    # The test operator's worker image is imagesync:test: by default any tag of docker.io/library/imagesync.
    await cluster.create(isj("miner", IMAGES, worker={
        "image": "evil.example.com/miner:1", "serviceAccountName": "default",
        "tolerations": [{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"}],
        "nodeSelector": {"kubernetes.io/hostname": "cp-1"}}))
    status = await cluster.wait_status("miner", refused, "Valid=False")
    valid = condition_of(status, "Valid")
    assert valid["reason"] == "WorkerNotAllowed" and status["phase"] == "Failed"
    for part in ("spec.worker.image: 'evil.example.com/miner:1'", "spec.worker.serviceAccountName: 'default'",
                 "spec.worker.tolerations[0].key: 'node-role.kubernetes.io/control-plane'",
                 "spec.worker.nodeSelector: key 'kubernetes.io/hostname'", "IMAGESYNC_ALLOWED_WORKER_IMAGES"):
        assert part in valid["message"], valid["message"]
    stalled = condition_of(status, "Stalled")
    assert stalled["status"] == "True" and stalled["reason"] == "WorkerNotAllowed"
    assert condition_of(status, "Ready")["status"] == "False"
    event = await cluster.wait_for("a WorkerNotAllowed event", lambda: next(
        (e for e in cluster.events() if e.get("reason") == "WorkerNotAllowed"), None))
    assert event["type"] == "Warning" and "evil.example.com/miner:1" in event["message"]
    assert event["involvedObject"]["name"] == "miner"
    assert run_objects(cluster, "miner") == [] and "jobName" not in status

    # Another tag of the worker image's repository and the worker's own ServiceAccount are allowed.
    await cluster.patch(f"{PATH}/miner", {"spec": {"worker": {
        "image": "imagesync:other-tag", "serviceAccountName": "imagesync-worker",
        "tolerations": None, "nodeSelector": None}}})
    status = await cluster.wait_status("miner", lambda s: s.get("jobName"), "a run")
    assert condition_of(status, "Valid")["status"] == "True" and condition_of(status, "Stalled")["status"] == "False"
    (job,) = cluster.jobs()
    pod = job["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == "imagesync:other-tag" and pod["serviceAccountName"] == "imagesync-worker"
    assert "tolerations" not in pod and "nodeSelector" not in pod


async def test_allowing_the_value_in_the_operator_settings_lets_the_run_start(
        cluster: Cluster, operator: Operator, monkeypatch: pytest.MonkeyPatch) -> None:
    worker = {"image": "tools.example.com/team/imagesync:2", "serviceAccountName": "mirror",
              "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "sync", "effect": "NoSchedule"}]}
    await cluster.create(isj("custom", IMAGES, worker=worker))
    status = await cluster.wait_status("custom", refused, "Valid=False")
    assert condition_of(status, "Valid")["reason"] == "WorkerNotAllowed"
    assert cluster.jobs() == []

    # The operator's admin allows them (the Deployment's env; OperatorSettings reads it when built): after a
    # restart the resumed ImageSyncJob, whose spec never ran, starts.
    await operator.stop()
    monkeypatch.setenv("IMAGESYNC_ALLOWED_WORKER_IMAGES", "tools.example.com/team/")
    monkeypatch.setenv("IMAGESYNC_ALLOWED_WORKER_SERVICE_ACCOUNTS", "mirror")
    monkeypatch.setenv("IMAGESYNC_ALLOWED_TOLERATION_KEYS", "dedicated")
    await operator.start()
    status = await cluster.wait_status("custom", lambda s: s.get("jobName"), "a run after the settings changed")
    assert condition_of(status, "Valid")["status"] == "True"
    (job,) = cluster.jobs()
    pod = job["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == worker["image"] and pod["serviceAccountName"] == "mirror"
    assert pod["tolerations"] == worker["tolerations"]
