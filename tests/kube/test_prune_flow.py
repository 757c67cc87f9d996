"""spec.prune against the emulator (issue 8 point 5): enabled alone, a run only lists what it would delete in
status.prune (the first prune of a job is a dry run); dryRun: false, the confirmation, deletes, and a tag
whose manifest a kept tag shares stays. Real workers, real registries; the target seeded directly."""

from __future__ import annotations

import base64
import json

from kube.conftest import Cluster, Operator
from kube.jobplayer import JobPlayer
from kube.objects import NAMESPACE, isj, regcred

from testbed import seed
from testbed.registry import RegistryProcess


async def test_prune_lists_first_and_deletes_once_confirmed(cluster: Cluster, operator: Operator,
                                                            player: JobPlayer, registry: RegistryProcess,
                                                            registry2: RegistryProcess) -> None:
    src, dst = registry, registry2
    kept = seed.push_image(src, "lib/app", "a", seed="a")
    seed.push_image(dst, "mirror/app", "a", seed="a")
    gone = seed.push_image(dst, "mirror/app", "b", seed="b")
    seed.push_manifest(dst, "mirror/app", "c", kept.manifest, kept.media_type)  # shares a's manifest
    seed.push_image(dst, "mirror/app", "d", seed="d")  # outside the rule's selector
    await cluster.create(regcred("source", src.host))
    await cluster.create(regcred("target", dst.host))
    await cluster.create(isj("tidy", {f"{src.host}/lib/app:/^[a-c]$/": f"{dst.host}/mirror/app"},
                             prune={"enabled": True}, referrers={"enabled": False}))
    await cluster.wait_status("tidy", lambda s: s.get("jobName") == "tidy-r1", "run 1")
    (secret,) = [s for s in cluster.secrets() if s["metadata"]["name"] == "tidy-r1"]
    assert json.loads(base64.b64decode(secret["data"]["options.json"]))["prune"] == "dry-run"

    mark = dst.log_mark()
    runs = await player.play(NAMESPACE, "tidy-r1")
    assert [r.returncode for r in runs] == [0], [r.stderr[-800:] for r in runs]
    status = await cluster.wait_status("tidy", lambda s: s.get("completionTime") and s.get("prune"), "a prune list")
    assert [r for r in dst.request_log(mark) if r.method == "DELETE"] == []
    repository = f"{dst.host}/mirror/app"
    assert status["prune"] == {
        "dryRun": True, "deleted": 0, "wouldDelete": 1, "kept": 1, "errors": 0,
        "entries": [{"repository": repository, "tag": "b", "action": "wouldDelete"},
                    {"repository": repository, "tag": "c", "action": "kept",
                     "reason": "digest shared with kept tag a"}]}
    assert status["phase"] == "Succeeded", status

    await cluster.patch(f"/apis/imagesync.dev/v1alpha1/namespaces/{NAMESPACE}/imagesyncjobs/tidy",
                        {"spec": {"prune": {"dryRun": False}}})
    await cluster.wait_status("tidy", lambda s: s.get("jobName") == "tidy-r2", "run 2")
    mark = dst.log_mark()
    runs = await player.play(NAMESPACE, "tidy-r2")
    assert [r.returncode for r in runs] == [0], [r.stderr[-800:] for r in runs]
    status = await cluster.wait_status("tidy", lambda s: s.get("run") == 2 and s.get("completionTime")
                                       and s.get("prune"), "run 2 pruned")
    assert status["prune"]["dryRun"] is False and status["prune"]["deleted"] == 1, status["prune"]
    assert status["prune"]["entries"][0] == {"repository": repository, "tag": "b", "action": "deleted"}
    deletes = {r.path for r in dst.request_log(mark) if r.method == "DELETE"}
    assert deletes == {"/v2/mirror/app/manifests/b", f"/v2/mirror/app/manifests/{gone.digest}"}, deletes
    assert set(seed.list_tags(dst, "mirror/app")) == {"a", "c", "d"}
