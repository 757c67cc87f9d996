"""Issue 11, point 7 against the emulator: a RegistryCredential whose Secret (or CA ConfigMap) does not carry
``imagesync.dev/credential: "true"`` is Ready=False with a clear reason, and no job using it runs; labelling
the Secret lets the next check and run through."""

from __future__ import annotations

from typing import Any

from kube.conftest import Cluster, Operator
from kube.jobplayer import JobPlayer
from kube.objects import NAMESPACE, OPT_IN, basic_auth_secret, ca_configmap, isj, regcred

from testbed import seed
from testbed.registry import RegistryProcess


def ready_of(cluster: Cluster, name: str) -> dict[str, Any] | None:
    cred = cluster.emulator.get("imagesync.dev/v1alpha1/registrycredentials", NAMESPACE, name) or {}
    conditions = (cred.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == "Ready"), None)


async def create_configmap(cluster: Cluster, configmap: dict[str, Any]) -> None:
    """Cluster.create knows no ConfigMaps: POSTed here."""
    configmap["metadata"]["namespace"] = NAMESPACE
    response = await cluster.client.post(f"/api/v1/namespaces/{NAMESPACE}/configmaps", json=configmap)
    assert response.status_code == 201, response.text


def condition_of(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(c for c in status.get("conditions") or [] if c["type"] == kind)


async def test_unlabelled_secret_is_refused_until_it_opts_in(cluster: Cluster, operator: Operator,
                                                           player: JobPlayer, basic_registry: RegistryProcess,
                                                           registry2: RegistryProcess) -> None:
    assert basic_registry.username and basic_registry.password
    image = seed.push_image(basic_registry, "private/app", "1", seed="optin")
    await cluster.create(basic_auth_secret("login", basic_registry.username, basic_registry.password, opt_in=False))
    await cluster.create(regcred("source", basic_registry.host, secret="login"))
    await cluster.create(regcred("target", registry2.host))

    condition = await cluster.wait_for("Ready=False", lambda: (c := ready_of(cluster, "source"))
                                       and c["status"] == "False" and c)
    assert condition["reason"] == "SecretNotOptedIn"
    assert "imagesync.dev/credential" in condition["message"] and "'login'" in condition["message"]
    assert basic_registry.password not in str(condition)

    await cluster.create(isj("private", {f"{basic_registry.host}/private/app:1": f"{registry2.host}/copy/app"}))
    status = await cluster.wait_status("private", lambda s: s.get("phase") == "Failed", "Failed")
    credentials = condition_of(status, "CredentialsReady")
    assert credentials["status"] == "False" and credentials["reason"] == "SecretNotOptedIn"
    assert cluster.jobs() == [] and not [s for s in cluster.secrets() if s["metadata"]["name"].startswith("private-")]
    assert basic_registry.password not in str(status) and basic_registry.password not in str(cluster.events())
    await cluster.wait_for("a SecretNotOptedIn event", lambda: "SecretNotOptedIn" in {
        e.get("reason") for e in cluster.events()})

    # The Secret's owner opts in: the periodic check clears the condition, and a new run goes through.
    await cluster.patch(f"/api/v1/namespaces/{NAMESPACE}/secrets/login", {"metadata": {"labels": OPT_IN}})
    await cluster.wait_for("Ready=True", lambda: (c := ready_of(cluster, "source")) and c["status"] == "True")
    await cluster.patch(f"/apis/imagesync.dev/v1alpha1/namespaces/{NAMESPACE}/imagesyncjobs/private",
                        {"spec": {"images": {f"{basic_registry.host}/private/app:1": f"{registry2.host}/copy/app2"}}})
    status = await cluster.wait_status("private", lambda s: s.get("jobName"), "a job")
    await player.play(NAMESPACE, status["jobName"])
    status = await cluster.wait_status("private", lambda s: s.get("phase") in ("Succeeded", "Failed",
                                                                                "PartiallyFailed"), "done")
    assert status["phase"] == "Succeeded", status
    assert seed.get_manifest(registry2, "copy/app2", "1")[2] == image.digest


async def test_unlabelled_ca_configmap_and_bad_pem_are_refused(cluster: Cluster, operator: Operator) -> None:
    await create_configmap(cluster, ca_configmap("unlabelled-ca", "-----BEGIN CERTIFICATE-----\n", opt_in=False))
    await create_configmap(cluster, ca_configmap("junk-ca", "not a certificate"))
    await cluster.create(regcred("a", "a.example.com", plain_http=False,
                                 caBundle={"configMapKeyRef": {"name": "unlabelled-ca", "key": "ca.crt"}}))
    await cluster.create(regcred("b", "b.example.com", plain_http=False,
                                 caBundle={"configMapKeyRef": {"name": "junk-ca", "key": "ca.crt"}}))
    a = await cluster.wait_for("a Ready=False", lambda: (c := ready_of(cluster, "a")) and c["status"] == "False" and c)
    b = await cluster.wait_for("b Ready=False", lambda: (c := ready_of(cluster, "b")) and c["status"] == "False" and c)
    assert a["reason"] == "ConfigMapNotOptedIn" and "'unlabelled-ca'" in a["message"]
    assert b["reason"] == "InvalidCABundle" and "PEM" in b["message"]
    await cluster.create(isj("uses-a", {"a.example.com/x/app:1": "t.example.com/x/app"}, credentials=["a"]))
    status = await cluster.wait_status("uses-a", lambda s: s.get("phase") == "Failed", "Failed")
    assert condition_of(status, "CredentialsReady")["reason"] == "ConfigMapNotOptedIn"
    assert cluster.jobs() == []
