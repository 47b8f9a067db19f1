// naive/monitor.cuh - part of the hand-written alternative (naive_monitor.cu): the naive monitor: one map behind one mutex, and its sweeper.
// Included once, in order, by naive_monitor.cu (one translation unit), after its includes.
#ifndef NAIVE_MONITOR_CUH
#define NAIVE_MONITOR_CUH

// ---------------------------------------------------------------------------------------------
// The naive monitor.

enum Verdict : int { kResident = 0, kViolation = 1, kCheckFailed = 2 };

struct Entry {
  size_t size;
  std::string label;
  int verdict;
};

// The classification such a checker writes: device memory and not managed is fine, anything
// else is a violation. (The runtime reports managed memory as its own type,
// cudaMemoryTypeManaged, so `type == cudaMemoryTypeDevice` is "device and not managed".)
static int classify(const cudaPointerAttributes& a) {
  return a.type == cudaMemoryTypeDevice ? kResident : kViolation;
}

static int query(const void* p) {
  cudaPointerAttributes a;
  std::memset(&a, 0, sizeof a);
  cudaError_t e = cudaPointerGetAttributes(&a, p);
  if (e != cudaSuccess) {
    cudaGetLastError();  // clear the runtime's last error
    return kCheckFailed;
  }
  return classify(a);
}

class NaiveMonitor {
 public:
  // Asks the driver, then inserts under the lock. Refuses memory that is not resident.
  bool register_buffer(void* p, size_t size, const std::string& label) {
    if (query(p) != kResident) return false;
    insert(p, size, label);
    return true;
  }

  void insert(void* p, size_t size, const std::string& label) {
    std::lock_guard<std::mutex> guard(mutex_);
    map_.insert_or_assign(p, Entry{size, label, kResident});
  }

  bool unregister_buffer(void* p) {
    std::lock_guard<std::mutex> guard(mutex_);
    return map_.erase(p) == 1;
  }

  // One full check: every entry, one cudaPointerGetAttributes each, all under the lock.
  // Returns the number of entries not resident.
  size_t sweep() {
    std::lock_guard<std::mutex> guard(mutex_);
    size_t bad = 0;
    for (auto& kv : map_) {
      int verdict = query(kv.first);
      kv.second.verdict = verdict;
      if (verdict != kResident) ++bad;
    }
    return bad;
  }

  size_t size() {
    std::lock_guard<std::mutex> guard(mutex_);
    return map_.size();
  }

 private:
  std::mutex mutex_;
  std::unordered_map<void*, Entry> map_;
};

// The naive monitor's thread at its most aggressive: one full sweep after another.
class ContinuousSweeper {
 public:
  explicit ContinuousSweeper(NaiveMonitor& monitor) : monitor_(monitor) {}

  void start() {
    thread_ = std::thread([this] {
      cudaSetDevice(0);
      while (!stop_.load()) {
        size_t bad = monitor_.sweep();
        if (bad) violations_.fetch_add(static_cast<long long>(bad));
        passes_.fetch_add(1);
      }
      exited_.store(true);
    });
    // Wait until it is sweeping for real (its first pass done).
    while (passes_.load() == 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }

  // Asks it to stop after its current pass and waits up to `timeout_ms` for it. Returns
  // whether it ended (if not, it is detached and left running).
  bool stop(int timeout_ms) {
    stop_.store(true);
    int64_t deadline = now_ns() + static_cast<int64_t>(timeout_ms) * 1000000;
    while (!exited_.load() && now_ns() < deadline) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    if (exited_.load()) {
      thread_.join();
      return true;
    }
    thread_.detach();
    return false;
  }

  long long passes() const { return passes_.load(); }
  long long violations() const { return violations_.load(); }

 private:
  NaiveMonitor& monitor_;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> exited_{false};
  std::atomic<long long> passes_{0};
  std::atomic<long long> violations_{0};
};

#endif  // NAIVE_MONITOR_CUH
