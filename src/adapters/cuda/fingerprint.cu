// Fingerprint v1 on the GPU: one 64-bit value per 1 MiB chunk of a sealed registration.
//
// The function (the reference is fingerprint.rs beside this file): the bytes are read as
// little-endian 32-bit words w_i, i counted from the registration's first byte, bytes at or
// past the end reading as 0, and chunk c's value is
//
//     F_c = sum over the chunk's words of ((u64)w_i ^ key(i)) * M      (mod 2^64)
//     key(i) = (i + 1) * K,  K = 0x9E3779B97F4A7C15,  M = 0xBF58476D1CE4E5B9
//
// Multiplication distributes over addition mod 2^64, so each thread sums (w_i ^ key(i)) and
// the block multiplies by M once at the end: the same value with a quarter of the multiplies.
// Integer addition mod 2^64 is exact in any order, so the result does not depend on how the
// threads split the work or the order of the reduction: the kernel is deterministic.
//
// Launch contract (the Rust side and the GPU check follow it):
//   grid  = ceil(length / CHUNK_BYTES) blocks, one per chunk; block = 512 threads;
//   no dynamic shared memory; kernelParams = { &base, &length, &first_word, &out }.
//   base        device address of the launch's first byte;
//   length      bytes in this launch (a whole number of chunks except at the registration's end);
//   first_word  the global word index of base (its offset in the registration / 4);
//   out         device address of one u64 per block: block c writes out[c].
// Addresses are passed as integers so that the PTX signature is four u64 whatever the caller.
//
// Plain CUDA C with no includes, so that the PTX depends on nothing but this file and nvcc.

#define CHUNK_BYTES (1ull << 20)
#define CHUNK_WORDS (CHUNK_BYTES / 4)
#define THREADS 512
#define KEY_STEP 0x9E3779B97F4A7C15ull
#define MULTIPLIER 0xBF58476D1CE4E5B9ull

// The word at byte `at` of the chunk, read byte-wise: only bytes below `len` are read (the
// rest count as 0), so neither an unaligned base nor a ragged end reads outside the launch.
__device__ __forceinline__ unsigned long long word_bytes(const unsigned char* p, unsigned long long at,
                                                         unsigned long long len) {
  unsigned long long w = 0;
  if (at + 4 <= len) {
    w = (unsigned long long)__ldg(p + at) | ((unsigned long long)__ldg(p + at + 1) << 8) |
        ((unsigned long long)__ldg(p + at + 2) << 16) | ((unsigned long long)__ldg(p + at + 3) << 24);
  } else {
    for (unsigned long long b = 0; b < 4 && at + b < len; b++) w |= (unsigned long long)__ldg(p + at + b) << (8 * b);
  }
  return w;
}

// The four words of one 16-byte vector whose first word has key k: (w ^ key) summed.
__device__ __forceinline__ unsigned long long vector_terms(ulonglong2 v, unsigned long long k) {
  return ((v.x & 0xffffffffull) ^ k) + ((v.x >> 32) ^ (k + KEY_STEP)) + ((v.y & 0xffffffffull) ^ (k + 2 * KEY_STEP)) +
         ((v.y >> 32) ^ (k + 3 * KEY_STEP));
}

extern "C" __global__ void __launch_bounds__(THREADS)
    vram_monitor_fingerprint_v1(unsigned long long base, unsigned long long length, unsigned long long first_word,
                                unsigned long long out) {
  const unsigned long long chunk = blockIdx.x;
  const unsigned long long start = chunk * CHUNK_BYTES;
  // A grid larger than the launch's chunks writes nothing past them (no thread reads either).
  if (start >= length) return;
  const unsigned long long len = length - start < CHUNK_BYTES ? length - start : CHUNK_BYTES;
  const unsigned char* p = (const unsigned char*)(base + start);
  const unsigned long long word0 = first_word + chunk * CHUNK_WORDS;
  const unsigned int t = threadIdx.x;
  unsigned long long s = 0;

  if ((base & 15) == 0) {
    // Fast path: 16-byte read-only loads (ld.global.nc.v2.u64), consecutive threads on
    // consecutive vectors so that each warp reads 512 contiguous bytes per load.
    const ulonglong2* v = (const ulonglong2*)p;
    const unsigned long long vectors = len / 16;
    // Thread t's first vector is t (words word0 + 4t ..); each step moves THREADS vectors on,
    // so its key moves on by 4 * THREADS key steps (wrapping, as the spec's arithmetic does).
    unsigned long long k = (word0 + 4ull * t + 1) * KEY_STEP;
    const unsigned long long k_stride = 4ull * THREADS * KEY_STEP;
    if (vectors == CHUNK_BYTES / 16) {
      // A whole chunk (every chunk but perhaps the last): a fixed trip count unrolled so that
      // each thread has several loads in flight, which is what reaching the HBM peak needs.
#pragma unroll 8
      for (unsigned int i = 0; i < CHUNK_BYTES / 16 / THREADS; i++) {
        s += vector_terms(__ldg(v + t + (unsigned long long)i * THREADS), k);
        k += k_stride;
      }
    } else {
      for (unsigned long long i = t; i < vectors; i += THREADS) {
        s += vector_terms(__ldg(v + i), k);
        k += k_stride;
      }
      // The last chunk's tail (len not a multiple of 16): at most 4 words, byte-wise with zero
      // padding, one word per thread.
      const unsigned long long tail = vectors * 16;
      const unsigned long long tail_words = (len - tail + 3) / 4;
      if (t < tail_words) {
        const unsigned long long at = tail + 4ull * t;
        s += word_bytes(p, at, len) ^ ((word0 + at / 4 + 1) * KEY_STEP);
      }
    }
  } else {
    // Slow path (base not 16-byte aligned, which the library's registrations of device
    // allocations never are but a caller's sub-buffer may be): each word assembled byte-wise.
    const unsigned long long words = (len + 3) / 4;
    for (unsigned long long j = t; j < words; j += THREADS) {
      s += word_bytes(p, 4 * j, len) ^ ((word0 + j + 1) * KEY_STEP);
    }
  }

  // Block reduction: a butterfly in each warp, the 16 warp sums through shared memory, then a
  // butterfly in warp 0. Exact in any order (wrapping addition).
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  __shared__ unsigned long long warp_sums[THREADS / 32];
  if ((t & 31) == 0) warp_sums[t >> 5] = s;
  __syncthreads();
  if (t < 32) {
    s = t < THREADS / 32 ? warp_sums[t] : 0;
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (t == 0) ((unsigned long long*)out)[chunk] = s * MULTIPLIER;
  }
}
