//! The fingerprint of a driver answer: everything a verdict depends on, in a few cycles.

use super::allocations::ANSWER_BIT;
use crate::core::driver::PointerInfo;

/// A fingerprint of everything the verdicts depend on in an answer (never FAILED or a mark).
pub fn fingerprint(info: &PointerInfo) -> u64 {
    let raw_type = match info.memory_type {
        crate::core::driver::MemoryType::Unregistered => 0,
        crate::core::driver::MemoryType::Host => 1,
        crate::core::driver::MemoryType::Device => 2,
        crate::core::driver::MemoryType::Array => 3,
        crate::core::driver::MemoryType::Unified => 4,
        crate::core::driver::MemoryType::Other(x) => u64::from(x),
    };
    let words = [
        raw_type | (u64::from(info.is_managed) << 32),
        info.device_ordinal as u32 as u64,
        info.buffer_id,
        info.range_start,
        info.range_size,
        info.mapping_base,
        info.mapping_size,
    ];
    // Each word times its own odd constant, summed. The products are independent of each
    // other, so this is a few cycles where a chained hash was about 35 (a check runs it once
    // per query, next to a driver call of about 120 ns). Multiplying by an odd constant is a
    // bijection on u64, so two answers that differ in one word share a fingerprint only if the
    // sums differ in the top bit alone (which ANSWER_BIT hides): a difference of exactly 2^63
    // in that word. Differing in several, the differences would have to cancel exactly.
    const FACTORS: [u64; 7] = [
        0x9e37_79b9_7f4a_7c15,
        0xc2b2_ae3d_27d4_eb4f,
        0x1656_67b1_9e37_79f9,
        0xd6e8_feb8_6659_fd93,
        0xa076_1d64_78bd_642f,
        0xe703_7ed1_a0b4_28db,
        0x8ebc_6af0_9c88_c6e3,
    ];
    words.iter().zip(FACTORS).fold(0u64, |h, (&w, k)| h.wrapping_add(w.wrapping_mul(k))) | ANSWER_BIT
}
