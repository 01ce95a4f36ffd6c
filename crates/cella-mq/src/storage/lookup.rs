//! The in-memory index from message key and id hashes to commitlog offsets (rebuilt from
//! `index/lookup.idx` on open). It holds an entry per retained message, so it grows to
//! millions; it is kept in shards so that growing rehashes one shard at a time, a pause on
//! the writer of a sixty-fourth of what one map's rehash would cost.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

const SHARDS: usize = 64;

/// Offsets of the records carrying each key or id hash.
pub(crate) struct LookupIndex {
    shards: Vec<HashMap<u64, Offsets, BuildHasherDefault<AsIs>>>,
}

/// A hash's offsets, oldest first. Most hashes are message ids, carried by one record, so
/// one offset is kept inline rather than in a vector of its own.
enum Offsets {
    One(u64),
    Many(Vec<u64>),
}

impl Offsets {
    fn as_slice(&self) -> &[u64] {
        match self {
            Offsets::One(offset) => std::slice::from_ref(offset),
            Offsets::Many(offsets) => offsets,
        }
    }
}

/// The map's hasher: its keys are FNV hashes already, so hashing them again buys nothing.
#[derive(Default)]
struct AsIs(u64);

impl Hasher for AsIs {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used for `u64` keys; fold anything else in all the same.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, value: u64) {
        // FNV's low bits are its weakest; mixing spreads the high bits into them.
        self.0 = value.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(32);
    }
}

impl LookupIndex {
    /// An empty index.
    pub(crate) fn new() -> Self {
        LookupIndex {
            shards: (0..SHARDS).map(|_| HashMap::default()).collect(),
        }
    }

    fn shard(hash: u64) -> usize {
        // Fibonacci hashing: the top bits of the product depend on every bit of `hash`.
        (hash.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - SHARDS.trailing_zeros())) as usize
    }

    /// Records that the record at `offset` carries `hash`.
    pub(crate) fn add(&mut self, hash: u64, offset: u64) {
        let shard = &mut self.shards[Self::shard(hash)];
        match shard.get_mut(&hash) {
            None => {
                shard.insert(hash, Offsets::One(offset));
            }
            Some(Offsets::Many(offsets)) => offsets.push(offset),
            Some(one @ Offsets::One(_)) => {
                let first = one.as_slice()[0];
                *one = Offsets::Many(vec![first, offset]);
            }
        }
    }

    /// The offsets of the records carrying `hash`, oldest first.
    pub(crate) fn offsets(&self, hash: u64) -> Vec<u64> {
        self.shards[Self::shard(hash)]
            .get(&hash)
            .map(|offsets| offsets.as_slice().to_vec())
            .unwrap_or_default()
    }

    /// Forgets offsets before `start` (their segments were removed).
    pub(crate) fn forget_before(&mut self, start: u64) {
        for shard in &mut self.shards {
            shard.retain(|_, offsets| match offsets {
                Offsets::One(offset) => *offset >= start,
                Offsets::Many(many) => {
                    many.retain(|o| *o >= start);
                    !many.is_empty()
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_found_by_hash_in_order_and_forgotten_before_a_start() {
        let mut index = LookupIndex::new();
        for (hash, offset) in [(7, 10), (u64::MAX, 20), (7, 30), (1 << 63, 40)] {
            index.add(hash, offset);
        }
        assert_eq!(index.offsets(7), vec![10, 30]);
        assert_eq!(index.offsets(u64::MAX), vec![20]);
        assert_eq!(index.offsets(8), Vec::<u64>::new());
        index.forget_before(25);
        assert_eq!(index.offsets(7), vec![30]);
        assert_eq!(index.offsets(u64::MAX), Vec::<u64>::new());
        assert_eq!(index.offsets(1 << 63), vec![40]);
        assert!((0..1000u64).all(|h| LookupIndex::shard(h) < SHARDS));
    }
}
