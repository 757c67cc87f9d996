"""Requests per image, counted from both registries' access logs (issue 13: the 1000-tag set spent 11 requests
and 6 round trips per image where a push needs 5).

- A target repository with TARGET_LIST_MIN_IMAGES or more images in the run is listed once (tags/list): a tag it
  does not list gets no manifest HEAD, and for a listed tag the target's and the source's HEADs go out together.
- A blob of at most SPECULATIVE_READ_BYTES is read from the source while the target is asked for it (HEAD) and
  its upload opened (POST); a bigger one is read only when the target lacks it. No blob the target has is
  uploaded again (tests/engine/test_kill9.py holds re-runs to that).
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from urllib.parse import parse_qs

import httpx
import pytest
import yaml
from cli_helpers import auth_for, run_sync

from imagesync.engine.config import load_auth
from imagesync.engine.copy import (
    SPECULATIVE_READ_BYTES,
    TARGET_LIST_MIN_IMAGES,
    SyncOptions,
    sync,
    target_lists_wanted,
)
from imagesync.engine.reference import parse_image
from imagesync.engine.rules import ImagePair, parse_rules
from testbed import seed
from testbed.registry import LoggedRequest, RegistryProcess

pytestmark = pytest.mark.usefixtures("restore_logging")  # main() runs in-process here

TAGS = TARGET_LIST_MIN_IMAGES + 2


def kinds(log: list[LoggedRequest]) -> Counter[str]:
    """Each request as "METHOD what" (what: manifests, blobs, uploads, tags), the /v2/ probe and tokens left out."""
    counted: Counter[str] = Counter()
    for request in log:
        what = next((w for w in ("manifests", "uploads", "blobs", "tags") if f"/{w}/" in request.path), None)
        if what is not None:
            counted[f"{request.method} {what}"] += 1
    return counted


def test_a_cold_copy_into_a_listed_repository_costs_what_a_push_costs(registry: RegistryProcess,
                                                                       registry2: RegistryProcess,
                                                                       tmp_path: Path) -> None:
    for tag in range(TAGS):
        seed.push_image(registry, "hub/many", str(tag), layers=(2048,), seed=f"many-{tag}")
    images = {f"{registry.host}/hub/many": f"{registry2.host}/mirror/many"}
    auth = auth_for(registry, registry2)
    source_mark, target_mark = registry.log_mark(), registry2.log_mark()
    code, result = run_sync(tmp_path, images, auth, name="cold")
    assert code == 0 and result["imagesSynced"] == TAGS, result
    # Per image: its manifest and two blobs (config, layer) read; two uploads opened and committed, a manifest put.
    # Plus one tags/list on each side (the source's to expand the rule, the target's to know what it lacks).
    assert kinds(registry.request_log(source_mark)) == {"GET tags": 1, "GET manifests": TAGS, "GET blobs": 2 * TAGS}
    assert kinds(registry2.request_log(target_mark)) == {"GET tags": 1, "HEAD blobs": 2 * TAGS,
                                                         "POST uploads": 2 * TAGS, "PUT uploads": 2 * TAGS,
                                                         "PUT manifests": TAGS}

    source_mark, target_mark = registry.log_mark(), registry2.log_mark()
    code, result = run_sync(tmp_path, images, auth, name="no-op")
    assert code == 0 and result["imagesSkipped"] == TAGS, result
    # Nothing written, no source GET but the listing: one HEAD per tag on each side.
    assert kinds(registry.request_log(source_mark)) == {"GET tags": 1, "HEAD manifests": TAGS}
    assert kinds(registry2.request_log(target_mark)) == {"GET tags": 1, "HEAD manifests": TAGS}


def test_few_images_keep_the_per_tag_head_and_a_big_blob_the_target_has_is_not_sent_again(
        registry: RegistryProcess, registry2: RegistryProcess, tmp_path: Path) -> None:
    big = SPECULATIVE_READ_BYTES + 1
    big_layer = seed.random_bytes(big, "big")
    image = seed.push_image(registry, "hub/app", "1", layers=(big_layer, 512), seed="app")
    # The target already has the image's big layer (a previous run stopped before its manifest, say).
    layer = seed.push_blob(registry2, "mirror/app", big_layer)
    assert layer.digest == image.blobs[1].digest
    images = {f"{registry.host}/hub/app:1": f"{registry2.host}/mirror/app"}
    auth = auth_for(registry, registry2)
    source_mark, target_mark = registry.log_mark(), registry2.log_mark()
    code, result = run_sync(tmp_path, images, auth, name="partial")
    assert code == 0 and result["imagesSynced"] == 1, result
    # No read of the big layer. The tags/list: the referrers' fallback tags (sha256-<hex>) are looked up in it.
    assert kinds(registry.request_log(source_mark)) == {"GET tags": 1, "GET manifests": 1, "GET blobs": 2}
    target = registry2.request_log(target_mark)
    # One image in the repository: no listing, its manifest HEAD; a HEAD and a POST per blob, the big layer's
    # session cancelled (present); the two small blobs committed.
    assert kinds(target) == {"HEAD manifests": 1, "HEAD blobs": 3, "POST uploads": 3, "DELETE uploads": 1,
                             "PUT uploads": 2, "PUT manifests": 1}
    committed = [parse_qs(r.query)["digest"][0] for r in target if r.method == "PUT" and "/uploads/" in r.path]
    assert sorted(committed) == sorted(b.digest for b in image.blobs if b.digest != layer.digest)


class RefusedListing(httpx.AsyncBaseTransport):
    """The registry, but every tags/list is refused (403 DENIED), as a registry that grants push and not list."""

    def __init__(self) -> None:
        self._inner = httpx.AsyncHTTPTransport(retries=0)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/tags/list"):
            return httpx.Response(403, json={"errors": [{"code": "DENIED", "message": "no listing"}]},
                                  request=request)
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


async def test_a_target_that_refuses_its_listing_gets_a_head_per_tag(
        registry: RegistryProcess, registry2: RegistryProcess, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    for tag in range(TAGS):
        seed.push_image(registry, "hub/many", str(tag), seed=f"many-{tag}")
    seed.push_image(registry2, "mirror/many", "0", seed="many-0")  # already there: the HEAD still finds it
    auth_file = tmp_path / "auth.yaml"
    auth_file.write_text(yaml.safe_dump(auth_for(registry, registry2)))
    rules, errors = parse_rules({f"{registry.host}/hub/many": f"{registry2.host}/mirror/many"})
    mark = registry2.log_mark()
    with caplog.at_level(logging.INFO, logger="imagesync.engine.copy"):
        stats = await sync(rules, errors, load_auth(str(auth_file)), SyncOptions(retries=0),
                           transport_factory=lambda endpoint: RefusedListing() if endpoint.host == registry2.host
                           else None)
    assert (stats.count("synced"), stats.count("skipped"), stats.count("failed")) == (TAGS - 1, 1, 0)
    assert kinds(registry2.request_log(mark))["HEAD manifests"] == TAGS
    (line,) = [r for r in caplog.records if "checking each tag of" in r.getMessage()]
    assert line.levelno == logging.INFO and "mirror/many" in line.getMessage()


def test_which_target_repositories_are_listed() -> None:
    def pair(target: str) -> ImagePair:
        return ImagePair(parse_image("src.example.com/a/b:1"), parse_image(target), "rule")

    many = [pair(f"dst.example.com/many:{i}") for i in range(TARGET_LIST_MIN_IMAGES)]
    few = [pair(f"dst.example.com/few:{i}") for i in range(TARGET_LIST_MIN_IMAGES - 1)]
    by_digest = [pair("dst.example.com/pinned@sha256:" + f"{i:064x}") for i in range(TARGET_LIST_MIN_IMAGES)]
    pairs = many + few + by_digest
    assert [str(r) for r in target_lists_wanted(pairs, skip_existing=False)] == ["dst.example.com/many"]
    # --skip-existing decides by the listing: every repository with a tagged image is listed.
    assert [str(r) for r in target_lists_wanted(pairs, skip_existing=True)] == ["dst.example.com/many",
                                                                                 "dst.example.com/few"]
