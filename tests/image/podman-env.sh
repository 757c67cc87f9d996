# Source me: podman/buildah settings of our own for building and running imagesync's image on this kind of
# machine (root without CAP_SYS_RESOURCE, cgroup v1 hybrid). Nothing goes to /var/lib/containers or /run/libpod.
#
#   IMAGESYNC_PODMAN_DIR  config, storage and run state (default ${XDG_CACHE_HOME:-$HOME/.cache}/imagesync-images);
#                         kept between runs, so the base image and build layers are cached on one machine.
# Exports IMAGESYNC_PODMAN_DIR, CONTAINERS_CONF and CONTAINERS_STORAGE_CONF. Changes no shell options.

IMAGESYNC_PODMAN_DIR="${IMAGESYNC_PODMAN_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/imagesync-images}"

_imagesync_podman_env() {
  local dir="$IMAGESYNC_PODMAN_DIR" boot
  mkdir -p "$dir/storage" || return 1
  # Run state (locks, mount counts, container state) must not outlive a reboot; it is not on a tmpfs here.
  boot="$(cat /proc/sys/kernel/random/boot_id 2>/dev/null || true)"
  if [ "$(cat "$dir/boot_id" 2>/dev/null)" != "$boot" ]; then
    rm -rf "$dir/run" && printf '%s\n' "$boot" > "$dir/boot_id" || return 1
  fi
  mkdir -p "$dir/run/libpod" || return 1
  # The hard open-files limit is 20000 and RLIMIT_NPROC cannot be raised: podman's default ulimits make
  # the runtime's setrlimit fail. crun also rejects cgroup v1 hybrid mode; runc handles it.
  # Written to a temporary file and renamed: a podman started meanwhile never reads half a file.
  cat > "$dir/containers.conf.$$" <<CONF || return 1
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
tmp_dir = "$dir/run/libpod"
CONF
  mv -f "$dir/containers.conf.$$" "$dir/containers.conf" || return 1
  # Native overlay works here; fuse-overlayfs is not needed.
  cat > "$dir/storage.conf.$$" <<CONF || return 1
[storage]
driver = "overlay"
graphroot = "$dir/storage"
runroot = "$dir/run/storage"
CONF
  mv -f "$dir/storage.conf.$$" "$dir/storage.conf"
}

if _imagesync_podman_env; then
  export IMAGESYNC_PODMAN_DIR
  export CONTAINERS_CONF="$IMAGESYNC_PODMAN_DIR/containers.conf"
  export CONTAINERS_STORAGE_CONF="$IMAGESYNC_PODMAN_DIR/storage.conf"
else
  echo "podman-env.sh: cannot set up $IMAGESYNC_PODMAN_DIR" >&2
  false
fi
unset -f _imagesync_podman_env
