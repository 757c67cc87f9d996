"""The one image for operator and workers, built from the repository's Dockerfile and run as it runs in a
cluster: non-root (65532:65532), read-only root, no capabilities.

``build.sh`` builds it with podman on a Debian base made with mmdebstrap (no registry needed; cached
between runs in podman's directory of our own, see ``podman-env.sh``). The first build on a machine takes
about a minute and a half; later ones seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Sequence
from pathlib import Path

import pytest
import yaml

from testbed.registry import RegistryProcess
from testbed.seed import get_manifest, push_image
from testbed.skopeo import Skopeo
from testbed.system import require_system_part

HERE = Path(__file__).resolve().parent
BUILD_TIMEOUT_S = 900
RUN_TIMEOUT_S = 120
# How a worker runs in its Pod (the Job's securityContext).
LOCKED_DOWN = ("--network", "host", "--read-only", "--user", "65532:65532", "--cap-drop", "ALL")

pytestmark = pytest.mark.timeout(BUILD_TIMEOUT_S + 300)


def podman_env() -> dict[str, str]:
    """The environment with podman-env.sh's settings (the same storage build.sh used)."""
    shown = subprocess.run(
        ["bash", "-c", 'source "$1" >&2 && printf "%s\\0%s\\0%s" "$IMAGESYNC_PODMAN_DIR" "$CONTAINERS_CONF" '
                       '"$CONTAINERS_STORAGE_CONF"', "podman-env", str(HERE / "podman-env.sh")],
        capture_output=True, text=True, check=True, timeout=30)
    podman_dir, conf, storage_conf = shown.stdout.split("\0")
    return {**os.environ, "IMAGESYNC_PODMAN_DIR": podman_dir, "CONTAINERS_CONF": conf,
            "CONTAINERS_STORAGE_CONF": storage_conf}


class Podman:
    def __init__(self, env: dict[str, str]) -> None:
        self.env = env

    def __call__(self, *args: str, timeout: float = RUN_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["podman", *args], env=self.env, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)

    def run(self, image: str, args: Sequence[str], *, options: Sequence[str] = (),
            workdir: Path) -> subprocess.CompletedProcess[str]:
        """``podman run --rm`` locked down; checks the container is gone afterwards and left no process."""
        cidfile = workdir / f"cid-{uuid.uuid4().hex[:8]}"
        done = self("run", "--rm", "--cidfile", str(cidfile), *LOCKED_DOWN, *options, image, *args)
        container_id = cidfile.read_text().strip()
        assert container_id, done.stderr
        assert self("container", "exists", container_id).returncode == 1, f"{container_id} was not removed"
        assert not processes_mentioning(container_id), f"processes left behind for {container_id}"
        return done


def processes_mentioning(needle: str) -> list[str]:
    """Command lines of running processes that contain ``needle`` (conmon and runc name the container)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if needle in cmdline:
            found.append(f"{entry.name}: {cmdline}")
    return found


@pytest.fixture(scope="module")
def podman() -> Podman:
    require_system_part(shutil.which("podman"), "podman", "podman")
    require_system_part(shutil.which("runc"), "runc", "runc")
    return Podman(podman_env())


@pytest.fixture(scope="module")
def image(podman: Podman) -> str:
    """Builds (or finds in the layer cache) the image; its reference."""
    require_system_part(shutil.which("mmdebstrap"), "mmdebstrap", "mmdebstrap")
    try:
        built = subprocess.run(["bash", str(HERE / "build.sh")], env=podman.env, capture_output=True, text=True,
                               timeout=BUILD_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        pytest.fail(f"tests/image/build.sh took more than {BUILD_TIMEOUT_S} s", pytrace=False)
    if built.returncode != 0:
        tail = "\n".join(built.stderr.splitlines()[-40:])
        pytest.fail(f"tests/image/build.sh failed ({built.returncode}):\n{tail}", pytrace=False)
    reference = built.stdout.strip().splitlines()[-1]
    assert podman("image", "exists", reference).returncode == 0, reference
    return reference


def test_image_pushes_to_a_registry(podman: Podman, image: str, registry: RegistryProcess,
                                    skopeo: Skopeo) -> None:
    target = f"{registry.host}/imagesync:dev"
    pushed = podman("push", "--tls-verify=false", image, target, timeout=300)
    assert pushed.returncode == 0, pushed.stderr
    raw = skopeo.inspect_raw(target)
    manifest = json.loads(raw)
    # The registry serves the bytes skopeo saw, and its config is the image podman built (the image ID is
    # the config digest); every layer of the image is there.
    served, _media_type, digest = get_manifest(registry, "imagesync", "dev")
    assert served == raw
    assert digest.startswith("sha256:")
    image_id = podman("image", "inspect", "--format", "{{.Id}}", image).stdout.strip()
    assert manifest["config"]["digest"] == f"sha256:{image_id}"
    layers = json.loads(podman("image", "inspect", "--format", "{{json .RootFS.Layers}}", image).stdout)
    assert len(manifest["layers"]) == len(layers) >= 2


def test_image_config_runs_as_65532_with_imagesync_entrypoint(podman: Podman, image: str) -> None:
    inspected = podman("image", "inspect", image)
    assert inspected.returncode == 0, inspected.stderr
    config = json.loads(inspected.stdout)[0]["Config"]
    assert config["User"] == "65532:65532"
    assert config["Entrypoint"] == ["imagesync"]
    assert config["Cmd"] == ["--help"]
    assert any(var.startswith("PATH=/opt/imagesync/bin:") for var in config["Env"])
    assert "PYTHONDONTWRITEBYTECODE=1" in config["Env"]


def test_help_runs_read_only_as_non_root(podman: Podman, image: str, tmp_path: Path) -> None:
    done = podman.run(image, ["--help"], workdir=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: imagesync")
    for command in ("sync", "operator", "worker"):
        assert command in done.stdout
    # Inside: who it runs as, the root is read-only, and the package's bytecode was compiled at build time.
    probe = ("import os, importlib.util, imagesync.cli.main as m; print(os.getuid(), os.getgid()); "
             "print(os.path.exists(importlib.util.cache_from_source(m.__file__)));\n"
             "try: open('/opt/imagesync/probe', 'w')\nexcept OSError as e: print(e.errno)")
    inside = podman.run(image, ["-c", probe], options=["--entrypoint", "python3"], workdir=tmp_path)
    assert inside.returncode == 0, inside.stderr
    assert inside.stdout.split("\n")[:3] == ["65532 65532", "True", "30"]  # 30: EROFS


def test_sync_copies_an_image_between_registries(podman: Podman, image: str, registry: RegistryProcess,
                                                 registry2: RegistryProcess, tmp_path: Path) -> None:
    seeded = push_image(registry, "library/app", "v1", layers=(4096, 65536), seed="image-test")
    images_file = tmp_path / "images.yaml"
    images_file.write_text(yaml.safe_dump({f"{registry.host}/library/app:v1": f"{registry2.host}/mirror/app"}))
    auth_file = tmp_path / "auth.yaml"
    auth_file.write_text(yaml.safe_dump({r.host: {"insecure": True} for r in (registry, registry2)}))
    for file in (images_file, auth_file):
        file.chmod(0o644)  # read by uid 65532 in the container

    done = podman.run(image, ["sync", "--images", "/config/images.yaml", "--auth", "/config/auth.yaml",
                              "--output", "json"],
                      options=["-v", f"{images_file}:/config/images.yaml:ro",
                               "-v", f"{auth_file}:/config/auth.yaml:ro"], workdir=tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["failedImages"] == []
    assert len(result["syncedImages"]) == 1, result
    served, media_type, digest = get_manifest(registry2, "mirror/app", "v1")
    assert digest == seeded.digest
    assert (served, media_type) == (seeded.manifest, seeded.media_type)


def test_operator_help_runs_in_the_image(podman: Podman, image: str, tmp_path: Path) -> None:
    done = podman.run(image, ["operator", "--help"], workdir=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: imagesync operator")
