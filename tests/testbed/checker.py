"""Walk a test registry and prove it holds no half-pushed image.

An image is half-pushed when the registry holds a manifest (tagged or not) whose config or layers are
missing from that repository, or an index whose child manifests are missing. Registries accept such
pushes only when they skip their own checks, but a client that pushes a manifest before its blobs (or an
index before its children) leaves exactly this behind when it dies in between. :func:`check_registry`
finds every manifest the registry holds — by the catalog and tag lists, plus, for a
:class:`~testbed.registry.RegistryProcess`, its storage directory, which also lists the untagged
manifests (index children) and the uploads left open — and checks every reference of each.

Deliberately independent of ``imagesync.engine``: plain Registry API calls through :mod:`testbed.seed`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from testbed import seed
from testbed.registry import RegistryProcess

_IMAGE_KEYS = ("config", "layers")


def references(manifest: bytes) -> tuple[list[str], list[str]]:
    """(blob digests, child manifest digests) a manifest document references.

    Images (Docker v2 schema 2, OCI) reference a config and layers; indexes (OCI index, Docker manifest
    list) reference child manifests; a schema 1 manifest references its ``fsLayers``.
    """
    document = json.loads(manifest)
    blobs: list[str] = []
    children: list[str] = []
    if isinstance(document.get("manifests"), list):
        children = [str(child["digest"]) for child in document["manifests"]]
    else:
        if isinstance(document.get("config"), dict):
            blobs.append(str(document["config"]["digest"]))
        blobs += [str(layer["digest"]) for layer in document.get("layers") or []]
        blobs += [str(layer["blobSum"]) for layer in document.get("fsLayers") or []]
    return list(dict.fromkeys(blobs)), list(dict.fromkeys(children))


def missing_references(target: seed.Target, repo: str, manifest: bytes) -> list[str]:
    """What ``manifest`` references that ``repo`` on ``target`` lacks, one line each (empty when whole)."""
    blobs, children = references(manifest)
    missing = [f"blob {digest}" for digest in blobs if not seed.blob_exists(target, repo, digest)]
    missing += [f"child manifest {digest}" for digest in children
                if not seed.manifest_exists(target, repo, digest)]
    return missing


@dataclass
class RegistryReport:
    """What :func:`check_registry` found; ``problems`` empty means no manifest lacks a reference."""

    repositories: list[str] = field(default_factory=list)
    tags: dict[str, dict[str, str]] = field(default_factory=dict)  # repo -> tag -> digest
    manifests: dict[str, set[str]] = field(default_factory=dict)  # repo -> every manifest digest held
    open_uploads: dict[str, int] = field(default_factory=dict)  # repo -> uploads left in storage
    problems: list[str] = field(default_factory=list)

    @property
    def manifest_count(self) -> int:
        return sum(len(digests) for digests in self.manifests.values())


def _storage_root(registry: RegistryProcess) -> Path:
    return registry.storage_dir / "docker" / "registry" / "v2" / "repositories"


def _stored_repositories(registry: RegistryProcess) -> list[str]:
    root = _storage_root(registry)
    if not root.is_dir():
        return []
    found = set()
    # os.walk, not Path.rglob: the registry may still be finishing a request of a killed client and remove an
    # upload directory under the walk (rglob raises FileNotFoundError then; os.walk skips what vanished).
    for directory, subdirectories, _ in os.walk(root):
        if {"_manifests", "_layers", "_uploads"} & set(subdirectories):
            found.add(Path(directory).relative_to(root).as_posix())
        subdirectories[:] = [d for d in subdirectories if not d.startswith("_")]
    return sorted(found)


def _stored_manifests(registry: RegistryProcess, repo: str) -> set[str]:
    revisions = _storage_root(registry) / repo / "_manifests" / "revisions" / "sha256"
    if not revisions.is_dir():
        return set()
    return {f"sha256:{path.name}" for path in revisions.iterdir() if (path / "link").is_file()}


def _stored_uploads(registry: RegistryProcess, repo: str) -> int:
    uploads = _storage_root(registry) / repo / "_uploads"
    try:
        return sum(1 for _ in uploads.iterdir())
    except FileNotFoundError:
        return 0


def check_registry(target: seed.Target, *, extra_manifests: Iterable[tuple[str, str]] = (),
                   registry: RegistryProcess | None = None) -> RegistryReport:
    """Walk every repository, tag and manifest of ``target`` and check each manifest's references.

    ``extra_manifests``: (repo, digest) pairs to look for too (for a registry whose storage cannot be read:
    untagged manifests appear in no listing). ``registry``: the process behind ``target`` when ``target`` is a
    client (to read its storage). A problem is reported for every manifest that names a blob or child
    manifest the repository lacks, and for a tag or stored manifest that cannot be read.
    """
    if registry is None and isinstance(target, RegistryProcess):
        registry = target
    with seed.open_api(target) as api:
        return _check(api, registry, extra_manifests)


def _check(api: seed.RegistryAPI, registry: RegistryProcess | None,
           extra_manifests: Iterable[tuple[str, str]]) -> RegistryReport:
    report = RegistryReport()
    repositories = set(seed.list_repositories(api))
    if registry is not None:
        repositories.update(_stored_repositories(registry))
    extra: dict[str, set[str]] = {}
    for repo, digest in extra_manifests:
        extra.setdefault(repo, set()).add(digest)
        repositories.add(repo)
    report.repositories = sorted(repositories)
    for repo in report.repositories:
        tags: dict[str, str] = {}
        digests: set[str] = set()
        for tag in seed.list_tags(api, repo):
            try:
                _, _, digest = seed.get_manifest(api, repo, tag)
            except seed.SeedError as exc:
                report.problems.append(f"{repo}:{tag}: tagged but unreadable: {exc}")
                continue
            tags[tag] = digest
            digests.add(digest)
        if registry is not None:
            digests |= _stored_manifests(registry, repo)
            report.open_uploads[repo] = _stored_uploads(registry, repo)
        digests |= {d for d in extra.get(repo, set()) if seed.manifest_exists(api, repo, d)}
        report.tags[repo] = tags
        report.manifests[repo] = digests
        for digest in sorted(digests):
            try:
                manifest, _, _ = seed.get_manifest(api, repo, digest)
            except seed.SeedError as exc:
                report.problems.append(f"{repo}@{digest}: held but unreadable: {exc}")
                continue
            for what in missing_references(api, repo, manifest):
                report.problems.append(f"{repo}@{digest} references {what}, which {repo} lacks")
    return report


def assert_no_half_pushed_image(target: seed.Target, *, extra_manifests: Iterable[tuple[str, str]] = (),
                                registry: RegistryProcess | None = None) -> RegistryReport:
    """:func:`check_registry`, failing the test with every problem found."""
    report = check_registry(target, extra_manifests=extra_manifests, registry=registry)
    assert not report.problems, "half-pushed images:\n" + "\n".join(report.problems)
    return report
