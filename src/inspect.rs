//! Walking a registered range through the driver: at registration, which allocations or VMM
//! mappings hold `[ptr, ptr + size)`; at each check, whether each of them still does.

use crate::driver::{Driver, DriverError};
use crate::verdict::{classify_kind, classify_piece, Piece, Verdict};

/// What registration-time inspection found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspection {
    /// The verdict for the range as a whole.
    pub verdict: Verdict,
    /// The device of the first byte (-2 when it is not CUDA memory).
    pub device: i32,
    /// The pieces that hold the range, in address order (complete only when resident).
    pub pieces: Vec<Piece>,
}

/// Inspects `[ptr, ptr + size)` mapping by mapping. `size` must be non-zero and the range
/// must not wrap (the caller checks).
///
/// A range may only continue from one piece into the next when both are VMM mappings (as
/// PyTorch's expandable segments lay out one tensor over many 2 or 20 MiB mappings); running
/// from one ordinary allocation into a neighbouring one is [`Verdict::OutOfRange`].
pub fn inspect(driver: &dyn Driver, ptr: u64, size: u64) -> Result<Inspection, DriverError> {
    let end = ptr + size;
    let mut pieces = Vec::new();
    let mut device = -2;
    let mut address = ptr;
    let mut previous_was_mapping = false;
    loop {
        let info = driver.pointer_info(address)?;
        let kind = classify_kind(&info);
        let first = address == ptr;
        if first {
            device = info.device_ordinal;
        }
        let verdict = if kind != Verdict::Resident {
            // Memory that stops being CUDA memory part-way means the range runs past it.
            if !first && kind == Verdict::NotMapped { Verdict::OutOfRange } else { kind }
        } else if !first && (!previous_was_mapping || !info.is_vmm_mapping()) {
            Verdict::OutOfRange
        } else if info.device_ordinal != device {
            Verdict::WrongDevice
        } else {
            Verdict::Resident
        };
        if verdict != Verdict::Resident {
            return Ok(Inspection { verdict, device, pieces });
        }
        let piece_end = match info.extent() {
            Some((base, len)) if base <= address && base.saturating_add(len) > address => {
                base.saturating_add(len).min(end)
            }
            // Device memory whose extent does not contain the address: do not trust it.
            _ => return Ok(Inspection { verdict: Verdict::OutOfRange, device, pieces }),
        };
        pieces.push(Piece { start: address, end: piece_end, buffer_id: info.buffer_id });
        if piece_end >= end {
            return Ok(Inspection { verdict: Verdict::Resident, device, pieces });
        }
        previous_was_mapping = info.is_vmm_mapping();
        address = piece_end;
    }
}

/// The outcome of checking one piece now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PieceCheck {
    /// The driver answered; this is the verdict.
    Judged(Verdict),
    /// The driver query failed.
    Failed(DriverError),
}

/// Checks one recorded piece of a registration on `device`.
pub fn check_piece(driver: &dyn Driver, piece: &Piece, device: i32) -> PieceCheck {
    match driver.pointer_info(piece.start) {
        Ok(info) => PieceCheck::Judged(classify_piece(piece, device, &info)),
        Err(error) => PieceCheck::Failed(error),
    }
}
