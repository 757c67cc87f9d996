"""``imagesync sync`` against real docker-registry processes; images seeded and checked with raw API calls."""

from __future__ import annotations

from pathlib import Path

from cli_helpers import auth_for, mutating_requests, run_sync

from testbed import seed
from testbed.registry import RegistryProcess


def assert_same_image(src: RegistryProcess, src_repo: str, src_ref: str,
                      dst: RegistryProcess, dst_repo: str, dst_ref: str) -> str:
    """Target manifest byte-identical to the source, and every blob it references intact."""
    data, media_type, digest = seed.get_manifest(src, src_repo, src_ref)
    copied, copied_type, copied_digest = seed.get_manifest(dst, dst_repo, dst_ref)
    assert copied == data
    assert copied_digest == digest
    assert copied_type == media_type
    return digest


def assert_blobs_intact(dst: RegistryProcess, repo: str, image: seed.SeededImage) -> None:
    for blob in image.blobs:
        assert seed.blob_sha256(dst, repo, blob.digest) == blob.digest


def test_all_tags_of_a_repository(registry: RegistryProcess, registry2: RegistryProcess, tmp_path: Path) -> None:
    images = [seed.push_image(registry, "lib/app", f"v{i}", layers=(2048, 4096), seed=i) for i in range(3)]
    code, result = run_sync(tmp_path, {f"{registry.host}/lib/app": f"{registry2.host}/mirror/app"},
                            auth_for(registry, registry2))
    assert code == 0, result
    assert result["imagesSynced"] == 3
    assert sorted(seed.list_tags(registry2, "mirror/app")) == ["v0", "v1", "v2"]
    for image in images:
        assert_same_image(registry, "lib/app", image.tag or "", registry2, "mirror/app", image.tag or "")
        assert_blobs_intact(registry2, "mirror/app", image)


def test_tag_list_regex_digest_and_renamed_tags(registry: RegistryProcess, registry2: RegistryProcess,
                                                tmp_path: Path) -> None:
    for tag in ("1.0", "1.1", "2.0", "latest"):
        seed.push_image(registry, "lib/tool", tag, seed=tag)
    pinned = seed.push_image(registry, "lib/pinned", "p", seed="pinned")
    src, dst = registry.host, registry2.host
    rules = {
        f"{src}/lib/tool:1.0,2.0": f"{dst}/list/tool",
        f"{src}/lib/tool:/^1\\./": f"{dst}/regex/tool",
        f"{src}/lib/pinned@{pinned.digest}": f"{dst}/digest/pinned",
        f"{src}/lib/tool:1.1,latest": f"{dst}/renamed/tool:stable,edge",
    }
    code, result = run_sync(tmp_path, rules, auth_for(registry, registry2))
    assert code == 0, result
    assert sorted(seed.list_tags(registry2, "list/tool")) == ["1.0", "2.0"]
    assert sorted(seed.list_tags(registry2, "regex/tool")) == ["1.0", "1.1"]
    assert sorted(seed.list_tags(registry2, "renamed/tool")) == ["edge", "stable"]
    assert_same_image(registry, "lib/tool", "1.1", registry2, "renamed/tool", "stable")
    assert_same_image(registry, "lib/tool", "latest", registry2, "renamed/tool", "edge")
    assert seed.manifest_exists(registry2, "digest/pinned", pinned.digest)
    assert seed.list_tags(registry2, "digest/pinned") == []


def test_one_source_to_several_targets_and_default_target(registry: RegistryProcess, registry2: RegistryProcess,
                                                          tmp_path: Path) -> None:
    seed.push_image(registry, "team/web", "1", seed="web")
    seed.push_image(registry, "team/api", "1", seed="api")
    rules = {
        f"{registry.host}/team/web:1": [f"{registry2.host}/a/web", f"{registry2.host}/b/web"],
        f"{registry.host}/team/api:1": "",
    }
    code, result = run_sync(tmp_path, rules, auth_for(registry, registry2),
                            "--registry", registry2.host, "--namespace", "defaults")
    assert code == 0, result
    for repo in ("a/web", "b/web"):
        assert_same_image(registry, "team/web", "1", registry2, repo, "1")
    assert_same_image(registry, "team/api", "1", registry2, "defaults/api", "1")


def test_every_manifest_type_keeps_its_digest(registry: RegistryProcess, registry2: RegistryProcess,
                                              tmp_path: Path) -> None:
    docker = seed.push_image(registry, "types/docker", "t", seed="d")
    oci = seed.push_image(registry, "types/oci", "t", seed="o", oci=True)
    docker_list = seed.push_index(registry, "types/list", "t", oci=False, seed="l")
    oci_index = seed.push_index(registry, "types/index", "t", oci=True, seed="i")
    rules = {f"{registry.host}/types/{name}:t": f"{registry2.host}/copy/{name}"
             for name in ("docker", "oci", "list", "index")}
    code, result = run_sync(tmp_path, rules, auth_for(registry, registry2))
    assert code == 0, result
    for name, image in (("docker", docker), ("oci", oci), ("list", docker_list), ("index", oci_index)):
        digest = assert_same_image(registry, f"types/{name}", "t", registry2, f"copy/{name}", "t")
        assert digest == image.digest
        for child in image.children:  # two platforms: each child by digest, blobs intact
            assert_same_image(registry, f"types/{name}", child.digest, registry2, f"copy/{name}", child.digest)
        assert_blobs_intact(registry2, f"copy/{name}", image)


def test_platform_filter_rewrites_the_index_and_says_so(registry: RegistryProcess, registry2: RegistryProcess,
                                                        tmp_path: Path) -> None:
    index = seed.push_index(registry, "multi/app", "v1", seed="multi")
    arm = next(c for c in index.children if c.platform == ("linux", "arm64"))
    amd = next(c for c in index.children if c.platform == ("linux", "amd64"))
    code, result = run_sync(tmp_path, {f"{registry.host}/multi/app:v1": f"{registry2.host}/arm/app"},
                            auth_for(registry, registry2), "--arch", "arm64")
    assert code == 0, result
    data, _, digest = seed.get_manifest(registry2, "arm/app", "v1")
    assert digest != index.digest
    assert arm.digest.encode() in data and amd.digest.encode() not in data
    assert seed.manifest_exists(registry2, "arm/app", arm.digest)
    assert not seed.manifest_exists(registry2, "arm/app", amd.digest)
    (synced,) = result["syncedImages"]
    assert "digest changed" in synced["note"]
    # Re-running with the same filter finds the rewritten index up to date.
    code, again = run_sync(tmp_path, {f"{registry.host}/multi/app:v1": f"{registry2.host}/arm/app"},
                           auth_for(registry, registry2), "--arch", "arm64", name="again")
    assert code == 0 and again["imagesSkipped"] == 1 and again["blobsCopied"] == 0


def test_second_run_copies_nothing(registry: RegistryProcess, registry2: RegistryProcess, tmp_path: Path) -> None:
    seed.push_image(registry, "inc/app", "a", layers=(4096, 4096), seed="a")
    seed.push_index(registry, "inc/app", "b", seed="b")
    rules = {f"{registry.host}/inc/app": f"{registry2.host}/inc/app"}
    code, first = run_sync(tmp_path, rules, auth_for(registry, registry2), name="first")
    assert code == 0 and first["imagesSynced"] == 2 and first["blobsCopied"] > 0
    mark = registry2.log_mark()
    code, second = run_sync(tmp_path, rules, auth_for(registry, registry2), name="second")
    assert code == 0, second
    assert (second["imagesSkipped"], second["blobsCopied"], second["blobsMounted"], second["manifestsPushed"]) \
        == (2, 0, 0, 0)
    assert mutating_requests(registry2, mark) == []
    # Only manifest HEADs (plus the /v2/ probe) reach the target on a no-op run.
    methods = {(r.method, r.path.split("/")[-2]) for r in registry2.request_log(mark) if r.path != "/v2/"}
    assert methods == {("HEAD", "manifests")}


def test_force_copies_again(registry: RegistryProcess, registry2: RegistryProcess, tmp_path: Path) -> None:
    seed.push_image(registry, "f/app", "a", seed="f")
    rules = {f"{registry.host}/f/app:a": f"{registry2.host}/f/app"}
    assert run_sync(tmp_path, rules, auth_for(registry, registry2), name="one")[0] == 0
    code, forced = run_sync(tmp_path, rules, auth_for(registry, registry2), "--force", name="two")
    assert code == 0 and forced["imagesSynced"] == 1 and forced["manifestsPushed"] == 1


def test_shared_layer_is_mounted_not_uploaded(registry: RegistryProcess, registry2: RegistryProcess,
                                             tmp_path: Path) -> None:
    base = seed.push_random_blob(registry, "shared/one", 64 * 1024, seed="base")
    seed.push_image(registry, "shared/one", "v", layers=(base, 1024), seed="one")
    seed.push_image(registry, "shared/two", "v", layers=(base, 2048), seed="two")
    rules = {f"{registry.host}/shared/one:v": f"{registry2.host}/m/one",
             f"{registry.host}/shared/two:v": f"{registry2.host}/m/two"}
    mark = registry2.log_mark()
    code, result = run_sync(tmp_path, rules, auth_for(registry, registry2), "--proc", "1")
    assert code == 0, result
    assert result["blobsMounted"] == 1
    mounts = [r for r in registry2.request_log(mark) if r.method == "POST" and r.status == 201]
    assert len(mounts) == 1
    uploads_of_base = [r for r in registry2.request_log(mark) if r.method == "PUT" and base.digest in r.query]
    assert uploads_of_base == []
    assert seed.blob_sha256(registry2, "m/two", base.digest) == base.digest


def test_same_registry_copy_mounts_from_the_source(registry: RegistryProcess, tmp_path: Path) -> None:
    image = seed.push_image(registry, "orig/app", "v", layers=(8192, 8192), seed="same")
    code, result = run_sync(tmp_path, {f"{registry.host}/orig/app:v": f"{registry.host}/copy/app"},
                            auth_for(registry))
    assert code == 0, result
    assert result["blobsMounted"] == len(image.blobs) and result["blobsCopied"] == 0
    assert_same_image(registry, "orig/app", "v", registry, "copy/app", "v")


def test_malformed_rule_is_reported_and_others_run(registry: RegistryProcess, registry2: RegistryProcess,
                                                   tmp_path: Path) -> None:
    seed.push_image(registry, "ok/app", "1", seed="ok")
    rules = {
        f"{registry.host}/ok/app:1": f"{registry2.host}/ok/app",
        f"{registry.host}/bad/app:1,2": f"{registry2.host}/bad/app:x",  # 2 tags -> 1 tag
    }
    code, result = run_sync(tmp_path, rules, auth_for(registry, registry2))
    assert code == 1
    assert result["imagesSynced"] == 1 and result["imagesFailed"] == 1
    (failure,) = result["failedImages"]
    assert "bad/app:1,2" in failure["source"] + failure["reason"]
    assert seed.manifest_exists(registry2, "ok/app", "1")


def test_missing_source_tag_fails_fast_with_the_registry_message(registry: RegistryProcess,
                                                                 registry2: RegistryProcess,
                                                                 tmp_path: Path) -> None:
    seed.push_image(registry, "m/app", "present", seed="m")
    mark = registry.log_mark()
    code, result = run_sync(tmp_path, {f"{registry.host}/m/app:present,absent": f"{registry2.host}/m/app"},
                            auth_for(registry, registry2), "--retries", "3")
    assert code == 1
    (failure,) = result["failedImages"]
    assert failure["source"].endswith("m/app:absent")
    assert "manifest unknown" in failure["reason"].lower()
    # Permanent: tried once, not once per retry round.
    gets = [r for r in registry.request_log(mark) if r.path == "/v2/m/app/manifests/absent"]
    assert len(gets) <= 2  # one HEAD, one GET


def test_schema1_is_unsupported_per_image(make_registry, registry2: RegistryProcess,  # type: ignore[no-untyped-def]
                                          tmp_path: Path) -> None:
    old = make_registry(schema1=True)
    seed.push_schema1(old, "legacy/app", "v1")
    seed.push_image(old, "legacy/app", "v2", seed="v2")
    code, result = run_sync(tmp_path, {f"{old.host}/legacy/app": f"{registry2.host}/legacy/app"},
                            auth_for(old, registry2))
    assert code == 1
    assert result["imagesSynced"] == 1
    (failure,) = result["failedImages"]
    assert "schema 1" in failure["reason"] and failure["source"].endswith(":v1")


def test_json_output_and_summary(registry: RegistryProcess, registry2: RegistryProcess, tmp_path: Path,
                                 capsys) -> None:  # type: ignore[no-untyped-def]
    seed.push_image(registry, "out/app", "1", seed="out")
    code, result = run_sync(tmp_path, {f"{registry.host}/out/app:1": f"{registry2.host}/out/app"},
                            auth_for(registry, registry2))
    assert code == 0
    printed = capsys.readouterr().out
    assert "Images: 1 synced, 0 skipped" in printed and "MB/s" in printed
    assert result["syncedImages"][0]["target"] == f"{registry2.host}/out/app:1"
    assert result["peakRssBytes"] > 0


def test_small_blobs_in_one_put_big_ones_in_patch_then_put(registry: RegistryProcess, registry2: RegistryProcess,
                                                           tmp_path: Path) -> None:
    image = seed.push_image(registry, "sizes/app", "1", layers=(9 * 1024 * 1024, 1000), seed="sizes")
    mark = registry2.log_mark()
    code, result = run_sync(tmp_path, {f"{registry.host}/sizes/app:1": f"{registry2.host}/sizes/app"},
                            auth_for(registry, registry2))
    assert code == 0, result
    assert_blobs_intact(registry2, "sizes/app", image)
    log = registry2.request_log(mark)
    assert len([r for r in log if r.method == "PATCH"]) == 1  # only the 9 MiB layer
    assert len([r for r in log if r.method == "PUT" and "/blobs/uploads/" in r.path]) == 3  # config + 2 layers
