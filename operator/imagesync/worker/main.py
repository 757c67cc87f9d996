"""``imagesync worker``: one shard of an ImageSyncJob run, inside a worker pod.

Everything it needs comes from the mounted run Secret (``IMAGESYNC_CONFIG_DIR``: ``auth.yaml``,
``images.yaml``, ``options.json``) and the pod's environment (``JOB_COMPLETION_INDEX``,
``IMAGESYNC_SHARDS``, ``POD_NAME``, ``POD_NAMESPACE``). Credentials are read from files only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagesync.cli.main import signature_options
from imagesync.cli.progress import plan_text, summary
from imagesync.engine.config import AuthTable, load_auth, load_images
from imagesync.engine.copy import SyncOptions, sync
from imagesync.engine.errors import ConfigError, ImageSyncError, RuleError
from imagesync.engine.manifest import PlatformFilter
from imagesync.engine.prune import PruneMode
from imagesync.engine.referrers import ReferrerOptions
from imagesync.engine.rules import Rule, parse_rules
from imagesync.engine.signatures import SignatureOptions
from imagesync.engine.stats import ImageOutcome, Outcome, SyncStats
from imagesync.worker.report import (
    REPORT_PLAN_ENTRIES,
    REPORT_SKIPPED_IMAGES,
    Reporter,
    bounded_plan,
    reporter_from_env,
)

log = logging.getLogger("imagesync.worker")

DEFAULT_CONFIG_DIR = "/etc/imagesync/config"
REPORT_INTERVAL = 1.0
TERMINATION_LOG = "/dev/termination-log"


def _int_env(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "")
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ConfigError(f"environment variable {name}={raw!r} is not an integer") from exc


@dataclass(frozen=True)
class WorkerOptions:
    sync: SyncOptions
    default_registry: str | None = None
    default_namespace: str | None = None
    dry_run: bool = False  # spec.dryRun: plan (engine/plan.py) instead of copying


def load_options(path: Path) -> WorkerOptions:
    """``options.json`` of the run Secret (written by the operator's renderer)."""
    if not path.is_file():
        return WorkerOptions(SyncOptions())
    try:
        raw: Any = json.loads(path.read_text())
    except ValueError as exc:
        raise ConfigError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    try:
        sync_options = SyncOptions(
            proc=max(1, int(raw.get("proc", 5))), retries=max(0, int(raw.get("retries", 2))),
            force=bool(raw.get("force", False)), skip_existing=bool(raw.get("skipExisting", False)),
            qps=float(raw["qps"]) if raw.get("qps") else None,
            limit_rate=_limit_rate(raw.get("limitRate")),
            referrers=_referrers(raw.get("referrers")),
            platforms=PlatformFilter(tuple(raw.get("os") or ()), tuple(raw.get("arch") or ()),
                                     tuple(raw.get("platforms") or ())),
            prune=_prune(raw.get("prune")),
            signatures=_signatures(raw, path.parent),
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: invalid option value: {exc}") from exc
    return WorkerOptions(sync_options, raw.get("defaultRegistry") or None, raw.get("defaultNamespace") or None,
                         dry_run=raw.get("dryRun") is True)


def _prune(value: Any) -> PruneMode | None:
    """``prune``: "dry-run" (list) or "delete" (spec.prune.dryRun false); absent or null: no pruning."""
    if value is None:
        return None
    if value == "dry-run":
        return "dry-run"
    if value == "delete":
        return "delete"
    raise ValueError(f'prune must be "dry-run" or "delete", got {value!r}')


def _limit_rate(value: Any) -> float | None:
    """``limitRate``: bytes per second (the operator parsed spec.bandwidth), absent or null: unlimited."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 1 <= value < float("inf"):
        raise ValueError(f"limitRate must be a number of bytes per second >= 1, got {value!r}")
    return float(value)


def _referrers(value: Any) -> ReferrerOptions:
    """``referrers``: {enabled, includeTypes, excludeTypes, optional}; absent: the engine's default (on)."""
    if value is None:
        return ReferrerOptions()
    if not isinstance(value, dict):
        raise ValueError(f"referrers must be an object, got {value!r}")
    lists = {key: value.get(key) or [] for key in ("includeTypes", "excludeTypes")}
    for key, items in lists.items():
        if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
            raise ValueError(f"referrers.{key} must be a list of strings")
    return ReferrerOptions(enabled=bool(value.get("enabled", True)), include=tuple(lists["includeTypes"]),
                           exclude=tuple(lists["excludeTypes"]), optional=bool(value.get("optional", False)))


def _signatures(raw: Mapping[str, Any], config_dir: Path) -> SignatureOptions:
    """``onlySigned`` and ``signatureKeys`` (files of the run Secret, by name): read and checked as the
    sync command's --only-signed and --signature-key are."""
    names = raw.get("signatureKeys") or []
    if not isinstance(names, list) or not all(isinstance(name, str) and name for name in names):
        raise ValueError(f"signatureKeys must be a list of file names, got {names!r}")
    return signature_options(argparse.Namespace(only_signed=bool(raw.get("onlySigned", False)),
                                                signature_key=[str(config_dir / name) for name in names]))


def progress_report(stats: SyncStats, shard: int, *, done: bool = False) -> dict[str, Any]:
    """What a report says: the engine's snapshot, the shard, and the images --only-signed skipped with their
    reasons (the snapshot counts them only; worker/report.py bounds the list)."""
    skipped = [outcome.as_dict() for outcome in stats.refused()[:REPORT_SKIPPED_IMAGES]]
    return dict(stats.snapshot(done=done), shard=shard, skippedImages=skipped)


async def _report_periodically(stats: SyncStats, reporter: Reporter, shard: int) -> None:
    last: dict[str, Any] | None = None
    while True:
        snapshot = progress_report(stats, shard)
        comparable = {k: v for k, v in snapshot.items() if k not in ("durationSeconds", "bytesPerSecond")}
        if comparable != last:
            await reporter.report(snapshot)
            last = comparable
        await asyncio.sleep(REPORT_INTERVAL)


async def run_worker(env: Mapping[str, str]) -> int:
    config_dir = Path(env.get("IMAGESYNC_CONFIG_DIR", DEFAULT_CONFIG_DIR))
    shard_count = max(1, _int_env(env, "IMAGESYNC_SHARDS", 1))
    if shard_count > 1 and "JOB_COMPLETION_INDEX" not in env:
        # Every pod would take shard 0: the cluster ran the Job without completionMode: Indexed.
        raise ConfigError(f"IMAGESYNC_SHARDS is {shard_count} but JOB_COMPLETION_INDEX is not set: "
                          "the Job is not an Indexed Job (Kubernetes 1.22 or later is needed for sharding)")
    shard_index = _int_env(env, "JOB_COMPLETION_INDEX", 0)
    if not 0 <= shard_index < shard_count:
        raise ConfigError(f"shard index {shard_index} is outside 0..{shard_count - 1}")
    auth_path = config_dir / "auth.yaml"
    # Written by the operator from Secrets: no ${VAR} expansion, a '$' in a password stays a '$'.
    auth = load_auth(str(auth_path), expand=False) if auth_path.is_file() else AuthTable({})
    images = load_images(str(config_dir / "images.yaml"))
    options = load_options(config_dir / "options.json")
    rules, rule_errors = parse_rules(images, options.default_registry, options.default_namespace)
    if options.dry_run:
        return await _plan_only(env, rules, rule_errors, auth, options.sync, shard_index, shard_count)

    stats = SyncStats()
    reporter = reporter_from_env(env)
    await reporter.report(progress_report(stats, shard_index))
    ticker = asyncio.create_task(_report_periodically(stats, reporter, shard_index))
    try:
        await sync(rules, rule_errors, auth, options.sync, stats, shard_index=shard_index, shard_count=shard_count)
    finally:
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker
    final = progress_report(stats, shard_index, done=True)
    await reporter.report(final)
    await reporter.aclose()
    print(summary(stats), flush=True)
    _write_termination_message(final)
    # The shard finished and its report says which images failed: a non-zero exit would only make the
    # Job controller start the whole shard again, after the engine's own retry rounds already ran.
    return 0


async def _plan_only(env: Mapping[str, str], rules: Sequence[Rule], rule_errors: Sequence[RuleError],
                     auth: AuthTable, options: SyncOptions, shard_index: int, shard_count: int) -> int:
    """spec.dryRun: this shard's plan instead of its copy (GET and HEAD requests only). The final report
    carries the plan (totals, notes, the first pairs: bounded_plan) and counts the pairs as a run that copied
    nothing would: each pair planned as skipped, each that could not be planned as failed, with its reason."""
    from imagesync.engine.plan import dry_run  # here, not at the top: a shard that copies never plans

    stats = SyncStats()
    reporter = reporter_from_env(env)
    await reporter.report(dict(stats.snapshot(), shard=shard_index))
    plan = await dry_run(rules, rule_errors, auth, options, shard_index=shard_index, shard_count=shard_count)
    for entry in plan.entries:
        outcome: Outcome = "failed" if entry.state == "failed" else "skipped"
        # A reason on a skipped pair is --only-signed's refusal, as in a copy; a copy's note stays a note.
        reason = entry.reason if entry.state in ("failed", "skipped") else ""
        stats.record(ImageOutcome(entry.source, entry.target, outcome, reason))
    stats.images_total = len(plan.entries)
    stats.prune = plan.prune  # spec.prune with spec.dryRun: listed, never deleted
    stats.finished = time.monotonic()
    final = dict(stats.snapshot(done=True), shard=shard_index, plan=bounded_plan(plan.as_dict(REPORT_PLAN_ENTRIES)))
    await reporter.report(final)
    await reporter.aclose()
    print(plan_text(plan), flush=True)
    _write_termination_message(dict(final, plan=plan.totals()))
    return 0


def _write_termination_message(final: Mapping[str, Any]) -> None:
    # The kubelet keeps at most 4 KiB of it: the counts, without the failed and skipped image lists.
    compact = {k: v for k, v in final.items() if k not in ("failedImages", "skippedImages")}
    with contextlib.suppress(OSError):
        if os.path.exists(TERMINATION_LOG):
            Path(TERMINATION_LOG).write_text(json.dumps(compact)[:4000])


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        return asyncio.run(run_worker(os.environ))
    except ImageSyncError as exc:
        print(f"imagesync worker: error: {exc}", file=sys.stderr)
        return 2
