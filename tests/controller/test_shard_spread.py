"""Issue 13 point 6: shards scale out only across nodes (docs/scale-out.md measured them sharing one node's
CPUs), so a sharded run's pods prefer different nodes; preferred, never required, so one node runs them all."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
from test_schemas import ISJ, K8S_VERSION

from imagesync.controller.render import LABEL_JOB, LABEL_RUN, render_job
from imagesync.controller.settings import OperatorSettings
from imagesync.controller.spec import parse_job_spec


def pod_spec(shards: int) -> dict[str, Any]:
    spec = {"images": {f"r.io/a/app{i}:1": f"t.io/a/app{i}" for i in range(4)}, "parallelism": shards}
    job = render_job(ISJ, 3, parse_job_spec(spec), OperatorSettings.from_env({}))
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    template: dict[str, Any] = job["spec"]["template"]
    assert template["metadata"]["labels"][LABEL_RUN] == "3"
    result: dict[str, Any] = template["spec"]
    return result


def test_a_sharded_runs_pods_prefer_different_nodes() -> None:
    (spread,) = pod_spec(4)["topologySpreadConstraints"]
    assert spread["topologyKey"] == "kubernetes.io/hostname" and spread["maxSkew"] == 1
    assert spread["whenUnsatisfiable"] == "ScheduleAnyway"  # a one-node cluster still runs every shard
    # This run's pods only: the labels its pod template carries, the run's number included.
    assert spread["labelSelector"] == {"matchLabels": {LABEL_JOB: ISJ["metadata"]["name"], LABEL_RUN: "3"}}


def test_a_single_shard_has_nothing_to_spread() -> None:
    assert "topologySpreadConstraints" not in pod_spec(1)
