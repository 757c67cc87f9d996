"""Config files copied from image-syncer's README run unchanged but for the registry host names.

The README's registries (quay.io, Huawei SWR) are out of reach here (loopback only), so each host name is
replaced by a local registry's address; comments, layout, auth keys and rule forms stay as written.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from imagesync.cli.main import main
from testbed import seed
from testbed.registry import RegistryProcess

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "image-syncer"


@pytest.mark.parametrize("form", ["json", "yaml"])
def test_readme_auth_and_images_files_run(form: str, registry: RegistryProcess, registry2: RegistryProcess,
                                          make_registry, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    registry3 = make_registry()
    hosts = {"quay.io": registry.host, "swr.cn-north-4.myhuaweicloud.com": registry2.host,
             "swr.cn-east-3.myhuaweicloud.com": registry3.host}
    for name in ("auth", "images"):
        text = (EXAMPLES / f"{name}.{form}").read_text()
        for public, local in hosts.items():
            text = text.replace(public, local)
        (tmp_path / f"{name}.{form}").write_text(text)
    seed.push_image(registry, "coreos/kube-rbac-proxy", "v1.1", seed="krp11")
    seed.push_image(registry, "coreos/kube-rbac-proxy", "v1.0", seed="krp10")
    seed.push_image(registry2, "org-ss/canary-consumer", "1", seed="canary")

    code = main(["sync", f"--auth={tmp_path / f'auth.{form}'}", f"--images={tmp_path / f'images.{form}'}",
                 "--proc=6", "--retries=3", "--result-file", str(tmp_path / "result.json")])
    # The README's registry3 has no auth entry: image-syncer's `insecure` is needed for plain HTTP, so the
    # copy to it fails with a clear connection error and everything else succeeds.
    targets = {t for t in seed.list_tags(registry, "ruohe/kube-rbac-proxy")}
    assert targets == {"v1.0", "v1.1"}
    assert seed.list_tags(registry, "ruohe/kube-rbac-proxy1") == ["v1.1"]
    assert seed.list_tags(registry, "ruohe/kube-rbac-proxy2") == ["v1.1"]
    assert code == 1
