"""Operator settings, from the environment (the Deployment sets them) or ``imagesync operator`` flags."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_WORKER_IMAGE = "ghcr.io/imagesync-dev/imagesync:0.1.0"
DEFAULT_WORKER_SERVICE_ACCOUNT = "imagesync-worker"


class SettingsError(ValueError):
    pass


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
