"""How a worker tells the operator about its progress: its key of the run's report ConfigMap.

Least privilege (issue 11, finding 5): the worker's only right is patch on its run's report ConfigMap,
granted by name in a Role the operator creates per run; it reads no Secrets through the API, writes no
Pods and no custom resources. Each shard merge-patches its own key (``shard-<index>``) without a
resourceVersion, so shards never conflict; the operator watches the ConfigMap and folds every shard's
report into the ImageSyncJob status. Plain httpx keeps kubernetes out of the worker image's start-up path.
"""

from __future__ import annotations

import json
import logging
import math
import os
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import httpx

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"

# The API server refuses a ConfigMap whose data (keys and values together) exceeds 1 MiB: a report that
# grew past its share (thousands of failures, long registry messages) would stop the run's reports from
# reaching the operator at all. The report lists at most REPORT_FAILED_IMAGES failures with clipped text
# and stays under its shard's budget (report_budget); the counts (imagesFailed, failedImagesTotal) stay
# exact. The operator accepts up to 100 failures, 1000-character reasons and 512-character references
# (controller/reports.py): these are within.
REPORT_BUDGET = 128 * 1024  # the most one shard's report takes
CONFIGMAP_DATA_LIMIT = 1024 * 1024  # the API server's limit for a ConfigMap's data
# Kept free of reports: the keys (``shard-99``: 8 bytes, 800 for 100 shards) and room to spare.
CONFIGMAP_RESERVE = 16 * 1024
REPORT_FAILED_IMAGES = 50
REPORT_REASON_CHARS = 1000
REPORT_REF_CHARS = 512
REPORT_LOGINS = 64
REPORT_QUOTAS = 32  # registries whose announced quota a report carries (controller/reports.py keeps 32)
# Images --only-signed skipped with their reasons (unsigned, signature does not verify), like failures: the
# count (imagesSkippedUnsigned) stays exact, the list is capped and the first to shrink when over budget.
REPORT_SKIPPED_IMAGES = 50


def _clip(value: object, limit: int) -> str:
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def report_budget(shards: int) -> int:
    """Bytes one shard's report may take so that ``shards`` reports fit one ConfigMap: REPORT_BUDGET, less
    with more than 7 shards (spec.parallelism is at most 100: 10,321 bytes each, 1,032,890 with the keys)."""
    return min(REPORT_BUDGET, (CONFIGMAP_DATA_LIMIT - CONFIGMAP_RESERVE) // max(1, shards))


def bounded_report(progress: Mapping[str, Any], budget: int = REPORT_BUDGET) -> str:
    """``progress`` as one shard's report (JSON), bounded: failures and images skipped with a reason capped
    in number and length, login lists capped, registry quotas capped (finite numbers only), non-finite numbers
    written as 0 (JSON has no NaN), and the whole under ``budget`` bytes (skipped images, then failures, are
    dropped from the end of their lists until it fits)."""
    report: dict[str, Any] = {k: (0 if isinstance(v, float) and not math.isfinite(v) else v)
                              for k, v in progress.items()}
    failed = [item for item in report.get("failedImages") or [] if isinstance(item, Mapping)]
    report.setdefault("failedImagesTotal", report.get("imagesFailed", len(failed)))
    listed = _images(failed, REPORT_FAILED_IMAGES)
    skipped = _images(report.get("skippedImages"), REPORT_SKIPPED_IMAGES)
    for key in ("loginsAccepted", "loginsRejected"):
        if key in report:
            report[key] = [_clip(entry, REPORT_REF_CHARS) for entry in report[key] or []][:REPORT_LOGINS]
    if "registryQuotas" in report:
        quotas = report["registryQuotas"] if isinstance(report["registryQuotas"], Mapping) else {}
        report["registryQuotas"] = {
            _clip(host, REPORT_REF_CHARS): {k: v for k, v in quota.items()
                                            if isinstance(v, int | float) and math.isfinite(v)}
            for host, quota in list(quotas.items())[:REPORT_QUOTAS] if isinstance(quota, Mapping)}
    while True:
        report["failedImages"] = listed
        if "skippedImages" in report:
            report["skippedImages"] = skipped
        text = json.dumps(report, separators=(",", ":"), allow_nan=False)
        if len(text.encode()) <= budget or not (listed or skipped):
            return text
        if skipped:  # failures matter more: the skipped list goes first
            skipped = skipped[:len(skipped) // 2]
        else:
            listed = listed[:len(listed) // 2]


def _images(items: Any, cap: int) -> list[dict[str, str]]:
    """failedImages or skippedImages: at most ``cap`` entries, their text clipped."""
    limits = {"source": REPORT_REF_CHARS, "target": REPORT_REF_CHARS, "reason": REPORT_REASON_CHARS}
    kept = [item for item in items or [] if isinstance(item, Mapping)][:cap]
    return [{k: _clip(v, limits.get(k, REPORT_REF_CHARS)) for k, v in item.items()} for item in kept]


# A dry run's plan (spec.dryRun) travels in the shard's last report: its totals, notes and first pairs, within
# PLAN_BUDGET bytes (pairs dropped from the end until it fits; the counts stay exact). A tenth of the smallest
# shard budget, so that failures keep their room. controller/reports.py keeps 20 pairs too.
REPORT_PLAN_ENTRIES = 20
PLAN_BUDGET = 8 * 1024


def bounded_plan(plan: Mapping[str, Any]) -> dict[str, Any]:
    """``plan`` (engine/plan.py's ``Plan.as_dict``) with at most REPORT_PLAN_ENTRIES pairs and notes, text
    clipped, and its JSON within PLAN_BUDGET bytes."""
    bounded = dict(plan)
    bounded["notes"] = [_clip(note, REPORT_REASON_CHARS) for note in plan.get("notes") or []][:8]
    limits = {"source": REPORT_REF_CHARS, "target": REPORT_REF_CHARS, "reason": REPORT_REASON_CHARS}
    entries = [{k: _clip(v, limits[k]) if k in limits else v for k, v in entry.items()}
               for entry in (plan.get("entries") or [])[:REPORT_PLAN_ENTRIES]]
    while True:
        bounded["entries"] = entries
        if len(json.dumps(bounded, separators=(",", ":")).encode()) <= PLAN_BUDGET or not entries:
            return bounded
        entries = entries[:len(entries) // 2]


class Reporter(Protocol):
    async def report(self, progress: Mapping[str, Any]) -> None: ...

    async def aclose(self) -> None: ...


class NullReporter:
    """Outside a pod: nothing to report to."""

    async def report(self, progress: Mapping[str, Any]) -> None:
        return None

    async def aclose(self) -> None:
        return None


def shard_report(progress: Mapping[str, Any], budget: int) -> str:
    """:func:`bounded_report`, and when its lists are empty and it is still over ``budget`` (a small budget,
    many long registry names), without the registry quotas (advice only), then without the login results."""
    text = bounded_report(progress, budget)
    for dropped in (("registryQuotas",), ("registryQuotas", "loginsAccepted", "loginsRejected")):
        if len(text.encode()) <= budget:
            break
        text = bounded_report({k: v for k, v in progress.items() if k not in dropped}, budget)
    return text


class ConfigMapReporter:
    """Merge-patches this shard's report into its key of the run's report ConfigMap, with the pod's name
    and uid (the operator counts a report only when it names a pod of the run's Job at that shard)."""

    def __init__(self, api_url: str, namespace: str, configmap: str, shard: int, pod: Mapping[str, str],
                 budget: int, token: str | None, verify: ssl.SSLContext | bool) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.AsyncClient(base_url=api_url, headers=headers, verify=verify, timeout=10.0)
        self._path = f"/api/v1/namespaces/{namespace}/configmaps/{configmap}"
        self._key, self._pod, self._budget = f"shard-{shard}", dict(pod), budget

    async def report(self, progress: Mapping[str, Any]) -> None:
        # No resourceVersion: a merge patch of one key never conflicts with the other shards' patches.
        body = {"data": {self._key: shard_report({**progress, "pod": self._pod}, self._budget)}}
        try:
            response = await self._client.patch(
                self._path, content=json.dumps(body),
                headers={"Content-Type": "application/merge-patch+json"})
        except httpx.HTTPError as exc:
            # Progress is best effort: the copy goes on and the next report carries the latest numbers.
            log.warning("could not report progress: %s", exc)
            return
        if response.status_code >= 300:
            log.warning("could not report progress: API server answered %s", response.status_code)

    async def aclose(self) -> None:
        await self._client.aclose()


def reporter_from_env(env: Mapping[str, str] = os.environ) -> Reporter:
    """The reporter a pod's environment asks for (``IMAGESYNC_REPORT=configmap``, with
    ``IMAGESYNC_REPORT_CONFIGMAP``, ``POD_NAME``, ``POD_UID``, ``POD_NAMESPACE``; the shard from
    ``JOB_COMPLETION_INDEX`` and the budget from ``IMAGESYNC_SHARDS``, both checked by the worker first)."""
    if env.get("IMAGESYNC_REPORT") != "configmap":
        return NullReporter()
    configmap, namespace = env.get("IMAGESYNC_REPORT_CONFIGMAP"), env.get("POD_NAMESPACE")
    pod = {"name": env.get("POD_NAME", ""), "uid": env.get("POD_UID", "")}
    sa_dir = Path(env.get("IMAGESYNC_SA_DIR", SERVICE_ACCOUNT_DIR))
    api = env.get("IMAGESYNC_KUBE_API")
    if not api and env.get("KUBERNETES_SERVICE_HOST"):
        host = env["KUBERNETES_SERVICE_HOST"]
        host = f"[{host}]" if ":" in host else host
        api = f"https://{host}:{env.get('KUBERNETES_SERVICE_PORT', '443')}"
    if not (configmap and namespace and pod["name"] and pod["uid"] and api):
        log.warning("IMAGESYNC_REPORT=configmap but IMAGESYNC_REPORT_CONFIGMAP, POD_NAME, POD_UID, POD_NAMESPACE "
                    "or the API server address is missing: progress will not be reported")
        return NullReporter()
    token_file = sa_dir / "token"
    token = token_file.read_text().strip() if token_file.is_file() else None
    ca_file = sa_dir / "ca.crt"
    verify: ssl.SSLContext | bool = True
    if api.startswith("https://") and ca_file.is_file():
        verify = ssl.create_default_context(cafile=str(ca_file))
    shard, shards = int(env.get("JOB_COMPLETION_INDEX") or 0), int(env.get("IMAGESYNC_SHARDS") or 1)
    return ConfigMapReporter(api, namespace, configmap, shard, pod, report_budget(shards), token, verify)
