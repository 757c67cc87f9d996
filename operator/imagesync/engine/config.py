"""image-syncer's configuration files: ``--auth``, ``--images`` and the legacy combined ``--config``.

JSON (image-syncer's README examples carry ``//`` comments, so comments are accepted) or YAML, by file
extension. Credentials may reference the environment: see :func:`expand_env`.
"""

from __future__ import annotations

import json
import os
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imagesync.engine.errors import ConfigError
from imagesync.engine.reference import ReferenceError, Repository, check_registry_host, normalise_registry
from imagesync.engine.transport import parse_rate

_ENV_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_ENV_BRACED = re.compile(r"(\$?)\$\{(" + _ENV_NAME + r")\}")  # ${VAR}, or $${VAR} (escaped)
_ENV_WHOLE = re.compile(r"(\$?)\$(" + _ENV_NAME + r")")  # a value that is exactly $VAR (or $$VAR)

# Bounds for files that may be hostile or simply the wrong file (a log, an image tarball, /dev/zero).
# A rules file with a hundred thousand rules is a few MiB.
MAX_FILE_BYTES = 16 * 1024 * 1024
# The deepest real config is four levels (legacy file -> auth -> entry -> field); refusing anything far
# deeper happens before a parser recurses towards Python's limit (RecursionError).
MAX_NESTING = 32
# Anchors and aliases have real uses (one credential for several registries, a shared target list), but
# each alias stands for a whole copy of its node wherever the document is walked or printed: ten nested
# aliases ("billion laughs") are 10^9 nodes. This bounds what all aliases of a file may stand for.
MAX_ALIAS_NODES = 10_000


def expand_env(value: str, env: Mapping[str, str] | None = None) -> str:
    """Expand environment references in a username or password, the forms image-syncer documents.

    - ``${VAR}`` anywhere in the value is replaced by the variable;
    - a value that is exactly ``$VAR`` is replaced by the variable (image-syncer's ``"$env"`` form);
    - any other ``$`` is a character: ``pa$word``, ``$1abc``, ``a$b$c`` stay as written. (Go's
      ``os.ExpandEnv``, which image-syncer uses, turned ``pa$word`` into ``pa``.)

    Escaping: ``$${VAR}`` is the literal text ``${VAR}``, and the whole value ``$$VAR`` is the literal
    ``$VAR``; no other ``$$`` changes. A variable that is not set expands to nothing, as in Go (image-syncer's
    own README example, ``"${env}"``, must load).
    """
    environ = os.environ if env is None else env

    def lookup(name: str) -> str:
        return environ.get(name, "")

    whole = _ENV_WHOLE.fullmatch(value)
    if whole is not None:
        return value[1:] if whole.group(1) else lookup(whole.group(2))
    return _ENV_BRACED.sub(lambda m: "${" + m.group(2) + "}" if m.group(1) else lookup(m.group(2)), value)


@dataclass(frozen=True)
class AuthEntry:
    key: str  # as written: "registry" or "registry/namespace"
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # never in a repr, a log or a message
    insecure: bool = False  # image-syncer's: see transport.Endpoint for what it means here
    ca_file: str | None = None
    skip_tls_verify: bool = False  # HTTPS without certificate verification; never plain HTTP
    plain_http: bool = False  # plain HTTP only, credentials included: the user said so for this registry
    limit_rate: float | None = None  # bytes/second to and from this registry (limitRate), else --limit-rate


@dataclass(frozen=True)
class _Prefix:
    registry: str
    path: tuple[str, ...]

    def matches(self, repo: Repository) -> bool:
        parts = tuple(repo.path.split("/"))
        return repo.registry == self.registry and parts[:len(self.path)] == self.path


def _split_key(key: str) -> tuple[str, str]:
    """``[scheme://]registry[/namespace...]`` -> (registry, namespace path)."""
    registry, _, path = re.sub(r"^[a-z]+://", "", key.strip()).strip("/").partition("/")
    return registry, path


def _prefix(key: str) -> _Prefix:
    registry, path = _split_key(key)
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

    def limit_rate(self, repo: Repository) -> float | None:
        """The limitRate of ``repo``'s registry: the bandwidth limit is per registry host, so among entries
        for namespaces of one registry the smallest limit applies to all of them."""
        rates = [entry.limit_rate for prefix, entry in self._entries
                 if prefix.registry == repo.registry and entry.limit_rate is not None]
        return min(rates) if rates else None


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


class _DuplicateKey(Exception):
    pass


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` for JSON: Python's json, like Go's, would keep the last of two equal keys."""
    document: dict[str, Any] = {}
    for key, value in pairs:
        if key in document:
            raise _DuplicateKey(key)
        document[key] = value
    return document


def _json_nesting(document: Any) -> int:
    """Depth of a parsed JSON document, without recursion."""
    deepest, stack = 0, [(document, 1)]
    while stack:
        value, depth = stack.pop()
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else None
        if children is not None:
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in children)
    return deepest


def _read_text(file: Path) -> str:
    try:
        with file.open("rb") as stream:
            # Read one byte past the bound, never the whole of a huge file or an endless device.
            data = stream.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"{file}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{file}: is a directory, not a file") from None
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(f"{file}: larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB: not a configuration file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{file}: not UTF-8 text (byte {exc.start}): not a configuration file") from None


def _read_document(path: str | Path) -> Any:
    file = Path(path)
    text = _read_text(file)
    suffix = file.suffix.lower()
    if suffix == ".json" or (suffix not in (".yaml", ".yml") and text.lstrip().startswith("{")):
        try:
            document = json.loads(strip_json_comments(text), object_pairs_hook=_unique_object)
        except _DuplicateKey as exc:
            raise ConfigError(f"{file}: duplicate key {exc.args[0]!r} (list several targets under one key)") \
                from None
        except RecursionError:
            raise ConfigError(f"{file}: nested more than {MAX_NESTING} levels deep") from None
        except json.JSONDecodeError as exc:
            if suffix == ".json":
                raise ConfigError(f"{file}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") \
                    from None
        except ValueError as exc:  # an integer of more than 4300 digits: the first clause says so
            raise ConfigError(f"{file}: invalid JSON: {str(exc).split(':')[0]}") from None
        else:
            if _json_nesting(document) > MAX_NESTING:
                raise ConfigError(f"{file}: nested more than {MAX_NESTING} levels deep")
            return document
    # Here, not at the top: PyYAML is a slow import, and files named .json (image-syncer's defaults) never need it.
    from imagesync.engine.yaml_config import read_yaml

    return read_yaml(file, text)


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
        try:
            check_registry_host(_split_key(key)[0])
        except ReferenceError as exc:
            raise ConfigError(f"{source}: auth entry {key!r}: {exc}") from None
        if value is None:
            value = {}
        if not isinstance(value, Mapping):
            raise ConfigError(f"{source}: auth entry {key!r} must be a mapping with username/password/insecure")
        unknown = set(value) - {"username", "password", "insecure", "caFile", "ca_file", "skipTLSVerify",
                                "plainHTTP", "limitRate"}
        if unknown:
            raise ConfigError(f"{source}: auth entry {key!r}: unknown field(s) {', '.join(sorted(map(str, unknown)))}")
        flags: dict[str, Any] = {}
        for flag in ("insecure", "skipTLSVerify", "plainHTTP"):
            flags[flag] = value.get(flag, False)
            if not isinstance(flags[flag], bool):
                raise ConfigError(f"{source}: auth entry {key!r}: {flag} must be true or false")
        # Like the credentials: never env-expanded where they are not (files the operator writes).
        ca_file = _text_field(source, key, "caFile", value.get("caFile", value.get("ca_file")), expand)
        check_tls_settings(flags["skipTLSVerify"], flags["plainHTTP"], bool(ca_file), f"{source}: auth entry {key!r}")
        if ca_file and base_dir is not None and not os.path.isabs(ca_file):
            ca_file = str(base_dir / ca_file)  # relative to the auth file, as mounted Secrets need
        if ca_file:
            check_ca_file(ca_file, f"{source}: auth entry {key!r}: caFile")
        username = _text_field(source, key, "username", value.get("username"), expand)
        password = _text_field(source, key, "password", value.get("password"), expand)
        if (username is None) != (password is None):
            # Half a credential would log in anonymously and fail every image with a 401 mid-run.
            given, missing = ("username", "password") if password is None else ("password", "username")
            raise ConfigError(f"{source}: auth entry {key!r}: {given} without {missing}")
        entries[key] = AuthEntry(key, username, password, flags["insecure"], ca_file,
                                 skip_tls_verify=flags["skipTLSVerify"], plain_http=flags["plainHTTP"],
                                 limit_rate=_limit_rate(source, key, value.get("limitRate")))
    return AuthTable(entries)


def _limit_rate(source: str, key: str, value: Any) -> float | None:
    """``limitRate: 20MiB/s`` (or a number of bytes per second): the bandwidth limit for this registry."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ConfigError(f"{source}: auth entry {key!r}: limitRate must be a rate such as 20MiB/s")
    try:
        return parse_rate(str(value))
    except ValueError as exc:
        raise ConfigError(f"{source}: auth entry {key!r}: limitRate: {exc}") from None


def check_tls_settings(skip_tls_verify: bool, plain_http: bool, ca_file: bool, culprit: str) -> None:
    """Settings that contradict each other: refused rather than one silently winning."""
    if skip_tls_verify and plain_http:
        raise ConfigError(f"{culprit}: skipTLSVerify (HTTPS, certificate not checked) and plainHTTP (no TLS at "
                          f"all) exclude each other: choose one")
    if ca_file and (skip_tls_verify or plain_http):
        raise ConfigError(f"{culprit}: caFile verifies the registry's certificate, which "
                          f"{'skipTLSVerify skips' if skip_tls_verify else 'plainHTTP has none of'}: choose one")


def check_ca_file(ca_file: str, culprit: str) -> None:
    """A CA file that cannot be loaded would fail every image of its registries mid-run: refuse it now.

    ``culprit`` names where the path was given (a flag, or a file and auth entry) for the message.
    """
    try:
        # A bare context loads no system certificates: only the file itself is read and parsed.
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=ca_file)
    except FileNotFoundError:
        raise ConfigError(f"{culprit} {ca_file}: no such file") from None
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{culprit} {ca_file}: not a readable PEM CA bundle ({exc.strerror or exc})") from None


def parse_images(document: Any, source: str) -> dict[str, object]:
    if document is None:
        return {}
    if not isinstance(document, Mapping):
        raise ConfigError(f"{source}: the images section must map sources to targets")
    images: dict[str, object] = {}
    for key, value in document.items():
        # YAML's 1 and "1" are different keys but the same rule source: one would silently replace the other.
        if str(key) in images:
            raise ConfigError(f"{source}: duplicate key {str(key)!r} (list several targets under one key)")
        images[str(key)] = value
    return images


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
