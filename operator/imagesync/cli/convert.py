"""``imagesync convert``: image-syncer's or image-transfer's files -> manifests for a GitOps repository.

One ImageSyncJob (the rules, unchanged for image-syncer's files; fully qualified for image-transfer's),
one RegistryCredential per auth entry, and one Secret per entry with credentials
(``kubernetes.io/basic-auth``, ``stringData``, labelled for the operator's opt-in). Passwords appear in
the Secrets only; with ``--no-secrets`` the Secrets are templates whose values are placeholders, and no
credential from the input appears anywhere in the output.

Pure: no Kubernetes client, nothing but files read and YAML written. The manifests pin no namespace
unless ``--namespace`` asks for one (``kubectl apply -n``, a kustomization's ``namespace:``, or Flux's
``targetNamespace`` decide).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imagesync.engine.config import AuthEntry, AuthTable, load_auth, load_images, load_legacy_config
from imagesync.engine.errors import ConfigError, ImageSyncError
from imagesync.engine.image_transfer import DEFAULT_QPS as TRANSFER_QPS
from imagesync.engine.image_transfer import MAX_ROUTINES, load_security, translate_rules
from imagesync.engine.rules import parse_rules

API_VERSION = "imagesync.dev/v1alpha1"
OPT_IN_LABEL = "imagesync.dev/credential"  # controller/credentials.py: the operator reads labelled Secrets only
PLACEHOLDER = "REPLACE-ME"
_REGISTRY_KEY = re.compile(r"[A-Za-z0-9.-]+(:[0-9]+)?(/[a-z0-9]+([._-][a-z0-9]+)*)*")  # the CRD's pattern
_NAME_MAX = 253


@dataclass(frozen=True)
class ConvertOptions:
    name: str
    namespace: str | None = None
    secrets: bool = True  # False: --no-secrets (templates with placeholders)
    default_registry: str | None = None
    default_namespace: str | None = None
    concurrency: int | None = None
    retries: int | None = None
    qps: float | None = None
    parallelism: int | None = None
    schedule: str | None = None


@dataclass
class Conversion:
    job: dict[str, Any]
    credentials: list[dict[str, Any]] = field(default_factory=list)
    secrets: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # for standard error: never a credential

    def documents(self) -> list[dict[str, Any]]:
        return [*self.secrets, *self.credentials, self.job]


def k8s_name(*parts: str) -> str:
    """A DNS-1123 subdomain from free text (registry keys, file names): lower case, '-' for the rest."""
    text = "-".join(p for p in parts if p)
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "imagesync"
    if len(slug) > _NAME_MAX:
        digest = hashlib.sha256(text.encode()).hexdigest()[:8]
        slug = f"{slug[:_NAME_MAX - 9].rstrip('-')}-{digest}"
    return slug


def _metadata(name: str, namespace: str | None, labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if namespace:
        metadata["namespace"] = namespace
    if labels:
        metadata["labels"] = dict(labels)
    return metadata


def _auth_entries(auth: AuthTable) -> list[AuthEntry]:
    # AuthTable keeps its entries sorted by key and offers no iterator yet (engine/config.py).
    return [entry for _, entry in auth._entries]


def _registry_key(key: str) -> str:
    """An auth key as a RegistryCredential's spec.registry: no scheme, no trailing '/'."""
    registry = re.sub(r"^[a-z]+://", "", key.strip()).strip("/")
    if not _REGISTRY_KEY.fullmatch(registry):
        raise ConfigError(f"auth entry {key!r}: not usable as a RegistryCredential registry "
                          f"(host[:port][/namespace], lower-case namespace)")
    return registry


def convert(auth: AuthTable, images: Mapping[str, object], options: ConvertOptions) -> Conversion:
    """The manifests for these credentials and rules (image-syncer's language)."""
    job_name = k8s_name(options.name)
    # The operator would refuse the whole job (Valid=False) for one bad rule: refuse it here, all listed.
    _, errors = parse_rules(images, options.default_registry, options.default_namespace)
    if errors:
        listed = "\n  ".join(str(e) for e in errors)
        raise ConfigError(f"{len(errors)} rule(s) would make the ImageSyncJob invalid:\n  {listed}")
    conversion = Conversion(job={})
    used_names: set[str] = set()
    credential_names: list[str] = []
    for entry in _auth_entries(auth):
        registry = _registry_key(entry.key)
        name = k8s_name(job_name, registry)
        while name in used_names:  # quay.io and QUAY.IO, or http://x and x
            name = k8s_name(name, "x")
        used_names.add(name)
        spec: dict[str, Any] = {"registry": registry}
        if entry.username is not None:
            secret_name = k8s_name(name, "auth")
            spec["secretRef"] = {"name": secret_name}
            conversion.secrets.append(_secret(secret_name, entry, options))
            if options.secrets and (not entry.username or not entry.password):
                conversion.notes.append(f"auth entry {entry.key!r}: empty username or password "
                                        f"(an environment variable that is not set?)")
        if entry.insecure:
            spec["insecure"] = True
        if entry.skip_tls_verify:
            spec["skipTLSVerify"] = True
        if entry.plain_http:
            spec["plainHTTP"] = True
        if entry.ca_file:
            try:  # certificates are public: inline in the RegistryCredential
                spec["caBundle"] = {"inline": Path(entry.ca_file).read_text()}
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"auth entry {entry.key!r}: caFile {entry.ca_file}: cannot read: {exc}") from None
        conversion.credentials.append({"apiVersion": API_VERSION, "kind": "RegistryCredential",
                                       "metadata": _metadata(name, options.namespace), "spec": spec})
        credential_names.append(name)
    conversion.job = _job(job_name, images, credential_names, options)
    if conversion.secrets and options.secrets:
        conversion.notes.append("the Secret manifests hold passwords in plain text: encrypt them (SOPS, Sealed "
                                "Secrets) before they reach a Git repository, or use --no-secrets")
    elif conversion.secrets:
        conversion.notes.append(f"the Secret manifests are templates: replace every {PLACEHOLDER} (or create the "
                                f"Secrets another way, with the label {OPT_IN_LABEL}: \"true\")")
    return conversion


def _secret(name: str, entry: AuthEntry, options: ConvertOptions) -> dict[str, Any]:
    if options.secrets:
        data = {"username": entry.username or "", "password": entry.password or ""}
    else:
        data = {"username": PLACEHOLDER, "password": PLACEHOLDER}
    return {"apiVersion": "v1", "kind": "Secret",
            "metadata": _metadata(name, options.namespace, {OPT_IN_LABEL: "true"}),
            "type": "kubernetes.io/basic-auth", "stringData": data}


def _job(name: str, images: Mapping[str, object], credentials: list[str], options: ConvertOptions) -> dict[str, Any]:
    spec: dict[str, Any] = {"images": dict(images)}
    if options.default_registry and options.default_namespace:
        spec["defaultTarget"] = {"registry": options.default_registry, "namespace": options.default_namespace}
    if credentials:
        # Exactly the converted ones: without the list, every RegistryCredential of the namespace applies.
        spec["credentials"] = credentials
    for key, value in (("concurrency", options.concurrency), ("retries", options.retries), ("qps", options.qps),
                       ("parallelism", options.parallelism), ("schedule", options.schedule)):
        if value is not None:
            spec[key] = int(value) if isinstance(value, float) and value.is_integer() else value
    return {"apiVersion": API_VERSION, "kind": "ImageSyncJob", "metadata": _metadata(name, options.namespace),
            "spec": spec}


def render(documents: Sequence[Mapping[str, Any]], header: str = "") -> str:
    """YAML documents separated by ``---`` (block style; long PEM and regexes kept readable)."""
    import yaml  # here, not at the top: this module is loaded by every sync, PyYAML only by convert or YAML files

    parts = [yaml.safe_dump(dict(doc), sort_keys=False, default_flow_style=False, width=1000) for doc in documents]
    return header + "---\n".join(parts)


# --- the subcommand -------------------------------------------------------------------------------------------


def _bounded_int(low: int, high: int):  # type: ignore[no-untyped-def]
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from exc
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is not between {low} and {high}")
        return value
    return parse


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from exc
    if not (value >= 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number >= 0")
    return value


def add_convert_arguments(parser: argparse.ArgumentParser) -> None:
    syncer = parser.add_argument_group("input: image-syncer's files (JSON or YAML)")
    syncer.add_argument("--auth", metavar="FILE", help="credentials file")
    syncer.add_argument("--images", metavar="FILE", help="rules file")
    syncer.add_argument("--config", metavar="FILE", help="legacy combined file with 'auth' and 'images'")
    transfer = parser.add_argument_group("input: image-transfer's files")
    transfer.add_argument("--securityFile", dest="security_file", metavar="FILE",
                          help="registry-secret.yaml (credentials)")
    transfer.add_argument("--ruleFile", dest="rule_file", metavar="FILE",
                          help="transfer-rule.yaml (rules, translated to image-syncer's language)")
    out = parser.add_argument_group("output")
    out.add_argument("--name", help="the ImageSyncJob's name, prefix of the other objects' names "
                                    "(default: the rules file's name)")
    out.add_argument("--namespace", help="metadata.namespace of every object (default: none, so that "
                                         "kubectl apply -n or kustomize decides)")
    out.add_argument("--no-secrets", action="store_true",
                     help=f"Secret templates with {PLACEHOLDER} placeholders: no credential in the output")
    out.add_argument("--output-dir", metavar="DIR",
                     help="write NAME-secrets.yaml, NAME-registrycredentials.yaml and NAME-imagesyncjob.yaml "
                          "there instead of one multi-document stream on standard output")
    spec = parser.add_argument_group("ImageSyncJob settings (omitted: the CRD's defaults)")
    spec.add_argument("--default-registry", "--registry", dest="default_registry", metavar="HOST",
                      default=os.environ.get("DEFAULT_REGISTRY") or None,
                      help="spec.defaultTarget.registry, for rules with an empty target (env DEFAULT_REGISTRY)")
    spec.add_argument("--default-namespace", "--ns", dest="default_namespace", metavar="NAMESPACE",
                      default=os.environ.get("DEFAULT_NAMESPACE") or None,
                      help="spec.defaultTarget.namespace (env DEFAULT_NAMESPACE)")
    spec.add_argument("--concurrency", "--proc", "--routines", dest="concurrency", type=_bounded_int(1, 256),
                      metavar="N",
                      help="spec.concurrency (image-syncer's --proc, image-transfer's --routines)")
    spec.add_argument("--retries", "--retry", dest="retries", type=_bounded_int(0, 20), metavar="N",
                      help="spec.retries (image-transfer's --retry)")
    spec.add_argument("--qps", type=_rate, help=f"spec.qps (default for image-transfer's files: "
                                                f"{TRANSFER_QPS:g}, as image-transfer's own default)")
    spec.add_argument("--parallelism", type=_bounded_int(1, 100), metavar="N", help="spec.parallelism (worker pods)")
    spec.add_argument("--schedule", metavar="CRON", help="spec.schedule (default: one run)")


def load_input(args: argparse.Namespace) -> tuple[AuthTable, dict[str, object], list[str], bool]:
    """(auth, image-syncer rules, the files read, whether they are image-transfer's)."""
    syncer = bool(args.auth or args.images or args.config)
    transfer = bool(args.security_file or args.rule_file)
    if syncer and transfer:
        raise ConfigError("give image-syncer's files (--auth/--images or --config) or image-transfer's "
                          "(--securityFile/--ruleFile), not both")
    if transfer:
        if not args.rule_file:
            raise ConfigError("--securityFile needs --ruleFile")
        auth = load_security(args.security_file) if args.security_file else AuthTable({})
        document = load_images(args.rule_file)
        images, errors = translate_rules(document, args.default_registry, args.default_namespace)
        if errors:
            listed = "\n  ".join(str(e) for e in errors)
            raise ConfigError(f"{args.rule_file}: {len(errors)} rule(s) cannot be translated:\n  {listed}")
        return auth, images, [p for p in (args.security_file, args.rule_file) if p], True
    if args.config:
        if args.auth or args.images:
            raise ConfigError("--config cannot be combined with --auth/--images")
        auth, images = load_legacy_config(args.config)
        return auth, dict(images), [args.config], False
    if not args.images:
        raise ConfigError("no rules given: pass --images FILE (with --auth FILE), --config FILE, "
                          "or image-transfer's --ruleFile FILE (with --securityFile FILE)")
    auth = load_auth(args.auth) if args.auth else AuthTable({})
    return auth, dict(load_images(args.images)), [p for p in (args.auth, args.images) if p], False


def run_convert(args: argparse.Namespace) -> int:
    try:
        auth, images, files, from_transfer = load_input(args)
        if not images:
            raise ConfigError(f"{files[-1]}: no rules")
        rules_file = args.rule_file or args.images or args.config
        qps = args.qps if args.qps is not None else (TRANSFER_QPS if from_transfer else None)
        concurrency = args.concurrency
        if from_transfer and concurrency is not None:
            concurrency = min(concurrency, MAX_ROUTINES)  # image-transfer's own bound
        options = ConvertOptions(
            name=args.name or Path(rules_file).stem, namespace=args.namespace, secrets=not args.no_secrets,
            # image-transfer's empty targets are resolved by the translation (its naming, not the engine's)
            default_registry=None if from_transfer else args.default_registry,
            default_namespace=None if from_transfer else args.default_namespace,
            concurrency=concurrency, retries=args.retries, qps=qps, parallelism=args.parallelism,
            schedule=args.schedule)
        conversion = convert(auth, images, options)
        header = f"# imagesync convert {' '.join(os.path.basename(f) for f in files)}\n"
        if args.output_dir:
            write_files(Path(args.output_dir), conversion, header)
        else:
            sys.stdout.write(render(conversion.documents(), header))
    except ImageSyncError as exc:
        print(f"imagesync: error: {exc}", file=sys.stderr)
        return 2
    for note in conversion.notes:
        print(f"imagesync convert: note: {note}", file=sys.stderr)
    return 0


def write_files(directory: Path, conversion: Conversion, header: str) -> list[Path]:
    if not directory.is_dir():
        raise ConfigError(f"--output-dir {directory}: not a directory")
    name = conversion.job["metadata"]["name"]
    written = []
    for suffix, documents in (("secrets", conversion.secrets), ("registrycredentials", conversion.credentials),
                              ("imagesyncjob", [conversion.job])):
        if not documents:
            continue
        path = directory / f"{name}-{suffix}.yaml"
        try:
            # Secrets only for their owner (passwords); new files of the other kinds too (umask aside).
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            if suffix == "secrets":
                os.fchmod(fd, 0o600)  # an existing file keeps its mode otherwise
            with os.fdopen(fd, "w") as stream:
                stream.write(render(documents, header))
        except OSError as exc:
            raise ConfigError(f"--output-dir: cannot write {path}: {exc.strerror or exc}") from None
        written.append(path)
    return written
