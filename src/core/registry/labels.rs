//! The labels of a batch, front-coded: each label is stored as the length it shares with
//! the label before it and the bytes that follow.
//!
//! A model's tensor names come in runs that share long prefixes
//! (`model.layers.17.mlp.experts.57.gate_proj.weight`, then `...57.up_proj.weight`), and a
//! call of a hundred thousand tensors would otherwise write megabytes of names a second time
//! into fresh memory, whose first touch costs more than the copying. Every
//! [`RESTART`]th label is stored whole, so reading one decodes at most that many: labels are
//! read for events and reports, not on any hot path.

/// Every this many labels, one is stored whole (a restart point).
const RESTART: usize = 16;

/// Labels, by index, in the order they were pushed.
#[derive(Debug, Default)]
pub(super) struct Labels {
    /// Per label: the shared length, the suffix length (each a LEB128 number), the suffix.
    bytes: Vec<u8>,
    /// Where labels `0, RESTART, 2 * RESTART, ...` start in `bytes`.
    restarts: Vec<u32>,
    len: usize,
}

impl Labels {
    /// Room for `count` labels of `bytes` bytes in all, before sharing.
    pub(super) fn with_capacity(count: usize, bytes: usize) -> Labels {
        Labels {
            // Sharing usually halves the bytes or better; the vector grows if not.
            bytes: Vec::with_capacity(bytes / 2 + 2 * count),
            restarts: Vec::with_capacity(count.div_ceil(RESTART)),
            len: 0,
        }
    }

    /// Appends `label` as the next index; `before` is the label pushed last (the caller has
    /// it at hand, which spares a copy here). The caller keeps the total below 4 GiB (rows per
    /// batch times the longest label).
    pub(super) fn push(&mut self, label: &str, before: &str) {
        let label = label.as_bytes();
        let shared = if self.len % RESTART == 0 {
            self.restarts.push(self.bytes.len() as u32);
            0
        } else {
            shared_prefix(before.as_bytes(), label)
        };
        let suffix = &label[shared..];
        if shared < 0x80 && suffix.len() < 0x80 {
            // Both numbers of one byte, the usual case, in one write.
            self.bytes.extend_from_slice(&[shared as u8, suffix.len() as u8]);
        } else {
            put_number(&mut self.bytes, shared);
            put_number(&mut self.bytes, suffix.len());
        }
        self.bytes.extend_from_slice(suffix);
        self.len += 1;
    }

    /// Gives back room well beyond what is held (the capacity was a guess).
    pub(super) fn shrink(&mut self) {
        if self.bytes.capacity() > self.bytes.len() + self.bytes.len() / 4 + 4096 {
            self.bytes.shrink_to_fit();
        }
    }

    /// Label `i` (empty past the last).
    pub(super) fn get(&self, i: usize) -> String {
        if i >= self.len {
            return String::new();
        }
        let mut at = self.restarts[i / RESTART] as usize;
        let mut label = Vec::new();
        for _ in i / RESTART * RESTART..=i {
            let shared = take_number(&self.bytes, &mut at);
            let len = take_number(&self.bytes, &mut at);
            label.truncate(shared);
            label.extend_from_slice(&self.bytes[at..at + len]);
            at += len;
        }
        // Pushed as whole strings and cut only at shared prefixes of two of them; a cut
        // inside a character is mended when the suffix that follows it is appended.
        String::from_utf8(label).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    }

    /// Calls `f` with each label in order (one pass, nothing decoded twice).
    pub(super) fn each(&self, mut f: impl FnMut(usize, &str)) {
        let (mut at, mut label) = (0, Vec::new());
        for i in 0..self.len {
            let shared = take_number(&self.bytes, &mut at);
            let len = take_number(&self.bytes, &mut at);
            label.truncate(shared);
            label.extend_from_slice(&self.bytes[at..at + len]);
            at += len;
            f(i, &String::from_utf8_lossy(&label));
        }
    }

    /// Bytes held (for the memory figures).
    #[cfg(test)]
    pub(super) fn stored_bytes(&self) -> usize {
        self.bytes.len() + 4 * self.restarts.len()
    }
}

/// How many leading bytes `a` and `b` share.
fn shared_prefix(a: &[u8], b: &[u8]) -> usize {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    // Eight bytes at a time (names share tens of bytes); the first differing byte of a word
    // is found from its XOR, not byte by byte.
    let word = |s: &[u8]| u64::from_le_bytes(s.try_into().unwrap_or_default());
    for (k, (x, y)) in a.chunks_exact(8).zip(b.chunks_exact(8)).enumerate() {
        let differ = word(x) ^ word(y);
        if differ != 0 {
            return 8 * k + (differ.trailing_zeros() / 8) as usize;
        }
    }
    let whole = n / 8 * 8;
    whole + a[whole..].iter().zip(&b[whole..]).take_while(|(x, y)| x == y).count()
}

/// Appends `n` as LEB128 (one byte below 128).
fn put_number(out: &mut Vec<u8>, mut n: usize) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// Reads a LEB128 number at `*at`, moving past it.
fn take_number(bytes: &[u8], at: &mut usize) -> usize {
    let (mut n, mut shift) = (0usize, 0);
    loop {
        let b = bytes[*at];
        *at += 1;
        n |= ((b & 0x7f) as usize) << shift;
        if b < 0x80 {
            return n;
        }
        shift += 7;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(labels: &[&str]) -> Labels {
        let mut stored = Labels::with_capacity(labels.len(), 0);
        let mut before = "";
        for l in labels {
            stored.push(l, before);
            before = l;
        }
        stored
    }

    #[test]
    fn every_label_reads_back_as_pushed() {
        let mut names: Vec<String> = Vec::new();
        for layer in 0..3 {
            for expert in 0..7 {
                for w in ["gate_proj.weight", "up_proj.weight", "down_proj.weight"] {
                    names.push(format!("model.layers.{layer}.mlp.experts.{expert}.{w}"));
                }
            }
        }
        // Shorter than the one before, empty, a prefix of the next, long, not ASCII.
        names.extend(["m".into(), String::new(), "model".into(), "model.embed".into(), "x".repeat(4096), "couche.é.poids".into(), "couche.è".into()]);
        let refs: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
        let labels = stored(&refs);
        for (i, name) in names.iter().enumerate() {
            assert_eq!(labels.get(i), *name, "label {i}");
        }
        let mut read = Vec::new();
        labels.each(|i, label| read.push((i, label.to_string())));
        assert_eq!(read, names.iter().cloned().enumerate().collect::<Vec<_>>());
        assert_eq!(labels.get(names.len()), "");
    }

    #[test]
    fn a_models_names_take_a_fraction_of_their_length() {
        let names: Vec<String> = (0..1000).map(|i| format!("model.layers.{}.self_attn.q_proj.weight.{}", i / 10, i % 10)).collect();
        let refs: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
        let whole: usize = names.iter().map(|n| n.len()).sum();
        let labels = stored(&refs);
        assert!(labels.stored_bytes() * 4 < whole, "{} bytes stored for {whole}", labels.stored_bytes());
    }

    #[test]
    fn lengths_past_one_byte_read_back() {
        // Shared prefixes and suffixes around 127/128 bytes (one byte of length or two),
        // repeated labels and empty ones between them.
        let long = "p".repeat(200);
        let names: Vec<String> = vec![
            format!("{long}{}", "a".repeat(128)),
            format!("{long}{}", "b".repeat(127)),
            format!("{}{}", &long[..127], "c".repeat(128)),
            format!("{}{}", &long[..128], "é".repeat(70)),
            format!("{}{}", &long[..128], "é".repeat(70)),
            String::new(),
            String::new(),
            format!("{long}{}", "ü".repeat(64)),
        ];
        let refs: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
        let labels = stored(&refs);
        for (i, name) in names.iter().enumerate() {
            assert_eq!(labels.get(i), *name, "label {i}");
        }
    }

    #[test]
    fn a_character_split_by_the_shared_prefix_is_whole_again() {
        // "é" and "è" share their first UTF-8 byte: the shared length ends inside a character.
        let labels = stored(&["aé", "aè", "aèé"]);
        assert_eq!((labels.get(0), labels.get(1), labels.get(2)), ("aé".to_string(), "aè".to_string(), "aèé".to_string()));
    }

    #[test]
    fn numbers_of_every_width_round_trip() {
        for n in [0, 1, 127, 128, 300, 4096, 1 << 20, usize::MAX >> 1] {
            let mut out = Vec::new();
            put_number(&mut out, n);
            let mut at = 0;
            assert_eq!((take_number(&out, &mut at), at), (n, out.len()));
        }
    }
}
