/* vram_monitor.hpp - header-only C++17 wrapper of the vram-monitor C API (vram_monitor.h).
 *
 * Link against libvram_monitor as for C (CMake: target vram_monitor::vram_monitor; pkg-config:
 * vram_monitor). Nothing here is compiled into the library: the wrapper only calls the C API.
 *
 *   vram_monitor::Monitor monitor;                        // starts the monitor thread
 *   monitor.set_callback([](const vram_monitor::Event &e) { log_error(e.message); });
 *   vram_monitor::Registration reg = monitor.register_buffer(ptr, bytes, "layers.0.weight");
 *   VramMonitorHealth h = monitor.health();               // serve h.healthy from /health
 *   ...                                                   // ~Registration unregisters,
 *                                                         // ~Monitor stops and joins the thread
 *
 * - Errors are exceptions of type vram_monitor::Error, which carries the C result code
 *   (code(); refused() for the REFUSED_<VERDICT> codes of registration).
 * - Monitor is RAII and move-only, and the only owner of its C handle. Its destructor calls
 *   vram_monitor_free on the destroying thread, always: it stops and joins the monitor thread
 *   and releases the callback, so no callback runs after ~Monitor returns, whatever other
 *   threads are doing with the Monitor's Registrations at the time.
 * - Registration unregisters when destroyed. It never keeps the monitor alive: it shares a
 *   small "alive" token with its Monitor, and ~Monitor marks it dead (under the token's lock,
 *   waiting for an unregister in progress) before freeing. A Registration that outlives its
 *   Monitor does nothing when destroyed, reset() or released (the monitor and all its
 *   registrations are gone already); its unregister() throws Error(NULL_ARGUMENT).
 * - Never destroy a Monitor inside its own callback. The C API cannot free a monitor from its
 *   own callback (vram_monitor_free returns CALLED_FROM_CALLBACK there, to avoid joining the
 *   thread it runs on), and a destructor must not throw, so ~Monitor then leaks the handle
 *   instead: it removes the callback (released once the call in progress returns; no callback
 *   runs after that), sets the interval to the maximum (UINT32_MAX ms) so the thread stays
 *   idle, keeps the handle in a process-wide list (reachable, so leak checkers stay quiet),
 *   and reports the leak as an ERROR record to the log handler of set_log_handler (or one
 *   line on stderr without one). The thread and the handle then live until the process
 *   exits. Destroy it from another thread instead.
 * - Callbacks are std::function. They run on the monitor thread ("vram-monitor"), one at a
 *   time. An exception thrown by a callback never reaches the library: it is caught in the C
 *   trampoline and handed to the exception handler given with the callback (default: one line
 *   on stderr); the monitor goes on.
 *
 * - register_many() registers a whole model in one call and answers per entry (a result code
 *   and a Registration each, empty where the entry was not registered); only a call that is
 *   wrong as a whole (no entries) throws. RegisterMode::AllOrNothing registers nothing unless
 *   every entry can be.
 * - Reads that fill a C struct return it as is (health(), stall(), check_now(),
 *   device_health()); registration() copies the label into a RegistrationInfo.
 * - serve_http() starts the built-in HTTP endpoint (/health, /readyz, /livez, /metrics) and
 *   returns its port; stop_http() or ~Monitor stops it.
 *
 * Every function of vram_monitor.h is reached from here (scripts/check-parity.py checks it);
 * get() gives the C handle for anything else.
 *
 * Threading: as for the C API (see vram_monitor.h): every member function may be called from
 * any thread; check_now() throws Error(CALLED_FROM_CALLBACK) inside a callback.
 */
#ifndef VRAM_MONITOR_HPP
#define VRAM_MONITOR_HPP

#include "vram_monitor.h"

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

/* The wrapper's parts, one concept each, in dependency order. */
#include "vram_monitor/errors.hpp"
#include "vram_monitor/values.hpp"
#include "vram_monitor/callbacks.hpp"
#include "vram_monitor/registration.hpp"
#include "vram_monitor/monitor.hpp"

#endif /* VRAM_MONITOR_HPP */
