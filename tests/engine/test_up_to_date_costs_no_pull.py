"""An up-to-date image costs no source manifest GET: Docker Hub counts each manifest GET as a pull, a HEAD not.

Counted from the source registry's access log on a second run over an unchanged source. The documented
exception (docs/troubleshooting.md): with a platform filter, a multi-platform image's index is read (one GET)
on every run, because the filtered digest can only be computed from it; its children are not.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_helpers import auth_for, run_sync

from testbed import seed
from testbed.registry import LoggedRequest, RegistryProcess

pytestmark = pytest.mark.usefixtures("restore_logging")  # main() runs in-process here


def manifest_requests(log: list[LoggedRequest]) -> list[tuple[str, str]]:
    return [(r.method, r.path) for r in log if "/manifests/" in r.path]


def test_a_second_run_reads_no_source_manifest(registry: RegistryProcess, registry2: RegistryProcess,
                                               tmp_path: Path) -> None:
    seed.push_image(registry, "hub/app", "1", seed="single")
    seed.push_index(registry, "hub/multi", "1", seed="multi")
    images = {f"{registry.host}/hub/app:1": f"{registry2.host}/mirror/app",
              f"{registry.host}/hub/multi:1": f"{registry2.host}/mirror/multi"}
    auth = auth_for(registry, registry2)
    code, first = run_sync(tmp_path, images, auth, name="first")
    assert code == 0 and first["imagesSynced"] == 2, first
    # The first run did read the source (the log sees GETs when there are some).
    assert ("GET", "/v2/hub/multi/manifests/1") in manifest_requests(registry.request_log())

    mark = registry.log_mark()
    code, second = run_sync(tmp_path, images, auth, name="second")
    assert code == 0 and second["imagesSkipped"] == 2, second
    source = registry.request_log(mark)
    assert sorted(manifest_requests(source)) == [("HEAD", "/v2/hub/app/manifests/1"),
                                                 ("HEAD", "/v2/hub/multi/manifests/1")]
    assert [r for r in source if r.method == "GET" and "/blobs/" in r.path] == []


def test_with_a_platform_filter_only_the_index_is_read_again(registry: RegistryProcess,
                                                              registry2: RegistryProcess, tmp_path: Path) -> None:
    seed.push_index(registry, "hub/multi", "1", seed="multi")
    images = {f"{registry.host}/hub/multi:1": f"{registry2.host}/mirror/multi"}
    auth = auth_for(registry, registry2)
    code, first = run_sync(tmp_path, images, auth, "--arch", "arm64", name="first")
    assert code == 0 and first["imagesSynced"] == 1, first

    mark = registry.log_mark()
    code, second = run_sync(tmp_path, images, auth, "--arch", "arm64", name="second")
    assert code == 0 and second["imagesSkipped"] == 1, second
    assert sorted(manifest_requests(registry.request_log(mark))) == [("GET", "/v2/hub/multi/manifests/1"),
                                                                     ("HEAD", "/v2/hub/multi/manifests/1")]
