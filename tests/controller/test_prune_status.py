"""spec.prune's pure parts: the spec and the run's options, the engine's status shape, the operator's validation
of a report's prune (untrusted input) and its fold into status.prune."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from imagesync.controller.render import worker_options
from imagesync.controller.reports import MAX_PRUNE_ENTRIES, ReportError, parse_report
from imagesync.controller.spec import SpecError, parse_job_spec
from imagesync.controller.status import PRUNE_ENTRIES_CAP, fold_progress
from imagesync.engine.prune import STATUS_ENTRIES, PruneAction, PruneReport, RepositoryPrune
from imagesync.worker.main import load_options

IMAGES = {"a.example/lib/app": "b.example/mirror/app"}


@pytest.mark.parametrize("prune, option", [
    (None, None),
    ({"enabled": False, "dryRun": False}, None),
    ({"enabled": True}, "dry-run"),  # the first prune is a dry run unless confirmed
    ({"enabled": True, "dryRun": True}, "dry-run"),
    ({"enabled": True, "dryRun": False}, "delete"),
])
def test_spec_prune_travels_to_the_worker(tmp_path: Path, prune: Any, option: str | None) -> None:
    spec = parse_job_spec({"images": IMAGES, **({"prune": prune} if prune is not None else {})})
    options = worker_options(spec)
    assert options.get("prune") == option
    (tmp_path / "options.json").write_text(json.dumps(options))
    assert load_options(tmp_path / "options.json").sync.prune == option


@pytest.mark.parametrize("prune, field", [
    ("yes", "spec.prune"),
    ({"enabled": "true"}, "spec.prune.enabled"),
    ({"enabled": True, "dryRun": 0}, "spec.prune.dryRun"),
    ({"enabled": True, "confirm": True}, "spec.prune"),
])
def test_a_bad_spec_prune_names_the_field(prune: Any, field: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_job_spec({"images": IMAGES, "prune": prune})
    assert caught.value.field_path == field


def test_the_status_shape_counts_all_and_lists_the_first() -> None:
    repo = RepositoryPrune("b.example/mirror/app", ["rule"],
                           [PruneAction(f"t{i}", None, "digest") for i in range(12)],
                           [PruneAction("c", None, "keep", "digest shared with kept tag a")], error="x" * 500)
    status = PruneReport(False, [repo]).status()
    assert (status["dryRun"], status["deleted"], status["wouldDelete"], status["kept"], status["errors"]) == \
        (True, 0, 12, 1, 1)
    entries = status["entries"]
    assert isinstance(entries, list) and len(entries) == STATUS_ENTRIES
    assert entries[0] == {"repository": "b.example/mirror/app", "tag": "", "action": "error", "reason": "x" * 300}
    assert entries[1] == {"repository": "b.example/mirror/app", "tag": "t0", "action": "wouldDelete"}


def report(prune: Any) -> str:
    return json.dumps({"imagesTotal": 1, "imagesSkipped": 1, "done": True, "prune": prune})


def test_a_reports_prune_is_validated_and_folded() -> None:
    prune = {"dryRun": False, "deleted": 30, "wouldDelete": 0, "kept": 1, "errors": 0,
             "entries": [{"repository": "b.example/mirror/app", "tag": f"t{i}", "action": "deleted"}
                         for i in range(30)]}
    parsed = parse_report(report(prune), registries=())
    assert parsed.prune is not None and len(parsed.prune["entries"]) == MAX_PRUNE_ENTRIES
    folded = fold_progress({0: parsed.as_dict(), 1: None}, 2)
    assert folded["prune"]["deleted"] == 30 and folded["prune"]["dryRun"] is False
    assert len(folded["prune"]["entries"]) == PRUNE_ENTRIES_CAP
    assert "prune" not in fold_progress({0: parse_report(report(None), registries=()).as_dict()}, 1)


@pytest.mark.parametrize("prune", [
    "all of them",
    {"deleted": -1},
    {"deleted": 1, "dryRun": "no"},
    {"entries": [{"repository": "r", "tag": "t", "action": "obliterated"}]},
    {"entries": ["t"]},
])
def test_a_forged_prune_makes_the_report_invalid(prune: Any) -> None:
    with pytest.raises(ReportError):
        parse_report(report(prune), registries=())
