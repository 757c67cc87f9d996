"""kopf embedded in the test's event loop, against the emulator; helpers to create objects and wait."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import kmock
import kopf
import kubernetes
import pytest
from kube.emulator import Emulator
from kube.jobplayer import JobPlayer
from kube.objects import NAMESPACE

from imagesync.controller.handlers import Context, configure, register
from imagesync.controller.kube import Kube
from imagesync.controller.settings import OperatorSettings

ISJ = "imagesync.dev/v1alpha1/imagesyncjobs"


@dataclass
class Cluster:
    emulator: Emulator
    url: str
    client: httpx.AsyncClient

    async def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        api_version, kind = obj["apiVersion"], obj["kind"]
        plural = {"ImageSyncJob": "imagesyncjobs", "RegistryCredential": "registrycredentials",
                  "Secret": "secrets", "Namespace": "namespaces"}[kind]
        base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
        namespaced = kind != "Namespace"
        obj.setdefault("metadata", {}).setdefault("namespace", NAMESPACE) if namespaced else None
        path = f"{base}/namespaces/{NAMESPACE}/{plural}" if namespaced else f"{base}/{plural}"
        response = await self.client.post(path, json=obj)
        assert response.status_code == 201, response.text
        created: dict[str, Any] = response.json()
        return created

    async def patch(self, path: str, body: dict[str, Any]) -> None:
        response = await self.client.patch(path, json=body, headers={"Content-Type": "application/merge-patch+json"})
        assert response.status_code < 300, response.text

    async def delete(self, path: str) -> None:
        response = await self.client.delete(path)
        assert response.status_code < 300, response.text

    def isj(self, name: str) -> dict[str, Any] | None:
        return self.emulator.get(ISJ, NAMESPACE, name)

    def jobs(self) -> list[dict[str, Any]]:
        return self.emulator.list("batch/v1/jobs", NAMESPACE)

    def secrets(self) -> list[dict[str, Any]]:
        return self.emulator.list("v1/secrets", NAMESPACE)

    def events(self) -> list[dict[str, Any]]:
        return self.emulator.list("v1/events", NAMESPACE)

    async def wait_for(self, what: str, check: Callable[[], Any], timeout: float = 20.0) -> Any:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            result = check()
            if result:
                return result
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            await asyncio.sleep(0.05)

    async def wait_status(self, name: str, predicate: Callable[[dict[str, Any]], bool], what: str,
                          timeout: float = 20.0) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            obj = self.isj(name)
            status = (obj or {}).get("status") or {}
            return status if predicate(status) else None
        result: dict[str, Any] = await self.wait_for(f"{name}: {what}", check, timeout)
        return result


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    async with Emulator() as emulator, kmock.Server(emulator) as server:
        emulator.resources.load_bundled()
        emulator.declare_crds()
        url = str(server.url).rstrip("/")
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            c = Cluster(emulator, url, client)
            # No Namespace object: kmock 0.8 cannot parse /api/v1/namespaces (see the notes) and does not
            # require namespaces to exist.
            yield c


def emulator_registry(cluster: Cluster, ctx: Context) -> kopf.OperatorRegistry:
    """The operator's handlers for ``ctx``, logged in to the emulator, with watch timeouts short enough
    that kopf stops promptly (kmock's watch streams never end by themselves)."""
    registry = kopf.OperatorRegistry()
    register(registry, ctx)

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=cluster.url, insecure=True)

    @kopf.on.startup(registry=registry)
    def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        configure(settings)
        settings.watching.server_timeout = 1
        settings.watching.client_timeout = 1.5
        settings.posting.level = logging.INFO

    return registry


@dataclass
class Operator:
    stop: Callable[[], Any]
    start: Callable[[], Any]


@pytest.fixture
async def operator(cluster: Cluster) -> AsyncIterator[Operator]:
    """kopf in this loop with a fresh registry; ``stop()``/``start()`` simulate an operator restart."""
    state: dict[str, Any] = {}

    async def start() -> None:
        api_client = kubernetes.client.ApiClient(kubernetes.client.Configuration(host=cluster.url))
        ctx = Context(Kube(api_client), OperatorSettings(worker_image="imagesync:test"), schedule_interval=0.3,
                      credential_check_interval=0.5)
        registry = emulator_registry(cluster, ctx)
        stop_flag, ready_flag = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(kopf.operator(registry=registry, clusterwide=True, standalone=True,
                                                 stop_flag=stop_flag, ready_flag=ready_flag))
        await asyncio.wait_for(ready_flag.wait(), 10)
        state.update(task=task, stop_flag=stop_flag, api_client=api_client)

    async def stop() -> None:
        if "task" not in state:
            return
        state["stop_flag"].set()
        # kopf ends gracefully once its watch streams end; kmock's never end by themselves (it ignores
        # timeoutSeconds), so the short client timeout set at startup bounds the wait. kopf's shutdown
        # also cancels the task that awaits it: that cancellation ends the wait, not the test.
        with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(state["task"], 15)
        state["api_client"].close()
        state.clear()

    await start()
    try:
        yield Operator(stop=stop, start=start)
    finally:
        await stop()


@pytest.fixture
async def player(cluster: Cluster, tmp_path: Path) -> AsyncIterator[JobPlayer]:
    job_player = JobPlayer(cluster.url, tmp_path / "pods")
    yield job_player
    await job_player.aclose()


__all__ = ["Cluster", "Operator", "emulator_registry"]
