#!/usr/bin/env bash
# Builds the local Kubernetes clusters' binaries from Go modules: kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl, kubelet and kube-proxy (k8s.io/kubernetes with its staging modules replaced by their
# published versions), etcd, kwok (simulated nodes and pods), metrics-server (HPA on real CPU) and the kubelet's
# pause binary (Kubernetes' build/pause/linux/pause.c, static). Binaries go to ~/.cache/mlinfra/kube/<versions>/bin;
# a second run takes seconds. Part of `make setup`; `make kube` runs it alone.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=../engine/versions.env
source "$ROOT/engine/versions.env"
CACHE=${MLINFRA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mlinfra}
export GOFLAGS="-mod=mod -buildvcs=false" GOTOOLCHAIN=local GONOSUMDB=github.com/pulumi
K=$KUBERNETES_VERSION E=$ETCD_VERSION W=$KWOK_VERSION M=$METRICS_SERVER_VERSION
BIN="$CACHE/kube/k8s-v$K-etcd-v$E-kwok-v$W/bin"
KUBE_CMDS="kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy"
have_all() { for b in $KUBE_CMDS etcd kwok kwokctl metrics-server pause; do [ -x "$BIN/$b" ] || return 1; done; }
if have_all; then echo "kube: cached in $BIN"; exit 0; fi
command -v go >/dev/null || { echo "error: Go >= 1.25 is needed to build the local control plane" >&2; exit 1; }
mkdir -p "$BIN"
t0=$(date +%s)
WORK="$CACHE/kube/build"
mkdir -p "$WORK/apiserver" "$WORK/etcd"

# kube-apiserver: k8s.io/kubernetes replaces every k8s.io/* staging module with ./staging/...; point each at its
# published version (v0.N.M for v1.N.M) instead.
missing_kube() { for b in $KUBE_CMDS; do [ -x "$BIN/$b" ] || return 0; done; return 1; }
if missing_kube; then
  echo "kube: building $KUBE_CMDS v$K (cold: ~12 min)"
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
                                                       "kubectl", "kubelet", "kube-proxy")] + [""]
open(dst, "w").write("\n".join(lines))
PY
  minor=$(echo "$K" | cut -d. -f2)
  vpkg=k8s.io/component-base/version
  (cd "$WORK/apiserver" && go mod tidy >/dev/null && CGO_ENABLED=0 go build -trimpath \
     -ldflags "-s -w -X $vpkg.gitVersion=v$K -X $vpkg.gitMajor=1 -X $vpkg.gitMinor=$minor -X $vpkg.gitTreeState=clean" \
     -o "$BIN/" k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
     k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl k8s.io/kubernetes/cmd/kubelet \
     k8s.io/kubernetes/cmd/kube-proxy)
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
if [ ! -x "$BIN/metrics-server" ]; then
  echo "kube: building metrics-server v$M (~3 min)"
  mkdir -p "$WORK/metrics-server"
  (cd "$WORK/metrics-server" && printf 'module mlinfra.dev/engine/metrics\n\ngo 1.25.0\n\nrequire sigs.k8s.io/metrics-server v%s\n\ntool sigs.k8s.io/metrics-server/cmd/metrics-server\n' "$M" > go.mod \
     && go mod tidy >/dev/null && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$BIN/metrics-server" \
        sigs.k8s.io/metrics-server/cmd/metrics-server)
fi

# The kubelet's sandbox ("pause") image cannot be pulled here: build its one static binary from the same module;
# `mlinfra services up kubernetes` pushes it to the local registry as a one-file image.
if [ ! -x "$BIN/pause" ]; then
  command -v gcc >/dev/null || { echo "error: gcc is needed to build the pause binary: apt-get install gcc" >&2; exit 1; }
  src=$(go mod download -json "k8s.io/kubernetes@v$K" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  gcc -Os -static -Wall -Werror -DVERSION="v$K-mlinfra" -o "$BIN/pause" "$src/build/pause/linux/pause.c"
  strip "$BIN/pause"
fi
echo "kube: ready in $BIN ($(( $(date +%s) - t0 )) s)"
