#!/usr/bin/env bash
# A real one-node Kubernetes cluster on this machine, for tests/e2e, without Docker or any outside registry:
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler, and a node: containerd + runc + bridge CNI,
# kubelet and kube-proxy (iptables mode). Pods get addresses on a bridge this script creates
# (imagesync0, 10.244.77.0/24, the host is 10.244.77.1); the API server listens on the bridge's gateway
# address and advertises it, so pods reach it through the `kubernetes` Service as in-cluster clients do.
# A docker-registry on the gateway address serves the images the node runs: the sandbox ("pause") image,
# compiled from the source tree, and whatever the caller pushes there (the worker image).
#
# The binaries are built from Debian's `kubernetes` source package (bookworm: 1.20.2, the newest complete
# Kubernetes source Debian ships). Kubernetes 1.20 predates Indexed Jobs, which is itself worth testing
# against: the API server drops spec.completionMode, and the operator must notice.
#
#   bash tests/e2e/local-cluster.sh build   # once: about 25 min on 2 cores, into $K8S_HOME
#   bash tests/e2e/local-cluster.sh start   # prints the KUBECONFIG path; $K8S_HOME/run/cluster.env has
#                                           # IMAGE_REGISTRY (host:port), NODE_ADDRESS and AUDIT_LOG (every
#                                           # request of a ServiceAccount) for tests
#   LOCAL_CLUSTER_NODE=0 bash tests/e2e/local-cluster.sh start   # control plane only, on 127.0.0.1
#                                           # (no kubelet: run the suite with IMAGESYNC_E2E_PLAY_KUBELET=1)
#   bash tests/e2e/local-cluster.sh stop    # removes all it made: processes, mounts, network namespaces,
#                                           # the bridge, iptables chains, cgroups, pod logs
#   bash tests/e2e/local-cluster.sh leftovers   # after stop: fails naming anything left behind
set -euo pipefail

K8S_HOME=${K8S_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/imagesync-k8s}
RUN=$K8S_HOME/run
SOURCE_VERSION=1.20.5+really1.20.2-1.1+deb12u1

NODE=${LOCAL_CLUSTER_NODE:-1}
BRIDGE=imagesync0
POD_CIDR=10.244.77.0/24
GATEWAY=10.244.77.1
SERVICE_CIDR=10.96.0.0/24
KUBERNETES_SERVICE_IP=10.96.0.1
NODE_NAME=imagesync-e2e-node

free_port() {  # on the given address (default loopback)
    python3 -c 'import socket, sys; s = socket.socket(); s.bind((sys.argv[1], 0)); print(s.getsockname()[1])' \
        "${1:-127.0.0.1}"
}

spawn() {  # spawn NAME COMMAND...: runs it in the background, logs to $RUN/NAME.log, records its PID
    local name=$1; shift
    "$@" >"$RUN/$name.log" 2>&1 &
    echo $! >"$RUN/$name.pid"
}

wait_for() {  # wait_for WHAT SECONDS COMMAND...
    local what=$1 seconds=$2 i; shift 2
    for i in $(seq "$((seconds * 2))"); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.5
    done
    echo "local-cluster: timed out waiting for $what (logs in $RUN)" >&2
    return 1
}

# Bump when the build changes: a stamp with another value rebuilds.
BUILD_ID="1.20.2 reflect2-1.0.2 kube-openapi-nil-only node pause"

# The control plane, and a node: scheduler, kubelet, kube-proxy.
COMPONENTS="cmd/kube-apiserver cmd/kube-controller-manager cmd/kube-scheduler cmd/kubelet cmd/kube-proxy"

# What start needs at run time: the node's runtime and network, the image registry, kubectl's peers.
RUNTIME_PACKAGES="etcd-server containerd runc containernetworking-plugins iptables conntrack iproute2 skopeo
docker-registry openssl curl"

packages() {  # apt-get install what is missing (dpkg -s is quick when all is there)
    local missing=() package sudo=""
    for package in "$@"; do dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package"); done
    [ "${#missing[@]}" -eq 0 ] && return 0
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
        || { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq \
                 --no-install-recommends "${missing[@]}" >/dev/null; }
}

build() {
    # shellcheck disable=SC2086
    packages $RUNTIME_PACKAGES
    if [ -x "$K8S_HOME/bin/kube-apiserver" ] && [ "$(cat "$K8S_HOME/bin/build-id" 2>/dev/null)" = "$BUILD_ID" ]; then
        return 0
    fi
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    export DEBIAN_FRONTEND=noninteractive
    if [ -z "$(apt-cache showsrc kubernetes 2>/dev/null)" ]; then
        $sudo tee /etc/apt/sources.list.d/imagesync-e2e-src.sources >/dev/null <<'EOF'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
        $sudo apt-get update -qq
    fi
    $sudo apt-get install -y -qq --no-install-recommends golang-go etcd-server rsync jq openssl curl \
        golang-github-modern-go-reflect2-dev gcc libc6-dev >/dev/null
    mkdir -p "$K8S_HOME/src" "$K8S_HOME/bin"
    cd "$K8S_HOME/src"
    [ -d kubernetes-1.20.2 ] || { apt-get source -qq --download-only "kubernetes=$SOURCE_VERSION"
                                  tar xzf kubernetes_1.20.5+really1.20.2.orig.tar.gz; }
    cd kubernetes-1.20.2
    # reflect2 1.0.1 (vendored) crashes under Go >= 1.18; Debian's 1.0.2 is the fixed release.
    rm -rf vendor/github.com/modern-go/reflect2
    cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 vendor/github.com/modern-go/reflect2
    rm -f vendor/github.com/modern-go/reflect2/go.mod
    # Under Go >= 1.18 this zero-value test also matches "", so the API server rejected every empty
    # string in a custom resource as null; later kube-openapi releases test for nil only, as here.
    sed -i 's/if data == nil || reflect.DeepEqual(reflect.Zero(reflect.TypeOf(data)), reflect.ValueOf(data)) {/if data == nil {/' \
        vendor/k8s.io/kube-openapi/pkg/validation/validate/type.go vendor/github.com/go-openapi/validate/type.go
    mkdir -p .go/src/k8s.io && ln -sfn ../../.. .go/src/k8s.io/kubernetes
    GOPATH=$PWD/.go CGO_ENABLED=0 HOME=$K8S_HOME \
        make WHAT="$COMPONENTS" GOLDFLAGS="-s -w"
    local component
    for component in $COMPONENTS; do cp "_output/bin/${component#cmd/}" "$K8S_HOME/bin/"; done
    # The sandbox ("pause") image's one binary, from the same tree: no image registry is reachable.
    gcc -Os -static -o "$K8S_HOME/bin/pause" build/pause/linux/pause.c
    echo "$BUILD_ID" >"$K8S_HOME/bin/build-id"
}

certificates() {  # a CA, the API server's serving cert, its client cert for kubelets, the SA key
    local address=$1
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=imagesync-e2e-ca \
        -keyout ca.key -out ca.crt 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj /CN=kube-apiserver -keyout server.key -out server.csr 2>/dev/null
    # Pods reach the API server as https://kubernetes.default.svc (10.96.0.1), the host at $address.
    printf 'subjectAltName=IP:127.0.0.1,IP:%s,IP:%s,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\n' \
        "$address" "$KUBERNETES_SERVICE_IP" >san.ext
    openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile san.ext \
        -out server.crt 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/O=system:masters/CN=kube-apiserver-kubelet-client" \
        -keyout kubelet-client.key -out kubelet-client.csr 2>/dev/null
    openssl x509 -req -in kubelet-client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
        -out kubelet-client.crt 2>/dev/null
    openssl genrsa -out sa.key 2048 2>/dev/null && openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
}

control_plane() {  # etcd, kube-apiserver, kube-controller-manager (and kube-scheduler with a node)
    local address=$1 token etcd_port etcd_peer api_port
    token=$(openssl rand -hex 24)
    printf '%s,admin,admin,system:masters\n' "$token" >tokens.csv
    # Every request a ServiceAccount makes (the operator's, the workers'), for the e2e RBAC check.
    cat >audit-policy.yaml <<EOF
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
    userGroups: ["system:serviceaccounts"]
  - level: None
EOF
    etcd_port=$(free_port) etcd_peer=$(free_port) api_port=$(free_port "$address")
    spawn etcd etcd --data-dir "$RUN/etcd" --listen-client-urls "http://127.0.0.1:$etcd_port" \
        --advertise-client-urls "http://127.0.0.1:$etcd_port" --listen-peer-urls "http://127.0.0.1:$etcd_peer"
    spawn apiserver "$K8S_HOME/bin/kube-apiserver" --etcd-servers "http://127.0.0.1:$etcd_port" \
        --bind-address "$address" --advertise-address "$address" --secure-port "$api_port" --insecure-port 0 \
        --tls-cert-file server.crt --tls-private-key-file server.key --client-ca-file ca.crt \
        --kubelet-client-certificate kubelet-client.crt --kubelet-client-key kubelet-client.key \
        --kubelet-preferred-address-types InternalIP \
        --token-auth-file tokens.csv --authorization-mode RBAC \
        --service-account-issuer https://kubernetes.default.svc --api-audiences https://kubernetes.default.svc \
        --service-account-key-file sa.pub --service-account-signing-key-file sa.key \
        --service-cluster-ip-range "$SERVICE_CIDR" \
        --audit-policy-file audit-policy.yaml --audit-log-path "$RUN/audit.log"
    cat >kubeconfig <<EOF
apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster: {server: "https://$address:$api_port", certificate-authority: "$RUN/ca.crt"}
users:
- name: admin
  user: {token: "$token"}
contexts:
- name: e2e
  context: {cluster: e2e, user: admin}
current-context: e2e
EOF
    wait_for "the API server" 60 curl -fsS --cacert ca.crt -H "Authorization: Bearer $token" \
        "https://$address:$api_port/readyz"
    spawn controller-manager "$K8S_HOME/bin/kube-controller-manager" --kubeconfig kubeconfig --leader-elect=false \
        --bind-address 127.0.0.1 --secure-port 0 --port 0 \
        --service-account-private-key-file sa.key --root-ca-file ca.crt --controllers '*'
    if [ "$NODE" = 1 ]; then
        spawn scheduler "$K8S_HOME/bin/kube-scheduler" --kubeconfig kubeconfig --leader-elect=false \
            --bind-address 127.0.0.1 --secure-port 0 --port 0
    fi
}

pause_image() {  # the sandbox image: the source tree's pause.c, statically linked, as a one-layer OCI image
    local layout=$RUN/pause-oci
    python3 - "$K8S_HOME/bin/pause" "$layout" <<'EOF'
import hashlib, io, json, os, sys, tarfile
binary, layout = sys.argv[1:]
blobs = os.path.join(layout, "blobs", "sha256")
os.makedirs(blobs)
def blob(data: bytes, media_type: str) -> dict:
    digest = hashlib.sha256(data).hexdigest()
    with open(os.path.join(blobs, digest), "wb") as f:
        f.write(data)
    return {"mediaType": media_type, "digest": "sha256:" + digest, "size": len(data)}
layer = io.BytesIO()
with tarfile.open(fileobj=layer, mode="w") as tar:
    info = tar.gettarinfo(binary, arcname="pause")
    info.uid = info.gid = 0; info.uname = info.gname = ""; info.mtime = 0; info.mode = 0o755
    with open(binary, "rb") as f:
        tar.addfile(info, f)
diff_id = "sha256:" + hashlib.sha256(layer.getvalue()).hexdigest()
config = {"architecture": "amd64", "os": "linux",
          "config": {"Entrypoint": ["/pause"], "User": "65535:65535"},
          "rootfs": {"type": "layers", "diff_ids": [diff_id]}}
manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": blob(json.dumps(config).encode(), "application/vnd.oci.image.config.v1+json"),
            "layers": [blob(layer.getvalue(), "application/vnd.oci.image.layer.v1.tar")]}
index = {"schemaVersion": 2, "manifests": [blob(json.dumps(manifest).encode(),
                                                "application/vnd.oci.image.manifest.v1+json")]}
with open(os.path.join(layout, "index.json"), "w") as f:
    json.dump(index, f)
with open(os.path.join(layout, "oci-layout"), "w") as f:
    json.dump({"imageLayoutVersion": "1.0.0"}, f)
EOF
    skopeo copy -q --dest-tls-verify=false "oci:$layout" "docker://$1"
}

image_registry() {  # docker-registry on the gateway address: where the node pulls its images from
    local port
    port=$(free_port "$GATEWAY")
    mkdir -p "$RUN/registry"
    cat >"$RUN/registry/config.yml" <<EOF
version: 0.1
log: {level: warn}
storage: {filesystem: {rootdirectory: $RUN/registry/storage}}
http: {addr: "$GATEWAY:$port"}
EOF
    spawn registry docker-registry serve "$RUN/registry/config.yml"
    wait_for "the image registry" 30 curl -fsS "http://$GATEWAY:$port/v2/"
    echo "$GATEWAY:$port"
}

node() {  # bridge, containerd, CNI, kubelet, kube-proxy
    local registry=$1 i
    ip netns list 2>/dev/null | awk '{print $1}' | sort >"$RUN/netns.before"
    ls /var/log/pods 2>/dev/null | sort >"$RUN/podlogs.before" || true
    echo 1 >/proc/sys/net/ipv4/ip_forward
    mkdir -p "$RUN/cni/net.d" "$RUN/containerd"
    cat >"$RUN/cni/net.d/10-imagesync-e2e.conflist" <<EOF
{"cniVersion": "0.4.0", "name": "imagesync-e2e", "plugins": [
  {"type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false,
   "ipam": {"type": "host-local", "subnet": "$POD_CIDR", "routes": [{"dst": "0.0.0.0/0"}],
            "dataDir": "$RUN/cni/ipam"}}]}
EOF
    cat >"$RUN/containerd/config.toml" <<EOF
version = 2
root = "$RUN/containerd/root"
state = "$RUN/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "$RUN/containerd/containerd.sock"
[ttrpc]
  address = "$RUN/containerd/containerd.sock.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$registry/pause:3.4"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  # The sandbox's oom_score_adj (-998) needs CAP_SYS_RESOURCE, which this machine does not grant.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$RUN/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."$registry"]
    endpoint = ["http://$registry"]
EOF
    spawn containerd containerd --config "$RUN/containerd/config.toml"
    wait_for containerd 30 ctr --address "$RUN/containerd/containerd.sock" version
    local kubelet_port healthz_port
    kubelet_port=$(free_port "$GATEWAY") healthz_port=$(free_port)
    cat >"$RUN/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $GATEWAY
port: $kubelet_port
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $healthz_port
cgroupDriver: cgroupfs
failSwapOn: false
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $RUN/ca.crt}
authorization: {mode: Webhook}
resolvConf: /etc/resolv.conf
serializeImagePulls: false
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%}
imageGCHighThresholdPercent: 100
EOF
    spawn kubelet "$K8S_HOME/bin/kubelet" --config "$RUN/kubelet.yaml" --kubeconfig "$RUN/kubeconfig" \
        --container-runtime=remote --container-runtime-endpoint="unix://$RUN/containerd/containerd.sock" \
        --root-dir "$RUN/kubelet" --cert-dir "$RUN/kubelet-pki" --hostname-override "$NODE_NAME" \
        --node-ip "$GATEWAY"
    spawn kube-proxy "$K8S_HOME/bin/kube-proxy" --kubeconfig "$RUN/kubeconfig" --proxy-mode iptables \
        --hostname-override "$NODE_NAME" --cluster-cidr "$POD_CIDR" --conntrack-max-per-core 0 \
        --healthz-bind-address "127.0.0.1:$(free_port)" --metrics-bind-address "127.0.0.1:$(free_port)"
    local kubectl=(kubectl --kubeconfig "$RUN/kubeconfig")
    wait_for "node $NODE_NAME Ready" 120 "${kubectl[@]}" wait --for=condition=Ready "node/$NODE_NAME" --timeout=1s
}

start() {
    [ -x "$K8S_HOME/bin/kube-apiserver" ] || { echo "run '$0 build' first" >&2; exit 2; }
    stop >/dev/null 2>&1 || true
    rm -rf "$RUN" && mkdir -p "$RUN/etcd" && cd "$RUN"
    local address=127.0.0.1 registry=""
    if [ "$NODE" = 1 ]; then
        [ -x "$K8S_HOME/bin/kubelet" ] || { echo "run '$0 build' first (no kubelet)" >&2; exit 2; }
        for tool in containerd runc ctr skopeo docker-registry iptables kubectl; do
            command -v "$tool" >/dev/null || { echo "local-cluster: $tool is not installed" >&2; exit 2; }
        done
        [ -x /usr/lib/cni/bridge ] || { echo "local-cluster: containernetworking-plugins not installed" >&2; exit 2; }
        address=$GATEWAY
    fi
    certificates "$address"
    if [ "$NODE" = 1 ]; then
        ip link show "$BRIDGE" >/dev/null 2>&1 && { echo "local-cluster: $BRIDGE exists; run stop" >&2; exit 2; }
        ip link add "$BRIDGE" type bridge && ip addr add "$GATEWAY/24" dev "$BRIDGE" && ip link set "$BRIDGE" up
        registry=$(image_registry)
        pause_image "$registry/pause:3.4"
    fi
    control_plane "$address"
    if [ "$NODE" = 1 ]; then
        node "$registry"
    fi
    printf 'KUBECONFIG=%s\nIMAGE_REGISTRY=%s\nNODE_ADDRESS=%s\nAUDIT_LOG=%s\n' "$RUN/kubeconfig" "$registry" \
        "$([ "$NODE" = 1 ] && echo "$GATEWAY")" "$RUN/audit.log" >"$RUN/cluster.env"
    echo "$RUN/kubeconfig"
}

stop_process() {
    local name=$1 pid i
    [ -f "$RUN/$name.pid" ] || return 0
    pid=$(cat "$RUN/$name.pid")
    kill "$pid" 2>/dev/null || true
    for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$RUN/$name.pid"
}

remove_iptables_chains() {  # every KUBE-* / CNI-* chain kube-proxy, the kubelet and CNI made, and jumps to them
    local table rule chain
    for table in nat filter mangle; do
        iptables -t "$table" -S 2>/dev/null | grep -E -- '-j (KUBE-|CNI-)' | grep -vE '^-A (KUBE-|CNI-)' \
            | sed 's/^-A/-D/' | while read -r rule; do eval "iptables -t $table $rule" || true; done || true
        for chain in $(iptables -t "$table" -S 2>/dev/null | awk '/^-N (KUBE-|CNI-)/ {print $2}'); do
            iptables -t "$table" -F "$chain" 2>/dev/null || true
        done
        for chain in $(iptables -t "$table" -S 2>/dev/null | awk '/^-N (KUBE-|CNI-)/ {print $2}'); do
            iptables -t "$table" -X "$chain" 2>/dev/null || true
        done
    done
}

stop() {
    local name socket=$RUN/containerd/containerd.sock
    for name in kube-proxy kubelet scheduler controller-manager apiserver etcd; do stop_process "$name"; done
    if [ -S "$socket" ]; then  # kill what the kubelet left running, then containerd itself
        local ctr=(ctr --address "$socket" -n k8s.io) task
        for task in $("${ctr[@]}" tasks ls -q 2>/dev/null); do "${ctr[@]}" tasks kill -s SIGKILL "$task" 2>/dev/null || true; done
        sleep 1
        for task in $("${ctr[@]}" tasks ls -q 2>/dev/null); do "${ctr[@]}" tasks rm -f "$task" >/dev/null 2>&1 || true; done
    fi
    stop_process containerd
    stop_process registry
    pkill -f "containerd-shim-runc-v2 -namespace k8s.io -id .* -address $socket" 2>/dev/null || true
    # Mounts under the run directory (pod volumes, snapshots, sandbox /dev/shm), deepest first.
    if [ -d "$RUN" ]; then
        findmnt -rn -o TARGET | grep -F "$RUN/" | sort -r | while read -r mount; do umount -l "$mount" || true; done \
            || true
    fi
    # Network namespaces the node's pods had (those that were not there before start).
    if [ -f "$RUN/netns.before" ]; then
        comm -13 "$RUN/netns.before" <(ip netns list 2>/dev/null | awk '{print $1}' | sort) \
            | while read -r ns; do ip netns delete "$ns" 2>/dev/null || umount -l "/run/netns/$ns" 2>/dev/null || true
                                   rm -f "/run/netns/$ns"; done
    fi
    if [ -f "$RUN/podlogs.before" ]; then
        comm -13 "$RUN/podlogs.before" <(ls /var/log/pods 2>/dev/null | sort) \
            | while read -r dir; do rm -rf "/var/log/pods/$dir"; done
        find /var/log/containers -maxdepth 1 -xtype l -delete 2>/dev/null || true
        rmdir /var/log/pods /var/log/containers 2>/dev/null || true  # when the kubelet made them
    fi
    if [ -f "$RUN/cluster.env" ] && grep -q "NODE_ADDRESS=$GATEWAY" "$RUN/cluster.env" || ip link show "$BRIDGE" >/dev/null 2>&1; then
        ip link del "$BRIDGE" 2>/dev/null || true
        remove_iptables_chains
        rm -rf /var/lib/cni/results/imagesync-e2e-* /run/containerd/s 2>/dev/null || true
        find /run/containerd -depth -type d -empty -delete 2>/dev/null || true
        # The kubelet's cgroups (cgroupfs driver): kubepods and every pod and container below it.
        find /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/unified/kubepods -depth -type d \
            -exec rmdir {} \; 2>/dev/null || true
    fi
}

leftovers() {  # prints what a stopped cluster left behind; fails when anything is left
    local found=0 what
    report() { [ -z "$2" ] || { echo "local-cluster: left behind: $1: $2" >&2; found=1; }; }
    what=""
    for name in etcd apiserver controller-manager scheduler kubelet kube-proxy containerd registry; do
        [ -f "$RUN/$name.pid" ] && kill -0 "$(cat "$RUN/$name.pid")" 2>/dev/null && what+="$name "
    done
    report processes "$what$(pgrep -f "containerd-shim-runc-v2 -namespace k8s.io" | tr '\n' ' ')"
    report bridge "$(ip -o link show "$BRIDGE" 2>/dev/null | cut -d: -f2)"
    report "iptables chains" "$(for t in nat filter mangle; do iptables -t "$t" -S 2>/dev/null; done \
        | awk '/^-N (KUBE-|CNI-)/ {printf "%s ", $2}')"
    report mounts "$(findmnt -rn -o TARGET | grep -F "$RUN/" | tr '\n' ' ' || true)"
    report cgroups "$(ls -d /sys/fs/cgroup/*/kubepods 2>/dev/null | tr '\n' ' ' || true)"
    if [ -f "$RUN/netns.before" ]; then
        report "network namespaces" "$(comm -13 "$RUN/netns.before" <(ip netns list 2>/dev/null \
            | awk '{print $1}' | sort) | tr '\n' ' ')"
    fi
    return "$found"
}

case ${1:-} in
    build) build ;;
    start) start ;;
    stop) stop ;;
    leftovers) leftovers ;;
    *) echo "usage: $0 build|start|stop|leftovers" >&2; exit 2 ;;
esac
