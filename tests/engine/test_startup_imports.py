"""Start-up (issue 13 point 4): what ``imagesync sync`` does not use, it does not import.

Each of these modules is imported on first use, inside the function that needs it; a top-level import
creeping back would slow every run down again (bench/startup.py measures by how much). The runs are real
subprocesses against real registries: ``sys.modules`` at the end of ``main()`` is what the run loaded.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from cli_helpers import auth_for

from testbed import seed
from testbed.registry import RegistryProcess

# Loaded only by what needs them: the dry-run planner, YAML files (PyYAML; image-syncer's default files are
# JSON), the terminal display (rich, only on a terminal), semver filters (nodesemver), signature keys
# (cryptography), the operator (kopf, kubernetes) and the worker. httpcore and anyio are httpx's default transport,
# which the engine does not use (engine.http11): httpx loads them only for a proxy from the environment.
NOT_FOR_A_SYNC = ("imagesync.engine.plan", "yaml", "imagesync.engine.yaml_config", "rich", "nodesemver",
                  "cryptography", "kopf", "kubernetes", "imagesync.controller", "imagesync.worker", "httpcore",
                  "anyio")

# Runs main() and prints, as its last line, the exit code and every module loaded by then.
RUN_MAIN = ("import json, sys; from imagesync.cli.main import main; code = main(sys.argv[1:]); "
            "print(json.dumps({'code': code, 'modules': sorted(sys.modules)}))")


def loaded(modules: list[str], wanted: tuple[str, ...]) -> list[str]:
    """The names in ``wanted`` that are loaded, as packages or as modules inside them."""
    return [w for w in wanted if any(m == w or m.startswith(f"{w}.") for m in modules)]


def run_main(*argv: str) -> tuple[int, list[str]]:
    completed = subprocess.run([sys.executable, "-c", RUN_MAIN, *argv], capture_output=True, text=True,
                               timeout=120, check=False)
    assert completed.stdout.strip(), completed.stderr
    last = json.loads(completed.stdout.strip().splitlines()[-1])
    return last["code"], last["modules"]


def test_importing_the_cli_loads_none_of_them() -> None:
    code = "import json, sys, imagesync.cli.main; print(json.dumps(sorted(sys.modules)))"
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    modules = json.loads(completed.stdout)
    assert "imagesync.engine.copy" in modules  # what a sync does need is there: the listing is real
    assert loaded(modules, NOT_FOR_A_SYNC) == []


def test_a_sync_loads_none_of_them_and_a_dry_run_loads_the_planner(
        registry: RegistryProcess, registry2: RegistryProcess, tmp_path: Path) -> None:
    seed.push_image(registry, "startup/app", "1", seed="startup")
    # JSON files, image-syncer's own format: reading them needs no PyYAML.
    (tmp_path / "images.json").write_text(json.dumps({f"{registry.host}/startup/app": f"{registry2.host}/startup/app"}))
    (tmp_path / "auth.json").write_text(json.dumps(auth_for(registry, registry2)))
    files = ("--images", str(tmp_path / "images.json"), "--auth", str(tmp_path / "auth.json"))

    code, modules = run_main("sync", *files)
    assert code == 0
    assert "imagesync.engine.blobs" in modules and "h11" in modules  # it did copy, over HTTP
    assert loaded(modules, NOT_FOR_A_SYNC) == []

    # The same check sees modules imported on first use, deep in a run: the planner, by --dry-run, and
    # PyYAML for a rules file in YAML.
    (tmp_path / "images.yaml").write_text((tmp_path / "images.json").read_text())  # JSON is YAML too
    code, modules = run_main("sync", "--images", str(tmp_path / "images.yaml"), "--auth", str(tmp_path / "auth.json"),
                             "--dry-run")
    assert code == 0
    assert loaded(modules, NOT_FOR_A_SYNC) == ["imagesync.engine.plan", "yaml", "imagesync.engine.yaml_config"]


def test_the_console_script_freezes_the_imports_and_runs_with_the_collector_on() -> None:
    # The command's run sees the collector enabled (an operator runs for weeks: its cycles must be collected)
    # and the import-time objects frozen out of it; after the run, its own objects are frozen too.
    code = ("import gc, json, sys, imagesync.__main__ as entry\n"
            "seen = {}\n"
            "def run_command():\n"
            "    seen.update(enabled=gc.isenabled(), frozen=gc.get_freeze_count())\n"
            "    return 3\n"
            "sys.modules['imagesync.cli.main'] = type(sys)('stand-in')\n"
            "sys.modules['imagesync.cli.main'].main = run_command\n"
            "code = entry.main()\n"
            "after = {'code': code, 'after': gc.get_freeze_count(), 'enabled_after': gc.isenabled()}\n"
            "print(json.dumps({**seen, **after}))")
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    seen = json.loads(completed.stdout)
    assert seen["enabled"] and seen["enabled_after"]
    assert seen["code"] == 3
    assert seen["frozen"] > 1000 and seen["after"] >= seen["frozen"]
