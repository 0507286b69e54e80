//! Jump consistent hash (Lamping & Veach, 2014): a key → one of `n` buckets
//! with no memory, perfect balance in expectation and minimal movement when
//! buckets are added or removed **at the end**. The right tool for key →
//! shard, where shards are numbered `0..n` and only grow.

use ha_core::GroupId;

use crate::cluster::RingError;
use crate::hash::HashFn;

/// Most shards a [`ShardMap`] may address.
pub const MAX_SHARDS: u32 = 1 << 24;

/// The bucket in `0..buckets` for `key_hash`. Returns 0 when `buckets` is 0.
///
/// The arithmetic follows the published algorithm exactly (64-bit LCG
/// `key * 2862933555777941757 + 1`, then `(b + 1) * 2^31 / ((key >> 33) + 1)`
/// in IEEE double precision), so results match other faithful
/// implementations bit for bit.
///
/// ```
/// let b = ha_ring::jump::jump_hash(0xDEAD_BEEF, 10);
/// assert!(b < 10);
/// // Growing 10 → 11 buckets moves a key only onto the new bucket.
/// let b2 = ha_ring::jump::jump_hash(0xDEAD_BEEF, 11);
/// assert!(b2 == b || b2 == 10);
/// ```
#[inline]
pub fn jump_hash(key_hash: u64, buckets: u32) -> u32 {
    let mut key = key_hash;
    let mut b: i64 = -1;
    let mut j: i64 = 0;
    let n = i64::from(buckets);
    while j < n {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b.max(0) as u32
}

/// Key → shard: hashes a key with a pinned [`HashFn`] and jumps onto one of
/// `count` shards numbered `first, first + 1, …`.
///
/// ```
/// use ha_ring::jump::ShardMap;
/// use ha_ring::hash::HashFn;
/// let m = ShardMap::new(HashFn::V1, 1, 16)?;
/// let g = m.shard_for_key(b"/registry/pods/a");
/// assert!((1..=16).contains(&g.get()));
/// # Ok::<(), ha_ring::RingError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardMap {
    hash: HashFn,
    first: u64,
    count: u32,
}

impl ShardMap {
    /// `count` shards with group ids `first..first + count`.
    ///
    /// Errors: `count` is 0 or above [`MAX_SHARDS`], or the ids overflow.
    pub fn new(hash: HashFn, first: u64, count: u32) -> Result<Self, RingError> {
        if count == 0 {
            return Err(RingError::InvalidParameter(
                "shard count must be >= 1".into(),
            ));
        }
        if count > MAX_SHARDS {
            return Err(RingError::LimitExceeded {
                what: "shard count",
                value: u64::from(count),
                max: u64::from(MAX_SHARDS),
            });
        }
        if first.checked_add(u64::from(count)).is_none() {
            return Err(RingError::InvalidParameter("shard ids overflow u64".into()));
        }
        Ok(Self { hash, first, count })
    }

    /// The shard of a key.
    pub fn shard_for_key(&self, key: &[u8]) -> GroupId {
        self.shard_for_hash(self.hash.hash_bytes(key))
    }

    /// The shard of a pre-hashed key.
    #[inline]
    pub fn shard_for_hash(&self, key_hash: u64) -> GroupId {
        GroupId(self.first + u64::from(jump_hash(key_hash, self.count)))
    }

    /// All shard ids, ascending.
    pub fn shards(&self) -> impl Iterator<Item = GroupId> + '_ {
        (0..u64::from(self.count)).map(move |i| GroupId(self.first + i))
    }

    /// Number of shards.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// The key hash in use.
    pub fn hash_fn(&self) -> HashFn {
        self.hash
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::fmix64;

    #[test]
    fn edge_cases() {
        assert_eq!(jump_hash(123, 0), 0);
        assert_eq!(jump_hash(123, 1), 0);
        assert!(ShardMap::new(HashFn::V1, 0, 0).is_err());
        assert!(ShardMap::new(HashFn::V1, 0, MAX_SHARDS + 1).is_err());
        assert!(ShardMap::new(HashFn::V1, u64::MAX, 1).is_err());
    }

    #[test]
    fn growth_moves_only_onto_new_bucket_and_balances() {
        let mut counts = [0u32; 10];
        for i in 0..100_000u64 {
            let h = fmix64(i);
            let a = jump_hash(h, 10);
            counts[a as usize] += 1;
            let b = jump_hash(h, 11);
            assert!(b == a || b == 10);
        }
        for c in counts {
            assert!((9_500..=10_500).contains(&c), "{c}");
        }
    }
}
