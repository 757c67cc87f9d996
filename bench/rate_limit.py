"""Accuracy of the bandwidth limit (--limit-rate): a ~30 s transfer between two local registries.

    python bench/rate_limit.py                          # 10 MiB/s and 40 MiB/s, 30 s each
    python bench/rate_limit.py --rates 20MiB/s --seconds 30 --proc 4

For each rate: a source registry is seeded with ``rate x seconds`` bytes in several images (so that
``--proc`` transfers share the bucket), the engine syncs them into an empty target registry with the
limit set, and a sampler reads the engine's byte counter every 0.5 s. Reported: the set rate; the
measured rate over the whole sync (bytes / wall time, manifests and uploads' set-up included); the
steady rate between 2 s after the start and the last sample before the end; the error of each against
the set rate. The goal is within 10 %. The request-rate limit (--qps) is set too, so both limits run together.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "operator"))

from imagesync.engine.config import load_auth  # noqa: E402
from imagesync.engine.copy import SyncOptions, sync  # noqa: E402
from imagesync.engine.referrers import ReferrerOptions  # noqa: E402
from imagesync.engine.rules import parse_rules  # noqa: E402
from imagesync.engine.stats import SyncStats  # noqa: E402
from imagesync.engine.transport import format_rate, parse_rate  # noqa: E402
from testbed import seed  # noqa: E402
from testbed.registry import RegistryProcess  # noqa: E402

MiB = 1024 * 1024


async def measure(source: RegistryProcess, target: RegistryProcess, work: Path, rate: float, seconds: float,
                  proc: int, qps: float, tag: str) -> dict[str, float]:
    total = int(rate * seconds)
    images = 8
    layer = max(MiB, total // (images * 2))
    with seed.open_api(source) as api:
        for i in range(images):
            seed.push_image(api, f"rl/{tag}{i}", "1", layers=(layer, layer), seed=f"{tag}{i}")
    auth = work / f"auth-{tag}.yaml"
    auth.write_text(yaml.safe_dump({r.host: {"plainHTTP": True} for r in (source, target)}))
    rules, errors = parse_rules({f"{source.host}/rl/{tag}{i}:1": f"{target.host}/rl/{tag}{i}" for i in range(images)})
    stats = SyncStats()
    samples: list[tuple[float, int]] = []

    async def sampler() -> None:
        while True:
            samples.append((time.monotonic(), stats.bytes_copied))
            await asyncio.sleep(0.5)

    sampling = asyncio.create_task(sampler())
    started = time.monotonic()
    await sync(rules, errors, load_auth(str(auth)),
               SyncOptions(proc=proc, qps=qps, limit_rate=rate, referrers=ReferrerOptions(enabled=False)), stats)
    wall = time.monotonic() - started
    sampling.cancel()
    assert not stats.failed(), stats.failed()
    steady = [(t, b) for t, b in samples if t - started >= 2.0]
    (t0, b0), (t1, b1) = steady[0], steady[-1]
    return {"set": rate, "bytes": stats.bytes_copied, "wall": wall, "overall": stats.bytes_copied / wall,
            "steady": (b1 - b0) / (t1 - t0), "steady_seconds": t1 - t0}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", nargs="+", default=["10MiB/s", "40MiB/s"])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--proc", type=int, default=4)
    parser.add_argument("--qps", type=float, default=50.0)
    args = parser.parse_args()
    print("| set limit | bytes | wall time | measured (whole sync) | error | steady (from 2 s) | error |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="imagesync-rate-") as tmp:
        work = Path(tmp)
        with RegistryProcess(work / "source") as source, RegistryProcess(work / "target") as target:
            for n, text in enumerate(args.rates):
                r = await measure(source, target, work, parse_rate(text), args.seconds, args.proc, args.qps, f"r{n}x")
                print(f"| {format_rate(r['set'])} | {r['bytes'] / MiB:.0f} MiB | {r['wall']:.1f} s "
                      f"| {format_rate(r['overall'])} | {100 * (r['overall'] / r['set'] - 1):+.1f} % "
                      f"| {format_rate(r['steady'])} | {100 * (r['steady'] / r['set'] - 1):+.1f} % |", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
