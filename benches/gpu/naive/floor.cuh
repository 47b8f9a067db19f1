// naive/floor.cuh - part of the hand-written alternative (naive_monitor.cu): the driver floor and the sweep timings.
// Included once, in order, by naive_monitor.cu (one translation unit), after its includes.
#ifndef NAIVE_FLOOR_CUH
#define NAIVE_FLOOR_CUH

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

#endif  // NAIVE_FLOOR_CUH
