"""kstatus conditions (Ready, Reconciling, Stalled) and observedGeneration, derived from the status (pure)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from imagesync.controller.status import (
    KSTATUS_TYPES,
    credential_verdict,
    find_condition,
    job_verdict,
    kstatus_conditions,
    make_condition,
    with_kstatus,
)

T0, T1 = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z"
ROOT = Path(__file__).resolve().parents[2]


def conditions(*specs: tuple[str, str, str], generation: int = 1) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = []
    for type_, state, reason in specs:
        result = make_condition(result, type_, state, reason, f"{type_} {reason}", generation, T0)
    return result


def shown(status: dict[str, Any], generation: int = 1, scheduled: bool = False) -> tuple[tuple[str, str], ...]:
    """(status, reason) of Ready, Reconciling, Stalled as the operator writes them."""
    verdict = job_verdict(status, generation, scheduled)
    written = kstatus_conditions(status.get("conditions"), verdict, generation, T0)
    found = [find_condition(written, t) or {} for t in KSTATUS_TYPES]
    return tuple((str(c.get("status")), str(c.get("reason"))) for c in found)


def running(phase: str = "Running", **extra: Any) -> dict[str, Any]:
    return {"phase": phase, "run": 1, "runGeneration": 1, "jobName": "j-r1", "syncedSummary": "2/6",
            "conditions": conditions(("Valid", "True", "SpecValid"), ("CredentialsReady", "True", "Resolved"),
                                     ("Complete", "False", "Running")), **extra}


def finished(phase: str, **extra: Any) -> dict[str, Any]:
    return {"phase": phase, "run": 1, "runGeneration": 1, "jobName": "j-r1", "completionTime": T1,
            "conditions": conditions(("Valid", "True", "SpecValid"), ("CredentialsReady", "True", "Resolved"),
                                     ("Complete", "True", phase)), **extra}


@pytest.mark.parametrize(("blocker", "reason"), [
    ("Valid", "InvalidSpec"), ("Valid", "IndexedJobsUnsupported"),
    ("CredentialsReady", "SecretMissing"), ("CredentialsReady", "CredentialMissing"),
    ("CredentialsReady", "WrongSecretType"),
])
def test_a_run_that_cannot_start_is_stalled_with_the_blocking_reason(blocker: str, reason: str) -> None:
    status = {"phase": "Failed", "conditions": conditions((blocker, "False", reason))}
    assert shown(status) == (("False", reason), ("False", reason), ("True", reason))
    verdict = job_verdict(status, 1, False)
    assert verdict.message.startswith(f"{blocker} {reason}")


def test_a_blocked_change_after_a_good_run_is_stalled_not_ready() -> None:
    status = finished("Succeeded")
    status.update(phase="Failed", conditions=make_condition(status["conditions"], "Valid", "False", "InvalidSpec",
                                                            "bad rule", 2, T1))
    assert shown(status, generation=2) == (("False", "InvalidSpec"), ("False", "InvalidSpec"),
                                           ("True", "InvalidSpec"))


def test_a_blocker_of_an_older_generation_does_not_stall_the_newer_spec() -> None:
    status = {"phase": "Suspended", "conditions": conditions(("Valid", "False", "InvalidSpec"), generation=1)}
    assert shown(status, generation=2) == (("False", "Suspended"), ("False", "Suspended"), ("False", "Suspended"))


def test_pending_and_running_runs_are_reconciling_and_not_ready() -> None:
    assert shown(running("Pending", syncedSummary="0/?")) == (("False", "Progressing"), ("True", "RunStarting"),
                                                             ("False", "RunStarting"))
    assert shown(running()) == (("False", "Progressing"), ("True", "RunInProgress"), ("False", "RunInProgress"))
    assert "run 1 in progress: 2/6 images synced" in job_verdict(running(), 1, False).message


def test_a_queued_spec_change_keeps_reconciling() -> None:
    status = running(pendingGeneration=2)
    assert shown(status, generation=2)[1] == ("True", "RunQueued")
    assert "generation 2 runs when it ends" in job_verdict(status, 2, False).message


def test_stuck_workers_show_their_reason_on_ready() -> None:
    status = running("Pending")
    status["conditions"] = make_condition(status["conditions"], "WorkersReady", "False", "ImagePullBackOff",
                                          "pod j-r1-0: ImagePullBackOff: back-off", 1, T0)
    assert shown(status) == (("False", "ImagePullBackOff"), ("True", "RunStarting"), ("False", "RunStarting"))
    assert "back-off" in job_verdict(status, 1, False).message


def test_only_a_run_with_every_image_synced_is_ready() -> None:
    assert shown(finished("Succeeded")) == (("True", "Succeeded"), ("False", "Succeeded"), ("False", "Succeeded"))
    for phase in ("PartiallyFailed", "Failed"):
        assert shown(finished(phase)) == (("False", f"Run{phase}"), ("False", f"Run{phase}"),
                                          ("True", f"Run{phase}"))
    assert "not retried until the spec changes" in job_verdict(finished("Failed"), 1, False).message


def test_a_scheduled_job_between_good_runs_is_ready_and_a_failed_one_says_when_it_retries() -> None:
    good = finished("Succeeded", nextScheduleTime="2026-01-02T00:00:00Z")
    assert shown(good, scheduled=True)[0] == ("True", "Succeeded")
    assert "next scheduled run at 2026-01-02T00:00:00Z" in job_verdict(good, 1, True).message
    bad = finished("PartiallyFailed", nextScheduleTime="2026-01-02T00:00:00Z")
    assert shown(bad, scheduled=True)[2] == ("True", "RunPartiallyFailed")
    assert "next scheduled run (2026-01-02T00:00:00Z) tries again" in job_verdict(bad, 1, True).message


def test_a_finished_run_of_an_older_spec_is_not_ready() -> None:
    assert shown(finished("Succeeded"), generation=2) == (("False", "Progressing"), ("True", "SpecChanged"),
                                                         ("False", "SpecChanged"))


def test_suspended_is_neither_ready_nor_reconciling_nor_stalled() -> None:
    status = {"phase": "Suspended", "conditions": conditions(("Suspended", "True", "Suspended"))}
    assert shown(status) == (("False", "Suspended"), ("False", "Suspended"), ("False", "Suspended"))


def test_no_status_yet_is_reconciling() -> None:
    assert shown({}) == (("False", "Progressing"), ("True", "RunNotStarted"), ("False", "RunNotStarted"))


def isj(status: dict[str, Any], generation: int = 1, **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": "j", "namespace": "ns", "generation": generation},
            "spec": {"images": {"a": "b"}, **spec}, "status": status}


def test_with_kstatus_writes_observed_generation_and_keeps_the_detailed_conditions() -> None:
    before = running(observedGeneration=1)
    patch = {"phase": "Succeeded", "completionTime": T1,
             "conditions": make_condition(before["conditions"], "Complete", "True", "Succeeded", "run 1: 6 synced",
                                          1, T1)}
    result = with_kstatus(isj(before), patch, T1)
    assert result["observedGeneration"] == 1 and result["phase"] == "Succeeded"
    types = [c["type"] for c in result["conditions"]]
    assert {"Valid", "CredentialsReady", "Complete", "Ready", "Reconciling", "Stalled"} <= set(types)
    assert types == sorted(types)
    ready = find_condition(result["conditions"], "Ready") or {}
    assert ready["status"] == "True" and ready["message"] == "run 1: 6 synced" and ready["observedGeneration"] == 1


def test_a_progress_patch_carries_the_observed_generation_already_there() -> None:
    # The spec moved on (generation 2) but the controller has not acted on it yet: kstatus must see the lag.
    result = with_kstatus(isj(running(observedGeneration=1), generation=2), {"syncedSummary": "3/6"}, T1)
    assert result["observedGeneration"] == 1


def test_transition_times_move_only_when_a_status_changes() -> None:
    first = with_kstatus(isj(running(observedGeneration=1)), {}, T0)
    again = with_kstatus(isj({**running(observedGeneration=1), "conditions": first["conditions"]}),
                         {"syncedSummary": "4/6"}, T1)
    for type_ in KSTATUS_TYPES:
        assert (find_condition(again["conditions"], type_) or {})["lastTransitionTime"] == T0
    done = with_kstatus(isj({**finished("Succeeded"), "conditions": again["conditions"]}), {}, T1)
    assert (find_condition(done["conditions"], "Ready") or {})["lastTransitionTime"] == T1
    assert (find_condition(done["conditions"], "Stalled") or {})["lastTransitionTime"] == T0


def test_registry_credential_ready_and_stalled() -> None:
    good = kstatus_conditions(None, credential_verdict("True", "SecretValid", "credentials found"), 3, T0)
    assert [(c["type"], c["status"], c["reason"]) for c in good] == [
        ("Ready", "True", "SecretValid"), ("Reconciling", "False", "SecretValid"), ("Stalled", "False", "SecretValid")]
    bad = kstatus_conditions(good, credential_verdict("False", "SecretMissing", "Secret 'x' not found"), 3, T1)
    assert [(c["status"], c["reason"]) for c in bad] == [("False", "SecretMissing"), ("False", "SecretMissing"),
                                                         ("True", "SecretMissing")]
    assert all(c["observedGeneration"] == 3 for c in bad)


@pytest.mark.parametrize("crd", ["imagesyncjobs.yaml", "registrycredentials.yaml"])
def test_the_crds_declare_what_kstatus_needs(crd: str) -> None:
    """conditions are a generic list keyed by type, and observedGeneration is declared: a real API server
    keeps what the operator writes."""
    doc = yaml.safe_load((ROOT / "crds" / crd).read_text())
    status = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    assert status["observedGeneration"]["type"] == "integer"
    items = status["conditions"]["items"]
    assert "enum" not in items["properties"]["type"]
    assert {"type", "status", "reason", "message", "lastTransitionTime", "observedGeneration"} <= \
        set(items["properties"])
    assert status["conditions"]["x-kubernetes-list-map-keys"] == ["type"]


# -- the Flux example builds on these conditions -------------------------------------------------------------

FLUX = ROOT / "examples" / "flux"


def flux_objects() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, doc) for path in sorted(FLUX.rglob("*.yaml")) for doc in yaml.safe_load_all(path.read_text())
            if doc and path.name != "kustomization.yaml"]


def test_the_flux_example_gates_the_app_on_the_mirrored_images() -> None:
    from controller.test_schemas import validate_cr

    from imagesync.controller.spec import parse_job_spec

    objects = flux_objects()
    flux = {(p.parent.name, d["metadata"]["name"]): d for p, d in objects if d["kind"] == "Kustomization"}
    images, app = flux[("production", "images-mirrored")], flux[("production", "app")]
    for ks in flux.values():
        assert ks["apiVersion"] == "kustomize.toolkit.fluxcd.io/v1"
        assert (ROOT / ks["spec"]["path"]).is_dir(), ks["spec"]["path"]
        assert (ROOT / ks["spec"]["path"] / "kustomization.yaml").is_file()
    assert images["spec"]["wait"] is True and "healthChecks" not in images["spec"]  # ignored with wait: true
    assert app["spec"]["dependsOn"] == [{"name": "images-mirrored"}]
    alternative = flux[("alternatives", "images-mirrored")]
    assert alternative["spec"]["wait"] is False and alternative["spec"]["path"] == images["spec"]["path"]

    mirror = {(d["kind"], d["metadata"]["name"]): d for p, d in objects if p.parent.name == "mirror"}
    for check in alternative["spec"]["healthChecks"]:
        target = mirror[(check["kind"], check["name"])]
        assert (target["apiVersion"], target["metadata"]["namespace"]) == (check["apiVersion"], check["namespace"])
    listed = yaml.safe_load((FLUX / "mirror" / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(p.name for p in (FLUX / "mirror").glob("*.yaml") if p.name != "kustomization.yaml")
    for (kind, _), doc in mirror.items():
        if kind in ("ImageSyncJob", "RegistryCredential"):
            validate_cr(doc)
    parse_job_spec(mirror[("ImageSyncJob", "app-images")]["spec"])
    namespaces = {d["metadata"]["name"] for d in mirror.values() if d["kind"] == "Namespace"}
    for path, doc in objects:
        if doc["kind"] != "Kustomization" and doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] in namespaces, f"{path}: a namespace nothing creates"
