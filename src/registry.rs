//! The registrations: what the engine asked us to watch, and the last verdict for each.
//!
//! Registering and unregistering take a write lock only for a hash-map insert or remove; a
//! sweep copies the list under a read lock and asks the driver with no lock held, so a
//! registration never waits for a sweep to finish.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::verdict::{Piece, Verdict};

/// Identifies a registration. Never 0 and unique in the process, so an id from another
/// monitor is never mistaken for one of this monitor's.
pub type RegistrationId = u64;

/// One registered buffer.
#[derive(Debug)]
pub struct Registration {
    /// Its id.
    pub id: RegistrationId,
    /// First byte.
    pub ptr: u64,
    /// Length in bytes.
    pub size: u64,
    /// The engine's name for it (for example a tensor name).
    pub label: String,
    /// The device that held it when registered.
    pub device: i32,
    /// The allocations or mappings that held it when registered.
    pub pieces: Box<[Piece]>,
    verdict: AtomicI32,
    removed: AtomicBool,
}

impl Registration {
    /// The verdict of the last check that could judge it (checks that failed leave it).
    pub fn verdict(&self) -> Verdict {
        Verdict::from_raw(self.verdict.load(Ordering::Acquire)).unwrap_or(Verdict::CheckFailed)
    }

    /// Whether it has been unregistered (a sweep may still hold a copy).
    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Acquire)
    }
}

/// A change of a registration's verdict, as recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// Verdict before.
    pub from: Verdict,
    /// Verdict now.
    pub to: Verdict,
}

/// All registrations of one monitor.
#[derive(Debug, Default)]
pub struct Registry {
    entries: RwLock<HashMap<RegistrationId, Arc<Registration>>>,
    tracked_bytes: AtomicU64,
    violating: AtomicU64,
}

/// Counts kept in step with the registrations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RegistryCounts {
    /// Registrations.
    pub registrations: u64,
    /// Sum of their sizes.
    pub tracked_bytes: u64,
    /// Registrations whose last verdict is a violation.
    pub violating: u64,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Registry {
        Registry::default()
    }

    // A panic while a lock is held cannot leave the map half-changed (each change is one
    // insert or remove), so a poisoned lock is still safe to use.
    fn read(&self) -> RwLockReadGuard<'_, HashMap<RegistrationId, Arc<Registration>>> {
        self.entries.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, HashMap<RegistrationId, Arc<Registration>>> {
        self.entries.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a registration that was found resident, and returns its id.
    pub fn insert(&self, ptr: u64, size: u64, label: String, device: i32, pieces: Vec<Piece>) -> RegistrationId {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let registration = Arc::new(Registration {
            id,
            ptr,
            size,
            label,
            device,
            pieces: pieces.into_boxed_slice(),
            verdict: AtomicI32::new(Verdict::Resident as i32),
            removed: AtomicBool::new(false),
        });
        let mut entries = self.write();
        entries.insert(id, registration);
        self.tracked_bytes.fetch_add(size, Ordering::Relaxed);
        id
    }

    /// Removes a registration; `None` if the id is not registered (any more).
    pub fn remove(&self, id: RegistrationId) -> Option<Arc<Registration>> {
        let mut entries = self.write();
        let registration = entries.remove(&id)?;
        registration.removed.store(true, Ordering::Release);
        self.tracked_bytes.fetch_sub(registration.size, Ordering::Relaxed);
        if registration.verdict().is_violation() {
            self.violating.fetch_sub(1, Ordering::Relaxed);
        }
        Some(registration)
    }

    /// Records a verdict from a check. Returns the transition if the verdict changed and the
    /// registration is still registered. [`Verdict::CheckFailed`] is not recorded: a failed
    /// query says nothing about where the memory is.
    pub fn record(&self, registration: &Registration, verdict: Verdict) -> Option<Transition> {
        if verdict == Verdict::CheckFailed {
            return None;
        }
        if registration.verdict() == verdict {
            return None;
        }
        // The read lock orders this against `remove`, which keeps the violation count exact.
        let _entries = self.read();
        if registration.is_removed() {
            return None;
        }
        let from = Verdict::from_raw(registration.verdict.swap(verdict as i32, Ordering::AcqRel))
            .unwrap_or(Verdict::CheckFailed);
        match (from.is_violation(), verdict.is_violation()) {
            (false, true) => {
                self.violating.fetch_add(1, Ordering::Relaxed);
            }
            (true, false) => {
                self.violating.fetch_sub(1, Ordering::Relaxed);
            }
            _ => {}
        }
        (from != verdict).then_some(Transition { from, to: verdict })
    }

    /// A copy of the current registrations, in id order, to check without holding a lock.
    pub fn snapshot(&self) -> Vec<Arc<Registration>> {
        let mut list: Vec<Arc<Registration>> = self.read().values().cloned().collect();
        list.sort_unstable_by_key(|r| r.id);
        list
    }

    /// The registration with this id, if registered.
    pub fn get(&self, id: RegistrationId) -> Option<Arc<Registration>> {
        self.read().get(&id).cloned()
    }

    /// The counts, read together.
    pub fn counts(&self) -> RegistryCounts {
        let entries = self.read();
        RegistryCounts {
            registrations: entries.len() as u64,
            tracked_bytes: self.tracked_bytes.load(Ordering::Relaxed),
            violating: self.violating.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece() -> Vec<Piece> {
        vec![Piece { start: 0x1000, end: 0x2000, buffer_id: 1 }]
    }

    #[test]
    fn ids_are_never_zero_and_never_reused_across_registries() {
        let registry = Registry::new();
        let other = Registry::new();
        let a = registry.insert(0x1000, 0x1000, "a".into(), 0, piece());
        assert_ne!(a, 0);
        registry.remove(a).unwrap();
        let b = registry.insert(0x1000, 0x1000, "a".into(), 0, piece());
        let c = other.insert(0x1000, 0x1000, "a".into(), 0, piece());
        assert!(a != b && b != c && a != c);
        assert!(other.remove(b).is_none(), "an id from another registry is unknown here");
    }

    #[test]
    fn counts_follow_inserts_removals_and_verdicts() {
        let registry = Registry::new();
        let a = registry.insert(0x1000, 100, "a".into(), 0, piece());
        let b = registry.insert(0x9000, 50, "b".into(), 0, piece());
        assert_eq!(registry.counts(), RegistryCounts { registrations: 2, tracked_bytes: 150, violating: 0 });

        let ra = registry.get(a).unwrap();
        assert_eq!(registry.record(&ra, Verdict::Host), Some(Transition { from: Verdict::Resident, to: Verdict::Host }));
        assert_eq!(registry.record(&ra, Verdict::Host), None, "no change, no transition");
        assert_eq!(registry.record(&ra, Verdict::Managed), Some(Transition { from: Verdict::Host, to: Verdict::Managed }));
        assert_eq!(registry.counts().violating, 1, "violation to violation keeps the count");
        assert_eq!(registry.record(&ra, Verdict::CheckFailed), None);
        assert_eq!(ra.verdict(), Verdict::Managed, "a failed check does not overwrite");

        registry.remove(a).unwrap();
        assert_eq!(registry.counts(), RegistryCounts { registrations: 1, tracked_bytes: 50, violating: 0 });
        assert_eq!(registry.record(&ra, Verdict::Resident), None, "removed registrations record nothing");
        assert!(registry.remove(a).is_none());
        assert!(registry.get(b).is_some());
    }
}
