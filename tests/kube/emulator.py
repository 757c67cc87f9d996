"""kmock 0.8's KubernetesEmulator, closer to a real API server where the operator depends on it.

Stock kmock is a database over HTTP (see ../shared/notes/kubernetes-api-in-tests.md). This adds what
kopf and our handlers rely on:

- server-managed metadata: uid, creationTimestamp, resourceVersion (bumped on every write),
  generation (bumped on spec changes), names from generateName;
- the status subresource: a write to /status changes only status, a write to the object never does;
- 201 Created on create;
- replace (PUT) of a named object, and merge patches, with optimistic concurrency: 409 Conflict when the
  body's resourceVersion is not the stored one (the Lease elector's updates and the operator's status
  writes rely on it);
- garbage collection: deleting an owner deletes what names it in ownerReferences (cascading).

Everything else (admission, schema validation, pruning, RBAC) stays absent: the schema tests and the
e2e suite against a real cluster cover those.
"""

from __future__ import annotations

import copy
import datetime as dt
import itertools
import secrets
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import kmock
import yaml
from kmock._internal import enums, references, rendering

ROOT = Path(__file__).resolve().parents[2]


def _now() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


@attrs.define(eq=False)
class Emulator(kmock.KubernetesEmulator):
    _rv: Iterator[int] = attrs.field(factory=lambda: itertools.count(1000), init=False)
    # (plural, dotted path) an older API server does not know and silently drops on create, e.g.
    # ("jobs", "spec.completionMode") before Kubernetes 1.21 (checked against a real 1.20 server).
    dropped_fields: set[tuple[str, str]] = attrs.field(factory=set, init=False)

    def declare_crds(self, directory: Path = ROOT / "crds") -> None:
        """Register the project's CRDs from crds/*.yaml, as an API server learns them."""
        for path in sorted(directory.glob("*.yaml")):
            if path.name == "kustomization.yaml":  # kustomize's list of them, not a CRD
                continue
            crd = yaml.safe_load(path.read_text())
            spec = crd["spec"]
            for version in spec["versions"]:
                info = self.resources[f"{spec['group']}/{version['name']}/{spec['names']['plural']}"]
                info.kind = spec["names"]["kind"]
                info.singular = spec["names"]["singular"]
                info.namespaced = spec["scope"] == "Namespaced"
                info.shortnames = set(spec["names"].get("shortNames", []))
                info.categories = set(spec["names"].get("categories", []))
                info.verbs = {"get", "list", "watch", "create", "update", "patch", "delete"}
                info.subresources = set((version.get("subresources") or {}).keys())

    def _has_status_subresource(self, resource: references.resource | None) -> bool:
        if resource is None:
            return False
        for known in self.resources:
            if known == resource:
                return "status" in self.resources[known].subresources
        return False

    def _stored(self, request: rendering.Request) -> dict[str, Any] | None:
        key = (request.resource, request.namespace, request.name)
        if key in self._objects and not self._objects[key].deleted:
            raw: dict[str, Any] = self._objects[key].raw
            return raw
        return None

    def _rewrite(self, request: rendering.Request) -> rendering.Request:
        """Add what the API server manages to a write before kmock stores it."""
        if request.resource is None or not isinstance(request.data, dict):
            return request
        data = copy.deepcopy(request.data)
        if request.action == enums.action.CREATE:
            meta = data.setdefault("metadata", {})
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = meta["generateName"] + secrets.token_hex(3)
            meta.setdefault("namespace", request.namespace) if request.namespace else None
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = _now()
            meta["resourceVersion"] = str(next(self._rv))
            meta["generation"] = 1
            if self._has_status_subresource(request.resource):
                data.pop("status", None)
            for plural, path in self.dropped_fields:
                if request.resource.plural == plural:
                    *parents, leaf = path.split(".")
                    node = data
                    for part in parents:
                        node = node.get(part) if isinstance(node, dict) else None
                    if isinstance(node, dict):
                        node.pop(leaf, None)
            return _replace_data(request, data)
        if request.action == enums.action.UPDATE:
            stored = self._stored(request)
            subresource_status = self._has_status_subresource(request.resource)
            if request.subresource == "status":
                data = {"status": data.get("status")}
            elif subresource_status:
                data.pop("status", None)
            meta = data.setdefault("metadata", {})
            for managed in ("uid", "creationTimestamp", "generation"):
                meta.pop(managed, None)
            meta["resourceVersion"] = str(next(self._rv))
            if stored is not None and "spec" in data and request.subresource != "status":
                merged_spec = _merge(copy.deepcopy(stored.get("spec") or {}), data["spec"])
                if merged_spec != stored.get("spec"):
                    meta["generation"] = int(stored["metadata"].get("generation", 1)) + 1
            return _replace_data(request, data)
        return request

    def _stale_json_patch(self, request: rendering.Request) -> bool:
        """A JSON patch whose ``test`` of resourceVersion fails: a real server answers 422, kopf refetches."""
        if request.action != enums.action.UPDATE or not isinstance(request.data, list):
            return False
        stored = self._stored(request) or {}
        current = (stored.get("metadata") or {}).get("resourceVersion")
        return any(op.get("op") == "test" and op.get("path") == "/metadata/resourceVersion"
                   and op.get("value") != current for op in request.data if isinstance(op, dict))

    def _stale_merge_patch(self, request: rendering.Request) -> bool:
        """A merge patch (of the object or its status) naming a resourceVersion that is no longer the stored
        one: a real server answers 409 Conflict (the operator's status writes rely on it)."""
        if request.action != enums.action.UPDATE or not isinstance(request.data, dict):
            return False
        wanted = (request.data.get("metadata") or {}).get("resourceVersion")
        if not wanted:
            return False
        stored = self._stored(request) or {}
        return bool(wanted != (stored.get("metadata") or {}).get("resourceVersion"))

    async def _replace(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        """PUT: the whole object replaced (stock kmock routes no PUT), status kept where a subresource owns
        it, server-managed metadata kept, and the resourceVersion in the body a precondition."""
        def failure(code: int, reason: str, message: str) -> aiohttp.web.Response:
            return aiohttp.web.json_response({"apiVersion": "v1", "kind": "Status", "status": "Failure",
                                              "code": code, "reason": reason, "message": message}, status=code)

        assert request.resource is not None and isinstance(request.data, dict)
        async with self._lock:
            stored = self._stored(request)
            if stored is None:
                return failure(404, "NotFound", f"{request.resource.plural} {request.name!r} not found")
            meta = stored.get("metadata") or {}
            wanted = (request.data.get("metadata") or {}).get("resourceVersion")
            if wanted and wanted != meta.get("resourceVersion"):
                return failure(409, "Conflict", f"Operation cannot be fulfilled on {request.resource.plural} "
                               f"{request.name!r}: the object has been modified; please apply your changes to "
                               "the latest version and try again")
            data = copy.deepcopy(request.data)
            new_meta = data.setdefault("metadata", {})
            for managed in ("uid", "creationTimestamp", "generation", "namespace", "name"):
                if managed in meta:
                    new_meta[managed] = meta[managed]
            new_meta["resourceVersion"] = str(next(self._rv))
            if self._has_status_subresource(request.resource):
                data["status"] = copy.deepcopy(stored.get("status"))
            if data.get("spec") != stored.get("spec"):
                new_meta["generation"] = int(meta.get("generation", 1)) + 1
            key = (request.resource, request.namespace, request.name)
            self._objects[key].create(data)  # a new version in the object's history
            raw = self._objects[key].raw
            await self._buses[request.resource].put({"type": "MODIFIED", "object": raw})
            return aiohttp.web.json_response(raw)

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        if (request.method == enums.method.PUT and request.resource is not None and request.name is not None
                and request.subresource is None and isinstance(request.data, dict)):
            return await self._replace(request)
        if self._stale_merge_patch(request):
            return aiohttp.web.json_response(
                {"apiVersion": "v1", "kind": "Status", "status": "Failure", "code": 409, "reason": "Conflict",
                 "message": f"Operation cannot be fulfilled on {request.resource and request.resource.plural} "
                            f"{request.name!r}: the object has been modified; please apply your changes to the "
                            "latest version and try again"}, status=409)
        if self._stale_json_patch(request):
            return aiohttp.web.json_response(
                {"apiVersion": "v1", "kind": "Status", "status": "Failure", "code": 422, "reason": "Invalid",
                 "message": "the object has been modified; resourceVersion test failed"}, status=422)
        if request.action == enums.action.UPDATE and isinstance(request.data, list):
            request.data.append({"op": "replace", "path": "/metadata/resourceVersion",
                                 "value": str(next(self._rv))})
        deleted_uid = None
        if request.action == enums.action.DELETE and request.name is not None:
            stored = self._stored(request)
            deleted_uid = (stored or {}).get("metadata", {}).get("uid")
        response = await super()._handle(self._rewrite(request))
        if request.action == enums.action.CREATE and response.status == 200 and not response.prepared:
            response.set_status(201)
        if deleted_uid and response.status < 300:
            await self._collect_garbage({deleted_uid})
        return response

    async def _collect_garbage(self, owners: set[str]) -> None:
        """Delete every object owned by a deleted one, then what those owned, like the GC controller."""
        while owners:
            doomed = []
            async with self._lock:
                for key, obj in list(self._objects.items()):
                    if obj.deleted:
                        continue
                    refs = (obj.raw.get("metadata") or {}).get("ownerReferences") or []
                    if any(ref.get("uid") in owners for ref in refs):
                        doomed.append((key, obj))
                owners = set()
                for (resource, _, _), obj in doomed:
                    raw = obj.raw
                    owners.add(raw["metadata"].get("uid"))
                    obj.delete()
                    await self._buses[resource].put({"type": "DELETED", "object": raw})

    def get(self, resource: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The stored object (for assertions), or None."""
        key = (references.resource(resource), namespace, name)
        if key in self._objects and not self._objects[key].deleted:
            raw: dict[str, Any] = self._objects[key].raw
            return raw
        return None

    def list(self, resource: str, namespace: str | None = None) -> list[dict[str, Any]]:
        wanted = references.resource(resource)
        return [obj.raw for (res, ns, _), obj in self._objects.items()
                if res == wanted and not obj.deleted and (namespace is None or ns == namespace)]


def _merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    for key, value in patch.items():
        if value is None:
            base.pop(key, None)
        elif isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


def _replace_data(request: rendering.Request, data: dict[str, Any]) -> rendering.Request:
    # The Request is frozen and attrs.evolve() loses what kmock's reactions match on; its payload dict
    # is the one kmock stores, so it is rewritten in place.
    request.data.clear()
    request.data.update(data)
    return request
