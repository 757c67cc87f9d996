"""Basic auth, TLS with a private CA, and token auth, each against a real registry."""

from __future__ import annotations

from pathlib import Path

from cli_helpers import auth_entry, auth_for, run_sync

from testbed import seed
from testbed.registry import RegistryProcess


def test_basic_auth_source_and_target(basic_registry: RegistryProcess, registry: RegistryProcess,
                                      tmp_path: Path) -> None:
    image = seed.push_image(basic_registry, "private/app", "1", seed="basic")
    code, result = run_sync(tmp_path, {f"{basic_registry.host}/private/app:1": f"{registry.host}/public/app"},
                            auth_for(basic_registry, registry), name="out")
    assert code == 0, result
    assert seed.get_manifest(registry, "public/app", "1")[2] == image.digest
    code, result = run_sync(tmp_path, {f"{registry.host}/public/app:1": f"{basic_registry.host}/back/app"},
                            auth_for(basic_registry, registry), name="back")
    assert code == 0, result
    assert seed.get_manifest(basic_registry, "back/app", "1")[2] == image.digest


def test_wrong_basic_password_fails_clearly_without_a_retry_storm(basic_registry: RegistryProcess,
                                                                  registry: RegistryProcess,
                                                                  tmp_path: Path) -> None:
    for i in range(4):
        seed.push_image(basic_registry, f"p/app{i}", "1", seed=i)
    wrong = auth_entry(basic_registry) | {"password": "not-the-password"}
    mark = basic_registry.log_mark()
    rules = {f"{basic_registry.host}/p/app{i}:1": f"{registry.host}/p/app{i}" for i in range(4)}
    code, result = run_sync(tmp_path, rules, {basic_registry.host: wrong, registry.host: auth_entry(registry)},
                            "--retries", "3")
    assert code == 1
    assert result["imagesFailed"] == 4
    for failure in result["failedImages"]:
        assert "401" in failure["reason"] and "not-the-password" not in failure["reason"]
    # Each image tries once (401 is permanent): no retry rounds, no backoff loops.
    assert len(basic_registry.request_log(mark)) <= 4 * 3


def test_tls_registry_trusted_through_ca_file(tls_registry: RegistryProcess, registry: RegistryProcess,
                                              tmp_path: Path) -> None:
    image = seed.push_index(tls_registry, "secure/app", "1", seed="tls")
    code, result = run_sync(tmp_path, {f"{tls_registry.host}/secure/app:1": f"{registry.host}/copied/app"},
                            auth_for(tls_registry, registry))
    assert code == 0, result
    assert seed.get_manifest(registry, "copied/app", "1")[2] == image.digest


def test_tls_registry_with_global_ca_flag(tls_registry: RegistryProcess, registry: RegistryProcess,
                                          tmp_path: Path) -> None:
    image = seed.push_image(tls_registry, "secure/flag", "1", layers=(70_000,), seed="flag")
    assert tls_registry.ca_file is not None
    auth = {registry.host: auth_entry(registry)}
    if tls_registry.username:
        auth[tls_registry.host] = {"username": tls_registry.username, "password": tls_registry.password}
    code, result = run_sync(tmp_path, {f"{tls_registry.host}/secure/flag:1": f"{registry.host}/flag/app"},
                            auth, "--ca-file", str(tls_registry.ca_file), name="from-tls")
    assert code == 0, result
    assert [s["digest"] for s in result["syncedImages"]] == [image.digest]
    assert seed.get_manifest(registry, "flag/app", "1")[2] == image.digest
    for blob in image.blobs:
        assert seed.blob_sha256(registry, "flag/app", blob.digest) == blob.digest
    # And into the TLS registry, trusted through the same flag.
    mark = tls_registry.log_mark()
    code, result = run_sync(tmp_path, {f"{registry.host}/flag/app:1": f"{tls_registry.host}/back/app"},
                            auth, "--ca-file", str(tls_registry.ca_file), name="to-tls")
    assert code == 0, result
    assert seed.get_manifest(tls_registry, "back/app", "1")[2] == image.digest
    assert ("PUT", "/v2/back/app/manifests/1") in [(r.method, r.path) for r in tls_registry.request_log(mark)]


def test_tls_registry_without_the_ca_is_refused(tls_registry: RegistryProcess, registry: RegistryProcess,
                                                tmp_path: Path) -> None:
    seed.push_image(tls_registry, "secure/untrusted", "1", seed="u")
    auth = {registry.host: auth_entry(registry)}
    code, result = run_sync(tmp_path, {f"{tls_registry.host}/secure/untrusted:1": f"{registry.host}/u/app"},
                            auth, "--retries", "0")
    assert code == 1
    (failure,) = result["failedImages"]
    assert "certificate" in failure["reason"].lower() or "ssl" in failure["reason"].lower()


def test_token_auth_both_directions(token_registry: RegistryProcess, registry: RegistryProcess,
                                    tmp_path: Path) -> None:
    index = seed.push_index(token_registry, "tok/app", "1", seed="tok")
    code, result = run_sync(tmp_path, {
        f"{token_registry.host}/tok/app:1": f"{registry.host}/from-token/app",
        f"{token_registry.host}/tok/app": f"{token_registry.host}/tok/copy",  # same registry: mounts
    }, auth_for(token_registry, registry))
    assert code == 0, result
    assert seed.get_manifest(registry, "from-token/app", "1")[2] == index.digest
    assert seed.get_manifest(token_registry, "tok/copy", "1")[2] == index.digest
    assert result["blobsMounted"] >= 1


def test_token_auth_wrong_password(token_registry: RegistryProcess, registry: RegistryProcess,
                                   tmp_path: Path) -> None:
    for i in range(3):
        seed.push_image(token_registry, f"tok/w{i}", "1", seed=i)
    assert token_registry.token_server is not None
    before = token_registry.token_server.request_count
    wrong = auth_entry(token_registry) | {"password": "wrong"}
    code, result = run_sync(tmp_path, {f"{token_registry.host}/tok/w{i}:1": f"{registry.host}/w/{i}"
                                       for i in range(3)},
                            {token_registry.host: wrong, registry.host: auth_entry(registry)}, "--retries", "3")
    assert code == 1 and result["imagesFailed"] == 3
    assert all("rejected" in f["reason"] for f in result["failedImages"])
    # The refused login is remembered: one token request, not one per image and retry.
    assert token_registry.token_server.request_count - before == 1


def test_one_token_per_target_repository(registry: RegistryProcess, token_registry: RegistryProcess,
                                         tmp_path: Path) -> None:
    """A target repository gets one token, with pull and push, before its first request: not a pull token
    for the manifest HEAD and then a push token for the upload (each a round trip on a distant link)."""
    for i in range(3):
        for tag in ("1", "2"):
            seed.push_image(registry, f"src/app{i}", tag, seed=f"{i}-{tag}")
    assert token_registry.token_server is not None
    token_registry.token_server.clear_requests()
    code, result = run_sync(tmp_path, {f"{registry.host}/src/app{i}": f"{token_registry.host}/dst/app{i}"
                                       for i in range(3)}, auth_for(token_registry, registry))
    assert code == 0 and result["imagesSynced"] == 6, result
    scope_sets = sorted(request.scopes for request in token_registry.token_server.requests)
    assert scope_sets == [(f"repository:dst/app{i}:pull,push",) for i in range(3)]


def test_tokens_for_different_repositories_are_fetched_at_once_after_the_first_login(
        token_registry: RegistryProcess, registry: RegistryProcess, tmp_path: Path) -> None:
    """Until a login succeeds, one token fetch at a time (a refused login is seen by every waiting request, not
    tried per repository); after it, the other repositories' fetches overlap. They did not: every request that
    had queued behind the first login then fetched alone, one after another (50 repositories through a 40 ms
    link: 2.2 s of the run spent on 50 token fetches in a row, the reason --proc 16 was no faster)."""
    repositories = 6
    for i in range(repositories):
        seed.push_image(token_registry, f"tok/many{i}", "1", seed=f"many{i}")
    server = token_registry.token_server
    assert server is not None
    server.answer_delay_s = 0.2  # a slow token server: fetches in a row would never overlap
    server.max_in_flight = 0
    try:
        code, result = run_sync(tmp_path, {f"{token_registry.host}/tok/many{i}": f"{registry.host}/many/{i}"
                                           for i in range(repositories)}, auth_for(token_registry, registry))
    finally:
        server.answer_delay_s = 0.0
    assert code == 0 and result["imagesSynced"] == repositories, result
    assert server.max_in_flight >= repositories - 1, server.max_in_flight
