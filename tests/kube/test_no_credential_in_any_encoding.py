"""A registry password appears in no stored object but Secrets, in no encoding: not plain, not base64 (at any
alignment, standard or URL-safe, alone or as ``user:password``), not hex.

Searching for the plain password alone misses the likeliest leak: a Secret's base64 value copied somewhere
else, e.g. into a pod-template annotation.
"""

from __future__ import annotations

import base64
from typing import Any

from kube.conftest import Cluster, Operator
from kube.jobplayer import JobPlayer
from kube.objects import NAMESPACE, basic_auth_secret, dockerconfig_secret, isj, regcred

from testbed import seed
from testbed.registry import MakeRegistry, RegistryProcess


def base64_forms(secret: bytes) -> set[str]:
    """Text that any base64 encoding of bytes containing ``secret`` contains.

    Embedded at offset k (mod 3), the secret's characters are the ones whose six bits all come from it:
    after the first ceil(4k/3) characters, before the last partial one.
    """
    forms = set()
    for k in range(3):
        encoded = base64.b64encode(b"\0" * k + secret).decode()
        inner = encoded[(4 * k + 2) // 3:(4 * (k + len(secret))) // 3]
        forms.update({inner, inner.translate(str.maketrans("+/", "-_"))})
    return forms


def leak_forms(username: str, password: str) -> set[str]:
    forms = {password, password.encode().hex()}
    forms |= base64_forms(password.encode()) | base64_forms(f"{username}:{password}".encode())
    return forms


def test_base64_forms_find_the_secret_at_every_offset() -> None:
    secret = b"S3cr3t-Passw0rd-do-not-leak"
    forms = base64_forms(secret)
    for prefix in (b"", b"a", b"ab", b"abc", b"password: "):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            assert any(form in encode(prefix + secret + b"\n").decode() for form in forms), (prefix, encode)
    assert not any(form in base64.b64encode(b"something else entirely, long enough").decode() for form in forms)


def stored_objects(cluster: Cluster) -> list[tuple[str, dict[str, Any]]]:
    """Everything the emulator holds (every kind, events and pods included), by resource."""
    return [(str(key[0]), obj.raw) for key, obj in cluster.emulator._objects.items() if not obj.deleted]


async def test_no_object_but_a_secret_holds_a_password_in_any_form(
        cluster: Cluster, operator: Operator, player: JobPlayer, basic_registry: RegistryProcess,
        make_registry: MakeRegistry) -> None:
    other = make_registry("basic")
    assert basic_registry.username and basic_registry.password and other.username and other.password
    image = seed.push_image(basic_registry, "private/app", "1", seed="leak")
    await cluster.create(basic_auth_secret("source-login", basic_registry.username, basic_registry.password))
    await cluster.create(dockerconfig_secret("target-login", other.host, other.username, other.password))
    await cluster.create(regcred("source", basic_registry.host, secret="source-login"))
    await cluster.create(regcred("target", other.host, secret="target-login"))
    await cluster.create(isj("private", {f"{basic_registry.host}/private/app:1": f"{other.host}/copy/app"}))
    await cluster.wait_status("private", lambda s: s.get("jobName"), "a job")
    # Taken now: the run's Secret is deleted once the run ends.
    while_running = stored_objects(cluster)
    await player.play(NAMESPACE, "private-r1")
    status = await cluster.wait_status("private", lambda s: s.get("phase") in ("Succeeded", "Failed",
                                                                                "PartiallyFailed"), "done")
    assert status["phase"] == "Succeeded", status
    assert seed.get_manifest(other, "copy/app", "1")[2] == image.digest

    forms = leak_forms(basic_registry.username, basic_registry.password) | \
        leak_forms(other.username, other.password)
    objects = while_running + stored_objects(cluster)
    kinds = {resource for resource, _ in objects}
    assert any("jobs" in kind for kind in kinds) and any("events" in kind for kind in kinds), kinds
    leaks = [(resource, obj["metadata"].get("name"), form) for resource, obj in objects
             if "secrets" not in resource for form in forms if form in repr(obj)]
    assert leaks == []
    # The check can see a leak: the run's Secret holds the passwords, base64-encoded.
    (run_secret,) = [obj for resource, obj in while_running if "secrets" in resource
                     and obj["metadata"]["name"] == "private-r1"]
    assert any(form in repr(run_secret) for form in base64_forms(basic_registry.password.encode()))
    assert basic_registry.password not in repr(run_secret)
