"""Issue 11's refusals against a real API server, with the fixtures of test_real_cluster.py and in both of its
modes (played kubelet: the operator in this process; real nodes: the installed cluster-wide Deployment), each
with the operator's default settings:

- point 8: an ImageSyncJob whose spec.worker names an image or ServiceAccount the operator does not allow gets
  Valid=False/WorkerNotAllowed and a Warning event naming the field, and no Job or run Secret;
- point 7: a RegistryCredential whose Secret lacks the opt-in label gets Ready=False/SecretNotOptedIn and a
  Warning event, blocks the runs that use it, and is Ready once the Secret is labelled.

The same flows run on the emulator in tests/kube/test_worker_allowlist_flow.py and
tests/kube/test_credential_optin_flow.py; no registry is contacted (every refusal comes before a run).
"""

from __future__ import annotations

import os
import secrets
from typing import Any

import pytest
from kube.objects import OPT_IN, basic_auth_secret
from test_real_cluster import (  # the shared cluster helpers and fixtures (names only: no tests are imported)
    GROUP,
    VERSION,
    Cluster,
    api,
    cluster,
    condition,
    installed_operator,
    namespace,
    operator,
)

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(not os.environ.get("KUBECONFIG"), reason="KUBECONFIG names no cluster"),
              pytest.mark.usefixtures("operator")]
__all__ = ["api", "cluster", "installed_operator", "namespace", "operator"]  # fixtures, by name

IMAGES = {"r.example.com/a/app:1": "t.example.com/a/app"}  # never copied: the run is refused first


def ready_of(cluster: Cluster, name: str) -> dict[str, Any] | None:
    """The RegistryCredential's Ready condition, None until the operator has checked it."""
    conditions = (cluster.get("registrycredentials", name).get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == "Ready"), None)


def run_objects(cluster: Cluster, name: str) -> list[str]:
    """The Jobs and Secrets a run of ImageSyncJob ``name`` would have (they are named ``name-r<run>``)."""
    objects: list[Any] = [*cluster.batch.list_namespaced_job(cluster.namespace).items,
                          *cluster.core.list_namespaced_secret(cluster.namespace).items]
    return [o.metadata.name for o in objects if o.metadata.name.startswith(f"{name}-")]


@pytest.mark.parametrize(("field", "value"), [
    ("image", "evil.example/miner:1"),  # the default allowlist is the worker image's own repository
    ("serviceAccountName", "default"),  # exists in every namespace: only the operator's refusal stops it
], ids=["image", "service-account"])
async def test_a_worker_the_operator_does_not_allow_is_refused_with_a_condition_and_an_event(
        cluster: Cluster, field: str, value: str) -> None:
    name = f"refused-{field.lower()}"
    cluster.create("imagesyncjobs", name, {"images": IMAGES, "worker": {field: value}})
    status = await cluster.status_when(name, lambda s: any(
        c["type"] == "Valid" and c["status"] == "False" for c in s.get("conditions") or []), "Valid=False")
    valid = condition(status, "Valid")
    assert valid["reason"] == "WorkerNotAllowed", valid
    assert f"spec.worker.{field}: {value!r} is not allowed" in valid["message"], valid["message"]
    assert status["phase"] == "Failed" and "jobName" not in status, status
    assert condition(status, "Stalled")["status"] == "True"
    event = await cluster.wait("a WorkerNotAllowed event", lambda: next(
        (e for e in cluster.events(name) if e.reason == "WorkerNotAllowed"), None))
    assert event.type == "Warning" and f"spec.worker.{field}: {value!r}" in event.message, event.message
    assert run_objects(cluster, name) == []


async def test_a_secret_without_the_opt_in_label_is_refused_until_it_is_labelled(cluster: Cluster) -> None:
    password = secrets.token_hex(12)
    cluster.core.create_namespaced_secret(cluster.namespace, basic_auth_secret("unlabelled-login", "mirror",
                                                                               password, opt_in=False))
    cluster.create("registrycredentials", "optin", {"registry": "optin.example.com",
                                                    "secretRef": {"name": "unlabelled-login"}})
    ready = await cluster.wait("optin Ready", lambda: ready_of(cluster, "optin"))
    assert ready["status"] == "False" and ready["reason"] == "SecretNotOptedIn", ready
    assert "'unlabelled-login'" in ready["message"] and "imagesync.dev/credential" in ready["message"]
    event = await cluster.wait("a SecretNotOptedIn event", lambda: next(
        (e for e in cluster.events("optin") if e.reason == "SecretNotOptedIn"), None))
    assert event.type == "Warning" and "'unlabelled-login'" in event.message, event.message

    # A run that uses it is blocked before anything is created.
    cluster.create("imagesyncjobs", "uses-optin", {"images": {"optin.example.com/a/app:1": "t.example.com/a/app"},
                                                   "credentials": ["optin"]})
    status = await cluster.status_when("uses-optin", lambda s: s.get("phase") == "Failed", "Failed")
    blocked = condition(status, "CredentialsReady")
    assert blocked["status"] == "False" and blocked["reason"] == "SecretNotOptedIn", blocked
    assert run_objects(cluster, "uses-optin") == []
    shown = str([cluster.get("registrycredentials", "optin"), status,
                 [e.message for e in cluster.core.list_namespaced_event(cluster.namespace).items]])
    assert password not in shown

    # The Secret's owner opts in. The periodic check (every 5 minutes) would see it; a change of the
    # RegistryCredential's spec is checked at once, so the test makes one (insecure: true, for a registry no
    # run here reaches).
    cluster.core.patch_namespaced_secret("unlabelled-login", cluster.namespace, {"metadata": {"labels": OPT_IN}})
    cluster.custom.patch_namespaced_custom_object(GROUP, VERSION, cluster.namespace,
                                                  "registrycredentials", "optin", {"spec": {"insecure": True}})
    ready = await cluster.wait("optin Ready=True", lambda: (c := ready_of(cluster, "optin")) and
                               c["status"] == "True" and c)
    assert ready["reason"] == "SecretValid", ready
    assert password not in str(cluster.get("registrycredentials", "optin"))
