// The merge loop shared by both BPE flavours: a word starts as a list of small symbols, and the
// adjacent pair with the best priority is merged until no pair qualifies. SentencePiece ranks pairs
// by the merged piece's score, byte-level BPE by the merge rule's rank; ties go to the leftmost pair.
// A heap of candidate pairs makes this O(n log n) in the word length (a rescan per merge would be
// quadratic, and a word can be a whole file of letters).
#pragma once
#include <cstdint>
#include <optional>
#include <queue>
#include <vector>

namespace qattn::model::tok {

struct MergeSymbol {
  uint32_t begin = 0, end = 0;  // the symbol's span [begin, end) of the word (in bytes or characters)
  int32_t id = -1;              // its token id; -1 if the span is not a token
  int32_t prev = -1, next = -1; // neighbours in the list; -1 at the ends
};

struct MergeCandidate {
  double priority = 0;  // lower merges first
  int32_t merged_id = -1;
};

// Symbols [n] in word order, linked through prev/next. Returns the surviving symbols in order.
// `pair(left, right)` gives the candidate for two adjacent symbols, or std::nullopt if they never merge.
template <typename PairFn>
std::vector<MergeSymbol> MergeAdjacent(std::vector<MergeSymbol> symbols, PairFn&& pair) {
  struct Entry {
    MergeCandidate candidate;
    int32_t left, right;
    uint32_t left_end, right_end;  // the spans' ends when queued: a change means the entry is stale
  };
  const auto worse = [](const Entry& a, const Entry& b) {
    if (a.candidate.priority != b.candidate.priority) return a.candidate.priority > b.candidate.priority;
    return a.left > b.left;
  };
  std::priority_queue<Entry, std::vector<Entry>, decltype(worse)> queue(worse);
  const auto push = [&](int32_t left, int32_t right) {
    if (left < 0 || right < 0) return;
    if (const std::optional<MergeCandidate> c = pair(symbols[left], symbols[right])) {
      queue.push(Entry{*c, left, right, symbols[left].end, symbols[right].end});
    }
  };
  for (int32_t i = 0; i + 1 < int32_t(symbols.size()); ++i) push(i, i + 1);

  while (!queue.empty()) {
    const Entry e = queue.top();
    queue.pop();
    MergeSymbol& left = symbols[e.left];
    MergeSymbol& right = symbols[e.right];
    // A merged-away symbol is emptied; a grown one has a new end. Either makes the entry stale.
    if (left.begin == left.end || right.begin == right.end) continue;
    if (left.next != e.right || left.end != e.left_end || right.end != e.right_end) continue;
    left.end = right.end;
    left.id = e.candidate.merged_id;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = e.left;
    right.begin = right.end;
    push(left.prev, e.left);
    push(e.left, left.next);
  }

  std::vector<MergeSymbol> out;
  for (int32_t i = symbols.empty() ? -1 : 0; i >= 0; i = symbols[i].next) out.push_back(symbols[i]);
  return out;
}

// Symbols for spans [begin_i, begin_{i+1}) given as boundaries [n + 1], linked in order, ids unset.
inline std::vector<MergeSymbol> LinkedSymbols(const std::vector<uint32_t>& bounds) {
  std::vector<MergeSymbol> symbols(bounds.empty() ? 0 : bounds.size() - 1);
  for (size_t i = 0; i < symbols.size(); ++i) {
    symbols[i] = MergeSymbol{bounds[i], bounds[i + 1], -1, int32_t(i) - 1, i + 1 < symbols.size() ? int32_t(i + 1) : -1};
  }
  return symbols;
}

}  // namespace qattn::model::tok
