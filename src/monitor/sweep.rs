//! One check: the plan of addresses to ask about, the paced queries, the registry's
//! judgement, the health it ends with, and the events merged per registration.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::worker::dispatch;
use super::Shared;
use crate::adapters::nvml::process_vram;
use crate::core::events::{Event, EventKind, Unhealthy};
use crate::core::health::CheckSummary;
use super::options::PROCESS_VRAM_PERIOD;
use crate::core::registry::{Change, RegistrationId, RegistrationInfo, Registry};
use crate::monitor::watchdog::PROGRESS_QUERIES;
use crate::core::sync::lock;
use crate::core::verdict::Verdict;

/// The addresses a check asks about, sorted (the driver answers neighbouring addresses
/// faster), kept between checks until the allocation table changes.
#[derive(Default)]
pub(super) struct SweepPlan {
    addresses: Vec<(u64, u64)>,
    generations: Vec<u64>,
    current: Vec<u64>,
}

impl SweepPlan {
    fn refresh(&mut self, registry: &Registry) {
        registry.settle();
        registry.allocation_generations(&mut self.current);
        if self.current == self.generations && !self.generations.is_empty() {
            return;
        }
        self.addresses.clear();
        self.generations.clear();
        for shard in 0..registry.allocation_shards() {
            let generation = registry.allocation_addresses(shard, &mut self.addresses);
            self.generations.push(generation);
        }
        self.addresses.sort_unstable_by_key(|&(address, _)| address);
    }
}

pub(super) fn sweep(shared: &Shared) -> CheckSummary {
    let started = Instant::now();
    let pacing = *lock(&shared.pacing);
    let mut queries_in_slice = 0u32;
    let mut since_mark = 0u32;
    let mut changed: HashMap<RegistrationId, Merged> = HashMap::new();
    let mut plan = lock(&shared.plan);
    plan.refresh(&shared.registry);
    for i in 0..plan.addresses.len() {
        let (address, last_fingerprint) = plan.addresses[i];
        {
            // Checked before every query (one relaxed load), so that freeing waits for at
            // most the query in progress, however slow the driver is.
            if shared.stopping.load(Ordering::Acquire) {
                // Shutting down: a partial check is not a result.
                return CheckSummary::default();
            }
            if queries_in_slice >= pacing.slice_queries {
                queries_in_slice = 0;
                since_mark = 0;
                // A slice completed: progress (the watchdog's rule; see src/monitor/watchdog.rs).
                shared.stall.progress();
                pacing.pause();
            } else if since_mark >= PROGRESS_QUERIES {
                since_mark = 0;
                shared.stall.progress();
            }
            queries_in_slice += 1;
            since_mark += 1;
            let answer = shared.driver.pointer_info(address);
            if Registry::is_unchanged(last_fingerprint, &answer) {
                continue;
            }
            match shared.registry.apply(address, &answer, last_fingerprint) {
                Ok(changes) => {
                    plan.addresses[i].1 = Registry::fingerprint_of(&answer);
                    for change in changes {
                        merge_change(&mut changed, change);
                    }
                }
                // The allocation changed after this plan was made (a registration joined with
                // another answer, or it was registered anew at this address): our answer may
                // be older than theirs. The next check asks again.
                Err(stale) => plan.addresses[i].1 = stale.current,
            }
        }
    }
    drop(plan);
    let duration_us = started.elapsed().as_micros() as u64;
    if shared.stopping.load(Ordering::Acquire) {
        // Freeing: skip the NVML reads below (slow on a sick GPU) and deliver nothing.
        return CheckSummary::default();
    }
    let mut events = merged_events(shared, changed);
    // The NVML reads below can hang on a sick GPU: measured from here.
    shared.stall.progress();
    // Process VRAM costs an NVML call per GPU (about 30 us): at most once per
    // PROCESS_VRAM_PERIOD, not on every check of a 1 ms interval. Not part of the check's time.
    let read_vram = lock(&shared.stats).process_vram_read_at.is_none_or(|at| at.elapsed() >= PROCESS_VRAM_PERIOD);
    let process_vram = read_vram.then(|| process_vram::read(&*shared.driver, &shared.registry.devices()));
    let device_faults = shared.device_health.refresh(&*shared.driver, || shared.registry.devices(), &mut events);
    // The check's results are in: it ends here, where the health it reports is judged, with
    // the watchdog kept out (src/monitor/watchdog.rs) so that a stall reported by it is ended by
    // exactly one event.
    let reported = lock(&shared.stall.reported);
    shared.stall.end();
    let counts = shared.registry.counts();
    let check_failed = counts.failing > 0;
    let healthy = counts.violating == 0 && !check_failed && device_faults == 0 && !shared.integrity.failed();
    {
        let mut stats = lock(&shared.stats);
        stats.checks_completed += 1;
        if check_failed {
            stats.checks_failed += 1;
        }
        stats.last_check_failed = check_failed;
        stats.last_check_unix_ms = crate::core::clock::unix_ms();
        stats.last_check_duration_us = duration_us;
        if let Some(process_vram) = process_vram {
            stats.process_vram = Some(process_vram);
            stats.process_vram_read_at = Some(Instant::now());
        }
    }
    let summary = CheckSummary {
        checked: counts.registrations,
        // A registration both in violation and failing its query is one, not two. The three
        // counters are read one after another while others may change them: saturate.
        resident: counts
            .registrations
            .saturating_sub((counts.violating + counts.failing).saturating_sub(counts.violating_and_failing)),
        violations: counts.violating,
        check_failures: counts.failing,
        duration_us,
        healthy,
    };
    if healthy {
        log::debug!(
            target: "vram_monitor",
            actor = "vram-residency", action = "verify";
            "check passed: {} registrations resident in {} allocations ({} us)", counts.registrations, counts.allocations, duration_us
        );
    }
    let mut reported = reported;
    let was_stalled = std::mem::replace(&mut *reported, false);
    if shared.reported_healthy.swap(healthy, Ordering::AcqRel) != healthy || was_stalled {
        let cause = (!healthy).then(|| {
            let integrity = shared.integrity.summary();
            Unhealthy::of(check_failed, integrity.failed, counts.violating, integrity.modified)
        });
        let mut event = Event::health_changed(counts.violating, cause);
        if was_stalled {
            event.message.push_str(" (no longer stalled: a check completed)");
        }
        events.push(event);
    }
    drop(reported);
    let mut logged = 0usize;
    let total = events.len();
    for mut event in events {
        event.healthy = healthy;
        // A freed arena can hold a million registrations: every one reaches the callback,
        // but the log gets the first LOGGED_EVENTS_PER_CHECK and one line for the rest.
        let log = logged < LOGGED_EVENTS_PER_CHECK;
        logged += 1;
        dispatch(shared, &event, log);
    }
    if total > LOGGED_EVENTS_PER_CHECK {
        let _ = std::panic::catch_unwind(|| {
            log::error!(
                target: "vram_monitor",
                actor = "vram-residency", action = "verify";
                "{} more events in this check were delivered to the callback but not logged", total - LOGGED_EVENTS_PER_CHECK
            )
        });
    }
    summary
}

/// Log records per check, at most (events beyond are delivered, not logged one by one).
const LOGGED_EVENTS_PER_CHECK: usize = 100;

/// What one check found for one registration, over all its pieces.
struct Merged {
    /// Its verdict before this check.
    from: Verdict,
    /// Its state after the last change in this check.
    now: RegistrationInfo,
    /// A query for it started failing in this check.
    failed: Option<crate::core::driver::DriverError>,
}

/// A registration spanning several mappings can change in several of them in one check: it
/// gets one event, from its verdict before the check to its verdict after.
fn merge_change(changed: &mut HashMap<RegistrationId, Merged>, change: Change) {
    match change {
        Change::Verdict { registration, from } => match changed.get_mut(&registration.id) {
            Some(merged) => merged.now = registration,
            None => {
                changed.insert(registration.id, Merged { from, now: registration, failed: None });
            }
        },
        Change::CheckFailed { registration, error } => match changed.get_mut(&registration.id) {
            Some(merged) => {
                merged.failed = Some(error);
                merged.now = registration;
            }
            None => {
                let from = registration.verdict;
                changed.insert(registration.id, Merged { from, now: registration, failed: Some(error) });
            }
        },
    }
}

fn merged_events(shared: &Shared, changed: HashMap<RegistrationId, Merged>) -> Vec<Event> {
    let mut merged: Vec<Merged> = changed.into_values().collect();
    // Allocations are visited in address order; report in registration order.
    merged.sort_unstable_by_key(|m| m.now.id);
    let mut events = Vec::with_capacity(merged.len());
    for m in merged {
        if let Some(error) = &m.failed {
            let detail = error.to_string();
            events.push(Event::about(EventKind::CheckFailed, &m.now, m.now.verdict, Verdict::CheckFailed, Some(&detail)));
        }
        if m.now.verdict != m.from {
            let kind = if m.now.verdict.is_violation() { EventKind::Violation } else { EventKind::Recovered };
            if kind == EventKind::Violation {
                shared.total_violations.fetch_add(1, Ordering::Relaxed);
            }
            events.push(Event::about(kind, &m.now, m.from, m.now.verdict, None));
        }
    }
    events
}
