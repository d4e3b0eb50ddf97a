#!/usr/bin/env bash
# Builds a local Kubernetes control plane for tests from Go modules (issue 6, work in progress): kube-apiserver
# (k8s.io/kubernetes with its staging modules replaced by their published versions), etcd, and kwok (simulated
# nodes and pods). Binaries go to ~/.cache/mlinfra/kube/<versions>/bin; a second run takes seconds.
# Not part of `make setup` yet: `make kube` runs it.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=../engine/versions.env
source "$ROOT/engine/versions.env"
CACHE=${MLINFRA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mlinfra}
export GOFLAGS="-mod=mod -buildvcs=false" GOTOOLCHAIN=local GONOSUMDB=github.com/pulumi
K=$KUBERNETES_VERSION E=$ETCD_VERSION W=$KWOK_VERSION
BIN="$CACHE/kube/k8s-v$K-etcd-v$E-kwok-v$W/bin"
if [ -x "$BIN/kube-apiserver" ] && [ -x "$BIN/kube-controller-manager" ] && [ -x "$BIN/kube-scheduler" ] \
   && [ -x "$BIN/kubectl" ] && [ -x "$BIN/etcd" ] && [ -x "$BIN/kwok" ]; then
  echo "kube: cached in $BIN"; exit 0
fi
command -v go >/dev/null || { echo "error: Go >= 1.25 is needed to build the local control plane" >&2; exit 1; }
mkdir -p "$BIN"
t0=$(date +%s)
WORK="$CACHE/kube/build"
mkdir -p "$WORK/apiserver" "$WORK/etcd"

# kube-apiserver: k8s.io/kubernetes replaces every k8s.io/* staging module with ./staging/...; point each at its
# published version (v0.N.M for v1.N.M) instead.
if [ ! -x "$BIN/kube-apiserver" ] || [ ! -x "$BIN/kube-controller-manager" ] || [ ! -x "$BIN/kube-scheduler" ] \
   || [ ! -x "$BIN/kubectl" ]; then
  echo "kube: building kube-apiserver, kube-controller-manager, kube-scheduler and kubectl v$K (cold: ~10 min)"
  gomod=$(go mod download -json "k8s.io/kubernetes@v$K" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
  python3 - "$gomod" "$K" "$WORK/apiserver/go.mod" <<'PY'
import re, sys
src, version, dst = sys.argv[1:]
text = open(src).read()
minor = "v0." + version.split(".", 1)[1]
staging = sorted(set(re.findall(r"^\s*(k8s\.io/[\w.\-/]+) => \./staging/", text, re.M)))
godebug = re.findall(r"^godebug .*$", text, re.M)
lines = ["module mlinfra.dev/engine/kube", "", "go 1.25.0", ""] + godebug + ["",
         f"require k8s.io/kubernetes v{version}", "", "replace ("]
lines += [f"\t{m} => {m} {minor}" for m in staging] + [")", ""]
lines += [f"tool k8s.io/kubernetes/cmd/{c}" for c in ("kube-apiserver", "kube-controller-manager", "kube-scheduler",
                                                       "kubectl")] + [""]
open(dst, "w").write("\n".join(lines))
PY
  minor=$(echo "$K" | cut -d. -f2)
  vpkg=k8s.io/component-base/version
  (cd "$WORK/apiserver" && go mod tidy >/dev/null && CGO_ENABLED=0 go build -trimpath \
     -ldflags "-s -w -X $vpkg.gitVersion=v$K -X $vpkg.gitMajor=1 -X $vpkg.gitMinor=$minor -X $vpkg.gitTreeState=clean" \
     -o "$BIN/" k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
     k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl)
fi

if [ ! -x "$BIN/etcd" ]; then
  echo "kube: building etcd v$E"
  (cd "$WORK/etcd" && printf 'module mlinfra.dev/engine/etcd\n\ngo 1.25.0\n\nrequire go.etcd.io/etcd/server/v3 v%s\n\ntool go.etcd.io/etcd/server/v3\n' "$E" > go.mod \
     && go mod tidy >/dev/null && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$BIN/etcd" go.etcd.io/etcd/server/v3)
fi

if [ ! -x "$BIN/kwok" ]; then
  echo "kube: building kwok v$W"
  GOBIN="$BIN" CGO_ENABLED=0 go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@v$W" \
    "sigs.k8s.io/kwok/cmd/kwokctl@v$W"
fi
echo "kube: ready in $BIN ($(( $(date +%s) - t0 )) s)"
