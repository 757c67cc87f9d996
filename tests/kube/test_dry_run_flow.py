"""spec.dryRun against the emulator (issue 8 point 4): the operator renders dryRun into the run's options, a
real worker plans between two real registries, and status.plan carries the totals and the pairs; the target
registry's access log shows that nothing was written."""

from __future__ import annotations

import base64
import json

from kube.conftest import Cluster, Operator
from kube.jobplayer import JobPlayer
from kube.objects import NAMESPACE, isj, regcred

from testbed import seed
from testbed.registry import RegistryProcess


async def test_a_dry_run_fills_status_plan_and_writes_nothing(cluster: Cluster, operator: Operator,
                                                              player: JobPlayer, registry: RegistryProcess,
                                                              registry2: RegistryProcess) -> None:
    src, dst = registry, registry2
    new = seed.push_image(src, "lib/app", "v1", seed="app", layers=(120_000, 30_000))
    seed.push_image(src, "lib/same", "v1", seed="same", layers=(5_000,))
    seed.push_image(dst, "mirror/same", "v1", seed="same", layers=(5_000,))  # already up to date
    await cluster.create(regcred("source", src.host))
    await cluster.create(regcred("target", dst.host))
    await cluster.create(isj("plan", {f"{src.host}/lib/app:v1": f"{dst.host}/mirror/app",
                                      f"{src.host}/lib/same:v1": f"{dst.host}/mirror/same",
                                      f"{src.host}/lib/gone:v1": f"{dst.host}/mirror/gone"},
                             dryRun=True, referrers={"enabled": False}))
    await cluster.wait_status("plan", lambda s: s.get("jobName"), "a job")
    (secret,) = [s for s in cluster.secrets() if s["metadata"]["name"] == "plan-r1"]
    assert json.loads(base64.b64decode(secret["data"]["options.json"]))["dryRun"] is True

    mark = dst.log_mark()
    runs = await player.play(NAMESPACE, "plan-r1")
    assert [r.returncode for r in runs] == [0], [r.stderr[-800:] for r in runs]
    status = await cluster.wait_status("plan", lambda s: s.get("completionTime") and s.get("plan"), "a plan")

    sent = [r.method for r in dst.request_log(mark)]
    assert sent and set(sent) <= {"GET", "HEAD"}, sent  # the target was read, never written
    assert seed.list_tags(dst, "mirror/app") == []

    plan = status["plan"]
    assert (plan["pairs"], plan["upToDate"], plan["toCopy"], plan["failed"]) == (3, 1, 1, 1), plan
    assert plan["bytesToCopy"] == new.total_size and plan["blobsToCopy"] == 3 and plan["exact"] is True
    assert plan["notes"] == []  # referrers off: nothing left unplanned
    entries = {entry["target"]: entry for entry in plan["entries"]}
    assert entries[f"{dst.host}/mirror/app:v1"] == {
        "source": f"{src.host}/lib/app:v1", "target": f"{dst.host}/mirror/app:v1", "state": "copy",
        "bytes": new.total_size, "blobs": 3, "exact": True}
    assert entries[f"{dst.host}/mirror/same:v1"]["state"] == "up-to-date"
    gone = entries[f"{dst.host}/mirror/gone:v1"]
    assert gone["state"] == "failed" and "manifest unknown" in gone["reason"]

    # The pair that could not be planned fails the run as a copy's failure would; the others count as skipped.
    assert status["phase"] == "PartiallyFailed", status
    progress = status["progress"]
    assert (progress["imagesTotal"], progress["imagesSynced"], progress["imagesSkipped"],
            progress["imagesFailed"], progress["bytesCopied"]) == (3, 0, 2, 1, 0), progress
    assert [f["target"] for f in status["failedImages"]] == [f"{dst.host}/mirror/gone:v1"]
    complete = next(c for c in status["conditions"] if c["type"] == "Complete")
    assert complete["message"].startswith("run 1: dry run, nothing copied: 3 pairs, 1 up to date, 1 to copy "
                                          f"({new.total_size} bytes in 3 blobs, exact)"), complete
