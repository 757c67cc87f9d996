"""Run ``imagesync sync`` in-process on rule/auth files written for a test, and read its result file."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from imagesync.cli.main import main
from testbed.registry import RegistryProcess


def auth_entry(registry: RegistryProcess, *, with_credentials: bool = True) -> dict[str, Any]:
    """The auth-file entry that reaches a test registry (plain HTTP, with credentials, needs ``plainHTTP``)."""
    entry: dict[str, Any] = {}
    if registry.tls:
        assert registry.ca_file is not None
        entry["caFile"] = str(registry.ca_file)
    else:
        entry["plainHTTP"] = True
    if with_credentials and registry.username:
        entry["username"] = registry.username
        entry["password"] = registry.password
    return entry


def auth_for(*registries: RegistryProcess) -> dict[str, Any]:
    return {r.host: auth_entry(r) for r in registries}


def run_sync(tmp_path: Path, images: Mapping[str, Any], auth: Mapping[str, Any] | None = None,
             *flags: str, name: str = "run") -> tuple[int, dict[str, Any]]:
    workdir = tmp_path / name
    workdir.mkdir(parents=True, exist_ok=True)
    images_file = workdir / "images.yaml"
    images_file.write_text(yaml.safe_dump(dict(images)))
    argv = ["sync", "--images", str(images_file), "--result-file", str(workdir / "result.json")]
    if auth is not None:
        auth_file = workdir / "auth.yaml"
        auth_file.write_text(yaml.safe_dump(dict(auth)))
        argv += ["--auth", str(auth_file)]
    code = main([*argv, *flags])
    result_file = workdir / "result.json"
    result = json.loads(result_file.read_text()) if result_file.exists() else {}
    return code, result


def mutating_requests(registry: RegistryProcess, since: int) -> list[tuple[str, str]]:
    """Requests that would change the registry: uploads, mounts, manifest pushes."""
    return [(r.method, r.path) for r in registry.request_log(since)
            if r.method in ("POST", "PUT", "PATCH", "DELETE")]
