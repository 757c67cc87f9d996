"""Shard reports -> ImageSyncJob status (pure).

Every field written here is declared in crds/imagesyncjobs.yaml: a real API server silently prunes
undeclared status fields (tests/controller/test_schemas.py checks it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

FAILED_IMAGES_CAP = 20
REGISTRY_QUOTAS_CAP = 20  # registries listed in status.registryQuotas
COUNTERS = ("imagesTotal", "imagesSynced", "imagesSkipped", "imagesFailed", "blobsCopied", "blobsMounted",
            "blobsSkipped", "bytesCopied", "referrersCopied", "referrersSkipped", "referrersFailed",
            "imagesSkippedUnsigned")

Report = Mapping[str, Any]


# The handlers fold only reports that passed controller/reports.py; these bounds keep the fold total
# (no OverflowError, no NaN in the status) whatever it is given.
_INT_CAP = 2**53
_RATE_CAP = 1e12
_TEXT_CAP = 1000


def _int(report: Report, key: str) -> int:
    value = report.get(key, 0)
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _INT_CAP else 0


def _rate(report: Report) -> float:
    value = report.get("bytesPerSecond", 0)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0
    if isinstance(value, int):
        return float(value) if 0 <= value <= _RATE_CAP else 0.0
    return value if math.isfinite(value) and 0.0 <= value <= _RATE_CAP else 0.0


def _quota_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _INT_CAP else None


def fold_quotas(reports: Mapping[int, Report | None]) -> list[dict[str, Any]]:
    """status.registryQuotas: per registry, the lowest remaining quota any shard's latest report announced
    (the shards share the registry's quota), sorted by registry, at most :data:`REGISTRY_QUOTAS_CAP`; empty
    when no registry announced one (a merge patch then clears an earlier run's list)."""
    lowest: dict[str, dict[str, Any]] = {}
    for report in reports.values():
        entries = (report or {}).get("registryQuotas")
        for entry in entries if isinstance(entries, list) else []:
            if not isinstance(entry, Mapping) or not isinstance(entry.get("registry"), str):
                continue
            remaining = _quota_int(entry.get("remaining"))
            if remaining is None:
                continue
            row: dict[str, Any] = {"registry": entry["registry"][:_TEXT_CAP], "remaining": remaining}
            limit = _quota_int(entry.get("limit"))
            if limit is not None:
                row["limit"] = limit
            window = entry.get("windowSeconds")
            if isinstance(window, int | float) and not isinstance(window, bool) and math.isfinite(window) \
                    and 0 <= window <= _INT_CAP:
                row["windowSeconds"] = window
            known = lowest.get(row["registry"])
            if known is None or remaining < known["remaining"]:
                lowest[row["registry"]] = row
    return [lowest[name] for name in sorted(lowest)][:REGISTRY_QUOTAS_CAP]


PLAN_ENTRIES_CAP = 20  # pairs listed in status.plan.entries (status.plan.pairs has the count)
PLAN_COUNTS = ("pairs", "upToDate", "toCopy", "skipped", "failed", "bytesToCopy", "blobsToCopy")
_PLAN_NOTES_CAP = 8
PRUNE_ENTRIES_CAP = 10  # tags listed in status.prune.entries (its counts cover them all)
PRUNE_COUNTS = ("deleted", "wouldDelete", "kept", "errors")


def fold_plan(reports: Mapping[int, Report | None], shards: int) -> dict[str, Any]:
    """``{"plan": ...}``, status.plan of a dry run (spec.dryRun): the shards' plans summed, exact only when
    every shard's is, the first :data:`PLAN_ENTRIES_CAP` pairs in shard order. Empty when no shard reported a
    plan (a run's start removes an earlier dry run's plan)."""
    plans = [plan for index in range(shards)
             if isinstance(plan := (reports.get(index) or {}).get("plan"), Mapping)]
    if not plans:
        return {}
    folded: dict[str, Any] = {key: sum(_int(plan, key) for plan in plans) for key in PLAN_COUNTS}
    folded["exact"] = all(plan.get("exact") is True for plan in plans)
    notes = [note for plan in plans for note in plan.get("notes") or [] if isinstance(note, str)]
    folded["notes"] = [note[:_TEXT_CAP] for note in dict.fromkeys(notes)][:_PLAN_NOTES_CAP]
    entries: list[dict[str, Any]] = []
    for plan in plans:
        for entry in plan.get("entries") or []:
            if isinstance(entry, Mapping) and len(entries) < PLAN_ENTRIES_CAP:
                row: dict[str, Any] = {k: str(entry.get(k, ""))[:_TEXT_CAP] for k in ("source", "target", "state")}
                row.update({k: _int(entry, k) for k in ("bytes", "blobs") if k in entry})
                row.update({k: entry[k] for k in ("exact",) if isinstance(entry.get(k), bool)})
                if entry.get("reason"):
                    row["reason"] = str(entry["reason"])[:_TEXT_CAP]
                entries.append(row)
    folded["entries"] = entries
    return {"plan": folded}


def fold_prune(reports: Mapping[int, Report | None], shards: int) -> dict[str, Any]:
    """``{"prune": ...}``, status.prune (spec.prune): what was deleted, or would be, kept and why, and errors, as
    the shard that pruned (shard 0) reported it; counts summed, the first PRUNE_ENTRIES_CAP entries. Empty when
    no shard reported one (a run's start removes an earlier run's)."""
    prunes = [prune for index in range(shards)
              if isinstance(prune := (reports.get(index) or {}).get("prune"), Mapping)]
    if not prunes:
        return {}
    folded: dict[str, Any] = {key: sum(_int(prune, key) for prune in prunes) for key in PRUNE_COUNTS}
    folded["dryRun"] = all(prune.get("dryRun") is not False for prune in prunes)
    entries = [entry for prune in prunes for entry in prune.get("entries") or [] if isinstance(entry, Mapping)]
    folded["entries"] = [{k: str(entry[k])[:_TEXT_CAP] for k in ("repository", "tag", "action", "reason")
                          if k in entry} for entry in entries[:PRUNE_ENTRIES_CAP]]
    return {"prune": folded}


def plan_message(plan: Mapping[str, Any]) -> str:
    """A dry run's Complete message: the plan's totals."""
    skipped = f", {plan.get('skipped')} skipped by spec.onlySigned" if plan.get("skipped") else ""
    return (f"dry run, nothing copied: {plan.get('pairs')} pairs, {plan.get('upToDate')} up to date, "
            f"{plan.get('toCopy')} to copy ({plan.get('bytesToCopy')} bytes in {plan.get('blobsToCopy')} blobs, "
            f"{'exact' if plan.get('exact') else 'estimate'}){skipped}, {plan.get('failed')} could not be planned")


def _collect(items: Any, into: list[dict[str, str]]) -> None:
    """Append a report's {source, target, reason} items to ``into``, up to FAILED_IMAGES_CAP in all."""
    for item in items if isinstance(items, list) else []:
        if isinstance(item, Mapping) and len(into) < FAILED_IMAGES_CAP:
            into.append({k: str(item.get(k, ""))[:_TEXT_CAP] for k in ("source", "target", "reason")})


def shard_state(report: Report | None, pod_phase: str | None) -> str:
    if pod_phase == "Failed" and not (report and report.get("done") is True):
        return "Failed"
    if report and report.get("done") is True:
        return "Succeeded"
    return "Running" if report is not None or pod_phase == "Running" else "Pending"


def fold_progress(reports: Mapping[int, Report | None], shards: int,
                  pod_phases: Mapping[int, str] | None = None) -> dict[str, Any]:
    """Sum the shards' latest reports into the status' progress fields.

    Until every shard has reported, the total is not known, so no percentage is claimed.
    """
    phases = pod_phases or {}
    progress: dict[str, Any] = dict.fromkeys(COUNTERS, 0)
    rate = 0.0
    failed: list[dict[str, str]] = []
    skipped: list[dict[str, str]] = []  # spec.onlySigned's refusals, with their reasons
    failed_total = 0
    shard_rows = []
    for index in range(shards):
        report = reports.get(index)
        if report:
            for key in COUNTERS:
                progress[key] += _int(report, key)
            if report.get("done") is not True:
                rate += _rate(report)
            failed_total += _int(report, "failedImagesTotal") or _int(report, "imagesFailed")
            _collect(report.get("failedImages"), failed)
            _collect(report.get("skippedImages"), skipped)
        row = {"index": index, "state": shard_state(report, phases.get(index))}
        if report:
            row.update(imagesTotal=_int(report, "imagesTotal"),
                       imagesDone=_int(report, "imagesSynced") + _int(report, "imagesSkipped")
                       + _int(report, "imagesFailed"),
                       imagesFailed=_int(report, "imagesFailed"), bytesCopied=_int(report, "bytesCopied"))
        shard_rows.append(row)
    all_reported = all(reports.get(i) for i in range(shards))
    done = progress["imagesSynced"] + progress["imagesSkipped"] + progress["imagesFailed"]
    total = progress["imagesTotal"]
    percent = 0.0
    if all_reported:
        percent = 100.0 if total == 0 and all(r and r.get("done") is True for r in reports.values()) else \
            round(100.0 * done / total, 1) if total else 0.0
    progress["bytesPerSecond"] = round(rate, 1)
    progress["percent"] = percent
    return {
        "progress": progress,
        "failedImages": failed,
        "failedImagesTotal": failed_total,
        "skippedImages": skipped,
        "shards": shard_rows,
        "syncedSummary": f"{progress['imagesSynced'] + progress['imagesSkipped']}/{total if all_reported else '?'}",
        "progressSummary": f"{percent:.0f}%" if all_reported else "-",
        "registryQuotas": fold_quotas(reports),
        **fold_plan(reports, shards),
        **fold_prune(reports, shards),
    }


def final_phase(progress: Mapping[str, Any], job_failed: bool, all_reported_done: bool) -> str:
    """The phase of a finished run."""
    ok = int(progress.get("imagesSynced", 0)) + int(progress.get("imagesSkipped", 0))
    failed = int(progress.get("imagesFailed", 0))
    if failed == 0 and all_reported_done and not job_failed:
        return "Succeeded"
    if ok > 0 and (failed > 0 or job_failed):
        return "PartiallyFailed"
    return "Failed"


def find_condition(conditions: Sequence[Mapping[str, Any]] | None, type_: str) -> Mapping[str, Any] | None:
    return next((c for c in conditions or [] if c.get("type") == type_), None)


def make_condition(conditions: Sequence[Mapping[str, Any]] | None, type_: str, status: str, reason: str,
                   message: str, generation: int | None, now: str) -> list[dict[str, Any]]:
    """Set one condition (Kubernetes API conventions): lastTransitionTime moves only when status changes."""
    result: list[dict[str, Any]] = []
    previous = None
    for condition in conditions or []:
        if condition.get("type") == type_:
            previous = condition
        else:
            result.append(dict(condition))
    transition = previous.get("lastTransitionTime") if previous and previous.get("status") == status else now
    new: dict[str, Any] = {"type": type_, "status": status, "reason": reason, "message": message,
                           "lastTransitionTime": transition or now}
    if generation is not None:
        new["observedGeneration"] = generation
    result.append(new)
    return sorted(result, key=lambda c: str(c.get("type")))


# Container states that do not end by themselves: the run would wait forever without saying why.
STUCK_WAITING_REASONS = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError",
                                   "CreateContainerError", "RunContainerError", "CrashLoopBackOff"})


def pod_problem(pod: Mapping[str, Any]) -> tuple[str, str] | None:
    """(reason, message) when a worker Pod cannot start or keeps failing to, else None."""
    name = (pod.get("metadata") or {}).get("name", "?")
    status = pod.get("status") or {}
    for container in status.get("containerStatuses") or []:
        waiting = (container.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason")
        if reason in STUCK_WAITING_REASONS:
            return str(reason), f"pod {name}: {reason}: {waiting.get('message') or 'no message'}"
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False" \
                and condition.get("reason") == "Unschedulable":
            return "Unschedulable", f"pod {name}: Unschedulable: {condition.get('message') or 'no message'}"
    return None


# -- kstatus: Ready, Reconciling, Stalled ---------------------------------------------------------------
# The conventions Flux's health checks, `kubectl wait --for=condition=Ready` and Argo CD build on
# (sigs.k8s.io/cli-utils/pkg/kstatus): Ready has positive polarity; Reconciling and Stalled are
# "abnormal-true" (True only while something is going on or wrong); status.observedGeneration says which
# spec generation the conditions are about. They are derived from the rest of the status (phase, the
# run's fields and the detailed conditions above), so every status patch can carry them consistently.

KSTATUS_TYPES = ("Ready", "Reconciling", "Stalled")
# Detailed conditions whose False means no run can start until someone changes something (the spec, a
# Secret, a RegistryCredential): their reasons become Stalled's (InvalidSpec, IndexedJobsUnsupported,
# CredentialMissing, SecretMissing, WrongSecretType, NoEntryForRegistry, InvalidSecret, ...).
BLOCKING_CONDITIONS = ("Valid", "CredentialsReady")


@dataclass(frozen=True)
class Verdict:
    """One situation of an object, as the three kstatus conditions show it."""

    ready: bool
    reconciling: bool
    stalled: bool
    reason: str
    message: str
    ready_reason: str | None = None  # Ready's own reason when it differs (e.g. Progressing during a run)


def job_verdict(status: Mapping[str, Any], generation: int, scheduled: bool) -> Verdict:
    """An ImageSyncJob's situation, from its (merged) status and its metadata.generation.

    Order matters: a blocked run shows as Stalled even when an earlier run's fields linger; an active run
    is Reconciling; a finished run of the current spec is Ready only when every image synced.
    """
    conditions = status.get("conditions")
    for type_ in BLOCKING_CONDITIONS:
        blocker = find_condition(conditions, type_)
        if blocker and blocker.get("status") == "False" \
                and blocker.get("observedGeneration", generation) == generation:
            reason = str(blocker.get("reason") or f"{type_}False")
            advice = "a run starts when the spec is fixed" if type_ == "Valid" else \
                "fix the credential, then change the ImageSyncJob's spec to start a run"
            return Verdict(False, False, True, reason, f"{blocker.get('message') or reason}; {advice}")
    run = status.get("run")
    phase = status.get("phase")
    active = bool(status.get("jobName")) and not status.get("completionTime")
    if active:
        queued = status.get("pendingGeneration")
        reason = "RunQueued" if queued else "RunStarting" if phase == "Pending" else "RunInProgress"
        message = f"run {run} {'starting' if phase == 'Pending' else 'in progress'}: " \
                  f"{status.get('syncedSummary') or '0/?'} images synced"
        if queued:
            message += f"; generation {queued} runs when it ends"
        workers = find_condition(conditions, "WorkersReady")
        if workers and workers.get("status") == "False":
            stuck = str(workers.get("reason") or "WorkersNotReady")
            return Verdict(False, True, False, reason, f"{message}; {workers.get('message') or stuck}",
                           ready_reason=stuck)
        return Verdict(False, True, False, reason, message, ready_reason="Progressing")
    if phase == "Suspended":
        return Verdict(False, False, False, "Suspended", "spec.suspend is true: no run starts")
    if not status.get("completionTime"):
        return Verdict(False, True, False, "RunNotStarted", "waiting for the operator to start a run",
                       ready_reason="Progressing")
    if status.get("runGeneration") not in (None, generation):
        return Verdict(False, True, False, "SpecChanged",
                       f"generation {generation} has not run yet (run {run} was of generation "
                       f"{status.get('runGeneration')})", ready_reason="Progressing")
    complete = find_condition(conditions, "Complete") or {}
    summary = str(complete.get("message") or f"run {run} {phase}")
    next_time = status.get("nextScheduleTime")
    if phase == "Succeeded":
        return Verdict(True, False, False, "Succeeded",
                       summary + (f"; next scheduled run at {next_time}" if scheduled and next_time else ""))
    if scheduled:
        retry = f"the next scheduled run ({next_time or 'per spec.schedule'}) tries again"
    else:
        retry = "not retried until the spec changes"
    return Verdict(False, False, True, f"Run{phase or 'Failed'}", f"{summary}; {retry}")


def credential_verdict(state: str, reason: str, message: str) -> Verdict:
    """A RegistryCredential's situation from its Ready check: a credential that is not valid (missing or
    malformed Secret, refused login) stays that way until someone fixes it, so it is Stalled too."""
    if state == "True":
        return Verdict(True, False, False, reason, message)
    return Verdict(False, False, True, reason, message)


def kstatus_conditions(conditions: Sequence[Mapping[str, Any]] | None, verdict: Verdict, generation: int | None,
                       now: str) -> list[dict[str, Any]]:
    """``conditions`` with Ready, Reconciling and Stalled set per ``verdict`` (transition times kept when a
    status does not change)."""
    result = make_condition(conditions, "Ready", "True" if verdict.ready else "False",
                            verdict.ready_reason or verdict.reason, verdict.message, generation, now)
    result = make_condition(result, "Reconciling", "True" if verdict.reconciling else "False", verdict.reason,
                            verdict.message if verdict.reconciling else "", generation, now)
    return make_condition(result, "Stalled", "True" if verdict.stalled else "False", verdict.reason,
                          verdict.message if verdict.stalled else "", generation, now)


def credential_status(regcred: Mapping[str, Any], conditions: Sequence[Mapping[str, Any]] | None,
                      now: str) -> dict[str, Any]:
    """A RegistryCredential's status patch: ``conditions`` (with Ready set) plus the kstatus conditions."""
    generation = int(regcred["metadata"].get("generation") or 1)
    ready = find_condition(conditions, "Ready") or {}
    conditions = kstatus_conditions(conditions, credential_verdict(
        str(ready.get("status")), str(ready.get("reason")), str(ready.get("message"))), generation, now)
    return {"conditions": conditions, "lastCheckTime": now, "observedGeneration": generation}


def secret_verdict(regcred: Mapping[str, Any], state: str, reason: str, message: str, now: str) -> dict[str, Any]:
    """The status patch of a check of ``regcred``'s Secret (``state``: "True" when it resolved). A refused login
    at this generation outlives a well-formed Secret: only a run that logs in, or a changed spec, clears it."""
    previous = (regcred.get("status") or {}).get("conditions")
    generation = int(regcred["metadata"].get("generation") or 1)
    was = find_condition(previous, "Ready") or {}
    if state == "True" and was.get("reason") == "LoginRejected" and was.get("observedGeneration") == generation:
        state, reason, message = "False", "LoginRejected", str(was.get("message", ""))
    return credential_status(regcred, make_condition(previous, "Ready", state, reason, message, generation, now), now)


def login_verdict(regcred: Mapping[str, Any], registry: str, rejected: bool, message: str,
                  now: str) -> dict[str, Any] | None:
    """The status patch that a run's login result makes on ``regcred`` (None: nothing). A rejection makes Ready
    False/LoginRejected; an accepted login clears only a rejection. A credential whose registry changed since
    the run started is not the one the run used."""
    if registry != (regcred.get("spec") or {}).get("registry"):
        return None
    previous = (regcred.get("status") or {}).get("conditions")
    generation = int(regcred["metadata"].get("generation") or 1)
    if rejected:
        return credential_status(regcred, make_condition(previous, "Ready", "False", "LoginRejected", message,
                                                         generation, now), now)
    if (find_condition(previous, "Ready") or {}).get("reason") == "LoginRejected":
        return credential_status(regcred, make_condition(previous, "Ready", "True", "LoginAccepted", message,
                                                         generation, now), now)
    return None


def with_kstatus(isj: Mapping[str, Any], patch: Mapping[str, Any], now: str) -> dict[str, Any]:
    """``patch`` (an ImageSyncJob status patch) plus the kstatus conditions and observedGeneration of the
    status it leads to. observedGeneration is the generation the controller last acted on (a patch that
    starts, queues or blocks a run sets it); a progress patch carries the one already there."""
    meta = isj.get("metadata") or {}
    generation = int(meta.get("generation") or 1)
    status = {k: v for k, v in {**(isj.get("status") or {}), **patch}.items() if v is not None}
    observed = status.get("observedGeneration")
    observed = int(observed) if isinstance(observed, int) else generation
    scheduled = bool((isj.get("spec") or {}).get("schedule"))
    verdict = job_verdict(status, generation, scheduled)
    result = dict(patch)
    result["observedGeneration"] = observed
    result["conditions"] = kstatus_conditions(status.get("conditions"), verdict, observed, now)
    return result
