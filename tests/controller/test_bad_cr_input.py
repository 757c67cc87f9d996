"""The CR half of the bad-input corpus (issue 12, point 1): ImageSyncJob specs the CRD schema lets through,
and Secrets / ConfigMaps a RegistryCredential points at, that the operator must refuse.

Each case is first checked against the CRD schema (it must pass: the API server would store it, so the
operator really meets it), then handed to the pure function the handlers call. It must raise exactly one
SpecError / CredentialError, whose one-line message names the culprit (the field path, the rule clipped,
the Secret and its key) and says why, never carries a secret value (plain, or base64 as the Secret and a
dockerconfigjson hold it), and comes back in bounded time. Nothing else may escape: a stray exception in a
kopf handler is a traceback and a retry loop, not a condition a user can read.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
from test_schemas import validate_cr

from imagesync.controller.credentials import MAX_SECRET_VALUE, CredentialError, resolve_credential
from imagesync.controller.spec import SpecError, parse_job_spec

MESSAGE_MAX = 2000  # a condition message and an event: one readable line, never the 1 MiB input
TIME_BOUND = 5.0  # seconds: a sanity bound on the biggest cases (10,000 rules), not a benchmark

GOOD = {"r.io/a/app:1": "t.io/a/app"}
HUGE = "x" * (1024 * 1024)


def b64(value: str | bytes) -> str:
    return base64.b64encode(value.encode() if isinstance(value, str) else value).decode()


@dataclass(frozen=True)
class SpecCase:
    id: str
    spec: Mapping[str, Any]
    culprit: str  # the field path or the (clipped) rule the message must name
    why: str


def rules(images: Mapping[str, Any], culprit: str, why: str, id: str, **spec: Any) -> SpecCase:
    return SpecCase(id, {"images": images, **spec}, culprit, why)


def field_case(id: str, culprit: str, why: str, **spec: Any) -> SpecCase:
    return SpecCase(id, {"images": GOOD, **spec}, culprit, why)


SPEC_CASES: list[SpecCase] = [
    # -- rules the schema cannot check (spec.images preserves unknown fields) ------------------------------
    rules({"r.io:99999/a/app:1": "t.io/a/app"}, "r.io:99999/a/app:1", "invalid port 99999", "rule-port"),
    rules({"r.io/a/app:bad*tag": "t.io/a/app"}, "r.io/a/app:bad*tag", "invalid tag", "rule-bad-tag"),
    rules({"r.io/a/app@sha256:zz": "t.io/a/app"}, "r.io/a/app@sha256:zz", "invalid digest", "rule-bad-digest"),
    rules({"r.io/a/app:/(a+)+$/": "t.io/a/app"}, "r.io/a/app:/(a+)+$/", "exponential time", "rule-redos-regex"),
    rules({"r.io/a/app:/[x/": "t.io/a/app"}, "r.io/a/app:/[x/", "invalid tag regex", "rule-bad-regex"),
    rules({"r.io/a/app:/" + "a" * 600 + "/": "t.io/a/app"}, "r.io/a/app:/aaaa", "tag regex longer than",
          "rule-long-regex"),
    rules({"r.io/a/app:1": 5}, "r.io/a/app:1", "the target must be a string", "rule-target-number"),
    rules({"r.io/a/app:1": True}, "r.io/a/app:1", "the target must be a string", "rule-target-bool"),
    rules({"r.io/a/app:1": [["t.io/a/app"]]}, "r.io/a/app:1", "each target must be a string",
          "rule-target-nested-list"),
    rules({"r.io/a/app:1": {"to": "t.io/a/app"}}, "r.io/a/app:1", "unknown key(s) 'to'", "rule-mapping-unknown-key"),
    rules({"r.io/a/app:1": ""}, "r.io/a/app:1 -> (default target)", "no default registry", "rule-empty-target"),
    rules({"": "t.io/a/app"}, "spec.images", "empty repository name", "rule-empty-source"),
    rules({"   ": "t.io/a/app"}, "spec.images", "empty repository name", "rule-blank-source"),
    rules({"r.io/a/app": {"target": "t.io/a/app", "semver": ">>>1"}}, "r.io/a/app", "is not a range",
          "rule-bad-semver"),
    rules({"r.io/a/app": {"target": "t.io/a/app", "latest": -1}}, "r.io/a/app", "latest must be a whole number",
          "rule-latest-negative"),
    rules({"r.io/a/app": {"target": "t.io/a/app", "exclude": ["(a+)+"]}}, "r.io/a/app", "exclude: tag regex",
          "rule-exclude-redos"),
    rules({"r.io/a/app:1": {"target": "t.io/a/app", "semver": "^1"}}, "r.io/a/app:1",
          "filter the tags the source lists", "rule-filter-on-a-tag"),
    rules({"r.io/a/app:1": "t.io/a/app:x,y"}, "r.io/a/app:1", "counts must be equal", "rule-tag-count-mismatch"),
    # -- huge values ----------------------------------------------------------------------------------------
    rules({f"r.io/a/{HUGE}:1": "t.io/a/app"}, "r.io/a/xxxx", "repository path longer than 255", "rule-1mib-text"),
    rules({"r.io/a/app:1": f"t.io/a/{HUGE}"}, "r.io/a/app:1", "repository path longer than 255",
          "rule-1mib-target"),
    rules({f"r.io/a/app{i}:1:x": "t.io/a/app" for i in range(10_000)}, "r.io/a/app0:1:x", "(and 9995 more)",
          "rules-10000-all-bad"),
    rules({**{f"r.io/a/app{i}:1": "t.io/a/app" for i in range(10_000)}, "r.io/a/Bad:1": "t.io/a/app"},
          "r.io/a/Bad:1", "invalid repository path component 'Bad'", "rules-10000-one-bad"),
    # -- weird unicode ----------------------------------------------------------------------------------------
    rules({"r.io/a/äpp:1": "t.io/a/app"}, "r.io/a/äpp:1", "invalid repository path component", "rule-umlaut"),
    rules({"r.io/a/app\u202e:1": "t.io/a/app"}, "spec.images", "invalid repository path component 'app\\u202e'",
          "rule-right-to-left-override"),
    rules({"r.io/a/\u200bapp:1": "t.io/a/app"}, "spec.images", "'\\u200bapp'", "rule-zero-width-space"),
    rules({"r.io/a/app:1": "t.io/🐳/app"}, "t.io/🐳/app", "invalid repository path component '🐳'", "rule-emoji"),
    rules({"r.io/a/app:1\nINJECTED": "t.io/a/app"}, "spec.images", "invalid tag '1\\nINJECTED'", "rule-newline"),
    rules({"r.io/a/app\x00:1": "t.io/a/app"}, "spec.images", "'app\\x00'", "rule-nul"),
    rules({"r\u0456.io/a/app:1": "t.io/a/app"}, "spec.images", "invalid", "rule-homoglyph-host"),
    # -- defaultTarget values the schema's pattern lets through ---------------------------------------------
    rules({"r.io/a/app:1": ""}, "(default target)", "invalid port 99999", "default-target-port-too-big",
          defaultTarget={"registry": "t.io:99999", "namespace": "m"}),
    rules({"r.io/a/app:1": ""}, "(default target)", "invalid port 0", "default-target-port-zero",
          defaultTarget={"registry": "t.io:0", "namespace": "m"}),
    rules({"r.io/a/app:1": ""}, "(default target)", "invalid registry host '...'", "default-target-dots",
          defaultTarget={"registry": "...", "namespace": "m"}),
    # -- schedules the pattern lets through -----------------------------------------------------------------
    field_case("schedule-feb-31", "spec.schedule", "never fires", schedule="0 0 31 2 *"),
    field_case("schedule-30-days-months-31st", "spec.schedule", "never fires", schedule="0 0 31 4,6,9,11 *"),
    field_case("schedule-step-zero", "spec.schedule", "not a valid cron expression", schedule="*/0 * * * *"),
    # -- worker fields the API server would refuse in the Pod -----------------------------------------------
    field_case("worker-image-blank", "spec.worker.image", "non-empty", worker={"image": " "}),
    field_case("worker-service-account-upper-case", "spec.worker.serviceAccountName",
               "not a valid ServiceAccount name", worker={"serviceAccountName": "Not_Valid"}),
    field_case("worker-service-account-huge", "spec.worker.serviceAccountName", "not a valid ServiceAccount",
               worker={"serviceAccountName": "a" * 100_000}),
    field_case("worker-resources-not-a-quantity", "spec.worker.resources.limits.cpu", "'lots' is not a quantity",
               worker={"resources": {"limits": {"cpu": "lots"}}}),
    field_case("worker-resources-empty-quantity", "spec.worker.resources.requests.memory", "is not a quantity",
               worker={"resources": {"requests": {"memory": ""}}}),
    field_case("worker-node-selector-bad-key", "spec.worker.nodeSelector", "key 'bad key!' is not a valid label",
               worker={"nodeSelector": {"bad key!": "v"}}),
    field_case("worker-node-selector-bad-value", "spec.worker.nodeSelector[zone]", "not a valid label value",
               worker={"nodeSelector": {"zone": "a b"}}),
    field_case("worker-toleration-exists-with-value", "spec.worker.tolerations[0].value",
               "must be empty when operator is Exists",
               worker={"tolerations": [{"key": "k", "operator": "Exists", "value": "v"}]}),
    field_case("worker-toleration-empty-key-equal", "spec.worker.tolerations[0].operator", "must be Exists",
               worker={"tolerations": [{"operator": "Equal", "value": "v"}]}),
    field_case("worker-toleration-seconds-without-noexecute", "spec.worker.tolerations[1].tolerationSeconds",
               "only allowed with effect NoExecute",
               worker={"tolerations": [{"key": "a", "operator": "Exists"},
                                       {"key": "k", "effect": "NoSchedule", "tolerationSeconds": 5}]}),
]


def isj(spec: Mapping[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "imagesync.dev/v1alpha1", "kind": "ImageSyncJob", "metadata": {"name": "j"},
            "spec": dict(spec)}


def check_message(message: str, culprit: str, why: str) -> None:
    assert "\n" not in message and len(message) <= MESSAGE_MAX, message[:300]
    assert culprit in message, message
    assert why in message, message


def test_the_corpus_is_large_and_ids_are_unique() -> None:
    assert len(SPEC_CASES) + len(CREDENTIAL_CASES) >= 60
    ids = [c.id for c in SPEC_CASES] + [c.id for c in CREDENTIAL_CASES]
    assert len(set(ids)) == len(ids)


@pytest.mark.parametrize("case", SPEC_CASES, ids=[c.id for c in SPEC_CASES])
def test_bad_spec_is_refused_with_one_clear_error(case: SpecCase) -> None:
    validate_cr(isj(case.spec))  # the API server stores it: the operator really meets it
    started = time.monotonic()
    with pytest.raises(SpecError) as caught:  # and nothing else escapes
        parse_job_spec(case.spec)
    assert time.monotonic() - started < TIME_BOUND
    check_message(str(caught.value), case.culprit, case.why)
    path = caught.value.field_path
    assert str(caught.value).startswith(f"{path}: ") and path.startswith("spec.")


def test_the_good_neighbour_of_the_corpus_parses() -> None:
    """The base every case changes is itself valid: each refusal is the case's own doing."""
    parse_job_spec({"images": GOOD, "schedule": "0 3 * * *", "worker": {
        "serviceAccountName": "imagesync-worker", "resources": {"limits": {"cpu": "500m", "memory": "256Mi"},
                                                                 "requests": {"cpu": 1}},
        "nodeSelector": {"kubernetes.io/arch": "amd64"},
        "tolerations": [{"operator": "Exists"}, {"key": "k", "effect": "NoExecute", "tolerationSeconds": 5}]}})
    parse_job_spec({"images": {f"r.io/a/app{i}:1": "t.io/a/app" for i in range(10_000)}})


# -- RegistryCredentials and their Secrets / ConfigMaps ------------------------------------------------------

PASSWORD = "S3cr3t-Passw0rd-do-not-leak"
USERNAME = "robot"
REGISTRY = "r.io"
OPT_IN = {"imagesync.dev/credential": "true"}


def secret(type_: Any, data: Any = None, *, string_data: Any = None, name: str = "creds") -> dict[str, Any]:
    obj: dict[str, Any] = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "labels": OPT_IN},
                           "type": type_}
    if data is not None:
        obj["data"] = data
    if string_data is not None:
        obj["stringData"] = string_data
    return obj


USERNAME_BYTES, PASSWORD_BYTES = USERNAME.encode(), PASSWORD.encode()


def basic(username: Any = USERNAME_BYTES, password: Any = PASSWORD_BYTES,
          type_: str = "kubernetes.io/basic-auth") -> dict[str, Any]:
    """A basic-auth Secret; bytes are base64-encoded here, strings go in as written (bad base64 included)."""
    data = {k: b64(v) if isinstance(v, bytes) else v
            for k, v in (("username", username), ("password", password)) if v is not None}
    return secret(type_, data)


def dockerconfig(config: Any) -> dict[str, Any]:
    text = config if isinstance(config, str) else json.dumps(config)
    return secret("kubernetes.io/dockerconfigjson", {".dockerconfigjson": b64(text)})


def entry(value: Any) -> dict[str, Any]:
    return dockerconfig({"auths": {REGISTRY: value}})


def ca_configmap(pem: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ca", "labels": OPT_IN},
            "data": {"ca.crt": pem}}


@dataclass(frozen=True)
class CredentialCase:
    id: str
    secret: dict[str, Any] | None
    reason: str
    culprit: str
    why: str
    ca_source: dict[str, Any] | None = None
    spec: dict[str, Any] = field(default_factory=lambda: {"secretRef": {"name": "creds"}})


def cred(id: str, obj: dict[str, Any] | None, why: str, reason: str = "InvalidSecret",
         culprit: str = "Secret 'creds'") -> CredentialCase:
    return CredentialCase(id, obj, reason, culprit, why)


def ca_case(id: str, pem: str, why: str, reason: str = "InvalidCABundle") -> CredentialCase:
    return CredentialCase(id, None, reason, "ConfigMap 'ca'", why, ca_configmap(pem),
                          {"caBundle": {"configMapKeyRef": {"name": "ca", "key": "ca.crt"}}})


CREDENTIAL_CASES: list[CredentialCase] = [
    # -- wrong types ------------------------------------------------------------------------------------------
    cred("secret-type-tls", secret("kubernetes.io/tls", {"tls.crt": b64("x"), "tls.key": b64(PASSWORD)}),
         "has type 'kubernetes.io/tls'", "WrongSecretType"),
    cred("secret-type-service-account-token",
         secret("kubernetes.io/service-account-token", {"token": b64(PASSWORD)}),
         "has type 'kubernetes.io/service-account-token'", "WrongSecretType"),
    cred("secret-type-number", secret(5, {"username": b64(USERNAME), "password": b64(PASSWORD)}),
         "has type '5'", "WrongSecretType"),
    cred("secret-data-not-a-mapping", secret("kubernetes.io/basic-auth", f"username=robot password={PASSWORD}"),
         "data is not a mapping"),
    cred("secret-value-number", basic(password=12345), "key 'password' is not valid base64"),
    cred("secret-value-null", secret("kubernetes.io/basic-auth", {"username": b64(USERNAME), "password": None}),
         "key 'password' is not valid base64"),
    cred("secret-string-data-a-string", secret("Opaque", string_data=f"password={PASSWORD}"),
         "lacks the key(s) username, password"),
    cred("secret-string-data-number", secret("Opaque", string_data={"username": USERNAME, "password": 5}),
         "lacks the key(s) password"),
    # -- bad base64 in data -----------------------------------------------------------------------------------
    cred("secret-password-not-base64", basic(password=PASSWORD + "!!"), "key 'password' is not valid base64"),
    cred("secret-password-truncated-base64", basic(password=b64(PASSWORD)[:-1]),
         "key 'password' is not valid base64"),
    cred("secret-password-not-utf8", basic(password=b64(b"\xff\xfe" + PASSWORD.encode())),
         "key 'password' is not valid base64 text"),
    cred("secret-username-not-base64", basic(username="r0b0t!"), "key 'username' is not valid base64"),
    # -- empty, huge, missing, control characters -------------------------------------------------------------
    cred("secret-password-empty", basic(password=""), "key 'password' is empty"),
    cred("secret-username-empty", basic(username=""), "key 'username' is empty"),
    cred("secret-password-1mib", basic(password=b64(PASSWORD + "x" * (1024 * 1024))),
         f"key 'password' is {len(PASSWORD) + 1024 * 1024} characters long, more than {MAX_SECRET_VALUE}"),
    cred("secret-password-missing", basic(password=None), "lacks the key(s) password"),
    cred("secret-opaque-no-keys", secret("Opaque", {"token": b64(PASSWORD)}), "lacks the key(s) username, password"),
    cred("secret-no-data", secret("Opaque"), "lacks the key(s) username, password"),
    cred("secret-password-trailing-newline", basic(password=b64(PASSWORD + "\n")),
         "key 'password' holds control characters (a trailing line break"),
    cred("secret-username-nul", basic(username=b64(USERNAME + "\x00")), "key 'username' holds control characters"),
    cred("secret-username-colon", basic(username=b64("robot:x")), "contains ':'"),
    # -- .dockerconfigjson ------------------------------------------------------------------------------------
    cred("dockerconfig-key-missing", secret("kubernetes.io/dockerconfigjson", {"config.json": b64("{}")}),
         "has no .dockerconfigjson key"),
    cred("dockerconfig-not-json", dockerconfig('{"auths": {"r.io": {"password": "' + PASSWORD + '"'),
         ".dockerconfigjson is not JSON"),
    cred("dockerconfig-deeply-nested", dockerconfig('{"auths": ' + "[" * 100_000 + "]" * 100_000 + "}"),
         ".dockerconfigjson is not JSON"),
    cred("dockerconfig-huge-integer", dockerconfig('{"auths": {"r.io": {"auth": ' + "1" * 5000 + "}}}"),
         ".dockerconfigjson is not JSON"),
    cred("dockerconfig-a-list", dockerconfig([REGISTRY, PASSWORD]), "has no 'auths'"),
    cred("dockerconfig-auths-list", dockerconfig({"auths": [REGISTRY]}), "has no 'auths'"),
    cred("dockerconfig-auths-null", dockerconfig({"auths": None}), "has no 'auths'"),
    cred("dockerconfig-creds-store-only", dockerconfig({"credsStore": "desktop"}), "has no 'auths'"),
    cred("dockerconfig-entry-a-string", entry(PASSWORD), "entry 'r.io' of .dockerconfigjson is not an object"),
    cred("dockerconfig-entry-empty", entry({}), "entry 'r.io' has no credentials"),
    cred("dockerconfig-username-number", entry({"username": 5, "password": PASSWORD}),
         "entry 'r.io' has no credentials"),
    cred("dockerconfig-auth-number", entry({"auth": 5}), "entry 'r.io' has no credentials"),
    cred("dockerconfig-identity-token-only", entry({"identitytoken": PASSWORD}), "entry 'r.io' has no credentials"),
    cred("dockerconfig-auth-not-base64", entry({"auth": PASSWORD + "!!"}), "'auth' of 'r.io' is not base64 user:"),
    cred("dockerconfig-auth-no-colon", entry({"auth": b64(USERNAME + PASSWORD)}),
         "'auth' of 'r.io' is not base64 user:password"),
    cred("dockerconfig-auth-empty", entry({"auth": ""}), "'auth' of 'r.io' is not base64 user:password"),
    cred("dockerconfig-auth-not-utf8", entry({"auth": b64(b"\xff" + f"{USERNAME}:{PASSWORD}".encode())}),
         "'auth' of 'r.io' is not base64 user:password"),
    cred("dockerconfig-auth-empty-user", entry({"auth": b64(":" + PASSWORD)}),
         "the username of its .dockerconfigjson entry for 'r.io' is empty"),
    cred("dockerconfig-auth-empty-password", entry({"auth": b64(USERNAME + ":")}),
         "the password of its .dockerconfigjson entry for 'r.io' is empty"),
    cred("dockerconfig-password-1mib", entry({"username": USERNAME, "password": PASSWORD + "x" * (1024 * 1024)}),
         "the password of its .dockerconfigjson entry for 'r.io' is"),
    cred("dockerconfig-duplicate-registry",
         dockerconfig(f'{{"auths": {{"r.io": {{"auth": "{b64("a:" + PASSWORD)}"}}, '
                      f'"r.io": {{"auth": "{b64("b:" + PASSWORD)}"}}}}}}'), "has the key 'r.io' twice"),
    cred("dockerconfig-other-registry-only", dockerconfig({"auths": {"q.io": {"auth": b64(f"u:{PASSWORD}")}}}),
         "no .dockerconfigjson entry for registry 'r.io'", "NoEntryForRegistry"),
    # -- CA bundles that are not PEM --------------------------------------------------------------------------
    ca_case("ca-not-pem", "hello, I am a certificate", "is not a PEM certificate"),
    ca_case("ca-pem-garbage-body", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            "does not parse as PEM certificates"),
    ca_case("ca-1mib-garbage", "-----BEGIN CERTIFICATE-----\n" + "A" * (1024 * 1024), "does not parse as PEM"),
    ca_case("ca-private-key", "-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n",
            "holds a private key"),
    ca_case("ca-empty", "", "has no key 'ca.crt'", "CABundleMissing"),
]

# Every form in which a Secret could carry the password: a message must hold none of them.
LEAKS = [PASSWORD, b64(PASSWORD), b64(f"{USERNAME}:{PASSWORD}"), b64(f"a:{PASSWORD}"), PASSWORD[:12]]


@pytest.mark.parametrize("case", CREDENTIAL_CASES, ids=[c.id for c in CREDENTIAL_CASES])
def test_bad_secret_is_refused_with_one_clear_error(case: CredentialCase) -> None:
    regcred = {"apiVersion": "imagesync.dev/v1alpha1", "kind": "RegistryCredential", "metadata": {"name": "rc"},
               "spec": {"registry": REGISTRY, **case.spec}}
    validate_cr(regcred)
    started = time.monotonic()
    with pytest.raises(CredentialError) as caught:  # and nothing else escapes
        resolve_credential(regcred, case.secret, case.ca_source)
    assert time.monotonic() - started < TIME_BOUND
    error = caught.value
    assert error.reason == case.reason, error.message
    check_message(error.message, case.culprit, case.why)
    assert str(error) == error.message
    for leak in LEAKS:
        assert leak not in error.message, f"a secret value in: {error.message}"


def test_the_good_neighbours_of_the_credential_corpus_resolve() -> None:
    regcred = {"metadata": {"name": "rc"}, "spec": {"registry": REGISTRY, "secretRef": {"name": "creds"}}}
    for good in (basic(), entry({"auth": b64(f"{USERNAME}:{PASSWORD}")}),
                 entry({"username": USERNAME, "password": PASSWORD + ":with:colons"})):
        resolved = resolve_credential(regcred, good)
        assert resolved.username == USERNAME and resolved.password and resolved.password.startswith(PASSWORD)
