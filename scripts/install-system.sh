#!/usr/bin/env bash
# Installs the system packages mlinfra's local services need (Debian/Ubuntu, as root), and Azurite from npm into
# the mlinfra cache. Idempotent: a second run only checks. Used by `make setup` and `.ci/run`.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=../engine/versions.env
source "$ROOT/engine/versions.env"
CACHE=${MLINFRA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mlinfra}

need=()
command -v dockerd >/dev/null || need+=(docker.io)
[ -x /usr/bin/docker-registry ] || need+=(docker-registry)
command -v mosquitto >/dev/null || need+=(mosquitto)
command -v mosquitto_passwd >/dev/null || need+=(mosquitto)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v wrk >/dev/null || need+=(wrk)
# the local Kubernetes node: containerd + runc (CRI), CNI plugins, iptables for kube-proxy
command -v containerd >/dev/null || need+=(containerd)
command -v runc >/dev/null || need+=(runc)
[ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
command -v iptables >/dev/null || need+=(iptables)
command -v conntrack >/dev/null || need+=(conntrack)
command -v gcc >/dev/null || need+=(gcc libc6-dev)
if [ ${#need[@]} -gt 0 ]; then
  if ! command -v apt-get >/dev/null; then
    echo "error: missing ${need[*]} and no apt-get here: install them with your package manager" >&2
    exit 1
  fi
  if [ "$(id -u)" != 0 ]; then
    echo "error: missing ${need[*]}: run 'sudo apt-get install ${need[*]}' (or run make setup as root)" >&2
    exit 1
  fi
  echo "installing system packages: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # The package lists may be missing or stale on a fresh machine.
  if ! apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null 2>&1; then
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
  fi
fi

# Azurite, pinned, from npm, into the cache (not global).
AZ="$CACHE/azurite-$AZURITE_VERSION"
if [ ! -x "$AZ/node_modules/.bin/azurite-blob" ]; then
  command -v npm >/dev/null || { echo "error: npm is needed to install Azurite: apt-get install npm" >&2; exit 1; }
  echo "installing azurite $AZURITE_VERSION from npm into $AZ"
  mkdir -p "$AZ"
  npm install --prefix "$AZ" --no-audit --no-fund --loglevel=error "azurite@$AZURITE_VERSION" >/dev/null
fi
echo "system packages: ok (docker.io, docker-registry, mosquitto, debootstrap, wrk, containerd, runc, CNI plugins, iptables, azurite $AZURITE_VERSION)"
