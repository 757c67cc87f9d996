"""Round trips the copy overlaps instead of chaining (each one a round trip less per image through a distant link).

- An index the target lacks: each child's GET from the source goes out together with the child's HEAD at the
  target, not after its answer. When the target has the index's tag (an update), a child is still checked
  before it is read: a child the target has is not pulled.
- An image being copied: the source's referrers listing goes out during the copy, not after the push.

Each test holds one side's request until the other side has been asked: chained, the run would wait out the
hold's 10 s and fail.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import yaml
from cli_helpers import auth_for
from watched import Watched

from imagesync.engine.config import load_auth
from imagesync.engine.copy import SyncOptions, sync
from imagesync.engine.rules import parse_rules
from imagesync.engine.transport import Endpoint
from testbed import seed
from testbed.registry import RegistryProcess

Hook = Callable[[httpx.Request], Awaitable[None]]


async def copy_watched(source: RegistryProcess, target: RegistryProcess, tmp_path: Path, rule: tuple[str, str],
                       on_source: Hook, on_target: Hook) -> None:
    """Run one rule (source path -> target path) with each side's requests seen by its hook; the copy succeeds."""
    def transports(endpoint: Endpoint) -> httpx.AsyncBaseTransport:
        return Watched(on_source) if endpoint.host == source.host else Watched(on_target)

    auth_file = tmp_path / "auth.yaml"
    auth_file.write_text(yaml.safe_dump(auth_for(source, target)))
    rules, errors = parse_rules({f"{source.host}/{rule[0]}": f"{target.host}/{rule[1]}"})
    stats = await sync(rules, errors, load_auth(str(auth_file)), SyncOptions(retries=0), transport_factory=transports)
    assert stats.count("synced") == 1, stats.failed()


async def test_children_of_a_new_index_are_read_without_waiting_for_their_heads(
        registry: RegistryProcess, registry2: RegistryProcess, tmp_path: Path) -> None:
    index = seed.push_index(registry, "multi/app", "1", seed="children")
    children = {child.digest for child in index.children}
    read: set[str] = set()
    all_read = asyncio.Event()
    source_gets: list[str] = []

    async def source(request: httpx.Request) -> None:
        reference = request.url.path.rsplit("/", 1)[-1]
        if request.method == "GET" and reference in children:
            read.add(reference)
            if read == children:
                all_read.set()
        if request.method == "GET" and "/manifests/" in request.url.path:
            source_gets.append(reference)

    async def target(request: httpx.Request) -> None:
        reference = request.url.path.rsplit("/", 1)[-1]
        if request.method == "HEAD" and reference in children:
            # Held until every child was asked of the source: reading them only after these answers would
            # wait here for 10 s and fail.
            await asyncio.wait_for(all_read.wait(), 10)

    await copy_watched(registry, registry2, tmp_path, ("multi/app:1", "copy/app"), source, target)
    assert seed.manifest_exists(registry2, "copy/app", "1")

    # The index over a tag the target has, for another image (an update): the children are checked first,
    # found (the first copy pushed them), and not read.
    seed.push_image(registry2, "copy/app", "2", seed="older")
    source_gets.clear()
    await copy_watched(registry, registry2, tmp_path, ("multi/app:1", "copy/app:2"), source, target)
    assert not children & set(source_gets), source_gets


async def test_an_image_s_referrers_are_listed_while_it_is_copied(
        registry: RegistryProcess, registry2: RegistryProcess, tmp_path: Path) -> None:
    seed.push_image(registry, "refs/app", "1", seed="refs")
    listed = asyncio.Event()

    async def source(request: httpx.Request) -> None:
        if "/referrers/" in request.url.path:
            listed.set()

    async def target(request: httpx.Request) -> None:
        if request.method == "PUT" and request.url.path.endswith("/manifests/1"):
            await asyncio.wait_for(listed.wait(), 10)  # the image's push waits for its referrers' listing

    await copy_watched(registry, registry2, tmp_path, ("refs/app:1", "copy/refs"), source, target)
    assert seed.manifest_exists(registry2, "copy/refs", "1")
