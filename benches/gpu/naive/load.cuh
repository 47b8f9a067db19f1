// naive/load.cuh - part of the hand-written alternative (naive_monitor.cu): registration under load: the recorders and the registering threads.
// Included once, in order, by naive_monitor.cu (one translation unit), after its includes.
#ifndef NAIVE_LOAD_CUH
#define NAIVE_LOAD_CUH

// ---------------------------------------------------------------------------------------------
// Registration under load: 8 threads, each registering then unregistering its own pointers in
// a loop, while the sweeper runs. Latencies are kept in fixed arrays with an atomic count, so
// the main thread can read what a thread recorded even while that thread is still blocked.

constexpr size_t kLatencyCapacity = size_t{1} << 21;  // per kind per thread (8 MiB as float)

struct Recorder {
  std::unique_ptr<float[]> values{new float[kLatencyCapacity]};
  std::atomic<size_t> count{0};
  bool push(double us) {
    size_t n = count.load(std::memory_order_relaxed);
    if (n == kLatencyCapacity) return false;
    values[n] = static_cast<float>(us);
    count.store(n + 1, std::memory_order_release);
    return true;
  }
  void append_to(std::vector<double>* out) const {
    size_t n = count.load(std::memory_order_acquire);
    for (size_t i = 0; i < n; ++i) out->push_back(values[i]);
  }
};

struct Registrar {
  std::vector<void*> pointers;
  Recorder registers;
  Recorder unregisters;
  std::atomic<int64_t> call_started_ns{0};  // 0 when no call is in progress
  std::atomic<int> call_kind{0};            // 1 register, 2 unregister
  std::atomic<bool> done{false};
  std::atomic<long long> cut_at_stop{0};    // calls in progress when stop was requested
  std::atomic<long long> refused{0};
  bool capacity_reached = false;
  std::thread thread;
};

#endif  // NAIVE_LOAD_CUH
