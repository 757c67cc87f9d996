"""spec.dryRun, spec.skipExisting and spec.prune against a real API server (issue 8), with the fixtures of
test_real_cluster.py and in both of its modes (played kubelet, real nodes): the API server applies the CRD's
defaults (prune.dryRun) and keeps status.plan and status.prune through its pruning; the registries show what
the workers did. The same flows run on the emulator in tests/kube/test_{dry_run,skip_existing,prune}_flow.py.
"""

from __future__ import annotations

import os
import secrets

import pytest
from test_real_cluster import (  # the shared cluster helpers and fixtures (names only: no tests are imported)
    Cluster,
    Registries,
    api,
    cluster,
    installed_operator,
    namespace,
    operator,
    registries,
    registry_options,
)

from testbed import seed
from testbed.registry import RegistryProcess

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(not os.environ.get("KUBECONFIG"), reason="KUBECONFIG names no cluster"),
              pytest.mark.usefixtures("operator")]
__all__ = ["api", "cluster", "installed_operator", "namespace", "operator", "registries"]  # fixtures, by name


def fresh(repo: str) -> str:
    """A repository name no earlier run used (IMAGESYNC_E2E_SOURCE/TARGET registries outlive a run)."""
    return f"{repo}-{secrets.token_hex(3)}"


async def test_a_dry_run_plans_into_status_then_the_copy_clears_the_plan(cluster: Cluster,
                                                                         registries: Registries) -> None:
    app, same = fresh("plan/app"), fresh("plan/same")
    new = seed.push_image(registries.source, app, "1", seed="plan-app", layers=(120_000, 30_000))
    seed.push_image(registries.source, same, "1", seed="plan-same")
    seed.push_image(registries.target, same, "1", seed="plan-same")  # already up to date
    cluster.credentials_for(registries)
    source, target = registries.source_host, registries.target_host
    cluster.create("imagesyncjobs", "plan", {
        "images": {f"{source}/{app}:1": f"{target}/{app}", f"{source}/{same}:1": f"{target}/{same}"},
        "dryRun": True, "referrers": {"enabled": False}})
    status = await cluster.finished("plan")
    assert status["phase"] == "Succeeded", status
    plan = status["plan"]
    assert (plan["pairs"], plan["upToDate"], plan["toCopy"], plan["failed"]) == (2, 1, 1, 0), plan
    assert plan["bytesToCopy"] == new.total_size and plan["blobsToCopy"] == 3 and plan["exact"] is True
    entries = {entry["target"]: entry for entry in plan["entries"]}
    assert entries[f"{target}/{app}:1"] == {  # every field kept by the API server's pruning
        "source": f"{source}/{app}:1", "target": f"{target}/{app}:1", "state": "copy",
        "bytes": new.total_size, "blobs": 3, "exact": True}
    assert entries[f"{target}/{same}:1"]["state"] == "up-to-date"
    assert seed.list_tags(registries.target, app) == []

    cluster.patch_spec("plan", {"dryRun": False})
    final = await cluster.status_when("plan", lambda s: s.get("run") == 2 and s.get("completionTime"), "run 2")
    assert final["phase"] == "Succeeded", final
    assert "plan" not in final, final["plan"]  # run 2's start removed run 1's plan
    assert (final["progress"]["imagesSynced"], final["progress"]["imagesSkipped"]) == (1, 1), final["progress"]
    assert seed.get_manifest(registries.target, app, "1")[2] == new.digest


async def test_skip_existing_leaves_a_present_tag_alone_and_copies_the_missing_one(
        cluster: Cluster, registries: Registries) -> None:
    repo = fresh("skip/app")
    seed.push_image(registries.source, repo, "t1", seed="skip-t1")
    t2 = seed.push_image(registries.source, repo, "t2", seed="skip-t2")
    held = seed.push_image(registries.target, repo, "t1", seed="skip-other")  # the target's t1: another digest
    cluster.credentials_for(registries)
    cluster.create("imagesyncjobs", "missing", {
        "images": {f"{registries.source_host}/{repo}:t1,t2": f"{registries.target_host}/{repo}"},
        "skipExisting": True, "referrers": {"enabled": False}})
    status = await cluster.finished("missing")
    assert status["phase"] == "Succeeded", status
    progress = status["progress"]
    assert (progress["imagesTotal"], progress["imagesSynced"], progress["imagesSkipped"],
            progress["imagesFailed"]) == (2, 1, 1, 0), progress  # t1 skipped, t2 copied
    assert seed.get_manifest(registries.target, repo, "t1")[2] == held.digest
    assert seed.get_manifest(registries.target, repo, "t2")[2] == t2.digest


async def test_prune_lists_first_then_deletes_once_confirmed(cluster: Cluster, registries: Registries) -> None:
    if registry_options() is None:
        pytest.skip("deletes from the target: needs this suite's own registries (IMAGESYNC_E2E_PLAY_KUBELET=1 "
                    "or IMAGESYNC_E2E_NODE_ADDRESS), which run with storage.delete.enabled")
    dst = registries.target
    assert isinstance(dst, RegistryProcess)
    kept = seed.push_image(registries.source, "prune/app", "a", seed="prune-a")
    seed.push_image(dst, "prune/app", "a", seed="prune-a")
    seed.push_image(dst, "prune/app", "b", seed="prune-b")  # gone from the source
    seed.push_manifest(dst, "prune/app", "c", kept.manifest, kept.media_type)  # shares a's manifest
    seed.push_image(dst, "prune/app", "d", seed="prune-d")  # outside the rule's selector
    cluster.credentials_for(registries)
    repository = f"{registries.target_host}/prune/app"
    cluster.create("imagesyncjobs", "tidy", {
        "images": {f"{registries.source_host}/prune/app:/^[a-c]$/": repository},
        "prune": {"enabled": True}, "referrers": {"enabled": False}})
    assert cluster.get("imagesyncjobs", "tidy")["spec"]["prune"] == {"enabled": True, "dryRun": True}  # defaulted
    status = await cluster.finished("tidy")
    assert status["phase"] == "Succeeded", status
    assert status["prune"] == {
        "dryRun": True, "deleted": 0, "wouldDelete": 1, "kept": 1, "errors": 0,
        "entries": [{"repository": repository, "tag": "b", "action": "wouldDelete"},
                    {"repository": repository, "tag": "c", "action": "kept",
                     "reason": "digest shared with kept tag a"}]}
    assert [r for r in dst.request_log() if r.method == "DELETE"] == []
    assert sorted(seed.list_tags(dst, "prune/app")) == ["a", "b", "c", "d"]

    cluster.patch_spec("tidy", {"prune": {"enabled": True, "dryRun": False}})
    final = await cluster.status_when("tidy", lambda s: s.get("run") == 2 and s.get("completionTime"), "run 2")
    assert final["phase"] == "Succeeded", final
    assert (final["prune"]["dryRun"], final["prune"]["deleted"]) == (False, 1), final["prune"]
    assert final["prune"]["entries"][0] == {"repository": repository, "tag": "b", "action": "deleted"}
    assert sorted(seed.list_tags(dst, "prune/app")) == ["a", "c", "d"]
