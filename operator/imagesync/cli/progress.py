"""Live progress while a sync runs, and the summary at the end.

On a terminal one status line is redrawn in place; elsewhere (CI logs, pods) a plain log line is
written every few seconds. No third-party UI library: one line of ANSI is all this needs.
"""

from __future__ import annotations

import asyncio
import sys
from typing import TextIO

from imagesync.engine.stats import SyncStats


def human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024 or unit == "GiB":
            return f"{count:.1f} {unit}" if unit != "B" else f"{int(count)} B"
        count /= 1024
    return f"{count:.1f} TiB"


def progress_line(stats: SyncStats) -> str:
    done = stats.count("synced") + stats.count("skipped") + stats.count("failed")
    failed = stats.count("failed")
    total = stats.images_total
    parts = [f"images {done}/{total}" if total else f"images {done}"]
    if failed:
        parts.append(f"{failed} failed")
    parts.append(f"blobs {stats.blobs_copied} copied, {stats.blobs_mounted} mounted, "
                 f"{stats.blobs_skipped} skipped")
    parts.append(f"{human_bytes(stats.bytes_copied)} at {human_bytes(stats.bytes_per_second)}/s")
    return " | ".join(parts)


async def show_progress(stats: SyncStats, stream: TextIO, interactive: bool, log_every: float = 5.0) -> None:
    """Runs until cancelled."""
    interval = 0.25 if interactive else log_every
    try:
        while True:
            await asyncio.sleep(interval)
            line = progress_line(stats)
            if interactive:
                stream.write("\r\x1b[2K" + line)
            else:
                stream.write(f"progress: {line}\n")
            stream.flush()
    finally:
        if interactive:
            stream.write("\r\x1b[2K")
            stream.flush()


def summary(stats: SyncStats) -> str:
    """The closing report: counts, volume, speed, and every failed image with its reason."""
    synced, skipped, failed = stats.count("synced"), stats.count("skipped"), stats.count("failed")
    seconds = stats.duration
    lines = [
        f"Images: {synced} synced, {skipped} skipped (already up to date), {failed} failed, "
        f"{stats.images_total} total",
        f"Blobs: {stats.blobs_copied} copied, {stats.blobs_mounted} mounted, {stats.blobs_skipped} skipped "
        f"(present at the target); manifests pushed: {stats.manifests_pushed}",
        f"Transferred {human_bytes(stats.bytes_copied)} in {seconds:.2f} s "
        f"({stats.bytes_copied / seconds / 1e6:.1f} MB/s)",
    ]
    notes = [o for o in stats.outcomes.values() if o.note]
    if notes:
        lines.append("Notes:")
        lines.extend(f"  {o.target or o.source}: {o.note}" for o in notes)
    failures = stats.failed()
    if failures:
        lines.append("Failed images:")
        for outcome in failures:
            arrow = f" -> {outcome.target}" if outcome.target else ""
            lines.append(f"  {outcome.source}{arrow}: {outcome.reason}")
    return "\n".join(lines)


def is_interactive(stream: TextIO = sys.stderr) -> bool:
    return hasattr(stream, "isatty") and stream.isatty()
