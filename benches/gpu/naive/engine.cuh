// naive/engine.cuh - part of the hand-written alternative (naive_monitor.cu): the engine: an empty kernel launch and a synchronisation.
// Included once, in order, by naive_monitor.cu (one translation unit), after its includes.
#ifndef NAIVE_ENGINE_CUH
#define NAIVE_ENGINE_CUH

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

#endif  // NAIVE_ENGINE_CUH
