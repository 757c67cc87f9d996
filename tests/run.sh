#!/usr/bin/env bash
# The whole test suite, set-up included: `bash tests/run.sh` on a fresh Debian machine.
# Extra arguments go to pytest alone (e.g. `bash tests/run.sh -m slow` for the measurements).
# Without arguments the e2e stage follows: the operator flow against a real control plane built and
# started on loopback by tests/e2e/local-cluster.sh (IMAGESYNC_SKIP_E2E=1 skips it on a developer
# machine; CI always runs it).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/tests/setup-env.sh"
cd "$ROOT"
echo "==> ruff"
"$VENV/bin/ruff" check .
echo "==> mypy"
"$VENV/bin/mypy"
echo "==> pytest"
"$VENV/bin/pytest" -n 2 -q "$@"

if [ "$#" -eq 0 ] && { [ "${CI:-}" = "true" ] || [ "${IMAGESYNC_SKIP_E2E:-}" != "1" ]; }; then
    echo "==> e2e: real kube-apiserver + controller-manager on loopback"
    bash tests/e2e/local-cluster.sh build
    trap 'bash tests/e2e/local-cluster.sh stop' EXIT
    kubeconfig="$(bash tests/e2e/local-cluster.sh start)"
    KUBECONFIG="$kubeconfig" IMAGESYNC_E2E_PLAY_KUBELET=1 "$VENV/bin/pytest" -q -m e2e tests/e2e
fi
