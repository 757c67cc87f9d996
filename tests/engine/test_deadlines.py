"""A registry that accepts a request and never answers must not hang a sync: --timeout bounds each request,
--deadline the whole sync (images not finished by then fail with the reason "deadline exceeded", exit 1).

The stalled registry is a :class:`testbed.hostile.HostileServer` whose handler waits (it has read the request and
sends nothing); a good image between repositories of a real docker-registry goes in the same run.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from cli_helpers import auth_entry, run_sync

from imagesync.cli.main import EXIT_IMAGES_FAILED, build_parser, parse_duration
from imagesync.engine.transport import Endpoint, RegistryHTTP
from testbed import seed
from testbed.hostile import HostileServer, Received, Reply
from testbed.registry import RegistryProcess


class Stall:
    """Answers GET /v2/ (a registry), then holds every other request until released."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def __call__(self, request: Received) -> Reply:
        if request.path == "/v2/":
            return Reply(200, {"Content-Type": "application/json"}, b"{}")
        self.release.wait(60)
        return Reply(503)


pytestmark = pytest.mark.usefixtures("restore_logging")  # main() runs in-process here


def stalled_run(registry: RegistryProcess, tmp_path: Any, source: str, *flags: str,
                good_synced: bool = True) -> tuple[int, dict[str, Any], float, str]:
    good = seed.push_image(registry, "good/app", "1", seed="good")
    stall = Stall()
    with HostileServer(stall) as hostile:
        started = time.monotonic()
        try:
            code, result = run_sync(tmp_path, {f"{hostile.host}/{source}": f"{registry.host}/copied/stalled",
                                               f"{registry.host}/good/app:1": f"{registry.host}/copied/good"},
                                    {hostile.host: {"plainHTTP": True}, registry.host: auth_entry(registry)},
                                    "--retries", "0", *flags)
        finally:
            elapsed = time.monotonic() - started
            stall.release.set()
    if good_synced:
        assert seed.get_manifest(registry, "copied/good", "1")[2] == good.digest
        assert result["imagesSynced"] == 1 and result["imagesFailed"] == 1, result
    return code, result, elapsed, hostile.host


def test_a_stalled_registry_ends_by_the_deadline(registry: RegistryProcess, tmp_path: Any) -> None:
    code, result, elapsed, host = stalled_run(registry, tmp_path, "stalled/app:1", "--deadline", "3s")
    assert code == EXIT_IMAGES_FAILED
    assert elapsed < 15, elapsed  # 3 s, plus start-up and shutdown on a busy machine
    (failure,) = result["failedImages"]
    assert failure["source"] == f"{host}/stalled/app:1"
    assert failure["reason"] == "deadline exceeded (--deadline 3 s)", failure


def test_a_deadline_while_listing_tags_fails_the_rule(registry: RegistryProcess, tmp_path: Any) -> None:
    """A tag listing that stalls holds only its own rule: the other rules' images are copied meanwhile (each
    repository's images start once it is listed), and the stalled rule fails by the deadline."""
    code, result, elapsed, host = stalled_run(registry, tmp_path, "stalled/app", "--deadline", "3")
    assert code == EXIT_IMAGES_FAILED and elapsed < 15, elapsed
    reasons = {failure["source"]: failure["reason"] for failure in result["failedImages"]}
    assert reasons == {f"{host}/stalled/app -> {registry.host}/copied/stalled":
                       "deadline exceeded while planning (--deadline 3 s)"}, reasons


def test_timeout_bounds_each_request(registry: RegistryProcess, tmp_path: Any) -> None:
    code, result, elapsed, host = stalled_run(registry, tmp_path, "stalled/app:1", "--timeout", "0.5")
    assert code == EXIT_IMAGES_FAILED
    assert elapsed < 30, elapsed  # 5 attempts of 0.5 s and their backoff, not 5 x 120 s
    (failure,) = result["failedImages"]
    assert failure["reason"].startswith(f"GET {host}/v2/stalled/app/manifests/1: ReadTimeout"), failure


@pytest.mark.parametrize(("flag", "value"), [("--timeout", "0"), ("--timeout", "-1"), ("--timeout", "nan"),
                                             ("--timeout", "soon"), ("--deadline", "0"), ("--deadline", "5x"),
                                             ("--deadline", "m"), ("--deadline", "1m1m"), ("--deadline", "")])
def test_bad_values_are_refused_in_one_line(flag: str, value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["sync", flag, value])
    assert exit_info.value.code == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert f"argument {flag}: {value!r} is not a" in line, line


def test_durations() -> None:
    assert [parse_duration(text) for text in ("90", "90s", "15m", "2h", "1h30m", "1.5h", "2m30s")] == [
        90, 90, 900, 7200, 5400, 5400, 150]
    args = build_parser().parse_args(["sync", "--timeout", "30", "--deadline", "1h"])
    assert (args.timeout, args.deadline) == (30.0, 3600.0)
    defaults = build_parser().parse_args(["sync"])
    assert (defaults.timeout, defaults.deadline) == (None, None)


def test_messages_quote_absolute_urls_cleanly() -> None:
    """Upload locations are absolute URLs: a message names them as they are, not glued to the host."""
    http = RegistryHTTP(Endpoint("127.0.0.1:5000"))
    assert http._where("http://127.0.0.1:5000/v2/a/blobs/uploads/x?_state=secret") == \
        "http://127.0.0.1:5000/v2/a/blobs/uploads/x"
    assert http._where("/v2/a/tags/list?n=10") == "127.0.0.1:5000/v2/a/tags/list"
