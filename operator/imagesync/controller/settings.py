"""Operator settings, from the environment (the Deployment sets them) or ``imagesync operator`` flags."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_WORKER_IMAGE = "ghcr.io/imagesync-dev/imagesync:0.1.0"
DEFAULT_WORKER_SERVICE_ACCOUNT = "imagesync-worker"


class SettingsError(ValueError):
    pass


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
        )
