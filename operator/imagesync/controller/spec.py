"""ImageSyncJob spec -> a validated :class:`JobSpec`, or a :class:`SpecError` a user can act on.

The CRD schema rejects most bad input at the API server; this checks what a schema cannot express
(the rule language, cron syntax) and everything again, because the operator must never crash on an
object that reached it some other way (an older CRD, an emulator, a disabled validation).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from croniter import CroniterBadDateError, croniter

from imagesync.engine.errors import clip
from imagesync.engine.reference import Repository
from imagesync.engine.rules import parse_rules
from imagesync.engine.transport import parse_rate

DEFAULT_HISTORY_LIMIT = 3
_PLATFORM = re.compile(r"[a-z0-9]+/[a-z0-9_]+(/[a-z0-9]+)?")
# A rule as a condition message quotes it: a 1 MiB rule must not become a 1 MiB condition and event.
_RULE_CHARS = 160
_REASON_CHARS = 240
# What the API server's Pod validation accepts (apimachinery's IsDNS1123Subdomain, IsQualifiedName,
# IsValidLabelValue and resource.Quantity): the schema cannot say it, and a Job the API server refuses
# would be retried forever instead of reported once.
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_QUALIFIED_NAME = re.compile(r"([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                             r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
_LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?")
# Artifact-type patterns per spec.referrers list (a media type is at most 255 characters, RFC 6838).
_MAX_TYPES = 32
_MAX_TYPE_CHARS = 255
_MAX_BANDWIDTH = 1e15  # bytes/second: above it (or infinite, "1e400M") is no limit in disguise
_QUANTITY = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+|[KMGTPE]i|[numkMGTPE])?")
# spec.signatureKeys: a few public keys (a key rotation needs two; more is a mistake, not a policy).
MAX_SIGNATURE_KEYS = 8
DEFAULT_SIGNATURE_KEY = "cosign.pub"  # the key `cosign generate-key-pair k8s://NAMESPACE/NAME` writes
_SECRET_KEY = re.compile(r"[-._a-zA-Z0-9]+")  # a Secret's data key (apimachinery's IsConfigMapKey)


class SpecError(ValueError):
    def __init__(self, field_path: str, message: str) -> None:
        super().__init__(f"{field_path}: {message}")
        self.field_path = field_path


@dataclass(frozen=True)
class WorkerSpec:
    image: str | None = None
    service_account: str | None = None
    resources: Mapping[str, Any] = field(default_factory=dict)
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True)
class ReferrersSpec:
    """spec.referrers: signatures, attestations and SBOMs copied with their images (on by default)."""

    enabled: bool = True
    include_types: tuple[str, ...] = ()  # artifact types as shell patterns; empty: every type
    exclude_types: tuple[str, ...] = ()
    optional: bool = False  # a failed artifact copy is counted, its image still succeeds


@dataclass(frozen=True)
class PruneSpec:
    """spec.prune: delete target tags the source no longer has (engine/prune.py says which). Off by default;
    on, every run only lists them (status.prune) until dryRun is set to false: the confirmation."""

    enabled: bool = False
    dry_run: bool = True


@dataclass(frozen=True)
class SecretKeyRef:
    """One key of a Secret in the ImageSyncJob's namespace."""

    name: str
    key: str


@dataclass(frozen=True)
class JobSpec:
    images: Mapping[str, object]
    default_registry: str | None = None
    default_namespace: str | None = None
    credentials: tuple[str, ...] | None = None  # None: every RegistryCredential of the namespace
    platforms: tuple[str, ...] = ()
    concurrency: int = 5
    retries: int = 2
    qps: float = 0.0
    force: bool = False
    skip_existing: bool = False  # missing-only: one tags/list per target repository, tags present not compared
    dry_run: bool = False  # spec.dryRun: the workers plan (engine/plan.py) and write nothing to any registry
    parallelism: int = 1
    suspend: bool = False
    schedule: str | None = None
    history_limit: int = DEFAULT_HISTORY_LIMIT  # finished runs whose Job (and Pods) are kept
    repositories: tuple[Repository, ...] = ()  # every source and target repository the rules name
    worker: WorkerSpec = field(default_factory=WorkerSpec)
    referrers: ReferrersSpec = field(default_factory=ReferrersSpec)
    bandwidth: float | None = None  # bytes/second per registry and worker pod (spec.bandwidth), None: unlimited
    only_signed: bool = False  # spec.onlySigned, or implied by spec.signatureKeys
    signature_keys: tuple[SecretKeyRef, ...] = ()  # PEM public keys cosign signatures must verify with
    prune: PruneSpec = field(default_factory=PruneSpec)


def _int(spec: Mapping[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = spec.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"spec.{name}", f"must be an integer, got {value!r}")
    if not low <= value <= high:
        raise SpecError(f"spec.{name}", f"must be between {low} and {high}, got {value}")
    return value


def _bool(spec: Mapping[str, Any], name: str) -> bool:
    value = spec.get(name, False)
    if not isinstance(value, bool):
        raise SpecError(f"spec.{name}", f"must be true or false, got {value!r}")
    return value


def _strings(value: Any, path: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise SpecError(path, "must be a list of non-empty strings")
    return tuple(value)


def parse_job_spec(spec: Mapping[str, Any] | None) -> JobSpec:
    if not isinstance(spec, Mapping):
        raise SpecError("spec", "missing")
    images = spec.get("images")
    if not isinstance(images, Mapping) or not images:
        raise SpecError("spec.images", "must map at least one source to its target(s)")

    default = spec.get("defaultTarget")
    default_registry = default_namespace = None
    if default is not None:
        if not isinstance(default, Mapping) or not all(isinstance(default.get(k), str) and default.get(k)
                                                       for k in ("registry", "namespace")):
            raise SpecError("spec.defaultTarget", "needs both registry and namespace")
        default_registry, default_namespace = default["registry"], default["namespace"]

    rules, rule_errors = parse_rules(dict(images), default_registry, default_namespace)
    if rule_errors:
        listed = "; ".join(f"rule {clip(e.rule_text, _RULE_CHARS)!r}: {clip(e.reason, _REASON_CHARS)}"
                           for e in rule_errors[:5])
        more = f" (and {len(rule_errors) - 5} more)" if len(rule_errors) > 5 else ""
        raise SpecError("spec.images", f"{listed}{more}")

    credentials = None
    if spec.get("credentials") is not None:
        credentials = _strings(spec["credentials"], "spec.credentials")
    platforms = _strings(spec.get("platforms") or [], "spec.platforms")
    for platform in platforms:
        if not _PLATFORM.fullmatch(platform):
            raise SpecError("spec.platforms", f"{platform!r} is not os/arch[/variant] (e.g. linux/arm64/v8)")

    qps = spec.get("qps", 0)
    if isinstance(qps, bool) or not isinstance(qps, int | float) or qps < 0 or not math.isfinite(qps):
        raise SpecError("spec.qps", f"must be a number >= 0, got {qps!r}")

    schedule = spec.get("schedule")
    if schedule is not None and (not isinstance(schedule, str) or not croniter.is_valid(schedule)):
        raise SpecError("spec.schedule", f"{clip(str(schedule), _RULE_CHARS)!r} is not a valid cron expression")
    if schedule is not None:
        try:
            croniter(schedule).get_next(float)
        except CroniterBadDateError:  # e.g. "0 0 31 2 *": valid fields, but no such date ever
            raise SpecError("spec.schedule", f"{schedule!r} never fires (no date matches it)") from None

    return JobSpec(
        images=dict(images), default_registry=default_registry, default_namespace=default_namespace,
        credentials=credentials, platforms=platforms,
        concurrency=_int(spec, "concurrency", 5, 1, 256), retries=_int(spec, "retries", 2, 0, 20),
        qps=float(qps), force=_bool(spec, "force"), skip_existing=_bool(spec, "skipExisting"),
        dry_run=_bool(spec, "dryRun"),
        parallelism=_int(spec, "parallelism", 1, 1, 100),
        suspend=_bool(spec, "suspend"), schedule=schedule,
        history_limit=_int(spec, "historyLimit", DEFAULT_HISTORY_LIMIT, 1, 100),
        repositories=tuple(repo for rule in rules for repo in (rule.source.repo, rule.target.repo)),
        worker=_worker(spec.get("worker")),
        referrers=_referrers(spec.get("referrers")),
        bandwidth=_bandwidth(spec.get("bandwidth")),
        only_signed=_bool(spec, "onlySigned") or bool(spec.get("signatureKeys")),
        signature_keys=_signature_keys(spec.get("signatureKeys")),
        prune=_prune(spec.get("prune")),
    )


def _signature_keys(value: Any) -> tuple[SecretKeyRef, ...]:
    """spec.signatureKeys: [{secretKeyRef: {name, key}}], key defaulting to cosign.pub."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise SpecError("spec.signatureKeys", "must be a list of {secretKeyRef: {name, key}}")
    if len(value) > MAX_SIGNATURE_KEYS:
        raise SpecError("spec.signatureKeys", f"at most {MAX_SIGNATURE_KEYS} keys, got {len(value)}")
    refs: list[SecretKeyRef] = []
    for i, entry in enumerate(value):
        path = f"spec.signatureKeys[{i}].secretKeyRef"
        ref = entry.get("secretKeyRef") if isinstance(entry, Mapping) else None
        if not isinstance(ref, Mapping):
            raise SpecError(path, "is required: {name: SECRET, key: KEY}")
        name, key = ref.get("name"), ref.get("key", DEFAULT_SIGNATURE_KEY)
        if not (isinstance(name, str) and len(name) <= 253 and _DNS_SUBDOMAIN.fullmatch(name)):
            raise SpecError(f"{path}.name", f"{clip(str(name), 80)!r} is not a Secret name (lower-case DNS name)")
        if not (isinstance(key, str) and len(key) <= 253 and _SECRET_KEY.fullmatch(key)):
            raise SpecError(f"{path}.key", f"{clip(str(key), 80)!r} is not a Secret key (letters, digits, '-', "
                                           f"'_', '.')")
        if SecretKeyRef(name, key) in refs:
            raise SpecError(path, f"Secret {name!r} key {key!r} is listed twice")
        refs.append(SecretKeyRef(name, key))
    return tuple(refs)


def _referrers(value: Any) -> ReferrersSpec:
    if value is None:
        return ReferrersSpec()
    if not isinstance(value, Mapping):
        raise SpecError("spec.referrers", "must be an object (enabled, includeTypes, excludeTypes, optional)")
    flags = {}
    for key, default in (("enabled", True), ("optional", False)):
        flags[key] = value.get(key, default)
        if not isinstance(flags[key], bool):
            raise SpecError(f"spec.referrers.{key}", f"must be true or false, got {clip(repr(flags[key]), 60)}")
    types = {}
    for key in ("includeTypes", "excludeTypes"):
        raw = value.get(key)
        types[key] = () if raw is None else _strings(raw, f"spec.referrers.{key}")
        if len(types[key]) > _MAX_TYPES:
            raise SpecError(f"spec.referrers.{key}", f"at most {_MAX_TYPES} artifact types, got {len(types[key])}")
        for pattern in types[key]:
            if len(pattern) > _MAX_TYPE_CHARS or any(c.isspace() for c in pattern):
                raise SpecError(f"spec.referrers.{key}", f"{clip(pattern, 60)!r} is not an artifact type or "
                                                         f"pattern (e.g. application/vnd.dev.cosign.*)")
    return ReferrersSpec(enabled=flags["enabled"], include_types=types["includeTypes"],
                         exclude_types=types["excludeTypes"], optional=flags["optional"])


def _prune(value: Any) -> PruneSpec:
    if value is None:
        return PruneSpec()
    if not isinstance(value, Mapping):
        raise SpecError("spec.prune", "must be an object (enabled, dryRun)")
    unknown = sorted(str(key) for key in value if key not in ("enabled", "dryRun"))
    if unknown:
        raise SpecError("spec.prune", f"unknown key(s) {clip(', '.join(unknown), 80)} (known: enabled, dryRun)")
    flags = {}
    for key, default in (("enabled", False), ("dryRun", True)):
        flags[key] = value.get(key, default)
        if not isinstance(flags[key], bool):
            raise SpecError(f"spec.prune.{key}", f"must be true or false, got {clip(repr(flags[key]), 60)}")
    return PruneSpec(enabled=flags["enabled"], dry_run=flags["dryRun"])


def _bandwidth(value: Any) -> float | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise SpecError("spec.bandwidth", f"must be a string such as 50MiB/s, got {clip(repr(value), 60)}")
    try:
        rate = parse_rate(value)
    except ValueError as exc:
        raise SpecError("spec.bandwidth", str(exc)) from None
    if not math.isfinite(rate) or rate > _MAX_BANDWIDTH:
        raise SpecError("spec.bandwidth", f"{clip(value, 60)!r} is more than 1 PB/s: omit spec.bandwidth for no limit")
    return rate


def _worker(worker: Any) -> WorkerSpec:
    if worker is None:
        return WorkerSpec()
    if not isinstance(worker, Mapping):
        raise SpecError("spec.worker", "must be an object")
    for key in ("image", "serviceAccountName"):
        if key in worker and not (isinstance(worker[key], str) and worker[key].strip()):
            raise SpecError(f"spec.worker.{key}", "must be a non-empty string")
    for key in ("resources", "nodeSelector"):
        if key in worker and not isinstance(worker[key], Mapping):
            raise SpecError(f"spec.worker.{key}", "must be an object")
    tolerations = worker.get("tolerations") or []
    if not isinstance(tolerations, list) or not all(isinstance(t, Mapping) for t in tolerations):
        raise SpecError("spec.worker.tolerations", "must be a list of tolerations")
    _check_pod_fields(worker, tolerations)
    return WorkerSpec(
        image=worker.get("image"), service_account=worker.get("serviceAccountName"),
        resources=dict(worker.get("resources") or {}), node_selector=dict(worker.get("nodeSelector") or {}),
        tolerations=tuple(dict(t) for t in tolerations),
    )


def _check_pod_fields(worker: Mapping[str, Any], tolerations: list[Mapping[str, Any]]) -> None:
    """What the API server would refuse in the worker Pod: refused here, once, with the field named."""
    account = worker.get("serviceAccountName")
    if isinstance(account, str) and not (len(account) <= 253 and _DNS_SUBDOMAIN.fullmatch(account)):
        raise SpecError("spec.worker.serviceAccountName",
                        f"{clip(account, _RULE_CHARS)!r} is not a valid ServiceAccount name (lower-case DNS name)")
    for key, value in (worker.get("nodeSelector") or {}).items():
        if not (isinstance(key, str) and len(key) <= 316 and _QUALIFIED_NAME.fullmatch(key)):
            raise SpecError("spec.worker.nodeSelector", f"key {clip(str(key), _RULE_CHARS)!r} is not a valid "
                                                        f"label key")
        if not (isinstance(value, str) and _LABEL_VALUE.fullmatch(value)):
            raise SpecError(f"spec.worker.nodeSelector[{key}]",
                            f"{clip(str(value), _RULE_CHARS)!r} is not a valid label value")
    for section in ("limits", "requests"):
        amounts = (worker.get("resources") or {}).get(section) or {}
        if not isinstance(amounts, Mapping):
            raise SpecError(f"spec.worker.resources.{section}", "must be an object")
        for name, amount in amounts.items():
            text = str(amount) if isinstance(amount, int) and not isinstance(amount, bool) else amount
            if not (isinstance(text, str) and len(text) <= 64 and _QUANTITY.fullmatch(text)):
                raise SpecError(f"spec.worker.resources.{section}.{clip(str(name), 63)}",
                                f"{clip(str(amount), _RULE_CHARS)!r} is not a quantity (e.g. 500m, 1, 256Mi)")
    for i, toleration in enumerate(tolerations):
        path = f"spec.worker.tolerations[{i}]"
        key, operator = toleration.get("key") or "", toleration.get("operator") or "Equal"
        if key and not (isinstance(key, str) and _QUALIFIED_NAME.fullmatch(key)):
            raise SpecError(f"{path}.key", f"{clip(str(key), _RULE_CHARS)!r} is not a valid taint key")
        if not key and operator != "Exists":
            raise SpecError(f"{path}.operator", "must be Exists when key is empty")
        if operator == "Exists" and toleration.get("value"):
            raise SpecError(f"{path}.value", "must be empty when operator is Exists")
        if toleration.get("tolerationSeconds") is not None and toleration.get("effect") != "NoExecute":
            raise SpecError(f"{path}.tolerationSeconds", "is only allowed with effect NoExecute")
