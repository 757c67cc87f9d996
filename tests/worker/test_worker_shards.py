"""`imagesync worker` shards: each pod copies its share, together all images, none twice."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from testbed import seed
from testbed.registry import RegistryProcess
from testbed.system import require_system_part


def write_config_dir(directory: Path, images: dict[str, str], auth: dict[str, object],
                     options: dict[str, object]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "images.yaml").write_text(yaml.safe_dump(images))
    (directory / "auth.yaml").write_text(yaml.safe_dump(auth))
    (directory / "options.json").write_text(json.dumps(options))


def run_worker(config_dir: Path, index: int | None, shards: int) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IMAGESYNC_", "JOB_COMPLETION"))}
    env.update({"IMAGESYNC_CONFIG_DIR": str(config_dir), "IMAGESYNC_SHARDS": str(shards)})
    if index is not None:
        env["JOB_COMPLETION_INDEX"] = str(index)
    return subprocess.run([sys.executable, "-m", "imagesync.cli.main", "worker"], env=env, capture_output=True,
                          text=True, timeout=120, check=False)


def test_two_shards_cover_all_images_once(registry: RegistryProcess, registry2: RegistryProcess,
                                          tmp_path: Path) -> None:
    for i in range(8):
        seed.push_image(registry, f"shard/app{i}", "1", seed=i)
    images = {f"{registry.host}/shard/app{i}:1": f"{registry2.host}/shard/app{i}" for i in range(8)}
    auth = {registry.host: {"insecure": True}, registry2.host: {"insecure": True}}
    write_config_dir(tmp_path / "config", images, auth, {"proc": 4, "retries": 1})

    mark = registry2.log_mark()
    results = [run_worker(tmp_path / "config", index, 2) for index in range(2)]
    assert [r.returncode for r in results] == [0, 0], [r.stderr[-1000:] for r in results]
    synced = [int(line.split()[1]) for r in results for line in r.stdout.splitlines()
              if line.startswith("Images:")]
    assert sum(synced) == 8 and all(n > 0 for n in synced)
    manifest_puts = [r.path for r in registry2.request_log(mark) if r.method == "PUT" and "/manifests/" in r.path]
    assert sorted(manifest_puts) == sorted(f"/v2/shard/app{i}/manifests/1" for i in range(8))


def test_bad_options_exit_2_with_a_clear_message(tmp_path: Path) -> None:
    config = tmp_path / "config"
    write_config_dir(config, {}, {}, {})
    (config / "options.json").write_text("{not json")
    result = run_worker(config, 0, 1)
    assert result.returncode == 2
    assert "options.json: not valid JSON" in result.stderr
    assert "Traceback" not in result.stderr


def test_sharded_pod_without_completion_index_refuses_to_guess(tmp_path: Path) -> None:
    # A cluster that ignores completionMode: Indexed starts every pod without an index: each would copy
    # shard 0 and the other shards would never run.
    config = tmp_path / "config"
    write_config_dir(config, {"127.0.0.1:1/a/b:1": "127.0.0.1:2/a/b"}, {}, {"retries": 0})
    result = run_worker(config, None, 2)
    assert result.returncode == 2
    assert "JOB_COMPLETION_INDEX is not set" in result.stderr and "Indexed Job" in result.stderr
    assert "Traceback" not in result.stderr
    single = run_worker(config, None, 1)  # one shard needs no index
    assert "JOB_COMPLETION_INDEX" not in single.stderr


def test_worker_writes_no_file_so_a_read_only_root_filesystem_is_fine(registry: RegistryProcess,
                                                                     registry2: RegistryProcess,
                                                                     tmp_path: Path) -> None:
    # The Job's container has readOnlyRootFilesystem: true. A write anywhere (a cache, a temp file,
    # a log) would fail the pod, so trace every file-creating call of a whole worker run.
    require_system_part(shutil.which("strace"), "strace", "strace")
    seed.push_image(registry, "ro/app", "1", seed="ro")
    write_config_dir(tmp_path / "config", {f"{registry.host}/ro/app:1": f"{registry2.host}/ro/app"},
                     {registry.host: {"insecure": True}, registry2.host: {"insecure": True}}, {})
    trace = tmp_path / "trace"
    # PYTHONDONTWRITEBYTECODE as the image sets it: a fresh checkout has no .pyc yet (the image's bytecode
    # is compiled at build time).
    env = {"PATH": os.environ["PATH"], "HOME": "/nonexistent", "IMAGESYNC_CONFIG_DIR": str(tmp_path / "config"),
           "IMAGESYNC_SHARDS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    result = subprocess.run(["strace", "-f", "-qq", "-o", str(trace), "-e",
                             "trace=open,openat,creat,mkdir,mkdirat,rename,renameat,renameat2,unlink,unlinkat",
                             sys.executable, "-m", "imagesync.cli.main", "worker"],
                            env=env, cwd="/", capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "1 synced" in result.stdout
    writes = [line for line in trace.read_text().splitlines()
              if any(flag in line for flag in ("O_WRONLY", "O_RDWR", "O_CREAT", "mkdir", "rename", "unlink", "creat("))
              and "= -1" not in line and '"/dev/null"' not in line]
    assert writes == []
