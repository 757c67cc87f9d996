"""imagesync against skopeo sync and the raw copy ceiling, on the same data, on loopback registries.

    python bench/run.py                      # all data sets, 3 repetitions, markdown table on stdout
    python bench/run.py --sets A C --reps 5 --json bench/results/latest.json

For every data set and contender: a cold run into an empty target registry and a no-op re-run, the
median wall time, throughput, the peak RSS of the contender's process (its own process tree, measured
with RUSAGE_CHILDREN in a wrapper) and the number of requests the target registry served. Registry
storage goes on tmpfs when running as root (ext4 here is mounted with `discard`, which skews runs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from testbed import seed  # noqa: E402
from testbed.registry import RegistryProcess  # noqa: E402
from testbed.skopeo import Skopeo  # noqa: E402

MiB = 1024 * 1024
WRAPPER = ROOT / "bench" / "measure.py"


@dataclass
class DataSet:
    name: str
    description: str
    build: Callable[[RegistryProcess], list[str]]  # seeds the source, returns its repositories


def build_a(source: RegistryProcess) -> list[str]:
    base = seed.push_random_blob(source, "a/r00", 5 * MiB, "base")
    with seed.open_api(source) as api:
        for r in range(50):
            for t in range(2):
                seed.push_image(api, f"a/r{r:02d}", f"t{t}", layers=(base, MiB, MiB, MiB), seed=f"a{r}/{t}")
    return [f"a/r{r:02d}" for r in range(50)]


def build_b(source: RegistryProcess) -> list[str]:
    with seed.open_api(source) as api:
        for r in range(4):
            seed.push_image(api, f"b/big{r}", "1", layers=(256 * MiB, 256 * MiB), seed=f"b{r}")
    return [f"b/big{r}" for r in range(4)]


def build_c(source: RegistryProcess) -> list[str]:
    with seed.open_api(source) as api:
        for r in range(10):
            for t in range(2):
                seed.push_index(api, f"c/multi{r}", f"t{t}", layers=(MiB, 512 * 1024), seed=f"c{r}/{t}")
    return [f"c/multi{r}" for r in range(10)]


DATA_SETS = {
    "A": DataSet("A", "50 repos x 2 tags, 3 x 1 MiB layers + a shared 5 MiB base", build_a),
    "B": DataSet("B", "4 images x 2 x 256 MiB layers", build_b),
    "C": DataSet("C", "10 repos x 2 tags, two-platform OCI indexes", build_c),
}


@contextmanager
def storage(root: Path) -> Iterator[Path]:
    """tmpfs when root (and allowed), else a plain directory."""
    root.mkdir(parents=True, exist_ok=True)
    mounted = False
    if os.geteuid() == 0:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6g", "imagesync-bench", str(root)],
                                 capture_output=True, check=False).returncode == 0
    try:
        yield root
    finally:
        if mounted:
            subprocess.run(["umount", str(root)], capture_output=True, check=False)


def measured(command: list[str], env: dict[str, str] | None = None) -> tuple[float, int, int]:
    """Wall seconds, peak RSS bytes and exit code of a command, via the wrapper process."""
    out = subprocess.run([sys.executable, str(WRAPPER), *command], capture_output=True, text=True, env=env,
                         check=False)
    data = json.loads(out.stdout.strip().splitlines()[-1])
    if data["returncode"]:
        print(out.stderr, file=sys.stderr)
    return data["seconds"], data["maxrss_bytes"], data["returncode"]


def imagesync_run(workdir: Path, source: RegistryProcess, target: RegistryProcess, repos: list[str]) -> list[str]:
    (workdir / "images.yaml").write_text(yaml.safe_dump({f"{source.host}/{r}": f"{target.host}/{r}" for r in repos}))
    (workdir / "auth.yaml").write_text(yaml.safe_dump({source.host: {"insecure": True},
                                                       target.host: {"insecure": True}}))
    return [sys.executable, "-m", "imagesync.cli.main", "sync", "--images", str(workdir / "images.yaml"),
            "--auth", str(workdir / "auth.yaml"), "--proc", "8"]


def raw_ceiling(source: RegistryProcess, target: RegistryProcess, repos: list[str]) -> float:
    """GET every blob and stream it to the target (POST + PUT), 8 at a time; then PUT the manifests.
    No HEADs, no digest checks, no retries: what the two registries can move."""
    async def run() -> float:
        started = time.monotonic()
        async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=32)) as client:
            manifests: list[tuple[str, str, bytes, str]] = []
            blobs: dict[str, tuple[str, str]] = {}
            for repo in repos:
                tags = (await client.get(f"{source.url}/v2/{repo}/tags/list")).json()["tags"]
                for tag in tags:
                    r = await client.get(f"{source.url}/v2/{repo}/manifests/{tag}", headers={"Accept": seed.ACCEPT_ALL})
                    doc = r.json()
                    children = []
                    for child in doc.get("manifests") or []:
                        c = await client.get(f"{source.url}/v2/{repo}/manifests/{child['digest']}",
                                             headers={"Accept": seed.ACCEPT_ALL})
                        children.append(c.json())
                        manifests.append((repo, child["digest"], c.content, c.headers["content-type"]))
                    for image in children or [doc]:
                        for d in [image["config"], *image["layers"]]:
                            blobs.setdefault(repo + d["digest"], (repo, d["digest"]))
                    manifests.append((repo, tag, r.content, r.headers["content-type"]))
            slots = asyncio.Semaphore(8)

            async def copy(repo: str, digest: str) -> None:
                async with slots:
                    location = (await client.post(f"{target.url}/v2/{repo}/blobs/uploads/")).headers["location"]
                    location = str(httpx.URL(target.url).join(location))
                    async with client.stream("GET", f"{source.url}/v2/{repo}/blobs/{digest}") as body:
                        sep = "&" if "?" in location else "?"
                        put = await client.put(f"{location}{sep}digest={digest}", content=body.aiter_raw(),
                                               headers={"Content-Length": body.headers["content-length"]})
                        put.raise_for_status()

            await asyncio.gather(*(copy(repo, digest) for repo, digest in blobs.values()))
            for repo, ref, data, media_type in manifests:
                (await client.put(f"{target.url}/v2/{repo}/manifests/{ref}", content=data,
                                  headers={"Content-Type": media_type})).raise_for_status()
        return time.monotonic() - started

    return asyncio.run(run())


def bench_set(data_set: DataSet, reps: int, workdir: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with RegistryProcess(workdir / "source") as source:
        repos = data_set.build(source)
        volume = 0
        results: dict[str, dict[str, list[float]]] = {}
        for rep in range(reps):
            for contender in ("imagesync", "skopeo", "ceiling"):
                target_dir = workdir / f"target-{contender}-{rep}"
                with RegistryProcess(target_dir) as target:
                    entry = results.setdefault(contender, {"cold": [], "noop": [], "rss": [], "cold_requests": [],
                                                           "noop_requests": []})
                    if contender == "ceiling":
                        entry["cold"].append(raw_ceiling(source, target, repos))
                        entry["cold_requests"].append(len(target.request_log()))
                    else:
                        if contender == "imagesync":
                            command = imagesync_run(workdir, source, target, repos)
                            env = None
                        else:
                            skopeo = Skopeo(workdir / f"skopeo-{rep}")
                            document = {source.host: {"tls-verify": False, "images": {r: [] for r in repos}}}
                            (workdir / "skopeo.yaml").write_text(yaml.safe_dump(document))
                            command = skopeo.command("sync", "--src", "yaml", "--dest", "docker",
                                                     "--dest-tls-verify=false", "--all", "--preserve-digests",
                                                     str(workdir / "skopeo.yaml"),
                                                     # not --scoped: keeps the last path element under
                                                     # the prefix, so both tools write the same paths
                                                     f"{target.host}/{data_set.name.lower()}")
                            env = skopeo.env
                        seconds, rss, code = measured(command, env)
                        assert code == 0, f"{contender} failed on {data_set.name}"
                        entry["cold"].append(seconds)
                        entry["rss"].append(rss)
                        entry["cold_requests"].append(len(target.request_log()))
                        mark = target.log_mark()
                        seconds, rss, code = measured(command, env)
                        entry["noop"].append(seconds)
                        entry["rss"].append(rss)
                        entry["noop_requests"].append(len(target.request_log(mark)))
                    if not volume:
                        volume = sum(len(p.read_bytes()) for p in (target_dir / "storage").rglob("data")
                                     if "blobs" in str(p))
                shutil.rmtree(target_dir, ignore_errors=True)
        for contender, entry in results.items():
            cold = statistics.median(entry["cold"])
            rows.append({
                "set": data_set.name, "contender": contender, "cold_s": round(cold, 2),
                "noop_s": round(statistics.median(entry["noop"]), 2) if entry["noop"] else None,
                "mb_per_s": round(volume / cold / 1e6, 1), "peak_rss_mib": round(max(entry["rss"]) / MiB, 1)
                if entry["rss"] else None,
                "cold_requests": int(statistics.median(entry["cold_requests"])),
                "noop_requests": int(statistics.median(entry["noop_requests"])) if entry["noop_requests"] else None,
                "unique_mb": round(volume / 1e6, 1), "reps": reps,
            })
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| set | contender | cold s | MB/s | no-op s | peak RSS MiB | target requests cold / no-op |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['set']} | {r['contender']} | {r['cold_s']} | {r['mb_per_s']} | {r['noop_s'] or '-'} | "
                     f"{r['peak_rss_mib'] or '-'} | {r['cold_requests']} / {r['noop_requests'] or '-'} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", default=sorted(DATA_SETS), choices=sorted(DATA_SETS))
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="imagesync-bench-") as tmp, storage(Path(tmp) / "data") as workdir:
        for name in args.sets:
            print(f"== data set {name}: {DATA_SETS[name].description}", file=sys.stderr, flush=True)
            set_dir = workdir / name
            set_dir.mkdir()
            rows += bench_set(DATA_SETS[name], args.reps, set_dir)
            shutil.rmtree(set_dir, ignore_errors=True)
    print(table(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
