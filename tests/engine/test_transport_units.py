"""Small pure pieces of the HTTP layer: challenge parsing, Retry-After, the rate limiter, progress text."""

from __future__ import annotations

import asyncio
import time

from imagesync.cli.progress import progress_line, summary
from imagesync.engine.stats import ImageOutcome, SyncStats
from imagesync.engine.transport import RateLimiter, parse_challenge, parse_retry_after


def test_bearer_challenge_with_quoted_commas() -> None:
    challenge = parse_challenge(
        'Bearer realm="https://auth.example.com/token",service="registry.example.com",'
        'scope="repository:a/b:pull,push"')
    assert challenge is not None and challenge.scheme == "bearer"
    assert challenge.params == {"realm": "https://auth.example.com/token", "service": "registry.example.com",
                                "scope": "repository:a/b:pull,push"}
    basic = parse_challenge('Basic realm="Registry Realm"')
    assert basic is not None and basic.scheme == "basic"
    assert parse_challenge("") is None


def test_retry_after_seconds_and_dates() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("garbage") is None
    in_two_seconds = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 2))
    delay = parse_retry_after(in_two_seconds)
    assert delay is not None and 0 <= delay <= 2.5


async def test_rate_limiter_spaces_requests() -> None:
    limiter = RateLimiter(qps=50)
    started = time.monotonic()
    await asyncio.gather(*(limiter.acquire() for _ in range(11)))
    # 11 starts at 50/s need at least 10 intervals of 20 ms (a lower bound: cannot flake on a slow machine).
    assert time.monotonic() - started >= 0.19


def test_progress_line_and_summary_name_every_failure() -> None:
    stats = SyncStats(images_total=3, blobs_copied=2, bytes_copied=3 * 1024 * 1024)
    stats.record(ImageOutcome("r.io/a:1", "t.io/a:1", "synced"))
    stats.record(ImageOutcome("r.io/b:1", "t.io/b:1", "skipped"))
    stats.record(ImageOutcome("r.io/c:1", "t.io/c:1", "failed", "403 denied: requested access is denied"))
    assert progress_line(stats).startswith("images 3/3 | 1 failed | blobs 2 copied")
    text = summary(stats)
    assert "Images: 1 synced, 1 skipped (already up to date), 1 failed, 3 total" in text
    assert "r.io/c:1 -> t.io/c:1: 403 denied: requested access is denied" in text
