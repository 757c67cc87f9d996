"""Fixtures shared by every test: real registries (see ``tests/testbed``) and an isolated skopeo.

Registries are function-scoped: one starts in ~40 ms, so every test gets fresh, empty storage and an
access log holding only its own requests.

A missing system part (``docker-registry``, ``skopeo``) skips the tests that need it on a developer
machine and fails them in CI (``CI=true``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from testbed.registry import MODE_OPTIONS, MakeRegistry, RegistryMode, RegistryProcess, registry_binary
from testbed.skopeo import Skopeo, skopeo_binary
from testbed.system import require_system_part


@pytest.fixture
def make_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MakeRegistry]:
    """Factory: ``make_registry("token", anonymous="pull")`` starts one more registry, stopped after the test.

    ``mode`` (plain, basic, tls, token, basic+tls, token+tls) picks auth and TLS; ``options`` go to
    :class:`RegistryProcess` (``schema1=True``, ``extra_users=``, ``token_acl=``, ``anonymous=``, ``ca=``,
    ``storage_dir=``, ``extra_config=``...).
    """
    require_system_part(registry_binary(), "docker-registry", "docker-registry")
    started: list[RegistryProcess] = []

    def make(mode: RegistryMode = "plain", **options: Any) -> RegistryProcess:
        if mode not in MODE_OPTIONS:
            raise ValueError(f"unknown registry mode {mode!r}; one of {sorted(MODE_OPTIONS)}")
        workdir = tmp_path_factory.mktemp(f"registry-{mode.replace('+', '-')}")
        registry = RegistryProcess(workdir, **{**MODE_OPTIONS[mode], **options})
        started.append(registry)
        return registry.start()

    yield make
    for registry in reversed(started):
        registry.close()


@pytest.fixture
def registry(make_registry: MakeRegistry) -> RegistryProcess:
    """A plain-HTTP registry without auth."""
    return make_registry("plain")


@pytest.fixture
def registry2(make_registry: MakeRegistry) -> RegistryProcess:
    """A second plain-HTTP registry (the target when ``registry`` is the source)."""
    return make_registry("plain")


@pytest.fixture
def basic_registry(make_registry: MakeRegistry) -> RegistryProcess:
    """htpasswd Basic auth; the account is ``.username`` / ``.password`` (``.credentials``)."""
    return make_registry("basic")


@pytest.fixture
def tls_registry(make_registry: MakeRegistry) -> RegistryProcess:
    """HTTPS with a certificate from a throw-away CA (``.ca_file``); no auth."""
    return make_registry("tls")


@pytest.fixture
def token_registry(make_registry: MakeRegistry) -> RegistryProcess:
    """Bearer-token auth through ``.token_server``; account ``.username`` / ``.password``, anonymous gets
    a token granting nothing."""
    return make_registry("token")


@pytest.fixture
def skopeo(tmp_path_factory: pytest.TempPathFactory) -> Skopeo:
    """An isolated skopeo (own policy, auth file, blob-info cache); ``skopeo.login(registry)`` for auth."""
    require_system_part(skopeo_binary(), "skopeo", "skopeo")
    return Skopeo(tmp_path_factory.mktemp("skopeo"))
