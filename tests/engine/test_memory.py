"""Memory stays bounded by concurrency x buffer size, whatever the layer size (a slow measurement)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cli_helpers import auth_for

from testbed import seed
from testbed.registry import RegistryProcess

MiB = 1024 * 1024


@pytest.mark.slow
def test_512_mib_layer_with_bounded_rss(registry: RegistryProcess, registry2: RegistryProcess,
                                        tmp_path: Path) -> None:
    image = seed.push_image(registry, "big/app", "1", layers=(512 * MiB, 4 * MiB), seed="big")
    (tmp_path / "images.yaml").write_text(yaml.safe_dump({f"{registry.host}/big/app:1": f"{registry2.host}/big/app"}))
    (tmp_path / "auth.yaml").write_text(yaml.safe_dump(auth_for(registry, registry2)))
    completed = subprocess.run(
        [sys.executable, "-m", "imagesync.cli.main", "sync", "--images", str(tmp_path / "images.yaml"),
         "--auth", str(tmp_path / "auth.yaml"), "--proc", "8", "--result-file", str(tmp_path / "result.json")],
        capture_output=True, text=True, timeout=600, check=False)
    assert completed.returncode == 0, completed.stderr[-2000:]
    result = json.loads((tmp_path / "result.json").read_text())
    peak_mib = result["peakRssBytes"] / MiB
    print(f"peak RSS {peak_mib:.1f} MiB for {result['bytesCopied'] / MiB:.0f} MiB copied "
          f"at {result['bytesPerSecond'] / MiB:.1f} MiB/s")
    assert result["bytesCopied"] == image.total_size
    assert peak_mib < 150
    assert seed.get_manifest(registry2, "big/app", "1")[2] == image.digest
