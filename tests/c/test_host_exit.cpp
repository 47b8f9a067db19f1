// test_host_exit.cpp - a C++ host that exits with a live monitor whose callbacks write into
// static objects, against the fake libcuda.
//
// The child (this program with an argument) creates a monitor checking every millisecond, sets
// an event callback that inserts into a static std::map and a log callback that appends to a
// static std::vector, and keeps a thread flipping its weights between device and managed
// memory, so that events and log records arrive all the time. Then it leaves without
// vram_monitor_free: by returning from main, or by exit() from another thread. exit() destroys
// the statics while the monitor thread runs; the library's exit hook must stop callbacks
// before that. The parent runs each way 50 times (a few at once) and wants 50 clean exits.
#include "vram_monitor.h"

#include <dlfcn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace {

// Constructed before main: destroyed by exit() after every atexit hook registered later, in
// the reverse order of construction.
// Destroyed last: a host whose teardown takes a while (flushing, joining its own threads), so
// that callbacks arriving after the objects below were destroyed have time to do harm.
struct SlowTeardown {
  ~SlowTeardown() { std::this_thread::sleep_for(std::chrono::milliseconds(50)); }
} slow_teardown;
std::map<uint64_t, std::string> events_seen;
std::vector<std::string> log_lines;
std::mutex statics_lock;
// Reachable at exit: leak checkers see the monitor, never freed on purpose, as still in use.
VramMonitor *live_monitor = nullptr;
// Destroyed first: a callback that finds it destroyed ran after the host's statics went away.
struct Lifetime {
  std::atomic<bool> alive{true};
  ~Lifetime() { alive = false; }
} statics_alive;

void after_statics_died() {
  static const char message[] = "a callback ran after the host's static destructors\n";
  ssize_t ignored = write(2, message, sizeof message - 1);
  (void)ignored;
  _exit(3);
}

void on_event(const VramMonitorEvent *event, void *) {
  if (!statics_alive.alive) after_statics_died();
  std::lock_guard<std::mutex> hold(statics_lock);
  events_seen[event->registration_id] = event->message;
  events_seen[event->registration_id + 1] = std::string(256, 'e');  // allocate, always
}

void on_log(VramMonitorLogLevel, const char *, const char *message, void *) {
  if (!statics_alive.alive) after_statics_died();
  std::lock_guard<std::mutex> hold(statics_lock);
  log_lines.emplace_back(message);
  if (log_lines.size() > 64) log_lines.erase(log_lines.begin());
}

using alloc_fn = unsigned long long (*)(int, size_t, int);
using set_kind_fn = int (*)(unsigned long long, int);

int child(bool exit_from_thread) {
  VramMonitor *m = nullptr;
  vram_monitor_set_log_callback(on_log, nullptr);
  if (vram_monitor_new(1, &m) != VRAM_MONITOR_RESULT_OK) return 10;
  live_monitor = m;
  void *fake = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
  if (fake == nullptr) return 11;
  auto alloc = reinterpret_cast<alloc_fn>(dlsym(fake, "fake_cuda_alloc"));
  auto set_kind = reinterpret_cast<set_kind_fn>(dlsym(fake, "fake_cuda_set_kind"));
  if (alloc == nullptr || set_kind == nullptr) return 12;
  if (vram_monitor_set_callback(m, on_event, nullptr, nullptr) != VRAM_MONITOR_RESULT_OK) return 13;
  std::vector<unsigned long long> weights;
  for (int i = 0; i < 8; i++) {
    unsigned long long w = alloc(1 /* FAKE_CUDA_DEVICE */, 1 << 20, 0);
    uint64_t id = 0;
    if (w == 0 || vram_monitor_register(m, reinterpret_cast<const void *>(w), 1 << 20, "layer", &id) != VRAM_MONITOR_RESULT_OK)
      return 14;
    weights.push_back(w);
  }
  // Flips the weights for ever: every check sees a change, so callbacks never pause.
  std::thread([=] {
    for (int n = 0;; n++) {
      for (auto w : weights) set_kind(w, n % 2 ? 1 /* DEVICE */ : 2 /* MANAGED */);
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  }).detach();
  // The callbacks really run before the exit (within 5 s: a loaded machine starts slowly).
  for (int waited = 0;; waited++) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    std::lock_guard<std::mutex> hold(statics_lock);
    if (events_seen.size() >= 2 && log_lines.size() >= 2) break;
    if (waited == 500) return 15;
  }
  if (exit_from_thread) {
    std::thread([] { std::exit(0); }).detach();
    for (;;) std::this_thread::sleep_for(std::chrono::seconds(1));
  }
  return 0;  // the monitor is never freed
}

int run_many(const char *self, const char *mode, int runs) {
  int clean = 0, at_once = 4;
  for (int started = 0; started < runs; started += at_once) {
    std::vector<pid_t> children;
    for (int k = 0; k < at_once && started + k < runs; k++) {
      pid_t pid = fork();
      if (pid == 0) {
        execl(self, self, mode, static_cast<char *>(nullptr));
        _exit(127);
      }
      children.push_back(pid);
    }
    for (pid_t pid : children) {
      int status = 0;
      waitpid(pid, &status, 0);
      if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
        clean++;
      } else if (WIFSIGNALED(status)) {
        std::printf("  %s: child died of signal %d\n", mode, WTERMSIG(status));
      } else {
        std::printf("  %s: child exited with status %d%s\n", mode, WEXITSTATUS(status),
                    WEXITSTATUS(status) == 3 ? " (a callback after the static destructors)" : "");
      }
    }
  }
  std::printf("%s %s: %d of %d runs exited cleanly\n", clean == runs ? "ok  " : "FAIL", mode, clean, runs);
  return clean == runs ? 0 : 1;
}

}  // namespace

int main(int argc, char **argv) {
  if (argc > 1) return child(std::strcmp(argv[1], "exit-from-thread") == 0);
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  int runs = argc > 0 && std::getenv("VRAM_MONITOR_EXIT_RUNS") ? std::atoi(std::getenv("VRAM_MONITOR_EXIT_RUNS")) : 50;
  // The program's own path (under valgrind, /proc/self/exe itself would name the tool).
  char self[4096];
  ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  if (n <= 0) return 2;
  self[n] = '\0';
  int failed = run_many(self, "return-from-main", runs);
  failed += run_many(self, "exit-from-thread", runs);
  return failed == 0 ? 0 : 1;
}
