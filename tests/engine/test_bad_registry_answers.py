"""The registry half of the bad-input corpus (issue 12, point 1): a registry that answers garbage.

A scripted listener (:class:`testbed.hostile.HostileServer`) plays the source registry of one rule; it serves a small
valid image except for the one answer the case spoils (a manifest that is not JSON, a descriptor with a bad
digest or size, an unknown media type, a tag list of the wrong shape, an HTML page, a garbage challenge, a
token response without a token, blob bytes that do not match their digest, a Content-Length that lies). A
second rule copies a good image between repositories of a real docker-registry in the same run.

Each case must end with exit 1, one error line naming the hostile registry and what was wrong, no traceback,
and the good image at its target.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
from cli_helpers import auth_entry, run_sync

from imagesync.cli.main import EXIT_IMAGES_FAILED
from testbed import seed
from testbed.hostile import HostileServer, Received, Reply
from testbed.registry import RegistryProcess

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


CONFIG = json.dumps({"architecture": "amd64", "os": "linux",
                     "rootfs": {"type": "layers", "diff_ids": []}}).encode()
LAYER = b"hostile layer bytes " * 64


def descriptor(media_type: str, data: bytes, **changes: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": digest_of(data), "size": len(data), **changes}


def manifest_json(config: Mapping[str, Any] | None = None, layers: Any = None, **changes: Any) -> bytes:
    document = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": dict(config or descriptor(OCI_CONFIG, CONFIG)),
                "layers": [descriptor(OCI_LAYER, LAYER)] if layers is None else layers, **changes}
    return json.dumps(document).encode()


MANIFEST = manifest_json()
TAGS = json.dumps({"name": "bad/app", "tags": ["1"]}).encode()


@dataclass
class Garbage:
    """The hostile registry's answers: a valid image unless a field is spoiled."""

    manifest: bytes = MANIFEST
    manifest_type: str = OCI_MANIFEST
    manifest_headers: dict[str, str] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=lambda: {digest_of(CONFIG): CONFIG, digest_of(LAYER): LAYER})
    blob_headers: dict[str, str] = field(default_factory=dict)
    layer_headers: dict[str, str] = field(default_factory=dict)  # the layer's alone (after blob_headers)
    tags: Reply | None = None
    challenge: str | None = None  # a WWW-Authenticate header: every /v2/ request is then answered 401 ...
    token: Reply | None = None  # ... unless a token (from /token) is sent, whatever it is

    def __call__(self, request: Received) -> Reply:
        if request.path == "/token":
            return self.token or Reply(404)
        if self.challenge is not None and not (request.authorization or "").startswith("Bearer "):
            return Reply(401, {"WWW-Authenticate": self.challenge, "Content-Type": "application/json"},
                         b'{"errors": [{"code": "UNAUTHORIZED"}]}')
        if request.path == "/v2/":
            return Reply(200, {"Content-Type": "application/json"}, b"{}")
        if request.path == "/v2/bad/app/tags/list":
            return self.tags or Reply(200, {"Content-Type": "application/json"}, TAGS)
        if request.path.startswith("/v2/bad/app/manifests/"):
            return Reply(200, {"Content-Type": self.manifest_type, "Docker-Content-Digest": digest_of(self.manifest),
                               **self.manifest_headers}, self.manifest)
        if request.path.startswith("/v2/bad/app/blobs/"):
            data = self.blobs.get(request.path.rsplit("/", 1)[1])
            if data is None:
                return Reply(404, {"Content-Type": "application/json"}, b'{"errors": [{"code": "BLOB_UNKNOWN"}]}')
            layer = self.layer_headers if request.path.endswith(digest_of(LAYER)) else {}
            return Reply(200, {"Content-Type": "application/octet-stream", **self.blob_headers, **layer}, data)
        return Reply(404, {"Content-Type": "application/json"}, b'{"errors": [{"code": "NAME_UNKNOWN"}]}')


@dataclass(frozen=True)
class Case:
    id: str
    garbage: Callable[[], Garbage]
    why: str  # what the error line must say (besides the registry's host)
    source: str = "bad/app:1"  # the rule's source on the hostile registry
    known_bug: str | None = None  # an engine bug this case exposes and that is not fixed yet: xfail
    run: bool = True  # False: the known bug hangs, so the case is not even run


def json_reply(body: bytes | str) -> Reply:
    return Reply(200, {"Content-Type": "application/json"}, body.encode() if isinstance(body, str) else body)


WRONG = b"these are not the bytes you are looking for" * 8

CASES: list[Case] = [
    # -- manifests ---------------------------------------------------------------------------------------------
    Case("manifest-not-json", lambda: Garbage(manifest=b"\x00\x01 not json {{{"),
         "is not valid JSON: Expecting value: line 1 column 1"),
    Case("manifest-not-utf8", lambda: Garbage(manifest=b"\xff\xfe{}"), "is not valid JSON (not UTF-8 text)"),
    Case("manifest-deeply-nested", lambda: Garbage(manifest=b"[" * 100_000 + b"]" * 100_000), "is not valid JSON"),
    Case("manifest-a-json-list", lambda: Garbage(manifest=b"[1, 2, 3]"), "not a JSON object"),
    Case("manifest-layers-not-a-list", lambda: Garbage(manifest=manifest_json(layers="nope")),
         "layers is not a list but str 'nope'"),
    Case("manifest-layer-not-an-object", lambda: Garbage(manifest=manifest_json(layers=[5])),
         "layers[0] is not a descriptor object but int 5"),
    Case("manifest-config-without-digest", lambda: Garbage(manifest=manifest_json(
        config={"mediaType": OCI_CONFIG, "size": 3})), "config has no digest"),
    Case("manifest-without-config", lambda: Garbage(manifest=json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": []}).encode()), "config is missing"),
    Case("manifest-config-bad-digest", lambda: Garbage(manifest=manifest_json(
        config=descriptor(OCI_CONFIG, CONFIG, digest="sha256:not-a-digest"))), "sha256:not-a-digest"),
    Case("manifest-config-digest-with-path", lambda: Garbage(manifest=manifest_json(
        config=descriptor(OCI_CONFIG, CONFIG, digest="sha256:../../../../etc/passwd"))),
         "config has digest 'sha256:../../../../etc/passwd', which is not algorithm:hex"),
    Case("manifest-layer-negative-size", lambda: Garbage(manifest=manifest_json(
        layers=[descriptor(OCI_LAYER, LAYER, size=-1)])), "has size -1, not a whole number of bytes"),
    Case("manifest-layer-huge-size", lambda: Garbage(manifest=manifest_json(
        layers=[descriptor(OCI_LAYER, LAYER, size=10**30)])), f"has size {10**30}, not a whole number"),
    Case("manifest-layer-size-a-string", lambda: Garbage(manifest=manifest_json(
        layers=[descriptor(OCI_LAYER, LAYER, size="1024")])), "has size '1024', not a whole number"),
    Case("manifest-unknown-media-type", lambda: Garbage(
        manifest=manifest_json(mediaType="application/x-garbage"), manifest_type="application/x-garbage"),
        "application/x-garbage"),
    Case("manifest-html-200", lambda: Garbage(manifest=b"<html><body>Welcome to nginx!</body></html>",
                                              manifest_type="text/html"), "text/html"),
    Case("manifest-empty-200", lambda: Garbage(manifest=b"", manifest_type=OCI_MANIFEST), "not valid JSON"),
    Case("manifest-digest-header-lies", lambda: Garbage(
        manifest_headers={"Docker-Content-Digest": digest_of(b"another manifest")}),
        "manifest {host}/bad/app:1 arrived corrupted"),
    # -- tag lists ---------------------------------------------------------------------------------------------
    Case("tags-not-json", lambda: Garbage(tags=json_reply("<html>Login</html>")),
         "listing tags of {host}/bad/app: unreadable answer (not JSON)", source="bad/app"),
    Case("tags-deeply-nested", lambda: Garbage(tags=json_reply('{"tags": ' + "[" * 100_000 + "]" * 100_000 + "}")),
         "listing tags of {host}/bad/app: unreadable answer (not JSON)", source="bad/app"),
    Case("tags-a-number", lambda: Garbage(tags=json_reply('{"name": "bad/app", "tags": 5}')),
         "listing tags of {host}/bad/app: unreadable answer (tags is not a list)", source="bad/app"),
    Case("tags-a-json-string", lambda: Garbage(tags=json_reply('"tags"')),
         "listing tags of {host}/bad/app: unreadable answer (tags is not a list)", source="bad/app"),
    Case("tags-a-number-in-the-list", lambda: Garbage(tags=json_reply('{"name": "bad/app", "tags": [1]}')),
         "lists '1 (not a JSON string)', which is not a valid tag", source="bad/app:/.*/"),
    # -- authentication ----------------------------------------------------------------------------------------
    Case("www-authenticate-garbage", lambda: Garbage(challenge="!!garbage;;; ==="),
         "reading manifest {host}/bad/app:1: 401 unauthorized"),
    Case("token-response-without-token", lambda: Garbage(
        challenge='Bearer realm="{url}/token",service="hostile"', token=json_reply('{"expires_in": 300}')),
        "token server for {host} sent no token"),
    Case("token-response-not-json", lambda: Garbage(
        challenge='Bearer realm="{url}/token",service="hostile"', token=json_reply("<html>SSO</html>")),
        "token server for {host} sent no usable token"),
    # -- blobs -------------------------------------------------------------------------------------------------
    Case("blob-bytes-do-not-match-digest", lambda: Garbage(blobs={digest_of(CONFIG): CONFIG, digest_of(LAYER): WRONG}),
         f"blob {digest_of(LAYER)} from {{host}}/bad/app arrived corrupted"),
    Case("blob-content-length-too-long", lambda: Garbage(
        blob_headers={"Content-Length": str(len(LAYER) * 4), "Connection": "close"}),
        # Every blob's header lies (the config's or the layer's failure may come first): refused before reading.
        f"from {{host}}/bad/app arrived corrupted (Content-Length {len(LAYER) * 4}; expected "),
    Case("blob-content-length-too-short", lambda: Garbage(
        blob_headers={"Content-Length": str(len(LAYER) // 2)}),
        # Every blob's header lies (the config's or the layer's failure may come first): refused before reading.
        f"from {{host}}/bad/app arrived corrupted (Content-Length {len(LAYER) // 2}; expected "),
    Case("blob-body-cut-short", lambda: Garbage(
        blobs={digest_of(CONFIG): CONFIG, digest_of(LAYER): LAYER[:100]},
        layer_headers={"Content-Length": str(len(LAYER)), "Connection": "close"}),
        # The source fails while the target's upload is sending its bytes: the source is named, not the PUT.
        f"blob {digest_of(LAYER)} from {{host}}/bad/app: reading it failed (RemoteProtocolError: peer closed "
        "connection without sending complete message body (received 100 bytes, expected 1280))"),
]


pytestmark = pytest.mark.usefixtures("restore_logging")  # main() runs in-process here


def test_the_corpus_is_large_and_ids_are_unique() -> None:
    assert len(CASES) >= 12
    assert len({case.id for case in CASES}) == len(CASES)


PARAMS = [pytest.param(case, id=case.id, marks=[pytest.mark.xfail(reason=case.known_bug, strict=True, run=case.run)]
                       if case.known_bug else []) for case in CASES]


@pytest.mark.parametrize("case", PARAMS)
def test_a_registry_answering_garbage_fails_only_its_image(case: Case, registry: RegistryProcess,
                                                           tmp_path: Any, capfd: pytest.CaptureFixture[str]) -> None:
    good = seed.push_image(registry, "good/app", "1", seed="good")
    garbage = case.garbage()
    with HostileServer(garbage) as hostile:
        if garbage.challenge is not None:
            garbage.challenge = garbage.challenge.replace("{url}", hostile.url)
        images = {f"{hostile.host}/{case.source}": f"{registry.host}/copied/bad",
                  f"{registry.host}/good/app:1": f"{registry.host}/copied/good"}
        auth = {hostile.host: {"plainHTTP": True}, registry.host: auth_entry(registry)}
        capfd.readouterr()
        code, result = run_sync(tmp_path, images, auth, "--retries", "0")
        out, err = capfd.readouterr()
    why = case.why.replace("{host}", hostile.host)
    assert "Traceback" not in out + err, out + err
    assert code == EXIT_IMAGES_FAILED, out + err
    # The summary's one line for the failed image: it names the registry (the image's source) and what was wrong.
    summary = out.split("Failed images:", 1)[1].strip().splitlines() if "Failed images:" in out else []
    (line,) = [line for line in summary if hostile.host in line] or [out + err]
    assert line.strip().startswith(f"{hostile.host}/bad/app"), line
    assert why in line and len(line) < 1000, line
    assert [f["reason"] for f in result["failedImages"]] == [line.strip().split(": ", 1)[1]], result
    assert result["imagesSynced"] == 1 and result["imagesFailed"] == 1, result
    assert seed.get_manifest(registry, "copied/good", "1")[2] == good.digest
    assert not seed.manifest_exists(registry, "copied/bad", "1")


@pytest.mark.parametrize("tags", ["null", "[]"])
def test_a_tag_list_of_null_is_an_empty_repository(tags: str, registry: RegistryProcess, tmp_path: Any,
                                                   capfd: pytest.CaptureFixture[str]) -> None:
    """docker-registry answers ``"tags": null`` for a repository whose tags were all deleted: not garbage, no
    image, and the good rule beside it still syncs. The rule that copies nothing gets one warning line."""
    seed.push_image(registry, "good/app", "1", seed="good")
    with HostileServer(Garbage(tags=json_reply(f'{{"name": "bad/app", "tags": {tags}}}'))) as hostile:
        capfd.readouterr()
        code, result = run_sync(tmp_path, {f"{hostile.host}/bad/app": f"{registry.host}/copied/bad",
                                           f"{registry.host}/good/app:1": f"{registry.host}/copied/good"},
                                {hostile.host: {"plainHTTP": True}, registry.host: auth_entry(registry)})
        err = capfd.readouterr().err
    assert code == 0 and result["imagesSynced"] == 1 and result["imagesFailed"] == 0, result
    (warning,) = [line for line in err.splitlines() if "WARNING" in line]
    assert f"rule {hostile.host}/bad/app" in warning and f"{hostile.host}/bad/app lists no tags" in warning, warning


def test_a_tag_list_cut_mid_body_is_read_again(registry: RegistryProcess, tmp_path: Any) -> None:
    """A GET whose answer breaks off after its headers is sent again within the request (with --retries 0:
    not by a retry round), so one cut tags/list does not fail a whole all-tags rule."""
    answers = iter([Reply(200, {"Content-Type": "application/json", "Content-Length": "200", "Connection": "close"},
                          b'{"name": "bad/ap'),
                    json_reply('{"name": "bad/app", "tags": []}')])
    tag_lists: list[Received] = []

    def source(request: Received) -> Reply:
        if request.path == "/v2/":
            return json_reply("{}")
        tag_lists.append(request)
        return next(answers)

    with HostileServer(source) as hostile:
        code, result = run_sync(tmp_path, {f"{hostile.host}/bad/app": f"{registry.host}/copied/bad"},
                                {hostile.host: {"plainHTTP": True}, registry.host: auth_entry(registry)},
                                "--retries", "0")
    assert [r.path for r in tag_lists] == ["/v2/bad/app/tags/list"] * 2
    assert code == 0 and result["imagesFailed"] == 0, result
