"""Shared helpers for the qattn CLI tests: running the binary, an independent fp64 NumPy reference
of attention (written from the semantics in src/kernels/attention.h, sharing no code with qattn),
dtype rounding, and the standard ALiBi slopes."""
import math
import os
import subprocess
import sys
import tempfile

import numpy as np


def qattn_path():
    if len(sys.argv) < 2:
        sys.exit(f"usage: {sys.argv[0]} path/to/qattn")
    return os.path.abspath(sys.argv[1])


def run(qattn, args, env=None, timeout=120):
    """Runs qattn with args (a list); returns the CompletedProcess with text stdout/stderr."""
    return subprocess.run([qattn] + [str(a) for a in args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def scratch_dir():
    return tempfile.TemporaryDirectory(prefix="qattn_cli_")


class Failures:
    """Collects check failures so one run reports all of them, then exits non-zero if any."""

    def __init__(self):
        self.messages = []
        self.checks = 0

    def check(self, ok, message):
        self.checks += 1
        if not ok:
            self.messages.append(message)
            print("FAIL:", message, flush=True)
        return ok

    def finish(self):
        print(f"{self.checks - len(self.messages)}/{self.checks} checks passed")
        sys.exit(1 if self.messages else 0)


# ---------------------------------------------------------------- rounding

def round_bf16(x):
    """float32 -> nearest-even bfloat16 -> float32, as qattn's --dtype bf16 converts inputs."""
    u = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
    return u.astype(np.uint32).view(np.float32)


def round_to(x, dtype):
    if dtype == "f32":
        return np.asarray(x, dtype=np.float32)
    if dtype == "bf16":
        return round_bf16(x)
    if dtype == "f16":
        return np.asarray(x, dtype=np.float32).astype(np.float16).astype(np.float32)
    raise ValueError(dtype)


# ---------------------------------------------------------------- ALiBi

def alibi_slopes(n):
    """The slopes from the ALiBi authors' reference code (ofirpress/attention_with_linear_biases)."""
    def power_of_2(n):
        start = 2 ** (-2 ** -(math.log2(n) - 3))
        return [start * start ** i for i in range(n)]

    if math.log2(n).is_integer():
        return power_of_2(n)
    closest = 2 ** math.floor(math.log2(n))
    return power_of_2(closest) + alibi_slopes(2 * closest)[0::2][: n - closest]


# ---------------------------------------------------------------- reference attention

def reference_attention(q, k, v, causal=False, window=(-1, -1), sinks=0, softcap=0.0,
                        alibi=None, sink_logits=None, scale=0.0):
    """fp64 attention. q [n_q, H_q, d_qk], k [n_kv, H_k, d_qk], v [n_kv, H_v, d_v].
    Returns out [n_q, H_q, d_v] and lse [n_q, H_q] (-inf, or the sink logit, where a row sees no key).
    Query row i sits at position i + n_kv - n_q; key j at j."""
    q, k, v = (np.asarray(x, dtype=np.float64) for x in (q, k, v))
    n_q, h_q, d_qk = q.shape
    n_kv, h_k, _ = k.shape
    h_v, d_v = v.shape[1], v.shape[2]
    scale = scale if scale else 1.0 / math.sqrt(d_qk)

    pos = np.arange(n_q)[:, None] + (n_kv - n_q)  # [n_q, 1]
    j = np.arange(n_kv)[None, :]                    # [1, n_kv]
    visible = np.ones((n_q, n_kv), dtype=bool)
    if causal:
        visible &= j <= pos
    in_window = np.ones((n_q, n_kv), dtype=bool)
    if window[0] >= 0:
        in_window &= j >= pos - window[0]
    if window[1] >= 0:
        in_window &= j <= pos + window[1]
    visible &= (j < sinks) | in_window

    out = np.zeros((n_q, h_q, d_v))
    lse = np.zeros((n_q, h_q))
    for h in range(h_q):
        kh, vh = h // (h_q // h_k), h // (h_q // h_v)
        s = scale * (q[:, h, :] @ k[:, kh, :].T)  # [n_q, n_kv]
        if softcap:
            s = softcap * np.tanh(s / softcap)
        if alibi is not None:
            s = s - alibi[h] * np.abs(pos - j)
        s = np.where(visible, s, -np.inf)
        m = s.max(axis=1)  # [n_q]
        if sink_logits is not None:
            m = np.maximum(m, sink_logits[h])
        m_safe = np.where(np.isfinite(m), m, 0.0)
        p = np.exp(s - m_safe[:, None])  # exp(-inf) = 0 for hidden keys
        den = p.sum(axis=1)
        if sink_logits is not None:
            den = den + np.exp(sink_logits[h] - m_safe)
        with np.errstate(divide="ignore", invalid="ignore"):
            out[:, h, :] = np.where(den[:, None] > 0, (p @ v[:, vh, :]) / den[:, None], 0.0)
            lse[:, h] = np.where(den > 0, m_safe + np.log(den), -np.inf)
    return out, lse
