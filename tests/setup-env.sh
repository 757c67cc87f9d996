#!/usr/bin/env bash
# Installs what imagesync's tests and demo need on a fresh Debian machine:
# system packages (docker-registry, skopeo, htpasswd, strace; podman and friends plus mmdebstrap to build the
# image, see tests/image/), a virtualenv at .venv, the project with its test extras pinned by constraints.txt.
# Idempotent: a second run only checks. Source it or run it; it leaves VENV set when sourced.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"

need_apt=()
command -v docker-registry >/dev/null 2>&1 || need_apt+=(docker-registry)
command -v skopeo >/dev/null 2>&1 || need_apt+=(skopeo)
command -v htpasswd >/dev/null 2>&1 || need_apt+=(apache2-utils)
command -v strace >/dev/null 2>&1 || need_apt+=(strace)
command -v lua5.4 >/dev/null 2>&1 || need_apt+=(lua5.4)  # Argo CD health checks (tests/controller/test_argocd_health.py)
# The image build and its test (tests/image): podman runs containers with runc (crun fails on this kind of
# machine, see tests/image/podman-env.sh), mmdebstrap makes the base image without a registry.
for tool in podman buildah runc crun mmdebstrap conmon; do
  command -v "$tool" >/dev/null 2>&1 || need_apt+=("$tool")
done
[ -x /usr/bin/newuidmap ] || need_apt+=(uidmap)
[ -x /usr/lib/cni/bridge ] || need_apt+=(containernetworking-plugins)
[ -x /usr/sbin/iptables ] || need_apt+=(iptables)
if [ "${#need_apt[@]}" -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "==> installing Debian packages: ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating virtualenv $VENV"
  "$PY" -m venv "$VENV"
fi
# The stamp holds a hash of what decides the install: a change to either file re-installs.
stamp="$VENV/.imagesync-installed"
wanted="$(cat "$ROOT/pyproject.toml" "$ROOT/constraints.txt" | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
  echo "==> installing imagesync with test extras (pinned by constraints.txt)"
  "$VENV/bin/pip" install -q --upgrade pip >/dev/null 2>&1 || true
  if ! out="$("$VENV/bin/pip" install -q -c "$ROOT/constraints.txt" -e "$ROOT[test]" 2>&1)"; then
    printf '%s\n==> pip install failed\n' "$out" >&2
    exit 1
  fi
  printf '%s\n' "$out" | grep -v -e '^WARNING: Location' -e '^$' || true
  "$VENV/bin/python" -c "import imagesync, kopf, kmock" >/dev/null
  echo "$wanted" > "$stamp"
fi
export VENV
