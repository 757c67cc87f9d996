"""Which ``spec.worker`` choices an ImageSyncJob may make (issue 11, point 8): pure, spec + settings -> refusals.

Whoever may create an ImageSyncJob makes the operator create a Job in that namespace. Left free, its
``spec.worker`` would run any image as any ServiceAccount of the namespace on any node it tolerates: more
than creating an ImageSyncJob should allow. The operator's settings (controller/settings.py) allowlist:

- images (``IMAGESYNC_ALLOWED_WORKER_IMAGES``; default: the repository of the configured worker image, any
  tag or digest of it). An entry is ``*`` (any image), ``sha256:<hex>`` (any image pinned to that digest),
  ``host/`` or ``host/namespace/`` (everything under that registry or namespace: the trailing ``/`` says
  so), ``host/repository`` (that repository, any tag or digest) or ``host/repository:tag`` /
  ``host/repository@sha256:<hex>`` (exactly that image). Names are compared normalised the way the kubelet
  pulls them (``busybox`` is ``docker.io/library/busybox``) and by whole path components, so
  ``r.example.com/imagesync`` does not allow ``r.example.com/imagesync-evil``.
- ServiceAccounts (``IMAGESYNC_ALLOWED_WORKER_SERVICE_ACCOUNTS``; default: none besides the configured one).
- toleration keys (``IMAGESYNC_ALLOWED_TOLERATION_KEYS``; default: none; a toleration without a key
  tolerates every taint and needs ``*``) and nodeSelector keys (``IMAGESYNC_ALLOWED_NODE_SELECTOR_KEYS``;
  default: none).

The configured worker image and ServiceAccount are always allowed: naming them is the same as leaving the
field out. ``spec.worker.resources`` is not limited here (a namespace's ResourceQuota and LimitRange are).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from imagesync.controller.settings import ANY, OperatorSettings, SettingsError
from imagesync.controller.spec import WorkerSpec
from imagesync.engine.reference import (
    DIGEST_PATTERN,
    ImageRef,
    ReferenceError,
    check_registry_host,
    looks_like_host,
    normalise_registry,
    parse_image,
    parse_repository,
    split_reference,
)

REASON = "WorkerNotAllowed"
MAX_VALUE = 200  # a refused value is quoted in conditions and events: at most this many characters


@dataclass(frozen=True)
class Refusal:
    """One ``spec.worker`` choice the operator's settings do not allow."""

    field: str  # e.g. spec.worker.image, spec.worker.tolerations[1].key
    value: str
    setting: str  # the operator setting (env) that would allow it
    noun: str = ""  # what the value is, when the field does not say ("key")

    @property
    def message(self) -> str:
        noun = f"{self.noun} " if self.noun else ""
        return f"{self.field}: {noun}{_quote(self.value)} is not allowed by the operator's {self.setting}"


@dataclass(frozen=True)
class ImageRule:
    """One parsed entry of the image allowlist."""

    kind: str  # "any", "digest", "prefix" (registry or namespace), "repository", "exact"
    registry: str = ""
    path: str = ""  # repository path, or for "prefix" the namespace path ("" for a whole registry)
    tag: str | None = None
    digest: str | None = None

    def allows(self, image: ImageRef) -> bool:
        repo = image.repo
        if self.kind == "any":
            return True
        if self.kind == "digest":
            return image.digest == self.digest
        if repo.registry != self.registry:
            return False
        if self.kind == "prefix":
            return not self.path or repo.path.startswith(self.path + "/")
        if repo.path != self.path:
            return False
        if self.kind == "repository":
            return True
        if self.digest is not None:
            return image.digest == self.digest
        return image.tag == self.tag and image.digest is None  # a digest would pull other content than the tag


def image_rule(entry: str) -> ImageRule:
    """An allowlist entry -> its rule; :class:`SettingsError` when it is not one of the documented forms."""
    text = entry.strip()
    try:
        if text == ANY:
            return ImageRule("any")
        if text.startswith("sha256:"):
            if not DIGEST_PATTERN.fullmatch(text):
                raise ReferenceError("expected sha256: and 64 lower-case hex digits")
            return ImageRule("digest", digest=text)
        if text.endswith("/"):
            if "//" in text:
                raise ReferenceError("empty path component")
            host, _, namespace = text[:-1].partition("/")
            if not looks_like_host(host):
                raise ReferenceError("a prefix starts with a registry host (with a '.' or ':', or localhost; "
                                     "Docker Hub is docker.io/)")
            registry = normalise_registry(check_registry_host(host))
            for component in namespace.split("/") if namespace else ():
                parse_repository(f"{registry}/{component}/x")  # each namespace component as in a repository
            return ImageRule("prefix", registry=registry, path=namespace)
        if "/" not in text and looks_like_host(split_reference(text)[0]):
            raise ReferenceError("a registry alone ends with / (host/)")  # else: Docker Hub's library/<host>
        image = parse_image(text)
        if image.tag is None and image.digest is None:
            return ImageRule("repository", registry=image.repo.registry, path=image.repo.path)
        return ImageRule("exact", registry=image.repo.registry, path=image.repo.path, tag=image.tag,
                         digest=image.digest)
    except ReferenceError as exc:
        raise SettingsError(f"allowed worker image {entry!r}: {exc} (expected *, sha256:<digest>, host/, "
                            f"host/namespace/, host/repository or host/repository:tag)") from None


def default_image_rules(worker_image: str) -> tuple[ImageRule, ...]:
    """No image allowlist set: the configured worker image's repository (any tag or digest of it)."""
    try:
        repo = parse_image(worker_image).repo
    except ReferenceError:
        return ()  # only the configured image itself (compared as written)
    return (ImageRule("repository", registry=repo.registry, path=repo.path),)


def image_rules(settings: OperatorSettings) -> tuple[ImageRule, ...]:
    if not settings.allowed_worker_images:
        return default_image_rules(settings.worker_image)
    return tuple(image_rule(entry) for entry in settings.allowed_worker_images)


def image_allowed(image: str, settings: OperatorSettings) -> bool:
    if image == settings.worker_image:
        return True
    if image != image.strip():
        return False  # the API server refuses a container image with surrounding whitespace
    try:
        ref = parse_image(image)
    except ReferenceError:
        return False  # not an image reference a kubelet would pull: refused whatever the list says
    return any(rule.allows(ref) for rule in image_rules(settings))


def _listed(value: str, allowed: Iterable[str]) -> bool:
    entries = set(allowed)
    return ANY in entries or value in entries


def worker_refusals(worker: WorkerSpec, settings: OperatorSettings) -> list[Refusal]:
    """Every ``spec.worker`` choice ``settings`` do not allow, in field order (empty: all allowed)."""
    refusals: list[Refusal] = []
    if worker.image is not None and not image_allowed(worker.image, settings):
        refusals.append(Refusal("spec.worker.image", worker.image, "IMAGESYNC_ALLOWED_WORKER_IMAGES"))
    account = worker.service_account
    if account is not None and account != settings.worker_service_account \
            and not _listed(account, settings.allowed_worker_service_accounts):
        refusals.append(Refusal("spec.worker.serviceAccountName", account,
                                "IMAGESYNC_ALLOWED_WORKER_SERVICE_ACCOUNTS"))
    for index, toleration in enumerate(worker.tolerations):
        key = toleration.get("key")
        if ANY in settings.allowed_toleration_keys:
            continue
        if not isinstance(key, str) or not key:
            refusals.append(Refusal(f"spec.worker.tolerations[{index}]", _toleration(toleration),
                                    "IMAGESYNC_ALLOWED_TOLERATION_KEYS (a toleration without a key tolerates "
                                    "every taint: only * allows it)"))
        elif key not in settings.allowed_toleration_keys:
            refusals.append(Refusal(f"spec.worker.tolerations[{index}].key", key,
                                    "IMAGESYNC_ALLOWED_TOLERATION_KEYS"))
    for key in worker.node_selector:
        if not _listed(str(key), settings.allowed_node_selector_keys):
            refusals.append(Refusal("spec.worker.nodeSelector", str(key), "IMAGESYNC_ALLOWED_NODE_SELECTOR_KEYS",
                                    noun="key"))
    return refusals


def refusal_message(refusals: list[Refusal], limit: int = 5) -> str:
    """One condition/event message for ``refusals`` (the first ``limit``, then how many more)."""
    shown = "; ".join(r.message for r in refusals[:limit])
    more = f" (and {len(refusals) - limit} more)" if len(refusals) > limit else ""
    return shown + more


def _quote(value: str) -> str:
    text = repr(value)
    return text if len(text) <= MAX_VALUE else text[:MAX_VALUE - 1] + "…"


def _toleration(toleration: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(toleration.items())) or "{}"
