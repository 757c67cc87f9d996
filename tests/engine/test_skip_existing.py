"""Missing-only runs (issue 8 point 3): ``--skip-existing`` / ``spec.skipExisting``. One ``tags/list`` per
target repository decides which tags to copy, so a no-op run over R repositories costs about R target
requests whatever the tag count (counted from the target registry's access log), against one manifest HEAD
per tag without it. The trade-off: a tag moved at the source is not noticed."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from cli_helpers import auth_for, mutating_requests, run_sync

from imagesync.controller.render import worker_options
from imagesync.controller.spec import parse_job_spec
from imagesync.worker.main import load_options
from testbed import seed
from testbed.registry import RegistryProcess


def seed_tags(registry: RegistryProcess, repo: str, count: int) -> seed.SeededImage:
    """One small image re-tagged by manifest PUTs: ``count`` tags for the price of ``count`` small requests."""
    image = seed.push_image(registry, repo, "v0", seed=repo)
    for i in range(1, count):
        seed.push_manifest(registry, repo, f"v{i}", image.manifest, image.media_type)
    return image


def measure(registry: RegistryProcess, registry2: RegistryProcess, tmp_path: Path, tags: int,
            repos: int = 1) -> dict[str, int]:
    names = [f"lib/app{i}" for i in range(repos)]
    started = time.monotonic()
    for name in names:
        seed_tags(registry, name, tags)
    seeding = time.monotonic() - started
    images = {f"{registry.host}/{name}": f"{registry2.host}/mirror/{name.split('/')[-1]}" for name in names}
    auth = auth_for(registry, registry2)
    code, result = run_sync(tmp_path, images, auth, "--skip-existing", name="cold")
    assert code == 0, result
    assert len(result["syncedImages"]) == tags * repos
    counts: dict[str, int] = {}
    for label, flags in (("skip_existing", ["--skip-existing"]), ("per_tag", [])):
        mark = registry2.log_mark()
        code, result = run_sync(tmp_path, images, auth, *flags, name=label)
        assert code == 0, result
        assert result["syncedImages"] == [] and len(result["skippedImages"]) == tags * repos
        log = registry2.request_log(mark)
        assert mutating_requests(registry2, mark) == []
        counts[label] = len(log)
        counts[f"{label}_tags_list"] = sum(1 for r in log if r.path.endswith("/tags/list"))
        # Besides: the one API version check (GET /v2/) a run makes per registry.
        assert [r.path for r in log if not r.path.endswith("/tags/list") and "/manifests/" not in r.path] == ["/v2/"]
    print(f"\n{tags} tags x {repos} repositories (seeded in {seeding:.1f}s): no-op target requests "
          f"with --skip-existing {counts['skip_existing']}, per tag {counts['per_tag']}")
    return counts


def test_a_no_op_run_costs_one_request_per_target_repository(registry: RegistryProcess,
                                                             registry2: RegistryProcess, tmp_path: Path) -> None:
    counts = measure(registry, registry2, tmp_path, tags=50, repos=3)
    assert counts["skip_existing_tags_list"] == 3 and counts["skip_existing"] == 3 + 1
    assert counts["per_tag"] >= 150  # one manifest HEAD per tag


@pytest.mark.slow
def test_a_no_op_run_over_1000_tags(registry: RegistryProcess, registry2: RegistryProcess,
                                    tmp_path: Path) -> None:
    counts = measure(registry, registry2, tmp_path, tags=1000)
    assert counts["skip_existing_tags_list"] == 1 and counts["skip_existing"] == 1 + 1
    assert counts["per_tag"] >= 1000


def test_only_missing_tags_are_copied_and_a_moved_tag_is_not_noticed(
        registry: RegistryProcess, registry2: RegistryProcess, tmp_path: Path) -> None:
    image = seed_tags(registry, "lib/app", 5)
    src, dst = f"{registry.host}/lib/app", f"{registry2.host}/mirror/app"
    auth = auth_for(registry, registry2)
    code, result = run_sync(tmp_path, {src: dst}, auth, name="cold")
    assert code == 0 and len(result["syncedImages"]) == 5, result
    # Two new tags, and v1 moved to another image.
    other = seed.push_image(registry, "lib/app", "v1", seed="moved")
    for tag in ("v5", "v6"):
        seed.push_manifest(registry, "lib/app", tag, image.manifest, image.media_type)
    code, result = run_sync(tmp_path, {src: dst}, auth, "--skip-existing", name="missing")
    assert code == 0, result
    assert sorted(s["target"].rsplit(":", 1)[1] for s in result["syncedImages"]) == ["v5", "v6"]
    assert len(result["skippedImages"]) == 5
    assert seed.get_manifest(registry2, "mirror/app", "v1")[2] == image.digest  # the moved tag: not noticed
    # Without the flag the digests are compared, and the moved tag follows.
    code, result = run_sync(tmp_path, {src: dst}, auth, name="compare")
    assert code == 0, result
    assert [s["target"].rsplit(":", 1)[1] for s in result["syncedImages"]] == ["v1"]
    assert seed.get_manifest(registry2, "mirror/app", "v1")[2] == other.digest


def test_a_target_repository_that_does_not_exist_yet(registry: RegistryProcess, registry2: RegistryProcess,
                                                     tmp_path: Path) -> None:
    seed_tags(registry, "lib/app", 3)
    code, result = run_sync(tmp_path, {f"{registry.host}/lib/app": f"{registry2.host}/new/app"},
                            auth_for(registry, registry2), "--skip-existing")
    assert code == 0 and len(result["syncedImages"]) == 3, result


def test_spec_skip_existing_reaches_the_worker(tmp_path: Path) -> None:
    spec = parse_job_spec({"images": {"a.example.com/x": "b.example.com/x"}, "skipExisting": True})
    assert spec.skip_existing
    options_file = tmp_path / "options.json"
    options_file.write_text(json.dumps(worker_options(spec)))
    assert load_options(options_file).sync.skip_existing
    assert not parse_job_spec({"images": {"a.example.com/x": "b.example.com/x"}}).skip_existing
    assert "skipExisting" not in worker_options(parse_job_spec({"images": {"a.example.com/x": "b.example.com/x"}}))
