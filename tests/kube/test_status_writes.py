"""Every ImageSyncJob status write is decided on a fresh read and conditioned on its resourceVersion
(handlers.write_status). The bug it closes, found by tests/e2e/test_flaky_api.py: a run ended Succeeded with
completionTime set but Complete=False, because a status decided on an older copy (kopf's event body, or an
answer delayed by the API server) replaced the conditions list after the final fold wrote it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping
from typing import Any

import kopf
import kubernetes
import pytest
from kube.conftest import Cluster
from kube.objects import NAMESPACE, isj

from imagesync.controller.handlers import STATUS_WRITE_ATTEMPTS, Context, write_status
from imagesync.controller.kube import Kube
from imagesync.controller.settings import OperatorSettings

NAME = "raced"


@pytest.fixture
def ctx(cluster: Cluster) -> Iterator[Context]:
    api_client = kubernetes.client.ApiClient(kubernetes.client.Configuration(host=cluster.url))
    yield Context(Kube(api_client), OperatorSettings(worker_image="imagesync:test"))
    api_client.close()


def complete(status: str) -> list[dict[str, Any]]:
    return [{"type": "Complete", "status": status, "reason": "Test", "message": "", "lastTransitionTime": "x"}]


async def test_a_decision_overtaken_by_another_write_is_made_again_on_the_fresh_object(
        cluster: Cluster, ctx: Context) -> None:
    await cluster.create(isj(NAME, {"r.io/a/b:1": "t.io/a/b"}))
    await cluster.patch(f"/apis/imagesync.dev/v1alpha1/namespaces/{NAMESPACE}/imagesyncjobs/{NAME}/status",
                        {"status": {"phase": "Running", "conditions": complete("False")}})
    seen: list[Mapping[str, Any]] = []

    def decide(read: Mapping[str, Any]) -> dict[str, Any]:
        seen.append(read)
        if len(seen) == 1:  # between this read and its write, the run's end is folded by someone else
            ctx.kube.custom.patch_namespaced_custom_object_status(
                "imagesync.dev", "v1alpha1", NAMESPACE, "imagesyncjobs", NAME,
                {"status": {"phase": "Succeeded", "conditions": complete("True")}})
        # A progress fold: it carries the conditions list as read (a merge patch replaces it whole).
        return {"progress": {"imagesSynced": len(seen)}, "conditions": read["status"]["conditions"]}

    written = await asyncio.to_thread(write_status, ctx, NAMESPACE, NAME, decide)
    assert len(seen) == 2 and seen[1]["status"]["phase"] == "Succeeded"
    stored = cluster.isj(NAME)
    assert stored is not None and written is not None
    assert stored["status"]["conditions"] == complete("True"), "the stale conditions list was written"
    assert stored["status"]["progress"] == {"imagesSynced": 2} == written["status"]["progress"]


async def test_nothing_decided_writes_nothing(cluster: Cluster, ctx: Context) -> None:
    created = await cluster.create(isj(NAME, {"r.io/a/b:1": "t.io/a/b"}))
    assert await asyncio.to_thread(write_status, ctx, NAMESPACE, NAME, lambda _: None) is None
    stored = cluster.isj(NAME)
    assert stored is not None and stored["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]
    assert await asyncio.to_thread(write_status, ctx, NAMESPACE, "gone", lambda _: {"phase": "X"}) is None


async def test_a_decision_that_changes_nothing_writes_nothing(cluster: Cluster, ctx: Context) -> None:
    await cluster.create(isj(NAME, {"r.io/a/b:1": "t.io/a/b"}))
    await cluster.patch(f"/apis/imagesync.dev/v1alpha1/namespaces/{NAMESPACE}/imagesyncjobs/{NAME}/status",
                        {"status": {"phase": "Running", "progress": {"imagesSynced": 1}}})
    before = cluster.isj(NAME)
    assert before is not None
    same = await asyncio.to_thread(write_status, ctx, NAMESPACE, NAME, lambda _: {"phase": "Running"})
    assert same is not None and same["status"]["progress"] == {"imagesSynced": 1}
    after = cluster.isj(NAME)
    assert after is not None and after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    await asyncio.to_thread(write_status, ctx, NAMESPACE, NAME, lambda _: {"phase": "Succeeded"})
    changed = cluster.isj(NAME)
    assert changed is not None and changed["status"]["phase"] == "Succeeded"


async def test_a_status_that_changes_under_every_write_is_left_to_kopfs_retry(cluster: Cluster, ctx: Context) -> None:
    await cluster.create(isj(NAME, {"r.io/a/b:1": "t.io/a/b"}))
    decisions = [0]

    def decide(read: Mapping[str, Any]) -> dict[str, Any]:
        decisions[0] += 1
        ctx.kube.custom.patch_namespaced_custom_object_status(
            "imagesync.dev", "v1alpha1", NAMESPACE, "imagesyncjobs", NAME, {"status": {"seen": decisions[0]}})
        return {"phase": "Stale"}

    with pytest.raises(kopf.TemporaryError):
        await asyncio.to_thread(write_status, ctx, NAMESPACE, NAME, decide)
    stored = cluster.isj(NAME)
    assert decisions[0] == STATUS_WRITE_ATTEMPTS and stored is not None and "phase" not in stored["status"]
