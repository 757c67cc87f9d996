"""How bench/run.py runs and measures the tools it compares: imagesync and skopeo, each as a child of the
bench/measure.py wrapper (wall time, peak RSS, user and system CPU of the tool's own process tree), and
what the registries themselves spent and served meanwhile (CPU from /proc, requests from access logs).
"""

from __future__ import annotations

import compileall
import json
import os
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from testbed.registry import LoggedRequest, RegistryProcess  # noqa: E402
from testbed.skopeo import Skopeo  # noqa: E402

WRAPPER = ROOT / "bench" / "measure.py"
# What users run: the console script pip installed next to this interpreter (not ``python -m``, which skips
# the script's own start-up handling, see imagesync.__main__).
IMAGESYNC = str(Path(sys.executable).with_name("imagesync"))
IMAGESYNC_PROC = 8


def installed_bytecode() -> None:
    """Bytecode as an installed imagesync has it (pip and the image compile it at install time). This environment
    sets PYTHONDONTWRITEBYTECODE, so a module edited since its .pyc was written is compiled again on every run
    and counted as the tool's time (measured: transport.py 3 ms to load from bytecode, 11 ms without; a no-op
    sync after an engine change about 25 ms slower). Every bench entry point calls this first."""
    compileall.compile_dir(ROOT / "operator" / "imagesync", quiet=1)


@dataclass(frozen=True)
class Measured:
    """One run of a command under bench/measure.py."""

    seconds: float
    maxrss_bytes: int
    user_s: float
    sys_s: float
    returncode: int

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.sys_s


def measure(command: list[str], env: dict[str, str] | None = None) -> Measured:
    """Run ``command`` under the wrapper process (its stderr is printed when it fails)."""
    out = subprocess.run([sys.executable, str(WRAPPER), *command], capture_output=True, text=True, env=env,
                         check=False)
    data = json.loads(out.stdout.strip().splitlines()[-1])
    if data["returncode"]:
        print(out.stderr, file=sys.stderr)
    return Measured(data["seconds"], data["maxrss_bytes"], data.get("user_s", 0.0), data.get("sys_s", 0.0),
                    data["returncode"])


def measured(command: list[str], env: dict[str, str] | None = None) -> tuple[float, int, int]:
    """Wall seconds, peak RSS bytes and exit code of a command (the form bench/long_distance.py uses)."""
    result = measure(command, env)
    return result.seconds, result.maxrss_bytes, result.returncode


def imagesync_command(workdir: Path, source: RegistryProcess, target: RegistryProcess,
                      repos: list[str]) -> list[str]:
    """``imagesync sync --proc 8`` of every tag of ``repos`` to the same paths on ``target``."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "images.yaml").write_text(yaml.safe_dump({f"{source.host}/{r}": f"{target.host}/{r}" for r in repos}))
    (workdir / "auth.yaml").write_text(yaml.safe_dump({source.host: {"insecure": True},
                                                       target.host: {"insecure": True}}))
    return [IMAGESYNC, "sync", "--images", str(workdir / "images.yaml"),
            "--auth", str(workdir / "auth.yaml"), "--proc", str(IMAGESYNC_PROC)]


def skopeo_command(workdir: Path, source: RegistryProcess, target: RegistryProcess,
                   repos: list[str]) -> tuple[list[str], dict[str, str]]:
    """``skopeo sync --all --preserve-digests`` of every tag of ``repos`` (all under one first path element,
    which becomes the destination prefix), with its own fresh blob-info cache; (argv, environment)."""
    skopeo = Skopeo(workdir / "skopeo")
    document = {source.host: {"tls-verify": False, "images": {r: [] for r in repos}}}
    (workdir / "skopeo.yaml").write_text(yaml.safe_dump(document))
    prefix = repos[0].split("/")[0]
    command = skopeo.command("sync", "--src", "yaml", "--dest", "docker", "--dest-tls-verify=false", "--all",
                             "--preserve-digests", str(workdir / "skopeo.yaml"),
                             # not --scoped: keeps the last path element under the prefix, so both tools
                             # write the same paths
                             f"{target.host}/{prefix}")
    return command, skopeo.env


def process_cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds a running process has used so far (0 when it is gone)."""
    if pid is None:
        return 0.0
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    # The command name (field 2) may hold spaces: count fields from after its closing parenthesis,
    # where field 3 (state) is index 0, so utime (14) and stime (15) are 11 and 12.
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def request_kinds(log: list[LoggedRequest]) -> dict[str, int]:
    """Requests by method and kind ("HEAD manifest", "POST upload", "GET /v2/", ...), those of them answered
    with an error by status ("HEAD manifest 404"), and the total."""
    kinds: Counter[str] = Counter()
    for r in log:
        if r.path == "/v2/":
            kind = "/v2/"
        elif "/blobs/uploads/" in r.path:
            kind = "upload"
        elif "/blobs/" in r.path:
            kind = "blob"
        elif "/manifests/" in r.path:
            kind = "manifest"
        elif r.path.endswith("/tags/list"):
            kind = "tags/list"
        elif "/referrers/" in r.path:
            kind = "referrers"
        else:
            kind = "other"
        kinds[f"{r.method} {kind}"] += 1
        if r.status >= 400:
            kinds[f"{r.method} {kind} {r.status}"] += 1  # of the line above, those refused or not found
    return {**dict(sorted(kinds.items(), key=lambda item: -item[1])), "total": len(log)}
