"""imagesync against skopeo sync and the registries' own ceiling or floor, on loopback registries.

    python bench/run.py                                   # every set, 3 repetitions, markdown on stdout
    python bench/run.py --json bench/results/latest.json  # also the full results (every run) as JSON
    python bench/run.py --sets B B1G --reps 5             # some sets only
    python bench/run.py --quick                           # every set shrunk to a few images, 1 repetition:
                                                          # checks the harness, measures nothing

Sets (issue 13): A many small images, B and B1G big layers, C multi-platform indexes, T one repository
with 1000 tiny tags, and ``startup`` (a one-image no-op next to a bare interpreter, with import times).
For every data set and contender: a cold run into an empty target registry and a no-op re-run; the
contenders alternate within each repetition (the order rotating from one repetition to the next). Per
contender: wall times (median, min-max), ratios to skopeo and to the yardstick of the same run (the raw
copy ceiling, or for T the push floor, see bench/floors.py), throughput, the tool's CPU seconds (user +
system of its process tree, from bench/measure.py) in total and per GiB copied, the registries' CPU
meanwhile, peak RSS, and the requests the target registry served, by kind. Registry storage goes on
tmpfs when running as root (ext4 here is mounted with ``discard``, which skews runs).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import floors
from contenders import (
    ROOT,
    Measured,
    imagesync_command,
    installed_bytecode,
    measure,
    process_cpu_seconds,
    request_kinds,
    skopeo_command,
)
from contenders import measured as measured  # re-exported: bench/long_distance.py imports it from here
from machine import describe, header
from startup import spread, startup_bench

sys.path.insert(0, str(ROOT / "tests"))

from testbed import seed
from testbed.registry import RegistryProcess

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
STARTUP = "startup"
CONTENDERS = ("imagesync", "skopeo", "yardstick")


@dataclass
class DataSet:
    name: str
    description: str
    quick_description: str
    build: Callable[..., list[str]]  # build(source, quick=False): seeds the source, returns its repositories
    yardstick: str = "ceiling"  # "ceiling" (raw copy, floors.raw_ceiling) or "floor" (floors.push_floor)

    def contenders(self, chosen: list[str]) -> tuple[str, ...]:
        """``chosen`` (names from CONTENDERS) in their standard order, "yardstick" named for this set."""
        return tuple(self.yardstick if name == "yardstick" else name for name in CONTENDERS if name in chosen)


def describe_set(data_set: DataSet, quick: bool) -> str:
    return data_set.quick_description if quick else data_set.description


def build_a(source: RegistryProcess, quick: bool = False) -> list[str]:
    repos, layer, base_size = (3, 64 * KiB, 256 * KiB) if quick else (50, MiB, 5 * MiB)
    base = seed.push_random_blob(source, "a/r00", base_size, "base")
    with seed.open_api(source) as api:
        for r in range(repos):
            for t in range(2):
                seed.push_image(api, f"a/r{r:02d}", f"t{t}", layers=(base, layer, layer, layer), seed=f"a{r}/{t}")
    return [f"a/r{r:02d}" for r in range(repos)]


def build_b(source: RegistryProcess, quick: bool = False) -> list[str]:
    images, layer = (2, 12 * MiB) if quick else (4, 256 * MiB)
    with seed.open_api(source) as api:
        for r in range(images):
            seed.push_image(api, f"b/big{r}", "1", layers=(layer, layer), seed=f"b{r}")
    return [f"b/big{r}" for r in range(images)]


def build_b1g(source: RegistryProcess, quick: bool = False) -> list[str]:
    images, layer = (1, 24 * MiB) if quick else (2, GiB)
    with seed.open_api(source) as api:
        for r in range(images):
            seed.push_image(api, f"b1g/huge{r}", "1", layers=(layer,), seed=f"b1g{r}")
    return [f"b1g/huge{r}" for r in range(images)]


def build_c(source: RegistryProcess, quick: bool = False) -> list[str]:
    repos = 2 if quick else 10
    with seed.open_api(source) as api:
        for r in range(repos):
            for t in range(2):
                seed.push_index(api, f"c/multi{r}", f"t{t}", layers=(MiB, 512 * 1024), seed=f"c{r}/{t}")
    return [f"c/multi{r}" for r in range(repos)]


def build_t(source: RegistryProcess, quick: bool = False) -> list[str]:
    tags = 20 if quick else 1000
    with seed.open_api(source) as api:
        for t in range(tags):
            seed.push_image(api, "t/tags", f"t{t:04d}", layers=(2 * KiB,), seed=f"t{t}")
    return ["t/tags"]


DATA_SETS = {
    "A": DataSet("A", "50 repos x 2 tags, 3 x 1 MiB layers + a shared 5 MiB base",
                 "3 repos x 2 tags, 3 x 64 KiB layers + a shared 256 KiB base", build_a),
    "B": DataSet("B", "4 images x 2 x 256 MiB layers", "2 images x 2 x 12 MiB layers", build_b),
    "B1G": DataSet("B1G", "2 images x one 1 GiB layer", "1 image x one 24 MiB layer", build_b1g),
    "C": DataSet("C", "10 repos x 2 tags, two-platform OCI indexes", "2 repos x 2 tags, two-platform OCI indexes",
                 build_c),
    "T": DataSet("T", "1 repo x 1000 tags, one 2 KiB layer each", "1 repo x 20 tags, one 2 KiB layer each",
                 build_t, yardstick="floor"),
}


@contextmanager
def storage(root: Path, size: str = "6g") -> Iterator[Path]:
    """tmpfs of at most ``size`` when root (and allowed), else a plain directory."""
    root.mkdir(parents=True, exist_ok=True)
    mounted = False
    if os.geteuid() == 0:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "imagesync-bench", str(root)],
                                 capture_output=True, check=False).returncode == 0
    try:
        yield root
    finally:
        if mounted:
            subprocess.run(["umount", str(root)], capture_output=True, check=False)


@dataclass
class Run:
    """One cold or no-op run of one contender, and what the registries did meanwhile."""

    seconds: float
    cpu_s: float  # the tool's process tree (user + system); for the yardsticks, this bench process's
    user_s: float
    sys_s: float
    maxrss_bytes: int | None  # None for the in-process yardsticks
    source_registry_cpu_s: float
    target_registry_cpu_s: float
    source_requests: dict[str, int]
    target_requests: dict[str, int]


class Observation:
    """Snapshots the registries' CPU, their access logs and this process's CPU before a run."""

    def __init__(self, source: RegistryProcess, target: RegistryProcess) -> None:
        self.source, self.target = source, target
        self.source_mark, self.target_mark = source.log_mark(), target.log_mark()
        self.source_cpu, self.target_cpu = process_cpu_seconds(source.pid), process_cpu_seconds(target.pid)
        self.own = resource.getrusage(resource.RUSAGE_SELF)

    def finish(self, seconds: float, tool: Measured | None) -> Run:
        if tool is None:
            own = resource.getrusage(resource.RUSAGE_SELF)
            user_s, sys_s = own.ru_utime - self.own.ru_utime, own.ru_stime - self.own.ru_stime
        else:
            user_s, sys_s = tool.user_s, tool.sys_s
        return Run(seconds, user_s + sys_s, user_s, sys_s, tool.maxrss_bytes if tool else None,
                   process_cpu_seconds(self.source.pid) - self.source_cpu,
                   process_cpu_seconds(self.target.pid) - self.target_cpu,
                   request_kinds(self.source.request_log(self.source_mark)),
                   request_kinds(self.target.request_log(self.target_mark)))


def run_contender(contender: str, workdir: Path, source: RegistryProcess, target: RegistryProcess,
                  repos: list[str], loaded: floors.LoadedImages | None) -> tuple[Run, Run | None]:
    """A cold run into the empty ``target`` and, for the tools, a no-op re-run."""
    if contender in ("ceiling", "floor"):
        observation = Observation(source, target)
        if contender == "ceiling":
            seconds = floors.raw_ceiling(source.url, target.url, repos)
        else:
            assert loaded is not None
            seconds = floors.push_floor(target.url, loaded)
        return observation.finish(seconds, None), None
    if contender == "imagesync":
        command, env = imagesync_command(workdir, source, target, repos), None
    else:
        command, env = skopeo_command(workdir, source, target, repos)
    runs = []
    for phase in ("cold", "no-op"):
        observation = Observation(source, target)
        result = measure(command, env)
        assert result.returncode == 0, f"{contender} failed ({phase})"
        runs.append(observation.finish(result.seconds, result))
    return runs[0], runs[1]


def stored_blob_bytes(registry_dir: Path) -> int:
    return sum(p.stat().st_size for p in (registry_dir / "storage").rglob("data") if "blobs" in str(p))


def median_run(runs: list[Run]) -> Run:
    """The run whose wall time is the median (the lower middle one for an even count)."""
    return sorted(runs, key=lambda r: r.seconds)[(len(runs) - 1) // 2]


def summarise(data_set: DataSet, runs: dict[str, dict[str, list[Run]]], tags: int, volume: int,
              reps: int) -> list[dict[str, Any]]:
    rows = []
    for contender, phases in runs.items():
        cold, noop = phases["cold"], phases["noop"]
        cold_s = statistics.median(r.seconds for r in cold)
        typical = median_run(cold)
        cpu_s = statistics.median(r.cpu_s for r in cold)
        rss = [r.maxrss_bytes for r in cold + noop if r.maxrss_bytes is not None]
        row: dict[str, Any] = {
            "set": data_set.name, "contender": contender, "tags": tags, "unique_bytes": volume, "reps": reps,
            "cold_s": spread([r.seconds for r in cold]),
            "noop_s": spread([r.seconds for r in noop]) if noop else None,
            "mb_per_s": volume / cold_s / 1e6,
            "cpu_s": cpu_s, "user_s": statistics.median(r.user_s for r in cold),
            "sys_s": statistics.median(r.sys_s for r in cold),
            "cpu_s_per_gib": cpu_s / (volume / GiB) if volume else None,
            "cpu_ms_per_tag": cpu_s * 1000 / tags if tags else None,
            "source_registry_cpu_s": statistics.median(r.source_registry_cpu_s for r in cold),
            "target_registry_cpu_s": statistics.median(r.target_registry_cpu_s for r in cold),
            "peak_rss_mib": max(rss) / MiB if rss else None,
            "target_requests_cold": typical.target_requests["total"],
            "target_requests_noop": median_run(noop).target_requests["total"] if noop else None,
            "requests": {"cold": {"source": typical.source_requests, "target": typical.target_requests},
                         "noop": {"source": median_run(noop).source_requests,
                                  "target": median_run(noop).target_requests} if noop else None},
            "runs": {"cold": [asdict(r) for r in cold], "noop": [asdict(r) for r in noop]},
        }
        row["noop_requests_per_tag"] = row["target_requests_noop"] / tags if noop and tags else None
        rows.append(row)
    by_name = {row["contender"]: row for row in rows}
    for row in rows:
        for name, key in (("skopeo", "x_skopeo"), (data_set.yardstick, "x_yardstick")):
            for phase in ("cold_s", "noop_s"):
                other = by_name.get(name)
                ours = row[phase]
                theirs = other[phase] if other else None
                row[f"{key}_{phase[:-2]}"] = ours["median"] / theirs["median"] if ours and theirs else None
        row["yardstick"] = data_set.yardstick
    return rows


def bench_set(data_set: DataSet, reps: int, quick: bool, chosen: list[str], workdir: Path) -> list[dict[str, Any]]:
    contenders = data_set.contenders(chosen)
    with RegistryProcess(workdir / "source") as source:
        started = time.monotonic()
        repos = data_set.build(source, quick=quick)
        tags = sum(len(seed.list_tags(source, repo)) for repo in repos)
        print(f"   seeded {tags} tags in {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)
        loaded = floors.load(source.url, repos) if "floor" in contenders else None
        runs: dict[str, dict[str, list[Run]]] = {c: {"cold": [], "noop": []} for c in contenders}
        volume = 0
        for rep in range(reps):
            # Rotate who goes first, so no contender always meets the freshest (or the most tired) machine.
            first = rep % len(contenders)
            order = contenders[first:] + contenders[:first]
            for contender in order:
                target_dir = workdir / f"target-{contender}-{rep}"
                with RegistryProcess(target_dir) as target:
                    cold, noop = run_contender(contender, workdir / f"{contender}-{rep}", source, target, repos,
                                               loaded)
                    volume = volume or stored_blob_bytes(target_dir)
                runs[contender]["cold"].append(cold)
                if noop is not None:
                    runs[contender]["noop"].append(noop)
                print(f"   rep {rep} {contender}: cold {cold.seconds:.2f} s"
                      + (f", no-op {noop.seconds:.2f} s" if noop else ""), file=sys.stderr, flush=True)
                shutil.rmtree(target_dir, ignore_errors=True)
    return summarise(data_set, runs, tags, volume, reps)


# -- output ----------------------------------------------------------------------------------------------


def number(value: float) -> str:
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"


def with_range(s: dict[str, Any] | None) -> str:
    """``12.3 (11.9-12.8)``: median (min-max); just the value for a single run."""
    if s is None:
        return "-"
    if len(s["all"]) == 1:
        return number(s["median"])
    return f"{number(s['median'])} ({number(s['min'])}-{number(s['max'])})"


def ratio(value: float | None) -> str:
    return f"{value:.2f}" if value is not None else "-"


def times_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| set | contender | cold s | x skopeo | x ceiling / floor | MB/s | no-op s | no-op x skopeo |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        is_yardstick = r["contender"] == r["yardstick"]
        lines.append(
            f"| {r['set']} | {r['contender']} | {with_range(r['cold_s'])} | {ratio(r['x_skopeo_cold'])} | "
            f"{'-' if is_yardstick else ratio(r['x_yardstick_cold'])} | {number(r['mb_per_s'])} | "
            f"{with_range(r['noop_s'])} | {ratio(r['x_skopeo_noop']) if r['noop_s'] else '-'} |")
    return "\n".join(lines)


def resources_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| set | contender | CPU s cold (user + sys) | CPU s / GiB copied (T: ms / tag) | "
             "registries' CPU s src / dst | peak RSS MiB | target requests cold / no-op | no-op requests / tag |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        # Tiny images: the bytes are nothing, the cost is per image.
        per = r["cpu_ms_per_tag"] if r["yardstick"] == "floor" else r["cpu_s_per_gib"]
        per_gib = number(per) if per is not None else "-"
        rss = number(r["peak_rss_mib"]) if r["peak_rss_mib"] is not None else "-"
        noop = r["target_requests_noop"] if r["target_requests_noop"] is not None else "-"
        per_tag = f"{r['noop_requests_per_tag']:.2f}" if r["noop_requests_per_tag"] is not None else "-"
        lines.append(
            f"| {r['set']} | {r['contender']} | {number(r['cpu_s'])} ({number(r['user_s'])} + {number(r['sys_s'])}) | "
            f"{per_gib} | {number(r['source_registry_cpu_s'])} / {number(r['target_registry_cpu_s'])} | {rss} | "
            f"{r['target_requests_cold']} / {noop} | {per_tag} |")
    return "\n".join(lines)


def kinds_text(kinds: dict[str, int] | None) -> str:
    """``HEAD manifest 20 (404: 20), PUT manifest 20``."""
    if not kinds or not kinds["total"]:
        return "-"
    errors: dict[str, list[str]] = {}
    for kind, count in kinds.items():
        parent, _, status = kind.rpartition(" ")
        if status.isdigit():
            errors.setdefault(parent, []).append(f"{status}: {count}")
    return ", ".join(f"{kind} {count}" + (f" ({', '.join(errors[kind])})" if kind in errors else "")
                     for kind, count in kinds.items() if kind != "total" and not kind.rpartition(" ")[2].isdigit())


def requests_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| set (tags) | contender | target, cold | target, no-op | source, cold |", "|---|---|---|---|---|"]
    for r in rows:
        requests = r["requests"]
        noop = requests["noop"]["target"] if requests["noop"] else None
        lines.append(f"| {r['set']} ({r['tags']}) | {r['contender']} | {kinds_text(requests['cold']['target'])} | "
                     f"{kinds_text(noop)} | {kinds_text(requests['cold']['source'])} |")
    return "\n".join(lines)


def goals(rows: list[dict[str, Any]]) -> list[str]:
    """Issue 13's goals that these sets measure, met or not, from this run's own ratios."""
    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    lines = []
    for r in rows:
        if r["contender"] != "imagesync":
            continue
        found = []
        if r["set"] in ("B", "B1G") and r["x_yardstick_cold"]:
            share = 1 / r["x_yardstick_cold"]
            found.append(f"at {share:.0%} of the ceiling's throughput (goal >= 90 %): {verdict(share >= 0.9)}")
        if r["set"] in ("B", "B1G") and r["x_skopeo_cold"]:
            found.append(f"{r['x_skopeo_cold']:.2f}x skopeo's cold time (goal <= 0.85): "
                         f"{verdict(r['x_skopeo_cold'] <= 0.85)}")
        if r["set"] == "T" and r["x_yardstick_cold"]:
            found.append(f"cold {r['x_yardstick_cold']:.2f}x the push floor (goal <= 2): "
                         f"{verdict(r['x_yardstick_cold'] <= 2)}")
        if found:
            lines.append(f"- {r['set']}: imagesync " + "; ".join(found))
    return lines


def startup_text(result: dict[str, Any]) -> str:
    lines = [f"| command | wall s, median (min-max) of {result['runs']} |", "|---|---|"]
    lines += [f"| {name} | {with_range(s)} |" for name, s in result["seconds"].items()]
    imports = result["importtime"]
    lines += ["", f"`python -X importtime` of the no-op sync (the middle of 3 runs): {imports['modules']} modules, "
              f"{imports['total_ms']:.0f} ms of imports (no-op target requests: "
              f"{result['noop_target_requests']}); top 10 by cumulative time:", ""]
    lines += [f"- {e['module']}: {e['cumulative_ms']:.1f} ms" for e in imports["top_cumulative"]]
    return "\n".join(lines)


def report(machine: dict[str, Any], options: dict[str, Any], rows: list[dict[str, Any]],
           startup: dict[str, Any] | None) -> str:
    parts = [header(machine)]
    if options["quick"]:
        parts.append("QUICK RUN: every set shrunk to a few images, 1 repetition: checks the harness, not figures.")
    if rows:
        sets = ", ".join(f"**{name}** {describe_set(DATA_SETS[name], options['quick'])}"
                         for name in dict.fromkeys(r["set"] for r in rows))
        parts += [f"Sets: {sets}. Medians of {options['reps']} repetition(s), (min-max); ratios are of medians "
                  "from this run (x ceiling / floor: the contender's time over the yardstick's).",
                  "### Wall time\n\n" + times_table(rows),
                  "### CPU, memory, requests (cold run, medians; requests of the median run)\n\n"
                  + resources_table(rows),
                  "### Requests by kind (median run)\n\n" + requests_table(rows)]
        if lines := goals(rows):
            parts.append("### Goals (issue 13)\n\n" + "\n".join(lines))
    if startup:
        parts.append("### Start-up\n\n" + startup_text(startup))
    return "\n\n".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    choices = [*DATA_SETS, STARTUP]
    parser.add_argument("--sets", nargs="+", default=choices, choices=choices, metavar="SET",
                        help=f"data sets to run, in this order (default all: {' '.join(choices)})")
    parser.add_argument("--reps", type=int, help="repetitions per set (default 3; 1 with --quick)")
    parser.add_argument("--startup-runs", type=int, help="rounds of the start-up commands (default 10; 3 with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="shrink every set to a few images and run it once: checks the harness, measures nothing")
    parser.add_argument("--contenders", nargs="+", default=list(CONTENDERS), choices=CONTENDERS, metavar="NAME",
                        help="who runs (default all: imagesync skopeo yardstick; yardstick = the set's ceiling or "
                             "push floor); a ratio to a contender left out shows as -")
    parser.add_argument("--json", type=Path, help="also write everything (every run) as JSON")
    args = parser.parse_args()
    installed_bytecode()
    reps = args.reps or (1 if args.quick else 3)
    options = {"sets": args.sets, "contenders": args.contenders, "reps": reps, "quick": args.quick,
               "startup_runs": args.startup_runs or (3 if args.quick else 10)}
    rows: list[dict[str, Any]] = []
    startup = None
    # B1G holds 2 GiB in the source and 2 GiB in one target at a time; 8g leaves room (tmpfs takes only
    # what is written).
    with tempfile.TemporaryDirectory(prefix="imagesync-bench-") as tmp, \
            storage(Path(tmp) / "data", size="8g") as workdir:
        machine = describe(workdir)
        print(header(machine), file=sys.stderr, flush=True)
        for name in args.sets:
            set_dir = workdir / name
            set_dir.mkdir()
            if name == STARTUP:
                print(f"== start-up, {options['startup_runs']} rounds", file=sys.stderr, flush=True)
                startup = startup_bench(set_dir, options["startup_runs"])
            else:
                data_set = DATA_SETS[name]
                print(f"== data set {name}: {describe_set(data_set, args.quick)}", file=sys.stderr, flush=True)
                rows += bench_set(data_set, reps, args.quick, args.contenders, set_dir)
            shutil.rmtree(set_dir, ignore_errors=True)
    print(report(machine, options, rows, startup))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": machine, "options": options, "rows": rows, "startup": startup},
                                        indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
