"""Leader election (controller/leader.py) against the emulator's Lease, with its optimistic concurrency:
two electors, one acts, the other takes over when the first stops renewing or releases; and two
`imagesync operator` processes of which only the Lease holder reconciles.

The emulator serves from a thread of its own here, as an API server is a process of its own, and the test
reads objects over HTTP.

Short timings (a 2 s lease) keep the module fast; the bounds checked are the election's own: nobody
takes an unexpired Lease over, and waits are limits, never measurements."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import kmock
import kubernetes
import pytest
import yaml
from kube.conftest import Cluster, emulator_registry
from kube.emulator import Emulator
from kube.objects import NAMESPACE, isj
from kube.test_metrics_flow import free_port

from imagesync.controller.handlers import Context
from imagesync.controller.kube import Kube
from imagesync.controller.leader import Elector, KubeLeases, LeadershipLost, LeaseRecord
from imagesync.controller.main import run
from imagesync.controller.settings import LeaseTimings, OperatorSettings

LEASE_PATH = f"/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases/imagesync-operator"
FAST = LeaseTimings(lease_duration=2, renew_deadline=1.2, retry_period=0.2)
LIMIT = 15.0  # seconds any awaited step may take before the test fails (far above what it needs)


@contextlib.contextmanager
def emulator_thread() -> Iterator[tuple[Emulator, str]]:
    """The emulator serving from its own thread and event loop: (emulator, url)."""
    loop = asyncio.new_event_loop()
    served: dict[str, Any] = {}
    ready = threading.Event()

    async def serve() -> None:
        async with Emulator() as emulator, kmock.Server(emulator) as server:
            emulator.resources.load_bundled()
            emulator.declare_crds()
            served.update(emulator=emulator, url=str(server.url).rstrip("/"), stop=asyncio.Event())
            ready.set()
            await served["stop"].wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), name="emulator", daemon=True)
    thread.start()
    assert ready.wait(LIMIT), "the emulator did not start"
    try:
        yield served["emulator"], served["url"]
    finally:
        loop.call_soon_threadsafe(served["stop"].set)
        thread.join(LIMIT)
        loop.close()


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    with emulator_thread() as (emulator, url):
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            yield Cluster(emulator, url, client)


async def read(cluster: Cluster, path: str) -> dict[str, Any]:
    response = await cluster.client.get(path)
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found


async def lease(cluster: Cluster) -> dict[str, Any]:
    spec: dict[str, Any] = (await read(cluster, LEASE_PATH))["spec"]
    return spec


async def job_names(cluster: Cluster) -> list[str]:
    jobs = await read(cluster, f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs")
    return sorted(j["metadata"]["name"] for j in jobs["items"])


async def status_when(cluster: Cluster, name: str, ready: Any, what: str) -> dict[str, Any]:
    deadline = time.monotonic() + LIMIT
    while time.monotonic() < deadline:
        found = await read(cluster, f"/apis/imagesync.dev/v1alpha1/namespaces/{NAMESPACE}/imagesyncjobs/{name}")
        status: dict[str, Any] = found.get("status") or {}
        if ready(status):
            return status
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {name}: {what}")


@pytest.fixture
async def api(cluster: Cluster) -> AsyncIterator[kubernetes.client.ApiClient]:
    client = kubernetes.client.ApiClient(kubernetes.client.Configuration(host=cluster.url))
    yield client
    client.close()


def elector(api: kubernetes.client.ApiClient, identity: str, timings: LeaseTimings = FAST) -> Elector:
    leases = KubeLeases(api, NAMESPACE)
    return Elector(leases, identity, timings, where=leases.where())


@contextlib.asynccontextmanager
async def background(coroutine: Any) -> AsyncIterator[asyncio.Task[Any]]:
    task = asyncio.ensure_future(coroutine)
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, LeadershipLost):
            await task


async def wait_until(what: str, check: Any) -> None:
    """Until the async ``check`` holds (LIMIT at most)."""
    deadline = time.monotonic() + LIMIT
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_one_acquires_the_other_waits_then_takes_over_once_renewals_stop(
        cluster: Cluster, api: kubernetes.client.ApiClient) -> None:
    first, second = elector(api, "a_1"), elector(api, "b_2")
    assert await asyncio.wait_for(first.acquire(), LIMIT)
    spec = await lease(cluster)
    assert spec["holderIdentity"] == "a_1" and spec["leaseTransitions"] == 0
    async with background(first.hold()) as holding, background(second.acquire()) as waiting:
        # Several lease durations of renewals: the standby keeps seeing a fresh Lease.
        for _ in range(3):
            seen = (await lease(cluster))["renewTime"]

            async def renewed(seen: str = seen) -> bool:
                return bool((await lease(cluster))["renewTime"] != seen)

            await wait_until("a renewal", renewed)
        await asyncio.sleep(FAST.lease_duration)
        assert not waiting.done() and not second.leading and (await lease(cluster))["holderIdentity"] == "a_1"
        # The leader stops renewing (a lost node: no release).
        holding.cancel()
        stopped = time.monotonic()
        assert await asyncio.wait_for(waiting, LIMIT)
        # Never before the Lease expired: lease_duration after the last renewal the standby saw.
        assert time.monotonic() - stopped >= FAST.lease_duration - FAST.retry_period
    spec = await lease(cluster)
    assert spec["holderIdentity"] == "b_2" and spec["leaseTransitions"] == 1 and spec["leaseDurationSeconds"] == 2
    # The old leader, renewing again, finds the Lease taken: it has lost it.
    with pytest.raises(LeadershipLost, match="held by b_2"):
        await asyncio.wait_for(first.try_once(), LIMIT)


async def test_a_release_hands_over_at_once(cluster: Cluster, api: kubernetes.client.ApiClient) -> None:
    slow = LeaseTimings(lease_duration=600, renew_deadline=10, retry_period=0.2)  # expiry never comes in time
    first, second = elector(api, "a_1", slow), elector(api, "b_2", slow)
    assert await asyncio.wait_for(first.acquire(), LIMIT)
    async with background(second.acquire()) as waiting:
        while second.observed is None:  # the standby has read the Lease: it waits out the 600 s
            await asyncio.sleep(0.05)
        await first.release()
        spec = await lease(cluster)
        assert spec["holderIdentity"] == "" and spec["leaseDurationSeconds"] == 1
        assert await asyncio.wait_for(waiting, LIMIT)
    spec = await lease(cluster)
    assert spec["holderIdentity"] == "b_2" and spec["leaseTransitions"] == 1
    await first.release()  # not the leader any more: releases nothing
    assert (await lease(cluster))["holderIdentity"] == "b_2"


async def test_a_leader_cut_off_from_the_api_server_gives_up_at_the_renew_deadline(
        cluster: Cluster, api: kubernetes.client.ApiClient) -> None:
    leader = elector(api, "a_1")
    assert await asyncio.wait_for(leader.acquire(), LIMIT)
    # Its API server becomes unreachable (nothing listens at this address any more).
    with contextlib.closing(kubernetes.client.ApiClient(kubernetes.client.Configuration(
            host="http://127.0.0.1:9"))) as unreachable:
        leader.leases = KubeLeases(unreachable, NAMESPACE, request_timeout=0.5)
        with pytest.raises(LeadershipLost, match=r"not renewed for 1\.2s"):
            await asyncio.wait_for(leader.hold(), LIMIT)
    assert not leader.leading


async def test_a_standby_told_to_stop_ends_without_starting_kopf_or_writing(
        cluster: Cluster, api: kubernetes.client.ApiClient) -> None:
    leases = KubeLeases(api, NAMESPACE)
    await leases.create(LeaseRecord(holder="elsewhere_1", lease_duration=600))
    before = await read(cluster, LEASE_PATH)
    ctx = Context(Kube(api), OperatorSettings(worker_image="imagesync:test", metrics_port=0, health_port=0))
    standby = elector(api, "b_2")
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(run(emulator_registry(cluster, ctx), ctx, standby, standalone=True,
                                   stop_flag=stop, ready_flag=ready))
    while standby.observed is None:  # it has read the Lease: standing by
        await asyncio.sleep(0.05)
    stop.set()  # as SIGTERM does while it stands by
    await asyncio.wait_for(task, LIMIT)
    assert not ready.is_set() and not standby.leading
    assert await read(cluster, LEASE_PATH) == before  # not even a resourceVersion moved


async def test_a_stale_write_gets_409_and_changes_nothing(cluster: Cluster, api: kubernetes.client.ApiClient) -> None:
    leases = KubeLeases(api, NAMESPACE)
    assert await leases.create(LeaseRecord(holder="a_1", lease_duration=2)) is not None
    assert await leases.create(LeaseRecord(holder="b_2", lease_duration=2)) is None  # AlreadyExists
    record, version = await leases.read()
    assert record is not None and version
    assert await leases.replace(LeaseRecord(holder="a_1", lease_duration=2, transitions=0), version) is not None
    assert await leases.replace(LeaseRecord(holder="b_2", lease_duration=2, transitions=1), version) is None
    assert (await lease(cluster))["holderIdentity"] == "a_1"
    # Two candidates for a free Lease at the same moment: exactly one gets it.
    await leases.replace(LeaseRecord(holder="", lease_duration=1), (await leases.read())[1] or "")
    candidates = [elector(api, "c_3"), elector(api, "d_4")]
    await asyncio.gather(*(c.try_once() for c in candidates))
    assert [c.leading for c in candidates].count(True) == 1
    assert (await lease(cluster))["holderIdentity"] == next(c.identity for c in candidates if c.leading)


async def test_two_operator_processes_one_leads_a_taken_lease_exits_1_and_sigterm_releases(
        cluster: Cluster, api: kubernetes.client.ApiClient, tmp_path: Path) -> None:
    """Two `imagesync operator --leader-elect` processes, as the Deployment's replicas run it: one leads,
    the other answers /healthz and waits; when another holder shows up the leader exits 1 at once; the
    other takes the Lease when it is released, folds the run the first started, reconciles, and on
    SIGTERM stops and releases the Lease."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "emulator",
        "clusters": [{"name": "emulator", "cluster": {"server": cluster.url}}],
        "users": [{"name": "anyone", "user": {"token": "unused"}}],
        "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "anyone"}}]}))
    leases = KubeLeases(api, NAMESPACE)

    async def operator(pod: str, health: int) -> asyncio.subprocess.Process:
        env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "IMAGESYNC_POD_NAME": pod,
               "IMAGESYNC_POD_NAMESPACE": NAMESPACE, "IMAGESYNC_WORKER_IMAGE": "imagesync:test",
               "IMAGESYNC_METRICS_PORT": "0", "IMAGESYNC_HEALTH_PORT": str(health),
               # Nothing here waits for an expiry: a long deadline keeps a loaded machine from losing the Lease.
               "IMAGESYNC_BIND_ADDRESS": "127.0.0.1", "IMAGESYNC_LEASE_DURATION_SECONDS": "20",
               "IMAGESYNC_LEASE_RENEW_DEADLINE_SECONDS": "15", "IMAGESYNC_LEASE_RETRY_PERIOD_SECONDS": "1"}
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "imagesync.cli.main", "operator", "--kubeconfig", str(kubeconfig),
            "--leader-elect", env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)

    async def holder() -> str:
        return str((await lease(cluster))["holderIdentity"]).rpartition("_")[0]

    async def ended(process: asyncio.subprocess.Process) -> tuple[int, str]:
        code = await asyncio.wait_for(process.wait(), LIMIT)
        return code, (await process.stdout.read()).decode() if process.stdout else ""

    ports = {"op-a": free_port(), "op-b": free_port()}
    processes = {pod: await operator(pod, port) for pod, port in ports.items()}
    try:
        async with httpx.AsyncClient(timeout=5) as client:
            for port in ports.values():
                async def live(port: int = port) -> bool:
                    with contextlib.suppress(httpx.TransportError):
                        return (await client.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200
                    return False

                await wait_until("a replica's /healthz", live)

        async def led() -> bool:
            return await holder() in processes

        await wait_until("one operator to take the Lease", led)  # whichever created it first
        leader = await holder()
        (standby,) = set(processes) - {leader}  # and it answered /healthz above
        # The leader starts a run; the standby, watching nothing, makes no second Job.
        await cluster.create(isj("steady", {"r.example.com/a/app:1": "t.example.com/a/app"}))
        await status_when(cluster, "steady", lambda s: s.get("jobName") == "steady-r1", "a job from the leader")
        record, version = await leases.read()
        assert record is not None and version
        await leases.replace(LeaseRecord(holder="thief_2", lease_duration=600, transitions=record.transitions + 1),
                             version)
        code, output = await ended(processes[leader])
        assert code == 1, output[-2000:]
        assert "leadership lost" in output and "held by thief_2" in output, output[-2000:]
        assert processes[standby].returncode is None and await holder() == "thief"  # it waits out the 600 s

        # The Job controller ends the run while nobody leads.
        response = await cluster.client.patch(
            f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs/steady-r1/status",
            json={"status": {"conditions": [{"type": "Complete", "status": "True"}], "succeeded": 1}},
            headers={"Content-Type": "application/merge-patch+json"})
        assert response.status_code < 300, response.text
        # The thief lets go (a release): the standby takes the Lease at its next try, folds the run's end
        # in, without a second Job, and reconciles what comes next.
        record, version = await leases.read()
        assert record is not None and version
        await leases.replace(LeaseRecord(holder="", lease_duration=1, transitions=record.transitions), version)
        status = await status_when(cluster, "steady", lambda s: s.get("completionTime"), "the run's end folded")
        assert status["run"] == 1 and await holder() == standby
        await cluster.create(isj("later", {"r.example.com/a/app:1": "t.example.com/a/app"}))
        await status_when(cluster, "later", lambda s: s.get("jobName") == "later-r1", "a job from the new leader")
        assert await job_names(cluster) == ["later-r1", "steady-r1"]
        assert processes[standby].returncode is None, (await ended(processes[standby]))[1][-2000:]
        processes[standby].send_signal(signal.SIGTERM)
        code, output = await ended(processes[standby])
        assert code == 0, output[-2000:]
        spec = await lease(cluster)
        assert spec["holderIdentity"] == "" and spec["leaseDurationSeconds"] == 1, spec
    finally:
        for process in processes.values():
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):  # it may have ended just now
                    process.kill()
                await process.wait()
