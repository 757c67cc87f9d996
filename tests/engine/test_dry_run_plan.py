"""Dry runs (issue 8 point 4): ``imagesync sync --dry-run`` plans on real registries without writing.

Registries are seeded with tests/testbed/seed.py (not the engine) so that the target holds a mix: an image
already up to date, one missing, one partly present (a layer already there), and an index with one of its
two children already there. The plan's bytes must be exact (checked against the descriptors' sizes, then
against what a real copy afterwards uploads), and the registries' access logs must show GET and HEAD
requests only, and some of them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from cli_helpers import auth_for, run_sync

from imagesync.cli.main import main
from testbed import seed
from testbed.registry import RegistryProcess

pytestmark = pytest.mark.usefixtures("restore_logging")

READ_METHODS = {"GET", "HEAD"}


def dry_run(tmp_path: Path, capsys: pytest.CaptureFixture[str], images: dict[str, Any], auth: dict[str, Any],
            *flags: str, name: str = "plan") -> tuple[int, dict[str, Any], str]:
    """The plan as --output json prints it, the same as --result-file writes it; and standard error."""
    workdir = tmp_path / name
    workdir.mkdir()
    (workdir / "images.yaml").write_text(yaml.safe_dump(images))
    (workdir / "auth.yaml").write_text(yaml.safe_dump(auth))
    capsys.readouterr()
    code = main(["sync", "--images", str(workdir / "images.yaml"), "--auth", str(workdir / "auth.yaml"),
                 "--dry-run", "--output", "json", "--result-file", str(workdir / "plan.json"), *flags])
    out, err = capsys.readouterr()
    plan = json.loads(out)
    assert json.loads((workdir / "plan.json").read_text()) == plan
    return code, plan, err


def methods(registry: RegistryProcess, since: int) -> list[str]:
    return [r.method for r in registry.request_log(since)]


def test_a_dry_run_plans_exact_bytes_and_writes_nothing(registry: RegistryProcess, registry2: RegistryProcess,
                                                        tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    src, dst = registry, registry2
    uptodate = seed.push_image(src, "lib/uptodate", "v1", seed="u", layers=(100_000,))
    seed.push_image(dst, "mirror/uptodate", "v1", seed="u", layers=(100_000,))  # the same bytes: same digest
    missing = seed.push_image(src, "lib/missing", "v1", seed="m", layers=(200_000, 50_000))
    partial = seed.push_image(src, "lib/partial", "v1", seed="p", layers=(300_000, 70_000))
    kept = partial.blobs[1]  # its first layer (blobs: config, layers...) is already at the target
    seed.push_random_blob(dst, "mirror/partial", kept.size, "p/layer0")
    assert seed.blob_exists(dst, "mirror/partial", kept.digest)
    index = seed.push_index(src, "lib/multi", "v1", seed="i", layers=(40_000,))
    amd64, arm64 = index.children
    # The amd64 child (and so its blobs) is at the target already: only the arm64 child's blobs are missing.
    seed.push_image(dst, "mirror/multi", None, seed="i/linux/amd64", oci=True, platform=("linux", "amd64"),
                    layers=(40_000,))
    assert seed.manifest_exists(dst, "mirror/multi", amd64.digest)

    images = {f"{src.host}/lib/{name}:v1": f"{dst.host}/mirror/{name}"
              for name in ("uptodate", "missing", "partial", "multi")}
    auth = auth_for(src, dst)
    marks = src.log_mark(), dst.log_mark()
    code, plan, err = dry_run(tmp_path, capsys, images, auth)

    assert code == 0, err
    # Requests were sent (the plan read both registries), and not one could write.
    for registry, mark in zip((src, dst), marks, strict=True):
        sent = methods(registry, mark)
        assert sent and set(sent) <= READ_METHODS, sent
    assert methods(dst, marks[1]).count("HEAD") >= 5  # the manifests and the blobs checked at the target

    states = {entry["source"].split("/")[-1]: entry for entry in plan["entries"]}
    assert states["uptodate:v1"]["state"] == "up-to-date"
    expected = {
        "missing:v1": missing.total_size,
        "partial:v1": partial.total_size - kept.size,
        "multi:v1": arm64.total_size,
    }
    for name, size in expected.items():
        assert states[name]["state"] == "copy", states[name]
        assert states[name]["bytes"] == size and states[name]["exact"] is True, (name, states[name])
    assert states["missing:v1"]["blobs"] == 3 and states["partial:v1"]["blobs"] == 2
    assert states["multi:v1"]["blobs"] == 2
    assert (plan["pairs"], plan["upToDate"], plan["toCopy"], plan["failed"]) == (4, 1, 3, 0)
    assert plan["bytesToCopy"] == sum(expected.values()) and plan["blobsToCopy"] == 7
    assert plan["exact"] is True and plan["dryRun"] is True
    assert any("referrers" in note for note in plan["notes"])  # on by default, not planned: said so
    assert seed.list_tags(dst, "mirror/missing") == [] and not seed.manifest_exists(dst, "mirror/multi",
                                                                                      arm64.digest)

    # The copy itself uploads exactly what the plan said, and finds up to date what it said.
    code, result = run_sync(tmp_path, images, auth, name="copy")
    assert code == 0, result
    assert result["bytesCopied"] == plan["bytesToCopy"] and result["blobsCopied"] == plan["blobsToCopy"]
    assert [s["source"] for s in result["skippedImages"]] == [f"{src.host}/{uptodate.repo}:v1"]

    # Now everything is up to date: the plan says so, still without a write.
    mark = dst.log_mark()
    code, again, err = dry_run(tmp_path, capsys, images, auth, name="again")
    assert code == 0, err
    assert (again["upToDate"], again["toCopy"], again["bytesToCopy"]) == (4, 0, 0)
    assert set(methods(dst, mark)) <= READ_METHODS


def test_failures_estimates_and_the_text_table(registry: RegistryProcess, registry2: RegistryProcess,
                                               tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A pair that cannot be planned makes exit 1 with its reason; a target repository on the source's own
    registry would be mounted into, so its bytes are an estimate (said so); the table shows each pair."""
    src, dst = registry, registry2
    image = seed.push_image(src, "lib/app", "v1", seed="a", layers=(60_000,))
    images = {f"{src.host}/lib/app:v1": [f"{dst.host}/mirror/app", f"{src.host}/copy/app"],
              f"{src.host}/lib/gone:v1": f"{dst.host}/mirror/gone"}
    auth = auth_for(src, dst)
    marks = src.log_mark(), dst.log_mark()
    code, plan, err = dry_run(tmp_path, capsys, images, auth, "--no-referrers")
    assert code == 1, err
    entries = {entry["target"]: entry for entry in plan["entries"]}
    gone = entries[f"{dst.host}/mirror/gone:v1"]
    assert gone["state"] == "failed" and "manifest unknown" in gone["reason"]
    assert entries[f"{dst.host}/mirror/app:v1"] == {
        "source": f"{src.host}/lib/app:v1", "target": f"{dst.host}/mirror/app:v1", "state": "copy",
        "bytes": image.total_size, "blobs": 2, "exact": True}
    same_registry = entries[f"{src.host}/copy/app:v1"]
    assert same_registry["state"] == "copy" and same_registry["exact"] is False
    assert plan["exact"] is False and plan["failed"] == 1 and plan["toCopy"] == 2
    # Each blob once per target registry: two registries, two blobs each.
    assert plan["blobsToCopy"] == 4 and plan["bytesToCopy"] == 2 * image.total_size
    assert len(plan["notes"]) == 1 and "upper bound" in plan["notes"][0]  # --no-referrers: no referrer note
    for registry, mark in zip((src, dst), marks, strict=True):
        sent = methods(registry, mark)
        assert sent and set(sent) <= READ_METHODS, sent

    (workdir := tmp_path / "text").mkdir()
    (workdir / "images.yaml").write_text(yaml.safe_dump(images))
    (workdir / "auth.yaml").write_text(yaml.safe_dump(auth))
    capsys.readouterr()
    code = main(["sync", "--images", str(workdir / "images.yaml"), "--auth", str(workdir / "auth.yaml"),
                 "--dry-run"])
    lines = capsys.readouterr().out.splitlines()
    assert code == 1
    assert any(line.startswith("copy ") and f"-> {dst.host}/mirror/app:v1  (2 blobs," in line for line in lines)
    assert any(line.startswith("failed ") and "mirror/gone:v1: " in line for line in lines), lines
    assert "Plan: 3 pairs: 0 up to date, 2 to copy, 1 could not be planned" in lines
    assert any(line.startswith("To copy: 4 blobs, ") and "(estimate; nothing was copied)" in line
               for line in lines), lines


def test_skip_existing_and_force_follow_the_copy(registry: RegistryProcess, registry2: RegistryProcess,
                                                 tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--skip-existing: a tag the target lists is up to date without a digest comparison (even a moved one);
    --force: every pair is a copy, and its bytes are still only the blobs the target lacks (none here)."""
    src, dst = registry, registry2
    seed.push_image(src, "lib/app", "v1", seed="new", layers=(10_000,))
    seed.push_image(dst, "mirror/app", "v1", seed="old", layers=(10_000,))  # the same tag, other content
    images = {f"{src.host}/lib/app:v1": f"{dst.host}/mirror/app"}
    auth = auth_for(src, dst)
    code, plan, _ = dry_run(tmp_path, capsys, images, auth, "--skip-existing", name="skip")
    assert code == 0 and (plan["upToDate"], plan["toCopy"]) == (1, 0)
    code, plan, _ = dry_run(tmp_path, capsys, images, auth, name="compare")
    assert code == 0 and (plan["upToDate"], plan["toCopy"]) == (0, 1) and plan["blobsToCopy"] == 2
    seed.push_image(dst, "mirror/app", "v1", seed="new", layers=(10_000,))
    code, plan, _ = dry_run(tmp_path, capsys, images, auth, "--force", name="force")
    assert code == 0 and (plan["upToDate"], plan["toCopy"], plan["bytesToCopy"]) == (0, 1, 0)
