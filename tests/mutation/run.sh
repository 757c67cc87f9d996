#!/usr/bin/env bash
# Mutation testing of the pure modules (not in CI; docs/reliability.md, "Mutation testing", has the last score).
#
#   bash tests/mutation/run.sh            # installs mutmut into .venv if missing, runs, prints the score
#   MUTMUT_WORKDIR=/tmp/x bash tests/mutation/run.sh
#
# mutmut copies the code it mutates into ./mutants and expects an importable src/ layout, so the run happens
# in a scratch directory (default /tmp/imagesync-mutation): operator/imagesync is copied to src/imagesync,
# tests/ as it is, and pyproject.toml with a [tool.mutmut] section appended. The working tree is not touched.
# The tests are the fast unit tests of those modules (no registry, no cluster); mutmut runs, for each mutant,
# only the tests that cover the mutated function.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=${MUTMUT_WORKDIR:-/tmp/imagesync-mutation}
PY="$ROOT/.venv/bin/python"
MUTMUT_VERSION=3.8.1  # a dev tool only: not in pyproject's extras nor constraints.txt

if ! "$PY" -c "import mutmut, sys; sys.exit(mutmut.__version__ != '$MUTMUT_VERSION')" 2>/dev/null; then
    "$ROOT/.venv/bin/pip" install --quiet "mutmut==$MUTMUT_VERSION"
fi

# controller/status.py (about 1,250 mutants, most in its kstatus messages) does not fit the 15-minute budget on
# 2 cores; name modules as arguments to mutate others: bash tests/mutation/run.sh controller/status.py
if [ $# -gt 0 ]; then MUTATED=("$@"); else MUTATED=(
    engine/tagfilter.py
    engine/reference.py
    controller/reports.py
); fi
TESTS=(
    tests/engine/test_tagfilter.py
    tests/engine/test_rules.py
    tests/engine/test_rule_regex_bounds.py
    tests/engine/test_config.py
    tests/controller/test_decisions.py
    tests/controller/test_kstatus.py
    tests/controller/test_reports.py
    tests/controller/test_report_log_text.py
    tests/controller/test_report_rbac.py
    tests/controller/test_prune_status.py
    tests/controller/test_dry_run_status.py
    tests/controller/test_signature_keys.py
    tests/controller/test_schemas.py
    tests/controller/test_status_fold_counts.py
    tests/controller/test_cr_wiring.py
    tests/controller/test_argocd_health.py
)

rm -rf "$WORK"
mkdir -p "$WORK/src"
cp -r "$ROOT/operator/imagesync" "$WORK/src/imagesync"
cp -r "$ROOT/tests" "$WORK/tests"
find "$WORK" -name __pycache__ -prune -exec rm -rf {} +
# Some tests read the CRDs, examples and docs relative to the repository root.
for extra in crds deploy examples docs README.md; do
    [ -e "$ROOT/$extra" ] && ln -s "$ROOT/$extra" "$WORK/$extra"
done
cp "$ROOT/pyproject.toml" "$WORK/pyproject.toml"
{
    echo
    echo "[tool.mutmut]"
    echo "source_paths = [\"src/\"]"
    printf 'only_mutate = [%s]\n' "$(printf '"src/imagesync/%s", ' "${MUTATED[@]}" | sed 's/, $//')"
    printf 'pytest_add_cli_args_test_selection = [%s]\n' "$(printf '"%s", ' "${TESTS[@]}" | sed 's/, $//')"
    echo 'pytest_add_cli_args = ["-p", "no:cacheprovider", "-p", "no:xdist", "-p", "no:randomly"]'
    echo "also_copy = [\"crds/\", \"deploy/\", \"examples/\", \"docs/\", \"README.md\"]"
} >> "$WORK/pyproject.toml"

cd "$WORK"
export PATH="$ROOT/.venv/bin:$PATH"
started=$(date +%s)
mutmut run --max-children "${MUTMUT_CHILDREN:-2}" || true
echo "mutmut run took $(( $(date +%s) - started )) s"
mutmut results --all true > results.txt || true
echo "== score (killed / survived / other / total)"
"$PY" - <<'PY'
import collections, re
counts = collections.Counter()
for line in open("results.txt"):
    match = re.match(r"\s*(\S+): (\w[\w ]*)$", line.rstrip())
    if match:
        counts[match.group(2)] += 1
total = sum(counts.values())
print(dict(counts), "total", total)
killed = counts.get("killed", 0)
if total:
    print(f"killed {killed} / survived {counts.get('survived', 0)} / total {total}: score {100 * killed / total:.1f} %")
PY
echo "survivors: (cd $WORK && mutmut results) ; one mutant's diff: mutmut show <name>"
