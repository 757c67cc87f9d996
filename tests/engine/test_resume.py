"""Huge layers on bad links (issue 12, point 3): broken reads and uploads resume, verified, with bounded loss.

Real docker-registry instances behind :class:`testbed.cutproxy.CutProxy`, which cuts connections every N bytes in
one direction and counts what crosses it, or plays a registry quirk that docker-registry cannot.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from imagesync.engine import blobs
from imagesync.engine.config import load_auth
from imagesync.engine.copy import SyncOptions, sync
from imagesync.engine.rules import parse_rules
from imagesync.engine.stats import SyncStats
from imagesync.engine.transport import RetryPolicy
from testbed import seed
from testbed.cutproxy import CutProxy, Reply, Request
from testbed.registry import RegistryProcess

MiB = 1024 * 1024
FAST_RETRIES = RetryPolicy(attempts=5, base_delay=0.01, max_delay=0.05)
Headers = list[tuple[str, str]]


async def sync_through(tmp_path: Path, source: str, target: str, images: dict[str, str],
                       **options: object) -> SyncStats:
    """``imagesync sync`` in-process over plain HTTP, from the ``source`` host to the ``target`` host."""
    auth_file = tmp_path / "auth.yaml"
    auth_file.write_text(yaml.safe_dump({source: {"plainHTTP": True}, target: {"plainHTTP": True}}))
    rules, errors = parse_rules(images)
    assert not errors
    return await sync(rules, errors, load_auth(str(auth_file)),
                      SyncOptions(retry_policy=FAST_RETRIES, **options))  # type: ignore[arg-type]


def assert_arrived(target: RegistryProcess, image: seed.SeededImage, repo: str) -> None:
    assert seed.get_manifest(target, repo, str(image.tag))[2] == image.digest
    for blob in image.blobs:
        assert seed.blob_sha256(target, repo, blob.digest) == blob.digest


def uploads_started(proxy: CutProxy) -> list[Request]:
    return [r for r in proxy.requests if r.method == "POST" and r.path.endswith("/blobs/uploads/")]


def status_gets(proxy: CutProxy) -> list[Request]:
    return [r for r in proxy.requests if r.method == "GET" and "/blobs/uploads/" in r.path]


async def cut_link_copy(registry: RegistryProcess, registry2: RegistryProcess, tmp_path: Path, size: int,
                        every: int) -> tuple[CutProxy, CutProxy, seed.SeededImage, float]:
    """Copy an image with one ``size`` layer, the source read and the target write each cut every ``every`` bytes
    (the target behind a request-buffering front, so that a cut upload leaves its session as it was)."""
    image = seed.push_image(registry, "huge/layer", "1", layers=(size,), seed=f"cut{size}")
    with CutProxy(registry.port or 0, cut_down_every=every) as source, \
            CutProxy(registry2.port or 0, cut_up_every=every, buffer_requests=True) as target:
        started = time.monotonic()
        stats = await sync_through(tmp_path, source.host, target.host,
                                   {f"{source.host}/huge/layer:1": f"{target.host}/huge/layer"})
        elapsed = time.monotonic() - started
    assert stats.failed() == [], stats.failed()
    assert_arrived(registry2, image, "huge/layer")
    return source, target, image, elapsed


def report(name: str, size: int, source: CutProxy, target: CutProxy, elapsed: float) -> None:
    print(f"{name}: {size / MiB:.0f} MiB layer in {elapsed:.1f} s; source read {source.bytes_down / MiB:.1f} MiB "
          f"({source.bytes_down / size:.2f}x, {source.cuts} cuts), target write {target.bytes_up / MiB:.1f} MiB "
          f"({target.bytes_up / size:.2f}x, {target.cuts} cuts), {len(uploads_started(target))} upload sessions, "
          f"{len(status_gets(target))} status GETs, {len(patches(target))} PATCHes")


def patches(proxy: CutProxy) -> list[Request]:
    return [r for r in proxy.requests if r.method == "PATCH"]


async def test_64_mib_layer_cut_every_8_mib_both_ways(registry: RegistryProcess, registry2: RegistryProcess,
                                                      tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The source read and the target write are each cut every 8 MiB: the layer arrives digest-identical, and
    fewer than twice its bytes cross either link. Chunks of 2 MiB: a cut costs about one chunk, and a chunk as long
    as the cut interval would be cut on every attempt."""
    monkeypatch.setattr(blobs, "CHUNK_SIZE", 2 * MiB)
    size = 64 * MiB
    source, target, image, elapsed = await cut_link_copy(registry, registry2, tmp_path, size, 8 * MiB)
    report("64 MiB / 8 MiB cuts", size, source, target, elapsed)
    assert source.cuts_down >= 8 and target.cuts_up >= 8  # the link really broke, on both sides
    assert source.bytes_down < 2 * size and target.bytes_up < 2 * size
    assert len(uploads_started(target)) == len(image.blobs)  # resumed in its session, never restarted


@pytest.mark.slow
async def test_1_gib_layer_cut_every_100_mib_both_ways(registry: RegistryProcess, registry2: RegistryProcess,
                                                       tmp_path: Path) -> None:
    """The same at scale, with the default 8 MiB chunks."""
    size = 1024 * MiB
    source, target, image, elapsed = await cut_link_copy(registry, registry2, tmp_path, size, 100 * MiB)
    report("1 GiB / 100 MiB cuts", size, source, target, elapsed)
    assert source.cuts_down >= 10 and target.cuts_up >= 10
    assert source.bytes_down < 2 * size and target.bytes_up < 2 * size
    assert len(uploads_started(target)) == len(image.blobs)


async def test_docker_registry_drops_a_cut_session_so_the_upload_restarts_from_byte_0(
        registry: RegistryProcess, registry2: RegistryProcess, tmp_path: Path) -> None:
    """Straight in front of docker-registry 2.8, a PATCH cut mid-body leaves its partial body in the session, whose
    next request (our status GET) then fails with BLOB_UPLOAD_INVALID and cancels it: the upload starts again in a
    new session, from byte 0, and completes."""
    image = seed.push_image(registry, "cut/direct", "1", layers=(20 * MiB,), seed="direct")
    with CutProxy(registry2.port or 0, cut_up_every=12 * MiB, max_cuts=1) as target:
        stats = await sync_through(tmp_path, registry.host, target.host,
                                   {f"{registry.host}/cut/direct:1": f"{target.host}/cut/direct"})
    assert stats.failed() == [], stats.failed()
    assert_arrived(registry2, image, "cut/direct")
    assert target.cuts_up == 1
    assert [r.status for r in status_gets(target)] == [404]  # the session the cut broke is gone
    assert len(uploads_started(target)) == len(image.blobs) + 1  # one new session for the layer


async def test_source_that_ignores_range_is_read_again_from_byte_0(
        registry: RegistryProcess, registry2: RegistryProcess, tmp_path: Path) -> None:
    """A source that answers a Range request with the whole blob (200): the bytes before the cut are read again and
    skipped; the running hash already covers them, and the digest still matches."""
    size = 20 * MiB
    image = seed.push_image(registry, "cut/norange", "1", layers=(size,), seed="norange")
    with CutProxy(registry.port or 0, cut_down_every=8 * MiB, max_cuts=2,
                  drop_headers=frozenset({"range"})) as source:
        stats = await sync_through(tmp_path, source.host, registry2.host,
                                   {f"{source.host}/cut/norange:1": f"{registry2.host}/cut/norange"})
    assert stats.failed() == [], stats.failed()
    assert_arrived(registry2, image, "cut/norange")
    blob_gets = [r for r in source.requests if r.method == "GET" and "/blobs/sha256:" in r.path]
    assert [r.status for r in blob_gets][-3:] == [200, 200, 200]
    assert any("range" in r.headers for r in blob_gets)  # we asked for a range; the registry never saw it
    assert source.bytes_down > size + 8 * MiB  # the skipped bytes crossed the link again


async def test_range_resume_sends_range_and_gets_206(registry: RegistryProcess, registry2: RegistryProcess,
                                                     tmp_path: Path) -> None:
    size = 20 * MiB
    image = seed.push_image(registry, "cut/range", "1", layers=(size,), seed="range")
    with CutProxy(registry.port or 0, cut_down_every=8 * MiB) as source:
        stats = await sync_through(tmp_path, source.host, registry2.host,
                                   {f"{source.host}/cut/range:1": f"{registry2.host}/cut/range"})
    assert stats.failed() == [], stats.failed()
    assert_arrived(registry2, image, "cut/range")
    ranged = [r for r in source.requests if "range" in r.headers]
    assert len(ranged) >= 2 and all(r.status == 206 for r in ranged)
    assert source.bytes_down < size + 2 * MiB  # nothing read twice but the cut pieces' headers


# -- quirks of registries we cannot run, played by the proxy in front of docker-registry --------------------------


def session_of(request: Request) -> str:
    return request.path.rsplit("/", 1)[-1]


class ChunkRule:
    """A registry that refuses a chunk after one shorter than ``minimum`` in the same session (S3 multipart's rule,
    which ECR's 5 MB minimum comes from): only the last chunk may be short. ``announce`` puts the minimum in an
    ``OCI-Chunk-Min-Length`` header of upload starts."""

    def __init__(self, minimum: int, announce: bool) -> None:
        self.minimum = minimum
        self.announce = announce
        self.short: set[str] = set()
        self.refused: list[Request] = []

    def answer(self, request: Request) -> Reply | None:
        if request.method != "PATCH":
            return None
        session = session_of(request)
        if session in self.short:
            self.refused.append(request)
            return Reply(416, [("Content-Type", "application/json")],
                         b'{"errors":[{"code":"BLOB_UPLOAD_INVALID","message":"chunk too small"}]}')
        if request.length < self.minimum:
            self.short.add(session)
        return None

    def rewrite(self, request: Request, status: int, headers: Headers) -> tuple[int, Headers]:
        if self.announce and request.method == "POST" and status == 202:
            headers = [*headers, ("OCI-Chunk-Min-Length", str(self.minimum))]
        return status, headers


async def test_announced_chunk_min_length_is_honoured(registry: RegistryProcess, registry2: RegistryProcess,
                                                      tmp_path: Path) -> None:
    """``OCI-Chunk-Min-Length: 12 MiB`` on the upload start: chunked upload in chunks of 12 MiB (more than our
    8 MiB), only the last one shorter."""
    image = seed.push_image(registry, "quirk/minimum", "1", layers=(30 * MiB,), seed="minimum")
    rule = ChunkRule(12 * MiB, announce=True)
    with CutProxy(registry2.port or 0, answer=rule.answer, rewrite=rule.rewrite) as target:
        stats = await sync_through(tmp_path, registry.host, target.host,
                                   {f"{registry.host}/quirk/minimum:1": f"{target.host}/quirk/minimum"})
    assert stats.failed() == [], stats.failed()
    assert_arrived(registry2, image, "quirk/minimum")
    assert [r.length for r in patches(target)] == [12 * MiB, 12 * MiB, 6 * MiB]
    assert rule.refused == []


async def test_ecr_patch_201_and_5_mb_minimum_chunk(registry: RegistryProcess, registry2: RegistryProcess,
                                                    tmp_path: Path) -> None:
    """ECR answers a PATCH with 201 rather than 202 and refuses chunks under 5 MB but the last, without announcing
    it. A cut turns the upload into chunks; every one is at least 5 MB, and the 201s are taken as accepted."""
    image = seed.push_image(registry, "quirk/ecr", "1", layers=(30 * MiB,), seed="ecr")
    rule = ChunkRule(5_000_000, announce=False)

    def rewrite(request: Request, status: int, headers: Headers) -> tuple[int, Headers]:
        return (201 if request.method == "PATCH" and status == 202 else status), headers

    with CutProxy(registry2.port or 0, cut_up_every=12 * MiB, max_cuts=2, buffer_requests=True,
                  answer=rule.answer, rewrite=rewrite) as target:
        stats = await sync_through(tmp_path, registry.host, target.host,
                                   {f"{registry.host}/quirk/ecr:1": f"{target.host}/quirk/ecr"})
    assert stats.failed() == [], stats.failed()
    assert_arrived(registry2, image, "quirk/ecr")
    answered = [r.status for r in patches(target) if r.status is not None]
    assert target.cuts_up == 2 and answered.count(201) >= 3  # chunked after the cut, every chunk answered 201
    assert rule.refused == []


async def test_mount_without_from_is_never_sent(registry: RegistryProcess, tmp_path: Path) -> None:
    """Quay refuses a mount without ``from``: we only mount from a repository that has the blob."""
    image = seed.push_image(registry, "quirk/src", "1", layers=(200_000, 100_000), seed="mount")

    def answer(request: Request) -> Reply | None:
        if request.method == "POST" and "mount=" in request.query and "from=" not in request.query:
            return Reply(400, [("Content-Type", "application/json")],
                         b'{"errors":[{"code":"UNSUPPORTED","message":"mount needs from"}]}')
        return None

    with CutProxy(registry.port or 0, answer=answer) as proxy:
        stats = await sync_through(tmp_path, proxy.host, proxy.host,
                                   {f"{proxy.host}/quirk/src:1": f"{proxy.host}/quirk/dst"})
    assert stats.failed() == [], stats.failed()
    assert_arrived(registry, image, "quirk/dst")
    mounts = [r for r in proxy.requests if "mount=" in r.query]
    assert mounts and all("from=" in r.query and r.status == 201 for r in mounts)
    assert stats.blobs_mounted == len(image.blobs)


async def test_declined_mount_answered_202_falls_back_to_an_upload(registry: RegistryProcess,
                                                                   tmp_path: Path) -> None:
    """A registry that answers every mount with 202 and an upload session (Harbor, harbor#17097): uploaded."""
    image = seed.push_image(registry, "quirk/src", "1", layers=(200_000, 9 * MiB), seed="declined")

    def plain_upload(request: Request) -> str:
        return request.path if "mount=" in request.query else request.target

    with CutProxy(registry.port or 0, forward_target=plain_upload) as proxy:
        stats = await sync_through(tmp_path, proxy.host, proxy.host,
                                   {f"{proxy.host}/quirk/src:1": f"{proxy.host}/quirk/dst"})
    assert stats.failed() == [], stats.failed()
    assert_arrived(registry, image, "quirk/dst")
    mounts = [r for r in proxy.requests if "mount=" in r.query]
    assert len(mounts) == len(image.blobs) and all(r.status == 202 for r in mounts)
    assert stats.blobs_mounted == 0 and stats.blobs_copied == len(image.blobs)


@pytest.mark.parametrize("where", ["relative", "other-host"])
async def test_upload_location_relative_or_on_another_host(where: str, registry: RegistryProcess,
                                                           registry2: RegistryProcess, tmp_path: Path) -> None:
    """Every upload ``Location`` (start, PATCH, status) relative, or on another host name of the same server; with
    a cut, so that a status GET and chunks follow them too."""
    image = seed.push_image(registry, "quirk/location", "1", layers=(30 * MiB,), seed=where)
    port: list[int] = []

    def rewrite(request: Request, status: int, headers: Headers) -> tuple[int, Headers]:
        moved = []
        for name, value in headers:
            if name.lower() == "location" and "/blobs/uploads/" in value:
                path = "/v2/" + value.split("/v2/", 1)[1]
                value = path if where == "relative" else f"http://localhost:{port[0]}{path}"
            moved.append((name, value))
        return status, moved

    with CutProxy(registry2.port or 0, cut_up_every=12 * MiB, max_cuts=1, buffer_requests=True,
                  rewrite=rewrite) as target:
        port.append(target.port)
        stats = await sync_through(tmp_path, registry.host, target.host,
                                   {f"{registry.host}/quirk/location:1": f"{target.host}/quirk/location"})
    assert stats.failed() == [], stats.failed()
    assert_arrived(registry2, image, "quirk/location")
    followed = [r for r in target.requests if r.method in ("PATCH", "PUT", "GET") and "/blobs/uploads/" in r.path]
    assert len(status_gets(target)) == 1 and len(patches(target)) >= 3
    expected_host = target.host if where == "relative" else f"localhost:{target.port}"
    assert {r.headers.get("host") for r in followed} == {expected_host}


async def test_a_chunk_acknowledged_but_dropped_is_sent_again(registry: RegistryProcess, registry2: RegistryProcess,
                                                              tmp_path: Path) -> None:
    """A registry that answers a chunk 202 but keeps its session where it was (reported of ECR, with a Range that
    does not advance: aws/containers-roadmap#2831): the session is asked, and the chunk sent again."""
    image = seed.push_image(registry, "quirk/dropped", "1", layers=(30 * MiB,), seed="dropped")
    dropped: list[Request] = []

    def answer(request: Request) -> Reply | None:
        if request.method != "PATCH" or dropped or not request.headers.get("content-range", "").startswith(
                f"{12 * MiB}-"):
            return None
        dropped.append(request)  # the second chunk: "accepted", never forwarded
        return Reply(202, [("Location", request.target), ("Range", f"0-{12 * MiB - 1}")])

    rule = ChunkRule(12 * MiB, announce=True)
    with CutProxy(registry2.port or 0, answer=answer, rewrite=rule.rewrite) as target:
        stats = await sync_through(tmp_path, registry.host, target.host,
                                   {f"{registry.host}/quirk/dropped:1": f"{target.host}/quirk/dropped"})
    assert stats.failed() == [], stats.failed()
    assert_arrived(registry2, image, "quirk/dropped")
    assert len(dropped) == 1 and len(status_gets(target)) == 1
    assert [r.length for r in patches(target)] == [12 * MiB, 12 * MiB, 12 * MiB, 6 * MiB]


async def test_a_refused_streamed_upload_falls_back_to_chunks(registry: RegistryProcess, registry2: RegistryProcess,
                                                              tmp_path: Path) -> None:
    """A registry (or its front) that refuses a PATCH longer than 16 MiB (413): the blob goes in 8 MiB chunks, in the
    same session, and so does the next big blob to that registry, without trying to stream it first."""
    first = seed.push_image(registry, "quirk/refused", "1", layers=(20 * MiB,), seed="refused1")
    second = seed.push_image(registry, "quirk/refused", "2", layers=(20 * MiB,), seed="refused2")

    def answer(request: Request) -> Reply | None:
        if request.method == "PATCH" and request.length > 16 * MiB:
            return Reply(413, [("Content-Type", "application/json")],
                         b'{"errors":[{"code":"SIZE_INVALID","message":"request entity too large"}]}')
        return None

    with CutProxy(registry2.port or 0, answer=answer) as target:
        stats = await sync_through(tmp_path, registry.host, target.host,
                                   {f"{registry.host}/quirk/refused:1": f"{target.host}/quirk/refused:1",
                                    f"{registry.host}/quirk/refused:2": f"{target.host}/quirk/refused:2"},
                                   proc=1)
    assert stats.failed() == [], stats.failed()
    assert_arrived(registry2, first, "quirk/refused")
    assert_arrived(registry2, second, "quirk/refused")
    assert [r.status for r in patches(target)] == [413, *[202] * 6]  # 8 + 8 + 4 MiB, twice
    assert len(uploads_started(target)) == len(first.blobs) + len(second.blobs)
