// llama2.c checkpoints (Karpathy's run.c "legacy" format and export "version 1") and its
// tokenizer.bin, converted to an in-memory GGUF with llama.cpp's llama metadata and tensor names, so
// the rest of the runtime sees one format.
//
// legacy:    7 x i32 {dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size (negative: untied
//            classifier follows), seq_len}, then f32 token_embedding [vocab, dim], rms_att [L, dim],
//            wq [L, dim, dim], wk [L, kv_dim, dim], wv [L, kv_dim, dim], wo [L, dim, dim],
//            rms_ffn [L, dim], w1 [L, hidden, dim], w2 [L, dim, hidden], w3 [L, hidden, dim],
//            rms_final [dim], freq_cis_real/imag [seq_len, head_size/2] (skipped), wcls [vocab, dim] if untied.
// version 1: 256-byte header: u32 magic 0x616b3432, i32 version = 1, the 7 i32, u8 shared_classifier,
//            zero padding; then f32 rms_att, rms_ffn, rms_final, tok_embeddings, wq, wk, wv, wo, w1, w2,
//            w3, wcls (if not shared).
// tokenizer.bin: i32 max_token_length, then per token: f32 score, i32 length, bytes.
// llama2.c's RoPE rotates interleaved pairs, which is ggml's normal (non-neox) mode: no permutation.
#pragma once
#include <string>

#include "model/gguf.h"

namespace qattn::model {

// True if the file starts like a GGUF file (magic "GGUF").
bool LooksLikeGguf(const std::string& path);
// Reads a llama2.c checkpoint and, if `tokenizer_path` is non-empty, its tokenizer.bin (vocab size must
// match), and returns the equivalent GGUF (architecture llama, tokenizer model llama with scores,
// token types: 1 normal, 2 unknown (id 0), 3 control (BOS 1, EOS 2), 6 byte (<0xNN>)).
GgufFile ConvertLlama2c(const std::string& checkpoint_path, const std::string& tokenizer_path);

// Opens any model file: GGUF directly, anything else as a llama2.c checkpoint with `tokenizer_path`, or
// when that is empty with tok512.bin, else tokenizer.bin, from the checkpoint's directory (an error
// names both when neither exists). A missing path: "cannot open 'PATH': No such file or directory".
GgufFile OpenModelFile(const std::string& path, const std::string& tokenizer_path = "");

}  // namespace qattn::model
