//! Test support: a call's resident entries collected as a list, as tests state them, and
//! handed to the registry from such a list.

use std::collections::BTreeMap;

use super::{judge_all, Accept, Region};
use crate::core::driver::{Driver, PointerInfo};
use crate::core::error::Error;
use crate::core::inspect::Inspection;

/// An entry judged resident: its index in the call, and the extent it lies in or
/// [`INSPECTED`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Passed {
    pub(crate) index: u32,
    pub(crate) extent: u32,
}

/// [`Passed::extent`] of an entry over several pieces: its inspection is the next of
/// [`Judged::inspected`].
pub(crate) const INSPECTED: u32 = u32::MAX;

/// Everything judging found, as lists.
#[derive(Default)]
pub(crate) struct Judged {
    pub(crate) passed: Vec<Passed>,
    pub(crate) inspected: Vec<Inspection>,
    /// The extents of the passed entries, by number: where a check asks, and the answer.
    pub(crate) extents: BTreeMap<u32, (u64, PointerInfo)>,
    pub(crate) failures: Vec<(usize, Error)>,
    pub(crate) queries: u64,
}

impl Accept for Judged {
    fn within(&mut self, index: usize, extent: u32, (query_at, answer): (u64, &PointerInfo)) {
        self.passed.push(Passed { index: index as u32, extent });
        self.extents.insert(extent, (query_at, *answer));
    }

    fn inspected(&mut self, index: usize, inspection: Inspection) {
        self.passed.push(Passed { index: index as u32, extent: INSPECTED });
        self.inspected.push(inspection);
    }
}

/// Judges every entry (none held back after a failure) into lists.
pub(crate) fn judge(driver: &dyn Driver, regions: &[Region<'_>]) -> Judged {
    let mut judged = Judged::default();
    let judgement = judge_all(driver, regions, false, &mut judged);
    (judged.failures, judged.queries) = (judgement.failures, judgement.queries);
    judged
}

/// Hands `passed` (entries of `regions`, in order) to `accept`, each inside
/// `extents[passed.extent]` or, for [`INSPECTED`], over the next of `inspected`.
pub(crate) fn hand_over(accept: &mut impl Accept, passed: &[Passed], extents: &[(u64, PointerInfo)], inspected: &[Inspection]) {
    let mut inspected = inspected.iter();
    for p in passed {
        if p.extent == INSPECTED {
            accept.inspected(p.index as usize, inspected.next().expect("an inspection per INSPECTED entry").clone());
        } else {
            let (query_at, answer) = &extents[p.extent as usize];
            accept.within(p.index as usize, p.extent, (*query_at, answer));
        }
    }
}
