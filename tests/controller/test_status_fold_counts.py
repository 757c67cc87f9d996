"""The status fold sums every counter of every shard, failures included (pure; no cluster, no registry).

The key list is spelled out here rather than taken from status.COUNTERS: a counter dropped from the fold's
own list must fail this test, not shrink it.
"""

from __future__ import annotations

from typing import Any

from imagesync.controller.status import final_phase, fold_progress

SUMMED = ("imagesTotal", "imagesSynced", "imagesSkipped", "imagesFailed", "blobsCopied", "blobsMounted",
          "blobsSkipped", "bytesCopied", "referrersCopied", "referrersSkipped", "referrersFailed",
          "imagesSkippedUnsigned")


def report(base: int, done: bool = True) -> dict[str, Any]:
    """Distinct values per key and shard, so a key folded from the wrong field shows too."""
    values = {key: base + 10 * position for position, key in enumerate(SUMMED)}
    values["imagesTotal"] = values["imagesSynced"] + values["imagesSkipped"] + values["imagesFailed"]
    return {**values, "done": done, "failedImagesTotal": values["imagesFailed"]}


def test_every_counter_is_the_sum_of_the_shards() -> None:
    shards = {0: report(1), 1: report(2), 2: report(3)}
    progress = fold_progress(shards, 3)["progress"]
    for key in SUMMED:
        assert progress[key] == sum(r[key] for r in shards.values()), key


def test_failed_images_count_as_done_and_decide_the_phase() -> None:
    shards: dict[int, dict[str, Any]] = {
        0: {"imagesTotal": 4, "imagesSynced": 3, "imagesFailed": 1, "failedImagesTotal": 1, "done": True,
            "failedImages": [{"source": "a/b:1", "target": "c/b:1", "reason": "no"}]},
        1: {"imagesTotal": 2, "imagesSynced": 0, "imagesFailed": 2, "failedImagesTotal": 2, "done": True}}
    folded = fold_progress(shards, 2)
    assert folded["progress"]["imagesFailed"] == 3
    assert folded["failedImagesTotal"] == 3
    assert folded["progress"]["percent"] == 100.0  # 3 synced + 3 failed of 6
    assert [row["imagesFailed"] for row in folded["shards"]] == [1, 2]
    assert [row["imagesDone"] for row in folded["shards"]] == [4, 2]
    assert final_phase(folded["progress"], job_failed=False, all_reported_done=True) == "PartiallyFailed"


def test_only_failures_fold_to_a_failed_phase() -> None:
    folded = fold_progress({0: {"imagesTotal": 2, "imagesFailed": 2, "done": True}}, 1)
    assert folded["progress"]["imagesFailed"] == 2
    assert final_phase(folded["progress"], job_failed=False, all_reported_done=True) == "Failed"
