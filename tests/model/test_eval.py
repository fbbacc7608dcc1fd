"""`qattn eval ppl | kl` and `qattn run`'s handling of bad input, against independent references.

- eval ppl: the perplexity qattn prints equals exp(mean NLL) computed here from the float64 PyTorch
  reference's logits (torch_reference.py) on the same token ids, in one window and in several
  windows (--ctx smaller than the text: each window starts afresh, its first token is not scored).
- eval kl: dense against dense is exactly zero divergence and full top-1 agreement; --self-generate
  samples the text from the model itself.
- run: sampling with a seed is reproducible; a truncated model, an unknown policy, bad sampling values
  and an over-long prompt exit 2 with one line naming the problem.

usage: /usr/bin/python3 test_eval.py path/to/qattn path/to/models"""
import json
import os
import subprocess
import sys
import tempfile
import unittest

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_reference as ref  # noqa: E402

QATTN = MODELS = None


def qattn(*args, expect=0):
    r = subprocess.run([QATTN, *map(str, args)], capture_output=True, text=True, timeout=300)
    if r.returncode != expect:
        raise AssertionError(f"qattn {' '.join(map(str, args))} exited {r.returncode} (expected {expect}):\n{r.stderr}")
    return r


def reference_nll(model, ids, ctx):
    """Mean NLL over windows of ctx tokens, each window scored from its second token."""
    total, count = 0.0, 0
    for start in range(0, len(ids), ctx):
        window = ids[start:start + ctx]
        if len(window) < 2:
            continue
        logits = model.logits(window).astype(np.float64)
        logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
        for i in range(len(window) - 1):
            total += logz[i] - logits[i, window[i + 1]]
            count += 1
    return total / count, count


class Eval(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.stories = os.path.join(MODELS, "stories260K", "stories260K.gguf")
        cls.model = ref.Model(cls.stories)
        # A real sentence's ids (the tokenizer is tested elsewhere) plus a greedy continuation.
        ids = [int(x) for x in qattn("tokenize", "-m", cls.stories, "--bos",
                                      "Once upon a time, a little dog ran to the park.").stdout.split()]
        cls.ids = ids + cls.model.greedy(ids, 60)

    def test_perplexity_matches_reference(self):
        for ctx in (128, 32):  # one window; several windows
            out = json.loads(qattn("eval", "ppl", "-m", self.stories, "--ids", " ".join(map(str, self.ids)),
                                   "--ctx", ctx, "--json", "--threads", 2).stdout)
            nll, count = reference_nll(self.model, self.ids, ctx)
            print(f"ctx {ctx}: qattn ppl {out['perplexity']:.6f} over {out['tokens_scored']}, "
                  f"reference {np.exp(nll):.6f} over {count}")
            self.assertEqual(out["tokens_scored"], count)
            self.assertAlmostEqual(out["perplexity"], float(np.exp(nll)), delta=1e-4 * np.exp(nll))

    def test_perplexity_of_text_file(self):
        with tempfile.NamedTemporaryFile("w", suffix=".txt") as f:
            f.write("Once upon a time, there was a little girl named Lily.")
            f.flush()
            out = json.loads(qattn("eval", "ppl", "-m", self.stories, "-f", f.name, "--json").stdout)
        # The model wrote this sentence itself under greedy decoding: it finds it very likely.
        self.assertLess(out["perplexity"], 3.0)
        self.assertGreater(out["perplexity"], 1.0)

    def test_dense_against_dense_is_exact(self):
        out = json.loads(qattn("eval", "kl", "-m", self.stories, "--ids", " ".join(map(str, self.ids)),
                               "--attention", "dense", "--json").stdout)
        self.assertEqual(out["positions"], len(self.ids) - 1)
        self.assertEqual(out["mean_kl"], 0.0)
        self.assertEqual(out["top1_agreement"], 1.0)

    def test_self_generate(self):
        out = json.loads(qattn("eval", "kl", "-m", self.stories, "--self-generate", 50, "--seed", 3, "--json").stdout)
        self.assertEqual(out["positions"], 50)
        self.assertEqual(out["top1_agreement"], 1.0)

    def test_seeded_sampling_is_reproducible(self):
        a = qattn("run", "-p", "Once", "-n", 30, "--seed", 5, "--temp", 1.0, "--no-stats").stdout
        b = qattn("run", "-p", "Once", "-n", 30, "--seed", 5, "--temp", 1.0, "--no-stats").stdout
        c = qattn("run", "-p", "Once", "-n", 30, "--seed", 6, "--temp", 1.0, "--no-stats").stdout
        self.assertEqual(a, b)
        self.assertNotEqual(a, c)

    def assert_bad(self, args, *words):
        r = qattn(*args, expect=2)
        lines = r.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, r.stderr)
        for w in words:
            self.assertIn(w, lines[0])

    def test_bad_input(self):
        with tempfile.TemporaryDirectory() as tmp:
            cut = os.path.join(tmp, "cut.gguf")
            with open(self.stories, "rb") as src, open(cut, "wb") as dst:
                dst.write(src.read()[:600000])
            self.assert_bad(["run", "-m", cut, "-p", "Hi"], "cut.gguf")
            self.assert_bad(["eval", "ppl", "-m", cut, "-p", "Hi there"], "cut.gguf")
        self.assert_bad(["run", "-p", "Hi", "--attention", "magic"], "magic")
        self.assert_bad(["run", "-p", "Hi", "--top-p", "0"], "--top-p")
        self.assert_bad(["run", "-p", "Hi", "--kv", "int3"], "--kv")
        self.assert_bad(["run", "-p", "Once upon a time " * 20, "--ctx", "16"], "context")
        self.assert_bad(["eval", "ppl", "--ids", "1 2 99999"], "99999")
        self.assert_bad(["eval", "ppl"], "exactly one")


    def test_sparse_policy_and_dump(self):
        # A sparse method as the runtime's attention policy: every block kept equals dense.
        out = json.loads(qattn("eval", "kl", "-m", self.stories, "--ids", " ".join(map(str, self.ids)),
                               "--attention", "dense_blocks:block=16", "--json").stdout)
        self.assertLess(out["mean_kl"], 1e-9)
        self.assertEqual(out["top1_agreement"], 1.0)
        self.assert_bad(["eval", "kl", "--self-generate", "10", "--attention", "flexprefil:gamma=0.9"], "flexprefil")
        with tempfile.TemporaryDirectory() as tmp:
            qattn("run", "-m", self.stories, "-p", "Once upon a time, there was a dog.", "-n", 2, "--temp", 0,
                  "--dump-qkv", tmp, "--no-stats")
            q = np.load(os.path.join(tmp, "layer3_q.npy"))
            k = np.load(os.path.join(tmp, "layer3_k.npy"))
            self.assertEqual(q.shape[1:], (8, 8))
            self.assertEqual(k.shape[1:], (4, 8))
            self.assertEqual(q.shape[0], k.shape[0])
            # The dump is a valid bench input; all blocks kept must reproduce dense.
            rep = json.loads(qattn("bench", "sparse", "--method", "dense_blocks:block=16", "--input", tmp,
                                   "--layer", 3, "--json", "--dtype", "f32", "--repeats", 1).stdout)
            for key in ("select_seconds", "attend_seconds", "dense_seconds", "speedup", "density",
                        "mean_kept_mass", "min_kept_mass", "output_rel_error"):
                self.assertIn(key, rep)
            self.assertEqual(rep["density"], 1.0)
            self.assertLess(rep["output_rel_error"], 1e-5)


    def test_report_sparse(self):
        with tempfile.TemporaryDirectory() as tmp:
            qattn("report", "sparse", "-o", tmp, "--n", 1536, "--hq", 4, "--hkv", 2, "--d", 64,
                  "--methods", "dense_blocks;streamingllm:sink=64,local=256", "--threads", 2)
            rows = json.load(open(os.path.join(tmp, "results.json")))
            self.assertEqual([r["method"].split(":")[0] for r in rows], ["dense_blocks", "streamingllm"])
            self.assertEqual(rows[0]["density"], 1.0)
            self.assertLess(rows[1]["density"], 0.7)  # sinks + a 256-token window of 1536
            page = open(os.path.join(tmp, "index.html")).read()
            self.assertEqual(page.count("<svg"), 1 + 2 * 4)  # the plot, then one heatmap per method and head
        self.assert_bad(["report", "sparse", "-o", "/tmp/x", "--methods", "nope"], "nope")


if __name__ == "__main__":
    QATTN, MODELS = sys.argv[1], sys.argv[2]
    unittest.main(argv=sys.argv[:1], verbosity=2)
