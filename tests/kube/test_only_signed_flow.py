"""spec.onlySigned and spec.signatureKeys against the emulator, with a real worker and real registries: of three
images (signed with the key, signed with another key, unsigned) exactly the one whose cosign signature verifies
is copied; the others are listed in the status with their reasons. The public key comes from an opted-in
Secret and reaches the worker only in the run's Secret; an unlabelled or unparsable key Secret blocks the run."""

from __future__ import annotations

import base64
import json
from typing import Any

from cryptography.hazmat.primitives import serialization
from kube.conftest import Cluster, Operator
from kube.jobplayer import JobPlayer
from kube.objects import NAMESPACE, OPT_IN, isj, regcred

from testbed import seed
from testbed.cosign import cosign_sign, fallback_tag, new_key, public_pem
from testbed.registry import RegistryProcess

KEY_REF = [{"secretKeyRef": {"name": "cosign-pub"}}]


def key_secret(name: str, files: dict[str, bytes], *, opt_in: bool = True) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "labels": dict(OPT_IN)} if opt_in else {"name": name}
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": metadata,
            "data": {key: base64.b64encode(value).decode() for key, value in files.items()}}


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(c for c in status.get("conditions") or [] if c["type"] == kind)


async def test_only_the_signed_and_verifying_image_is_copied(cluster: Cluster, operator: Operator,
                                                            player: JobPlayer, registry: RegistryProcess,
                                                            registry2: RegistryProcess) -> None:
    key = new_key()
    images = {name: seed.push_image(registry, "lib/app", name, oci=True, seed=name)
              for name in ("good", "badsig", "unsigned")}
    signature = cosign_sign(registry, "lib/app", images["good"], key)
    cosign_sign(registry, "lib/app", images["badsig"], new_key())
    # As `cosign generate-key-pair k8s://` writes it: the private key beside the public one (never read).
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    await cluster.create(key_secret("cosign-pub", {"cosign.pub": public_pem(key), "cosign.key": private}))
    await cluster.create(regcred("source", registry.host))
    await cluster.create(regcred("target", registry2.host))
    rules = {f"{registry.host}/lib/app:good,badsig,unsigned": f"{registry2.host}/mirror/app"}
    await cluster.create(isj("signed", rules, onlySigned=True, signatureKeys=KEY_REF))
    status = await cluster.wait_status("signed", lambda s: s.get("jobName"), "a job")

    # The key is a file of the run's Secret, named in options.json; nothing of it (nor of cosign.key) is
    # in the Job.
    (secret,) = [s for s in cluster.secrets() if s["metadata"]["name"] == status["secretName"]]
    files = {name: base64.b64decode(value).decode() for name, value in secret["data"].items()}
    assert files["signature-key-0.pem"] == public_pem(key).decode()
    assert json.loads(files["options.json"])["signatureKeys"] == ["signature-key-0.pem"]
    assert not any("PRIVATE KEY" in text for text in files.values())
    (job,) = cluster.jobs()
    key_body = "".join(public_pem(key).decode().splitlines()[1:-1])
    assert key_body[:24] not in json.dumps(job) and "BEGIN PUBLIC" not in json.dumps(job)

    runs = await player.play(NAMESPACE, status["jobName"])
    assert [r.returncode for r in runs] == [0], [r.stderr[-800:] for r in runs]
    status = await cluster.wait_status("signed", lambda s: s.get("phase") in ("Succeeded", "Failed",
                                                                              "PartiallyFailed"), "finished")
    assert status["phase"] == "Succeeded", status  # refused images are skipped, not failed
    progress = status["progress"]
    assert (progress["imagesSynced"], progress["imagesSkipped"], progress["imagesSkippedUnsigned"],
            progress["imagesFailed"]) == (1, 2, 2, 0), progress
    reasons = {item["source"].rsplit(":", 1)[1]: item["reason"] for item in status["skippedImages"]}
    assert reasons == {"unsigned": "unsigned", "badsig": "signature does not verify: no key verifies the signature"}
    complete = condition(status, "Complete")["message"]
    assert "1 synced, 0 up to date, 2 refused as unsigned or not verifying, 0 failed of 3" in complete, complete

    sig_tag = fallback_tag(images["good"].digest) + ".sig"
    assert sorted(seed.list_tags(registry2, "mirror/app")) == ["good", sig_tag]
    assert seed.get_manifest(registry2, "mirror/app", "good")[2] == images["good"].digest
    assert seed.get_manifest(registry2, "mirror/app", sig_tag)[2] == signature


async def test_an_unlabelled_or_unparsable_key_secret_blocks_the_run(cluster: Cluster, operator: Operator) -> None:
    await cluster.create(key_secret("cosign-pub", {"cosign.pub": public_pem(new_key())}, opt_in=False))
    junk = b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"  # PEM armour, no key inside
    await cluster.create(key_secret("junk", {"cosign.pub": junk}))
    rules = {"a.example/lib/app:1": "b.example/mirror/app"}
    await cluster.create(isj("unlabelled", rules, signatureKeys=KEY_REF))
    await cluster.create(isj("junk", rules, onlySigned=True,
                             signatureKeys=[{"secretKeyRef": {"name": "junk", "key": "cosign.pub"}}]))

    for name, reason, secret in (("unlabelled", "SecretNotOptedIn", "cosign-pub"),
                                 ("junk", "InvalidSignatureKey", "junk")):
        status = await cluster.wait_status(name, lambda s: s.get("phase") == "Failed", "Failed")
        blocked = condition(status, "CredentialsReady")
        assert (blocked["status"], blocked["reason"]) == ("False", reason), blocked
        assert blocked["message"].startswith("spec.signatureKeys[0].secretKeyRef: ") and f"'{secret}'" in \
            blocked["message"], blocked
        stalled = condition(status, "Stalled")
        assert stalled["status"] == "True" and stalled["reason"] == reason
        await cluster.wait_for(f"a {reason} event", lambda r=reason: r in {
            e.get("reason") for e in cluster.events() if e.get("type") == "Warning"})
    unlabelled = (cluster.isj("unlabelled") or {}).get("status") or {}
    assert "imagesync.dev/credential" in condition(unlabelled, "CredentialsReady")["message"]
    # No run started: no Job, and no run Secret beside the two key Secrets.
    assert cluster.jobs() == [] and {s["metadata"]["name"] for s in cluster.secrets()} == {"cosign-pub", "junk"}
