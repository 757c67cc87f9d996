"""A few of the bad-input corpus's CRs (tests/controller/test_bad_cr_input.py) through the operator against the
emulator: the ImageSyncJob's condition and a Warning event carry the one-line message, no Job or run Secret is
created for it, and a valid ImageSyncJob created beside it in the same namespace gets its run undisturbed."""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from kube.conftest import Cluster, Operator
from kube.objects import OPT_IN, isj, regcred

PASSWORD = "flow-S3cr3t-do-not-leak"
GOOD_IMAGES = {"r.example.com/good/app:1": "t.example.com/good/app"}


def secret_with(password: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/basic-auth",
            "metadata": {"name": "login", "labels": dict(OPT_IN)},
            "data": {"username": base64.b64encode(b"robot").decode(),
                     "password": base64.b64encode(password.encode()).decode()}}


@dataclass(frozen=True)
class FlowCase:
    id: str
    images: dict[str, Any]
    condition: str  # the condition that turns False
    reason: str
    says: tuple[str, ...]  # what the message must name and say
    spec: dict[str, Any] = field(default_factory=dict)
    objects: Callable[[], list[dict[str, Any]]] = list


CASES = [
    FlowCase("rule-100k-text", {"r.example.com/a/" + "x" * 100_000 + ":1": "t.example.com/a/app"}, "Valid",
             "InvalidSpec", ("spec.images: rule 'r.example.com/a/xxx", "repository path longer than 255")),
    FlowCase("schedule-never-fires", GOOD_IMAGES, "Valid", "InvalidSpec",
             ("spec.schedule: '0 0 31 2 *' never fires",), spec={"schedule": "0 0 31 2 *"}),
    FlowCase("worker-resources-not-a-quantity", GOOD_IMAGES, "Valid", "InvalidSpec",
             ("spec.worker.resources.limits.memory", "'lots' is not a quantity"),
             spec={"worker": {"resources": {"limits": {"memory": "lots"}}}}),
    # The broken RegistryCredential is for another registry than the neighbour's: it must not block it.
    FlowCase("secret-password-with-newline", {"p.example.com/private/app:1": "t.example.com/private/app"},
             "CredentialsReady", "InvalidSecret", ("Secret 'login'", "key 'password' holds control characters"),
             spec={"credentials": ["private"]},
             objects=lambda: [secret_with(PASSWORD + "\n"), regcred("private", "p.example.com", secret="login")]),
]


def condition_of(status: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((c for c in status.get("conditions") or [] if c["type"] == kind), None)


def run_objects(cluster: Cluster, name: str) -> list[str]:
    return [o["metadata"]["name"] for o in cluster.jobs() + cluster.secrets()
            if o["metadata"]["name"].startswith(f"{name}-")]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_a_bad_cr_is_refused_once_and_its_neighbour_runs(case: FlowCase, cluster: Cluster,
                                                               operator: Operator) -> None:
    for obj in case.objects():
        await cluster.create(obj)
    await cluster.create(isj("bad", case.images, **case.spec))
    await cluster.create(isj("neighbour", GOOD_IMAGES))

    status = await cluster.wait_status("bad", lambda s: (c := condition_of(s, case.condition)) is not None
                                       and c["status"] == "False", f"{case.condition}=False")
    condition = condition_of(status, case.condition)
    assert condition is not None and condition["reason"] == case.reason, condition
    message = condition["message"]
    assert "\n" not in message and len(message) < 2000, message[:300]
    for part in case.says:
        assert part in message, message
    assert status["phase"] == "Failed" and "jobName" not in status

    event = await cluster.wait_for(f"a {case.reason} event", lambda: next(
        (e for e in cluster.events() if e.get("reason") == case.reason
         and e["involvedObject"]["name"] == "bad"), None))
    assert event["type"] == "Warning" and "\n" not in event["message"] and len(event["message"]) < 2000
    for part in case.says:
        assert part in event["message"], event["message"]
    everything = str(status) + str(cluster.events())
    assert PASSWORD not in everything and base64.b64encode(PASSWORD.encode()).decode() not in everything

    # The neighbour's run starts; the bad one never gets a Job or a run Secret.
    neighbour = await cluster.wait_status("neighbour", lambda s: s.get("jobName"), "the neighbour's run")
    valid = condition_of(neighbour, "Valid")
    assert valid is not None and valid["status"] == "True"
    assert [job["metadata"]["name"] for job in cluster.jobs()] == [neighbour["jobName"]]
    assert run_objects(cluster, "bad") == []
    assert not [e for e in cluster.events() if e["involvedObject"]["name"] == "neighbour" and e["type"] == "Warning"]
