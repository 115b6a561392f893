#!/usr/bin/env bash
# Starts a real Kubernetes control plane on 127.0.0.1 for tests: etcd, kube-apiserver
# under RBAC (token auth) and kube-controller-manager (deployment, replicaset,
# garbagecollector and namespace controllers). There is no kubelet: pods are scheduled
# objects that never run; a test stands in for one through `pods/status`.
# usage: start.sh BINDIR RUNDIR   (BINDIR from build.sh; etcd is Debian's)
# Ports: ETCD_PORT (and ETCD_PORT+1 for peers) and API_PORT, default 2379 and 6443.
# OWNER_PID, when set: the three processes are stopped once that process is gone (a test
# binary that dies without cleaning up leaves nothing running), and with REMOVE_RUNDIR=1
# RUNDIR is removed then too.
# Writes RUNDIR/admin.kubeconfig (group system:masters) and RUNDIR/ripcord.kubeconfig
# (user `ripcord`, no rights until a RoleBinding grants them), and *.pid for stop.sh.
set -euo pipefail
BIN=${1:?usage: start.sh BINDIR RUNDIR}
RUN=${2:?usage: start.sh BINDIR RUNDIR}
mkdir -p "$RUN"
RUN=$(cd "$RUN" && pwd)
cd "$RUN"
EPORT=${ETCD_PORT:-2379}
APORT=${API_PORT:-6443}
for b in "$BIN/kube-apiserver" "$BIN/kube-controller-manager"; do
  [ -x "$b" ] || { echo "start.sh: $b is missing: run scripts/kube/build.sh" >&2; exit 1; }
done
ETCD=$(command -v etcd || true)
[ -n "$ETCD" ] || { echo "start.sh: etcd is missing: apt-get install etcd-server" >&2; exit 1; }
openssl genrsa -out sa.key 2048 2>/dev/null
token() { head -c16 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
ADMIN=$(token)
USER=$(token)
umask 077
{
  echo "$ADMIN,admin,admin,system:masters"
  echo "$USER,ripcord,ripcord"
} >tokens.csv
"$ETCD" --data-dir "$RUN/etcd" --listen-client-urls "http://127.0.0.1:$EPORT" \
  --advertise-client-urls "http://127.0.0.1:$EPORT" \
  --listen-peer-urls "http://127.0.0.1:$((EPORT + 1))" >etcd.log 2>&1 &
echo $! >etcd.pid
"$BIN/kube-apiserver" --etcd-servers="http://127.0.0.1:$EPORT" --bind-address=127.0.0.1 \
  --secure-port="$APORT" --cert-dir="$RUN/certs" --token-auth-file=tokens.csv \
  --authorization-mode=RBAC \
  --service-account-issuer=https://kubernetes.default.svc --service-account-key-file=sa.key \
  --service-account-signing-key-file=sa.key --service-cluster-ip-range=10.0.0.0/24 \
  --disable-admission-plugins=ServiceAccount >apiserver.log 2>&1 &
echo $! >apiserver.pid
kubeconfig() {
  cat <<K
apiVersion: v1
kind: Config
clusters: [{name: local, cluster: {server: "https://127.0.0.1:$APORT", insecure-skip-tls-verify: true}}]
users: [{name: $1, user: {token: "$2"}}]
contexts: [{name: local, context: {cluster: local, user: $1, namespace: default}}]
current-context: local
K
}
kubeconfig admin "$ADMIN" >admin.kubeconfig
kubeconfig ripcord "$USER" >ripcord.kubeconfig
if [ -n "${OWNER_PID:-}" ]; then
  # The watchdog outlives this script in a session of its own (a signal to the caller's
  # process group, e.g. from `timeout`, must not take it down with the test), and stops
  # the three once the owner is gone.
  # shellcheck disable=SC2016 # the watchdog's own script: it expands its arguments
  setsid -f bash -c '
    cd "$2" || exit 0
    echo $$ >watchdog.pid
    while kill -0 "$1" 2>/dev/null; do sleep 1; done
    for p in kcm apiserver etcd; do [ -f "$p.pid" ] && kill -9 "$(cat "$p.pid")" 2>/dev/null; done
    sleep 0.5
    if [ "$3" = 1 ]; then rm -rf "$2"; fi
  ' watchdog "$OWNER_PID" "$RUN" "${REMOVE_RUNDIR:-0}" </dev/null >/dev/null 2>&1
fi
ready=0
for _ in $(seq 120); do
  if curl -sfk -H "Authorization: Bearer $ADMIN" "https://127.0.0.1:$APORT/readyz" >/dev/null; then
    ready=1
    break
  fi
  sleep 0.5
done
if [ "$ready" != 1 ]; then
  echo "start.sh: kube-apiserver not ready after 60 s; its log:" >&2
  tail -20 apiserver.log >&2
  exit 1
fi
"$BIN/kube-controller-manager" --kubeconfig=admin.kubeconfig --leader-elect=false \
  --bind-address=127.0.0.1 --secure-port=0 --port=0 \
  --controllers=deployment,replicaset,garbagecollector,namespace >kcm.log 2>&1 &
echo $! >kcm.pid
echo "KUBECONFIG=$RUN/admin.kubeconfig"
