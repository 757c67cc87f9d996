"""The Argo CD health checks in docs/argocd/ run by Debian's Lua interpreter (lua5.4) on their test cases.

Argo CD runs a health script with the resource as the global ``obj`` and takes the table it returns
(``hs.status``: Healthy, Progressing, Degraded, Suspended; ``hs.message``). Here each test input (YAML, in
Argo CD's own ``health_test.yaml`` layout) is rendered as a Lua table literal, so no JSON library is
needed on the Lua side. The ImageSyncJob inputs must also be what the operator writes: their kstatus
conditions are recomputed with the operator's own decision function.
"""

from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from imagesync.controller.status import KSTATUS_TYPES, find_condition, with_kstatus
from testbed.system import require_system_part

ROOT = Path(__file__).resolve().parents[2]
ARGOCD = ROOT / "docs" / "argocd"
SCRIPTS = {"imagesyncjob": ARGOCD / "health-imagesyncjob.lua",
           "registrycredential": ARGOCD / "health-registrycredential.lua"}


def lua_literal(value: Any) -> str:
    """A Lua expression for a JSON-like value (lists become 1-based sequences, as Argo CD's decoder makes)."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        assert math.isfinite(value)
        return repr(value)
    if isinstance(value, str):
        # Lua strings are bytes: anything unprintable goes as decimal escapes of its UTF-8 bytes.
        escaped = "".join(c if c.isprintable() and c not in '"\\' else
                          "".join(f"\\{byte:03d}" for byte in c.encode()) for c in value)
        return f'"{escaped}"'
    if isinstance(value, list):
        return "{" + ", ".join(lua_literal(v) for v in value) + "}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"[{lua_literal(str(k))}] = {lua_literal(v)}" for k, v in value.items()
                               if v is not None) + "}"
    raise TypeError(f"not JSON-like: {value!r}")


def lua() -> str:
    found = shutil.which("lua5.4")
    require_system_part(found, "lua5.4", "lua5.4")
    assert found is not None
    return found


def run_health(script: Path, obj: dict[str, Any]) -> tuple[str, str]:
    driver = (f"obj = {lua_literal(obj)}\n"
              f"local hs = assert(loadfile({lua_literal(str(script))}))()\n"
              'io.write(tostring(hs.status), "\\n", tostring(hs.message))\n')
    result = subprocess.run([lua(), "-"], input=driver, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    status, _, message = result.stdout.partition("\n")
    return status, message


def health_tests(kind: str) -> list[dict[str, Any]]:
    tests: list[dict[str, Any]] = yaml.safe_load((ARGOCD / "testdata" / kind / "health_test.yaml").read_text())["tests"]
    return tests


def cases() -> list[Any]:
    return [pytest.param(script, ARGOCD / "testdata" / kind / test["inputPath"], test["healthStatus"],
                         id=f"{kind}/{Path(test['inputPath']).stem}")
            for kind, script in SCRIPTS.items() for test in health_tests(kind)]


@pytest.mark.parametrize(("script", "input_path", "expected"), cases())
def test_health_check(script: Path, input_path: Path, expected: dict[str, str]) -> None:
    obj = yaml.safe_load(input_path.read_text())
    assert run_health(script, obj) == (expected["status"], expected["message"])


def test_every_input_has_a_case_and_every_health_status_is_covered() -> None:
    for kind in SCRIPTS:
        directory = ARGOCD / "testdata" / kind
        assert {Path(t["inputPath"]).name for t in health_tests(kind)} == \
            {p.name for p in directory.glob("*.yaml")} - {"health_test.yaml"}
    assert {t["healthStatus"]["status"] for t in health_tests("imagesyncjob")} == \
        {"Healthy", "Progressing", "Degraded", "Suspended"}


@pytest.mark.parametrize("input_path", sorted(p for p in (ARGOCD / "testdata" / "imagesyncjob").glob("*.yaml")
                                              if p.name != "health_test.yaml"), ids=lambda p: p.stem)
def test_imagesyncjob_inputs_are_what_the_operator_writes(input_path: Path) -> None:
    obj = yaml.safe_load(input_path.read_text())
    conditions = (obj.get("status") or {}).get("conditions") or []
    if not find_condition(conditions, "Ready"):
        return  # no status yet, or an operator that predates the kstatus conditions
    obj["metadata"]["generation"] = obj["status"]["observedGeneration"]  # as it was when written
    again = with_kstatus(obj, {}, "2026-11-27T10:04:12Z")
    for type_ in KSTATUS_TYPES:
        written, recomputed = find_condition(conditions, type_) or {}, find_condition(again["conditions"], type_) or {}
        assert (written["status"], written["reason"], written["message"]) == \
            (recomputed["status"], recomputed["reason"], recomputed["message"]), type_


def test_the_argocd_configmap_carries_the_scripts_as_they_are() -> None:
    config = yaml.safe_load((ARGOCD / "argocd-cm.yaml").read_text())
    data = config["data"]
    assert data["resource.customizations.health.imagesync.dev_ImageSyncJob"] == SCRIPTS["imagesyncjob"].read_text()
    assert data["resource.customizations.health.imagesync.dev_RegistryCredential"] == \
        SCRIPTS["registrycredential"].read_text()


def test_lua_literals_survive_quotes_and_control_characters() -> None:
    text = 'say "hi"\\ back\nnext\ttab ünïcode \x85'
    out = subprocess.run([lua(), "-e", f"io.write({lua_literal(text)})"], capture_output=True, check=True, timeout=30)
    assert out.stdout.decode() == text
    table = lua_literal({"a": [1, {"b": True}], "c": None, "d": 2.5})
    out = subprocess.run([lua(), "-e", f"local t = {table}; io.write(#t.a, t.a[2].b and 'y' or 'n', t.d, "
                                       "tostring(t.c))"], capture_output=True, check=True, timeout=30)
    assert out.stdout.decode() == "2y2.5nil"
