"""spec.referrers and spec.bandwidth from the CR to the worker's SyncOptions; referrer counts and registry
quotas from the worker's report through reports.py into the status (issue 10, points 1, 3, 4 and 6)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from imagesync.controller.render import render_config_secret, worker_options
from imagesync.controller.reports import MAX_COUNT, MAX_QUOTAS, ReportError, parse_report
from imagesync.controller.spec import ReferrersSpec, SpecError, parse_job_spec
from imagesync.controller.status import REGISTRY_QUOTAS_CAP, fold_progress
from imagesync.engine.errors import ConfigError
from imagesync.engine.referrers import ReferrerOptions
from imagesync.engine.stats import SyncStats
from imagesync.worker.main import load_options
from imagesync.worker.report import REPORT_QUOTAS, bounded_report

ROOT = Path(__file__).resolve().parents[2]
IMAGES = {"source.example.com/lib/app:1": "target.example.com/mirror/app"}


def spec(**fields: Any) -> dict[str, Any]:
    return {"images": dict(IMAGES), **fields}


def options_of(tmp_path: Path, **fields: Any) -> Any:
    """The worker's options as the operator renders them for ``fields`` and the worker reads them back."""
    path = tmp_path / "options.json"
    path.write_text(json.dumps(worker_options(parse_job_spec(spec(**fields)))))
    return load_options(path).sync


# -- spec -> options -> SyncOptions --------------------------------------------------------------


def test_defaults_copy_referrers_without_a_bandwidth_limit(tmp_path: Path) -> None:
    parsed = parse_job_spec(spec())
    assert parsed.referrers == ReferrersSpec() and parsed.referrers.enabled and parsed.bandwidth is None
    options = options_of(tmp_path)
    assert options.referrers == ReferrerOptions() and options.limit_rate is None
    assert "limitRate" not in worker_options(parsed)


def test_referrers_and_bandwidth_reach_the_engine(tmp_path: Path) -> None:
    fields = {"referrers": {"enabled": True, "includeTypes": ["application/vnd.dev.cosign.*"],
                            "excludeTypes": ["application/spdx+json"], "optional": True},
              "bandwidth": "50MiB/s"}
    parsed = parse_job_spec(spec(**fields))
    assert parsed.referrers == ReferrersSpec(True, ("application/vnd.dev.cosign.*",), ("application/spdx+json",),
                                             True)
    assert parsed.bandwidth == 50 * 1024 * 1024
    options = options_of(tmp_path, **fields)
    assert options.referrers == ReferrerOptions(True, ("application/vnd.dev.cosign.*",),
                                                ("application/spdx+json",), True)
    assert options.limit_rate == 50 * 1024 * 1024
    assert options_of(tmp_path, bandwidth="20M").limit_rate == 20_000_000


def test_referrers_can_be_turned_off(tmp_path: Path) -> None:
    assert options_of(tmp_path, referrers={"enabled": False}).referrers.enabled is False
    assert options_of(tmp_path, referrers={}).referrers == ReferrerOptions()


def test_the_options_travel_in_the_run_secret_only() -> None:
    parsed = parse_job_spec(spec(bandwidth="1MiB/s", referrers={"optional": True}))
    isj = {"metadata": {"name": "m", "namespace": "ns", "uid": "u"}}
    secret = render_config_secret(isj, 1, parsed, {}, {})
    options = json.loads(base64.b64decode(secret["data"]["options.json"]))
    assert options["limitRate"] == 1024 * 1024
    assert options["referrers"] == {"enabled": True, "includeTypes": [], "excludeTypes": [], "optional": True}


def test_an_older_options_file_keeps_the_engine_defaults(tmp_path: Path) -> None:
    path = tmp_path / "options.json"
    path.write_text(json.dumps({"proc": 3}))
    options = load_options(path).sync
    assert options.referrers == ReferrerOptions() and options.limit_rate is None


@pytest.mark.parametrize("options", [{"limitRate": 0}, {"limitRate": "fast"}, {"limitRate": True},
                                     {"referrers": "yes"}, {"referrers": {"includeTypes": "a/b"}}])
def test_a_bad_options_file_is_a_config_error(tmp_path: Path, options: dict[str, Any]) -> None:
    path = tmp_path / "options.json"
    path.write_text(json.dumps(options))
    with pytest.raises(ConfigError, match="invalid option value"):
        load_options(path)


@pytest.mark.parametrize(("fields", "path", "words"), [
    ({"bandwidth": "fast"}, "spec.bandwidth", "is not a rate"),
    ({"bandwidth": "0"}, "spec.bandwidth", "is not a rate"),
    ({"bandwidth": "-5M"}, "spec.bandwidth", "is not a rate"),
    ({"bandwidth": "0.1"}, "spec.bandwidth", "less than one byte"),
    ({"bandwidth": "1e400M"}, "spec.bandwidth", ""),
    ({"bandwidth": "900000TiB"}, "spec.bandwidth", "more than 1 PB/s"),
    ({"bandwidth": 50}, "spec.bandwidth", "must be a string"),
    ({"referrers": True}, "spec.referrers", "must be an object"),
    ({"referrers": {"enabled": "yes"}}, "spec.referrers.enabled", "true or false"),
    ({"referrers": {"optional": 1}}, "spec.referrers.optional", "true or false"),
    ({"referrers": {"includeTypes": "application/*"}}, "spec.referrers.includeTypes", "list of non-empty"),
    ({"referrers": {"excludeTypes": [""]}}, "spec.referrers.excludeTypes", "list of non-empty"),
    ({"referrers": {"excludeTypes": ["a b"]}}, "spec.referrers.excludeTypes", "not an artifact type"),
    ({"referrers": {"includeTypes": ["x" * 256]}}, "spec.referrers.includeTypes", "not an artifact type"),
    ({"referrers": {"includeTypes": [f"t/{i}" for i in range(33)]}}, "spec.referrers.includeTypes", "at most 32"),
])
def test_bad_values_are_one_clear_spec_error(fields: dict[str, Any], path: str, words: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_job_spec(spec(**fields))
    assert caught.value.field_path == path and words in str(caught.value)
    assert len(str(caught.value)) < 400


# -- the CRD declares what is parsed and folded ---------------------------------------------------


def crd_schema() -> dict[str, Any]:
    crd = yaml.safe_load((ROOT / "crds" / "imagesyncjobs.yaml").read_text())
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
    return schema


def test_the_crd_declares_the_new_spec_and_status_fields() -> None:
    schema = crd_schema()
    spec_props = schema["spec"]["properties"]
    assert spec_props["bandwidth"]["type"] == "string"
    referrers = spec_props["referrers"]["properties"]
    assert referrers["enabled"]["default"] is True and referrers["optional"]["default"] is False
    assert set(referrers) == {"enabled", "includeTypes", "excludeTypes", "optional"}
    status = schema["status"]["properties"]
    progress = status["progress"]["properties"]
    folded = fold_progress({0: {"registryQuotas": [{"registry": "r", "remaining": 1, "limit": 2,
                                                    "windowSeconds": 60}]}}, 1)
    assert set(folded["progress"]) <= set(progress)
    assert {"referrersCopied", "referrersSkipped", "referrersFailed"} <= set(progress)
    quotas = status["registryQuotas"]
    assert quotas["maxItems"] == REGISTRY_QUOTAS_CAP
    assert set(folded["registryQuotas"][0]) <= set(quotas["items"]["properties"])
    assert set(folded) <= set(status)


# -- report -> reports.py -> status ---------------------------------------------------------------


def worker_report(**quotas: dict[str, Any]) -> dict[str, Any]:
    """A real worker's snapshot with referrer outcomes and announced quotas, as its annotation carries it."""
    stats = SyncStats(images_total=1)
    for key, outcome in (("t/a:sha256-1.sig", "copied"), ("t/a@sha256:2", "copied"), ("t/a@sha256:3", "skipped"),
                         ("t/a@sha256:4", "failed")):
        stats.record_referrer(key, outcome)  # type: ignore[arg-type]
    stats.quotas = dict(quotas)
    report: dict[str, Any] = json.loads(bounded_report(dict(stats.snapshot(done=True), shard=0)))
    return report


def parsed(report: dict[str, Any]) -> Any:
    return parse_report(json.dumps(report), registries=set(), index=0)


def test_referrer_counts_and_quotas_fold_into_the_status() -> None:
    report = worker_report(**{"registry-1.docker.io": {"remaining": 76, "limit": 100, "windowSeconds": 21600,
                                                       "resetSeconds": 12.5}})
    shard = parsed(report)
    assert (shard.counts["referrersCopied"], shard.counts["referrersSkipped"], shard.counts["referrersFailed"]) \
        == (2, 1, 1)
    folded = fold_progress({0: shard.as_dict()}, 1)
    progress = folded["progress"]
    assert (progress["referrersCopied"], progress["referrersSkipped"], progress["referrersFailed"]) == (2, 1, 1)
    assert folded["registryQuotas"] == [{"registry": "registry-1.docker.io", "remaining": 76, "limit": 100,
                                         "windowSeconds": 21600}]


def test_shards_sum_referrers_and_keep_the_lowest_remaining_quota() -> None:
    one = parsed(worker_report(**{"b.example": {"remaining": 50, "limit": 100}, "a.example": {"remaining": 9}}))
    two = parsed(worker_report(**{"b.example": {"remaining": 3, "limit": 100, "windowSeconds": 60}}))
    folded = fold_progress({0: one.as_dict(), 1: two.as_dict()}, 2)
    assert folded["progress"]["referrersCopied"] == 4 and folded["progress"]["referrersFailed"] == 2
    assert folded["registryQuotas"] == [{"registry": "a.example", "remaining": 9},
                                        {"registry": "b.example", "remaining": 3, "limit": 100,
                                         "windowSeconds": 60}]


def test_no_quota_announced_empties_the_list() -> None:
    folded = fold_progress({0: parsed(worker_report()).as_dict()}, 1)
    assert folded["registryQuotas"] == []  # the merge patch replaces an earlier run's list
    assert "registryQuotas" not in worker_report()
    assert fold_progress({}, 1)["registryQuotas"] == []


def test_an_older_worker_without_referrer_counts_folds_as_zero() -> None:
    report = {k: v for k, v in worker_report().items() if not k.startswith("referrers")}
    folded = fold_progress({0: parsed(report).as_dict()}, 1)
    assert folded["progress"]["referrersCopied"] == 0 and folded["registryQuotas"] == []


@pytest.mark.parametrize("value", [-1, MAX_COUNT + 1, 1.5, "3", None, True])
def test_referrer_counts_are_bounded(value: Any) -> None:
    report = dict(worker_report(), referrersCopied=value)
    with pytest.raises(ReportError, match="referrersCopied"):
        parsed(report)


@pytest.mark.parametrize("value", [[], "quota", 7])
def test_registry_quotas_must_be_an_object(value: Any) -> None:
    with pytest.raises(ReportError, match="registryQuotas"):
        parsed(dict(worker_report(), registryQuotas=value))


def test_registry_quotas_are_clipped_not_refused() -> None:
    quotas: dict[str, Any] = {f"r{i:03}.example": {"remaining": i} for i in range(MAX_QUOTAS + 8)}
    quotas["r000.example"] = {"remaining": 10**30, "limit": 10**40, "windowSeconds": 1e300}
    quotas["r001.example"] = {"remaining": -1}
    quotas["r002.example"] = {"remaining": 5, "limit": "lots"}
    quotas["r003.example"] = "nope"
    long_host = "h" * 1000
    report = dict(worker_report(), registryQuotas={long_host: {"remaining": 1}, **quotas})
    shard = parsed(report)
    names = [q.registry for q in shard.registry_quotas]
    assert len(names) == MAX_QUOTAS - 3 and len(names[0]) == 255
    assert "r001.example" not in names and "r002.example" not in names and "r003.example" not in names
    big = next(q for q in shard.registry_quotas if q.registry == "r000.example")
    assert (big.remaining, big.limit, big.window_seconds) == (MAX_COUNT, MAX_COUNT, 366 * 86400.0)
    assert any("registries dropped" in d for d in shard.dropped)
    assert any("not finite and >= 0" in d for d in shard.dropped)
    folded = fold_progress({0: shard.as_dict()}, 1)
    assert len(folded["registryQuotas"]) == REGISTRY_QUOTAS_CAP
    assert folded["registryQuotas"] == sorted(folded["registryQuotas"], key=lambda q: q["registry"])


def test_the_worker_bounds_its_quotas() -> None:
    stats = SyncStats()
    stats.quotas = {f"r{i}.example": {"remaining": i, "windowSeconds": float("nan") if i == 0 else 60}
                    for i in range(REPORT_QUOTAS + 10)}
    report = json.loads(bounded_report(stats.snapshot()))
    assert len(report["registryQuotas"]) == REPORT_QUOTAS
    assert report["registryQuotas"]["r0.example"] == {"remaining": 0}
    assert parsed(report).registry_quotas[0].window_seconds is None


def test_fold_is_total_on_garbage_quota_entries() -> None:
    reports: dict[int, Any] = {0: {"registryQuotas": [1, {"registry": 5, "remaining": 1},
                                                      {"registry": "x", "remaining": -3},
                                                      {"registry": "y", "remaining": 2, "limit": True,
                                                       "windowSeconds": float("inf")}]},
                               1: {"registryQuotas": "bad"}}
    assert fold_progress(reports, 2)["registryQuotas"] == [{"registry": "y", "remaining": 2}]
