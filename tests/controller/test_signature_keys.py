"""spec.onlySigned and spec.signatureKeys (issue 10, point 5, on the CR side), pure parts.

- the spec parses, with one SpecError naming the field for each kind of bad input;
- a key Secret must exist, opt in, hold the key, and the key must be an ECDSA P-256 public key; each refusal
  names the field and the Secret, never a value; a private key is refused, and only the re-encoded public key
  goes on;
- the key reaches the worker only as a file of the run's Secret (named in options.json), never in the Job;
- the worker reads options.json and the key file the way the sync command reads --signature-key;
- images skipped for a reason travel in the worker's bounded report, survive the operator's parsing, and are
  listed (capped) and counted in the status.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from imagesync.controller.credentials import CredentialError, signature_key_pems
from imagesync.controller.render import render_config_secret, render_job, worker_options
from imagesync.controller.reports import parse_report
from imagesync.controller.settings import OperatorSettings
from imagesync.controller.spec import SecretKeyRef, SpecError, parse_job_spec
from imagesync.controller.status import FAILED_IMAGES_CAP, fold_progress
from imagesync.engine.errors import ConfigError
from imagesync.engine.signatures import DOES_NOT_VERIFY, UNSIGNED
from imagesync.engine.stats import ImageOutcome, SyncStats
from imagesync.worker.main import load_options, progress_report
from imagesync.worker.report import REPORT_BUDGET, REPORT_SKIPPED_IMAGES, bounded_report
from testbed.cosign import new_key, public_pem

IMAGES = {"quay.io/app/web:1": "registry.example.com/mirror/web"}
ISJ = {"apiVersion": "imagesync.dev/v1alpha1", "kind": "ImageSyncJob",
       "metadata": {"name": "signed", "namespace": "team", "uid": "uid-1", "generation": 1}}
OPT_IN = {"imagesync.dev/credential": "true"}


def spec(**fields: Any) -> dict[str, Any]:
    return {"images": IMAGES, **fields}


def key_secret(name: str, value: str | bytes, *, key: str = "cosign.pub", opt_in: bool = True) -> dict[str, Any]:
    raw = value.encode() if isinstance(value, str) else value
    metadata: dict[str, Any] = {"name": name, "labels": dict(OPT_IN)} if opt_in else {"name": name}
    return {"apiVersion": "v1", "kind": "Secret", "metadata": metadata,
            "data": {key: base64.b64encode(raw).decode()}}


# -- the spec ----------------------------------------------------------------------------------------------


def test_defaults_and_parsing() -> None:
    plain = parse_job_spec(spec())
    assert (plain.only_signed, plain.signature_keys) == (False, ())
    assert "onlySigned" not in worker_options(plain) and "signatureKeys" not in worker_options(plain)

    only = parse_job_spec(spec(onlySigned=True))
    assert (only.only_signed, only.signature_keys) == (True, ())
    assert worker_options(only)["onlySigned"] is True and worker_options(only)["signatureKeys"] == []

    keyed = parse_job_spec(spec(signatureKeys=[{"secretKeyRef": {"name": "cosign"}},
                                               {"secretKeyRef": {"name": "rotated", "key": "next.pub"}}]))
    assert keyed.only_signed  # keys imply onlySigned, as --signature-key implies --only-signed
    assert keyed.signature_keys == (SecretKeyRef("cosign", "cosign.pub"), SecretKeyRef("rotated", "next.pub"))
    assert worker_options(keyed)["signatureKeys"] == ["signature-key-0.pem", "signature-key-1.pem"]


@pytest.mark.parametrize(("fields", "path"), [
    ({"onlySigned": "yes"}, "spec.onlySigned"),
    ({"signatureKeys": {"secretKeyRef": {"name": "a"}}}, "spec.signatureKeys"),
    ({"signatureKeys": [{"secretKeyRef": {"name": f"k{i}"}} for i in range(9)]}, "spec.signatureKeys"),
    ({"signatureKeys": ["cosign"]}, "spec.signatureKeys[0].secretKeyRef"),
    ({"signatureKeys": [{"secretRef": {"name": "cosign"}}]}, "spec.signatureKeys[0].secretKeyRef"),
    ({"signatureKeys": [{"secretKeyRef": {"key": "cosign.pub"}}]}, "spec.signatureKeys[0].secretKeyRef.name"),
    ({"signatureKeys": [{"secretKeyRef": {"name": "Not_A_Name"}}]}, "spec.signatureKeys[0].secretKeyRef.name"),
    ({"signatureKeys": [{"secretKeyRef": {"name": "ok", "key": "../etc/passwd"}}]},
     "spec.signatureKeys[0].secretKeyRef.key"),
    ({"signatureKeys": [{"secretKeyRef": {"name": "ok", "key": 7}}]}, "spec.signatureKeys[0].secretKeyRef.key"),
    ({"signatureKeys": [{"secretKeyRef": {"name": "a"}}, {"secretKeyRef": {"name": "a", "key": "cosign.pub"}}]},
     "spec.signatureKeys[1].secretKeyRef"),
])
def test_bad_spec_names_the_field(fields: dict[str, Any], path: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_job_spec(spec(**fields))
    assert caught.value.field_path == path, str(caught.value)
    assert str(caught.value).startswith(f"{path}: ") and "\n" not in str(caught.value)


# -- the key Secrets ---------------------------------------------------------------------------------------


def test_a_good_key_is_re_encoded_public_only() -> None:
    key = new_key()
    pem = public_pem(key).decode()
    refs = (SecretKeyRef("cosign", "cosign.pub"),)
    assert signature_key_pems(refs, {"cosign": key_secret("cosign", pem)}) == [pem]
    # stringData (kept by emulators) is read too; extra keys of the Secret (cosign.key) are never looked at.
    secret = {"metadata": {"name": "cosign", "labels": OPT_IN}, "stringData": {"cosign.pub": pem},
              "data": {"cosign.key": base64.b64encode(b"ENCRYPTED PRIVATE KEY").decode()}}
    assert signature_key_pems(refs, {"cosign": secret}) == [pem]


def refusal(value: str | bytes | None, *, opt_in: bool = True, key: str = "cosign.pub") -> CredentialError:
    secrets = {"cosign": None if value is None else key_secret("cosign", value, key=key, opt_in=opt_in)}
    refs = (SecretKeyRef("other", "cosign.pub"), SecretKeyRef("cosign", "cosign.pub"))
    secrets["other"] = key_secret("other", public_pem(new_key()))
    with pytest.raises(CredentialError) as caught:
        signature_key_pems(refs, secrets)
    assert caught.value.message.startswith("spec.signatureKeys[1].secretKeyRef: "), caught.value.message
    assert "'cosign'" in caught.value.message
    return caught.value


def test_refusals_name_the_field_and_the_secret_never_the_value() -> None:
    assert refusal(None).reason == "SecretMissing"
    unlabelled = refusal(public_pem(new_key()), opt_in=False)
    assert unlabelled.reason == "SecretNotOptedIn" and "imagesync.dev/credential" in unlabelled.message
    missing = refusal(public_pem(new_key()), key="other.pub")
    assert missing.reason == "SignatureKeyMissing" and "'cosign.pub'" in missing.message
    assert refusal("not a key at all").reason == "InvalidSignatureKey"
    rsa_pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    wrong_type = refusal(rsa_pem)
    assert wrong_type.reason == "InvalidSignatureKey" and "P-256" in wrong_type.message
    private = new_key().private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())
    # A public key with the private key pasted after it: refused as a whole, the private key never travels.
    leaked = refusal(public_pem(new_key()) + private)
    assert leaked.reason == "InvalidSignatureKey" and "private key" in leaked.message
    body = private.decode().splitlines()[1]
    assert body not in leaked.message and body[:16] not in leaked.message


# -- the run's Secret and Job -----------------------------------------------------------------------------


def test_the_key_travels_only_in_the_run_secret() -> None:
    pem = public_pem(new_key()).decode()
    parsed = parse_job_spec(spec(onlySigned=True, signatureKeys=[{"secretKeyRef": {"name": "cosign"}}]))
    secret = render_config_secret(ISJ, 1, parsed, {}, {}, [pem])
    files = {name: base64.b64decode(value).decode() for name, value in secret["data"].items()}
    assert files["signature-key-0.pem"] == pem
    options = json.loads(files["options.json"])
    assert options["onlySigned"] is True and options["signatureKeys"] == ["signature-key-0.pem"]
    job = render_job(ISJ, 1, parsed, OperatorSettings(worker_image="imagesync:test"))
    text = json.dumps(job)
    key_body = "".join(pem.splitlines()[1:-1])
    for fragment in (key_body[:24], key_body[-24:], base64.b64encode(pem.encode()).decode()[:24], "BEGIN PUBLIC"):
        assert fragment not in text
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["imagesync", "worker"] and "args" not in container
    assert all("signature" not in json.dumps(env).lower() for env in container["env"])
    assert "annotations" not in job["metadata"] and "annotations" not in job["spec"]["template"]["metadata"]
    with pytest.raises(ValueError, match=r"spec\.signatureKeys"):
        render_config_secret(ISJ, 1, parsed, {}, {}, [])


# -- the worker ------------------------------------------------------------------------------------------


def write_config(directory: Path, options: dict[str, Any], keys: dict[str, bytes]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "options.json").write_text(json.dumps(options))
    for name, content in keys.items():
        (directory / name).write_bytes(content)
    return directory / "options.json"


def test_worker_reads_the_key_file_named_in_its_options(tmp_path: Path) -> None:
    pem = public_pem(new_key())
    parsed = parse_job_spec(spec(signatureKeys=[{"secretKeyRef": {"name": "cosign"}}]))
    path = write_config(tmp_path / "good", worker_options(parsed), {"signature-key-0.pem": pem})
    signatures = load_options(path).sync.signatures
    assert signatures.only_signed and signatures.keys == (pem,)

    only = write_config(tmp_path / "only", worker_options(parse_job_spec(spec(onlySigned=True))), {})
    assert load_options(only).sync.signatures.only_signed and not load_options(only).sync.signatures.keys
    assert not load_options(write_config(tmp_path / "plain", {}, {})).sync.signatures.only_signed

    bad = write_config(tmp_path / "bad", worker_options(parsed), {"signature-key-0.pem": b"junk"})
    with pytest.raises(ConfigError, match="not a PEM public key"):
        load_options(bad)
    missing = write_config(tmp_path / "missing", worker_options(parsed), {})
    with pytest.raises(ConfigError, match="cannot read"):
        load_options(missing)
    wrong = write_config(tmp_path / "wrong", {"onlySigned": True, "signatureKeys": "signature-key-0.pem"}, {})
    with pytest.raises(ConfigError, match="signatureKeys"):
        load_options(wrong)


# -- skipped images in the report and the status ------------------------------------------------------------


def refused_stats(count: int, reason_chars: int = 40) -> SyncStats:
    stats = SyncStats(images_total=count + 2)
    stats.record(ImageOutcome("src/app:up-to-date", "dst/app:up-to-date", "skipped"))
    stats.record(ImageOutcome("src/app:good", "dst/app:good", "synced"))
    for i in range(count):
        reason = UNSIGNED if i % 2 else f"{DOES_NOT_VERIFY}: {'x' * reason_chars}"
        stats.record(ImageOutcome(f"src/app:{i}", f"dst/app:{i}", "skipped", reason))
    return stats


def test_skipped_images_travel_bounded_and_fold_into_the_status() -> None:
    report = progress_report(refused_stats(3), 0, done=True)
    assert report["imagesSkipped"] == 4 and report["imagesSkippedUnsigned"] == 3
    assert [item["source"] for item in report["skippedImages"]] == ["src/app:0", "src/app:1", "src/app:2"]
    parsed = parse_report(bounded_report(report), registries=set(), index=0)
    assert parsed.counts["imagesSkippedUnsigned"] == 3
    folded = fold_progress({0: parsed.as_dict(), 1: parsed.as_dict()}, 2)
    assert folded["progress"]["imagesSkippedUnsigned"] == 6 and folded["progress"]["imagesSkipped"] == 8
    assert folded["skippedImages"][1] == {"source": "src/app:1", "target": "dst/app:1", "reason": UNSIGNED}
    assert folded["skippedImages"][0]["reason"].startswith(DOES_NOT_VERIFY)
    assert len(folded["skippedImages"]) == 6

    # Many refusals with long reasons: the list is capped, the report stays in budget, the count exact.
    many = progress_report(refused_stats(5000, reason_chars=3000), 0, done=True)
    assert len(many["skippedImages"]) == REPORT_SKIPPED_IMAGES
    text = bounded_report(many)
    assert len(text.encode()) <= REPORT_BUDGET
    parsed = parse_report(text, registries=set(), index=0)
    assert parsed.counts["imagesSkippedUnsigned"] == 5000 and 0 < len(parsed.skipped_images) <= 50
    assert len(fold_progress({0: parsed.as_dict()}, 1)["skippedImages"]) == FAILED_IMAGES_CAP


def test_a_report_without_skipped_images_folds_to_an_empty_list() -> None:
    folded = fold_progress({0: {"imagesTotal": 1, "imagesSynced": 1, "done": True}}, 1)
    assert folded["skippedImages"] == [] and folded["progress"]["imagesSkippedUnsigned"] == 0
