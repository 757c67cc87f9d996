"""Rules that cannot be planned are reported by one shard only, so a sharded run counts each failure once.

Every shard plans the same rules; if each reported the planning failures, a run of N shards would show
them N times in status.progress.imagesFailed (and in failedImagesTotal).
"""

from __future__ import annotations

from pathlib import Path

import yaml
from cli_helpers import auth_for

from imagesync.controller.status import fold_progress
from imagesync.engine.config import load_auth
from imagesync.engine.copy import SyncOptions, sync
from imagesync.engine.rules import parse_rules
from imagesync.engine.stats import SyncStats
from imagesync.engine.transport import RetryPolicy
from imagesync.worker.main import progress_report
from testbed import seed
from testbed.registry import RegistryProcess

SHARDS = 3


async def test_planning_failures_are_counted_once_over_all_shards(registry: RegistryProcess,
                                                                  registry2: RegistryProcess,
                                                                  tmp_path: Path) -> None:
    for i in range(4):
        seed.push_image(registry, f"ok/app{i}", "1", seed=i)
    images: dict[str, object] = {f"{registry.host}/ok/app{i}:1": f"{registry2.host}/ok/app{i}" for i in range(4)}
    images[f"{registry.host}/no/such"] = f"{registry2.host}/no/such"  # all tags of a missing repository
    images[f"{registry.host}/bad rule:1"] = f"{registry2.host}/x"  # not a valid reference
    rules, errors = parse_rules(images)
    assert len(errors) == 1
    auth_file = tmp_path / "auth.yaml"
    auth_file.write_text(yaml.safe_dump(auth_for(registry, registry2)))
    options = SyncOptions(retries=0, retry_policy=RetryPolicy(attempts=1))

    shards: list[SyncStats] = []
    for index in range(SHARDS):
        shards.append(await sync(rules, errors, load_auth(str(auth_file)), options,
                                 shard_index=index, shard_count=SHARDS))

    failed = [outcome.source for stats in shards for outcome in stats.failed()]
    assert len(failed) == 2, failed  # each failure names its rule
    assert any(f"{registry.host}/no/such" in text for text in failed)
    assert any(f"{registry.host}/bad rule:1" in text for text in failed)
    assert sum(len(stats.failed()) for stats in shards[1:]) == 0  # shard 0 reports them
    assert sum(stats.images_total for stats in shards) == 4 + 2
    # As the status shows it: the shards' reports folded.
    folded = fold_progress({i: progress_report(stats, i, done=True) for i, stats in enumerate(shards)}, SHARDS)
    assert folded["progress"]["imagesFailed"] == 2 and folded["failedImagesTotal"] == 2
    assert folded["progress"]["imagesSynced"] == 4 and folded["progress"]["imagesTotal"] == 6
    assert folded["progress"]["percent"] == 100.0
