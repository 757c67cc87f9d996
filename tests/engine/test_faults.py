"""Faults lose nothing: resets, 5xx, 429 and corrupted bytes in front of real registries."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import yaml
from cli_helpers import auth_for
from faults import FaultPlan, FaultyTransport, TagPagingTransport, is_blob_get

from imagesync.engine.config import load_auth
from imagesync.engine.copy import SyncOptions, sync
from imagesync.engine.registry import RegistryClient
from imagesync.engine.rules import parse_rules
from imagesync.engine.stats import SyncStats
from imagesync.engine.transport import Endpoint, RegistryHTTP, RetryPolicy
from testbed import seed
from testbed.registry import RegistryProcess

FAST_RETRIES = RetryPolicy(attempts=6, base_delay=0.01, max_delay=0.05, max_retry_after=0.2)


async def run_with_faults(tmp_path: Path, registries: tuple[RegistryProcess, ...], images: dict[str, str],
                          plan: FaultPlan, **options: object) -> SyncStats:
    auth_file = tmp_path / "auth.yaml"
    auth_file.write_text(yaml.safe_dump(auth_for(*registries)))
    rules, errors = parse_rules(images)
    assert not errors

    def transport(endpoint: Endpoint) -> httpx.AsyncBaseTransport:
        return FaultyTransport(httpx.AsyncHTTPTransport(retries=0), plan)

    return await sync(rules, errors, load_auth(str(auth_file)),
                      SyncOptions(retry_policy=FAST_RETRIES, **options),  # type: ignore[arg-type]
                      transport_factory=transport)


async def test_resets_and_5xx_lose_nothing(registry: RegistryProcess, registry2: RegistryProcess,
                                           tmp_path: Path) -> None:
    images = [seed.push_image(registry, f"flaky/app{i}", "1", layers=(50_000, 20_000), seed=i) for i in range(6)]
    plan = FaultPlan(reset_rate=0.1, status_rate=0.1, statuses=(500, 502, 503))
    stats = await run_with_faults(tmp_path, (registry, registry2),
                                  {f"{registry.host}/flaky/app{i}:1": f"{registry2.host}/flaky/app{i}"
                                   for i in range(6)}, plan, proc=4)
    print(f"faults test_resets_and_5xx_lose_nothing: {json.dumps(dict(plan.injected))}")
    assert stats.failed() == []
    assert plan.injected["reset"] > 0 and sum(plan.injected[s] for s in ("500", "502", "503")) > 0
    for i, image in enumerate(images):
        assert seed.get_manifest(registry2, f"flaky/app{i}", "1")[2] == image.digest
        for blob in image.blobs:
            assert seed.blob_sha256(registry2, f"flaky/app{i}", blob.digest) == blob.digest


async def test_429_with_retry_after_is_honoured(registry: RegistryProcess, registry2: RegistryProcess,
                                                tmp_path: Path) -> None:
    image = seed.push_image(registry, "limited/app", "1", seed="429")
    plan = FaultPlan(status_rate=0.3, statuses=(429,), retry_after="0")
    stats = await run_with_faults(tmp_path, (registry, registry2),
                                  {f"{registry.host}/limited/app:1": f"{registry2.host}/limited/app"}, plan)
    print(f"faults test_429_with_retry_after_is_honoured: {json.dumps(dict(plan.injected))}")
    assert stats.failed() == [] and plan.injected["429"] > 0
    assert seed.get_manifest(registry2, "limited/app", "1")[2] == image.digest


async def test_corrupted_blob_is_never_committed_and_is_retried(registry: RegistryProcess,
                                                                registry2: RegistryProcess,
                                                                tmp_path: Path) -> None:
    image = seed.push_image(registry, "corrupt/app", "1", layers=(300_000,), seed="c")
    layer = image.blobs[-1]
    plan = FaultPlan(corrupt_first=2, only=is_blob_get)
    mark = registry2.log_mark()
    stats = await run_with_faults(tmp_path, (registry, registry2),
                                  {f"{registry.host}/corrupt/app:1": f"{registry2.host}/corrupt/app"}, plan)
    print(f"faults test_corrupted_blob_is_never_committed_and_is_retried: {json.dumps(dict(plan.injected))}")
    assert plan.injected["corrupt"] == 2
    assert stats.failed() == []
    assert seed.blob_sha256(registry2, "corrupt/app", layer.digest) == layer.digest
    # The manifest went up exactly once, after its blobs were verified.
    puts = [r for r in registry2.request_log(mark) if r.method == "PUT" and "/manifests/" in r.path]
    assert len(puts) == 1


async def test_persistent_corruption_fails_the_image_without_pushing_its_manifest(
        registry: RegistryProcess, registry2: RegistryProcess, tmp_path: Path) -> None:
    seed.push_image(registry, "broken/app", "1", layers=(10_000,), seed="b")
    plan = FaultPlan(corrupt_first=1000, only=is_blob_get)
    stats = await run_with_faults(tmp_path, (registry, registry2),
                                  {f"{registry.host}/broken/app:1": f"{registry2.host}/broken/app"}, plan,
                                  retries=1)
    print(f"faults test_persistent_corruption_fails_the_image_without_pushing_its_manifest: "
          f"{json.dumps(dict(plan.injected))}")
    (failure,) = stats.failed()
    assert "corrupted" in failure.reason
    assert not seed.manifest_exists(registry2, "broken/app", "1")


async def test_tag_listing_follows_link_pages(registry: RegistryProcess) -> None:
    tags = [f"t{i:02d}" for i in range(7)]
    for tag in tags:
        seed.push_image(registry, "paged/app", tag, seed="same")  # same content, 7 tags
    paging = TagPagingTransport(httpx.AsyncHTTPTransport(retries=0))
    http = RegistryHTTP(Endpoint(registry.host, insecure=True), transport=paging)
    try:
        listed = await RegistryClient(http).list_tags("paged/app", page_size=3)
    finally:
        await http.aclose()
    assert listed == tags
    assert paging.pages_served == 3


async def test_declined_mount_falls_back_to_an_upload(registry: RegistryProcess) -> None:
    """A registry that cannot mount (the blob is not in the `from` repository) opens an upload instead."""
    blob = seed.push_random_blob(registry, "has/blob", 100_000, "declined")
    http = RegistryHTTP(Endpoint(registry.host, insecure=True))
    client = RegistryClient(http)
    try:
        location = await client.mount_blob("new/repo", blob.digest, "empty/repo")
        assert location is not None  # declined: 202 with an upload location, not 201
        data = seed.random_bytes(100_000, "declined")

        async def body() -> AsyncIterator[bytes]:
            yield data

        await client.upload_blob("new/repo", location, blob.digest, blob.size, body())
    finally:
        await http.aclose()
    assert seed.blob_sha256(registry, "new/repo", blob.digest) == blob.digest
