"""The command line's surface: no Kubernetes imports on the CLI path, output and log options."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml
from cli_helpers import auth_for

from imagesync.controller.settings import OperatorSettings, SettingsError
from testbed import seed
from testbed.registry import RegistryProcess


def test_cli_and_worker_never_import_kopf_or_kubernetes() -> None:
    code = ("import sys, imagesync.cli.main, imagesync.worker.main; "
            "bad = [m for m in ('kopf', 'kubernetes', 'kmock') if m in sys.modules]; print(bad)")
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert completed.stdout.strip() == "[]"


def test_output_json_and_log_file(registry: RegistryProcess, registry2: RegistryProcess, tmp_path: Path) -> None:
    seed.push_image(registry, "cli/app", "1", seed="cli")
    (tmp_path / "images.yaml").write_text(yaml.safe_dump({f"{registry.host}/cli/app:1": f"{registry2.host}/cli/app"}))
    (tmp_path / "auth.yaml").write_text(yaml.safe_dump(auth_for(registry, registry2)))
    completed = subprocess.run(
        [sys.executable, "-m", "imagesync.cli.main", "--images", str(tmp_path / "images.yaml"),  # image-syncer style
         f"--auth={tmp_path / 'auth.yaml'}", "--output", "json", "--log", str(tmp_path / "sync.log")],
        capture_output=True, text=True, timeout=120, check=False)
    assert completed.returncode == 0, completed.stderr
    result = json.loads(completed.stdout)
    assert result["imagesSynced"] == 1 and result["syncedImages"][0]["source"] == f"{registry.host}/cli/app:1"
    assert "synced" in (tmp_path / "sync.log").read_text()
    assert completed.stderr == ""  # logs went to the file


def test_operator_settings_from_env() -> None:
    settings = OperatorSettings.from_env({"IMAGESYNC_NAMESPACES": "a, b", "IMAGESYNC_WORKER_IMAGE": "img:1",
                                          "IMAGESYNC_LOG_FORMAT": "json"})
    assert settings.namespaces == ("a", "b") and settings.worker_image == "img:1" and settings.log_format == "json"
    assert OperatorSettings.from_env({}).namespaces == ()
    try:
        OperatorSettings.from_env({"IMAGESYNC_LOG_FORMAT": "xml"})
    except SettingsError as exc:
        assert "IMAGESYNC_LOG_FORMAT" in str(exc)
    else:
        raise AssertionError("a bad log format was accepted")
