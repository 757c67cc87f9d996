"""The operator at scale (issue 13 point 5): one namespace with 1000 ImageSyncJobs, some of them running.

Given the KUBECONFIG of a running cluster (tests/e2e/local-cluster.sh's control plane is enough:
``LOCAL_CLUSTER_NODE=0``), this script

1. creates a namespace with crds/ and the operator's RBAC through tests/e2e/test_real_cluster.py's
   ``namespace`` fixture (examples/kustomize/cluster-wide/, ServiceAccounts and bindings in the namespace,
   ClusterRoles with a per-run suffix);
2. starts ``imagesync operator`` as a separate process (``python -m imagesync.cli.main operator``), namespaced
   to that namespace, authenticated with its ServiceAccount's token (a TokenRequest; its RBAC applies), so
   that its RSS and CPU can be read from /proc/PID;
3. ``kubectl apply``s ``--jobs`` ImageSyncJobs in one file: ``--running`` of them (spread through the file)
   start a run, the others are suspended. Measured: how long after ``kubectl apply`` ends every one has a
   status (settle), and for the running ones, the time from the ImageSyncJob's creation to its Job's
   (both as a watch from this process sees them: p50, p95, max);
4. plays the workers of those runs instead of running them (nothing is copied, no registry is needed): the
   Job controller creates each Job's Pod; the script sets the Pod Running through pods/status, as a kubelet
   does, merge-patches a worker report naming that Pod into the run's report ConfigMap, as a worker does
   (worker/report.py's format), twice, then sets the Pod Succeeded, so the Job controller completes the Job.
   Measured: the lag from each report patch to the ImageSyncJob's status showing its count (progress lag),
   and from the Pod's success to the ImageSyncJob's Succeeded phase;
5. un-suspends ``--running`` other ImageSyncJobs with one patch each (patch to Job: p50, p95), sets their
   Pods Running and leaves those runs active, so the idle phase has that many running ImageSyncJobs;
6. waits until the operator is quiet, then measures over ``--idle-seconds``: CPU seconds per minute, RSS
   (VmRSS, VmHWM), and the operator's API requests per minute by verb and resource, from the API server's
   audit log (``--audit-log``, default: audit.log beside the kubeconfig, as local-cluster.sh writes it; it
   logs every request a ServiceAccount makes);
7. stops the operator (SIGTERM), starts it again, and measures the resume burst (its duration, CPU and
   requests) and RSS after it, at once and after another idle period.

Figures go to a table on stdout and, with ``--json FILE``, to a file. ``--operator-env NAME=VALUE`` sets
environment variables of the operator process (repeatable) to compare settings; docs/operator-scale.md has
the figures and the settings. The namespace and the ClusterRoles are removed at the end. Run from the
repository root:

    kubeconfig=$(LOCAL_CLUSTER_NODE=0 bash tests/e2e/local-cluster.sh start)
    .venv/bin/python bench/operator_scale.py --kubeconfig "$kubeconfig" --json /tmp/scale.json
    bash tests/e2e/local-cluster.sh stop
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import kubernetes
import yaml

from imagesync.controller.render import LABEL_JOB, report_name
from imagesync.worker.report import bounded_report

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
sys.path.insert(0, str(ROOT / "tests"))

# The e2e suite's cluster set-up: the same CRDs, the same RBAC, the same operator token.
from test_real_cluster import namespace as e2e_namespace  # noqa: E402
from test_real_cluster import operator_token  # noqa: E402

GROUP, VERSION, PLURAL = "imagesync.dev", "v1alpha1", "imagesyncjobs"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
QUIET_WINDOW = 5.0  # seconds of CPU use below QUIET_SHARE that count as quiet
QUIET_SHARE = 0.02


# -- the operator process -----------------------------------------------------------------------------


@dataclass
class ProcSample:
    rss_kib: int
    hwm_kib: int
    cpu_seconds: float


def proc_sample(pid: int) -> ProcSample:
    """VmRSS, VmHWM and user+system CPU seconds of a live process, from /proc."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    stat = Path(f"/proc/{pid}/stat").read_text()
    ticks = stat[stat.rindex(")") + 2:].split()
    # After the command's closing parenthesis: state is field 3, utime 14 and stime 15 (proc(5)).
    cpu = (int(ticks[11]) + int(ticks[12])) / CLOCK_TICKS
    return ProcSample(int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0]), cpu)


class OperatorProcess:
    """``imagesync operator`` in a process of its own, watching one namespace, as its ServiceAccount."""

    def __init__(self, kubeconfig: Path, namespace: str, env: dict[str, str], log_path: Path) -> None:
        self.kubeconfig, self.namespace, self.env, self.log_path = kubeconfig, namespace, env, log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.started = 0.0

    def start(self) -> None:
        env = {**os.environ, **self.env}
        env.pop("KUBERNETES_SERVICE_HOST", None)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "imagesync.cli.main", "operator", "--kubeconfig", str(self.kubeconfig),
             "--namespace", self.namespace, "--worker-image", "imagesync:scale", "--metrics-port", "0",
             "--health-port", "0", "--no-leader-elect"], env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.started = time.monotonic()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def sample(self) -> ProcSample:
        assert self.process is not None
        if self.process.poll() is not None:
            raise SystemExit(f"operator_scale: the operator exited ({self.process.returncode}); see {self.log_path}")
        return proc_sample(self.pid)

    def stop(self, timeout: float = 60) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def wait_quiet(self, timeout: float = 600) -> float:
        """Wait until the process used less than QUIET_SHARE of a CPU over QUIET_WINDOW; returns the
        moment (monotonic) its busy period ended: the start of that quiet window."""
        samples: list[tuple[float, float]] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            samples.append((time.monotonic(), self.sample().cpu_seconds))
            window = [s for s in samples if s[0] >= samples[-1][0] - QUIET_WINDOW]
            if samples[-1][0] - window[0][0] >= QUIET_WINDOW - 0.5 and \
                    window[-1][1] - window[0][1] <= QUIET_SHARE * QUIET_WINDOW:
                return window[0][0]
            time.sleep(0.5)
        raise SystemExit(f"operator_scale: the operator did not quiet down in {timeout:.0f} s")


def service_account_kubeconfig(api: Any, namespace: str, path: Path) -> None:
    """A kubeconfig with the operator ServiceAccount's token (RBAC as deploy/ grants it)."""
    base = api.configuration
    config = {"apiVersion": "v1", "kind": "Config", "current-context": "operator",
              "clusters": [{"name": "scale", "cluster": {"server": base.host,
                                                         "certificate-authority": base.ssl_ca_cert}}],
              "users": [{"name": "operator", "user": {"token": operator_token(api, namespace)}}],
              "contexts": [{"name": "operator", "context": {"cluster": "scale", "user": "operator"}}]}
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)


# -- the namespace ------------------------------------------------------------------------------------


@contextlib.contextmanager
def test_namespace(api: Any) -> Iterator[str]:
    """A namespace with the CRDs and the operator's RBAC: the e2e suite's ``namespace`` fixture itself, driven
    by hand (the same objects, and its clean-up: the namespace, and the ClusterRoles it made)."""
    steps = e2e_namespace.__wrapped__(api)
    namespace: str = next(steps)
    try:
        yield namespace
    finally:
        remove_finalizers(api, namespace)
        next(steps, None)


def remove_finalizers(api: Any, namespace: str) -> None:
    """The operator is stopped by now: without its finalizers gone, the namespace would never finish
    terminating."""
    custom = kubernetes.client.CustomObjectsApi(api)
    for plural in (PLURAL, "registrycredentials"):
        # The client's stubs say object; a custom object list is a JSON object.
        listed = cast(dict[str, Any], custom.list_namespaced_custom_object(GROUP, VERSION, namespace, plural))
        for item in listed["items"]:
            if item["metadata"].get("finalizers"):
                with contextlib.suppress(kubernetes.client.ApiException):
                    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, plural, item["metadata"]["name"],
                                                          {"metadata": {"finalizers": None}})


SCHEDULE = "0 3 * * *"  # daily: the schedule timer runs on such an ImageSyncJob, and never starts a run here


def isj_document(name: str, suspend: bool, scheduled: bool = False) -> dict[str, Any]:
    spec: dict[str, Any] = {"images": {f"r.example.com/scale/{name}:1": f"t.example.com/mirror/{name}"},
                            "suspend": suspend}
    if scheduled:
        spec["schedule"] = SCHEDULE
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ImageSyncJob", "metadata": {"name": name}, "spec": spec}


# -- what a watch from here sees ------------------------------------------------------------------------


@dataclass
class Seen:
    """First moments (monotonic) things were seen through the watches, by ImageSyncJob name."""

    isj: dict[str, float] = field(default_factory=dict)
    phase: dict[str, str] = field(default_factory=dict)  # the latest status.phase
    phase_at: dict[tuple[str, str], float] = field(default_factory=dict)
    synced_at: dict[tuple[str, int], float] = field(default_factory=dict)  # status.progress.imagesSynced
    job: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def isj_event(self, obj: dict[str, Any], now: float) -> None:
        name, status = obj["metadata"]["name"], obj.get("status") or {}
        with self.lock:
            self.isj.setdefault(name, now)
            if status.get("phase"):
                self.phase[name] = status["phase"]
                self.phase_at.setdefault((name, status["phase"]), now)
            synced = (status.get("progress") or {}).get("imagesSynced")
            if isinstance(synced, int):
                self.synced_at.setdefault((name, synced), now)

    def job_event(self, obj: Any, now: float) -> None:
        owner = (obj.metadata.labels or {}).get(LABEL_JOB)
        if owner:
            with self.lock:
                self.job.setdefault(owner, now)


def watch_forever(stop: threading.Event, lister: Callable[..., Any], handle: Callable[[Any, float], None],
                  **kwargs: Any) -> None:
    """List, then watch from the list's resourceVersion; on any end or error, again (first moments only
    are kept, so a re-list's repeats change nothing)."""
    while not stop.is_set():
        try:
            listed = lister(**kwargs)
            items = listed["items"] if isinstance(listed, dict) else listed.items
            version = listed["metadata"]["resourceVersion"] if isinstance(listed, dict) \
                else listed.metadata.resource_version
            for item in items:
                handle(item, time.monotonic())
            # The kubernetes client has no type annotations.
            watch = kubernetes.watch.Watch()  # type: ignore[no-untyped-call]
            for event in watch.stream(lister, resource_version=version,  # type: ignore[no-untyped-call]
                                      timeout_seconds=30, **kwargs):
                handle(event["object"], time.monotonic())
                if stop.is_set():
                    watch.stop()  # type: ignore[no-untyped-call]
        except Exception:  # a dropped watch or a 410: list again
            time.sleep(0.2)


def wait_until(what: str, check: Callable[[], bool], timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return time.monotonic()
        time.sleep(0.05)
    raise SystemExit(f"operator_scale: timed out waiting for {what}")


# -- the API server's audit log ----------------------------------------------------------------------------


class AuditLog:
    """The operator ServiceAccount's requests in the API server's audit log, from a marked offset on."""

    def __init__(self, path: Path, username: str) -> None:
        self.path, self.username = path, username
        self.offset = 0

    def mark(self) -> None:
        self.offset = self.path.stat().st_size if self.path.exists() else 0

    def requests(self) -> dict[str, Any]:
        """Requests (one per audit ID) since the mark: in all, by verb and resource, by user agent."""
        if not self.path.exists():
            return {}
        seen: dict[str, dict[str, Any]] = {}
        with self.path.open("rb") as log:
            log.seek(self.offset)
            needle = self.username.encode()
            for line in log:
                if needle not in line:
                    continue
                event = json.loads(line)
                if event["user"]["username"] == self.username:
                    seen.setdefault(event["auditID"], event)
        by_call: Counter[str] = Counter()
        agents: Counter[str] = Counter()
        for event in seen.values():
            ref = event.get("objectRef") or {}
            resource = ref.get("resource", event.get("requestURI", "?").split("?")[0])
            by_call[f"{event['verb']} {resource}" + (f"/{ref['subresource']}" if ref.get("subresource") else "")] += 1
            agents[str(event.get("userAgent", "")).split(" ")[0]] += 1
        return {"total": len(seen), "by_call": dict(by_call.most_common()), "by_agent": dict(agents.most_common())}


# -- the measurement ----------------------------------------------------------------------------------------


def quantiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"n": len(values), "p50": round(statistics.median(ordered), 3), "p95": round(p95, 3),
            "max": round(ordered[-1], 3)}


def mib(kib: int) -> float:
    return round(kib / 1024, 1)


class Bench:
    def __init__(self, args: argparse.Namespace, api: Any, namespace: str, workdir: Path) -> None:
        self.args, self.api, self.namespace, self.workdir = args, api, namespace, workdir
        self.core = kubernetes.client.CoreV1Api(api)
        self.batch = kubernetes.client.BatchV1Api(api)
        self.custom = kubernetes.client.CustomObjectsApi(api)
        self.seen = Seen()
        self.results: dict[str, Any] = {"jobs": args.jobs, "running": args.running, "scheduled": args.scheduled,
                                        "operator_env": dict(args.operator_env)}
        self.operator: OperatorProcess | None = None
        self.audit = AuditLog(args.audit_log, f"system:serviceaccount:{namespace}:imagesync-operator")

    def log(self, message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def watches(self) -> Iterator[None]:
        stop = threading.Event()
        threads = [
            threading.Thread(target=watch_forever, daemon=True, args=(
                stop, self.custom.list_namespaced_custom_object, self.seen.isj_event),
                kwargs={"group": GROUP, "version": VERSION, "namespace": self.namespace, "plural": PLURAL}),
            threading.Thread(target=watch_forever, daemon=True, args=(
                stop, self.batch.list_namespaced_job, self.seen.job_event), kwargs={"namespace": self.namespace}),
        ]
        for thread in threads:
            thread.start()
        try:
            yield
        finally:
            stop.set()

    def run(self) -> dict[str, Any]:
        args = self.args
        kubeconfig = self.workdir / "operator.kubeconfig"
        service_account_kubeconfig(self.api, self.namespace, kubeconfig)
        self.operator = OperatorProcess(kubeconfig, self.namespace, dict(args.operator_env),
                                        self.workdir / "operator.log")
        with self.watches():
            self.operator.start()
            self.create_probe()
            self.results["start"] = self.memory()
            self.create_many()
            self.play_runs()
            self.unsuspend()
            self.results["idle"] = self.idle(args.idle_seconds)
            self.restart()
            self.results["idle_after_restart"] = self.idle(args.idle_seconds_after_restart)
        self.operator.stop()
        return self.results

    def memory(self) -> dict[str, float]:
        assert self.operator is not None
        sample = self.operator.sample()
        return {"rss_mib": mib(sample.rss_kib), "hwm_mib": mib(sample.hwm_kib), "cpu_s": round(sample.cpu_seconds, 2)}

    def create_probe(self) -> None:
        """One suspended ImageSyncJob: its status says the operator watches and handles."""
        self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL,
                                                    isj_document("probe", True))
        wait_until("the operator to handle a first ImageSyncJob", lambda: self.seen.phase.get("probe") == "Suspended",
                   120)
        self.log("operator ready")

    def running_names(self) -> list[str]:
        step = self.args.jobs // self.args.running
        return [f"isj-{i:04d}" for i in range(step - 1, self.args.jobs, step)][:self.args.running]

    def create_many(self) -> None:
        args = self.args
        running = set(self.running_names())
        names = [f"isj-{i:04d}" for i in range(args.jobs)]
        scheduled = set([n for n in names if n not in running][::-1][:args.scheduled])
        manifest = self.workdir / "isjs.yaml"
        manifest.write_text(yaml.safe_dump_all(isj_document(n, n not in running, n in scheduled) for n in names))
        self.log(f"kubectl apply of {args.jobs} ImageSyncJobs ({len(running)} running, {len(scheduled)} suspended "
                 "with a schedule)")
        started = time.monotonic()
        subprocess.run(["kubectl", "--kubeconfig", str(args.kubeconfig), "-n", self.namespace, "apply", "-f",
                        str(manifest)], check=True, stdout=subprocess.DEVNULL)
        applied = time.monotonic()
        settled = wait_until("every ImageSyncJob to have a status", lambda: all(
            n in self.seen.phase for n in names), 600)
        jobs_done = wait_until("a Job for every running ImageSyncJob", lambda: all(
            n in self.seen.job for n in running), 600)
        with self.seen.lock:
            to_job = [self.seen.job[n] - self.seen.isj[n] for n in running]
            first_status = [self.seen.phase_at[(n, self.seen.phase[n])] - self.seen.isj[n] for n in names
                            if (n, self.seen.phase[n]) in self.seen.phase_at]
        assert self.operator is not None
        quiet = self.operator.wait_quiet()
        self.results["create"] = {
            "apply_s": round(applied - started, 1), "settle_after_apply_s": round(settled - applied, 2),
            "jobs_after_apply_s": round(jobs_done - applied, 2), "quiet_after_apply_s": round(quiet - applied, 1),
            "apply_to_job_s": quantiles(to_job), "apply_to_status_s": quantiles(first_status),
            **self.memory()}
        self.log(f"created: {self.results['create']}")

    def pod_of(self, isj: str, timeout: float = 120) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pods = self.core.list_namespaced_pod(self.namespace, label_selector=f"{LABEL_JOB}={isj}").items
            if pods:
                return pods[0]
            time.sleep(0.2)
        raise SystemExit(f"operator_scale: the Job controller created no Pod for {isj}")

    def set_pod_phase(self, pod: Any, phase: str) -> None:
        """What a kubelet writes: Running, or Succeeded with the container terminated."""
        container = pod.spec.containers[0]
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        state = {"running": {"startedAt": now}} if phase == "Running" else {
            "terminated": {"exitCode": 0, "reason": "Completed", "startedAt": now, "finishedAt": now}}
        self.core.patch_namespaced_pod_status(pod.metadata.name, self.namespace, {"status": {
            "phase": phase, "containerStatuses": [{"name": container.name, "image": container.image, "imageID": "",
                                                   "ready": phase == "Running", "restartCount": 0, "state": state}]}})

    def report(self, isj: str, pod: Any, synced: int, total: int) -> float:
        """A worker's progress report (worker/report.py's format) into the run's report ConfigMap."""
        progress = {"imagesTotal": total, "imagesSynced": synced, "imagesSkipped": 0, "imagesFailed": 0,
                    "blobsCopied": 2 * synced, "bytesCopied": 1024 * synced, "bytesPerSecond": 1024.0,
                    "done": synced == total, "shard": 0, "pod": {"name": pod.metadata.name, "uid": pod.metadata.uid}}
        self.core.patch_namespaced_config_map(report_name(isj, 1), self.namespace,
                                              {"data": {"shard-0": bounded_report(progress)}})
        return time.monotonic()

    def progress_lags(self, names: list[str], pods: dict[str, Any], synced: int, total: int) -> list[float]:
        sent = {name: self.report(name, pods[name], synced, total) for name in names}
        wait_until(f"imagesSynced={synced} in every status", lambda: all(
            (n, synced) in self.seen.synced_at for n in names), 300)
        with self.seen.lock:
            return [self.seen.synced_at[(n, synced)] - sent[n] for n in names]

    def play_runs(self) -> None:
        """The workers of the runs the apply started: Running, two reports, Succeeded."""
        names = self.running_names()
        pods = {name: self.pod_of(name) for name in names}
        self.log(f"playing {len(names)} workers")
        for name in names:
            self.set_pod_phase(pods[name], "Running")
        lags = self.progress_lags(names, pods, 1, 2) + self.progress_lags(names, pods, 2, 2)
        succeeded = {}
        for name in names:
            self.set_pod_phase(pods[name], "Succeeded")
            succeeded[name] = time.monotonic()
        wait_until("every played run to succeed", lambda: all(
            (n, "Succeeded") in self.seen.phase_at for n in names), 300)
        with self.seen.lock:
            finish = [self.seen.phase_at[(n, "Succeeded")] - succeeded[n] for n in names]
        self.results["runs"] = {"progress_lag_s": quantiles(lags), "pod_succeeded_to_status_s": quantiles(finish),
                                **self.memory()}
        self.log(f"runs: {self.results['runs']}")

    def unsuspend(self) -> None:
        """``--running`` suspended ImageSyncJobs un-suspended (one patch each); their runs stay active."""
        taken = set(self.running_names())
        names = [n for n in (f"isj-{i:04d}" for i in range(self.args.jobs)) if n not in taken][:self.args.running]
        patched = {}
        for name in names:
            self.custom.patch_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name,
                                                       {"spec": {"suspend": False}})
            patched[name] = time.monotonic()
        wait_until("a Job for every un-suspended ImageSyncJob", lambda: all(n in self.seen.job for n in names), 300)
        with self.seen.lock:
            to_job = [self.seen.job[n] - patched[n] for n in names]
        for name in names:
            pod = self.pod_of(name)
            self.set_pod_phase(pod, "Running")
            self.report(name, pod, 0, 1)
        wait_until("the un-suspended runs to be Running", lambda: all(
            self.seen.phase.get(n) == "Running" for n in names), 300)
        self.results["unsuspend"] = {"patch_to_job_s": quantiles(to_job), **self.memory()}
        self.log(f"unsuspended: {self.results['unsuspend']}")

    def idle(self, seconds: float) -> dict[str, Any]:
        """CPU, memory and API requests over ``seconds`` once the operator is quiet."""
        assert self.operator is not None
        if seconds <= 0:
            return {}
        self.operator.wait_quiet()
        self.log(f"idle for {seconds:.0f} s")
        self.audit.mark()
        before, started = self.operator.sample(), time.monotonic()
        time.sleep(seconds)
        after, elapsed = self.operator.sample(), time.monotonic() - started
        time.sleep(1.5)  # the audit log's writes of the last requests
        requests = self.audit.requests()
        per_minute = 60 / elapsed
        result = {"seconds": round(elapsed), "cpu_s_per_min": round((after.cpu_seconds - before.cpu_seconds)
                                                                     * per_minute, 3),
                  "rss_mib": mib(after.rss_kib), "hwm_mib": mib(after.hwm_kib),
                  "requests_per_min": round(requests.get("total", 0) * per_minute, 1),
                  "requests": requests}
        self.log(f"idle: {result}")
        return result

    def restart(self) -> None:
        """SIGTERM, start again: the resume burst's duration, CPU and requests, and RSS after it."""
        assert self.operator is not None
        self.operator.stop()
        self.log("operator restarted")
        self.audit.mark()
        self.operator.start()
        time.sleep(1.0)
        quiet = self.operator.wait_quiet()
        burst = quiet - self.operator.started
        sample = self.operator.sample()
        time.sleep(1.5)
        requests = self.audit.requests()
        self.results["restart"] = {"burst_s": round(burst, 1), "burst_cpu_s": round(sample.cpu_seconds, 2),
                                   "rss_mib": mib(sample.rss_kib), "hwm_mib": mib(sample.hwm_kib),
                                   "requests": requests.get("total", 0), "by_call": requests.get("by_call", {})}
        self.log(f"restart: {self.results['restart']}")


# -- output ---------------------------------------------------------------------------------------------------


GOALS = {"rss": 150.0, "apply_to_job_p95": 5.0, "progress_lag_p95": 5.0}


def table(results: dict[str, Any]) -> str:
    def get(*path: str) -> Any:
        value: Any = results
        for key in path:
            value = (value or {}).get(key) if isinstance(value, dict) else None
        return "-" if value is None else value

    def quantile_pair(section: str, key: str) -> str:
        return f"{get(section, key, 'p50')} / {get(section, key, 'p95')}"

    rows = [
        ("ImageSyncJobs (running, scheduled)",
         f"{results['jobs']} ({results['running']}, {results.get('scheduled', 0)})", ""),
        ("operator env", " ".join(f"{k}={v}" for k, v in results["operator_env"].items()) or "(defaults)", ""),
        ("kubectl apply took, s", get("create", "apply_s"), ""),
        ("every status after apply, s", get("create", "settle_after_apply_s"), ""),
        ("operator quiet after apply, s", get("create", "quiet_after_apply_s"), ""),
        ("apply to Job p50 / p95, s", quantile_pair("create", "apply_to_job_s"),
         f"p95 <= {GOALS['apply_to_job_p95']}"),
        ("patch to Job p50 / p95, s", quantile_pair("unsuspend", "patch_to_job_s"),
         f"p95 <= {GOALS['apply_to_job_p95']}"),
        ("progress lag p50 / p95, s", quantile_pair("runs", "progress_lag_s"), f"p95 <= {GOALS['progress_lag_p95']}"),
        ("pod Succeeded to status p50 / p95, s", quantile_pair("runs", "pod_succeeded_to_status_s"), ""),
        ("RSS / HWM after settle, MiB", f"{get('idle', 'rss_mib')} / {get('idle', 'hwm_mib')}",
         f"RSS <= {GOALS['rss']:.0f}"),
        ("idle CPU, s per minute", get("idle", "cpu_s_per_min"), ""),
        ("idle API requests per minute", get("idle", "requests_per_min"), "no periodic re-list"),
        ("restart: resume burst s (CPU s)", f"{get('restart', 'burst_s')} ({get('restart', 'burst_cpu_s')})", ""),
        ("restart: requests in the burst", get("restart", "requests"), ""),
        ("restart: RSS / HWM after burst, MiB", f"{get('restart', 'rss_mib')} / {get('restart', 'hwm_mib')}",
         f"RSS <= {GOALS['rss']:.0f}"),
        ("after restart, idle: RSS MiB", get("idle_after_restart", "rss_mib"), f"<= {GOALS['rss']:.0f}"),
        ("after restart, idle: CPU s/min", get("idle_after_restart", "cpu_s_per_min"), ""),
        ("after restart, idle: requests/min", get("idle_after_restart", "requests_per_min"), ""),
    ]
    width = max(len(r[0]) for r in rows)
    value_width = max(len(str(r[1])) for r in rows)
    lines = [f"{'':{width}}  {'measured':{value_width}}  goal"]
    lines += [f"{name:{width}}  {value!s:{value_width}}  {goal}".rstrip() for name, value, goal in rows]
    return "\n".join(lines)


def env_pair(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=VALUE")
    return name, value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kubeconfig", type=Path, default=os.environ.get("KUBECONFIG"),
                        help="a cluster admin's kubeconfig (default: $KUBECONFIG)")
    parser.add_argument("--audit-log", type=Path, help="the API server's audit log (default: audit.log beside "
                        "the kubeconfig, where tests/e2e/local-cluster.sh writes it)")
    parser.add_argument("--jobs", type=int, default=1000, help="ImageSyncJobs in the namespace (default 1000)")
    parser.add_argument("--running", type=int, default=50, help="of those, runs played through, and runs left "
                        "active for the idle phase (default 50 each)")
    parser.add_argument("--scheduled", type=int, default=0, help="of the suspended ones, how many carry a daily "
                        "schedule (the operator's schedule timer runs on each; default 0)")
    parser.add_argument("--idle-seconds", type=float, default=120, help="idle measurement (default 120)")
    parser.add_argument("--idle-seconds-after-restart", type=float, default=60,
                        help="idle measurement after the restart (default 60; 0: none)")
    parser.add_argument("--operator-env", type=env_pair, action="append", default=[], metavar="NAME=VALUE",
                        help="an environment variable of the operator process (repeatable)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the results here")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if not args.kubeconfig:
        print("operator_scale: error: no kubeconfig (--kubeconfig or $KUBECONFIG)", file=sys.stderr)
        return 2
    if args.running < 1 or args.jobs < 2 * args.running + args.scheduled:
        print("operator_scale: error: --jobs must be at least twice --running plus --scheduled, and --running at "
              "least 1", file=sys.stderr)
        return 2
    args.audit_log = args.audit_log or args.kubeconfig.parent / "audit.log"
    os.environ["KUBECONFIG"] = str(args.kubeconfig)  # the e2e helpers' kubectl
    configuration = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(config_file=str(args.kubeconfig),  # type: ignore[no-untyped-call]
                                       client_configuration=configuration)
    configuration.connection_pool_maxsize = 8
    api = kubernetes.client.ApiClient(configuration)
    with test_namespace(api) as namespace, tempfile.TemporaryDirectory(prefix="operator-scale-") as workdir:
        bench = Bench(args, api, namespace, Path(workdir))
        try:
            results = bench.run()
        finally:
            if bench.operator is not None:
                bench.operator.stop()
            log = Path(workdir) / "operator.log"
            if log.exists():
                problems = [line for line in log.read_text(errors="replace").splitlines()
                            if "ERROR" in line or "Traceback" in line]
                if problems:
                    print(f"operator log: {len(problems)} error lines, the first: {problems[0][:300]}",
                          file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
