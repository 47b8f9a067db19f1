//! One sealed registration: its fingerprints and what verification has found.

use super::fingerprint::{self, CHUNK_BYTES};
use super::SealInfo;
use crate::core::registry::RegistrationInfo;
use crate::core::verdict::Piece;

/// Whether `now` (pieces a fresh inspection found) lies in the buffers `registered` held:
/// the same allocations, not new ones at the same addresses.
pub fn same_buffers(registered: &[Piece], now: &[Piece]) -> bool {
    !now.is_empty() && now.iter().all(|n| registered.iter().any(|r| r.buffer_id == n.buffer_id && r.start <= n.start && n.end <= r.end))
}

/// The fingerprints of one sealed registration (8 bytes of host memory per sealed MiB).
#[derive(Debug)]
pub struct Seal {
    /// Its device.
    pub device: i32,
    /// Its first byte.
    pub ptr: u64,
    /// Its size.
    pub size: u64,
    /// The pieces it was sealed in: a slice is read only while the memory is still theirs.
    pub pieces: Vec<Piece>,
    values: Vec<u64>,
    modified: Vec<bool>,
    modified_chunks: u64,
    first_modified: Option<u64>,
    last_verified_unix_ms: u64,
    /// Whether every chunk verified in this pass so far was read (none skipped).
    pass_clean: bool,
}

impl Seal {
    /// A seal of `info` with the values just taken.
    pub fn new(info: &RegistrationInfo, values: Vec<u64>) -> Seal {
        let chunks = values.len();
        Seal {
            device: info.device,
            ptr: info.ptr,
            size: info.size,
            pieces: info.pieces.clone(),
            values,
            modified: vec![false; chunks],
            modified_chunks: 0,
            first_modified: None,
            last_verified_unix_ms: crate::core::clock::unix_ms(),
            pass_clean: true,
        }
    }

    /// Chunks found modified since the seal.
    pub fn modified_chunks(&self) -> u64 {
        self.modified_chunks
    }

    /// The reported state.
    pub fn info(&self, failing: bool) -> SealInfo {
        SealInfo {
            chunks: self.values.len() as u64,
            last_verified_unix_ms: self.last_verified_unix_ms,
            modified_chunks: self.modified_chunks,
            first_modified_offset: self.first_modified.map_or(0, |c| c * CHUNK_BYTES),
            failing,
        }
    }

    /// Compares the values of the chunks from `first_chunk` on with `now`; returns whether
    /// this made the registration modified (it was not before). A modified chunk stays so
    /// until reseal: the engine may have computed with the wrong bytes in between.
    pub fn compare(&mut self, first_chunk: u64, now: &[u64]) -> bool {
        let was = self.modified_chunks > 0;
        for (i, value) in now.iter().enumerate() {
            let c = first_chunk as usize + i;
            if c < self.values.len() && self.values[c] != *value && !self.modified[c] {
                self.modified[c] = true;
                self.modified_chunks += 1;
                self.first_modified = Some(self.first_modified.map_or(c as u64, |f| f.min(c as u64)));
            }
        }
        !was && self.modified_chunks > 0
    }

    /// Notes that the slice `[offset, end)` was verified (or skipped: the memory was not
    /// there to read); a pass that reached the end with nothing skipped dates the seal.
    pub fn note_verified(&mut self, offset: u64, end: u64, read: bool) {
        if offset == 0 {
            self.pass_clean = true;
        }
        self.pass_clean &= read;
        if end >= self.size && self.pass_clean {
            self.last_verified_unix_ms = crate::core::clock::unix_ms();
        }
    }

    /// Chunks of the registration.
    pub fn chunks(&self) -> u64 {
        fingerprint::chunks(self.size)
    }
}
