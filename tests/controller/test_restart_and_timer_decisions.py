"""What a restart and the schedule timer decide from kopf's copy of an ImageSyncJob, before any read (issue 13
point 5, docs/operator-scale.md: 1000 ImageSyncJobs made a restart send 1001 status patches and 1201 GETs, and
500 scheduled ones an idle 1000 GETs a minute)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from imagesync.controller.handlers import schedule_due, settled

NOW = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC)


def isj(generation: int = 2, spec: dict[str, Any] | None = None, **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": "j", "namespace": "n", "generation": generation,
                         "creationTimestamp": "2026-11-27T09:00:00Z"},
            "spec": {"images": {"r.io/a:1": "t.io/a"}, **(spec or {})}, "status": status}


@pytest.mark.parametrize(("obj", "expected"), [
    (isj(runGeneration=2, phase="Succeeded", completionTime="t"), True),  # this spec's run happened
    (isj(runGeneration=2, phase="Running", jobName="j-r1"), True),  # and is under way: the Job events fold it
    (isj(runGeneration=1, phase="Succeeded", completionTime="t"), False),  # the spec changed while we were away
    (isj(), False),  # never seen: a run to start
    (isj(spec={"suspend": True}, phase="Suspended", observedGeneration=2), True),
    (isj(spec={"suspend": True}, phase="Suspended", observedGeneration=1), False),  # suspended in a newer spec
    (isj(spec={"suspend": True}, phase="Failed", observedGeneration=2), False),  # not yet shown as Suspended
    (isj(phase="Failed", observedGeneration=2), False),  # a blocked run: a Secret may exist now
])
def test_a_restart_leaves_settled_imagesyncjobs_alone(obj: dict[str, Any], expected: bool) -> None:
    assert settled(obj) is expected


HOURLY = {"schedule": "0 * * * *"}


@pytest.mark.parametrize(("obj", "expected"), [
    (isj(spec=HOURLY, lastScheduleTime="2026-11-27T11:00:00Z", nextScheduleTime="2026-11-27T13:00:00Z"),
     {}),  # 12:00 has come since the last fire at 11:00: a run is due
    (isj(spec=HOURLY, lastScheduleTime="2026-11-27T12:00:00Z", nextScheduleTime="2026-11-27T13:00:00Z"),
     None),  # fired at 12:00 already and the next fire time is shown: nothing, no read
    (isj(spec=HOURLY, lastScheduleTime="2026-11-27T12:00:00Z"),
     {"nextScheduleTime": "2026-11-27T13:00:00Z"}),  # only the next fire time is missing
    (isj(spec={**HOURLY, "suspend": True}, lastScheduleTime="2026-11-27T11:00:00Z"), None),
    (isj(spec=HOURLY, lastScheduleTime="2026-11-27T11:00:00Z", phase="Running", jobName="j-r3"),
     None),  # never two runs at once
    (isj(spec={"schedule": "0 0 31 2 *"}), None),  # never fires (refused as Valid=False)
    (isj(), None),  # no schedule
])
def test_the_schedule_timer_decides_from_kopfs_copy(obj: dict[str, Any], expected: dict[str, Any] | None) -> None:
    assert schedule_due(obj, NOW) == expected
