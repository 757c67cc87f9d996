"""Leader election among the operator's replicas on a coordination.k8s.io/v1 Lease, as client-go's
leaderelection does it: one replica holds the Lease and reconciles, the others wait and take over when
it stops renewing (docs/operator.md, "High availability").

The decisions are pure functions of the Lease as read, this replica's identity and the time; `Elector`
does the I/O around them, with optimistic concurrency (every write names the resourceVersion it read,
so of two replicas writing at once one gets 409 Conflict and reads again).

Expiry is judged on this replica's own monotonic clock, never on the timestamps in the Lease (another
node's wall clock): a Lease held by someone else counts as expired when it has not *changed* for its
leaseDurationSeconds since this replica first saw it in its current form.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import enum
import json
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import kubernetes
import urllib3

from imagesync.controller.settings import LeaseTimings

LEASE_NAME = "imagesync-operator"
# A released Lease says "free in a second" to readers that do not know an empty holder means free.
RELEASED_DURATION_SECONDS = 1

logger = logging.getLogger("imagesync.leader")


class LeadershipLost(Exception):
    """This replica no longer holds the Lease: it must stop acting at once."""


class Action(enum.Enum):
    ACQUIRE = "acquire"  # free, expired or absent: take it (create or update)
    RENEW = "renew"  # ours: write a fresh renewTime
    WAIT = "wait"  # another holder, still fresh
    LOST = "lost"  # we lead, but the Lease is gone or names someone else


def micro_time(moment: dt.datetime) -> str:
    """A Lease's MicroTime: RFC 3339 with microseconds, in UTC."""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class LeaseRecord:
    """What a Lease's spec says (the fields client-go's leader election reads and writes)."""

    holder: str = ""  # empty: nobody (released)
    lease_duration: int = 0
    acquire_time: str | None = None
    renew_time: str | None = None
    transitions: int = 0

    @classmethod
    def from_lease(cls, lease: Mapping[str, Any]) -> LeaseRecord:
        """From a Lease object as JSON; fields absent or of the wrong type read as unset."""
        spec = lease.get("spec")
        spec = spec if isinstance(spec, Mapping) else {}

        def whole(key: str) -> int:
            value = spec.get(key)
            return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0

        def text(key: str) -> str | None:
            value = spec.get(key)
            return value if isinstance(value, str) and value else None

        return cls(holder=text("holderIdentity") or "", lease_duration=whole("leaseDurationSeconds"),
                   acquire_time=text("acquireTime"), renew_time=text("renewTime"),
                   transitions=whole("leaseTransitions"))

    def spec(self) -> dict[str, Any]:
        """The Lease spec to write."""
        spec: dict[str, Any] = {"holderIdentity": self.holder, "leaseDurationSeconds": self.lease_duration,
                                "leaseTransitions": self.transitions}
        if self.acquire_time:
            spec["acquireTime"] = self.acquire_time
        if self.renew_time:
            spec["renewTime"] = self.renew_time
        return spec


@dataclass(frozen=True)
class Observed:
    """The Lease as this replica last read it (None: no Lease object), and when, on its monotonic clock,
    it first read it in that form."""

    record: LeaseRecord | None
    since: float


def observe(previous: Observed | None, record: LeaseRecord | None, now: float) -> Observed:
    """The observation after reading ``record`` at ``now``: its clock restarts only when the Lease changed,
    so a holder that stopped renewing expires ``lease_duration`` after the last change anyone saw."""
    if previous is not None and previous.record == record:
        return previous
    return Observed(record, now)


def decide(observed: Observed, identity: str, leading: bool, now: float) -> Action:
    """What to do about the Lease as observed."""
    record = observed.record
    if record is not None and record.holder == identity:
        return Action.RENEW
    if leading:
        # Deleted, released by someone else, or taken over (we were too slow to renew): either way
        # another replica may act now, so this one must not.
        return Action.LOST
    if record is None or not record.holder:
        return Action.ACQUIRE
    if now < observed.since + record.lease_duration:
        return Action.WAIT
    return Action.ACQUIRE


def next_record(record: LeaseRecord | None, identity: str, action: Action, timings: LeaseTimings,
                now: dt.datetime) -> LeaseRecord:
    """The Lease spec an ACQUIRE or a RENEW writes."""
    stamp = micro_time(now)
    if action is Action.RENEW and record is not None and record.holder == identity:
        return dataclasses.replace(record, lease_duration=timings.lease_duration, renew_time=stamp)
    if action is not Action.ACQUIRE:
        raise ValueError(f"{action.value}: writes nothing")
    # A new Lease's first holder is no transition; a change of holder (a released Lease's included) is.
    transitions = 0 if record is None else record.transitions + (record.holder != identity)
    return LeaseRecord(holder=identity, lease_duration=timings.lease_duration, acquire_time=stamp,
                       renew_time=stamp, transitions=transitions)


def released(record: LeaseRecord, now: dt.datetime) -> LeaseRecord:
    """The Lease spec a stopping leader writes so that another replica takes over at its next try,
    without waiting out the lease duration (client-go's ReleaseOnCancel)."""
    stamp = micro_time(now)
    return dataclasses.replace(record, holder="", lease_duration=RELEASED_DURATION_SECONDS, acquire_time=stamp,
                               renew_time=stamp)


def renew_overdue(last_renewed: float, now: float, timings: LeaseTimings) -> bool:
    """The leader has gone ``renew_deadline`` without a successful renewal: it must give up, since the
    others may take over once ``lease_duration`` (longer) has passed since that renewal."""
    return now - last_renewed >= timings.renew_deadline


# -- I/O ----------------------------------------------------------------------------------------------


class Leases(Protocol):
    """One Lease's reads and writes; ``None`` from a write means 409 (someone else wrote first)."""

    async def read(self) -> tuple[LeaseRecord | None, str | None]: ...
    async def create(self, record: LeaseRecord) -> str | None: ...
    async def replace(self, record: LeaseRecord, resource_version: str) -> str | None: ...


class KubeLeases:
    """The Lease through the API server (the sync client, in a thread; every request time-bounded)."""

    def __init__(self, api_client: kubernetes.client.ApiClient, namespace: str, name: str = LEASE_NAME,
                 request_timeout: float = 5.0) -> None:
        # Any: called with plain JSON bodies and _preload_content=False (raw JSON back, no model objects),
        # which the client's typed signatures do not describe; controller/kube.py does the same.
        self.api: Any = kubernetes.client.CoordinationV1Api(api_client)
        self.namespace, self.name, self.request_timeout = namespace, name, request_timeout

    def where(self) -> str:
        return f"Lease {self.namespace}/{self.name}"

    def _body(self, record: LeaseRecord, resource_version: str | None = None) -> dict[str, Any]:
        metadata: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if resource_version is not None:
            metadata["resourceVersion"] = resource_version  # the precondition: 409 if it changed since
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata,
                "spec": record.spec()}

    @staticmethod
    def _version(response: Any) -> str:
        data = json.loads(response.data or b"{}")
        return str((data.get("metadata") or {}).get("resourceVersion") or "")

    def _read(self) -> tuple[LeaseRecord | None, str | None]:
        try:
            response = self.api.read_namespaced_lease(self.name, self.namespace, _preload_content=False,
                                                      _request_timeout=self.request_timeout)
        except kubernetes.client.ApiException as exc:
            if exc.status == 404:
                return None, None
            raise
        lease = json.loads(response.data or b"{}")
        return LeaseRecord.from_lease(lease), str((lease.get("metadata") or {}).get("resourceVersion") or "")

    def _write(self, call: Callable[[], Any]) -> str | None:
        try:
            return self._version(call())
        except kubernetes.client.ApiException as exc:
            if exc.status == 409:
                return None
            raise

    async def read(self) -> tuple[LeaseRecord | None, str | None]:
        return await asyncio.to_thread(self._read)

    async def create(self, record: LeaseRecord) -> str | None:
        return await asyncio.to_thread(self._write, lambda: self.api.create_namespaced_lease(
            self.namespace, self._body(record), _preload_content=False, _request_timeout=self.request_timeout))

    async def replace(self, record: LeaseRecord, resource_version: str) -> str | None:
        return await asyncio.to_thread(self._write, lambda: self.api.replace_namespaced_lease(
            self.name, self.namespace, self._body(record, resource_version), _preload_content=False,
            _request_timeout=self.request_timeout))


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def failure(exc: BaseException) -> str:
    """One line for a failed Lease call."""
    if isinstance(exc, kubernetes.client.ApiException):
        return f"{exc.status} {exc.reason}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


# What a Lease call can fail with besides a clean 409: the API server's refusals, the network, a timeout.
CALL_ERRORS = (kubernetes.client.ApiException, urllib3.exceptions.HTTPError, OSError, TimeoutError, ValueError)


async def pause(seconds: float, stop: asyncio.Event) -> None:
    """Sleep, or less if ``stop`` is set. In this task: kopf, when it stops, cancels every task created
    after it started (asyncio.wait_for would create one)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await stop.wait()


class Elector:
    """One replica's side of the election: ``acquire()`` until it holds the Lease, ``hold()`` renewing it
    until it is lost (raises LeadershipLost), ``release()`` when it stops acting."""

    def __init__(self, leases: Leases, identity: str, timings: LeaseTimings, *, where: str = "the Lease",
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], dt.datetime] = utc_now) -> None:
        self.leases, self.identity, self.timings, self.where = leases, identity, timings, where
        self.clock, self.wall = clock, wall
        self.observed: Observed | None = None
        self.resource_version: str | None = None
        self.leading = False
        self.conflicted = False  # the last try's write met 409: someone else wrote the Lease meanwhile

    async def try_once(self) -> bool:
        """Read the Lease and act on it once: True when this replica holds it afterwards. Raises
        LeadershipLost when it led and the Lease says otherwise."""
        self.conflicted = False
        record, self.resource_version = await self.leases.read()
        self.observed = observe(self.observed, record, self.clock())
        action = decide(self.observed, self.identity, self.leading, self.clock())
        if action is Action.LOST:
            self.leading = False
            holder = record.holder if record is not None and record.holder else "nobody"
            raise LeadershipLost(f"{self.where} is no longer this replica's (now held by {holder})")
        if action is Action.WAIT:
            return False
        written = next_record(record, self.identity, action, self.timings, self.wall())
        if record is None:
            version = await self.leases.create(written)
        else:
            version = await self.leases.replace(written, self.resource_version or "")
        if version is None:
            self.conflicted = True  # someone else wrote it first: the next try reads what they wrote
            return False
        if not self.leading:
            previous = record.holder if record is not None and record.holder else "nobody"
            logger.info("leading: acquired %s (held before by %s, transition %d)", self.where, previous,
                        written.transitions)
        self.resource_version, self.leading = version, True
        self.observed = Observed(written, self.clock())
        return True

    async def acquire(self, stop: asyncio.Event | None = None) -> bool:
        """Try every retry period (with client-go's jitter, so standbys do not move in lockstep) until
        this replica holds the Lease (True) or ``stop`` is set (False)."""
        stop = stop or asyncio.Event()
        waiting_for: str | None = None
        last_failure: str | None = None  # said once, not at every try
        while not stop.is_set():
            try:
                if await self.try_once():
                    return True
            except CALL_ERRORS as exc:
                if failure(exc) != last_failure:
                    logger.warning("standing by: cannot read or take %s: %s", self.where, failure(exc))
                last_failure = failure(exc)
            else:
                last_failure = None
                holder = self.observed.record.holder if self.observed and self.observed.record else ""
                if holder and holder != waiting_for:
                    logger.info("standing by: %s is held by %s", self.where, holder)
                waiting_for = holder or waiting_for
            await pause(self.timings.retry_period * random.uniform(1.0, 1.2), stop)
        return False

    async def hold(self) -> None:
        """Renew every retry period; raise LeadershipLost once the Lease names someone else or no renewal
        has succeeded for the renew deadline. Never returns otherwise."""
        last_renewed = self.clock()
        while True:
            await asyncio.sleep(self.timings.retry_period)
            while True:
                started = self.clock()
                left = last_renewed + self.timings.renew_deadline - started
                try:
                    renewed = False
                    if left > 0:
                        async with asyncio.timeout(left):
                            renewed = await self.try_once()
                except LeadershipLost:
                    raise
                except CALL_ERRORS as exc:
                    logger.warning("leading: cannot renew %s: %s", self.where, failure(exc))
                    renewed = False
                if renewed:
                    last_renewed = started
                    break
                if renew_overdue(last_renewed, self.clock(), self.timings):
                    self.leading = False
                    raise LeadershipLost(f"{self.where} not renewed for {self.timings.renew_deadline:g}s")
                if self.conflicted:
                    continue  # someone else wrote the Lease: read it again at once, it may not be ours
                await asyncio.sleep(min(self.timings.retry_period,
                                        max(0.0, last_renewed + self.timings.renew_deadline - self.clock())))

    async def release(self) -> None:
        """Hand the Lease over at once (when this replica stops acting): best effort, never raises."""
        if not self.leading:
            return
        self.leading = False
        try:
            record, version = await self.leases.read()
            if record is None or record.holder != self.identity or version is None:
                return  # not ours any more: nothing to hand over
            if await self.leases.replace(released(record, self.wall()), version) is not None:
                logger.info("released %s", self.where)
        except CALL_ERRORS as exc:
            logger.warning("cannot release %s (the others take over when it expires): %s", self.where,
                           failure(exc))


__all__ = [
    "LEASE_NAME",
    "Action",
    "Elector",
    "KubeLeases",
    "LeadershipLost",
    "LeaseRecord",
    "Leases",
    "Observed",
    "decide",
    "next_record",
    "observe",
    "released",
    "renew_overdue",
]
