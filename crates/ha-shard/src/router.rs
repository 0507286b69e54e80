//! Key → shard routing under hash partitioning.
//!
//! A key's shard is `jump_hash(xxh64(key), N)` ([`ha_ring::jump`] over the
//! pinned [`HashFn`]). Hashing spreads hot prefixes (`/registry/pods/…`)
//! over every shard, keeps shards equal in size without splitting or
//! merging, and needs no per-range metadata — the right trade for a
//! coordination store whose keys are small and whose shard count is fixed at
//! creation. The price: key order is not shard order, so a **range or
//! prefix read must ask every shard** (scatter-gather) and merge; only a
//! range that can hold a single key goes to one shard. [`Router::shards_for_range`]
//! says which shards to ask, each exactly once.

use std::ops::Range;

use ha_core::GroupId;
use ha_ring::RingError;
use ha_ring::hash::HashFn;
use ha_ring::jump;

use crate::map::{FIRST_SHARD, MAX_SHARDS, ShardMap};

/// A set of keys to read, as the client API describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRange<'a> {
    /// Exactly one key.
    Key(&'a [u8]),
    /// Keys `k` with `start <= k < end` (byte order).
    Range {
        /// First key (inclusive).
        start: &'a [u8],
        /// End (exclusive).
        end: &'a [u8],
    },
    /// Every key `>= start`.
    From(&'a [u8]),
}

impl<'a> KeyRange<'a> {
    /// The etcd v3 convention: an empty `range_end` means the single key
    /// `key`; `range_end == [0]` means every key `>= key`; otherwise
    /// `[key, range_end)`.
    pub fn from_etcd(key: &'a [u8], range_end: &'a [u8]) -> Self {
        match range_end {
            [] => KeyRange::Key(key),
            [0] => KeyRange::From(key),
            end => KeyRange::Range { start: key, end },
        }
    }

    /// Whether `key` is in the range.
    pub fn contains(&self, key: &[u8]) -> bool {
        match *self {
            KeyRange::Key(k) => key == k,
            KeyRange::Range { start, end } => start <= key && key < end,
            KeyRange::From(start) => start <= key,
        }
    }
}

/// The shards to ask, ascending, each once (an [`ExactSizeIterator`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shards {
    ids: Range<u64>,
}

impl Iterator for Shards {
    type Item = GroupId;
    fn next(&mut self) -> Option<GroupId> {
        self.ids.next().map(GroupId)
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        self.ids.size_hint()
    }
}

impl ExactSizeIterator for Shards {}

/// Keys of one request that live on different shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "the request spans shards {first:?} and {second:?}; cross-shard transactions are not supported"
)]
pub struct CrossShard {
    /// Shard of the first key.
    pub first: GroupId,
    /// Shard of the first key elsewhere.
    pub second: GroupId,
}

/// Key → shard and range → shards for one shard map. Cheap to copy; the
/// answer depends only on the pinned hash and the shard count, so it is the
/// same on every member, after every restart, for the life of the cluster.
///
/// ```
/// use ha_shard::router::{KeyRange, Router};
/// use ha_ring::hash::HashFn;
/// let r = Router::new(HashFn::V1, 16)?;
/// let g = r.shard_for_key(b"/config/a");
/// assert_eq!(r.shards_for_range(KeyRange::Key(b"/config/a")).collect::<Vec<_>>(), [g]);
/// // A prefix read asks every shard once.
/// let prefix = KeyRange::Range { start: b"/config/", end: b"/config0" };
/// assert_eq!(r.shards_for_range(prefix).len(), 16);
/// # Ok::<(), ha_ring::RingError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Router {
    hash: HashFn,
    count: u32,
}

impl Router {
    /// A router over `shards` shards (ids `FIRST_SHARD..`). Errors: `shards`
    /// outside `1..=MAX_SHARDS`.
    pub fn new(hash: HashFn, shards: u32) -> Result<Self, RingError> {
        if shards > MAX_SHARDS {
            return Err(RingError::LimitExceeded {
                what: "shards",
                value: u64::from(shards),
                max: u64::from(MAX_SHARDS),
            });
        }
        // Same validation as ha-ring's key → shard map (count >= 1).
        jump::ShardMap::new(hash, FIRST_SHARD, shards)?;
        Ok(Self {
            hash,
            count: shards,
        })
    }

    /// The router of a (validated) shard map.
    pub fn from_map(map: &ShardMap) -> Self {
        // A ShardMap always holds 1..=MAX_SHARDS shards.
        Self {
            hash: map.hash_fn(),
            count: map.shard_count(),
        }
    }

    /// Number of shards.
    pub fn shard_count(&self) -> u32 {
        self.count
    }

    /// The shard owning `key`.
    pub fn shard_for_key(&self, key: &[u8]) -> GroupId {
        GroupId(FIRST_SHARD + u64::from(jump::jump_hash(self.hash.hash_bytes(key), self.count)))
    }

    /// Every shard, ascending.
    pub fn all_shards(&self) -> Shards {
        Shards {
            ids: FIRST_SHARD..FIRST_SHARD + u64::from(self.count),
        }
    }

    /// The shards that may hold keys of `range`, each once, ascending: one
    /// shard for a single key (or a range that can only hold one key,
    /// `[k, k ‖ 0x00)`), none for an empty range, every shard otherwise.
    pub fn shards_for_range(&self, range: KeyRange<'_>) -> Shards {
        let one = |key: &[u8]| {
            let g = self.shard_for_key(key).0;
            Shards { ids: g..g + 1 }
        };
        match range {
            KeyRange::Key(k) => one(k),
            KeyRange::Range { start, end } if end <= start => Shards {
                ids: FIRST_SHARD..FIRST_SHARD,
            },
            KeyRange::Range { start, end }
                if end.len() == start.len() + 1
                    && end.starts_with(start)
                    && end.ends_with(&[0]) =>
            {
                one(start)
            }
            KeyRange::Range { .. } | KeyRange::From(_) => self.all_shards(),
        }
    }

    /// The one shard all `keys` live on (`None` for no keys), or
    /// [`CrossShard`] naming two shards involved — what a transaction
    /// router checks before accepting a multi-key request.
    pub fn shard_for_keys<'k>(
        &self,
        keys: impl IntoIterator<Item = &'k [u8]>,
    ) -> Result<Option<GroupId>, CrossShard> {
        let mut found: Option<GroupId> = None;
        for k in keys {
            let g = self.shard_for_key(k);
            match found {
                None => found = Some(g),
                Some(first) if first != g => {
                    return Err(CrossShard { first, second: g });
                }
                Some(_) => {}
            }
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_ranges_and_edge_cases() {
        let r = Router::new(HashFn::V1, 8).unwrap();
        assert_eq!(KeyRange::from_etcd(b"a", b""), KeyRange::Key(b"a"));
        assert_eq!(KeyRange::from_etcd(b"a", b"\0"), KeyRange::From(b"a"));
        assert_eq!(
            r.shards_for_range(KeyRange::from_etcd(b"a", b"\0")).len(),
            8
        );
        assert_eq!(r.shards_for_range(KeyRange::from_etcd(b"b", b"a")).len(), 0);
        assert_eq!(r.shards_for_range(KeyRange::from_etcd(b"a", b"a")).len(), 0);
        let single: Vec<GroupId> = r
            .shards_for_range(KeyRange::from_etcd(b"a", b"a\0"))
            .collect();
        assert_eq!(single, [r.shard_for_key(b"a")]);
        assert_eq!(
            r.shards_for_range(KeyRange::from_etcd(b"a", b"a\0\0"))
                .len(),
            8
        );
        assert!(Router::new(HashFn::V1, 0).is_err());
        assert!(Router::new(HashFn::V1, MAX_SHARDS + 1).is_err());
    }

    #[test]
    fn cross_shard_keys_are_reported() {
        let r = Router::new(HashFn::V1, 16).unwrap();
        assert_eq!(r.shard_for_keys([]), Ok(None));
        let a: &[u8] = b"k1";
        assert_eq!(r.shard_for_keys([a, a]), Ok(Some(r.shard_for_key(a))));
        let other = (0..1000u32)
            .map(|i| format!("k{i}").into_bytes())
            .find(|k| r.shard_for_key(k) != r.shard_for_key(a))
            .unwrap();
        let err = r.shard_for_keys([a, &other[..]]).unwrap_err();
        assert_eq!(err.first, r.shard_for_key(a));
        assert_eq!(err.second, r.shard_for_key(&other));
    }
}
