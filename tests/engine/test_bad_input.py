"""A corpus of malformed ``imagesync sync`` inputs: files, rules, flags and auth entries.

Each case must end with one error line on standard error that names its culprit and says why, no
traceback, exit 2 when nothing could run and exit 1 when a bad rule sat beside a good one, whose image
must then really arrive at the target registry.

The cases run ``main()`` in-process (it is the ``imagesync`` entry point, so this is what users run):
a subprocess costs ~0.5 s of interpreter start-up per case on a busy machine. A few cases are repeated
through a real ``python -m imagesync.cli.main`` process, where the process's own limits (recursion,
memory) are the ones that count.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from cli_helpers import auth_for

from imagesync.cli.main import EXIT_BAD_INPUT, EXIT_IMAGES_FAILED, main
from imagesync.engine.config import MAX_FILE_BYTES
from testbed import seed
from testbed.certs import CertificateAuthority
from testbed.registry import RegistryProcess

# Files are written into the case's directory; "{dir}" in arguments, culprits and contents is that
# directory, "{src}"/"{dst}" are the source and target registries of cases with a good rule.
Maker = Callable[[Path], None]
Content = str | bytes | Maker

GOOD_SOURCE = "{src}/good/app:1"
VALID_RULES = '{"{src}/good/app:1": "{dst}/good/app"}'  # never reached when another file is bad


@dataclass(frozen=True)
class Case:
    id: str
    files: Mapping[str, Content]
    argv: tuple[str, ...]
    code: int
    culprit: str  # what the error line must name: a path, a rule, a flag, an auth key
    why: str  # and the reason it must give
    good_rule: bool = False  # a valid rule runs beside the bad one: its image must arrive
    workdir_is_cwd: bool = False


def directory(path: Path) -> None:
    path.mkdir()


def sparse(size: int) -> Maker:
    def make(path: Path) -> None:
        with path.open("wb") as file:
            file.truncate(size)  # no bytes written: fast, and reading it whole would still cost the size
    return make


def ca_bundle(path: Path) -> None:
    CertificateAuthority(path.parent / "ca").ca_file.rename(path)


def nested_aliases(levels: int = 9) -> str:
    """The "billion laughs": each level lists the previous one nine times (9^levels strings)."""
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


IMAGES = "{dir}/images.yaml"
IMAGES_JSON = "{dir}/images.json"
AUTH = "{dir}/auth.yaml"


def images_case(id: str, content: Content, why: str, *, name: str = "images.yaml",
                culprit: str | None = None) -> Case:
    """A rules file that cannot be used: nothing runs."""
    path = f"{{dir}}/{name}"
    return Case(id, {name: content}, ("--images", path), EXIT_BAD_INPUT, culprit or path, why)


def auth_case(id: str, content: Content, why: str, culprit: str = AUTH) -> Case:
    """A credentials file that cannot be used: nothing runs, not even the rules that need no credentials."""
    return Case(id, {"images.json": VALID_RULES, "auth.yaml": content},
                ("--images", IMAGES_JSON, "--auth", AUTH), EXIT_BAD_INPUT, culprit, why)


def rule_case(id: str, source: str, target: object, why: str) -> Case:
    """A malformed rule beside a good one: the bad one is reported, the good one's image arrives."""
    rules = json.dumps({GOOD_SOURCE: "{dst}/good/app", source: target})
    return Case(id, {"images.json": rules}, ("--images", IMAGES_JSON), EXIT_IMAGES_FAILED, source, why,
                good_rule=True)


def flag_case(id: str, flags: tuple[str, ...], culprit: str, why: str,
              files: Mapping[str, Content] | None = None) -> Case:
    """A flag that cannot be used: nothing runs."""
    return Case(id, {"images.json": VALID_RULES, **(files or {})}, ("--images", IMAGES_JSON, *flags),
                EXIT_BAD_INPUT, culprit, why)


DIGEST = "sha256:" + "a" * 64
OTHER_DIGEST = "sha256:" + "b" * 64

CASES: list[Case] = [
    # -- the rules file --------------------------------------------------------------------------
    images_case("images-missing", lambda path: None, "no such file"),
    images_case("images-directory", directory, "is a directory"),
    Case("images-under-a-file", {"images.yaml": "a: b\n"}, ("--images", "{dir}/images.yaml/x"),
         EXIT_BAD_INPUT, "{dir}/images.yaml/x", "cannot read"),
    images_case("images-binary-garbage", bytes(range(128, 256)) * 8, "not UTF-8"),
    images_case("images-control-characters", "a: b\x00\x01\n", "special characters are not allowed"),
    images_case("images-top-level-list", "- a\n- b\n", "must map sources to targets"),
    images_case("images-top-level-string", "just a string\n", "must map sources to targets"),
    images_case("images-bad-json", '{"a": "b",}', "invalid JSON at line 1", name="images.json"),
    images_case("images-bad-yaml", "a: [b\n", "invalid YAML at line 2"),
    images_case("images-huge", sparse(MAX_FILE_BYTES + 1), "larger than 16 MiB"),
    images_case("images-deep-json", "[" * 20000 + "]" * 20000, "nested more than", name="images.json"),
    images_case("images-deep-yaml-flow", "a: " + "[" * 20000 + "]" * 20000 + "\n", "nested more than"),
    images_case("images-deep-yaml-block", "".join(f"{'  ' * i}k{i}:\n" for i in range(40)) + "  " * 40 + "v\n",
                "nested more than"),
    images_case("images-billion-laughs", nested_aliases(), "aliases expand to more than"),
    images_case("images-recursive-alias", "a: &a [*a]\n", "refers to a node that contains it"),
    images_case("images-undefined-alias", "a: *nowhere\n", "undefined alias"),
    images_case("images-duplicate-key-yaml", "r.io/a/app: t.io/a/app\nr.io/a/app: t.io/b/app\n",
                "duplicate key 'r.io/a/app'"),
    images_case("images-duplicate-key-json", '{"r.io/a/app": "t.io/a/app", "r.io/a/app": "t.io/b/app"}',
                "duplicate key 'r.io/a/app'", name="images.json"),
    images_case("images-duplicate-key-int-and-string", '1: t.io/a/app\n"1": t.io/b/app\n', "duplicate key '1'"),
    images_case("images-empty", "", "no rules"),
    images_case("images-null", "null\n", "no rules"),
    images_case("images-empty-mapping", "{}", "no rules", name="images.json"),
    images_case("images-huge-integer", "r.io/a/app: " + "1" * 5000 + "\n", "Exceeds the limit"),
    images_case("images-python-tag", "a: !!python/object:os.system {}\n", "could not determine a constructor"),
    images_case("images-two-documents", "a: b\n---\nc: d\n", "but found another document"),
    # -- the credentials file --------------------------------------------------------------------
    auth_case("auth-missing", lambda path: None, "no such file"),
    auth_case("auth-directory", directory, "is a directory"),
    auth_case("auth-top-level-list", "- r.io\n", "must map registry keys"),
    auth_case("auth-entry-not-mapping", "r.io: [1, 2]\n", "must be a mapping", "'r.io'"),
    auth_case("auth-password-number", "r.io:\n  username: u\n  password: 0123\n", "password must be a string",
              "'r.io'"),
    auth_case("auth-missing-password", "r.io:\n  username: u\n", "username without password", "'r.io'"),
    auth_case("auth-missing-username", "r.io:\n  password: p\n", "password without username", "'r.io'"),
    auth_case("auth-insecure-string", "r.io:\n  insecure: 'yes'\n", "insecure must be true or false", "'r.io'"),
    auth_case("auth-unknown-field", "r.io:\n  usename: u\n", "unknown field(s) usename", "'r.io'"),
    auth_case("auth-ca-file-missing", "r.io:\n  caFile: nowhere.pem\n", "no such file", "nowhere.pem"),
    auth_case("auth-ca-file-garbage", "r.io:\n  caFile: images.json\n", "not a readable PEM", "'r.io'"),
    auth_case("auth-key-bad-port", "r.io:99999:\n  insecure: true\n", "invalid port 99999", "'r.io:99999'"),
    auth_case("auth-key-bad-host", "'bad host':\n  insecure: true\n", "invalid registry host", "'bad host'"),
    auth_case("auth-duplicate-key", "r.io: {insecure: true}\nr.io: {insecure: false}\n", "duplicate key 'r.io'"),
    auth_case("auth-billion-laughs", nested_aliases(), "aliases expand to more than"),
    # -- the legacy combined file ----------------------------------------------------------------
    Case("config-unknown-key", {"config.yaml": "auth: {}\nimages: {a: b}\nimage: {}\n"},
         ("--config", "{dir}/config.yaml"), EXIT_BAD_INPUT, "{dir}/config.yaml", "unknown top-level key(s) image"),
    Case("config-no-images", {"config.yaml": "auth: {}\n"}, ("--config", "{dir}/config.yaml"), EXIT_BAD_INPUT,
         "{dir}/config.yaml", "no rules"),
    Case("config-list", {"config.yaml": "- auth\n"}, ("--config", "{dir}/config.yaml"), EXIT_BAD_INPUT,
         "{dir}/config.yaml", "expected a mapping"),
    Case("config-and-images", {"config.yaml": "images: {a: b}\n", "images.json": VALID_RULES},
         ("--config", "{dir}/config.yaml", "--images", IMAGES_JSON), EXIT_BAD_INPUT, "--config", "cannot be combined"),
    # -- a malformed rule beside a good one ------------------------------------------------------
    rule_case("rule-port-too-big", "127.0.0.1:99999/bad/app:1", "{dst}/bad/app", "invalid port 99999"),
    rule_case("rule-port-zero", "127.0.0.1:0/bad/app:1", "{dst}/bad/app", "invalid port 0"),
    rule_case("rule-target-port-too-big", "{src}/bad/app:1", "127.0.0.1:70000/bad/app", "invalid port 70000"),
    rule_case("rule-bad-host", "bad_host.io/bad/app:1", "{dst}/bad/app", "invalid registry host"),
    rule_case("rule-upper-case-path", "{src}/Bad/app:1", "{dst}/bad/app", "invalid repository path component"),
    rule_case("rule-bad-tag", "{src}/bad/app:bad*tag", "{dst}/bad/app", "invalid tag"),
    rule_case("rule-tag-too-long", "{src}/bad/app:" + "t" * 129, "{dst}/bad/app", "invalid tag"),
    rule_case("rule-empty-tag-in-list", "{src}/bad/app:1,,2", "{dst}/bad/app", "empty tag"),
    rule_case("rule-bad-regex", "{src}/bad/app:/[unclosed/", "{dst}/bad/app", "invalid tag regex"),
    rule_case("rule-empty-regex", "{src}/bad/app://", "{dst}/bad/app", "empty tag regex"),
    rule_case("rule-short-digest", "{src}/bad/app@sha256:abc", "{dst}/bad/app", "invalid digest"),
    rule_case("rule-md5-digest", "{src}/bad/app@md5:" + "a" * 32, "{dst}/bad/app", "only sha256"),
    rule_case("rule-tags-and-digest", f"{{src}}/bad/app:1@{DIGEST}", "{dst}/bad/app", "not both"),
    rule_case("rule-tag-count-mismatch", "{src}/bad/app:1,2", "{dst}/bad/app:x", "counts must be equal"),
    rule_case("rule-target-digest-differs", f"{{src}}/bad/app@{DIGEST}", f"{{dst}}/bad/app@{OTHER_DIGEST}",
              "differs from the source digest"),
    rule_case("rule-target-digest-without-source-digest", "{src}/bad/app:1", f"{{dst}}/bad/app@{DIGEST}",
              "needs a source digest"),
    rule_case("rule-target-tags-for-all-tags", "{src}/bad/app", "{dst}/bad/app:x", "only when the source lists"),
    rule_case("rule-target-empty-tag", "{src}/bad/app:1", "{dst}/bad/app:", "invalid tag ''"),
    rule_case("rule-target-mapping", "{src}/bad/app:1", {"to": "{dst}/bad/app"}, "unknown key(s) 'to'"),
    rule_case("rule-target-list-with-number", "{src}/bad/app:1", [5], "each target must be a string"),
    rule_case("rule-target-empty-list", "{src}/bad/app:1", [], "must be a string, a list"),
    rule_case("rule-registry-only", "r.example.com:5000/", "{dst}/bad/app", "names a registry but no repository"),
    rule_case("rule-empty-target-no-default", "{src}/bad/app:1", "", "no default registry"),
    # -- flags -----------------------------------------------------------------------------------
    flag_case("flag-proc-not-a-number", ("--proc", "many"), "--proc", "not a number"),
    flag_case("flag-proc-negative", ("--proc", "-1"), "--proc", "must not be negative"),
    flag_case("flag-retries-fraction", ("--retries", "1.5"), "--retries", "not a number"),
    flag_case("flag-qps-nan", ("--qps", "nan"), "--qps", "not a finite number"),
    flag_case("flag-qps-infinite", ("--qps", "inf"), "--qps", "not a finite number"),
    flag_case("flag-output-unknown", ("--output", "xml"), "--output", "invalid choice"),
    flag_case("flag-unknown", ("--bogus",), "--bogus", "unrecognized arguments"),
    flag_case("flag-log-directory", ("--log", "{dir}"), "--log {dir}", "is a directory"),
    flag_case("flag-log-missing-directory", ("--log", "{dir}/no/such/sync.log"), "--log", "does not exist"),
    flag_case("flag-result-file-missing-directory", ("--result-file", "{dir}/no/result.json"), "--result-file",
              "does not exist"),
    flag_case("flag-result-file-directory", ("--result-file", "{dir}"), "--result-file", "is a directory"),
    flag_case("flag-ca-file-missing", ("--ca-file", "{dir}/none.pem"), "--ca-file {dir}/none.pem", "no such file"),
    flag_case("flag-ca-file-garbage", ("--ca-file", "{dir}/images.json"), "--ca-file", "not a readable PEM"),
    flag_case("flag-registry-bad-port", ("--registry", "r.io:123456", "--namespace", "ns"), "--registry",
              "invalid registry host"),
    flag_case("flag-namespace-upper-case", ("--registry", "r.io", "--namespace", "NS"), "--namespace",
              "invalid repository path component"),
    Case("flag-no-images", {}, (), EXIT_BAD_INPUT, "--images", "no rules given", workdir_is_cwd=True),
    # -- no rule at all is usable ----------------------------------------------------------------
    Case("only-bad-rules", {"images.json": '{"127.0.0.1:99999/a/app": "t.io/a/app"}'},
         ("--images", IMAGES_JSON), EXIT_BAD_INPUT, "127.0.0.1:99999/a/app", "invalid port 99999"),
]


pytestmark = pytest.mark.usefixtures("restore_logging")  # main() runs in-process here


def fill(text: str, values: Mapping[str, str]) -> str:
    for placeholder, value in values.items():
        text = text.replace(placeholder, value)
    return text


@dataclass
class Prepared:
    argv: list[str]
    culprit: str
    source: RegistryProcess | None = None
    target: RegistryProcess | None = None


def prepare(case: Case, workdir: Path, request: pytest.FixtureRequest) -> Prepared:
    values = {"{dir}": str(workdir)}
    argv = ["sync"]
    source = target = None
    if case.good_rule:
        source, target = request.getfixturevalue("registry"), request.getfixturevalue("registry2")
        seed.push_image(source, "good/app", "1", seed="good")
        values |= {"{src}": source.host, "{dst}": target.host}
        (workdir / "auth.json").write_text(json.dumps(auth_for(source, target)))
        argv += ["--auth", str(workdir / "auth.json"), "--result-file", str(workdir / "result.json")]
    for name, content in case.files.items():
        path = workdir / name
        if isinstance(content, str):
            path.write_text(fill(content, values))
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            content(path)
    argv += [fill(arg, values) for arg in case.argv]
    return Prepared(argv, fill(case.culprit, values), source, target)


def run_in_process(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse exits; the process would exit with this code
        return int(exc.code or 0)


def check(case: Case, prepared: Prepared, code: int, stderr: str, workdir: Path) -> None:
    assert "Traceback" not in stderr, stderr
    assert code == case.code, stderr
    error_lines = [line for line in stderr.splitlines() if "error" in line.lower()]
    assert len(error_lines) == 1, stderr
    (line,) = error_lines
    assert prepared.culprit in line and case.why in line, line
    # Named once: a bad rule is not reported again among the failures (argparse's usage lines aside).
    own_lines = [other for other in stderr.splitlines() if not other.startswith(("usage:", " "))]
    assert sum(prepared.culprit in other for other in own_lines) == 1, stderr
    if case.good_rule:
        assert prepared.target is not None
        assert seed.manifest_exists(prepared.target, "good/app", "1")
        result = json.loads((workdir / "result.json").read_text())
        assert result["imagesSynced"] == 1 and result["imagesFailed"] == 1, result


def test_the_corpus_is_large_and_ids_are_unique() -> None:
    assert len(CASES) >= 45
    assert len({case.id for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input(case: Case, tmp_path: Path, request: pytest.FixtureRequest, capfd: pytest.CaptureFixture[str],
                   monkeypatch: pytest.MonkeyPatch) -> None:
    workdir = tmp_path / "case"
    workdir.mkdir()
    monkeypatch.delenv("DEFAULT_REGISTRY", raising=False)
    monkeypatch.delenv("DEFAULT_NAMESPACE", raising=False)
    if case.workdir_is_cwd:
        monkeypatch.chdir(workdir)  # no ./images.json to fall back on
    prepared = prepare(case, workdir, request)
    capfd.readouterr()  # seeding's output is not the CLI's
    code = run_in_process(prepared.argv)
    check(case, prepared, code, capfd.readouterr().err, workdir)


# Through a real process: its own recursion limit and memory, and the exit code the shell sees.
SUBPROCESS_CASES = [case for case in CASES if case.id in (
    "images-billion-laughs", "images-deep-json", "images-deep-yaml-flow", "rule-port-too-big",
    "flag-log-directory", "flag-result-file-missing-directory")]


@pytest.mark.parametrize("case", SUBPROCESS_CASES, ids=[case.id for case in SUBPROCESS_CASES])
def test_bad_input_in_a_real_process(case: Case, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    workdir = tmp_path / "case"
    workdir.mkdir()
    prepared = prepare(case, workdir, request)
    env = {k: v for k, v in os.environ.items() if k not in ("DEFAULT_REGISTRY", "DEFAULT_NAMESPACE")}
    completed = subprocess.run([sys.executable, "-m", "imagesync.cli.main", *prepared.argv], capture_output=True,
                               text=True, timeout=120, check=False, env=env)
    check(case, prepared, completed.returncode, completed.stderr, workdir)
