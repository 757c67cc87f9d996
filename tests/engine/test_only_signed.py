"""--only-signed and --signature-key: only signed images are copied; with a key, only verified ones.

Signatures are made the way cosign makes them, by hand (tests/testbed/cosign.py): the ``.sig`` tag, or a
referrer listed in the ``sha256-<hex>`` fallback index (docker-registry 2.8 has no referrers API, so the
fallback index is what the referrer path reads here). The target is checked with raw GETs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import auth_for, run_sync
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from imagesync.engine.manifest import OCI_MANIFEST
from imagesync.engine.referrers import fallback_tag
from imagesync.engine.signatures import (
    COSIGN_SIGNATURE_TYPE,
    SIMPLE_SIGNING,
    SignatureError,
    first_valid,
    is_signature_type,
    load_public_key,
    payload_digest,
    signed_payloads,
    verify,
)
from testbed import seed
from testbed.cosign import cosign_sign, list_referrer, new_key, public_pem, sign, signature_manifest, simple_signing
from testbed.registry import RegistryProcess

NOTATION = "application/vnd.cncf.notary.signature"


def reasons(result: dict[str, Any]) -> dict[str, str]:
    return {o["source"].rsplit(":", 1)[1]: o.get("reason", "") for o in result["skippedImages"]}


# -- against real registries -----------------------------------------------------------------------------


@pytest.fixture
def seeded(registry: RegistryProcess, tmp_path: Path) -> dict[str, Any]:
    """good: signed with the key; wrongkey: signed with another key; mismatch: signed with the key, but the
    payload names the good image's digest (a signature moved onto another image); unsigned."""
    key, other = new_key(), new_key()
    images = {name: seed.push_image(registry, "lib/app", name, oci=True, seed=name)
              for name in ("good", "wrongkey", "mismatch", "unsigned")}
    cosign_sign(registry, "lib/app", images["good"], key)
    cosign_sign(registry, "lib/app", images["wrongkey"], other)
    cosign_sign(registry, "lib/app", images["mismatch"], key, names=images["good"].digest)
    pem = tmp_path / "cosign.pub"
    pem.write_bytes(public_pem(key))
    return {"images": images, "pem": pem, "key": key}


def tag_rules(registry: RegistryProcess, registry2: RegistryProcess) -> dict[str, str]:
    return {f"{registry.host}/lib/app:{name}": f"{registry2.host}/mirror/app:{name}"
            for name in ("good", "wrongkey", "mismatch", "unsigned")}


def test_only_signed_with_key_copies_exactly_the_verified_image(
        registry: RegistryProcess, registry2: RegistryProcess, tmp_path: Path, seeded: dict[str, Any]) -> None:
    rules = tag_rules(registry, registry2)
    code, result = run_sync(tmp_path, rules, auth_for(registry, registry2),
                            "--only-signed", "--signature-key", str(seeded["pem"]))
    assert code == 0, result  # refused images are skipped with a reason, not failures
    assert (result["imagesSynced"], result["imagesSkippedUnsigned"], result["imagesFailed"]) == (1, 3, 0), result
    assert reasons(result)["unsigned"] == "unsigned"
    assert reasons(result)["wrongkey"] == "signature does not verify: no key verifies the signature"
    assert reasons(result)["mismatch"].startswith("signature does not verify: the signed payload names ")

    images = seeded["images"]
    assert seed.get_manifest(registry2, "mirror/app", "good")[2] == images["good"].digest
    # The good image's signature travelled with it (referrers on by default), byte for byte.
    sig = fallback_tag(images["good"].digest) + ".sig"
    assert seed.get_manifest(registry2, "mirror/app", sig) == seed.get_manifest(registry, "lib/app", sig)
    # Nothing of the refused images reached the target: no tag, no manifest, no blob, no signature.
    for name in ("wrongkey", "mismatch", "unsigned"):
        image = images[name]
        assert not seed.manifest_exists(registry2, "mirror/app", name)
        assert not seed.manifest_exists(registry2, "mirror/app", image.digest)
        assert not seed.manifest_exists(registry2, "mirror/app", fallback_tag(image.digest) + ".sig")
        for blob in image.blobs:
            assert not seed.blob_exists(registry2, "mirror/app", blob.digest), (name, blob)
    assert sorted(seed.list_tags(registry2, "mirror/app")) == ["good", sig]


def test_all_tags_rule_referrer_tags_follow_their_subject(
        registry: RegistryProcess, registry2: RegistryProcess, tmp_path: Path, seeded: dict[str, Any]) -> None:
    """An all-tags rule lists the ``.sig`` tags too: each is copied when its subject is, else skipped with the
    subject's reason (a signature manifest is not itself signed: it is not judged as an image)."""
    rules = {f"{registry.host}/lib/app": f"{registry2.host}/mirror/app"}
    code, result = run_sync(tmp_path, rules, auth_for(registry, registry2),
                            "--only-signed", "--signature-key", str(seeded["pem"]))
    assert code == 0 and result["imagesFailed"] == 0, result
    images = seeded["images"]
    refused = {fallback_tag(images[n].digest) + ".sig": n for n in ("wrongkey", "mismatch")}
    assert result["imagesSkippedUnsigned"] == 3 + len(refused), result
    for tag, name in refused.items():
        assert reasons(result)[tag].startswith(reasons(result)[name]), result
        assert "the subject of this referrer tag" in reasons(result)[tag]
    assert sorted(seed.list_tags(registry2, "mirror/app")) == sorted(
        ["good", fallback_tag(images["good"].digest) + ".sig"])


def test_only_signed_without_key_copies_every_signed_image(
        registry: RegistryProcess, registry2: RegistryProcess, tmp_path: Path, seeded: dict[str, Any]) -> None:
    rules = tag_rules(registry, registry2)
    code, result = run_sync(tmp_path, rules, auth_for(registry, registry2), "--only-signed")
    assert code == 0, result
    assert (result["imagesSynced"], result["imagesSkippedUnsigned"]) == (3, 1), result
    assert reasons(result) == {"unsigned": "unsigned"}
    assert not seed.manifest_exists(registry2, "mirror/app", "unsigned")
    for name in ("good", "wrongkey", "mismatch"):
        assert seed.get_manifest(registry2, "mirror/app", name)[2] == seeded["images"][name].digest

    # Without --only-signed everything is copied (the unsigned image now too).
    code, result = run_sync(tmp_path, rules, auth_for(registry, registry2), name="all")
    assert code == 0 and result["imagesSynced"] == 1 and result["imagesSkippedUnsigned"] == 0, result


def test_signature_referrers_count_and_verify(registry: RegistryProcess, registry2: RegistryProcess,
                                             tmp_path: Path) -> None:
    """cosign's OCI 1.1 signature (a referrer) verifies with the key; a Notation signature counts as signed
    without a key but, not being verifiable here, does not pass with one."""
    key = new_key()
    cosign = seed.push_image(registry, "lib/app", "cosign", oci=True, seed="cosign")
    notation = seed.push_image(registry, "lib/app", "notation", oci=True, seed="notation")
    payload = simple_signing(cosign.digest)
    list_referrer(registry, "lib/app", cosign.digest,
                  signature_manifest(registry, "lib/app", payload, sign(key, payload), subject=cosign),
                  COSIGN_SIGNATURE_TYPE)
    jws = seed.push_blob(registry, "lib/app", b"jws-bytes")
    empty = seed.push_blob(registry, "lib/app", b"{}")
    notation_manifest = seed.encode_json({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": NOTATION,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "size": empty.size, "digest": empty.digest},
        "layers": [{"mediaType": "application/jose+json", "size": jws.size, "digest": jws.digest}],
        "subject": {"mediaType": notation.media_type, "digest": notation.digest, "size": len(notation.manifest)}})
    list_referrer(registry, "lib/app", notation.digest, notation_manifest, NOTATION)
    pem = tmp_path / "cosign.pub"
    pem.write_bytes(public_pem(key))
    rules = {f"{registry.host}/lib/app:cosign": f"{registry2.host}/keyed/app:cosign",
             f"{registry.host}/lib/app:notation": f"{registry2.host}/keyed/app:notation"}

    code, result = run_sync(tmp_path, rules, auth_for(registry, registry2), "--signature-key", str(pem))
    assert code == 0, result  # --signature-key implies --only-signed
    assert (result["imagesSynced"], result["imagesSkippedUnsigned"]) == (1, 1), result
    assert reasons(result)["notation"].startswith("signature does not verify: no cosign simple-signing signature")
    assert seed.get_manifest(registry2, "keyed/app", "cosign")[2] == cosign.digest
    assert not seed.manifest_exists(registry2, "keyed/app", "notation")

    plain = {src: dst.replace("/keyed/", "/plain/") for src, dst in rules.items()}
    code, result = run_sync(tmp_path, plain, auth_for(registry, registry2), "--only-signed", name="plain")
    assert code == 0 and (result["imagesSynced"], result["imagesSkippedUnsigned"]) == (2, 0), result


def test_bad_key_file_is_bad_input(registry: RegistryProcess, tmp_path: Path) -> None:
    rsa_pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    for name, content in (("garbage.pub", b"not a key"), ("rsa.pub", rsa_pem)):
        (tmp_path / name).write_bytes(content)
        code, _ = run_sync(tmp_path, {f"{registry.host}/lib/app:v1": f"{registry.host}/mirror/app"},
                           auth_for(registry), "--signature-key", str(tmp_path / name), name=f"run-{name}")
        assert code == 2
    code, _ = run_sync(tmp_path, {f"{registry.host}/lib/app:v1": f"{registry.host}/mirror/app"},
                       auth_for(registry), "--signature-key", str(tmp_path / "missing.pub"), name="missing")
    assert code == 2


# -- the verifier ------------------------------------------------------------------------------------------

DIGEST = "sha256:" + "ab" * 32


def test_verify_good_signature() -> None:
    key = new_key()
    payload = simple_signing(DIGEST)
    verify([load_public_key(public_pem(key))], payload, sign(key, payload), DIGEST)
    # Any of several keys may have signed.
    verify([load_public_key(public_pem(new_key())), load_public_key(public_pem(key))], payload,
           sign(key, payload), DIGEST)
    assert payload_digest(payload) == DIGEST


@pytest.mark.parametrize("case", ["wrong key", "tampered payload", "digest mismatch", "garbage annotation",
                                  "empty annotation", "not json", "no digest"])
def test_verify_refuses(case: str) -> None:
    key = new_key()
    public = [load_public_key(public_pem(key))]
    payload = simple_signing(DIGEST)
    signature = sign(key, payload)
    if case == "wrong key":
        public = [load_public_key(public_pem(new_key()))]
    elif case == "tampered payload":
        payload = simple_signing("sha256:" + "cd" * 32)
    elif case == "digest mismatch":
        payload = simple_signing("sha256:" + "cd" * 32)
        signature = sign(key, payload)
    elif case == "garbage annotation":
        signature = "%%% not base64 %%%"
    elif case == "empty annotation":
        signature = ""
    elif case == "not json":
        payload = b"\x00garbage"
        signature = sign(key, payload)
    elif case == "no digest":
        payload = json.dumps({"critical": {"image": {}}}).encode()
        signature = sign(key, payload)
    with pytest.raises(SignatureError):
        verify(public, payload, signature, DIGEST)
    assert first_valid(public, [(payload, signature)], DIGEST) is not None


def test_first_valid_and_helpers() -> None:
    key = new_key()
    public = [load_public_key(public_pem(key))]
    good = simple_signing(DIGEST)
    bad = simple_signing("sha256:" + "00" * 32)
    assert first_valid(public, [(bad, sign(key, bad)), (good, sign(key, good))], DIGEST) is None
    assert first_valid(public, [], DIGEST) == "no cosign simple-signing signature to verify"
    with pytest.raises(SignatureError, match="not a PEM public key"):
        load_public_key(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    p384 = ec.generate_private_key(ec.SECP384R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(SignatureError, match="P-256"):
        load_public_key(p384)
    assert is_signature_type(COSIGN_SIGNATURE_TYPE) and is_signature_type(NOTATION)
    assert not is_signature_type("application/vnd.dev.cosign.artifact.att.v1+json")
    assert not is_signature_type("application/spdx+json")
    manifest = json.dumps({"layers": [
        {"mediaType": SIMPLE_SIGNING, "digest": DIGEST, "size": 10,
         "annotations": {"dev.cosignproject.cosign/signature": "c2ln"}},
        {"mediaType": SIMPLE_SIGNING, "digest": DIGEST, "size": 10},  # no signature: not a candidate
        {"mediaType": SIMPLE_SIGNING, "digest": DIGEST, "size": 10 ** 9,  # too large to read
         "annotations": {"dev.cosignproject.cosign/signature": "c2ln"}},
        {"mediaType": "application/vnd.dsse.envelope.v1+json", "digest": DIGEST, "size": 10,
         "annotations": {"dev.cosignproject.cosign/signature": "c2ln"}},
        "junk"]}).encode()
    assert [(p.digest, p.size, p.signature) for p in signed_payloads(manifest)] == [(DIGEST, 10, "c2ln")]
    assert signed_payloads(b"[1, 2]") == [] and signed_payloads(b"{") == []
