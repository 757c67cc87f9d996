"""Issue 11, point 7: a RegistryCredential uses only Secrets and ConfigMaps that opt in with the label
``imagesync.dev/credential: "true"``; CA material must be PEM certificates. Pure: resolve_credential.

Also point 9's spec fields (skipTLSVerify, plainHTTP) and point 10's repr."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
import yaml

from imagesync.controller.credentials import (
    OPT_IN_LABEL,
    CredentialError,
    ResolvedCredential,
    auth_document,
    resolve_credential,
)

PASSWORD = "s3cr3t-D0-NOT-LEAK"
CA_PEM = yaml.safe_load((Path(__file__).resolve().parents[2] / "examples" / "configmap-internal-ca.yaml")
                        .read_text())["data"]["ca.crt"]
OPTED_IN = {OPT_IN_LABEL: "true"}


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def secret(name: str = "login", labels: dict[str, str] | None = OPTED_IN, **data: str) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if labels is not None:
        metadata["labels"] = labels
    return {"metadata": metadata, "type": "Opaque",
            "data": {k: b64(v) for k, v in (data or {"username": "robot", "password": PASSWORD}).items()}}


def configmap(name: str = "ca", labels: dict[str, str] | None = OPTED_IN, pem: str = CA_PEM) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if labels is not None:
        metadata["labels"] = labels
    return {"metadata": metadata, "data": {"ca.crt": pem}}


def regcred(**spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": "cred"}, "spec": {"registry": "registry.example.com", **spec}}


def test_an_opted_in_secret_resolves() -> None:
    resolved = resolve_credential(regcred(secretRef={"name": "login"}), secret())
    assert (resolved.username, resolved.password) == ("robot", PASSWORD)


@pytest.mark.parametrize("labels", [None, {}, {OPT_IN_LABEL: "false"}, {OPT_IN_LABEL: "True"},
                                    {"imagesync.dev/credentials": "true"}])
def test_a_secret_without_the_label_is_refused_unread(labels: dict[str, str] | None) -> None:
    with pytest.raises(CredentialError) as info:
        resolve_credential(regcred(secretRef={"name": "login"}), secret(labels=labels))
    assert info.value.reason == "SecretNotOptedIn"
    message = info.value.message
    assert "'login'" in message and OPT_IN_LABEL in message and "kubectl label secret login" in message
    assert PASSWORD not in message and "robot" not in message and "Opaque" not in message


def test_the_label_is_checked_before_the_secret_type() -> None:
    """An unlabelled Secret of another type tells nothing about itself: not its type, not its keys."""
    tls = {"metadata": {"name": "login"}, "type": "kubernetes.io/tls", "data": {"tls.key": b64("KEY")}}
    with pytest.raises(CredentialError) as info:
        resolve_credential(regcred(secretRef={"name": "login"}), tls)
    assert info.value.reason == "SecretNotOptedIn" and "tls" not in info.value.message


@pytest.mark.parametrize("kind", ["Secret", "ConfigMap"])
def test_a_ca_bundle_source_must_opt_in_too(kind: str) -> None:
    if kind == "Secret":
        bundle = {"secretKeyRef": {"name": "ca", "key": "ca.crt"}}
        source = secret("ca", labels=None, **{"ca.crt": CA_PEM})
        opted = secret("ca", **{"ca.crt": CA_PEM})
    else:
        bundle = {"configMapKeyRef": {"name": "ca", "key": "ca.crt"}}
        source, opted = configmap(labels=None), configmap()
    with pytest.raises(CredentialError) as info:
        resolve_credential(regcred(caBundle=bundle), None, source)
    assert info.value.reason == f"{kind}NotOptedIn" and f"{kind} 'ca'" in info.value.message
    assert resolve_credential(regcred(caBundle=bundle), None, opted).ca_pem == CA_PEM


@pytest.mark.parametrize(("pem", "why"), [
    ("REPLACE-ME", "no BEGIN CERTIFICATE"),
    ("-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n", "does not parse"),
    (CA_PEM.replace("MII", "XXX", 1), "does not parse"),
    (CA_PEM + "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n", "private key"),
])
@pytest.mark.parametrize("where", ["inline", "configMap"])
def test_ca_material_must_be_pem_certificates(pem: str, why: str, where: str) -> None:
    if where == "inline":
        args: tuple[Any, ...] = (regcred(caBundle={"inline": pem}), None)
    else:
        args = (regcred(caBundle={"configMapKeyRef": {"name": "ca", "key": "ca.crt"}}), None, configmap(pem=pem))
    with pytest.raises(CredentialError) as info:
        resolve_credential(*args)
    assert info.value.reason == "InvalidCABundle" and why in info.value.message
    assert "AAAA" not in info.value.message


def test_several_certificates_in_one_bundle() -> None:
    assert resolve_credential(regcred(caBundle={"inline": CA_PEM + CA_PEM}), None).ca_pem == CA_PEM + CA_PEM


def test_tls_settings_reach_the_auth_file_and_contradictions_are_refused() -> None:
    plain = resolve_credential(regcred(plainHTTP=True, secretRef={"name": "login"}), secret())
    skip = resolve_credential({"metadata": {"name": "skip"}, "spec": {"registry": "other.example.com",
                                                                      "skipTLSVerify": True}}, None)
    legacy = resolve_credential({"metadata": {"name": "legacy"}, "spec": {"registry": "legacy.example.com",
                                                                          "insecure": True}}, None)
    auth = auth_document([plain, skip, legacy]).auth
    assert auth["registry.example.com"] == {"username": "robot", "password": PASSWORD, "plainHTTP": True}
    assert auth["other.example.com"] == {"skipTLSVerify": True}
    assert auth["legacy.example.com"] == {"insecure": True}
    for spec, message in [({"plainHTTP": True, "skipTLSVerify": True}, "exclude each other"),
                          ({"plainHTTP": True, "caBundle": {"inline": CA_PEM}}, "caBundle"),
                          ({"skipTLSVerify": True, "caBundle": {"inline": CA_PEM}}, "caBundle")]:
        with pytest.raises(CredentialError) as info:
            resolve_credential(regcred(**spec), None)
        assert info.value.reason == "InvalidSpec" and message in info.value.message


def test_repr_holds_no_secret() -> None:
    resolved = resolve_credential(regcred(secretRef={"name": "login"}, caBundle={"inline": CA_PEM}), secret())
    assert isinstance(resolved, ResolvedCredential)
    text = repr(resolved) + str(resolved)
    assert PASSWORD not in text and "robot" not in text and "BEGIN CERTIFICATE" not in text
    assert "cred" in text and "registry.example.com" in text


def test_auth_document_repr_holds_no_secret() -> None:
    document = auth_document([resolve_credential(regcred(secretRef={"name": "login"}), secret())])
    assert PASSWORD not in repr(document) and "registry.example.com" in repr(document)
