"""The operator's pure decisions: credentials from Secrets, folding shard reports, phases, conditions."""

from __future__ import annotations

import base64
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from imagesync.controller.credentials import CredentialError, auth_document, resolve_credential, select_credentials
from imagesync.controller.render import runs_to_prune
from imagesync.controller.schedule import fires, is_due, next_fire
from imagesync.controller.settings import own_image
from imagesync.controller.spec import SpecError, parse_job_spec
from imagesync.controller.status import final_phase, fold_progress, make_condition, pod_problem

PASSWORD = "s3cr3t-D0-NOT-LEAK"
# Referenced Secrets opt in (issue 11, point 7: tests/controller/test_credential_optin.py).
LOGIN_METADATA = {"name": "login", "labels": {"imagesync.dev/credential": "true"}}
# A certificate that parses (CA material must), from the shipped example.
CA_PEM = yaml.safe_load((Path(__file__).resolve().parents[2] / "examples" / "configmap-internal-ca.yaml")
                        .read_text())["data"]["ca.crt"]


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def regcred(registry: str = "registry.example.com", secret: str | None = "login") -> dict[str, Any]:
    spec: dict[str, Any] = {"registry": registry}
    if secret:
        spec["secretRef"] = {"name": secret}
    return {"metadata": {"name": "cred"}, "spec": spec}


def dockerconfig(auths: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": LOGIN_METADATA, "type": "kubernetes.io/dockerconfigjson",
            "data": {".dockerconfigjson": b64(json.dumps({"auths": auths}))}}


@pytest.mark.parametrize("key", ["registry.example.com", "https://registry.example.com", "registry.example.com/v1/"])
def test_dockerconfigjson_key_forms(key: str) -> None:
    secret = dockerconfig({key: {"auth": b64(f"robot:{PASSWORD}")}})
    resolved = resolve_credential(regcred(), secret)
    assert (resolved.username, resolved.password) == ("robot", PASSWORD)


def test_docker_hub_entry_and_username_password_form() -> None:
    secret = dockerconfig({"https://index.docker.io/v1/": {"username": "hubuser", "password": PASSWORD}})
    resolved = resolve_credential(regcred("docker.io"), secret)
    assert resolved.username == "hubuser"


@pytest.mark.parametrize(("secret", "reason"), [
    (None, "SecretMissing"),
    ({"metadata": LOGIN_METADATA, "type": "kubernetes.io/tls", "data": {}}, "WrongSecretType"),
    (dockerconfig({"other.example.com": {"auth": b64(f"x:{PASSWORD}")}}), "NoEntryForRegistry"),
    ({"metadata": LOGIN_METADATA, "type": "Opaque", "data": {"username": b64("robot")}}, "InvalidSecret"),
])
def test_unusable_secrets_name_the_reason_and_never_the_password(secret: dict[str, Any] | None,
                                                                 reason: str) -> None:
    with pytest.raises(CredentialError) as info:
        resolve_credential(regcred(), secret)
    assert info.value.reason == reason
    assert PASSWORD not in info.value.message and "login" in info.value.message


def test_basic_auth_and_opaque_secrets_and_the_auth_document() -> None:
    basic = {"metadata": LOGIN_METADATA, "type": "kubernetes.io/basic-auth",
             "data": {"username": b64("robot"), "password": b64(PASSWORD)}}
    opaque = {"metadata": LOGIN_METADATA, "type": "Opaque",
              "stringData": {"username": "team", "password": PASSWORD}}
    one = resolve_credential(regcred("registry.example.com"), basic)
    two = resolve_credential({**regcred("registry.example.com/team"), "metadata": {"name": "team"}}, opaque)
    anonymous = resolve_credential({"metadata": {"name": "local"},
                                    "spec": {"registry": "127.0.0.1:5000", "insecure": True,
                                             "caBundle": {"inline": CA_PEM}}}, None)
    document = auth_document([one, two, anonymous])
    auth, ca_files = document.auth, document.ca_files
    assert auth["registry.example.com"] == {"username": "robot", "password": PASSWORD}
    assert auth["registry.example.com/team"]["username"] == "team"
    assert auth["127.0.0.1:5000"] == {"insecure": True, "caFile": "ca-0.pem"} and ca_files == {"ca-0.pem": CA_PEM}
    assert document.used == [{"registry": "registry.example.com", "name": "cred"},
                             {"registry": "127.0.0.1:5000", "name": "local"},
                             {"registry": "registry.example.com/team", "name": "team"}]
    # Two credentials for one registry: the first by name serves it, the other is not used.
    shadow = resolve_credential({**regcred("registry.example.com"), "metadata": {"name": "zz-other"}}, basic)
    assert auth_document([shadow, one]).used == [{"registry": "registry.example.com", "name": "cred"}]


def test_select_credentials_named_or_all_that_apply() -> None:
    creds = [{"metadata": {"name": name}, "spec": {"registry": registry}} for name, registry in (
        ("b", "registry.example.com"), ("a", "quay.io/team"), ("other-team", "quay.io/other"),
        ("broken-elsewhere", "unrelated.example.com"), ("hub", "docker.io"))]
    repos = parse_job_spec({"images": {"registry.example.com/a/app:1": "quay.io/team/app",
                                       "nginx:1": "registry.example.com/mirror/nginx"}}).repositories
    # Named: exactly those, whatever they apply to; unknown names reported.
    assert [c["metadata"]["name"] for c in select_credentials(["broken-elsewhere", "a"], creds, repos)[0]] == \
        ["broken-elsewhere", "a"]
    assert select_credentials(["a", "zz"], creds, repos)[1] == ["zz"]
    # None named: those that apply to one of the job's repositories (Docker Hub's alias included).
    assert [c["metadata"]["name"] for c in select_credentials(None, creds, repos)[0]] == ["a", "b", "hub"]


def shard_report(total: int, synced: int, failed: int = 0, done: bool = False) -> dict[str, Any]:
    return {"imagesTotal": total, "imagesSynced": synced, "imagesSkipped": 0, "imagesFailed": failed,
            "bytesCopied": 10, "bytesPerSecond": 5.0, "done": done, "failedImagesTotal": failed,
            "failedImages": [{"source": f"s{i}", "target": f"t{i}", "reason": "r"} for i in range(failed)]}


def test_fold_claims_no_percentage_until_every_shard_reported() -> None:
    partial = fold_progress({0: shard_report(4, 2)}, 2)
    assert partial["progress"]["percent"] == 0.0 and partial["syncedSummary"] == "2/?"
    full = fold_progress({0: shard_report(4, 2), 1: shard_report(6, 3)}, 2)
    assert full["progress"]["percent"] == 50.0 and full["syncedSummary"] == "5/10"
    assert full["progress"]["bytesPerSecond"] == 10.0


def test_fold_caps_failed_images_and_keeps_the_total() -> None:
    folded = fold_progress({0: shard_report(40, 10, 30, True), 1: shard_report(10, 0, 10, True)}, 2)
    assert len(folded["failedImages"]) == 20 and folded["failedImagesTotal"] == 40
    assert [row["state"] for row in folded["shards"]] == ["Succeeded", "Succeeded"]


@pytest.mark.parametrize(("synced", "failed", "job_failed", "all_done", "phase"), [
    (3, 0, False, True, "Succeeded"), (2, 1, False, True, "PartiallyFailed"), (0, 3, False, True, "Failed"),
    (2, 0, True, False, "PartiallyFailed"), (0, 0, True, False, "Failed"),
])
def test_final_phase(synced: int, failed: int, job_failed: bool, all_done: bool, phase: str) -> None:
    progress = {"imagesSynced": synced, "imagesSkipped": 0, "imagesFailed": failed}
    assert final_phase(progress, job_failed, all_done) == phase


def test_condition_transition_time_moves_only_on_status_change() -> None:
    first = make_condition(None, "Ready", "True", "A", "m", 1, "T1")
    same = make_condition(first, "Ready", "True", "B", "m2", 2, "T2")
    flipped = make_condition(same, "Ready", "False", "C", "m3", 3, "T3")
    assert same[0]["lastTransitionTime"] == "T1" and same[0]["reason"] == "B"
    assert flipped[0]["lastTransitionTime"] == "T3" and flipped[0]["observedGeneration"] == 3


def test_schedule() -> None:
    start = dt.datetime(2026, 1, 1, 1, 30, tzinfo=dt.UTC)
    assert next_fire("0 2 * * *", start) == dt.datetime(2026, 1, 1, 2, 0, tzinfo=dt.UTC)
    assert not is_due("0 2 * * *", None, start, start + dt.timedelta(minutes=20))
    assert is_due("0 2 * * *", None, start, start + dt.timedelta(minutes=31))
    assert not is_due("0 2 * * *", start + dt.timedelta(minutes=31), start, start + dt.timedelta(hours=2))


@pytest.mark.parametrize(("spec", "field"), [
    ({}, "spec.images"), ({"images": {"r.io/a:1,2": "t.io/a:x"}}, "spec.images"),
    ({"images": {"r.io/a:1": "t.io/a"}, "schedule": "daily"}, "spec.schedule"),
    ({"images": {"r.io/a:1": "t.io/a"}, "platforms": ["amd64"]}, "spec.platforms"),
    ({"images": {"r.io/a:1": "t.io/a"}, "concurrency": "many"}, "spec.concurrency"),
    ({"images": {"r.io/a:1": ""}}, "spec.images"),
])
def test_spec_errors_name_the_field(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_job_spec(spec)
    assert info.value.field_path == field


def test_runs_to_prune_keeps_the_newest() -> None:
    assert runs_to_prune({1, 2, 3, 4, 5}, 5, 3) == [1, 2]
    assert runs_to_prune({4, 5}, 5, 3) == []
    assert runs_to_prune({1, 5}, 5, 1) == [1]
    assert parse_job_spec({"images": {"a.io/b/c:1": "d.io/e"}}).history_limit == 3
    with pytest.raises(SpecError, match=r"spec\.historyLimit"):
        parse_job_spec({"images": {"a.io/b/c:1": "d.io/e"}, "historyLimit": 0})


def test_pod_problem_names_what_keeps_a_worker_from_starting() -> None:
    def pod(status: dict[str, Any]) -> dict[str, Any]:
        return {"metadata": {"name": "w-r1-abc"}, "status": status}
    pulling = pod({"phase": "Pending", "containerStatuses": [{"state": {"waiting": {
        "reason": "ErrImagePull", "message": "manifest unknown"}}}]})
    assert pod_problem(pulling) == ("ErrImagePull", "pod w-r1-abc: ErrImagePull: manifest unknown")
    unschedulable = pod({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
                                                             "reason": "Unschedulable",
                                                             "message": "0/3 nodes match nodeSelector"}]})
    assert pod_problem(unschedulable) == ("Unschedulable", "pod w-r1-abc: Unschedulable: 0/3 nodes match nodeSelector")
    # Ordinary start-up is not a problem.
    creating = pod({"phase": "Pending", "containerStatuses": [{"state": {"waiting": {"reason": "ContainerCreating"}}}]})
    assert pod_problem(creating) is None
    assert pod_problem(pod({"phase": "Running"})) is None


def test_the_worker_image_defaults_to_the_operators_own_container_image() -> None:
    pod = {"spec": {"containers": [{"name": "sidecar", "image": "proxy:1"},
                                   {"name": "operator", "image": "r.io/imagesync:2"}]}}
    assert own_image(pod) == "r.io/imagesync:2"
    assert own_image({"spec": {"containers": [{"name": "main", "image": "r.io/imagesync:3"}]}}) == "r.io/imagesync:3"
    assert own_image({"spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}]}}) is None
    assert own_image({"spec": {}}) is None and own_image({}) is None


@pytest.mark.parametrize(("cron", "expected"), [("*/5 * * * *", True), ("@daily", True),
                                                ("0 0 31 2 *", False),  # February 31st: never
                                                ("61 * * * *", False), ("not cron", False)])
def test_fires_tells_a_schedule_the_timer_can_use(cron: str, expected: bool) -> None:
    # The schedule timer ticks for objects the spec validation refused too: it must not raise for them.
    assert fires(cron, dt.datetime(2026, 11, 27, tzinfo=dt.UTC)) is expected
