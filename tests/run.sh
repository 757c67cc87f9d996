#!/usr/bin/env bash
# The whole test suite, set-up included: `bash tests/run.sh` on a fresh Debian machine.
# Extra arguments go to pytest (e.g. `bash tests/run.sh -m slow` for the measurements).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/tests/setup-env.sh"
cd "$ROOT"
echo "==> ruff"
"$VENV/bin/ruff" check .
echo "==> mypy"
# Sources live in operator/ but are the package imagesync: give mypy that name through a symlink.
typecheck="$(mktemp -d)"
trap 'rm -rf "$typecheck"' EXIT
ln -s "$ROOT/operator" "$typecheck/imagesync"
MYPYPATH="$typecheck" "$VENV/bin/mypy" -p imagesync
echo "==> pytest"
"$VENV/bin/pytest" -n 2 -q "$@"
