"""Platform filters see variants (``arm/v7``, ``arm:v7``) and OS versions (``windows:10.0.20348.1``), and an
ImageSyncJob's ``platforms`` reaches the worker's filter (pure: no registry)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from imagesync.controller.render import worker_options
from imagesync.controller.spec import parse_job_spec
from imagesync.engine.manifest import OCI_INDEX, Manifest, PlatformFilter, filter_index, sha256_digest
from imagesync.worker.main import load_options

PLATFORMS: list[dict[str, Any]] = [
    {"os": "linux", "architecture": "amd64"},
    {"os": "linux", "architecture": "arm", "variant": "v6"},
    {"os": "linux", "architecture": "arm", "variant": "v7"},
    {"os": "linux", "architecture": "arm64", "variant": "v8"},
    {"os": "windows", "architecture": "amd64", "os.version": "10.0.17763.1"},
    {"os": "windows", "architecture": "amd64", "os.version": "10.0.20348.1"},
]


def platform_index() -> Manifest:
    entries = [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "size": 500 + i,
                "digest": "sha256:" + f"{i:x}" * 64, "platform": platform}
               for i, platform in enumerate(PLATFORMS)]
    data = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}).encode()
    return Manifest(data, OCI_INDEX, sha256_digest(data))


def kept(platforms: PlatformFilter) -> list[dict[str, Any]]:
    return [child.platform or {} for child in filter_index(platform_index(), platforms).children()]


@pytest.mark.parametrize(("platforms", "expected"), [
    # ImageSyncJob spec.platforms: os/arch[/variant]
    (PlatformFilter(platforms=("linux/arm/v7",)), [2]),
    (PlatformFilter(platforms=("linux/arm/v6", "linux/arm64/v8")), [1, 3]),
    (PlatformFilter(platforms=("linux/arm",)), [1, 2]),  # no variant named: every variant
    # image-syncer's --arch arch[:variant] and --os os[:osversion]
    (PlatformFilter(arches=("arm:v7",)), [2]),
    (PlatformFilter(arches=("arm",)), [1, 2]),
    (PlatformFilter(oses=("windows:10.0.20348.1",)), [5]),
    (PlatformFilter(oses=("windows",)), [4, 5]),
    (PlatformFilter(oses=("linux",), arches=("arm:v6", "amd64")), [0, 1]),
], ids=lambda value: repr(value) if isinstance(value, PlatformFilter) else None)
def test_variants_and_os_versions_select_exactly(platforms: PlatformFilter, expected: list[int]) -> None:
    assert kept(platforms) == [PLATFORMS[i] for i in expected]


@pytest.mark.parametrize("platforms", [PlatformFilter(platforms=("linux/arm/v5",)),
                                       PlatformFilter(arches=("arm:v5",)),
                                       PlatformFilter(oses=("windows:10.0.14393.1",))])
def test_a_variant_or_os_version_the_index_lacks_matches_nothing(platforms: PlatformFilter) -> None:
    assert not any(platforms.matches(p) for p in PLATFORMS)


IMAGES = {"a.example.com/x:1": "b.example.com/x"}


def test_spec_platforms_reach_the_worker_filter(tmp_path: Path) -> None:
    spec = parse_job_spec({"images": IMAGES, "platforms": ["linux/arm/v7", "windows/amd64"]})
    options_file = tmp_path / "options.json"
    options_file.write_text(json.dumps(worker_options(spec)))
    platforms = load_options(options_file).sync.platforms
    assert platforms.active
    assert kept(platforms) == [PLATFORMS[i] for i in (2, 4, 5)]
    # Without spec.platforms the worker copies the index whole.
    options_file.write_text(json.dumps(worker_options(parse_job_spec({"images": IMAGES}))))
    assert not load_options(options_file).sync.platforms.active
