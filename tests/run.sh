#!/usr/bin/env bash
# The whole test suite, set-up included: `bash tests/run.sh` on a fresh Debian machine.
# Extra arguments go to pytest (e.g. `bash tests/run.sh -m slow` for the measurements).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/tests/setup-env.sh"
cd "$ROOT"
echo "==> ruff"
"$VENV/bin/ruff" check operator tests bench
echo "==> mypy"
"$VENV/bin/mypy" operator
echo "==> pytest"
"$VENV/bin/pytest" -n 2 -q "$@"
