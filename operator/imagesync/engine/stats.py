"""Counters and the per-image outcome of a sync run.

The dict produced by :meth:`SyncStats.snapshot` is the one shape shared by the CLI's ``--output json``
file, the worker's progress reports and (after folding) the ImageSyncJob status.

Blob uploads in flight are published in :attr:`SyncStats.transfers` (the copy pipeline calls
:meth:`SyncStats.transfer_started`, advances :attr:`Transfer.copied` and calls :meth:`SyncStats.transfer_ended`);
a display polls them, the engine never waits on it.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # engine/prune.py imports referrers.py, which imports this module
    from imagesync.engine.prune import PruneReport

Outcome = Literal["synced", "skipped", "failed"]
ReferrerOutcome = Literal["copied", "skipped", "failed"]

# A report carries at most this many failed images; the total count travels beside it.
FAILED_IMAGES_CAP = 50


@dataclass
class ImageOutcome:
    source: str
    target: str
    outcome: Outcome
    reason: str = ""
    digest: str = ""
    note: str = ""

    def as_dict(self) -> dict[str, str]:
        data = {"source": self.source, "target": self.target}
        if self.digest:
            data["digest"] = self.digest
        if self.reason:
            data["reason"] = self.reason
        if self.note:
            data["note"] = self.note
        return data


@dataclass(eq=False)  # identity: two uploads of one blob are two transfers
class Transfer:
    """One blob upload in flight: ``copied`` of ``size`` bytes have gone through so far."""

    repository: str  # target host/path
    digest: str
    size: int
    copied: int = 0
    started: float = field(default_factory=time.monotonic)


@dataclass
class SyncStats:
    images_total: int = 0
    blobs_copied: int = 0
    blobs_mounted: int = 0
    blobs_skipped: int = 0
    bytes_copied: int = 0
    manifests_pushed: int = 0
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    outcomes: dict[tuple[str, str], ImageOutcome] = field(default_factory=dict)
    # Auth keys (registry or registry/namespace) whose credentials were used and accepted / refused.
    logins_accepted: list[str] = field(default_factory=list)
    logins_rejected: list[str] = field(default_factory=list)
    # The request quota each registry last announced (ratelimit-* headers), by host: remaining, and limit,
    # windowSeconds, resetSeconds when announced. Empty when no registry announced one.
    quotas: dict[str, dict[str, float | int]] = field(default_factory=dict)
    # Referrers (signatures, attestations, SBOMs) by target reference: copied, skipped (already there) or
    # failed; a retried image's artifacts replace their earlier outcome.
    referrers: dict[str, ReferrerOutcome] = field(default_factory=dict)
    # Blob uploads in flight, in the order they started (not part of the snapshot: it changes too fast).
    # At most ``proc`` entries: a list is cheap to scan.
    transfers: list[Transfer] = field(default_factory=list)
    # --prune: what was (or, a dry run, would be) deleted per target repository; None when not pruning.
    prune: PruneReport | None = None

    def transfer_started(self, repository: str, digest: str, size: int) -> Transfer:
        transfer = Transfer(repository, digest, size)
        self.transfers.append(transfer)
        return transfer

    def transfer_ended(self, transfer: Transfer) -> None:
        """Done, failed or cancelled alike: the transfer leaves the list (its bytes stay counted or not
        in :attr:`bytes_copied` as the pipeline decided)."""
        with contextlib.suppress(ValueError):
            self.transfers.remove(transfer)

    def record(self, outcome: ImageOutcome) -> None:
        """Record the latest outcome of an image (a retried image replaces its earlier failure)."""
        self.outcomes[(outcome.source, outcome.target)] = outcome

    def record_referrer(self, key: str, outcome: ReferrerOutcome) -> None:
        self.referrers[key] = outcome

    def count_referrers(self, outcome: ReferrerOutcome) -> int:
        return sum(1 for o in self.referrers.values() if o == outcome)

    def count(self, outcome: Outcome) -> int:
        return sum(1 for o in self.outcomes.values() if o.outcome == outcome)

    def failed(self) -> list[ImageOutcome]:
        return [o for o in self.outcomes.values() if o.outcome == "failed"]

    def refused(self) -> list[ImageOutcome]:
        """Images --only-signed skipped, each with its reason (unsigned, signature does not verify): the only
        skipped outcomes that carry a reason."""
        return [o for o in self.outcomes.values() if o.outcome == "skipped" and o.reason]

    @property
    def duration(self) -> float:
        end = self.finished if self.finished is not None else time.monotonic()
        return max(end - self.started, 1e-9)

    @property
    def bytes_per_second(self) -> float:
        return self.bytes_copied / self.duration

    def snapshot(self, *, done: bool = False) -> dict[str, Any]:
        failed = self.failed()
        data = {
            "imagesTotal": self.images_total,
            "imagesSynced": self.count("synced"),
            "imagesSkipped": self.count("skipped"),
            "imagesFailed": len(failed),
            "imagesSkippedUnsigned": len(self.refused()),  # --only-signed; counted in imagesSkipped too
            "blobsCopied": self.blobs_copied,
            "blobsMounted": self.blobs_mounted,
            "blobsSkipped": self.blobs_skipped,
            "bytesCopied": self.bytes_copied,
            "manifestsPushed": self.manifests_pushed,
            "referrersCopied": self.count_referrers("copied"),
            "referrersSkipped": self.count_referrers("skipped"),
            "referrersFailed": self.count_referrers("failed"),
            "bytesPerSecond": round(self.bytes_per_second, 1),
            "durationSeconds": round(self.duration, 3),
            "done": done,
            "failedImages": [o.as_dict() for o in failed[:FAILED_IMAGES_CAP]],
            "failedImagesTotal": len(failed),
            "loginsAccepted": list(self.logins_accepted),
            "loginsRejected": list(self.logins_rejected),
        }
        if self.quotas:  # only when a registry announced a quota
            data["registryQuotas"] = {host: dict(quota) for host, quota in self.quotas.items()}
        if self.prune is not None:  # counts and the first tags (status.prune); the result file lists every tag
            data["prune"] = self.prune.status()
        return data

    def result(self) -> dict[str, Any]:
        """The full result file: every success and every failure, no cap."""
        data = self.snapshot(done=True)
        data["failedImages"] = [o.as_dict() for o in self.failed()]
        data["syncedImages"] = [o.as_dict() for o in self.outcomes.values() if o.outcome == "synced"]
        data["skippedImages"] = [o.as_dict() for o in self.outcomes.values() if o.outcome == "skipped"]
        if self.prune is not None:
            data["prune"] = self.prune.as_dict()
        return data
