"""skopeo, isolated: the interoperability client and the peer we measure against.

Each :class:`Skopeo` has its own policy file, auth file, HOME/XDG directories and blob-info cache, so
tests never see each other's (or the machine's) credentials or remembered blob locations.

The blob-info cache needs care: as root, containers/image ignores HOME and XDG and always uses
``/var/lib/containers/cache``. There we run skopeo in a private mount namespace with our own directory
bound over that path (``unshare --mount``, which needs CAP_SYS_ADMIN); if that is not possible the
cache is shared and :attr:`Skopeo.cache_isolated` says so.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from testbed.registry import RegistryProcess

SKOPEO_BINARY = "skopeo"
ROOT_CACHE_DIR = Path("/var/lib/containers/cache")
INSECURE_POLICY = {"default": [{"type": "insecureAcceptAnything"}]}


class SkopeoError(RuntimeError):
    def __init__(self, args: Sequence[str], returncode: int, stderr: str) -> None:
        super().__init__(f"skopeo {' '.join(args)} exited {returncode}: {stderr.strip()[-2000:]}")
        self.returncode = returncode
        self.stderr = stderr


def skopeo_binary() -> str | None:
    return shutil.which(SKOPEO_BINARY)


def _bind_prefix(cache_dir: Path) -> list[str]:
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            f'mount --bind "$0" {ROOT_CACHE_DIR} && exec "$@"', str(cache_dir)]


@functools.cache
def can_isolate_root_cache() -> bool:
    """Whether a private mount namespace with the cache bind works here (root, CAP_SYS_ADMIN, unshare)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    try:
        ROOT_CACHE_DIR.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as probe_dir:
            result = subprocess.run([*_bind_prefix(Path(probe_dir)), "true"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def _docker_ref(ref: str) -> str:
    return ref if ref.startswith("docker://") else f"docker://{ref}"


class Skopeo:
    """Runs skopeo with TLS verification off (the test registries use self-signed or no TLS)."""

    def __init__(self, workdir: Path, *, binary: str | None = None) -> None:
        self.workdir = workdir
        self.binary = binary or skopeo_binary() or SKOPEO_BINARY
        self.home = workdir / "home"
        self.runtime_dir = workdir / "run"
        self.cache_dir = workdir / "blob-info-cache"
        for directory in (self.home, self.runtime_dir / "containers", self.cache_dir, workdir / "tmp"):
            directory.mkdir(parents=True, exist_ok=True)
        self.policy_file = workdir / "policy.json"
        self.policy_file.write_text(json.dumps(INSECURE_POLICY))
        # The default auth file location of containers/image when XDG_RUNTIME_DIR is set.
        self.auth_file = self.runtime_dir / "containers" / "auth.json"
        self._auths: dict[str, dict[str, str]] = {}
        self._write_auth_file()
        self.cache_isolated = os.geteuid() != 0 or can_isolate_root_cache()

    def _write_auth_file(self) -> None:
        self.auth_file.write_text(json.dumps({"auths": self._auths}))
        self.auth_file.chmod(0o600)

    def login(self, registry: RegistryProcess | str, credentials: tuple[str, str] | None = None) -> None:
        """Remember credentials for a registry (its own account by default) in the private auth file."""
        host = registry if isinstance(registry, str) else registry.host
        creds = credentials or (None if isinstance(registry, str) else registry.credentials)
        if creds is None:
            raise ValueError(f"no credentials for {host}")
        token = base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()
        self._auths[host] = {"auth": token}
        self._write_auth_file()

    @property
    def env(self) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.home),
            "XDG_RUNTIME_DIR": str(self.runtime_dir),
            "XDG_CONFIG_HOME": str(self.home / ".config"),
            "XDG_DATA_HOME": str(self.home / ".local" / "share"),
            "TMPDIR": str(self.workdir / "tmp"),
        }

    def command(self, *args: str) -> list[str]:
        """The full argv for ``skopeo ARGS`` (with the cache bind when running as root)."""
        argv = [self.binary, "--policy", str(self.policy_file), *args]
        if os.geteuid() == 0 and self.cache_isolated:
            return [*_bind_prefix(self.cache_dir), *argv]
        return argv

    def run(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[bytes]:
        result = subprocess.run(self.command(*args), env=self.env, capture_output=True, timeout=timeout,
                                cwd=self.workdir, stdin=subprocess.DEVNULL)
        if check and result.returncode != 0:
            raise SkopeoError(args, result.returncode, result.stderr.decode(errors="replace"))
        return result

    def clear_cache(self) -> None:
        """Forget remembered blob locations (before a cold benchmark run)."""
        for entry in self.cache_dir.iterdir():
            entry.unlink()

    # -- operations ------------------------------------------------------------------------------

    def inspect_raw(self, ref: str) -> bytes:
        """The manifest bytes exactly as served, for ``HOST:PORT/REPO:TAG`` (or ``@digest``)."""
        return self.run("inspect", "--raw", "--tls-verify=false", _docker_ref(ref)).stdout

    def inspect(self, ref: str) -> dict[str, Any]:
        """``skopeo inspect`` (parsed JSON: Digest, Architecture, Layers, ...)."""
        output = self.run("inspect", "--tls-verify=false", _docker_ref(ref)).stdout
        result: dict[str, Any] = json.loads(output)
        return result

    def list_tags(self, repo_ref: str) -> list[str]:
        result = json.loads(self.run("list-tags", "--tls-verify=false", _docker_ref(repo_ref)).stdout)
        return list(result.get("Tags") or [])

    def copy(self, src: str, dest: str, *, all_platforms: bool = True, preserve_digests: bool = True,
             extra_args: Sequence[str] = ()) -> subprocess.CompletedProcess[bytes]:
        """``skopeo copy docker://SRC docker://DEST`` (all platforms, digests preserved by default)."""
        args = ["copy", "--src-tls-verify=false", "--dest-tls-verify=false"]
        args += ["--all"] if all_platforms else []
        args += ["--preserve-digests"] if preserve_digests else []
        return self.run(*args, *extra_args, _docker_ref(src), _docker_ref(dest))

    def sync(self, src_yaml: Mapping[str, Any] | Path, dest: str, *, all_platforms: bool = True,
             preserve_digests: bool = True, scoped: bool = False,
             extra_args: Sequence[str] = ()) -> subprocess.CompletedProcess[bytes]:
        """``skopeo sync --src yaml --dest docker SRC.yaml DEST`` (``DEST`` = ``HOST:PORT[/PREFIX]``).

        ``src_yaml`` is the YAML document as a mapping (written to a file here; ``tls-verify: false`` added
        to each registry that does not say) or a path. Without ``scoped`` skopeo keeps only the last path
        element of each repository under the destination prefix.
        """
        if isinstance(src_yaml, Path):
            yaml_file = src_yaml
        else:
            document = {registry: {"tls-verify": False, **dict(spec)} for registry, spec in src_yaml.items()}
            yaml_file = self.workdir / "sync-source.yaml"
            yaml_file.write_text(yaml.safe_dump(document))
        args = ["sync", "--src", "yaml", "--dest", "docker", "--dest-tls-verify=false"]
        args += ["--all"] if all_platforms else []
        args += ["--preserve-digests"] if preserve_digests else []
        args += ["--scoped"] if scoped else []
        return self.run(*args, *extra_args, str(yaml_file), dest)
