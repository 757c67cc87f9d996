"""kopf handlers: one small handler per concern; decisions come from the pure modules beside this one.

- ImageSyncJob created/changed/resumed -> validate, resolve credentials, start a run (Secret, report
  ConfigMap with its Role and RoleBinding, Job), or
  queue the change when a run is active, or stay Suspended.
- Worker Pod events (phases) and report ConfigMap events (the shards' reports) -> fold them into the
  status, live.
- Job finished -> final phase, counts, failed images, events; start the queued run if any.
- Timer on scheduled ImageSyncJobs -> start a run when the cron schedule is due (never two at once).
- RegistryCredential created/changed, and periodically -> Ready condition.

Handlers are synchronous (kopf runs them in threads) because they use the synchronous Kubernetes
client; they are registered into a registry the caller provides, so tests get a fresh one each.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf

from imagesync.controller import credentials as creds
from imagesync.controller.kube import CREDS_PLURAL, GROUP, JOBS_PLURAL, VERSION, Kube, StatusConflict
from imagesync.controller.metrics import Metrics
from imagesync.controller.policy import REASON as WORKER_NOT_ALLOWED
from imagesync.controller.policy import refusal_message, worker_refusals
from imagesync.controller.render import (
    LABEL_JOB,
    LABEL_RUN,
    dropped_job_fields,
    render_config_secret,
    render_job,
    render_report_configmap,
    render_report_role,
    render_report_rolebinding,
    report_name,
    run_name,
    runs_to_prune,
    worker_service_account,
)
from imagesync.controller.reports import (
    Once,
    ReportError,
    clip,
    controlled_by,
    parse_report,
    run_registries,
    shard_of_key,
)
from imagesync.controller.schedule import fires, is_due, next_fire
from imagesync.controller.settings import OperatorSettings
from imagesync.controller.spec import DEFAULT_HISTORY_LIMIT, JobSpec, SpecError, parse_job_spec
from imagesync.controller.status import (
    final_phase,
    find_condition,
    fold_progress,
    login_verdict,
    make_condition,
    plan_message,
    pod_problem,
    secret_verdict,
    with_kstatus,
)

log = logging.getLogger(__name__)
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
ZERO_PROGRESS = fold_progress({}, 1)["progress"]


def iso(moment: dt.datetime) -> str:
    """RFC 3339 in UTC with a Z, to the second: the form Kubernetes writes its own timestamps in."""
    return moment.astimezone(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def now_iso() -> str:
    return iso(dt.datetime.now(dt.UTC))


def parse_time(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


@dataclass
class Context:
    kube: Kube
    settings: OperatorSettings
    schedule_interval: float = 30.0
    credential_check_interval: float = 300.0
    metrics: Metrics = field(default_factory=Metrics)  # observe() after every ImageSyncJob status patch
    _locks: dict[tuple[str, str, str], threading.Lock] = field(default_factory=dict)
    _locks_guard: threading.Lock = field(default_factory=threading.Lock)
    warned: Once = field(default_factory=Once)  # foreign pods, ConfigMaps and bad reports are logged once each

    def status_lock(self, plural: str, namespace: str, name: str) -> threading.Lock:
        """Pod, ConfigMap and Job events of one ImageSyncJob read-modify-write its status one at a time: a late
        progress fold must not overwrite the final phase that the Job's end just wrote. The same for a
        RegistryCredential's Secret checks and the logins its runs report."""
        with self._locks_guard:
            return self._locks.setdefault((plural, namespace, name), threading.Lock())


def post_event(obj: Mapping[str, Any], type_: str, *, reason: str, message: str) -> None:
    """A Kubernetes Event on ``obj`` (kopf posts it; messages never carry credentials)."""
    kopf.event(obj, type=type_, reason=reason, message=message)  # type: ignore[arg-type]  # any mapping works


# -- decisions with I/O around them ---------------------------------------------------------------


class RunBlocked(Exception):
    """A run cannot start: bad spec or credentials. Carries the condition to show."""

    def __init__(self, condition: str, reason: str, message: str, *, run: int | None = None) -> None:
        super().__init__(message)
        self.condition, self.reason, self.message = condition, reason, message
        self.run = run  # set when the run's number was used up (its objects were created, then removed)


def run_active(status: Mapping[str, Any]) -> bool:
    return bool(status.get("jobName")) and not status.get("completionTime")


def resolve_credentials(ctx: Context, namespace: str, spec: JobSpec) -> creds.AuthDocument:
    selected, missing = creds.select_credentials(spec.credentials, ctx.kube.list_regcreds(namespace),
                                                  spec.repositories)
    if missing:
        raise RunBlocked("CredentialsReady", "CredentialMissing",
                         f"RegistryCredential(s) not found in {namespace}: {', '.join(missing)}")
    resolved = []
    for regcred in selected:
        try:
            resolved.append(resolve_from_cluster(ctx, namespace, regcred))
        except creds.CredentialError as exc:
            name = regcred["metadata"]["name"]
            raise RunBlocked("CredentialsReady", exc.reason, f"RegistryCredential {name!r}: {exc.message}") from exc
    return creds.auth_document(resolved)


def signature_keys(ctx: Context, namespace: str, spec: JobSpec) -> list[str]:
    """spec.signatureKeys' public keys: the Secrets are read here, checked in credentials.py."""
    secrets = {ref.name: ctx.kube.get_secret(namespace, ref.name) for ref in spec.signature_keys}
    try:
        return creds.signature_key_pems(spec.signature_keys, secrets)
    except creds.CredentialError as exc:
        raise RunBlocked("CredentialsReady", exc.reason, exc.message) from exc


def resolve_from_cluster(ctx: Context, namespace: str, regcred: Mapping[str, Any]) -> creds.ResolvedCredential:
    """Fetch what a RegistryCredential refers to (its Secret, its CA source) and resolve it."""
    spec = regcred.get("spec") or {}
    secret_name = (spec.get("secretRef") or {}).get("name")
    secret = ctx.kube.get_secret(namespace, secret_name) if secret_name else None
    bundle = spec.get("caBundle") or {}
    ca_source = None
    if bundle.get("secretKeyRef"):
        ca_source = ctx.kube.get_secret(namespace, bundle["secretKeyRef"]["name"])
    elif bundle.get("configMapKeyRef"):
        ca_source = ctx.kube.get_configmap(namespace, bundle["configMapKeyRef"]["name"])
    return creds.resolve_credential(regcred, secret, ca_source)


def admitted_spec(ctx: Context, isj: Mapping[str, Any]) -> JobSpec:
    """The parsed spec, when it is valid and its spec.worker choices are allowed by the operator's settings
    (controller/policy.py); else RunBlocked on Valid (InvalidSpec or WorkerNotAllowed): no Job is created."""
    try:
        spec = parse_job_spec(isj.get("spec"))
    except SpecError as exc:
        raise RunBlocked("Valid", "InvalidSpec", str(exc)) from exc
    refusals = worker_refusals(spec.worker, ctx.settings)
    if refusals:
        raise RunBlocked("Valid", WORKER_NOT_ALLOWED, refusal_message(refusals))
    return spec


def start_run(ctx: Context, isj: Mapping[str, Any], reason: str) -> dict[str, Any]:
    """Create the next run's Secret, report ConfigMap (with the Role and RoleBinding that let the run's workers
    patch it, and only it), and Job; return the status patch. Idempotent by deterministic names."""
    meta, status = isj["metadata"], isj.get("status") or {}
    spec = admitted_spec(ctx, isj)
    document = resolve_credentials(ctx, meta["namespace"], spec)
    keys = signature_keys(ctx, meta["namespace"], spec)
    run = int(status.get("run") or 0) + 1
    secret = render_config_secret(isj, run, spec, document.auth, document.ca_files, keys)
    job = render_job(isj, run, spec, ctx.settings)
    ctx.kube.create(secret)
    # Before the Job: a worker's first report must find its ConfigMap and its right to patch it.
    ctx.kube.create(render_report_configmap(isj, run))
    ctx.kube.create(render_report_role(isj, run))
    ctx.kube.create(render_report_rolebinding(isj, run, worker_service_account(spec, ctx.settings)))
    created = ctx.kube.create(job)
    problem = dropped_job_fields(job, created) if created is not None else None
    if problem is not None:
        delete_run(ctx, isj, run)
        raise RunBlocked("Valid", "IndexedJobsUnsupported", problem, run=run)
    generation = meta.get("generation", 1)
    conditions = make_condition(status.get("conditions"), "Valid", "True", "SpecValid", "spec is valid",
                                generation, now_iso())
    conditions = make_condition(conditions, "CredentialsReady", "True", "Resolved",
                                f"{len(document.auth)} registry credential(s) resolved", generation, now_iso())
    conditions = make_condition(conditions, "RunQueued", "False", "NothingQueued", "", generation, now_iso())
    conditions = make_condition(conditions, "WorkersReady", "Unknown", "RunStarting", "", generation, now_iso())
    conditions = make_condition(conditions, "Complete", "False", "Running", f"run {run} started ({reason})",
                                generation, now_iso())
    if created is not None:
        post_event(isj, "Normal", reason="RunStarted", message=f"run {run}: Job {job['metadata']['name']} ({reason})")
    return {
        "phase": "Pending", "run": run, "runGeneration": generation, "observedGeneration": generation,
        "jobName": job["metadata"]["name"], "secretName": secret["metadata"]["name"],
        "credentials": document.used,
        "startTime": now_iso(), "completionTime": None, "pendingGeneration": None, "plan": None, "prune": None,
        "progress": dict(ZERO_PROGRESS), "failedImages": [], "failedImagesTotal": 0, "skippedImages": [],
        "shards": [], "syncedSummary": "0/?", "progressSummary": "-", "conditions": conditions,
    }


def blocked_status(isj: Mapping[str, Any], exc: RunBlocked) -> dict[str, Any]:
    status = isj.get("status") or {}
    generation = isj["metadata"].get("generation", 1)
    conditions = make_condition(status.get("conditions"), exc.condition, "False", exc.reason, exc.message,
                                generation, now_iso())
    if exc.condition != "Valid":
        conditions = make_condition(conditions, "Valid", "True", "SpecValid", "spec is valid", generation,
                                    now_iso())
    post_event(isj, "Warning", reason=exc.reason, message=exc.message)
    patch: dict[str, Any] = {"phase": "Failed", "observedGeneration": generation, "conditions": conditions}
    if exc.run is not None:
        patch["run"] = exc.run  # the next attempt takes a fresh name: the removed objects may linger a while
    return patch


def settled(isj: Mapping[str, Any]) -> bool:
    """Whether an ImageSyncJob seen again after a restart needs nothing: its spec's run happened or is under way,
    or it is suspended and its status already says so for this generation. Pure, so the resume handler can ask
    it of kopf's copy first: a restart over a thousand settled ImageSyncJobs then reads and writes none."""
    meta, status = isj["metadata"], isj.get("status") or {}
    generation = meta.get("generation", 1)
    if status.get("runGeneration") == generation:
        return True
    return bool((isj.get("spec") or {}).get("suspend")) and not run_active(status) \
        and status.get("phase") == "Suspended" and status.get("observedGeneration") == generation


def schedule_due(isj: Mapping[str, Any], now: dt.datetime) -> dict[str, Any] | None:
    """The schedule timer's decision for an ImageSyncJob: None when nothing is to be done (suspended, a run
    under way, a schedule that never fires, not yet due with the next fire time shown), ``{"nextScheduleTime"}``
    when only that is missing, or ``{}`` when a run is due."""
    spec, status = isj.get("spec") or {}, isj.get("status") or {}
    cron = str(spec.get("schedule") or "")
    if not cron or spec.get("suspend") or run_active(status):
        return None  # never two runs at once: a due fire waits for the active run to end
    if not fires(cron, now):
        return None  # refused when created or changed (Valid=False): nothing to schedule
    last = parse_time(status.get("lastScheduleTime"))
    created = parse_time(isj["metadata"].get("creationTimestamp")) or now
    if not is_due(cron, last, created, now):
        if status.get("nextScheduleTime"):
            return None
        return {"nextScheduleTime": iso(next_fire(cron, last or created))}
    return {}


# Why a run may start for a spec that already had its run; any other reason (created, spec changed, resume) is
# about the spec itself, so a spec whose run happened needs nothing more.
RUN_AGAIN_REASONS = frozenset({"schedule", "queued spec change"})


def reconcile(ctx: Context, isj: Mapping[str, Any], reason: str) -> dict[str, Any]:
    """What to do with an ImageSyncJob whose spec is new, changed, or seen again after a restart, when its
    schedule fires, or when the run a spec change waited for has ended (``reason``)."""
    meta, status = isj["metadata"], isj.get("status") or {}
    generation = meta.get("generation", 1)
    if reason not in RUN_AGAIN_REASONS and settled(isj):
        # The run for this spec already happened (or runs), or it stays suspended. Besides a restart, kopf runs
        # a create or update handler again when its patch recording the handler's success was lost.
        return {}
    if run_active(status):
        changed = status.get("runGeneration") != generation
        workers = find_condition(status.get("conditions"), "WorkersReady")
        stuck = workers if workers is not None and workers.get("status") == "False" else None
        if changed and stuck is not None:
            # Its workers cannot start (a wrong image, say): queueing the fix behind it would wait forever.
            supersede_run(ctx, isj)
            post_event(isj, "Normal", reason="RunSuperseded",
                       message=f"run {status.get('run')} never started ({stuck.get('reason')}): "
                               f"starting the next run on the changed spec")
        elif changed and status.get("pendingGeneration") != generation:
            post_event(isj, "Normal", reason="RunQueued",
                      message=f"spec changed during run {status.get('run')}: the next run starts when it ends")
            return {"pendingGeneration": generation, "observedGeneration": generation, "conditions": make_condition(
                status.get("conditions"), "RunQueued", "True", "SpecChanged",
                f"generation {generation} waits for run {status.get('run')} to finish", generation, now_iso())}
        else:
            return {}
    try:
        spec = admitted_spec(ctx, isj)
        if spec.suspend:
            return {"phase": "Suspended", "observedGeneration": generation, "conditions": make_condition(
                status.get("conditions"), "Suspended", "True", "Suspended", "spec.suspend is true",
                generation, now_iso())}
        patch = start_run(ctx, isj, reason)
    except RunBlocked as exc:
        return blocked_status(isj, exc)
    patch["conditions"] = make_condition(patch["conditions"], "Suspended", "False", "Active", "", generation,
                                         now_iso())
    if spec.schedule:
        # The run a create or spec change starts counts as this period's scheduled run.
        patch["lastScheduleTime"] = now_iso()
        patch["nextScheduleTime"] = iso(next_fire(spec.schedule, dt.datetime.now(dt.UTC)))
    return patch


@dataclass
class RunShards:
    """What a run's shards say: the valid report and the latest pod's phase per completion index (a retried
    pod replaces its predecessor), and why any of the pods cannot start."""

    reports: dict[int, Any] = field(default_factory=dict)
    phases: dict[int, str] = field(default_factory=dict)
    problems: list[tuple[str, str]] = field(default_factory=list)


def run_job(ctx: Context, isj: Mapping[str, Any], job: Mapping[str, Any] | None = None) -> Mapping[str, Any] | None:
    """The active run's Job, when it is the one the operator created for this ImageSyncJob (named in
    status.jobName and controlled by the ImageSyncJob): a Job that merely carries the labels is not."""
    meta, status = isj["metadata"], isj.get("status") or {}
    name = status.get("jobName")
    if not name:
        return None
    if job is None or (job.get("metadata") or {}).get("name") != name:
        job = ctx.kube.get_job(meta["namespace"], str(name))
    if job is None or not controlled_by(job, "ImageSyncJob", meta.get("uid")):
        if job is not None and ctx.warned.first(("job", job["metadata"].get("uid"))):
            log.warning("Job %s/%s is not controlled by ImageSyncJob %s: its pods' reports are ignored",
                        meta["namespace"], name, meta["name"])
        return None
    return job


def foreign_pod(ctx: Context, isj: Mapping[str, Any], pod: Mapping[str, Any], job: Mapping[str, Any]) -> bool:
    """True (logged once per pod) when ``pod`` carries the run's labels but is not controlled by its Job."""
    if controlled_by(pod, "Job", job["metadata"].get("uid")):
        return False
    pod_meta = pod.get("metadata") or {}
    if ctx.warned.first(("pod", pod_meta.get("uid"))):
        log.warning("pod %s/%s carries the labels of run %s of %s but is not controlled by Job %s: ignored",
                    isj["metadata"]["namespace"], clip(str(pod_meta.get("name")), 100),
                    (isj.get("status") or {}).get("run"), isj["metadata"]["name"], job["metadata"].get("name"))
    return True


def foreign_report(ctx: Context, isj: Mapping[str, Any], configmap: Mapping[str, Any]) -> bool:
    """True (logged once per ConfigMap) unless ``configmap`` is the report ConfigMap the operator created for
    the active run: its name, and controlled by the ImageSyncJob (labels alone prove nothing)."""
    meta, cm_meta = isj["metadata"], configmap.get("metadata") or {}
    run = int((isj.get("status") or {}).get("run") or 0)
    if cm_meta.get("name") == report_name(meta["name"], run) and \
            controlled_by(configmap, "ImageSyncJob", meta.get("uid")):
        return False
    if ctx.warned.first(("configmap", cm_meta.get("uid"))):
        log.warning("ConfigMap %s/%s carries the labels of run %s of %s but is not its report ConfigMap: ignored",
                    meta["namespace"], clip(str(cm_meta.get("name")), 100), run, meta["name"])
    return True


def completion_index(pod: Mapping[str, Any]) -> int | None:
    pod_meta = pod.get("metadata") or {}
    text = (pod_meta.get("annotations") or {}).get(COMPLETION_INDEX) or \
        (pod_meta.get("labels") or {}).get(COMPLETION_INDEX) or "0"
    try:
        return int(text)
    except ValueError:
        return None


def run_shards(ctx: Context, isj: Mapping[str, Any], job: Mapping[str, Any]) -> RunShards:
    """The pods of ``job`` (the run's own, see :func:`run_job`) and the reports in the run's report
    ConfigMap: only pods the Job controls count (by uid); only the run's own ConfigMap, and in it only
    valid reports (controller/reports.py) that name a pod of the Job at the key's shard. Anything else is
    logged once and ignored."""
    meta = isj["metadata"]
    run = int((isj.get("status") or {}).get("run") or 0)
    found = RunShards()
    pods = ctx.kube.list_pods(meta["namespace"], {LABEL_JOB: meta["name"], LABEL_RUN: str(run)})
    pods.sort(key=lambda p: p["metadata"].get("creationTimestamp") or "")
    pod_uids: dict[int, set[str]] = {}  # every attempt of each shard: a retry's predecessor may have reported
    for pod in pods:
        index = completion_index(pod)
        if index is None or foreign_pod(ctx, isj, pod, job):
            continue
        if pod["metadata"].get("uid"):
            pod_uids.setdefault(index, set()).add(str(pod["metadata"]["uid"]))
        found.phases[index] = (pod.get("status") or {}).get("phase") or "Pending"
        problem = pod_problem(pod)
        if problem and not pod["metadata"].get("deletionTimestamp"):
            found.problems.append(problem)
    configmap = ctx.kube.get_configmap(meta["namespace"], report_name(meta["name"], run))
    if configmap is None or foreign_report(ctx, isj, configmap):
        return found
    shards = int((job.get("spec") or {}).get("completions") or 1)
    registries = run_registries(isj.get("status") or {})
    where = f"{meta['namespace']}/{configmap['metadata']['name']}"
    for key, raw in sorted((configmap.get("data") or {}).items()):
        index = shard_of_key(key, shards)
        try:
            if index is None:
                raise ReportError(f"not the key of a shard of this run (shard-0 to shard-{shards - 1})")
            report = parse_report(raw, registries=registries, index=index)
            if report.pod_uid is None or report.pod_uid not in pod_uids.get(index, set()):
                raise ReportError(f"names no pod of Job {job['metadata'].get('name')} at shard {index}: "
                                  f"{clip(str(report.pod_name), 100)!r}")
        except ReportError as exc:
            if ctx.warned.first(("report", configmap["metadata"].get("uid"), clip(key, 100), hash(raw))):
                log.warning("ConfigMap %s: report %r ignored: %s", where, clip(key, 100), clip(str(exc)))
            continue
        if report.dropped and ctx.warned.first(("clipped", configmap["metadata"].get("uid"), key, hash(raw))):
            log.warning("ConfigMap %s: report %r clipped: %s", where, key, clip("; ".join(report.dropped)))
        found.reports[index] = report.as_dict()
    return found


def workers_condition(isj: Mapping[str, Any], pods: RunShards) -> list[dict[str, Any]] | None:
    """The WorkersReady condition when it changes (posting a Warning when workers get stuck), else None."""
    status = isj.get("status") or {}
    previous = find_condition(status.get("conditions"), "WorkersReady")
    if pods.problems:
        reason = pods.problems[0][0]
        message = "; ".join(m for _, m in pods.problems[:3]) + \
            (f" (and {len(pods.problems) - 3} more pods)" if len(pods.problems) > 3 else "")
        state = "False"
    elif pods.reports or "Running" in pods.phases.values() or previous is not None:
        state, reason, message = "True", "WorkersStarted", "worker pods are running or have run"
    else:
        return None
    if previous and (previous.get("status"), previous.get("reason"), previous.get("message")) == \
            (state, reason, message):
        return None
    if state == "False" and (previous is None or previous.get("reason") != reason):
        post_event(isj, "Warning", reason=reason, message=message)
    return make_condition(status.get("conditions"), "WorkersReady", state, reason, message,
                          isj["metadata"].get("generation", 1), now_iso())


def fold_live(isj: Mapping[str, Any], reports: Mapping[int, Any], phases: Mapping[int, str]) -> dict[str, Any]:
    folded = fold_progress(reports, int((isj.get("spec") or {}).get("parallelism") or 1), phases)
    folded["phase"] = "Running" if reports or "Running" in phases.values() else "Pending"
    return folded


def job_outcome(job: Mapping[str, Any]) -> str | None:
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("status") == "True" and condition.get("type") in ("Complete", "Failed"):
            return str(condition["type"])
    return None


def finish_run(isj: Mapping[str, Any], outcome: str, reports: Mapping[int, Any],
               phases: Mapping[int, str]) -> dict[str, Any]:
    status = isj.get("status") or {}
    folded = fold_live(isj, reports, phases)
    progress = folded["progress"]
    shards = folded["shards"]
    all_done = bool(shards) and all(row.get("state") == "Succeeded" for row in shards)
    phase = final_phase(progress, outcome == "Failed", all_done)
    generation = isj["metadata"].get("generation", 1)
    refused = progress["imagesSkippedUnsigned"]  # spec.onlySigned: skipped, but not up to date
    message = (f"run {status.get('run')}: {progress['imagesSynced']} synced, {progress['imagesSkipped'] - refused} "
               f"up to date, " + (f"{refused} refused as unsigned or not verifying, " if refused else "")
               + f"{progress['imagesFailed']} failed of {progress['imagesTotal']}")
    if folded.get("plan"):  # spec.dryRun: what the plan found (the copy counters say nothing was copied)
        message = f"run {status.get('run')}: {plan_message(folded['plan'])}"
    if outcome == "Failed" and not all_done:
        message += "; worker pods failed (see the Job's pods and their logs)"
    patch = dict(folded)
    patch.update(phase=phase, completionTime=now_iso(), secretName=None, conditions=make_condition(
        status.get("conditions"), "Complete", "True", phase, message, generation, now_iso()))
    if phase == "Succeeded":
        post_event(isj, "Normal", reason="RunSucceeded", message=message)
    else:
        post_event(isj, "Warning", reason=f"Run{phase}", message=message)
    return patch


def report_logins(ctx: Context, isj: Mapping[str, Any], reports: Mapping[int, Any]) -> None:
    """Carry the workers' login results onto the RegistryCredentials the run used (the controller
    itself does no registry I/O): a refused login makes Ready False/LoginRejected until a later run
    logs in with it."""
    meta, status = isj["metadata"], isj.get("status") or {}
    accepted = {k for r in reports.values() for k in r.get("loginsAccepted") or [] if isinstance(k, str)}
    rejected = {k for r in reports.values() for k in r.get("loginsRejected") or [] if isinstance(k, str)}
    for entry in status.get("credentials") or []:
        name, registry = entry.get("name"), entry.get("registry")
        if not isinstance(name, str) or not isinstance(registry, str) or registry not in accepted | rejected:
            continue
        message = (f"{registry} refused these credentials during run {status.get('run')} of {meta['name']}"
                   if registry in rejected else f"{registry} accepted these credentials")
        decide = functools.partial(login_verdict, registry=registry, rejected=registry in rejected,
                                   message=message, now=now_iso())
        written = write_status(ctx, meta["namespace"], name, decide, CREDS_PLURAL)
        if written is not None and registry in rejected:
            post_event(written, "Warning", reason="LoginRejected", message=message)


def check_credential(ctx: Context, body: Mapping[str, Any]) -> None:
    """Check the Secret (and CA source) a RegistryCredential names and write its Ready condition. The Secret is
    read once, for the spec kopf delivered; the status is decided on a fresh read: a run's LoginRejected,
    written after kopf's copy was taken, must not be undone by that copy (a flake of the refused-login test)."""
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    generation = body["metadata"].get("generation", 1)
    try:
        resolve_from_cluster(ctx, namespace, body)
        verdict = ("True", "SecretValid", "credentials found for " + str((body.get("spec") or {}).get("registry")))
    except creds.CredentialError as exc:
        verdict = ("False", exc.reason, exc.message)
    read: list[Mapping[str, Any]] = []

    def decide(regcred: Mapping[str, Any]) -> dict[str, Any] | None:
        read.append(regcred)
        if regcred["metadata"].get("generation", 1) != generation:
            return None  # the spec changed since: its own handler checks the new one
        return secret_verdict(regcred, *verdict, now_iso())
    written = write_status(ctx, namespace, name, decide, CREDS_PLURAL)
    if written is not None and read:
        was = find_condition((read[-1].get("status") or {}).get("conditions"), "Ready") or {}
        ready = find_condition(written["status"].get("conditions"), "Ready") or {}
        if ready.get("status") == "False" and (was.get("status"), was.get("reason")) != ("False", ready["reason"]):
            post_event(written, "Warning", reason=str(ready["reason"]), message=str(ready.get("message", "")))


RUN_KINDS = ("Job", "Secret", "ConfigMap", "Role", "RoleBinding")
# What goes as soon as a run ends: its credentials, and its workers' right to write their report (the
# report ConfigMap itself is folded into the status by then: it goes too).
ENDED_RUN_KINDS = ("Secret", "ConfigMap", "Role", "RoleBinding")


def delete_run(ctx: Context, isj: Mapping[str, Any], run: int, kinds: tuple[str, ...] = RUN_KINDS) -> None:
    """Delete a run's objects (a Job takes its Pods with it); gone already is fine."""
    meta = isj["metadata"]
    for kind in kinds:
        name = run_name(meta["name"], run) if kind in ("Job", "Secret") else report_name(meta["name"], run)
        ctx.kube.delete({"kind": kind, "metadata": {"namespace": meta["namespace"], "name": name}})


def supersede_run(ctx: Context, isj: Mapping[str, Any]) -> None:
    """Remove the active run; its number is not reused (its objects may take a while to go)."""
    delete_run(ctx, isj, int((isj.get("status") or {}).get("run") or 0))


def prune_runs(ctx: Context, isj: Mapping[str, Any], finished: int) -> None:
    """A finished run's credentials and report objects go at once (its pods are done with them); Jobs and
    Pods of runs older than spec.historyLimit go too, so a frequent schedule does not pile them up."""
    try:
        keep = parse_job_spec(isj.get("spec")).history_limit
    except SpecError:
        keep = DEFAULT_HISTORY_LIMIT
    delete_run(ctx, isj, finished, ENDED_RUN_KINDS)
    meta = isj["metadata"]
    runs = {int(job["metadata"]["labels"][LABEL_RUN]) for job in ctx.kube.list_jobs(meta["namespace"],
                                                                                      {LABEL_JOB: meta["name"]})
            if str(job["metadata"].get("labels", {}).get(LABEL_RUN, "")).isdigit()}
    for old in runs_to_prune(runs, finished, keep):
        delete_run(ctx, isj, old)


def merged(isj: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """The ISJ as it will be once ``patch`` is applied to its status (for a follow-up decision)."""
    status = {k: v for k, v in {**(isj.get("status") or {}), **patch}.items() if v is not None}
    return {**isj, "status": status}


STATUS_WRITE_ATTEMPTS = 10  # reads and decisions per write; each lost race means another writer made progress


def write_status(ctx: Context, namespace: str, name: str,
                 decide: Callable[[Mapping[str, Any]], dict[str, Any] | None],
                 plural: str = JOBS_PLURAL) -> dict[str, Any] | None:
    """Every status write (of an ImageSyncJob, or with ``plural`` a RegistryCredential): under the object's lock,
    read it fresh, ``decide`` the status patch from what was read (None: nothing to write), and write it
    conditioned on the resourceVersion read. When another writer came between (409), read and decide again. A
    decision is therefore never made on a stale copy (kopf's event body may lag behind the final fold) and never
    lands after a newer write. Returns the object as written (for the metrics), or None when nothing was.

    A decision that starts a run (its patch names the run's Job: start_run) has created the run's objects
    already, so that a status never names a run without its Job; a decision thrown away for a newer one would
    leave them behind. Once the object's status is settled here, a run a decision started and the status does
    not name is deleted. When the write fails they stay: a lost answer may have applied it, and kopf's retry
    decides the same run again and takes the objects over by name."""
    started: set[int] = set()

    def noting_runs(obj: Mapping[str, Any]) -> dict[str, Any] | None:
        patch = decide(obj)
        if patch and patch.get("jobName"):
            started.add(int(patch["run"]))
        return patch

    with ctx.status_lock(plural, namespace, name):
        written, current = decide_and_write(ctx, namespace, name, noting_runs, plural)
        for run in sorted(started - {((current or {}).get("status") or {}).get("run")}):
            delete_run(ctx, {"metadata": {"namespace": namespace, "name": name}}, run)
        return written


def decide_and_write(ctx: Context, namespace: str, name: str,
                     decide: Callable[[Mapping[str, Any]], dict[str, Any] | None],
                     plural: str) -> tuple[dict[str, Any] | None, Mapping[str, Any] | None]:
    """write_status's loop: the object as written (or None), and the object as it now stands (None: deleted)."""
    for _ in range(STATUS_WRITE_ATTEMPTS):
        obj = ctx.kube.get_custom(plural, namespace, name)
        if obj is None:
            return None, None  # deleted meanwhile
        patch = decide(obj)
        if patch is None:
            return None, obj
        written = merged(obj, patch)
        if written["status"] == merged(obj, {})["status"]:
            return written, written  # the same status again (a restart re-delivers every Pod and report)
        try:
            ctx.kube.patch_status(plural, namespace, name, patch, str(obj["metadata"].get("resourceVersion") or ""))
        except StatusConflict:
            continue
        return written, written
    raise kopf.TemporaryError(f"{plural} {namespace}/{name}: status changed under every one of "
                              f"{STATUS_WRITE_ATTEMPTS} writes", delay=5)


# -- registration --------------------------------------------------------------------------------


def register(registry: kopf.OperatorRegistry, ctx: Context) -> None:
    """Register every handler into ``registry`` (a fresh one per operator, so tests stay isolated)."""
    jobs = kopf.on  # alias for readability below

    def write_and_observe(namespace: str, name: str,
                          decide: Callable[[Mapping[str, Any]], dict[str, Any] | None]) -> bool:
        """write_status, then the metrics of what was written; whether anything was."""
        written = write_status(ctx, namespace, name, decide)
        if written is not None:
            ctx.metrics.observe(written)
        return written is not None

    def reconcile_and_observe(body: kopf.Body, reason: str) -> bool:
        def decide(isj: Mapping[str, Any]) -> dict[str, Any] | None:
            update = reconcile(ctx, isj, reason)
            if not update and (reason == "resume" or settled(isj)):
                return None  # nothing to do writes nothing (a thousand ImageSyncJobs, one restart)
            return with_kstatus(isj, update, now_iso())

        return write_and_observe(body["metadata"]["namespace"], body["metadata"]["name"], decide)

    @jobs.create(GROUP, VERSION, JOBS_PLURAL, registry=registry)
    def isj_created(body: kopf.Body, **_: Any) -> None:
        reconcile_and_observe(body, "created")

    @jobs.update(GROUP, VERSION, JOBS_PLURAL, field="spec", registry=registry)
    def isj_changed(body: kopf.Body, **_: Any) -> None:
        reconcile_and_observe(body, "spec changed")

    @jobs.resume(GROUP, VERSION, JOBS_PLURAL, registry=registry)
    def isj_resumed(body: kopf.Body, **_: Any) -> None:
        # Decided on kopf's copy first: a restart reads and writes nothing for a settled ImageSyncJob.
        if not settled(body) and reconcile_and_observe(body, "resume"):
            return
        ctx.metrics.observe(body)  # a new process: its series start from what the ImageSyncJob shows

    def fold_active_run(namespace: str, isj_name: str, run_label: str,
                        foreign: Callable[[Mapping[str, Any], Mapping[str, Any]], bool]) -> None:
        """Fold the active run's pods and reports into its status after an event on one of its objects
        (``foreign(isj, job)``: whether that object is not the run's own, so it changes nothing)."""
        def decide(isj: Mapping[str, Any]) -> dict[str, Any] | None:
            status = isj.get("status") or {}
            if str(status.get("run")) != run_label or not run_active(status):
                return None  # an object of an older run, or of a run already finished
            job = run_job(ctx, isj)
            if job is None or foreign(isj, job):
                return None  # the run's Job is gone or not its own, or the object is not the run's: nothing new
            shards = run_shards(ctx, isj, job)
            folded = fold_live(isj, shards.reports, shards.phases)
            conditions = workers_condition(isj, shards)
            if conditions is not None:
                folded["conditions"] = conditions
            return with_kstatus(isj, folded, now_iso())

        write_and_observe(namespace, isj_name, decide)

    @kopf.on.event("", "v1", "pods", labels={LABEL_JOB: kopf.PRESENT, LABEL_RUN: kopf.PRESENT},
                   registry=registry)
    def worker_pod_changed(body: kopf.Body, **_: Any) -> None:
        # Phases and why a pod cannot start (WorkersReady); the reports come from the report ConfigMap.
        meta = body["metadata"]
        fold_active_run(meta["namespace"], meta["labels"][LABEL_JOB], meta["labels"][LABEL_RUN],
                        lambda isj, job: foreign_pod(ctx, isj, body, job))

    @kopf.on.event("", "v1", "configmaps", labels={LABEL_JOB: kopf.PRESENT, LABEL_RUN: kopf.PRESENT},
                   registry=registry)
    def worker_report_changed(body: kopf.Body, **_: Any) -> None:
        meta = body["metadata"]
        fold_active_run(meta["namespace"], meta["labels"][LABEL_JOB], meta["labels"][LABEL_RUN],
                        lambda isj, job: foreign_report(ctx, isj, body))

    @kopf.on.event("batch", "v1", "jobs", labels={LABEL_JOB: kopf.PRESENT, LABEL_RUN: kopf.PRESENT},
                   registry=registry)
    def worker_job_changed(body: kopf.Body, **_: Any) -> None:
        outcome = job_outcome(body)
        if outcome is None:
            return
        meta = body["metadata"]
        finished: list[Mapping[str, Any]] = []  # the ImageSyncJob read, and as the run's end left it

        def decide(isj: Mapping[str, Any]) -> dict[str, Any] | None:
            finished.clear()
            status = isj.get("status") or {}
            if str(status.get("run")) != meta["labels"][LABEL_RUN] or not run_active(status):
                return None  # already folded (a re-delivered event) or an older run
            if run_job(ctx, isj, body) is not body:
                return None  # a Job that carries the run's labels but is not the run's own: it ends nothing
            shards = run_shards(ctx, isj, body)
            patch = finish_run(isj, outcome, shards.reports, shards.phases)
            report_logins(ctx, isj, shards.reports)
            after = merged(isj, patch)
            generation = isj["metadata"].get("generation", 1)
            if status.get("pendingGeneration") or status.get("runGeneration") != generation:
                patch.update(reconcile(ctx, after, "queued spec change"))
            finished[:] = [isj, after]
            return with_kstatus(isj, patch, now_iso())

        written = write_status(ctx, meta["namespace"], meta["labels"][LABEL_JOB], decide)
        if written is not None:
            isj, after = finished
            ctx.metrics.observe(after)  # the finished run, even when a queued run replaced it in the same patch
            ctx.metrics.observe(written)
            prune_runs(ctx, isj, int(meta["labels"][LABEL_RUN]))

    @kopf.timer(GROUP, VERSION, JOBS_PLURAL, interval=ctx.schedule_interval, registry=registry,
                when=lambda spec, **_: bool(spec.get("schedule")))
    def isj_schedule(body: kopf.Body, **_: Any) -> None:
        if schedule_due(body, dt.datetime.now(dt.UTC)) is None:
            return  # kopf's copy says nothing to do: no read (500 scheduled ImageSyncJobs made 1000 GETs a minute)

        def decide(isj: Mapping[str, Any]) -> dict[str, Any] | None:
            now = dt.datetime.now(dt.UTC)
            due = schedule_due(isj, now)
            if due is None or due:
                return due  # nothing, or only the next fire time
            update = reconcile(ctx, isj, "schedule")
            update["lastScheduleTime"] = iso(now)
            update["nextScheduleTime"] = iso(next_fire(str(isj["spec"]["schedule"]), now))
            return with_kstatus(isj, update, now_iso())

        write_and_observe(body["metadata"]["namespace"], body["metadata"]["name"], decide)

    @kopf.on.create(GROUP, VERSION, CREDS_PLURAL, registry=registry)
    @kopf.on.update(GROUP, VERSION, CREDS_PLURAL, field="spec", registry=registry)
    @kopf.on.resume(GROUP, VERSION, CREDS_PLURAL, registry=registry)
    def credential_changed(body: kopf.Body, **_: Any) -> None:
        check_credential(ctx, body)

    @kopf.timer(GROUP, VERSION, CREDS_PLURAL, interval=ctx.credential_check_interval, registry=registry)
    def credential_recheck(body: kopf.Body, **_: Any) -> None:
        # A Secret created, fixed or deleted after the RegistryCredential shows up here.
        check_credential(ctx, body)

    @kopf.on.event(GROUP, VERSION, JOBS_PLURAL, registry=registry,
                   when=lambda type, **_: type == "DELETED")
    def isj_deleted(body: kopf.Body, **_: Any) -> None:
        ctx.metrics.forget(body["metadata"]["namespace"], body["metadata"]["name"], body["metadata"].get("uid"))

    ctx.metrics.count_handler_errors(registry)  # reconcile errors by handler, in every handler above


def configure(settings: kopf.OperatorSettings) -> None:
    """kopf settings shared by the operator and the tests."""
    # Keep kopf's bookkeeping in annotations: a real API server prunes status.kopf (not in our schema).
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="imagesync.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="imagesync.dev")
    settings.posting.level = logging.WARNING  # events for warnings only from kopf itself; ours are explicit


__all__ = ["Context", "configure", "register", "run_name"]
