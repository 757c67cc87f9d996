"""The operator behind a flaky API server (issue 12, point 5), against the emulator: the operator's every call goes
through tests/testbed/apiproxy.py, which answers 500/503, loses the answers of creates, refuses patches with 409
Conflict, cuts watch streams and delays answers on a seeded schedule. The played kubelet and the test's own reads
go to the emulator directly. Each run still gets exactly one Job and its status converges to the exact counts,
also across an operator restart in the middle of the runs; and the proxy really did inject every kind of fault
(else the test would prove nothing). The real API server's version of this is tests/e2e/test_flaky_api.py."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import kopf
import kubernetes
from kube.conftest import Cluster, emulator_registry
from kube.jobplayer import JobPlayer
from kube.objects import NAMESPACE, isj, regcred

from imagesync.controller.handlers import Context
from imagesync.controller.kube import Kube
from imagesync.controller.settings import OperatorSettings
from testbed import seed
from testbed.apiproxy import FAULT_KINDS, ApiProxy, FaultRates, FaultSchedule, Seen
from testbed.registry import RegistryProcess

RUNS = 4


@contextlib.asynccontextmanager
async def operator_through(cluster: Cluster, proxy: ApiProxy) -> AsyncIterator[None]:
    """kopf and the handlers' client both talk to the proxy."""
    behind = dataclasses.replace(cluster, url=proxy.url)
    api_client = kubernetes.client.ApiClient(kubernetes.client.Configuration(host=proxy.url))
    ctx = Context(Kube(api_client), OperatorSettings(worker_image="imagesync:test"), schedule_interval=0.3,
                  credential_check_interval=0.5)
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(kopf.operator(registry=emulator_registry(behind, ctx), clusterwide=True,
                                             standalone=True, stop_flag=stop, ready_flag=ready))
    await asyncio.wait_for(ready.wait(), 20)
    try:
        yield
    finally:
        stop.set()
        with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(task, 15)
        api_client.close()


def test_the_schedule_is_seeded_and_keeps_409_off_creates() -> None:
    seen = [Seen(method, "/apis/x", False, "") for method in ("GET", "POST", "PATCH", "PUT", "DELETE") * 200]
    first = [FaultSchedule(FaultRates(), 7).decide(s) for s in seen[:1]]
    again = [FaultSchedule(FaultRates(), 7).decide(s) for s in seen[:1]]
    assert first == again
    decisions = [(s, d) for schedule in [FaultSchedule(FaultRates(), 3)] for s in seen
                 for d in [schedule.decide(s)]]
    assert not [s for s, d in decisions if d.conflict and s.method not in ("PATCH", "PUT")]
    assert not [s for s, d in decisions if d.lost_response and s.method != "POST"]
    assert {d.server_error for _, d in decisions} == {None, 500, 503}
    assert all(0.5 <= d.delay <= 2.0 for _, d in decisions if d.delay)
    cuts = [FaultSchedule(FaultRates(watch_cut=1.0), 1).decide(Seen("GET", "/api/v1/pods", True, ""))
            for _ in range(20)]
    assert all(d.cut_after_events and 1 <= d.cut_after_events <= 5 and d.server_error is None for d in cuts)


async def wait_jobs_played(cluster: Cluster, player: JobPlayer, names: list[str]) -> None:
    """Play each run's Job once it exists (the played kubelet talks to the emulator, not the proxy)."""
    async def play(name: str) -> None:
        await cluster.wait_for(f"{name}'s Job", lambda: any(
            j["metadata"]["name"] == f"{name}-r1" for j in cluster.jobs()), timeout=60)
        runs = await player.play(NAMESPACE, f"{name}-r1")
        assert [r.returncode for r in runs] == [0], [r.stderr[-800:] for r in runs]
    await asyncio.gather(*(play(name) for name in names))


def assert_converged(cluster: Cluster, name: str, status: dict[str, Any]) -> None:
    assert status["phase"] == "Succeeded" and status["run"] == 1, status
    progress = status["progress"]
    assert (progress["imagesTotal"], progress["imagesSynced"], progress["imagesFailed"]) == (1, 1, 0), progress
    assert status["syncedSummary"] == "1/1"
    assert [s["state"] for s in status["shards"]] == ["Succeeded"]
    jobs = [j["metadata"]["name"] for j in cluster.jobs() if j["metadata"]["labels"].get("imagesync.dev/job") == name]
    assert jobs == [f"{name}-r1"], jobs


async def test_runs_converge_with_one_job_each_through_a_flaky_api(cluster: Cluster, player: JobPlayer,
                                                                   registry: RegistryProcess,
                                                                   registry2: RegistryProcess) -> None:
    images = [seed.push_image(registry, f"flaky/app{i}", "1", layers=(10_000,), seed=i) for i in range(RUNS)]
    await cluster.create(regcred("source", registry.host))
    await cluster.create(regcred("target", registry2.host))
    names = [f"flaky{i}" for i in range(RUNS)]
    rates = FaultRates(watch_cut_after=2.0)
    with ApiProxy(cluster.url, seed=12, rates=rates) as proxy:
        async with operator_through(cluster, proxy):
            for i, name in enumerate(names[:2]):
                await cluster.create(isj(name, {f"{registry.host}/flaky/app{i}:1": f"{registry2.host}/m/app{i}"}))
            await cluster.wait_for("a Job", lambda: cluster.jobs(), timeout=60)
        counts = collections.Counter(proxy.counts())
    # The operator restarts with runs in flight (and two ImageSyncJobs it has not seen yet).
    for i, name in enumerate(names[2:], start=2):
        await cluster.create(isj(name, {f"{registry.host}/flaky/app{i}:1": f"{registry2.host}/m/app{i}"}))
    with ApiProxy(cluster.url, seed=13, rates=rates) as proxy:
        async with operator_through(cluster, proxy):
            try:
                await wait_jobs_played(cluster, player, names)
            except AssertionError:
                print("\n".join(proxy.log))
                raise
            for name in names:
                status = await cluster.wait_status(name, lambda s: bool(s.get("completionTime")), "a finished run",
                                                   timeout=90)
                assert_converged(cluster, name, status)
        counts.update(proxy.counts())
    print(f"faults injected: {dict(counts)}")
    assert all(counts[kind] > 0 for kind in FAULT_KINDS), counts
    for i, image in enumerate(images):
        assert seed.get_manifest(registry2, f"m/app{i}", "1")[2] == image.digest


def test_the_proxy_verifies_an_https_upstream_and_passes_requests_through(make_registry: Any) -> None:
    """The leg to a real API server is HTTPS, verified against the kubeconfig's CA: checked here against a TLS
    registry (the same proxy code; an API server is only another HTTPS server to it), with no faults."""
    import httpx

    tls = make_registry("tls")
    quiet = FaultRates(server_error=0, lost_response=0, conflict=0, watch_cut=0, delay=0)
    with ApiProxy(f"https://{tls.host}", rates=quiet, ca_file=str(tls.ca_file)) as proxy:
        response = httpx.get(f"{proxy.url}/v2/", headers={"Authorization": "Bearer passed-through"})
        assert response.status_code == 200 and proxy.forwarded == 1
    with ApiProxy(f"https://{tls.host}", rates=quiet) as unverified:  # the system CAs do not know the test CA
        assert httpx.get(f"{unverified.url}/v2/").status_code == 500
