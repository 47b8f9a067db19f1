// The obvious alternative to vram-monitor, measured the same way.
//
// This is the residency checker a C++ engine writes by hand: a std::unordered_map from pointer
// to entry (size, label, last verdict) behind one std::mutex, and a sweeper thread that walks
// the map calling cudaPointerGetAttributes on every entry while holding the lock. Registration
// asks the driver first (as vram-monitor does), then inserts under the same mutex.
//
// It prints its figures as `RESULT naive <key> <value>` lines (microseconds unless the key
// says otherwise; `nan` where a figure has no sample) for scripts/gpu-suites/40-performance.sh,
// which puts them beside vram-monitor's (examples/perf_gpu.rs) in docs/performance.md.
//
// Build and run on the GPU machine (CUDA 13.0, gcc 13):
//   nvcc -O2 -std=c++17 -arch=sm_90 naive_monitor.cu -lcuda -o naive_monitor && ./naive_monitor
//
// About 3 GB of GPU memory (100,000 x 4 KiB, 8,000 x 4 KiB, 10,000 x 256 KiB) and well under
// two minutes. A watchdog ends the process (exit status 3) if it ever runs past 180 s.

#include <cuda.h>
#include <cuda_runtime.h>
#include <malloc.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

// ---------------------------------------------------------------------------------------------
// Heap accounting: a replacement of the global operator new/delete that counts, while enabled,
// the bytes asked for and the blocks live. Only the memory figure turns it on; otherwise it
// costs one relaxed load per call. (The aligned forms are left to the library: libstdc++'s use
// aligned_alloc/free and never reach these.)

namespace heap {
std::atomic<bool> counting{false};
std::atomic<long long> requested_bytes{0};
std::atomic<long long> usable_bytes{0};
std::atomic<long long> blocks{0};

inline void on_alloc(void* p, std::size_t n) {
  if (counting.load(std::memory_order_relaxed)) {
    requested_bytes.fetch_add(static_cast<long long>(n), std::memory_order_relaxed);
    usable_bytes.fetch_add(static_cast<long long>(malloc_usable_size(p)), std::memory_order_relaxed);
    blocks.fetch_add(1, std::memory_order_relaxed);
  }
}

// `n` is the size given to sized delete; unsized delete only knows the usable size.
inline void on_free(void* p, std::size_t n) {
  if (counting.load(std::memory_order_relaxed)) {
    long long usable = static_cast<long long>(malloc_usable_size(p));
    requested_bytes.fetch_sub(n ? static_cast<long long>(n) : usable, std::memory_order_relaxed);
    usable_bytes.fetch_sub(usable, std::memory_order_relaxed);
    blocks.fetch_sub(1, std::memory_order_relaxed);
  }
}

// Not inlined: GCC would otherwise see `new` paired with free() and warn.
__attribute__((noinline)) void* allocate(std::size_t n) {
  void* p = std::malloc(n ? n : 1);
  if (p) on_alloc(p, n);
  return p;
}

__attribute__((noinline)) void release(void* p, std::size_t n) {
  if (!p) return;
  on_free(p, n);
  std::free(p);
}
}  // namespace heap

void* operator new(std::size_t n) {
  void* p = heap::allocate(n);
  if (!p) std::abort();  // nvcc compiles operator new for the device too, where throw is not allowed
  return p;
}
void* operator new[](std::size_t n) {
  void* p = heap::allocate(n);
  if (!p) std::abort();  // nvcc compiles operator new for the device too, where throw is not allowed
  return p;
}
void* operator new(std::size_t n, const std::nothrow_t&) noexcept { return heap::allocate(n); }
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept { return heap::allocate(n); }
void operator delete(void* p) noexcept { heap::release(p, 0); }
void operator delete[](void* p) noexcept { heap::release(p, 0); }
void operator delete(void* p, std::size_t n) noexcept { heap::release(p, n); }
void operator delete[](void* p, std::size_t n) noexcept { heap::release(p, n); }
void operator delete(void* p, const std::nothrow_t&) noexcept { heap::release(p, 0); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { heap::release(p, 0); }

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

// ---------------------------------------------------------------------------------------------
// The floor: the same 8 attributes vram-monitor asks for, with the driver API, in a tight loop.

static const CUpointer_attribute kAttributes[8] = {
    CU_POINTER_ATTRIBUTE_MEMORY_TYPE,      CU_POINTER_ATTRIBUTE_IS_MANAGED,   CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL,
    CU_POINTER_ATTRIBUTE_BUFFER_ID,        CU_POINTER_ATTRIBUTE_RANGE_START_ADDR, CU_POINTER_ATTRIBUTE_RANGE_SIZE,
    CU_POINTER_ATTRIBUTE_MAPPING_SIZE,     CU_POINTER_ATTRIBUTE_MAPPING_BASE_ADDR,
};
static_assert(CU_POINTER_ATTRIBUTE_MEMORY_TYPE == 2 && CU_POINTER_ATTRIBUTE_IS_MANAGED == 8 &&
                  CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL == 9 && CU_POINTER_ATTRIBUTE_BUFFER_ID == 7 &&
                  CU_POINTER_ATTRIBUTE_RANGE_START_ADDR == 11 && CU_POINTER_ATTRIBUTE_RANGE_SIZE == 12 &&
                  CU_POINTER_ATTRIBUTE_MAPPING_SIZE == 18 && CU_POINTER_ATTRIBUTE_MAPPING_BASE_ADDR == 19,
              "the attribute numbers vram-monitor uses (src/core/driver.rs)");

// One pass over `pointers`; returns its time in us and counts the plain device answers.
static double floor_pass_us(const std::vector<void*>& pointers, size_t* device) {
  CUpointer_attribute attributes[8];
  std::memcpy(attributes, kAttributes, sizeof attributes);
  size_t count = 0;
  int64_t t0 = now_ns();
  for (void* p : pointers) {
    unsigned int memory_type = 0;
    unsigned int is_managed = 0;
    int ordinal = -2;
    unsigned long long buffer_id = 0;
    CUdeviceptr range_start = 0;
    size_t range_size = 0;
    size_t mapping_size = 0;
    void* mapping_base = nullptr;
    void* data[8] = {&memory_type, &is_managed, &ordinal,      &buffer_id,
                     &range_start, &range_size, &mapping_size, &mapping_base};
    CUresult r = cuPointerGetAttributes(8, attributes, data, reinterpret_cast<CUdeviceptr>(p));
    if (r == CUDA_SUCCESS && memory_type == CU_MEMORYTYPE_DEVICE && !is_managed) ++count;
  }
  double us = static_cast<double>(now_ns() - t0) / 1e3;
  *device = count;
  return us;
}

static double best_floor_us(const std::vector<void*>& pointers) {
  double best = 1e300;
  for (int rep = 0; rep < 5; ++rep) {
    size_t device = 0;
    best = std::min(best, floor_pass_us(pointers, &device));
    if (device != pointers.size()) {
      std::fprintf(stderr, "naive_monitor: floor: %zu of %zu pointers were not plain device memory\n",
                   pointers.size() - device, pointers.size());
    }
  }
  return best;
}

static double best_sweep_us(NaiveMonitor& monitor) {
  double best = 1e300;
  for (int rep = 0; rep < 5; ++rep) {
    int64_t t0 = now_ns();
    size_t bad = monitor.sweep();
    best = std::min(best, static_cast<double>(now_ns() - t0) / 1e3);
    if (bad) std::fprintf(stderr, "naive_monitor: sweep: %zu entries not resident\n", bad);
  }
  return best;
}

static std::vector<void*> allocate_device(size_t count, size_t bytes) {
  std::vector<void*> pointers(count, nullptr);
  for (size_t i = 0; i < count; ++i) CHECK_RT(cudaMalloc(&pointers[i], bytes));
  return pointers;
}

static void free_device(const std::vector<void*>& pointers) {
  for (void* p : pointers) CHECK_RT(cudaFree(p));
}

// ---------------------------------------------------------------------------------------------
// The engine: an empty kernel launch and a stream synchronisation, one after another.

__global__ void empty_kernel() {}

// Runs on its own thread (the engine's), returns each launch+sync latency in us.
static std::vector<double> engine_latencies(cudaStream_t stream, int warm_up, int iterations) {
  std::vector<double> latencies;
  latencies.reserve(static_cast<size_t>(iterations));
  std::thread engine([&] {
    cudaSetDevice(0);
    for (int i = 0; i < warm_up; ++i) {
      empty_kernel<<<1, 32, 0, stream>>>();
      cudaStreamSynchronize(stream);
    }
    CHECK_RT(cudaGetLastError());
    for (int i = 0; i < iterations; ++i) {
      int64_t t0 = now_ns();
      empty_kernel<<<1, 32, 0, stream>>>();
      cudaStreamSynchronize(stream);
      latencies.push_back(static_cast<double>(now_ns() - t0) / 1e3);
    }
    CHECK_RT(cudaGetLastError());
  });
  engine.join();
  return latencies;
}

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

int main() {
  // Never hang the suite: whatever happens, the process ends.
  std::thread([] {
    std::this_thread::sleep_for(std::chrono::seconds(180));
    std::printf("RESULT naive watchdog_fired 1\n");
    std::fprintf(stderr, "naive_monitor: still running after 180 s; exiting\n");
    std::fflush(stdout);
    std::fflush(stderr);
    std::_Exit(3);
  }).detach();

  CHECK_DRV(cuInit(0));
  CHECK_RT(cudaSetDevice(0));
  CHECK_RT(cudaFree(0));  // creates the primary context
  cudaDeviceProp prop;
  CHECK_RT(cudaGetDeviceProperties(&prop, 0));
  int driver_version = 0, runtime_version = 0;
  cudaDriverGetVersion(&driver_version);
  cudaRuntimeGetVersion(&runtime_version);
  std::printf("naive_monitor: %s, driver API %d, runtime %d\n", prop.name, driver_version, runtime_version);
  std::printf("naive_monitor: std::unordered_map<void*, Entry> behind one std::mutex; the sweeper calls "
              "cudaPointerGetAttributes on every entry while holding it\n");
  std::fflush(stdout);

  const size_t kBig = 100000;
  const size_t kThreads = 8;
  const size_t kPerThread = 1000;
  int64_t t_setup = now_ns();
  std::vector<void*> small = allocate_device(kBig, 4096);
  std::vector<void*> registrar_pointers = allocate_device(kThreads * kPerThread, 4096);
  std::printf("naive_monitor: %zu + %zu allocations of 4 KiB in %.2f s\n", kBig, kThreads * kPerThread,
              static_cast<double>(now_ns() - t_setup) / 1e9);

  // ---- memory: heap bytes per registration, empty label --------------------------------------
  double memory_bytes = 0, memory_usable = 0, memory_blocks = 0;
  {
    NaiveMonitor monitor;
    const std::string empty;
    heap::requested_bytes = 0;
    heap::usable_bytes = 0;
    heap::blocks = 0;
    heap::counting = true;
    for (void* p : small) monitor.insert(p, 4096, empty);
    heap::counting = false;
    memory_bytes = static_cast<double>(heap::requested_bytes.load()) / static_cast<double>(kBig);
    memory_usable = static_cast<double>(heap::usable_bytes.load()) / static_cast<double>(kBig);
    memory_blocks = static_cast<double>(heap::blocks.load()) / static_cast<double>(kBig);
    result("memory_bytes_per_registration", memory_bytes);
    result("memory_usable_bytes_per_registration", memory_usable);
    result("memory_blocks_per_registration", memory_blocks);
  }

  // ---- sweep vs. floor: N registrations in N distinct allocations ---------------------------
  NaiveMonitor big;  // 100,000 registrations; kept for the engine and registration figures
  double floor_per_query[2] = {0, 0}, sweep_us[2] = {0, 0};
  for (int which = 0; which < 2; ++which) {
    const size_t n = which == 0 ? 10000 : kBig;
    std::vector<void*> pointers(small.begin(), small.begin() + static_cast<long>(n));
    NaiveMonitor local;
    NaiveMonitor& monitor = which == 0 ? local : big;
    int64_t t0 = now_ns();
    for (void* p : pointers) {
      if (!monitor.register_buffer(p, 4096, "")) fail("register", "a cudaMalloc pointer was refused");
    }
    double register_us = static_cast<double>(now_ns() - t0) / 1e3;
    double floor_us = best_floor_us(pointers);
    double sweep = best_sweep_us(monitor);
    floor_per_query[which] = floor_us / static_cast<double>(n);
    sweep_us[which] = sweep;
    result("floor_us_per_query_" + std::to_string(n), floor_per_query[which]);
    result("floor_us_" + std::to_string(n), floor_us);
    result("sweep_us_" + std::to_string(n), sweep);
    result("register_mean_us_" + std::to_string(n), register_us / static_cast<double>(n));
  }

  // ---- sharing: 1,000,000 registrations inside 10,000 allocations of 256 KiB -----------------
  double sharing_floor = 0, sharing_sweep = 0;
  {
    const size_t kArenas = 10000, kPerArena = 100, kPiece = 2048;
    std::vector<void*> arenas = allocate_device(kArenas, 256 * 1024);
    sharing_floor = best_floor_us(arenas);
    {
      NaiveMonitor monitor;
      int64_t t0 = now_ns();
      for (void* arena : arenas) {
        for (size_t k = 0; k < kPerArena; ++k) {
          void* p = static_cast<char*>(arena) + k * kPiece;
          if (!monitor.register_buffer(p, kPiece, "")) fail("register", "an interior pointer was refused");
        }
      }
      double register_s = static_cast<double>(now_ns() - t0) / 1e9;
      if (monitor.size() != kArenas * kPerArena) fail("sharing", "not every registration is in the map");
      sharing_sweep = best_sweep_us(monitor);
      std::printf("naive_monitor: 1,000,000 registrations in %.2f s\n", register_s);
    }
    free_device(arenas);
    result("sharing_floor_us_10000", sharing_floor);
    result("sharing_sweep_us_1000000", sharing_sweep);
  }

  // ---- engine impact: launch + sync, alone and while the sweeper runs over 100,000 ----------
  double engine[4] = {0, 0, 0, 0};
  long long engine_passes = 0;
  {
    cudaStream_t stream;
    CHECK_RT(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    const int kWarm = 2000, kIterations = 20000;
    std::vector<double> alone = engine_latencies(stream, kWarm, kIterations);
    ContinuousSweeper sweeper(big);
    sweeper.start();
    long long passes_before = sweeper.passes();
    std::vector<double> with = engine_latencies(stream, kWarm, kIterations);
    engine_passes = sweeper.passes() - passes_before;
    if (!sweeper.stop(10000)) fail("engine impact", "the sweeper did not stop");
    CHECK_RT(cudaStreamDestroy(stream));
    engine[0] = percentile(alone, 0.5);
    engine[1] = percentile(alone, 0.999);
    engine[2] = percentile(with, 0.5);
    engine[3] = percentile(with, 0.999);
    result("engine_p50_alone", engine[0]);
    result("engine_p999_alone", engine[1]);
    result("engine_p50_with", engine[2]);
    result("engine_p999_with", engine[3]);
    result("engine_sweeps_during_with", static_cast<double>(engine_passes));
  }

  // ---- registration under load: 8 threads while the sweeper runs over 100,000 -------------
  // Last, because a thread may still be blocked at the end: then the process ends with _Exit.
  const int64_t kRunNs = 5000000000LL;   // the measuring threads run 5 s
  const int kGraceMs = 5000;             // then calls get 5 s to finish before they count as stuck
  std::atomic<int64_t> stop_ns{INT64_MAX};
  std::atomic<bool> go{false};
  std::atomic<bool> abandoned{false};
  std::vector<std::unique_ptr<Registrar>> registrars;
  for (size_t t = 0; t < kThreads; ++t) {
    registrars.emplace_back(new Registrar);
    auto first = registrar_pointers.begin() + static_cast<long>(t * kPerThread);
    registrars.back()->pointers.assign(first, first + static_cast<long>(kPerThread));
  }

  ContinuousSweeper sweeper(big);
  sweeper.start();
  for (auto& r : registrars) {
    Registrar* self = r.get();
    self->thread = std::thread([self, &stop_ns, &go, &abandoned, &big] {
      cudaSetDevice(0);
      while (!go.load()) std::this_thread::yield();
      // One call: time it, clip it at the stop (a call still waiting then counts its wait so
      // far), and record it unless the main thread has given up on this thread.
      auto timed = [&](int kind, void* p) -> bool {
        int64_t t0 = now_ns();
        if (t0 >= stop_ns.load()) return false;
        self->call_kind.store(kind);
        self->call_started_ns.store(t0);
        if (kind == 1) {
          if (!big.register_buffer(p, 4096, "")) self->refused.fetch_add(1);
        } else {
          big.unregister_buffer(p);
        }
        int64_t t1 = now_ns();
        self->call_started_ns.store(0);
        if (abandoned.load()) return false;
        int64_t stop = stop_ns.load();
        if (t1 > stop) self->cut_at_stop.fetch_add(1);
        double us = static_cast<double>(std::min(t1, stop) - t0) / 1e3;
        bool kept = kind == 1 ? self->registers.push(us) : self->unregisters.push(us);
        if (!kept) {
          self->capacity_reached = true;
          return false;
        }
        return t1 < stop;
      };
      bool running = true;
      while (running) {
        for (size_t i = 0; running && i < self->pointers.size(); ++i) running = timed(1, self->pointers[i]);
        for (size_t i = 0; running && i < self->pointers.size(); ++i) running = timed(2, self->pointers[i]);
      }
      self->done.store(true);
    });
  }
  go.store(true);
  std::this_thread::sleep_for(std::chrono::nanoseconds(kRunNs));
  const int64_t stop_at = now_ns();
  stop_ns.store(stop_at);
  long long registration_passes = sweeper.passes();
  bool sweeper_stopped = sweeper.stop(kGraceMs);
  int64_t grace_end = stop_at + static_cast<int64_t>(kGraceMs) * 1000000;
  auto all_done = [&] {
    for (auto& r : registrars)
      if (!r->done.load()) return false;
    return true;
  };
  while (!all_done() && now_ns() < grace_end) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  abandoned.store(true);

  std::vector<double> reg, unreg;
  long long stuck_register = 0, stuck_unregister = 0, cut = 0, refused = 0;
  bool capacity_reached = false;
  for (auto& r : registrars) {
    r->registers.append_to(&reg);
    r->unregisters.append_to(&unreg);
    cut += r->cut_at_stop.load();
    refused += r->refused.load();
    capacity_reached = capacity_reached || (r->done.load() && r->capacity_reached);
    int64_t started_ns = r->call_started_ns.load();
    if (!r->done.load() && started_ns != 0) {
      // Still blocked 5 s after the stop: record its wait up to the stop, count it stuck.
      double us = static_cast<double>(std::max<int64_t>(0, stop_at - started_ns)) / 1e3;
      if (r->call_kind.load() == 1) {
        reg.push_back(us);
        ++stuck_register;
      } else {
        unreg.push_back(us);
        ++stuck_unregister;
      }
    }
  }
  bool everyone_finished = all_done() && sweeper_stopped;

  result("register_p50", percentile(reg, 0.5));
  result("register_p999", percentile(reg, 0.999));
  result("register_max", maximum(reg));
  result("register_calls", static_cast<double>(reg.size()));
  result("unregister_p50", percentile(unreg, 0.5));
  result("unregister_p999", percentile(unreg, 0.999));
  result("unregister_max", maximum(unreg));
  result("unregister_calls", static_cast<double>(unreg.size()));
  result("register_stuck", static_cast<double>(stuck_register + stuck_unregister));
  result("register_stuck_register_calls", static_cast<double>(stuck_register));
  result("register_stuck_unregister_calls", static_cast<double>(stuck_unregister));
  result("register_waiting_at_stop", static_cast<double>(cut + stuck_register + stuck_unregister));
  result("register_sweeps_during", static_cast<double>(registration_passes));
  if (refused) std::fprintf(stderr, "naive_monitor: %lld registrations were refused\n", refused);
  if (capacity_reached) std::fprintf(stderr, "naive_monitor: a thread filled its latency array and stopped early\n");

  // ---- summary ------------------------------------------------------------------------------
  std::printf("\nnaive_monitor summary (%s; us unless noted)\n", prop.name);
  for (int which = 0; which < 2; ++which) {
    const double n = which == 0 ? 10000 : 100000;
    std::printf("  full sweep, %6.0f registrations in as many allocations: %10.1f us; floor %.3f us/query "
                "(%.1f us): %.2fx floor\n",
                n, sweep_us[which], floor_per_query[which], floor_per_query[which] * n,
                sweep_us[which] / (floor_per_query[which] * n));
  }
  std::printf("  sharing: 1,000,000 registrations in 10,000 allocations: %.1f us; floor for 10,000: %.1f us: %.1fx\n",
              sharing_sweep, sharing_floor, sharing_sweep / sharing_floor);
  std::printf("  engine launch+sync p50 / p99.9: alone %.1f / %.1f; with the sweeper (%lld sweeps) %.1f / %.1f "
              "(p99.9 %.2fx)\n",
              engine[0], engine[1], engine_passes, engine[2], engine[3], engine[3] / engine[1]);
  std::printf("  8 threads registering/unregistering for 5 s while the sweeper runs (%lld sweeps):\n",
              registration_passes);
  std::printf("    register   p50 %.2f, p99.9 %.2f, max %.1f over %zu calls\n", percentile(reg, 0.5),
              percentile(reg, 0.999), maximum(reg), reg.size());
  std::printf("    unregister p50 %.2f, p99.9 %.2f, max %.1f over %zu calls\n", percentile(unreg, 0.5),
              percentile(unreg, 0.999), maximum(unreg), unreg.size());
  std::printf("    %lld calls were still waiting when stop was requested (recorded with their wait until then);"
              " %lld register + %lld unregister calls of them had not finished %d s later\n",
              cut + stuck_register + stuck_unregister, stuck_register, stuck_unregister, kGraceMs / 1000);
  std::printf("  host memory per registration (empty label): %.1f bytes asked for, %.1f usable, %.2f blocks\n",
              memory_bytes, memory_usable, memory_blocks);
  std::fflush(stdout);

  if (!everyone_finished) {
    // A thread is still blocked on the mutex (or the sweeper did not stop): do not wait for it,
    // and do not run destructors under it.
    std::fprintf(stderr, "naive_monitor: a thread is still blocked; exiting without waiting for it\n");
    std::fflush(stderr);
    std::_Exit(0);
  }
  for (auto& r : registrars) r->thread.join();
  free_device(small);
  free_device(registrar_pointers);
  return 0;
}
