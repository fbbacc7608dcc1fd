"""Parity of qattn's model runtime with an independent PyTorch float64 reference (torch_reference.py):
logits at every position (`qattn eval logits`) and greedy continuations (`qattn run --temp 0`), on the
shipped stories260K model, on random-weight models of every architecture written by `qattn gen-model`
(llama, llama with Llama 3.1 rope factors, mistral with a sliding window, qwen2 with QKV biases and a
tied output, phi3 with fused qkv / gate-up and a sliding window), and on quantized / half-precision
weights. Also the llama2.c golden text recorded in models/stories260K/SOURCE.md.

usage: /usr/bin/python3 test_parity.py path/to/qattn path/to/models"""
import copy
import os
import re
import subprocess
import sys
import tempfile
import time
import unittest

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_reference as ref  # noqa: E402

QATTN = MODELS = TMP = None
STORIES = "stories260K/stories260K.gguf"
F32_TOL = 1e-4   # max |a - b| / max |b| for f32 weights (qattn computes in f32)
LOOSE_TOL = 3e-2  # the same against exact dequantized weights, for weights qattn runs as bf16
BF16_TOL = 1e-2   # the same against the reference's bf16_matmuls mode (qattn with an f32 KV cache)

# karpathy/llama2.c doc/stories260K.md: `./run stories260K/stories260K.bin -z stories260K/tok512.bin
# -t 0.0` (256 steps, no prompt; from BOS alone the model greedily writes "Once upon a time" itself, so
# this is also the output of the run recorded in SOURCE.md, `-n 256 -i "Once upon a time"`).
LLAMA2C_DOC_SAMPLE = (
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, "
    "she saw a big, red ball. She wanted to play with it, but it was too high.\n"
    "Lily's mom said, \"Lily, let's go to the park.\" Lily was sad and didn't know what to do. She said, "
    "\"I want to play with your ball, but I can't find it.\"\n"
    "Lily was sad and didn't know what to do. She said, \"I'm sorry, Lily. I didn't know what to do.\"\n"
    "Lily didn't want to help her mom, so she said, \"I'm sorry, mom. I didn't know what to do.\" Her mom "
    "said, \"Don't worry, Lily. We can help you.")


def qattn(*args, timeout=300):
    args = [str(a) for a in args]
    r = subprocess.run([QATTN, *args], capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise AssertionError(f"qattn {' '.join(args)} exited {r.returncode}: {r.stderr[-2000:]}")
    return r.stdout


def qattn_logits(model, ids, *extra):
    out = os.path.join(TMP, "logits.npy")
    qattn("eval", "logits", "-m", model, "--ids", " ".join(map(str, ids)), "-o", out, "--threads", 2, *extra)
    a = np.load(out)
    assert a.dtype == np.float32 and a.ndim == 2 and a.shape[0] == len(ids), (a.dtype, a.shape)
    return a


def run_ids(model, prompt, n):
    """(prompt ids as qattn tokenizes them, generated ids) of `qattn run --temp 0 --print-ids`."""
    common = ["run", "-p", prompt, "--temp", 0, "--print-ids", "--no-stats", "--threads", 2] + \
        (["-m", model] if model else [])
    prompt_ids = [int(t) for t in qattn(*common, "-n", 0).split()]
    ids = [int(t) for t in qattn(*common, "-n", n).split()]
    assert ids[:len(prompt_ids)] == prompt_ids, (prompt_ids, ids)
    return prompt_ids, ids[len(prompt_ids):]


def rel_err(a, b):
    return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())


def gen_model(arch, preset, seed, wtype="f32", std=0.3):
    path = os.path.join(TMP, f"{arch}-{preset}-{wtype}-{seed}.gguf")
    if not os.path.exists(path):
        qattn("gen-model", "--arch", arch, "--preset", preset, "--random", "--type", wtype,
              "--weight-std", std, "--seed", seed, "-o", path)
    return path


def random_ids(m, n, seed):
    rng = np.random.default_rng(seed)
    return [int(t) for t in rng.integers(3, m.tok_embd.shape[0], n)]


def variant(m, **changes):
    """A copy of reference model m with attributes replaced (for checks that a feature matters)."""
    c = copy.copy(m)
    for k, v in changes.items():
        setattr(c, k, v)
    return c


def no_bias(m):
    return variant(m, layers=[{k: (None if k.endswith(".bias") else v) for k, v in L.items()} for L in m.layers])


class Parity(unittest.TestCase):
    def assert_logits(self, what, a, b, tol):
        err = rel_err(a, b)
        print(f"  {what}: rel err {err:.2e} (limit {tol:.0e}), argmax agreement "
              f"{(a.argmax(1) == b.argmax(1)).mean():.3f}", flush=True)
        if err > tol:
            pos = np.abs(a - b).max(1) / np.abs(b).max()
            self.fail(f"{what}: rel err {err:.3e} > {tol:.0e}; first position over it: "
                      f"{int(np.argmax(pos > tol))} of {len(pos)}; per position: {np.round(pos, 6).tolist()}")

    def assert_differs(self, what, a, b, at_least=1e-2):
        """Sensitivity: a reference with a feature switched off must disagree with qattn."""
        err = rel_err(a, b)
        print(f"  control, {what}: rel err {err:.2e} (must be > {at_least:.0e})", flush=True)
        self.assertGreater(err, at_least, f"{what} does not change the logits: the test does not exercise it")

    def assert_greedy(self, what, m, prompt_ids, got):
        want = m.greedy(prompt_ids, len(got))
        print(f"  {what}: prompt {prompt_ids}\n    qattn {got}\n    ref   {want}", flush=True)
        if got != want:
            i = next(k for k in range(len(got)) if got[k] != want[k])
            row = m.logits(prompt_ids + want[:i])[-1]
            top = np.sort(row)[-2:]
            self.fail(f"{what}: continuation differs at new token {i}: qattn {got[i]} (ref logit "
                      f"{row[got[i]]:.6f}), ref {want[i]} ({row[want[i]]:.6f}); ref top-2 gap {top[1] - top[0]:.2e}")

    def assert_near_greedy(self, what, m, prompt_ids, got, tol):
        """Each of qattn's greedy tokens is within tol x max|logit| of the reference's best at its position."""
        rows = m.logits(prompt_ids + got)[len(prompt_ids) - 1:-1]
        worst = max((r.max() - r[t]) / np.abs(r).max() for r, t in zip(rows, got))
        exact = sum(int(r.argmax() == t) for r, t in zip(rows, got))
        print(f"  {what}: {exact}/{len(got)} tokens are the reference's argmax, worst logit shortfall "
              f"{worst:.2e} (limit {tol:.0e})", flush=True)
        self.assertLessEqual(worst, tol, f"{what}: qattn chose a token far from the reference's best")

    # ------------------------------------------------------------------------------ stories260K

    def test_stories_logits(self):
        path = os.path.join(MODELS, STORIES)
        m = ref.Model(path)
        print(f"stories260K ({path})")
        ids = [1, 403, 407, 261, 378, 432]
        self.assert_logits("6 ids", qattn_logits(path, ids), m.logits(ids), F32_TOL)
        long_ids = [1] + m.greedy([1], 99)  # 100 ids: crosses qattn's 64-token attention tiles
        b = m.logits(long_ids)
        self.assert_logits("100 ids", qattn_logits(path, long_ids), b, F32_TOL)
        self.assert_logits("100 ids, --batch 7", qattn_logits(path, long_ids, "--batch", 7), b, F32_TOL)
        rng = np.random.default_rng(7)
        rand_ids = [1] + [int(t) for t in rng.integers(3, 512, 79)]
        self.assert_logits("80 random ids, --batch 7", qattn_logits(path, rand_ids, "--batch", 7),
                           m.logits(rand_ids), F32_TOL)

    def test_stories_greedy(self):
        path = os.path.join(MODELS, STORIES)
        print("stories260K greedy")
        prompt_ids, got = run_ids(path, "Once upon a time", 40)
        self.assertEqual(len(got), 40)
        self.assert_greedy("run -n 40", ref.Model(path), prompt_ids, got)

    # qattn (default model) against the llama2.c run.c output recorded in SOURCE.md. run.c starts at BOS
    # and runs `-n` steps, each printing one token (the prompt's own tokens first), then a newline:
    # `-n 256` prints 256 tokens after BOS, i.e. 256 - (prompt tokens incl. BOS - 1) generated ones.
    # qattn's -n counts generated tokens only; it prints prompt + continuation + a newline.
    def test_stories_golden(self):
        with open(os.path.join(MODELS, "stories260K", "SOURCE.md"), encoding="utf-8") as f:
            source = f.read()
        found = re.search(r'^\$ \./run stories260K\.bin -z tok512\.bin -t 0 -n (\d+) -i "([^"]*)"\n(.*?)\n```',
                          source, re.S | re.M)
        self.assertIsNotNone(found, "no run.c output block in SOURCE.md")
        steps, prompt, recorded = int(found.group(1)), found.group(2), found.group(3)
        prompt_ids, _ = run_ids(None, prompt, 0)
        n_full = steps - (len(prompt_ids) - 1)
        print(f"golden: run.c -n {steps} -i {prompt!r}; prompt = {len(prompt_ids)} ids incl. BOS "
              f"-> qattn -n {n_full}; SOURCE.md records {len(recorded)} chars")

        out64 = qattn("run", "-p", prompt, "-n", 64, "--temp", 0, "--no-stats", "--threads", 2)
        self.assertTrue(out64.endswith("\n"), repr(out64[-40:]))
        print(f"  -n 64: {len(out64) - 1} chars, a prefix of the record: {recorded.startswith(out64[:-1])}")
        self.assertTrue(recorded.startswith(out64[:-1]), f"qattn -n 64:\n{out64}\nrecorded:\n{recorded}")
        self.assertGreaterEqual(len(out64) - 1, 150)

        out = qattn("run", "-p", prompt, "-n", n_full, "--temp", 0, "--no-stats", "--threads", 2)
        self.assertTrue(out.endswith("\n"), repr(out[-40:]))
        out = out[:-1]
        if out != recorded:
            print(f"  NOTE: qattn -n {n_full} differs from SOURCE.md's record.\n--- qattn:\n{out}\n"
                  f"--- SOURCE.md:\n{recorded}\n---")
        if out != recorded and out.startswith(recorded) and LLAMA2C_DOC_SAMPLE.startswith(recorded):
            # The record stops early (it lacks the last line of the 256-step output that llama2.c's own
            # doc shows); hold qattn to the full documented sample instead.
            print(f"  SOURCE.md's record is a truncated {steps}-step output ({len(recorded)} of "
                  f"{len(LLAMA2C_DOC_SAMPLE)} chars): checking against llama2.c doc/stories260K.md's sample")
            self.assertEqual(out, LLAMA2C_DOC_SAMPLE)
        else:
            self.assertEqual(out, recorded)
        print(f"  -n {n_full}: {len(out)} chars, exact")

    # ------------------------------------------------------------------- random f32 models

    def check_random_model(self, arch, preset, seed, controls):
        path = gen_model(arch, preset, seed)
        m = ref.Model(path)
        print(f"{arch} {preset} (seed {seed}, f32, std 0.3): n_head {m.n_head}/{m.n_head_kv}, head_dim "
              f"{m.head_dim}, n_rot {m.n_rot}, window {m.window}, neox {m.neox}, rope factors "
              f"{m.rope_factors is not None}, tied {m.output is m.tok_embd}, "
              f"bias {m.layers[0]['attn_q.bias'] is not None}", flush=True)
        ids = random_ids(m, 40, seed)
        a, b = qattn_logits(path, ids), m.logits(ids)
        self.assert_logits("40 ids", a, b, F32_TOL)
        self.assert_logits("40 ids, --batch 7", qattn_logits(path, ids, "--batch", 7), b, F32_TOL)
        long_ids = random_ids(m, 90, seed + 1)
        self.assert_logits("90 ids, --batch 7", qattn_logits(path, long_ids, "--batch", 7),
                           m.logits(long_ids), F32_TOL)
        for what, changed in controls(m):
            self.assert_differs(what, a, changed.logits(ids))
        prompt_ids, got = run_ids(path, "Hello world, this is", 12)
        self.assert_greedy("run -n 12", m, prompt_ids, got)

    def test_llama(self):
        self.check_random_model("llama", "tiny", 11, lambda m: [("NEOX rope", variant(m, neox=True))])

    def test_llama3_rope_factors(self):
        self.check_random_model("llama", "tiny-llama3", 12, lambda m: [
            ("without rope_freqs", variant(m, inv_freq=m.inv_freq * m.rope_factors))])

    def test_mistral_window(self):
        self.check_random_model("mistral", "tiny", 13, lambda m: [("no sliding window", variant(m, window=None))])

    def test_qwen2_bias_tied(self):
        self.check_random_model("qwen2", "tiny", 14, lambda m: [
            ("no QKV bias", no_bias(m)), ("normal (interleaved) rope", variant(m, neox=False))])

    def test_phi3_fused_window(self):
        self.check_random_model("phi3", "tiny", 15, lambda m: [
            ("no sliding window", variant(m, window=None)), ("normal (interleaved) rope", variant(m, neox=False))])

    # ------------------------------------------------------------- bf16 / f16 / q8_0 / q4_0

    # qattn runs non-f32 weights as bf16 (and bf16 matmul inputs), so against the exact dequantized
    # weights only a loose bound holds; random weights amplify bf16 rounding roughly in proportion to
    # their scale (std 0.3: 4-8%), hence std 0.05 here. The reference's bf16_matmuls mode reproduces
    # qattn's rounding (embedding table included), checked with qattn's KV cache in f32.
    def test_quantized(self):
        for arch, wtype, seed in [("llama", "bf16", 21), ("llama", "f16", 22), ("llama", "q8_0", 23),
                                  ("llama", "q4_0", 24), ("qwen2", "q4_0", 25), ("phi3", "q8_0", 26),
                                  ("mistral", "bf16", 27)]:
            with self.subTest(arch=arch, wtype=wtype):
                path = gen_model(arch, "tiny", seed, wtype, std=0.05)
                m, mb = ref.Model(path), ref.Model(path, bf16_matmuls=True)
                print(f"{arch} tiny, {wtype} weights (seed {seed}, std 0.05)", flush=True)
                ids = random_ids(m, 40, seed)
                self.assert_logits("40 ids vs exact weights", qattn_logits(path, ids), m.logits(ids), LOOSE_TOL)
                self.assert_logits("40 ids vs bf16 matmuls, --kv-dtype f32",
                                   qattn_logits(path, ids, "--kv-dtype", "f32"), mb.logits(ids), BF16_TOL)
                prompt_ids, got = run_ids(path, "Hello world, this is", 12)
                self.assert_near_greedy("run -n 12", mb, prompt_ids, got, LOOSE_TOL)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    QATTN, MODELS = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
    start = time.time()
    with tempfile.TemporaryDirectory(prefix="qattn_parity_") as TMP:
        result = unittest.main(argv=sys.argv[:1], verbosity=2, exit=False).result
    print(f"test_parity: {time.time() - start:.1f} s")
    sys.exit(0 if result.wasSuccessful() else 1)
