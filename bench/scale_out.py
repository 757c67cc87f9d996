"""Scale-out (issue 13 point 6): N worker shards of one ImageSyncJob's rules, started at once on this machine.

The N processes run the rules as the operator's N worker pods do (``spec.parallelism`` N).

    python bench/scale_out.py                                  # both sets, N = 1 2 4, 3 repetitions
    python bench/scale_out.py --json bench/results/scale-out.json
    python bench/scale_out.py --sets small --shards 1 2 --reps 1
    python bench/scale_out.py --quick                          # tiny sets, 1 repetition: checks the harness

Each shard process is the real ``imagesync worker`` command (``python -m imagesync.cli.main worker``) with
the environment a worker pod gets: ``IMAGESYNC_CONFIG_DIR`` (a directory holding the run Secret's files:
``auth.yaml``, ``images.yaml`` and ``options.json``, the last written by the operator's own
``controller.render.worker_options`` from a parsed spec), ``IMAGESYNC_SHARDS`` = N and
``JOB_COMPLETION_INDEX`` = 0..N-1. ``IMAGESYNC_REPORT`` is left unset, so progress reports go nowhere (the
worker's NullReporter): no Kubernetes API is involved and nothing else differs from a pod's code path.

Two docker-registry processes (tests/testbed) serve the source and a fresh, empty target for every run,
storage on tmpfs when running as root (as bench/run.py does). Sets:

- **small** (request-bound): 50 repositories x 2 tags, each image a shared 256 KiB base + 2 x 64 KiB layers;
- **medium** (byte-bound): 16 images x 2 x 16 MiB layers (512 MiB).

Per run: wall time from the first shard's start to the last shard's exit; CPU seconds (user + system,
from ``wait4``) of all shard processes together and of the slowest shard; the two registries' CPU seconds
meanwhile (from /proc); the target's requests by kind; each shard's image and blob counts (from its
summary). Every run is checked: every shard exits 0, reports no failed image, and the target then holds
every source tag. Medians of the repetitions with (min-max); the order of N rotates between repetitions.

Timing figures are only worth reporting from a quiet machine: run it under the machine-wide lock
(``flock /work/tmp/quiet.lock python bench/scale_out.py ...``). The load average at start is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml
from contenders import ROOT, installed_bytecode, process_cpu_seconds, request_kinds
from machine import describe, header
from run import number, storage, stored_blob_bytes, with_range
from startup import spread

sys.path.insert(0, str(ROOT / "tests"))

from imagesync.controller.render import worker_options
from imagesync.controller.spec import parse_job_spec
from testbed import seed
from testbed.registry import RegistryProcess

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
DEFAULT_SHARDS = (1, 2, 4)
# Seconds one run may take before it is killed: far above any healthy run of these sets on 2 cores.
RUN_TIMEOUT = 300.0
WRITE_METHODS = ("POST", "PUT", "PATCH", "DELETE")


# -- data sets ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScaleSet:
    name: str
    description: str
    build: Callable[[RegistryProcess, bool], list[str]]  # seeds the source, returns its repositories


def build_small(source: RegistryProcess, quick: bool) -> list[str]:
    repos, base_size, layer = (4, 16 * KiB, 4 * KiB) if quick else (50, 256 * KiB, 64 * KiB)
    base = seed.push_random_blob(source, "small/r00", base_size, "small-base")
    with seed.open_api(source) as api:
        for r in range(repos):
            for t in range(2):
                seed.push_image(api, f"small/r{r:02d}", f"t{t}", layers=(base, layer, layer), seed=f"s{r}/{t}")
    return [f"small/r{r:02d}" for r in range(repos)]


def build_medium(source: RegistryProcess, quick: bool) -> list[str]:
    images, layer = (4, 2 * MiB) if quick else (16, 16 * MiB)
    with seed.open_api(source) as api:
        for r in range(images):
            seed.push_image(api, f"medium/m{r:02d}", "1", layers=(layer, layer), seed=f"m{r}")
    return [f"medium/m{r:02d}" for r in range(images)]


SETS = {
    "small": ScaleSet("small", "50 repos x 2 tags, a shared 256 KiB base + 2 x 64 KiB layers each", build_small),
    "medium": ScaleSet("medium", "16 images x 2 x 16 MiB layers", build_medium),
}


# -- one run -------------------------------------------------------------------------------------------------


SUMMARY_IMAGES = re.compile(r"Images: (\d+) synced, (\d+) skipped .*?, (\d+) failed, (\d+) total")
SUMMARY_BLOBS = re.compile(r"Blobs: (\d+) copied, (\d+) mounted, (\d+) skipped")


def parse_summary(text: str) -> dict[str, int]:
    """The counts of a worker's closing summary (cli/progress.py ``summary``): images synced, skipped,
    failed and total, blobs copied, mounted and skipped. Raises ValueError when a line is missing."""
    images, blobs = SUMMARY_IMAGES.search(text), SUMMARY_BLOBS.search(text)
    if images is None or blobs is None:
        raise ValueError(f"no worker summary in: {text[-300:]!r}")
    synced, skipped, failed, total = (int(g) for g in images.groups())
    copied, mounted, present = (int(g) for g in blobs.groups())
    return {"synced": synced, "skipped": skipped, "failed": failed, "total": total,
            "blobs_copied": copied, "blobs_mounted": mounted, "blobs_skipped": present}


def write_config(config_dir: Path, source: RegistryProcess, target: RegistryProcess, repos: Sequence[str],
                 shards: int) -> None:
    """The run Secret's files, as controller/render.py writes them for an ImageSyncJob with these rules
    (every tag of each repository to the same path on the target) and ``spec.parallelism`` = ``shards``."""
    spec = parse_job_spec({"images": {f"{source.host}/{r}": f"{target.host}/{r}" for r in repos},
                           "parallelism": shards})
    config_dir.mkdir(parents=True, exist_ok=True)
    (config_dir / "auth.yaml").write_text(yaml.safe_dump({source.host: {"insecure": True},
                                                          target.host: {"insecure": True}}))
    (config_dir / "images.yaml").write_text(yaml.safe_dump(dict(spec.images), sort_keys=True))
    (config_dir / "options.json").write_text(json.dumps(worker_options(spec), sort_keys=True))


def shard_environment(config_dir: Path, index: int, shards: int) -> dict[str, str]:
    """A worker pod's environment for shard ``index`` of ``shards``, without any progress reporting."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("IMAGESYNC_", "KUBERNETES_")) and k not in ("JOB_COMPLETION_INDEX", "POD_NAME")}
    env.update({"IMAGESYNC_CONFIG_DIR": str(config_dir), "IMAGESYNC_SHARDS": str(shards),
                "JOB_COMPLETION_INDEX": str(index), "POD_NAME": f"scale-out-{index}"})
    return env


@dataclass
class Shard:
    index: int
    seconds: float  # its start to its exit
    cpu_s: float
    maxrss_bytes: int
    returncode: int
    counts: dict[str, int] = field(default_factory=dict)


@dataclass
class ScaleRun:
    shards: int
    seconds: float  # the first shard's start to the last shard's exit
    cpu_s: float  # all shard processes
    source_registry_cpu_s: float
    target_registry_cpu_s: float
    # Everything else the machine ran meanwhile (other users' work, this driver): the machine is shared.
    others_cpu_s: float
    target_requests: dict[str, int]
    source_requests: int
    load_average: list[float]
    per_shard: list[Shard]


def machine_busy_cpu_seconds() -> float:
    """CPU seconds every process on this machine has used since boot (/proc/stat: all but idle and iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:8]]
    user, nice, system, _idle, _iowait, irq, softirq = fields
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def run_shards(workdir: Path, source: RegistryProcess, target: RegistryProcess, repos: Sequence[str],
               shards: int) -> ScaleRun:
    """Start ``shards`` worker processes at once into ``target`` and wait for every one."""
    config_dir = workdir / "config"
    write_config(config_dir, source, target, repos, shards)
    command = [sys.executable, "-m", "imagesync.cli.main", "worker"]
    load = [round(x, 2) for x in os.getloadavg()]
    source_mark, target_mark = source.log_mark(), target.log_mark()
    source_cpu, target_cpu = process_cpu_seconds(source.pid), process_cpu_seconds(target.pid)
    machine_cpu = machine_busy_cpu_seconds()
    started: dict[int, tuple[int, float, Path]] = {}
    first = time.monotonic()
    for index in range(shards):
        out = workdir / f"shard-{index}.out"
        with out.open("wb") as stdout, (workdir / f"shard-{index}.err").open("wb") as stderr:
            process = subprocess.Popen(command, env=shard_environment(config_dir, index, shards), stdout=stdout,
                                       stderr=stderr)
        started[process.pid] = (index, time.monotonic(), out)
    results: list[Shard] = []
    deadline = first + RUN_TIMEOUT
    while started:
        # wait4 gives each child's own rusage (CPU, peak RSS) at its exit, whichever finishes first.
        pid, status, usage = os.wait4(-1, os.WNOHANG)
        if pid == 0:
            if time.monotonic() > deadline:
                for stuck in started:
                    os.kill(stuck, 9)
                raise RuntimeError(f"{shards} shard(s) still running after {RUN_TIMEOUT:.0f} s")
            time.sleep(0.005)
            continue
        if pid not in started:
            continue
        index, began, out = started.pop(pid)
        results.append(Shard(index, time.monotonic() - began, usage.ru_utime + usage.ru_stime,
                             usage.ru_maxrss * KiB, os.waitstatus_to_exitcode(status)))
        results[-1].counts = parse_summary(out.read_text()) if results[-1].returncode == 0 else {}
    seconds = time.monotonic() - first
    machine_cpu = machine_busy_cpu_seconds() - machine_cpu
    source_cpu, target_cpu = process_cpu_seconds(source.pid) - source_cpu, process_cpu_seconds(target.pid) - target_cpu
    shards_cpu = sum(s.cpu_s for s in results)
    run = ScaleRun(shards, seconds, shards_cpu, source_cpu, target_cpu,
                   max(0.0, machine_cpu - shards_cpu - source_cpu - target_cpu),
                   request_kinds(target.request_log(target_mark)), len(source.request_log(source_mark)), load,
                   sorted(results, key=lambda s: s.index))
    for shard in run.per_shard:
        if shard.returncode != 0 or shard.counts.get("failed"):
            errors = (workdir / f"shard-{shard.index}.err").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"shard {shard.index} of {shards} failed (exit {shard.returncode}, "
                               f"{shard.counts.get('failed', '?')} failed image(s)):\n{errors}")
    return run


def check_copied(source: RegistryProcess, target: RegistryProcess, repos: Sequence[str]) -> int:
    """Every tag of every source repository is on the target: the number of tags, or RuntimeError."""
    total = 0
    for repo in repos:
        expected, found = set(seed.list_tags(source, repo)), set(seed.list_tags(target, repo))
        if missing := expected - found:
            raise RuntimeError(f"{repo}: {len(missing)} tag(s) missing on the target after the run")
        total += len(expected)
    return total


def bench_set(scale_set: ScaleSet, shard_counts: Sequence[int], reps: int, quick: bool,
              workdir: Path) -> dict[str, Any]:
    runs: dict[int, list[ScaleRun]] = {n: [] for n in shard_counts}
    with RegistryProcess(workdir / "source") as source:
        began = time.monotonic()
        repos = scale_set.build(source, quick)
        tags = sum(len(seed.list_tags(source, repo)) for repo in repos)
        print(f"   seeded {tags} tags in {time.monotonic() - began:.1f} s", file=sys.stderr, flush=True)
        volume = 0
        for rep in range(reps):
            first = rep % len(shard_counts)
            for n in [*shard_counts[first:], *shard_counts[:first]]:
                run_dir = workdir / f"n{n}-{rep}"
                with RegistryProcess(run_dir / "target") as target:
                    run = run_shards(run_dir, source, target, repos, n)
                    check_copied(source, target, repos)
                    volume = volume or stored_blob_bytes(run_dir / "target")
                runs[n].append(run)
                images = "/".join(str(s.counts["total"]) for s in run.per_shard)
                print(f"   rep {rep} N={n}: {run.seconds:.2f} s, shards' CPU {run.cpu_s:.2f} s, registries' CPU "
                      f"{run.source_registry_cpu_s:.2f} / {run.target_registry_cpu_s:.2f} s, images per shard "
                      f"{images}", file=sys.stderr, flush=True)
                subprocess.run(["rm", "-rf", str(run_dir)], check=False)
    return {"set": scale_set.name, "description": scale_set.description, "repos": len(repos), "tags": tags,
            "unique_bytes": volume, "rows": [summarise(n, runs[n], tags, volume) for n in shard_counts]}


def import_cpu_seconds(runs: int = 3) -> float:
    """CPU seconds (user + system) of a fresh interpreter importing the worker's code: the start-up every
    pod pays before its first request; the median of ``runs``."""
    samples = []
    for _ in range(runs):
        process = subprocess.Popen([sys.executable, "-c", "import imagesync.worker.main"])
        _, status, usage = os.wait4(process.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError("importing imagesync.worker.main failed")
        samples.append(usage.ru_utime + usage.ru_stime)
    return statistics.median(samples)


# -- summary -----------------------------------------------------------------------------------------------


def write_requests(kinds: Mapping[str, int]) -> int:
    """Requests that change the registry (POST, PUT, PATCH, DELETE), from ``request_kinds`` counts (whose
    keys with a status code repeat a subset of their parent's count, and are skipped)."""
    return sum(count for kind, count in kinds.items()
               if kind.split(" ")[0] in WRITE_METHODS and not kind.rsplit(" ", 1)[-1].isdigit())


def summarise(shards: int, runs: Sequence[ScaleRun], tags: int, volume: int) -> dict[str, Any]:
    median_run = sorted(runs, key=lambda r: r.seconds)[(len(runs) - 1) // 2]
    per_shard_images = [s.counts["total"] for s in median_run.per_shard]
    return {
        "shards": shards, "reps": len(runs),
        "seconds": spread([r.seconds for r in runs]),
        "cpu_s": spread([r.cpu_s for r in runs]),
        "slowest_shard_cpu_s": spread([max(s.cpu_s for s in r.per_shard) for r in runs]),
        "source_registry_cpu_s": spread([r.source_registry_cpu_s for r in runs]),
        "target_registry_cpu_s": spread([r.target_registry_cpu_s for r in runs]),
        "others_cpu_s": spread([r.others_cpu_s for r in runs]),
        "images_per_shard": per_shard_images,
        "blobs_copied": sum(s.counts["blobs_copied"] for s in median_run.per_shard),
        "blobs_mounted": sum(s.counts["blobs_mounted"] for s in median_run.per_shard),
        "target_requests": median_run.target_requests["total"],
        "target_write_requests": write_requests(median_run.target_requests),
        "source_requests": median_run.source_requests,
        "images_per_s": tags / statistics.median(r.seconds for r in runs),
        "mb_per_s": volume / statistics.median(r.seconds for r in runs) / 1e6,
        "load_average_at_runs": [r.load_average[0] for r in runs],
        "runs": [asdict(r) for r in runs],
    }


def table(results: Sequence[Mapping[str, Any]]) -> str:
    lines = ["| set | N | wall s | speed-up | shards' CPU s (all) | slowest shard CPU s | registries' CPU s "
             "src / dst | all CPU s / wall s | images per shard | blobs copied / mounted | target requests "
             "(writes) | source requests | others' CPU s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for result in results:
        base = result["rows"][0]["seconds"]["median"]
        for row in result["rows"]:
            busy = (row["cpu_s"]["median"] + row["source_registry_cpu_s"]["median"]
                    + row["target_registry_cpu_s"]["median"]) / row["seconds"]["median"]
            lines.append(
                f"| {result['set']} | {row['shards']} | {with_range(row['seconds'])} | "
                f"{base / row['seconds']['median']:.2f} | {with_range(row['cpu_s'])} | "
                f"{with_range(row['slowest_shard_cpu_s'])} | {number(row['source_registry_cpu_s']['median'])} / "
                f"{number(row['target_registry_cpu_s']['median'])} | {busy:.2f} | "
                f"{' / '.join(str(i) for i in row['images_per_shard'])} | {row['blobs_copied']} / "
                f"{row['blobs_mounted']} | {row['target_requests']} ({row['target_write_requests']}) | "
                f"{row['source_requests']} | {number(row['others_cpu_s']['median'])} |")
    return "\n".join(lines)


# -- the model's inputs --------------------------------------------------------------------------------------


def model_inputs(results: Sequence[Mapping[str, Any]], import_cpu_s: float) -> dict[str, float]:
    """Per-image and per-byte costs from each set's N = 1 row, and the CPU each extra shard adds (start-up
    and planning every rule again) from its largest N, split into the import (``import_cpu_s``) and the
    planning of each repository."""
    inputs: dict[str, float] = {"worker_import_cpu_s": import_cpu_s}
    for result in results:
        name = result["set"]
        one, most = result["rows"][0], result["rows"][-1]
        if one["shards"] != 1:
            continue
        tags, volume = result["tags"], result["unique_bytes"]
        cpu, src, dst = (one[k]["median"] for k in ("cpu_s", "source_registry_cpu_s", "target_registry_cpu_s"))
        inputs[f"{name}_engine_cpu_ms_per_image"] = cpu * 1000 / tags
        inputs[f"{name}_engine_cpu_s_per_gib"] = cpu / (volume / GiB)
        inputs[f"{name}_bytes_per_image"] = volume / tags
        inputs[f"{name}_registries_cpu_ms_per_image"] = (src + dst) * 1000 / tags
        inputs[f"{name}_target_registry_cpu_s_per_gib"] = dst / (volume / GiB)
        inputs[f"{name}_target_requests_per_image"] = one["target_requests"] / tags
        inputs[f"{name}_target_writes_per_image"] = one["target_write_requests"] / tags
        inputs[f"{name}_source_requests_per_image"] = one["source_requests"] / tags
        if most["shards"] > 1:
            extra = (most["cpu_s"]["median"] - cpu) / (most["shards"] - 1)
            inputs[f"{name}_extra_cpu_s_per_added_shard"] = extra
            inputs[f"{name}_planning_cpu_ms_per_repo"] = max(0.0, extra - import_cpu_s) * 1000 / result["repos"]
    return inputs


# -- the paper model ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    images: int
    bytes: float
    requests_per_image: float  # at the quota-limited registry (e.g. PutImage: 1 per manifest)


@dataclass(frozen=True)
class Limits:
    cpu_s_per_image: float  # engine CPU on one core (a pod runs one Python event loop: ~1 core)
    cpu_s_per_byte: float
    fixed_s_per_pod: float  # start-up and planning every rule, which every pod does whole
    pod_link_bps: float  # bytes per second each pod's node can move
    shared_link_bps: float  # bytes per second of the path all pods share (egress, interconnect)
    ingest_bps: float  # bytes per second the target registry can store
    requests_per_s: float  # the quota of the limited request kind


def model_seconds(work: Workload, limits: Limits, pods: int) -> tuple[float, str]:
    """time(N) ~ fixed + max(CPU work / N, bytes / link, requests / quota, bytes / ingest): the time and the
    name of the bound that sets it. Each pod is on its own node; the pods' links add up to the shared one."""
    bounds = {
        "pod CPU": (work.images * limits.cpu_s_per_image + work.bytes * limits.cpu_s_per_byte) / pods,
        "link": work.bytes / min(pods * limits.pod_link_bps, limits.shared_link_bps),
        "request quota": work.images * work.requests_per_image / limits.requests_per_s,
        "registry ingest": work.bytes / limits.ingest_bps,
    }
    name = max(bounds, key=lambda key: bounds[key])
    return limits.fixed_s_per_pod + bounds[name], name


GBIT = 1e9 / 8  # bytes per second
UNBOUNDED = float("inf")


@dataclass(frozen=True)
class Scenario:
    """A sync on paper: the work, the limits that do not come from this machine, and where each comes from."""

    name: str
    images: int
    repos: int
    bytes_per_image: float
    cost_set: str  # the measured set whose per-image costs apply ("small" or "medium")
    requests_per_image: float | None  # at the quota-limited registry; None: the measured target writes
    requests_per_s: float = UNBOUNDED
    pod_link_bps: float = 10 * GBIT
    shared_link_bps: float = 10 * GBIT
    ingest_cores: float | None = None  # a self-hosted docker-registry target with this many cores


SMALL_MIRROR = Scenario("20k small images (1 MiB new each) -> a target that scales", images=20_000, repos=2_000,
                        bytes_per_image=float(MiB), cost_set="small", requests_per_image=1.0)
BIG_IMAGES = Scenario("500 x 1 GiB images -> a target that scales, 1 Gbit/s nodes, 10 Gbit/s shared", images=500,
                      repos=500, bytes_per_image=float(GiB), cost_set="medium", requests_per_image=1.0,
                      pod_link_bps=1 * GBIT)
SCENARIOS = (
    SMALL_MIRROR,
    # One PutImage per image (amazon ECR service quotas, default per Region).
    replace(SMALL_MIRROR, name="same -> Amazon ECR, PutImage 10/s (default quota)", requests_per_s=10.0),
    # Every write request counts (Artifact Registry quotas: 18,000 write requests per minute per region).
    replace(SMALL_MIRROR, name="same -> Artifact Registry, 18,000 writes/min (default quota)",
            requests_per_image=None, requests_per_s=300.0),
    # A pull is a manifest GET; the engine GETs each image's manifest once (docker docs, usage and limits).
    replace(SMALL_MIRROR, name="same <- Docker Hub, personal account: 100 pulls/hour", requests_per_s=100 / 3600),
    BIG_IMAGES,
    replace(BIG_IMAGES, name="same -> one docker-registry with 2 cores", ingest_cores=2.0),
)


def scenario_rows(inputs: Mapping[str, float], pods: Sequence[int]) -> list[tuple[str, list[tuple[float, str]]]]:
    """Each scenario's model time for each pod count, with the measured costs as inputs: per-image CPU from
    the small set, per-byte CPU from the medium set (its per-image part taken out), planning per repository
    and the import per pod; the docker-registry's ingest from its measured CPU per GiB."""
    per_image = inputs["small_engine_cpu_ms_per_image"] / 1000
    per_byte = max(0.0, (inputs["medium_engine_cpu_ms_per_image"] / 1000 - per_image)
                   / inputs["medium_bytes_per_image"])
    planning = max(inputs.get(f"{name}_planning_cpu_ms_per_repo", 0.0) for name in ("small", "medium")) / 1000
    rows = []
    for scenario in SCENARIOS:
        requests_per_image = (scenario.requests_per_image if scenario.requests_per_image is not None
                              else inputs[f"{scenario.cost_set}_target_writes_per_image"])
        ingest = (scenario.ingest_cores / inputs["medium_target_registry_cpu_s_per_gib"] * GiB
                  if scenario.ingest_cores else UNBOUNDED)
        work = Workload(scenario.images, scenario.images * scenario.bytes_per_image, requests_per_image)
        limits = Limits(per_image, per_byte, inputs["worker_import_cpu_s"] + planning * scenario.repos,
                        scenario.pod_link_bps, scenario.shared_link_bps, ingest, scenario.requests_per_s)
        rows.append((scenario.name, [model_seconds(work, limits, n) for n in pods]))
    return rows


# -- main --------------------------------------------------------------------------------------------------------


MODEL_PODS = (1, 2, 4, 8, 16, 32)


def model_text(inputs: Mapping[str, float]) -> str:
    lines = ["| scenario | " + " | ".join(f"N = {n}" for n in MODEL_PODS) + " |",
             "|---|" + "---|" * len(MODEL_PODS)]
    for name, cells in scenario_rows(inputs, MODEL_PODS):
        lines.append(f"| {name} | " + " | ".join(f"{seconds:,.0f} s ({bound})" for seconds, bound in cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[4:9]))
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS), metavar="SET",
                        help=f"data sets, in this order (default: {' '.join(SETS)})")
    parser.add_argument("--shards", nargs="+", type=int, default=list(DEFAULT_SHARDS), metavar="N",
                        help="shard counts (worker processes started at once), the first is the speed-up's "
                             "base (default: 1 2 4)")
    parser.add_argument("--reps", type=int, help="repetitions (default 3; 1 with --quick)")
    parser.add_argument("--quick", action="store_true", help="tiny sets, one repetition: checks the harness")
    parser.add_argument("--json", type=Path, help="also write everything (every run) as JSON to this file")
    parser.add_argument("--model-from", type=Path, metavar="JSON",
                        help="run nothing: print the paper model's scenarios from the model inputs of an earlier "
                             "--json file")
    args = parser.parse_args()
    installed_bytecode()
    if args.model_from:
        try:
            inputs = json.loads(args.model_from.read_text())["model_inputs"]
            print(model_text(inputs))
        except (OSError, ValueError, KeyError) as exc:
            parser.error(f"--model-from {args.model_from}: not a scale-out JSON with both sets' inputs ({exc!r})")
        return 0
    if any(n < 1 for n in args.shards):
        parser.error("--shards: every N must be 1 or more")
    reps = args.reps or (1 if args.quick else 3)
    results = []
    with tempfile.TemporaryDirectory(prefix="imagesync-scale-out-") as tmp, \
            storage(Path(tmp) / "data", size="3g") as workdir:
        machine = describe(workdir)
        print(header(machine), file=sys.stderr, flush=True)
        for name in args.sets:
            print(f"== {name}: {SETS[name].description}{' (quick: shrunk)' if args.quick else ''}",
                  file=sys.stderr, flush=True)
            results.append(bench_set(SETS[name], args.shards, reps, args.quick, workdir / name))
        inputs = model_inputs(results, import_cpu_seconds())
    print(header(machine))
    if args.quick:
        print("QUICK RUN: tiny sets, 1 repetition: checks the harness, not figures.")
    print(f"\nN worker processes (`imagesync worker`, IMAGESYNC_SHARDS=N, JOB_COMPLETION_INDEX=0..N-1) started "
          f"at once; medians of {reps} (min-max). all CPU s / wall s: the shards' and both registries' CPU over "
          f"the wall time (this machine has {machine['nproc']} CPUs); others' CPU s: what the rest of the machine used "
          f"meanwhile (/proc/stat less the shards and registries).\n")
    print(table(results))
    print("\nModel inputs (N = 1 medians; extra CPU per added shard from the largest N):\n")
    for key, value in inputs.items():
        print(f"- {key}: {value:.3g}")
    if {"small", "medium"} <= set(args.sets):
        print("\nThe paper model, time(N) ~ fixed + max(CPU / N, bytes / link, requests / quota, bytes / ingest), "
              "with these inputs:\n")
        print(model_text(inputs))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": machine, "options": {"sets": args.sets, "shards": args.shards,
                                                                         "reps": reps, "quick": args.quick},
                                         "results": results, "model_inputs": inputs}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
