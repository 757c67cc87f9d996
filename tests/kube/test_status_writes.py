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
from kube.objects import NAMESPACE, basic_auth_secret, isj, regcred

from imagesync.controller import handlers
from imagesync.controller.handlers import (
    STATUS_WRITE_ATTEMPTS,
    Context,
    check_credential,
    report_logins,
    write_status,
)
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


# -- a run's objects, created before the status write that names the run ---------------------------------------


def run_objects(cluster: Cluster) -> list[str]:
    found = [f"Job/{job['metadata']['name']}" for job in cluster.jobs()]
    found += [f"Secret/{s['metadata']['name']}" for s in cluster.secrets() if s["metadata"]["name"].startswith(NAME)]
    return sorted(found)


def starting_a_run_then(ctx: Context, meanwhile: Any) -> Any:
    """A decision that starts a run on its first attempt (creating the run's objects), with ``meanwhile``
    done before that attempt's write; a second attempt decides on what it reads."""
    attempts = [0]

    def decide(read: Mapping[str, Any]) -> dict[str, Any] | None:
        attempts[0] += 1
        patch = handlers.reconcile(ctx, read, "created")
        if attempts[0] == 1:
            meanwhile()
        return patch or None
    return decide


async def test_a_run_started_by_a_decision_that_another_write_overtook_is_removed(
        cluster: Cluster, ctx: Context, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(handlers, "post_event", lambda *args, **kwargs: None)  # no kopf context here
    await cluster.create(isj(NAME, {"r.io/a/b:1": "t.io/a/b"}))

    def settle_elsewhere() -> None:  # another writer (a restored backup, say) settles this generation's run
        assert run_objects(cluster) == [f"Job/{NAME}-r1", f"Secret/{NAME}-r1"]
        ctx.kube.custom.patch_namespaced_custom_object_status(
            "imagesync.dev", "v1alpha1", NAMESPACE, "imagesyncjobs", NAME,
            {"status": {"run": 7, "runGeneration": 1, "phase": "Succeeded"}})

    written = await asyncio.to_thread(write_status, ctx, NAMESPACE, NAME,
                                      starting_a_run_then(ctx, settle_elsewhere))
    assert written is None
    assert run_objects(cluster) == [], "the run no status names was left behind"
    stored = cluster.isj(NAME)
    assert stored is not None and stored["status"]["run"] == 7


async def test_a_run_the_write_names_keeps_its_objects_and_a_failed_write_leaves_them_to_kopfs_retry(
        cluster: Cluster, ctx: Context, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(handlers, "post_event", lambda *args, **kwargs: None)
    await cluster.create(isj(NAME, {"r.io/a/b:1": "t.io/a/b"}))
    refused = kubernetes.client.ApiException(status=500, reason="injected")

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise refused

    with monkeypatch.context() as patched:
        patched.setattr(ctx.kube, "patch_status", refuse)
        with pytest.raises(kubernetes.client.ApiException):
            await asyncio.to_thread(write_status, ctx, NAMESPACE, NAME, starting_a_run_then(ctx, lambda: None))
    assert run_objects(cluster) == [f"Job/{NAME}-r1", f"Secret/{NAME}-r1"]

    # kopf's retry: the same run, decided again, takes the objects over
    written = await asyncio.to_thread(write_status, ctx, NAMESPACE, NAME, starting_a_run_then(ctx, lambda: None))
    assert written is not None and written["status"]["run"] == 1
    assert run_objects(cluster) == [f"Job/{NAME}-r1", f"Secret/{NAME}-r1"]


# -- RegistryCredentials: a run's refused login against the periodic Secret check ----------------------------
# The flake this closes (tests/kube/test_operator_flow.py::test_refused_login_shows_on_the_registry_credential, red
# in CI once): the Secret check wrote its verdict from kopf's copy of the RegistryCredential, taken before the
# run's end wrote Ready=False/LoginRejected, and so turned it back into Ready=True/SecretValid for good.

CREDS = "imagesync.dev/v1alpha1/registrycredentials"
REGISTRY = "r.example.com"


def ready(cluster: Cluster, name: str) -> Mapping[str, Any]:
    stored = cluster.emulator.get(CREDS, NAMESPACE, name) or {}
    return next(c for c in stored["status"]["conditions"] if c["type"] == "Ready")


async def rejected_by_a_run(cluster: Cluster, ctx: Context, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A valid RegistryCredential checked once, kopf's copy of it as then, and a run's refused login after it."""
    monkeypatch.setattr(handlers, "post_event", lambda *args, **kwargs: None)  # no kopf context here
    await cluster.create(basic_auth_secret("login", "user", "wrong"))
    await cluster.create(regcred("cred", REGISTRY, secret="login"))
    copy = cluster.emulator.get(CREDS, NAMESPACE, "cred")
    assert copy is not None
    await asyncio.to_thread(check_credential, ctx, copy)
    assert ready(cluster, "cred")["reason"] == "SecretValid"
    kopf_copy = cluster.emulator.get(CREDS, NAMESPACE, "cred")
    assert kopf_copy is not None
    run = {"metadata": {"name": "mirror", "namespace": NAMESPACE},
           "status": {"run": 1, "credentials": [{"name": "cred", "registry": REGISTRY}]}}
    await asyncio.to_thread(report_logins, ctx, run, {0: {"loginsRejected": [REGISTRY]}})
    assert ready(cluster, "cred")["reason"] == "LoginRejected"
    return kopf_copy


async def test_a_secret_check_on_kopfs_older_copy_keeps_a_refused_login(
        cluster: Cluster, ctx: Context, monkeypatch: pytest.MonkeyPatch) -> None:
    kopf_copy = await rejected_by_a_run(cluster, ctx, monkeypatch)
    await asyncio.to_thread(check_credential, ctx, kopf_copy)  # the timer, on the copy from before the run's end
    condition = ready(cluster, "cred")
    assert (condition["status"], condition["reason"]) == ("False", "LoginRejected")
    assert "refused these credentials during run 1 of mirror" in condition["message"]


async def test_a_later_accepted_login_clears_the_refusal_and_a_changed_spec_is_left_to_its_own_check(
        cluster: Cluster, ctx: Context, monkeypatch: pytest.MonkeyPatch) -> None:
    kopf_copy = await rejected_by_a_run(cluster, ctx, monkeypatch)
    run = {"metadata": {"name": "mirror", "namespace": NAMESPACE},
           "status": {"run": 2, "credentials": [{"name": "cred", "registry": REGISTRY}]}}
    await asyncio.to_thread(report_logins, ctx, run, {0: {"loginsAccepted": [REGISTRY]}})
    assert ready(cluster, "cred")["reason"] == "LoginAccepted"
    await cluster.patch(f"/apis/imagesync.dev/v1alpha1/namespaces/{NAMESPACE}/registrycredentials/cred",
                        {"spec": {"registry": "other.example.com"}})
    before = cluster.emulator.get(CREDS, NAMESPACE, "cred")
    assert before is not None
    await asyncio.to_thread(check_credential, ctx, kopf_copy)  # a check of the old spec writes nothing
    after = cluster.emulator.get(CREDS, NAMESPACE, "cred")
    assert after is not None and after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
