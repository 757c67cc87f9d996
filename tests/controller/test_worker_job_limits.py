"""Issue 11, point 10: worker Jobs are bounded: activeDeadlineSeconds (operator setting), default resources when
spec.worker.resources is empty, and ttlSecondsAfterFinished only when the operator is told (it would race the
operator's own fold and pruning otherwise)."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
from test_schemas import ISJ, K8S_VERSION

from imagesync.controller.render import DEFAULT_WORKER_RESOURCES, render_job
from imagesync.controller.settings import (
    DEFAULT_WORKER_DEADLINE_SECONDS,
    MIN_WORKER_TTL_SECONDS,
    OperatorSettings,
    SettingsError,
)
from imagesync.controller.spec import parse_job_spec

IMAGES = {"images": {"r.io/a/app:1": "t.io/a/app"}}


def job_for(spec: dict[str, Any], settings: OperatorSettings) -> dict[str, Any]:
    job = render_job(ISJ, 1, parse_job_spec(spec), settings)
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    return job


def worker(job: dict[str, Any]) -> dict[str, Any]:
    (container,) = job["spec"]["template"]["spec"]["containers"]
    return container  # type: ignore[no-any-return]


def test_defaults_a_day_deadline_default_resources_and_no_ttl() -> None:
    job = job_for(IMAGES, OperatorSettings.from_env({}))
    assert job["spec"]["activeDeadlineSeconds"] == DEFAULT_WORKER_DEADLINE_SECONDS == 86400
    assert "ttlSecondsAfterFinished" not in job["spec"]
    resources = worker(job)["resources"]
    assert resources == DEFAULT_WORKER_RESOURCES
    assert set(resources["requests"]) == {"cpu", "memory"} and set(resources["limits"]) == {"memory"}
    # Rendering twice gives equal, independent objects (the defaults are not shared and mutated).
    resources["requests"]["cpu"] = "9"
    assert worker(job_for(IMAGES, OperatorSettings.from_env({})))["resources"] == DEFAULT_WORKER_RESOURCES


def test_the_users_resources_replace_the_defaults_whole() -> None:
    spec = {**IMAGES, "worker": {"resources": {"limits": {"cpu": "2", "memory": "1Gi"}}}}
    assert worker(job_for(spec, OperatorSettings.from_env({})))["resources"] == \
        {"limits": {"cpu": "2", "memory": "1Gi"}}


def test_deadline_and_ttl_from_the_environment() -> None:
    settings = OperatorSettings.from_env({"IMAGESYNC_WORKER_DEADLINE_SECONDS": "3600",
                                          "IMAGESYNC_WORKER_TTL_SECONDS": "86400"})
    job = job_for(IMAGES, settings)
    assert job["spec"]["activeDeadlineSeconds"] == 3600 and job["spec"]["ttlSecondsAfterFinished"] == 86400
    off = job_for(IMAGES, OperatorSettings.from_env({"IMAGESYNC_WORKER_DEADLINE_SECONDS": "0"}))
    assert "activeDeadlineSeconds" not in off["spec"]


def test_settings_built_field_by_field_keep_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The operator command builds its settings from flags field by field: the env still applies."""
    monkeypatch.setenv("IMAGESYNC_WORKER_DEADLINE_SECONDS", "7200")
    assert OperatorSettings(worker_image="x").worker_deadline_seconds == 7200


@pytest.mark.parametrize(("env", "message"), [
    ({"IMAGESYNC_WORKER_DEADLINE_SECONDS": "1d"}, "expected whole seconds"),
    ({"IMAGESYNC_WORKER_DEADLINE_SECONDS": "-5"}, "at least 1"),
    ({"IMAGESYNC_WORKER_TTL_SECONDS": "60"}, f"at least {MIN_WORKER_TTL_SECONDS}"),
])
def test_bad_values_are_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        OperatorSettings.from_env(env)
