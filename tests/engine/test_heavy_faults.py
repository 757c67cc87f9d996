"""Heavy faults on both sides: `imagesync sync` (a subprocess) through a :class:`testbed.faultproxy.FaultProxy` in
front of the source and another in front of the target, each breaking at least 10 % of the requests it carries
with resets, 500/502/503, 429 with Retry-After, stalls longer than ``--timeout``, truncated bodies and flipped
bytes.

After the faulty run every image is either digest-identical at the target (manifest and every blob) or listed in
the result file as failed with a reason; no manifest ever reached the target before what it references (the
target proxy checks each manifest PUT, and the target is walked for half-pushed images); a re-run without faults
makes every image identical. The figures (requests, faults by kind, images identical after each run) are printed
for docs/reliability.md (``pytest -s``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from testbed import checker, seed
from testbed.faultproxy import KINDS, FaultMix, FaultProxy
from testbed.registry import RegistryProcess

KiB = 1024
TIMEOUT_S = 2  # --timeout: the proxies' stalls (5 s) outlast it
RUN_LIMIT_S = 180
IMAGES = 50  # about 15 s on a busy 2-core machine, 1000 requests


@dataclass(frozen=True)
class Seeded:
    images: list[seed.SeededImage]  # tagged, top level (indexes count once)
    rules: dict[str, str]  # source reference -> target repository, on the proxies' hosts


def seed_images(source: RegistryProcess, count: int, source_host: str, target_host: str) -> Seeded:
    """``count`` images: two tags in each of ``count // 2 - 1`` repositories (a base layer shared by both tags,
    4 KiB to 1 MiB, and a small layer of its own), and two OCI indexes over two platforms. Half of the
    repositories are synced by an all-tags rule (their tags are listed), the rest tag by tag."""
    base_sizes = (4 * KiB, 16 * KiB, 64 * KiB, 256 * KiB, 1024 * KiB)
    images: list[seed.SeededImage] = []
    rules: dict[str, str] = {}
    repos = count // 2 - 1
    with seed.open_api(source) as api:
        for i in range(repos):
            repo = f"heavy/app{i:02d}"
            first = seed.push_image(api, repo, "1", layers=(base_sizes[i % len(base_sizes)], 8 * KiB + i),
                                    seed=f"{i}/1")
            second = seed.push_image(api, repo, "2", layers=(first.blobs[1], 12 * KiB + i), seed=f"{i}/2")
            images += [first, second]
            if i % 2:
                rules[f"{source_host}/{repo}"] = f"{target_host}/{repo}"
            else:
                rules.update({f"{source_host}/{repo}:{tag}": f"{target_host}/{repo}" for tag in ("1", "2")})
        for k in range(count - 2 * repos):
            repo = f"heavy/multi{k}"
            images.append(seed.push_index(api, repo, "1", layers=(32 * KiB, 4 * KiB), seed=f"index{k}",
                                          platforms=(("linux", "amd64"), ("linux", "arm64"))))
            rules[f"{source_host}/{repo}:1"] = f"{target_host}/{repo}"
    assert len(images) == count
    return Seeded(images, rules)


def identical(target: seed.RegistryAPI, image: seed.SeededImage) -> bool:
    """The target holds ``image`` under its tag with the source's digest, its index children, and every blob it
    references with the right content."""
    if not seed.manifest_exists(target, image.repo, str(image.tag)):
        return False
    if seed.get_manifest(target, image.repo, str(image.tag))[2] != image.digest:
        return False
    if not all(seed.manifest_exists(target, child.repo, child.digest) for child in image.children):
        return False
    return all(seed.blob_exists(target, image.repo, blob.digest)
               and seed.blob_sha256(target, image.repo, blob.digest) == blob.digest for blob in image.blobs)


def identical_images(target: RegistryProcess, images: list[seed.SeededImage]) -> list[seed.SeededImage]:
    with seed.open_api(target) as api:
        return [image for image in images if identical(api, image)]


def run_cli(workdir: Path, rules: dict[str, str], hosts: list[str], name: str) -> tuple[int, dict[str, Any], str]:
    (workdir / "images.yaml").write_text(yaml.safe_dump(rules))
    (workdir / "auth.yaml").write_text(yaml.safe_dump({host: {"plainHTTP": True} for host in hosts}))
    result_file = workdir / f"{name}.json"
    argv = [sys.executable, "-m", "imagesync.cli.main", "sync", "--images", str(workdir / "images.yaml"),
            "--auth", str(workdir / "auth.yaml"), "--result-file", str(result_file), "--proc", "8",
            "--retries", "2", "--timeout", str(TIMEOUT_S), "--deadline", "150s"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IMAGESYNC_", "JOB_COMPLETION"))}
    done = subprocess.run(argv, env=env, cwd=workdir, capture_output=True, text=True, timeout=RUN_LIMIT_S,
                          check=False)
    result = json.loads(result_file.read_text()) if result_file.exists() else {}
    return done.returncode, result, done.stdout[-3000:] + done.stderr[-3000:]


def failed_sources(result: dict[str, Any]) -> dict[str, str]:
    assert result.get("failedImagesTotal", 0) == len(result.get("failedImages") or []), "failures cut short"
    return {str(failure["source"]): str(failure["reason"]) for failure in result.get("failedImages") or []}


def accounted_for(image: seed.SeededImage, source_host: str, target_host: str, failed: dict[str, str]) -> bool:
    """``image`` is listed failed with a reason: itself, or its all-tags rule (its tags could not be listed)."""
    keys = (f"{image.ref(source_host)}", f"{source_host}/{image.repo} -> {target_host}/{image.repo}")
    return any(failed.get(key, "").strip() for key in keys)


def test_heavy_faults_on_both_sides(registry: RegistryProcess, registry2: RegistryProcess, tmp_path: Path) -> None:
    count = IMAGES  # seeds and figures below say how many
    source_mix, target_mix = FaultMix(seed=f"source{count}"), FaultMix(seed=f"target{count}")
    with FaultProxy(registry, source_mix) as source_proxy, \
            FaultProxy(registry2, target_mix, check_manifests=True) as target_proxy:
        seeded = seed_images(registry, count, source_proxy.host, target_proxy.host)
        hosts = [source_proxy.host, target_proxy.host]
        code, result, output = run_cli(tmp_path, seeded.rules, hosts, "faulty")
        assert result, output

        failed = failed_sources(result)
        whole = identical_images(registry2, seeded.images)
        broken = [image for image in seeded.images if image not in whole]
        unaccounted = [image.reference for image in broken
                       if not accounted_for(image, source_proxy.host, target_proxy.host, failed)]
        assert unaccounted == [], (unaccounted, failed, output)
        assert (code == 0) == (broken == [] and failed == {}), (code, failed)
        checker.assert_no_half_pushed_image(registry2)

        figures = {side: {"requests": proxy.seen, "injected": proxy.injected_total,
                          "share": round(proxy.injected_total / max(1, proxy.seen), 3),
                          **{kind: proxy.injected[kind] for kind in KINDS}}
                   for side, proxy in (("source", source_proxy), ("target", target_proxy))}
        for proxy in (source_proxy, target_proxy):
            proxy.enabled = False
        rerun_code, rerun, rerun_output = run_cli(tmp_path, seeded.rules, hosts, "rerun")
        assert rerun_code == 0, (rerun.get("failedImages"), rerun_output)
        assert target_proxy.violations == [], target_proxy.violations
        assert target_proxy.manifest_puts_checked >= count
        checker.assert_no_half_pushed_image(registry2)
        rerun_whole = identical_images(registry2, seeded.images)

    print(f"\nheavy faults, {count} images: {json.dumps(figures)}; identical after the faulty run: {len(whole)}, "
          f"listed failed: {len(failed)} ({sorted(set(failed.values()))}); identical after the re-run: "
          f"{len(rerun_whole)}")
    assert len(rerun_whole) == count
    for side, figure in figures.items():
        assert figure["injected"] >= 0.10 * figure["requests"], (side, figure)
    for kind in KINDS:
        assert source_proxy.injected[kind] + target_proxy.injected[kind] > 0, (kind, figures)
