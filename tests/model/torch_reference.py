"""An independent PyTorch (float64) reference of the llama.cpp architectures llama, mistral, qwen2 and
phi3, reading GGUF files with its own numpy parser. Written from the published model definitions
(Hugging Face transformers' LlamaForCausalLM / MistralForCausalLM / Qwen2ForCausalLM / Phi3ForCausalLM,
with llama.cpp's tensor naming and RoPE conventions), not from qattn's C++. It is the yardstick of
tests/model/test_parity.py; it imports nothing from the project.

    m = Model("model.gguf")
    m.logits([1, 2, 3])   # np.ndarray [3, n_vocab], float64
    m.greedy([1, 2, 3], 10)  # the 10 argmax continuation ids

Model(path, bf16_matmuls=True) additionally rounds both operands of every matrix product (the weights,
the embedding table and each product's input rows) to bfloat16, keeping float64 everywhere else: the
arithmetic of an engine that runs non-f32 weights as bf16 with f32 accumulation.
"""
import math
import struct

import numpy as np
import torch

# ------------------------------------------------------------------------------------------- GGUF

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
            10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
# ggml type -> (name, elements per block, bytes per block)
GGML_TYPES = {0: ("f32", 1, 4), 1: ("f16", 1, 2), 2: ("q4_0", 32, 18), 8: ("q8_0", 32, 34),
              30: ("bf16", 1, 2)}


def dequantize(ggml_type, raw, n):
    """n elements of ggml type `ggml_type` stored in the bytes `raw` -> float32 numpy vector."""
    name, block, nbytes = GGML_TYPES[ggml_type]
    buf = np.frombuffer(raw, dtype=np.uint8, count=n // block * nbytes)
    if name == "f32":
        return buf.view("<f4").copy()
    if name == "f16":
        return buf.view("<f2").astype(np.float32)
    if name == "bf16":
        return (buf.view("<u2").astype(np.uint32) << 16).view(np.float32)
    blocks = buf.reshape(-1, nbytes)
    d = blocks[:, :2].copy().view("<f2").astype(np.float32)  # [n_blocks, 1]
    if name == "q8_0":  # f16 d, then 32 int8: x = d * q
        q = blocks[:, 2:].copy().view(np.int8).astype(np.float32)
    else:  # q4_0: f16 d, then 16 bytes; element j = low nibble of byte j, j+16 = high nibble
        qs = blocks[:, 2:]
        q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float32) - 8.0
    return (q * d).reshape(-1)


class GGUF:
    """GGUF v2/v3: .version, .metadata {key: value}, .tensors {name: (dims fastest-first, type)},
    .tensor(name) -> float32 array of shape reversed(dims) (dims [in, out] -> rows=out, cols=in)."""

    def __init__(self, path):
        with open(path, "rb") as f:
            self.data = f.read()
        self.pos = 0
        magic, self.version = self._take("<4s"), self._take("<I")
        if magic != b"GGUF" or self.version not in (2, 3):
            raise ValueError(f"{path}: not a GGUF v2/v3 file")
        n_tensors, n_kv = self._take("<Q"), self._take("<Q")
        self.metadata = {}
        for _ in range(n_kv):
            key = self._string()
            self.metadata[key] = self._value(self._take("<I"))
        infos = []
        for _ in range(n_tensors):
            name = self._string()
            dims = [self._take("<Q") for _ in range(self._take("<I"))]
            infos.append((name, dims, self._take("<I"), self._take("<Q")))
        align = self.metadata.get("general.alignment", 32)
        data_start = (self.pos + align - 1) // align * align
        self.tensors = {name: (dims, t) for name, dims, t, _ in infos}
        self._offsets = {name: data_start + off for name, _, _, off in infos}

    def _take(self, fmt):
        (v,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return v

    def _string(self):
        n = self._take("<Q")
        s = self.data[self.pos:self.pos + n].decode("utf-8", "replace")
        self.pos += n
        return s

    def _value(self, t):
        if t == _STRING:
            return self._string()
        if t == _ARRAY:
            et, n = self._take("<I"), self._take("<Q")
            return [self._value(et) for _ in range(n)]
        return self._take(_SCALARS[t])

    def tensor(self, name):
        dims, t = self.tensors[name]
        n = math.prod(dims)
        off = self._offsets[name]
        return dequantize(t, self.data[off:off + n // GGML_TYPES[t][1] * GGML_TYPES[t][2]], n) \
            .reshape(tuple(reversed(dims)))


# ------------------------------------------------------------------------------------------ model

NEOX_ARCHS = {"qwen2", "phi3"}  # rotate (x[i], x[i + n_rot/2]); llama/mistral: (x[2i], x[2i+1])


def rms_norm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


class Model:
    def __init__(self, path, bf16_matmuls=False):
        g = GGUF(path)
        self.round = (lambda t: t.to(torch.bfloat16).to(torch.float64)) if bf16_matmuls else (lambda t: t)
        self.arch = arch = g.metadata["general.architecture"]
        if arch not in ("llama", "mistral", "qwen2", "phi3"):
            raise ValueError(f"unsupported architecture {arch}")
        meta = lambda key, default=None: g.metadata.get(f"{arch}.{key}", default)
        self.n_embd, self.n_layer = meta("embedding_length"), meta("block_count")
        self.n_head, self.n_head_kv = meta("attention.head_count"), meta("attention.head_count_kv")
        self.n_ff, self.eps = meta("feed_forward_length"), meta("attention.layer_norm_rms_epsilon")
        self.head_dim = self.n_embd // self.n_head
        self.n_rot = meta("rope.dimension_count", self.head_dim)
        self.window = meta("attention.sliding_window")
        self.pos_scale = 1.0
        if meta("rope.scaling.type") == "linear":
            self.pos_scale = 1.0 / meta("rope.scaling.factor")
        V = lambda name: torch.from_numpy(g.tensor(name).astype(np.float64))  # vectors
        W = lambda name: self.round(V(name))  # matrices
        self.neox = arch in NEOX_ARCHS
        self.tok_embd = W("token_embd.weight")
        self.output_norm = V("output_norm.weight")
        self.output = W("output.weight") if "output.weight" in g.tensors else self.tok_embd
        inv_freq = float(meta("rope.freq_base", 10000.0)) ** (
            -torch.arange(0, self.n_rot, 2, dtype=torch.float64) / self.n_rot)
        self.rope_factors = V("rope_freqs.weight") if "rope_freqs.weight" in g.tensors else None
        if self.rope_factors is not None:  # Llama 3.1 style per-frequency factors
            inv_freq = inv_freq / self.rope_factors
        self.inv_freq = inv_freq
        self.layers = []
        q_dim, kv_dim = self.n_head * self.head_dim, self.n_head_kv * self.head_dim
        for i in range(self.n_layer):
            L = {k: W(f"blk.{i}.{k}.weight") for k in ("attn_output", "ffn_down")}
            L.update({k: V(f"blk.{i}.{k}.weight") for k in ("attn_norm", "ffn_norm")})
            if arch == "phi3":
                qkv, up = W(f"blk.{i}.attn_qkv.weight"), W(f"blk.{i}.ffn_up.weight")
                L["attn_q"], L["attn_k"], L["attn_v"] = qkv.split([q_dim, kv_dim, kv_dim], dim=0)
                L["ffn_gate"], L["ffn_up"] = up.split([self.n_ff, self.n_ff], dim=0)
            else:
                for k in ("attn_q", "attn_k", "attn_v", "ffn_gate", "ffn_up"):
                    L[k] = W(f"blk.{i}.{k}.weight")
            for k in ("attn_q", "attn_k", "attn_v"):
                name = f"blk.{i}.{k}.bias"
                L[k + ".bias"] = V(name) if name in g.tensors else None
            self.layers.append(L)

    def rope(self, x, pos):
        """x [n_heads, n, head_dim], pos [n] -> x with the first n_rot dims rotated."""
        ang = (pos.to(torch.float64)[:, None] * self.pos_scale) * self.inv_freq[None, :]  # [n, n_rot/2]
        cos, sin = ang.cos(), ang.sin()
        r, rest = x[..., :self.n_rot], x[..., self.n_rot:]
        if self.neox:
            a, b = r[..., :self.n_rot // 2], r[..., self.n_rot // 2:]
            r = torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1)
        else:
            a, b = r[..., 0::2], r[..., 1::2]
            r = torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-2)
        return torch.cat([r, rest], dim=-1)

    def attention(self, L, x, pos, extra_mask=None, kv_fn=None, capture=None):
        n, hd = x.shape[0], self.head_dim
        proj = lambda k: self.mm(x, L[k]) + (L[k + ".bias"] if L[k + ".bias"] is not None else 0)
        q = proj("attn_q").view(n, self.n_head, hd).transpose(0, 1)
        k = proj("attn_k").view(n, self.n_head_kv, hd).transpose(0, 1)
        v = proj("attn_v").view(n, self.n_head_kv, hd).transpose(0, 1)
        q, k = self.rope(q, pos), self.rope(k, pos)
        if capture is not None:  # post-RoPE q [n_head, n, hd] and k [n_head_kv, n, hd]
            capture["q"], capture["k"] = q, k
        if kv_fn is not None:  # e.g. quantize the cached keys and values as a KV format would
            k, v = kv_fn(k), kv_fn(v)
        group = self.n_head // self.n_head_kv  # query head h uses KV head h // group
        k, v = k.repeat_interleave(group, dim=0), v.repeat_interleave(group, dim=0)
        scores = q @ k.transpose(1, 2) / math.sqrt(hd)  # [n_head, n, n]
        i, j = pos[:, None], pos[None, :]
        allowed = j <= i
        if self.window:
            allowed = allowed & (j > i - self.window)
        if extra_mask is not None:  # e.g. what a KV eviction policy leaves each query row
            allowed = allowed & extra_mask(i, j)
        scores = scores.masked_fill(~allowed, float("-inf"))
        out = torch.softmax(scores, dim=-1) @ v  # [n_head, n, hd]
        return self.mm(out.transpose(0, 1).reshape(n, self.n_head * hd), L["attn_output"])

    def mm(self, x, w):  # x [n, in] @ w [out, in]^T
        return self.round(x) @ w.T

    def mlp(self, L, x):
        return self.mm(torch.nn.functional.silu(self.mm(x, L["ffn_gate"])) * self.mm(x, L["ffn_up"]), L["ffn_down"])

    @torch.no_grad()
    def logits(self, tokens, extra_mask=None, kv_fn=None, layer_masks=None, keep_after=None, capture=None):
        """extra_mask(i, j) -> bool tensor: keys j each query row i may also see (besides causal);
        kv_fn(t) -> t: applied to post-RoPE keys and to values, [heads, n, head_dim];
        layer_masks {layer: mask}: replaces extra_mask in that layer;
        keep_after {layer: row indices}: only those rows continue after that layer;
        capture {layer: {}}: filled with that layer's post-RoPE "q" [H, n, hd] and "k" [H_kv, n, hd]."""
        tokens = torch.as_tensor(list(tokens), dtype=torch.long)
        pos = torch.arange(len(tokens))
        x = self.tok_embd[tokens]
        for index, L in enumerate(self.layers):
            mask = (layer_masks or {}).get(index, extra_mask)
            cap = (capture or {}).get(index)
            x = x + self.attention(L, rms_norm(x, L["attn_norm"], self.eps), pos, mask, kv_fn, cap)
            x = x + self.mlp(L, rms_norm(x, L["ffn_norm"], self.eps))
            if keep_after and index in keep_after:
                x, pos = x[keep_after[index]], pos[keep_after[index]]
        return self.mm(rms_norm(x, self.output_norm, self.eps), self.output).numpy()

    def greedy(self, tokens, n_new):
        seq = list(tokens)
        for _ in range(n_new):
            seq.append(int(np.argmax(self.logits(seq)[-1])))
        return seq[len(tokens):]


if __name__ == "__main__":
    import sys
    m = Model(sys.argv[1])
    ids = [int(t) for t in sys.argv[2:]] or [1]
    print(m.arch, "continuation:", m.greedy(ids, 16))
