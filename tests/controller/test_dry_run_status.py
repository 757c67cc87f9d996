"""spec.dryRun's pure parts: the spec and the run's options, the worker's bounded plan, the operator's
validation of a report's plan (untrusted input) and its fold into status.plan."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from imagesync.controller.render import worker_options
from imagesync.controller.reports import MAX_PLAN_ENTRIES, ReportError, parse_report
from imagesync.controller.spec import SpecError, parse_job_spec
from imagesync.controller.status import PLAN_ENTRIES_CAP, fold_plan, fold_progress, plan_message
from imagesync.worker.main import load_options
from imagesync.worker.report import PLAN_BUDGET, REPORT_PLAN_ENTRIES, bounded_plan

IMAGES = {"a.example/lib/app:1": "b.example/mirror/app"}


def plan(entries: int = 2, **totals: Any) -> dict[str, Any]:
    return {"pairs": entries, "upToDate": 1, "toCopy": entries - 1, "skipped": 0, "failed": 0,
            "bytesToCopy": 1000, "blobsToCopy": 2, "exact": True, "notes": ["referrers are not planned"],
            "entries": [{"source": f"a.example/lib/app:{i}", "target": f"b.example/mirror/app:{i}",
                         "state": "copy", "bytes": 500, "blobs": 1, "exact": True} for i in range(entries)],
            **totals}


def report(plan_value: Any) -> str:
    return json.dumps({"imagesTotal": 2, "imagesSkipped": 2, "done": True, "plan": plan_value})


def test_spec_dry_run_travels_to_the_worker(tmp_path: Path) -> None:
    spec = parse_job_spec({"images": IMAGES, "dryRun": True})
    assert spec.dry_run is True
    options = worker_options(spec)
    assert options["dryRun"] is True
    (tmp_path / "options.json").write_text(json.dumps(options))
    assert load_options(tmp_path / "options.json").dry_run is True
    assert "dryRun" not in worker_options(parse_job_spec({"images": IMAGES}))
    with pytest.raises(SpecError, match=r"^spec.dryRun: must be true or false"):
        parse_job_spec({"images": IMAGES, "dryRun": "yes"})


def test_a_report_plan_is_validated_and_kept() -> None:
    parsed = parse_report(report(plan()), registries=())
    assert parsed.as_dict()["plan"] == plan()
    assert "plan" not in parse_report(json.dumps({"done": True}), registries=()).as_dict()


@pytest.mark.parametrize(("bad", "message"), [
    ([], "plan is not an object"),
    (plan(pairs=-1), "pairs is out of range"),
    (plan(bytesToCopy=float("nan")), "non-finite"),
    (plan(bytesToCopy=2**60), "bytesToCopy is out of range"),
    (plan(exact="yes"), "plan exact is not a boolean"),
    ({**plan(), "entries": [{"source": "s", "target": "t", "state": "deleted"}]}, "state is not one of"),
    ({**plan(), "entries": ["s -> t"]}, "a plan entry is not an object"),
])
def test_a_bad_plan_makes_the_report_invalid(bad: Any, message: str) -> None:
    with pytest.raises(ReportError, match=message):
        parse_report(report(bad), registries=())  # NaN: json.dumps writes it, the operator refuses it


def test_a_plan_is_clipped_not_refused() -> None:
    long = plan(MAX_PLAN_ENTRIES + 5)
    long["entries"][0]["reason"] = "x" * 5000
    parsed = parse_report(report(long), registries=())
    kept = parsed.as_dict()["plan"]
    assert len(kept["entries"]) == MAX_PLAN_ENTRIES and kept["pairs"] == MAX_PLAN_ENTRIES + 5
    assert len(kept["entries"][0]["reason"]) == 1000
    assert any("entries" in note for note in parsed.dropped)


def test_the_fold_sums_shards_and_caps_the_pairs() -> None:
    reports = {0: {"done": True, "plan": plan(15)}, 1: {"done": True, "plan": plan(15, exact=False)}}
    folded = fold_plan(reports, 2)["plan"]
    assert (folded["pairs"], folded["bytesToCopy"], folded["exact"]) == (30, 2000, False)
    assert len(folded["entries"]) == PLAN_ENTRIES_CAP and folded["notes"] == ["referrers are not planned"]
    assert folded["entries"][15]["source"] == "a.example/lib/app:0"  # shard 1's first pair follows shard 0's
    assert fold_progress(reports, 2)["plan"] == folded
    assert "plan" not in fold_progress({0: {"done": True}}, 1)  # a copy: the run's start removed any plan
    assert plan_message(folded).startswith("dry run, nothing copied: 30 pairs, 2 up to date, 28 to copy "
                                           "(2000 bytes in 4 blobs, estimate)")


def test_the_worker_bounds_its_plan() -> None:
    huge = plan(100)
    for entry in huge["entries"]:
        entry["source"] = entry["target"] = "r.example/" + "p" * 2000
        entry["reason"] = "why " * 1000
    bounded = bounded_plan(huge)
    assert len(json.dumps(bounded, separators=(",", ":")).encode()) <= PLAN_BUDGET
    assert 0 < len(bounded["entries"]) <= REPORT_PLAN_ENTRIES and bounded["pairs"] == 100
    assert bounded_plan(plan(3)) == plan(3)  # a small plan goes as it is
