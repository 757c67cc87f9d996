"""``imagesync operator``: run the controller (in the cluster, or against a kubeconfig)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

import kopf
import kubernetes

from imagesync.controller.handlers import Context, configure, register
from imagesync.controller.kube import Kube
from imagesync.controller.settings import OperatorSettings, SettingsError


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="imagesync operator", description=__doc__)
    parser.add_argument("--namespace", action="append", metavar="NS",
                        help="watch this namespace (repeatable; env IMAGESYNC_NAMESPACES; default: all)")
    parser.add_argument("--worker-image", help="default worker image (env IMAGESYNC_WORKER_IMAGE)")
    parser.add_argument("--log-format", choices=["plain", "json"], help="env IMAGESYNC_LOG_FORMAT")
    parser.add_argument("--kubeconfig", help="outside a cluster: the kubeconfig to use (default: in-cluster)")
    return parser.parse_args(list(argv))


def settings_from(args: argparse.Namespace) -> OperatorSettings:
    base = OperatorSettings.from_env(os.environ)
    return OperatorSettings(
        namespaces=tuple(args.namespace) if args.namespace else base.namespaces,
        worker_image=args.worker_image or base.worker_image,
        worker_service_account=base.worker_service_account,
        log_format=args.log_format or base.log_format,
    )


def api_client(kubeconfig: str | None) -> kubernetes.client.ApiClient:
    if kubeconfig or not os.environ.get("KUBERNETES_SERVICE_HOST"):
        kubernetes.config.load_kube_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]
    else:
        kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
    return kubernetes.client.ApiClient()


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    try:
        settings = settings_from(args)
    except SettingsError as exc:
        print(f"imagesync operator: error: {exc}", file=sys.stderr)
        return 2
    kopf.configure(verbose=False, log_format=kopf.LogFormat.JSON if settings.log_format == "json"
                   else kopf.LogFormat.PLAIN)
    registry = kopf.OperatorRegistry()
    ctx = Context(Kube(api_client(args.kubeconfig)), settings)
    register(registry, ctx)

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return kopf.login_via_client(**kwargs)

    @kopf.on.startup(registry=registry)
    def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        configure(settings)

    logging.getLogger("imagesync").setLevel(logging.INFO)
    asyncio.run(kopf.operator(registry=registry, namespaces=list(settings.namespaces),
                              clusterwide=not settings.namespaces, standalone=True))
    return 0
