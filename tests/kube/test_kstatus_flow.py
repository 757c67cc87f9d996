"""Ready / Reconciling / Stalled and observedGeneration as a run goes, against the emulator.

A watcher samples the ImageSyncJob's status the whole time, so the test sees the sequence a GitOps tool
(Flux's kstatus, Argo CD's health check, `kubectl wait --for=condition=Ready`) would see, not only the end.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from kube.conftest import Cluster, Operator
from kube.jobplayer import JobPlayer
from kube.objects import NAMESPACE, basic_auth_secret, isj, regcred

from testbed import seed
from testbed.registry import RegistryProcess

REGCREDS = "imagesync.dev/v1alpha1/registrycredentials"
State = tuple[str, str, str]  # "Status/Reason" of Ready, Reconciling, Stalled


def kstate(obj: dict[str, Any] | None) -> State | None:
    conditions = ((obj or {}).get("status") or {}).get("conditions") or []
    found = {c["type"]: f"{c['status']}/{c.get('reason')}" for c in conditions}
    if "Ready" not in found:
        return None
    return found["Ready"], found.get("Reconciling", "-"), found.get("Stalled", "-")


def states(seen: list[State]) -> list[tuple[str, str, str]]:
    """Only the statuses (True/False) of the three conditions, repeats collapsed."""
    result: list[tuple[str, str, str]] = []
    for state in seen:
        row = tuple(part.split("/")[0] for part in state)
        if not result or result[-1] != row:
            result.append(row)  # type: ignore[arg-type]
    return result


@asynccontextmanager
async def watching(read: Callable[[], dict[str, Any] | None]) -> AsyncIterator[list[State]]:
    seen: list[State] = []

    async def watch() -> None:
        while True:
            state = kstate(read())
            if state is not None and (not seen or seen[-1] != state):
                seen.append(state)
            await asyncio.sleep(0.02)

    task = asyncio.create_task(watch())
    try:
        yield seen
    finally:
        task.cancel()


def generations(obj: dict[str, Any] | None) -> tuple[Any, Any]:
    obj = obj or {}
    return obj["metadata"].get("generation"), (obj.get("status") or {}).get("observedGeneration")


def ready_is(status: str, reason: str | None = None) -> Callable[[dict[str, Any]], bool]:
    def check(s: dict[str, Any]) -> bool:
        ready = next((c for c in s.get("conditions") or [] if c["type"] == "Ready"), None)
        return ready is not None and ready["status"] == status and (reason is None or ready["reason"] == reason)
    return check


async def test_a_good_run_goes_reconciling_then_ready(cluster: Cluster, operator: Operator, player: JobPlayer,
                                                      registry: RegistryProcess, registry2: RegistryProcess) -> None:
    for i in range(2):
        seed.push_image(registry, f"ks/app{i}", "1", seed=f"ks{i}")
    await cluster.create(regcred("source", registry.host))
    await cluster.create(regcred("target", registry2.host))
    async with watching(lambda: cluster.isj("good")) as seen:
        await cluster.create(isj("good", {f"{registry.host}/ks/app{i}:1": f"{registry2.host}/ks/app{i}"
                                          for i in range(2)}))
        await cluster.wait_status("good", lambda s: s.get("jobName"), "a job")
        runs = await player.play(NAMESPACE, "good-r1")
        assert [r.returncode for r in runs] == [0], [r.stderr[-800:] for r in runs]
        status = await cluster.wait_status("good", ready_is("True"), "Ready=True")
        await asyncio.sleep(0.1)
    assert status["phase"] == "Succeeded"
    assert states(seen) == [("False", "True", "False"), ("True", "False", "False")], seen
    assert seen[0] == ("False/Progressing", "True/RunStarting", "False/RunStarting"), seen
    assert seen[-1] == ("True/Succeeded", "False/Succeeded", "False/Succeeded"), seen
    assert generations(cluster.isj("good")) == (1, 1)


async def test_a_partially_failed_run_is_never_ready_and_ends_stalled(
        cluster: Cluster, operator: Operator, player: JobPlayer, registry: RegistryProcess,
        registry2: RegistryProcess) -> None:
    seed.push_image(registry, "ok/app", "1", seed="ok")
    await cluster.create(regcred("source", registry.host))
    await cluster.create(regcred("target", registry2.host))
    async with watching(lambda: cluster.isj("partial")) as seen:
        await cluster.create(isj("partial", {f"{registry.host}/ok/app:1": f"{registry2.host}/ok/app",
                                             f"{registry.host}/missing/app:1": f"{registry2.host}/missing/app"},
                                 retries=0))
        await cluster.wait_status("partial", lambda s: s.get("jobName"), "a job")
        await player.play(NAMESPACE, "partial-r1")
        status = await cluster.wait_status("partial", lambda s: s.get("phase") == "PartiallyFailed", "done")
        await cluster.wait_status("partial", ready_is("False", "RunPartiallyFailed"), "Ready=False")
        await asyncio.sleep(0.1)
    assert states(seen) == [("False", "True", "False"), ("False", "False", "True")], seen
    assert seen[-1] == ("False/RunPartiallyFailed", "False/RunPartiallyFailed", "True/RunPartiallyFailed"), seen
    assert not any(state[0].startswith("True") for state in seen)
    stalled = next(c for c in cluster.isj("partial")["status"]["conditions"]  # type: ignore[index]
                   if c["type"] == "Stalled")
    assert "1 synced" in stalled["message"] and "1 failed" in stalled["message"], stalled
    assert status["progress"]["imagesFailed"] == 1 and generations(cluster.isj("partial")) == (1, 1)


async def test_an_invalid_spec_is_stalled_until_fixed(cluster: Cluster, operator: Operator) -> None:
    path = f"/apis/imagesync.dev/v1alpha1/namespaces/{NAMESPACE}/imagesyncjobs/broken"
    async with watching(lambda: cluster.isj("broken")) as seen:
        await cluster.create(isj("broken", {"r.io/a/app:1,2": "t.io/a/app:x"}))
        await cluster.wait_status("broken", ready_is("False", "InvalidSpec"), "Stalled")
        await asyncio.sleep(0.3)
        assert seen == [("False/InvalidSpec", "False/InvalidSpec", "True/InvalidSpec")], seen
        assert generations(cluster.isj("broken")) == (1, 1)
        # The fix is a spec change: observed at once, and the run it starts is Reconciling.
        await cluster.patch(path, {"spec": {"images": {"r.io/a/app:1,2": None, "r.io/a/app:1": "t.io/a/app"}}})
        await cluster.wait_status("broken", lambda s: s.get("jobName") == "broken-r1", "run 1")
        await asyncio.sleep(0.1)
    assert seen[-1] == ("False/Progressing", "True/RunStarting", "False/RunStarting"), seen
    assert generations(cluster.isj("broken")) == (2, 2)


async def test_a_missing_secret_stalls_the_job_and_the_credential(cluster: Cluster, operator: Operator) -> None:
    path = f"/apis/imagesync.dev/v1alpha1/namespaces/{NAMESPACE}/imagesyncjobs/needs-secret"
    await cluster.create(regcred("private", "registry.example.com", secret="not-there"))
    async with watching(lambda: cluster.isj("needs-secret")) as seen:
        await cluster.create(isj("needs-secret", {"registry.example.com/a/app:1": "t.example.com/a/app"}))
        await cluster.wait_status("needs-secret", ready_is("False", "SecretMissing"), "Stalled")
        await asyncio.sleep(0.2)
    assert seen == [("False/SecretMissing", "False/SecretMissing", "True/SecretMissing")], seen
    assert cluster.jobs() == []

    def credential() -> dict[str, Any] | None:
        return cluster.emulator.get(REGCREDS, NAMESPACE, "private")
    await cluster.wait_for("regcred Stalled", lambda: kstate(credential()) == (
        "False/SecretMissing", "False/SecretMissing", "True/SecretMissing"))
    assert generations(credential()) == (1, 1)

    # The Secret appears: the credential's periodic check makes it Ready; the job runs on its next spec change.
    await cluster.create(basic_auth_secret("not-there", "robot", "pw"))
    await cluster.wait_for("regcred Ready", lambda: kstate(credential()) == (
        "True/SecretValid", "False/SecretValid", "False/SecretValid"), timeout=10)
    await cluster.patch(path, {"spec": {"retries": 1}})
    status = await cluster.wait_status("needs-secret", lambda s: s.get("jobName"), "a job")
    assert kstate({"status": status}) == ("False/Progressing", "True/RunStarting", "False/RunStarting")
    assert status["observedGeneration"] == 2
