"""Issue 12 against a real API server: the operator behind a flaky API (point 5), and a worker killed mid-run
(point 2). Fixtures and helpers come from test_real_cluster.py (same stages, same environment variables).

- test_runs_converge_through_a_flaky_api_and_a_restart: played-kubelet stage (the operator runs in this process,
  so its every call can go through tests/testbed/apiproxy.py; the played kubelet and the checks go to the API
  server directly). With the installed Deployment it is skipped: its Pod talks to the API server directly.
- test_a_worker_killed_mid_run_is_retried_by_the_job: real-node stage (a real Job controller replaces the pod).
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any

import pytest
from e2e import test_real_cluster as real

from testbed import seed
from testbed.apiproxy import FAULT_KINDS, ApiProxy, FaultRates

pytestmark = real.pytestmark

# The fixtures of test_real_cluster.py, for this module's tests (assigned, not imported: they are used as
# parameter names only).
api, namespace, installed_operator, operator = real.api, real.namespace, real.installed_operator, real.operator
registries, cluster = real.registries, real.cluster
RUNS = 5


def flaky_proxy(api: Any, seed_value: int) -> ApiProxy:
    base = api.configuration
    return ApiProxy(base.host, seed=seed_value, rates=FaultRates(), ca_file=base.ssl_ca_cert, verify=base.verify_ssl)


def assert_one_job_and_exact(cluster: real.Cluster, name: str, status: dict[str, Any], images: int) -> None:
    assert status["phase"] == "Succeeded" and status["run"] == 1, status
    progress = status["progress"]
    assert (progress["imagesTotal"], progress["imagesSynced"], progress["imagesFailed"]) == (images, images, 0)
    assert status["syncedSummary"] == f"{images}/{images}" and progress["percent"] == 100
    assert [s["state"] for s in status["shards"]] == ["Succeeded"], status["shards"]
    assert real.condition(status, "Complete")["status"] == "True"
    # Listed by label through the API server itself, not the proxy: exactly the run's one Job.
    assert [j.metadata.name for j in cluster.jobs(name)] == [f"{name}-r1"]


async def test_runs_converge_through_a_flaky_api_and_a_restart(api: Any, namespace: str, cluster: real.Cluster,
                                                              registries: real.Registries) -> None:
    """Five runs; the operator's every API call goes through the fault proxy (500/503, lost answers of creates,
    409 on its patches, cut watches, delays); it is restarted (a new proxy, a new schedule) while runs are in
    flight and two ImageSyncJobs wait unseen. Each run ends Succeeded with exact counts and exactly one Job, and
    the proxy injected every kind of fault (printed: docs/guarantees.md quotes the figures)."""
    if real.INSTALLED:
        pytest.skip("the installed Deployment's operator talks to the API server directly: no proxy in between")
    names = [f"flaky{i}" for i in range(RUNS)]
    images = [seed.push_image(registries.source, f"flaky/app{i}", "1", seed=f"flaky{i}") for i in range(RUNS)]
    cluster.credentials_for(registries)

    def create(i: int) -> None:
        cluster.create("imagesyncjobs", names[i], {"images": {
            f"{registries.source_host}/flaky/app{i}:1": f"{registries.target_host}/flaky/app{i}"}})

    counts: collections.Counter[str] = collections.Counter()
    with flaky_proxy(api, 12) as proxy:
        async with real.running_operator(api, namespace, via=proxy.url):
            cluster.hold_pods = True  # the runs stay in flight across the restart
            for i in range(3):
                create(i)
            await cluster.wait("three Jobs", lambda: all(cluster.jobs(name) for name in names[:3]), timeout=180)
        counts.update(proxy.counts())
    for i in range(3, RUNS):
        create(i)
    cluster.hold_pods = False
    with flaky_proxy(api, 13) as proxy:
        async with real.running_operator(api, namespace, via=proxy.url):
            for name in names:
                status = await cluster.status_when(name, lambda s: bool(s.get("completionTime")),
                                                   "a finished run", timeout=300)
                assert_one_job_and_exact(cluster, name, status, 1)
        counts.update(proxy.counts())
        print(f"flaky API: faults injected {dict(counts)}; requests forwarded by the second proxy {proxy.forwarded}")
    assert all(counts[kind] > 0 for kind in FAULT_KINDS), counts
    for i, image in enumerate(images):
        assert seed.get_manifest(registries.target, f"flaky/app{i}", "1")[2] == image.digest


@pytest.mark.usefixtures("operator")
async def test_a_worker_killed_mid_run_is_retried_by_the_job(cluster: real.Cluster,
                                                             registries: real.Registries) -> None:
    """A worker Pod force-deleted while it copies (as when its node dies): the Job makes a new Pod (backoffLimit,
    or backoffLimitPerIndex where the cluster has it), the run ends Succeeded with exact counts, one Job."""
    if not real.INSTALLED:
        pytest.skip("needs real nodes and the Job controller's pods (IMAGESYNC_E2E_OPERATOR_IMAGE)")
    # 16 MiB at 1 MiB/s: the copy lasts long enough to be cut in the middle.
    image = seed.push_image(registries.source, "killed/app", "1", layers=(8 << 20, 8 << 20), seed="killed")
    cluster.credentials_for(registries)
    cluster.create("imagesyncjobs", "killed", {"bandwidth": "1MiB/s", "images": {
        f"{registries.source_host}/killed/app:1": f"{registries.target_host}/killed/app"}})
    selector = "imagesync.dev/job=killed"

    def running_pod() -> Any:
        pods = cluster.core.list_namespaced_pod(cluster.namespace, label_selector=selector).items
        return next((p for p in pods if p.status.phase == "Running"), None)

    first = await cluster.wait("a running worker Pod", running_pod, timeout=180)
    await asyncio.sleep(3)  # into the copy: the worker has started, the transfer at 1 MiB/s has not ended
    assert cluster.get("imagesyncjobs", "killed")["status"].get("completionTime") is None, "the run ended too soon"
    cluster.core.delete_namespaced_pod(first.metadata.name, cluster.namespace, grace_period_seconds=0)

    def replacement() -> Any:
        pods = cluster.core.list_namespaced_pod(cluster.namespace, label_selector=selector).items
        return next((p for p in pods if p.metadata.uid != first.metadata.uid), None)

    second = await cluster.wait("the Job's new Pod", replacement, timeout=120)
    status = await cluster.finished("killed")
    assert_one_job_and_exact(cluster, "killed", status, 1)
    assert seed.get_manifest(registries.target, "killed/app", "1")[2] == image.digest
    (job,) = cluster.jobs("killed")
    # status.failed counts the deleted Pod only where the Job tracks Pods with finalizers (1.26+); older Job
    # controllers just replace a Pod that is gone, so only the success is asserted.
    assert job.status.succeeded == 1, job.status
    print(f"worker killed: {first.metadata.name} deleted, {second.metadata.name} finished the run "
          f"(Job failed={job.status.failed}, backoffLimitPerIndex={job.spec.backoff_limit_per_index})")

