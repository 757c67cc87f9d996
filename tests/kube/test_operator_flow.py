"""The operator end to end against the emulator: real registries, real worker subprocesses."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from kube.conftest import Cluster, Operator
from kube.jobplayer import JobPlayer
from kube.objects import NAMESPACE, basic_auth_secret, dockerconfig_secret, isj, regcred

from testbed import seed
from testbed.registry import RegistryProcess


async def test_two_shard_run_goes_pending_running_succeeded(cluster: Cluster, operator: Operator,
                                                            player: JobPlayer, registry: RegistryProcess,
                                                            registry2: RegistryProcess) -> None:
    images = [seed.push_image(registry, f"team/app{i}", "1", layers=(200_000,), seed=i) for i in range(6)]
    await cluster.create(regcred("source", registry.host))
    await cluster.create(regcred("target", registry2.host))
    await cluster.create(isj("mirror", {f"{registry.host}/team/app{i}:1": f"{registry2.host}/mirror/app{i}"
                                        for i in range(6)}, parallelism=2))

    status = await cluster.wait_status("mirror", lambda s: s.get("phase") == "Pending", "Pending")
    assert status["run"] == 1 and status["jobName"] == "mirror-r1"
    (job,) = cluster.jobs()
    assert job["spec"]["completionMode"] == "Indexed" and job["spec"]["completions"] == 2
    assert job["metadata"]["ownerReferences"][0]["name"] == "mirror"

    runs = await player.play(NAMESPACE, "mirror-r1")
    assert [r.returncode for r in runs] == [0, 0], [r.stderr[-800:] for r in runs]
    status = await cluster.wait_status("mirror", lambda s: s.get("phase") == "Succeeded", "Succeeded")
    progress = status["progress"]
    assert (progress["imagesTotal"], progress["imagesSynced"], progress["imagesFailed"]) == (6, 6, 0)
    assert progress["percent"] == 100.0 and status["syncedSummary"] == "6/6"
    assert [s["state"] for s in status["shards"]] == ["Succeeded", "Succeeded"]
    assert sum(s["imagesTotal"] for s in status["shards"]) == 6
    for i, image in enumerate(images):
        assert seed.get_manifest(registry2, f"mirror/app{i}", "1")[2] == image.digest
    # kopf posts events in the background: they may land a moment after the status.
    await cluster.wait_for("run events", lambda: {"RunStarted", "RunSucceeded"} <= {
        e.get("reason") for e in cluster.events()})


async def test_one_failing_source_is_partially_failed(cluster: Cluster, operator: Operator, player: JobPlayer,
                                                      registry: RegistryProcess, registry2: RegistryProcess) -> None:
    seed.push_image(registry, "ok/app", "1", seed="ok")
    await cluster.create(regcred("all", "127.0.0.1"))  # no namespace: matches neither host:port exactly
    await cluster.create(regcred("source", registry.host))
    await cluster.create(regcred("target", registry2.host))
    await cluster.create(isj("partial", {f"{registry.host}/ok/app:1": f"{registry2.host}/ok/app",
                                         f"{registry.host}/missing/app:1": f"{registry2.host}/missing/app"},
                             retries=0))
    await cluster.wait_status("partial", lambda s: s.get("jobName"), "a job")
    await player.play(NAMESPACE, "partial-r1")
    status = await cluster.wait_status("partial", lambda s: s.get("phase") == "PartiallyFailed", "PartiallyFailed")
    assert status["progress"]["imagesSynced"] == 1 and status["progress"]["imagesFailed"] == 1
    (failure,) = status["failedImages"]
    assert failure["source"].endswith("missing/app:1") and "manifest unknown" in failure["reason"]
    assert status["failedImagesTotal"] == 1


def condition_of(status: dict[str, Any], type_: str) -> dict[str, Any]:
    found: dict[str, Any] = next(c for c in status["conditions"] if c["type"] == type_)
    return found


async def test_invalid_spec_fails_with_a_message_and_a_warning(cluster: Cluster, operator: Operator) -> None:
    await cluster.create(isj("broken", {"r.io/a/app:1,2": "t.io/a/app:x"}))
    status = await cluster.wait_status("broken", lambda s: s.get("phase") == "Failed", "Failed")
    valid = next(c for c in status["conditions"] if c["type"] == "Valid")
    assert valid["status"] == "False" and valid["reason"] == "InvalidSpec"
    assert "r.io/a/app:1,2" in valid["message"] and "counts must be equal" in valid["message"]
    assert cluster.jobs() == []
    await cluster.wait_for("a warning event", lambda: any(
        e.get("type") == "Warning" and e.get("reason") == "InvalidSpec" for e in cluster.events()))


async def test_cluster_without_indexed_jobs_fails_the_sharded_run_clearly(cluster: Cluster,
                                                                          operator: Operator) -> None:
    # An API server older than Indexed Jobs drops completionMode: every pod would take shard 0.
    cluster.emulator.dropped_fields.add(("jobs", "spec.completionMode"))
    await cluster.create(isj("sharded", {"r.example.com/a/app:1": "t.example.com/a/app"}, parallelism=2))
    status = await cluster.wait_status("sharded", lambda s: s.get("phase") == "Failed", "Failed")
    valid = next(c for c in status["conditions"] if c["type"] == "Valid")
    assert valid["status"] == "False" and valid["reason"] == "IndexedJobsUnsupported"
    assert "set spec.parallelism to 1" in valid["message"]
    await cluster.wait_for("the dropped Job and its Secret removed", lambda: not cluster.jobs()
                           and not [s for s in cluster.secrets() if s["metadata"]["name"].startswith("sharded-")])
    await cluster.wait_for("a warning event", lambda: any(
        e.get("type") == "Warning" and e.get("reason") == "IndexedJobsUnsupported" for e in cluster.events()))

    # Taking the advice starts a run under a fresh name (the removed objects may still be going away).
    await cluster.patch(f"/apis/imagesync.dev/v1alpha1/namespaces/{NAMESPACE}/imagesyncjobs/sharded",
                        {"spec": {"parallelism": 1}})
    status = await cluster.wait_status("sharded", lambda s: s.get("jobName") == "sharded-r2", "run 2")
    assert status["phase"] == "Pending"
    assert [j["metadata"]["name"] for j in cluster.jobs()] == ["sharded-r2"]


async def test_missing_secret_is_a_clear_false_condition(cluster: Cluster, operator: Operator) -> None:
    await cluster.create(regcred("private", "registry.example.com", secret="not-there"))
    await cluster.create(isj("needs-secret", {"registry.example.com/a/app:1": "t.example.com/a/app"}))
    status = await cluster.wait_status("needs-secret", lambda s: s.get("phase") == "Failed", "Failed")
    condition = next(c for c in status["conditions"] if c["type"] == "CredentialsReady")
    assert condition["status"] == "False" and condition["reason"] == "SecretMissing"
    assert "not-there" in condition["message"]
    assert cluster.jobs() == []

    def ready() -> dict[str, object] | None:
        cred = cluster.emulator.get("imagesync.dev/v1alpha1/registrycredentials", NAMESPACE, "private") or {}
        conditions = (cred.get("status") or {}).get("conditions") or []
        return next((c for c in conditions if c["type"] == "Ready"), None)
    condition = await cluster.wait_for("regcred Ready condition", ready)
    assert condition["status"] == "False" and condition["reason"] == "SecretMissing"

    # A job whose images that broken credential does not apply to is not held up by it.
    await cluster.create(isj("unrelated", {"other.example.com/a/app:1": "t.example.com/a/app"}))
    status = await cluster.wait_status("unrelated", lambda s: s.get("jobName"), "a job")
    assert condition_of(status, "CredentialsReady")["status"] == "True"


async def test_basic_auth_and_dockerconfigjson_secrets(cluster: Cluster, operator: Operator, player: JobPlayer,
                                                       basic_registry: RegistryProcess,
                                                       make_registry) -> None:  # type: ignore[no-untyped-def]
    other = make_registry("basic")
    image = seed.push_image(basic_registry, "private/app", "1", seed="secret")
    assert basic_registry.username and basic_registry.password and other.username and other.password
    await cluster.create(basic_auth_secret("source-login", basic_registry.username, basic_registry.password))
    await cluster.create(dockerconfig_secret("target-login", other.host, other.username, other.password))
    await cluster.create(regcred("source", basic_registry.host, secret="source-login"))
    await cluster.create(regcred("target", other.host, secret="target-login"))
    await cluster.create(isj("private", {f"{basic_registry.host}/private/app:1": f"{other.host}/copy/app"}))
    await cluster.wait_status("private", lambda s: s.get("jobName"), "a job")
    (secret,) = [s for s in cluster.secrets() if s["metadata"]["name"] == "private-r1"]
    (job,) = cluster.jobs()
    assert basic_registry.password not in str(job) and other.password not in str(job)
    await player.play(NAMESPACE, "private-r1")
    status = await cluster.wait_status("private", lambda s: s.get("phase") in ("Succeeded", "Failed",
                                                                                "PartiallyFailed"), "done")
    assert status["phase"] == "Succeeded", status
    assert seed.get_manifest(other, "copy/app", "1")[2] == image.digest
    assert basic_registry.password not in str(status) and other.password not in str(cluster.events())
    assert secret["metadata"]["ownerReferences"][0]["kind"] == "ImageSyncJob"


async def test_operator_restart_mid_run_makes_no_second_job(cluster: Cluster, operator: Operator) -> None:
    await cluster.create(isj("steady", {"r.example.com/a/app:1": "t.example.com/a/app"}))
    await cluster.wait_status("steady", lambda s: s.get("jobName"), "a job")
    await operator.stop()
    await operator.start()
    await asyncio.sleep(1.0)
    assert [j["metadata"]["name"] for j in cluster.jobs()] == ["steady-r1"]
    status = cluster.isj("steady")["status"]  # type: ignore[index]
    assert status["run"] == 1


async def test_spec_change_during_a_run_queues_the_next_run(cluster: Cluster, operator: Operator,
                                                            player: JobPlayer, registry: RegistryProcess,
                                                            registry2: RegistryProcess) -> None:
    seed.push_image(registry, "q/app", "1", seed="q1")
    seed.push_image(registry, "q/app", "2", seed="q2")
    await cluster.create(regcred("source", registry.host))
    await cluster.create(regcred("target", registry2.host))
    await cluster.create(isj("queued", {f"{registry.host}/q/app:1": f"{registry2.host}/q/app"}))
    await cluster.wait_status("queued", lambda s: s.get("jobName") == "queued-r1", "run 1")
    await cluster.patch(f"/apis/imagesync.dev/v1alpha1/namespaces/{NAMESPACE}/imagesyncjobs/queued",
                        {"spec": {"images": {f"{registry.host}/q/app:2": f"{registry2.host}/q/app"}}})
    status = await cluster.wait_status("queued", lambda s: s.get("pendingGeneration") == 2, "queued change")
    assert any(c["type"] == "RunQueued" and c["status"] == "True" for c in status["conditions"])
    assert len(cluster.jobs()) == 1
    await player.play(NAMESPACE, "queued-r1")
    status = await cluster.wait_status("queued", lambda s: s.get("jobName") == "queued-r2", "run 2 started")
    assert status["runGeneration"] == 2 and not status.get("pendingGeneration")
    await player.play(NAMESPACE, "queued-r2")
    await cluster.wait_status("queued", lambda s: s.get("phase") == "Succeeded" and s.get("run") == 2, "run 2 done")
    assert sorted(seed.list_tags(registry2, "q/app")) == ["1", "2"]


async def test_suspend_starts_nothing(cluster: Cluster, operator: Operator) -> None:
    await cluster.create(isj("paused", {"r.example.com/a/app:1": "t.example.com/a/app"}, suspend=True))
    await cluster.wait_status("paused", lambda s: s.get("phase") == "Suspended", "Suspended")
    await asyncio.sleep(0.5)
    assert cluster.jobs() == []


async def test_delete_cleans_up_jobs_and_secrets(cluster: Cluster, operator: Operator) -> None:
    await cluster.create(isj("temporary", {"r.example.com/a/app:1": "t.example.com/a/app"}))
    await cluster.wait_status("temporary", lambda s: s.get("jobName"), "a job")
    assert cluster.jobs() and any(s["metadata"]["name"] == "temporary-r1" for s in cluster.secrets())
    await cluster.delete(f"/apis/imagesync.dev/v1alpha1/namespaces/{NAMESPACE}/imagesyncjobs/temporary")
    await cluster.wait_for("jobs gone", lambda: cluster.jobs() == [])
    assert not any(s["metadata"]["name"] == "temporary-r1" for s in cluster.secrets())


async def test_progress_shows_live_while_workers_run(cluster: Cluster, operator: Operator, player: JobPlayer,
                                                     registry: RegistryProcess, registry2: RegistryProcess) -> None:
    for i in range(10):
        seed.push_image(registry, f"live/app{i}", "1", seed=f"live{i}")
    await cluster.create(regcred("source", registry.host))
    await cluster.create(regcred("target", registry2.host))
    # qps and concurrency 1 stretch the run over several seconds (about 6 requests per image at 10/s),
    # while the worker reports every second: intermediate counts must show.
    await cluster.create(isj("live", {f"{registry.host}/live/app{i}:1": f"{registry2.host}/live/app{i}"
                                      for i in range(10)}, concurrency=1, qps=10))
    await cluster.wait_status("live", lambda s: s.get("jobName"), "a job")
    seen: list[tuple[str, int, int]] = []

    async def watch() -> None:
        while True:
            status = (cluster.isj("live") or {}).get("status") or {}
            progress = status.get("progress") or {}
            snapshot = (status.get("phase", ""), progress.get("imagesSynced", 0), progress.get("imagesTotal", 0))
            if not seen or seen[-1] != snapshot:
                seen.append(snapshot)
            await asyncio.sleep(0.02)

    watcher = asyncio.create_task(watch())
    try:
        await player.play(NAMESPACE, "live-r1")
        final = await cluster.wait_status("live", lambda s: s.get("phase") == "Succeeded", "Succeeded")
    finally:
        watcher.cancel()
    phases = [phase for phase, _, _ in seen]
    assert phases[0] == "Pending" and "Running" in phases
    assert final["progress"]["imagesSynced"] == 10
    partial = [synced for phase, synced, total in seen if phase == "Running" and total == 10 and 0 < synced < 10]
    assert partial, f"no intermediate progress was shown: {seen}"


async def test_schedule_fires_again_but_never_overlaps(cluster: Cluster, operator: Operator) -> None:
    path = f"/apis/imagesync.dev/v1alpha1/namespaces/{NAMESPACE}/imagesyncjobs/nightly"
    await cluster.create(isj("nightly", {"r.example.com/a/app:1": "t.example.com/a/app"}, schedule="*/5 * * * *"))
    status = await cluster.wait_status("nightly", lambda s: s.get("jobName") == "nightly-r1", "first run")
    assert status.get("nextScheduleTime") and status.get("lastScheduleTime")
    # Pretend the schedule last fired an hour ago: a fire is due, but run 1 is still active.
    await cluster.patch(f"{path}/status", {"status": {"lastScheduleTime": "2000-01-01T00:00:00Z"}})
    await asyncio.sleep(1.0)  # several timer ticks
    assert [j["metadata"]["name"] for j in cluster.jobs()] == ["nightly-r1"]
    # Run 1 ends (the Job controller marks it failed: no registry answers here); the due fire starts run 2.
    await cluster.patch(f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs/nightly-r1/status",
                        {"status": {"failed": 1, "conditions": [{"type": "Failed", "status": "True"}]}})
    status = await cluster.wait_status("nightly", lambda s: s.get("jobName") == "nightly-r2", "second run")
    assert status["lastScheduleTime"] > "2000-01-01T00:00:00Z"
    await asyncio.sleep(1.0)
    assert sorted(j["metadata"]["name"] for j in cluster.jobs()) == ["nightly-r1", "nightly-r2"]


async def test_refused_login_shows_on_the_registry_credential(cluster: Cluster, operator: Operator,
                                                              player: JobPlayer, basic_registry: RegistryProcess,
                                                              registry2: RegistryProcess) -> None:
    seed.push_image(basic_registry, "locked/app", "1", seed="locked")
    assert basic_registry.username
    await cluster.create(basic_auth_secret("wrong-login", basic_registry.username, "not-the-password"))
    await cluster.create(regcred("locked", basic_registry.host, secret="wrong-login"))
    await cluster.create(regcred("target", registry2.host))
    await cluster.create(isj("locked", {f"{basic_registry.host}/locked/app:1": f"{registry2.host}/locked/app"},
                             retries=0))
    await cluster.wait_status("locked", lambda s: s.get("jobName"), "a job")
    await player.play(NAMESPACE, "locked-r1")
    status = await cluster.wait_status("locked", lambda s: s.get("phase") == "Failed", "Failed")
    assert "401" in status["failedImages"][0]["reason"]

    def ready() -> dict[str, object] | None:
        cred = cluster.emulator.get("imagesync.dev/v1alpha1/registrycredentials", NAMESPACE, "locked") or {}
        conditions = (cred.get("status") or {}).get("conditions") or []
        condition = next((c for c in conditions if c["type"] == "Ready"), None)
        return condition if condition and condition["reason"] == "LoginRejected" else None
    condition = await cluster.wait_for("Ready=False/LoginRejected", ready)
    assert condition["status"] == "False" and "not-the-password" not in str(condition)
    await asyncio.sleep(1.2)  # the periodic Secret check must not flip it back to True
    assert ready() is not None


async def test_finished_runs_drop_their_credentials_and_old_runs_are_pruned(cluster: Cluster,
                                                                            operator: Operator) -> None:
    path = f"/apis/imagesync.dev/v1alpha1/namespaces/{NAMESPACE}/imagesyncjobs/history"

    def run_secrets() -> list[str]:
        return sorted(s["metadata"]["name"] for s in cluster.secrets() if s["metadata"]["name"].startswith("history-"))

    async def end_run(run: int) -> None:  # the Job controller marks it failed (no registry answers here)
        await cluster.patch(f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs/history-r{run}/status",
                            {"status": {"failed": 1, "conditions": [{"type": "Failed", "status": "True"}]}})

    await cluster.create(isj("history", {"r.example.com/a/app:1": "t.example.com/a/app"}, historyLimit=1))
    await cluster.wait_status("history", lambda s: s.get("jobName") == "history-r1", "run 1")
    assert run_secrets() == ["history-r1"]
    await end_run(1)
    status = await cluster.wait_status("history", lambda s: s.get("completionTime"), "run 1 finished")
    assert "secretName" not in status
    await cluster.wait_for("run 1's Secret deleted", lambda: run_secrets() == [])
    assert [j["metadata"]["name"] for j in cluster.jobs()] == ["history-r1"]  # kept: within historyLimit

    await cluster.patch(path, {"spec": {"images": {"r.example.com/a/app:2": "t.example.com/a/app"}}})
    await cluster.wait_status("history", lambda s: s.get("jobName") == "history-r2", "run 2")
    await end_run(2)
    await cluster.wait_for("run 1 pruned", lambda: [j["metadata"]["name"] for j in cluster.jobs()] == ["history-r2"])
    await cluster.wait_for("run 2's Secret deleted", lambda: run_secrets() == [])


@pytest.fixture
def allow_registry_example_images(monkeypatch: pytest.MonkeyPatch) -> None:
    """The operator started after this allows spec.worker.image under registry.example.com/ (issue 11, point 8:
    by default only the worker image's own repository)."""
    monkeypatch.setenv("IMAGESYNC_ALLOWED_WORKER_IMAGES", "registry.example.com/")


async def test_stuck_workers_are_shown_and_a_fix_replaces_the_run(allow_registry_example_images: None,
                                                                  cluster: Cluster, operator: Operator,
                                                                  player: JobPlayer) -> None:
    path = f"/apis/imagesync.dev/v1alpha1/namespaces/{NAMESPACE}/imagesyncjobs/typo"
    await cluster.create(isj("typo", {"r.example.com/a/app:1": "t.example.com/a/app"},
                             worker={"image": "registry.example.com/imagesnyc:1"}))
    await cluster.wait_status("typo", lambda s: s.get("jobName") == "typo-r1", "run 1")
    # The Job controller creates the Pod; the kubelet cannot pull its image.
    job = await player.get(f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs/typo-r1")
    pod = await player.start_pod(job, 0)
    waiting = {"reason": "ImagePullBackOff", "message": 'Back-off pulling image "registry.example.com/imagesnyc:1"'}
    await player.patch_status(f"/api/v1/namespaces/{NAMESPACE}/pods/{pod['metadata']['name']}", {
        "phase": "Pending", "containerStatuses": [{
            "name": "worker", "ready": False, "restartCount": 0, "image": "registry.example.com/imagesnyc:1",
            "imageID": "", "state": {"waiting": waiting}}]})
    status = await cluster.wait_status("typo", lambda s: any(
        c["type"] == "WorkersReady" and c["status"] == "False" for c in s.get("conditions") or []), "stuck")
    workers = condition_of(status, "WorkersReady")
    assert workers["reason"] == "ImagePullBackOff" and "imagesnyc" in workers["message"]
    await cluster.wait_for("a warning event", lambda: any(
        e.get("type") == "Warning" and e.get("reason") == "ImagePullBackOff" for e in cluster.events()))

    # Fixing the image does not queue behind a run that can never end: it replaces it.
    await cluster.patch(path, {"spec": {"worker": {"image": "registry.example.com/imagesync:1"}}})
    status = await cluster.wait_status("typo", lambda s: s.get("jobName") == "typo-r2", "run 2")
    assert not status.get("pendingGeneration")
    assert condition_of(status, "WorkersReady")["status"] == "Unknown"
    await cluster.wait_for("run 1 removed", lambda: [j["metadata"]["name"] for j in cluster.jobs()] == ["typo-r2"])
    (job2,) = cluster.jobs()
    assert job2["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example.com/imagesync:1"
    assert any(e.get("reason") == "RunSuperseded" for e in cluster.events())
