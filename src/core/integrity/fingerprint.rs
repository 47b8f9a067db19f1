//! Fingerprint v1: the function the GPU kernel computes over sealed bytes, written here as
//! the reference (the fake driver's launch and the GPU tests compare against it).
//!
//! The bytes of a registration are read as little-endian 32-bit words `w_i`, counted from
//! its first byte (bytes past the end read as 0). Each word gives one term
//!
//! ```text
//! term(i) = (w_i ^ key(i)) * MULTIPLIER     key(i) = (i + 1) * KEY_STEP     (mod 2^64)
//! ```
//!
//! and a chunk of [`CHUNK_BYTES`] (the last one partial) is fingerprinted by the wrapping
//! sum of its terms. A sum does not depend on the order it is taken in, so thousands of GPU
//! threads reduce it exactly.
//!
//! One changed aligned word always changes its chunk's value: XOR with the same key is a
//! bijection, so `w' ^ k != w ^ k`; their difference is nonzero and smaller than 2^64 in
//! magnitude, and multiplied by an odd number (a unit modulo 2^64) it stays nonzero. The key
//! depends on the word's position in the registration, so a chunk moved or swapped with
//! another changes too. This finds accidents (a stray write, a wrong reload, a reused
//! block), not attackers: several changes can be made to cancel on purpose.

/// Bytes per chunk: one 64-bit value per MiB sealed (8 KiB of host memory per sealed GiB).
pub const CHUNK_BYTES: u64 = 1 << 20;
/// Words per chunk.
pub const CHUNK_WORDS: u64 = CHUNK_BYTES / 4;
/// The version of the function; changing anything above is a new version.
pub const VERSION: u32 = 1;
/// Spreads consecutive positions over the 64-bit keys (the golden ratio in fixed point).
pub const KEY_STEP: u64 = 0x9E37_79B9_7F4A_7C15;
/// Odd, so that multiplying by it loses nothing modulo 2^64 (splitmix64's first constant).
pub const MULTIPLIER: u64 = 0xBF58_476D_1CE4_E5B9;

/// The term of word `w` at word index `index` (counted from the registration's first byte).
#[inline]
pub fn term(index: u64, word: u32) -> u64 {
    (u64::from(word) ^ index.wrapping_add(1).wrapping_mul(KEY_STEP)).wrapping_mul(MULTIPLIER)
}

/// Number of chunks of a registration of `size` bytes.
pub fn chunks(size: u64) -> u64 {
    size.div_ceil(CHUNK_BYTES)
}

/// The fingerprint of each chunk of `bytes`, which start at byte `offset` of the
/// registration (`offset` a multiple of [`CHUNK_BYTES`]: slices of a registration start at
/// chunk boundaries, and a slice ending inside a chunk is the registration's end).
pub fn fingerprint(bytes: &[u8], offset: u64) -> Vec<u64> {
    debug_assert_eq!(offset % CHUNK_BYTES, 0);
    let first_word = offset / 4;
    bytes
        .chunks(CHUNK_BYTES as usize)
        .enumerate()
        .map(|(c, chunk)| {
            let base = first_word + c as u64 * CHUNK_WORDS;
            let mut sum = 0u64;
            let mut words = chunk.chunks_exact(4);
            let mut index = base;
            for w in &mut words {
                sum = sum.wrapping_add(term(index, u32::from_le_bytes([w[0], w[1], w[2], w[3]])));
                index += 1;
            }
            let tail = words.remainder();
            if !tail.is_empty() {
                let mut w = [0u8; 4];
                w[..tail.len()].copy_from_slice(tail);
                sum = sum.wrapping_add(term(index, u32::from_le_bytes(w)));
            }
            sum
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1]).collect()
    }

    #[test]
    fn one_value_per_chunk_the_last_partial() {
        assert_eq!(fingerprint(&bytes(1), 0).len(), 1);
        assert_eq!(fingerprint(&bytes(CHUNK_BYTES as usize), 0).len(), 1);
        assert_eq!(fingerprint(&bytes(CHUNK_BYTES as usize + 1), 0).len(), 2);
        assert_eq!(chunks(CHUNK_BYTES * 3 + 7), 4);
    }

    #[test]
    fn every_changed_word_changes_exactly_its_chunk() {
        let original = bytes(3 * CHUNK_BYTES as usize + 4097);
        let before = fingerprint(&original, 0);
        // Every position class: chunk starts and ends, the partial tail, and odd values.
        for &at in &[0usize, 4, 1 << 20, (1 << 20) - 4, 2 << 20, (3 << 20) + 4096, original.len() - 1] {
            for flip in [1u8, 0x80, 0xff] {
                let mut changed = original.clone();
                changed[at] ^= flip;
                let after = fingerprint(&changed, 0);
                let differing: Vec<usize> = (0..before.len()).filter(|&c| before[c] != after[c]).collect();
                assert_eq!(differing, vec![at / CHUNK_BYTES as usize], "byte {at} flipped by {flip:#x}");
            }
        }
    }

    #[test]
    fn a_whole_word_replaced_by_any_value_is_seen() {
        let original = bytes(4096);
        let before = fingerprint(&original, 0);
        for value in [0u32, 1, u32::MAX, 0x8000_0000, 0xdead_beef] {
            let mut changed = original.clone();
            changed[100..104].copy_from_slice(&value.to_le_bytes());
            if changed != original {
                assert_ne!(fingerprint(&changed, 0), before, "{value:#x}");
            }
        }
    }

    #[test]
    fn swapped_chunks_are_a_change() {
        let mut a = vec![0u8; 2 * CHUNK_BYTES as usize];
        a[..CHUNK_BYTES as usize].fill(7);
        let mut b = a.clone();
        b.rotate_left(CHUNK_BYTES as usize);
        assert_ne!(fingerprint(&a, 0), fingerprint(&b, 0));
    }

    #[test]
    fn a_slice_at_an_offset_gives_the_whole_registrations_values() {
        let all = bytes(5 * CHUNK_BYTES as usize + 3);
        let whole = fingerprint(&all, 0);
        let tail = fingerprint(&all[2 * CHUNK_BYTES as usize..], 2 * CHUNK_BYTES);
        assert_eq!(&whole[2..], &tail[..]);
    }

    #[test]
    fn zero_bytes_do_not_give_zero() {
        // All-zero memory (a freshly reset buffer) must not look like any other zero value.
        let zeros = fingerprint(&vec![0u8; 4096], 0);
        assert_ne!(zeros[0], 0);
        assert_ne!(zeros, fingerprint(&vec![0u8; 4096], CHUNK_BYTES));
    }
}
