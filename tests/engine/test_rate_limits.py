"""Bandwidth limit (--limit-rate / limitRate) and registry rate-limit etiquette (ratelimit-* headers).

The bucket and the quota gate are checked with a fake clock (no timing assertions); the live tests check
that a limited sync completes with identical digests, and that a registry announcing a quota is never
sent more pulls in a window than it allows. Throughput accuracy is measured in bench/rate_limit.py.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import pytest
import yaml
from cli_helpers import auth_for, run_sync

from imagesync.engine.config import load_auth
from imagesync.engine.copy import SyncOptions, sync
from imagesync.engine.errors import ConfigError
from imagesync.engine.referrers import ReferrerOptions
from imagesync.engine.rules import parse_rules
from imagesync.engine.stats import SyncStats
from imagesync.engine.transport import (
    ByteBucket,
    Endpoint,
    Quota,
    QuotaGate,
    parse_quota,
    parse_rate,
    parse_retry_after,
)
from testbed import seed
from testbed.registry import RegistryProcess

MiB = 1024 * 1024


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# -- parsing -----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "rate"), [
    ("50MiB/s", 50 * MiB), ("50MiB", 50 * MiB), ("20M", 20e6), ("20MB/s", 20e6), ("512k", 512e3),
    ("512KiB/s", 512 * 1024), ("1.5GB/s", 1.5e9), ("2Gi", 2 * 1024**3), ("1000000", 1e6), ("10 mib / s", 10 * MiB),
])
def test_parse_rate(text: str, rate: float) -> None:
    assert parse_rate(text) == pytest.approx(rate)


@pytest.mark.parametrize("text", ["", "fast", "0", "0MiB/s", "-5M", "5 X/s", "5i", "nan", "inf", "1e9", "0.5"])
def test_parse_rate_refuses_with_one_clear_error(text: str) -> None:
    with pytest.raises(ValueError, match=r"rate|byte per second"):
        parse_rate(text)


def test_cli_flag_refuses_a_bad_rate(capsys: pytest.CaptureFixture[str]) -> None:
    from imagesync.cli.main import build_parser
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["sync", "--limit-rate", "50 parsecs"])
    assert exit_info.value.code == 2  # argparse's usage error, as for every bad flag value
    (line,) = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert "argument --limit-rate: " in line and "'50 parsecs' is not a rate" in line, line
    assert build_parser().parse_args(["sync", "--limit-rate", "50MiB/s"]).limit_rate == 50 * MiB


def test_auth_file_limit_rate(tmp_path: Path) -> None:
    auth = tmp_path / "auth.yaml"
    auth.write_text(yaml.safe_dump({"a.io": {"limitRate": "20MiB/s"}, "a.io/team": {"limitRate": 1000},
                                    "b.io": {}}))
    table = load_auth(str(auth))
    from imagesync.engine.reference import parse_repository
    assert table.limit_rate(parse_repository("a.io/x/y")) == 1000  # per registry host: the smallest
    assert table.limit_rate(parse_repository("b.io/x")) is None
    auth.write_text(yaml.safe_dump({"a.io": {"limitRate": "lots"}}))
    with pytest.raises(ConfigError, match=re.escape("'a.io': limitRate: 'lots' is not a rate")):
        load_auth(str(auth))


def test_retry_after_seconds_and_http_date() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    future = time.time() + 30
    for text in (time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(future)),
                 time.strftime("%a, %d %b %Y %H:%M:%S -0000", time.gmtime(future))):
        delay = parse_retry_after(text)
        assert delay is not None and 25 < delay <= 31, text
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past: at once


@pytest.mark.parametrize(("headers", "quota"), [
    ({"ratelimit-limit": "100;w=21600", "ratelimit-remaining": "76;w=21600"}, Quota(76, 100, 21600.0)),
    ({"RateLimit-Limit": "10", "RateLimit-Remaining": "3", "RateLimit-Reset": "20"}, Quota(3, 10, None, 20.0)),
    ({"RateLimit-Limit": "10, 10;w=1, 1000;w=3600", "RateLimit-Remaining": "4"}, Quota(4, 10, None)),
    ({"RateLimit": "limit=100, remaining=50, reset=30"}, Quota(50, 100, reset=30.0)),
    ({"ratelimit-limit": "100"}, None), ({}, None), ({"ratelimit-remaining": "lots"}, None),
])
def test_parse_quota(headers: dict[str, str], quota: Quota | None) -> None:
    assert parse_quota(httpx.Headers(headers)) == quota


# -- the bandwidth bucket, on a fake clock -------------------------------------------------------------

def test_bucket_burst_then_debt() -> None:
    clock = FakeClock()
    bucket = ByteBucket(1000, burst=100, clock=clock)
    assert bucket.reserve(100) == 0.0  # the burst
    assert bucket.reserve(100) == pytest.approx(0.1)
    assert bucket.reserve(500) == pytest.approx(0.6)  # queued behind the earlier debt
    clock.now += 100  # idle: refills to the burst only, never more
    assert bucket.reserve(100) == 0.0
    assert bucket.reserve(1) == pytest.approx(0.001)


def test_bucket_long_run_rate_is_the_limit_for_many_transfers() -> None:
    """Four transfers with different chunk sizes share one bucket; each waits what it is told."""
    clock = FakeClock()
    bucket = ByteBucket(50 * MiB, clock=clock)
    start = clock.now
    ready = [start] * 4
    sizes = [256 * 1024, 64 * 1024, 16 * 1024, 1_000_003]
    moved = 0
    while clock.now - start < 30:
        i = min(range(4), key=lambda k: ready[k])
        clock.now = max(clock.now, ready[i])
        ready[i] = clock.now + bucket.reserve(sizes[i])
        moved += sizes[i]
    rate = moved / (clock.now - start)
    assert rate == pytest.approx(50 * MiB, rel=0.02)


# -- the quota gate, on a fake clock -----------------------------------------------------------------

def test_gate_is_open_until_a_quota_is_announced() -> None:
    gate = QuotaGate(clock=FakeClock())
    assert all(gate.reserve()[0] == 0 for _ in range(100))
    assert gate.counts("GET", "/v2/a/manifests/1") and not gate.counts("HEAD", "/v2/a/manifests/1")
    assert not gate.counts("GET", "/v2/a/blobs/sha256:ab")


def test_gate_stops_at_zero_and_reopens_at_the_reset() -> None:
    clock = FakeClock()
    gate = QuotaGate(clock=clock)
    gate.observe(Quota(3, 3, window=2.0), path="/v2/")
    for _ in range(3):
        wait, generation = gate.reserve()
        assert wait == 0 and generation >= 0
        gate.release()
    wait, generation = gate.reserve()
    assert generation == -1 and wait == pytest.approx(2.0)  # no fourth pull in this window
    clock.now += 1.0
    assert gate.reserve() == (pytest.approx(1.0), -1)
    clock.now += 1.0  # the window has reset: the limit again, not a rush of every waiting request
    granted = [gate.reserve() for _ in range(4)]
    assert [g[1] >= 0 for g in granted] == [True, True, True, False]


def test_gate_counts_requests_in_flight_and_ignores_late_higher_numbers() -> None:
    clock = FakeClock()
    gate = QuotaGate(clock=clock)
    generations = [gate.reserve()[1] for _ in range(3)]  # sent before any quota was known
    gate.observe(Quota(3, 10, window=60.0), method="GET", path="/v2/a/manifests/1", counted=True,
                 generation=generations[0])
    gate.release()
    # 3 left minus the 2 others still in flight (the registry may not have counted them yet).
    assert [gate.reserve()[1] >= 0 for _ in range(2)] == [True, False]
    gate.observe(Quota(9, 10, window=60.0), counted=True, generation=generations[1])  # an older answer
    gate.release()
    assert gate.reserve()[1] == -1


def test_gate_learns_what_counts_and_a_429_closes_it_until_retry_after() -> None:
    clock = FakeClock()
    gate = QuotaGate(clock=clock)
    gate.observe(None, status=429, retry_after=5)  # no quota known: plain retries handle it, as before
    assert gate.reserve()[1] >= 0
    gate.release()
    gate.observe(Quota(50, 100, window=60.0), method="GET", path="/v2/a/blobs/sha256:ab")
    assert gate.counts("GET", "/v2/a/blobs/sha256:cd")
    gate.observe(None, status=429, retry_after=5)
    wait, generation = gate.reserve()
    assert generation == -1 and wait >= 5


def test_gate_uses_the_announced_reset() -> None:
    clock = FakeClock()
    gate = QuotaGate(clock=clock)
    gate.observe(Quota(0, 10, window=3600.0, reset=4.0))
    assert gate.reserve() == (pytest.approx(4.0), -1)


# -- live: a limited sync and a registry announcing a quota ---------------------------------------------

def test_limited_sync_completes_with_identical_digests(registry: RegistryProcess, registry2: RegistryProcess,
                                                      tmp_path: Path) -> None:
    images = [seed.push_image(registry, f"slow/app{i}", "1", layers=(300_000, 50_000), seed=f"bw{i}")
              for i in range(3)]
    auth = auth_for(registry, registry2)
    auth[registry2.host]["limitRate"] = "4MiB/s"  # the target's own limit beside --limit-rate for the source
    code, result = run_sync(tmp_path, {f"{registry.host}/slow/app{i}:1": f"{registry2.host}/slow/app{i}"
                                       for i in range(3)}, auth, "--limit-rate", "2MiB/s", "--qps", "200")
    assert code == 0, result
    assert result["imagesSynced"] == 3 and result["bytesCopied"] >= 3 * 350_000
    for i, image in enumerate(images):
        assert seed.get_manifest(registry2, f"slow/app{i}", "1")[2] == image.digest
        for blob in image.blobs:
            assert seed.blob_sha256(registry2, f"slow/app{i}", blob.digest) == blob.digest


class QuotaRegistry(httpx.AsyncBaseTransport):
    """In front of a real registry: a quota of ``limit`` pulls (manifest GETs) per fixed window of
    ``window`` seconds from the first request, announced on every answer; a pull over quota gets 429.
    Every pull is logged with the time it arrived."""

    def __init__(self, inner: httpx.AsyncBaseTransport, limit: int, window: float, style: str) -> None:
        self._inner = inner
        self.limit, self.window, self.style = limit, window, style
        self.started: float | None = None
        self.pulls: list[float] = []
        self.refused = 0

    def _window_of(self, when: float) -> int:
        assert self.started is not None
        return int((when - self.started) // self.window)

    def _headers(self, now: float) -> dict[str, str]:
        used = sum(1 for t in self.pulls if self._window_of(t) == self._window_of(now))
        remaining = max(0, self.limit - used)
        if self.style == "dockerhub":
            w = f";w={self.window:g}"
            return {"ratelimit-limit": f"{self.limit}{w}", "ratelimit-remaining": f"{remaining}{w}"}
        assert self.started is not None
        reset = self.window - ((now - self.started) % self.window)
        return {"RateLimit-Limit": str(self.limit), "RateLimit-Remaining": str(remaining),
                "RateLimit-Reset": f"{max(1, int(reset + 0.999))}"}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        now = time.monotonic()
        if self.started is None:
            self.started = now
        if request.method == "GET" and "/manifests/" in request.url.path:
            used = sum(1 for t in self.pulls if self._window_of(t) == self._window_of(now))
            if used >= self.limit:
                self.refused += 1
                return httpx.Response(429, headers=self._headers(now), request=request,
                                      json={"errors": [{"code": "TOOMANYREQUESTS", "message": "quota"}]})
            self.pulls.append(now)
        response = await self._inner.handle_async_request(request)
        response.headers.update(self._headers(time.monotonic()))
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


@pytest.mark.parametrize("style", ["dockerhub", "ietf"])
async def test_registry_announcing_remaining_3_gets_no_fourth_pull_in_the_window(
        registry: RegistryProcess, registry2: RegistryProcess, tmp_path: Path, style: str) -> None:
    images = [seed.push_image(registry, f"quota/app{i}", "1", seed=f"q{style}{i}") for i in range(5)]
    auth_file = tmp_path / "auth.yaml"
    auth_file.write_text(yaml.safe_dump(auth_for(registry, registry2)))
    rules, errors = parse_rules({f"{registry.host}/quota/app{i}:1": f"{registry2.host}/quota/app{i}"
                                 for i in range(5)})
    proxy = QuotaRegistry(httpx.AsyncHTTPTransport(retries=0), limit=3, window=2.0, style=style)

    def transport(endpoint: Endpoint) -> httpx.AsyncBaseTransport | None:
        return proxy if endpoint.host == registry.host else None

    stats = await sync(rules, errors, load_auth(str(auth_file)),
                       SyncOptions(proc=5, referrers=ReferrerOptions(enabled=False)), SyncStats(),
                       transport_factory=transport)
    assert stats.failed() == []
    assert proxy.refused == 0  # never a pull over the quota, so never a 429
    per_window: dict[int, int] = {}
    for when in proxy.pulls:
        per_window[proxy._window_of(when)] = per_window.get(proxy._window_of(when), 0) + 1
    assert len(proxy.pulls) >= 5 and max(per_window.values()) <= 3, per_window
    for i, image in enumerate(images):
        assert seed.get_manifest(registry2, f"quota/app{i}", "1")[2] == image.digest
    assert stats.quotas[registry.host]["limit"] == 3
    assert "registryQuotas" in stats.snapshot()


def test_summary_and_result_report_the_announced_quota() -> None:
    from imagesync.cli.progress import summary
    stats = SyncStats()
    assert "registryQuotas" not in stats.result() and "quota" not in summary(stats)
    stats.quotas = {"registry-1.docker.io": Quota(76, 100, 21600.0).as_dict()}
    assert "Request quota of registry-1.docker.io: 76 of 100 per 6:00:00 left" in summary(stats)
    assert stats.result()["registryQuotas"] == {"registry-1.docker.io": {"remaining": 76, "limit": 100,
                                                                         "windowSeconds": 21600.0}}
