#!/usr/bin/env bash
# Installs each peer model server from PyPI into its own venv (cached in ~/.cache/mlinfra/bench-venvs), pinned.
set -euo pipefail
V=${MLINFRA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mlinfra}/bench-venvs
PY=${PY:-python3.11}
mkdir -p "$V"
declare -A PKGS=(
  [mlserver]="mlserver==1.7.1 uvloop<0.22 onnxruntime==1.32.0 numpy<2.3"
  [kserve]="kserve==0.21.0 onnxruntime==1.32.0"
  [bentoml]="bentoml==1.4.36 onnxruntime==1.32.0"
  [litserve]="litserve==0.2.19 onnxruntime==1.32.0"
  [pytriton]="nvidia-pytriton==0.7.0 onnxruntime==1.32.0"
  # Not a model server: the constant-reply ceiling of a native (Rust) HTTP front end, beside constant-aiohttp's.
  [granian]="granian==2.8.7 uvloop==0.23.0"
)
for peer in "${!PKGS[@]}"; do
  if [ -f "$V/$peer/.ok" ]; then echo "$peer: cached"; continue; fi
  echo "$peer: installing ${PKGS[$peer]}"
  rm -rf "$V/$peer"; $PY -m venv "$V/$peer"
  if "$V/$peer/bin/pip" install -q --disable-pip-version-check ${PKGS[$peer]} > "$V/$peer.log" 2>&1; then
    touch "$V/$peer/.ok"; echo "$peer: ok"
  else
    echo "$peer: FAILED (see $V/$peer.log)"
  fi
done
