// naive/heap.cuh - part of the hand-written alternative (naive_monitor.cu): heap accounting (the memory figure).
// Included once, in order, by naive_monitor.cu (one translation unit), after its includes.
#ifndef NAIVE_HEAP_CUH
#define NAIVE_HEAP_CUH

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

#endif  // NAIVE_HEAP_CUH
