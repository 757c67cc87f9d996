"""Objects the operator tests create."""

from __future__ import annotations

import base64
import json
from typing import Any

NAMESPACE = "sync"


def basic_auth_secret(name: str, username: str, password: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/basic-auth", "metadata": {"name": name},
            "data": {"username": base64.b64encode(username.encode()).decode(),
                     "password": base64.b64encode(password.encode()).decode()}}


def dockerconfig_secret(name: str, registry: str, username: str, password: str) -> dict[str, Any]:
    config = {"auths": {registry: {"auth": base64.b64encode(f"{username}:{password}".encode()).decode()}}}
    return {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/dockerconfigjson",
            "metadata": {"name": name},
            "data": {".dockerconfigjson": base64.b64encode(json.dumps(config).encode()).decode()}}


def regcred(name: str, registry: str, secret: str | None = None, insecure: bool = True) -> dict[str, Any]:
    spec: dict[str, Any] = {"registry": registry, "insecure": insecure}
    if secret:
        spec["secretRef"] = {"name": secret}
    return {"apiVersion": "imagesync.dev/v1alpha1", "kind": "RegistryCredential", "metadata": {"name": name},
            "spec": spec}


def isj(name: str, images: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "imagesync.dev/v1alpha1", "kind": "ImageSyncJob", "metadata": {"name": name},
            "spec": {"images": images, **spec}}


