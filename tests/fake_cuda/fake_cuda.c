/*
 * fake_cuda.c - a fake libcuda.so.1 for vram-monitor's tests (no GPU, no CUDA headers).
 *
 * Build (what tests/support/mod.rs does):
 *   cc -std=c11 -Wall -Wextra -Wpedantic -Werror -shared -fPIC -pthread -O2 \
 *      -Wl,-soname,libcuda.so.1 -o libcuda.so.1 fake_cuda.c && ln -sf libcuda.so.1 libcuda.so
 * Add -DFAKE_CUDA_WITHOUT_POINTER_QUERY for a driver that lacks cuPointerGetAttributes.
 *
 * It exports the few driver entry points the monitor uses, answering as the real driver does
 * (see the facts file `cuda-pointer-facts.md` (what the driver answers, measured on the GPU machine), measured on an H100), and the fake_cuda_* control
 * API declared in fake_cuda_control.h. All state sits behind one mutex; the current-context
 * stack is per thread, like the real driver's.
 *
 * State: two arrays of regions sorted by base address (allocations + VMM mappings, and VMM
 * reservations), searched with binary search. Freed records are marked dead and compacted in
 * bulk, so freeing 100k allocations one by one stays cheap. Fake addresses come from a cursor
 * that only grows (2 MiB aligned, 2 MiB gap after each region), so live regions never overlap
 * and "one past the end" of an allocation is always unmapped.
 *
 * Content: an allocation or mapping gets host memory only when something is first written
 * into it (an anonymous MAP_NORESERVE mapping of its size: pages cost nothing until touched);
 * until then it reads as zeros, so 100k registrations or a 1 GiB allocation cost nothing.
 *
 * Kernels: the only module the fake accepts is the monitor's fingerprint PTX, and its launch
 * computes fingerprint v1 (src/integrity/fingerprint.rs, ported below) synchronously inside
 * cuLaunchKernel. It reads one 1 MiB chunk at a time under the lock and hashes it outside, so
 * a long launch never holds up pointer queries, and a write or a free from another thread
 * lands between chunks as it would between a kernel's reads. A read of memory that is not a
 * live allocation is a fault: the launch still returns success, as an asynchronous kernel
 * does, and its context gets the sticky CUDA_ERROR_ILLEGAL_ADDRESS that every later call in
 * it returns until the context is destroyed.
 */
#define _POSIX_C_SOURCE 200809L
/* MAP_ANONYMOUS and MAP_NORESERVE are not in POSIX 2008. */
#define _DEFAULT_SOURCE

#include "fake_cuda_control.h"

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

/* ---- the few CUDA types, defined here (no CUDA headers) ----------------------------------- */
typedef int CUresult;
typedef unsigned long long CUdeviceptr;
typedef int CUdevice;
typedef struct fake_ctx *CUcontext;
/* Modules, functions and streams are handles into the fake's object table, never pointers. */
typedef void *CUmodule;
typedef void *CUfunction;
typedef void *CUstream;

#define CUDA_SUCCESS 0
#define CUDA_ERROR_INVALID_VALUE 1
#define CUDA_ERROR_OUT_OF_MEMORY 2
#define CUDA_ERROR_NOT_INITIALIZED 3
#define CUDA_ERROR_INVALID_DEVICE 101
#define CUDA_ERROR_INVALID_CONTEXT 201
#define CUDA_ERROR_INVALID_PTX 218
#define CUDA_ERROR_INVALID_HANDLE 400
#define CUDA_ERROR_NOT_FOUND 500
#define CUDA_ERROR_ILLEGAL_ADDRESS 700
#define CUDA_ERROR_CONTEXT_IS_DESTROYED 709
#define CU_STREAM_NON_BLOCKING 1u

#define ATTR_MEMORY_TYPE 2
#define ATTR_BUFFER_ID 7
#define ATTR_IS_MANAGED 8
#define ATTR_DEVICE_ORDINAL 9
#define ATTR_RANGE_START_ADDR 11
#define ATTR_RANGE_SIZE 12
#define ATTR_MAPPING_SIZE 18
#define ATTR_MAPPING_BASE_ADDR 19

#define MEMORYTYPE_NONE 0u
#define MEMORYTYPE_HOST 1u
#define MEMORYTYPE_DEVICE 2u

#define TWO_MIB (2ULL << 20)
#define VA_START 0x7f0000000000ULL
#define MAX_REGION_SIZE (1ULL << 44) /* 16 TiB: keeps the address arithmetic far from overflow */
#define FIRST_BUFFER_ID 1000ULL
#define MAX_DEVICES 64
#define DEFAULT_DEVICE_COUNT 2
#define DRIVER_VERSION 13000
#define TOTAL_MEMORY (80ULL << 30)
#define RESERVED_MEMORY (512ULL << 20)
#define CTX_MAGIC 0xC0C7C0C7u
#define CTX_STACK_DEPTH 64

/* The monitor's kernel (src/integrity/fingerprint.cu) and its launch contract. */
#define KERNEL_ENTRY "vram_monitor_fingerprint_v1"
#define KERNEL_BLOCK_THREADS 512u
#define FP_CHUNK_BYTES (1ull << 20)
#define FP_CHUNK_WORDS (FP_CHUNK_BYTES / 4)
#define FP_KEY_STEP 0x9E3779B97F4A7C15ull
#define FP_MULTIPLIER 0xBF58476D1CE4E5B9ull

/* ---- state --------------------------------------------------------------------------------- */

struct region {
    unsigned long long base;
    size_t size;
    unsigned long long buffer_id; /* 0 for reservations */
    int kind;                     /* enum fake_cuda_kind; 0 for reservations */
    int device;
    int fail_code; /* fake_cuda_fail_query_at */
    int live;      /* 0 = freed, waiting for compaction */
    unsigned char *bytes;   /* content; NULL until first written (reads as zeros) */
    struct fake_ctx *owner; /* the context that cuMemAlloc_v2 made it in; NULL for fake_cuda_alloc/map */
};

struct region_vec {
    struct region *v;
    size_t len;
    size_t cap;
    size_t dead;
};

struct fake_ctx {
    unsigned magic;
    int device;
    int primary;
    int sticky; /* the error every call in it returns once a kernel faulted (0: none) */
    unsigned long long generation; /* bumped when it is destroyed: a launch in flight across it faults nothing */
    struct fake_ctx *next_created; /* list of cuCtxCreate contexts (never freed) */
};

enum object_kind { OBJECT_MODULE = 1, OBJECT_FUNCTION, OBJECT_STREAM };

/* A module, function or stream. Handles are never reused, so a stale one is simply unknown. */
struct object {
    unsigned long long handle;
    int kind;
    struct fake_ctx *ctx;
    unsigned long long module; /* OBJECT_FUNCTION: its module's handle */
};

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static struct region_vec g_allocs;   /* DEVICE, MANAGED, HOST, VMM_DEVICE, VMM_HOST */
static struct region_vec g_reserves; /* VMM address reservations */
static unsigned long long g_next_va = VA_START;
static unsigned long long g_next_buffer_id = FIRST_BUFFER_ID;
static int g_initialized;
static int g_init_result;
static int g_query_result;
static unsigned g_query_delay_us;
static pthread_cond_t g_hold_cond = PTHREAD_COND_INITIALIZER;
static int g_hold_queries;        /* nonzero: every pointer query waits until it is cleared */
static unsigned g_held_queries;   /* queries waiting now */
static unsigned long long g_context_creations;
static unsigned long long g_pointer_queries;
static int g_engine_ctx_off[MAX_DEVICES]; /* zero = the engine holds an active primary context */
static int g_retains[MAX_DEVICES];        /* cuDevicePrimaryCtxRetain references */
static struct fake_ctx g_primary[MAX_DEVICES];
static struct fake_ctx *g_created;
static struct object *g_objects;
static size_t g_objects_len, g_objects_cap;
static unsigned long long g_next_handle = 0x100000ULL;
static int g_module_load_result;     /* fake_cuda_set_module_load_result */
static unsigned g_failing_launches;  /* fake_cuda_fail_launches */
static int g_failing_launch_code;
static int g_sticky_armed;           /* fake_cuda_sticky_error_after_launches */
static unsigned g_sticky_after;
static int g_sticky_code;
static unsigned g_launch_delay_us;
static struct fake_cuda_gpu_counters g_gpu; /* the *_live fields are counted when asked */

static _Thread_local CUcontext t_ctx_stack[CTX_STACK_DEPTH];
static _Thread_local int t_ctx_depth;

/* ---- helpers ------------------------------------------------------------------------------- */

static void lock(void) { pthread_mutex_lock(&g_lock); }
static void unlock(void) { pthread_mutex_unlock(&g_lock); }

static void sleep_us(unsigned us) {
    struct timespec ts, rem;
    ts.tv_sec = (time_t)(us / 1000000u);
    ts.tv_nsec = (long)(us % 1000000u) * 1000L;
    while (nanosleep(&ts, &rem) != 0 && errno == EINTR) ts = rem;
}

static unsigned long long align_up(unsigned long long x, unsigned long long a) {
    return (x + a - 1) / a * a;
}

static int env_int(const char *name, int *out) {
    const char *s = getenv(name);
    char *end = NULL;
    long v;
    if (s == NULL || *s == '\0') return 0;
    errno = 0;
    v = strtol(s, &end, 0);
    if (errno != 0 || end == s || *end != '\0' || v < -2147483647L - 1 || v > 2147483647L) return 0;
    *out = (int)v;
    return 1;
}

static int device_count(void) {
    int n = DEFAULT_DEVICE_COUNT;
    if (!env_int("FAKE_CUDA_DEVICE_COUNT", &n) || n < 0) n = DEFAULT_DEVICE_COUNT;
    return n > MAX_DEVICES ? MAX_DEVICES : n;
}

static int valid_device(int device) { return device >= 0 && device < device_count(); }

/* Number of records whose base <= addr (dead ones included). */
static size_t count_le(const struct region_vec *rv, unsigned long long addr) {
    size_t lo = 0, hi = rv->len;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (rv->v[mid].base <= addr) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

static struct region *find_containing(struct region_vec *rv, unsigned long long addr) {
    size_t i = count_le(rv, addr);
    struct region *r;
    if (i == 0) return NULL;
    r = &rv->v[i - 1];
    return (r->live && addr - r->base < r->size) ? r : NULL;
}

static struct region *find_base(struct region_vec *rv, unsigned long long base) {
    struct region *r = find_containing(rv, base);
    return (r != NULL && r->base == base) ? r : NULL;
}

static void compact(struct region_vec *rv) {
    size_t i, j = 0;
    for (i = 0; i < rv->len; i++)
        if (rv->v[i].live) rv->v[j++] = rv->v[i];
    rv->len = j;
    rv->dead = 0;
}

/* Inserts in address order; caller guarantees no overlap with any record (live or dead). */
static int insert(struct region_vec *rv, const struct region *r) {
    size_t i;
    if (rv->len == rv->cap) {
        size_t cap = rv->cap ? rv->cap * 2 : 256;
        struct region *v = realloc(rv->v, cap * sizeof *v);
        if (v == NULL) return -1;
        rv->v = v;
        rv->cap = cap;
    }
    i = count_le(rv, r->base);
    memmove(&rv->v[i + 1], &rv->v[i], (rv->len - i) * sizeof *rv->v);
    rv->v[i] = *r;
    rv->len++;
    return 0;
}

static void drop_content(struct region *r) {
    if (r->bytes != NULL) munmap(r->bytes, r->size);
    r->bytes = NULL;
}

static void remove_region(struct region_vec *rv, struct region *r) {
    drop_content(r);
    r->live = 0;
    rv->dead++;
    if (rv->dead >= 1024 && rv->dead * 2 >= rv->len) compact(rv);
}

/* Takes fresh fake address space: 2 MiB aligned, followed by a 2 MiB unmapped gap. */
static unsigned long long take_va(size_t size) {
    unsigned long long base = align_up(g_next_va, TWO_MIB);
    g_next_va = base + align_up(size, TWO_MIB) + TWO_MIB;
    return base;
}

static int primary_active(int device) { return !g_engine_ctx_off[device] || g_retains[device] > 0; }

static int is_initialized(void) {
    int v;
    lock();
    v = g_initialized;
    unlock();
    return v;
}

static CUcontext current_ctx(void) { return t_ctx_depth > 0 ? t_ctx_stack[t_ctx_depth - 1] : NULL; }

static int valid_ctx(CUcontext ctx) { return ctx != NULL && ctx->magic == CTX_MAGIC; }

/* valid_ctx for a caller not holding the lock: a context is written under it (retained). */
static int valid_ctx_locked(CUcontext ctx) {
    int valid;
    lock();
    valid = valid_ctx(ctx);
    unlock();
    return valid;
}

/* Under the lock: why nothing can run in `ctx` now (0: it can). A primary context that is not
 * active was destroyed (the engine's reset, or its last release); a sticky error stays until
 * then, as on the real driver. */
static CUresult ctx_state(CUcontext ctx) {
    if (!valid_ctx(ctx)) return CUDA_ERROR_INVALID_CONTEXT;
    if (ctx->primary && !primary_active(ctx->device)) return CUDA_ERROR_CONTEXT_IS_DESTROYED;
    return ctx->sticky;
}

/* ---- content ------------------------------------------------------------------------------- */

/* Under the lock: the region's content, mapped on first need (NULL if the mapping failed). */
static unsigned char *content(struct region *r) {
    if (r->bytes == NULL) {
        void *p = mmap(NULL, r->size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED) return NULL;
        r->bytes = p;
    }
    return r->bytes;
}

/* Under the lock: whether every byte of [addr, addr + len) lies in a live allocation or
 * mapping (several back to back, as VMM mappings in one reservation are). */
static int covered(unsigned long long addr, size_t len) {
    if (len == 0 || addr + len < addr) return 0;
    while (len > 0) {
        struct region *r = find_containing(&g_allocs, addr);
        size_t n;
        if (r == NULL) return 0;
        n = r->size - (size_t)(addr - r->base);
        if (n >= len) return 1;
        addr += n;
        len -= n;
    }
    return 1;
}

enum access { READ_OUT, WRITE_IN, FILL };

/* Under the lock: copies [addr, addr + len) of fake memory into `host` (READ_OUT), from `host`
 * (WRITE_IN), or sets it to `byte` (FILL). -1, with nothing changed, when a byte of the range
 * is in no live allocation or the content cannot be mapped. */
static int access_range(unsigned long long addr, size_t len, enum access how, void *host, int byte) {
    unsigned char *p = host;
    unsigned long long at;
    size_t left;
    if (!covered(addr, len)) return -1;
    if (how != READ_OUT) /* map every piece first, so that a failure writes nothing */
        for (at = addr, left = len; left > 0;) {
            struct region *r = find_containing(&g_allocs, at);
            size_t n = r->size - (size_t)(at - r->base);
            if (content(r) == NULL) return -1;
            n = n < left ? n : left;
            at += n;
            left -= n;
        }
    for (at = addr, left = len; left > 0;) {
        struct region *r = find_containing(&g_allocs, at);
        size_t off = (size_t)(at - r->base);
        size_t n = r->size - off < left ? r->size - off : left;
        if (how == READ_OUT && r->bytes == NULL) memset(p, 0, n);
        else if (how == READ_OUT) memcpy(p, r->bytes + off, n);
        else if (how == WRITE_IN) memcpy(r->bytes + off, p, n);
        else memset(r->bytes + off, byte, n);
        if (p != NULL) p += n;
        at += n;
        left -= n;
    }
    return 0;
}

/* ---- modules, functions, streams ------------------------------------------------------------ */

/* Under the lock: the live object `handle` of `kind` made in `ctx`, or NULL. */
static struct object *find_object(const void *handle, int kind, CUcontext ctx) {
    size_t i;
    for (i = 0; i < g_objects_len; i++)
        if (g_objects[i].handle == (unsigned long long)(uintptr_t)handle && g_objects[i].kind == kind && g_objects[i].ctx == ctx)
            return &g_objects[i];
    return NULL;
}

/* Under the lock: the current context's state, else 400 unless `handle` is a live object of
 * `kind` made in it. */
static CUresult object_state(const void *handle, int kind) {
    CUresult code = ctx_state(current_ctx());
    if (code == CUDA_SUCCESS && find_object(handle, kind, current_ctx()) == NULL) code = CUDA_ERROR_INVALID_HANDLE;
    return code;
}

/* Under the lock: a new object's handle, NULL when out of memory. */
static void *add_object(int kind, CUcontext ctx, unsigned long long module) {
    struct object *o;
    if (g_objects_len == g_objects_cap) {
        size_t cap = g_objects_cap ? g_objects_cap * 2 : 16;
        struct object *v = realloc(g_objects, cap * sizeof *v);
        if (v == NULL) return NULL;
        g_objects = v;
        g_objects_cap = cap;
    }
    o = &g_objects[g_objects_len++];
    o->handle = g_next_handle++;
    o->kind = kind;
    o->ctx = ctx;
    o->module = module;
    return (void *)(uintptr_t)o->handle;
}

/* Under the lock: *out = a new object of the current context, or CUDA_ERROR_OUT_OF_MEMORY. */
static CUresult new_object(void **out, int kind, unsigned long long module) {
    *out = add_object(kind, current_ctx(), module);
    return *out != NULL ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
}

/* Under the lock: removes object `handle` with the functions of it (a module), or, with
 * handle 0, everything made in `ctx` (destroyed). */
static void drop_objects(unsigned long long handle, CUcontext ctx) {
    size_t i, j = 0;
    for (i = 0; i < g_objects_len; i++) {
        const struct object *o = &g_objects[i];
        int gone = handle != 0 ? (o->handle == handle || (o->kind == OBJECT_FUNCTION && o->module == handle)) : o->ctx == ctx;
        if (!gone) g_objects[j++] = *o;
    }
    g_objects_len = j;
}

static unsigned long long count_objects(int kind) {
    unsigned long long n = 0;
    size_t i;
    for (i = 0; i < g_objects_len; i++) n += g_objects[i].kind == kind;
    return n;
}

/* Under the lock: the context is gone, with everything made in it; a later one of the same
 * device starts clean. */
static void destroy_context(CUcontext ctx) {
    size_t i;
    drop_objects(0, ctx);
    for (i = 0; i < g_allocs.len; i++) {
        struct region *r = &g_allocs.v[i];
        if (r->live && r->owner == ctx) {
            drop_content(r);
            r->live = 0;
            g_allocs.dead++;
        }
    }
    compact(&g_allocs); /* not remove_region: it may compact under the loop */
    ctx->sticky = 0;
    ctx->generation++;
}

/* ---- fingerprint v1 (the reference is src/integrity/fingerprint.rs) -------------------------- */

/* The wrapping sum of term(i) = (w_i ^ (i + 1) * KEY_STEP) * MULTIPLIER over `len` bytes read as
 * little-endian words, the first being word `first` of its registration; the bytes of a
 * ragged last word past `len` read as 0. */
static unsigned long long fingerprint_chunk(const unsigned char *p, size_t len, unsigned long long first) {
    unsigned long long sum = 0, index = first, w;
    size_t at = 0, b;
    for (; at + 4 <= len; at += 4, index++) {
        w = (unsigned long long)p[at] | ((unsigned long long)p[at + 1] << 8) | ((unsigned long long)p[at + 2] << 16) |
            ((unsigned long long)p[at + 3] << 24);
        sum += (w ^ ((index + 1) * FP_KEY_STEP)) * FP_MULTIPLIER;
    }
    if (at < len) {
        for (w = 0, b = 0; at + b < len; b++) w |= (unsigned long long)p[at + b] << (8 * b);
        sum += (w ^ ((index + 1) * FP_KEY_STEP)) * FP_MULTIPLIER;
    }
    return sum;
}

/* ---- driver API ---------------------------------------------------------------------------- */

CUresult cuInit(unsigned flags) {
    int code;
    lock();
    if (!env_int("FAKE_CUDA_INIT_RESULT", &code)) code = g_init_result;
    if (code == CUDA_SUCCESS && flags != 0) code = CUDA_ERROR_INVALID_VALUE;
    if (code == CUDA_SUCCESS) g_initialized = 1;
    unlock();
    return code;
}

/* Like the real driver, answers before cuInit. */
CUresult cuDriverGetVersion(int *version) {
    if (version == NULL) return CUDA_ERROR_INVALID_VALUE;
    *version = DRIVER_VERSION;
    return CUDA_SUCCESS;
}

CUresult cuDeviceGetCount(int *count) {
    if (!is_initialized()) return CUDA_ERROR_NOT_INITIALIZED;
    if (count == NULL) return CUDA_ERROR_INVALID_VALUE;
    *count = device_count();
    return CUDA_SUCCESS;
}

CUresult cuDeviceGet(CUdevice *device, int ordinal) {
    if (!is_initialized()) return CUDA_ERROR_NOT_INITIALIZED;
    if (device == NULL) return CUDA_ERROR_INVALID_VALUE;
    if (!valid_device(ordinal)) return CUDA_ERROR_INVALID_DEVICE;
    *device = ordinal;
    return CUDA_SUCCESS;
}

#ifndef FAKE_CUDA_WITHOUT_POINTER_QUERY
/* Everything from here to the #endif is cuPointerGetAttributes (left out in that variant). */

/* The driver's chunk size for ordinary allocations (MAPPING_* granularity). */
#define CHUNK (2ull << 20)

struct answer {
    unsigned memory_type;
    unsigned is_managed;
    int ordinal;
    unsigned long long buffer_id;
    unsigned long long range_start;
    size_t range_size;
    unsigned long long mapping_base;
    size_t mapping_size;
};

/* Under the lock. Returns a fault code to report instead, or 0 with *a filled in. */
static int answer_for(unsigned long long ptr, struct answer *a) {
    struct region *r = find_containing(&g_allocs, ptr);
    struct region *res;
    memset(a, 0, sizeof *a);
    a->ordinal = -2;
    if (r != NULL) {
        if (r->fail_code != 0) return r->fail_code;
        a->is_managed = r->kind == FAKE_CUDA_MANAGED;
        a->ordinal = r->device;
        a->buffer_id = r->buffer_id;
        if (r->kind == FAKE_CUDA_VMM_DEVICE || r->kind == FAKE_CUDA_VMM_HOST) {
            res = find_containing(&g_reserves, ptr);
            a->memory_type = r->kind == FAKE_CUDA_VMM_DEVICE ? MEMORYTYPE_DEVICE : MEMORYTYPE_HOST;
            if (res != NULL) {
                a->range_start = res->base;
                a->range_size = res->size;
            }
            a->mapping_base = r->base;
            a->mapping_size = r->size;
        } else {
            a->memory_type = r->kind == FAKE_CUDA_HOST ? MEMORYTYPE_HOST : MEMORYTYPE_DEVICE;
            a->range_start = r->base;
            a->range_size = r->size;
            /* Measured on an H100 (driver 580): for ordinary allocations MAPPING_* names the
             * driver's own 2 MiB-granular chunk holding the allocation (one chunk can hold several
             * small allocations), not the allocation: RANGE_* is the allocation. */
            a->mapping_base = r->base & ~(unsigned long long)(CHUNK - 1);
            a->mapping_size = (size_t)((((r->base + r->size) + CHUNK - 1) & ~(unsigned long long)(CHUNK - 1)) - a->mapping_base);
        }
        return 0;
    }
    res = find_containing(&g_reserves, ptr);
    if (res != NULL) {
        if (res->fail_code != 0) return res->fail_code;
        a->range_start = res->base;
        a->range_size = res->size;
    }
    return 0;
}

static int known_attribute(int attr) {
    switch (attr) {
    case ATTR_MEMORY_TYPE:
    case ATTR_BUFFER_ID:
    case ATTR_IS_MANAGED:
    case ATTR_DEVICE_ORDINAL:
    case ATTR_RANGE_START_ADDR:
    case ATTR_RANGE_SIZE:
    case ATTR_MAPPING_SIZE:
    case ATTR_MAPPING_BASE_ADDR:
        return 1;
    default:
        return 0;
    }
}

CUresult cuPointerGetAttributes(unsigned num_attributes, int *attributes, void **data, CUdeviceptr ptr) {
    struct answer a;
    unsigned i, delay;
    int code;

    lock();
    g_pointer_queries++;
    delay = g_query_delay_us;
    if (delay != 0) {
        unlock();
        sleep_us(delay);
        lock();
    }
    /* A driver that hangs (a GPU falling off the bus): wait, lock released, until released. */
    if (g_hold_queries) {
        g_held_queries++;
        while (g_hold_queries) pthread_cond_wait(&g_hold_cond, &g_lock);
        g_held_queries--;
    }
    if (!g_initialized) code = CUDA_ERROR_NOT_INITIALIZED;
    else if (g_query_result != 0) code = g_query_result;
    else if (num_attributes != 0 && (attributes == NULL || data == NULL)) code = CUDA_ERROR_INVALID_VALUE;
    else {
        code = CUDA_SUCCESS;
        for (i = 0; i < num_attributes && code == CUDA_SUCCESS; i++)
            if (!known_attribute(attributes[i]) || data[i] == NULL) code = CUDA_ERROR_INVALID_VALUE;
        if (code == CUDA_SUCCESS) code = answer_for(ptr, &a);
    }
    unlock();
    if (code != CUDA_SUCCESS) return code;

    for (i = 0; i < num_attributes; i++) {
        void *d = data[i];
        switch (attributes[i]) {
        case ATTR_MEMORY_TYPE: *(unsigned *)d = a.memory_type; break;
        case ATTR_BUFFER_ID: *(unsigned long long *)d = a.buffer_id; break;
        case ATTR_IS_MANAGED: *(unsigned *)d = a.is_managed; break;
        case ATTR_DEVICE_ORDINAL: *(int *)d = a.ordinal; break;
        case ATTR_RANGE_START_ADDR: *(unsigned long long *)d = a.range_start; break;
        case ATTR_RANGE_SIZE: *(size_t *)d = a.range_size; break;
        case ATTR_MAPPING_SIZE: *(size_t *)d = a.mapping_size; break;
        case ATTR_MAPPING_BASE_ADDR: *(unsigned long long *)d = a.mapping_base; break;
        default: break; /* unreachable: validated above */
        }
    }
    return CUDA_SUCCESS;
}
#endif

CUresult cuDevicePrimaryCtxGetState(CUdevice device, unsigned *flags, int *active) {
    if (!is_initialized()) return CUDA_ERROR_NOT_INITIALIZED;
    if (flags == NULL || active == NULL) return CUDA_ERROR_INVALID_VALUE;
    if (!valid_device(device)) return CUDA_ERROR_INVALID_DEVICE;
    lock();
    *flags = 0;
    *active = primary_active(device);
    unlock();
    return CUDA_SUCCESS;
}

CUresult cuDevicePrimaryCtxRetain(CUcontext *ctx, CUdevice device) {
    if (!is_initialized()) return CUDA_ERROR_NOT_INITIALIZED;
    if (ctx == NULL) return CUDA_ERROR_INVALID_VALUE;
    if (!valid_device(device)) return CUDA_ERROR_INVALID_DEVICE;
    lock();
    if (!primary_active(device)) g_context_creations++;
    g_retains[device]++;
    /* Written once: other threads read a context they hold without the lock. */
    if (g_primary[device].magic != CTX_MAGIC) {
        g_primary[device].magic = CTX_MAGIC;
        g_primary[device].device = device;
        g_primary[device].primary = 1;
    }
    *ctx = &g_primary[device];
    unlock();
    return CUDA_SUCCESS;
}

/* Releasing more than was retained is an error (201) here, to catch double releases. */
CUresult cuDevicePrimaryCtxRelease_v2(CUdevice device) {
    CUresult code = CUDA_SUCCESS;
    if (!is_initialized()) return CUDA_ERROR_NOT_INITIALIZED;
    if (!valid_device(device)) return CUDA_ERROR_INVALID_DEVICE;
    lock();
    if (g_retains[device] > 0) g_retains[device]--;
    else code = CUDA_ERROR_INVALID_CONTEXT;
    unlock();
    return code;
}

CUresult cuCtxCreate_v2(CUcontext *ctx, unsigned flags, CUdevice device) {
    struct fake_ctx *c;
    (void)flags;
    if (!is_initialized()) return CUDA_ERROR_NOT_INITIALIZED;
    if (ctx == NULL) return CUDA_ERROR_INVALID_VALUE;
    if (!valid_device(device)) return CUDA_ERROR_INVALID_DEVICE;
    if (t_ctx_depth >= CTX_STACK_DEPTH) return CUDA_ERROR_INVALID_VALUE;
    c = calloc(1, sizeof *c);
    if (c == NULL) return 2; /* CUDA_ERROR_OUT_OF_MEMORY */
    c->magic = CTX_MAGIC;
    c->device = device;
    lock();
    c->next_created = g_created;
    g_created = c;
    g_context_creations++;
    unlock();
    t_ctx_stack[t_ctx_depth++] = c; /* a new context becomes current, as in the real driver */
    *ctx = c;
    return CUDA_SUCCESS;
}

CUresult cuCtxPushCurrent_v2(CUcontext ctx) {
    if (!is_initialized()) return CUDA_ERROR_NOT_INITIALIZED;
    if (!valid_ctx_locked(ctx)) return CUDA_ERROR_INVALID_CONTEXT;
    if (t_ctx_depth >= CTX_STACK_DEPTH) return CUDA_ERROR_INVALID_VALUE;
    t_ctx_stack[t_ctx_depth++] = ctx;
    return CUDA_SUCCESS;
}

CUresult cuCtxPopCurrent_v2(CUcontext *ctx) {
    if (!is_initialized()) return CUDA_ERROR_NOT_INITIALIZED;
    if (t_ctx_depth == 0) return CUDA_ERROR_INVALID_CONTEXT;
    t_ctx_depth--;
    if (ctx != NULL) *ctx = t_ctx_stack[t_ctx_depth];
    return CUDA_SUCCESS;
}

CUresult cuCtxGetCurrent(CUcontext *ctx) {
    if (!is_initialized()) return CUDA_ERROR_NOT_INITIALIZED;
    if (ctx == NULL) return CUDA_ERROR_INVALID_VALUE;
    *ctx = current_ctx();
    return CUDA_SUCCESS;
}

/* Replaces the top of the stack (pushes when empty); NULL pops (no-op when empty). */
CUresult cuCtxSetCurrent(CUcontext ctx) {
    if (!is_initialized()) return CUDA_ERROR_NOT_INITIALIZED;
    if (ctx == NULL) {
        if (t_ctx_depth > 0) t_ctx_depth--;
        return CUDA_SUCCESS;
    }
    if (!valid_ctx_locked(ctx)) return CUDA_ERROR_INVALID_CONTEXT;
    if (t_ctx_depth == 0) t_ctx_depth = 1;
    t_ctx_stack[t_ctx_depth - 1] = ctx;
    return CUDA_SUCCESS;
}

CUresult cuMemGetInfo_v2(size_t *free_bytes, size_t *total_bytes) {
    CUcontext ctx = current_ctx();
    unsigned long long used = 0, avail;
    size_t i;
    if (!is_initialized()) return CUDA_ERROR_NOT_INITIALIZED;
    if (!valid_ctx_locked(ctx)) return CUDA_ERROR_INVALID_CONTEXT;
    if (free_bytes == NULL || total_bytes == NULL) return CUDA_ERROR_INVALID_VALUE;
    lock();
    for (i = 0; i < g_allocs.len; i++) {
        const struct region *r = &g_allocs.v[i];
        if (r->live && r->device == ctx->device && (r->kind == FAKE_CUDA_DEVICE || r->kind == FAKE_CUDA_VMM_DEVICE))
            used += r->size;
    }
    unlock();
    avail = TOTAL_MEMORY - RESERVED_MEMORY;
    *free_bytes = (size_t)(used >= avail ? 0 : avail - used);
    *total_bytes = (size_t)TOTAL_MEMORY;
    return CUDA_SUCCESS;
}

/* ---- what integrity uses: the context's device, modules, streams, memory, the kernel ------- */

CUresult cuCtxGetDevice(CUdevice *device) {
    CUcontext ctx = current_ctx();
    CUresult code = CUDA_SUCCESS;
    if (!is_initialized()) return CUDA_ERROR_NOT_INITIALIZED;
    if (device == NULL) return CUDA_ERROR_INVALID_VALUE;
    lock();
    if (valid_ctx(ctx)) *device = ctx->device;
    else code = CUDA_ERROR_INVALID_CONTEXT;
    unlock();
    return code;
}

/* Launches run inside cuLaunchKernel, so there is nothing to wait for: only the context's
 * state to report. */
CUresult cuCtxSynchronize(void) {
    CUresult code;
    if (!is_initialized()) return CUDA_ERROR_NOT_INITIALIZED;
    lock();
    g_gpu.context_synchronizes++;
    code = ctx_state(current_ctx());
    unlock();
    return code;
}

/* Accepts the monitor's fingerprint PTX only (an image naming its entry point): anything
 * else is CUDA_ERROR_INVALID_PTX, as a driver answers text it cannot compile. */
CUresult cuModuleLoadData(CUmodule *module, const void *image) {
    CUresult code;
    if (!is_initialized()) return CUDA_ERROR_NOT_INITIALIZED;
    if (module == NULL || image == NULL) return CUDA_ERROR_INVALID_VALUE;
    lock();
    code = ctx_state(current_ctx());
    if (code == CUDA_SUCCESS && g_module_load_result != 0) code = g_module_load_result;
    if (code == CUDA_SUCCESS && strstr(image, ".entry " KERNEL_ENTRY "(") == NULL) code = CUDA_ERROR_INVALID_PTX;
    if (code == CUDA_SUCCESS) code = new_object(module, OBJECT_MODULE, 0);
    if (code == CUDA_SUCCESS) g_gpu.modules_loaded++;
    unlock();
    return code;
}

CUresult cuModuleGetFunction(CUfunction *function, CUmodule module, const char *name) {
    CUresult code;
    if (!is_initialized()) return CUDA_ERROR_NOT_INITIALIZED;
    if (function == NULL || name == NULL) return CUDA_ERROR_INVALID_VALUE;
    lock();
    code = object_state(module, OBJECT_MODULE);
    if (code == CUDA_SUCCESS && strcmp(name, KERNEL_ENTRY) != 0) code = CUDA_ERROR_NOT_FOUND;
    if (code == CUDA_SUCCESS) code = new_object(function, OBJECT_FUNCTION, (unsigned long long)(uintptr_t)module);
    unlock();
    return code;
}

CUresult cuModuleUnload(CUmodule module) {
    CUresult code;
    if (!is_initialized()) return CUDA_ERROR_NOT_INITIALIZED;
    lock();
    code = object_state(module, OBJECT_MODULE);
    if (code == CUDA_SUCCESS) {
        drop_objects((unsigned long long)(uintptr_t)module, NULL);
        g_gpu.modules_unloaded++;
    }
    unlock();
    return code;
}

CUresult cuStreamCreate(CUstream *stream, unsigned flags) {
    CUresult code;
    if (!is_initialized()) return CUDA_ERROR_NOT_INITIALIZED;
    if (stream == NULL || (flags & ~CU_STREAM_NON_BLOCKING) != 0) return CUDA_ERROR_INVALID_VALUE;
    lock();
    code = ctx_state(current_ctx());
    if (code == CUDA_SUCCESS) code = new_object(stream, OBJECT_STREAM, 0);
    unlock();
    return code;
}

CUresult cuStreamDestroy_v2(CUstream stream) {
    CUresult code;
    if (!is_initialized()) return CUDA_ERROR_NOT_INITIALIZED;
    lock();
    code = object_state(stream, OBJECT_STREAM);
    if (code == CUDA_SUCCESS) drop_objects((unsigned long long)(uintptr_t)stream, NULL);
    unlock();
    return code;
}

/* Under the lock: a stream argument is the legacy default stream (NULL) or one of ctx's. */
static int valid_stream(CUstream stream, CUcontext ctx) {
    return stream == NULL || find_object(stream, OBJECT_STREAM, ctx) != NULL;
}

CUresult cuStreamSynchronize(CUstream stream) {
    CUresult code;
    if (!is_initialized()) return CUDA_ERROR_NOT_INITIALIZED;
    lock();
    code = ctx_state(current_ctx());
    if (code == CUDA_SUCCESS && !valid_stream(stream, current_ctx())) code = CUDA_ERROR_INVALID_HANDLE;
    unlock();
    return code;
}

CUresult cuMemAlloc_v2(CUdeviceptr *dptr, size_t size) {
    struct region r;
    CUresult code;
    if (!is_initialized()) return CUDA_ERROR_NOT_INITIALIZED;
    if (dptr == NULL || size == 0) return CUDA_ERROR_INVALID_VALUE;
    if (size > MAX_REGION_SIZE) return CUDA_ERROR_OUT_OF_MEMORY;
    lock();
    code = ctx_state(current_ctx());
    if (code == CUDA_SUCCESS) {
        memset(&r, 0, sizeof r);
        r.size = size;
        r.kind = FAKE_CUDA_DEVICE;
        r.device = current_ctx()->device;
        r.owner = current_ctx();
        r.live = 1;
        r.base = take_va(size);
        r.buffer_id = g_next_buffer_id++;
        if (insert(&g_allocs, &r) != 0) code = CUDA_ERROR_OUT_OF_MEMORY;
        else *dptr = r.base;
    }
    unlock();
    return code;
}

/* Frees what cuMemAlloc_v2 made, nothing else: the library must never free the engine's memory. */
CUresult cuMemFree_v2(CUdeviceptr dptr) {
    struct region *r;
    CUresult code;
    if (!is_initialized()) return CUDA_ERROR_NOT_INITIALIZED;
    lock();
    code = ctx_state(current_ctx());
    r = find_base(&g_allocs, dptr);
    if (code == CUDA_SUCCESS && (r == NULL || r->owner == NULL)) code = CUDA_ERROR_INVALID_VALUE;
    if (code == CUDA_SUCCESS) remove_region(&g_allocs, r);
    unlock();
    return code;
}

/* Copies at once (under the lock): the library copies at most its 128 KiB scratch buffer. */
CUresult cuMemcpyDtoHAsync_v2(void *dst, CUdeviceptr src, size_t bytes, CUstream stream) {
    CUresult code;
    if (!is_initialized()) return CUDA_ERROR_NOT_INITIALIZED;
    if (dst == NULL && bytes > 0) return CUDA_ERROR_INVALID_VALUE;
    lock();
    code = ctx_state(current_ctx());
    if (code == CUDA_SUCCESS && !valid_stream(stream, current_ctx())) code = CUDA_ERROR_INVALID_HANDLE;
    if (code == CUDA_SUCCESS && bytes > 0 && access_range(src, bytes, READ_OUT, dst, 0) != 0) code = CUDA_ERROR_INVALID_VALUE;
    unlock();
    return code;
}

/* Runs the fingerprint over [base, base + length) for `blocks` blocks into `out`, reading one
 * chunk at a time under the lock. Returns the fault (0: none): CUDA_ERROR_ILLEGAL_ADDRESS
 * when a byte read or written is not live fake memory. */
static int run_fingerprint(unsigned long long base, unsigned long long length, unsigned long long first_word,
                           unsigned long long out, unsigned blocks, unsigned char *chunk, unsigned long long *values) {
    unsigned long long chunks = (length + FP_CHUNK_BYTES - 1) / FP_CHUNK_BYTES, c;
    int fault = 0;
    /* The kernel's blocks past the launch's chunks return at once, writing nothing. */
    if (chunks > blocks) chunks = blocks;
    if (base + length < base) return CUDA_ERROR_ILLEGAL_ADDRESS;
    for (c = 0; c < chunks && fault == 0; c++) {
        unsigned long long start = c * FP_CHUNK_BYTES;
        size_t len = (size_t)(length - start < FP_CHUNK_BYTES ? length - start : FP_CHUNK_BYTES);
        lock();
        if (access_range(base + start, len, READ_OUT, chunk, 0) != 0) fault = CUDA_ERROR_ILLEGAL_ADDRESS;
        else g_gpu.bytes_read += len;
        unlock();
        if (fault == 0) values[c] = fingerprint_chunk(chunk, len, first_word + c * FP_CHUNK_WORDS);
    }
    if (fault == 0 && chunks > 0) {
        lock();
        if (access_range(out, (size_t)chunks * sizeof *values, WRITE_IN, values, 0) != 0) fault = CUDA_ERROR_ILLEGAL_ADDRESS;
        unlock();
    }
    return fault;
}

/* The fingerprint kernel, run to completion here (see the file's header). Its contract
 * (src/integrity/fingerprint.cu): block 512x1x1, grid Nx1x1, no shared memory, kernelParams =
 * { &base, &length, &first_word, &out }, extra NULL; anything else is CUDA_ERROR_INVALID_VALUE. */
CUresult cuLaunchKernel(CUfunction function, unsigned grid_x, unsigned grid_y, unsigned grid_z, unsigned block_x,
                        unsigned block_y, unsigned block_z, unsigned shared_bytes, CUstream stream, void **params,
                        void **extra) {
    CUcontext ctx = current_ctx();
    unsigned long long base = 0, length = 0, first_word = 0, out = 0, generation = 0, *values = NULL;
    unsigned char *chunk = NULL;
    unsigned delay = 0;
    int fault = 0, i;
    CUresult code;
    if (!is_initialized()) return CUDA_ERROR_NOT_INITIALIZED;
    lock();
    g_gpu.launches++;
    code = ctx_state(ctx);
    if (code == CUDA_SUCCESS && (find_object(function, OBJECT_FUNCTION, ctx) == NULL || !valid_stream(stream, ctx)))
        code = CUDA_ERROR_INVALID_HANDLE;
    if (code == CUDA_SUCCESS && (grid_x == 0 || grid_y != 1 || grid_z != 1 || block_x != KERNEL_BLOCK_THREADS ||
                                 block_y != 1 || block_z != 1 || shared_bytes != 0 || params == NULL || extra != NULL))
        code = CUDA_ERROR_INVALID_VALUE;
    for (i = 0; code == CUDA_SUCCESS && i < 4; i++)
        if (params[i] == NULL) code = CUDA_ERROR_INVALID_VALUE;
    if (code == CUDA_SUCCESS && g_failing_launches > 0) {
        g_failing_launches--;
        code = g_failing_launch_code;
    }
    if (code == CUDA_SUCCESS) {
        memcpy(&base, params[0], sizeof base);
        memcpy(&length, params[1], sizeof length);
        memcpy(&first_word, params[2], sizeof first_word);
        memcpy(&out, params[3], sizeof out);
        if (g_sticky_armed && g_sticky_after == 0) {
            g_sticky_armed = 0;
            fault = g_sticky_code;
        } else if (g_sticky_armed) {
            g_sticky_after--;
        }
        generation = ctx->generation;
        delay = g_launch_delay_us;
        g_gpu.launches_in_progress++;
    }
    unlock();
    if (code != CUDA_SUCCESS) return code;

    if (delay != 0) sleep_us(delay);
    if (fault == 0) {
        unsigned long long chunks = (length + FP_CHUNK_BYTES - 1) / FP_CHUNK_BYTES;
        chunk = malloc(FP_CHUNK_BYTES);
        values = malloc((size_t)(chunks < grid_x ? chunks + 1 : grid_x) * sizeof *values);
        if (chunk == NULL || values == NULL) code = CUDA_ERROR_OUT_OF_MEMORY;
        else fault = run_fingerprint(base, length, first_word, out, grid_x, chunk, values);
    }
    free(chunk);
    free(values);
    lock();
    g_gpu.launches_in_progress--;
    /* A context destroyed while the kernel ran took the fault with it. */
    if (fault != 0 && ctx->generation == generation && ctx->sticky == 0) ctx->sticky = fault;
    unlock();
    return code;
}

/* cudarc formats its DriverError with these two; like the real driver they work before cuInit. */
static const char *error_text(CUresult code, int want_name) {
    switch (code) {
    case 0: return want_name ? "CUDA_SUCCESS" : "no error";
    case 1: return want_name ? "CUDA_ERROR_INVALID_VALUE" : "invalid argument";
    case 2: return want_name ? "CUDA_ERROR_OUT_OF_MEMORY" : "out of memory";
    case 3: return want_name ? "CUDA_ERROR_NOT_INITIALIZED" : "initialization error";
    case 4: return want_name ? "CUDA_ERROR_DEINITIALIZED" : "driver shutting down";
    case 34: return want_name ? "CUDA_ERROR_STUB_LIBRARY" : "CUDA driver is a stub library";
    case 100: return want_name ? "CUDA_ERROR_NO_DEVICE" : "no CUDA-capable device is detected";
    case 101: return want_name ? "CUDA_ERROR_INVALID_DEVICE" : "invalid device ordinal";
    case 201: return want_name ? "CUDA_ERROR_INVALID_CONTEXT" : "invalid device context";
    case 218: return want_name ? "CUDA_ERROR_INVALID_PTX" : "a PTX JIT compilation failed";
    case 222: return want_name ? "CUDA_ERROR_UNSUPPORTED_PTX_VERSION" : "the provided PTX was compiled with an unsupported toolchain.";
    case 400: return want_name ? "CUDA_ERROR_INVALID_HANDLE" : "invalid resource handle";
    case 500: return want_name ? "CUDA_ERROR_NOT_FOUND" : "named symbol not found";
    case 700: return want_name ? "CUDA_ERROR_ILLEGAL_ADDRESS" : "an illegal memory access was encountered";
    case 701: return want_name ? "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES" : "too many resources requested for launch";
    case 709: return want_name ? "CUDA_ERROR_CONTEXT_IS_DESTROYED" : "context is destroyed";
    case 719: return want_name ? "CUDA_ERROR_LAUNCH_FAILED" : "unspecified launch failure";
    case 999: return want_name ? "CUDA_ERROR_UNKNOWN" : "unknown error";
    default: return NULL;
    }
}

CUresult cuGetErrorName(CUresult error, const char **name) {
    if (name == NULL) return CUDA_ERROR_INVALID_VALUE;
    *name = error_text(error, 1);
    return *name != NULL ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

CUresult cuGetErrorString(CUresult error, const char **text) {
    if (text == NULL) return CUDA_ERROR_INVALID_VALUE;
    *text = error_text(error, 0);
    return *text != NULL ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

/* ---- control API --------------------------------------------------------------------------- */

unsigned long long fake_cuda_alloc(int kind, size_t size, int device) {
    struct region r;
    if (kind != FAKE_CUDA_DEVICE && kind != FAKE_CUDA_MANAGED && kind != FAKE_CUDA_HOST) return 0;
    if (size == 0 || size > MAX_REGION_SIZE || !valid_device(device)) return 0;
    memset(&r, 0, sizeof r);
    r.size = size;
    r.kind = kind;
    r.device = device;
    r.live = 1;
    lock();
    r.base = take_va(size);
    r.buffer_id = g_next_buffer_id++;
    if (insert(&g_allocs, &r) != 0) r.base = 0;
    unlock();
    return r.base;
}

int fake_cuda_free(unsigned long long base) {
    struct region *r;
    int rc = -1;
    lock();
    r = find_base(&g_allocs, base);
    if (r != NULL) {
        remove_region(&g_allocs, r);
        rc = 0;
    }
    unlock();
    return rc;
}

int fake_cuda_reallocate(unsigned long long base) {
    struct region *r;
    int rc = -1;
    lock();
    r = find_base(&g_allocs, base);
    if (r != NULL) {
        r->buffer_id = g_next_buffer_id++;
        r->fail_code = 0;
        drop_content(r); /* a new buffer: none of the old bytes */
        rc = 0;
    }
    unlock();
    return rc;
}

static int kind_family(int kind) {
    if (kind >= FAKE_CUDA_DEVICE && kind <= FAKE_CUDA_HOST) return 1;
    if (kind == FAKE_CUDA_VMM_DEVICE || kind == FAKE_CUDA_VMM_HOST) return 2;
    return 0;
}

int fake_cuda_set_kind(unsigned long long base, int kind) {
    struct region *r;
    int rc = -1;
    lock();
    r = find_base(&g_allocs, base);
    if (r != NULL && kind_family(kind) != 0 && kind_family(kind) == kind_family(r->kind)) {
        r->kind = kind;
        rc = 0;
    }
    unlock();
    return rc;
}

int fake_cuda_set_device(unsigned long long base, int device) {
    struct region *r;
    int rc = -1;
    if (!valid_device(device)) return -1;
    lock();
    r = find_base(&g_allocs, base);
    if (r != NULL) {
        r->device = device;
        rc = 0;
    }
    unlock();
    return rc;
}

unsigned long long fake_cuda_reserve(size_t size) {
    struct region r;
    if (size == 0 || size > MAX_REGION_SIZE) return 0;
    memset(&r, 0, sizeof r);
    r.size = size;
    r.device = -2;
    r.live = 1;
    lock();
    r.base = take_va(size);
    if (insert(&g_reserves, &r) != 0) r.base = 0;
    unlock();
    return r.base;
}

int fake_cuda_release(unsigned long long base) {
    struct region *res;
    size_t i;
    int rc = -1;
    lock();
    res = find_base(&g_reserves, base);
    if (res != NULL) {
        rc = 0;
        /* records with base in [base, base + size): any live one is a mapping still there */
        for (i = count_le(&g_allocs, base - 1); i < g_allocs.len && g_allocs.v[i].base - base < res->size; i++)
            if (g_allocs.v[i].live) rc = -1;
        if (rc == 0) remove_region(&g_reserves, res);
    }
    unlock();
    return rc;
}

int fake_cuda_map(unsigned long long addr, size_t size, int kind, int device) {
    struct region *res;
    struct region r;
    size_t i;
    int rc = -1;
    if (kind != FAKE_CUDA_VMM_DEVICE && kind != FAKE_CUDA_VMM_HOST) return -1;
    if (size == 0 || size > MAX_REGION_SIZE || !valid_device(device)) return -1;
    lock();
    res = find_containing(&g_reserves, addr);
    if (res != NULL && size <= res->size - (addr - res->base)) {
        compact(&g_allocs); /* no dead records may overlap the new one */
        i = count_le(&g_allocs, addr);
        if ((i == 0 || g_allocs.v[i - 1].base + g_allocs.v[i - 1].size <= addr) &&
            (i == g_allocs.len || g_allocs.v[i].base >= addr + size)) {
            memset(&r, 0, sizeof r);
            r.base = addr;
            r.size = size;
            r.kind = kind;
            r.device = device;
            r.live = 1;
            r.buffer_id = g_next_buffer_id++;
            rc = insert(&g_allocs, &r);
        }
    }
    unlock();
    return rc;
}

int fake_cuda_unmap(unsigned long long addr) {
    struct region *r;
    int rc = -1;
    lock();
    r = find_base(&g_allocs, addr);
    if (r != NULL && kind_family(r->kind) == 2) {
        remove_region(&g_allocs, r);
        rc = 0;
    }
    unlock();
    return rc;
}

void fake_cuda_set_init_result(int code) {
    lock();
    g_init_result = code;
    unlock();
}

void fake_cuda_set_query_result(int code) {
    lock();
    g_query_result = code;
    unlock();
}

void fake_cuda_fail_query_at(unsigned long long addr, int code) {
    struct region *r;
    lock();
    r = find_containing(&g_allocs, addr);
    if (r == NULL) r = find_containing(&g_reserves, addr);
    if (r != NULL) r->fail_code = code;
    unlock();
}

void fake_cuda_set_query_delay_us(unsigned us) {
    lock();
    g_query_delay_us = us;
    unlock();
}

void fake_cuda_hold_queries(int hold) {
    lock();
    g_hold_queries = hold != 0;
    if (!hold) pthread_cond_broadcast(&g_hold_cond);
    unlock();
}

unsigned fake_cuda_held_queries(void) {
    unsigned v;
    lock();
    v = g_held_queries;
    unlock();
    return v;
}

void fake_cuda_set_primary_context_active(int device, int active) {
    if (device < 0 || device >= MAX_DEVICES) return;
    lock();
    g_engine_ctx_off[device] = !active;
    if (!active) {
        g_retains[device] = 0;
        destroy_context(&g_primary[device]);
    }
    unlock();
}

unsigned long long fake_cuda_context_creations(void) {
    unsigned long long v;
    lock();
    v = g_context_creations;
    unlock();
    return v;
}

unsigned long long fake_cuda_pointer_queries(void) {
    unsigned long long v;
    lock();
    v = g_pointer_queries;
    unlock();
    return v;
}

int fake_cuda_primary_context_retains(int device) {
    int v;
    if (device < 0 || device >= MAX_DEVICES) return -1;
    lock();
    v = g_retains[device];
    unlock();
    return v;
}

void fake_cuda_reset(void) {
    size_t i;
    struct fake_ctx *c;
    lock();
    for (i = 0; i < g_allocs.len; i++) drop_content(&g_allocs.v[i]);
    g_allocs.len = 0;
    g_allocs.dead = 0;
    g_reserves.len = 0;
    g_reserves.dead = 0;
    g_init_result = 0;
    g_query_result = 0;
    g_query_delay_us = 0;
    g_hold_queries = 0;
    pthread_cond_broadcast(&g_hold_cond);
    g_context_creations = 0;
    g_pointer_queries = 0;
    memset(g_engine_ctx_off, 0, sizeof g_engine_ctx_off);
    memset(g_retains, 0, sizeof g_retains);
    g_objects_len = 0;
    g_module_load_result = 0;
    g_failing_launches = 0;
    g_sticky_armed = 0;
    g_launch_delay_us = 0;
    memset(&g_gpu, 0, sizeof g_gpu);
    for (i = 0; i < MAX_DEVICES; i++) g_primary[i].sticky = 0;
    for (c = g_created; c != NULL; c = c->next_created) c->sticky = 0;
    unlock();
}

/* ---- content, kernels and their faults ------------------------------------------------------ */

int fake_cuda_write(unsigned long long addr, const void *bytes, size_t len) {
    int rc;
    if (bytes == NULL) return -1;
    lock();
    rc = access_range(addr, len, WRITE_IN, (void *)(uintptr_t)bytes, 0);
    unlock();
    return rc;
}

int fake_cuda_fill(unsigned long long addr, int byte, size_t len) {
    int rc;
    lock();
    rc = access_range(addr, len, FILL, NULL, byte);
    unlock();
    return rc;
}

int fake_cuda_read(unsigned long long addr, void *bytes, size_t len) {
    int rc;
    if (bytes == NULL) return -1;
    lock();
    rc = access_range(addr, len, READ_OUT, bytes, 0);
    unlock();
    return rc;
}

void fake_cuda_set_module_load_result(int code) {
    lock();
    g_module_load_result = code;
    unlock();
}

void fake_cuda_fail_launches(unsigned count, int code) {
    lock();
    g_failing_launches = code != 0 ? count : 0;
    g_failing_launch_code = code;
    unlock();
}

void fake_cuda_sticky_error_after_launches(unsigned launches, int code) {
    lock();
    g_sticky_armed = code != 0;
    g_sticky_after = launches;
    g_sticky_code = code;
    unlock();
}

void fake_cuda_set_launch_delay_us(unsigned us) {
    lock();
    g_launch_delay_us = us;
    unlock();
}

int fake_cuda_context_error(int device) {
    int v;
    if (device < 0 || device >= MAX_DEVICES) return -1;
    lock();
    v = g_primary[device].sticky;
    unlock();
    return v;
}

void fake_cuda_gpu_counters(struct fake_cuda_gpu_counters *out) {
    size_t i;
    if (out == NULL) return;
    lock();
    *out = g_gpu;
    out->modules_live = count_objects(OBJECT_MODULE);
    out->streams_live = count_objects(OBJECT_STREAM);
    out->driver_allocations_live = 0;
    for (i = 0; i < g_allocs.len; i++) out->driver_allocations_live += g_allocs.v[i].live && g_allocs.v[i].owner != NULL;
    unlock();
}
