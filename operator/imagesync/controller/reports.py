"""Worker reports are untrusted input (issue 11, points 4 and 5): which reports count, and what one may say.

Each shard of a run merge-patches its report (JSON) into its own key, ``shard-<index>``, of the run's
report ConfigMap (``<run>-report``, controller/render.py). The run's workers may patch that ConfigMap and
nothing else, but they are still untrusted (a custom worker image, a compromised worker), and anyone who
may write ConfigMaps in the namespace can write one. So before a report reaches the status:

- the ConfigMap must be the one the operator created for the run: its name, and ``ownerReferences``
  naming the ImageSyncJob as controller (``controller: true``, kind ImageSyncJob, its uid); the run's
  Job must be controlled by the ImageSyncJob too; labels alone prove nothing;
- the key must be ``shard-<index>`` for an index of the Job (0 to completions - 1, no leading zeros);
- the report must name (``pod: {name, uid}``) a pod controlled by the run's Job at that index: a report
  written by a pod of the shard, or by its retry (the key holds the latest attempt's);
- the report must parse, as a JSON object, into :class:`ShardReport`: counts are non-negative ints up to
  :data:`MAX_COUNT`, bytes and rates finite non-negative numbers up to :data:`MAX_BYTES` /
  :data:`MAX_RATE` (NaN, Infinity and 400-digit numbers are refused, never converted), ``done`` is a
  bool, a ``shard`` that is present names the key's own index. Anything else makes the whole
  report invalid: it is logged and ignored, the previous numbers of that shard are simply not there.
- text and lists are bounded rather than refused (a real worker's failure reason may be long): strings
  are clipped (:data:`MAX_REF`, :data:`MAX_REASON`), at most :data:`MAX_FAILED_IMAGES` failures and
  :data:`MAX_LOGINS` login results are kept, and a login result counts only for a registry the run's
  credentials cover (``status.credentials``); others are dropped.
- ``registryQuotas`` (the request quota each registry announced: ``{host: {remaining, limit,
  windowSeconds}}``) must be an object of objects; at most :data:`MAX_QUOTAS` registries are kept, host
  names are clipped, an entry whose numbers are not finite non-negative numbers is dropped, and numbers
  are clipped to :data:`MAX_COUNT` (remaining, limit) and :data:`MAX_WINDOW` (windowSeconds): a quota is
  advice for the reader, never a reason to lose a report's counts.

Unknown keys are ignored. Everything here is pure; the handlers do the listing and the logging.
"""

from __future__ import annotations

import json
import math
import threading
from collections import OrderedDict
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

# What one shard's report may take: the worker stays far below (worker/report.py's budget); a ConfigMap
# holds at most 1 MiB in all.
MAX_RAW = 256 * 1024
MAX_COUNT = 100_000_000  # images or blobs of one shard
MAX_BYTES = 2**53  # 8 PiB per shard: exact in a float, and a sum over shards still fits an int64
MAX_RATE = 1e12  # 1 TB/s
MAX_REF = 512  # an image reference (source or target)
MAX_REASON = 1000  # a failure reason
MAX_FAILED_IMAGES = 100  # failures listed per shard (the count travels in failedImagesTotal)
MAX_LOGINS = 64  # login results per list
MAX_LOG = 200  # what of a bad value a log line shows
MAX_QUOTAS = 32  # registries whose announced quota one report may carry
MAX_HOST = 255  # a registry host[:port]
MAX_WINDOW = 366 * 86400.0  # seconds: a quota window longer than a year is clipped to one
MAX_POD_NAME = 253  # a Pod's name (a DNS subdomain)
MAX_UID = 64  # a uid (Kubernetes writes 36 characters)
SHARD_KEY_PREFIX = "shard-"  # controller/render.py writes the same prefix (REPORT_KEY_PREFIX)
MAX_PLAN_ENTRIES = 20  # pairs a dry run's plan lists (its counts cover them all)
MAX_PLAN_NOTES = 8
PLAN_STATES = ("up-to-date", "copy", "skipped", "failed")
PLAN_COUNT_KEYS = ("pairs", "upToDate", "toCopy", "skipped", "failed", "blobsToCopy")
MAX_PRUNE_ENTRIES = 10  # tags a prune report lists (spec.prune; its counts cover them all)
PRUNE_ACTIONS = ("deleted", "wouldDelete", "kept", "error")
PRUNE_COUNT_KEYS = ("deleted", "wouldDelete", "kept", "errors")

COUNT_KEYS = ("imagesTotal", "imagesSynced", "imagesSkipped", "imagesFailed", "blobsCopied", "blobsMounted",
              "blobsSkipped", "failedImagesTotal", "referrersCopied", "referrersSkipped", "referrersFailed",
              "imagesSkippedUnsigned")


class ReportError(ValueError):
    """Why a report is ignored (one line, clipped)."""


@dataclass(frozen=True)
class FailedImage:
    """An image that failed, or one spec.onlySigned skipped (unsigned, signature does not verify), and why."""

    source: str
    target: str
    reason: str


@dataclass(frozen=True)
class RegistryQuota:
    """The request quota a registry announced to one shard (remaining in its window; limit and window when
    announced)."""

    registry: str
    remaining: int
    limit: int | None = None
    window_seconds: float | None = None

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"registry": self.registry, "remaining": self.remaining}
        if self.limit is not None:
            data["limit"] = self.limit
        if self.window_seconds is not None:
            data["windowSeconds"] = self.window_seconds
        return data


@dataclass(frozen=True)
class ShardReport:
    counts: Mapping[str, int]
    bytes_copied: int
    bytes_per_second: float
    done: bool
    failed_images: tuple[FailedImage, ...] = ()
    logins_accepted: tuple[str, ...] = ()
    logins_rejected: tuple[str, ...] = ()
    registry_quotas: tuple[RegistryQuota, ...] = ()
    skipped_images: tuple[FailedImage, ...] = ()  # skipped with a reason: spec.onlySigned's refusals
    dropped: tuple[str, ...] = field(default=(), compare=False)  # what was clipped or dropped, for the log
    # The pod that wrote the report, as the report says (the handlers check it against the Job's pods).
    pod_name: str | None = None
    pod_uid: str | None = None
    plan: Mapping[str, Any] | None = None  # a dry run's plan (spec.dryRun), validated by _plan
    prune: Mapping[str, Any] | None = None  # what spec.prune deleted or would delete, validated by _prune

    def as_dict(self) -> dict[str, Any]:
        """The shape :func:`imagesync.controller.status.fold_progress` folds (the worker's, known keys only)."""
        return {
            **self.counts, "bytesCopied": self.bytes_copied, "bytesPerSecond": self.bytes_per_second,
            "done": self.done,
            "failedImages": [{"source": f.source, "target": f.target, "reason": f.reason}
                             for f in self.failed_images],
            "skippedImages": [{"source": s.source, "target": s.target, "reason": s.reason}
                              for s in self.skipped_images],
            "loginsAccepted": list(self.logins_accepted), "loginsRejected": list(self.logins_rejected),
            "registryQuotas": [quota.as_dict() for quota in self.registry_quotas],
            **({"plan": dict(self.plan)} if self.plan is not None else {}),
            **({"prune": dict(self.prune)} if self.prune is not None else {}),
        }


def clip(text: str, limit: int = MAX_LOG) -> str:
    """One line of at most ``limit`` characters (for logs and status)."""
    line = " ".join(text.split()) if ("\n" in text or "\r" in text) else text
    return line if len(line) <= limit else line[:limit - 1] + "…"


def _show(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**40:
        try:
            return f"an integer of {len(str(abs(value)))} digits"
        except ValueError:  # more digits than Python converts (4300 by default)
            return f"an integer of about {int(value.bit_length() * 0.30103) + 1} digits"
    return clip(repr(value), 60)


def _refuse_constant(name: str) -> Any:
    raise ReportError(f"non-finite number {name}")


def _count(data: Mapping[str, Any], key: str, limit: int = MAX_COUNT) -> int:
    value = data.get(key, 0)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ReportError(f"{key} is not an integer: {_show(value)}")
    if not 0 <= value <= limit:
        raise ReportError(f"{key} is out of range 0..{limit}: {_show(value)}")
    return value


def _number(data: Mapping[str, Any], key: str, limit: float) -> float:
    value = data.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ReportError(f"{key} is not a number: {_show(value)}")
    # Compare before converting: float() of a 400-digit integer raises OverflowError.
    if isinstance(value, int):
        if not 0 <= value <= limit:
            raise ReportError(f"{key} is out of range 0..{limit:g}: {_show(value)}")
        return float(value)
    if not math.isfinite(value) or not 0.0 <= value <= limit:
        raise ReportError(f"{key} is not a finite number in 0..{limit:g}: {_show(value)}")
    return value


def _string(value: Any, what: str, limit: int, dropped: list[str]) -> str:
    if not isinstance(value, str):
        raise ReportError(f"{what} is not a string: {_show(value)}")
    if len(value) > limit:
        dropped.append(f"{what} clipped from {len(value)} characters")
        return value[:limit - 1] + "…"
    return value


def _list(data: Mapping[str, Any], key: str, limit: int, dropped: list[str]) -> list[Any]:
    value = data.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise ReportError(f"{key} is not a list: {_show(value)}")
    if len(value) > limit:
        dropped.append(f"{key}: {len(value) - limit} of {len(value)} entries dropped")
        return value[:limit]
    return value


def _logins(data: Mapping[str, Any], key: str, registries: Collection[str], dropped: list[str]) -> tuple[str, ...]:
    kept: list[str] = []
    for entry in _list(data, key, MAX_LOGINS, dropped):
        name = _string(entry, f"an entry of {key}", MAX_REF, dropped)
        if name not in registries:
            dropped.append(f"{key}: {clip(name, 80)!r} is not a registry of this run's credentials")
        elif name not in kept:
            kept.append(name)
    return tuple(kept)


def _quota_number(value: Any, limit: float) -> float | None:
    """A finite number >= 0 clipped to ``limit``; None when it is not one (ints compared before converting)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, int):
        return float(min(value, int(limit))) if value >= 0 else None
    return min(value, limit) if math.isfinite(value) and value >= 0 else None


def _quotas(data: Mapping[str, Any], dropped: list[str]) -> tuple[RegistryQuota, ...]:
    value = data.get("registryQuotas")
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise ReportError(f"registryQuotas is not an object: {_show(value)}")
    items = list(value.items())
    if len(items) > MAX_QUOTAS:
        dropped.append(f"registryQuotas: {len(items) - MAX_QUOTAS} of {len(items)} registries dropped")
        items = items[:MAX_QUOTAS]
    kept: list[RegistryQuota] = []
    for host, quota in items:
        name = _string(host, "a registryQuotas registry", MAX_HOST, dropped)
        if not isinstance(quota, dict):
            dropped.append(f"registryQuotas: {clip(name, 80)!r} is not an object")
            continue
        remaining = _quota_number(quota.get("remaining"), MAX_COUNT)
        limit = _quota_number(quota["limit"], MAX_COUNT) if quota.get("limit") is not None else None
        window = _quota_number(quota["windowSeconds"], MAX_WINDOW) if quota.get("windowSeconds") is not None \
            else None
        if remaining is None or (quota.get("limit") is not None and limit is None) \
                or (quota.get("windowSeconds") is not None and window is None):
            dropped.append(f"registryQuotas: {clip(name, 80)!r} has a number that is not finite and >= 0")
            continue
        kept.append(RegistryQuota(name, int(remaining), None if limit is None else int(limit), window))
    return tuple(kept)


def _pod(data: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """The ``pod: {name, uid}`` the report names, or (None, None) when it names none."""
    value = data.get("pod")
    if value is None:
        return None, None
    if not isinstance(value, dict):
        raise ReportError(f"pod is not an object: {_show(value)}")
    name, uid = value.get("name"), value.get("uid")
    if not isinstance(name, str) or not 0 < len(name) <= MAX_POD_NAME:
        raise ReportError(f"pod name is not a pod's name: {_show(name)}")
    if not isinstance(uid, str) or not 0 < len(uid) <= MAX_UID:
        raise ReportError(f"pod uid is not a uid: {_show(uid)}")
    return name, uid


def shard_of_key(key: str, shards: int) -> int | None:
    """The shard index a report ConfigMap key names (``shard-<index>``, 0 <= index < ``shards``, written
    as the worker writes it), or None for any other key."""
    digits = key.removeprefix(SHARD_KEY_PREFIX)
    if digits == key or not digits.isascii() or not digits.isdigit() or len(digits) > 6 \
            or (digits != "0" and digits.startswith("0")):
        return None
    index = int(digits)
    return index if index < shards else None


def _optional_object(data: Mapping[str, Any], key: str) -> dict[str, Any] | None:
    """``data[key]``: None when absent, else an object (a ReportError otherwise)."""
    value = data.get(key)
    if value is not None and not isinstance(value, dict):
        raise ReportError(f"{key} is not an object: {_show(value)}")
    return value


def _boolean(data: Mapping[str, Any], key: str, default: bool, where: str) -> bool:
    if not isinstance(value := data.get(key, default), bool):
        raise ReportError(f"{where} {key} is not a boolean: {_show(value)}")
    return value


def _plan(data: Mapping[str, Any], dropped: list[str]) -> dict[str, Any] | None:
    """A dry run's ``plan`` (spec.dryRun): counts as the report's (ints up to MAX_COUNT, bytesToCopy up to
    MAX_BYTES), ``exact`` a bool, a state of PLAN_STATES per pair; notes and pairs capped, text clipped."""
    value = _optional_object(data, "plan")
    if value is None:
        return None
    plan: dict[str, Any] = {key: _count(value, key) for key in PLAN_COUNT_KEYS}
    plan["bytesToCopy"] = int(_number(value, "bytesToCopy", MAX_BYTES))
    plan["exact"] = _boolean(value, "exact", False, "plan")
    plan["notes"] = [_string(note, "a plan note", MAX_REASON, dropped)
                     for note in _list(value, "notes", MAX_PLAN_NOTES, dropped)]
    entries = []
    for item in _list(value, "entries", MAX_PLAN_ENTRIES, dropped):
        if not isinstance(item, dict):
            raise ReportError(f"a plan entry is not an object: {_show(item)}")
        if item.get("state") not in PLAN_STATES:
            raise ReportError(f"a plan entry's state is not one of {', '.join(PLAN_STATES)}: "
                              f"{_show(item.get('state'))}")
        entry: dict[str, Any] = {"source": _string(item.get("source", ""), "plan source", MAX_REF, dropped),
                                 "target": _string(item.get("target", ""), "plan target", MAX_REF, dropped),
                                 "state": item["state"]}
        if "bytes" in item:
            entry["bytes"] = int(_number(item, "bytes", MAX_BYTES))
        if "blobs" in item:
            entry["blobs"] = _count(item, "blobs")
        if isinstance(item.get("exact"), bool):
            entry["exact"] = item["exact"]
        if item.get("reason"):
            entry["reason"] = _string(item["reason"], "plan reason", MAX_REASON, dropped)
        entries.append(entry)
    plan["entries"] = entries
    return plan


def _prune(data: Mapping[str, Any], dropped: list[str]) -> dict[str, Any] | None:
    """``prune`` (spec.prune): counts as the report's, ``dryRun`` a bool, at most MAX_PRUNE_ENTRIES entries of
    {repository, tag, action (one of PRUNE_ACTIONS), reason}, text clipped."""
    value = _optional_object(data, "prune")
    if value is None:
        return None
    prune: dict[str, Any] = {key: _count(value, key) for key in PRUNE_COUNT_KEYS}
    prune["dryRun"] = _boolean(value, "dryRun", True, "prune")
    entries = []
    for item in _list(value, "entries", MAX_PRUNE_ENTRIES, dropped):
        if not isinstance(item, dict) or item.get("action") not in PRUNE_ACTIONS:
            raise ReportError(f"a prune entry is not an object with an action of {', '.join(PRUNE_ACTIONS)}: "
                              f"{_show(item)}")
        entry = {"repository": _string(item.get("repository", ""), "prune repository", MAX_REF, dropped),
                 "tag": _string(item.get("tag", ""), "prune tag", MAX_REF, dropped), "action": item["action"]}
        if item.get("reason"):
            entry["reason"] = _string(item["reason"], "prune reason", MAX_REASON, dropped)
        entries.append(entry)
    prune["entries"] = entries
    return prune


def parse_report(raw: str | bytes, *, registries: Collection[str], index: int | None = None) -> ShardReport:
    """The validated report of one shard (a report ConfigMap's value); :class:`ReportError` when it must be
    ignored.

    ``registries``: the registries whose credentials the run used (a login result for any other is
    dropped). ``index``: the shard the key names (a report naming another shard is refused).
    """
    if len(raw) > MAX_RAW:
        raise ReportError(f"report of {len(raw)} bytes is larger than {MAX_RAW}")
    try:
        data = json.loads(raw, parse_constant=_refuse_constant)
    except ReportError:
        raise
    except (ValueError, RecursionError) as exc:  # ValueError: bad JSON, or an int of more than 4300 digits
        raise ReportError(f"not valid JSON: {clip(str(exc), 120)}") from None
    if not isinstance(data, dict):
        raise ReportError(f"not a JSON object but {type(data).__name__}")
    dropped: list[str] = []
    counts = {key: _count(data, key) for key in COUNT_KEYS}
    bytes_copied = int(_number(data, "bytesCopied", MAX_BYTES))
    rate = _number(data, "bytesPerSecond", MAX_RATE)
    done = data.get("done", False)
    if not isinstance(done, bool):
        raise ReportError(f"done is not a boolean: {_show(done)}")
    plan = _plan(data, dropped)
    if "shard" in data:
        shard = _count(data, "shard")
        if index is not None and shard != index:
            raise ReportError(f"report of shard {shard} under the key of shard {index}")
    pod_name, pod_uid = _pod(data)
    return ShardReport(counts, bytes_copied, rate, done, _images(data, "failedImages", dropped),
                       _logins(data, "loginsAccepted", registries, dropped),
                       _logins(data, "loginsRejected", registries, dropped), _quotas(data, dropped),
                       _images(data, "skippedImages", dropped),
                       tuple(dropped), pod_name=pod_name, pod_uid=pod_uid, plan=plan, prune=_prune(data, dropped))


def _images(data: Mapping[str, Any], key: str, dropped: list[str]) -> tuple[FailedImage, ...]:
    """failedImages or skippedImages: at most MAX_FAILED_IMAGES {source, target, reason}, text clipped."""
    images = []
    for item in _list(data, key, MAX_FAILED_IMAGES, dropped):
        if not isinstance(item, dict):
            raise ReportError(f"an entry of {key} is not an object: {_show(item)}")
        images.append(FailedImage(
            _string(item.get("source", ""), f"{key} source", MAX_REF, dropped),
            _string(item.get("target", ""), f"{key} target", MAX_REF, dropped),
            _string(item.get("reason", ""), f"{key} reason", MAX_REASON, dropped)))
    return tuple(images)


# -- which pods, jobs and report ConfigMaps count -------------------------------------------------


def controller_uid(obj: Mapping[str, Any], kind: str) -> str | None:
    """The uid of ``obj``'s controller when it is of ``kind`` (ownerReferences, controller: true)."""
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if isinstance(ref, Mapping) and ref.get("controller") is True:
            return str(ref.get("uid")) if ref.get("kind") == kind and ref.get("uid") else None
    return None


def controlled_by(obj: Mapping[str, Any], kind: str, uid: str | None) -> bool:
    return bool(uid) and controller_uid(obj, kind) == uid


def run_registries(status: Mapping[str, Any]) -> frozenset[str]:
    """The registries whose credentials a run used (``status.credentials``: [{registry, name}])."""
    return frozenset(str(entry["registry"]) for entry in status.get("credentials") or []
                     if isinstance(entry, Mapping) and isinstance(entry.get("registry"), str))


class Once:
    """Remembers the last ``size`` keys seen: a bad report or a foreign object is logged once, not on
    every event that re-reads it."""

    def __init__(self, size: int = 4096) -> None:
        self._seen: OrderedDict[Any, None] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()  # kopf runs synchronous handlers in threads

    def first(self, key: Any) -> bool:
        with self._lock:
            if key in self._seen:
                self._seen.move_to_end(key)
                return False
            self._seen[key] = None
            if len(self._seen) > self._size:
                self._seen.popitem(last=False)
            return True
