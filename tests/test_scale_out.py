"""bench/scale_out.py's pure parts: it reads the worker's real closing summary, counts write requests from the
testbed's request kinds, and its paper model picks the binding limit. The bench itself asserts its runs (every
shard exits 0 with no failed image, every tag reaches the target); timing is not tested here.
"""

from __future__ import annotations

import pytest
from test_latency_proxy import bench_module

from imagesync.cli.progress import summary
from imagesync.engine.stats import ImageOutcome, SyncStats

scale_out = bench_module("scale_out")


def test_the_worker_summary_is_read_back_with_its_counts() -> None:
    stats = SyncStats(images_total=4, blobs_copied=7, blobs_mounted=2, blobs_skipped=3, bytes_copied=1000)
    stats.record(ImageOutcome("src/a:1", "dst/a:1", "synced"))
    stats.record(ImageOutcome("src/a:2", "dst/a:2", "synced"))
    stats.record(ImageOutcome("src/b:1", "dst/b:1", "skipped"))
    stats.record(ImageOutcome("src/c:1", "dst/c:1", "failed", "manifest unknown"))
    stats.finished = stats.started + 2.0

    counts = scale_out.parse_summary(summary(stats))

    assert counts == {"synced": 2, "skipped": 1, "failed": 1, "total": 4,
                      "blobs_copied": 7, "blobs_mounted": 2, "blobs_skipped": 3}


def test_output_without_a_summary_is_refused() -> None:
    with pytest.raises(ValueError, match="no worker summary"):
        scale_out.parse_summary("imagesync worker: error: images.yaml: not found\n")


def test_write_requests_count_each_request_once_and_skip_reads() -> None:
    kinds = {"HEAD blob": 40, "HEAD blob 404": 30, "POST upload": 30, "PUT upload": 30, "PUT upload 201": 30,
             "PUT manifest": 10, "GET manifest": 10, "DELETE manifest": 1, "PATCH upload": 5, "total": 156}

    assert scale_out.write_requests(kinds) == 30 + 30 + 10 + 1 + 5


def limits(**overrides: float) -> object:
    values = {"cpu_s_per_image": 0.02, "cpu_s_per_byte": 0.0, "fixed_s_per_pod": 1.0, "pod_link_bps": 1e9,
              "shared_link_bps": 1e12, "ingest_bps": 1e12, "requests_per_s": 1e6}
    return scale_out.Limits(**{**values, **overrides})


def test_cpu_bound_work_shrinks_with_pods_until_a_quota_binds() -> None:
    work = scale_out.Workload(images=10_000, bytes=0.0, requests_per_image=1.0)
    quota = limits(requests_per_s=10.0)  # e.g. one PutImage per image at 10 per second

    one, one_bound = scale_out.model_seconds(work, limits(), 1)
    four, _ = scale_out.model_seconds(work, limits(), 4)
    capped, capped_bound = scale_out.model_seconds(work, quota, 100)

    assert (one, one_bound) == (pytest.approx(1.0 + 200.0), "pod CPU")
    assert four == pytest.approx(1.0 + 50.0)
    assert (capped, capped_bound) == (pytest.approx(1.0 + 1000.0), "request quota")


def test_bytes_are_bound_by_the_shared_link_or_the_ingest_whichever_is_slower() -> None:
    work = scale_out.Workload(images=10, bytes=100e9, requests_per_image=1.0)

    by_link = scale_out.model_seconds(work, limits(pod_link_bps=1e9, shared_link_bps=2e9), 8)
    by_ingest = scale_out.model_seconds(work, limits(pod_link_bps=1e9, ingest_bps=0.5e9), 8)

    assert by_link == (pytest.approx(1.0 + 50.0), "link")
    assert by_ingest == (pytest.approx(1.0 + 200.0), "registry ingest")
