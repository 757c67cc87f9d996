#!/usr/bin/env bash
# A real Kubernetes control plane on loopback for tests/e2e, on a machine without Docker or a cluster:
# etcd, kube-apiserver and kube-controller-manager (Job controller, garbage collector, namespace and
# ServiceAccount controllers). No scheduler and no kubelet: run the suite with
# IMAGESYNC_E2E_PLAY_KUBELET=1 so the tests play the kubelet.
#
# The binaries are built from Debian's `kubernetes` source package (bookworm: 1.20.2, the newest
# complete Kubernetes source Debian ships; later Debian packages carry kubectl only). Kubernetes 1.20
# predates Indexed Jobs, which is itself worth testing against: the API server drops
# spec.completionMode, and the operator must notice.
#
#   bash tests/e2e/local-cluster.sh build     # once: about 20 min on 2 cores, into $K8S_HOME
#   bash tests/e2e/local-cluster.sh start     # prints the KUBECONFIG path
#   KUBECONFIG=... IMAGESYNC_E2E_PLAY_KUBELET=1 bash tests/run.sh -m e2e tests/e2e
#   bash tests/e2e/local-cluster.sh stop
set -euo pipefail

K8S_HOME=${K8S_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/imagesync-k8s}
RUN=$K8S_HOME/run
SOURCE_VERSION=1.20.5+really1.20.2-1.1+deb12u1

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# Bump when the build changes: a stamp with another value rebuilds.
BUILD_ID="1.20.2 reflect2-1.0.2 kube-openapi-nil-only"

build() {
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
        golang-github-modern-go-reflect2-dev >/dev/null
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
        make WHAT="cmd/kube-apiserver cmd/kube-controller-manager" GOLDFLAGS="-s -w"
    cp _output/bin/kube-apiserver _output/bin/kube-controller-manager "$K8S_HOME/bin/"
    echo "$BUILD_ID" >"$K8S_HOME/bin/build-id"
}

start() {
    [ -x "$K8S_HOME/bin/kube-apiserver" ] || { echo "run '$0 build' first" >&2; exit 2; }
    stop >/dev/null 2>&1 || true
    rm -rf "$RUN" && mkdir -p "$RUN/etcd" && cd "$RUN"
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=imagesync-e2e-ca \
        -keyout ca.key -out ca.crt 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj /CN=kube-apiserver -keyout server.key -out server.csr 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >san.ext
    openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile san.ext \
        -out server.crt 2>/dev/null
    openssl genrsa -out sa.key 2048 2>/dev/null && openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
    local token etcd_port etcd_peer api_port
    token=$(openssl rand -hex 24)
    printf '%s,admin,admin,system:masters\n' "$token" >tokens.csv
    etcd_port=$(free_port) etcd_peer=$(free_port) api_port=$(free_port)
    etcd --data-dir "$RUN/etcd" --listen-client-urls "http://127.0.0.1:$etcd_port" \
        --advertise-client-urls "http://127.0.0.1:$etcd_port" --listen-peer-urls "http://127.0.0.1:$etcd_peer" \
        >etcd.log 2>&1 &
    echo $! >etcd.pid
    "$K8S_HOME/bin/kube-apiserver" --etcd-servers "http://127.0.0.1:$etcd_port" \
        --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$api_port" --insecure-port 0 \
        --tls-cert-file server.crt --tls-private-key-file server.key --client-ca-file ca.crt \
        --token-auth-file tokens.csv --authorization-mode RBAC \
        --service-account-issuer https://kubernetes.default.svc --api-audiences https://kubernetes.default.svc \
        --service-account-key-file sa.pub --service-account-signing-key-file sa.key \
        --service-cluster-ip-range 10.96.0.0/24 >apiserver.log 2>&1 &
    echo $! >apiserver.pid
    cat >kubeconfig <<EOF
apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster: {server: "https://127.0.0.1:$api_port", certificate-authority: "$RUN/ca.crt"}
users:
- name: admin
  user: {token: "$token"}
contexts:
- name: e2e
  context: {cluster: e2e, user: admin}
current-context: e2e
EOF
    local i
    for i in $(seq 60); do
        if curl -fsS --cacert ca.crt -H "Authorization: Bearer $token" "https://127.0.0.1:$api_port/readyz" \
            >/dev/null 2>&1; then break; fi
        sleep 1
    done
    "$K8S_HOME/bin/kube-controller-manager" --kubeconfig kubeconfig --leader-elect=false \
        --bind-address 127.0.0.1 --secure-port 0 --port 0 \
        --service-account-private-key-file sa.key --root-ca-file ca.crt --controllers '*' \
        >controller-manager.log 2>&1 &
    echo $! >controller-manager.pid
    curl -fsS --cacert ca.crt -H "Authorization: Bearer $token" "https://127.0.0.1:$api_port/readyz" >/dev/null
    echo "$RUN/kubeconfig"
}

stop() {
    local name pid i
    for name in controller-manager apiserver etcd; do
        [ -f "$RUN/$name.pid" ] || continue
        pid=$(cat "$RUN/$name.pid")
        kill "$pid" 2>/dev/null || true
        for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -9 "$pid" 2>/dev/null || true
        rm -f "$RUN/$name.pid"
    done
}

case ${1:-} in
    build) build ;;
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 build|start|stop" >&2; exit 2 ;;
esac
