// An HTML page comparing sparse prefill methods on one input: a speed-versus-fidelity plot (speedup
// against min/mean kept mass and output error) and heatmaps of the blocks each method computed.
// Pictures are inline SVG, so the page is one self-contained file.
#pragma once
#include <string>
#include <vector>

#include "methods/sparse_prefill/harness.h"

namespace qattn::sparse {

struct ReportInput {
  std::string description;  // what the input is
  std::string shape;        // "n 32768, heads 8/2, d 128, bf16, 2 threads"
  std::string command;      // how to reproduce the page
};

std::string SparseReportHtml(const ReportInput& input, const std::vector<SparseReport>& reports);

}  // namespace qattn::sparse
