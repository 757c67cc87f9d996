"""Forged and malformed worker reports against the operator (issue 11, points 4 and 5), on the emulator.

While a real run is in progress, the test plays someone who may create Pods and ConfigMaps in the
namespace, and a compromised worker of the run (which may patch the run's report ConfigMap, and nothing
else): a ConfigMap that carries the run's labels (but is not the operator's) says shard 0 is done, with
inflated numbers and refused logins; a Pod with the run's labels (not the Job's) says it Succeeded; then
the run's own report ConfigMap gets keys for a shard the run does not have, a report that names a pod of
no shard, and a report with a 400-digit rate. The status keeps telling the truth: the run is not
Succeeded before the real worker ends, the forged numbers are never counted, no RegistryCredential is
marked LoginRejected, and the run ends normally.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from kube.conftest import Cluster, Operator
from kube.jobplayer import COMPLETION_INDEX, JobPlayer
from kube.objects import NAMESPACE, isj, regcred

from imagesync.controller.render import LABEL_JOB, LABEL_RUN
from testbed import seed
from testbed.registry import RegistryProcess

IMAGES = 8
FORGED_BYTES = 987_654_321_000
PODS = f"/api/v1/namespaces/{NAMESPACE}/pods"
CONFIGMAPS = f"/api/v1/namespaces/{NAMESPACE}/configmaps"
REPORT = "victim-r1-report"


def pods(cluster: Cluster) -> list[dict[str, Any]]:
    return cluster.emulator.list("v1/pods", NAMESPACE)


def real_worker_done(cluster: Cluster) -> bool:
    """The Job's own pod (the one with an owner reference) has said its last word in the report ConfigMap."""
    configmap = cluster.emulator.get("v1/configmaps", NAMESPACE, REPORT) or {}
    try:
        report = json.loads((configmap.get("data") or {}).get("shard-0") or "{}")
    except ValueError:
        return False
    owned = [p["metadata"]["uid"] for p in pods(cluster) if p["metadata"].get("ownerReferences")]
    return report.get("done") is True and (report.get("pod") or {}).get("uid") in owned


async def test_forged_reports_from_a_foreign_configmap_and_bad_keys_in_the_run_s_own_are_ignored(
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
        real = {"name": real_pod["metadata"]["name"], "uid": real_pod["metadata"]["uid"]}

        # 1. A ConfigMap with the run's labels that the operator did not create, claiming shard 0 is done
        #    (it even names the real pod), and a Pod with the run's labels but no owner, Succeeded.
        forged_report = {"imagesTotal": IMAGES, "imagesSynced": IMAGES, "imagesSkipped": 0, "imagesFailed": 0,
                         "bytesCopied": FORGED_BYTES, "bytesPerSecond": 1.0, "done": True, "shard": 0,
                         "failedImages": [], "failedImagesTotal": 0, "pod": real,
                         "loginsRejected": [registry.host, registry2.host]}
        response = await cluster.client.post(CONFIGMAPS, json={
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "victim-r1-report-forged", "labels": dict(labels)},
            "data": {"shard-0": json.dumps(forged_report)}})
        assert response.status_code == 201, response.text
        forged_pod = {"apiVersion": "v1", "kind": "Pod",
                      "metadata": {"name": "victim-r1-0-forged", "labels": dict(labels),
                                   "annotations": {COMPLETION_INDEX: "0"}},
                      "spec": {"containers": [{"name": "worker", "image": "evil.example.com/forger:1"}]}}
        response = await cluster.client.post(PODS, json=forged_pod)
        assert response.status_code == 201, response.text
        await player.patch_status(f"{PODS}/victim-r1-0-forged", {"phase": "Succeeded"})
        forged_uid = (cluster.emulator.get("v1/pods", NAMESPACE, "victim-r1-0-forged") or {})["metadata"]["uid"]

        # 2. What a compromised worker of the run can write: its own run's report ConfigMap, any key. A shard
        #    the run does not have, garbage, and shard 0's report naming the forged pod (not the Job's).
        still_running = ((cluster.isj("victim") or {}).get("status") or {}).get("phase") == "Running"
        await cluster.patch(f"{CONFIGMAPS}/{REPORT}", {"data": {
            "shard-1": json.dumps({**forged_report, "shard": 1}),
            "shard-0x": '{"done": true, "bytesPerSecond": NaN',
            "shard-0": json.dumps({**forged_report, "pod": {"name": "victim-r1-0-forged", "uid": forged_uid}})}})
        # 3. Shard 0's report, naming the real pod, with a 400-digit rate (the fold once raised OverflowError
        #    on it and the run stayed active for good); the worker's next report replaces it.
        bad = {"imagesTotal": IMAGES, "imagesSynced": IMAGES, "done": False, "bytesPerSecond": int("9" * 400),
               "pod": real}
        await cluster.patch(f"{CONFIGMAPS}/{REPORT}", {"data": {"shard-0": json.dumps(bad)}})

        runs = await worker
        assert [r.returncode for r in runs] == [0], [r.stderr[-800:] for r in runs]
        final = await cluster.wait_status("victim", lambda s: s.get("phase") == "Succeeded", "Succeeded")
    finally:
        watcher.cancel()
        if not worker.done():
            worker.cancel()

    assert still_running, "the run ended before the forgeries landed: nothing was attacked"
    # Neither the run nor its shard was Succeeded before the real worker said it was done (the status is
    # read before the report in each sample), and no status ever carried forged numbers.
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
    # The run's report objects go with its end (just after the final status); the forged ConfigMap is not
    # the operator's to delete.
    await cluster.wait_for("the run's report objects deleted", lambda: all(
        cluster.emulator.get(resource, NAMESPACE, REPORT) is None for resource in (
            "v1/configmaps", "rbac.authorization.k8s.io/v1/roles", "rbac.authorization.k8s.io/v1/rolebindings")))
    assert cluster.emulator.get("v1/configmaps", NAMESPACE, "victim-r1-report-forged") is not None


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
