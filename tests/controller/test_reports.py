"""Worker reports are untrusted (issue 11, point 4): each test is one way a pod could lie, and what the
operator does with it (ignore the pod, ignore the report, or clip it), plus the worker's own bound."""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx
import pytest

from imagesync.controller import handlers
from imagesync.controller.handlers import Context, fold_live, report_logins, run_job, run_pods
from imagesync.controller.render import LABEL_JOB, LABEL_RUN, PROGRESS_ANNOTATION
from imagesync.controller.reports import (
    MAX_FAILED_IMAGES,
    MAX_REASON,
    MAX_REF,
    Once,
    ReportError,
    controlled_by,
    parse_report,
)
from imagesync.controller.settings import OperatorSettings
from imagesync.controller.status import fold_progress
from imagesync.engine.stats import ImageOutcome, SyncStats
from imagesync.worker.report import REPORT_BUDGET, REPORT_FAILED_IMAGES, PodAnnotationReporter, bounded_report

RUN_REGISTRIES = {"source.example.com", "target.example.com"}


def good(**changes: Any) -> dict[str, Any]:
    report: dict[str, Any] = dict(SyncStats().snapshot(), shard=0)
    report.update(imagesTotal=4, imagesSynced=2, bytesCopied=1000, bytesPerSecond=12.5)
    report.update(changes)
    return report


def parse(report: Any, **kwargs: Any) -> Any:
    raw = report if isinstance(report, str) else json.dumps(report)
    return parse_report(raw, registries=kwargs.pop("registries", RUN_REGISTRIES), **kwargs)


# -- the typed parse ------------------------------------------------------------------------------


def test_a_real_worker_report_parses_as_it_is() -> None:
    stats = SyncStats(images_total=3, bytes_copied=5000)
    stats.record(ImageOutcome("s/a:1", "t/a:1", "synced"))
    stats.record(ImageOutcome("s/b:1", "t/b:1", "failed", reason="manifest unknown"))
    stats.logins_accepted.append("source.example.com")
    report = parse(bounded_report(dict(stats.snapshot(done=True), shard=0)), index=0)
    assert report.done is True and report.bytes_copied == 5000
    assert report.counts["imagesSynced"] == 1 and report.counts["imagesFailed"] == 1
    assert report.counts["failedImagesTotal"] == 1
    assert [(f.source, f.reason) for f in report.failed_images] == [("s/b:1", "manifest unknown")]
    assert report.logins_accepted == ("source.example.com",) and report.dropped == ()


def test_a_400_digit_rate_is_refused_without_overflow() -> None:
    # float() of it raises OverflowError: in the fold that left the run active for good.
    with pytest.raises(ReportError, match=r"bytesPerSecond is out of range.*an integer of 400 digits"):
        parse(good(bytesPerSecond=10**399))
    with pytest.raises(ReportError, match="bytesCopied is out of range"):
        parse(good(bytesCopied=10**399))
    with pytest.raises(ReportError, match="imagesTotal is out of range"):
        parse(good(imagesTotal=10**399))
    # Past Python's int-parsing limit json.loads itself refuses: still a ReportError, not a crash.
    with pytest.raises(ReportError, match="not valid JSON"):
        parse('{"bytesPerSecond": ' + "9" * 5000 + "}")


def test_the_fold_survives_a_400_digit_rate_even_unvalidated() -> None:
    folded = fold_progress({0: good(bytesPerSecond=10**399, bytesCopied=10**399)}, 1)
    assert folded["progress"]["bytesPerSecond"] == 0.0 and folded["progress"]["bytesCopied"] == 0
    json.dumps(folded, allow_nan=False)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400", "-1e400"])
def test_non_finite_numbers_are_refused(literal: str) -> None:
    raw = json.dumps(good()).replace('"bytesPerSecond":12.5', f'"bytesPerSecond":{literal}') \
        .replace('"bytesPerSecond": 12.5', f'"bytesPerSecond": {literal}')
    assert literal in raw
    with pytest.raises(ReportError, match=r"non-finite|not a finite number"):
        parse(raw)


def test_the_fold_writes_no_nan_even_unvalidated() -> None:
    folded = fold_progress({0: good(bytesPerSecond=float("nan")), 1: good(bytesPerSecond=float("inf"))}, 2)
    json.dumps(folded, allow_nan=False)
    assert folded["progress"]["bytesPerSecond"] == 0.0


@pytest.mark.parametrize("changes, message", [
    ({"imagesSynced": -1}, "imagesSynced is out of range"),
    ({"imagesSynced": True}, "imagesSynced is not an integer"),
    ({"imagesSynced": 1.5}, "imagesSynced is not an integer"),
    ({"imagesSynced": "2"}, "imagesSynced is not an integer"),
    ({"bytesCopied": -5}, "bytesCopied is out of range"),
    ({"bytesPerSecond": "fast"}, "bytesPerSecond is not a number"),
    ({"bytesPerSecond": -0.5}, "bytesPerSecond is not a finite number"),
    ({"done": "true"}, "done is not a boolean"),
    ({"done": 1}, "done is not a boolean"),
    ({"failedImages": "everything"}, "failedImages is not a list"),
    ({"failedImages": ["a"]}, "an entry of failedImages is not an object"),
    ({"failedImages": [{"source": 7}]}, "failedImages source is not a string"),
    ({"loginsRejected": "source.example.com"}, "loginsRejected is not a list"),
    ({"loginsRejected": [{"registry": "x"}]}, "an entry of loginsRejected is not a string"),
    ({"shard": 1}, "report of shard 1 on the pod of shard 0"),
])
def test_wrong_types_and_ranges_refuse_the_whole_report(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ReportError, match=message):
        parse(good(**changes), index=0)


@pytest.mark.parametrize("raw", ["[]", '"done"', "3", "null", "true", '[{"done": true}]'])
def test_a_report_that_is_not_a_json_object_is_refused(raw: str) -> None:
    with pytest.raises(ReportError, match="not a JSON object"):
        parse(raw)


@pytest.mark.parametrize("raw", ["", "{", "{'done': True}", '{"done": true', "\x00", "[" * 100_000])
def test_invalid_json_is_refused(raw: str) -> None:
    with pytest.raises(ReportError, match="not valid JSON"):
        parse(raw)


def test_an_oversized_annotation_is_refused_unread() -> None:
    with pytest.raises(ReportError, match="larger than"):
        parse(json.dumps(good(padding="x" * 300_000)))


def test_a_200_kb_reason_is_clipped() -> None:
    failure = {"source": "s/" + "a" * 5000, "target": "t/a:1", "reason": "x" * 200_000}
    report = parse(good(imagesFailed=1, failedImages=[failure]))
    (listed,) = report.failed_images
    assert len(listed.reason) == MAX_REASON and listed.reason.endswith("…")
    assert len(listed.source) == MAX_REF and listed.target == "t/a:1"
    assert any("reason clipped from 200000" in d for d in report.dropped)
    folded = fold_progress({0: report.as_dict()}, 1)
    assert len(json.dumps(folded)) < 5000


def test_failure_lists_are_capped_and_counts_kept() -> None:
    failures = [{"source": f"s/a{i}:1", "target": f"t/a{i}:1", "reason": "no"} for i in range(1000)]
    report = parse(good(imagesFailed=5000, failedImagesTotal=5000, failedImages=failures))
    assert len(report.failed_images) == MAX_FAILED_IMAGES
    assert report.counts["failedImagesTotal"] == 5000
    folded = fold_progress({0: report.as_dict()}, 1)
    assert folded["failedImagesTotal"] == 5000 and len(folded["failedImages"]) == 20


def test_logins_for_registries_outside_the_run_are_dropped() -> None:
    report = parse(good(loginsRejected=["victim.example.com", "target.example.com", "target.example.com"],
                        loginsAccepted=["elsewhere.example.com"] + ["x"] * 1000))
    assert report.logins_rejected == ("target.example.com",)
    assert report.logins_accepted == ()
    assert any("'victim.example.com' is not a registry of this run" in d for d in report.dropped)
    # A run that used no credentials has no login to report at all.
    assert parse(good(loginsRejected=["target.example.com"]), registries=set()).logins_rejected == ()


def test_unknown_keys_are_ignored() -> None:
    report = parse(good(phase="Succeeded", status={"phase": "Succeeded"}, percent=100, extra=[1] * 10))
    assert set(report.as_dict()) == {"imagesTotal", "imagesSynced", "imagesSkipped", "imagesFailed", "blobsCopied",
                                     "blobsMounted", "blobsSkipped", "failedImagesTotal", "bytesCopied",
                                     "bytesPerSecond", "done", "failedImages", "loginsAccepted", "loginsRejected",
                                     "referrersCopied", "referrersSkipped", "referrersFailed", "registryQuotas"}


# -- ownership ------------------------------------------------------------------------------------


def owned(kind: str = "Job", uid: str = "job-uid", controller: Any = True) -> dict[str, Any]:
    return {"metadata": {"ownerReferences": [{"apiVersion": "batch/v1", "kind": kind, "name": "mirror-r1",
                                              "uid": uid, "controller": controller}]}}


def test_only_the_controller_reference_of_the_right_kind_and_uid_counts() -> None:
    assert controlled_by(owned(), "Job", "job-uid")
    assert not controlled_by({"metadata": {}}, "Job", "job-uid")
    assert not controlled_by(owned(uid="other"), "Job", "job-uid")
    assert not controlled_by(owned(kind="ReplicaSet"), "Job", "job-uid")
    assert not controlled_by(owned(controller=False), "Job", "job-uid")
    assert not controlled_by(owned(controller="true"), "Job", "job-uid")
    assert not controlled_by(owned(uid=""), "Job", "")
    assert not controlled_by(owned(), "Job", None)


def test_once_remembers_a_bounded_number_of_keys() -> None:
    once = Once(size=2)
    assert once.first("a") and not once.first("a")
    assert once.first("b") and once.first("c")
    assert once.first("a")  # forgotten: the oldest went first


# -- the handlers' listing, with a fake API ---------------------------------------------------------


class FakeKube:
    def __init__(self, job: dict[str, Any] | None, pods: list[dict[str, Any]]) -> None:
        self.job, self.pods = job, pods
        self.patched: list[tuple[str, dict[str, Any]]] = []

    def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.job if self.job and self.job["metadata"]["name"] == name else None

    def list_pods(self, namespace: str, labels: dict[str, str]) -> list[dict[str, Any]]:
        return [dict(p) for p in self.pods]

    def list_regcreds(self, namespace: str) -> list[dict[str, Any]]:
        return [{"metadata": {"name": name, "generation": 1}, "spec": {"registry": registry}, "status": {}}
                for name, registry in (("source", "source.example.com"), ("victim", "victim.example.com"))]

    def patch_regcred_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.patched.append((name, status))


ISJ: dict[str, Any] = {
    "metadata": {"name": "mirror", "namespace": "sync", "uid": "isj-uid", "generation": 1},
    "spec": {"parallelism": 1},
    "status": {"run": 1, "jobName": "mirror-r1", "phase": "Running",
               "credentials": [{"registry": "source.example.com", "name": "source"}]},
}
JOB = {"metadata": {"name": "mirror-r1", "uid": "job-uid", "ownerReferences": [
    {"kind": "ImageSyncJob", "name": "mirror", "uid": "isj-uid", "controller": True}]}}


def pod(name: str, report: Any, *, owner: dict[str, Any] | None = None, phase: str = "Running") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "uid": f"{name}-uid", "creationTimestamp": "2026-01-01T00:00:00Z",
                            "labels": {LABEL_JOB: "mirror", LABEL_RUN: "1"},
                            "annotations": {"batch.kubernetes.io/job-completion-index": "0"}}
    if report is not None:
        meta["annotations"][PROGRESS_ANNOTATION] = report if isinstance(report, str) else json.dumps(report)
    if owner is not None:
        meta.update(owner["metadata"])
    return {"metadata": meta, "status": {"phase": phase}}


def context(kube: FakeKube) -> Context:
    return Context(kube, OperatorSettings(worker_image="imagesync:test"))  # type: ignore[arg-type]


def listed(ctx: Context) -> Any:
    job = run_job(ctx, ISJ)
    assert job is not None
    return run_pods(ctx, ISJ, job)


def test_a_forged_done_report_from_a_pod_the_job_does_not_own_is_ignored_and_logged_once(
        caplog: pytest.LogCaptureFixture) -> None:
    real = pod("mirror-r1-0-abc", good(imagesSynced=1), owner=owned())
    forged = pod("mirror-r1-0-zzz", good(imagesSynced=4, imagesTotal=4, bytesCopied=10**9, done=True,
                                        loginsRejected=["source.example.com"]), phase="Succeeded")
    ctx = context(FakeKube(JOB, [real, forged]))
    with caplog.at_level(logging.WARNING, logger="imagesync.controller.handlers"):
        for _ in range(3):
            pods = listed(ctx)
    assert pods.reports[0]["imagesSynced"] == 1 and pods.reports[0]["done"] is False
    assert pods.phases == {0: "Running"}
    folded = fold_live(ISJ, pods.reports, pods.phases)
    assert folded["shards"][0]["state"] == "Running" and folded["progress"]["bytesCopied"] == 1000
    foreign = [r.getMessage() for r in caplog.records if "not controlled by Job" in r.getMessage()]
    assert len(foreign) == 1 and "mirror-r1-0-zzz" in foreign[0]
    # Its refused login does not reach the RegistryCredential either.
    report_logins(ctx, ISJ, pods.reports)
    assert ctx.kube.patched == []  # type: ignore[attr-defined]


def test_pods_of_a_job_the_isj_does_not_control_are_ignored() -> None:
    # Someone created the Job first under the run's name (the operator's create got 409): not ours.
    impostor = {"metadata": {"name": "mirror-r1", "uid": "job-uid"}}
    ctx = context(FakeKube(impostor, [pod("mirror-r1-0-abc", good(done=True), owner=owned())]))
    assert run_job(ctx, ISJ) is None


def test_a_bad_report_from_the_run_s_own_pod_is_ignored_and_the_fold_goes_on(
        caplog: pytest.LogCaptureFixture) -> None:
    bad = '{"bytesPerSecond": ' + "9" * 400 + ', "done": true, "imagesSynced": 3}'
    pods_ = [pod("mirror-r1-0-abc", bad, owner=owned())]
    ctx = context(FakeKube(JOB, pods_))
    with caplog.at_level(logging.WARNING, logger="imagesync.controller.handlers"):
        listed(ctx)
        found = listed(ctx)
    assert found.reports == {} and found.phases == {0: "Running"}
    folded = fold_live(ISJ, found.reports, found.phases)
    assert folded["shards"][0]["state"] == "Running" and folded["phase"] == "Running"
    lines = [r.getMessage() for r in caplog.records if "progress report ignored" in r.getMessage()]
    assert len(lines) == 1 and "an integer of 400 digits" in lines[0] and len(lines[0]) < 400


def test_a_refused_login_from_the_run_s_own_pod_for_another_registry_does_not_reach_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(handlers, "post_event", lambda *args, **kwargs: None)  # no kopf context here
    report = good(loginsRejected=["victim.example.com", "source.example.com"])
    ctx = context(FakeKube(JOB, [pod("mirror-r1-0-abc", report, owner=owned())]))
    report_logins(ctx, ISJ, listed(ctx).reports)
    assert [name for name, _ in ctx.kube.patched] == ["source"]  # type: ignore[attr-defined]


# -- the worker's side: the annotation stays far below 256 KiB ----------------------------------


def test_ten_thousand_failures_fit_the_annotation_with_exact_counts() -> None:
    stats = SyncStats(images_total=10_000)
    for i in range(10_000):
        stats.record(ImageOutcome(f"source.example.com/team/app{i}:1", f"target.example.com/team/app{i}:1",
                                  "failed", reason=f"image {i}: " + "registry said no. " * 500))
    snapshot = dict(stats.snapshot(done=True), shard=0)
    text = bounded_report(snapshot)
    assert len(text.encode()) <= REPORT_BUDGET < 256 * 1024
    sent = json.loads(text)
    assert sent["imagesFailed"] == 10_000 and sent["failedImagesTotal"] == 10_000
    assert 0 < len(sent["failedImages"]) <= REPORT_FAILED_IMAGES
    assert sent["failedImages"][0]["source"] == "source.example.com/team/app0:1"
    assert all(len(f["reason"]) <= MAX_REASON for f in sent["failedImages"])
    # ... and the operator accepts it as it is.
    report = parse(text, index=0)
    assert report.counts["failedImagesTotal"] == 10_000 and report.done


def test_bounded_report_shrinks_the_list_when_references_are_long_too() -> None:
    failures = [{"source": "s" * 4000, "target": "t" * 4000, "reason": "r" * 4000} for _ in range(500)]
    text = bounded_report({"imagesFailed": 500, "failedImages": failures, "bytesPerSecond": float("nan")})
    sent = json.loads(text)
    assert len(text.encode()) <= REPORT_BUDGET and sent["failedImagesTotal"] == 500
    assert sent["bytesPerSecond"] == 0
    parse(text)


async def test_the_pod_reporter_sends_the_bounded_report() -> None:
    bodies: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return httpx.Response(200, json={})

    reporter = PodAnnotationReporter("http://api.invalid", "sync", "mirror-r1-0-abc", None, False)
    reporter._client = httpx.AsyncClient(base_url="http://api.invalid", transport=httpx.MockTransport(handler))
    failures = [{"source": f"s/a{i}:1", "target": f"t/a{i}:1", "reason": "x" * 100_000} for i in range(3000)]
    await reporter.report({"imagesFailed": 3000, "failedImagesTotal": 3000, "failedImages": failures})
    await reporter.aclose()
    (body,) = bodies
    annotation = body["metadata"]["annotations"][PROGRESS_ANNOTATION]
    assert len(annotation.encode()) <= REPORT_BUDGET
    assert json.loads(annotation)["failedImagesTotal"] == 3000
