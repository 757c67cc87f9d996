"""Write docs/reference.md: every custom-resource field and every command-line flag, generated so it cannot drift.

The CR fields come from the CRDs' openAPIV3Schema (crds/*.yaml); the flags from the argparse parsers the
program itself builds (``imagesync.cli.main.build_parser`` and the operator's parser), walked action by
action, so a subcommand or flag added there shows up here on the next run.

    python docs/generate_reference.py          # rewrite docs/reference.md
    python docs/generate_reference.py --check  # exit 1 when docs/reference.md is stale

tests/controller/test_crd_reference.py fails when the file is stale.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import yaml

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "docs" / "reference.md"
CRD_FILES = ("imagesyncjobs.yaml", "registrycredentials.yaml")

if str(ROOT / "operator") not in sys.path:  # a checkout without the package installed
    sys.path.append(str(ROOT / "operator"))


# -- custom resources ------------------------------------------------------------------------------


def load_crds() -> list[dict[str, Any]]:
    crds = []
    for name in CRD_FILES:
        crds.extend(doc for doc in yaml.safe_load_all((ROOT / "crds" / name).read_text()) if doc)
    return crds


def schema_nodes(node: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node below (and including) ``node``: properties at every depth, ``[]`` for array
    items, ``.*`` for the values of a map (additionalProperties)."""
    yield path, node
    for name, child in (node.get("properties") or {}).items():
        yield from schema_nodes(child, f"{path}.{name}" if path else name)
    if isinstance(node.get("additionalProperties"), dict):
        yield from schema_nodes(node["additionalProperties"], f"{path}.*")
    if isinstance(node.get("items"), dict):
        yield from schema_nodes(node["items"], f"{path}[]")


def type_of(node: dict[str, Any]) -> str:
    if node.get("x-kubernetes-int-or-string"):
        return "int or string"
    kind = node.get("type")
    if kind is None:
        return "any" if node.get("x-kubernetes-preserve-unknown-fields") else "?"
    if kind == "array" and isinstance(node.get("items"), dict):
        return f"[]{type_of(node['items'])}"
    if kind == "object" and isinstance(node.get("additionalProperties"), dict) and not node.get("properties"):
        return f"map[string]{type_of(node['additionalProperties'])}"
    return f"{kind} ({node['format']})" if node.get("format") else str(kind)


def constraints_of(node: dict[str, Any], required: bool) -> str:
    found = ["required"] if required else []
    if "enum" in node:
        found.append("one of " + ", ".join(f"`{v}`" for v in node["enum"]))
    for key, label in (("minimum", ">="), ("maximum", "<=")):
        if key in node:
            found.append(f"{label} {node[key]}")
    for key in ("minLength", "maxLength", "minProperties", "maxProperties", "minItems", "maxItems"):
        if key in node:
            found.append(f"{key} {node[key]}")
    if "pattern" in node:
        pattern = node["pattern"]
        found.append(f"pattern `{pattern}`" if len(pattern) <= 120 else "a pattern (in the CRD; see the description)")
    if "oneOf" in node:
        options = [" + ".join(branch.get("required") or []) for branch in node["oneOf"]]
        found.append("exactly one of " + ", ".join(f"`{o}`" for o in options))
    for rule in node.get("x-kubernetes-validations") or []:
        found.append(f"rule `{rule.get('rule')}`")
    return "; ".join(found)


def cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def crd_section(crd: dict[str, Any]) -> list[str]:
    names = crd["spec"]["names"]
    version = crd["spec"]["versions"][0]
    schema = version["schema"]["openAPIV3Schema"]
    lines = [
        f"## {names['kind']}",
        "",
        f"`{crd['spec']['group']}/{version['name']}`, {crd['spec']['scope'].lower()}; "
        f"`kubectl get {names['plural']}` (short name{'s' if len(names.get('shortNames', [])) > 1 else ''} "
        + ", ".join(f"`{s}`" for s in names.get("shortNames", [])) + ").",
        "",
        cell(schema.get("description", "")),
        "",
        "| field | type | default | constraints | description |",
        "|---|---|---|---|---|",
    ]
    parents: dict[str, dict[str, Any]] = {}
    for path, node in schema_nodes(schema, ""):
        parents[path] = node
        if not path:
            continue
        parent_path, _, name = path.rpartition(".")
        parent = parents.get(parent_path, {})
        required = name in (parent.get("required") or []) and not path.endswith(("[]", ".*"))
        default = json.dumps(node["default"]) if "default" in node else ""
        lines.append(f"| `{path}` | {cell(type_of(node))} | {cell(default)} | {cell(constraints_of(node, required))} "
                     f"| {cell(node.get('description', ''))} |")
    columns = version.get("additionalPrinterColumns") or []
    if columns:
        lines += ["", "`kubectl get` columns: " + ", ".join(f"{c['name']} (`{c['jsonPath']}`)" for c in columns) + "."]
    return [*lines, ""]


# -- command line --------------------------------------------------------------------------------


def operator_parser() -> argparse.ArgumentParser:
    """The parser of ``imagesync operator`` (it parses its own arguments)."""
    from imagesync.controller.main import build_parser

    return build_parser()


# Subcommands whose cli parser is a placeholder: the subcommand parses its own arguments.
DELEGATED: dict[str, Callable[[], argparse.ArgumentParser]] = {"operator": operator_parser}


def own_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if not isinstance(a, argparse._HelpAction)]


def help_text(action: argparse.Action, prog: str) -> str:
    text = action.help or ""
    if text == argparse.SUPPRESS:
        return "(hidden from --help: accepted for compatibility)"
    try:
        return text % {**vars(action), "prog": prog}
    except (KeyError, TypeError, ValueError):
        return text


def flag_name(action: argparse.Action) -> str:
    names = ", ".join(action.option_strings) or str(action.metavar or action.dest).upper()
    if action.nargs == 0:
        return names
    if action.choices is not None and not isinstance(action, argparse._SubParsersAction):
        value = "{" + ",".join(str(c) for c in action.choices) + "}"
    else:
        metavar = action.metavar if isinstance(action.metavar, str) else action.dest.upper()
        value = metavar
    return f"{names} {value}" if action.option_strings else names


def default_text(action: argparse.Action) -> str:
    default = action.default
    if default is None or default == argparse.SUPPRESS or isinstance(action, argparse._VersionAction):
        return ""
    if isinstance(default, bool):
        return "true" if default else "false"
    return str(default)


def parser_section(parser: argparse.ArgumentParser, title: str, level: int) -> list[str]:
    lines = [f"{'#' * level} `{title}`", ""]
    if parser.description:
        lines += [cell(parser.description.strip().splitlines()[0]), ""]
    subcommands: list[tuple[str, str, argparse.ArgumentParser]] = []
    rows = []
    for group in parser._action_groups:
        for action in group._group_actions:
            if isinstance(action, argparse._HelpAction):
                continue
            if isinstance(action, argparse._SubParsersAction):
                helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
                subcommands += [(name, helps.get(name, ""), sub) for name, sub in action.choices.items()]
                continue
            group_title = "" if group.title in ("options", "optional arguments", "positional arguments") \
                else group.title or ""
            meaning = help_text(action, parser.prog)
            if isinstance(action, argparse._AppendAction | argparse._AppendConstAction | argparse._CountAction) \
                    and "repeatable" not in meaning:
                meaning += " (repeatable)"
            rows.append(f"| `{cell(flag_name(action))}` | {cell(default_text(action))} | {cell(meaning)} | "
                        f"{cell(group_title)} |")
    if rows:
        lines += ["| flag | default | meaning | group |", "|---|---|---|---|", *rows, ""]
    else:
        lines += ["No flags.", ""]
    if subcommands:
        lines += ["| subcommand | what it does |", "|---|---|"]
        lines += [f"| `{name}` | {cell(text)} |" for name, text, _ in subcommands]
        lines.append("")
    for name, _, sub in subcommands:
        delegate = DELEGATED.get(name)
        if delegate is not None and not own_actions(sub):
            sub = delegate()
        lines += parser_section(sub, f"{title} {name}", level + 1)
    return lines


def cli_section() -> list[str]:
    # Defaults some flags read from the environment (DEFAULT_REGISTRY...) must not leak into the file.
    with mock.patch.dict(os.environ, {}, clear=True):
        from imagesync.cli.main import build_parser

        parser = build_parser()
        lines = parser_section(parser, "imagesync", 3)
    return lines


def render() -> str:
    lines = [
        "<!-- Generated by docs/generate_reference.py from crds/*.yaml and the argparse parsers: do not edit. -->",
        "",
        "# Reference",
        "",
        "Every field of the custom resources and every flag of the `imagesync` command line. `kubectl explain`",
        "shows the same field descriptions (for example `kubectl explain imagesyncjob.spec.schedule`). Behaviour",
        "and examples: [operator.md](operator.md) and the README.",
        "",
        "# Custom resources",
        "",
        "Paths are relative to the object; `[]` is an item of a list, `*` the value of any key of a map. "
        "The default column is the one the API server fills in; other defaults are in the description.",
        "",
    ]
    for crd in load_crds():
        lines += crd_section(crd)
    lines += ["# Command line", "", "Flags are listed as the parsers define them; `imagesync FLAGS...` "
              "(flags first, no subcommand) means `imagesync sync FLAGS...`.", ""]
    lines += cli_section()
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write docs/reference.md from the CRDs and the CLI parsers.")
    parser.add_argument("--check", action="store_true", help="exit 1 when docs/reference.md is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not OUTPUT.exists() or OUTPUT.read_text() != text:
            print(f"{OUTPUT.relative_to(ROOT)} is stale: run python docs/generate_reference.py", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
