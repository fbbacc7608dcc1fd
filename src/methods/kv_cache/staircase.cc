#include "methods/kv_cache/staircase.h"

#include <cstring>
#include <sstream>
#include <stdexcept>

#include "methods/sparse_prefill/sparse_method.h"

namespace qattn::kv {

StaircaseConfig StaircaseConfig::Parse(const std::string& spec) {
  const size_t colon = spec.find(':');
  if (spec.substr(0, colon) != "staircase") throw std::invalid_argument("not a staircase spec: '" + spec + "'");
  sparse::MethodOptions o = sparse::MethodOptions::Parse(colon == std::string::npos ? "" : spec.substr(colon + 1));
  StaircaseConfig c;
  c.segment = int(o.Int("segment", c.segment));
  const std::string stairs = o.String("stairs", "");
  o.CheckAllUsed("staircase");
  if (!stairs.empty()) {
    c.stairs.clear();
    std::stringstream in(stairs);
    std::string item;
    while (std::getline(in, item, '/')) c.stairs.push_back(ParseKvDType(item));
  }
  if (c.segment < kKvTileTokens || c.segment % kKvTileTokens) throw std::invalid_argument("segment must be a multiple of 16");
  if (c.stairs.size() < 2) throw std::invalid_argument("a staircase needs at least two stairs");
  return c;
}

std::string StaircaseConfig::Spec() const {
  std::string s = "staircase:segment=" + std::to_string(segment) + ",stairs=";
  for (size_t i = 0; i < stairs.size(); ++i) s += std::string(i ? "/" : "") + KvDTypeName(stairs[i]);
  return s;
}

StaircaseKvCache::StaircaseKvCache(const PagedCacheConfig& base, const StaircaseConfig& config) : config_(config) {
  for (KvDType t : config.stairs) {
    PagedCacheConfig c = base;
    c.dtype = t;
    stairs_.push_back(std::make_unique<PagedKvCache>(c));
  }
}

int StaircaseKvCache::NewSequence() {
  int seq = -1;
  for (auto& s : stairs_) seq = s->NewSequence();  // the stairs allocate ids in lockstep
  return seq;
}

void StaircaseKvCache::FreeSequence(int seq) {
  for (auto& s : stairs_) s->FreeSequence(seq);
}

int64_t StaircaseKvCache::length(int seq, int layer, int head) const {
  int64_t n = 0;
  for (const auto& s : stairs_) n += s->length(seq, layer, head);
  return n;
}

void StaircaseKvCache::StepDown(int seq, int layer, int i, int64_t count) {
  PagedKvCache& from = *stairs_[i];
  const PagedCacheConfig& c = from.config();
  const int64_t width = int64_t(c.n_head_kv) * c.head_dim;
  std::vector<float> k(size_t(count * width)), v(k.size());  // [count, H_kv, d] dequantized
  from.ReadLayer(seq, layer, 0, count, k.data(), v.data());
  const std::vector<int32_t> positions(from.positions(seq, layer, 0).begin(),
                                       from.positions(seq, layer, 0).begin() + count);
  stairs_[i + 1]->Append(seq, layer, k.data(), v.data(), width, count, positions.data());
  std::vector<int32_t> rest;
  for (int64_t t = count; t < from.length(seq, layer, 0); ++t) rest.push_back(int32_t(t));
  for (int h = 0; h < c.n_head_kv; ++h) from.Keep(seq, layer, h, rest);
}

void StaircaseKvCache::Append(int seq, int layer, const float* k, const float* v, int64_t row_stride, int64_t n,
                              const int32_t* positions) {
  const int64_t seg = config_.segment;
  for (int64_t t0 = 0; t0 < n;) {
    // Fill stair 0 up to one segment, then cascade: a middle stair that now holds two segments
    // passes its older one down.
    const int64_t room = seg - stairs_[0]->length(seq, layer, 0);
    const int64_t m = std::min(room, n - t0);
    stairs_[0]->Append(seq, layer, k + t0 * row_stride, v + t0 * row_stride, row_stride, m, positions + t0);
    t0 += m;
    if (stairs_[0]->length(seq, layer, 0) < seg) continue;
    StepDown(seq, layer, 0, seg);
    for (int i = 1; i + 1 < num_stairs(); ++i) {
      if (stairs_[i]->length(seq, layer, 0) > seg) StepDown(seq, layer, i, stairs_[i]->length(seq, layer, 0) - seg);
    }
  }
}

void StaircaseKvCache::Read(int seq, int layer, int head, float* k, float* v) const {
  const int d = stairs_[0]->config().head_dim;
  int64_t at = 0;
  for (int i = num_stairs() - 1; i >= 0; --i) {
    const int64_t n = stairs_[i]->length(seq, layer, head);
    stairs_[i]->Read(seq, layer, head, 0, n, k + at * d, v + at * d);
    at += n;
  }
}

void StaircaseKvCache::ReadLayer(int seq, int layer, float* k, float* v) const {
  const PagedCacheConfig& c = stairs_[0]->config();
  const int64_t width = int64_t(c.n_head_kv) * c.head_dim;
  int64_t at = 0;
  for (int i = num_stairs() - 1; i >= 0; --i) {
    const int64_t n = stairs_[i]->length(seq, layer, 0);
    stairs_[i]->ReadLayer(seq, layer, 0, n, k + at * width, v + at * width);
    at += n;
  }
}

double StaircaseKvCache::bytes_per_token_per_layer(int seq) const {
  double bytes = 0;
  int64_t tokens = 0;
  const PagedCacheConfig& c = stairs_[0]->config();
  for (const auto& s : stairs_) {
    int64_t n = 0;
    for (int l = 0; l < c.n_layer; ++l) n += s->length(seq, l, 0);
    bytes += double(n) * s->bytes_per_token_per_layer();
    tokens += n;
  }
  return tokens ? bytes / double(tokens) : stairs_[0]->bytes_per_token_per_layer();
}

int64_t StaircaseKvCache::pages_in_use() const {
  int64_t n = 0;
  for (const auto& s : stairs_) n += s->pages_in_use();
  return n;
}

}  // namespace qattn::kv
