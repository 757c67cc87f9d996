"""The installed package (what the image's non-editable `pip install` ships) holds every module and runs.

Tests otherwise run against an editable install. A wheel holds only what package discovery finds, and
a non-editable install run from the repository root meets the `operator/` source folder on sys.path:
were it a package, it would shadow the standard library's `operator` module.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_operator_is_a_source_folder_not_a_package() -> None:
    assert not (ROOT / "operator" / "__init__.py").exists()
    assert (ROOT / "operator" / "imagesync" / "__init__.py").is_file()


def test_the_imagesync_command_resolves_to_a_callable() -> None:
    # The Job runs ["imagesync", "worker"] and the Deployment ["imagesync", "operator"].
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, attribute = scripts["imagesync"].partition(":")
    assert callable(getattr(importlib.import_module(module), attribute))


def test_non_editable_install_runs_from_the_repository_root(tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(ROOT)], check=True, capture_output=True, timeout=240)
    installed = {p.parent.relative_to(target).as_posix() for p in (target / "imagesync").rglob("__init__.py")}
    on_disk = {p.parent.relative_to(ROOT / "operator").as_posix()
               for p in (ROOT / "operator" / "imagesync").rglob("__init__.py")}
    assert installed == on_disk
    assert (target / "imagesync" / "py.typed").is_file()
    env = {**os.environ, "PYTHONPATH": str(target)}
    for command in ([sys.executable, "-m", "imagesync.cli.main", "--help"],
                    [sys.executable, "-m", "imagesync.cli.main", "operator", "--help"],
                    [sys.executable, "-m", "imagesync", "sync", "--help"],
                    [str(target / "bin" / "imagesync"), "sync", "--help"]):
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, (command, done.stderr)
        assert "usage:" in done.stdout
    where = subprocess.run([sys.executable, "-c", "import imagesync; print(imagesync.__file__)"],
                           cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert where.stdout.strip().startswith(str(target))
