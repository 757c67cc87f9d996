"""The test plays the Job controller and the kubelet for the operator's worker Jobs.

It reads the Job and the Secret the operator created, creates the Job's Pods through the API (so the
operator's watches see them), runs the worker entrypoint as a local subprocess with the Pod's own
environment (downward API values resolved) and the Secret's files, then writes Pod and Job status back
as the kubelet and the Job controller would. The worker reports through the emulator as in a cluster: a
merge patch of its shard's key in the run's report ConfigMap.

Two things differ from a node, by necessity: the Secret is written to a temporary directory instead of
``/etc/imagesync/config`` (so ``IMAGESYNC_CONFIG_DIR`` points there), and ``IMAGESYNC_KUBE_API`` names
the emulator, which speaks plain HTTP on loopback instead of the in-cluster HTTPS service.
"""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"


@dataclass
class PodRun:
    name: str
    index: int
    returncode: int
    stdout: str
    stderr: str


class JobPlayer:
    def __init__(self, api_url: str, workdir: Path) -> None:
        self.api_url = api_url.rstrip("/")
        self.workdir = workdir
        self.client = httpx.AsyncClient(base_url=self.api_url, timeout=30)

    async def aclose(self) -> None:
        await self.client.aclose()

    async def get(self, path: str) -> dict[str, Any]:
        response = await self.client.get(path)
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data

    async def patch_status(self, path: str, status: dict[str, Any]) -> None:
        response = await self.client.patch(f"{path}/status", json={"status": status},
                                           headers={"Content-Type": "application/merge-patch+json"})
        response.raise_for_status()

    async def mount_secret(self, namespace: str, name: str, directory: Path) -> None:
        secret = await self.get(f"/api/v1/namespaces/{namespace}/secrets/{name}")
        directory.mkdir(parents=True, exist_ok=True)
        for key, value in (secret.get("data") or {}).items():
            (directory / key).write_bytes(base64.b64decode(value))

    async def start_pod(self, job: dict[str, Any], index: int) -> dict[str, Any]:
        meta, template = job["metadata"], job["spec"]["template"]
        indexed = job["spec"].get("completionMode") == "Indexed"
        pod_name = f"{meta['name']}-{index}-{secrets.token_hex(3)}" if indexed else \
            f"{meta['name']}-{secrets.token_hex(3)}"
        annotations = {COMPLETION_INDEX: str(index)} if indexed else {}
        pod = {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod_name, "namespace": meta["namespace"],
                         "labels": dict(template["metadata"].get("labels") or {}), "annotations": annotations,
                         "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": meta["name"],
                                              "uid": meta["uid"], "controller": True}]},
            "spec": template["spec"],
        }
        response = await self.client.post(f"/api/v1/namespaces/{meta['namespace']}/pods", json=pod)
        response.raise_for_status()
        created: dict[str, Any] = response.json()
        await self.patch_status(f"/api/v1/namespaces/{meta['namespace']}/pods/{pod_name}", {"phase": "Running"})
        return created

    def pod_environment(self, pod: dict[str, Any], job: dict[str, Any], index: int, config_dir: Path) -> dict[str, str]:
        container = pod["spec"]["containers"][0]
        env: dict[str, str] = {}
        for item in container.get("env") or []:
            if "value" in item:
                env[item["name"]] = item["value"]
            else:
                field_path = item["valueFrom"]["fieldRef"]["fieldPath"]
                env[item["name"]] = {"metadata.name": pod["metadata"]["name"],
                                     "metadata.namespace": pod["metadata"]["namespace"],
                                     "metadata.uid": pod["metadata"]["uid"]}[field_path]
        if job["spec"].get("completionMode") == "Indexed":
            env["JOB_COMPLETION_INDEX"] = str(index)  # set by the Job controller for Indexed Jobs
        env["IMAGESYNC_CONFIG_DIR"] = str(config_dir)
        env["IMAGESYNC_KUBE_API"] = self.api_url
        # What a container has besides its spec's env: a PATH and a HOME (nothing of the test's own).
        env["PATH"] = os.environ.get("PATH", "/usr/bin:/bin")
        env["HOME"] = str(self.workdir)
        return env

    async def run_pod(self, job: dict[str, Any], index: int) -> PodRun:
        namespace = job["metadata"]["namespace"]
        volume = next(v for v in job["spec"]["template"]["spec"]["volumes"] if "secret" in v)
        config_dir = self.workdir / f"{job['metadata']['name']}-{index}" / "config"
        await self.mount_secret(namespace, volume["secret"]["secretName"], config_dir)
        pod = await self.start_pod(job, index)
        env = self.pod_environment(pod, job, index, config_dir)
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "imagesync.cli.main", *job["spec"]["template"]["spec"]["containers"][0][
                "command"][1:], env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=300)
        code = process.returncode if process.returncode is not None else -1
        await self.patch_status(f"/api/v1/namespaces/{namespace}/pods/{pod['metadata']['name']}",
                                {"phase": "Succeeded" if code == 0 else "Failed"})
        return PodRun(pod["metadata"]["name"], index, code, stdout.decode(), stderr.decode())

    async def play(self, namespace: str, job_name: str) -> list[PodRun]:
        """Run every completion of the Job (in parallel, as its parallelism allows) and complete it."""
        path = f"/apis/batch/v1/namespaces/{namespace}/jobs/{job_name}"
        job = await self.get(path)
        completions = int(job["spec"].get("completions") or 1)
        runs = await asyncio.gather(*(self.run_pod(job, index) for index in range(completions)))
        succeeded = sum(1 for r in runs if r.returncode == 0)
        failed = completions - succeeded
        condition = "Complete" if failed == 0 else "Failed"
        await self.patch_status(path, {"succeeded": succeeded, "failed": failed, "active": 0, "conditions": [
            {"type": condition, "status": "True", "reason": "Played" if failed == 0 else "BackoffLimitExceeded"}]})
        return list(runs)
