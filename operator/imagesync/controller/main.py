"""``imagesync operator``: run the controller (in the cluster, or against a kubeconfig)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import secrets
import signal
import socket
import sys
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp.web
import kopf
import kubernetes

from imagesync.controller.handlers import Context, configure, register
from imagesync.controller.kube import Kube
from imagesync.controller.leader import LEASE_NAME, Elector, KubeLeases, LeadershipLost
from imagesync.controller.metrics import Metrics
from imagesync.controller.settings import (
    ALLOWLIST_ENV,
    DEFAULT_BIND_ADDRESS,
    DEFAULT_HEALTH_PORT,
    DEFAULT_METRICS_PORT,
    OperatorSettings,
    SettingsError,
    list_setting,
    own_image,
    port_setting,
)

# The in-cluster ServiceAccount's namespace, when the Deployment does not pass IMAGESYNC_POD_NAMESPACE.
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
# How long a replica that lost the Lease lets kopf wind down before it exits (far below the lease duration
# minus the renew deadline, the time before another replica may start acting).
LOST_STOP_SECONDS = 1.0

logger = logging.getLogger("imagesync.operator")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def build_parser() -> argparse.ArgumentParser:
    """The ``imagesync operator`` flags (docs/generate_reference.py documents them from here)."""
    parser = argparse.ArgumentParser(prog="imagesync operator", description=__doc__)
    parser.add_argument("--namespace", action="append", metavar="NS",
                        help="watch this namespace (repeatable; env IMAGESYNC_NAMESPACES; default: all)")
    parser.add_argument("--worker-image", help="default worker image (env IMAGESYNC_WORKER_IMAGE; in a Pod "
                        "with IMAGESYNC_POD_NAME/IMAGESYNC_POD_NAMESPACE set: the operator's own image)")
    parser.add_argument("--log-format", choices=["plain", "json"], help="env IMAGESYNC_LOG_FORMAT")
    parser.add_argument("--kubeconfig", help="outside a cluster: the kubeconfig to use (default: in-cluster)")
    parser.add_argument("--metrics-port", type=int, metavar="PORT", help="serve Prometheus metrics at /metrics on "
                        f"this port, 0 for none (env IMAGESYNC_METRICS_PORT; default {DEFAULT_METRICS_PORT})")
    parser.add_argument("--health-port", type=int, metavar="PORT", help="serve the health endpoint /healthz "
                        "(liveness and readiness probes; a standby replica answers too) on this port, 0 for none "
                        f"(env IMAGESYNC_HEALTH_PORT; default {DEFAULT_HEALTH_PORT})")
    parser.add_argument("--leader-elect", action=argparse.BooleanOptionalAction, default=None,
                        help=f"reconcile only while holding the Lease {LEASE_NAME} in the operator's namespace "
                        "(IMAGESYNC_POD_NAMESPACE), so that several replicas can run and one takes over when "
                        "another stops (env IMAGESYNC_LEADER_ELECT=true|false; default: on in a Pod, off with "
                        "--kubeconfig or outside a cluster; docs/operator.md)")
    allowlists = {
        "allowed_worker_images": ("IMAGE,...", "images spec.worker.image may name: `*` (any), sha256:DIGEST, "
                                  "HOST/ or HOST/NAMESPACE/ (everything under it), HOST/REPOSITORY (any tag or "
                                  "digest of it), HOST/REPOSITORY:TAG (exactly that image); default: the worker "
                                  "image's repository"),
        "allowed_worker_service_accounts": ("NAME,...", "ServiceAccounts spec.worker.serviceAccountName may name "
                                            "besides the worker's own (imagesync-worker); `*`: any; default: none"),
        "allowed_toleration_keys": ("KEY,...", "taint keys spec.worker.tolerations may tolerate; `*`: any "
                                    "toleration, including one without a key; default: none"),
        "allowed_node_selector_keys": ("KEY,...", "node label keys spec.worker.nodeSelector may use; `*`: any; "
                                       "default: none"),
    }
    for name, (metavar, text) in allowlists.items():
        parser.add_argument("--" + name.replace("_", "-"), metavar=metavar, help=f"comma-separated {text} "
                            f"(env {ALLOWLIST_ENV[name]}; docs/security.md)")
    parser.add_argument("--bind-address", metavar="ADDRESS", help="address of the metrics and health endpoints "
                        f"(env IMAGESYNC_BIND_ADDRESS; default {DEFAULT_BIND_ADDRESS}: every interface)")
    return parser


def settings_from(args: argparse.Namespace) -> OperatorSettings:
    """The environment's settings with the flags given on top (dataclasses.replace: every other field,
    including ones added later, keeps its environment value)."""
    base = OperatorSettings.from_env(os.environ)
    changes: dict[str, Any] = {
        "metrics_port": port_setting(args.metrics_port, "--metrics-port", base.metrics_port),
        "health_port": port_setting(args.health_port, "--health-port", base.health_port),
    }
    if args.namespace:
        changes["namespaces"] = tuple(args.namespace)
    if args.worker_image:
        changes["worker_image"] = args.worker_image
    if args.log_format:
        changes["log_format"] = args.log_format
    if args.bind_address:
        changes["bind_address"] = args.bind_address
    if args.leader_elect is not None:
        changes["leader_elect"] = args.leader_elect
    for name in ALLOWLIST_ENV:
        value = getattr(args, name)
        if value is not None:
            changes[name] = list_setting(value)
    return dataclasses.replace(base, **changes)


def with_own_image(settings: OperatorSettings, args: argparse.Namespace, kube: Kube,
                   env: Mapping[str, str] = os.environ) -> OperatorSettings:
    """No worker image given: run the workers from the operator's own image (read from its Pod)."""
    pod_name, pod_namespace = env.get("IMAGESYNC_POD_NAME"), env.get("IMAGESYNC_POD_NAMESPACE")
    if args.worker_image or env.get("IMAGESYNC_WORKER_IMAGE", "").strip() or not pod_name or not pod_namespace:
        return settings
    pod = kube.get_pod(pod_namespace, pod_name)
    image = own_image(pod) if pod else None
    return dataclasses.replace(settings, worker_image=image) if image else settings


def in_cluster(kubeconfig: str | None) -> bool:
    return not kubeconfig and bool(os.environ.get("KUBERNETES_SERVICE_HOST"))


def kube_configuration(kubeconfig: str | None) -> kubernetes.client.Configuration:
    """A fresh client configuration: in-cluster (the ServiceAccount token, refreshed as it rotates)
    or from the kubeconfig (``--kubeconfig``, else $KUBECONFIG or ~/.kube/config)."""
    configuration = kubernetes.client.Configuration()
    if in_cluster(kubeconfig):
        kubernetes.config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    else:
        kubernetes.config.load_kube_config(config_file=kubeconfig,  # type: ignore[no-untyped-call]
                                           client_configuration=configuration)
    return configuration


def connection_info(configuration: kubernetes.client.Configuration) -> kopf.ConnectionInfo:
    """The same identity for kopf's own API client as for the handlers' kubernetes client."""
    keys = configuration.api_key or {}
    authorization = keys.get("authorization") or keys.get("BearerToken") or ""
    prefix = (configuration.api_key_prefix or {}).get("authorization")
    if prefix and authorization and " " not in authorization:
        authorization = f"{prefix} {authorization}"
    scheme, _, token = authorization.partition(" ")
    return kopf.ConnectionInfo(
        server=configuration.host, ca_path=configuration.ssl_ca_cert, insecure=not configuration.verify_ssl,
        username=configuration.username or None, password=configuration.password or None,
        scheme=scheme or None, token=token or None,
        certificate_path=configuration.cert_file, private_key_path=configuration.key_file)


def leader_elect(settings: OperatorSettings, kubeconfig: str | None) -> bool:
    """Leader election unless told otherwise: on in a Pod (the Deployment runs replicas), off for a run
    against a kubeconfig (a developer's or a test's single process, whose Lease would block a real one)."""
    return settings.leader_elect if settings.leader_elect is not None else in_cluster(kubeconfig)


def election_identity(env: Mapping[str, str] = os.environ) -> str:
    """This process's name in the Lease: its Pod (or host) and a random suffix, so that a restarted
    container is a new candidate and never mistakes its predecessor's Lease for its own."""
    return f"{env.get('IMAGESYNC_POD_NAME') or socket.gethostname()}_{secrets.token_hex(4)}"


def lease_namespace(env: Mapping[str, str] = os.environ,
                    service_account: Path = SERVICE_ACCOUNT_NAMESPACE) -> str | None:
    """The namespace of the Lease: the operator's own."""
    namespace = env.get("IMAGESYNC_POD_NAMESPACE", "").strip()
    if not namespace and service_account.is_file():
        namespace = service_account.read_text().strip()
    return namespace or None


@contextlib.asynccontextmanager
async def health_endpoint(address: str, port: int) -> AsyncIterator[None]:
    """/healthz for the probes (port 0: none), from start to exit whether this replica leads or stands
    by: it answers while the event loop runs; a stopped operator exits, a lost Lease too."""
    if not port:
        yield
        return

    async def healthz(_: aiohttp.web.Request) -> aiohttp.web.Response:
        return aiohttp.web.json_response({})

    app = aiohttp.web.Application()
    app.add_routes([aiohttp.web.get("/healthz", healthz)])
    runner = aiohttp.web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    await aiohttp.web.TCPSite(runner, address, port).start()
    try:
        yield
    finally:
        await runner.cleanup()


@contextlib.contextmanager
def stopped_by_signals(stop: asyncio.Event) -> Iterator[None]:
    """SIGTERM or SIGINT set ``stop`` (while standing by; kopf installs its own handlers once it runs)."""
    loop = asyncio.get_running_loop()
    watched = (signal.SIGTERM, signal.SIGINT) if threading.current_thread() is threading.main_thread() else ()
    for signum in watched:
        loop.add_signal_handler(signum, stop.set)
    try:
        yield
    finally:
        for signum in watched:
            loop.remove_signal_handler(signum)


async def lead(elector: Elector, operator: Callable[[], Coroutine[Any, Any, None]], stop_flag: Any = None) -> None:
    """Stand by until this replica holds the Lease, then run ``operator`` (kopf) while renewing it.
    Lost (another holder, or no renewal for the renew deadline): kopf is stopped and LeadershipLost
    raised. kopf ended (a signal, the stop flag, an error): the Lease is released for the next replica."""
    stop = asyncio.Event()

    async def relay_stop_flag() -> None:
        if isinstance(stop_flag, asyncio.Event):
            await stop_flag.wait()
            stop.set()

    relay = asyncio.create_task(relay_stop_flag())
    try:
        with stopped_by_signals(stop):
            if not await elector.acquire(stop):
                logger.info("stopped while standing by")
                return
    finally:
        relay.cancel()
    # The renewal task first: kopf, when it stops, cancels every task created after it started.
    holding = asyncio.create_task(elector.hold(), name="lease renewal")
    reconciling = asyncio.create_task(operator(), name="kopf")
    try:
        await asyncio.wait({holding, reconciling}, return_when=asyncio.FIRST_COMPLETED)
        if holding.done():
            reconciling.cancel()
            await asyncio.wait({reconciling}, timeout=LOST_STOP_SECONDS)
            holding.result()  # LeadershipLost
        await reconciling
    finally:
        holding.cancel()
        reconciling.cancel()
        await elector.release()


async def run(registry: kopf.OperatorRegistry, ctx: Context, elector: Elector | None = None,
              **options: Any) -> None:
    """kopf with the operator's endpoints beside it: /metrics (prometheus_client's server, in a thread)
    and /healthz for the probes; with an ``elector``, kopf runs only while this replica holds the Lease.
    ``options`` go to kopf.operator()."""
    settings = ctx.settings
    server = ctx.metrics.serve(settings.bind_address, settings.metrics_port) if settings.metrics_port else None

    async def operator() -> None:
        await kopf.operator(registry=registry, namespaces=list(settings.namespaces),
                            clusterwide=not settings.namespaces, **options)

    try:
        async with health_endpoint(settings.bind_address, settings.health_port):
            if elector is None:
                await operator()
            else:
                await lead(elector, operator, options.get("stop_flag"))
    finally:
        if server is not None:
            server.close()


# kopf handles each object's events in a worker of its own (an asyncio task, with the event's body and what
# kopf derives from it), kept for an idle timeout (kopf's default: 5 s) after the object's last event. Unbounded
# (kopf's default), a restart or a re-list starts one for every object at once: with 1000 ImageSyncJobs that
# burst raised the RSS by about 17 MiB for good (the freed memory stays with the process). Bounded, the others
# wait with just their event; a short idle timeout frees a worker's place soon after its last event.
# docs/operator-scale.md has the figures.
OBJECT_WORKERS_PER_HANDLER_THREAD = 8
OBJECT_WORKER_IDLE_SECONDS = 0.2


def tune_kopf(kopf_settings: kopf.OperatorSettings, settings: OperatorSettings) -> None:
    """kopf's settings that matter with many ImageSyncJobs (docs/operator-scale.md)."""
    kopf_settings.execution.max_workers = settings.handler_threads
    kopf_settings.queueing.worker_limit = settings.handler_threads * OBJECT_WORKERS_PER_HANDLER_THREAD
    kopf_settings.queueing.idle_timeout = OBJECT_WORKER_IDLE_SECONDS


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
    try:
        configuration = kube_configuration(args.kubeconfig)
    except (kubernetes.config.ConfigException, OSError) as exc:
        source = args.kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config or the in-cluster ServiceAccount"
        print(f"imagesync operator: error: cannot load Kubernetes credentials from {source}: {exc}", file=sys.stderr)
        return 2
    metrics = Metrics()
    api_client = kubernetes.client.ApiClient(configuration)
    metrics.count_api_errors(api_client)
    kube = Kube(api_client)
    try:
        settings = with_own_image(settings, args, kube)
    except kubernetes.client.ApiException as exc:
        print(f"imagesync operator: error: cannot read its own Pod to learn the worker image "
              f"(set IMAGESYNC_WORKER_IMAGE instead): {exc.status} {exc.reason}", file=sys.stderr)
        return 2
    elector = None
    if leader_elect(settings, args.kubeconfig):
        namespace = lease_namespace()
        if namespace is None:
            print("imagesync operator: error: leader election needs the operator's namespace for its Lease: set "
                  "IMAGESYNC_POD_NAMESPACE (or --no-leader-elect)", file=sys.stderr)
            return 2
        leases = KubeLeases(api_client, namespace, request_timeout=settings.lease_timings.renew_deadline)
        elector = Elector(leases, election_identity(), settings.lease_timings, where=leases.where())
    ctx = Context(kube, settings, metrics=metrics)
    register(registry, ctx)

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        if in_cluster(args.kubeconfig):
            return kopf.login_via_client(**kwargs)  # kopf re-reads the rotating ServiceAccount token
        # Loaded again on every (re-)login: a kubeconfig exec plugin hands out a fresh token.
        return connection_info(kube_configuration(args.kubeconfig))

    @kopf.on.startup(registry=registry)
    def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        configure(settings)
        tune_kopf(settings, ctx.settings)

    logging.getLogger("imagesync").setLevel(logging.INFO)

    async def operate() -> None:
        try:
            await run(registry, ctx, elector, standalone=True)
        except LeadershipLost as exc:
            logger.error("leadership lost, exiting for a restart as a standby: %s", exc)
            logging.shutdown()
            # At once, not through asyncio.run's teardown: a handler still running in a thread must not go
            # on writing once another replica may act (the kubelet restarts the container).
            os._exit(1)

    asyncio.run(operate())
    return 0
