#!/usr/bin/env bash
# Reruns the standard benchmark shapes with `qattn bench attention --json` and prints a Markdown table
# (shape, seconds, GFLOP/s, GB/s, fraction of peak) for the README.
#
# usage: scripts/perf_table.sh [extra `bench attention` flags, e.g. --repeats 3 --remeasure-peak]
#   QATTN=path/to/qattn   the binary (default: build/qattn next to this script's repository)
#   THREADS=N             threads (default 2)
# The machine peak comes from qattn's peak cache (measured once, ~10 s, on first use).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
qattn=${QATTN:-$root/build/qattn}
threads=${THREADS:-2}
[[ -x $qattn ]] || { echo "perf_table.sh: no qattn binary at $qattn (build first, or set QATTN)" >&2; exit 2; }

# Each line: the flags of one standard shape.
shapes=(
  "--hq 32 --hkv 8 --d 128 --nq 4096 --nkv 4096 --causal --dtype bf16"
  "--hq 32 --hkv 8 --d 128 --nq 4096 --nkv 4096 --causal --dtype f32"
  "--hq 32 --hkv 32 --d 128 --nq 1 --nkv 32768 --dtype bf16"
  "--hq 32 --hkv 8 --d 128 --nq 1 --nkv 32768 --dtype bf16"
  "--hq 32 --hkv 4 --d 128 --nq 1 --nkv 32768 --dtype bf16"
  "--hq 32 --hkv 32 --d 128 --nq 1 --nkv 32768 --kv bf16"
  "--hq 32 --hkv 8 --d 128 --nq 1 --nkv 32768 --kv bf16"
  "--hq 32 --hkv 4 --d 128 --nq 1 --nkv 32768 --kv bf16"
)

results=$(mktemp)
trap 'rm -f "$results"' EXIT
for s in "${shapes[@]}"; do
  # shellcheck disable=SC2086  # $s is a list of flags
  "$qattn" bench attention $s --threads "$threads" --json "$@" >>"$results"
done

format_with_python() {
  python3 - "$results" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
print("| shape | dtype | seconds | GFLOP/s | GB/s | peak used | fraction of peak |")
print("|---|---|---:|---:|---:|---:|---:|")
for r in rows:
    kind = "decode" if r["mode"] == "decode" else "prefill causal" if r["causal"] else "prefill"
    if r.get("kv", "tensor") != "tensor":
        kind = "paged decode"
    shape = f"{kind}, H {r['h_q']}/{r['h_k']}, d {r['d_qk']}, n_q {r['n_q']}, n_kv {r['n_kv']}"
    if r["fraction_basis"] == "memory_bandwidth":
        basis, peak = "memory BW", f"{r['peak_gbps']:.1f} GB/s"
    else:
        basis, peak = "f32 FMA", f"{r['peak_gflops']:.0f} GFLOP/s"
    print(f"| {shape} | {r['dtype']} | {r['seconds']:.4f} | {r['gflops']:.1f} | {r['gbps']:.1f} "
          f"| {peak} | {100 * r['fraction_of_peak']:.1f}% of {basis} |")
r = rows[0]
print(f"\n{r['threads']} threads, isa {r['isa']}. Peaks: f32 FMA {r['peak_gflops']:.0f} GFLOP/s and bf16 dot "
      f"{r['peak_bf16_gflops']:.0f} GFLOP/s ({r['peak_source']}); decode rows divide by the median rate of plain "
      f"streaming reads of the same bytes interleaved with their runs (the cached best-case peak, best of many "
      f"2 ms reads, is {r['peak_gbps_cached']:.1f} GB/s). "
      f"Decode K/V are head-major ([H, n_kv, d], a KV cache's layout); paged decode reads the KV cache's "
      f"pages (256 tokens in 16-token tiles, bf16 in prefill's pair layout).")
PY
}

format_with_jq() {
  echo "| shape | dtype | seconds | GFLOP/s | GB/s | fraction of peak |"
  echo "|---|---|---:|---:|---:|---:|"
  jq -r '
    "| \(if .kv != null and .kv != "tensor" then "paged decode" elif .mode == "decode" then "decode" elif .causal then "prefill causal" else "prefill" end), H \(.h_q)/\(.h_k), d \(.d_qk), n_q \(.n_q), n_kv \(.n_kv) | \(.dtype) | \(.seconds * 10000 | round / 10000) | \(.gflops * 10 | round / 10) | \(.gbps * 10 | round / 10) | \(.fraction_of_peak * 1000 | round / 10)% of \(if .fraction_basis == "memory_bandwidth" then "memory BW" else "f32 FMA" end) |"' "$results"
}

if command -v python3 >/dev/null; then format_with_python
elif command -v jq >/dev/null; then format_with_jq
else echo "perf_table.sh: needs python3 or jq to format the table" >&2; exit 2
fi
