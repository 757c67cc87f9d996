"""Objects the operator tests create."""

from __future__ import annotations

import base64
import json
from typing import Any

NAMESPACE = "sync"
# Secrets and ConfigMaps a RegistryCredential refers to must opt in (issue 11, point 7).
OPT_IN = {"imagesync.dev/credential": "true"}


def _metadata(name: str, opt_in: bool) -> dict[str, Any]:
    return {"name": name, "labels": dict(OPT_IN)} if opt_in else {"name": name}


def basic_auth_secret(name: str, username: str, password: str, *, opt_in: bool = True) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/basic-auth",
            "metadata": _metadata(name, opt_in),
            "data": {"username": base64.b64encode(username.encode()).decode(),
                     "password": base64.b64encode(password.encode()).decode()}}


def dockerconfig_secret(name: str, registry: str, username: str, password: str, *,
                        opt_in: bool = True) -> dict[str, Any]:
    config = {"auths": {registry: {"auth": base64.b64encode(f"{username}:{password}".encode()).decode()}}}
    return {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/dockerconfigjson",
            "metadata": _metadata(name, opt_in),
            "data": {".dockerconfigjson": base64.b64encode(json.dumps(config).encode()).decode()}}


def ca_configmap(name: str, pem: str, *, key: str = "ca.crt", opt_in: bool = True) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _metadata(name, opt_in), "data": {key: pem}}


def regcred(name: str, registry: str, secret: str | None = None, plain_http: bool = True,
            **spec_fields: Any) -> dict[str, Any]:
    """The test registries are plain HTTP: ``plainHTTP`` (credentials included, said explicitly)."""
    spec: dict[str, Any] = {"registry": registry, **spec_fields}
    if plain_http:
        spec["plainHTTP"] = True
    if secret:
        spec["secretRef"] = {"name": secret}
    return {"apiVersion": "imagesync.dev/v1alpha1", "kind": "RegistryCredential", "metadata": {"name": name},
            "spec": spec}


def isj(name: str, images: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "imagesync.dev/v1alpha1", "kind": "ImageSyncJob", "metadata": {"name": name},
            "spec": {"images": images, **spec}}


