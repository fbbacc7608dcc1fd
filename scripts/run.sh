#!/usr/bin/env bash
# Quick start, first command: install, build, and run the main job (the attention benchmark at
# its default shape: prefill, 32 query / 8 KV heads, head dim 128, 4096 tokens). Extra arguments
# are passed to `qattn bench attention`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
./build/qattn bench attention "$@"
