"""`qattn bench peak --json` and `qattn bench attention --json` on tiny sizes: the output is one JSON
object with the documented keys and self-consistent values, and the peak cache is used and kept.

usage: test_bench_json.py path/to/qattn
Runs with XDG_CACHE_HOME pointing at a scratch directory, so the user's cache is never touched."""
import json
import os

from cli_common import Failures, qattn_path, run, scratch_dir

PEAK_KEYS = {"cpu_model": str, "threads": int, "f32_isa": str, "f32_gflops": float, "bf16_gflops": float,
             "memory_gbps": float, "memory_bytes": int, "quick": bool, "measure_seconds": float,
             "other_running_tasks": int, "cache_path": str, "cache_key": str, "cached": bool}
BENCH_KEYS = {"mode": str, "n_q": int, "n_kv": int, "h_q": int, "h_k": int, "h_v": int, "d_qk": int, "d_v": int,
              "causal": bool, "dtype": str, "threads": int, "isa": str, "repeats": int, "warmup": int,
              "seconds": float, "seconds_min": float, "flops": float, "kv_bytes": float, "gflops": float,
              "gbps": float, "peak_gflops": float, "peak_bf16_gflops": float, "peak_gbps": float,
              "peak_source": str, "peak_other_running_tasks": int, "fraction_of_peak": float,
              "fraction_basis": str, "kv_layout": str, "peak_gbps_cached": float,
              "fraction_of_cached_peak": float}
TINY = ["--hq", "4", "--hkv", "2", "--d", "32", "--repeats", "3", "--warmup", "1", "--threads", "1"]


def parse_json(f, name, r, keys):
    """The single JSON object printed by a successful run, with every key of the right type."""
    if not f.check(r.returncode == 0, f"{name}: exit {r.returncode}, stderr: {r.stderr.strip()}"):
        return None
    try:
        obj = json.loads(r.stdout)
    except ValueError as e:
        f.check(False, f"{name}: stdout is not JSON ({e}): {r.stdout[:300]!r}")
        return None
    if not f.check(isinstance(obj, dict), f"{name}: JSON is not an object"):
        return None
    for key, kind in keys.items():
        ok = key in obj and (isinstance(obj[key], kind) or (kind is float and isinstance(obj[key], int)))
        f.check(ok, f"{name}: key {key!r} missing or not {kind.__name__}: {obj.get(key)!r}")
    return obj


def close(a, b, rel=1e-6):
    return abs(a - b) <= rel * max(abs(a), abs(b), 1e-30)


def check_peak(f, qattn, env, cache_file):
    obj = parse_json(f, "bench peak --quick", run(qattn, ["bench", "peak", "--json", "--quick", "--threads", "1"],
                                                  env=env), PEAK_KEYS)
    if not obj:
        return None
    f.check(obj["f32_gflops"] > 0 and obj["memory_gbps"] > 0, f"bench peak: non-positive peaks {obj}")
    f.check(obj["bf16_gflops"] >= 0, f"bench peak: negative bf16 peak {obj['bf16_gflops']}")
    f.check(obj["threads"] == 1 and obj["quick"] is True, f"bench peak: threads/quick wrong {obj}")
    f.check(obj["cache_path"] == cache_file, f"bench peak: cache path {obj['cache_path']}, expected {cache_file}")
    f.check(obj["cached"] is False and not os.path.exists(cache_file), "bench peak: a quick result was cached")
    table = run(qattn, ["bench", "peak", "--quick", "--threads", "1"], env=env)
    f.check(table.returncode == 0 and "GFLOP/s" in table.stdout, f"bench peak table: {table.stdout!r}")
    return obj["cache_key"]


def write_fake_cache(cache_file, key):
    """A cache entry with round numbers, so the test can tell it was used (and not re-measured)."""
    os.makedirs(os.path.dirname(cache_file), exist_ok=True)
    entry = {"cpu_model": "test", "threads": 1, "f32_isa": "test", "f32_gflops": 1000.0, "bf16_gflops": 2000.0,
             "memory_gbps": 100.0, "memory_bytes": 1 << 30, "measured_unix": 0}
    with open(cache_file, "w") as fh:
        json.dump({"version": 1, "entries": {key: entry}}, fh)


def check_attention(f, qattn, env, name, extra, mode, dtype):
    obj = parse_json(f, name, run(qattn, ["bench", "attention", "--json"] + TINY + extra, env=env), BENCH_KEYS)
    if not obj:
        return None
    f.check(obj["mode"] == mode and obj["dtype"] == dtype, f"{name}: mode/dtype {obj['mode']}/{obj['dtype']}")
    f.check(obj["threads"] == 1 and obj["repeats"] == 3, f"{name}: threads/repeats {obj['threads']}/{obj['repeats']}")
    f.check(obj["seconds"] > 0 and obj["seconds_min"] <= obj["seconds"], f"{name}: seconds {obj['seconds']}")
    f.check(close(obj["gflops"], obj["flops"] / obj["seconds"] / 1e9), f"{name}: gflops != flops / seconds")
    f.check(close(obj["gbps"], obj["kv_bytes"] / obj["seconds"] / 1e9), f"{name}: gbps != kv_bytes / seconds")
    basis = obj["gbps"] / obj["peak_gbps"] if mode == "decode" else obj["gflops"] / obj["peak_gflops"]
    f.check(close(obj["fraction_of_peak"], basis), f"{name}: fraction_of_peak {obj['fraction_of_peak']} != {basis}")
    return obj


def check_attention_runs(f, qattn, env, cache_file):
    obj = check_attention(f, qattn, env, "prefill causal f32", ["--nq", "64", "--nkv", "64", "--causal"], "prefill", "f32")
    if obj:
        f.check(obj["peak_source"] == "cache" and obj["peak_gflops"] == 1000.0 and obj["peak_gbps"] == 100.0,
                f"prefill: cached peak not used: {obj['peak_source']} {obj['peak_gflops']} {obj['peak_gbps']}")
        want = 2 * 64 * 64 * 4 * (32 + 32) / 2  # AttentionFlops, causal square: halved
        f.check(close(obj["flops"], want), f"prefill: flops {obj['flops']}, expected {want}")
        f.check(obj["causal"] is True and obj["n_q"] == 64 and obj["h_k"] == 2, f"prefill: shape fields {obj}")
    obj = check_attention(f, qattn, env, "decode bf16", ["--nq", "1", "--nkv", "256", "--dtype", "bf16"], "decode", "bf16")
    if obj:
        f.check(obj["kv_bytes"] == 2 * 256 * (2 * 32 + 2 * 32), f"decode: kv_bytes {obj['kv_bytes']}")
        f.check(obj["fraction_basis"] == "memory_bandwidth", f"decode: basis {obj['fraction_basis']}")
    # Paged int8 KV: the bytes read are the stored ones (d int8 values + one f32 scale per token,
    # head and K or V: 2 heads x 256 tokens x 2 x (32 + 4)).
    obj = check_attention(f, qattn, env, "decode int8 KV", ["--nq", "1", "--nkv", "256", "--kv", "int8"], "decode",
                          "int8")
    if obj:
        f.check(obj["kv_bytes"] == 2 * 256 * 2 * (32 + 4), f"decode int8: kv_bytes {obj['kv_bytes']}")
    r = run(qattn, ["bench", "decode", "--json", "--nkv", "512", "--hq", "4", "--hkv", "2", "--d", "32", "--budget",
                    "64", "--steps", "2", "--threads", "1"], env=env)
    obj = parse_json(f, "bench decode", r, {"policy": str, "seconds": float, "dense_seconds": float,
                                            "speedup": float, "bytes_read": float, "select_seconds": float,
                                            "attend_seconds": float, "dense_bytes_read": float})
    if obj:
        # Quest reads 64 tokens of each of 2 heads (bf16 K and V of 32 dims: 128 bytes per token).
        f.check(obj["bytes_read"] == 64 * 2 * 128 and obj["dense_bytes_read"] == 512 * 2 * 128,
                f"bench decode: bytes {obj['bytes_read']} / {obj['dense_bytes_read']}")
        f.check(close(obj["speedup"], obj["dense_seconds"] / obj["seconds"]), "bench decode: speedup")
    obj = check_attention(f, qattn, env, "diffqkv layout", ["--nq", "16", "--nkv", "48", "--hk", "1", "--hv", "4",
                                                            "--dv", "16"], "prefill", "f32")
    if obj:
        f.check((obj["h_k"], obj["h_v"], obj["d_v"]) == (1, 4, 16), f"diffqkv: layout fields {obj}")
    obj = check_attention(f, qattn, env, "remeasure quick", ["--nq", "8", "--nkv", "8", "--remeasure-peak",
                                                             "--quick-peak"], "prefill", "f32")
    if obj:
        f.check(obj["peak_source"] == "measured-quick" and obj["peak_gflops"] != 1000.0,
                f"remeasure: peak not re-measured: {obj['peak_source']}")
        with open(cache_file) as fh:
            kept = json.load(fh)["entries"]
        f.check(all(e["f32_gflops"] == 1000.0 for e in kept.values()), "remeasure --quick-peak overwrote the cache")
    table = run(qattn, ["bench", "attention"] + TINY + ["--nq", "32", "--nkv", "32"], env=env)
    f.check(table.returncode == 0 and "GFLOP/s" in table.stdout and "GB/s" in table.stdout,
            f"bench attention table: {table.returncode} {table.stdout!r} {table.stderr!r}")


def main():
    qattn = qattn_path()
    f = Failures()
    with scratch_dir() as tmp:
        env = dict(os.environ, XDG_CACHE_HOME=tmp)
        env.pop("QATTN_PEAK_CACHE", None)
        cache_file = os.path.join(tmp, "qattn", "peak.json")
        key = check_peak(f, qattn, env, cache_file)
        if key:
            write_fake_cache(cache_file, key)
            check_attention_runs(f, qattn, env, cache_file)
    f.finish()


if __name__ == "__main__":
    main()
