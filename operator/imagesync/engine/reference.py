"""Image references: ``[registry/]path[:tag][@digest]``, with Docker Hub's short names normalised."""

from __future__ import annotations

import re
from dataclasses import dataclass

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
# Names users write for Docker Hub; all mean the same registry.
DOCKER_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry.hub.docker.com", "registry-1.docker.io"})

# distribution/reference grammar: lower-case components separated by '/', each [a-z0-9]+ joined by
# '.', '_', '__' or runs of '-'.
_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*")
TAG_PATTERN = re.compile(r"[\w][\w.-]{0,127}")
DIGEST_PATTERN = re.compile(r"sha256:[0-9a-f]{64}")
_HOST = re.compile(r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
                   r"|\[[0-9a-fA-F:]+\])(?::(?P<port>[0-9]{1,5}))?")


class ReferenceError(ValueError):
    """A reference that is not a valid image name; the message says which part is wrong."""


def normalise_registry(host: str) -> str:
    return DOCKER_HUB if host.lower() in DOCKER_HUB_ALIASES else host.lower()


def check_registry_host(host: str) -> str:
    """``host[:port]`` as a registry address; the port is checked here, not when a socket refuses it
    mid-run (``OverflowError``), so one bad rule is reported and the others still run."""
    match = _HOST.fullmatch(host)
    if not match:
        raise ReferenceError(f"invalid registry host {host!r}")
    port = match.group("port")
    if port is not None and not 0 < int(port) < 65536:
        raise ReferenceError(f"invalid port {port} in registry host {host!r} (1-65535)")
    return host


def looks_like_host(component: str) -> bool:
    """Docker's rule: a first component with '.' or ':' (or 'localhost') names a registry."""
    return "." in component or ":" in component or component == "localhost"


@dataclass(frozen=True)
class Repository:
    registry: str  # host[:port], normalised (Docker Hub is "docker.io")
    path: str  # namespace/.../name

    @property
    def api_host(self) -> str:
        """Where the Registry API answers (Docker Hub's API is not on docker.io)."""
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    def __str__(self) -> str:
        return f"{self.registry}/{self.path}"


@dataclass(frozen=True)
class ImageRef:
    repo: Repository
    tag: str | None = None
    digest: str | None = None

    def __str__(self) -> str:
        text = str(self.repo)
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def parse_repository(name: str) -> Repository:
    """``nginx`` -> docker.io/library/nginx; ``host:5000/a/b`` -> (host:5000, a/b)."""
    name = name.strip()
    if not name:
        raise ReferenceError("empty repository name")
    first, sep, rest = name.partition("/")
    if sep and looks_like_host(first):
        registry, path = normalise_registry(check_registry_host(first)), rest
    else:
        registry, path = DOCKER_HUB, name
    if not path:
        raise ReferenceError(f"{name!r} names a registry but no repository")
    if registry == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"
    return Repository(registry, check_repository_path(path))


# The distribution spec bounds a repository name (path) to 255 characters.
MAX_REPOSITORY_PATH = 255


def check_repository_path(path: str) -> str:
    """A repository path (``namespace/.../name``) by the distribution grammar, or a ReferenceError."""
    if len(path) > MAX_REPOSITORY_PATH:
        raise ReferenceError(f"repository path longer than {MAX_REPOSITORY_PATH} characters")
    for component in path.split("/"):
        if not _COMPONENT.fullmatch(component) or not component.isascii():
            raise ReferenceError(
                f"invalid repository path component {component[:80]!r} (lower-case letters, digits and "
                f"'.', '_', '-' separators only)")
    return path


def parse_prefix(text: str) -> Repository:
    """``host/`` (a whole registry) or ``host/namespace/`` (every repository under it): a Repository
    whose path is the namespace ("" for the whole registry). The registry must be named."""
    name = text.strip()
    if not name.endswith("/"):
        raise ReferenceError(f"{name!r} is not a registry or namespace prefix (those end with '/')")
    first, _, rest = name[:-1].partition("/")
    if not first or not looks_like_host(first):
        raise ReferenceError(f"{name!r}: a whole-registry or namespace source/target names its registry "
                             f"(host/ or host/namespace/; a host has a '.' or a ':port', or is localhost)")
    registry = normalise_registry(check_registry_host(first))
    return Repository(registry, check_repository_path(rest) if rest else "")


def split_reference(text: str) -> tuple[str, str | None, str | None]:
    """``name[:tags][@digest]`` -> (name, tag part or None, digest or None), without validating tags.

    The tag part is what follows the last ':' after the last '/', so a registry port is not a tag.
    """
    name, at, digest = text.partition("@")
    tag_part: str | None = None
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        name, tag_part = name[:colon], name[colon + 1:]
    return name, tag_part, (digest if at else None)


def check_tag(tag: str) -> str:
    if not TAG_PATTERN.fullmatch(tag):
        raise ReferenceError(f"invalid tag {tag!r}")
    return tag


def check_digest(digest: str) -> str:
    if not digest.startswith("sha256:"):
        raise ReferenceError(f"unsupported digest {digest!r} (only sha256 digests are supported)")
    if not DIGEST_PATTERN.fullmatch(digest):
        raise ReferenceError(f"invalid digest {digest!r} (expected sha256: and 64 lower-case hex digits)")
    return digest


def parse_image(text: str) -> ImageRef:
    """A single image reference (one tag or one digest)."""
    name, tag, digest = split_reference(text.strip())
    return ImageRef(parse_repository(name), check_tag(tag) if tag else None,
                    check_digest(digest) if digest else None)
