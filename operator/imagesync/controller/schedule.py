"""Cron schedules for ImageSyncJobs (pure): when the next run is due."""

from __future__ import annotations

from datetime import datetime

from croniter import croniter


def next_fire(cron: str, after: datetime) -> datetime:
    """The first time strictly after ``after`` that the schedule fires (timezone of ``after``)."""
    fire: datetime = croniter(cron, after).get_next(datetime)
    return fire


def fires(cron: str, after: datetime) -> bool:
    """Whether croniter reads the schedule and it fires at all after ``after``. The spec's own validation
    refuses the others with a condition (controller/spec.py); the schedule timer still ticks for such an
    object, and must then do nothing rather than raise on every tick."""
    try:
        next_fire(cron, after)
    except (ValueError, KeyError):  # croniter's errors are ValueErrors (CroniterBadDateError: never fires)
        return False
    return True


def is_due(cron: str, last_fire: datetime | None, created: datetime, now: datetime) -> bool:
    """A run is due once the schedule has fired since the last scheduled run (or since creation).

    Missed fires while a run was active collapse into one run: never two runs at once, no backlog.
    """
    return next_fire(cron, last_fire or created) <= now
