"""The live progress line on a terminal, plain log lines elsewhere."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

import yaml
from cli_helpers import auth_for

from testbed import seed
from testbed.registry import RegistryProcess


def write_config(tmp_path: Path, registry: RegistryProcess, registry2: RegistryProcess, count: int) -> list[str]:
    for i in range(count):
        seed.push_image(registry, f"tty/app{i}", "1", seed=f"tty{i}")
    (tmp_path / "images.yaml").write_text(yaml.safe_dump(
        {f"{registry.host}/tty/app{i}:1": f"{registry2.host}/tty/app{i}" for i in range(count)}))
    (tmp_path / "auth.yaml").write_text(yaml.safe_dump(auth_for(registry, registry2)))
    # qps stretches the run past the first redraws (about 6 requests per image at 20/s).
    return [sys.executable, "-m", "imagesync.cli.main", "sync", "--images", str(tmp_path / "images.yaml"),
            "--auth", str(tmp_path / "auth.yaml"), "--proc", "1", "--qps", "20"]


def test_terminal_gets_a_redrawn_progress_line(registry: RegistryProcess, registry2: RegistryProcess,
                                               tmp_path: Path) -> None:
    command = write_config(tmp_path, registry, registry2, 4)
    controller, terminal = pty.openpty()
    try:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=terminal, stdin=subprocess.DEVNULL)
        os.close(terminal)
        output = b""
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # the terminal closed: the process is gone
                break
            if not chunk:
                break
            output += chunk
        assert process.wait(timeout=120) == 0
    finally:
        os.close(controller)
    text = output.decode(errors="replace")
    assert "\r\x1b[2K" in text and "images " in text and "/s" in text


def test_no_terminal_gets_no_control_characters(registry: RegistryProcess, registry2: RegistryProcess,
                                                tmp_path: Path) -> None:
    command = write_config(tmp_path, registry, registry2, 2)
    completed = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert completed.returncode == 0
    assert "\x1b[" not in completed.stderr and "Images: 2 synced" in completed.stdout
