#!/usr/bin/env python3
"""Quality of every decode-time KV policy and KV format on one model, as Markdown tables.

Text: the model's own sample (`eval --self-generate`, dense, seeded). Policies: the first P tokens
are the prompt (prefilled densely, then evicted as the policy says), the rest are decoded one token
at a time (teacher forcing) and compared with dense decoding of the same steps: mean KL(dense ||
policy) and top-1 agreement, at budgets P/2, P/4, P/8, P/16. Formats: perplexity of the same text
with each KV storage.

usage: scripts/kv_quality.py [--qattn build/qattn] [-m MODEL] [--tokens 512] [--prompt 256]"""
import argparse
import json
import subprocess


def run(qattn, *args):
    out = subprocess.run([qattn, *map(str, args)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def policies(budget, calibrated):
    """Each method at a total budget of `budget` cached tokens, with its other sizes scaled to it.
    ReKV reads n_init + n_local + topk blocks of 16: the nearest its block size allows (24 for 16)."""
    init = 16 if budget >= 64 else 0
    local = budget // 4 if budget >= 64 else budget // 2
    return {
        "StreamingLLM": f"streamingllm:sinks=4,budget={budget}",
        "H2O": f"h2o:budget={budget}",
        "SnapKV": f"snapkv:budget={budget},window={min(8, budget // 2)}",
        "SnapKV (adaptive head budgets)": f"snapkv:budget={budget},window={min(8, budget // 2)},head_budgets=adaptive",
        "CompressKV": f"compresskv:budget={budget},window={min(8, budget // 2)}",
        "CompressKV (calibrated)": calibrated.replace("compresskv:", f"compresskv:budget={budget},window={min(8, budget // 2)},"),
        "Quest": f"quest:budget={budget}",
        "TokenSelect": f"tokenselect:n_init=4,n_local={budget // 4},budget={budget}",
        "ReKV": f"rekv:block=16,n_init={init},n_local={local},topk={max(1, (budget - init - local) // 16)}",
        "PromptDistill": f"promptdistill:layer=1,budget={budget}",
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--qattn", default="build/qattn")
    ap.add_argument("-m", "--model", default="models/stories260K/stories260K.gguf")
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--prompt", type=int, default=256)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    common = ["-m", a.model, "--self-generate", a.tokens - 1, "--seed", a.seed, "--json"]
    budgets = [a.prompt // f for f in (2, 4, 8, 16)]
    # CompressKV's offline step on a different sample (seed + 1) of the same model.
    calibrated = run(a.qattn, "calibrate", "compresskv", "-m", a.model, "--runs", 16, "--self-generate", 128,
                     "--needle", 6, "--seed", a.seed + 1, "--json")["spec"]
    print(f"KL(dense || policy) and top-1 agreement over {a.tokens - a.prompt} decode steps after a "
          f"{a.prompt}-token prompt ({a.model}, text: the model's own seeded sample)\n")
    print("| policy | " + " | ".join(f"budget {b} (1/{a.prompt // b})" for b in budgets) + " |")
    print("|---|" + "---|" * len(budgets))
    for name in policies(budgets[0], calibrated):
        cells = []
        for b in budgets:
            r = run(a.qattn, "eval", "kl", *common, "--decode-from", a.prompt, "--attention",
                    policies(b, calibrated)[name])
            cells.append(f"{r['mean_kl']:.4f} / {r['top1_agreement']:.3f}")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
    print(f"\nPerplexity of the same {a.tokens} tokens by KV storage (prefill windows read the stored K/V)\n")
    print("| KV storage | perplexity |")
    print("|---|---|")
    for kv in ("f32", "bf16", "int8", "int4", "staircase:segment=64", "staircase:segment=16"):
        r = run(a.qattn, "eval", "ppl", *common, "--kv", kv)
        print(f"| {kv} | {r['perplexity']:.4f} |", flush=True)


if __name__ == "__main__":
    main()
