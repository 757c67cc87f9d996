"""image-syncer's files: auth lookup precedence, env expansion, comments, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from imagesync.engine.config import AuthEntry, AuthTable, load_auth, load_images, load_legacy_config
from imagesync.engine.errors import ConfigError
from imagesync.engine.reference import parse_repository
from testbed.certs import CertificateAuthority

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "image-syncer"


@pytest.mark.parametrize("order", [1, -1])
def test_longest_prefix_wins_whatever_the_order(order: int) -> None:
    entries = [("quay.io", "registry"), ("quay.io/coreos", "namespace"), ("quay.io/coreos/deep", "deeper")]
    table = AuthTable({k: AuthEntry(k, username=u) for k, u in entries[::order]})
    def user(name: str) -> str | None:
        entry = table.lookup(parse_repository(name))
        return entry.username if entry else None
    assert user("quay.io/coreos/kube-rbac-proxy") == "namespace"
    assert user("quay.io/coreos/deep/app") == "deeper"
    assert user("quay.io/other/app") == "registry"
    assert user("quay.io/coreosx/app") == "registry"  # prefixes match whole path segments only
    assert user("ghcr.io/coreos/app") is None


def test_docker_hub_aliases_match() -> None:
    table = AuthTable({"registry.hub.docker.com": AuthEntry("registry.hub.docker.com", username="hub")})
    entry = table.lookup(parse_repository("nginx"))
    assert entry is not None and entry.username == "hub"


def test_env_expansion_only_braced_or_whole_value(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """${VAR} anywhere, $VAR only as the whole value (image-syncer's two documented forms); any other '$' is
    a character, so a password like pa$word survives (Go's os.ExpandEnv made it 'pa')."""
    monkeypatch.setenv("REG_USER", "robot")
    monkeypatch.setenv("REG_PASS", "s3cret")
    monkeypatch.setenv("word", "EXPANDED")
    auth = tmp_path / "auth.yaml"
    auth.write_text('r.io:\n  username: "${REG_USER}"\n  password: "$REG_PASS"\n'
                    'p.io:\n  username: "u-${REG_USER}-$REG_USER"\n  password: "pa$word"\n'
                    'e.io:\n  username: "$$REG_USER"\n  password: "$${REG_PASS}$$x$1${}"\n')
    table = load_auth(auth)
    entry = table.lookup(parse_repository("r.io/a/b"))
    assert entry is not None and (entry.username, entry.password) == ("robot", "s3cret")
    assert "s3cret" not in repr(entry)
    entry = table.lookup(parse_repository("p.io/a/b"))
    assert entry is not None and (entry.username, entry.password) == ("u-robot-$REG_USER", "pa$word")
    entry = table.lookup(parse_repository("e.io/a/b"))
    assert entry is not None and (entry.username, entry.password) == ("$REG_USER", "${REG_PASS}$$x$1${}")


def test_env_expansion_of_an_unset_variable_is_empty(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As Go's: image-syncer's README example ("${env}") loads."""
    monkeypatch.delenv("UNSET_VAR", raising=False)
    auth = tmp_path / "auth.yaml"
    auth.write_text('r.io:\n  username: "$UNSET_VAR"\n  password: "x-${UNSET_VAR}"\n')
    entry = load_auth(auth).lookup(parse_repository("r.io/a/b"))
    assert entry is not None and (entry.username, entry.password) == ("", "x-")


def test_files_written_from_secrets_are_never_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker's auth file (expand=False): passwords and caFile are taken as written."""
    monkeypatch.setenv("HOME_CA", str(tmp_path / "elsewhere"))
    CertificateAuthority(tmp_path).ca_file.rename(tmp_path / "${HOME_CA}")
    (tmp_path / "auth.yaml").write_text('r.io:\n  username: u\n  password: "${HOME_CA}"\n  caFile: "${HOME_CA}"\n')
    entry = load_auth(tmp_path / "auth.yaml", expand=False).lookup(parse_repository("r.io/a/b"))
    assert entry is not None and entry.password == "${HOME_CA}"
    assert entry.ca_file == str(tmp_path / "${HOME_CA}")


def test_json_with_comments_and_urls_in_strings(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text('{\n  // credentials\n  "auth": {"r.io": {"username": "a//b", /* inline */ "password": "p"}},\n'
                      '  "images": {"r.io/a/app": "t.io/a/app"} // rules\n}\n')
    auth, images = load_legacy_config(config)
    entry = auth.lookup(parse_repository("r.io/a/app"))
    assert entry is not None and entry.username == "a//b"
    assert images == {"r.io/a/app": "t.io/a/app"}


def test_relative_ca_file_resolves_next_to_the_auth_file(tmp_path: Path) -> None:
    CertificateAuthority(tmp_path).ca_file.rename(tmp_path / "ca-0.pem")  # the file must load: it is checked
    (tmp_path / "auth.yaml").write_text("r.io:\n  caFile: ca-0.pem\n")
    entry = load_auth(tmp_path / "auth.yaml").lookup(parse_repository("r.io/a/b"))
    assert entry is not None and entry.ca_file == str(tmp_path / "ca-0.pem")


@pytest.mark.parametrize(("content", "name", "why"), [
    ("r.io:\n  username: x\n  password: 0123\n", "auth.yaml", "password must be a string"),
    ("r.io: [1, 2]\n", "auth.yaml", "must be a mapping"),
    ("r.io:\n  insecure: maybe\n", "auth.yaml", "insecure must be true or false"),
    ("r.io:\n  usename: x\n", "auth.yaml", "unknown field"),
    ("{ not json", "auth.json", "invalid JSON at line 1"),
    ("a: [b\n", "auth.yaml", "invalid YAML at line 2"),
])
def test_bad_auth_files_name_what_is_wrong(tmp_path: Path, content: str, name: str, why: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ConfigError, match=why) as info:
        load_auth(path)
    assert "0123" not in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_images(tmp_path / "absent.yaml")


@pytest.mark.parametrize("form", ["json", "yaml"])
def test_image_syncer_readme_files_load_unchanged(form: str) -> None:
    auth = load_auth(EXAMPLES / f"auth.{form}")
    images = load_images(EXAMPLES / f"images.{form}")
    entry = auth.lookup(parse_repository("quay.io/coreos/kube-rbac-proxy"))
    assert entry is not None and entry.insecure
    assert "quay.io/coreos/kube-rbac-proxy" in images


def test_image_syncer_readme_legacy_config_loads_unchanged() -> None:
    auth, images = load_legacy_config(EXAMPLES / "config.json")
    assert len(auth) == 4
    assert images["xxx/xxx/xx:tag1,tag2,tag3"] == "xxx/xxx/xx"
