"""`qattn attend` against an fp64 NumPy reference over many flag combinations.

usage: test_attend.py path/to/qattn
Inputs are rounded to the kernel dtype in NumPy first (exactly as qattn converts them), so the
reference sees the same numbers and the tolerance only has to cover the kernel's arithmetic."""
import os

import numpy as np

from cli_common import (Failures, alibi_slopes, qattn_path, reference_attention, round_to, run,
                        scratch_dir)

# Absolute tolerances on outputs (values ~ N(0,1)) and LSE. bf16/f16 kernels may round
# probabilities to 16 bits before the PV product, so their budget is wider.
TOLERANCE = {"f32": (2e-5, 2e-5), "bf16": (1e-2, 1e-3), "f16": (2e-3, 1e-3)}

# (name, n_q, n_kv, H_q, H_k, H_v, d_qk, d_v, options)
CASES = [
    ("mha plain", 33, 33, 4, 4, 4, 32, 32, {}),
    ("causal gqa", 40, 40, 8, 2, 2, 32, 32, {"causal": True}),
    ("causal bottom-right n_q<n_kv", 17, 50, 4, 2, 2, 16, 16, {"causal": True}),
    ("causal n_q>n_kv empty rows", 10, 6, 2, 1, 1, 16, 16, {"causal": True}),
    ("causal window sinks", 48, 48, 4, 2, 2, 32, 32, {"causal": True, "window": (8, 0), "sinks": 4}),
    ("two-sided window", 30, 30, 2, 2, 2, 16, 16, {"window": (5, 3)}),
    ("left window only", 30, 45, 2, 1, 1, 16, 16, {"window": (7, -1)}),
    ("softcap scale", 24, 24, 4, 4, 4, 32, 32, {"softcap": 5.0, "scale": 0.3}),
    ("alibi 6 heads causal", 20, 20, 6, 3, 3, 16, 16, {"causal": True, "alibi": True}),
    ("alibi 8 heads", 12, 28, 8, 4, 4, 16, 16, {"alibi": True}),
    ("sink logits", 25, 25, 4, 2, 2, 16, 16, {"causal": True, "sink_logits": True}),
    ("sink logits, empty rows", 8, 5, 2, 2, 2, 16, 16, {"causal": True, "sink_logits": True}),
    ("mqa", 16, 40, 4, 1, 1, 32, 32, {"causal": True}),
    ("diffqkv dv!=dqk", 20, 20, 8, 2, 4, 32, 24, {"causal": True}),
    ("everything", 36, 36, 4, 2, 2, 32, 32,
     {"causal": True, "window": (10, 0), "sinks": 2, "softcap": 8.0, "alibi": True, "sink_logits": True}),
    ("decode gqa", 1, 77, 8, 2, 2, 32, 32, {}),
    ("decode causal window sinks alibi", 1, 64, 4, 2, 2, 32, 32,
     {"causal": True, "window": (16, 0), "sinks": 3, "alibi": True, "sink_logits": True}),
    ("decode softcap diffqkv", 1, 40, 4, 1, 2, 16, 8, {"softcap": 4.0}),
    ("bf16 causal gqa", 40, 40, 8, 2, 2, 64, 64, {"causal": True, "dtype": "bf16"}),
    ("bf16 window softcap", 30, 30, 4, 2, 2, 32, 32, {"window": (6, 2), "softcap": 6.0, "dtype": "bf16"}),
    ("bf16 decode", 1, 100, 8, 2, 2, 64, 64, {"dtype": "bf16", "sink_logits": True}),
    ("f16 causal", 24, 24, 4, 2, 2, 32, 32, {"causal": True, "dtype": "f16"}),
    ("one thread", 33, 33, 4, 2, 2, 32, 32, {"causal": True, "threads": 1}),
    ("no lse file", 9, 9, 2, 2, 2, 16, 16, {"no_lse": True}),
]


def flags_for(opts, paths):
    args = ["attend", "--q", paths["q"], "--k", paths["k"], "--v", paths["v"], "--out", paths["out"]]
    if not opts.get("no_lse"):
        args += ["--lse", paths["lse"]]
    if opts.get("causal"):
        args.append("--causal")
    if "window" in opts:
        args.append("--window=%d,%d" % opts["window"])  # '=' so a leading -1 is not read as a flag
    if "sinks" in opts:
        args += ["--sinks", opts["sinks"]]
    if "softcap" in opts:
        args += ["--softcap", opts["softcap"]]
    if "scale" in opts:
        args += ["--scale", opts["scale"]]
    if opts.get("alibi"):
        args.append("--alibi")
    if opts.get("sink_logits"):
        args += ["--sink-logits", paths["sinks"]]
    if "dtype" in opts:
        args += ["--dtype", opts["dtype"]]
    if "threads" in opts:
        args += ["--threads", opts["threads"]]
    return args


def compare(f, name, got, want, atol, what):
    if not f.check(got.shape == want.shape, f"{name}: {what} shape {got.shape}, expected {want.shape}"):
        return
    f.check(got.dtype == np.float32, f"{name}: {what} dtype {got.dtype}, expected float32")
    inf_want = np.isneginf(want)
    if not f.check(np.array_equal(np.isneginf(got), inf_want), f"{name}: {what} -inf entries differ"):
        return
    f.check(not np.isnan(got).any(), f"{name}: {what} has NaN")
    err = np.abs(got[~inf_want].astype(np.float64) - want[~inf_want]).max(initial=0.0)
    f.check(err <= atol, f"{name}: {what} max abs error {err:.3g} > {atol:.3g}")


def run_case(f, qattn, tmp, case, rng):
    name, n_q, n_kv, h_q, h_k, h_v, d_qk, d_v, opts = case
    dtype = opts.get("dtype", "f32")
    q = rng.standard_normal((n_q, h_q, d_qk)).astype(np.float32)
    k = rng.standard_normal((n_kv, h_k, d_qk)).astype(np.float32)
    v = rng.standard_normal((n_kv, h_v, d_v)).astype(np.float32)
    sink_logits = rng.uniform(-1.0, 2.0, h_q).astype(np.float32)
    paths = {x: os.path.join(tmp, f"{x}.npy") for x in ("q", "k", "v", "out", "lse", "sinks")}
    for x, a in (("q", q), ("k", k), ("v", v), ("sinks", sink_logits)):
        np.save(paths[x], a)
    for x in ("out", "lse"):
        if os.path.exists(paths[x]):
            os.remove(paths[x])

    r = run(qattn, flags_for(opts, paths))
    if not f.check(r.returncode == 0, f"{name}: exit {r.returncode}, stderr: {r.stderr.strip()}"):
        return
    want_out, want_lse = reference_attention(
        round_to(q, dtype), round_to(k, dtype), round_to(v, dtype), causal=opts.get("causal", False),
        window=opts.get("window", (-1, -1)), sinks=opts.get("sinks", 0), softcap=opts.get("softcap", 0.0),
        alibi=np.array(alibi_slopes(h_q)) if opts.get("alibi") else None,
        sink_logits=sink_logits.astype(np.float64) if opts.get("sink_logits") else None,
        scale=opts.get("scale", 0.0))
    atol_out, atol_lse = TOLERANCE[dtype]
    compare(f, name, np.load(paths["out"]), want_out, atol_out, "output")
    if opts.get("no_lse"):
        f.check(not os.path.exists(paths["lse"]), f"{name}: an LSE file was written without --lse")
    else:
        compare(f, name, np.load(paths["lse"]), want_lse, atol_lse, "lse")


def check_decode_matches_prefill_row(f, qattn, tmp, rng):
    """n_q = 1 (decode kernel) must equal the last row of a prefill over the same keys."""
    q = rng.standard_normal((6, 4, 32)).astype(np.float32)
    k = rng.standard_normal((30, 2, 32)).astype(np.float32)
    v = rng.standard_normal((30, 2, 32)).astype(np.float32)
    for x, a in (("q6", q), ("q1", q[-1:]), ("k", k), ("v", v)):
        np.save(os.path.join(tmp, x + ".npy"), a)
    outs = {}
    for x in ("q6", "q1"):
        r = run(qattn, ["attend", "--q", os.path.join(tmp, x + ".npy"), "--k", os.path.join(tmp, "k.npy"),
                        "--v", os.path.join(tmp, "v.npy"), "--out", os.path.join(tmp, x + "_o.npy"),
                        "--causal", "--window", "9,0", "--alibi"])
        if not f.check(r.returncode == 0, f"decode vs prefill: exit {r.returncode}: {r.stderr.strip()}"):
            return
        outs[x] = np.load(os.path.join(tmp, x + "_o.npy"))
    err = np.abs(outs["q6"][-1] - outs["q1"][0]).max()
    f.check(err <= 2e-5, f"decode vs prefill last row: max abs difference {err:.3g}")


def main():
    qattn = qattn_path()
    f = Failures()
    rng = np.random.default_rng(20240611)
    with scratch_dir() as tmp:
        for case in CASES:
            run_case(f, qattn, tmp, case, rng)
        check_decode_matches_prefill_row(f, qattn, tmp, rng)
    f.finish()


if __name__ == "__main__":
    main()
