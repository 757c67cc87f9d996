"""A corrupted blob is never committed by us: the target's access log shows no ``PUT ?digest=`` for a
corrupted attempt, only the one for the good copy.

The registry checks the digest on commit too, so a sync without our own sha256 check still ends with the
right blob at the target: that outcome alone cannot tell whether we checked. The access log can.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import yaml
from cli_helpers import auth_for
from faults import FaultPlan, FaultyTransport, is_blob_get

from imagesync.engine.config import load_auth
from imagesync.engine.copy import SyncOptions, sync
from imagesync.engine.registry import MONOLITHIC_MAX
from imagesync.engine.rules import parse_rules
from imagesync.engine.stats import SyncStats
from imagesync.engine.transport import Endpoint, RetryPolicy
from testbed import seed
from testbed.registry import RegistryProcess

FAST_RETRIES = RetryPolicy(attempts=6, base_delay=0.01, max_delay=0.05)


async def sync_through_faults(tmp_path: Path, source: RegistryProcess, target: RegistryProcess,
                              images: dict[str, str], plan: FaultPlan, corrupted: str, retries: int = 2) -> SyncStats:
    auth_file = tmp_path / "auth.yaml"
    auth_file.write_text(yaml.safe_dump(auth_for(source, target)))
    rules, errors = parse_rules(images)
    assert not errors

    def transport(endpoint: Endpoint) -> httpx.AsyncBaseTransport:
        return FaultsOnlyFor(plan, gets_of(corrupted))

    return await sync(rules, errors, load_auth(str(auth_file)),
                      SyncOptions(retry_policy=FAST_RETRIES, retries=retries), transport_factory=transport)


class FaultsOnlyFor(httpx.AsyncBaseTransport):
    """Sends the requests ``only`` selects through the fault plan, the rest straight to the registry
    (FaultyTransport corrupts every blob GET; the config is fetched too, and would fail first)."""

    def __init__(self, plan: FaultPlan, only: Callable[[httpx.Request], bool]) -> None:
        self._direct = httpx.AsyncHTTPTransport(retries=0)
        self._faulty = FaultyTransport(self._direct, plan)
        self._only = only

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await (self._faulty if self._only(request) else self._direct).handle_async_request(request)

    async def aclose(self) -> None:
        await self._direct.aclose()


def gets_of(digest: str) -> Callable[[httpx.Request], bool]:
    return lambda request: is_blob_get(request) and request.url.path.endswith(f"/blobs/{digest}")


def digest_puts(target: RegistryProcess, since: int, digest: str) -> list[int]:
    """Statuses of the ``PUT ?digest=`` requests that committed (or tried to commit) ``digest``."""
    return [r.status for r in target.request_log(since)
            if r.method == "PUT" and f"digest={digest}" in r.query.replace("%3A", ":")]


# Both upload paths: one PUT ?digest= carrying the blob (small blobs, read and verified whole first), and PATCH then
# an empty PUT ?digest= (big ones).
BLOB_SIZES = [
    pytest.param(300_000, id="monolithic-put"),
    pytest.param(MONOLITHIC_MAX + 100_000, id="patch-then-put"),
]


@pytest.mark.parametrize("size", BLOB_SIZES)
async def test_a_corrupted_attempt_sends_no_commit(registry: RegistryProcess, registry2: RegistryProcess,
                                                   tmp_path: Path, size: int) -> None:
    image = seed.push_image(registry, "corrupt/app", "1", layers=(size,), seed="c")
    layer = image.blobs[-1]
    plan = FaultPlan(corrupt_first=2, only=is_blob_get)
    mark = registry2.log_mark()
    stats = await sync_through_faults(tmp_path, registry, registry2,
                                      {f"{registry.host}/corrupt/app:1": f"{registry2.host}/corrupt/app"}, plan,
                                      layer.digest)
    print(f"faults test_a_corrupted_attempt_sends_no_commit[{size}]: {json.dumps(dict(plan.injected))}")
    assert plan.injected["corrupt"] == 2
    assert stats.failed() == []
    # Two corrupted attempts, then the good one: one commit, and it succeeded.
    assert digest_puts(registry2, mark, layer.digest) == [201]
    assert seed.blob_sha256(registry2, "corrupt/app", layer.digest) == layer.digest


async def test_persistent_corruption_is_reported_as_ours_not_the_registrys(
        registry: RegistryProcess, registry2: RegistryProcess, tmp_path: Path) -> None:
    """The failure names the corruption we detected (our digest), not a registry's commit refusal."""
    image = seed.push_image(registry, "broken/app", "1", layers=(MONOLITHIC_MAX + 1000,), seed="b")
    layer = image.blobs[-1]
    plan = FaultPlan(corrupt_first=1000, only=is_blob_get)
    mark = registry2.log_mark()
    stats = await sync_through_faults(tmp_path, registry, registry2,
                                      {f"{registry.host}/broken/app:1": f"{registry2.host}/broken/app"}, plan,
                                      layer.digest, retries=1)
    print(f"faults test_persistent_corruption_is_reported_as_ours_not_the_registrys: "
          f"{json.dumps(dict(plan.injected))}")
    (failure,) = stats.failed()
    assert f"blob {layer.digest} from {registry.host}/broken/app arrived corrupted" in failure.reason
    assert "DIGEST_INVALID" not in failure.reason  # the registry never got to say it
    assert digest_puts(registry2, mark, layer.digest) == []
    assert not seed.manifest_exists(registry2, "broken/app", "1")
