"""spec.referrers and spec.bandwidth end to end against the emulator: a real worker copies a signed image
between two real registries (docker-registry 2.8: no referrers API, so cosign's tag schema is what travels),
and the status counts the signature."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from kube.conftest import Cluster, Operator
from kube.jobplayer import JobPlayer
from kube.objects import NAMESPACE, isj, regcred

from imagesync.engine.manifest import OCI_MANIFEST
from imagesync.engine.referrers import fallback_tag
from testbed import seed
from testbed.registry import RegistryProcess

COSIGN_PAYLOAD = "application/vnd.dev.cosign.simplesigning.v1+json"
QUOTA_LIMIT = 5000


class QuotaProxy:
    """A reverse proxy in front of a read-only source registry that announces a Docker Hub style request
    quota on every answer (``ratelimit-limit: 5000;w=21600``, ``ratelimit-remaining`` counting down), as a
    separate HTTP server so that a worker subprocess talks to it."""

    def __init__(self, upstream: RegistryProcess) -> None:
        self.sent = 0
        lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_: object) -> None:
                return None

            def _forward(self) -> None:
                with lock:
                    proxy.sent += 1
                    remaining = max(QUOTA_LIMIT - proxy.sent, 0)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                with httpx.Client(base_url=f"http://{upstream.host}", timeout=30) as client:
                    answer = client.request(self.command, self.path, headers=headers)
                body = b"" if self.command == "HEAD" else answer.content
                self.send_response(answer.status_code)
                for key, value in answer.headers.items():
                    if key.lower() not in ("content-length", "transfer-encoding", "connection", "date", "server"):
                        self.send_header(key, value)
                self.send_header("Content-Length", answer.headers.get("content-length", str(len(body)))
                                 if self.command == "HEAD" else str(len(body)))
                self.send_header("ratelimit-limit", f"{QUOTA_LIMIT};w=21600")
                self.send_header("ratelimit-remaining", f"{remaining};w=21600")
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_HEAD = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def quota_source(registry: RegistryProcess) -> Iterator[QuotaProxy]:
    proxy = QuotaProxy(registry)
    yield proxy
    proxy.close()


def cosign_signature(registry: RegistryProcess, repo: str, subject: seed.SeededImage) -> str:
    """cosign's ``sha256-<hex>.sig`` manifest built by hand from its documented layout (as
    tests/engine/test_referrers.py does): the simple-signing payload naming the subject, annotated with a
    base64 signature. Returns the manifest's digest."""
    payload = json.dumps({
        "critical": {"identity": {"docker-reference": f"{registry.host}/{repo}"},
                     "image": {"docker-manifest-digest": subject.digest},
                     "type": "cosign container image signature"},
        "optional": None}).encode()
    layer = seed.push_blob(registry, repo, payload)
    config = seed.push_blob(registry, repo, json.dumps(
        {"architecture": "", "os": "", "config": {}, "rootfs": {"type": "layers", "diff_ids": [layer.digest]}}
    ).encode())
    document = {
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": config.size,
                   "digest": config.digest},
        "layers": [{"mediaType": COSIGN_PAYLOAD, "size": layer.size, "digest": layer.digest,
                    "annotations": {"dev.cosignproject.cosign/signature":
                                    base64.b64encode(hashlib.sha512(payload).digest()).decode()}}],
    }
    return seed.push_manifest(registry, repo, fallback_tag(subject.digest) + ".sig", seed.encode_json(document),
                              OCI_MANIFEST)


async def test_signed_image_with_referrers_and_bandwidth(cluster: Cluster, operator: Operator, player: JobPlayer,
                                                         registry: RegistryProcess,
                                                         registry2: RegistryProcess) -> None:
    image = seed.push_image(registry, "lib/app", "v1", oci=True, seed="signed", layers=(300_000,))
    signature = cosign_signature(registry, "lib/app", image)
    await cluster.create(regcred("source", registry.host))
    await cluster.create(regcred("target", registry2.host))
    await cluster.create(isj("signed", {f"{registry.host}/lib/app:v1": f"{registry2.host}/mirror/app"},
                             referrers={"includeTypes": ["application/vnd.dev.cosign.*"],
                                        "excludeTypes": ["application/spdx+json"], "optional": False},
                             bandwidth="20MiB/s"))
    await cluster.wait_status("signed", lambda s: s.get("jobName"), "a job")
    (secret,) = [s for s in cluster.secrets() if s["metadata"]["name"] == "signed-r1"]
    options = json.loads(base64.b64decode(secret["data"]["options.json"]))
    assert options["limitRate"] == 20 * 1024 * 1024 and options["referrers"]["enabled"] is True

    runs = await player.play(NAMESPACE, "signed-r1")
    assert [r.returncode for r in runs] == [0], [r.stderr[-800:] for r in runs]
    status = await cluster.wait_status("signed", lambda s: s.get("phase") in ("Succeeded", "Failed",
                                                                              "PartiallyFailed"), "finished")
    assert status["phase"] == "Succeeded", status
    progress = status["progress"]
    assert progress["imagesSynced"] == 1 and progress["referrersCopied"] >= 1, progress
    assert progress["referrersFailed"] == 0
    # docker-registry announces no quota: the list is empty.
    assert status.get("registryQuotas") == []
    # The signature is at the target under the same tag, with the same digest (so it still verifies).
    tag = fallback_tag(image.digest) + ".sig"
    assert seed.get_manifest(registry2, "mirror/app", tag)[2] == signature


async def test_invalid_bandwidth_is_a_clear_invalid_spec(cluster: Cluster, operator: Operator) -> None:
    await cluster.create(isj("slow", {"a.example/lib/app:1": "b.example/lib/app"}, bandwidth="fast"))
    status = await cluster.wait_status("slow", lambda s: any(c.get("type") == "Valid" for c in
                                                             s.get("conditions") or []), "Valid condition")
    (valid,) = [c for c in status["conditions"] if c["type"] == "Valid"]
    assert valid["status"] == "False" and valid["reason"] == "InvalidSpec"
    assert valid["message"].startswith("spec.bandwidth: 'fast' is not a rate")
    assert cluster.jobs() == []


async def test_an_announced_quota_shows_in_the_status(cluster: Cluster, operator: Operator, player: JobPlayer,
                                                      registry: RegistryProcess, registry2: RegistryProcess,
                                                      quota_source: QuotaProxy) -> None:
    """The source announces a request quota (through the proxy): status.registryQuotas names it, with the
    lowest remaining the worker saw; the target announces none and is not listed."""
    image = seed.push_image(registry, "lib/app", "v1", oci=True, seed="quota")
    cosign_signature(registry, "lib/app", image)
    await cluster.create(regcred("source", quota_source.host))
    await cluster.create(regcred("target", registry2.host))
    await cluster.create(isj("quota", {f"{quota_source.host}/lib/app:v1": f"{registry2.host}/mirror/app"},
                             referrers={"optional": True}))
    await cluster.wait_status("quota", lambda s: s.get("jobName"), "a job")
    runs = await player.play(NAMESPACE, "quota-r1")
    assert [r.returncode for r in runs] == [0], [r.stderr[-800:] for r in runs]
    status = await cluster.wait_status("quota", lambda s: s.get("phase") in ("Succeeded", "Failed",
                                                                             "PartiallyFailed"), "finished")
    assert status["phase"] == "Succeeded", status
    assert status["progress"]["referrersCopied"] >= 1
    (quota,) = status["registryQuotas"]
    assert quota["registry"] == quota_source.host and quota["limit"] == QUOTA_LIMIT
    assert quota["windowSeconds"] == 21600
    assert QUOTA_LIMIT - quota_source.sent <= quota["remaining"] < QUOTA_LIMIT
