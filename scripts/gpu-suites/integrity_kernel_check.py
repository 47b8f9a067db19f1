"""The integrity kernel against fingerprint v1, on the GPU machine (CuPy and NumPy there).

    python3 scripts/gpu-suites/integrity_kernel_check.py [--quick] [PTX]

Loads the committed PTX (src/adapters/cuda/fingerprint.ptx, or PTX) as a module image, the way
the library does (cuModuleLoadData: the driver JIT-compiles it), launches it by the spec's
contract over buffers of several sizes and alignments, and compares every chunk value with a
NumPy reference of fingerprint v1 computed over a host copy of the same bytes. Then: one
changed word changes exactly one chunk, and the kernel's throughput at 1 GiB and 16 GiB
against a plain read-and-reduce floor kernel with the same launch shape, timed in the same
run (the ratio is what matters: the floor is what reading the bytes costs on this GPU).

--quick: the correctness cases up to 4 MiB only, with CuPy's memory pool off so that every
buffer is its own allocation of exactly its size (for running under compute-sanitizer, which
then sees a read past the end). Prints one line per case; exits 1 on any mismatch.
"""
import os
import sys
import time

import numpy as np
import cupy as cp

CHUNK = 1 << 20
KEY_STEP = np.uint64(0x9E3779B97F4A7C15)
MULTIPLIER = np.uint64(0xBF58476D1CE4E5B9)
THREADS = 512
ENTRY = "vram_monitor_fingerprint_v1"

failures = []


def check(ok, what):
    print(("ok    " if ok else "FAIL  ") + what, flush=True)
    if not ok:
        failures.append(what)


def reference(data, first_word=0):
    """Fingerprint v1 of the bytes `data` (a NumPy uint8 array) whose first byte is word
    `first_word` of the registration: one uint64 per chunk. NumPy's uint64 array arithmetic
    wraps mod 2^64, as the spec's does."""
    n = data.size
    out = np.empty((n + CHUNK - 1) // CHUNK, dtype=np.uint64)
    # 64 chunks at a time: 1 GiB would otherwise need several 2 GiB temporaries at once.
    step = 64 * CHUNK
    for at in range(0, n, step):
        part = data[at:at + step]
        pad = (-part.size) % 4
        if pad:
            part = np.concatenate([part, np.zeros(pad, dtype=np.uint8)])
        words = part.view("<u4").astype(np.uint64)
        index = np.arange(words.size, dtype=np.uint64) + np.uint64(first_word + at // 4)
        terms = (words ^ ((index + np.uint64(1)) * KEY_STEP)) * MULTIPLIER
        # Zero terms pad the last chunk to a whole one (a zero term adds nothing, unlike a
        # zero word, whose term is not zero).
        chunks = (terms.size + CHUNK // 4 - 1) // (CHUNK // 4)
        padded = np.zeros(chunks * (CHUNK // 4), dtype=np.uint64)
        padded[:terms.size] = terms
        out[at // CHUNK:at // CHUNK + chunks] = padded.reshape(chunks, CHUNK // 4).sum(axis=1, dtype=np.uint64)
    return out


def load_kernel(path):
    """The PTX as a module image (cuModuleLoadData), as the library loads it."""
    image = open(path, "rb").read()
    try:
        module = cp.cuda.function.Module()
        module.load(image)  # bytes: NUL-terminated underneath, as cuModuleLoadData needs for PTX
        how = "cupy.cuda.function.Module().load (cuModuleLoadData)"
    except Exception as e:  # an older or newer CuPy without Module.load: cuModuleLoad on the file
        print("note: Module().load failed (%s: %s); loading with RawModule(path=...)" % (type(e).__name__, e))
        module = cp.RawModule(path=path)
        how = "cupy.RawModule(path=...) (cuModuleLoad)"
    return module.get_function(ENTRY), how


def launch(kernel, base, length, first_word, out, stream=None):
    grid = (length + CHUNK - 1) // CHUNK
    kernel((grid,), (THREADS,), (np.uint64(base), np.uint64(length), np.uint64(first_word), np.uint64(out)),
           stream=stream)
    return grid


def fingerprint(kernel, buf, offset, length, first_word=0):
    """The kernel's values over `length` bytes of the CuPy uint8 array `buf` from `offset`."""
    out = cp.full((length + CHUNK - 1) // CHUNK, 0xAAAAAAAAAAAAAAAA, dtype=cp.uint64)
    launch(kernel, buf.data.ptr + offset, length, first_word, out.data.ptr)
    cp.cuda.Device().synchronize()
    return out.get()


def random_bytes(n, seed):
    """n random bytes on the device (a uint8 CuPy array of exactly n bytes)."""
    rs = cp.random.RandomState(seed)
    words = rs.randint(0, 2**31, size=(n + 3) // 4, dtype=cp.int32).view(cp.uint8)
    buf = cp.empty(n, dtype=cp.uint8)
    buf[:] = words[:n]
    return buf


def compare(kernel, name, buf, offset, length, first_word=0, host=None):
    got = fingerprint(kernel, buf, offset, length, first_word)
    if host is None:
        host = buf[offset:offset + length].get()
    want = reference(host, first_word)
    bad = np.nonzero(got != want)[0]
    detail = "" if bad.size == 0 else ": %d of %d chunks differ, first chunk %d (kernel %#x, reference %#x)" % (
        bad.size, want.size, bad[0], int(got[bad[0]]), int(want[bad[0]]))
    check(bad.size == 0 and got.size == want.size,
          "%s: %d bytes at base+%d (%s path), first_word %d, %d chunk(s) match the reference%s" % (
              name, length, offset, "vector" if (buf.data.ptr + offset) % 16 == 0 else "byte-wise",
              first_word, want.size, detail))
    return got


FLOOR_SRC = r'''
// The read floor: the same launch shape (one 512-thread block per 1 MiB, 16-byte read-only
// loads, the same unrolling), summing the loaded values and nothing else.
extern "C" __global__ void __launch_bounds__(512) read_floor(const ulonglong2* __restrict__ p,
                                                             unsigned long long* __restrict__ out) {
  const ulonglong2* c = p + (unsigned long long)blockIdx.x * (1 << 16);
  unsigned long long s = 0;
#pragma unroll 8
  for (unsigned int i = 0; i < (1 << 16) / 512; i++) {
    ulonglong2 v = __ldg(c + threadIdx.x + i * 512);
    s += v.x + v.y;
  }
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  __shared__ unsigned long long w[16];
  if ((threadIdx.x & 31) == 0) w[threadIdx.x >> 5] = s;
  __syncthreads();
  if (threadIdx.x < 32) {
    s = threadIdx.x < 16 ? w[threadIdx.x] : 0;
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (threadIdx.x == 0) out[blockIdx.x] = s;
  }
}
'''


def throughput(kernel, floor, gib, rounds=10):
    n = gib << 30
    buf = cp.empty(n, dtype=cp.uint8)
    # Content does not change the read cost; a memset fills 16 GiB in milliseconds.
    cp.cuda.runtime.memsetAsync(buf.data.ptr, 0xA5, n, cp.cuda.get_current_stream().ptr)
    chunks = n // CHUNK
    out = cp.empty(chunks, dtype=cp.uint64)
    out2 = cp.empty(chunks, dtype=cp.uint64)

    def run_kernel():
        launch(kernel, buf.data.ptr, n, 0, out.data.ptr)

    def run_floor():
        floor((chunks,), (THREADS,), (buf, out2))

    for _ in range(3):
        run_kernel()
        run_floor()
    cp.cuda.Device().synchronize()
    tk, tf = [], []
    # Paired rounds (kernel, then floor) so that clock or thermal drift hits both alike.
    for _ in range(rounds):
        for f, ts in ((run_kernel, tk), (run_floor, tf)):
            e0, e1 = cp.cuda.Event(), cp.cuda.Event()
            e0.record()
            f()
            e1.record()
            e1.synchronize()
            ts.append(cp.cuda.get_elapsed_time(e0, e1) / 1e3)
    kb, fb = n / min(tk) / 1e12, n / min(tf) / 1e12
    km, fm = n / float(np.median(tk)) / 1e12, n / float(np.median(tf)) / 1e12
    print("throughput %2d GiB: kernel %.3f ms = %.2f TB/s (median %.2f), floor %.3f ms = %.2f TB/s (median %.2f), "
          "kernel/floor %.3f (best of %d, CUDA events)" % (
              gib, min(tk) * 1e3, kb, km, min(tf) * 1e3, fb, fm, kb / fb, rounds), flush=True)
    del buf, out, out2
    cp.get_default_memory_pool().free_all_blocks()


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    quick = "--quick" in sys.argv[1:]
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    path = args[0] if args else os.path.join(root, "src", "integrity", "fingerprint.ptx")
    if quick:
        cp.cuda.set_allocator(None)
    dev = cp.cuda.Device()
    props = cp.cuda.runtime.getDeviceProperties(dev.id)
    name = props["name"]
    print("GPU %d: %s, driver %d, CuPy %s, NumPy %s" % (
        dev.id, name.decode() if isinstance(name, bytes) else name, cp.cuda.runtime.driverGetVersion(), cp.__version__, np.__version__))
    ptx = open(path).read()
    print("PTX: %s, %s" % (next(l for l in ptx.splitlines() if l.startswith(".version")),
                           next(l for l in ptx.splitlines() if l.startswith(".target"))))
    kernel, how = load_kernel(path)
    print("loaded %s with %s" % (ENTRY, how))

    # Sizes: one byte, a ragged few pages, exactly one chunk, a partial last chunk, one chunk
    # and a 17-byte tail (vector body then byte tail in one launch), and 1 GiB.
    sizes = [1, 4097, CHUNK, CHUNK + 17, 3 * CHUNK + CHUNK // 2] + ([] if quick else [1 << 30])
    for i, n in enumerate(sizes):
        buf = random_bytes(n, seed=1 + i)
        compare(kernel, "aligned", buf, 0, n)
        del buf
    # Unaligned bases (the byte-wise path): +4 (word-aligned) and +1, +8, ragged lengths too.
    for off in (4, 1, 8):
        for n in (1, 4097, 3 * CHUNK + CHUNK // 2 + 3):
            buf = random_bytes(n + off, seed=100 + off)
            compare(kernel, "unaligned", buf, off, n)
            del buf

    # A launch over a later slice of a registration: first_word is the slice's global word
    # index, and its values must be the whole registration's from that chunk on.
    n = 5 * CHUNK + 3
    buf = random_bytes(n, seed=7)
    host = buf.get()
    whole = reference(host)
    got = fingerprint(kernel, buf, 2 * CHUNK, n - 2 * CHUNK, first_word=2 * CHUNK // 4)
    check(np.array_equal(got, whole[2:]), "slice from chunk 2 (first_word %d) equals the whole registration's chunks 2..4"
          % (2 * CHUNK // 4))
    same = fingerprint(kernel, buf, 0, n)
    again = fingerprint(kernel, buf, 0, n)
    check(np.array_equal(same, again) and np.array_equal(same, whole), "deterministic: two launches, same values")

    # One changed word changes exactly its chunk (chunk starts and ends, the partial tail).
    for at in (0, CHUNK - 4, CHUNK, 3 * CHUNK + 4096, n - 3):
        changed = buf.copy()
        changed[at] ^= np.uint8(0x5A)
        after = fingerprint(kernel, changed, 0, n)
        differ = np.nonzero(after != same)[0].tolist()
        check(differ == [at // CHUNK], "one changed byte at %d: chunks that differ %s (want [%d])"
              % (at, differ, at // CHUNK))
        del changed
    del buf

    if not quick:
        floor = cp.RawKernel(FLOOR_SRC, "read_floor")
        for gib in (1, 16):
            throughput(kernel, floor, gib)

    if failures:
        print("FAILED: %d check(s)" % len(failures))
        for f in failures:
            print("  - " + f)
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    t0 = time.time()
    rc = main()
    print("(%.1f s)" % (time.time() - t0))
    sys.exit(rc)
