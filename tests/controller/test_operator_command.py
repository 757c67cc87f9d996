"""`imagesync operator`: where its Kubernetes identity comes from, and bad input at start-up."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from imagesync.controller.main import connection_info, kube_configuration


def write_kubeconfig(path: Path, cluster: dict[str, object], user: dict[str, object]) -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k", "cluster": cluster}], "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}]}))
    return path


def test_kubeconfig_flag_is_what_kopf_logs_in_with(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # kopf's own login_via_client reads only the default kubeconfig: --kubeconfig was silently ignored
    # and the operator retried its login forever (found running the command against a real API server).
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "not-this-one"))
    ca = tmp_path / "ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n")
    path = write_kubeconfig(tmp_path / "token.kubeconfig",
                            {"server": "https://127.0.0.1:6443", "certificate-authority": str(ca)},
                            {"token": "sa-token-value"})
    info = connection_info(kube_configuration(str(path)))
    assert info.server == "https://127.0.0.1:6443"
    assert (info.scheme, info.token) == ("Bearer", "sa-token-value")
    assert info.ca_path == str(ca) and not info.insecure

    path = write_kubeconfig(tmp_path / "basic.kubeconfig",
                            {"server": "https://10.0.0.1", "insecure-skip-tls-verify": True},
                            {"username": "admin", "password": "pw"})
    info = connection_info(kube_configuration(str(path)))
    assert info.insecure
    assert (info.scheme, info.token) == ("Basic", base64.b64encode(b"admin:pw").decode())


def test_unreadable_kubeconfig_is_a_clear_error_not_a_traceback(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "KUBERNETES_SERVICE_HOST"}
    result = subprocess.run([sys.executable, "-m", "imagesync.cli.main", "operator", "--kubeconfig",
                             str(tmp_path / "missing.kubeconfig")], env=env, capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "cannot load Kubernetes credentials" in result.stderr and "missing.kubeconfig" in result.stderr
    assert "Traceback" not in result.stderr
