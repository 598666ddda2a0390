//! The crate's one hand-written hasher, for maps on the per-reading paths
//! keyed by sensor ids or the buffer's integer ids (the status board, the
//! clock's last stamps, the values encoder, the buffer's id maps).
//!
//! It is the Fx hash of rustc and Firefox: a rotate, xor and multiply per
//! 8 bytes. The keys come from the configuration, not from the network, so
//! SipHash's resistance to chosen keys buys nothing there, and it cost a
//! fifth of the encoding of a reading.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

#[derive(Default, Clone, Copy)]
pub struct FxHasher {
    hash: u64,
}

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w) ^ ((rest.len() as u64) << 59));
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.hash
    }
}

pub type FxBuildHasher = BuildHasherDefault<FxHasher>;
pub type FxHashMap<K, V> = HashMap<K, V, FxBuildHasher>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_ids_spread() {
        use std::hash::BuildHasher;
        let b = FxBuildHasher::default();
        let hashes: std::collections::HashSet<u64> = (0..10_000)
            .map(|i| b.hash_one(format!("b827eb1dcccc-temperature-{i}")))
            .collect();
        assert_eq!(hashes.len(), 10_000);
        let mut m: FxHashMap<String, usize> = FxHashMap::default();
        m.insert("a".into(), 1);
        assert_eq!(m.get("a"), Some(&1));
        assert_eq!(m.get("b"), None);
    }

    #[test]
    fn integer_keys_take_one_round_each_and_spread() {
        use std::hash::BuildHasher;
        let b = FxBuildHasher::default();
        // A u64 (and an i64, hashed as one) is the same word as its bytes.
        let mut h = FxHasher::default();
        h.write(&0x0102_0304_0506_0708u64.to_le_bytes());
        assert_eq!(b.hash_one(0x0102_0304_0506_0708u64), h.finish());
        assert_eq!(b.hash_one(-1i64), b.hash_one(u64::MAX));
        let ids: std::collections::HashSet<u64> = (0..100_000i64).map(|i| b.hash_one(i)).collect();
        assert_eq!(ids.len(), 100_000);
        let mut m: FxHashMap<i64, &str> = FxHashMap::default();
        m.insert(7, "seven");
        m.insert(-7, "minus seven");
        assert_eq!((m[&7], m[&-7]), ("seven", "minus seven"));
    }
}
