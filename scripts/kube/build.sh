#!/usr/bin/env bash
# One-time build of the real Kubernetes control plane the Kubernetes tests drive:
# kube-apiserver and kube-controller-manager v1.20.2 from Debian bookworm's `kubernetes`
# source package, built with Debian's Go 1.19 in GOPATH mode (module mode fails on this
# tree: "updates to go.mod needed"). The source tarball lacks the generated OpenAPI
# definitions, so openapi-gen runs first. etcd is Debian's etcd-server. About 3 minutes
# on 2 cores, 1.4 GB peak RSS, ~1.3 GB of sources and Go cache in WORKDIR (what this
# script put there is removed at the end unless KEEP_WORKDIR=1); the two binaries are
# ~110 MB each.
# usage: build.sh WORKDIR OUTDIR   (as root: it installs Debian packages)
set -euo pipefail
W=${1:?usage: build.sh WORKDIR OUTDIR}
OUT=${2:?usage: build.sh WORKDIR OUTDIR}
mkdir -p "$W/apt/lists/partial" "$W/apt/cache/archives/partial" "$W/apt/parts" "$OUT"
W=$(cd "$W" && pwd)
OUT=$(cd "$OUT" && pwd)
cd "$W"
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y -qq --no-install-recommends golang-1.19-go etcd-server >/dev/null; then
  # A machine whose package lists are old or empty: refresh them once, then again.
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends golang-1.19-go etcd-server >/dev/null
fi
# Source packages from the same mirror as the system's binary packages; the system's apt
# configuration is left untouched (lists and cache live in WORKDIR).
sed 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources >apt/parts/src.sources
A=(-o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$W/apt/parts"
  -o "Dir::State::Lists=$W/apt/lists" -o "Dir::Cache=$W/apt/cache")
apt-get "${A[@]}" update -qq
apt-get "${A[@]}" source --download-only kubernetes=1.20.5+really1.20.2-1.1+deb12u1
rm -rf gopath && mkdir -p gopath/src/k8s.io
tar xzf kubernetes_1.20.5+really1.20.2.orig.tar.gz -C gopath/src/k8s.io
mv gopath/src/k8s.io/kubernetes-1.20.2 gopath/src/k8s.io/kubernetes
export PATH=/usr/lib/go-1.19/bin:$PATH GOPATH=$W/gopath GOCACHE=$W/gocache GO111MODULE=off GOFLAGS='' CGO_ENABLED=0
cd gopath/src/k8s.io/kubernetes
go build -o "$W/openapi-gen" ./vendor/k8s.io/kube-openapi/cmd/openapi-gen
IN=$( (find pkg cmd plugin -name '*.go'
  find -L vendor -name '*.go' -not -path 'vendor/k8s.io/code-generator/*' -not -path 'vendor/k8s.io/sample-apiserver/*') |
  grep -v /testdata/ | { xargs grep -l '+k8s:openapi-gen=' || true; } | xargs -n1 dirname | sort -u |
  sed 's|^|k8s.io/kubernetes/|' | paste -sd,)
"$W/openapi-gen" -i "$IN" -p k8s.io/kubernetes/pkg/generated/openapi -O zz_generated.openapi \
  -h hack/boilerplate/boilerplate.generatego.txt -r "$W/openapi-report.txt"
V=k8s.io/kubernetes/vendor/k8s.io/component-base/version
C=k8s.io/kubernetes/vendor/k8s.io/client-go/pkg/version
# Built into a staging directory, then moved: OUTDIR never holds a half-written binary.
mkdir -p "$W/out"
go build -ldflags "-s -w -X $V.gitVersion=v1.20.2 -X $V.gitMajor=1 -X $V.gitMinor=20 -X $C.gitVersion=v1.20.2 -X $C.gitMajor=1 -X $C.gitMinor=20" \
  -o "$W/out/" ./cmd/kube-apiserver ./cmd/kube-controller-manager
mv "$W/out/kube-controller-manager" "$OUT/"
mv "$W/out/kube-apiserver" "$OUT/"
cd /
if [ "${KEEP_WORKDIR:-0}" != 1 ]; then
  rm -rf "$W/apt" "$W/gopath" "$W/gocache" "$W/out" "$W/openapi-gen" "$W/openapi-report.txt" \
    "$W"/kubernetes_1.20.5+really1.20.2*
  rmdir "$W" 2>/dev/null || true
fi
ls -la "$OUT"
