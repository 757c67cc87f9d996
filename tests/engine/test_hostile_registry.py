"""Issue 11's acceptance: one run of the installed CLI against hostile registries.

Hostile registries (:class:`testbed.hostile.HostileServer`, real HTTP(S) listeners on 127.0.0.1) redirect, lie
in ``Location``, ``Link`` and ``realm``, list traversal tags, send decompression bombs, a huge manifest and
endless pages. Every URL they hand out (but one redirect's, to the registry itself) points at a
:class:`testbed.hostile.Witness`, another host (another port: the engine scopes credentials to scheme, host and
port) that records what reaches it and answers with a lure, a token realm on itself. Each attack is one rule of
ONE ``imagesync sync`` run, a subprocess, beside a good rule between two real docker-registry instances.

The run must end with exit 1 and, for every hostile rule, one error line naming the image and what was wrong;
no traceback; the good image copied; no ``Authorization`` at the witness, and no request at all where the
engine has to refuse before sending; no request on the real target outside each rule's target repository;
and a peak RSS of the whole process under 150 MiB, while each bomb inflates to 200 MiB (an unbounded read
would pass that).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml
from cli_helpers import auth_for

from imagesync.cli.main import EXIT_IMAGES_FAILED
from testbed import seed
from testbed.certs import CertificateAuthority
from testbed.hostile import HostileServer, Received, Reply, Witness, endless_bytes, gzip_bomb, json_reply
from testbed.registry import RegistryProcess

MiB = 1024 * 1024
PEAK_RSS_LIMIT = 150 * MiB
USER, PASSWORD = "alice", "s3cret-password"
BASIC = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
BOMB = gzip_bomb(200 * MiB)  # ~200 KB on the wire
HUGE = 256 * MiB  # the huge manifest, sent a chunk at a time
TRAVERSAL_TAGS = ["../../victim/manifests/pwned", "a?b", "x#y", "v1%2f..%2fvictim"]
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"

Server = Literal["basic", "tls", "token-bomb", "token-redirect", "http-realm"]


@dataclass(frozen=True)
class Case:
    """One hostile rule. ``name`` is its repository on the hostile registry (``NAME/app``) and the first path
    component of every witness URL it hands out."""

    name: str
    server: Server  # the hostile registry that plays it (each has its own challenge and scheme)
    side: Literal["source", "target"]  # the hostile registry is the rule's source, or its target
    reason: str  # a regex the error line's reason must match
    witness: Literal["nothing", "unauthenticated"]  # what the witness may receive for this case
    tag: str | None = "1"  # None: the rule lists the source's tags


CASES = [
    Case("redirect-elsewhere", "basic", "source", r"reading manifest \S+/redirect-elsewhere/app:1: 401 unauthorized",
         "unauthenticated"),
    Case("redirect-to-http", "tls", "source", r"is HTTPS but sent us to http://\S+: refused", "nothing"),
    Case("upload-elsewhere", "basic", "target",
         r"uploading blob sha256:[0-9a-f]+ to \S+/upload-elsewhere/app: 401 unauthorized", "unauthenticated"),
    Case("upload-to-http", "tls", "target", r"is HTTPS but sent us to http://\S+/upload: refused", "nothing"),
    Case("link-elsewhere", "basic", "source", r"listing tags of \S+/link-elsewhere/app: 401 unauthorized",
         "unauthenticated", tag=None),
    Case("link-to-http", "tls", "source", r"is HTTPS but sent us to http://\S+/tags/list: refused", "nothing",
         tag=None),
    Case("link-loop", "basic", "source", r"the Link header leads back to a page already read", "nothing", tag=None),
    Case("endless-pages", "basic", "source", r"more than 1000 pages; stopped", "nothing", tag=None),
    Case("traversal-tags", "basic", "source", r"lists '[^']+', which is not a valid tag: skipped", "nothing",
         tag=None),
    Case("manifest-bomb", "basic", "source", r"is too large \(over 4 MiB", "nothing"),
    Case("error-bomb", "basic", "source", r"manifest unknown at the source \(reading manifest \S+: 404 not found\)$",
         "nothing"),
    Case("huge-manifest", "basic", "source", r"is too large \(over 4 MiB", "nothing"),
    # A redirect whose (unread) body inflates to 200 MiB, to the registry's own 404.
    Case("redirect-bomb", "basic", "source",
         r"manifest unknown at the source \(reading manifest \S+: 404 not found: MANIFEST_UNKNOWN\)$", "nothing"),
    Case("token-bomb", "token-bomb", "source", r"token server for \S+ sent an answer larger than 64 KiB: refused",
         "nothing"),
    Case("token-redirect", "token-redirect", "source", r"login to \S+ rejected by its token server \(401",
         "unauthenticated"),
    Case("http-realm", "http-realm", "source", r"token realm http://\S+ is plain HTTP: refused", "nothing"),
]


def case_of(request: Received) -> str:
    """The case a request to a hostile registry belongs to: ``/v2/NAME/app/...``."""
    parts = request.path.split("/")
    return parts[2] if len(parts) > 3 and parts[1] == "v2" else ""


def witness_case(request: Received) -> str:
    """The case whose URL brought a request to the witness: ``/CASE/...`` or ``/v2/CASE/app/...``."""
    parts = request.path.split("/")
    return parts[2] if parts[1] == "v2" else parts[1]


class HostileRegistry:
    """The answers of one hostile registry: each case's attack, on the repository ``CASE/app``.

    ``challenge``: ``basic`` wants our Basic credentials on every request; ``bearer`` sends us to ``realm``
    (``{self}`` is the registry's own URL) and answers the token request with ``token``.
    """

    def __init__(self, witness: Witness, challenge: Literal["basic", "bearer"], realm: str = "{self}/token",
                 token: Reply | None = None) -> None:
        self.witness = witness
        self.challenge, self.realm, self.token = challenge, realm, token
        self.url = ""  # set once the listener has its port

    def __call__(self, request: Received) -> Reply:
        if request.path == "/token":
            return self.token or json_reply('{"token": "t"}')
        if not self._authorized(request):
            realm = self.realm.replace("{self}", self.url)
            challenge = 'Basic realm="hostile"' if self.challenge == "basic" else f'Bearer realm="{realm}",service="h"'
            return Reply(401, {"WWW-Authenticate": challenge, "Content-Type": "application/json"},
                         b'{"errors": [{"code": "UNAUTHORIZED"}]}')
        if request.path == "/v2/":
            return json_reply("{}")
        return self._attack(case_of(request), request)

    def _authorized(self, request: Received) -> bool:
        if self.challenge == "basic":
            return request.authorization == BASIC
        return (request.authorization or "").startswith("Bearer ")

    def _attack(self, case: str, request: Received) -> Reply:
        witness = self.witness.url  # plain HTTP: another host for all, a downgrade for the HTTPS registries
        if request.path.endswith("/tags/list"):
            return self._tags(case, request)
        if case in ("redirect-elsewhere", "redirect-to-http"):
            return Reply(307, {"Location": f"{witness}/{case}/redirected"})
        if case == "manifest-bomb":
            return Reply(200, {"Content-Type": OCI_MANIFEST, "Content-Encoding": "gzip"}, BOMB)
        if case == "error-bomb":
            return Reply(404, {"Content-Type": "application/json", "Content-Encoding": "gzip"}, BOMB)
        if case == "redirect-bomb" and not request.path.endswith("/moved"):
            return Reply(307, {"Location": f"/v2/{case}/app/manifests/moved", "Content-Encoding": "gzip"}, BOMB)
        if case == "huge-manifest":
            return Reply(200, {"Content-Type": OCI_MANIFEST, "Content-Length": str(HUGE)}, stream=endless_bytes(HUGE))
        if case in ("upload-elsewhere", "upload-to-http") and request.method == "POST":
            return Reply(202, {"Location": f"{witness}/{case}/upload?_state=signed-upload-secret"})
        return Reply(404, {"Content-Type": "application/json"}, b'{"errors": [{"code": "MANIFEST_UNKNOWN"}]}')

    def _tags(self, case: str, request: Received) -> Reply:
        here = f"/v2/{case}/app/tags/list"
        if case in ("link-elsewhere", "link-to-http"):
            return json_reply('{"tags": ["1"]}', Link=f'<{self.witness.url}{here}?last=1>; rel="next"')
        if case == "link-loop":
            return json_reply('{"tags": ["1"]}', Link=f'<{here}?n=1>; rel="next"')
        if case == "endless-pages":
            page = int(request.target.rsplit("last=t", 1)[1]) + 1 if "last=t" in request.target else 0
            return json_reply(f'{{"tags": ["t{page}"]}}', Link=f'<{here}?last=t{page}>; rel="next"')
        if case == "traversal-tags":
            return json_reply(json.dumps({"name": f"{case}/app", "tags": TRAVERSAL_TAGS}))
        return Reply(404, {"Content-Type": "application/json"}, b'{"errors": [{"code": "NAME_UNKNOWN"}]}')


@dataclass(frozen=True)
class Finished:
    code: int
    stdout: str
    stderr: str
    peak_rss: int  # bytes: the process's own high-water mark, as the kernel counted it


# Runs the CLI in a process of its own and reports what wait4(2) says of it: "exited CODE MAXRSS_KIB" or
# "signal N MAXRSS_KIB". Why a launcher: posix_spawn is vfork then exec, and at exec the kernel folds the
# high-water RSS of the address space being left (the pytest worker's, shared until then) into the child's
# ru_maxrss. Spawned straight from a worker that once held 400 MiB (an earlier test), the CLI "peaks" at
# 400 MiB. The launcher is a fresh interpreter (a few MiB): what it passes on to its own child is negligible.
_LAUNCHER = """
import os, sys
pid = os.posix_spawn(sys.argv[2], sys.argv[2:], os.environ)
_, status, usage = os.wait4(pid, 0)
how = f"exited {os.WEXITSTATUS(status)}" if os.WIFEXITED(status) else f"signal {os.WTERMSIG(status)}"
with open(sys.argv[1], "w") as report:
    report.write(f"{how} {usage.ru_maxrss}")
"""


def run_cli(argv: list[str], workdir: Path, timeout: float = 120) -> Finished:
    """Run the installed CLI as its own process and measure its peak RSS with wait4(2): the kernel's maxrss
    of exactly that child, whatever it allocated (C buffers and zlib's included, which tracemalloc misses),
    and nothing of this process's (see _LAUNCHER)."""
    out, err, waited = workdir / "stdout", workdir / "stderr", workdir / "wait4"
    launcher = [sys.executable, "-I", "-c", _LAUNCHER, str(waited)]
    pid = os.posix_spawn(sys.executable, [*launcher, sys.executable, "-m", "imagesync.cli.main", *argv],
                         dict(os.environ), setpgroup=0,
                         file_actions=[(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                                       (os.POSIX_SPAWN_OPEN, 1, str(out), os.O_WRONLY | os.O_CREAT, 0o600),
                                       (os.POSIX_SPAWN_OPEN, 2, str(err), os.O_WRONLY | os.O_CREAT, 0o600)])
    watchdog = threading.Timer(timeout, os.killpg, (pid, 9))  # the launcher's group: the CLI too
    watchdog.start()
    try:
        _, status = os.waitpid(pid, 0)
    finally:
        watchdog.cancel()
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"launcher failed ({status}; timeout {timeout} s?)"
    how, code, maxrss_kib = waited.read_text().split()
    assert how == "exited", f"imagesync killed (signal {code}; timeout {timeout} s?)"
    return Finished(int(code), out.read_text(), err.read_text(), int(maxrss_kib) * 1024)


@pytest.fixture
def witness() -> Iterator[Witness]:
    with Witness() as server:
        yield server


@dataclass(frozen=True)
class Hostiles:
    servers: dict[Server, HostileServer]
    ca_file: Path  # the CA of the HTTPS ones

    def auth_entry(self, name: Server) -> dict[str, Any]:
        reached: dict[str, Any] = ({"caFile": str(self.ca_file)} if self.servers[name].url.startswith("https:")
                                   else {"plainHTTP": True})
        return {**reached, "username": USER, "password": PASSWORD}


@pytest.fixture
def hostiles(witness: Witness, tmp_path: Path) -> Iterator[Hostiles]:
    """The hostile registries, by the name the cases use, each with our credentials in the auth file."""
    ca = CertificateAuthority(tmp_path / "ca")
    registries: dict[Server, tuple[HostileRegistry, bool]] = {
        "basic": (HostileRegistry(witness, "basic"), False),
        "tls": (HostileRegistry(witness, "basic"), True),
        # The token answer inflates to 200 MiB.
        "token-bomb": (HostileRegistry(witness, "bearer", token=Reply(
            200, {"Content-Type": "application/json", "Content-Encoding": "gzip"}, BOMB)), False),
        # The token realm (the registry's own) redirects the request, our Basic credentials on it, to the witness.
        "token-redirect": (HostileRegistry(witness, "bearer", token=Reply(
            307, {"Location": f"{witness.url}/token-redirect/token"})), False),
        # An HTTPS registry names a plain-HTTP realm on the witness.
        "http-realm": (HostileRegistry(witness, "bearer", realm=f"http://{witness.host}/http-realm/token"), True),
    }
    with contextlib.ExitStack() as stack:
        servers: dict[Server, HostileServer] = {}
        for name, (answers, tls) in registries.items():
            servers[name] = stack.enter_context(HostileServer(answers, tls=ca.issue_server() if tls else None))
            answers.url = servers[name].url
        yield Hostiles(servers, ca.ca_file)


def test_hostile_registries_fail_their_own_images_and_nothing_else(
        hostiles: Hostiles, witness: Witness, registry: RegistryProcess, registry2: RegistryProcess,
        tmp_path: Path) -> None:
    good = seed.push_image(registry, "src/good", "1", seed="good")
    rules: dict[str, str] = {f"{registry.host}/src/good:1": f"{registry2.host}/mirror/good"}
    for case in CASES:
        on_hostile = f"{hostiles.servers[case.server].host}/{case.name}/app"
        if case.side == "source":
            rules[on_hostile + (f":{case.tag}" if case.tag else "")] = f"{registry2.host}/mirror/{case.name}"
        else:
            seed.push_image(registry, f"src/{case.name}", "1", layers=(2000,), seed=case.name)
            rules[f"{registry.host}/src/{case.name}:1"] = on_hostile
    auth = {**auth_for(registry, registry2),
            **{server.host: hostiles.auth_entry(name) for name, server in hostiles.servers.items()}}
    (tmp_path / "images.yaml").write_text(yaml.safe_dump(rules))
    (tmp_path / "auth.yaml").write_text(yaml.safe_dump(auth))
    target_mark = registry2.log_mark()

    finished = run_cli(["sync", "--images", str(tmp_path / "images.yaml"), "--auth", str(tmp_path / "auth.yaml"),
                        "--retries", "0", "--timeout", "20", "--result-file", str(tmp_path / "result.json")],
                       tmp_path)
    # The lead's figure: printed (pytest -s, or -rP) whether the test passes or not.
    print(f"imagesync peak RSS {finished.peak_rss / MiB:.1f} MiB (limit {PEAK_RSS_LIMIT / MiB:.0f} MiB)")
    assert "Traceback" not in finished.stdout + finished.stderr, finished.stderr
    assert finished.code == EXIT_IMAGES_FAILED, finished.stdout + finished.stderr
    assert finished.peak_rss < PEAK_RSS_LIMIT, f"peak RSS {finished.peak_rss / MiB:.1f} MiB"

    # The rest of the run is undisturbed.
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["imagesSynced"] == 1, result
    assert seed.get_manifest(registry2, "mirror/good", "1")[2] == good.digest

    # No credential left for another host: the witness saw no Authorization and no token request for the
    # lure it offers; only the cases that may follow a foreign URL (without credentials) reached it at all.
    assert witness.authorizations() == []
    assert "/token" not in [r.path for r in witness.received]
    assert {witness_case(r) for r in witness.received} == {c.name for c in CASES if c.witness == "unauthenticated"}
    # ... while the hostile registries did get our credentials (on the request they redirected, too).
    assert any(r.authorization == BASIC for r in hostiles.servers["basic"].received)
    assert any(r.path == "/token" and r.authorization == BASIC for r in hostiles.servers["token-redirect"].received)

    # Nothing landed outside a rule's repository: on the real target, nor on the hostile registries.
    targets = tuple({f"/v2/mirror/{c.name}/" for c in CASES if c.side == "source"} | {"/v2/mirror/good/"})
    target_log = registry2.request_log(target_mark)
    assert [r.target for r in target_log if r.path != "/v2/" and not r.path.startswith(targets)] == []
    assert [r.target for r in target_log if "traversal-tags" in r.path or "victim" in r.target] == []
    for name, server in hostiles.servers.items():
        its_own = tuple(f"/v2/{c.name}/app/" for c in CASES if c.server == name)
        assert [r.target for r in server.received
                if r.path not in ("/v2/", "/token") and not r.path.startswith(its_own)] == []
    assert {r.path for r in hostiles.servers["basic"].received if case_of(r) == "traversal-tags"} == {
        "/v2/traversal-tags/app/tags/list"}

    # Every hostile rule ends in its own clear error: one line per image, naming it and what was wrong.
    failed_lines = finished.stdout.split("Failed images:", 1)[1].strip().splitlines()
    assert len(result["failedImages"]) == len(failed_lines) == len(CASES) - 1 + len(TRAVERSAL_TAGS), result
    for case in CASES:
        image = f"{hostiles.servers[case.server].host}/{case.name}/app"
        failures = [f for f in result["failedImages"] if f[case.side].startswith(image)]
        assert len(failures) == (len(TRAVERSAL_TAGS) if case.name == "traversal-tags" else 1), (case, failures)
        for failure in failures:
            reason = failure["reason"]
            assert re.search(case.reason, reason), (case, reason)
            assert "\n" not in reason and len(reason) < 400 and "signed-upload-secret" not in reason, reason
            (line,) = [line for line in failed_lines if line.strip().startswith(failure["source"])]
            assert line.endswith(reason), (line, reason)


def test_peak_rss_is_the_clis_own_not_what_this_process_once_held(tmp_path: Path) -> None:
    """The measurement the acceptance test relies on: after this process has held 300 MiB (as a pytest
    worker may, from an earlier test), the CLI's peak still reads as its own few dozen MiB. Spawned straight
    from here, wait4 reported this process's high-water mark instead (a CI run: 418 MiB for a 78 MiB run)."""
    held = bytearray(300 * MiB)
    held[::4096] = b"\1" * len(range(0, len(held), 4096))  # every page touched: resident
    del held
    finished = run_cli(["--help"], tmp_path)
    assert finished.code == 0, finished.stderr
    assert finished.peak_rss < PEAK_RSS_LIMIT, f"peak RSS {finished.peak_rss / MiB:.1f} MiB"
