// Every sparse prefill method, one line each (the registry in sparse_method.cc reads this list).
// A method file defines its `MethodInfo XxxMethod()`; add it here and to AllSparseMethods().
#pragma once
#include <vector>

#include "methods/sparse_prefill/sparse_method.h"

namespace qattn::sparse {

MethodInfo DenseMethod();          // dense.cc: the full causal block list (the harness's sanity row)

inline std::vector<MethodInfo> AllSparseMethods() {
  return {
      DenseMethod(),
  };
}

}  // namespace qattn::sparse
