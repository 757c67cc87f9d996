"""The terminal display's frames and the plain progress line, rendered from hand-made counters (no registry)."""

from __future__ import annotations

import io

from rich.console import Console

from imagesync.cli import progress
from imagesync.cli.progress import TerminalDisplay, eta_seconds, progress_line
from imagesync.engine.stats import ImageOutcome, SyncStats


def frame(stats: SyncStats, now: float, width: int = 120, *, final: bool = False) -> list[str]:
    console = Console(width=width, file=io.StringIO(), color_system="truecolor", record=True)
    console.print(TerminalDisplay(io.StringIO()).render(stats, now, final=final))
    return console.export_text().splitlines()


def stats_mid_run() -> SyncStats:
    stats = SyncStats(images_total=12, started=100.0)
    stats.record(ImageOutcome("src/app0:1", "dst/app0:1", "synced"))
    stats.record(ImageOutcome("src/app1:1", "dst/app1:1", "skipped"))
    stats.record(ImageOutcome("src/gone:1", "dst/gone:1", "failed", "manifest unknown at the source"))
    stats.bytes_copied = 300 << 20
    first = stats.transfer_started("registry.example/team/app2", "sha256:" + "ab" * 32, 40 << 20)
    first.copied, first.started = 10 << 20, 105.0
    stats.transfer_started("registry.example/team/app3", "sha256:" + "cd" * 32, 2 << 20).started = 109.0
    return stats


def test_a_frame_has_the_overall_bar_transfers_and_failures() -> None:
    lines = frame(stats_mid_run(), now=110.0)
    assert lines[0].startswith("━") and "images 3/12  1 failed  300.0 MiB" in lines[0]
    assert "ETA 0:00:30" in lines[0]  # 3 images in 10 s, 9 to go
    assert "registry.example/team/app2 sha256:abababababab 10.0 MiB / 40.0 MiB 2.0 MiB/s" in lines[1]
    assert "registry.example/team/app3 sha256:cdcdcdcdcdcd" in lines[2] and "0 B / 2.0 MiB" in lines[2]
    assert lines[3] == "  failed src/gone:1 -> dst/gone:1: manifest unknown at the source"
    assert len(lines) == 4


def test_a_frame_stays_within_a_narrow_terminal_and_caps_its_rows() -> None:
    stats = stats_mid_run()
    for i in range(progress.MAX_TRANSFER_ROWS + 3):
        stats.transfer_started(f"registry.example/{'deep/' * 20}app{i}", f"sha256:{i:064x}", 1 << 20)
    for i in range(progress.MAX_FAILURE_ROWS + 2):
        stats.record(ImageOutcome(f"src/bad{i}:1", f"dst/bad{i}:1", "failed", "unauthorized " * 20))
    lines = frame(stats, now=110.0, width=80)
    assert all(len(line) <= 80 for line in lines)
    assert sum("sha256:" in line for line in lines) == progress.MAX_TRANSFER_ROWS
    assert any(f"and {len(stats.transfers) - progress.MAX_TRANSFER_ROWS} more transfer(s)" in line for line in lines)
    assert sum(line.startswith("  failed ") for line in lines) == progress.MAX_FAILURE_ROWS
    assert any("and 3 more failed image(s)" in line for line in lines)  # 8 failed, 5 shown


def test_the_last_frame_is_the_overall_bar_alone() -> None:
    stats = stats_mid_run()
    stats.finished = 120.0
    lines = frame(stats, now=120.0, final=True)
    assert len(lines) == 1 and "images 3/12" in lines[0] and "in 0:00:20" in lines[0] and "ETA" not in lines[0]


def test_before_planning_the_total_is_unknown() -> None:
    assert "images 0/? (planning)" in frame(SyncStats(), now=1.0)[0]


def test_transfers_leave_the_list_when_they_end() -> None:
    stats = SyncStats()
    one = stats.transfer_started("r/a", "sha256:1", 10)
    two = stats.transfer_started("r/a", "sha256:1", 10)  # the same blob again (a retry): a transfer of its own
    stats.transfer_ended(one)
    assert stats.transfers == [two]
    stats.transfer_ended(one)  # ending twice is harmless
    stats.transfer_ended(two)
    assert stats.transfers == []
    assert "transfers" not in stats.snapshot()


def test_plain_progress_line_and_eta() -> None:
    stats = stats_mid_run()
    assert eta_seconds(stats, now=110.0) == 30.0
    assert eta_seconds(SyncStats(images_total=2), now=5.0) is None
    line = progress_line(stats)
    assert line.startswith("images 3/12 | 1 failed | blobs 0 copied") and "2 transfer(s) in flight" in line
    assert "\x1b" not in line
