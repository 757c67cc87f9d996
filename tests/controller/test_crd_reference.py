"""`kubectl explain`, admission-time checks and the generated reference (docs/reference.md).

- Every field of both CRDs (properties at every depth, list items, map values) has a description that says
  what it does; values of ``default`` and ``enum`` and the bounds of ``minimum``/``maximum`` are spelled out in
  it, and every spec field states its default (or that it is required).
- The schedule ``pattern`` checks each cron field's shape and range at the API server, also on CI's 1.20, and
  is never stricter than the operator's own check (croniter), which stays the authority.
- CEL rules (``x-kubernetes-validations``) are kept here, out of the CRDs, while CI's control plane is
  Kubernetes 1.20: that API server refuses a CRD carrying them under server-side apply ("failed to create typed
  patch object: ...x-kubernetes-validations: field not declared in schema"), and kubectl's client-side
  validation refuses it too ("unknown field"); only a plain create with validation off gets through, and the
  server then drops the rules. The rules are evaluated here with cel-python against good and bad specs, and
  checked to fit into the CRDs for an API server that has CEL (1.25 or later).
- docs/reference.md is exactly what docs/generate_reference.py writes now.
"""

from __future__ import annotations

import copy
import importlib.util
import random
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import celpy
import jsonschema
import kubernetes_validate
import pytest
import re2
import yaml
from croniter import croniter

from imagesync.controller.spec import SpecError, parse_job_spec

ROOT = Path(__file__).resolve().parents[2]
CRD_FILES = {"ImageSyncJob": "imagesyncjobs.yaml", "RegistryCredential": "registrycredentials.yaml"}
CRDS = {kind: yaml.safe_load((ROOT / "crds" / name).read_text()) for kind, name in CRD_FILES.items()}
MIN_WORDS = 4


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("generate_reference", ROOT / "docs" / "generate_reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GENERATOR = load_generator()


def schema_of(kind: str) -> dict[str, Any]:
    schema: dict[str, Any] = CRDS[kind]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def fields(kind: str) -> list[tuple[str, dict[str, Any]]]:
    return [(path or "(root)", node) for path, node in GENERATOR.schema_nodes(schema_of(kind), "")]


def shown(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def description_problems(path: str, node: dict[str, Any]) -> list[str]:
    text = " ".join(str(node.get("description", "")).split())
    name = re.split(r"[.\[\]*]+", path.rstrip(".*[]"))[-1]
    if len(text.split()) < MIN_WORDS or text.lower().rstrip(".") == name.lower():
        return [f"{path}: no description (or a trivial one: {text!r})"]
    problems = []
    if "default" in node and not re.search(rf"\bdefault:? {re.escape(shown(node['default']))}\b", text, re.I):
        problems.append(f"{path}: the description does not say 'Default {shown(node['default'])}'")
    problems += [f"{path}: the description does not name the allowed value {value!r}"
                 for value in node.get("enum") or [] if str(value) not in text]
    problems += [f"{path}: the description does not give the {key} {node[key]}"
                 for key in ("minimum", "maximum") if key in node and not re.search(rf"\b{node[key]}\b", text)]
    is_spec_property = path.startswith("spec.") and not path.endswith(("[]", ".*"))
    if is_spec_property and not re.search(r"\b(default|required)\b", text, re.I):
        problems.append(f"{path}: a spec field must say its default (or that it is required)")
    return problems


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_every_field_has_a_description_with_its_default_and_allowed_values(kind: str) -> None:
    paths = fields(kind)
    assert len(paths) > 20 and any(p.endswith("[]") for p, _ in paths)  # the walk reaches items and maps
    problems = [problem for path, node in paths for problem in description_problems(path, node)]
    assert problems == [], "\n".join(problems)


def test_the_walk_fails_on_an_undescribed_field() -> None:
    assert description_problems("spec.x", {"type": "string"}) == ["spec.x: no description (or a trivial one: '')"]
    assert description_problems("spec.x", {"type": "string", "description": "x"})
    assert description_problems("spec.n", {"type": "integer", "default": 5, "minimum": 1,
                                           "description": "Number of things to do at once."})
    assert description_problems("status.s", {"type": "string", "enum": ["A", "B"],
                                             "description": "The state of it: A or maybe something else."})
    assert description_problems("spec.n", {"type": "integer", "default": 5, "minimum": 1,
                                           "description": "Number of things at once. Default 5; at least 1."}) == []


def test_explain_covers_every_field_the_operator_documents() -> None:
    """docs/operator.md's spec tables name no field the schema lacks (a rename would leave explain behind)."""
    documented, in_table = set(), False
    for line in (ROOT / "docs" / "operator.md").read_text().splitlines():
        in_table = line.startswith("| spec field") or (in_table and line.startswith("|"))
        found = re.match(r"\| `([A-Za-z.]+)`", line) if in_table else None
        if found:
            documented.add(found.group(1))
    spec_fields = {p.removeprefix("spec.") for kind in CRDS for p, _ in fields(kind) if p.startswith("spec.")}
    assert documented and documented <= spec_fields


# -- the schedule pattern (applies on 1.20) ------------------------------------------------------------------

SCHEDULE = schema_of("ImageSyncJob")["properties"]["spec"]["properties"]["schedule"]["pattern"]
GOOD_SCHEDULES = ["0 3 * * *", "*/5 * * * *", "@daily", "@hourly", "0 0 1,15 * *", "0 0 * * mon-fri",
                  "30 2 * JAN-MAR SUN", "0 0 L * *", "0 0 15W * *", "0 0 * * 5#3", "0 0 ? * *", "00 00 01 01 00",
                  "1-5,*/2 * * * *", "0 22 * * 1-5/2", "0\t3  * * *", "59 23 31 12 7", "0 0 * * L5"]
BAD_SCHEDULES = ["every day", "60 * * * *", "0 24 * * *", "0 0 0 * *", "0 0 32 * *", "0 0 * 13 *", "0 0 * * 8",
                 "-1 * * * *", "0 0 * * 1#6", "@reboot", "* * * *", "H * * * *", "0 0 * jam *",
                 "0 0 * * monday", "0,,5 * * * *", "0 0 * * 1-"]


@pytest.mark.parametrize("schedule", GOOD_SCHEDULES)
def test_good_schedules_pass_the_pattern_and_the_operator(schedule: str) -> None:
    assert re2.search(SCHEDULE, schedule) and re.search(SCHEDULE, schedule)  # Go's regexp is RE2
    parse_job_spec({"images": {"r.io/a/app:1": "t.io/a/app"}, "schedule": schedule})


@pytest.mark.parametrize("schedule", BAD_SCHEDULES)
def test_bad_schedules_are_refused_at_apply_time_and_by_the_operator(schedule: str) -> None:
    assert not re2.search(SCHEDULE, schedule) and not re.search(SCHEDULE, schedule)
    with pytest.raises(SpecError, match=r"spec\.schedule"):
        parse_job_spec({"images": {"r.io/a/app:1": "t.io/a/app"}, "schedule": schedule})


ATOMS = ["*", "?", "R", "L", "l", "W", "0", "00", "1", "5", "7", "8", "12", "13", "15", "23", "24", "29", "31",
         "32", "59", "60", "jan", "Dec", "MON", "sun", "x", "#", "#3", "#6", "/", "/0", "/5", "-", "-5", "-0", "-L",
         ",", "15W", "W5", "L5", "5L", "@"]


def test_the_schedule_pattern_is_never_stricter_than_the_operator() -> None:
    """Random 5-field schedules: whatever croniter accepts, the API server must let through."""
    rnd = random.Random(20261127)
    refused, checked = [], 0
    for _ in range(40_000):
        parts = ["*"] * 5
        for _ in range(rnd.choice((1, 1, 2, 3))):
            parts[rnd.randrange(5)] = "".join(rnd.choice(ATOMS) for _ in range(rnd.randint(1, 4)))
        schedule = " ".join(parts)
        matched = bool(re2.search(SCHEDULE, schedule))
        assert matched == bool(re.search(SCHEDULE, schedule)), schedule  # jsonschema (Python) agrees with RE2
        if croniter.is_valid(schedule):
            checked += 1
            if not matched:
                refused.append(schedule)
    assert checked > 1500 and refused == []


# -- CEL rules, for an API server with CEL ------------------------------------------------------------------

# The rules ship as a kustomize patch for CEL-capable API servers (examples/kustomize/cel-validation/): not
# in the CRDs, see the module docstring. Kubernetes' Pod validation refuses these tolerations (a Job with them
# cannot be created), so rejecting them at apply time is true to what the operator can run.
CEL_PATCH = ROOT / "examples" / "kustomize" / "cel-validation" / "tolerations-rules.yaml"
(_CEL_OP,) = yaml.safe_load(CEL_PATCH.read_text())
assert _CEL_OP["path"] == ("/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/worker/properties/"
                           "tolerations/items/x-kubernetes-validations")  # where the path below points
CEL_RULES: dict[tuple[str, str], list[dict[str, str]]] = {
    ("ImageSyncJob", "spec.worker.tolerations[]"): _CEL_OP["value"]}
# Not expressible (and so not proposed): parallelism <= the number of rules. spec.images' values are
# "string or list", so the schema leaves them untyped (x-kubernetes-preserve-unknown-fields) and the API server
# does not expose spec.images to CEL at all (a rule naming it does not compile). Nor would it be true: the
# images are sharded after the rules expand (one `repo` rule may be 200 tags), so parallelism 4 over one rule
# is a valid spec the operator runs.

GOOD_TOLERATIONS = [{"key": "io", "operator": "Exists", "effect": "NoSchedule"}, {"operator": "Exists"},
                    {"key": "io", "value": "yes", "effect": "NoExecute", "tolerationSeconds": 30},
                    {"key": "io", "operator": "Equal", "value": "yes"},
                    {"key": "io", "operator": "Exists", "value": ""}]
BAD_TOLERATIONS = [{"key": "io", "operator": "Exists", "value": "yes"}, {"value": "yes"},
                   {"operator": "Equal", "value": "x"}, {"key": "io", "tolerationSeconds": 30},
                   {"key": "io", "effect": "NoSchedule", "tolerationSeconds": 30}]


def cel_holds(rule: str, value: Any) -> bool:
    env = celpy.Environment()
    result = env.program(env.compile(rule)).evaluate({"self": celpy.json_to_cel(value)})
    assert isinstance(result, celpy.celtypes.BoolType), (rule, result)
    return bool(result)


def violations(kind: str, path: str, value: Any) -> list[str]:
    return [r["message"] for r in CEL_RULES[(kind, path)] if not cel_holds(r["rule"], value)]


@pytest.mark.parametrize("toleration", GOOD_TOLERATIONS)
def test_cel_rules_accept_good_tolerations(toleration: dict[str, Any]) -> None:
    assert violations("ImageSyncJob", "spec.worker.tolerations[]", toleration) == []


@pytest.mark.parametrize("toleration", BAD_TOLERATIONS)
def test_cel_rules_reject_bad_tolerations(toleration: dict[str, Any]) -> None:
    assert len(violations("ImageSyncJob", "spec.worker.tolerations[]", toleration)) == 1


def node_at(schema: dict[str, Any], path: str) -> dict[str, Any]:
    node = schema
    for part in re.findall(r"[^.\[\]]+|\[\]", path):
        node = node["items"] if part == "[]" else node["properties"][part]
    return node


def with_cel_rules(kind: str) -> dict[str, Any]:
    crd = copy.deepcopy(CRDS[kind])
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for (rule_kind, path), rules in CEL_RULES.items():
        if rule_kind == kind:
            node_at(schema, path).setdefault("x-kubernetes-validations", []).extend(copy.deepcopy(rules))
    return crd


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_cel_rules_fit_the_crds_for_a_cel_capable_api_server(kind: str) -> None:
    crd = with_cel_rules(kind)
    kubernetes_validate.validate(crd, kubernetes_validate.latest_version(), strict=True)
    for path, _ in CEL_RULES.items():
        if path[0] == kind:
            node_at(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"], path[1])  # the path exists


def test_the_crds_carry_no_cel_rules_while_ci_runs_kubernetes_1_20() -> None:
    text = "".join((ROOT / "crds" / name).read_text() for name in CRD_FILES.values())
    assert "x-kubernetes-validations" not in text, "a 1.20 API server refuses these CRDs (module docstring)"


@pytest.mark.parametrize("toleration", BAD_TOLERATIONS)
def test_without_the_rules_such_tolerations_pass_the_schema_but_not_the_operator(toleration: Any) -> None:
    """The gap the rules would close: today the API server takes these tolerations, so the operator refuses
    them itself (controller/spec.py), before Kubernetes' Pod validation would refuse the worker Job."""
    spec = {"images": {"r.io/a/app:1": "t.io/a/app"}, "worker": {"tolerations": [toleration]}}
    jsonschema.validate({"apiVersion": "imagesync.dev/v1alpha1", "kind": "ImageSyncJob", "metadata": {"name": "j"},
                         "spec": spec}, schema_of("ImageSyncJob"))
    with pytest.raises(SpecError, match=r"^spec\.worker\.tolerations\[0\]\."):
        parse_job_spec(spec)


# -- the generated reference -------------------------------------------------------------------------------


def test_the_reference_is_up_to_date() -> None:
    expected = GENERATOR.render()
    actual = (ROOT / "docs" / "reference.md").read_text()
    assert actual == expected, "docs/reference.md is stale: run python docs/generate_reference.py"


def test_the_reference_lists_every_field_and_every_flag() -> None:
    text = GENERATOR.render()
    for kind in CRDS:
        for path, _ in fields(kind):
            if path != "(root)":
                assert f"| `{path}` |" in text, path
    for flag in ("--auth", "--images", "--proc", "--output", "--worker-image", "--kubeconfig", "--log-format"):
        assert f"`{flag}" in text, flag
    for heading in ("`imagesync sync`", "`imagesync worker`", "`imagesync operator`"):
        assert heading in text
