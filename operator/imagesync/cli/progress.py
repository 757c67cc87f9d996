"""Live progress while a sync runs, and the summary at the end.

On a terminal, :class:`TerminalDisplay` keeps a live area at the bottom of the screen with rich: an overall
bar (images done/total, bytes, rate, ETA), one bar per blob upload in flight and the failures so far. Log
records go through rich's logging handler, which prints them above that area, so neither breaks the other.

Elsewhere (CI logs, pods, ``--output json`` piped into a tool) there is no rich at all: plain log lines and a
one-line progress record every :data:`LOG_INTERVAL` seconds, through logging. rich is imported only when a
terminal display is made, so ``imagesync sync --help`` and non-terminal runs start without it.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import sys
import time
from typing import TYPE_CHECKING, TextIO

from imagesync.engine.stats import SyncStats, Transfer

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

    from imagesync.engine.plan import Plan  # a type only: a sync that does not plan never loads the planner

# Seconds between progress records when standard error is not a terminal.
LOG_INTERVAL = 10.0
# The terminal display: redraws per second, rows of transfers and failures shown (the rest are counted).
REFRESH_PER_SECOND = 4.0
MAX_TRANSFER_ROWS = 8
MAX_FAILURE_ROWS = 5
# Seconds of history behind the "current rate" on the terminal.
RATE_WINDOW = 5.0

progress_log = logging.getLogger("imagesync.progress")


def human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024 or unit == "GiB":
            return f"{count:.1f} {unit}" if unit != "B" else f"{int(count)} B"
        count /= 1024
    return f"{count:.1f} TiB"


def human_duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


def images_done(stats: SyncStats) -> int:
    return stats.count("synced") + stats.count("skipped") + stats.count("failed")


def eta_seconds(stats: SyncStats, now: float | None = None) -> float | None:
    """Time left at the average pace of the images finished so far; None before the first one."""
    done, total = images_done(stats), stats.images_total
    if not done or done >= total:
        return None
    elapsed = (time.monotonic() if now is None else now) - stats.started
    return elapsed / done * (total - done)


def progress_line(stats: SyncStats) -> str:
    """The one-line progress record written when there is no terminal."""
    done = images_done(stats)
    failed = stats.count("failed")
    total = stats.images_total
    parts = [f"images {done}/{total}" if total else f"images {done}"]
    if failed:
        parts.append(f"{failed} failed")
    parts.append(f"blobs {stats.blobs_copied} copied, {stats.blobs_mounted} mounted, "
                 f"{stats.blobs_skipped} skipped")
    parts.append(f"{human_bytes(stats.bytes_copied)} at {human_bytes(stats.bytes_per_second)}/s")
    if stats.transfers:
        parts.append(f"{len(stats.transfers)} transfer(s) in flight")
    eta = eta_seconds(stats)
    if eta is not None:
        parts.append(f"ETA {human_duration(eta)}")
    return " | ".join(parts)


async def log_progress(stats: SyncStats, interval: float | None = None) -> None:
    """A progress record through logging every ``interval`` seconds; runs until cancelled."""
    while True:
        await asyncio.sleep(LOG_INTERVAL if interval is None else interval)
        progress_log.info("progress: %s", progress_line(stats))


class TerminalDisplay:
    """The live area on a terminal, and the logging handler that prints records above it.

    Everything runs on the event loop's thread (no auto-refresh thread): the engine's counters are read
    where they are written, and a log record printed mid-redraw cannot interleave with it.
    """

    def __init__(self, stream: TextIO) -> None:
        from rich.console import Console

        self.console: Console = Console(file=stream)
        self._samples: collections.deque[tuple[float, int]] = collections.deque()

    def log_handler(self) -> logging.Handler:
        from rich.logging import RichHandler

        handler = RichHandler(console=self.console, show_path=False, omit_repeated_times=False,
                              log_time_format="%Y-%m-%d %H:%M:%S", markup=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
        return handler

    def rate(self, stats: SyncStats, now: float) -> float:
        """Bytes per second over the last :data:`RATE_WINDOW` seconds (the average until then)."""
        self._samples.append((now, stats.bytes_copied))
        while len(self._samples) > 2 and now - self._samples[1][0] >= RATE_WINDOW:
            self._samples.popleft()
        first_time, first_bytes = self._samples[0]
        if now - first_time < 1.0:
            return stats.bytes_per_second
        return max(0.0, (stats.bytes_copied - first_bytes) / (now - first_time))

    async def run(self, stats: SyncStats) -> None:
        """Show the live area until cancelled; the last frame (the overall bar only) stays on the screen."""
        from rich.live import Live

        # Standard error written by anything else (a warning, a library's print) is routed above the area;
        # standard output is left alone: with --output json it may be a pipe.
        with Live(console=self.console, auto_refresh=False, redirect_stdout=False, redirect_stderr=True,
                  transient=False) as live:
            try:
                while True:
                    live.update(self.render(stats, time.monotonic()), refresh=True)
                    await asyncio.sleep(1 / REFRESH_PER_SECOND)
            finally:
                live.update(self.render(stats, time.monotonic(), final=True), refresh=True)

    def render(self, stats: SyncStats, now: float, *, final: bool = False) -> RenderableType:
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        done, total, failed = images_done(stats), stats.images_total, stats.failed()
        overall = Table.grid(padding=(0, 1))
        overall.add_column(width=30)
        overall.add_column(no_wrap=True, overflow="ellipsis")
        summary = Text()
        summary.append(f"images {done}/{total}" if total else "images 0/? (planning)", style="bold")
        if failed:
            summary.append(f"  {len(failed)} failed", style="bold red")
        summary.append(f"  {human_bytes(stats.bytes_copied)}")
        summary.append(f"  {human_bytes(stats.bytes_per_second if final else self.rate(stats, now))}/s")
        eta = eta_seconds(stats, now)
        if final:
            summary.append(f"  in {human_duration(stats.duration)}")
        elif eta is not None:
            summary.append(f"  ETA {human_duration(eta)}")
        overall.add_row(ProgressBar(total=total or None, completed=done, width=30, pulse=not total), summary)
        if final:
            return overall
        parts: list[RenderableType] = [overall]
        transfers = list(stats.transfers)
        if transfers:
            rows = Table.grid(padding=(0, 1))
            rows.add_column(width=1)
            rows.add_column(width=20)
            rows.add_column(no_wrap=True, overflow="ellipsis", max_width=60)
            rows.add_column(no_wrap=True)
            rows.add_column(no_wrap=True, justify="right")
            rows.add_column(no_wrap=True, justify="right")
            for transfer in transfers[:MAX_TRANSFER_ROWS]:
                rows.add_row("", ProgressBar(total=max(transfer.size, 1), completed=transfer.copied, width=20),
                             _left_ellipsis(transfer.repository, 60), Text(_short_digest(transfer), style="cyan"),
                             f"{human_bytes(transfer.copied)} / {human_bytes(transfer.size)}",
                             f"{human_bytes(_transfer_rate(transfer, now))}/s")
            parts.append(rows)
            if len(transfers) > MAX_TRANSFER_ROWS:
                parts.append(Text(f"  … and {len(transfers) - MAX_TRANSFER_ROWS} more transfer(s)", style="dim"))
        for outcome in failed[-MAX_FAILURE_ROWS:]:
            arrow = f" -> {outcome.target}" if outcome.target else ""
            parts.append(Text(f"  failed {outcome.source}{arrow}: {outcome.reason}", style="red",
                              no_wrap=True, overflow="ellipsis"))
        if len(failed) > MAX_FAILURE_ROWS:
            parts.append(Text(f"  … and {len(failed) - MAX_FAILURE_ROWS} more failed image(s)", style="red"))
        return Group(*parts)


def _short_digest(transfer: Transfer) -> str:
    algorithm, _, hexits = transfer.digest.partition(":")
    return f"{algorithm}:{hexits[:12]}" if hexits else transfer.digest[:19]


def _left_ellipsis(text: str, width: int) -> str:
    return text if len(text) <= width else "…" + text[-(width - 1):]


def _transfer_rate(transfer: Transfer, now: float) -> float:
    return transfer.copied / max(now - transfer.started, 1e-3)


def terminal_display(stream: TextIO) -> TerminalDisplay | None:
    """A display when ``stream`` is a terminal that can draw one, else None (plain lines)."""
    return TerminalDisplay(stream) if is_interactive(stream) else None


async def show_progress(stats: SyncStats, display: TerminalDisplay | None) -> None:
    """Runs until cancelled: the live area on a terminal, periodic progress records elsewhere."""
    if display is not None:
        await display.run(stats)
    else:
        await log_progress(stats)


def summary(stats: SyncStats) -> str:
    """The closing report: counts, volume, speed, and every failed image with its reason."""
    synced, skipped, failed = stats.count("synced"), stats.count("skipped"), stats.count("failed")
    refused = stats.refused()
    unsigned = f", {len(refused)} skipped (--only-signed: not signed or not verified)" if refused else ""
    seconds = stats.duration
    lines = [
        f"Images: {synced} synced, {skipped - len(refused)} skipped (already up to date){unsigned}, "
        f"{failed} failed, {stats.images_total} total",
        f"Blobs: {stats.blobs_copied} copied, {stats.blobs_mounted} mounted, {stats.blobs_skipped} skipped "
        f"(present at the target); manifests pushed: {stats.manifests_pushed}",
        f"Referrers (signatures, attestations, SBOMs): {stats.count_referrers('copied')} copied, "
        f"{stats.count_referrers('skipped')} skipped (present at the target), "
        f"{stats.count_referrers('failed')} failed",
        f"Transferred {human_bytes(stats.bytes_copied)} in {seconds:.2f} s "
        f"({stats.bytes_copied / seconds / 1e6:.1f} MB/s)",
    ]
    for host, quota in stats.quotas.items():
        limit = f" of {quota['limit']}" if "limit" in quota else ""
        window = f" per {human_duration(float(quota['windowSeconds']))}" if "windowSeconds" in quota else ""
        lines.append(f"Request quota of {host}: {quota['remaining']}{limit}{window} left")
    notes = [o for o in stats.outcomes.values() if o.note]
    if notes:
        lines.append("Notes:")
        lines.extend(f"  {o.target or o.source}: {o.note}" for o in notes)
    if refused:
        lines.append("Skipped by --only-signed:")
        lines.extend(f"  {o.source}: {o.reason}" for o in refused)
    if stats.prune is not None:
        lines.extend(stats.prune.lines())
    failures = stats.failed()
    if failures:
        lines.append("Failed images:")
        for outcome in failures:
            arrow = f" -> {outcome.target}" if outcome.target else ""
            lines.append(f"  {outcome.source}{arrow}: {outcome.reason}")
    return "\n".join(lines)


def is_interactive(stream: TextIO = sys.stderr) -> bool:
    """A terminal that can be drawn on (TERM=dumb, e.g. an editor's shell buffer, gets plain lines)."""
    return hasattr(stream, "isatty") and stream.isatty() and os.environ.get("TERM") != "dumb"


PLAN_STATES = {"up-to-date": "up to date", "copy": "copy", "skipped": "skip", "failed": "failed"}


def plan_text(plan: Plan) -> str:
    """A dry run's plan as a table: one line per pair (state, pair, what it would copy or why not), then the
    totals and the notes that say where the bytes are an estimate."""
    lines = []
    for entry in plan.entries:
        line = f"{PLAN_STATES[entry.state]:<10}  {entry.source} -> {entry.target}"
        if entry.state == "copy":
            estimate = "" if entry.exact else ", estimate: may be mounted, not uploaded"
            line += f"  ({entry.blobs} blobs, {human_bytes(entry.bytes)}{estimate})"
        if entry.reason:
            line += f": {entry.reason}"
        lines.append(line)
    skipped = plan.count("skipped")
    lines.append(f"Plan: {len(plan.entries)} pairs: {plan.count('up-to-date')} up to date, {plan.count('copy')} to "
                 f"copy{f', {skipped} skipped (--only-signed)' if skipped else ''}, {plan.count('failed')} could "
                 f"not be planned")
    lines.append(f"To copy: {len(plan.missing)} blobs, {human_bytes(plan.bytes_to_copy)} "
                 f"({'exact' if plan.exact else 'estimate'}; nothing was copied)")
    lines.extend(f"Note: {note}" for note in plan.notes)
    if plan.prune is not None:
        lines.extend(plan.prune.lines())
    return "\n".join(lines)
