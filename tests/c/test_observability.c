/*
 * test_observability.c - the observability C API against the fake libcuda: the Prometheus
 * report format, the built-in HTTP endpoint (fetched over a plain socket), the device-health
 * array protocol, and the endpoint closing when it is stopped and when the monitor is freed.
 * NVML is absent where the tests run: device health must say UNAVAILABLE, never a zero value.
 */
#define _GNU_SOURCE
#include "test_support.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

/* GET path from 127.0.0.1:port; returns the status code (-1: no connection) and the body. */
static int http_get(uint16_t port, const char *path, char *body, size_t body_len) {
    struct sockaddr_in addr;
    char request[256], response[65536];
    size_t got = 0;
    ssize_t n;
    int fd, status = -1;
    const char *start;
    struct timeval tv = {20, 0};

    fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        close(fd);
        return -1;
    }
    snprintf(request, sizeof request, "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", path);
    if (write(fd, request, strlen(request)) != (ssize_t)strlen(request)) {
        close(fd);
        return -1;
    }
    while (got < sizeof response - 1 && (n = read(fd, response + got, sizeof response - 1 - got)) > 0) got += (size_t)n;
    close(fd);
    response[got] = '\0';
    if (sscanf(response, "HTTP/1.1 %d", &status) != 1) status = -2;
    start = strstr(response, "\r\n\r\n");
    if (body && body_len) {
        snprintf(body, body_len, "%s", start ? start + 4 : "");
    }
    return status;
}

/* Sends a request and resets the connection at once, before the answer arrives. */
static void hang_up_early(uint16_t port) {
    struct sockaddr_in addr;
    struct linger reset = {1, 0};
    const char *request = "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) == 0) {
        if (write(fd, request, strlen(request)) < 0) { /* the reset below happens anyway */
        }
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &reset, sizeof reset);
    }
    close(fd);
}

static char *report(VramMonitor *m, int format) {
    size_t needed = 0, len = 0;
    char *buf;
    CHECK_RESULT(vram_monitor_report(m, format, NULL, 0, &needed), VRAM_MONITOR_RESULT_BUFFER_TOO_SMALL);
    buf = malloc(needed + 4096);
    if (!buf) abort();
    CHECK_RESULT(vram_monitor_report(m, format, buf, needed + 4096, &len), VRAM_MONITOR_RESULT_OK);
    return buf;
}

int main(void) {
    VramMonitor *m = NULL, *other = NULL;
    VramMonitorDeviceHealth devices[4];
    VramMonitorHealth health;
    uint16_t port = 0, untouched = 4242;
    uint64_t id = 0;
    size_t count = 99;
    unsigned long long dev;
    char body[65536];
    char address[64];
    char *text;
    void *nvml;
    int status, i;

    section("Prometheus report format");
    REQUIRE(vram_monitor_new(VRAM_MONITOR_DEFAULT_INTERVAL_MS, &m) == VRAM_MONITOR_RESULT_OK, "vram_monitor_new");
    fake_load();
    dev = fake_alloc_or_die(FAKE_CUDA_DEVICE, 4 * MiB, 0);
    CHECK_RESULT(vram_monitor_register(m, as_ptr(dev), 4 * MiB, "weights", &id), VRAM_MONITOR_RESULT_OK);
    CHECK_RESULT(vram_monitor_check_now(m, NULL), VRAM_MONITOR_RESULT_OK);
    text = report(m, VRAM_MONITOR_REPORT_FORMAT_PROMETHEUS);
    CHECK(strstr(text, "# TYPE vram_monitor_healthy gauge\n") != NULL, "the exposition has TYPE lines");
    CHECK(strstr(text, "\nvram_monitor_registrations 1\n") != NULL, "vram_monitor_registrations 1");
    CHECK(strstr(text, "\nvram_monitor_tracked_bytes 4194304\n") != NULL, "vram_monitor_tracked_bytes 4194304");
    free(text);

    section("device health without NVML");
    CHECK_RESULT(vram_monitor_device_health(m, NULL, 0, NULL), VRAM_MONITOR_RESULT_NULL_ARGUMENT);
    CHECK_RESULT(vram_monitor_device_health(m, NULL, 1, &count), VRAM_MONITOR_RESULT_NULL_ARGUMENT);
    CHECK_RESULT(vram_monitor_device_health(m, NULL, 0, &count), VRAM_MONITOR_RESULT_BUFFER_TOO_SMALL);
    CHECK(count == 1, "one GPU holds registrations (count %zu)", count);
    CHECK_RESULT(vram_monitor_device_health(m, devices, 4, &count), VRAM_MONITOR_RESULT_OK);
    CHECK(count == 1 && devices[0].device == 0, "GPU0's entry");
    nvml = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
    if (nvml) {
        dlclose(nvml);
        printf("skipped: NVML is installed here; the checks of device health without NVML need a machine without it\n");
    } else {
        CHECK(!devices[0].nvml_available && !devices[0].memory_fault, "NVML unavailable, and not knowing is no fault");
        CHECK(devices[0].ecc_uncorrected_volatile_status == VRAM_MONITOR_SIGNAL_STATUS_UNAVAILABLE &&
                  devices[0].remapped_rows_status == VRAM_MONITOR_SIGNAL_STATUS_UNAVAILABLE &&
                  devices[0].retired_pages_pending_status == VRAM_MONITOR_SIGNAL_STATUS_UNAVAILABLE &&
                  devices[0].critical_xid_status == VRAM_MONITOR_SIGNAL_STATUS_UNAVAILABLE,
              "every signal is UNAVAILABLE");
        CHECK(devices[0].uuid[0] == '\0' && devices[0].name[0] == '\0', "no UUID or name without NVML");
    }
    CHECK(strcmp(vram_monitor_signal_status_str(VRAM_MONITOR_SIGNAL_STATUS_UNSUPPORTED), "unsupported") == 0 &&
              strcmp(vram_monitor_signal_status_str(99), "unknown") == 0,
          "signal status names");
    CHECK_RESULT(vram_monitor_health(m, &health), VRAM_MONITOR_RESULT_OK);
    CHECK(health.healthy && health.device_faults == 0, "healthy, no device faults");

    section("the HTTP endpoint");
    CHECK_RESULT(vram_monitor_serve_http(NULL, "127.0.0.1:0", &port), VRAM_MONITOR_RESULT_NULL_ARGUMENT);
    CHECK_RESULT(vram_monitor_serve_http(m, "no such address", &untouched), VRAM_MONITOR_RESULT_INVALID_ARGUMENT);
    CHECK(untouched == 4242, "out_port untouched on failure");
    CHECK_RESULT(vram_monitor_serve_http(m, "127.0.0.1:0", &port), VRAM_MONITOR_RESULT_OK);
    CHECK(port != 0, "the chosen port is written (%u)", (unsigned)port);
    CHECK_RESULT(vram_monitor_serve_http(m, "127.0.0.1:0", NULL), VRAM_MONITOR_RESULT_HTTP_ALREADY_SERVING);
    status = http_get(port, "/health", body, sizeof body);
    CHECK(status == 200, "GET /health -> %d", status);
    CHECK(strstr(body, "\"healthy\":true") != NULL && strstr(body, "\"devices\":[{\"device\":0") != NULL,
          "/health is the JSON health with the device list");
    status = http_get(port, "/metrics", body, sizeof body);
    CHECK(status == 200 && strstr(body, "\nvram_monitor_registrations 1\n") != NULL, "GET /metrics -> %d", status);
    CHECK(http_get(port, "/nope", NULL, 0) == 404, "GET /nope -> 404");
    /* Clients that hang up (with a reset) before the answer: writing to them must not raise
     * SIGPIPE in this host, which, like most C hosts, does not ignore it. */
    for (i = 0; i < 20; i++) hang_up_early(port);
    /* One thread serves every connection and load is never answered 503: the very next
     * request is answered. */
    status = http_get(port, "/health", NULL, 0);
    CHECK(status == 200, "still serving (and alive) after 20 clients hung up early (status %d)", status);
    CHECK(http_get(port, "/livez", NULL, 0) == 200, "GET /livez -> 200");
    CHECK(http_get(port, "/readyz", NULL, 0) == 200, "GET /readyz -> 200 while healthy");

    fake.free(dev);
    CHECK_RESULT(vram_monitor_check_now(m, NULL), VRAM_MONITOR_RESULT_OK);
    status = http_get(port, "/health", body, sizeof body);
    CHECK(status == 503 && strstr(body, "\"healthy\":false") != NULL, "GET /health -> %d after the buffer was freed", status);
    CHECK(http_get(port, "/readyz", NULL, 0) == 503, "GET /readyz -> 503 after the buffer was freed");
    CHECK(http_get(port, "/livez", NULL, 0) == 200, "GET /livez -> 200: unhealthy, but the monitor checks");

    snprintf(address, sizeof address, "127.0.0.1:%u", (unsigned)port);
    REQUIRE(vram_monitor_new(VRAM_MONITOR_DEFAULT_INTERVAL_MS, &other) == VRAM_MONITOR_RESULT_OK, "a second monitor");
    CHECK_RESULT(vram_monitor_serve_http(other, address, NULL), VRAM_MONITOR_RESULT_HTTP_BIND_FAILED);
    CHECK_RESULT(vram_monitor_stop_http(m), VRAM_MONITOR_RESULT_OK);
    CHECK(http_get(port, "/health", NULL, 0) == -1, "stopped: no connection");
    CHECK_RESULT(vram_monitor_stop_http(m), VRAM_MONITOR_RESULT_OK);
    CHECK_RESULT(vram_monitor_serve_http(other, address, NULL), VRAM_MONITOR_RESULT_OK);
    CHECK(http_get(port, "/health", NULL, 0) == 200, "the second monitor serves on the freed port");
    CHECK_RESULT(vram_monitor_free(other), VRAM_MONITOR_RESULT_OK);
    CHECK(http_get(port, "/health", NULL, 0) == -1, "freed: no connection");
    CHECK_RESULT(vram_monitor_free(m), VRAM_MONITOR_RESULT_OK);
    return test_exit_code("test_observability");
}
