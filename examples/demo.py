"""The main job on an embedded default, no cluster: two throw-away local registries, a small seeded
source, `imagesync sync` on an image-syncer style config, then the same again to show the incremental skip.

Run through `bash examples/demo.sh` (it sets up the environment first).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from testbed import seed
from testbed.registry import RegistryProcess


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="imagesync-demo-") as tmp:
        work = Path(tmp)
        with RegistryProcess(work / "source") as source, RegistryProcess(work / "target") as target:
            print(f"source registry: {source.url}\ntarget registry: {target.url}\n")
            seed.push_index(source, "demo/hello", "1.0", seed="hello")             # two-platform OCI index
            seed.push_image(source, "demo/tools", "1", layers=(2 << 20, 1 << 20), seed="t1")
            seed.push_image(source, "demo/tools", "2", layers=(2 << 20, 1 << 20), seed="t2")
            seed.push_image(source, "demo/tools", "3-rc", seed="rc")
            images = {
                f"{source.host}/demo/hello:1.0": f"{target.host}/mirror/hello",
                f"{source.host}/demo/tools:/^[0-9]+$/": [f"{target.host}/mirror/tools",
                                                         f"{target.host}/backup/tools"],
            }
            auth = {source.host: {"plainHTTP": True}, target.host: {"plainHTTP": True}}
            (work / "images.yaml").write_text(yaml.safe_dump(images))
            (work / "auth.yaml").write_text(yaml.safe_dump(auth))
            print("images.yaml:\n" + yaml.safe_dump(images))
            command = [sys.executable, "-m", "imagesync.cli.main", "sync", "--auth", str(work / "auth.yaml"),
                       "--images", str(work / "images.yaml"), "--proc", "8"]
            for title in ("first run: copies everything", "second run: nothing changed, nothing copied"):
                print(f"==> imagesync sync ({title})")
                code = subprocess.run(command, check=False).returncode
                print(f"exit code {code}\n")
                if code != 0:
                    return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
