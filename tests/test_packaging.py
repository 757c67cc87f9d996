"""The installed package (what the Dockerfile's non-editable `pip install` ships) holds every module.

Tests run against an editable install, which finds any module under operator/; a wheel holds only the
packages pyproject.toml lists. A subpackage missing there would pass every test and break the image.
"""

from __future__ import annotations

import importlib
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_listed_for_the_wheel() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert config["package-dir"] == {"imagesync": "operator"}
    on_disk = {"imagesync" + ".".join(["", *p.parent.relative_to(ROOT / "operator").parts])
               for p in (ROOT / "operator").rglob("__init__.py")}
    assert set(config["packages"]) == on_disk


def test_the_imagesync_command_resolves_to_a_callable() -> None:
    # The Job runs ["imagesync", "worker"] and the Deployment ["imagesync", "operator"].
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, attribute = scripts["imagesync"].partition(":")
    assert callable(getattr(importlib.import_module(module), attribute))
