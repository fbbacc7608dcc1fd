#include "methods/sparse_prefill/report_html.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <sstream>

namespace qattn::sparse {
namespace {

std::string Escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '<') out += "&lt;";
    else if (c == '>') out += "&gt;";
    else if (c == '&') out += "&amp;";
    else if (c == '"') out += "&quot;";
    else out += c;
  }
  return out;
}

std::string Fmt(const char* fmt, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, fmt, v);
  return buf;
}

const char* Colour(size_t i) {
  static const char* kColours[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                                   "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};
  return kColours[i % 10];
}

// Speedup (log x) against kept mass (y); each method one colour, one dot per run.
std::string ScatterSvg(const std::vector<SparseReport>& reports) {
  const double w = 640, h = 400, left = 60, bottom = 50, top = 20, right = 20;
  double max_speedup = 2.0;
  for (const SparseReport& r : reports) max_speedup = std::max(max_speedup, r.speedup * 1.2);
  auto x_of = [&](double s) { return left + (w - left - right) * std::log(std::max(s, 0.1) / 0.1) / std::log(max_speedup / 0.1); };
  auto y_of = [&](double m) { return h - bottom - (h - bottom - top) * std::clamp(m, 0.0, 1.0); };
  std::ostringstream svg;
  svg << "<svg xmlns='http://www.w3.org/2000/svg' width='" << w << "' height='" << h << "' font-size='11'>";
  svg << "<rect x='" << left << "' y='" << top << "' width='" << w - left - right << "' height='" << h - top - bottom
      << "' fill='none' stroke='#999'/>";
  for (double m : {0.0, 0.25, 0.5, 0.75, 0.9, 1.0}) {
    svg << "<text x='" << left - 6 << "' y='" << y_of(m) + 4 << "' text-anchor='end'>" << m << "</text>";
    svg << "<line x1='" << left << "' x2='" << w - right << "' y1='" << y_of(m) << "' y2='" << y_of(m) << "' stroke='#eee'/>";
  }
  for (double s : {0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0}) {
    if (s > max_speedup) break;
    svg << "<text x='" << x_of(s) << "' y='" << h - bottom + 14 << "' text-anchor='middle'>" << s << "x</text>";
    svg << "<line y1='" << top << "' y2='" << h - bottom << "' x1='" << x_of(s) << "' x2='" << x_of(s) << "' stroke='#eee'/>";
  }
  svg << "<text x='" << (w + left) / 2 << "' y='" << h - 12 << "' text-anchor='middle'>speedup over dense (selection included, log scale)</text>";
  svg << "<text transform='rotate(-90)' x='" << -(h - bottom + top) / 2 << "' y='14' text-anchor='middle'>min kept mass (filled) / mean (ring)</text>";
  for (size_t i = 0; i < reports.size(); ++i) {
    const SparseReport& r = reports[i];
    svg << "<circle cx='" << x_of(r.speedup) << "' cy='" << y_of(r.min_kept_mass) << "' r='5' fill='" << Colour(i)
        << "'><title>" << Escape(r.method) << "</title></circle>";
    svg << "<circle cx='" << x_of(r.speedup) << "' cy='" << y_of(r.mean_kept_mass) << "' r='5' fill='none' stroke='"
        << Colour(i) << "'/>";
  }
  svg << "</svg>";
  return svg.str();
}

// The computed blocks of one head, downsampled to at most 64 x 64 cells; a cell's shade (8 levels)
// is the fraction of its blocks computed. Equal neighbours in a row share one rect, keeping a
// 15-method, 8-head page at a few MB.
std::string HeatmapSvg(const CoverageMap& map, int head) {
  const int cells = std::min(map.num_blocks, 64);
  const double px = 192.0 / cells;
  auto level = [&](int y, int x) {
    const int r0 = y * map.num_blocks / cells, r1 = (y + 1) * map.num_blocks / cells;
    const int c0 = x * map.num_blocks / cells, c1 = (x + 1) * map.num_blocks / cells;
    int kept = 0, total = 0;
    for (int r = r0; r < r1; ++r) {
      for (int c = c0; c < std::min(c1, r + 1); ++c) {
        kept += map.at(head, r, c);
        ++total;
      }
    }
    return kept == 0 ? 0 : 1 + 7 * kept / std::max(total, 1);  // 0: nothing computed
  };
  std::ostringstream svg;
  svg << "<svg xmlns='http://www.w3.org/2000/svg' width='192' height='192'><rect width='192' height='192' fill='#fff' stroke='#ccc'/>";
  for (int y = 0; y < cells; ++y) {
    for (int x = 0; x <= y;) {
      const int l = level(y, x);
      int end = x + 1;
      while (end <= y && level(y, end) == l) ++end;
      if (l > 0) {
        const int shade = 230 - 25 * l;
        svg << "<rect x='" << x * px << "' y='" << y * px << "' width='" << (end - x) * px << "' height='" << px
            << "' fill='rgb(" << shade << "," << shade << ",255)'/>";
      }
      x = end;
    }
  }
  svg << "</svg>";
  return svg.str();
}

std::string Table(const std::vector<SparseReport>& reports) {
  std::ostringstream t;
  t << "<table><tr><th></th><th>method</th><th>granularity</th><th>select s</th><th>attend s</th><th>dense s</th>"
       "<th>speedup</th><th>density</th><th>mean kept mass</th><th>min kept mass</th><th>output rel. error</th></tr>";
  for (size_t i = 0; i < reports.size(); ++i) {
    const SparseReport& r = reports[i];
    t << "<tr><td style='color:" << Colour(i) << "'>&#9679;</td><td>" << Escape(r.method) << "</td><td>"
      << Escape(r.granularity) << "</td><td>" << Fmt("%.4f", r.select_seconds) << "</td><td>"
      << Fmt("%.4f", r.attend_seconds) << "</td><td>" << Fmt("%.4f", r.dense_seconds) << "</td><td>"
      << Fmt("%.2fx", r.speedup) << "</td><td>" << Fmt("%.4f", r.density) << "</td><td>"
      << Fmt("%.4f", r.mean_kept_mass) << "</td><td>" << Fmt("%.4f", r.min_kept_mass) << "</td><td>"
      << Fmt("%.2e", r.output_rel_error) << "</td></tr>";
  }
  t << "</table>";
  return t.str();
}

}  // namespace

std::string SparseReportHtml(const ReportInput& input, const std::vector<SparseReport>& reports) {
  std::ostringstream html;
  html << "<!doctype html><html><head><meta charset='utf-8'><title>qattn sparse prefill report</title><style>"
          "body{font-family:sans-serif;margin:24px}table{border-collapse:collapse}td,th{border:1px solid #ddd;"
          "padding:3px 8px;text-align:right}td:nth-child(2),td:nth-child(3){text-align:left}"
          ".maps{display:flex;flex-wrap:wrap;gap:16px}.map{font-size:12px}</style></head><body>";
  html << "<h1>Sparse prefill: speed against fidelity</h1><p>Input: " << Escape(input.description) << "<br>"
       << Escape(input.shape) << "<br>Reproduce: <code>" << Escape(input.command) << "</code></p>";
  html << ScatterSvg(reports) << Table(reports);
  html << "<h2>Blocks computed (lower triangle = causal; darker = more of the cell's blocks computed)</h2>";
  for (size_t i = 0; i < reports.size(); ++i) {
    const SparseReport& r = reports[i];
    html << "<h3 style='color:" << Colour(i) << "'>" << Escape(r.method) << "</h3><div class='maps'>";
    for (int h = 0; h < r.coverage.heads; ++h) {
      html << "<div class='map'>" << HeatmapSvg(r.coverage, h) << "<br>head " << h << ", kept mass "
           << Fmt("%.3f", r.head_mass.at(h)) << "</div>";
    }
    html << "</div>";
  }
  html << "</body></html>\n";
  return html.str();
}

}  // namespace qattn::sparse
