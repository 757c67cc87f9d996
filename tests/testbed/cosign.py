"""cosign key-based signatures, made by hand from cosign's documented layout (SIGNATURE_SPEC).

An ECDSA P-256 key pair from ``cryptography``; a simple-signing payload naming an image's digest, signed
(SHA-256, ASN.1 DER, base64) into the ``dev.cosignproject.cosign/signature`` annotation of the payload
layer; the signature manifest tagged ``sha256-<hex>.sig`` (cosign's default) or pushed with a ``subject``
and listed in the ``sha256-<hex>`` fallback index (cosign's OCI 1.1 mode). Like :mod:`testbed.seed`, this
is independent of ``imagesync.engine``: the media types are spelled out here, not imported from the code
under test.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from testbed import seed
from testbed.seed import OCI_INDEX, OCI_MANIFEST, Target

COSIGN_SIGNATURE_TYPE = "application/vnd.dev.cosign.artifact.sig.v1+json"
SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """cosign.pub: the public key as PEM SubjectPublicKeyInfo."""
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def fallback_tag(digest: str) -> str:
    """``sha256:<hex>`` -> ``sha256-<hex>`` (the referrers tag schema; cosign's tags add .sig/.att/.sbom)."""
    return digest.replace(":", "-")


def simple_signing(digest: str, reference: str = "registry.example/lib/app") -> bytes:
    """cosign's payload: critical.identity/image/type, optional (cosign writes exactly this shape)."""
    return json.dumps({"critical": {"identity": {"docker-reference": reference},
                                    "image": {"docker-manifest-digest": digest},
                                    "type": "cosign container image signature"},
                       "optional": None}).encode()


def sign(key: ec.EllipticCurvePrivateKey, payload: bytes) -> str:
    return base64.b64encode(key.sign(payload, ec.ECDSA(hashes.SHA256()))).decode()


def signature_manifest(registry: Target, repo: str, payload: bytes, signature: str,
                       subject: seed.SeededImage | None = None) -> bytes:
    """A cosign signature manifest (payload layer pushed); with ``subject``, cosign's OCI 1.1 form."""
    layer = seed.push_blob(registry, repo, payload)
    config = seed.push_blob(registry, repo, b"{}")
    document: dict[str, Any] = {
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": config.size,
                   "digest": config.digest},
        "layers": [{"mediaType": SIMPLE_SIGNING, "size": layer.size, "digest": layer.digest,
                    "annotations": {SIGNATURE_ANNOTATION: signature}}],
    }
    if subject is not None:
        document["artifactType"] = COSIGN_SIGNATURE_TYPE
        document["subject"] = {"mediaType": subject.media_type, "digest": subject.digest,
                               "size": len(subject.manifest)}
    return seed.encode_json(document)


def cosign_sign(registry: Target, repo: str, image: seed.SeededImage, key: ec.EllipticCurvePrivateKey,
                *, names: str | None = None, host: str = "registry.example") -> str:
    """``cosign sign --key``: the ``.sig`` tag; ``names`` puts another digest in the payload."""
    payload = simple_signing(names or image.digest, f"{host}/{repo}")
    manifest = signature_manifest(registry, repo, payload, sign(key, payload))
    return seed.push_manifest(registry, repo, fallback_tag(image.digest) + ".sig", manifest, OCI_MANIFEST)


def list_referrer(registry: Target, repo: str, subject: str, manifest: bytes, artifact_type: str) -> str:
    """Push a referrer by digest and list it in the ``sha256-<hex>`` index (a registry without the API)."""
    digest = seed.push_manifest(registry, repo, seed.sha256_digest(manifest), manifest, OCI_MANIFEST)
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX,
             "manifests": [{"mediaType": OCI_MANIFEST, "digest": digest, "size": len(manifest),
                            "artifactType": artifact_type}]}
    seed.push_manifest(registry, repo, fallback_tag(subject), seed.encode_json(index), OCI_INDEX)
    return digest
