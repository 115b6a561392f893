#!/usr/bin/env bash
# usage: stop.sh RUNDIR: stops what start.sh started, by the PIDs it saved (SIGTERM, then
# SIGKILL after 10 s: kube-apiserver's graceful shutdown can outlast its clients).
cd "${1:?usage: stop.sh RUNDIR}" || exit 1
for p in watchdog kcm apiserver etcd; do
  [ -f "$p.pid" ] || continue
  pid=$(cat "$p.pid")
  kill "$pid" 2>/dev/null || continue
  for _ in $(seq 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -9 "$pid" 2>/dev/null
done
true
