"""Operator settings, from the environment (the Deployment sets them) or ``imagesync operator`` flags."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

DEFAULT_WORKER_IMAGE = "ghcr.io/imagesync-dev/imagesync:0.1.0"
DEFAULT_WORKER_SERVICE_ACCOUNT = "imagesync-worker"
# A worker Job that has not finished after this long is stopped by Kubernetes (Job activeDeadlineSeconds):
# a hung registry or a run far bigger than intended must not hold its credentials and a node forever.
# A day is far above any run measured (docs/benchmarks.md); 0 turns the deadline off.
DEFAULT_WORKER_DEADLINE_SECONDS = 24 * 3600
# ttlSecondsAfterFinished is off by default: the operator deletes a finished run's Secret itself and keeps the
# Jobs of spec.historyLimit runs, and a Job deleted before the operator folded its pods' final reports (the
# operator down or slow) would leave that run without an outcome. A value, if set, must leave room for that.
MIN_WORKER_TTL_SECONDS = 3600
DEFAULT_BIND_ADDRESS = "0.0.0.0"  # every interface: Prometheus and the kubelet reach the Pod IP
DEFAULT_METRICS_PORT = 8080
DEFAULT_HEALTH_PORT = 8081
# What spec.worker may choose (issue 11, point 8; controller/policy.py applies them, docs/security.md explains
# them): comma-separated lists, empty by default. An empty image list allows the configured worker image's
# repository; the other empty lists allow nothing besides the configured ServiceAccount. ANY allows anything.
ANY = "*"
ALLOWLIST_ENV = {
    "allowed_worker_images": "IMAGESYNC_ALLOWED_WORKER_IMAGES",
    "allowed_worker_service_accounts": "IMAGESYNC_ALLOWED_WORKER_SERVICE_ACCOUNTS",
    "allowed_toleration_keys": "IMAGESYNC_ALLOWED_TOLERATION_KEYS",
    "allowed_node_selector_keys": "IMAGESYNC_ALLOWED_NODE_SELECTOR_KEYS",
}


class SettingsError(ValueError):
    pass


# kopf runs the (synchronous) handlers in a thread pool. Its default size, min(32, CPUs + 4), follows the CPU
# count of the node (a container sees the node's), and so did the operator's memory and its burst of API calls
# after a restart; a fixed size keeps both the same on every node. docs/operator-scale.md has the figures:
# 1000 ImageSyncJobs, 50 runs starting at once, on 2 cores.
DEFAULT_HANDLER_THREADS = 8
MAX_HANDLER_THREADS = 64
HANDLER_THREADS_ENV = "IMAGESYNC_HANDLER_THREADS"


# Leader election (controller/leader.py, docs/operator.md "High availability"): client-go's defaults. Another
# replica takes over at most LEASE_DURATION + RETRY_PERIOD after the leader's last renewal; the leader gives
# up RENEW_DEADLINE after its last renewal, so it has stopped before anyone else can start.
DEFAULT_LEASE_DURATION_SECONDS = 15
DEFAULT_RENEW_DEADLINE_SECONDS = 10
DEFAULT_RETRY_PERIOD_SECONDS = 2
LEASE_ENV = {
    "lease_duration": "IMAGESYNC_LEASE_DURATION_SECONDS",
    "renew_deadline": "IMAGESYNC_LEASE_RENEW_DEADLINE_SECONDS",
    "retry_period": "IMAGESYNC_LEASE_RETRY_PERIOD_SECONDS",
}


@dataclass(frozen=True)
class LeaseTimings:
    """How long a Lease lasts unrenewed (whole seconds: the Lease's leaseDurationSeconds), how long the leader
    keeps acting without a successful renewal, and how often every replica reads or renews it."""

    lease_duration: int = DEFAULT_LEASE_DURATION_SECONDS
    renew_deadline: float = DEFAULT_RENEW_DEADLINE_SECONDS
    retry_period: float = DEFAULT_RETRY_PERIOD_SECONDS

    def __post_init__(self) -> None:
        # client-go's rule: the leader must give up (renew_deadline) before the others may take over
        # (lease_duration), and must get more than one try (retry_period) in between.
        if not 0 < self.retry_period < self.renew_deadline < self.lease_duration:
            raise SettingsError(
                f"{LEASE_ENV['retry_period']}={self.retry_period:g}, {LEASE_ENV['renew_deadline']}="
                f"{self.renew_deadline:g}, {LEASE_ENV['lease_duration']}={self.lease_duration}: expected "
                "0 < retry period < renew deadline < lease duration")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> LeaseTimings:
        defaults = cls()
        values = {name: positive_seconds(env.get(variable), variable, getattr(defaults, name))
                  for name, variable in LEASE_ENV.items()}
        return cls(**values)


def positive_seconds(value: str | None, name: str, default: int | float) -> int:
    """Whole seconds, at least 1, from an env variable; empty means the default."""
    if value is None or not value.strip():
        return int(default)
    try:
        seconds = int(value.strip())
    except ValueError:
        raise SettingsError(f"{name}={value!r}: expected whole seconds") from None
    if seconds < 1:
        raise SettingsError(f"{name}={value!r}: expected at least 1 second")
    return seconds


def switch_setting(value: str | None, name: str) -> bool | None:
    """true/false from an env variable; empty means undecided (None)."""
    text = (value or "").strip().lower()
    if not text:
        return None
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise SettingsError(f"{name}={value!r}: expected true or false")


def _whole_number(value: str | None, name: str, expected: str) -> int | None:
    """An env variable's whole number; None when it is unset or empty."""
    if value is None or not value.strip():
        return None
    try:
        return int(value.strip())
    except ValueError:
        raise SettingsError(f"{name}={value!r}: expected {expected}") from None


def seconds_setting(value: str | None, name: str, default: int | None, minimum: int = 1) -> int | None:
    """Whole seconds from an env variable: empty means the default, 0 turns the setting off (None)."""
    seconds = _whole_number(value, name, "whole seconds (0 to turn it off)")
    if seconds is None:
        return default
    if seconds == 0:
        return None
    if seconds < minimum:
        raise SettingsError(f"{name}={value!r}: expected 0 (off) or at least {minimum} seconds")
    return seconds


def handler_threads_from(env: Mapping[str, str]) -> int:
    """How many handlers run at once (IMAGESYNC_HANDLER_THREADS): 1 to MAX_HANDLER_THREADS."""
    value = env.get(HANDLER_THREADS_ENV)
    threads = _whole_number(value, HANDLER_THREADS_ENV, "a whole number of threads")
    if threads is None:
        return DEFAULT_HANDLER_THREADS
    if not 1 <= threads <= MAX_HANDLER_THREADS:
        raise SettingsError(f"{HANDLER_THREADS_ENV}={value!r}: expected 1 to {MAX_HANDLER_THREADS} threads")
    return threads


def worker_deadline_from(env: Mapping[str, str]) -> int | None:
    return seconds_setting(env.get("IMAGESYNC_WORKER_DEADLINE_SECONDS"), "IMAGESYNC_WORKER_DEADLINE_SECONDS",
                           DEFAULT_WORKER_DEADLINE_SECONDS)


def worker_ttl_from(env: Mapping[str, str]) -> int | None:
    return seconds_setting(env.get("IMAGESYNC_WORKER_TTL_SECONDS"), "IMAGESYNC_WORKER_TTL_SECONDS", None,
                           MIN_WORKER_TTL_SECONDS)


def list_setting(value: str | None) -> tuple[str, ...]:
    """A comma-separated list from an env variable or flag: entries stripped, empty ones dropped."""
    return tuple(entry.strip() for entry in (value or "").split(",") if entry.strip())


def allowlist_from(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    return list_setting(env.get(ALLOWLIST_ENV[name]))


def port_setting(value: str | int | None, name: str, default: int) -> int:
    """A TCP port from an env variable or flag: empty means the default, 0 turns the endpoint off."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    try:
        port = int(value)
    except ValueError:
        raise SettingsError(f"{name}={value!r}: expected a port number (0 to turn it off)") from None
    if not 0 <= port <= 65535:
        raise SettingsError(f"{name}={value!r}: expected a port number from 0 to 65535")
    return port


def own_image(pod: Mapping[str, object], container: str = "operator") -> str | None:
    """The image of the operator's own container in its Pod (the API's JSON form): the default worker
    image, so one image setting (kustomize's `images:`) covers operator and workers alike."""
    spec = pod.get("spec")
    containers = spec.get("containers") if isinstance(spec, Mapping) else None
    if not isinstance(containers, list) or not containers:
        return None
    chosen = next((c for c in containers if isinstance(c, Mapping) and c.get("name") == container), None)
    if chosen is None and len(containers) == 1 and isinstance(containers[0], Mapping):
        chosen = containers[0]
    image = chosen.get("image") if chosen is not None else None
    return image if isinstance(image, str) and image else None


@dataclass(frozen=True)
class OperatorSettings:
    namespaces: tuple[str, ...] = ()  # empty: every namespace (cluster-wide)
    worker_image: str = DEFAULT_WORKER_IMAGE
    worker_service_account: str = DEFAULT_WORKER_SERVICE_ACCOUNT
    log_format: str = "plain"  # or "json"
    # Read from the process environment when not given, so that code building settings field by field
    # (the operator command's flags) keeps them: IMAGESYNC_WORKER_DEADLINE_SECONDS (default a day; 0: none)
    # and IMAGESYNC_WORKER_TTL_SECONDS (default none; at least an hour), see above.
    worker_deadline_seconds: int | None = field(default_factory=lambda: worker_deadline_from(os.environ))
    worker_ttl_seconds: int | None = field(default_factory=lambda: worker_ttl_from(os.environ))
    bind_address: str = DEFAULT_BIND_ADDRESS  # of the metrics and health endpoints
    metrics_port: int = DEFAULT_METRICS_PORT  # 0: no /metrics
    health_port: int = DEFAULT_HEALTH_PORT  # 0: no health endpoint
    # What spec.worker may choose besides worker_image and worker_service_account (see ALLOWLIST_ENV; read
    # from the process environment when not given, like the deadline above).
    allowed_worker_images: tuple[str, ...] = field(
        default_factory=lambda: allowlist_from(os.environ, "allowed_worker_images"))
    allowed_worker_service_accounts: tuple[str, ...] = field(
        default_factory=lambda: allowlist_from(os.environ, "allowed_worker_service_accounts"))
    allowed_toleration_keys: tuple[str, ...] = field(
        default_factory=lambda: allowlist_from(os.environ, "allowed_toleration_keys"))
    allowed_node_selector_keys: tuple[str, ...] = field(
        default_factory=lambda: allowlist_from(os.environ, "allowed_node_selector_keys"))
    # Leader election among the operator's replicas: None decides by where it runs (on in a Pod; main.py).
    leader_elect: bool | None = None
    lease_timings: LeaseTimings = field(default_factory=LeaseTimings)
    # kopf's handler threads (see DEFAULT_HANDLER_THREADS; read from the process environment when not given).
    handler_threads: int = field(default_factory=lambda: handler_threads_from(os.environ))

    def __post_init__(self) -> None:
        from imagesync.controller.policy import image_rule  # policy builds on this module

        for entry in self.allowed_worker_images:
            image_rule(entry)  # SettingsError naming the entry: the operator refuses to start with it

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> OperatorSettings:
        namespaces = tuple(n.strip() for n in env.get("IMAGESYNC_NAMESPACES", "").split(",") if n.strip())
        log_format = env.get("IMAGESYNC_LOG_FORMAT", "plain").strip() or "plain"
        if log_format not in ("plain", "json"):
            raise SettingsError(f"IMAGESYNC_LOG_FORMAT={log_format!r}: expected 'plain' or 'json'")
        return cls(
            namespaces=namespaces,
            worker_image=env.get("IMAGESYNC_WORKER_IMAGE", "").strip() or DEFAULT_WORKER_IMAGE,
            worker_service_account=env.get("IMAGESYNC_WORKER_SERVICE_ACCOUNT", "").strip()
            or DEFAULT_WORKER_SERVICE_ACCOUNT,
            log_format=log_format,
            worker_deadline_seconds=worker_deadline_from(env),
            worker_ttl_seconds=worker_ttl_from(env),
            bind_address=env.get("IMAGESYNC_BIND_ADDRESS", "").strip() or DEFAULT_BIND_ADDRESS,
            metrics_port=port_setting(env.get("IMAGESYNC_METRICS_PORT"), "IMAGESYNC_METRICS_PORT",
                                      DEFAULT_METRICS_PORT),
            health_port=port_setting(env.get("IMAGESYNC_HEALTH_PORT"), "IMAGESYNC_HEALTH_PORT", DEFAULT_HEALTH_PORT),
            allowed_worker_images=allowlist_from(env, "allowed_worker_images"),
            allowed_worker_service_accounts=allowlist_from(env, "allowed_worker_service_accounts"),
            allowed_toleration_keys=allowlist_from(env, "allowed_toleration_keys"),
            allowed_node_selector_keys=allowlist_from(env, "allowed_node_selector_keys"),
            leader_elect=switch_setting(env.get("IMAGESYNC_LEADER_ELECT"), "IMAGESYNC_LEADER_ELECT"),
            lease_timings=LeaseTimings.from_env(env),
            handler_threads=handler_threads_from(env),
        )
