//! Walking a registered range through the driver: at registration, which allocations or VMM
//! mappings hold `[ptr, ptr + size)`. (Each check then asks about those allocations again:
//! see `registry`.)

use smallvec::SmallVec;

use crate::core::driver::{Driver, DriverError, PointerInfo};
use crate::core::verdict::{classify_kind, Piece, Verdict};

/// What registration-time inspection found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspection {
    /// The verdict for the range as a whole.
    pub verdict: Verdict,
    /// The device of the first byte (-2 when it is not CUDA memory).
    pub device: i32,
    // Inline when there is one piece, as for nearly every range: registering makes no heap
    // allocation for it.
    pieces: SmallVec<[Piece; 1]>,
    answers: SmallVec<[PointerInfo; 1]>,
}

impl Inspection {
    /// The pieces that hold the range, in address order (complete only when resident).
    pub fn pieces(&self) -> &[Piece] {
        &self.pieces
    }

    /// The driver's answer for each piece, in the same order.
    pub fn answers(&self) -> &[PointerInfo] {
        &self.answers
    }
}

/// Inspects `[ptr, ptr + size)` mapping by mapping. `size` must be non-zero and the range
/// must not wrap (the caller checks).
///
/// A range may only continue from one piece into the next when both are mappings of the same
/// VMM address reservation (as PyTorch's expandable segments lay out one tensor over many 2
/// or 20 MiB mappings); running from one ordinary allocation into a neighbouring one, even an
/// adjacent one, is [`Verdict::OutOfRange`].
pub fn inspect(driver: &dyn Driver, ptr: u64, size: u64) -> Result<Inspection, DriverError> {
    inspect_with(|address| driver.pointer_info(address), ptr, size)
}

/// [`inspect`] with the driver's answers taken from `answer` (a batch answers most addresses
/// from the answers it already holds).
pub(crate) fn inspect_with(
    mut answer: impl FnMut(u64) -> Result<PointerInfo, DriverError>,
    ptr: u64,
    size: u64,
) -> Result<Inspection, DriverError> {
    let end = ptr + size;
    let mut pieces = SmallVec::new();
    let mut answers = SmallVec::new();
    let mut device = -2;
    let mut address = ptr;
    // The reservation the previous piece was a mapping of, if it was one.
    let mut previous_reservation: Option<(u64, u64)> = None;
    loop {
        let info = answer(address)?;
        let kind = classify_kind(&info);
        let first = address == ptr;
        if first {
            device = info.device_ordinal;
        }
        let verdict = if kind != Verdict::Resident {
            // Memory that stops being CUDA memory part-way means the range runs past it.
            if !first && kind == Verdict::NotMapped { Verdict::OutOfRange } else { kind }
        } else if !first
            && !(info.is_mapping_in_larger_reservation() && previous_reservation == Some((info.range_start, info.range_size)))
        {
            Verdict::OutOfRange
        } else if info.device_ordinal != device {
            Verdict::WrongDevice
        } else {
            Verdict::Resident
        };
        if verdict != Verdict::Resident {
            return Ok(Inspection { verdict, device, pieces, answers });
        }
        let (query_at, piece_end) = match info.extent() {
            Some((base, len)) if base <= address && base.saturating_add(len) > address => {
                (base, base.saturating_add(len).min(end))
            }
            // Device memory whose extent does not contain the address: do not trust it.
            _ => return Ok(Inspection { verdict: Verdict::OutOfRange, device, pieces, answers }),
        };
        pieces.push(Piece { query_at, start: address, end: piece_end, buffer_id: info.buffer_id });
        answers.push(info);
        if piece_end >= end {
            return Ok(Inspection { verdict: Verdict::Resident, device, pieces, answers });
        }
        previous_reservation = info.is_mapping_in_larger_reservation().then_some((info.range_start, info.range_size));
        address = piece_end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::driver::MemoryType;

    /// Answers like the H100 did: ordinary allocations report RANGE = the allocation and
    /// MAPPING = the 2 MiB chunk around it; VMM mappings report RANGE = the reservation.
    struct Table(Vec<PointerInfo>);

    impl Driver for Table {
        fn pointer_info(&self, address: u64) -> Result<PointerInfo, DriverError> {
            Ok(self
                .0
                .iter()
                .find(|i| {
                    let (start, len) = i.extent().unwrap();
                    start <= address && address < start + len
                })
                .copied()
                .unwrap_or_else(PointerInfo::unregistered))
        }
        fn device_used_memory(&self, _: i32) -> Option<u64> {
            None
        }
        fn version(&self) -> Option<i32> {
            None
        }
    }

    fn info(buffer_id: u64, range: (u64, u64), mapping: (u64, u64)) -> PointerInfo {
        PointerInfo {
            memory_type: MemoryType::Device,
            is_managed: false,
            device_ordinal: 0,
            buffer_id,
            range_start: range.0,
            range_size: range.1,
            mapping_base: mapping.0,
            mapping_size: mapping.1,
        }
    }

    const CHUNK: u64 = 2 << 20;

    #[test]
    fn adjacent_small_allocations_in_one_driver_chunk_are_not_one_range() {
        let driver = Table(vec![info(1, (0x20_0000, 4096), (0x20_0000, CHUNK)), info(2, (0x20_1000, 4096), (0x20_0000, CHUNK))]);
        assert_eq!(inspect(&driver, 0x20_0000, 4096).unwrap().verdict, Verdict::Resident);
        assert_eq!(inspect(&driver, 0x20_0000, 8192).unwrap().verdict, Verdict::OutOfRange);
    }

    #[test]
    fn a_range_past_a_small_allocation_is_out_of_range_even_inside_the_chunk() {
        let driver = Table(vec![info(1, (0x20_0000, 4096), (0x20_0000, CHUNK))]);
        assert_eq!(inspect(&driver, 0x20_0000, 4097).unwrap().verdict, Verdict::OutOfRange);
    }

    #[test]
    fn adjacent_large_allocations_are_not_one_range() {
        let driver = Table(vec![info(1, (0x20_0000, CHUNK), (0x20_0000, CHUNK)), info(2, (0x40_0000, CHUNK), (0x40_0000, CHUNK))]);
        assert_eq!(inspect(&driver, 0x20_0000, 2 * CHUNK).unwrap().verdict, Verdict::OutOfRange);
    }

    #[test]
    fn mappings_of_one_reservation_are_one_range_and_each_is_recorded() {
        let reservation = (0x100_0000, 3 * CHUNK);
        let driver = Table(vec![
            info(7, reservation, (0x100_0000, CHUNK)),
            info(8, reservation, (0x120_0000, CHUNK)),
            info(9, reservation, (0x140_0000, CHUNK)),
        ]);
        let inspection = inspect(&driver, 0x100_1000, 3 * CHUNK - 0x2000).unwrap();
        assert_eq!(inspection.verdict, Verdict::Resident);
        let ids: Vec<u64> = inspection.pieces().iter().map(|p| p.buffer_id).collect();
        assert_eq!(ids, vec![7, 8, 9]);
        assert_eq!(inspection.pieces()[0].start, 0x100_1000);
        assert_eq!(inspection.pieces()[2].end, 0x100_0000 + 3 * CHUNK - 0x1000);
    }

    #[test]
    fn mappings_of_two_different_reservations_are_not_one_range() {
        let driver = Table(vec![
            info(7, (0x100_0000, 2 * CHUNK), (0x100_0000, CHUNK)),
            info(8, (0x120_0000, 2 * CHUNK), (0x120_0000, CHUNK)),
        ]);
        assert_eq!(inspect(&driver, 0x100_0000, 2 * CHUNK).unwrap().verdict, Verdict::OutOfRange);
    }
}
