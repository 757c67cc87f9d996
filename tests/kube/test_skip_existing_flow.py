"""spec.skipExisting against the emulator (issue 8 point 3): the operator renders it into the run's options,
a real worker lists the target repository's tags once and copies only the tags missing there; a tag the
target has, even under another digest, is neither compared nor copied (the target's access log shows it)."""

from __future__ import annotations

import base64
import json

from kube.conftest import Cluster, Operator
from kube.jobplayer import JobPlayer
from kube.objects import NAMESPACE, isj, regcred

from testbed import seed
from testbed.registry import RegistryProcess


async def test_skip_existing_copies_only_the_missing_tags(cluster: Cluster, operator: Operator, player: JobPlayer,
                                                           registry: RegistryProcess,
                                                           registry2: RegistryProcess) -> None:
    src, dst = registry, registry2
    seed.push_image(src, "lib/app", "t1", seed="t1")
    t2 = seed.push_image(src, "lib/app", "t2", seed="t2")
    held = seed.push_image(dst, "mirror/app", "t1", seed="other")  # the target's own t1: another digest
    await cluster.create(regcred("source", src.host))
    await cluster.create(regcred("target", dst.host))
    await cluster.create(isj("missing", {f"{src.host}/lib/app:t1,t2": f"{dst.host}/mirror/app"},
                             skipExisting=True, referrers={"enabled": False}))
    await cluster.wait_status("missing", lambda s: s.get("jobName"), "a job")
    (secret,) = [s for s in cluster.secrets() if s["metadata"]["name"] == "missing-r1"]
    assert json.loads(base64.b64decode(secret["data"]["options.json"]))["skipExisting"] is True

    mark = dst.log_mark()
    runs = await player.play(NAMESPACE, "missing-r1")
    assert [r.returncode for r in runs] == [0], [r.stderr[-800:] for r in runs]
    status = await cluster.wait_status("missing", lambda s: s.get("completionTime"), "a finished run")
    assert status["phase"] == "Succeeded", status
    progress = status["progress"]
    assert (progress["imagesTotal"], progress["imagesSynced"], progress["imagesSkipped"],
            progress["imagesFailed"]) == (2, 1, 1, 0), progress

    log = dst.request_log(mark)
    assert [r.method for r in log if r.path == "/v2/mirror/app/tags/list"] == ["GET"], log
    assert [r for r in log if r.path == "/v2/mirror/app/manifests/t1"] == [], log  # t1 not compared
    assert seed.get_manifest(dst, "mirror/app", "t1")[2] == held.digest  # nor copied
    assert seed.get_manifest(dst, "mirror/app", "t2")[2] == t2.digest
