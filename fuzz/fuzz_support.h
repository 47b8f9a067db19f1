/*
 * fuzz_support.h - shared by the fuzz targets in fuzz/: a byte reader over the fuzzer's input,
 * a strict UTF-8 check (the rules of Rust's str::from_utf8), a JSON string decoder, and
 * FUZZ_ASSERT, which aborts so that libFuzzer records the input as a crash.
 *
 * The targets use the fake libcuda (tests/fake_cuda) through tests/c/test_support.h; they are
 * built and run by fuzz/run.sh (clang, libFuzzer) and, over the committed seeds only, by
 * scripts/test.sh (gcc, fuzz/standalone_main.c).
 */
#ifndef VRAM_MONITOR_FUZZ_SUPPORT_H
#define VRAM_MONITOR_FUZZ_SUPPORT_H

#include "test_support.h"

#define FUZZ_ASSERT(cond, ...)                                                          \
    do {                                                                                \
        if (!(cond)) {                                                                  \
            fprintf(stderr, "FUZZ_ASSERT %s:%d: %s: ", __FILE__, __LINE__, #cond);      \
            fprintf(stderr, __VA_ARGS__);                                               \
            fprintf(stderr, "\n");                                                      \
            abort();                                                                    \
        }                                                                               \
    } while (0)

struct reader {
    const uint8_t *p;
    size_t left;
};

static inline uint8_t take_u8(struct reader *r) {
    if (r->left == 0) return 0;
    r->left--;
    return *r->p++;
}

static inline uint32_t take_u32(struct reader *r) {
    uint32_t v = 0;
    int i;
    for (i = 0; i < 4; i++) v = (v << 8) | take_u8(r);
    return v;
}

static inline uint64_t take_u64(struct reader *r) {
    return ((uint64_t)take_u32(r) << 32) | take_u32(r);
}

/* Whether s[0..n) is valid UTF-8 as Rust's str::from_utf8 sees it (no overlong forms, no
 * surrogates, nothing above U+10FFFF). */
static inline bool utf8_valid(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        size_t len;
        unsigned cp, min;
        if (c < 0x80) {
            i++;
            continue;
        } else if (c >= 0xC2 && c <= 0xDF) {
            len = 2;
            cp = c & 0x1F;
            min = 0x80;
        } else if (c >= 0xE0 && c <= 0xEF) {
            len = 3;
            cp = c & 0x0F;
            min = 0x800;
        } else if (c >= 0xF0 && c <= 0xF4) {
            len = 4;
            cp = c & 0x07;
            min = 0x10000;
        } else {
            return false;
        }
        if (i + len > n) return false;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xC0) != 0x80) return false;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
        i += len;
    }
    return true;
}

/* The whole report in a buffer of exactly the size needed, so that AddressSanitizer sees any
 * byte written past it. NULL if the call failed (asserted). */
static inline char *fuzz_report(VramMonitor *m, int32_t format) {
    size_t needed = 0, len = 0;
    int attempt;
    for (attempt = 0; attempt < 8; attempt++) {
        char *buf;
        int32_t r = vram_monitor_report(m, format, NULL, 0, &needed);
        FUZZ_ASSERT(r == VRAM_MONITOR_RESULT_BUFFER_TOO_SMALL, "size query -> %d", (int)r);
        FUZZ_ASSERT(needed >= 1, "needed %zu", needed);
        buf = malloc(needed);
        FUZZ_ASSERT(buf != NULL, "malloc");
        r = vram_monitor_report(m, format, buf, needed, &len);
        if (r == VRAM_MONITOR_RESULT_OK) {
            /* The report can shrink between the two calls (a check ran meanwhile and its
             * numbers got shorter), never past the buffer. */
            FUZZ_ASSERT(len < needed && buf[len] == '\0' && strlen(buf) == len, "len %zu needed %zu", len, needed);
            return buf;
        }
        FUZZ_ASSERT(r == VRAM_MONITOR_RESULT_BUFFER_TOO_SMALL, "report -> %d", (int)r);
        free(buf);
    }
    FUZZ_ASSERT(false, "the report kept growing");
    return NULL;
}

#endif /* VRAM_MONITOR_FUZZ_SUPPORT_H */
