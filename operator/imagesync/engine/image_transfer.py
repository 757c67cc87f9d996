"""image-transfer's files (tkestack/image-transfer): ``--securityFile`` and ``--ruleFile``.

Both are YAML mappings. The security file (``registry-secret.yaml``) has image-syncer's auth layout:
``registry`` or ``registry/namespace`` -> ``username``, ``password``, ``insecure``; it is read by
:func:`imagesync.engine.config.load_auth`, without ``${VAR}`` expansion (image-transfer expands nothing:
a ``$`` in a password is a character).

The rule file (``transfer-rule.yaml``) maps each source to exactly one target and names images the
way image-transfer splits them, which differs from image-syncer's language in these points:

- a name is cut at its first two ``/``: ``registry/namespace/repository`` (the repository keeps any
  further ``/``); ``namespace/repo`` (first part without a dot) and a bare ``repo`` are Docker Hub
  (``library`` for a bare one);
- the tag is what follows the ``:`` of the last part; ``tag1,tag2`` lists several (the target then
  names no tag, or the same list);
- an empty target goes to ``--registry``/``--ns`` under the source's repository (everything after the
  namespace) and tag;
- no tag regex, and one target per source (a list is refused: that is image-syncer's format).

:func:`translate_rules` rewrites such a file into image-syncer's language with every name fully
qualified, so the engine's own parser (:func:`imagesync.engine.rules.parse_rules`) checks and expands it,
and an ImageSyncJob (``imagesync convert``) can carry it unchanged. Digests (``repo@sha256:...``),
which image-transfer cannot parse, pass through to the engine.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from imagesync.engine.config import AuthTable, load_auth, load_images
from imagesync.engine.errors import ConfigError, RuleError
from imagesync.engine.reference import DOCKER_HUB, DOCKER_HUB_ALIASES, looks_like_host
from imagesync.engine.rules import Rule, parse_rules

# image-transfer's defaults and bounds (its options.go / configs.go).
DEFAULT_ROUTINES = 5
MAX_ROUTINES = 200
DEFAULT_RETRY = 2
DEFAULT_QPS = 100.0  # image-transfer limits requests to 100 per second unless --qps says otherwise
MAX_QPS = 30000.0


@dataclass(frozen=True)
class TransferName:
    registry: str
    namespace: str  # "" for registry/repo
    repo: str  # may hold '/': everything after the namespace
    tag: str  # "" for none; "a,b" for several
    digest: str | None = None  # an extension: image-transfer cannot parse one

    @property
    def repository(self) -> str:
        parts = [self.registry, self.namespace, self.repo] if self.namespace else [self.registry, self.repo]
        return "/".join(parts)

    def reference(self, tag: str | None = None) -> str:
        tag = self.tag if tag is None else tag
        if self.digest:
            return f"{self.repository}@{self.digest}"
        return f"{self.repository}:{tag}" if tag else self.repository


def split_name(text: str) -> TransferName:
    """image-transfer's ``NewRepoURL``: registry/namespace/repo:tag (see the module doc)."""
    name = text.strip()
    if not name:
        raise ValueError("empty name")
    digest = None
    if "@" in name.rsplit("/", 1)[-1]:
        name, _, digest = name.rpartition("@")
    parts = name.split("/", 2)
    last = parts[-1]
    pieces = last.split(":")
    if len(pieces) > 2:
        raise ValueError(f"invalid repository url: {text}")
    repo, tag = (pieces[0], pieces[1]) if len(pieces) == 2 else (pieces[0], "")
    if digest and tag:
        raise ValueError("give a tag or a digest, not both")
    if len(parts) == 3:
        registry, namespace = parts[0], parts[1]
        if not looks_like_host(registry):
            # image-transfer would connect to a host of that name; docker would read Docker Hub.
            raise ValueError(f"{registry!r} is not a registry host (no '.' or ':'): write the registry first, "
                             f"e.g. docker.io/{name}")
    elif len(parts) == 2:
        # image-transfer takes the first part for a registry only when it holds a dot; a host with a
        # port (localhost:5000, 127.0.0.1:5000) or "localhost" is one here too, as docker reads it.
        if "." in parts[0] or looks_like_host(parts[0]):
            registry, namespace = parts[0], ""
        else:
            registry, namespace = DOCKER_HUB, parts[0]
    else:
        registry, namespace = DOCKER_HUB, "library"
    if registry.lower() in DOCKER_HUB_ALIASES:  # registry.hub.docker.com in image-transfer's examples
        registry = DOCKER_HUB
    if not repo:
        raise ValueError(f"no repository name in {text!r}")
    return TransferName(registry, namespace, repo, tag, digest)


def translate_rules(document: Mapping[str, object], default_registry: str | None = None,
                    default_namespace: str | None = None) -> tuple[dict[str, object], list[RuleError]]:
    """image-transfer rules -> image-syncer rules (fully qualified), plus a RuleError per bad rule.

    Two sources that name the same repository and tags (``nginx`` and ``library/nginx``) become one
    image-syncer rule with a list of targets.
    """
    images: dict[str, object] = {}
    errors: list[RuleError] = []
    for key, value in document.items():
        source_text = str(key).strip()
        shown = f"{source_text} -> {value if value else '(default target)'}"
        if value is not None and not isinstance(value, str):
            errors.append(RuleError(shown if isinstance(value, str) else source_text,
                                    "image-transfer maps each source to one target string (several targets "
                                    "per source: use image-syncer's format with --images)"))
            continue
        try:
            source = split_name(source_text)
        except ValueError as exc:
            errors.append(RuleError(shown, f"source: {exc}"))
            continue
        try:
            target_text = _target(source, (value or "").strip(), default_registry, default_namespace)
        except ValueError as exc:
            errors.append(RuleError(shown, f"target: {exc}"))
            continue
        source_key = source.reference()
        existing = images.get(source_key)
        if existing is None:
            images[source_key] = target_text
        else:
            targets = existing if isinstance(existing, list) else [existing]
            if target_text not in targets:
                targets.append(target_text)
            images[source_key] = targets
    return images, errors


def _target(source: TransferName, text: str, default_registry: str | None, default_namespace: str | None) -> str:
    if not text:
        if not default_registry or not default_namespace:
            raise ValueError("the target is empty and no default registry and namespace are set "
                             "(--registry and --ns)")
        # image-transfer: registry/ns/<repo:tag of the source>; the engine keeps the source's tags.
        return f"{default_registry}/{default_namespace}/{source.repo}"
    target = split_name(text)
    if target.digest:
        return target.reference()
    if not target.tag:
        return target.repository
    if not source.tag and not source.digest:
        raise ValueError("the source names no tag (every tag), so the target may not name one")
    if "," in source.tag:
        if target.tag != source.tag:
            raise ValueError("a source with several tags takes a target without a tag (or the same tags)")
        return target.repository
    return target.reference()


def load_rules(path: str | Path, default_registry: str | None = None,
               default_namespace: str | None = None) -> tuple[list[Rule], list[RuleError]]:
    """A transfer-rule.yaml -> the engine's rules, plus the malformed ones (the others still run)."""
    document = load_images(path)
    if not document:
        raise ConfigError(f"{path}: no rules: the file is empty")
    images, errors = translate_rules(document, default_registry, default_namespace)
    rules, rule_errors = parse_rules(images)
    return rules, [*errors, *rule_errors]


def load_security(path: str | Path) -> AuthTable:
    """A registry-secret.yaml -> the engine's auth table (no environment expansion: see the module doc)."""
    return load_auth(path, expand=False)
