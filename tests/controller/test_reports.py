"""Worker reports are untrusted (issue 11, points 4 and 5): each test is one way a worker, or anyone who may
write Pods or ConfigMaps in the namespace, could lie, and what the operator does with it (ignore the pod,
the ConfigMap or the report, or clip it), plus the worker's own bound."""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx
import pytest

from imagesync.controller import handlers
from imagesync.controller.handlers import Context, fold_live, report_logins, run_job, run_shards
from imagesync.controller.render import LABEL_JOB, LABEL_RUN, render_report_configmap
from imagesync.controller.reports import (
    MAX_FAILED_IMAGES,
    MAX_REASON,
    MAX_REF,
    Once,
    ReportError,
    controlled_by,
    parse_report,
    shard_of_key,
)
from imagesync.controller.settings import OperatorSettings
from imagesync.controller.status import fold_progress
from imagesync.engine.stats import ImageOutcome, SyncStats
from imagesync.worker.report import (
    CONFIGMAP_DATA_LIMIT,
    REPORT_BUDGET,
    REPORT_FAILED_IMAGES,
    ConfigMapReporter,
    bounded_report,
    report_budget,
    shard_report,
)

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
    ({"shard": 1}, "report of shard 1 under the key of shard 0"),
    ({"pod": "mirror-r1-0-abc"}, "pod is not an object"),
    ({"pod": {"name": "mirror-r1-0-abc"}}, "pod uid is not a uid"),
    ({"pod": {"name": "", "uid": "u"}}, "pod name is not a pod's name"),
    ({"pod": {"name": "p", "uid": "u" * 65}}, "pod uid is not a uid"),
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


def test_an_oversized_report_is_refused_unread() -> None:
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
                                     "referrersCopied", "referrersSkipped", "referrersFailed", "registryQuotas",
                                     "imagesSkippedUnsigned", "skippedImages"}


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


# -- the handlers' reading of pods and the report ConfigMap, with a fake API ----------------------------


class FakeKube:
    def __init__(self, job: dict[str, Any] | None, pods: list[dict[str, Any]],
                 configmap: dict[str, Any] | None = None) -> None:
        self.job, self.pods, self.configmap = job, pods, configmap
        self.patched: list[tuple[str, dict[str, Any]]] = []

    def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.job if self.job and self.job["metadata"]["name"] == name else None

    def list_pods(self, namespace: str, labels: dict[str, str]) -> list[dict[str, Any]]:
        return [dict(p) for p in self.pods]

    def get_configmap(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.configmap if self.configmap and self.configmap["metadata"]["name"] == name else None

    def list_regcreds(self, namespace: str) -> list[dict[str, Any]]:
        return [{"metadata": {"name": name, "generation": 1, "resourceVersion": "1"},
                 "spec": {"registry": registry}, "status": {}}
                for name, registry in (("source", "source.example.com"), ("victim", "victim.example.com"))]

    def get_custom(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        assert plural == "registrycredentials"
        return next((r for r in self.list_regcreds(namespace) if r["metadata"]["name"] == name), None)

    def patch_status(self, plural: str, namespace: str, name: str, status: dict[str, Any],
                     resource_version: str) -> None:
        self.patched.append((name, status))


ISJ: dict[str, Any] = {
    "metadata": {"name": "mirror", "namespace": "sync", "uid": "isj-uid", "generation": 1},
    "spec": {"parallelism": 1},
    "status": {"run": 1, "jobName": "mirror-r1", "phase": "Running",
               "credentials": [{"registry": "source.example.com", "name": "source"}]},
}
JOB = {"metadata": {"name": "mirror-r1", "uid": "job-uid", "ownerReferences": [
    {"kind": "ImageSyncJob", "name": "mirror", "uid": "isj-uid", "controller": True}]},
    "spec": {"completions": 1}}


def pod(name: str, *, owner: dict[str, Any] | None = None, phase: str = "Running", index: int = 0,
        created: str = "2026-01-01T00:00:00Z") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "uid": f"{name}-uid", "creationTimestamp": created,
                            "labels": {LABEL_JOB: "mirror", LABEL_RUN: "1"},
                            "annotations": {"batch.kubernetes.io/job-completion-index": str(index)}}
    if owner is not None:
        meta.update(owner["metadata"])
    return {"metadata": meta, "status": {"phase": phase}}


def by(name: str, report: dict[str, Any]) -> str:
    """``report`` as the pod ``name`` writes it (its name and uid in it)."""
    return json.dumps({**report, "pod": {"name": name, "uid": f"{name}-uid"}})


def reports(data: dict[str, str], *, owner_uid: str = "isj-uid", name: str = "mirror-r1-report") -> dict[str, Any]:
    """A report ConfigMap as the operator renders it (owned by the ISJ), with ``data`` written into it."""
    configmap = render_report_configmap({**ISJ, "metadata": {**ISJ["metadata"], "uid": owner_uid}}, 1)
    configmap["metadata"].update(name=name, uid=f"{name}-{owner_uid}")
    configmap["data"] = data
    return configmap


def context(kube: FakeKube) -> Context:
    return Context(kube, OperatorSettings(worker_image="imagesync:test"))  # type: ignore[arg-type]


def listed(ctx: Context) -> Any:
    job = run_job(ctx, ISJ)
    assert job is not None
    return run_shards(ctx, ISJ, job)


def warnings(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


REAL = "mirror-r1-0-abc"


def test_the_run_s_own_report_counts() -> None:
    ctx = context(FakeKube(JOB, [pod(REAL, owner=owned())], reports({"shard-0": by(REAL, good(imagesSynced=3))})))
    found = listed(ctx)
    assert found.reports[0]["imagesSynced"] == 3 and found.phases == {0: "Running"}


def test_a_forged_done_report_in_a_configmap_the_operator_did_not_create_is_ignored_and_logged_once(
        caplog: pytest.LogCaptureFixture) -> None:
    # Same name and labels, but created by someone else (its owner is not this ImageSyncJob).
    forged = reports({"shard-0": by(REAL, good(imagesSynced=4, bytesCopied=10**9, done=True,
                                                loginsRejected=["source.example.com"]))}, owner_uid="other")
    ctx = context(FakeKube(JOB, [pod(REAL, owner=owned())], forged))
    with caplog.at_level(logging.WARNING, logger="imagesync.controller.handlers"):
        for _ in range(3):
            found = listed(ctx)
    assert found.reports == {} and found.phases == {0: "Running"}
    folded = fold_live(ISJ, found.reports, found.phases)
    assert folded["shards"][0]["state"] == "Running" and folded["progress"]["bytesCopied"] == 0
    (line,) = warnings(caplog, "is not its report ConfigMap")
    assert "mirror-r1-report" in line
    report_logins(ctx, ISJ, found.reports)
    assert ctx.kube.patched == []  # type: ignore[attr-defined]


def test_a_configmap_of_another_name_is_not_the_run_s_report_even_when_owned() -> None:
    ctx = context(FakeKube(JOB, [pod(REAL, owner=owned())],
                           reports({"shard-0": by(REAL, good(done=True))}, name="mirror-r1-report")))
    other = reports({"shard-0": by(REAL, good(done=True))}, name="mirror-r2-report")
    assert handlers.foreign_report(ctx, ISJ, other) and not handlers.foreign_report(ctx, ISJ, ctx.kube.configmap)  # type: ignore[attr-defined]


def test_a_pod_the_job_does_not_own_counts_for_nothing(caplog: pytest.LogCaptureFixture) -> None:
    # Its phase is not the shard's, and a report naming it is not counted either.
    forged_pod = pod("mirror-r1-0-zzz", phase="Succeeded", created="2026-01-01T00:01:00Z")
    data = {"shard-0": by("mirror-r1-0-zzz", good(imagesSynced=4, done=True))}
    ctx = context(FakeKube(JOB, [pod(REAL, owner=owned()), forged_pod], reports(data)))
    with caplog.at_level(logging.WARNING, logger="imagesync.controller.handlers"):
        listed(ctx)
        found = listed(ctx)
    assert found.reports == {} and found.phases == {0: "Running"}
    (foreign,) = warnings(caplog, "not controlled by Job")
    assert "mirror-r1-0-zzz" in foreign
    (ignored,) = warnings(caplog, "names no pod of Job mirror-r1 at shard 0")
    assert "mirror-r1-0-zzz" in ignored


@pytest.mark.parametrize("data", [
    {"shard-1": by(REAL, good(shard=1, done=True))},  # a shard the Job does not have
    {"shard-00": by(REAL, good(done=True))},
    {"shard-+0": by(REAL, good(done=True))},
    {"evil": by(REAL, good(done=True))},
    {"shard-0": json.dumps(good(done=True))},  # names no pod at all
    {"shard-0": by("mirror-r1-1-xyz", good(done=True))},  # a pod that does not exist
])
def test_a_forged_key_or_a_report_that_names_no_pod_of_the_shard_is_ignored(
        data: dict[str, str], caplog: pytest.LogCaptureFixture) -> None:
    ctx = context(FakeKube(JOB, [pod(REAL, owner=owned())], reports(data)))
    with caplog.at_level(logging.WARNING, logger="imagesync.controller.handlers"):
        found = listed(ctx)
    assert found.reports == {}
    assert len(warnings(caplog, "ignored")) == 1


def test_a_report_of_one_shard_under_another_shard_s_key_is_ignored() -> None:
    job = {**JOB, "spec": {"completions": 2}}
    pods = [pod(REAL, owner=owned()), pod("mirror-r1-1-def", owner=owned(), index=1)]
    # Shard 1's pod writes under shard 0's key (and the other way round): each names a pod of another shard.
    data = {"shard-0": by("mirror-r1-1-def", good(shard=1)), "shard-1": by(REAL, good(shard=0))}
    assert listed(context(FakeKube(job, pods, reports(data)))).reports == {}
    data = {"shard-0": by("mirror-r1-1-def", good(shard=0)), "shard-1": by(REAL, good(shard=1))}
    assert listed(context(FakeKube(job, pods, reports(data)))).reports == {}


def test_a_retried_shard_keeps_the_latest_attempt_s_report_and_phase() -> None:
    first = pod(REAL, owner=owned(), phase="Failed")
    retry = pod("mirror-r1-0-def", owner=owned(), phase="Running", created="2026-01-01T00:05:00Z")
    # The failed attempt's report stays in the key until the retry writes its own (as a pod annotation did).
    found = listed(context(FakeKube(JOB, [first, retry], reports({"shard-0": by(REAL, good(imagesSynced=1))}))))
    assert found.reports[0]["imagesSynced"] == 1 and found.phases == {0: "Running"}
    found = listed(context(FakeKube(JOB, [first, retry],
                                    reports({"shard-0": by("mirror-r1-0-def", good(imagesSynced=2))}))))
    assert found.reports[0]["imagesSynced"] == 2 and found.phases == {0: "Running"}


def test_pods_of_a_job_the_isj_does_not_control_are_ignored() -> None:
    # Someone created the Job first under the run's name (the operator's create got 409): not ours.
    impostor = {"metadata": {"name": "mirror-r1", "uid": "job-uid"}}
    ctx = context(FakeKube(impostor, [pod(REAL, owner=owned())], reports({"shard-0": by(REAL, good(done=True))})))
    assert run_job(ctx, ISJ) is None


def test_a_bad_report_from_the_run_s_own_pod_is_ignored_and_the_fold_goes_on(
        caplog: pytest.LogCaptureFixture) -> None:
    bad = '{"bytesPerSecond": ' + "9" * 400 + ', "done": true, "imagesSynced": 3}'
    ctx = context(FakeKube(JOB, [pod(REAL, owner=owned())], reports({"shard-0": bad})))
    with caplog.at_level(logging.WARNING, logger="imagesync.controller.handlers"):
        listed(ctx)
        found = listed(ctx)
    assert found.reports == {} and found.phases == {0: "Running"}
    folded = fold_live(ISJ, found.reports, found.phases)
    assert folded["shards"][0]["state"] == "Running" and folded["phase"] == "Running"
    (line,) = warnings(caplog, "report 'shard-0' ignored")
    assert "an integer of 400 digits" in line and len(line) < 400


def test_a_refused_login_from_the_run_s_own_pod_for_another_registry_does_not_reach_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(handlers, "post_event", lambda *args, **kwargs: None)  # no kopf context here
    report = good(loginsRejected=["victim.example.com", "source.example.com"])
    ctx = context(FakeKube(JOB, [pod(REAL, owner=owned())], reports({"shard-0": by(REAL, report)})))
    report_logins(ctx, ISJ, listed(ctx).reports)
    assert [name for name, _ in ctx.kube.patched] == ["source"]  # type: ignore[attr-defined]


@pytest.mark.parametrize("key, shards, index", [
    ("shard-0", 1, 0), ("shard-99", 100, 99), ("shard-100", 100, None), ("shard-1", 1, None),
    ("shard-01", 2, None), ("shard--1", 2, None), ("shard-", 2, None), ("shard-\u0661", 2, None), ("0", 1, None),
    ("pod-0", 1, None), ("shard-0 ", 1, None),
])
def test_only_keys_the_worker_writes_name_a_shard(key: str, shards: int, index: int | None) -> None:
    assert shard_of_key(key, shards) == index


# -- the worker's side: every shard's report fits the one ConfigMap --------------------------------


def test_a_hundred_shards_of_reports_fit_one_configmap() -> None:
    # spec.parallelism is at most 100: with every shard's report at its budget, keys included, the
    # ConfigMap stays under the API server's 1 MiB.
    assert report_budget(1) == REPORT_BUDGET and report_budget(7) == REPORT_BUDGET
    for shards in (1, 8, 37, 100):
        assert shards * (report_budget(shards) + len(f"shard-{shards - 1}")) < CONFIGMAP_DATA_LIMIT
    assert report_budget(100) == 10_321


def test_ten_thousand_failures_fit_a_report_with_exact_counts() -> None:
    stats = SyncStats(images_total=10_000)
    for i in range(10_000):
        stats.record(ImageOutcome(f"source.example.com/team/app{i}:1", f"target.example.com/team/app{i}:1",
                                  "failed", reason=f"image {i}: " + "registry said no. " * 500))
    snapshot = dict(stats.snapshot(done=True), shard=0)
    for budget in (REPORT_BUDGET, report_budget(100)):
        text = bounded_report(snapshot, budget)
        assert len(text.encode()) <= budget
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


def test_a_small_budget_drops_quotas_then_logins_rather_than_overflow() -> None:
    hosts = [f"{i:02d}" + "r" * 250 + ".example.com" for i in range(32)]
    progress = {"imagesSynced": 5, "registryQuotas": {h: {"remaining": 1, "limit": 10} for h in hosts},
                "loginsAccepted": hosts[:8]}
    budget = report_budget(100)
    assert len(bounded_report(progress, budget).encode()) > budget  # the lists alone are over it
    sent = json.loads(shard_report(progress, budget))
    assert sent["imagesSynced"] == 5 and "registryQuotas" not in sent and sent["loginsAccepted"] == hosts[:8]
    many = {**progress, "loginsAccepted": hosts, "loginsRejected": hosts}
    sent = json.loads(shard_report(many, budget))
    assert sent["imagesSynced"] == 5 and "loginsAccepted" not in sent and "registryQuotas" not in sent
    assert len(shard_report(many, budget).encode()) <= budget


async def test_the_configmap_reporter_patches_its_shard_s_key_with_its_pod() -> None:
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(200, json={})

    pod_ = {"name": "mirror-r1-3-abc", "uid": "0b5e-uid"}
    budget = report_budget(100)
    reporter = ConfigMapReporter("http://api.invalid", "sync", "mirror-r1-report", 3, pod_, budget, None, False)
    reporter._client = httpx.AsyncClient(base_url="http://api.invalid", transport=httpx.MockTransport(handler))
    failures = [{"source": f"s/a{i}:1", "target": f"t/a{i}:1", "reason": "x" * 100_000} for i in range(3000)]
    await reporter.report({"imagesFailed": 3000, "failedImagesTotal": 3000, "failedImages": failures, "shard": 3})
    await reporter.aclose()
    (request,) = requests
    assert request.method == "PATCH" and request.url.path == "/api/v1/namespaces/sync/configmaps/mirror-r1-report"
    assert request.headers["Content-Type"] == "application/merge-patch+json"
    body = json.loads(request.content)
    assert set(body) == {"data"} and set(body["data"]) == {"shard-3"}  # no resourceVersion: shards never conflict
    text = body["data"]["shard-3"]
    assert len(text.encode()) <= budget
    sent = json.loads(text)
    assert sent["failedImagesTotal"] == 3000 and sent["pod"] == pod_
    report = parse(text, index=3)
    assert (report.pod_name, report.pod_uid) == ("mirror-r1-3-abc", "0b5e-uid")
