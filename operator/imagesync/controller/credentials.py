"""RegistryCredentials and their Secrets -> the worker's auth file entries (pure).

Messages name the Secret, its type and the missing key, never a value from it.

Opt-in (issue 11, point 7): whoever may create a RegistryCredential may name any Secret or ConfigMap of the
namespace, and the operator reads it with its own rights, copies it into a worker pod and sends it to the
registry the RegistryCredential names. So the operator uses only objects that say they are meant for it,
with the label ``imagesync.dev/credential: "true"`` (set by whoever may write Secrets, a stronger right than
creating RegistryCredentials). Anything else makes the RegistryCredential Ready=False (SecretNotOptedIn,
ConfigMapNotOptedIn) and blocks every run that uses it; nothing of the object is read or reported first.
"""

from __future__ import annotations

import base64
import binascii
import json
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from imagesync.controller.spec import SecretKeyRef
from imagesync.engine.config import auth_key_matches, check_tls_settings
from imagesync.engine.errors import ConfigError, clip
from imagesync.engine.reference import Repository
from imagesync.engine.signatures import SignatureError, load_public_key

DOCKERCONFIGJSON = "kubernetes.io/dockerconfigjson"
BASIC_AUTH = "kubernetes.io/basic-auth"
OPAQUE = "Opaque"
OPT_IN_LABEL = "imagesync.dev/credential"
OPT_IN_VALUE = "true"
# Registry passwords and tokens are at most a few KiB (cloud access tokens, JWTs): anything much longer is a
# wrong key or a pasted file, and it would not fit the run's Secret beside the others.
MAX_SECRET_VALUE = 32 * 1024


class CredentialError(Exception):
    """Why a RegistryCredential cannot be used; ``reason`` is a condition reason (CamelCase)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class ResolvedCredential:
    name: str  # the RegistryCredential
    registry: str  # its spec.registry: the auth file key
    username: str | None = field(repr=False)  # never in a repr, a log or a message
    password: str | None = field(repr=False)
    insecure: bool
    ca_pem: str | None = field(repr=False)  # public, but long, and it may come from a Secret
    skip_tls_verify: bool = False
    plain_http: bool = False


def check_opt_in(kind: str, obj: Mapping[str, Any]) -> None:
    """A Secret or ConfigMap a RegistryCredential refers to must carry the opt-in label (see the module doc)."""
    metadata = obj.get("metadata") or {}
    labels = metadata.get("labels") or {}
    if labels.get(OPT_IN_LABEL) != OPT_IN_VALUE:
        name = metadata.get("name", "?")
        raise CredentialError(f"{kind}NotOptedIn",
                              f"{kind} {name!r} does not carry the label {OPT_IN_LABEL}: \"{OPT_IN_VALUE}\", so "
                              f"the operator does not use it (label it if it is meant for imagesync: kubectl "
                              f"label {kind.lower()} {name} {OPT_IN_LABEL}={OPT_IN_VALUE})")


def check_ca_pem(pem: str, where: str) -> str:
    """CA material: one or more PEM certificates, and nothing secret (a private key pasted by mistake)."""
    if "PRIVATE KEY-----" in pem:
        raise CredentialError("InvalidCABundle", f"{where} holds a private key: a CA bundle is certificates only "
                                                 f"(the key was not used)")
    if "-----BEGIN CERTIFICATE-----" not in pem:
        raise CredentialError("InvalidCABundle", f"{where} is not a PEM certificate (no BEGIN CERTIFICATE)")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=pem)
    except (ssl.SSLError, ValueError) as exc:
        raise CredentialError("InvalidCABundle", f"{where} does not parse as PEM certificates "
                                                 f"({getattr(exc, 'reason', None) or type(exc).__name__})") from None
    return pem


def _decode(secret: Mapping[str, Any], key: str) -> str | None:
    """A Secret value: ``data`` is base64 (what the API server returns); ``stringData`` is write-only
    on a real server but kept by emulators, so both are read."""
    data = secret.get("data") or {}
    if not isinstance(data, Mapping):  # "key in data" would search a string
        name = (secret.get("metadata") or {}).get("name", "?")
        raise CredentialError("InvalidSecret", f"Secret {name!r}: data is not a mapping of keys to base64 values")
    if key in data:
        try:
            return base64.b64decode(data[key], validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, TypeError) as exc:
            name = (secret.get("metadata") or {}).get("name", "?")
            raise CredentialError("InvalidSecret", f"Secret {name!r}: key {key!r} is not valid base64 text") \
                from exc
    string_data = secret.get("stringData") or {}
    value = string_data.get(key) if isinstance(string_data, Mapping) else None
    return value if isinstance(value, str) else None


def _registry_host(registry: str) -> str:
    return registry.split("/", 1)[0]


def _dockerconfig_entry(config_text: str, registry: str, secret_name: str) -> tuple[str, str]:
    duplicates: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for key, value in items:
            if key in seen:
                duplicates.append(key)
            seen[key] = value
        return seen

    try:
        config = json.loads(config_text, object_pairs_hook=pairs)
    except (ValueError, RecursionError):  # RecursionError: thousands of nested brackets
        raise CredentialError("InvalidSecret", f"Secret {secret_name!r}: .dockerconfigjson is not JSON") from None
    if duplicates:
        raise CredentialError("InvalidSecret", f"Secret {secret_name!r}: .dockerconfigjson has the key "
                                               f"{clip(duplicates[0], 80)!r} twice")
    auths = config.get("auths") if isinstance(config, Mapping) else None
    if not isinstance(auths, Mapping):
        raise CredentialError("InvalidSecret", f"Secret {secret_name!r}: .dockerconfigjson has no 'auths'")
    host = _registry_host(registry)
    hub = {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}

    def normalise(key: str) -> str:
        key = key.removeprefix("https://").removeprefix("http://").split("/", 1)[0]
        return "docker.io" if key in hub else key

    wanted = "docker.io" if host in hub else host
    for key, entry in auths.items():
        if normalise(str(key)) != wanted:
            continue
        if not isinstance(entry, Mapping):
            raise CredentialError("InvalidSecret", f"Secret {secret_name!r}: entry {clip(key, 80)!r} of "
                                                   f".dockerconfigjson is not an object")
        username, password = entry.get("username"), entry.get("password")
        if isinstance(username, str) and isinstance(password, str):
            return username, password
        if isinstance(entry.get("auth"), str):
            try:
                user, colon, pw = base64.b64decode(entry["auth"], validate=True).decode("utf-8").partition(":")
            except (binascii.Error, UnicodeDecodeError):
                user = colon = pw = ""
            if not colon:
                raise CredentialError("InvalidSecret", f"Secret {secret_name!r}: the 'auth' of {clip(key, 80)!r} "
                                                       f"is not base64 user:password") from None
            return user, pw
        raise CredentialError("InvalidSecret", f"Secret {secret_name!r}: entry {key!r} has no credentials")
    raise CredentialError("NoEntryForRegistry",
                          f"Secret {secret_name!r} has no .dockerconfigjson entry for registry {host!r}")


def resolve_credential(regcred: Mapping[str, Any], secret: Mapping[str, Any] | None,
                       ca_source: Mapping[str, Any] | None = None) -> ResolvedCredential:
    """One RegistryCredential with its Secret (None when it does not exist) and CA source object."""
    name = (regcred.get("metadata") or {}).get("name", "?")
    spec = regcred.get("spec") or {}
    registry = spec.get("registry")
    if not isinstance(registry, str) or not registry:
        raise CredentialError("InvalidSpec", f"RegistryCredential {name!r}: spec.registry is required")
    username = password = None
    secret_ref = spec.get("secretRef")
    if secret_ref:
        secret_name = secret_ref.get("name", "")
        if secret is None:
            raise CredentialError("SecretMissing", f"Secret {secret_name!r} not found in this namespace")
        check_opt_in("Secret", secret)
        secret_type = secret.get("type") or OPAQUE
        if secret_type == DOCKERCONFIGJSON:
            config_text = _decode(secret, ".dockerconfigjson")
            if config_text is None:
                raise CredentialError("InvalidSecret", f"Secret {secret_name!r} has no .dockerconfigjson key")
            username, password = _dockerconfig_entry(config_text, registry, secret_name)
        elif secret_type in (BASIC_AUTH, OPAQUE):
            username, password = _decode(secret, "username"), _decode(secret, "password")
            if username is None or password is None:
                missing = [k for k, v in (("username", username), ("password", password)) if v is None]
                raise CredentialError("InvalidSecret", f"Secret {secret_name!r} ({secret_type}) lacks the "
                                                       f"key(s) {', '.join(missing)}")
        else:
            raise CredentialError("WrongSecretType",
                                  f"Secret {secret_name!r} has type {clip(str(secret_type), 80)!r}; expected "
                                  f"{DOCKERCONFIGJSON}, {BASIC_AUTH}, or {OPAQUE} with username and password")
        _check_login(username, password, secret_name, None if secret_type != DOCKERCONFIGJSON
                     else f".dockerconfigjson entry for {_registry_host(registry)!r}")
    skip_tls_verify, plain_http = bool(spec.get("skipTLSVerify", False)), bool(spec.get("plainHTTP", False))
    ca_pem = _ca_pem(spec.get("caBundle"), ca_source, name)
    try:
        check_tls_settings(skip_tls_verify, plain_http, bool(ca_pem), f"RegistryCredential {name!r}")
    except ConfigError as exc:
        raise CredentialError("InvalidSpec", str(exc).replace("caFile", "caBundle")) from None
    return ResolvedCredential(name, registry, username, password, bool(spec.get("insecure", False)), ca_pem,
                              skip_tls_verify=skip_tls_verify, plain_http=plain_http)


def _check_login(username: str | None, password: str | None, secret_name: str, entry: str | None) -> None:
    """A username and password a registry can be sent (Basic auth, RFC 7617); messages name the key (or the
    .dockerconfigjson ``entry``), never a value, not even a part of one."""
    for key, value in (("username", username or ""), ("password", password or "")):
        what = f"Secret {secret_name!r}: " + (f"the {key} of its {entry}" if entry else f"key {key!r}")
        if not value:
            raise CredentialError("InvalidSecret", f"{what} is empty")
        if len(value) > MAX_SECRET_VALUE:
            raise CredentialError("InvalidSecret", f"{what} is {len(value)} characters long, more than "
                                                   f"{MAX_SECRET_VALUE}")
        if not value.isprintable():
            trailing = " (a trailing line break: was it encoded with echo instead of echo -n?)" \
                if value.rstrip("\r\n").isprintable() else ""
            raise CredentialError("InvalidSecret", f"{what} holds control characters{trailing}")
    if ":" in (username or ""):
        what = f"the username of its {entry}" if entry else "key 'username'"
        raise CredentialError("InvalidSecret", f"Secret {secret_name!r}: {what} contains ':', which Basic "
                                               f"authentication cannot send")


def _ca_pem(bundle: Any, source: Mapping[str, Any] | None, name: str) -> str | None:
    if not bundle:
        return None
    if isinstance(bundle.get("inline"), str):
        return check_ca_pem(str(bundle["inline"]), f"RegistryCredential {name!r}: caBundle.inline")
    ref = bundle.get("secretKeyRef") or bundle.get("configMapKeyRef")
    kind = "Secret" if bundle.get("secretKeyRef") else "ConfigMap"
    if not isinstance(ref, Mapping):
        raise CredentialError("InvalidSpec", f"RegistryCredential {name!r}: caBundle needs inline, "
                                             f"secretKeyRef or configMapKeyRef")
    if source is None:
        raise CredentialError("CABundleMissing", f"{kind} {ref.get('name')!r} for the CA bundle not found")
    check_opt_in(kind, source)
    key = str(ref.get("key"))
    value = _decode(source, key) if kind == "Secret" else (source.get("data") or {}).get(key)
    if not isinstance(value, str) or not value:
        raise CredentialError("CABundleMissing", f"{kind} {ref.get('name')!r} has no key {key!r}")
    return check_ca_pem(value, f"{kind} {ref.get('name')!r} key {key!r}")


def select_credentials(names: Sequence[str] | None, regcreds: Sequence[Mapping[str, Any]],
                       repositories: Sequence[Repository] = ()) -> tuple[list[Mapping[str, Any]], list[str]]:
    """The RegistryCredentials a job uses, and the names it asks for that do not exist.

    Named ones are used as named (a broken one blocks the run: the user asked for it). With none
    named, those of the namespace that apply to one of the job's repositories: an unrelated broken
    RegistryCredential must not stop every job of its namespace.
    """
    by_name = {(r.get("metadata") or {}).get("name"): r for r in regcreds}
    if names is None:
        return [by_name[n] for n in sorted(n for n in by_name if n)
                if any(auth_key_matches(str((by_name[n].get("spec") or {}).get("registry", "")), repo)
                       for repo in repositories)], []
    return [by_name[n] for n in names if n in by_name], [n for n in names if n not in by_name]


@dataclass(frozen=True)
class AuthDocument:
    # The worker's auth.yaml (image-syncer format; CA files by relative name): passwords, so never in a repr.
    auth: dict[str, Any] = field(repr=False)
    ca_files: dict[str, str] = field(repr=False)  # file name -> PEM
    used: list[dict[str, str]]  # [{registry, name}]: which RegistryCredential serves each auth key


def auth_document(credentials: Sequence[ResolvedCredential]) -> AuthDocument:
    """What a run's Secret carries for these credentials.

    Two credentials for the same registry key: the first by name wins (deterministic); the other is
    not used, and a login result for that key is not its business.
    """
    auth: dict[str, Any] = {}
    ca_files: dict[str, str] = {}
    used: list[dict[str, str]] = []
    for credential in sorted(credentials, key=lambda c: c.name):
        if credential.registry in auth:
            continue
        used.append({"registry": credential.registry, "name": credential.name})
        entry: dict[str, Any] = {}
        if credential.username is not None:
            entry["username"] = credential.username
            entry["password"] = credential.password or ""
        if credential.insecure:
            entry["insecure"] = True
        if credential.skip_tls_verify:
            entry["skipTLSVerify"] = True
        if credential.plain_http:
            entry["plainHTTP"] = True
        if credential.ca_pem:
            file_name = f"ca-{len(ca_files)}.pem"
            ca_files[file_name] = credential.ca_pem
            entry["caFile"] = file_name
        auth[credential.registry] = entry
    return AuthDocument(auth, ca_files, used)


# A PEM public key is a few hundred bytes: a much longer value is a wrong key or a pasted file.
MAX_SIGNATURE_KEY = 16 * 1024


def signature_key_pems(refs: Sequence[SecretKeyRef], secrets: Mapping[str, Mapping[str, Any] | None]) -> list[str]:
    """spec.signatureKeys -> the PEM public keys the worker verifies with, in order.

    ``secrets``: each referenced Secret by name, None when it does not exist. The same opt-in as a
    RegistryCredential's Secret (the label is checked before anything else of the Secret is read). A key
    that is not an ECDSA P-256 public key, or a value holding a private key (``cosign generate-key-pair
    k8s://`` puts cosign.key beside cosign.pub), is refused; what the worker gets is the public key
    re-encoded from its parsed form, so nothing else of the value travels. Messages name the field, the
    Secret and the key, never a value.
    """
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    pems = []
    for i, ref in enumerate(refs):
        where = f"spec.signatureKeys[{i}].secretKeyRef"
        secret = secrets.get(ref.name)
        if secret is None:
            raise CredentialError("SecretMissing", f"{where}: Secret {ref.name!r} not found in this namespace")
        try:
            check_opt_in("Secret", secret)
            value = _decode(secret, ref.key)
        except CredentialError as exc:
            raise CredentialError(exc.reason, f"{where}: {exc.message}") from None
        what = f"{where}: Secret {ref.name!r} key {ref.key!r}"
        if not value:
            raise CredentialError("SignatureKeyMissing", f"{where}: Secret {ref.name!r} has no key {ref.key!r}")
        if "PRIVATE KEY" in value:
            raise CredentialError("InvalidSignatureKey", f"{what} holds a private key: give the public key "
                                                         f"(cosign.pub; the private key was not used)")
        if len(value) > MAX_SIGNATURE_KEY:
            raise CredentialError("InvalidSignatureKey", f"{what} is {len(value)} characters long, more than "
                                                         f"{MAX_SIGNATURE_KEY}: not a public key")
        try:
            key = load_public_key(value.encode(), what)
        except SignatureError as exc:
            raise CredentialError("InvalidSignatureKey", str(exc)) from None
        pems.append(key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode())
    return pems
