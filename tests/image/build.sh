#!/usr/bin/env bash
# Builds imagesync's image (the repository's Dockerfile) with podman, without any registry: the base image
# is made from Debian packages with mmdebstrap when missing. Both are cached (see podman-env.sh), so a
# second run without changes takes seconds.
#
# Usage: bash tests/image/build.sh
#   IMAGESYNC_IMAGE       tag to build (default localhost/imagesync:dev)
#   IMAGESYNC_BASE        base image, the Dockerfile's BASE (default localhost/imagesync-base:bookworm,
#                         made here when missing; any other name must already be in podman's storage)
#   IMAGESYNC_SUITE       Debian suite for that base (default bookworm)
#   IMAGESYNC_PODMAN_DIR  podman's config and storage (default ${XDG_CACHE_HOME:-$HOME/.cache}/imagesync-images)
# Output: the image reference as the last (only) line of stdout; progress and timings on stderr.
# Exit status non-zero, with the failed step named on stderr, on any error.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
IMAGE="${IMAGESYNC_IMAGE:-localhost/imagesync:dev}"
SUITE="${IMAGESYNC_SUITE:-bookworm}"
DEFAULT_BASE="localhost/imagesync-base:$SUITE"
BASE="${IMAGESYNC_BASE:-$DEFAULT_BASE}"
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt

say() { echo "build.sh: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }
current_step="setup"
trap 'rc=$?; [ "$rc" -eq 0 ] || say "FAILED (exit $rc) during: $current_step"' EXIT

elapsed() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }
# Runs "$@" with its output on stderr and reports how long it took.
step() {
  local name="$1" started=$EPOCHREALTIME; shift
  current_step="$name"
  say "--> $name"
  "$@" >&2
  say "<-- $name: $(elapsed "$started") s"
}

command -v podman >/dev/null || die "podman is not installed (bash tests/setup-env.sh installs it)"
command -v runc >/dev/null || die "runc is not installed (bash tests/setup-env.sh installs it)"
# shellcheck source=podman-env.sh
source "$ROOT/tests/image/podman-env.sh" || die "cannot set up podman's directory"

# One build at a time per storage (pytest-xdist workers may all call this); the later ones hit the cache.
exec 9>"$IMAGESYNC_PODMAN_DIR/build.lock"
flock 9

make_base() {
  command -v mmdebstrap >/dev/null || die "mmdebstrap is not installed (bash tests/setup-env.sh installs it)"
  local work
  work="$(mktemp -d "$IMAGESYNC_PODMAN_DIR/base.XXXXXX")"
  # python3-venv brings ensurepip's wheels: the Dockerfile makes a venv.
  if mmdebstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
      "$SUITE" "$work/rootfs.tar" \
    && podman import --change 'CMD ["/bin/bash"]' --change 'ENV LANG=C.UTF-8' \
      "$work/rootfs.tar" "$BASE"; then
    rm -rf "$work"
  else
    rm -rf "$work"
    return 1
  fi
}

total_started=$EPOCHREALTIME
if podman image exists "$BASE"; then
  say "base image $BASE: present (cached)"
elif [ "$BASE" = "$DEFAULT_BASE" ]; then
  step "base image $BASE from Debian $SUITE (mmdebstrap + podman import)" make_base
else
  die "base image $BASE is not in podman's storage ($IMAGESYNC_PODMAN_DIR); pull or import it first"
fi

build_args=(--network host --build-arg "BASE=$BASE" -f "$ROOT/Dockerfile")
# pip in the build reaches PyPI through a proxy whose CA only the host's bundle holds.
[ -f "$CA_BUNDLE" ] && build_args+=(-v "$CA_BUNDLE:$CA_BUNDLE:ro")
# The build stage gets a tag too, so that pruning dangling images below keeps the layer cache of the
# current sources and drops only what older sources left (a few hundred MB per source change otherwise).
step "podman build $IMAGE-build (build stage)" podman build "${build_args[@]}" --target build \
  -t "$IMAGE-build" "$ROOT"
step "podman build $IMAGE" podman build "${build_args[@]}" -t "$IMAGE" "$ROOT"
step "prune images older sources left" podman image prune -f

current_step="inspecting $IMAGE"
say "$IMAGE: id $(podman image inspect --format '{{.Id}}' "$IMAGE" | cut -c1-12)," \
    "$(podman image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1 / 1e6}')," \
    "total $(elapsed "$total_started") s"
current_step="done"
echo "$IMAGE"
