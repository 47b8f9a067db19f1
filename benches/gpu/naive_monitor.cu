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

// The parts, one concept each (one translation unit: the heap accounting replaces the global
// operator new, and every helper is static).
#include "naive/heap.cuh"
#include "naive/stats.cuh"
#include "naive/monitor.cuh"
#include "naive/floor.cuh"
#include "naive/engine.cuh"
#include "naive/load.cuh"

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
