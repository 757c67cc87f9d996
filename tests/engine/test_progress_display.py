"""The live display on a terminal (rendered by a terminal emulator), plain log lines elsewhere."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pyte
import yaml
from cli_helpers import auth_for

from testbed import seed
from testbed.registry import RegistryProcess

COLUMNS, LINES = 120, 40
# A log record: "2026-11-27 12:09:37 INFO     synced ..." on a terminal, "...:37,605 INFO synced ..." elsewhere
LOG_RECORD = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(,\d{3})?\s+(DEBUG|INFO|WARNING|ERROR|CRITICAL)\b")
OVERALL = re.compile(r"images (\d+)/(\d+|\?)")
BAR = re.compile(r"[━╸╺]")
TRANSFER = re.compile(r"/tty/app\d+ +sha256:[0-9a-f]{12} +[\d.]+ (B|KiB|MiB) / [\d.]+ MiB")


def write_config(tmp_path: Path, registry: RegistryProcess, registry2: RegistryProcess, count: int, *,
                 layers: tuple[int, ...] = (1024,), missing: bool = False) -> list[str]:
    for i in range(count):
        seed.push_image(registry, f"tty/app{i}", "1", seed=f"tty{i}", layers=layers)
    images = {f"{registry.host}/tty/app{i}:1": f"{registry2.host}/tty/app{i}" for i in range(count)}
    if missing:  # fails for good (manifest unknown): a failure the display lists while the rest goes on
        images[f"{registry.host}/tty/missing:1"] = f"{registry2.host}/tty/missing"
    (tmp_path / "images.yaml").write_text(yaml.safe_dump(images))
    (tmp_path / "auth.yaml").write_text(yaml.safe_dump(auth_for(registry, registry2)))
    return ["sync", "--images", str(tmp_path / "images.yaml"), "--auth", str(tmp_path / "auth.yaml")]


def run_in_terminal(argv: list[str], stdout: int | None = None) -> tuple[int, list[list[str]]]:
    """Run imagesync on a pseudo-terminal of COLUMNS x LINES; the emulated screen after every chunk of output.

    ``stdout``: where standard output goes instead of the terminal (a file descriptor).
    """
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", LINES, COLUMNS, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "NO_COLOR", "FORCE_COLOR")}
    env["TERM"] = "xterm-256color"
    screen = pyte.Screen(COLUMNS, LINES)
    stream = pyte.ByteStream(screen)
    screens: list[list[str]] = []
    try:
        process = subprocess.Popen([sys.executable, "-m", "imagesync.cli.main", *argv], stdin=subprocess.DEVNULL,
                                   stdout=terminal if stdout is None else stdout, stderr=terminal, env=env)
        os.close(terminal)
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # the terminal closed: the process is gone
                break
            if not chunk:
                break
            stream.feed(chunk)
            screens.append([line.rstrip() for line in screen.display])
        code = process.wait(timeout=120)
    finally:
        os.close(controller)
    return code, screens


def mixed_lines(screen: list[str]) -> list[str]:
    """Lines where a log record and the display share the line."""
    return [line for line in screen if LOG_RECORD.search(line) and (OVERALL.search(line) or BAR.search(line))]


def test_terminal_keeps_logs_above_a_whole_display(registry: RegistryProcess, registry2: RegistryProcess,
                                                   tmp_path: Path) -> None:
    count = 5
    argv = write_config(tmp_path, registry, registry2, count, layers=(3 << 20, 2 << 20), missing=True)
    # Two uploads at a time and a request rate limit: the run lasts a few seconds, several frames each.
    code, screens = run_in_terminal([*argv, "--proc", "2", "--qps", "15"])
    assert code == 1  # the missing image failed
    total = count + 1
    for screen in screens:
        assert not mixed_lines(screen), "\n".join(screen)

    def overall_row(screen: list[str]) -> int | None:
        rows = [i for i, line in enumerate(screen) if OVERALL.search(line) and BAR.search(line)]
        return rows[0] if rows else None

    with_display = [s for s in screens if overall_row(s) is not None]
    assert with_display, "\n".join(screens[-1])
    # The overall bar counts images done of the total, with bytes, a rate and (mid-run) an ETA.
    assert any(f"/{total}" in s[overall_row(s) or 0] for s in with_display)
    assert any(re.search(r"images \d/6 .*MiB .*MiB/s +ETA \d+:\d\d:\d\d", s[overall_row(s) or 0])
               for s in with_display), "\n".join(with_display[-1])
    # Log records sit above the display, none below it.
    frames_with_logs_above = 0
    for screen in with_display:
        row = overall_row(screen) or 0
        assert not any(LOG_RECORD.search(line) for line in screen[row:]), "\n".join(screen)
        frames_with_logs_above += any(LOG_RECORD.search(line) for line in screen[:row])
    assert frames_with_logs_above, "\n".join(with_display[-1])
    # Uploads in flight get their own bars: repository, short digest, bytes of size; failures are listed.
    assert any(TRANSFER.search(line) and BAR.search(line) for s in with_display for line in s), \
        "\n".join(with_display[-1])
    assert any(f"failed {registry.host}/tty/missing:1" in line for s in with_display
               for line in s[(overall_row(s) or 0) + 1:])
    # The end: every log record still on screen once, the final bar whole, the summary after it.
    final = screens[-1]
    for i in range(count):
        assert sum(bool(LOG_RECORD.search(line)) and f"/tty/app{i}:1 ->" in line for line in final) == 1, \
            "\n".join(final)
    assert any(f"images {total}/{total}" in line and BAR.search(line) for line in final), "\n".join(final)
    assert any(f"Images: {count} synced, 0 skipped (already up to date), 1 failed" in line for line in final)


def test_terminal_with_json_output_and_a_log_file(registry: RegistryProcess, registry2: RegistryProcess,
                                                  tmp_path: Path) -> None:
    """`imagesync sync --output json --log FILE | jq` on a terminal: bars on the screen, records in the file,
    the document alone on standard output."""
    argv = write_config(tmp_path, registry, registry2, 2)
    with (tmp_path / "stdout").open("wb") as out:
        code, screens = run_in_terminal([*argv, "--output", "json", "--log", str(tmp_path / "sync.log"),
                                         "--qps", "15"], stdout=out.fileno())
    assert code == 0
    assert json.loads((tmp_path / "stdout").read_text())["imagesSynced"] == 2
    assert any("images 2/2" in line and BAR.search(line) for line in screens[-1]), "\n".join(screens[-1])
    assert not any(LOG_RECORD.search(line) for screen in screens for line in screen)
    records = (tmp_path / "sync.log").read_text().splitlines()
    assert records and all(LOG_RECORD.match(line) for line in records)
    assert sum(" INFO synced " in line for line in records) == 2 and "\x1b" not in "".join(records)


PROBE = """
import sys
import imagesync.cli.progress as progress
progress.LOG_INTERVAL = 0.3
from imagesync.cli.main import main
code = main(sys.argv[1:])
print("rich imported:", any(m == "rich" or m.startswith("rich.") for m in sys.modules), file=sys.stderr)
sys.exit(code)
"""


def test_no_terminal_gets_plain_lines_and_periodic_progress(registry: RegistryProcess, registry2: RegistryProcess,
                                                            tmp_path: Path) -> None:
    argv = write_config(tmp_path, registry, registry2, 3)
    started = time.monotonic()
    completed = subprocess.run([sys.executable, "-c", PROBE, *argv, "--proc", "1", "--qps", "15", "--output", "json"],
                               capture_output=True, text=True, timeout=120, check=False)
    assert completed.returncode == 0, completed.stderr
    elapsed = time.monotonic() - started
    # --output json: standard output is the result document and nothing else.
    result = json.loads(completed.stdout)
    assert result["imagesSynced"] == 3
    stderr = completed.stderr
    assert "\x1b[" not in stderr and "\r" not in stderr
    lines = stderr.splitlines()
    assert lines[-1] == "rich imported: False"
    records = lines[:-1]
    assert all(LOG_RECORD.match(line) for line in records), stderr
    progress = [line for line in records if " INFO progress: images " in line]
    assert progress, stderr
    assert elapsed > 1 and re.search(r"progress: images \d/3 \| blobs \d+ copied", progress[0]), stderr
    assert not any(BAR.search(line) for line in records)


def test_help_does_not_import_rich() -> None:
    probe = ("import sys\nfrom imagesync.cli.main import main\ntry:\n    main(['sync', '--help'])\n"
             "except SystemExit:\n    pass\nprint('rich imported:', 'rich' in sys.modules)")
    completed = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert completed.stdout.splitlines()[-1] == "rich imported: False"
