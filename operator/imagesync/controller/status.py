"""Shard reports -> ImageSyncJob status (pure).

Every field written here is declared in crds/imagesyncjobs.yaml: a real API server silently prunes
undeclared status fields (tests/controller/test_schemas.py checks it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

FAILED_IMAGES_CAP = 20
COUNTERS = ("imagesTotal", "imagesSynced", "imagesSkipped", "imagesFailed", "blobsCopied", "blobsMounted",
            "blobsSkipped", "bytesCopied")

Report = Mapping[str, Any]


def _int(report: Report, key: str) -> int:
    value = report.get(key, 0)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def shard_state(report: Report | None, pod_phase: str | None) -> str:
    if pod_phase == "Failed" and not (report and report.get("done")):
        return "Failed"
    if report and report.get("done"):
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
    failed_total = 0
    shard_rows = []
    for index in range(shards):
        report = reports.get(index)
        if report:
            for key in COUNTERS:
                progress[key] += _int(report, key)
            if not report.get("done"):
                value = report.get("bytesPerSecond", 0)
                rate += float(value) if isinstance(value, int | float) else 0.0
            failed_total += _int(report, "failedImagesTotal") or _int(report, "imagesFailed")
            for item in report.get("failedImages") or []:
                if isinstance(item, Mapping) and len(failed) < FAILED_IMAGES_CAP:
                    failed.append({k: str(item.get(k, "")) for k in ("source", "target", "reason")})
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
        percent = 100.0 if total == 0 and all(r and r.get("done") for r in reports.values()) else \
            round(100.0 * done / total, 1) if total else 0.0
    progress["bytesPerSecond"] = round(rate, 1)
    progress["percent"] = percent
    return {
        "progress": progress,
        "failedImages": failed,
        "failedImagesTotal": failed_total,
        "shards": shard_rows,
        "syncedSummary": f"{progress['imagesSynced'] + progress['imagesSkipped']}/{total if all_reported else '?'}",
        "progressSummary": f"{percent:.0f}%" if all_reported else "-",
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
