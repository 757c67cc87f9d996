"""The leader election's decisions (controller/leader.py): pure functions of the Lease as read, this
replica's identity and the time; and the operator command's election settings (controller/main.py)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from pathlib import Path

import pytest

from imagesync.controller.leader import (
    Action,
    LeaseRecord,
    Observed,
    decide,
    micro_time,
    next_record,
    observe,
    released,
    renew_overdue,
)
from imagesync.controller.main import election_identity, leader_elect, lease_namespace, parse_args, settings_from
from imagesync.controller.settings import LeaseTimings, OperatorSettings, SettingsError

ME, OTHER = "operator-a_1234abcd", "operator-b_5678ef01"
TIMINGS = LeaseTimings()  # 15 s lease, 10 s renew deadline, 2 s retry period
WALL = dt.datetime(2026, 11, 27, 16, 0, 0, 123456, tzinfo=dt.UTC)


def held(holder: str, duration: int = 15, transitions: int = 3) -> LeaseRecord:
    return LeaseRecord(holder=holder, lease_duration=duration, acquire_time="2026-11-27T15:00:00.000000Z",
                       renew_time="2026-11-27T15:59:58.000000Z", transitions=transitions)


def test_no_lease_is_acquired_and_created_with_no_transition() -> None:
    observed = observe(None, None, now=100.0)
    assert decide(observed, ME, leading=False, now=100.0) is Action.ACQUIRE
    record = next_record(None, ME, Action.ACQUIRE, TIMINGS, WALL)
    assert record.spec() == {"holderIdentity": ME, "leaseDurationSeconds": 15, "leaseTransitions": 0,
                             "acquireTime": "2026-11-27T16:00:00.123456Z",
                             "renewTime": "2026-11-27T16:00:00.123456Z"}


def test_another_holders_fresh_lease_is_waited_for_until_it_goes_unchanged_for_its_duration() -> None:
    observed = observe(None, held(OTHER), now=100.0)
    assert decide(observed, ME, leading=False, now=100.0) is Action.WAIT
    assert decide(observed, ME, leading=False, now=114.9) is Action.WAIT
    again = observe(observed, held(OTHER), now=114.9)  # read again, unchanged: the clock keeps running
    assert again is observed
    assert decide(again, ME, leading=False, now=115.0) is Action.ACQUIRE


def test_a_renewal_restarts_the_wait() -> None:
    observed = observe(None, held(OTHER), now=100.0)
    renewed = observe(observed, dataclasses.replace(held(OTHER), renew_time="2026-11-27T16:00:08.000000Z"),
                      now=110.0)
    assert renewed.since == 110.0
    assert decide(renewed, ME, leading=False, now=120.0) is Action.WAIT
    assert decide(renewed, ME, leading=False, now=125.0) is Action.ACQUIRE


def test_expiry_uses_the_holders_duration_and_this_replicas_clock_not_the_lease_timestamps() -> None:
    # renewTime far in the past or in the future (another node's wall clock): neither expires it early
    # nor keeps it alive; only how long it has gone unchanged here counts.
    for renew_time in ("2001-01-01T00:00:00.000000Z", "2099-01-01T00:00:00.000000Z"):
        record = LeaseRecord(holder=OTHER, lease_duration=15, renew_time=renew_time, transitions=1)
        observed = observe(None, record, now=50.0)
        assert decide(observed, ME, leading=False, now=50.0) is Action.WAIT
        assert decide(observed, ME, leading=False, now=65.0) is Action.ACQUIRE
    short = observe(None, held(OTHER, duration=1), now=50.0)  # a holder that asked for 1 s
    assert decide(short, ME, leading=False, now=51.0) is Action.ACQUIRE


def test_taking_over_counts_a_transition_and_keeps_nothing_of_the_old_holder() -> None:
    record = next_record(held(OTHER, transitions=3), ME, Action.ACQUIRE, TIMINGS, WALL)
    assert (record.holder, record.transitions, record.lease_duration) == (ME, 4, 15)
    assert record.acquire_time == record.renew_time == micro_time(WALL)


def test_a_released_lease_is_taken_at_once_and_counts_a_transition() -> None:
    free = released(held(OTHER, transitions=3), WALL)
    assert (free.holder, free.lease_duration, free.transitions) == ("", 1, 3)
    assert free.spec()["holderIdentity"] == ""
    observed = observe(None, free, now=10.0)
    assert decide(observed, ME, leading=False, now=10.0) is Action.ACQUIRE
    assert next_record(free, ME, Action.ACQUIRE, TIMINGS, WALL).transitions == 4


def test_own_lease_is_renewed_keeping_acquire_time_and_transitions() -> None:
    mine = held(ME, duration=30, transitions=2)  # written with other settings before: takes ours now
    observed = observe(None, mine, now=5.0)
    assert decide(observed, ME, leading=True, now=5.0) is Action.RENEW
    renewed = next_record(mine, ME, Action.RENEW, TIMINGS, WALL)
    assert (renewed.acquire_time, renewed.transitions, renewed.lease_duration) == (mine.acquire_time, 2, 15)
    assert renewed.renew_time == micro_time(WALL)


def test_a_leader_that_finds_the_lease_gone_released_or_taken_has_lost_it() -> None:
    for record in (None, held(OTHER), released(held(ME), WALL)):
        assert decide(observe(None, record, now=1.0), ME, leading=True, now=1.0) is Action.LOST


def test_a_leader_gives_up_at_the_renew_deadline_before_anyone_may_take_over() -> None:
    assert not renew_overdue(last_renewed=100.0, now=109.9, timings=TIMINGS)
    assert renew_overdue(last_renewed=100.0, now=110.0, timings=TIMINGS)
    # A standby's clock for the same Lease starts no earlier than the renewal it saw: it may act from
    # 115 s at the earliest, 5 s after this leader stopped.
    standby = observe(None, held(ME), now=100.0)
    assert decide(standby, OTHER, leading=False, now=110.0) is Action.WAIT


def test_only_acquire_and_renew_write() -> None:
    with pytest.raises(ValueError, match="wait"):
        next_record(held(OTHER), ME, Action.WAIT, TIMINGS, WALL)
    with pytest.raises(ValueError, match="renew"):
        next_record(held(OTHER), ME, Action.RENEW, TIMINGS, WALL)  # not ours to renew


def test_lease_fields_of_the_wrong_type_read_as_unset() -> None:
    record = LeaseRecord.from_lease({"spec": {"holderIdentity": 7, "leaseDurationSeconds": "15",
                                              "leaseTransitions": -1, "renewTime": ""}})
    assert record == LeaseRecord()
    assert LeaseRecord.from_lease({}) == LeaseRecord()
    full = held(OTHER)
    assert LeaseRecord.from_lease({"spec": full.spec()}) == full
    # Unset holder: free, whatever the duration says.
    assert decide(Observed(record, since=0.0), ME, leading=False, now=0.0) is Action.ACQUIRE


def test_timings_default_to_client_go_and_must_keep_their_order() -> None:
    assert LeaseTimings.from_env({}) == LeaseTimings(15, 10, 2)
    assert LeaseTimings.from_env({"IMAGESYNC_LEASE_DURATION_SECONDS": "30",
                                  "IMAGESYNC_LEASE_RENEW_DEADLINE_SECONDS": "20"}) == LeaseTimings(30, 20, 2)
    with pytest.raises(SettingsError, match="retry period < renew deadline < lease duration"):
        LeaseTimings.from_env({"IMAGESYNC_LEASE_DURATION_SECONDS": "10"})
    with pytest.raises(SettingsError, match=re.escape("IMAGESYNC_LEASE_RETRY_PERIOD_SECONDS='0.5'")):
        LeaseTimings.from_env({"IMAGESYNC_LEASE_RETRY_PERIOD_SECONDS": "0.5"})


def test_leader_election_is_on_in_a_pod_and_off_with_a_kubeconfig(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IMAGESYNC_LEADER_ELECT", raising=False)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    assert leader_elect(OperatorSettings(), kubeconfig=None)
    assert not leader_elect(OperatorSettings(), kubeconfig="/tmp/kubeconfig")
    assert not leader_elect(settings_from(parse_args(["--no-leader-elect"])), kubeconfig=None)
    assert leader_elect(settings_from(parse_args(["--leader-elect"])), kubeconfig="/tmp/kubeconfig")
    monkeypatch.setenv("IMAGESYNC_LEADER_ELECT", "false")
    assert not leader_elect(settings_from(parse_args([])), kubeconfig=None)
    monkeypatch.setenv("IMAGESYNC_LEADER_ELECT", "maybe")
    with pytest.raises(SettingsError, match="IMAGESYNC_LEADER_ELECT='maybe'"):
        settings_from(parse_args([]))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST")
    assert not leader_elect(OperatorSettings(), kubeconfig=None)


def test_identity_and_lease_namespace_come_from_the_pod(tmp_path: Path) -> None:
    first, second = election_identity({"IMAGESYNC_POD_NAME": "op-7d9f"}), election_identity(
        {"IMAGESYNC_POD_NAME": "op-7d9f"})
    assert first.startswith("op-7d9f_") and second.startswith("op-7d9f_") and first != second
    account = tmp_path / "namespace"
    assert lease_namespace({"IMAGESYNC_POD_NAMESPACE": "imagesync-system"}, account) == "imagesync-system"
    assert lease_namespace({}, account) is None
    account.write_text("from-the-token\n")
    assert lease_namespace({}, account) == "from-the-token"
