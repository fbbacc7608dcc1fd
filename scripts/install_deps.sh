#!/usr/bin/env bash
# Installs every build, test and benchmark dependency of qattn from Debian 12 packages.
# Safe to rerun; skips apt when everything is already present.
set -euo pipefail
packages=(
  build-essential cmake ninja-build pkg-config
  libhwy-dev            # SIMD with runtime dispatch
  libgtest-dev libgmock-dev libbenchmark-dev
  libcli11-dev nlohmann-json3-dev
  libdnnl-dev           # oneDNN: the plain GEMMs of the model runtime (faster here than OpenBLAS)
  ocl-icd-opencl-dev    # oneDNN's CMake config requires OpenCL headers (only a recommends of libdnnl-dev)
  libpcre2-dev          # Unicode regexes of byte-level BPE pre-tokenizers
  python3 python3-numpy # independent .npy writer/reader in CLI tests
  python3-torch         # independent PyTorch reference of each model architecture
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
