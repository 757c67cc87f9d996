"""image-syncer's configuration files: ``--auth``, ``--images`` and the legacy combined ``--config``.

JSON (image-syncer's README examples carry ``//`` comments, so comments are accepted) or YAML, by file
extension. Credentials may reference the environment (``${VAR}`` / ``$VAR``, Go's ``os.ExpandEnv``
semantics: unset variables expand to nothing).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from imagesync.engine.errors import ConfigError
from imagesync.engine.reference import Repository, normalise_registry

_ENV_VAR = re.compile(r"\$\{([^}]*)\}|\$([A-Za-z0-9_]+)")


def expand_env(value: str, env: Mapping[str, str] | None = None) -> str:
    environ = os.environ if env is None else env
    return _ENV_VAR.sub(lambda m: environ.get(m.group(1) if m.group(1) is not None else m.group(2), ""), value)


@dataclass(frozen=True)
class AuthEntry:
    key: str  # as written: "registry" or "registry/namespace"
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # never in a repr, a log or a message
    insecure: bool = False
    ca_file: str | None = None


@dataclass(frozen=True)
class _Prefix:
    registry: str
    path: tuple[str, ...]

    def matches(self, repo: Repository) -> bool:
        parts = tuple(repo.path.split("/"))
        return repo.registry == self.registry and parts[:len(self.path)] == self.path


def _prefix(key: str) -> _Prefix:
    text = re.sub(r"^[a-z]+://", "", key.strip()).strip("/")
    registry, _, path = text.partition("/")
    return _Prefix(normalise_registry(registry), tuple(p for p in path.split("/") if p))


def auth_key_matches(key: str, repo: Repository) -> bool:
    """Whether an auth key (``registry`` or ``registry/namespace``) applies to ``repo``."""
    return _prefix(key).matches(repo)


class AuthTable:
    """Credentials by ``registry`` or ``registry/namespace`` key; the longest matching prefix wins.

    image-syncer's own lookup depends on Go's map order when several keys match; here the key with
    the most path components wins, and equal ones (aliases such as docker.io and
    registry.hub.docker.com) are decided by key order, so the answer never varies between runs.
    """

    def __init__(self, entries: Mapping[str, AuthEntry]) -> None:
        self._entries = [(_prefix(key), entry) for key, entry in sorted(entries.items())]

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, repo: Repository) -> AuthEntry | None:
        best: tuple[int, AuthEntry] | None = None
        for prefix, entry in self._entries:
            if prefix.matches(repo) and (best is None or len(prefix.path) > best[0]):
                best = (len(prefix.path), entry)
        return best[1] if best else None


def strip_json_comments(text: str) -> str:
    """Remove ``//`` and ``/* */`` comments outside strings (URLs inside strings keep their ``//``)."""
    out: list[str] = []
    i, n = 0, len(text)
    in_string = False
    while i < n:
        c = text[i]
        if in_string:
            out.append(c)
            if c == "\\" and i + 1 < n:
                out.append(text[i + 1])
                i += 2
                continue
            if c == '"':
                in_string = False
            i += 1
        elif c == '"':
            in_string = True
            out.append(c)
            i += 1
        elif text.startswith("//", i):
            end = text.find("\n", i)
            i = n if end < 0 else end  # keep the newline: line numbers in errors stay right
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            comment = text[i:n if end < 0 else end + 2]
            out.append("\n" * comment.count("\n"))
            i = n if end < 0 else end + 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _read_document(path: str | Path) -> Any:
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{file}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{file}: cannot read: {exc}") from exc
    suffix = file.suffix.lower()
    if suffix == ".json" or (suffix not in (".yaml", ".yml") and text.lstrip().startswith("{")):
        try:
            return json.loads(strip_json_comments(text))
        except json.JSONDecodeError as exc:
            if suffix == ".json":
                raise ConfigError(f"{file}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") \
                    from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise ConfigError(f"{file}: invalid YAML{where}: {problem}") from None


def _text_field(source: str, key: str, name: str, value: Any, expand: bool = True) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        # YAML reads `password: 0123` as the number 83: refuse rather than log in with the wrong secret.
        raise ConfigError(f"{source}: auth entry {key!r}: {name} must be a string (quote it in YAML)")
    return expand_env(value) if expand else value


def parse_auth(document: Any, source: str, base_dir: Path | None = None, *, expand: bool = True) -> AuthTable:
    """``expand=False`` for files written from Secrets: a '$' in a password is a character, not a variable."""
    if document is None:
        return AuthTable({})
    if not isinstance(document, Mapping):
        raise ConfigError(f"{source}: the auth section must map registry keys to credentials")
    entries: dict[str, AuthEntry] = {}
    for key, value in document.items():
        key = str(key)
        if value is None:
            value = {}
        if not isinstance(value, Mapping):
            raise ConfigError(f"{source}: auth entry {key!r} must be a mapping with username/password/insecure")
        unknown = set(value) - {"username", "password", "insecure", "caFile", "ca_file"}
        if unknown:
            raise ConfigError(f"{source}: auth entry {key!r}: unknown field(s) {', '.join(sorted(map(str, unknown)))}")
        insecure = value.get("insecure", False)
        if not isinstance(insecure, bool):
            raise ConfigError(f"{source}: auth entry {key!r}: insecure must be true or false")
        ca_file = _text_field(source, key, "caFile", value.get("caFile", value.get("ca_file")))
        if ca_file and base_dir is not None and not os.path.isabs(ca_file):
            ca_file = str(base_dir / ca_file)  # relative to the auth file, as mounted Secrets need
        entries[key] = AuthEntry(key, _text_field(source, key, "username", value.get("username"), expand),
                                 _text_field(source, key, "password", value.get("password"), expand),
                                 insecure, ca_file)
    return AuthTable(entries)


def parse_images(document: Any, source: str) -> dict[str, object]:
    if document is None:
        return {}
    if not isinstance(document, Mapping):
        raise ConfigError(f"{source}: the images section must map sources to targets")
    return {str(k): v for k, v in document.items()}


def load_auth(path: str | Path, *, expand: bool = True) -> AuthTable:
    return parse_auth(_read_document(path), str(path), Path(path).resolve().parent, expand=expand)


def load_images(path: str | Path) -> dict[str, object]:
    return parse_images(_read_document(path), str(path))


def load_legacy_config(path: str | Path) -> tuple[AuthTable, dict[str, object]]:
    document = _read_document(path)
    if not isinstance(document, Mapping):
        raise ConfigError(f"{path}: expected a mapping with 'auth' and 'images'")
    unknown = set(document) - {"auth", "images"}
    if unknown:
        raise ConfigError(f"{path}: unknown top-level key(s) {', '.join(sorted(map(str, unknown)))} "
                          f"(expected 'auth' and 'images')")
    return (parse_auth(document.get("auth"), f"{path} (auth)", Path(path).resolve().parent),
            parse_images(document.get("images"), f"{path} (images)"))
