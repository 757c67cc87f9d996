"""The long-distance set (issue 13 point 1): imagesync and skopeo through a latency-injecting proxy.

    python bench/long_distance.py                           # both sets, 20 ms each way, one rep
    python bench/long_distance.py --sets small --delay-ms 20 --reps 3 --json bench/results/long.json

Two token-auth docker-registry processes (source, target) on loopback, each with its token server,
and bench/latency_proxy.py in front of all four (the registries and the token servers: the realm in
each registry's challenge points at the token server's proxy port). Every contender talks only to the
proxies. Contenders: ``imagesync sync`` at its default ``--proc`` and at ``--proc 16``, and ``skopeo
sync --all --preserve-digests`` (as in bench/run.py). Each cold run gets a fresh empty target
registry and a fresh proxy process.

Recorded per run: wall time (bench/measure.py), requests per registry from the access logs, split
into ``/v2/`` probes, 401 challenges, manifests, blobs, uploads and tag lists; token fetches per
registry (the token server's own count); TCP connections accepted per registry and token server (the
proxy's count); the proxy's CPU seconds. The latency floor and the ratio to it are computed as
described in docs/benchmarks.md ("Long-distance").
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from contenders import IMAGESYNC, installed_bytecode, measure, process_cpu_seconds  # noqa: E402
from run import build_c, storage  # noqa: E402

from testbed import seed  # noqa: E402
from testbed.net import free_port  # noqa: E402
from testbed.registry import LoggedRequest, RegistryProcess  # noqa: E402
from testbed.skopeo import Skopeo  # noqa: E402
from testbed.tokenserver import TOKEN_PATH  # noqa: E402

KiB = 1024
PROXY = ROOT / "bench" / "latency_proxy.py"
DEFAULT_PROC = 5  # imagesync sync's default --proc


@dataclass
class LongSet:
    name: str
    description: str
    build: Callable[[RegistryProcess], list[str]]
    images: int  # tags copied
    index: bool  # every tag an index over two single-platform images


def build_small(source: RegistryProcess) -> list[str]:
    """50 repositories x 2 tags; a shared 256 KiB base layer and two 32 KiB layers of their own."""
    base = seed.push_random_blob(source, "s/r00", 256 * KiB, "base")
    with seed.open_api(source) as api:
        for r in range(50):
            for t in range(2):
                seed.push_image(api, f"s/r{r:02d}", f"t{t}", layers=(base, 32 * KiB, 32 * KiB), seed=f"s{r}/{t}")
    return [f"s/r{r:02d}" for r in range(50)]


SETS = {
    "small": LongSet("small", "many-small: 50 repos x 2 tags, 256 KiB shared base + 2 x 32 KiB layers", build_small,
                     100, False),
    "multi": LongSet("multi", "multi-arch: bench/run.py set C, 10 repos x 2 tags of two-platform OCI indexes "
                     "(1 MiB + 512 KiB layers per platform)", build_c, 20, True),
}

# Round trips on one image's critical path, for a client that does nothing needless (see the docs):
# single-platform: GET manifest, POST upload (the blob GET overlaps it), PUT blob, PUT manifest;
# index: GET index, GET children (in parallel), POST, PUT blob, PUT children, PUT index.
RTT_PER_IMAGE = {False: 4, True: 6}
# Once per run: TCP connect, the 401 challenge, token-server connect and token GET (both registries in parallel).
RTT_SETUP = 4
# The first repository's token (for its scope) and tag list before any image can start; later ones overlap.
RTT_FIRST_REPO = 2


def floor_seconds(data_set: LongSet, proc: int, rtt: float) -> float:
    return rtt * (RTT_SETUP + RTT_FIRST_REPO + math.ceil(data_set.images / proc) * RTT_PER_IMAGE[data_set.index])


def token_registry(workdir: Path) -> tuple[RegistryProcess, int]:
    """A token-auth registry whose challenge realm points at a proxy port (returned) for its token server."""
    registry = RegistryProcess(workdir, auth="token")
    registry._prepare()  # starts the token server, so its port is known before the registry's config is written
    realm_port = free_port()
    registry._extra_config = {"auth": {"token": {"realm": f"http://127.0.0.1:{realm_port}{TOKEN_PATH}"}}}
    return registry, realm_port


class ProxyProcess:
    def __init__(self, workdir: Path, maps: dict[str, tuple[int, int]], delay_ms: float, rate: str | None) -> None:
        self.maps = maps
        self.stats_file = workdir / "proxy-stats.json"
        argv = [sys.executable, str(PROXY), "--delay-ms", str(delay_ms), "--stats", str(self.stats_file)]
        for listen, target in maps.values():
            argv += ["--map", f"{listen}:{target}"]
        if rate:
            argv += ["--rate", rate]
        self.process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        assert self.process.stdout.readline().strip() == "ready"

    def stop(self) -> dict[str, Any]:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=30)
        data: dict[str, Any] = json.loads(self.stats_file.read_text())
        by_port = {m["listen"]: m for m in data["maps"]}
        data["by_name"] = {name: by_port[listen] for name, (listen, _) in self.maps.items()}
        return data


def classify(log: list[LoggedRequest]) -> dict[str, int]:
    kinds: Counter[str] = Counter()
    for r in log:
        if r.path == "/v2/":
            kinds["v2_probe"] += 1
        elif "/blobs/uploads/" in r.path:
            kinds["upload"] += 1
        elif "/blobs/" in r.path:
            kinds["blob"] += 1
        elif "/manifests/" in r.path:
            kinds["manifest"] += 1
        elif r.path.endswith("/tags/list"):
            kinds["tags"] += 1
        else:
            kinds["other"] += 1
        if r.status == 401:
            kinds["challenge_401"] += 1
    kinds["total"] = len(log)
    return dict(kinds)


def calibrate(workdir: Path, delay_ms: float, requests: int = 200) -> dict[str, float]:
    """What the proxy adds: sequential GET /v2/ on one keep-alive connection, direct and through the proxy."""
    import httpx

    with RegistryProcess(workdir / "calibrate") as registry:
        port = free_port()
        proxy = ProxyProcess(workdir, {"registry": (port, registry.port or 0)}, delay_ms, None)
        try:
            result: dict[str, float] = {}
            for name, url in (("direct", registry.url), ("proxied", f"http://127.0.0.1:{port}")):
                with httpx.Client() as client:
                    started = time.monotonic()
                    client.get(f"{url}/v2/").raise_for_status()
                    result[f"{name}_first_ms"] = (time.monotonic() - started) * 1000
                    started = time.monotonic()
                    for _ in range(requests):
                        client.get(f"{url}/v2/").raise_for_status()
                    result[f"{name}_ms"] = (time.monotonic() - started) * 1000 / requests
        finally:
            stats = proxy.stop()
    result["added_ms"] = result["proxied_ms"] - result["direct_ms"]
    result["proxy_cpu_ms_per_request"] = stats["cpu_s"] * 1000 / (requests + 1)
    return result


def run_one(data_set: LongSet, contender: str, proc: int | None, workdir: Path, source: RegistryProcess,
            source_realm: int, repos: list[str], delay_ms: float, rate: str | None) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    target, target_realm = token_registry(workdir / "target")
    with target:
        assert source.token_server is not None and target.token_server is not None
        ports = {name: free_port() for name in ("source", "target")}
        maps = {"source": (ports["source"], source.port or 0),
                "source-token": (source_realm, source.token_server.port),
                "target": (ports["target"], target.port or 0),
                "target-token": (target_realm, target.token_server.port)}
        src_host, dst_host = f"127.0.0.1:{ports['source']}", f"127.0.0.1:{ports['target']}"
        proxy = ProxyProcess(workdir, maps, delay_ms, rate)
        try:
            mark = source.log_mark()
            source.token_server.clear_requests()
            target.token_server.clear_requests()
            if contender == "imagesync":
                (workdir / "images.yaml").write_text(yaml.safe_dump({f"{src_host}/{r}": f"{dst_host}/{r}"
                                                                     for r in repos}))
                auth = {host: {"username": reg.username, "password": reg.password, "plainHTTP": True}
                        for host, reg in ((src_host, source), (dst_host, target))}
                (workdir / "auth.yaml").write_text(yaml.safe_dump(auth))
                command = [IMAGESYNC, "sync", "--images",
                           str(workdir / "images.yaml"), "--auth", str(workdir / "auth.yaml")]
                if proc is not None:
                    command += ["--proc", str(proc)]
                env = None
            else:
                skopeo = Skopeo(workdir / "skopeo")
                skopeo.login(src_host, source.credentials)
                skopeo.login(dst_host, target.credentials)
                document = {src_host: {"tls-verify": False, "images": {r: [] for r in repos}}}
                (workdir / "skopeo.yaml").write_text(yaml.safe_dump(document))
                prefix = repos[0].split("/")[0]
                command = skopeo.command("sync", "--src", "yaml", "--dest", "docker", "--dest-tls-verify=false",
                                         "--all", "--preserve-digests", str(workdir / "skopeo.yaml"),
                                         f"{dst_host}/{prefix}")
                env = skopeo.env
            registries_cpu = process_cpu_seconds(source.pid) + process_cpu_seconds(target.pid)
            own = resource.getrusage(resource.RUSAGE_SELF)
            result = measure(command, env)
            registries_cpu = process_cpu_seconds(source.pid) + process_cpu_seconds(target.pid) - registries_cpu
            after = resource.getrusage(resource.RUSAGE_SELF)
        finally:
            stats = proxy.stop()
        assert result.returncode == 0, f"{contender} failed on {data_set.name}"
        source_log, target_log = source.request_log(mark), target.request_log()
        return {
            "set": data_set.name, "contender": contender if proc is None else f"{contender} --proc {proc}",
            "proc": proc or (DEFAULT_PROC if contender == "imagesync" else 1), "seconds": result.seconds,
            # CPU seconds during the run: the tool's, the two registries', and this process's (the two token
            # servers are threads of it): on 2 cores, what the latency floor leaves out.
            "cpu_s": {"tool": result.cpu_s, "registries": registries_cpu,
                      "token_servers": after.ru_utime + after.ru_stime - own.ru_utime - own.ru_stime},
            "images": data_set.images,
            "source": classify(source_log), "target": classify(target_log),
            "tokens": {"source": source.token_server.request_count, "target": target.token_server.request_count},
            "connections": {name: m["accepts"] for name, m in stats["by_name"].items()},
            "max_open": {name: m["open_max"] for name, m in stats["by_name"].items()},
            "proxy_cpu_s": stats["cpu_s"], "proxy_bytes": sum(m["bytes_up"] + m["bytes_down"] for m in stats["maps"]),
        }


# --contenders names: imagesync at its default --proc and at 16, and skopeo sync (a developer iterating on
# the engine leaves skopeo out: its cold run of the small set takes minutes).
CONTENDERS: dict[str, tuple[str, int | None]] = {
    "imagesync": ("imagesync", None), "imagesync16": ("imagesync", 16), "skopeo": ("skopeo", None)}


def bench_set(data_set: LongSet, args: argparse.Namespace, workdir: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    source, source_realm = token_registry(workdir / "source")
    # Seed with the token server's own realm (fast), then restart with the realm behind the proxy.
    realm_config = source._extra_config
    source._extra_config = {}
    with source:
        repos = data_set.build(source)
        source.stop()
        source._extra_config = realm_config
        source.start()
        contenders = [CONTENDERS[name] for name in args.contenders]
        for rep in range(args.reps):
            for contender, proc in contenders:
                print(f"   {data_set.name} rep {rep} {contender} {proc or ''}", file=sys.stderr, flush=True)
                rows.append(run_one(data_set, contender, proc, workdir / f"{contender}-{proc}-{rep}", source,
                                    source_realm, repos, args.delay_ms, args.rate))
                print(f"     {rows[-1]['seconds']:.2f} s", file=sys.stderr, flush=True)
    return rows


def table(rows: list[dict[str, Any]], rtt: float) -> str:
    lines = ["| set | contender | wall s | floor s | x floor | requests / image (src + dst) | "
             "/v2/ probes src / dst | tokens src / dst | connections src / dst / token servers | "
             "CPU s: tool / registries / token servers / proxy |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        floor = floor_seconds(SETS[r["set"]], r["proc"], rtt)
        c, cpu = r["connections"], r["cpu_s"]
        ratio = f"{r['seconds'] / floor:.1f}" if floor else "-"  # no floor without a delay
        per_image = (r["source"]["total"] + r["target"]["total"]) / r["images"]
        lines.append(
            f"| {r['set']} | {r['contender']} | {r['seconds']:.2f} | {floor:.2f} | "
            f"{ratio} | "
            f"{per_image:.1f} ({r['source']['total']} + {r['target']['total']}) | "
            f"{r['source'].get('v2_probe', 0)} / {r['target'].get('v2_probe', 0)} | "
            f"{r['tokens']['source']} / {r['tokens']['target']} | "
            f"{c['source']} / {c['target']} / {c['source-token'] + c['target-token']} | "
            f"{cpu['tool']:.2f} / {cpu['registries']:.2f} / {cpu['token_servers']:.2f} / {r['proxy_cpu_s']:.2f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--contenders", nargs="+", default=list(CONTENDERS), choices=list(CONTENDERS))
    parser.add_argument("--delay-ms", type=float, default=20.0, help="one-way delay (default 20, RTT 40 ms)")
    parser.add_argument("--rate", help="bandwidth cap per connection and direction (default none)")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")
    args = parser.parse_args()
    installed_bytecode()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="imagesync-long-") as tmp, storage(Path(tmp) / "data") as workdir:
        cal = calibrate(workdir, args.delay_ms)
        print(f"calibration (GET /v2/ on one keep-alive connection, 200 x): direct {cal['direct_ms']:.2f} ms, "
              f"proxied {cal['proxied_ms']:.2f} ms, added {cal['added_ms']:.2f} ms for a configured "
              f"{2 * args.delay_ms:.0f} ms round trip; first request (with connect) {cal['proxied_first_ms']:.1f} ms; "
              f"proxy CPU {cal['proxy_cpu_ms_per_request']:.3f} ms per request (process start included)")
        for name in args.sets:
            print(f"== {SETS[name].description}", file=sys.stderr, flush=True)
            rows += bench_set(SETS[name], args, workdir / name)
    print(table(rows, 2 * args.delay_ms / 1000))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
