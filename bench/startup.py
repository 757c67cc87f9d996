"""Start-up cost (issue 13 point 4): ``imagesync sync`` on a one-image no-op, next to a bare interpreter and
to importing the CLI, and where the import time goes (``python -X importtime``).

The no-op: one tiny image already copied to the target, so a run is start-up, one manifest check per
registry side and exit. The three commands alternate within each round; medians over the rounds.

    python bench/startup.py                 # 10 rounds, the result as JSON on standard output
    python bench/startup.py --runs 3 --json startup.json

(bench/run.py --sets startup runs the same and prints it as a table.)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

from contenders import ROOT, imagesync_command, installed_bytecode, measure

sys.path.insert(0, str(ROOT / "tests"))

from testbed import seed
from testbed.registry import RegistryProcess

STARTUP_REPO = "startup/one"


class ImportEntry(NamedTuple):
    """One line of ``-X importtime``."""

    module: str
    self_ms: float
    cumulative_ms: float
    depth: int  # 0 for a module imported at the top level


def import_times(command: list[str], top: int = 10) -> dict[str, Any]:
    """Run ``command`` (a Python script and its arguments) under ``python -X importtime``: the ``top`` imports
    by cumulative and by self time (milliseconds), the number of modules imported and the total import time."""
    argv = [sys.executable, "-X", "importtime", *command]
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    entries: list[ImportEntry] = []
    for line in result.stderr.splitlines():
        if not line.startswith("import time:") or "imported package" in line:
            continue
        self_us, cumulative_us, name = line[len("import time:"):].split("|", 2)
        # Nesting is the indentation of the name: two spaces per level below the top.
        depth = (len(name) - len(name.lstrip()) - 1) // 2
        entries.append(ImportEntry(name.strip(), int(self_us) / 1000, int(cumulative_us) / 1000, depth))

    def top_by(key: str) -> list[dict[str, Any]]:
        ranked = sorted(entries, key=lambda e: -float(getattr(e, key)))[:top]
        return [{"module": e.module, key: round(float(getattr(e, key)), 1)} for e in ranked]

    return {"returncode": result.returncode, "modules": len(entries),
            "total_ms": round(sum(e.cumulative_ms for e in entries if e.depth == 0), 1),
            "top_cumulative": top_by("cumulative_ms"), "top_self": top_by("self_ms")}


def spread(values: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "all": values}


def startup_bench(workdir: Path, runs: int) -> dict[str, Any]:
    installed_bytecode()
    with RegistryProcess(workdir / "source") as source, RegistryProcess(workdir / "target") as target:
        seed.push_image(source, STARTUP_REPO, "1", layers=(1024,), seed="startup")
        sync = imagesync_command(workdir / "imagesync", source, target, [STARTUP_REPO])
        assert measure(sync).returncode == 0, "imagesync failed to copy the start-up image"
        commands = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "python -c 'import imagesync.cli.main'": [sys.executable, "-c", "import imagesync.cli.main"],
            "imagesync sync, one-image no-op": sync,
        }
        seconds: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(runs):
            for name, command in commands.items():
                mark = target.log_mark()
                result = measure(command)
                assert result.returncode == 0, f"{name} failed"
                seconds[name].append(result.seconds)
        noop_requests = len(target.request_log(mark))  # of the last round's no-op
        # One -X importtime run is noisy on a shared machine: keep the middle one of three by total.
        imports = sorted((import_times(sync) for _ in range(3)), key=lambda i: float(i["total_ms"]))[1]
    return {"runs": runs, "seconds": {name: spread(values) for name, values in seconds.items()},
            "noop_target_requests": noop_requests, "importtime": imports}


def main() -> int:
    parser = argparse.ArgumentParser(description="Start-up cost of imagesync sync on a one-image no-op (issue 13 "
                                                 "point 4): wall times and -X importtime, as JSON.")
    parser.add_argument("--runs", type=int, default=10, help="rounds of the three commands (default 10)")
    parser.add_argument("--json", type=Path, help="also write the result to this file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="imagesync-startup-") as tmp:
        result = startup_bench(Path(tmp), args.runs)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
