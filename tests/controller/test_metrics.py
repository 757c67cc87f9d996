"""Prometheus metrics: values folded from ImageSyncJob statuses (pure), the registry, the error counters,
the settings and the HTTP endpoint."""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
import urllib.request
from typing import Any

import kopf
import kubernetes
import pytest
from kopf._core.actions.invocation import is_async_fn  # how kopf tells which handlers to await
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from imagesync.controller.main import build_parser, settings_from
from imagesync.controller.metrics import DELETED_UIDS_KEPT, Metrics, Seen, fold, phase_values, timestamp
from imagesync.controller.settings import OperatorSettings, SettingsError

T0, T1, T2 = "2026-01-01T00:00:00Z", "2026-01-01T00:01:30Z", "2026-01-01T01:00:00Z"


def status(run: int, phase: str, copied: int = 0, *, synced: int = 0, skipped: int = 0, failed: int = 0,
           start: str | None = T0, end: str | None = None, job: str | None = None) -> dict[str, Any]:
    result: dict[str, Any] = {
        "run": run, "phase": phase, "jobName": job or f"mirror-r{run}",
        "progress": {"bytesCopied": copied, "imagesSynced": synced, "imagesSkipped": skipped,
                     "imagesFailed": failed, "imagesTotal": synced + skipped + failed}}
    if start:
        result["startTime"] = start
    if end:
        result["completionTime"] = end
    return result


def fold_all(*statuses: dict[str, Any], seen: Seen | None = None) -> tuple[Seen | None, list[Any]]:
    observations = []
    for one in statuses:
        seen, observation = fold(seen, one)
        observations.append(observation)
    return seen, observations


def test_bytes_count_increases_within_a_run_and_restart_from_zero_with_the_next() -> None:
    _, obs = fold_all(status(1, "Pending"), status(1, "Running", 100), status(1, "Running", 250),
                      status(1, "Succeeded", 300, end=T1), status(2, "Pending"), status(2, "Running", 40),
                      status(2, "Running", 90))
    assert [o.bytes_increase for o in obs] == [0, 100, 150, 50, 0, 40, 50]


def test_a_retried_shard_lowering_the_sum_counts_nothing_then_counts_from_the_lower_value() -> None:
    # A retried pod's report replaces its predecessor's: the folded sum drops, then grows again.
    _, obs = fold_all(status(1, "Running", 500), status(1, "Running", 800), status(1, "Running", 300),
                      status(1, "Running", 700), status(1, "Running", 700))
    assert [o.bytes_increase for o in obs] == [0, 300, 0, 400, 0]


def test_a_new_run_first_seen_with_bytes_counts_them_all() -> None:
    # The pod event that shows run 2 may already carry its first report.
    _, obs = fold_all(status(1, "Succeeded", 1000, end=T1), status(2, "Running", 60))
    assert [o.bytes_increase for o in obs] == [0, 60]


def test_first_sight_counts_nothing_that_happened_before() -> None:
    # A new operator process (restart) finds a run in progress and a finished one: Prometheus already
    # has those from the previous process, whose counters this one's reset continues.
    seen, observation = fold(None, status(3, "Running", 5000, synced=2))
    assert observation.bytes_increase == 0 and observation.finished is None
    assert observation.images == {"synced": 2, "skipped": 0, "failed": 0}
    seen, observation = fold(None, status(3, "Succeeded", 5000, end=T1))
    assert observation.finished is None
    # ...but the facts in the status are shown.
    assert observation.last_completion == timestamp(T1) and observation.last_success == timestamp(T1)
    assert observation.last_duration == 90.0
    _, again = fold(seen, status(3, "Succeeded", 5000, end=T1))
    assert again.finished is None and again.bytes_increase == 0


def test_a_finished_run_counts_once_with_its_result() -> None:
    finished = status(1, "PartiallyFailed", 10, synced=1, failed=1, end=T1)
    _, obs = fold_all(status(1, "Pending"), status(1, "Running"), finished, finished, dict(finished))
    assert [o.finished for o in obs] == [None, None, "PartiallyFailed", None, None]
    assert obs[2].images == {"synced": 1, "skipped": 0, "failed": 1}
    assert obs[2].last_duration == 90.0 and obs[2].last_completion == timestamp(T1)
    assert obs[2].last_success is None


def test_last_run_values_stay_while_the_next_run_runs_and_last_success_survives_a_failure() -> None:
    _, obs = fold_all(status(1, "Running"), status(1, "Succeeded", end=T1), status(2, "Pending", start=T1),
                      status(2, "Failed", start=T1, end=T2))
    assert obs[1].last_success == obs[2].last_success == obs[3].last_success == timestamp(T1)
    assert obs[2].last_duration == 90.0 and obs[2].last_completion == timestamp(T1)
    assert obs[3].finished == "Failed" and obs[3].last_completion == timestamp(T2)
    assert obs[3].last_duration == timestamp(T2) - timestamp(T1)  # type: ignore[operator]


def test_a_run_refused_before_it_started_is_not_a_finished_run() -> None:
    # IndexedJobsUnsupported uses up run 2's number but leaves run 1's Job name and times in the status.
    _, obs = fold_all(status(1, "Running"), status(1, "Succeeded", end=T1),
                      {**status(1, "Succeeded", end=T1), "run": 2, "phase": "Failed"})
    assert [o.finished for o in obs] == [None, "Succeeded", None]
    assert obs[2].phase == "Failed" and obs[2].last_completion == timestamp(T1)


def test_odd_statuses_are_shown_as_unknown_not_a_crash() -> None:
    for odd in ({}, {"phase": "Weird", "run": "2", "progress": "x"}, {"run": True, "progress": {"bytesCopied": -5}},
                {"run": 1, "phase": "Succeeded", "completionTime": "yesterday", "jobName": "a-r1"}):
        _, observation = fold(None, odd)
        assert observation.phase is None or observation.phase in phase_values(None)
        assert observation.bytes_increase == 0 and observation.finished is None


def test_phase_values_is_one_series_per_phase() -> None:
    assert phase_values("Running") == {"Pending": 0, "Running": 1, "Succeeded": 0, "PartiallyFailed": 0,
                                       "Failed": 0, "Suspended": 0}
    assert set(phase_values(None).values()) == {0}


def isj(name: str, st: dict[str, Any], namespace: str = "team") -> dict[str, Any]:
    return {"metadata": {"namespace": namespace, "name": name}, "status": st}


def scrape(metrics: Metrics) -> dict[str, Any]:
    """name -> (type, {frozenset(labels): value}) from the text exposition format."""
    families = text_string_to_metric_families(generate_latest(metrics.registry).decode())
    return {f.name: (f.type, {frozenset(s.labels.items()): s.value for s in f.samples
                              if not s.name.endswith("_created")})
            for f in families if not f.name.endswith("_created")}  # prometheus_client's counter creation times


def value(found: dict[str, Any], metric: str, /, **labels: str) -> float | None:
    samples: dict[frozenset[tuple[str, str]], float] = found[metric][1]
    return samples.get(frozenset(labels.items()))


def test_metric_names_types_and_units_follow_prometheus_conventions() -> None:
    metrics = Metrics()
    metrics.observe(isj("mirror", status(1, "Pending")))
    metrics.api_errors.labels("500")
    metrics.reconcile_errors.labels("isj_created")
    found = scrape(metrics)
    # The parser names counter families without _total; their samples carry it (checked below).
    assert {name: kind for name, (kind, _) in found.items()} == {
        "imagesync_job_status_phase": "gauge",
        "imagesync_job_run_images": "gauge",
        "imagesync_job_copied_bytes": "counter",
        "imagesync_job_runs": "counter",
        "imagesync_job_last_run_duration_seconds": "gauge",
        "imagesync_job_last_run_completion_timestamp_seconds": "gauge",
        "imagesync_job_last_success_timestamp_seconds": "gauge",
        "imagesync_operator_reconcile_errors": "counter",
        "imagesync_operator_kubernetes_api_errors": "counter",
    }
    text = generate_latest(metrics.registry).decode()
    for sample in ("imagesync_job_copied_bytes_total{", "imagesync_job_runs_total{",
                   "imagesync_operator_reconcile_errors_total{", "imagesync_operator_kubernetes_api_errors_total{"):
        assert sample in text


def test_observe_sets_the_series_and_forget_removes_them() -> None:
    metrics = Metrics()
    for st in (status(1, "Pending"), status(1, "Running", 1000, synced=1),
               status(1, "Succeeded", 3000, synced=2, skipped=1, end=T1)):
        metrics.observe(isj("mirror", st))
    metrics.observe(isj("other", status(4, "Running", 77)))
    found = scrape(metrics)
    job = {"namespace": "team", "name": "mirror"}
    assert value(found, "imagesync_job_status_phase", **job, phase="Succeeded") == 1
    assert value(found, "imagesync_job_status_phase", **job, phase="Running") == 0
    assert value(found, "imagesync_job_run_images", **job, outcome="synced") == 2
    assert value(found, "imagesync_job_run_images", **job, outcome="skipped") == 1
    assert value(found, "imagesync_job_copied_bytes", **job) == 3000
    assert value(found, "imagesync_job_runs", **job, result="Succeeded") == 1
    assert value(found, "imagesync_job_runs", **job, result="Failed") == 0
    assert value(found, "imagesync_job_last_run_duration_seconds", **job) == 90
    assert value(found, "imagesync_job_last_run_completion_timestamp_seconds", **job) == timestamp(T1)
    assert value(found, "imagesync_job_last_success_timestamp_seconds", **job) == timestamp(T1)
    other = {"namespace": "team", "name": "other"}
    assert value(found, "imagesync_job_copied_bytes", **other) == 0  # first sight: counted by an earlier process
    assert "imagesync_job_last_run_duration_seconds" in found
    assert value(found, "imagesync_job_last_run_duration_seconds", **other) is None  # not known

    metrics.forget("team", "mirror")
    text = generate_latest(metrics.registry).decode()
    assert 'name="mirror"' not in text and 'name="other"' in text
    metrics.observe(isj("mirror", status(1, "Succeeded", 3000, end=T1)))  # re-created: a new first sight
    assert value(scrape(metrics), "imagesync_job_runs", **job, result="Succeeded") == 0


def test_a_separate_registry_per_instance() -> None:
    one, two = Metrics(), Metrics()
    one.observe(isj("a", status(1, "Running")))
    assert 'name="a"' in generate_latest(one.registry).decode()
    assert 'name="a"' not in generate_latest(two.registry).decode()


def test_handler_exceptions_count_by_kopf_handler_id_and_still_reach_kopf() -> None:
    registry = kopf.OperatorRegistry()
    calls: list[str] = []

    @kopf.on.create("imagesync.dev", "v1alpha1", "imagesyncjobs", registry=registry)
    def created(**_: Any) -> None:
        calls.append("created")
        raise RuntimeError("API down")

    @kopf.on.update("imagesync.dev", "v1alpha1", "imagesyncjobs", field="spec", registry=registry)
    async def changed(**_: Any) -> str:
        raise kopf.TemporaryError("later")

    @kopf.on.event("", "v1", "pods", registry=registry)
    def pod(**_: Any) -> str:
        return "fine"

    @kopf.timer("imagesync.dev", "v1alpha1", "imagesyncjobs", interval=1, registry=registry)
    def tick(**_: Any) -> None:
        raise ValueError("bad")

    metrics = Metrics()
    metrics.count_handler_errors(registry)
    metrics.count_handler_errors(registry)  # twice: wrapped once
    handlers = {str(h.id).rpartition("<locals>.")[2]: h for kind in ("_changing", "_watching", "_spawning")
                for h in getattr(registry, kind).get_all_handlers()}
    assert set(handlers) == {"created", "changed/spec", "pod", "tick"}
    # kopf's ids are unchanged (they key its progress annotations on the objects)
    assert str(handlers["created"].id) == created.__qualname__
    with pytest.raises(RuntimeError):
        handlers["created"].fn()
    with pytest.raises(RuntimeError):
        handlers["created"].fn()
    with pytest.raises(ValueError):
        handlers["tick"].fn()
    assert handlers["pod"].fn() == "fine"
    with pytest.raises(kopf.TemporaryError):
        asyncio.run(handlers["changed/spec"].fn())
    assert is_async_fn(handlers["changed/spec"].fn) and not is_async_fn(handlers["created"].fn)
    found = scrape(metrics)
    assert value(found, "imagesync_operator_reconcile_errors", handler="created") == 2
    assert value(found, "imagesync_operator_reconcile_errors", handler="tick") == 1
    assert value(found, "imagesync_operator_reconcile_errors", handler="changed/spec") == 1
    assert value(found, "imagesync_operator_reconcile_errors", handler="pod") == 0
    assert calls == ["created", "created"]


class FakeResponse:
    def __init__(self, status: int) -> None:
        self.status = status


class FakeApiClient:
    def __init__(self, answers: list[Any]) -> None:
        self.answers = answers

    def call_api(self, *args: Any, **kwargs: Any) -> Any:
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_api_errors_count_failed_requests_by_status_code() -> None:
    client = FakeApiClient([FakeResponse(200), FakeResponse(404), FakeResponse(500), FakeResponse(500),
                            kubernetes.client.ApiException(status=0, reason="SSLError"), ConnectionError("refused")])
    metrics = Metrics()
    metrics.count_api_errors(client)
    for _ in range(4):
        client.call_api("GET", "/x")
    for _ in range(2):
        with pytest.raises(Exception):  # noqa: B017 (either kind)
            client.call_api("GET", "/x")
    found = scrape(metrics)
    assert value(found, "imagesync_operator_kubernetes_api_errors", code="404") == 1
    assert value(found, "imagesync_operator_kubernetes_api_errors", code="500") == 2
    assert value(found, "imagesync_operator_kubernetes_api_errors", code="0") == 2
    assert value(found, "imagesync_operator_kubernetes_api_errors", code="200") is None


def test_the_endpoint_serves_the_registry_over_http() -> None:
    metrics = Metrics()
    metrics.observe(isj("mirror", status(1, "Running")))
    server = metrics.serve("127.0.0.1", 0)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=10) as response:
            assert response.status == 200 and response.headers["Content-Type"].startswith("text/plain")
            text = response.read().decode()
    finally:
        server.close()
    assert 'imagesync_job_status_phase{name="mirror",namespace="team",phase="Running"} 1.0' in text


def test_ports_and_address_from_env_and_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("IMAGESYNC_METRICS_PORT", "IMAGESYNC_HEALTH_PORT", "IMAGESYNC_BIND_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    settings = OperatorSettings.from_env({})
    assert (settings.bind_address, settings.metrics_port, settings.health_port) == ("0.0.0.0", 8080, 8081)
    settings = OperatorSettings.from_env({"IMAGESYNC_METRICS_PORT": "9090", "IMAGESYNC_HEALTH_PORT": "0",
                                          "IMAGESYNC_BIND_ADDRESS": "127.0.0.1"})
    assert (settings.bind_address, settings.metrics_port, settings.health_port) == ("127.0.0.1", 9090, 0)
    for bad in ("http", "-1", "70000"):
        with pytest.raises(SettingsError, match="IMAGESYNC_METRICS_PORT"):
            OperatorSettings.from_env({"IMAGESYNC_METRICS_PORT": bad})
    args = build_parser().parse_args(["--metrics-port", "9100", "--health-port", "9101", "--bind-address", "::1"])
    settings = settings_from(args)
    assert (settings.bind_address, settings.metrics_port, settings.health_port) == ("::1", 9100, 9101)
    with pytest.raises(SettingsError, match="--metrics-port"):
        settings_from(build_parser().parse_args(["--metrics-port", "99999"]))


def test_a_thousand_image_sync_jobs_series_take_little_memory() -> None:
    # The series are made at scrape time from plain numbers (metrics.JobSeries): prometheus_client's labelled
    # children took 8.9 MB for 1000 ImageSyncJobs (15 children each, each with its lock), a sixteenth of the
    # operator's 150 MiB goal at that size (docs/operator-scale.md).
    metrics = Metrics()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for i in range(1000):
            metrics.observe({"metadata": {"namespace": "ns", "name": f"job-{i}"}, "status": {"phase": "Suspended"}})
        gc.collect()
        grown = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(before, "filename"))
    finally:
        tracemalloc.stop()
    assert grown < 2_000_000, grown
    text = generate_latest(metrics.registry).decode()
    assert text.count('imagesync_job_status_phase{name="job-') == 1000 * 6


def test_a_job_observed_after_its_deletion_gets_no_series_again() -> None:
    # A handler that read the ImageSyncJob before its deletion may observe it after forget() (a CI failure:
    # the series stayed for good). Its UID marks it; the same name created again is a new object.
    metrics = Metrics()
    isj = {"metadata": {"namespace": "sync", "name": "mirror", "uid": "u-1"}, "status": {"phase": "Succeeded"}}
    metrics.observe(isj)
    metrics.forget("sync", "mirror", "u-1")
    metrics.observe(isj)
    assert metrics.jobs() == {}
    metrics.observe({**isj, "metadata": {**isj["metadata"], "uid": "u-2"}})
    assert list(metrics.jobs()) == [("sync", "mirror")]


def test_only_the_latest_deletions_are_remembered() -> None:
    # An operator runs for months: the UIDs it ignores late observations of are bounded.
    metrics = Metrics()
    for number in range(DELETED_UIDS_KEPT + 10):
        metrics.forget("sync", f"job-{number}", f"uid-{number}")
    late = {"metadata": {"namespace": "sync", "name": "job-0", "uid": "uid-0"}, "status": {"phase": "Succeeded"}}
    metrics.observe(late)  # forgotten long ago: observed again (no handler holds a copy this old)
    newest = {"metadata": {"namespace": "sync", "name": "job-x", "uid": f"uid-{DELETED_UIDS_KEPT + 9}"},
              "status": {"phase": "Succeeded"}}
    metrics.observe(newest)
    assert list(metrics.jobs()) == [("sync", "job-0")]
