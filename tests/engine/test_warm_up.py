"""While the planner lists the sources, the target registry is set up: its ``/v2/`` probe and the push token of
the first target repositories (engine.copy.Registries.warm_up). Through a distant link the first images
otherwise waited for both after the planning (bench/long_distance.py: 4 round trips); no request is added."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import yaml
from cli_helpers import auth_for
from watched import Watched

from imagesync.engine.config import load_auth
from imagesync.engine.copy import SyncOptions, sync, targets_to_warm_up
from imagesync.engine.reference import Repository
from imagesync.engine.rules import parse_rules
from imagesync.engine.transport import Endpoint
from testbed import seed
from testbed.registry import RegistryProcess


async def test_the_target_is_set_up_while_the_source_is_listed(registry: RegistryProcess,
                                                                token_registry: RegistryProcess,
                                                                tmp_path: Path) -> None:
    seed.push_image(registry, "warm/app", "1", seed="warm")
    seed.push_image(registry, "warm/app", "2", seed="warm-2")
    events: list[str] = []
    target_token = asyncio.Event()

    async def source(request: httpx.Request) -> None:
        if request.url.path.endswith("/tags/list"):
            # Held until the target's token is there: without the warm-up nobody asks for it before the
            # listing ends, and this gives up after 10 s (the run then fails: nothing was listed).
            await asyncio.wait_for(target_token.wait(), 10)
            events.append("source listed")

    async def target(request: httpx.Request) -> None:
        events.append(f"target {request.method} {request.url.path}")

    def transports(endpoint: Endpoint) -> httpx.AsyncBaseTransport:
        return Watched(source) if endpoint.host == registry.host else Watched(target)

    token_registry.token_server.clear_requests()
    auth_file = tmp_path / "auth.yaml"
    auth_file.write_text(yaml.safe_dump(auth_for(registry, token_registry)))
    rules, errors = parse_rules({f"{registry.host}/warm/app": f"{token_registry.host}/copy/app"})

    async def run() -> int:
        task = asyncio.create_task(sync(rules, errors, load_auth(str(auth_file)), SyncOptions(retries=0),
                                        transport_factory=transports))
        while not token_registry.token_server.requests:
            await asyncio.sleep(0.01)
            assert not task.done(), task.result()
        target_token.set()
        return (await task).count("synced")

    assert await run() == 2
    assert events.index("source listed") > events.index("target GET /v2/")
    # One token for the target, asked once, with push: what the copy's first request would have asked for.
    (fetch,) = token_registry.token_server.requests
    assert fetch.scopes == ("repository:copy/app:pull,push",)
    assert all(seed.manifest_exists(token_registry, "copy/app", tag) for tag in ("1", "2"))


def test_which_targets_are_set_up() -> None:
    rules, errors = parse_rules({
        "src.example/a": "dst.example/copy/a",
        "src.example/b": ["dst.example/copy/b", "dst.example/copy/a"],
        "src.example/team/": "other.example/mirror/",  # a prefix: its repositories are not known yet
        "src.example/c": "third.example/c",
    })
    assert not errors
    assert targets_to_warm_up(rules, 2) == [Repository("dst.example", "copy/a"), Repository("dst.example", "copy/b"),
                                            Repository("other.example", ""), Repository("third.example", "")]
    assert targets_to_warm_up(rules, 0) == [Repository("dst.example", ""), Repository("other.example", ""),
                                            Repository("third.example", "")]
