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
import math
import os
import re
import resource
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from imagesync import __version__
from imagesync.cli.convert import add_convert_arguments, run_convert
from imagesync.cli.progress import TerminalDisplay, plan_text, show_progress, summary, terminal_display
from imagesync.engine.config import AuthTable, check_ca_file, load_auth, load_images, load_legacy_config
from imagesync.engine.copy import SyncOptions, sync
from imagesync.engine.errors import ConfigError, ImageSyncError, RuleError
from imagesync.engine.image_transfer import DEFAULT_QPS as DEFAULT_TRANSFER_QPS
from imagesync.engine.image_transfer import load_rules as load_transfer_rules
from imagesync.engine.image_transfer import load_security
from imagesync.engine.manifest import PlatformFilter
from imagesync.engine.reference import ReferenceError, check_registry_host, parse_repository
from imagesync.engine.referrers import ReferrerOptions
from imagesync.engine.rules import Rule, parse_rules
from imagesync.engine.signatures import SignatureError, SignatureOptions, load_public_key
from imagesync.engine.stats import SyncStats
from imagesync.engine.transport import parse_rate

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
        if not math.isfinite(value):  # float() takes "nan" and "inf": no rate or count means either
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if value < 0:
            raise argparse.ArgumentTypeError(f"{text!r} must not be negative")
        return value
    return parse


def _rate(text: str) -> float:
    try:
        return parse_rate(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([hms]?)")
_DURATION_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "": 1.0}


def _seconds(text: str) -> float:
    """--timeout: a positive, finite number of seconds."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds: give a positive number, e.g. 30 "
                                         f"or 2.5")
    return value


def parse_duration(text: str) -> float:
    """--deadline: seconds from ``90``, ``90s``, ``15m``, ``2h``, ``1h30m`` or ``1.5h``; positive."""
    compact = text.strip().lower().replace(" ", "")
    parts = list(_DURATION_PART.finditer(compact))
    units = [part.group(2) for part in parts]
    well_formed = (bool(parts) and "".join(part.group(0) for part in parts) == compact
                   and (len(parts) == 1 or all(units)) and len(set(units)) == len(units))
    seconds = sum(float(part.group(1)) * _DURATION_UNITS[part.group(2)] for part in parts) if well_formed else 0.0
    if not well_formed or not math.isfinite(seconds) or seconds <= 0:
        raise argparse.ArgumentTypeError(f"{text[:60]!r} is not a duration: give a positive number of seconds "
                                         f"or hours/minutes/seconds, e.g. 90, 90s, 15m, 2h, 1h30m")
    return seconds


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
    run.add_argument("--limit-rate", type=_rate, default=None, metavar="RATE",
                     help="bandwidth limit per registry, uploads and downloads together, e.g. 50MiB/s, 20M, "
                          "512KiB (K/M/G = 1000^n, Ki/Mi/Gi = 1024^n; an auth entry's limitRate wins for its "
                          "registry; default unlimited)")
    run.add_argument("--timeout", type=_seconds, default=None, metavar="SECONDS",
                     help="per request: the longest wait to connect, and the longest a read or write may stall "
                          "(default: connect 15 s, read and write 120 s); a request that times out is retried")
    run.add_argument("--deadline", type=parse_duration, default=None, metavar="DURATION",
                     help="the whole sync ends by then (e.g. 90s, 15m, 2h, 1h30m): images not finished are "
                          "reported failed with the reason 'deadline exceeded' (exit 1); default none")
    run.add_argument("--os", action="append", metavar="OS[:VERSION]",
                     help="copy only these platforms' OS from indexes (rewrites the index: new digest)")
    run.add_argument("--arch", action="append", metavar="ARCH[:VARIANT]",
                     help="copy only these architectures from indexes (rewrites the index: new digest)")
    run.add_argument("--force", action="store_true", help="copy images even when the target is up to date")
    run.add_argument("--skip-existing", action="store_true",
                     help="missing-only: one tags/list per target repository decides, tags the target has are "
                          "not copied nor compared (a tag moved at the source is not noticed; for immutable tags)")
    run.add_argument("--ca-file", metavar="FILE", help="extra CA bundle trusted for every HTTPS registry")
    run.add_argument("--dry-run", action="store_true",
                     help="plan without writing (GET and HEAD requests only): each pair up to date, to copy or "
                          "failed, and the blobs and bytes the targets lack; a table, or JSON with --output json "
                          "or --result-file; exit 0 when every pair was planned, 1 when some could not be")
    prune = parser.add_argument_group(
        "pruning: target tags the source no longer has (docs/rules.md, Pruning, says which)")
    prune.add_argument("--prune", action="store_true",
                       help="after the copy, list the target tags each rule's selector (every tag, /regex/, "
                            "semver, exclude) covers that its source no longer has, per target repository: "
                            "what would be deleted. Deletes nothing without --prune-confirm")
    prune.add_argument("--prune-confirm", action="store_true",
                       help="with --prune: delete them (untag where the registry can; else by digest, only when no "
                            "kept tag shares the manifest)")
    refs = parser.add_argument_group("referrers: signatures, attestations and SBOMs that refer to an image")
    refs.add_argument("--referrers", action=argparse.BooleanOptionalAction, default=True,
                      help="copy the artifacts that refer to each image and to each child of an index (OCI "
                           "referrers API or sha256-<hex> tag, cosign's .sig/.att/.sbom tags), digests unchanged "
                           "(default on; --no-referrers copies images alone)")
    refs.add_argument("--referrers-type", action="append", metavar="TYPE[,TYPE]",
                      help="copy only referrers of these artifact types (shell patterns, e.g. "
                           "'application/vnd.dev.cosign.*')")
    refs.add_argument("--referrers-exclude-type", action="append", metavar="TYPE[,TYPE]",
                      help="do not copy referrers of these artifact types (shell patterns)")
    refs.add_argument("--referrers-optional", action="store_true",
                      help="a referrer that cannot be copied is counted and noted, its image still succeeds "
                           "(default: the image fails)")
    signed = parser.add_argument_group("only signed images (cosign; see engine/signatures.py for what counts)")
    signed.add_argument("--only-signed", action="store_true",
                        help="copy only images with a signature at the source: cosign's sha256-<hex>.sig tag, or "
                             "a cosign, sigstore-bundle or Notation signature referrer; the others are skipped "
                             "with the reason 'unsigned' (not a failure: exit 0)")
    signed.add_argument("--signature-key", action="append", metavar="FILE",
                        help="PEM ECDSA P-256 public key (cosign.pub; repeatable: any key may sign): cosign "
                             "key-based signatures must verify, over a payload naming the image's digest; an "
                             "image whose signature does not verify is skipped, never pushed (implies "
                             "--only-signed)")
    out = parser.add_argument_group("output")
    out.add_argument("--log", metavar="FILE", help="write logs to FILE instead of standard error")
    out.add_argument("--output", choices=["text", "json"], default="text",
                     help="'json' prints the result document on standard output")
    out.add_argument("--result-file", metavar="FILE", help="write the JSON result (successes and failures)")
    out.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    out.add_argument("--records", help=argparse.SUPPRESS)  # image-syncer < 1.1: accepted, no longer needed
    add_image_transfer_arguments(parser)


def add_image_transfer_arguments(parser: argparse.ArgumentParser) -> None:
    """image-transfer's command line (tkestack/image-transfer), so its users' scripts run unchanged.

    --registry and --qps are shared with image-syncer's; the others write the same settings as their
    image-syncer names (defaults stay theirs: argparse.SUPPRESS).
    """
    compat = parser.add_argument_group(
        "image-transfer's command line (--registry and --qps above mean the same there)")
    compat.add_argument("--securityFile", dest="security_file", metavar="FILE",
                        help="image-transfer's registry-secret.yaml (credentials; with --ruleFile)")
    compat.add_argument("--ruleFile", dest="rule_file", metavar="FILE",
                        help="image-transfer's transfer-rule.yaml (its rule format, not image-syncer's); "
                             f"--qps defaults to image-transfer's {DEFAULT_TRANSFER_QPS:g} with it")
    compat.add_argument("--ns", dest="namespace", default=argparse.SUPPRESS,
                        help="default target namespace: the same as --namespace")
    compat.add_argument("--routines", dest="proc", type=_positive(int), default=argparse.SUPPRESS, metavar="N",
                        help="concurrency: the same as --proc")
    compat.add_argument("--retry", dest="retries", type=_positive(int), default=argparse.SUPPRESS, metavar="N",
                        help="retry rounds for failed images: the same as --retries")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imagesync", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"imagesync {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    sync_parser = commands.add_parser("sync", help="copy images between registries (image-syncer compatible)")
    add_sync_arguments(sync_parser)
    convert_parser = commands.add_parser(
        "convert", help="image-syncer's or image-transfer's files -> ImageSyncJob, RegistryCredential and "
                        "Secret manifests")
    add_convert_arguments(convert_parser)
    commands.add_parser("worker", help="run one shard of an ImageSyncJob (inside a worker pod)")
    commands.add_parser("operator", help="run the Kubernetes operator", add_help=False)
    return parser


def setup_logging(log_file: str | None, verbose: bool, stream: TextIO | None = None,
                  display: TerminalDisplay | None = None) -> None:
    """Logs go to --log FILE, else above the terminal display when there is one, else to plain ``stream``."""
    try:
        # sys.stderr looked up now, not when this module was imported (tests and embedders replace it).
        handler: logging.Handler = (logging.FileHandler(log_file) if log_file
                                    else display.log_handler() if display is not None
                                    else logging.StreamHandler(stream or sys.stderr))
    except OSError as exc:  # checked beforehand; the file system may still refuse
        raise ConfigError(f"--log {log_file}: cannot write: {exc.strerror or exc}") from None
    if log_file or display is None:
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
            raise ConfigError("--config cannot be combined with --auth/--images")
        auth, images = load_legacy_config(args.config)
        if not images:
            raise ConfigError(f"{args.config}: no rules: the 'images' section is missing or empty")
        return auth, dict(images)
    images_path = args.images or ("images.json" if Path("images.json").exists() else None)
    if images_path is None:
        raise ConfigError("no rules given: pass --images FILE (or the legacy --config FILE)")
    auth_path = args.auth or ("auth.json" if Path("auth.json").exists() else None)
    auth = load_auth(auth_path) if auth_path else AuthTable({})
    images = load_images(images_path)
    if not images:
        # An empty file is a mistake as surely as a missing --images: "0 total" and exit 0 would hide it.
        raise ConfigError(f"{images_path}: no rules: the file is empty")
    return auth, dict(images)


def load_image_transfer(args: argparse.Namespace) -> tuple[AuthTable, list[Rule], list[RuleError]]:
    """--securityFile/--ruleFile: image-transfer's files, its meanings (see engine/image_transfer.py)."""
    if args.auth or args.images or args.config:
        raise ConfigError("--securityFile/--ruleFile (image-transfer's files) cannot be combined with "
                          "--auth/--images/--config (image-syncer's)")
    if not args.rule_file:
        raise ConfigError("--securityFile needs --ruleFile (image-transfer's rule file)")
    auth = load_security(args.security_file) if args.security_file else AuthTable({})
    rules, rule_errors = load_transfer_rules(args.rule_file, args.registry, args.namespace)
    if args.qps is None:
        args.qps = DEFAULT_TRANSFER_QPS
    return auth, rules, rule_errors


def check_output_file(flag: str, path: str) -> None:
    """Refuse an output path that cannot be written before anything is copied: failing after the copy
    would report images that were synced as a failed run."""
    file = Path(path)
    if file.is_dir():
        raise ConfigError(f"{flag} {path}: is a directory")
    if not file.parent.is_dir():
        raise ConfigError(f"{flag} {path}: directory {file.parent} does not exist")
    if not os.access(file if file.exists() else file.parent, os.W_OK):
        raise ConfigError(f"{flag} {path}: not writable")


def check_arguments(args: argparse.Namespace) -> None:
    """Flag values argparse cannot check on its own; each error names the flag."""
    for flag, path in (("--log", args.log), ("--result-file", args.result_file)):
        if path:
            check_output_file(flag, path)
    if args.ca_file:
        check_ca_file(args.ca_file, "--ca-file")
    if args.prune_confirm and not args.prune:
        raise ConfigError("--prune-confirm confirms --prune: give both to delete (--prune alone lists what would "
                          "be deleted)")
    if args.prune_confirm and args.dry_run:
        raise ConfigError("--dry-run deletes nothing: drop --prune-confirm (--dry-run --prune lists what pruning "
                          "would delete)")
    try:
        if args.registry:
            check_registry_host(args.registry)
    except ReferenceError as exc:
        raise ConfigError(f"--registry (or DEFAULT_REGISTRY) {args.registry!r}: {exc}") from None
    try:
        if args.namespace:
            parse_repository(f"localhost/{args.namespace}")  # the namespace's path components, on any host
    except ReferenceError as exc:
        raise ConfigError(f"--namespace (or DEFAULT_NAMESPACE) {args.namespace!r}: {exc}") from None


def signature_options(args: argparse.Namespace) -> SignatureOptions:
    """--only-signed and --signature-key: every key is read and parsed now (a bad key is bad input)."""
    keys = []
    for path in getattr(args, "signature_key", None) or ():
        try:
            pem = Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError(f"--signature-key {path}: cannot read: {exc.strerror or exc}") from None
        try:
            load_public_key(pem, f"--signature-key {path}")
        except SignatureError as exc:
            raise ConfigError(str(exc)) from None
        keys.append(pem)
    return SignatureOptions(only_signed=bool(getattr(args, "only_signed", False) or keys), keys=tuple(keys))


def options_from(args: argparse.Namespace) -> SyncOptions:
    return SyncOptions(proc=max(1, args.proc), retries=args.retries, force=args.force, qps=args.qps or None,
                       limit_rate=args.limit_rate, timeout=args.timeout, deadline=args.deadline,
                       skip_existing=args.skip_existing,
                       platforms=PlatformFilter(_split_list(args.os), _split_list(args.arch)),
                       ca_file=args.ca_file,
                       referrers=ReferrerOptions(enabled=args.referrers, include=_split_list(args.referrers_type),
                                                 exclude=_split_list(args.referrers_exclude_type),
                                                 optional=args.referrers_optional),
                       signatures=signature_options(args),
                       prune=("delete" if args.prune_confirm else "dry-run") if args.prune else None)


async def run_sync(args: argparse.Namespace, display: TerminalDisplay | None = None) -> int:
    if args.rule_file or args.security_file:  # image-transfer's files
        auth, rules, rule_errors = load_image_transfer(args)
    else:
        auth, images = load_configuration(args)
        rules, rule_errors = parse_rules(images, args.registry, args.namespace)
    if not rules:
        # Not one rule can run: bad input (exit 2), like a file that does not parse.
        for error in rule_errors:
            report_error(error, args.log)
        return EXIT_BAD_INPUT
    options = options_from(args)
    if args.dry_run:  # lists the malformed rules among what it cannot plan
        return await _dry_run(args, rules, rule_errors, auth, options)
    for error in rule_errors:
        log.error("%s", error)
    stats = SyncStats()
    # A terminal gets the live display (with --log too: the records go to the file, the bars stay on screen).
    reporter = asyncio.create_task(show_progress(stats, display))
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
        try:
            Path(args.result_file).write_text(json.dumps(result, indent=2) + "\n")
        except OSError as exc:  # checked before the copy; a full disk can still refuse it
            raise ConfigError(f"--result-file {args.result_file}: cannot write: {exc.strerror or exc}") from None
    if args.output == "json":
        print(json.dumps(result, indent=2))
    else:
        print(summary(stats))
    return EXIT_IMAGES_FAILED if stats.failed() or (stats.prune and stats.prune.count("errors")) else EXIT_OK


async def _dry_run(args: argparse.Namespace, rules: Sequence[Rule], rule_errors: Sequence[RuleError],
                   auth: AuthTable, options: SyncOptions) -> int:
    """--dry-run: the plan (engine/plan.py; GET and HEAD requests only), as a table or as JSON (--output json,
    --result-file). Exit 0 when every pair was planned, even if copies are needed; 1 when some could not be."""
    from imagesync.engine.plan import dry_run  # here, not at the top: a plain sync never plans

    plan = await dry_run(rules, rule_errors, auth, options)
    document = {"dryRun": True, **plan.as_dict(), "durationSeconds": plan.duration_seconds}
    if plan.prune is not None:
        document["prune"] = plan.prune.as_dict()
    if args.result_file:
        try:
            Path(args.result_file).write_text(json.dumps(document, indent=2) + "\n")
        except OSError as exc:
            raise ConfigError(f"--result-file {args.result_file}: cannot write: {exc.strerror or exc}") from None
    print(json.dumps(document, indent=2) if args.output == "json" else plan_text(plan))
    return EXIT_IMAGES_FAILED if plan.count("failed") or (plan.prune and plan.prune.count("errors")) else EXIT_OK


def report_error(error: ImageSyncError, log_file: str | None) -> None:
    """One line on standard error, and in the --log file once it is open (it may be all a scheduler keeps)."""
    if log_file:
        log.error("%s", error)
    print(f"imagesync: error: {error}", file=sys.stderr)


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
    if args.command == "convert":
        return run_convert(args)
    if args.command == "worker":
        from imagesync.worker.main import main as worker_main

        return worker_main()
    log_file = None  # until the log file is open, errors go to standard error only
    try:
        check_arguments(args)
        display = None if getattr(args, "dry_run", False) else terminal_display(sys.stderr)
        setup_logging(args.log, args.verbose, display=display)
        log_file = args.log
        return asyncio.run(run_sync(args, display))
    except ImageSyncError as exc:
        report_error(exc, log_file)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("imagesync: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
