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
/** Frees and re-allocates the allocation/mapping at `base` at the same address, kind, size and device, with a NEW buffer id; 0 ok, -1 unknown. */
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
/** Sets whether `device`'s primary context is active (the engine's reference); 0 also drops any retains (the context is destroyed). */
void fake_cuda_set_primary_context_active(int device, int active);

/* ---- counters ---------------------------------------------------------------------------- */

/** Contexts created so far: every cuCtxCreate_v2, and every cuDevicePrimaryCtxRetain that activated an inactive primary context. */
unsigned long long fake_cuda_context_creations(void);
/** Number of cuPointerGetAttributes calls so far (all of them, failed ones included). */
unsigned long long fake_cuda_pointer_queries(void);
/** Outstanding cuDevicePrimaryCtxRetain references on `device` (not counting the engine's); -1 for a bad device. */
int fake_cuda_primary_context_retains(int device);
/** Drops all allocations, reservations, faults and counters, and releases held queries; primary contexts back to active with no retains. Keeps a successful cuInit, the buffer-id counter and the address cursor (ids and addresses are never reused in a process). */
void fake_cuda_reset(void);

#ifdef __cplusplus
}
#endif

#endif /* FAKE_CUDA_CONTROL_H */
