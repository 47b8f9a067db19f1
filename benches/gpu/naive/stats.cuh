// naive/stats.cuh - part of the hand-written alternative (naive_monitor.cu): clock, RESULT lines and percentiles.
// Included once, in order, by naive_monitor.cu (one translation unit), after its includes.
#ifndef NAIVE_STATS_CUH
#define NAIVE_STATS_CUH

// ---------------------------------------------------------------------------------------------
// Helpers.

static int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

static void fail(const char* what, const char* detail) {
  std::fprintf(stderr, "naive_monitor: %s: %s\n", what, detail);
  std::fflush(stdout);
  std::fflush(stderr);
  std::_Exit(1);
}

#define CHECK_RT(call)                                   \
  do {                                                   \
    cudaError_t e_ = (call);                             \
    if (e_ != cudaSuccess) fail(#call, cudaGetErrorString(e_)); \
  } while (0)

#define CHECK_DRV(call)                                  \
  do {                                                   \
    CUresult r_ = (call);                                \
    if (r_ != CUDA_SUCCESS) {                            \
      const char* s_ = "unknown";                        \
      cuGetErrorName(r_, &s_);                           \
      fail(#call, s_);                                   \
    }                                                    \
  } while (0)

static void result(const char* key, double value) {
  if (std::isnan(value)) {
    std::printf("RESULT naive %s nan\n", key);
  } else if (value == std::floor(value) && std::fabs(value) < 1e15) {
    std::printf("RESULT naive %s %.0f\n", key, value);
  } else {
    std::printf("RESULT naive %s %.3f\n", key, value);
  }
  std::fflush(stdout);
}

static void result(const std::string& key, double value) { result(key.c_str(), value); }

// Nearest-rank percentile (q in (0, 1]) of a sample; nan when there is none.
static double percentile(std::vector<double> v, double q) {
  if (v.empty()) return std::nan("");
  std::sort(v.begin(), v.end());
  size_t rank = static_cast<size_t>(std::ceil(q * static_cast<double>(v.size())));
  if (rank < 1) rank = 1;
  if (rank > v.size()) rank = v.size();
  return v[rank - 1];
}

static double maximum(const std::vector<double>& v) {
  return v.empty() ? std::nan("") : *std::max_element(v.begin(), v.end());
}

#endif  // NAIVE_STATS_CUH
