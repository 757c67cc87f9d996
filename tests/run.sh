#!/usr/bin/env bash
# The whole test suite, set-up included: `bash tests/run.sh` on a fresh Debian machine.
# Extra arguments go to pytest alone (e.g. `bash tests/run.sh -m slow` for the measurements).
# Without arguments the e2e stages follow, on a cluster built and started by tests/e2e/local-cluster.sh:
# the operator flow with a played kubelet on a control plane alone, then on a real one-node cluster with
# the image built here and deploy/ installed as a user does (IMAGESYNC_SKIP_E2E=1 skips both on a
# developer machine; CI always runs them).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/tests/setup-env.sh"
cd "$ROOT"
echo "==> ruff"
"$VENV/bin/ruff" check .
echo "==> mypy"
"$VENV/bin/mypy"
"$VENV/bin/mypy" bench  # the benchmarks too (not a package: checked as files)
echo "==> pytest"
"$VENV/bin/pytest" -n 2 -q "$@"

if [ "$#" -eq 0 ] && { [ "${CI:-}" = "true" ] || [ "${IMAGESYNC_SKIP_E2E:-}" != "1" ]; }; then
    bash tests/e2e/local-cluster.sh build
    trap 'bash tests/e2e/local-cluster.sh stop' EXIT
    # A test still running after 10 min (none takes 3) has hung: faulthandler prints every thread's stack, so the
    # log says where (a played stage once sat idle after a test, cause unknown).
    e2e() { "$VENV/bin/pytest" -q -p no:cacheprovider -o faulthandler_timeout=600 -m e2e tests/e2e "$@"; }

    echo "==> e2e, played kubelet: control plane only (API server, controllers) on loopback"
    kubeconfig="$(LOCAL_CLUSTER_NODE=0 bash tests/e2e/local-cluster.sh start)"
    KUBECONFIG="$kubeconfig" IMAGESYNC_E2E_PLAY_KUBELET=1 IMAGESYNC_E2E_AUDIT_LOG="$(dirname "$kubeconfig")/audit.log" e2e

    echo "==> e2e, real node: the image, deploy/ (then its cluster-wide overlay) installed with kubectl apply -k, workers on a kubelet"
    image="$(bash tests/image/build.sh)"
    kubeconfig="$(bash tests/e2e/local-cluster.sh start)"
    # shellcheck disable=SC1091
    source "$(dirname "$kubeconfig")/cluster.env"  # IMAGE_REGISTRY, NODE_ADDRESS
    ( source tests/image/podman-env.sh
      podman push -q --tls-verify=false "$image" "$IMAGE_REGISTRY/imagesync:e2e" )
    KUBECONFIG="$kubeconfig" IMAGESYNC_E2E_OPERATOR_IMAGE="$IMAGE_REGISTRY/imagesync:e2e" \
        IMAGESYNC_E2E_NODE_ADDRESS="$NODE_ADDRESS" IMAGESYNC_E2E_AUDIT_LOG="$AUDIT_LOG" e2e
    echo "==> e2e: the cluster stopped leaves nothing behind"
    bash tests/e2e/local-cluster.sh stop
    bash tests/e2e/local-cluster.sh leftovers
fi
