"""What the operator tests rely on from the emulator; if kmock changes underneath, this fails first."""

from __future__ import annotations

import httpx
from kube.conftest import Cluster
from kube.objects import NAMESPACE, isj

ISJ_PATH = f"/apis/imagesync.dev/v1alpha1/namespaces/{NAMESPACE}/imagesyncjobs"
MERGE = {"Content-Type": "application/merge-patch+json"}


async def test_server_managed_metadata_and_status_subresource(cluster: Cluster) -> None:
    created = await cluster.create(isj("contract", {"r.io/a/b:1": "t.io/a/b"}))
    meta = created["metadata"]
    assert meta["uid"] and meta["creationTimestamp"] and meta["generation"] == 1
    first_rv = meta["resourceVersion"]

    client: httpx.AsyncClient = cluster.client
    response = await client.patch(f"{ISJ_PATH}/contract/status", headers=MERGE,
                                  json={"status": {"phase": "Running"}, "spec": {"force": True}})
    assert response.status_code == 200
    obj = cluster.isj("contract") or {}
    assert obj["status"]["phase"] == "Running" and "force" not in obj["spec"]  # /status writes status only
    assert obj["metadata"]["generation"] == 1 and obj["metadata"]["resourceVersion"] != first_rv

    response = await client.patch(f"{ISJ_PATH}/contract", headers=MERGE,
                                  json={"spec": {"force": True}, "status": {"phase": "Failed"}})
    obj = cluster.isj("contract") or {}
    assert obj["spec"]["force"] is True and obj["status"]["phase"] == "Running"  # main writes spec only
    assert obj["metadata"]["generation"] == 2


async def test_stale_json_patch_is_a_conflict(cluster: Cluster) -> None:
    created = await cluster.create(isj("stale", {"r.io/a/b:1": "t.io/a/b"}))
    await cluster.patch(f"{ISJ_PATH}/stale", {"metadata": {"annotations": {"a": "1"}}})
    response = await cluster.client.patch(
        f"{ISJ_PATH}/stale", headers={"Content-Type": "application/json-patch+json"},
        json=[{"op": "test", "path": "/metadata/resourceVersion", "value": created["metadata"]["resourceVersion"]},
              {"op": "add", "path": "/metadata/annotations/b", "value": "2"}])
    assert response.status_code == 422


async def test_stale_merge_patch_of_status_is_a_conflict(cluster: Cluster) -> None:
    created = await cluster.create(isj("stale-status", {"r.io/a/b:1": "t.io/a/b"}))
    read_version = created["metadata"]["resourceVersion"]
    await cluster.patch(f"{ISJ_PATH}/stale-status/status", {"status": {"phase": "Running"}})
    stale = await cluster.client.patch(
        f"{ISJ_PATH}/stale-status/status", headers=MERGE,
        json={"metadata": {"resourceVersion": read_version}, "status": {"phase": "Pending"}})
    assert stale.status_code == 409 and stale.json()["reason"] == "Conflict"
    current = (await cluster.client.get(f"{ISJ_PATH}/stale-status")).json()
    assert current["status"]["phase"] == "Running"
    fresh = await cluster.client.patch(
        f"{ISJ_PATH}/stale-status/status", headers=MERGE,
        json={"metadata": {"resourceVersion": current["metadata"]["resourceVersion"]},
              "status": {"phase": "Succeeded"}})
    assert fresh.status_code == 200 and fresh.json()["status"]["phase"] == "Succeeded"


async def test_deleting_an_owner_collects_what_it_owns(cluster: Cluster) -> None:
    owner = await cluster.create(isj("owner", {"r.io/a/b:1": "t.io/a/b"}))
    ref = {"apiVersion": "imagesync.dev/v1alpha1", "kind": "ImageSyncJob", "name": "owner",
           "uid": owner["metadata"]["uid"], "controller": True}
    await cluster.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "owned",
                                                                             "ownerReferences": [ref]}})
    await cluster.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "unrelated"}})
    await cluster.delete(f"{ISJ_PATH}/owner")
    names = {s["metadata"]["name"] for s in cluster.secrets()}
    assert names == {"unrelated"}


async def test_generate_name(cluster: Cluster) -> None:
    one = await cluster.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"generateName": "ev-"}})
    two = await cluster.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"generateName": "ev-"}})
    assert one["metadata"]["name"].startswith("ev-") and one["metadata"]["name"] != two["metadata"]["name"]
