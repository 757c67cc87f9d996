"""``imagesync``: the command line.

``imagesync sync`` is a drop-in for image-syncer (same files, same flags); ``imagesync worker`` is what
the operator's worker pods run; ``imagesync operator`` starts the controller. This module imports
neither kopf nor kubernetes: only the ``operator`` subcommand loads them, on demand.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import resource
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from imagesync import __version__
from imagesync.cli.progress import is_interactive, show_progress, summary
from imagesync.engine.config import AuthTable, load_auth, load_images, load_legacy_config
from imagesync.engine.copy import SyncOptions, sync
from imagesync.engine.errors import ImageSyncError
from imagesync.engine.manifest import PlatformFilter
from imagesync.engine.rules import parse_rules
from imagesync.engine.stats import SyncStats

EXIT_OK = 0
EXIT_IMAGES_FAILED = 1
EXIT_BAD_INPUT = 2

log = logging.getLogger("imagesync")


def _split_list(values: Sequence[str] | None) -> tuple[str, ...]:
    """``--os linux,windows --os darwin`` -> (linux, windows, darwin)."""
    items: list[str] = []
    for value in values or ():
        items.extend(v.strip() for v in value.split(",") if v.strip())
    return tuple(items)


def _positive(kind: type[int] | type[float]):  # type: ignore[no-untyped-def]
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from exc
        if value < 0:
            raise argparse.ArgumentTypeError(f"{text!r} must not be negative")
        return value
    return parse


def add_sync_arguments(parser: argparse.ArgumentParser) -> None:
    files = parser.add_argument_group("configuration files (image-syncer's formats, JSON or YAML)")
    files.add_argument("--auth", metavar="FILE", help="credentials file (default: ./auth.json if present)")
    files.add_argument("--images", metavar="FILE", help="rules file (default: ./images.json if present)")
    files.add_argument("--config", metavar="FILE", help="legacy combined file with 'auth' and 'images'")
    target = parser.add_argument_group("default target for rules with an empty target")
    target.add_argument("--registry", default=os.environ.get("DEFAULT_REGISTRY") or None,
                        help="default target registry (env DEFAULT_REGISTRY)")
    target.add_argument("--namespace", default=os.environ.get("DEFAULT_NAMESPACE") or None,
                        help="default target namespace (env DEFAULT_NAMESPACE)")
    run = parser.add_argument_group("behaviour")
    run.add_argument("--proc", type=_positive(int), default=5, help="concurrent blob transfers (default 5)")
    run.add_argument("--retries", type=_positive(int), default=2,
                     help="extra rounds for images that failed transiently (default 2)")
    run.add_argument("--qps", type=_positive(float), default=None,
                     help="request rate limit per registry (requests/second; default unlimited)")
    run.add_argument("--os", action="append", metavar="OS[:VERSION]",
                     help="copy only these platforms' OS from indexes (rewrites the index: new digest)")
    run.add_argument("--arch", action="append", metavar="ARCH[:VARIANT]",
                     help="copy only these architectures from indexes (rewrites the index: new digest)")
    run.add_argument("--force", action="store_true", help="copy images even when the target is up to date")
    run.add_argument("--ca-file", metavar="FILE", help="extra CA bundle trusted for every HTTPS registry")
    run.add_argument("--dry-run", action="store_true", help="list what would be copied, copy nothing")
    out = parser.add_argument_group("output")
    out.add_argument("--log", metavar="FILE", help="write logs to FILE instead of standard error")
    out.add_argument("--output", choices=["text", "json"], default="text",
                     help="'json' prints the result document on standard output")
    out.add_argument("--result-file", metavar="FILE", help="write the JSON result (successes and failures)")
    out.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    out.add_argument("--records", help=argparse.SUPPRESS)  # image-syncer < 1.1: accepted, no longer needed


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imagesync", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"imagesync {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    sync_parser = commands.add_parser("sync", help="copy images between registries (image-syncer compatible)")
    add_sync_arguments(sync_parser)
    commands.add_parser("worker", help="run one shard of an ImageSyncJob (inside a worker pod)")
    commands.add_parser("operator", help="run the Kubernetes operator", add_help=False)
    return parser


def setup_logging(log_file: str | None, verbose: bool, stream: TextIO = sys.stderr) -> None:
    handler: logging.Handler = logging.FileHandler(log_file) if log_file else logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    # httpx logs every request at INFO: far too chatty for thousands of blobs.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)


def load_configuration(args: argparse.Namespace) -> tuple[AuthTable, dict[str, object]]:
    if args.config:
        if args.auth or args.images:
            raise ImageSyncError("--config cannot be combined with --auth/--images")
        auth, images = load_legacy_config(args.config)
        return auth, dict(images)
    images_path = args.images or ("images.json" if Path("images.json").exists() else None)
    if images_path is None:
        raise ImageSyncError("no rules given: pass --images FILE (or the legacy --config FILE)")
    auth_path = args.auth or ("auth.json" if Path("auth.json").exists() else None)
    auth = load_auth(auth_path) if auth_path else AuthTable({})
    return auth, dict(load_images(images_path))


def options_from(args: argparse.Namespace) -> SyncOptions:
    return SyncOptions(proc=max(1, args.proc), retries=args.retries, force=args.force, qps=args.qps or None,
                       platforms=PlatformFilter(_split_list(args.os), _split_list(args.arch)),
                       ca_file=args.ca_file)


async def run_sync(args: argparse.Namespace) -> int:
    auth, images = load_configuration(args)
    rules, rule_errors = parse_rules(images, args.registry, args.namespace)
    for error in rule_errors:
        log.error("%s", error)
    options = options_from(args)
    if args.dry_run:
        return await _dry_run(rules, rule_errors, auth, options)
    stats = SyncStats()
    interactive = is_interactive(sys.stderr) and not args.log
    reporter = asyncio.create_task(show_progress(stats, sys.stderr, interactive))
    try:
        await sync(rules, rule_errors, auth, options, stats)
    finally:
        reporter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reporter
    result = stats.result()
    # Peak memory of this process, for the record (Linux reports ru_maxrss in KiB).
    result["peakRssBytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if args.result_file:
        Path(args.result_file).write_text(json.dumps(result, indent=2) + "\n")
    if args.output == "json":
        print(json.dumps(result, indent=2))
    else:
        print(summary(stats))
    return EXIT_IMAGES_FAILED if stats.failed() else EXIT_OK


async def _dry_run(rules: Sequence[object], rule_errors: Sequence[object], auth: AuthTable,
                   options: SyncOptions) -> int:
    from imagesync.engine.copy import Registries, Syncer

    registries = Registries(auth, options)
    try:
        pairs, failures = await Syncer(registries, options).plan(rules, rule_errors)  # type: ignore[arg-type]
    finally:
        await registries.aclose()
    for pair in pairs:
        print(f"{pair.source} -> {pair.target}")
    for failure in failures:
        print(f"cannot plan {failure.source}: {failure.reason}", file=sys.stderr)
    return EXIT_IMAGES_FAILED if failures else EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # image-syncer is invoked with flags only: `imagesync --auth=a.json --images=i.json` means `sync`.
    if argv and argv[0].startswith("--") and argv[0] not in ("--help", "--version"):
        argv.insert(0, "sync")
    if argv[:1] == ["operator"]:
        from imagesync.controller.main import main as operator_main

        return int(operator_main(argv[1:]))
    args = build_parser().parse_args(argv)
    if args.command is None:
        build_parser().print_help()
        return EXIT_BAD_INPUT
    if args.command == "worker":
        from imagesync.worker.main import main as worker_main

        return worker_main()
    setup_logging(args.log, args.verbose)
    try:
        return asyncio.run(run_sync(args))
    except ImageSyncError as exc:
        if args.log:
            log.error("%s", exc)
        print(f"imagesync: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("imagesync: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
