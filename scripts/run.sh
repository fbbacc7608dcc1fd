#!/usr/bin/env bash
# Quick start, first command: install, build, and run the main job: generate text with the shipped
# model (stories260K, a real 260K-parameter Llama trained on TinyStories). Extra arguments are passed
# to `qattn run`; without any, it continues "Once upon a time" greedily for 200 tokens.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
if (($# == 0)); then
  set -- -p "Once upon a time" -n 200 --temp 0
fi
./build/qattn run "$@"
