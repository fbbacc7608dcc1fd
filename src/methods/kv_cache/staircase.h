// SAQ-style staircase KV quantization (spec C7): the newest tokens stay in full precision, older
// ones step down one stair at a time. Stair 0 (full precision) collects up to `segment` tokens;
// when it is full they are quantized to stair 1 as one segment. Each middle stair holds one
// segment; when a newer segment arrives its old one steps down to the next stair (dequantized
// from its current stair and requantized, as the paper does: error compounds with age). The last
// stair holds every older token (the merged tail).
//
// Every stair is a PagedKvCache in its own format, with the same sequence ids; a stream's tokens
// are, oldest first, last stair ... stair 1, stair 0. Decode attends to each stair with the paged
// kernel and merges the partial results by log-sum-exp.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "methods/kv_cache/paged_cache.h"

namespace qattn::kv {

struct StaircaseConfig {
  int segment = 256;                                                  // tokens per segment (a multiple of 16)
  std::vector<KvDType> stairs = {KvDType::kBF16, KvDType::kInt8, KvDType::kInt4};  // newest first
  // "staircase[:segment=S,stairs=bf16/int8/int4]"; throws std::invalid_argument.
  static StaircaseConfig Parse(const std::string& spec);
  std::string Spec() const;
};

class StaircaseKvCache {
 public:
  StaircaseKvCache(const PagedCacheConfig& base, const StaircaseConfig& config);  // base.dtype is ignored

  int NewSequence();
  void FreeSequence(int seq);
  // Appends n tokens to every KV head of `layer` (k, v [n, H_kv * d] f32), stepping segments down.
  void Append(int seq, int layer, const float* k, const float* v, int64_t row_stride, int64_t n,
              const int32_t* positions);

  int num_stairs() const { return int(stairs_.size()); }
  PagedKvCache& stair(int i) { return *stairs_[i]; }
  const PagedKvCache& stair(int i) const { return *stairs_[i]; }
  const StaircaseConfig& config() const { return config_; }
  // Tokens of one stream over all stairs.
  int64_t length(int seq, int layer, int head) const;
  // Tokens [0, length) of a stream, oldest first, dequantized: k, v [length, d] f32.
  void Read(int seq, int layer, int head, float* k, float* v) const;
  // Every KV head of a layer over all stairs, oldest first, token-major: k, v [length, H_kv, d] f32
  // (stairs move all heads of a layer together, so every head holds as many tokens).
  void ReadLayer(int seq, int layer, float* k, float* v) const;
  // K and V bytes per token per layer averaged over the tokens held now (all stairs).
  double bytes_per_token_per_layer(int seq) const;
  int64_t pages_in_use() const;

 private:
  // Moves the oldest `count` tokens of every head of `layer` from stair i to stair i + 1.
  void StepDown(int seq, int layer, int i, int64_t count);

  StaircaseConfig config_;
  std::vector<std::unique_ptr<PagedKvCache>> stairs_;  // newest first
};

}  // namespace qattn::kv
