//! The hasher of the allocation table and the member sets: one mixing step, not SipHash.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// Hashes the keys of the allocation table and the member sets (device addresses and
/// registration ids: integers the engine's allocator and our counter hand out, not chosen by
/// an attacker) with one mixing step instead of SipHash: registering, unregistering and every
/// changed answer in a check hash once per allocation.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct IntegerHasher(u64);

impl Hasher for IntegerHasher {
    fn write(&mut self, bytes: &[u8]) {
        // Only integers are hashed here; this is for completeness. Each byte goes through
        // the mixing step, so every byte and its position count.
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, x: u64) {
        // MurmurHash3's 64-bit finaliser: every input bit reaches both the high bits (the
        // table's tags) and the low bits (its bucket index). Addresses differ mostly in the
        // middle bits (512-byte to 2 MiB alignment), ids in the low ones.
        let mut h = self.0 ^ x;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^= h >> 33;
        self.0 = h;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

pub(super) type IntegerMap<V> = HashMap<u64, V, BuildHasherDefault<IntegerHasher>>;
// Generic like IntegerMap (cbindgen, which reads this crate for the C ABI's enums, passes over
// generic aliases; a plain one it tries to declare, and fails on std's three-parameter HashSet).
pub(super) type IntegerSet<K = u64> = HashSet<K, BuildHasherDefault<IntegerHasher>>;
