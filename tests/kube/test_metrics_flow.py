"""/metrics and the health endpoint of the operator as `imagesync operator` runs it (controller/main.run),
against the emulator, with real registries and real worker subprocesses: scraped over HTTP during a run
and after it."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import kubernetes
import pytest
from kube.conftest import Cluster, emulator_registry
from kube.jobplayer import JobPlayer
from kube.objects import NAMESPACE, isj, regcred
from prometheus_client.parser import text_string_to_metric_families

from imagesync.controller.handlers import Context
from imagesync.controller.kube import Kube
from imagesync.controller.main import run
from imagesync.controller.metrics import Metrics
from imagesync.controller.settings import OperatorSettings
from imagesync.engine.reference import parse_image
from imagesync.engine.rules import ImagePair, shard_of
from testbed import seed
from testbed.registry import RegistryProcess


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Endpoints:
    metrics_url: str
    health_url: str
    metrics: Metrics


@pytest.fixture
async def served(cluster: Cluster) -> AsyncIterator[Endpoints]:
    """The operator with its endpoints on loopback and free ports (main.run, as the command does)."""
    settings = OperatorSettings(worker_image="imagesync:test", bind_address="127.0.0.1", metrics_port=free_port(),
                                health_port=free_port())
    metrics = Metrics()
    api_client = kubernetes.client.ApiClient(kubernetes.client.Configuration(host=cluster.url))
    metrics.count_api_errors(api_client)
    ctx = Context(Kube(api_client), settings, schedule_interval=0.3, credential_check_interval=0.5, metrics=metrics)
    registry = emulator_registry(cluster, ctx)
    stop_flag, ready_flag = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(run(registry, ctx, standalone=True, stop_flag=stop_flag, ready_flag=ready_flag))
    await asyncio.wait_for(ready_flag.wait(), 10)
    try:
        yield Endpoints(f"http://127.0.0.1:{settings.metrics_port}/metrics",
                        f"http://127.0.0.1:{settings.health_port}/healthz", metrics)
    finally:
        stop_flag.set()
        # As in conftest's operator fixture: kmock's watches end only by the client timeout.
        with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(task, 15)
        api_client.close()


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(url: str) -> Samples:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(url)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


def sample(samples: Samples, name: str, /, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def job_labels(name: str) -> dict[str, str]:
    return {"namespace": NAMESPACE, "name": name}


async def wait_scrape(cluster: Cluster, url: str, what: str, check: Any, timeout: float = 20.0) -> Samples:
    """Scrape until ``check(samples)`` holds: the metrics follow the status patches a moment later."""
    found: dict[str, Samples] = {}

    async def poll() -> None:
        while True:
            found["last"] = await scrape(url)
            if check(found["last"]):
                return
            await asyncio.sleep(0.1)
    try:
        await asyncio.wait_for(poll(), timeout)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}; last scrape: {found.get('last')}") from None
    return found["last"]


async def test_metrics_during_and_after_a_run(cluster: Cluster, served: Endpoints, player: JobPlayer,
                                              registry: RegistryProcess, registry2: RegistryProcess) -> None:
    # Two images per shard (shards hash the target, whose port is random): shard 0 alone is a part.
    by_shard: dict[int, list[int]] = {0: [], 1: []}
    for i in range(64):
        pair = ImagePair(parse_image(f"{registry.host}/team/app{i}:1"),
                         parse_image(f"{registry2.host}/mirror/app{i}:1"), "")
        by_shard[shard_of(pair, 2)].append(i)
    apps = by_shard[0][:2] + by_shard[1][:2]
    for i in apps:
        seed.push_image(registry, f"team/app{i}", "1", layers=(150_000,), seed=i)
    await cluster.create(regcred("source", registry.host))
    await cluster.create(regcred("target", registry2.host))
    await cluster.create(isj("mirror", {f"{registry.host}/team/app{i}:1": f"{registry2.host}/mirror/app{i}"
                                        for i in apps}, parallelism=2))
    await cluster.wait_status("mirror", lambda s: s.get("jobName") == "mirror-r1", "run 1")
    job = await player.get(f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs/mirror-r1")
    labels = job_labels("mirror")

    samples = await wait_scrape(cluster, served.metrics_url, "phase Pending", lambda s: sample(
        s, "imagesync_job_status_phase", **labels, phase="Pending") == 1)
    assert sample(samples, "imagesync_job_runs_total", **labels, result="Succeeded") == 0
    assert sample(samples, "imagesync_job_copied_bytes_total", **labels) == 0

    # During the run: shard 0 of 2 has done its images, shard 1 has not started.
    first = await player.run_pod(job, 0)
    assert first.returncode == 0, first.stderr[-800:]
    status = await cluster.wait_status("mirror", lambda s: [r.get("state") for r in s.get("shards") or []] == [
        "Succeeded", "Pending"], "shard 0's last report folded")
    synced_during = status["progress"]["imagesSynced"]
    assert status["phase"] == "Running" and 0 < synced_during < 4
    samples = await wait_scrape(cluster, served.metrics_url, "shard 0's images", lambda s: sample(
        s, "imagesync_job_run_images", **labels, outcome="synced") == synced_during)
    assert sample(samples, "imagesync_job_status_phase", **labels, phase="Running") == 1
    assert sample(samples, "imagesync_job_status_phase", **labels, phase="Succeeded") == 0
    bytes_during = sample(samples, "imagesync_job_copied_bytes_total", **labels)
    assert bytes_during is not None and bytes_during > 0
    assert sample(samples, "imagesync_job_runs_total", **labels, result="Succeeded") == 0
    assert sample(samples, "imagesync_job_last_success_timestamp_seconds", **labels) is None

    # Shard 1, then the Job completes (as JobPlayer.play does).
    second = await player.run_pod(job, 1)
    assert second.returncode == 0, second.stderr[-800:]
    await player.patch_status(f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs/mirror-r1", {
        "succeeded": 2, "failed": 0, "active": 0,
        "conditions": [{"type": "Complete", "status": "True", "reason": "Played"}]})
    status = await cluster.wait_status("mirror", lambda s: s.get("phase") == "Succeeded", "Succeeded")
    samples = await wait_scrape(cluster, served.metrics_url, "phase Succeeded", lambda s: sample(
        s, "imagesync_job_status_phase", **labels, phase="Succeeded") == 1)
    assert sample(samples, "imagesync_job_runs_total", **labels, result="Succeeded") == 1
    assert sample(samples, "imagesync_job_runs_total", **labels, result="Failed") == 0
    assert sample(samples, "imagesync_job_run_images", **labels, outcome="synced") == 4
    assert sample(samples, "imagesync_job_run_images", **labels, outcome="failed") == 0
    copied = sample(samples, "imagesync_job_copied_bytes_total", **labels)
    assert copied == status["progress"]["bytesCopied"] and copied is not None and copied > bytes_during
    success = sample(samples, "imagesync_job_last_success_timestamp_seconds", **labels)
    completion = sample(samples, "imagesync_job_last_run_completion_timestamp_seconds", **labels)
    assert success is not None and success == completion and success > 1.7e9
    duration = sample(samples, "imagesync_job_last_run_duration_seconds", **labels)
    assert duration is not None and 0 <= duration < 300
    # Operator-level: every handler has its reconcile error series from the start (none failed here).
    handlers = {dict(lbl)["handler"]: v for name, lbl in samples if name == "imagesync_operator_reconcile_errors_total"
                for v in [samples[(name, lbl)]]}
    assert {"isj_created", "isj_changed/spec", "worker_pod_changed", "worker_job_changed", "isj_deleted"} <= \
        set(handlers) and set(handlers.values()) == {0}

    # Deleted: its series go.
    await cluster.delete(f"/apis/imagesync.dev/v1alpha1/namespaces/{NAMESPACE}/imagesyncjobs/mirror")
    await wait_scrape(cluster, served.metrics_url, "mirror's series removed", lambda s: not any(
        dict(labels_).get("name") == "mirror" for _, labels_ in s))


async def test_health_endpoint_answers(served: Endpoints) -> None:
    async with httpx.AsyncClient(timeout=5) as client:
        for _ in range(50):  # kopf starts its endpoint beside the watches: give it a moment
            with contextlib.suppress(httpx.TransportError):
                response = await client.get(served.health_url)
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"no answer from {served.health_url}")
    assert response.status_code == 200, response.text
    scraped = await scrape(served.metrics_url)
    assert all(name.startswith("imagesync_") for name, _ in scraped)
