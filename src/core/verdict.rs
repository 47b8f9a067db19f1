//! What a check decides: one pure function from what the driver says now, and what was
//! recorded at registration, to a [`Verdict`]. No I/O, no locks.

use crate::core::driver::{MemoryType, PointerInfo};

/// The outcome of checking one registration.
///
/// The numbers are part of the C ABI and never change meaning.
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Device memory, not managed, on the registered device, in the buffer it was in when
    /// registered, and the whole range is mapped.
    Resident = 0,
    /// Unified (managed) memory: the driver may page it to host RAM at any time.
    Managed = 1,
    /// Pinned, mapped or registered host memory, or a VMM mapping backed by host memory.
    Host = 2,
    /// Not CUDA memory (any more): freed, never allocated, or VMM address space with nothing
    /// mapped.
    NotMapped = 3,
    /// Device memory again, but a different buffer: freed and reallocated at the same address.
    Replaced = 4,
    /// The registered range runs past the allocation or mapping that holds it.
    OutOfRange = 5,
    /// The memory is on another GPU than it was when registered.
    WrongDevice = 6,
    /// The driver query itself failed: nothing is known about where the memory is.
    CheckFailed = 7,
    /// Resident, but the bytes are no longer those sealed: a content fingerprint differs
    /// (src/integrity). Only sealed registrations can have it; a residency verdict wins.
    Modified = 8,
}

impl Verdict {
    /// Every verdict, in numeric order.
    pub fn all() -> [Verdict; 9] {
        ALL_VERDICTS
    }

    /// The stable upper-case name used in reports, logs and the C API.
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Resident => "RESIDENT",
            Verdict::Managed => "MANAGED",
            Verdict::Host => "HOST",
            Verdict::NotMapped => "NOT_MAPPED",
            Verdict::Replaced => "REPLACED",
            Verdict::OutOfRange => "OUT_OF_RANGE",
            Verdict::WrongDevice => "WRONG_DEVICE",
            Verdict::CheckFailed => "CHECK_FAILED",
            Verdict::Modified => "MODIFIED",
        }
    }

    /// A short sentence for people: what this verdict means for the weights.
    pub fn explanation(self) -> &'static str {
        match self {
            Verdict::Resident => "resident in device memory",
            Verdict::Managed => "unified (managed) memory that the driver can page to host RAM",
            Verdict::Host => "host memory mapped into the GPU's address space, not VRAM",
            Verdict::NotMapped => "no longer mapped: freed, or never CUDA memory",
            Verdict::Replaced => "freed and reallocated at the same address: the registered buffer is gone",
            Verdict::OutOfRange => "the registered range runs past the allocation that holds it",
            Verdict::WrongDevice => "on another GPU than registered",
            Verdict::CheckFailed => "the driver query failed; residency unknown",
            Verdict::Modified => "resident, but its bytes differ from the sealed fingerprint",
        }
    }

    /// The verdict for a C integer, if it names one.
    pub fn from_raw(raw: i32) -> Option<Verdict> {
        ALL_VERDICTS.get(usize::try_from(raw).ok()?).copied()
    }

    /// Whether this verdict means the weights have left VRAM (a check that failed is not a
    /// violation: nothing is known).
    pub fn is_violation(self) -> bool {
        !matches!(self, Verdict::Resident | Verdict::CheckFailed)
    }

    /// Which of two verdicts for pieces of one registration wins. A failed query outranks
    /// everything (we cannot claim a movement we did not see), then the verdicts that mean
    /// the bytes are not VRAM at all, then the subtler ones.
    pub fn worst(self, other: Verdict) -> Verdict {
        if self.severity() >= other.severity() {
            self
        } else {
            other
        }
    }

    fn severity(self) -> u8 {
        match self {
            Verdict::Resident => 0,
            // Below every residency verdict: when the memory itself moved, that is the news.
            Verdict::Modified => 1,
            Verdict::OutOfRange => 2,
            Verdict::WrongDevice => 3,
            Verdict::Replaced => 4,
            Verdict::Managed => 5,
            Verdict::Host => 6,
            Verdict::NotMapped => 7,
            Verdict::CheckFailed => 8,
        }
    }
}

// A free constant, not an associated one: cbindgen would export an associated constant into
// the C header as a macro of names C does not have.
const ALL_VERDICTS: [Verdict; 9] = [
    Verdict::Resident,
    Verdict::Managed,
    Verdict::Host,
    Verdict::NotMapped,
    Verdict::Replaced,
    Verdict::OutOfRange,
    Verdict::WrongDevice,
    Verdict::CheckFailed,
    Verdict::Modified,
];

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One contiguous piece of a registration, as it was when registered: the part of
/// `[ptr, ptr + size)` that one allocation or VMM mapping holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    /// Where to ask the driver about this piece: the base of the allocation or mapping that
    /// held it at registration. Registrations inside one allocation share this address, so a
    /// check asks once per allocation, not once per registration.
    pub query_at: u64,
    /// First address of the registered range that lies in this piece.
    pub start: u64,
    /// One past the last registered address that lies in this piece.
    pub end: u64,
    /// The driver's BUFFER_ID for the allocation or mapping at registration.
    pub buffer_id: u64,
}

/// What the memory looks like at one address, judged without history: the verdict for
/// anything that is not plain device memory.
pub fn classify_kind(info: &PointerInfo) -> Verdict {
    // IS_MANAGED first: managed memory reports MEMORY_TYPE = DEVICE.
    if info.is_managed {
        return Verdict::Managed;
    }
    match info.memory_type {
        MemoryType::Device => Verdict::Resident,
        MemoryType::Host => Verdict::Host,
        // Unified addressing reports host-or-device: treat like managed, it can page.
        MemoryType::Unified => Verdict::Managed,
        MemoryType::Unregistered => Verdict::NotMapped,
        // Arrays and types a newer driver may add are not plain linear device memory.
        MemoryType::Array | MemoryType::Other(_) => Verdict::NotMapped,
    }
}

/// Judges one recorded piece against what the driver says now at `piece.start`.
pub fn classify_piece(piece: &Piece, registered_device: i32, now: &PointerInfo) -> Verdict {
    let kind = classify_kind(now);
    if kind != Verdict::Resident {
        return kind;
    }
    if now.device_ordinal != registered_device {
        return Verdict::WrongDevice;
    }
    if now.buffer_id != piece.buffer_id {
        return Verdict::Replaced;
    }
    match now.extent() {
        Some((base, len)) if base <= piece.start && piece.end <= base.saturating_add(len) => {
            Verdict::Resident
        }
        _ => Verdict::OutOfRange,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(buffer_id: u64, base: u64, len: u64) -> PointerInfo {
        PointerInfo {
            memory_type: MemoryType::Device,
            is_managed: false,
            device_ordinal: 0,
            buffer_id,
            range_start: base,
            range_size: len,
            mapping_base: 0,
            mapping_size: 0,
        }
    }

    const PIECE: Piece = Piece { query_at: 0x1000, start: 0x1000, end: 0x3000, buffer_id: 7 };

    #[test]
    fn plain_device_memory_is_resident() {
        assert_eq!(classify_piece(&PIECE, 0, &device(7, 0x1000, 0x2000)), Verdict::Resident);
    }

    #[test]
    fn managed_memory_reporting_device_type_is_managed() {
        let mut info = device(7, 0x1000, 0x2000);
        info.is_managed = true;
        assert_eq!(info.memory_type, MemoryType::Device);
        assert_eq!(classify_piece(&PIECE, 0, &info), Verdict::Managed);
    }

    #[test]
    fn host_memory_is_host_even_with_the_same_buffer_id() {
        let mut info = device(7, 0x1000, 0x2000);
        info.memory_type = MemoryType::Host;
        assert_eq!(classify_piece(&PIECE, 0, &info), Verdict::Host);
    }

    #[test]
    fn unregistered_is_not_mapped() {
        let info = PointerInfo::unregistered();
        assert_eq!(classify_piece(&PIECE, 0, &info), Verdict::NotMapped);
    }

    #[test]
    fn a_new_buffer_id_at_the_same_address_is_replaced() {
        assert_eq!(classify_piece(&PIECE, 0, &device(8, 0x1000, 0x2000)), Verdict::Replaced);
    }

    #[test]
    fn another_ordinal_is_wrong_device() {
        let mut info = device(7, 0x1000, 0x2000);
        info.device_ordinal = 1;
        assert_eq!(classify_piece(&PIECE, 0, &info), Verdict::WrongDevice);
    }

    #[test]
    fn a_range_shorter_than_the_piece_is_out_of_range() {
        assert_eq!(classify_piece(&PIECE, 0, &device(7, 0x1000, 0x1fff)), Verdict::OutOfRange);
    }

    #[test]
    fn an_ordinary_allocation_is_bounded_by_its_range_not_the_drivers_chunk() {
        // Measured: a 4 KiB cuMemAlloc reports RANGE = the 4 KiB and MAPPING = a 2 MiB chunk.
        let mut info = device(7, 0x1000, 0x1000);
        info.mapping_base = 0;
        info.mapping_size = 2 << 20;
        assert_eq!(classify_piece(&PIECE, 0, &info), Verdict::OutOfRange);
        info.range_size = 0x2000;
        assert_eq!(classify_piece(&PIECE, 0, &info), Verdict::Resident);
    }

    #[test]
    fn a_vmm_mapping_is_bounded_by_the_mapping_not_the_reservation() {
        // VMM: RANGE_* is the whole reservation, MAPPING_* the memory behind the pointer.
        let mut info = device(7, 0x0, 1 << 40);
        info.mapping_base = 0x1000;
        info.mapping_size = 0x1000;
        assert_eq!(classify_piece(&PIECE, 0, &info), Verdict::OutOfRange);
        info.mapping_size = 0x2000;
        assert_eq!(classify_piece(&PIECE, 0, &info), Verdict::Resident);
    }

    #[test]
    fn raw_values_round_trip_and_unknown_values_are_rejected() {
        for v in Verdict::all() {
            assert_eq!(Verdict::from_raw(v as i32), Some(v));
        }
        assert_eq!(Verdict::from_raw(9), None);
        assert_eq!(Verdict::Modified.worst(Verdict::OutOfRange), Verdict::OutOfRange);
        assert_eq!(Verdict::from_raw(-1), None);
    }

    #[test]
    fn check_failed_outranks_and_resident_never_wins() {
        for v in Verdict::all() {
            assert_eq!(Verdict::CheckFailed.worst(v), Verdict::CheckFailed);
            assert_eq!(Verdict::Resident.worst(v), v);
        }
        assert_eq!(Verdict::Replaced.worst(Verdict::Host), Verdict::Host);
    }

    #[test]
    fn only_memory_movements_are_violations() {
        assert!(!Verdict::Resident.is_violation());
        assert!(!Verdict::CheckFailed.is_violation());
        assert!(Verdict::Managed.is_violation());
        assert!(Verdict::Replaced.is_violation());
    }
}
