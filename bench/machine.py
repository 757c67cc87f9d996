"""The machine and the versions a benchmark ran with, for the top of bench/run.py's output and its JSON."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _first_line(command: list[str], cwd: Path | None = None) -> str:
    """The first line the command printed ("" for none), or "not installed"."""
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=30, cwd=cwd, check=False)
    except OSError:
        return "not installed"
    lines = (result.stdout or result.stderr).strip().splitlines()
    return lines[0].strip() if lines else ""


def _proc_value(path: str, key: str) -> str:
    try:
        for line in Path(path).read_text().splitlines():
            name, _, value = line.partition(":")
            if name.strip() == key:
                return value.strip()
    except OSError:
        pass
    return "unknown"


def describe(storage_dir: Path) -> dict[str, Any]:
    mem_kib = _proc_value("/proc/meminfo", "MemTotal").split()[0]
    dirty = _first_line(["git", "status", "--porcelain", "--", "operator"], ROOT)
    commit = _first_line(["git", "rev-parse", "--short", "HEAD"], ROOT)
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": _proc_value("/proc/cpuinfo", "model name"),
        "memory_gib": round(int(mem_kib) / 1024 / 1024, 1) if mem_kib.isdigit() else None,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "kernel": platform.release(),
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "docker_registry": _first_line(["docker-registry", "--version"]),
        "skopeo": _first_line(["skopeo", "--version"]),
        "imagesync_commit": commit + (" (operator/ has uncommitted changes)" if dirty else ""),
        "storage": "tmpfs" if os.path.ismount(storage_dir) else "directory (not tmpfs)",
    }


def header(machine: dict[str, Any]) -> str:
    m = machine
    load = " / ".join(str(x) for x in m["load_average"])
    return (f"machine: {m['nproc']} CPUs ({m['cpu_model']}), {m['memory_gib']} GiB, Linux {m['kernel']}, "
            f"load average at start {load}; registry storage on {m['storage']}\n"
            f"versions: Python {m['python']}, {m['docker_registry']}, {m['skopeo']}, imagesync {m['imagesync_commit']}")
