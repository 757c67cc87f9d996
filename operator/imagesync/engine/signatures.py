"""Signatures: what counts as one, and verifying cosign's key-based signatures (pure: no I/O).

``--only-signed`` copies an image only when a signature of it exists at the source:

- cosign's tag-based signature ``sha256-<hex>.sig`` (what ``cosign sign`` writes by default), or
- a referrer (OCI 1.1 referrers API or the ``sha256-<hex>`` fallback index) whose ``artifactType`` is one of
  :data:`SIGNATURE_TYPES`: cosign's OCI 1.1 signature, a sigstore bundle (what cosign 2.x/3.x writes with
  the new bundle format) or a Notation signature.

Attestations and SBOMs do not count: they say what an image is, not that someone vouches for it.

With ``--signature-key`` the signature must also verify. Only cosign's simple-signing format is checked
(cosign's SIGNATURE_SPEC): a manifest (the ``.sig`` tag, or a referrer of cosign's signature artifact type)
whose layers are simple-signing payloads, each annotated with ``dev.cosignproject.cosign/signature``, the
base64 ASN.1 DER ECDSA signature over that layer's bytes (SHA-256, the key an ECDSA P-256 public key as
``cosign generate-key-pair`` writes it). The payload's ``critical.image.docker-manifest-digest`` must be
the image's digest, so a valid signature of another image does not count. One verifying layer suffices
(a ``.sig`` manifest holds one layer per signer). Bundles and Notation signatures are not verified: with a
key, an image signed only that way is refused. Keyless (Fulcio certificate, Rekor) verification is not done.

The ``cryptography`` imports are local, so a run without ``--signature-key`` does not load it.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey

COSIGN_SIGNATURE_TYPE = "application/vnd.dev.cosign.artifact.sig.v1+json"
SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
# Artifact types (referrers' artifactType, else their config media type) that count as a signature.
SIGNATURE_TYPES = frozenset({
    COSIGN_SIGNATURE_TYPE,                              # cosign, OCI 1.1 mode (simple-signing layers)
    "application/vnd.dev.sigstore.bundle.v0.3+json",    # cosign's sigstore bundle format
    "application/vnd.dev.sigstore.bundle+json;version=0.3",
    "application/vnd.cncf.notary.signature",            # Notation
})
# A simple-signing payload is a few hundred bytes; a larger layer is not read.
MAX_PAYLOAD_BYTES = 64 * 1024
# Skip reasons (the outcome's reason: a skipped image, not a failed one).
UNSIGNED = "unsigned"
DOES_NOT_VERIFY = "signature does not verify"


class SignatureError(ValueError):
    """A signature or payload that cannot be accepted; the message says why."""


@dataclass(frozen=True)
class SignatureOptions:
    """``--only-signed`` and ``--signature-key``: PEM public keys; with keys, signatures must verify."""

    only_signed: bool = False
    keys: tuple[bytes, ...] = ()

    @property
    def verify(self) -> bool:
        return bool(self.keys)


@dataclass(frozen=True)
class SignedPayload:
    """One candidate signature in a cosign signature manifest: the payload layer and its signature."""

    digest: str
    size: int
    signature: str  # the annotation's base64 text


def is_signature_type(artifact_type: str) -> bool:
    return artifact_type.split(";")[0].strip() in SIGNATURE_TYPES or artifact_type in SIGNATURE_TYPES


def load_public_key(pem: bytes, name: str = "key") -> EllipticCurvePublicKey:
    """An ECDSA P-256 public key from PEM (``cosign.pub``); SignatureError names what is wrong."""
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        key = load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"{name}: not a PEM public key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise SignatureError(f"{name}: not an ECDSA P-256 public key (cosign's key type)")
    return key


def signed_payloads(manifest: bytes) -> list[SignedPayload]:
    """The simple-signing layers of a cosign signature manifest that carry a signature annotation."""
    try:
        body = json.loads(manifest)
    except ValueError:
        return []
    layers = body.get("layers") if isinstance(body, dict) else None
    result = []
    for layer in layers if isinstance(layers, list) else []:
        if not isinstance(layer, dict) or layer.get("mediaType") != SIMPLE_SIGNING:
            continue
        annotations = layer.get("annotations")
        signature = annotations.get(SIGNATURE_ANNOTATION) if isinstance(annotations, dict) else None
        digest, size = layer.get("digest"), layer.get("size")
        if (isinstance(signature, str) and isinstance(digest, str) and isinstance(size, int)
                and not isinstance(size, bool) and 0 <= size <= MAX_PAYLOAD_BYTES):
            result.append(SignedPayload(digest, size, signature))
    return result


def payload_digest(payload: bytes) -> str:
    """The image digest a simple-signing payload vouches for: ``critical.image.docker-manifest-digest``."""
    try:
        body = json.loads(payload)
    except ValueError as exc:
        raise SignatureError(f"payload is not JSON: {exc}") from None
    critical = body.get("critical") if isinstance(body, dict) else None
    image = critical.get("image") if isinstance(critical, Mapping) else None
    digest = image.get("docker-manifest-digest") if isinstance(image, Mapping) else None
    if not isinstance(digest, str) or not digest:
        raise SignatureError("payload has no critical.image.docker-manifest-digest")
    return digest


def verify(keys: Sequence[EllipticCurvePublicKey], payload: bytes, signature: str, image_digest: str) -> None:
    """Accept (return) or raise SignatureError: ``signature`` (base64 DER ECDSA/SHA-256) verifies over
    ``payload`` with one of ``keys``, and the payload names ``image_digest``."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        raw = base64.b64decode(signature.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError("the signature annotation is not base64") from None
    for key in keys:
        try:
            key.verify(raw, payload, ec.ECDSA(hashes.SHA256()))
            break
        except InvalidSignature:
            continue
    else:
        raise SignatureError("no key verifies the signature")
    signed = payload_digest(payload)
    if signed != image_digest:
        raise SignatureError(f"the signed payload names {signed[:80]}, not {image_digest}")


def first_valid(keys: Sequence[EllipticCurvePublicKey], candidates: Sequence[tuple[bytes, str]],
                image_digest: str) -> str | None:
    """None when one (payload, signature) candidate verifies, else why none did (the last reason)."""
    reason = "no cosign simple-signing signature to verify"
    for payload, signature in candidates:
        try:
            verify(keys, payload, signature, image_digest)
            return None
        except SignatureError as exc:
            reason = str(exc)
    return reason

