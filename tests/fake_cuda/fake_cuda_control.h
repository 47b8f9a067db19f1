/*
 * fake_cuda_control.h - control API of the fake libcuda used by vram-monitor's tests.
 *
 * The fake is built as libcuda.so.1 (plus a libcuda.so symlink) from fake_cuda.c. Besides the
 * few CUDA driver entry points the monitor uses, it exports these fake_cuda_* functions, which
 * a test calls (through dlopen of the same libcuda.so.1) to create fake memory, inject faults
 * and read counters. All of them are thread-safe (one mutex around the state) and may be
 * called before cuInit. Addresses are fake: never dereference them.
 *
 * What cuPointerGetAttributes answers for each kind reproduces the measured table in
 * cuda-pointer-facts.md (H100, driver 580.159.04): see README.md in this folder.
 *
 * Fake memory has content (zeros until written; see fake_cuda_write) so that the monitor's
 * integrity kernel, which the fake runs on the host, has bytes to fingerprint.
 */
#ifndef FAKE_CUDA_CONTROL_H
#define FAKE_CUDA_CONTROL_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/** Kinds of fake memory. */
enum fake_cuda_kind {
    FAKE_CUDA_DEVICE = 1,     /* cudaMalloc / cuMemAlloc: type DEVICE, managed 0 */
    FAKE_CUDA_MANAGED = 2,    /* cudaMallocManaged: type DEVICE (!), managed 1 */
    FAKE_CUDA_HOST = 3,       /* pinned / mapped / registered host memory: type HOST */
    FAKE_CUDA_VMM_DEVICE = 4, /* cuMemCreate(location DEVICE) + cuMemMap, inside a reservation */
    FAKE_CUDA_VMM_HOST = 5    /* cuMemCreate(location HOST) + cuMemMap, inside a reservation */
};

/* ---- memory ------------------------------------------------------------------------------ */

/** New DEVICE/MANAGED/HOST allocation of `size` bytes on `device`; returns its 2 MiB-aligned address, 0 on bad input. */
unsigned long long fake_cuda_alloc(int kind, size_t size, int device);
/** Frees the allocation or VMM mapping whose base is `base`; 0 ok, -1 unknown. */
int fake_cuda_free(unsigned long long base);
/** Frees and re-allocates the allocation/mapping at `base` at the same address, kind, size and device, with a NEW buffer id and fresh content (zeros); 0 ok, -1 unknown. */
int fake_cuda_reallocate(unsigned long long base);
/** Changes the kind of the allocation (1..3 among themselves) or mapping (4..5 among themselves) at `base` in place, keeping its buffer id; 0 ok, -1 otherwise. */
int fake_cuda_set_kind(unsigned long long base, int kind);
/** Moves the allocation/mapping at `base` to `device` (ordinal), keeping its buffer id; 0 ok, -1 otherwise. */
int fake_cuda_set_device(unsigned long long base, int device);
/** New VMM address reservation of `size` bytes (nothing mapped); returns its address, 0 on bad input. */
unsigned long long fake_cuda_reserve(size_t size);
/** Releases the reservation whose base is `base`; fails (-1) while it still has mappings or if unknown; 0 ok. */
int fake_cuda_release(unsigned long long base);
/** Maps [addr, addr+size) of kind VMM_DEVICE/VMM_HOST on `device` inside one reservation, not overlapping another mapping; new buffer id; 0 ok, -1 otherwise. */
int fake_cuda_map(unsigned long long addr, size_t size, int kind, int device);
/** Unmaps the mapping whose base is `addr` (the reservation stays); 0 ok, -1 unknown. */
int fake_cuda_unmap(unsigned long long addr);

/* ---- content ----------------------------------------------------------------------------- */

/** Copies `len` bytes to fake address `addr` (inside live allocations/mappings, several back to back allowed): what the engine writing into its memory looks like. 0 ok; -1, writing nothing, when a byte is outside, or len is 0. */
int fake_cuda_write(unsigned long long addr, const void *bytes, size_t len);
/** Sets `len` bytes at `addr` to `byte`; rules of fake_cuda_write. */
int fake_cuda_fill(unsigned long long addr, int byte, size_t len);
/** Copies `len` bytes at `addr` into `bytes` (never-written memory reads as 0); rules of fake_cuda_write. */
int fake_cuda_read(unsigned long long addr, void *bytes, size_t len);

/* ---- fault injection --------------------------------------------------------------------- */

/** cuInit returns `code` from now on (0 = succeed); env FAKE_CUDA_INIT_RESULT, if set, wins over this. */
void fake_cuda_set_init_result(int code);
/** While nonzero, every cuPointerGetAttributes returns `code` and writes nothing (e.g. 999 UNKNOWN, 4 DEINITIALIZED); 0 clears. */
void fake_cuda_set_query_result(int code);
/** Queries whose ptr lies in the allocation/mapping (else unmapped reservation) containing `addr` return `code`, writing nothing; 0 clears. Dropped when that memory is freed or reallocated. */
void fake_cuda_fail_query_at(unsigned long long addr, int code);
/** Each cuPointerGetAttributes call sleeps `us` microseconds (outside the fake's lock); 0 = no delay. */
void fake_cuda_set_query_delay_us(unsigned us);
/** Nonzero: every cuPointerGetAttributes from now on blocks (the fake's lock released) until this is called with 0, which releases them all: a driver that hangs. */
void fake_cuda_hold_queries(int hold);
/** How many cuPointerGetAttributes calls are blocked by fake_cuda_hold_queries now. */
unsigned fake_cuda_held_queries(void);
/** Sets whether `device`'s primary context is active (the engine's reference); 0 also drops any retains and destroys the context: the modules, streams and cuMemAlloc_v2 memory made in it are gone, its sticky error is cleared, and calls with it current return 709 (CONTEXT_IS_DESTROYED) until it is active again. */
void fake_cuda_set_primary_context_active(int device, int active);
/** cuModuleLoadData returns `code` from now on, as a driver older than the PTX answers (222 UNSUPPORTED_PTX_VERSION, 218 INVALID_PTX); 0 accepts again. */
void fake_cuda_set_module_load_result(int code);
/** The next `count` cuLaunchKernel calls return `code` and run nothing; the context stays usable (a launch refused, e.g. 701 LAUNCH_OUT_OF_RESOURCES). code 0 clears. */
void fake_cuda_fail_launches(unsigned count, int code);
/** After `launches` more launches have run, the next one faults: it returns 0, writes nothing, and its context keeps the sticky error `code` (e.g. 719 LAUNCH_FAILED, 700 ILLEGAL_ADDRESS), returned by every later call in it until the context is destroyed. code 0 disarms. */
void fake_cuda_sticky_error_after_launches(unsigned launches, int code);
/** Each cuLaunchKernel sleeps `us` microseconds (outside the fake's lock) before it reads: a verification a test can act during; 0 = no delay. */
void fake_cuda_set_launch_delay_us(unsigned us);

/* ---- counters ---------------------------------------------------------------------------- */

/** Contexts created so far: every cuCtxCreate_v2, and every cuDevicePrimaryCtxRetain that activated an inactive primary context. */
unsigned long long fake_cuda_context_creations(void);
/** Number of cuPointerGetAttributes calls so far (all of them, failed ones included). */
unsigned long long fake_cuda_pointer_queries(void);
/** Outstanding cuDevicePrimaryCtxRetain references on `device` (not counting the engine's); -1 for a bad device. */
int fake_cuda_primary_context_retains(int device);
/** The primary context of `device`'s sticky error (0: none; -1 for a bad device). */
int fake_cuda_context_error(int device);

/** What the integrity calls did, so that a test can prove nothing leaked and nothing ran late. */
struct fake_cuda_gpu_counters {
    unsigned long long launches;             /* cuLaunchKernel calls, whatever they returned */
    unsigned long long launches_in_progress; /* inside cuLaunchKernel now (its delay or its reads) */
    unsigned long long bytes_read;           /* bytes the launches read */
    unsigned long long modules_loaded;       /* cuModuleLoadData successes */
    unsigned long long modules_unloaded;     /* cuModuleUnload successes */
    unsigned long long context_synchronizes; /* cuCtxSynchronize calls */
    unsigned long long modules_live;         /* loaded, not unloaded, their context not destroyed */
    unsigned long long streams_live;         /* cuStreamCreate'd, not destroyed, likewise */
    unsigned long long driver_allocations_live; /* cuMemAlloc_v2'd, not freed, likewise */
};
/** Fills `*out` with one consistent reading of the counters. */
void fake_cuda_gpu_counters(struct fake_cuda_gpu_counters *out);

/** Drops all allocations (and their content), reservations, modules, streams, faults and counters, and releases held queries; primary contexts back to active with no retains and no sticky error. Keeps a successful cuInit, the buffer-id counter and the address cursor (ids and addresses are never reused in a process). */
void fake_cuda_reset(void);

#ifdef __cplusplus
}
#endif

#endif /* FAKE_CUDA_CONTROL_H */
