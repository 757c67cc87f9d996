"""The few Kubernetes API calls the handlers make, as plain dicts (sync client: handlers run in threads)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import Any

import kubernetes
import urllib3

GROUP, VERSION = "imagesync.dev", "v1alpha1"
JOBS_PLURAL, CREDS_PLURAL = "imagesyncjobs", "registrycredentials"

Obj = dict[str, Any]

# An API server that is restarting, overloaded or behind a load balancer answers these now and then; the same
# call a moment later usually goes through (issue 12, point 5: tests/kube/test_flaky_api_flow.py). Every call here
# may be repeated: reads, creates by fixed name (409 after a lost answer means it exists), deletes (404 is
# fine), merge patches without a resourceVersion, and status patches conditioned on one (if a lost answer had
# applied it, the repeat meets 409 and the caller reads again). Handlers run in threads: sleeping blocks no
# event loop.
TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})
RETRY_DELAYS = (0.2, 0.5, 1.0, 2.0, 4.0)


def retrying(call: Callable[..., Any], *args: Any, conflict: bool = False, **kwargs: Any) -> Any:
    """``call(*args, **kwargs)``, again after each transient failure (and, with ``conflict``, after a 409
    Conflict) until RETRY_DELAYS run out; any other error at once."""
    for delay in (*RETRY_DELAYS, None):
        try:
            return call(*args, **kwargs)
        except kubernetes.client.ApiException as exc:
            if delay is None or not (exc.status in TRANSIENT_STATUSES or (conflict and exc.status == 409)):
                raise
        except urllib3.exceptions.HTTPError:  # the connection failed or dropped: no answer at all
            if delay is None:
                raise
        time.sleep(delay)
    raise AssertionError("unreachable: the last attempt returns or raises")


class StatusConflict(Exception):
    """A conditioned status write met a newer object: read it again and decide again."""


class Kube:
    def __init__(self, api_client: kubernetes.client.ApiClient) -> None:
        self.api_client = api_client
        self.core = kubernetes.client.CoreV1Api(api_client)
        self.batch = kubernetes.client.BatchV1Api(api_client)
        self.custom = kubernetes.client.CustomObjectsApi(api_client)
        self.rbac = kubernetes.client.RbacAuthorizationV1Api(api_client)

    @staticmethod
    def _json(response: Any) -> Obj:
        data = response.data
        parsed: Obj = json.loads(data) if data else {}
        return parsed

    def _get(self, call: Any, *args: Any) -> Obj | None:
        try:
            return self._json(retrying(call, *args, _preload_content=False))
        except kubernetes.client.ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def get_pod(self, namespace: str, name: str) -> Obj | None:
        return self._get(self.core.read_namespaced_pod, name, namespace)

    def get_secret(self, namespace: str, name: str) -> Obj | None:
        return self._get(self.core.read_namespaced_secret, name, namespace)

    def get_configmap(self, namespace: str, name: str) -> Obj | None:
        return self._get(self.core.read_namespaced_config_map, name, namespace)

    def get_job(self, namespace: str, name: str) -> Obj | None:
        return self._get(self.batch.read_namespaced_job, name, namespace)

    def get_custom(self, plural: str, namespace: str, name: str) -> Obj | None:
        """An ImageSyncJob (JOBS_PLURAL) or a RegistryCredential (CREDS_PLURAL)."""
        return self._get(self.custom.get_namespaced_custom_object, GROUP, VERSION, namespace, plural, name)

    def list_regcreds(self, namespace: str) -> list[Obj]:
        result = self._json(retrying(self.custom.list_namespaced_custom_object,
                                     GROUP, VERSION, namespace, CREDS_PLURAL, _preload_content=False))
        items: list[Obj] = result.get("items") or []
        return items

    def _list(self, call: Any, namespace: str, labels: Mapping[str, str]) -> list[Obj]:
        selector = ",".join(f"{k}={v}" for k, v in labels.items())
        result = self._json(retrying(call, namespace, label_selector=selector, _preload_content=False))
        # Filter again: an emulator may ignore the selector, and a wrong object here would corrupt status.
        return [obj for obj in result.get("items") or []
                if all((obj.get("metadata", {}).get("labels") or {}).get(k) == v for k, v in labels.items())]

    def list_pods(self, namespace: str, labels: Mapping[str, str]) -> list[Obj]:
        return self._list(self.core.list_namespaced_pod, namespace, labels)

    def list_jobs(self, namespace: str, labels: Mapping[str, str]) -> list[Obj]:
        return self._list(self.batch.list_namespaced_job, namespace, labels)

    def _calls(self, kind: str) -> tuple[Any, Any]:
        """(create, delete) for the kinds the operator writes: its per-run Secrets, Jobs, report ConfigMaps
        and the Roles and RoleBindings that let a run's workers patch their report ConfigMap."""
        calls = {"Secret": (self.core.create_namespaced_secret, self.core.delete_namespaced_secret),
                 "Job": (self.batch.create_namespaced_job, self.batch.delete_namespaced_job),
                 "ConfigMap": (self.core.create_namespaced_config_map, self.core.delete_namespaced_config_map),
                 "Role": (self.rbac.create_namespaced_role, self.rbac.delete_namespaced_role),
                 "RoleBinding": (self.rbac.create_namespaced_role_binding, self.rbac.delete_namespaced_role_binding)}
        if kind not in calls:
            raise ValueError(f"cannot write {kind}")
        return calls[kind]

    def create(self, obj: Mapping[str, Any]) -> Obj | None:
        """Create; the object as the API server stored it (defaulted, pruned), or None when it already
        exists (a re-delivered event or a restart: not an error)."""
        create, _ = self._calls(obj["kind"])
        try:
            response = retrying(create, obj["metadata"]["namespace"], dict(obj), _preload_content=False)
        except kubernetes.client.ApiException as exc:
            if exc.status == 409:
                return None
            raise
        return self._json(response)

    def delete(self, obj: Mapping[str, Any]) -> None:
        """Delete with its dependents (background propagation, as kubectl does); gone already is fine."""
        _, delete = self._calls(obj["kind"])
        try:
            retrying(delete, obj["metadata"]["name"], obj["metadata"]["namespace"],
                     body=kubernetes.client.V1DeleteOptions(propagation_policy="Background"), _preload_content=False)
        except kubernetes.client.ApiException as exc:
            if exc.status != 404:
                raise

    def patch_status(self, plural: str, namespace: str, name: str, status: Mapping[str, Any],
                     resource_version: str) -> None:
        """Write ``status`` only if the object is still at ``resource_version`` (the version the status was
        decided on); else raise StatusConflict. A merge patch replaces the conditions list whole, so an
        unconditioned write decided on an older read (a delayed answer, a stale watch event, a frozen
        leader waking up) would undo a newer one."""
        try:
            retrying(self.custom.patch_namespaced_custom_object_status, GROUP, VERSION, namespace, plural,
                     name, {"metadata": {"resourceVersion": resource_version}, "status": dict(status)},
                     _preload_content=False)
        except kubernetes.client.ApiException as exc:
            if exc.status == 409:
                raise StatusConflict(f"{plural} {namespace}/{name} changed since resourceVersion "
                                     f"{resource_version}") from exc
            raise
