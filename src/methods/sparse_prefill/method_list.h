// Every sparse prefill method, one line each (the registry in sparse_method.cc reads this list).
// A method file defines its `MethodInfo XxxMethod()`; add it here and to AllSparseMethods().
#pragma once
#include <vector>

#include "methods/sparse_prefill/sparse_method.h"

namespace qattn::sparse {

MethodInfo DenseMethod();          // dense.cc: the full causal block list (the harness's sanity row)
MethodInfo StreamingLlmMethod();   // streaming_llm.cc: A-shape sinks + local window, token-exact
MethodInfo VerticalSlashMethod();  // vertical_slash.cc: MInference vertical-slash at block granularity
MethodInfo FlexPrefillMethod();    // flexprefill.cc: FlexPrefill, per query head
MethodInfo BsaTopkMethod();        // bsa_topk.cc: top-k / top-p key blocks by pooled scores
MethodInfo SaleMethod();           // sale.cc: SALE, 4-bit estimates and relative score thresholds
MethodInfo NsaMethod();            // nsa.cc: NSA without trained weights (pooled compressor, gate-free merge)
MethodInfo SqueezedMethod();       // squeezed.cc: Squeezed Attention (offline k-means, centroid lookup per query block)
MethodInfo DraftMethod();          // draft_attention.cc: DraftAttention-1D (pooled draft map, per-head global top)
MethodInfo PyramidMethod();        // pyramid.cc: Pyramid Sparse Attention (pooled levels 1/2/4/8 per block pair)
MethodInfo DmaMethod();            // dma.cc: Dynamic Mask Attention, training-free (top-w keys + value bias)

inline std::vector<MethodInfo> AllSparseMethods() {
  return {
      DenseMethod(),
      StreamingLlmMethod(),
      VerticalSlashMethod(),
      FlexPrefillMethod(),
      BsaTopkMethod(),
      SaleMethod(),
      NsaMethod(),
      SqueezedMethod(),
      DraftMethod(),
      PyramidMethod(),
      DmaMethod(),
  };
}

}  // namespace qattn::sparse
