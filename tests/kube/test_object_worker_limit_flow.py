"""kopf's per-object workers bounded (controller/main.py tune_kopf, docs/operator-scale.md): with far more
ImageSyncJobs than places, every one is still handled, on creation and again after a restart."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import kopf
import kubernetes
from kube.conftest import Cluster, emulator_registry
from kube.objects import isj

from imagesync.controller.handlers import Context
from imagesync.controller.kube import Kube
from imagesync.controller.main import OBJECT_WORKERS_PER_HANDLER_THREAD, tune_kopf
from imagesync.controller.settings import OperatorSettings

SUSPENDED = 2 * OBJECT_WORKERS_PER_HANDLER_THREAD  # twice the places one handler thread gets


@contextlib.asynccontextmanager
async def bounded_operator(cluster: Cluster) -> AsyncIterator[kopf.OperatorSettings]:
    """The operator with one handler thread, so OBJECT_WORKERS_PER_HANDLER_THREAD object workers at most."""
    api_client = kubernetes.client.ApiClient(kubernetes.client.Configuration(host=cluster.url))
    ctx = Context(Kube(api_client), OperatorSettings(worker_image="imagesync:test", handler_threads=1))
    registry = emulator_registry(cluster, ctx)
    tuned: list[kopf.OperatorSettings] = []

    @kopf.on.startup(registry=registry)
    def bound(settings: kopf.OperatorSettings, **_: Any) -> None:
        tune_kopf(settings, ctx.settings)
        tuned.append(settings)

    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(kopf.operator(registry=registry, clusterwide=True, standalone=True,
                                             stop_flag=stop, ready_flag=ready))
    await asyncio.wait_for(ready.wait(), 10)
    try:
        yield tuned[0]
    finally:
        stop.set()
        with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(task, 15)
        api_client.close()


async def test_more_objects_than_worker_places_are_all_handled_and_resumed(cluster: Cluster) -> None:
    async with bounded_operator(cluster) as settings:
        assert settings.queueing.worker_limit == OBJECT_WORKERS_PER_HANDLER_THREAD
        assert settings.execution.max_workers == 1
        for i in range(SUSPENDED):
            await cluster.create(isj(f"paused-{i}", {"r.example.com/a/app:1": "t.example.com/a/app"}, suspend=True))
        await cluster.create(isj("runs", {"r.example.com/a/app:1": "t.example.com/a/app"}))
        await cluster.wait_for("every ImageSyncJob handled", lambda: all(
            ((cluster.isj(f"paused-{i}") or {}).get("status") or {}).get("phase") == "Suspended"
            for i in range(SUSPENDED)) and cluster.jobs(), timeout=30)
    # A restart: every object comes back at once through the listing, more than there are places.
    async with bounded_operator(cluster):
        await cluster.create(isj("after-restart", {"r.example.com/a/app:1": "t.example.com/a/app"}))
        await cluster.wait_for("a Job for the one created after the restart", lambda: any(
            j["metadata"]["name"].startswith("after-restart-") for j in cluster.jobs()), timeout=30)
    assert [j["metadata"]["name"] for j in cluster.jobs()] == ["runs-r1", "after-restart-r1"]
