#!/usr/bin/env bash
# Makes sure a Pulumi engine of the pinned version is available, offline, and prints where it is.
#
#   1. A `pulumi` on PATH that prints the pinned version (and has pulumi-language-python beside it) is used as is.
#   2. Otherwise the CLI (github.com/pulumi/pulumi/pkg/v3/cmd/pulumi) and mlinfra's own Python language host
#      (engine/cli/cmd/pulumi-language-python) are built from Go modules into a cache outside the repo keyed by
#      version and source hash, with the SDK's helper scripts beside them. A second run takes seconds.
#   3. The kubernetes resource plugin is built (engine/kubernetes) and installed into PULUMI_HOME at exactly the
#      version the pulumi-kubernetes Python SDK asks for.
#   4. The docker-build resource plugin is built (engine/docker-build) and installed the same way.
#   5. BuildKit's daemon (buildkitd, engine/buildkit), which docker-build builds with (`mlinfra services up buildkit`
#      runs it on a unix socket and registers it as the buildx builder "mlinfra"), is built into the cache.
#   6. The Pulumi YAML language host (engine/yaml: github.com/pulumi/pulumi-yaml) is built and installed as the
#      language plugin yaml, so Pulumi YAML programs can use mlinfra's component package (mlinfra/package).
#   7. cosign (engine/cosign), which verifies ScoringImage provenance attestations independently of mlinfra, is built
#      into the cache.
#
# The result is recorded as the symlink .mlinfra/engine -> BINDIR, which mlinfra.engine reads. See docs/engine.md.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=../engine/versions.env
source "$ROOT/engine/versions.env"
CACHE=${MLINFRA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mlinfra}
export PULUMI_HOME=${PULUMI_HOME:-$CACHE/pulumi-home}
export PULUMI_SKIP_UPDATE_CHECK=true PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION=true
# go.mod/go.sum of both wrapper modules are committed: no sum database look-ups (it lacks some pseudo-versions).
export GOFLAGS="-mod=readonly -buildvcs=false" GOTOOLCHAIN=local GONOSUMDB=github.com/pulumi
mkdir -p "$ROOT/.mlinfra" "$PULUMI_HOME"
t0=$(date +%s)

hash_of() { (cd "$ROOT" && cat "$@" | sha256sum | cut -c1-12); }
need_go() {
  if ! command -v go >/dev/null; then
    cat >&2 <<MSG
error: no Go toolchain and no 'pulumi' v$PULUMI_VERSION on PATH.
  mlinfra builds the Pulumi engine from Go modules. Install Go >= 1.25 (https://go.dev/doc/install, or your
  distribution's golang package), or put a pulumi v$PULUMI_VERSION CLI with pulumi-language-python on PATH.
MSG
    exit 1
  fi
}
gobuild() { # gobuild MODULE_DIR TAGS VERSION_VAR=VALUE OUTDIR PKG: a plugin or daemon, release flags, in its wrapper module
  (cd "$ROOT/$1" && CGO_ENABLED=0 go build -trimpath -tags "$2" -ldflags "-s -w -X $3" -o "$4/" "$5")
}
cached_build() { # cached_build NAME VERSION MODULE_DIR TAGS VAR=VALUE PKG BINARY: a daemon or tool, built once per
  # version and wrapper module into $CACHE/engine/NAME-VERSION-<hash> and linked as $CACHE/engine/NAME-VERSION
  local key out
  key=$(hash_of engine/versions.env "$3/go.mod" "$3/go.sum")
  out="$CACHE/engine/$1-$2-$key"
  if [ ! -x "$out/$7" ]; then
    need_go
    echo "engine: building $7 $2 into $out (cold: a few minutes; ~1 min with warm Go caches)"
    mkdir -p "$out.tmp"
    gobuild "$3" "$4" "$5" "$out.tmp" "$6"
    rm -rf "$out" && mv "$out.tmp" "$out"
  fi
  ln -sfn "$out" "$CACHE/engine/$1-$2"
  echo "engine: $7 $2 at $out"
}
build() { # build OUTDIR PKG... (release flags)
  local out=$1; shift
  CGO_ENABLED=0 go build -trimpath -tags osusergo,grpcnotrace \
    -ldflags "-s -w -X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=v$PULUMI_VERSION" -o "$out/" "$@"
}

# --- 1/2: CLI + language host -------------------------------------------------------------------------------
BIN=""
if command -v pulumi >/dev/null && [ "$(pulumi version 2>/dev/null)" = "v$PULUMI_VERSION" ] \
   && [ -x "$(dirname "$(command -v pulumi)")/pulumi-language-python" ]; then
  BIN=$(dirname "$(command -v pulumi)")
  echo "engine: using pulumi v$PULUMI_VERSION found on PATH at $BIN"
else
  key=$(hash_of engine/versions.env engine/cli/go.mod engine/cli/go.sum engine/cli/cmd/pulumi-language-python/main.go)
  BIN="$CACHE/engine/pulumi-v$PULUMI_VERSION-$key/bin"
  if [ ! -f "$BIN/.complete" ]; then
    need_go
    echo "engine: building pulumi v$PULUMI_VERSION and the Python language host into $BIN (cold: ~10 min on 2 cores)"
    rm -rf "$BIN" && mkdir -p "$BIN"
    (cd "$ROOT/engine/cli" && build "$BIN" github.com/pulumi/pulumi/pkg/v3/cmd/pulumi ./cmd/pulumi-language-python)
    sdk=$(cd "$ROOT/engine/cli" && go mod download github.com/pulumi/pulumi/sdk/v3 &&
          go list -m -f '{{.Dir}}' github.com/pulumi/pulumi/sdk/v3)
    install -m 0755 "$sdk/python/cmd/pulumi-language-python-exec" "$BIN/"
    install -m 0755 "$sdk/python/dist/pulumi-resource-pulumi-python" "$BIN/"
    touch "$BIN/.complete"
  fi
  echo "engine: pulumi $("$BIN/pulumi" version) at $BIN"
fi
ln -sfn "$BIN" "$ROOT/.mlinfra/engine"

# --- 3: kubernetes resource plugin ---------------------------------------------------------------------------
KV=$PULUMI_KUBERNETES_VERSION
if [ ! -x "$PULUMI_HOME/plugins/resource-kubernetes-v$KV/pulumi-resource-kubernetes" ]; then
  need_go
  key=$(hash_of engine/versions.env engine/kubernetes/go.mod engine/kubernetes/cmd/pulumi-resource-kubernetes/main.go)
  KBIN="$CACHE/plugins/kubernetes-v$KV-$key"
  if [ ! -x "$KBIN/pulumi-resource-kubernetes" ]; then
    echo "engine: building the kubernetes plugin v$KV into $KBIN (cold: ~8 min on 2 cores)"
    main="$ROOT/engine/kubernetes/cmd/pulumi-resource-kubernetes"
    (cd "$ROOT/engine/kubernetes"
     go mod download github.com/pulumi/pulumi-kubernetes/provider/v4
     mod=$(go list -m -f '{{.Dir}}' github.com/pulumi/pulumi-kubernetes/provider/v4)
     python3 - "$mod/cmd/pulumi-resource-kubernetes/schema.json" "$main/schema-embed.json" "$KV" <<'PY'
import json, sys
src, dst, version = sys.argv[1:]
schema = json.load(open(src))
schema["version"] = version
json.dump(schema, open(dst, "w"))
PY
     cp "$mod/cmd/pulumi-resource-kubernetes/terraform-mapping.json" "$main/terraform-mapping-embed.json"
     mkdir -p "$KBIN"
     CGO_ENABLED=0 go build -trimpath -tags osusergo,grpcnotrace \
       -ldflags "-s -w -X github.com/pulumi/pulumi-kubernetes/provider/v4/pkg/version.Version=v$KV" \
       -o "$KBIN/" ./cmd/pulumi-resource-kubernetes)
  fi
  "$BIN/pulumi" plugin install resource kubernetes "$KV" --file "$KBIN/pulumi-resource-kubernetes" >/dev/null
fi
echo "engine: kubernetes plugin v$KV installed in $PULUMI_HOME"

# --- 4: docker-build resource plugin -------------------------------------------------------------------------
DV=$PULUMI_DOCKER_BUILD_VERSION
if [ ! -x "$PULUMI_HOME/plugins/resource-docker-build-v$DV/pulumi-resource-docker-build" ]; then
  need_go
  key=$(hash_of engine/versions.env engine/docker-build/go.mod engine/docker-build/go.sum \
        engine/docker-build/cmd/pulumi-resource-docker-build/main.go \
        engine/docker-build/stubs/java/pkg/codegen/java/package_info.go \
        engine/docker-build/stubs/dotnet/codegen/package_info.go)
  DBIN="$CACHE/plugins/docker-build-v$DV-$key"
  if [ ! -x "$DBIN/pulumi-resource-docker-build" ]; then
    echo "engine: building the docker-build plugin v$DV into $DBIN (cold: a few minutes; ~2 min with warm Go caches)"
    mkdir -p "$DBIN"
    gobuild engine/docker-build osusergo,grpcnotrace "github.com/pulumi/pulumi-docker-build/provider.Version=$DV" \
      "$DBIN" ./cmd/pulumi-resource-docker-build
  fi
  "$BIN/pulumi" plugin install resource docker-build "$DV" --file "$DBIN/pulumi-resource-docker-build" >/dev/null
fi
echo "engine: docker-build plugin v$DV installed in $PULUMI_HOME"
# --- 5: buildkitd ------------------------------------------------------------------------------------------------
cached_build buildkit "$BUILDKIT_VERSION" engine/buildkit osusergo,netgo \
  "github.com/moby/buildkit/version.Version=$BUILDKIT_VERSION" github.com/moby/buildkit/cmd/buildkitd buildkitd
# --- 6: Pulumi YAML language host --------------------------------------------------------------------------------
# Pulumi treats yaml as a bundled language plugin: it must sit beside the `pulumi` binary (plugin install refuses it).
YV=$PULUMI_YAML_VERSION
if [ "$("$BIN/pulumi-language-yaml" -version 2>/dev/null || true)" != "v$YV" ] \
   && [ "$(cat "$BIN/.yaml-version" 2>/dev/null || true)" != "$YV" ]; then
  need_go
  key=$(hash_of engine/versions.env engine/yaml/go.mod engine/yaml/go.sum)
  YBIN="$CACHE/plugins/yaml-v$YV-$key"
  if [ ! -x "$YBIN/pulumi-language-yaml" ]; then
    echo "engine: building the Pulumi YAML language host v$YV into $YBIN (cold: a few minutes; ~1 min with warm Go caches)"
    mkdir -p "$YBIN"
    gobuild engine/yaml osusergo,grpcnotrace "github.com/pulumi/pulumi-yaml/pkg/version.Version=v$YV" "$YBIN" \
      github.com/pulumi/pulumi-yaml/cmd/pulumi-language-yaml
  fi
  case "$BIN" in
    "$CACHE"/*) install -m 0755 "$YBIN/pulumi-language-yaml" "$BIN/" && echo "$YV" > "$BIN/.yaml-version" ;;
    *) echo "engine: note: $BIN is not mlinfra's; put $YBIN on PATH for Pulumi YAML programs" ;;
  esac
fi
echo "engine: Pulumi YAML language host v$YV beside pulumi in $BIN"
# --- 7: cosign -----------------------------------------------------------------------------------------------------
cached_build cosign "$COSIGN_VERSION" engine/cosign osusergo,netgo \
  "sigs.k8s.io/release-utils/version.gitVersion=$COSIGN_VERSION" github.com/sigstore/cosign/v2/cmd/cosign cosign
echo "engine: ready in $(( $(date +%s) - t0 )) s"
