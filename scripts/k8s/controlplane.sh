#!/usr/bin/env bash
# A throwaway Kubernetes control plane on loopback for tests and benchmarks:
#   controlplane.sh start DIR [--with-controller-manager]   -> DIR/admin.kubeconfig, DIR/env
#   controlplane.sh stop DIR
# etcd and kube-apiserver (and optionally kube-controller-manager) from
# scripts/k8s/build.sh's cache. Listens on 127.0.0.1 only; the serving cert also
# names 10.0.2.2 so a QEMU guest (user networking) can reach it as the host.
set -euo pipefail
cmd=${1:?start|stop}
DIR=${2:?state directory}
here=$(cd "$(dirname "$0")" && pwd)

free_port() {
  local p
  for _ in $(seq 200); do
    p=$((20000 + RANDOM % 20000))
    ss -ltnH "sport = :$p" | grep -q . || { echo "$p"; return; }
  done
  echo "no free port" >&2; exit 1
}

stop() {
  if [ -f "$DIR/pids" ]; then
    while read -r pid; do kill "$pid" 2>/dev/null || true; done < "$DIR/pids"
    for _ in $(seq 50); do
      alive=0
      while read -r pid; do kill -0 "$pid" 2>/dev/null && alive=1; done < "$DIR/pids"
      [ $alive = 0 ] && break
      sleep 0.1
    done
    while read -r pid; do kill -9 "$pid" 2>/dev/null || true; done < "$DIR/pids"
    rm -f "$DIR/pids"
  fi
}

kubeconfig() { # kubeconfig <file> <server> <token>
  cat > "$1" <<KC
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster: {server: "$2", certificate-authority: "$DIR/ca.crt"}
users:
- name: user
  user: {token: "$3"}
contexts:
- name: local
  context: {cluster: local, user: user}
current-context: local
KC
}

case $cmd in
stop) stop; exit 0 ;;
start) ;;
*) echo "usage: $0 start|stop DIR [--with-controller-manager]" >&2; exit 2 ;;
esac

if [ -n "${KPRS_NO_BUILD:-}" ]; then
  # Tests never build (scripts/test.sh builds first): missing binaries are a skip.
  BIN=$(KPRS_CHECK_ONLY=1 "$here/build.sh") || { echo "control plane binaries not built (run scripts/k8s/build.sh)"; exit 77; }
else
  BIN=$("$here/build.sh")
fi
mkdir -p "$DIR"
stop
cd "$DIR"
if [ ! -f ca.crt ]; then
  openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 30 -subj /CN=kprs-test-ca 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -keyout apiserver.key -out apiserver.csr -subj /CN=kube-apiserver 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,IP:10.0.2.2,DNS:localhost,DNS:kubernetes.default.svc\n' > san.ext
  openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out apiserver.crt -days 30 -extfile san.ext 2>/dev/null
  openssl genrsa -out sa.key 2048 2>/dev/null
  openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
  admin=$(openssl rand -hex 16); cm=$(openssl rand -hex 16)
  # Test-only: the controllers run under one identity with full rights rather
  # than one ServiceAccount each (--use-service-account-credentials).
  printf '%s,admin,admin,system:masters\n%s,system:kube-controller-manager,kcm,system:masters\n' "$admin" "$cm" > tokens.csv
fi
admin=$(sed -n 1p tokens.csv | cut -d, -f1); cm=$(sed -n 2p tokens.csv | cut -d, -f1)
ETCD_PORT=$(free_port); PEER_PORT=$(free_port); API_PORT=$(free_port)
rm -rf etcd-data
"$BIN/etcd" --name default --data-dir "$DIR/etcd-data" --unsafe-no-fsync \
  --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$PEER_PORT" \
  --initial-cluster "default=http://127.0.0.1:$PEER_PORT" --log-level warn > etcd.log 2>&1 &
echo $! > pids
api_cmd=("$BIN/kube-apiserver" --etcd-servers "http://127.0.0.1:$ETCD_PORT"
  --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$API_PORT"
  --tls-cert-file apiserver.crt --tls-private-key-file apiserver.key --client-ca-file ca.crt
  --service-account-issuer https://kubernetes.default.svc --service-account-key-file sa.pub
  --service-account-signing-key-file sa.key --token-auth-file tokens.csv
  --authorization-mode Node,RBAC --service-cluster-ip-range 10.96.0.0/12 --allow-privileged=true
  --cert-dir "$DIR/certs")
# Kept so a test can restart the API server with the same flags and port.
printf '%q ' "${api_cmd[@]}" > apiserver.cmdline
"${api_cmd[@]}" > apiserver.log 2>&1 &
echo $! >> pids
kubeconfig admin.kubeconfig "https://127.0.0.1:$API_PORT" "$admin"
kubeconfig guest.kubeconfig "https://10.0.2.2:$API_PORT" "$admin"
ok=0
for _ in $(seq 600); do
  if curl -sf --cacert ca.crt -H "Authorization: Bearer $admin" "https://127.0.0.1:$API_PORT/readyz" >/dev/null 2>&1; then ok=1; break; fi
  sleep 0.1
done
[ $ok = 1 ] || { echo "kube-apiserver not ready in 60 s; see $DIR/apiserver.log" >&2; tail -20 apiserver.log >&2; stop; exit 1; }
if [ "${3:-}" = --with-controller-manager ]; then
  kubeconfig kcm.kubeconfig "https://127.0.0.1:$API_PORT" "$cm"
  "$BIN/kube-controller-manager" --kubeconfig kcm.kubeconfig --authentication-kubeconfig kcm.kubeconfig \
    --authorization-kubeconfig kcm.kubeconfig --bind-address 127.0.0.1 --secure-port 0 \
    --controllers endpointslice,serviceaccount,serviceaccount-token,namespace,garbagecollector \
    --service-account-private-key-file sa.key --root-ca-file ca.crt --leader-elect=false > kcm.log 2>&1 &
  echo $! >> pids
fi
cat > env <<ENV
export KUBECONFIG=$DIR/admin.kubeconfig
export KPRS_APISERVER=https://127.0.0.1:$API_PORT
export KPRS_K8S_BIN=$BIN
ENV
echo "control plane up: https://127.0.0.1:$API_PORT (binaries in $BIN; state and logs in $DIR)"
