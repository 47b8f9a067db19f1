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
 */
#define _POSIX_C_SOURCE 200809L

#include "fake_cuda_control.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- the few CUDA types, defined here (no CUDA headers) ----------------------------------- */
typedef int CUresult;
typedef unsigned long long CUdeviceptr;
typedef int CUdevice;
typedef struct fake_ctx *CUcontext;

#define CUDA_SUCCESS 0
#define CUDA_ERROR_INVALID_VALUE 1
#define CUDA_ERROR_NOT_INITIALIZED 3
#define CUDA_ERROR_INVALID_DEVICE 101
#define CUDA_ERROR_INVALID_CONTEXT 201

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

/* ---- state --------------------------------------------------------------------------------- */

struct region {
    unsigned long long base;
    size_t size;
    unsigned long long buffer_id; /* 0 for reservations */
    int kind;                     /* enum fake_cuda_kind; 0 for reservations */
    int device;
    int fail_code; /* fake_cuda_fail_query_at */
    int live;      /* 0 = freed, waiting for compaction */
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
    struct fake_ctx *next_created; /* list of cuCtxCreate contexts (never freed) */
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

static _Thread_local CUcontext t_ctx_stack[CTX_STACK_DEPTH];
static _Thread_local int t_ctx_depth;

/* ---- helpers ------------------------------------------------------------------------------- */

static void lock(void) { pthread_mutex_lock(&g_lock); }
static void unlock(void) { pthread_mutex_unlock(&g_lock); }

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

static void remove_region(struct region_vec *rv, struct region *r) {
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

static void sleep_us(unsigned us) {
    struct timespec ts, rem;
    ts.tv_sec = (time_t)(us / 1000000u);
    ts.tv_nsec = (long)(us % 1000000u) * 1000L;
    while (nanosleep(&ts, &rem) != 0 && errno == EINTR) ts = rem;
}

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
    g_primary[device].magic = CTX_MAGIC;
    g_primary[device].device = device;
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
    if (!valid_ctx(ctx)) return CUDA_ERROR_INVALID_CONTEXT;
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
    if (!valid_ctx(ctx)) return CUDA_ERROR_INVALID_CONTEXT;
    if (t_ctx_depth == 0) t_ctx_depth = 1;
    t_ctx_stack[t_ctx_depth - 1] = ctx;
    return CUDA_SUCCESS;
}

CUresult cuMemGetInfo_v2(size_t *free_bytes, size_t *total_bytes) {
    CUcontext ctx = current_ctx();
    unsigned long long used = 0, avail;
    size_t i;
    if (!is_initialized()) return CUDA_ERROR_NOT_INITIALIZED;
    if (!valid_ctx(ctx)) return CUDA_ERROR_INVALID_CONTEXT;
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
    if (!active) g_retains[device] = 0;
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
    lock();
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
    unlock();
}
