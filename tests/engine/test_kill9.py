"""kill -9 anywhere: a sync killed at any point leaves no half-pushed image, and a re-run finishes the job.

``imagesync sync`` (and ``imagesync worker``) run as real subprocesses against real registries, each
behind a :class:`HoldingProxy` of this module. The proxy holds one chosen request — the Nth request
matching a method and path, optionally after letting part of its body through, or after the registry
answered it but before the answer reaches the client — and the test SIGKILLs the process while that
request is in flight. No sleeps: the kill point is reached when the proxy says so.

After each kill:

- :func:`testbed.checker.check_registry` walks the target (catalog, tags, every stored manifest including
  untagged index children) and finds no manifest whose blobs or children are missing. The proxy also
  checks every manifest PUT as it passes, before the registry sees it, so a manifest pushed early is
  caught even when a later push would have repaired the target;
- a re-run through the same proxies exits 0, every tag has the source's digest, and the re-run starts at
  most as many blob uploads (``POST .../blobs/uploads/``, counted in the target's access log) as there
  were blobs missing at the target after the kill: finished work is never redone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qs

import pytest
import yaml

from testbed import checker, seed
from testbed.net import LOOPBACK, ThreadedServer
from testbed.registry import RegistryProcess, registry_binary
from testbed.system import require_system_part

KiB = 1024
MiB = 1024 * KiB
RUN_TIMEOUT_S = 90.0

# -- the proxy -------------------------------------------------------------------------------------------

Match = Callable[[str, str, dict[str, str]], bool]  # (method, target, lower-cased headers)


@dataclass
class Hold:
    """Hold the ``nth`` request that ``match`` accepts.

    ``side="request"``: before the registry sees it (``offset=None``), or after its head and ``offset``
    body bytes went through (an upload cut mid-body). ``side="response"``: the registry answered, and
    ``offset`` bytes of the answer (head included) reached the client before the hold.
    """

    match: Match
    side: Literal["request", "response"] = "request"
    nth: int = 1
    offset: int | None = None


@dataclass
class HoldingProxy:
    """An HTTP/1.1 proxy in front of one registry, in its own thread, that can hold one chosen request.

    Every request is forwarded with ``Connection: close``, so each connection carries one exchange and
    the proxy needs to parse request heads only. Manifest PUTs are buffered and checked against the
    registry before they are forwarded (``violations``: manifests pushed before what they reference).
    """

    upstream: RegistryProcess
    check_manifests: bool = True
    violations: list[str] = field(default_factory=list)
    manifest_puts: int = 0
    port: int = 0

    def __post_init__(self) -> None:
        self._api = seed.RegistryAPI.for_registry(self.upstream)
        self._api_lock = threading.Lock()
        self.reached = threading.Event()
        self._hold: Hold | None = None
        self._seen = 0
        self._release = asyncio.Event()
        self._server = ThreadedServer(self._handle, "holding-proxy")
        self.port = self._server.start()

    @property
    def host(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def arm(self, hold: Hold | None) -> None:
        """Hold the next request ``hold`` matches (None: forward everything)."""
        def reset() -> None:
            self._hold, self._seen = hold, 0
            self.reached.clear()
            self._release = asyncio.Event()
        self._server.call(reset)

    def release(self) -> None:
        """Drop the held exchange (both connections are reset, as a dead process's kernel would)."""
        self._server.call(self._release.set)

    def close(self) -> None:
        """Stop serving: every connection still open is reset."""
        self._server.stop()
        self._api.close()

    def _matches(self, method: str, target: str, headers: dict[str, str]) -> Hold | None:
        hold = self._hold
        if hold is None or self.reached.is_set() or not hold.match(method, target, headers):
            return None
        self._seen += 1
        return hold if self._seen == hold.nth else None

    def _missing_references(self, repo: str, manifest: bytes) -> list[str]:
        with self._api_lock:
            return checker.missing_references(self._api, repo, manifest)

    async def _held(self) -> None:
        self.reached.set()
        await self._release.wait()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_writer: asyncio.StreamWriter | None = None
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            request_line, *lines = head.decode("latin-1").split("\r\n")
            method, target, _ = request_line.split(" ", 2)
            headers: dict[str, str] = {}
            kept = [request_line]
            for line in lines:
                name, sep, value = line.partition(":")
                if not sep or name.strip().lower() in ("connection", "keep-alive"):
                    continue
                headers[name.strip().lower()] = value.strip()
                kept.append(line)
            forwarded_head = ("\r\n".join([*kept, "Connection: close"]) + "\r\n\r\n").encode("latin-1")
            length = int(headers.get("content-length", "0") or 0)
            upstream_reader, upstream_writer = await asyncio.open_connection(LOOPBACK, self.upstream.port)
            hold = self._matches(method, target, headers)

            if hold is not None and hold.side == "request":
                if hold.offset is not None:
                    upstream_writer.write(forwarded_head)
                    await _copy(reader, upstream_writer, hold.offset)
                await self._held()
                return

            if method == "PUT" and "/manifests/" in target and self.check_manifests:
                body = await reader.readexactly(length)
                repo = target.split("?")[0].removeprefix("/v2/").rsplit("/manifests/", 1)[0]
                self.manifest_puts += 1
                missing = await asyncio.to_thread(self._missing_references, repo, body)
                if missing:
                    self.violations.append(f"PUT {target} before {repo} had {', '.join(missing)}")
                upstream_writer.write(forwarded_head + body)
            else:
                upstream_writer.write(forwarded_head)
            to_upstream = asyncio.create_task(_pipe(reader, upstream_writer))
            try:
                if hold is not None:  # the response side
                    first = await upstream_reader.read(64 * KiB)
                    if hold.offset:
                        writer.write(first)
                        await _copy(upstream_reader, writer, max(0, hold.offset - len(first)))
                    await self._held()
                    return
                await _pipe(upstream_reader, writer)
                with contextlib.suppress(ConnectionError):
                    await writer.drain()
                    writer.close()
            finally:
                to_upstream.cancel()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            # Reset, not a clean close: what the kernel does to the sockets of a killed process.
            for w in (writer, upstream_writer):
                if w is not None and not w.is_closing():
                    w.transport.abort()


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, count: int) -> None:
    while count > 0:
        data = await reader.read(min(count, 64 * KiB))
        if not data:
            return
        writer.write(data)
        await writer.drain()
        count -= len(data)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(64 * KiB):
        writer.write(data)
        await writer.drain()


# -- the image set ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageSet:
    multi_v1: seed.SeededImage  # 3 layers, one of 3 MiB (monolithic PUT)
    multi_v2: seed.SeededImage  # shares the 3 MiB layer with v1
    big: seed.SeededImage  # a 9 MiB layer: PATCH + commit PUT
    index: seed.SeededImage  # OCI index over 3 platforms

    @property
    def big_layer(self) -> seed.Blob:
        return self.big.blobs[1]

    @property
    def mid_layer(self) -> seed.Blob:
        return self.multi_v1.blobs[1]

    def tops(self) -> list[seed.SeededImage]:
        return [self.multi_v1, self.multi_v2, self.big, self.index]

    def expected_blobs(self) -> set[tuple[str, str]]:
        return {(image.repo, blob.digest) for image in self.tops() for blob in image.blobs}

    def blob_sizes(self) -> dict[str, int]:
        return {blob.digest: blob.size for image in self.tops() for blob in image.blobs}

    def expected_manifests(self) -> list[tuple[str, str, str]]:
        """(repo, reference to push, digest): children by digest, then the tagged images."""
        children = [(child.repo, child.digest, child.digest) for child in self.index.children]
        return children + [(image.repo, str(image.tag), image.digest) for image in self.tops()]

    def rules(self, source_host: str, target_host: str) -> dict[str, str]:
        return {
            f"{source_host}/app/multi": f"{target_host}/app/multi",  # all tags: lists the source's tags
            f"{source_host}/app/big:v1": f"{target_host}/app/big",
            f"{source_host}/app/index:1": f"{target_host}/app/index",
        }


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RegistryProcess, ImageSet]]:
    """One seeded source for the module (~14 MiB); every test gets a fresh target."""
    require_system_part(registry_binary(), "docker-registry", "docker-registry")
    with RegistryProcess(tmp_path_factory.mktemp("kill9-source")) as registry:
        with seed.open_api(registry) as api:
            multi_v1 = seed.push_image(api, "app/multi", "v1", layers=(3 * MiB, 512 * KiB, 64 * KiB), seed="m1")
            multi_v2 = seed.push_image(api, "app/multi", "v2", layers=(multi_v1.blobs[1], 256 * KiB), seed="m2")
            big = seed.push_image(api, "app/big", "v1", layers=(9 * MiB, 16 * KiB), seed="big")
            index = seed.push_index(api, "app/index", "1", layers=(256 * KiB, 32 * KiB), seed="idx",
                                    platforms=(("linux", "amd64"), ("linux", "arm64"), ("linux", "s390x")))
        yield registry, ImageSet(multi_v1, multi_v2, big, index)


# -- matchers --------------------------------------------------------------------------------------------


def _path(target: str) -> str:
    return target.split("?", 1)[0]


def tags_list(repo: str) -> Match:
    return lambda m, t, h: m == "GET" and _path(t) == f"/v2/{repo}/tags/list"


def upload_start() -> Match:
    return lambda m, t, h: m == "POST" and _path(t).endswith("/blobs/uploads/")


def blob_put(blob: seed.Blob) -> Match:
    """The PUT that carries (or, after a PATCH, commits) ``blob``: ``?digest=`` names it."""
    hex_digest = blob.digest.split(":", 1)[1]
    return lambda m, t, h: m == "PUT" and "/blobs/uploads/" in t and hex_digest in t.split("?", 1)[-1]


def patch_of(blob: seed.Blob) -> Match:
    return lambda m, t, h: m == "PATCH" and h.get("content-length") == str(blob.size)


def blob_get(blob: seed.Blob) -> Match:
    return lambda m, t, h: m == "GET" and _path(t).endswith(f"/blobs/{blob.digest}")


def manifest_put(repo: str, reference: str | None = None, *, by_digest: bool = False) -> Match:
    def match(m: str, t: str, h: dict[str, str]) -> bool:
        path = _path(t)
        if m != "PUT" or not path.startswith(f"/v2/{repo}/manifests/"):
            return False
        ref = path.rsplit("/", 1)[1]
        return ref == reference if reference else ref.startswith("sha256:") == by_digest
    return match


@dataclass(frozen=True)
class KillPoint:
    name: str
    side: Literal["source", "target"]
    hold: Callable[[ImageSet], Hold]


KILL_POINTS = [
    KillPoint("listing-source-tags", "source", lambda s: Hold(tags_list("app/multi"))),
    KillPoint("mid-source-blob-read", "source",
              lambda s: Hold(blob_get(s.mid_layer), side="response", offset=1 * MiB)),
    KillPoint("first-upload-start", "target", lambda s: Hold(upload_start())),
    KillPoint("blob-put-head-only", "target", lambda s: Hold(blob_put(s.mid_layer), offset=0)),
    KillPoint("blob-put-at-1MiB", "target", lambda s: Hold(blob_put(s.mid_layer), offset=1 * MiB)),
    KillPoint("blob-put-last-byte-missing", "target",
              lambda s: Hold(blob_put(s.mid_layer), offset=s.mid_layer.size - 1)),
    KillPoint("blob-patch-at-4MiB", "target", lambda s: Hold(patch_of(s.big_layer), offset=4 * MiB)),
    KillPoint("between-patch-and-commit", "target", lambda s: Hold(blob_put(s.big_layer))),
    KillPoint("blob-committed-unacknowledged", "target", lambda s: Hold(blob_put(s.big_layer), side="response")),
    KillPoint("before-image-manifest-put", "target", lambda s: Hold(manifest_put("app/big", "v1"))),
    KillPoint("after-image-manifest-put", "target",
              lambda s: Hold(manifest_put("app/multi", "v1"), side="response")),
    KillPoint("before-first-index-child", "target", lambda s: Hold(manifest_put("app/index", by_digest=True))),
    KillPoint("right-after-first-index-child", "target",
              lambda s: Hold(manifest_put("app/index", by_digest=True), side="response")),
    KillPoint("between-index-children", "target", lambda s: Hold(manifest_put("app/index", by_digest=True), nth=2)),
    KillPoint("before-index-put", "target", lambda s: Hold(manifest_put("app/index", "1"))),
    KillPoint("index-put-unacknowledged", "target", lambda s: Hold(manifest_put("app/index", "1"), side="response")),
]


# -- running and measuring -------------------------------------------------------------------------------


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("IMAGESYNC_", "JOB_COMPLETION"))}


def cli_command(workdir: Path, rules: dict[str, str], hosts: list[str]) -> tuple[list[str], dict[str, str]]:
    (workdir / "images.yaml").write_text(yaml.safe_dump(rules))
    (workdir / "auth.yaml").write_text(yaml.safe_dump({host: {"plainHTTP": True} for host in hosts}))
    argv = [sys.executable, "-m", "imagesync.cli.main", "sync", "--images", str(workdir / "images.yaml"),
            "--auth", str(workdir / "auth.yaml"), "--proc", "3", "--retries", "1"]
    return argv, _clean_env()


def worker_command(workdir: Path, rules: dict[str, str], hosts: list[str]) -> tuple[list[str], dict[str, str]]:
    config = workdir / "config"
    config.mkdir(exist_ok=True)
    (config / "images.yaml").write_text(yaml.safe_dump(rules))
    (config / "auth.yaml").write_text(yaml.safe_dump({host: {"plainHTTP": True} for host in hosts}))
    (config / "options.json").write_text(json.dumps({"proc": 3, "retries": 1}))
    env = {**_clean_env(), "IMAGESYNC_CONFIG_DIR": str(config), "IMAGESYNC_SHARDS": "1"}
    return [sys.executable, "-m", "imagesync.cli.main", "worker"], env


def run_until_held(argv: list[str], env: dict[str, str], workdir: Path, proxy: HoldingProxy) -> None:
    """Start the process, wait until the proxy holds the chosen request, SIGKILL it, drop the hold."""
    with (workdir / "killed.out").open("wb") as out:
        process = subprocess.Popen(argv, env=env, cwd=workdir, stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while not proxy.reached.wait(0.02):
            if process.poll() is not None:
                pytest.fail(f"exited {process.returncode} before the kill point: "
                            f"{(workdir / 'killed.out').read_text()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail("the kill point was never reached")
        os.kill(process.pid, signal.SIGKILL)
        assert process.wait(10) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        proxy.release()


def settle(registry: RegistryProcess, quiet_s: float = 0.5, limit_s: float = 15.0) -> None:
    """Wait until the registry has finished what the killed process left in flight.

    A request whose body had fully arrived is still processed after its client died, and one cut mid-body
    ends (500, client disconnected) only when the proxy has closed the registry's side. Its access log line
    is written when a request ends: once no line was added for ``quiet_s``, what the kill left is settled.
    Without this the check below could see a manifest PUT half done, and the re-run's log the dead
    process's last requests.
    """
    deadline = time.monotonic() + limit_s
    seen = registry.log_mark()
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        now = registry.log_mark()
        if now == seen:
            return
        seen = now


@dataclass
class TargetState:
    missing_blobs: set[tuple[str, str]]
    manifest_pushes_needed: int
    open_uploads: int


def target_state(target: RegistryProcess, images: ImageSet) -> TargetState:
    """What a kill left: checks that nothing is half-pushed, and counts what a re-run has to do."""
    with seed.open_api(target) as api:
        report = checker.assert_no_half_pushed_image(api, registry=target)
        missing = {(repo, digest) for repo, digest in sorted(images.expected_blobs())
                   if not seed.blob_exists(api, repo, digest)}
    needed = 0
    for repo, reference, digest in images.expected_manifests():
        if reference == digest:
            needed += digest not in report.manifests.get(repo, set())
        else:
            needed += report.tags.get(repo, {}).get(reference) != digest
    return TargetState(missing, needed, sum(report.open_uploads.values()))


def assert_converged(target: RegistryProcess, images: ImageSet) -> None:
    with seed.open_api(target) as api:
        report = checker.assert_no_half_pushed_image(api, registry=target)
        for image in images.tops():
            assert report.tags[image.repo][str(image.tag)] == image.digest, image.reference
        for child in images.index.children:
            assert child.digest in report.manifests[child.repo]
        assert all(seed.blob_exists(api, repo, digest) for repo, digest in images.expected_blobs())


def kill_and_rerun(kind: str, hold: Hold, source: RegistryProcess, images: ImageSet, target: RegistryProcess,
                   workdir: Path, side: str = "target") -> dict[str, int]:
    """One kill point: run, kill at ``hold``, check the target, re-run, check convergence and cost."""
    source_proxy, target_proxy = HoldingProxy(source, check_manifests=False), HoldingProxy(target)
    try:
        command = cli_command if kind == "cli" else worker_command
        argv, env = command(workdir, images.rules(source_proxy.host, target_proxy.host),
                            [source_proxy.host, target_proxy.host])
        proxy = source_proxy if side == "source" else target_proxy
        proxy.arm(hold)
        run_until_held(argv, env, workdir, proxy)
        settle(target)

        # No half-pushed image, whatever the kill left, and no manifest was ever sent ahead of its references.
        assert target_proxy.violations == [], target_proxy.violations
        state = target_state(target, images)
        first_run_puts = target_proxy.manifest_puts

        source_proxy.arm(None)
        target_proxy.arm(None)
        mark = target.log_mark()
        rerun = subprocess.run(argv, env=env, cwd=workdir, capture_output=True, text=True,
                               timeout=RUN_TIMEOUT_S, check=False)
        assert target_proxy.violations == [], target_proxy.violations
        assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
        log = target.request_log(mark)
        assert_converged(target, images)

        # Upload sessions opened and kept: the engine asks whether a blob is present and opens its upload in
        # parallel (one round trip), and cancels (DELETE) the sessions of blobs that turn out present.
        opened = [r for r in log if r.method == "POST" and r.path.endswith("/blobs/uploads/") and r.status == 202]
        cancelled = [r for r in log if r.method == "DELETE" and "/blobs/uploads/" in r.path and r.status == 204]
        uploads = opened[:len(opened) - len(cancelled)]
        commits = [r for r in log if r.method == "PUT" and "/blobs/uploads/" in r.path]
        manifest_puts = [r for r in log if r.method == "PUT" and "/manifests/" in r.path]
        # The access log has no body sizes: the bytes a re-run uploaded are the sizes of the blobs its commit
        # PUTs name (a blob cut mid-upload by the kill is sent again whole, in a new session).
        sizes = images.blob_sizes()
        uploaded_bytes = sum(sizes[parse_qs(r.query)["digest"][0]] for r in commits)
        # Only what was unfinished is copied again.
        assert len(uploads) <= len(state.missing_blobs), (opened, cancelled, state.missing_blobs)
        assert len(commits) <= len(state.missing_blobs), (commits, state.missing_blobs)
        assert len(manifest_puts) <= state.manifest_pushes_needed, (manifest_puts, state)
        return {"missing_blobs": len(state.missing_blobs), "uploads": len(uploads), "commits": len(commits),
                "manifests_needed": state.manifest_pushes_needed, "manifest_puts": len(manifest_puts),
                "open_uploads": state.open_uploads, "first_run_manifest_puts": first_run_puts,
                "uploaded_bytes": uploaded_bytes}
    finally:
        source_proxy.close()
        target_proxy.close()


# -- the tests -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("point", KILL_POINTS, ids=[p.name for p in KILL_POINTS])
def test_cli_killed_at(point: KillPoint, source: tuple[RegistryProcess, ImageSet],
                       registry2: RegistryProcess, tmp_path: Path) -> None:
    registry, images = source
    figures = kill_and_rerun("cli", point.hold(images), registry, images, registry2, tmp_path, point.side)
    print(f"kill9 cli {point.name}: {json.dumps(figures)}")


WORKER_POINTS = [p for p in KILL_POINTS if p.name in ("blob-patch-at-4MiB", "before-index-put",
                                                      "right-after-first-index-child")]


@pytest.mark.parametrize("point", WORKER_POINTS, ids=[p.name for p in WORKER_POINTS])
def test_worker_killed_at(point: KillPoint, source: tuple[RegistryProcess, ImageSet],
                          registry2: RegistryProcess, tmp_path: Path) -> None:
    registry, images = source
    figures = kill_and_rerun("worker", point.hold(images), registry, images, registry2, tmp_path, point.side)
    print(f"kill9 worker {point.name}: {json.dumps(figures)}")


def test_the_checks_can_fail(registry2: RegistryProcess) -> None:
    # The checks above prove something only if they can fail. distribution 2.8 itself refuses a manifest
    # whose blobs or children it lacks, so the proxy checks each manifest PUT before the registry sees it:
    # here one pushed ahead of its layers is refused by the registry and recorded by the proxy.
    proxy = HoldingProxy(registry2)
    try:
        early = seed.encode_json({
            "schemaVersion": 2, "mediaType": seed.DOCKER_MANIFEST,
            "config": {"mediaType": seed.DOCKER_CONFIG, "size": 2, "digest": seed.sha256_digest(b"{}")},
            "layers": [{"mediaType": seed.DOCKER_LAYER, "size": 1, "digest": seed.sha256_digest(b"x")}]})
        with seed.RegistryAPI(f"http://{proxy.host}") as api, pytest.raises(seed.SeedError):
            seed.push_manifest(api, "bad/early", "1", early, seed.DOCKER_MANIFEST)
        assert len(proxy.violations) == 1 and "blob sha256:" in proxy.violations[0], proxy.violations
    finally:
        proxy.close()
    # And a layer lost from a repository after its manifest was pushed is found by the checker's walk.
    image = seed.push_image(registry2, "bad/lost", "1", layers=(1024,), seed="lost")
    assert checker.check_registry(registry2).problems == []
    layer_link = (registry2.storage_dir / "docker/registry/v2/repositories/bad/lost/_layers/sha256"
                  / image.blobs[1].digest.split(":")[1] / "link")
    layer_link.unlink()
    registry2.stop()  # its in-memory descriptor cache still knows the blob
    registry2.start()
    problems = checker.check_registry(registry2).problems
    assert problems == [f"bad/lost@{image.digest} references blob {image.blobs[1].digest}, which bad/lost lacks"]
