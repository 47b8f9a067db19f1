/*
 * fuzz_labels.c - fuzz target over labels: the input's bytes (up to the first NUL, as C sees
 * them) are a label.
 *
 * Checks: register answers OK exactly when the label is valid UTF-8 of at most
 * VRAM_MONITOR_MAX_LABEL_BYTES bytes, INVALID_LABEL otherwise, and leaves *out_id alone then;
 * the JSON report (in a buffer of exactly the needed size) holds no raw control byte and its
 * string for the registration decodes to the label; the text report keeps one line per
 * registration; the VIOLATION event carries the label unchanged; after unregistering, nothing
 * is left. One monitor serves every input.
 */
#define _GNU_SOURCE
#include "fuzz_support.h"

static VramMonitor *monitor;
static char event_label[VRAM_MONITOR_MAX_LABEL_BYTES + 1];
static atomic_int events;

static void on_event(const VramMonitorEvent *event, void *user_data) {
    (void)user_data;
    if (event->kind == VRAM_MONITOR_EVENT_KIND_VIOLATION) {
        snprintf(event_label, sizeof event_label, "%s", event->label);
        atomic_fetch_add(&events, 1);
    }
    CALLBACK_DONE();
}

static void setup(void) {
    if (monitor != NULL) return;
    FUZZ_ASSERT(vram_monitor_new(VRAM_MONITOR_DEFAULT_INTERVAL_MS, &monitor) == VRAM_MONITOR_RESULT_OK,
                "vram_monitor_new (is LD_LIBRARY_PATH the fake driver's folder?)");
    fake_load();
    FUZZ_ASSERT(vram_monitor_set_callback(monitor, on_event, NULL, NULL) == VRAM_MONITOR_RESULT_OK, "set_callback");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *label = malloc(size + 1), *json, *text, key[64], *decoded;
    size_t len;
    uint64_t id = 0x5e5e;
    unsigned long long buffer;
    int32_t r;
    bool expect_ok;
    const char *at, *line;
    size_t registration_lines = 0;

    setup();
    FUZZ_ASSERT(label != NULL, "malloc");
    memcpy(label, data, size);
    label[size] = '\0';
    len = strlen(label);
    expect_ok = len <= VRAM_MONITOR_MAX_LABEL_BYTES && utf8_valid((const unsigned char *)label, len);

    buffer = fake.alloc(FAKE_CUDA_DEVICE, 4096, 0);
    FUZZ_ASSERT(buffer != 0, "fake_cuda_alloc");
    r = vram_monitor_register(monitor, as_ptr(buffer), 4096, label, &id);
    /* The label is copied: the caller's string is gone at once. */
    memset(label, 'Z', len);
    free(label);
    if (!expect_ok) {
        FUZZ_ASSERT(r == VRAM_MONITOR_RESULT_INVALID_LABEL && id == 0x5e5e, "a bad label -> %d, id %llu", (int)r,
                    (unsigned long long)id);
        fake.free(buffer);
        return 0;
    }
    FUZZ_ASSERT(r == VRAM_MONITOR_RESULT_OK, "a good label (%zu bytes) -> %d", len, (int)r);

    json = fuzz_report(monitor, VRAM_MONITOR_REPORT_FORMAT_JSON);
    for (at = json; *at; at++) FUZZ_ASSERT((unsigned char)*at >= 0x20, "raw control byte 0x%02x in JSON", (unsigned char)*at);
    snprintf(key, sizeof key, "{\"id\":%llu,\"label\":\"", (unsigned long long)id);
    at = strstr(json, key);
    FUZZ_ASSERT(at != NULL, "the registration is in the JSON report");
    decoded = malloc(len + 8);
    FUZZ_ASSERT(decoded != NULL, "malloc");
    FUZZ_ASSERT(json_unescape(at + strlen(key), decoded, len + 8, true) == (long)len, "the JSON string decodes");
    FUZZ_ASSERT(memcmp(decoded, data, len) == 0, "the JSON label decodes to the original");
    free(decoded);
    free(json);

    text = fuzz_report(monitor, VRAM_MONITOR_REPORT_FORMAT_TEXT);
    for (line = strstr(text, "\n  #"); line != NULL && line[1] != '\0'; line = strchr(line + 1, '\n')) {
        FUZZ_ASSERT(strncmp(line + 1, "  #", 3) == 0, "a label started a line of its own in the text report");
        registration_lines++;
    }
    FUZZ_ASSERT(registration_lines == 1, "one registration line (%zu)", registration_lines);
    free(text);

    atomic_store(&events, 0);
    fake.free(buffer);
    FUZZ_ASSERT(vram_monitor_check_now(monitor, NULL) == VRAM_MONITOR_RESULT_OK, "check_now");
    LIBRARY_RETURNED();
    FUZZ_ASSERT(atomic_load(&events) == 1, "one VIOLATION event (%d)", atomic_load(&events));
    FUZZ_ASSERT(strlen(event_label) == len && memcmp(event_label, data, len) == 0, "the event carries the label");
    FUZZ_ASSERT(vram_monitor_unregister(monitor, id) == VRAM_MONITOR_RESULT_OK, "unregister");
    FUZZ_ASSERT(vram_monitor_unregister(monitor, id) == VRAM_MONITOR_RESULT_UNKNOWN_REGISTRATION, "unregister twice");
    FUZZ_ASSERT(vram_monitor_check_now(monitor, NULL) == VRAM_MONITOR_RESULT_OK, "check_now");
    {
        VramMonitorHealth h;
        FUZZ_ASSERT(vram_monitor_health(monitor, &h) == VRAM_MONITOR_RESULT_OK && h.registrations == 0 &&
                        h.current_violations == 0 && h.tracked_bytes == 0,
                    "nothing left after unregistering");
    }
    return 0;
}
