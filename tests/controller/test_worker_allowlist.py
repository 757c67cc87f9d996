"""Issue 11, point 8: spec.worker's image, ServiceAccount, tolerations and nodeSelector are allowlisted by the
operator's settings (controller/policy.py), with safe defaults; refusals name the field and the value."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from imagesync.controller.handlers import Context, RunBlocked, admitted_spec
from imagesync.controller.main import build_parser, settings_from, with_own_image
from imagesync.controller.policy import image_rule, refusal_message, worker_refusals
from imagesync.controller.settings import ALLOWLIST_ENV, OperatorSettings, SettingsError
from imagesync.controller.spec import WorkerSpec

DIGEST = "sha256:" + "ab" * 32
OTHER_DIGEST = "sha256:" + "cd" * 32
OWN = "registry.example.com/imagesync:0.2.0"


@pytest.fixture(autouse=True)
def no_allowlist_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ALLOWLIST_ENV.values():
        monkeypatch.delenv(name, raising=False)


def settings(**kwargs: Any) -> OperatorSettings:
    return OperatorSettings(**{"worker_image": OWN, **kwargs})


def refused(worker: WorkerSpec, config: OperatorSettings) -> list[tuple[str, str]]:
    return [(r.field, r.value) for r in worker_refusals(worker, config)]


# -- defaults ------------------------------------------------------------------------------------


def test_no_worker_choices_are_always_allowed() -> None:
    assert refused(WorkerSpec(), settings()) == []
    assert refused(WorkerSpec(resources={"limits": {"memory": "1Gi"}}), settings()) == []


@pytest.mark.parametrize("image", [
    OWN, "registry.example.com/imagesync:0.1.0", f"registry.example.com/imagesync@{DIGEST}",
    f"registry.example.com/imagesync:1@{DIGEST}", "REGISTRY.example.com/imagesync:1",
])
def test_default_allows_any_tag_or_digest_of_the_worker_image_repository(image: str) -> None:
    assert refused(WorkerSpec(image=image), settings()) == []


@pytest.mark.parametrize("image", [
    "registry.example.com/does-not-exist:1",  # the e2e suite's unpullable image: refused by default
    "registry.example.com/imagesync-evil:1",  # a prefix of the name is not the repository
    "registry.example.com/imagesync/sub:1",  # nor is a repository below it
    "evil.example.com/imagesync:0.2.0",
    "registry.example.com.evil.example.com/imagesync:1",
    "imagesync:0.2.0",  # docker.io/library/imagesync
    "registry.example.com/imagesync/../x:1", "registry.example.com/imagesync:1 ", "",
])
def test_default_refuses_every_other_image(image: str) -> None:
    assert refused(WorkerSpec(image=image), settings()) == [("spec.worker.image", image)]


def test_default_follows_the_operator_own_image() -> None:
    """In a Pod the worker image is the operator's own (main.with_own_image): the default follows it."""
    class OwnPod:
        def get_pod(self, namespace: str, name: str) -> dict[str, Any]:
            return {"spec": {"containers": [{"name": "operator", "image": "ghcr.io/acme/imagesync:9@" + DIGEST}]}}

    args = build_parser().parse_args([])
    mine = with_own_image(settings(worker_image="unset.example.com/x:1"), args, OwnPod(),  # type: ignore[arg-type]
                          {"IMAGESYNC_POD_NAME": "op", "IMAGESYNC_POD_NAMESPACE": "sys"})
    assert refused(WorkerSpec(image="ghcr.io/acme/imagesync:10"), mine) == []
    assert refused(WorkerSpec(image="unset.example.com/x:1"), mine) != []


def test_unparsable_worker_image_setting_allows_only_itself() -> None:
    config = settings(worker_image="Not A Reference")
    assert refused(WorkerSpec(image="Not A Reference"), config) == []
    assert refused(WorkerSpec(image="registry.example.com/imagesync:1"), config) != []


def test_default_service_account_tolerations_and_node_selector() -> None:
    assert refused(WorkerSpec(service_account="imagesync-worker"), settings()) == []
    assert refused(WorkerSpec(service_account="default"), settings()) == [
        ("spec.worker.serviceAccountName", "default")]
    assert refused(WorkerSpec(tolerations=({"key": "gpu", "operator": "Exists"},)), settings()) == [
        ("spec.worker.tolerations[0].key", "gpu")]
    assert refused(WorkerSpec(node_selector={"pool": "io"}), settings()) == [("spec.worker.nodeSelector", "pool")]
    # The configured ServiceAccount, whatever its name, is the one a spec may always name.
    assert refused(WorkerSpec(service_account="syncer"), settings(worker_service_account="syncer")) == []


# -- allowlists ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("entries", "allowed", "refused_images"), [
    (("*",), ["anything.example.com/x:1", "busybox"], []),
    ((DIGEST,), [f"evil.example.com/x@{DIGEST}", f"r.example.com/y:1@{DIGEST}"],
     ["r.example.com/y:1", f"r.example.com/y@{OTHER_DIGEST}"]),
    (("r.example.com/",), ["r.example.com/a:1", "r.example.com/a/b/c@" + DIGEST, "R.EXAMPLE.COM/a:1"],
     ["r.example.com.evil.io/a:1", "s.example.com/a:1", "busybox:1"]),
    (("r.example.com/team/",), ["r.example.com/team/a:1", "r.example.com/team/a/b:1"],
     ["r.example.com/team:1", "r.example.com/teams/a:1", "r.example.com/other/a:1"]),
    (("r.example.com/tools/sync",), ["r.example.com/tools/sync:1", f"r.example.com/tools/sync@{DIGEST}"],
     ["r.example.com/tools/sync-x:1", "r.example.com/tools/sync/x:1", "r.example.com/tools:1"]),
    (("r.example.com/tools/sync:1.2",), ["r.example.com/tools/sync:1.2"],
     ["r.example.com/tools/sync:1.3", f"r.example.com/tools/sync:1.2@{DIGEST}"]),
    ((f"r.example.com/tools/sync@{DIGEST}",), [f"r.example.com/tools/sync@{DIGEST}",
                                               f"r.example.com/tools/sync:x@{DIGEST}"],
     ["r.example.com/tools/sync:1", f"r.example.com/other@{DIGEST}"]),
    (("busybox", "docker.io/acme/"), ["docker.io/library/busybox:1", "index.docker.io/library/busybox",
                                      "acme/tool:1"], ["busybox2:1", "acme:1"]),
])
def test_image_allowlist_forms(entries: tuple[str, ...], allowed: list[str], refused_images: list[str]) -> None:
    config = settings(allowed_worker_images=entries)
    for image in allowed:
        assert refused(WorkerSpec(image=image), config) == [], image
    for image in refused_images:
        assert refused(WorkerSpec(image=image), config) == [("spec.worker.image", image)], image


def test_a_set_image_allowlist_replaces_the_default_but_the_worker_image_itself_stays_allowed() -> None:
    config = settings(allowed_worker_images=("r.example.com/",))
    assert refused(WorkerSpec(image="registry.example.com/imagesync:9"), config) != []
    assert refused(WorkerSpec(image=OWN), config) == []  # the same as leaving spec.worker.image out


@pytest.mark.parametrize("entry", ["r.example.com", "/", "Bad/", "r.example.com/UPPER", "sha256:abc",
                                   "r.example.com/a:b:c", "r.example.com:99999/", "acme/",
                                   "docker.io/Acme/", "r.example.com//"])
def test_malformed_image_entries_are_refused_at_startup(entry: str) -> None:
    with pytest.raises(SettingsError, match="allowed worker image"):
        image_rule(entry)
    with pytest.raises(SettingsError):
        OperatorSettings.from_env({"IMAGESYNC_ALLOWED_WORKER_IMAGES": f"r.example.com/,{entry}"})


def test_a_bare_host_is_not_taken_for_a_docker_hub_repository() -> None:
    """``r.example.com`` would parse as docker.io/library/r.example.com: refused, with the hint that a
    registry prefix ends with ``/``, so nobody allows the wrong thing by leaving the slash out."""
    with pytest.raises(SettingsError, match="ends with /"):
        image_rule("r.example.com")
    with pytest.raises(SettingsError, match="ends with /"):
        image_rule("localhost:5000")
    assert image_rule("r.example.com/").kind == "prefix" and image_rule("busybox").kind == "repository"


def test_service_account_toleration_and_node_selector_allowlists() -> None:
    config = settings(allowed_worker_service_accounts=("mirror-a", "mirror-b"),
                      allowed_toleration_keys=("dedicated",), allowed_node_selector_keys=("pool",))
    worker = WorkerSpec(service_account="mirror-b", node_selector={"pool": "io"},
                        tolerations=({"key": "dedicated", "operator": "Equal", "value": "io", "effect": "NoSchedule"},))
    assert refused(worker, config) == []
    bad = WorkerSpec(service_account="default", node_selector={"pool": "io", "kubernetes.io/hostname": "cp-1"},
                     tolerations=({"key": "dedicated", "operator": "Exists"}, {"operator": "Exists"},
                                  {"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"}))
    assert refused(bad, config) == [
        ("spec.worker.serviceAccountName", "default"),
        ("spec.worker.tolerations[1]", "operator=Exists"),
        ("spec.worker.tolerations[2].key", "node-role.kubernetes.io/control-plane"),
        ("spec.worker.nodeSelector", "kubernetes.io/hostname"),
    ]
    anything = settings(allowed_worker_service_accounts=("*",), allowed_toleration_keys=("*",),
                        allowed_node_selector_keys=("*",), allowed_worker_images=("*",))
    assert refused(WorkerSpec(image="x.example.com/y:1", service_account="default", node_selector={"a": "b"},
                              tolerations=({"operator": "Exists"},)), anything) == []


def test_message_names_field_value_and_setting_and_is_bounded() -> None:
    long = "r.example.com/" + "a" * 5000 + ":1"
    refusals = worker_refusals(WorkerSpec(image=long, service_account="default"), settings())
    message = refusal_message(refusals)
    assert message.startswith("spec.worker.image: 'r.example.com/aaa")
    assert "IMAGESYNC_ALLOWED_WORKER_IMAGES" in message and "IMAGESYNC_ALLOWED_WORKER_SERVICE_ACCOUNTS" in message
    assert "spec.worker.serviceAccountName: 'default'" in message
    assert len(message) < 600
    many = worker_refusals(WorkerSpec(node_selector={f"k{i}": "v" for i in range(9)}), settings())
    assert refusal_message(many).endswith("(and 4 more)")


# -- settings: env and flags ---------------------------------------------------------------------


def test_env_lists_and_flags() -> None:
    env = {"IMAGESYNC_ALLOWED_WORKER_IMAGES": " r.example.com/ , ,ghcr.io/acme/imagesync",
           "IMAGESYNC_ALLOWED_WORKER_SERVICE_ACCOUNTS": "a,b", "IMAGESYNC_ALLOWED_TOLERATION_KEYS": "*",
           "IMAGESYNC_ALLOWED_NODE_SELECTOR_KEYS": "pool"}
    config = OperatorSettings.from_env(env)
    assert config.allowed_worker_images == ("r.example.com/", "ghcr.io/acme/imagesync")
    assert config.allowed_worker_service_accounts == ("a", "b")
    assert config.allowed_toleration_keys == ("*",) and config.allowed_node_selector_keys == ("pool",)
    assert OperatorSettings.from_env({}).allowed_worker_images == ()


def test_flags_override_env_and_settings_from_keeps_every_other_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGESYNC_ALLOWED_WORKER_IMAGES", "env.example.com/")
    monkeypatch.setenv("IMAGESYNC_ALLOWED_WORKER_SERVICE_ACCOUNTS", "from-env")
    monkeypatch.setenv("IMAGESYNC_WORKER_SERVICE_ACCOUNT", "custom-worker")
    monkeypatch.setenv("IMAGESYNC_WORKER_DEADLINE_SECONDS", "600")
    args = build_parser().parse_args(["--allowed-worker-images", "flag.example.com/,sha256:" + "0" * 64,
                                      "--allowed-toleration-keys", "dedicated", "--worker-image", "w.example.com/i:1"])
    config = settings_from(args)
    assert config.allowed_worker_images == ("flag.example.com/", "sha256:" + "0" * 64)
    assert config.allowed_worker_service_accounts == ("from-env",)
    assert config.allowed_toleration_keys == ("dedicated",) and config.allowed_node_selector_keys == ()
    assert config.worker_service_account == "custom-worker" and config.worker_deadline_seconds == 600
    assert config.worker_image == "w.example.com/i:1"
    with pytest.raises(SettingsError):
        settings_from(build_parser().parse_args(["--allowed-worker-images", "no-slash-host.example.com"]))


def test_every_allowlist_has_a_flag() -> None:
    flags = {option for action in build_parser()._actions for option in action.option_strings}
    for name in ALLOWLIST_ENV:
        assert "--" + name.replace("_", "-") in flags
    assert isinstance(build_parser().parse_args([]), argparse.Namespace)


# -- the handler path: Valid=False/WorkerNotAllowed, no Job ---------------------------------------


def test_admitted_spec_blocks_on_valid_with_worker_not_allowed() -> None:
    ctx = Context(kube=None, settings=settings())  # type: ignore[arg-type]  # no I/O before the refusal
    isj = {"metadata": {"name": "j", "namespace": "ns"},
           "spec": {"images": {"a.example.com/x:1": "b.example.com/x"},
                    "worker": {"image": "evil.example.com/miner:1", "serviceAccountName": "admin"}}}
    with pytest.raises(RunBlocked) as caught:
        admitted_spec(ctx, isj)
    assert (caught.value.condition, caught.value.reason) == ("Valid", "WorkerNotAllowed")
    assert "spec.worker.image: 'evil.example.com/miner:1'" in caught.value.message
    assert "spec.worker.serviceAccountName: 'admin'" in caught.value.message
    isj["spec"]["worker"] = {"image": "registry.example.com/imagesync:0.1.9"}
    assert admitted_spec(ctx, isj).worker.image == "registry.example.com/imagesync:0.1.9"
