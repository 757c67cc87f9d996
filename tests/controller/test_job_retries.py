"""Issue 12, point 2 (operator side): a worker killed mid-run is retried by its Job. A sharded run's Job retries
each shard on its own where the cluster has it (backoffLimitPerIndex, with every shard run to its end); an older
API server drops those fields, and the Job-wide backoffLimit, which stays a cap everywhere, still retries."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
from test_schemas import ISJ, K8S_VERSION

from imagesync.controller.render import RETRIES_PER_SHARD, dropped_job_fields, render_job
from imagesync.controller.settings import OperatorSettings
from imagesync.controller.spec import parse_job_spec

PER_INDEX_FIELDS = ("backoffLimitPerIndex", "maxFailedIndexes")


def job_with(shards: int) -> dict[str, Any]:
    spec = {"images": {f"r.io/a/app{i}:1": f"t.io/a/app{i}" for i in range(4)}, "parallelism": shards}
    return render_job(ISJ, 1, parse_job_spec(spec), OperatorSettings.from_env({}))


@pytest.mark.parametrize("shards", [2, 5])
def test_a_sharded_job_retries_each_shard_and_runs_every_shard_to_its_end(shards: int) -> None:
    job = job_with(shards)
    kubernetes_validate.validate(job, "1.29.0", strict=True)  # the first release with the gate on by default
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["template"]["spec"]["restartPolicy"] == "Never"
    assert spec["backoffLimitPerIndex"] == RETRIES_PER_SHARD == 1
    assert spec["maxFailedIndexes"] == spec["completions"] == shards  # no shard's failure stops the others
    assert spec["backoffLimit"] == shards  # the same budget in all, where the per-shard limit is unknown


def test_an_older_api_server_drops_the_per_shard_fields_and_the_job_still_retries() -> None:
    job = job_with(3)
    stored = {**job, "spec": {k: v for k, v in job["spec"].items() if k not in PER_INDEX_FIELDS}}
    kubernetes_validate.validate(stored, "1.27.0", strict=True)  # what a 1.22-1.27 API server keeps
    assert stored["spec"]["backoffLimit"] == 3
    assert dropped_job_fields(job, stored) is None  # still runnable: only the Indexed mode is required


def test_a_single_shard_job_retries_its_pod_once_and_sets_no_per_index_field() -> None:
    job = job_with(1)
    kubernetes_validate.validate(job, "1.25.0", strict=True)  # the oldest schema at hand (CI runs 1.20)
    assert job["spec"]["backoffLimit"] == RETRIES_PER_SHARD == 1
    assert not set(PER_INDEX_FIELDS) & set(job["spec"]) and "completionMode" not in job["spec"]
