"""``skopeo sync`` and ``imagesync sync`` on the same source give identical target manifests."""

from __future__ import annotations

from pathlib import Path

from cli_helpers import auth_for, run_sync

from testbed import seed
from testbed.registry import RegistryProcess
from testbed.skopeo import Skopeo


def test_same_manifests_as_skopeo_sync(registry: RegistryProcess, registry2: RegistryProcess, skopeo: Skopeo,
                                       tmp_path: Path) -> None:
    seed.push_image(registry, "parity/plain", "1", seed="p1")
    seed.push_image(registry, "parity/plain", "2", layers=(3000, 5000), seed="p2")
    seed.push_image(registry, "parity/oci", "1", oci=True, seed="o")
    seed.push_index(registry, "parity/multi", "1", oci=True, seed="m")
    seed.push_index(registry, "parity/list", "1", oci=False, seed="l")
    repos = ("plain", "oci", "multi", "list")

    skopeo.sync({registry.host: {"images": {f"parity/{r}": [] for r in repos}}}, f"{registry2.host}/by-skopeo")
    code, result = run_sync(tmp_path, {f"{registry.host}/parity/{r}": f"{registry2.host}/by-imagesync/{r}"
                                       for r in repos}, auth_for(registry, registry2))
    assert code == 0, result

    compared = 0
    for repo in repos:
        tags = sorted(seed.list_tags(registry2, f"by-skopeo/{repo}"))
        assert tags == sorted(seed.list_tags(registry2, f"by-imagesync/{repo}"))
        for tag in tags:
            theirs = skopeo.inspect_raw(f"{registry2.host}/by-skopeo/{repo}:{tag}")
            ours = skopeo.inspect_raw(f"{registry2.host}/by-imagesync/{repo}:{tag}")
            assert ours == theirs, f"{repo}:{tag}"
            compared += 1
    assert compared == 5
