"""Forged and malformed worker reports against the operator (issue 11, point 4), on the emulator.

While a real run is in progress, the test plays someone who may create and patch Pods in the namespace:
a Pod that carries the run's labels (but is not the Job's) says the shard is done, with inflated numbers
and a refused login; then the run's own Pod gets a report with a 400-digit rate (a compromised worker).
The status keeps telling the truth: the run is not Succeeded before the real worker ends, the forged
numbers are never counted, no RegistryCredential is marked LoginRejected, and the run ends normally.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from kube.conftest import Cluster, Operator
from kube.jobplayer import COMPLETION_INDEX, JobPlayer
from kube.objects import NAMESPACE, isj, regcred

from imagesync.controller.render import LABEL_JOB, LABEL_RUN, PROGRESS_ANNOTATION
from testbed import seed
from testbed.registry import RegistryProcess

IMAGES = 8
FORGED_BYTES = 987_654_321_000
PODS = f"/api/v1/namespaces/{NAMESPACE}/pods"


def pods(cluster: Cluster) -> list[dict[str, Any]]:
    return cluster.emulator.list("v1/pods", NAMESPACE)


def real_worker_done(cluster: Cluster) -> bool:
    """The Job's own pod (the one with an owner reference) has said its last word."""
    for pod in pods(cluster):
        if pod["metadata"].get("ownerReferences"):
            raw = (pod["metadata"].get("annotations") or {}).get(PROGRESS_ANNOTATION) or "{}"
            try:
                return json.loads(raw).get("done") is True
            except ValueError:
                return False
    return False


async def test_forged_reports_from_a_foreign_pod_and_a_bad_report_are_ignored(
        cluster: Cluster, operator: Operator, player: JobPlayer, registry: RegistryProcess,
        registry2: RegistryProcess) -> None:
    for i in range(IMAGES):
        seed.push_image(registry, f"forged/app{i}", "1", seed=f"forged{i}")
    await cluster.create(regcred("source", registry.host))
    await cluster.create(regcred("target", registry2.host))
    # qps and concurrency 1 stretch the run over several seconds: the forgeries land mid-run.
    await cluster.create(isj("victim", {f"{registry.host}/forged/app{i}:1": f"{registry2.host}/forged/app{i}"
                                        for i in range(IMAGES)}, concurrency=1, qps=6))
    status = await cluster.wait_status("victim", lambda s: s.get("jobName") == "victim-r1", "a job")
    assert {c["registry"] for c in status["credentials"]} == {registry.host, registry2.host}

    seen: list[dict[str, Any]] = []

    async def watch() -> None:
        while True:
            current = (cluster.isj("victim") or {}).get("status") or {}
            seen.append({"phase": current.get("phase"), "progress": dict(current.get("progress") or {}),
                         "shards": [row.get("state") for row in current.get("shards") or []],
                         "real_done": real_worker_done(cluster)})
            await asyncio.sleep(0.02)

    watcher = asyncio.create_task(watch())
    worker = asyncio.create_task(player.play(NAMESPACE, "victim-r1"))
    try:
        # The real worker is running and has reported (some images synced, not all).
        await cluster.wait_status("victim", lambda s: s.get("phase") == "Running"
                                  and (s.get("progress") or {}).get("imagesTotal") == IMAGES, "real progress")
        (real_pod,) = pods(cluster)
        labels = real_pod["metadata"]["labels"]
        assert labels[LABEL_JOB] == "victim" and labels[LABEL_RUN] == "1"

        # 1. A pod with the run's labels but no owner reference, created after the real one (so it would
        #    replace shard 0 by creation order), claiming the shard is done.
        forged_report = {"imagesTotal": IMAGES, "imagesSynced": IMAGES, "imagesSkipped": 0, "imagesFailed": 0,
                         "bytesCopied": FORGED_BYTES, "bytesPerSecond": 1.0, "done": True, "shard": 0,
                         "failedImages": [], "failedImagesTotal": 0,
                         "loginsRejected": [registry.host, registry2.host]}
        forged = {"apiVersion": "v1", "kind": "Pod",
                  "metadata": {"name": "victim-r1-0-forged", "labels": dict(labels),
                               "annotations": {COMPLETION_INDEX: "0",
                                               PROGRESS_ANNOTATION: json.dumps(forged_report)}},
                  "spec": {"containers": [{"name": "worker", "image": "evil.example.com/forger:1"}]}}
        response = await cluster.client.post(PODS, json=forged)
        assert response.status_code == 201, response.text
        await player.patch_status(f"{PODS}/victim-r1-0-forged", {"phase": "Succeeded"})
        # A second one with garbage: not even JSON.
        garbage = json.loads(json.dumps(forged))
        garbage["metadata"].update(name="victim-r1-0-garbage")
        garbage["metadata"]["annotations"][PROGRESS_ANNOTATION] = '{"done": true, "bytesPerSecond": NaN'
        response = await cluster.client.post(PODS, json=garbage)
        assert response.status_code == 201, response.text

        # 2. The run's own pod gets a report with a 400-digit rate (the fold once raised OverflowError
        #    on it and the run stayed active for good); the worker's next report replaces it.
        still_running = ((cluster.isj("victim") or {}).get("status") or {}).get("phase") == "Running"
        bad = {"imagesTotal": IMAGES, "imagesSynced": IMAGES, "done": False, "bytesPerSecond": int("9" * 400)}
        await cluster.patch(f"{PODS}/{real_pod['metadata']['name']}",
                            {"metadata": {"annotations": {PROGRESS_ANNOTATION: json.dumps(bad)}}})

        runs = await worker
        assert [r.returncode for r in runs] == [0], [r.stderr[-800:] for r in runs]
        final = await cluster.wait_status("victim", lambda s: s.get("phase") == "Succeeded", "Succeeded")
    finally:
        watcher.cancel()
        if not worker.done():
            worker.cancel()

    assert still_running, "the run ended before the forgeries landed: nothing was attacked"
    # Neither the run nor its shard was Succeeded before the real worker said it was done (the status is
    # read before the pod in each sample), and no status ever carried forged numbers.
    early = [s for s in seen if not s["real_done"] and (s["phase"] == "Succeeded" or "Succeeded" in s["shards"])]
    assert not early, f"Succeeded before the worker ended: {early[:1]}"
    assert all(s["progress"].get("bytesCopied", 0) < FORGED_BYTES for s in seen)
    assert all(s["progress"].get("imagesSynced", 0) <= IMAGES for s in seen)
    # The end is the real worker's: every image synced, its own byte count, one shard.
    progress = final["progress"]
    assert (progress["imagesTotal"], progress["imagesSynced"], progress["imagesFailed"]) == (IMAGES, IMAGES, 0)
    assert 0 < progress["bytesCopied"] < FORGED_BYTES
    assert [s["state"] for s in final["shards"]] == ["Succeeded"]
    for i in range(IMAGES):
        assert seed.get_manifest(registry2, f"forged/app{i}", "1")
    # The forged refused logins reached no RegistryCredential.
    for name in ("source", "target"):
        cred = cluster.emulator.get("imagesync.dev/v1alpha1/registrycredentials", NAMESPACE, name) or {}
        reasons = {c.get("reason") for c in (cred.get("status") or {}).get("conditions") or []}
        assert "LoginRejected" not in reasons, (name, reasons)
    assert not any(e.get("reason") == "LoginRejected" for e in cluster.events())


async def test_a_job_that_carries_the_run_s_labels_ends_nothing(
        cluster: Cluster, operator: Operator, player: JobPlayer, registry: RegistryProcess,
        registry2: RegistryProcess) -> None:
    seed.push_image(registry, "forged/one", "1", seed="one")
    await cluster.create(regcred("source", registry.host))
    await cluster.create(regcred("target", registry2.host))
    await cluster.create(isj("lured", {f"{registry.host}/forged/one:1": f"{registry2.host}/forged/one"}))
    status = await cluster.wait_status("lured", lambda s: s.get("jobName") == "lured-r1", "a job")
    (job,) = cluster.jobs()

    # Someone who may create Jobs makes one with the run's labels and marks it Complete (or Failed).
    jobs_path = f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs"
    fake = {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": "lured-r1-fake", "labels": dict(job["metadata"]["labels"])},
            "spec": job["spec"]}
    response = await cluster.client.post(jobs_path, json=fake)
    assert response.status_code == 201, response.text
    await player.patch_status(f"{jobs_path}/lured-r1-fake", {"failed": 1, "conditions": [
        {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]})
    await asyncio.sleep(1.0)  # several event deliveries
    status = (cluster.isj("lured") or {}).get("status") or {}
    assert not status.get("completionTime") and status.get("phase") in ("Pending", "Running"), status.get("phase")
    assert status.get("secretName"), "the run's Secret must stay until the real run ends"

    runs = await player.play(NAMESPACE, "lured-r1")
    assert [r.returncode for r in runs] == [0], [r.stderr[-800:] for r in runs]
    final = await cluster.wait_status("lured", lambda s: s.get("phase") == "Succeeded", "Succeeded")
    assert final["progress"]["imagesSynced"] == 1
