"""Prometheus metrics of the operator: per ImageSyncJob, folded from its status, and the operator's own errors.

The workers are short-lived Pods (a run may last seconds): a scrape would miss most of them, so they serve
no endpoint. Their counts reach Prometheus through the operator, which already folds the workers' reports
into each ImageSyncJob's status; the handlers call :meth:`Metrics.observe` after every status patch, and
the pure :func:`fold` turns "what was seen before" plus the new status into metric values.

Every metric lives in a registry of its own (not prometheus_client's global one), so tests can run
several operators in one process.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import inspect
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import start_http_server

PHASES = ("Pending", "Running", "Succeeded", "PartiallyFailed", "Failed", "Suspended")
RESULTS = ("Succeeded", "PartiallyFailed", "Failed")  # the phases a finished run ends in
OUTCOMES = {"synced": "imagesSynced", "skipped": "imagesSkipped", "failed": "imagesFailed"}
JOB_LABELS = ("namespace", "name")
# Recently deleted ImageSyncJobs whose late observations are ignored (see Metrics.forget).
DELETED_UIDS_KEPT = 4096


def timestamp(value: object) -> float | None:
    """An RFC 3339 status time as Unix seconds (None when absent or unreadable)."""
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.timestamp()


def _count(progress: Mapping[str, Any], key: str) -> int:
    value = progress.get(key, 0)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


@dataclass(frozen=True)
class Seen:
    """What the operator remembers of one ImageSyncJob between observations (in memory only)."""

    run: int = 0
    bytes_copied: int = 0  # the run's bytesCopied at the last observation
    counted_run: int = 0  # the last finished run counted in runs_total (or found finished at first sight)
    last_duration: float | None = None
    last_completion: float | None = None
    last_success: float | None = None


@dataclass(frozen=True)
class Observation:
    """Metric values for one ImageSyncJob after one status change."""

    phase: str | None
    images: dict[str, int]
    bytes_increase: int
    finished: str | None  # the result of a run that finished since the previous observation
    last_duration: float | None
    last_completion: float | None
    last_success: float | None


def fold(seen: Seen | None, status: Mapping[str, Any]) -> tuple[Seen, Observation]:
    """Pure: the previous memory and the new status -> the new memory and the metric values.

    Bytes count only increases within one run: a new run starts again from its own zero, and a shard's
    retried pod (whose report replaces its predecessor's, so the sum drops) counts from the lower value.
    At first sight (a new ImageSyncJob, or any after an operator restart) nothing already in the status is
    counted: this process did not see it happen, and Prometheus already has it from the previous process.
    """
    first = seen is None
    before = seen or Seen()
    run = status.get("run")
    run = run if isinstance(run, int) and not isinstance(run, bool) and run > 0 else 0
    progress = status.get("progress")
    progress = progress if isinstance(progress, Mapping) else {}
    copied = _count(progress, "bytesCopied")
    if first:
        increase = 0
    elif run != before.run:
        increase = copied  # a new run: everything it copied so far is new
    else:
        increase = max(0, copied - before.bytes_copied)

    phase = status.get("phase") if status.get("phase") in PHASES else None
    completion = timestamp(status.get("completionTime"))
    # A finished run: its number, its end, a final phase, and the Job named after it (a run refused before
    # it started, such as IndexedJobsUnsupported, leaves the previous run's Job name and times behind).
    finished_now = run > 0 and completion is not None and phase in RESULTS \
        and str(status.get("jobName") or "").endswith(f"-r{run}")
    after = dataclasses.replace(before, run=run, bytes_copied=copied)
    finished = None
    if finished_now and run > before.counted_run:
        start = timestamp(status.get("startTime"))
        after = dataclasses.replace(
            after, counted_run=run, last_completion=completion,
            last_duration=max(0.0, completion - start) if completion is not None and start is not None else None,
            last_success=completion if phase == "Succeeded" else before.last_success)
        finished = None if first else phase
    images = {outcome: _count(progress, key) for outcome, key in OUTCOMES.items()}
    return after, Observation(phase=phase, images=images, bytes_increase=increase, finished=finished,
                              last_duration=after.last_duration, last_completion=after.last_completion,
                              last_success=after.last_success)


def phase_values(phase: str | None) -> dict[str, float]:
    """One series per phase, 1 for the current one (kube-state-metrics' style for kube_pod_status_phase)."""
    return {p: 1.0 if p == phase else 0.0 for p in PHASES}


def _job_key(isj: Mapping[str, Any]) -> tuple[str, str] | None:
    meta = isj.get("metadata")
    if not isinstance(meta, Mapping):
        return None
    namespace, name = meta.get("namespace"), meta.get("name")
    return (namespace, name) if isinstance(namespace, str) and isinstance(name, str) else None


@dataclass
class JobSeries:
    """One ImageSyncJob's metric values, kept as plain numbers and turned into series at scrape time
    (:class:`JobCollector`): prometheus_client's labelled children took 8.9 KB per ImageSyncJob (15 children,
    each with its lock), 8.9 MB at 1000, most of them never-run suspended ones (docs/operator-scale.md)."""

    seen: Seen
    created: float  # the counters' start (their _created sample)
    phase: str | None = None
    images: dict[str, int] = field(default_factory=dict)
    copied_bytes: float = 0.0
    runs: dict[str, int] = field(default_factory=dict)


def job_families(jobs: Mapping[tuple[str, str], JobSeries]) -> list[Metric]:
    """Pure: every ImageSyncJob's series, as the metric families a scrape shows."""
    phase = GaugeMetricFamily("imagesync_job_status_phase",
                              "ImageSyncJob phase: 1 for the current phase, 0 for the others",
                              labels=[*JOB_LABELS, "phase"])
    images = GaugeMetricFamily("imagesync_job_run_images", "Images of the current or last run by outcome so far "
                               "(synced, skipped as already up to date, failed)", labels=[*JOB_LABELS, "outcome"])
    copied = CounterMetricFamily("imagesync_job_copied_bytes", "Bytes of blobs copied by the ImageSyncJob's runs "
                                 "(as the workers report them; mounts and skipped blobs copy none)", labels=JOB_LABELS)
    runs = CounterMetricFamily("imagesync_job_runs", "Finished runs by result (Succeeded, PartiallyFailed, Failed)",
                               labels=[*JOB_LABELS, "result"])
    duration = GaugeMetricFamily("imagesync_job_last_run_duration_seconds", "Duration of the last finished run",
                                 labels=JOB_LABELS)
    completion = GaugeMetricFamily("imagesync_job_last_run_completion_timestamp_seconds",
                                   "When the last finished run ended (Unix time)", labels=JOB_LABELS)
    success = GaugeMetricFamily("imagesync_job_last_success_timestamp_seconds",
                                "When the last Succeeded run ended (Unix time; known once this operator process saw "
                                "a run succeed, or found the last run Succeeded)", labels=JOB_LABELS)
    for (namespace, name), job in jobs.items():
        for each, value in phase_values(job.phase).items():
            phase.add_metric([namespace, name, each], value)
        for outcome in OUTCOMES:
            if outcome in job.images:
                images.add_metric([namespace, name, outcome], job.images[outcome])
        copied.add_metric([namespace, name], job.copied_bytes, created=job.created)
        for result in RESULTS:  # every result present from the start: rate() needs the zero
            runs.add_metric([namespace, name, result], job.runs.get(result, 0), created=job.created)
        for family, known in ((duration, job.seen.last_duration), (completion, job.seen.last_completion),
                              (success, job.seen.last_success)):
            if known is not None:
                family.add_metric([namespace, name], known)
    return [phase, images, copied, runs, duration, completion, success]


class JobCollector:
    """The per-ImageSyncJob series of a :class:`Metrics`, made at each scrape from its JobSeries."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return job_families(self._metrics.jobs())


class Metrics:
    """The operator's metrics in a registry of its own; thread-safe (kopf runs the handlers in threads)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._jobs: dict[tuple[str, str], JobSeries] = {}
        # UIDs of recently deleted ImageSyncJobs: a handler that read one before its deletion may observe it
        # after forget() (seen in CI: the series came back for good). A name used again gets a new UID. Only
        # the latest DELETED_UIDS_KEPT are kept: the race lasts as long as a handler in flight, and an operator
        # running for months must not keep every UID it ever saw deleted.
        self._deleted_uids: dict[str, None] = {}
        self._lock = threading.Lock()
        r.register(JobCollector(self))
        self.reconcile_errors = Counter("imagesync_operator_reconcile_errors",
                                        "Exceptions raised by the operator's handlers (kopf retries or logs them)",
                                        ["handler"], registry=r)
        self.api_errors = Counter("imagesync_operator_kubernetes_api_errors",
                                  "Failed Kubernetes API requests of the handlers by HTTP status code ('0' when no "
                                  "response: connection, TLS, timeout); 404 and 409 include answers the handlers "
                                  "expect (gone or exists already)", ["code"], registry=r)

    # -- per ImageSyncJob ---------------------------------------------------------------------------

    def observe(self, isj: Mapping[str, Any]) -> None:
        """Fold the ImageSyncJob's status (as just patched) into its series."""
        key = _job_key(isj)
        if key is None:
            return
        status = isj.get("status")
        uid = (isj.get("metadata") or {}).get("uid")
        with self._lock:
            if uid is not None and uid in self._deleted_uids:
                return
            job = self._jobs.get(key)
            seen, values = fold(job.seen if job else None, status if isinstance(status, Mapping) else {})
            if job is None:
                job = self._jobs[key] = JobSeries(seen, created=time.time())
            job.seen, job.phase, job.images = seen, values.phase, values.images
            job.copied_bytes += values.bytes_increase
            if values.finished is not None:
                job.runs[values.finished] = job.runs.get(values.finished, 0) + 1

    def jobs(self) -> dict[tuple[str, str], JobSeries]:
        """Every ImageSyncJob's values as now (a copy: a scrape reads it while handlers observe)."""
        with self._lock:
            return {key: dataclasses.replace(job, images=dict(job.images), runs=dict(job.runs))
                    for key, job in self._jobs.items()}

    def forget(self, namespace: str, name: str, uid: str | None = None) -> None:
        """The ImageSyncJob is gone: remove its series, and keep them removed (a late observe() of it is ignored)."""
        with self._lock:
            self._jobs.pop((namespace, name), None)
            if uid is not None:
                self._deleted_uids[uid] = None
                if len(self._deleted_uids) > DELETED_UIDS_KEPT:
                    del self._deleted_uids[next(iter(self._deleted_uids))]  # the oldest (dicts keep order)

    # -- operator-level ---------------------------------------------------------------------------

    def count_handler_errors(self, registry: kopf.OperatorRegistry) -> None:
        """Wrap every resource handler in ``registry`` so that an exception it raises counts in
        reconcile_errors_total{handler=<kopf's handler id without the function's qualifiers>} (kopf still
        sees the exception and retries or logs it).

        kopf has no hook for handler failures, so this replaces the handler objects in its registries
        (internals of kopf 1.45, which pyproject pins; tests/controller/test_metrics.py checks them).
        """
        for kind in ("_changing", "_watching", "_spawning"):
            handlers = getattr(getattr(registry, kind), "_handlers")  # noqa: B009 (private: say so loudly)
            for index, handler in enumerate(handlers):
                if getattr(handler.fn, "_imagesync_counted", False):
                    continue
                label = str(handler.id).rpartition("<locals>.")[2]  # register.<locals>.isj_created -> isj_created
                handlers[index] = dataclasses.replace(handler, fn=self._counting(handler.fn, label))

    def _counting(self, fn: Callable[..., Any], handler_id: str) -> Callable[..., Any]:
        errors = self.reconcile_errors.labels(handler_id)
        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)  # kopf unwraps __wrapped__ to tell sync from async handlers
            async def counted_async(*args: Any, **kwargs: Any) -> Any:
                try:
                    return await fn(*args, **kwargs)
                except Exception:
                    errors.inc()
                    raise
            counted: Callable[..., Any] = counted_async
        else:
            @functools.wraps(fn)
            def counted_sync(*args: Any, **kwargs: Any) -> Any:
                try:
                    return fn(*args, **kwargs)
                except Exception:
                    errors.inc()
                    raise
            counted = counted_sync
        counted._imagesync_counted = True  # type: ignore[attr-defined]
        return counted

    def count_api_errors(self, api_client: Any) -> None:
        """Count the failed requests of a kubernetes ApiClient (every call goes through its call_api)."""
        call_api = api_client.call_api

        def counted(*args: Any, **kwargs: Any) -> Any:
            try:
                response = call_api(*args, **kwargs)
            except Exception as exc:
                self.api_errors.labels(str(getattr(exc, "status", 0) or 0)).inc()
                raise
            status = getattr(response, "status", 200)
            if isinstance(status, int) and status >= 400:
                self.api_errors.labels(str(status)).inc()
            return response
        api_client.call_api = counted

    # -- serving ------------------------------------------------------------------------------------

    def serve(self, address: str, port: int) -> MetricsServer:
        """Serve /metrics (any path, in fact) on ``address:port`` from a daemon thread: scrapes are
        answered even while the event loop is busy."""
        server, thread = start_http_server(port, address, registry=self.registry)
        return MetricsServer(server, thread)

    def series(self) -> Iterable[str]:
        """The metric names (for docs and tests)."""
        return sorted(m.name for m in self.registry.collect())


@dataclass
class MetricsServer:
    server: Any
    thread: threading.Thread
    port: int = field(init=False)

    def __post_init__(self) -> None:
        self.port = int(self.server.server_port)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


__all__ = ["JobSeries", "Metrics", "MetricsServer", "Observation", "Seen", "fold", "job_families", "phase_values"]
