"""How a worker tells the operator about its progress: an annotation on its own Pod.

Least privilege: the worker's ServiceAccount may only get/patch Pods in its namespace; it reads no
Secrets and writes no custom resources. The operator watches the Pods of its Jobs and folds every
shard's annotation into the ImageSyncJob status. Plain httpx keeps kubernetes out of the worker image's
start-up path.
"""

from __future__ import annotations

import json
import logging
import os
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import httpx

log = logging.getLogger(__name__)

PROGRESS_ANNOTATION = "imagesync.dev/progress"
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


class Reporter(Protocol):
    async def report(self, progress: Mapping[str, Any]) -> None: ...

    async def aclose(self) -> None: ...


class NullReporter:
    """Outside a pod: nothing to annotate."""

    async def report(self, progress: Mapping[str, Any]) -> None:
        return None

    async def aclose(self) -> None:
        return None


class PodAnnotationReporter:
    def __init__(self, api_url: str, namespace: str, pod: str, token: str | None,
                 verify: ssl.SSLContext | bool) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.AsyncClient(base_url=api_url, headers=headers, verify=verify, timeout=10.0)
        self._path = f"/api/v1/namespaces/{namespace}/pods/{pod}"

    async def report(self, progress: Mapping[str, Any]) -> None:
        body = {"metadata": {"annotations": {PROGRESS_ANNOTATION: json.dumps(progress, separators=(",", ":"))}}}
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
    """The reporter a pod's environment asks for (``IMAGESYNC_REPORT=pod-annotation``)."""
    if env.get("IMAGESYNC_REPORT") != "pod-annotation":
        return NullReporter()
    pod, namespace = env.get("POD_NAME"), env.get("POD_NAMESPACE")
    sa_dir = Path(env.get("IMAGESYNC_SA_DIR", SERVICE_ACCOUNT_DIR))
    api = env.get("IMAGESYNC_KUBE_API")
    if not api and env.get("KUBERNETES_SERVICE_HOST"):
        host = env["KUBERNETES_SERVICE_HOST"]
        host = f"[{host}]" if ":" in host else host
        api = f"https://{host}:{env.get('KUBERNETES_SERVICE_PORT', '443')}"
    if not (pod and namespace and api):
        log.warning("IMAGESYNC_REPORT=pod-annotation but POD_NAME, POD_NAMESPACE or the API server address "
                    "is missing: progress will not be reported")
        return NullReporter()
    token_file = sa_dir / "token"
    token = token_file.read_text().strip() if token_file.is_file() else None
    ca_file = sa_dir / "ca.crt"
    verify: ssl.SSLContext | bool = True
    if api.startswith("https://") and ca_file.is_file():
        verify = ssl.create_default_context(cafile=str(ca_file))
    return PodAnnotationReporter(api, namespace, pod, token, verify)
