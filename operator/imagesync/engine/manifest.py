"""Manifest media types, parsing, and the platform filter.

Manifests are copied byte for byte; this module only reads them to learn what they reference. The one
exception is the platform filter, which must write a new index (and so gives it a new digest).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from imagesync.engine.errors import ImageSyncError, clip

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"

INDEX_TYPES = frozenset({DOCKER_MANIFEST_LIST, OCI_INDEX})
IMAGE_TYPES = frozenset({DOCKER_MANIFEST, OCI_MANIFEST})
SCHEMA1_TYPES = frozenset({DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED})

# What we ask registries for: every type we can copy, plus schema 1 so that we can name it in an error
# instead of receiving a registry-converted variant.
ACCEPT = ", ".join([OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST,
                    DOCKER_SCHEMA1_SIGNED, DOCKER_SCHEMA1])


# The OCI descriptor grammar (algorithm:encoded); which algorithms we can verify is decided where blobs are
# copied. Bounds a hostile registry's digest before it reaches a URL path or a message.
_DIGEST = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]{1,256}")
MAX_SIZE = 2**63 - 1  # an OCI descriptor's size is an int64


class ManifestError(ImageSyncError):
    """A manifest we cannot copy (unsupported type, unparsable)."""


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: dict[str, Any] | None = None

    @property
    def platform_name(self) -> str:
        p = self.platform or {}
        name = f"{p.get('os', '?')}/{p.get('architecture', '?')}"
        return f"{name}/{p['variant']}" if p.get("variant") else name


@dataclass(frozen=True)
class Manifest:
    """Manifest bytes as the registry served them, and what they reference."""

    data: bytes
    media_type: str
    digest: str

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES

    def _json(self) -> dict[str, Any]:
        try:
            # Decoded first: json.loads would guess UTF-16/32 from leading NULs and report a codec error.
            parsed = json.loads(self.data.decode("utf-8"))
        except UnicodeDecodeError:
            raise ManifestError(f"manifest {self.digest} is not valid JSON (not UTF-8 text)") from None
        except (ValueError, RecursionError) as exc:  # RecursionError: thousands of nested brackets
            raise ManifestError(f"manifest {self.digest} is not valid JSON: {clip(str(exc), 120)}") from None
        if not isinstance(parsed, dict):
            raise ManifestError(f"manifest {self.digest} is not a JSON object")
        return parsed

    def children(self) -> list[Descriptor]:
        """Manifests an index references (in index order)."""
        return [_descriptor(d, self.digest, f"manifests[{i}]")
                for i, d in enumerate(_listed(self._json(), "manifests", self.digest))]

    def blobs(self) -> list[Descriptor]:
        """Config first, then layers; duplicates removed (a layer may repeat in one image)."""
        body = self._json()
        entries: list[tuple[str, Any]] = []
        if "config" in body or self.media_type in IMAGE_TYPES:
            entries.append(("config", body.get("config")))
        entries.extend((f"layers[{i}]", layer) for i, layer in enumerate(_listed(body, "layers", self.digest)))
        seen: set[str] = set()
        result = []
        for where, entry in entries:
            descriptor = _descriptor(entry, self.digest, where)
            if descriptor.digest not in seen:
                seen.add(descriptor.digest)
                result.append(descriptor)
        return result


def _listed(body: dict[str, Any], key: str, parent: str) -> list[Any]:
    value = body.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise ManifestError(f"manifest {parent}: {key} is not a list but {type(value).__name__} "
                            f"{clip(repr(value), 60)}")
    return value


def _descriptor(entry: Any, parent: str, where: str = "descriptor") -> Descriptor:
    if entry is None:
        raise ManifestError(f"manifest {parent}: {where} is missing")
    if not isinstance(entry, dict):
        raise ManifestError(f"manifest {parent}: {where} is not a descriptor object but {type(entry).__name__} "
                            f"{clip(repr(entry), 60)}")
    digest = entry.get("digest")
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        shown = "no digest" if digest is None else f"digest {clip(repr(digest), 100)}, which is not algorithm:hex"
        raise ManifestError(f"manifest {parent}: {where} has {shown}")
    size = entry.get("size")
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= MAX_SIZE:
        raise ManifestError(f"manifest {parent}: {where} ({digest}) has size {clip(repr(size), 40)}, not a whole "
                            f"number of bytes from 0 to 2^63-1")
    platform = entry.get("platform")
    return Descriptor(str(entry.get("mediaType", "")), entry["digest"], size,
                      platform if isinstance(platform, dict) else None)


def detect_media_type(data: bytes, header_type: str) -> str:
    """The manifest's type: the Content-Type the registry sent, or the document's own mediaType."""
    header_type = header_type.split(";")[0].strip()
    if header_type in INDEX_TYPES | IMAGE_TYPES | SCHEMA1_TYPES:
        return header_type
    try:
        body = json.loads(data)
    except ValueError:
        return header_type
    if isinstance(body, dict):
        if isinstance(body.get("mediaType"), str):
            return str(body["mediaType"])
        if body.get("schemaVersion") == 1:
            return DOCKER_SCHEMA1
        if "manifests" in body:
            return OCI_INDEX
        if "layers" in body:
            return OCI_MANIFEST
    return header_type


def check_supported(media_type: str) -> None:
    if media_type in SCHEMA1_TYPES:
        raise ManifestError(
            "unsupported manifest type: Docker schema 1 is deprecated and cannot be copied byte for byte "
            "to modern registries; re-push the image with a current client"
        )
    if media_type not in INDEX_TYPES | IMAGE_TYPES:
        raise ManifestError(f"unsupported manifest type {media_type or '(none)'}")


@dataclass(frozen=True)
class PlatformFilter:
    """image-syncer's ``--os`` / ``--arch`` lists: ``os[:osversion]`` and ``arch[:variant]``."""

    oses: tuple[str, ...] = ()
    arches: tuple[str, ...] = ()
    # Exact platforms, "os/arch[/variant]" (the ImageSyncJob's `platforms`): any one must match.
    platforms: tuple[str, ...] = ()

    @property
    def active(self) -> bool:
        return bool(self.oses or self.arches or self.platforms)

    def matches(self, platform: dict[str, Any] | None) -> bool:
        p = platform or {}
        if self.platforms and not any(_match_platform(wanted, p) for wanted in self.platforms):
            return False
        return _match_any(self.oses, p.get("os"), p.get("os.version")) and _match_any(
            self.arches, p.get("architecture"), p.get("variant"))


def _match_platform(wanted: str, platform: dict[str, Any]) -> bool:
    os_name, _, rest = wanted.partition("/")
    arch, _, variant = rest.partition("/")
    return (os_name == platform.get("os") and arch == platform.get("architecture")
            and (not variant or variant == platform.get("variant")))


def _match_any(wanted: Sequence[str], value: Any, detail: Any) -> bool:
    if not wanted:
        return True
    for item in wanted:
        name, _, qualifier = item.partition(":")
        if name == value and (not qualifier or qualifier == detail):
            return True
    return False


def filter_index(index: Manifest, platforms: PlatformFilter) -> Manifest:
    """Keep only the children whose platform matches; the index is rewritten, so its digest changes.

    Every field other than ``manifests`` is preserved; the document is re-serialised compactly.
    """
    body = index._json()
    kept = [entry for entry, child in zip(body.get("manifests") or [], index.children(), strict=True)
            if platforms.matches(child.platform)]
    if not kept:
        wanted = ", ".join(platforms.oses + platforms.arches + platforms.platforms)
        available = ", ".join(c.platform_name for c in index.children()) or "none"
        raise ManifestError(f"no platform of the index matches the filter ({wanted}); available: {available}")
    if len(kept) == len(body.get("manifests") or []):
        return index  # nothing filtered out: keep the original bytes and digest
    body["manifests"] = kept
    data = json.dumps(body, separators=(",", ":")).encode()
    return Manifest(data, index.media_type, sha256_digest(data))
