//! Member and cluster ids, derived with a pinned hash.
//!
//! - A **founding member** (listed in `--initial-cluster` of a new cluster)
//!   gets `member_id(token, name)`: every founder computes every founder's
//!   id without talking, and a founder keeps its id across restarts.
//! - A member **added later** through the membership API gets
//!   [`fresh_member_id`]`(cluster_id, peer_urls, log index, attempt)`,
//!   computed by the replicated member table when it applies the add (so
//!   every replica assigns the same id) and bumped by `attempt` until it
//!   collides with no current member and no removed one. An id is therefore
//!   never used twice in a cluster: a member removed and added back — with
//!   an empty data dir, i.e. with no memory of its votes and promises — is a
//!   *new* member, and the old id stays refused (see the member table's
//!   tombstones in `cluster::machine`).
//! - The **cluster id** is `cluster_id(token, initial_cluster)`.
//!
//! The hash is FNV-1a 64 over length-prefixed fields, finished with the
//! SplitMix64 mixer. It is part of the on-disk and on-wire contract (ids are
//! persisted and name certificates): never change it.

use ha_core::NodeId;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a 64 with each field prefixed by its length (so `("ab","c")` and
/// `("a","bc")` differ), then SplitMix64-finalised.
pub fn pinned_hash(domain: &str, fields: &[&[u8]]) -> u64 {
    let mut h = FNV_OFFSET;
    let mut eat = |bytes: &[u8]| {
        for b in (bytes.len() as u64).to_le_bytes().iter().chain(bytes) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(FNV_PRIME);
        }
    };
    eat(domain.as_bytes());
    for f in fields {
        eat(f);
    }
    splitmix64(h)
}

/// SplitMix64 finaliser (Steele, Lea, Flood 2014).
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Never 0 (reserved for "nobody").
fn non_zero(v: u64) -> u64 {
    if v == 0 { 1 } else { v }
}

/// Member ids are the low 32 bits of the hash (never 0): Multi-Paxos packs
/// the node id into the low half of a 64-bit ballot, and one id scheme
/// serves every protocol, so a cluster can switch `--consensus` without
/// renaming members. 32 bits keep collisions negligible for cluster sizes
/// (about n²/2³³: 1 in 10⁸ for 1,000 members).
pub const MEMBER_ID_MAX: u64 = u32::MAX as u64;

fn member_bits(h: u64) -> u64 {
    non_zero(h & MEMBER_ID_MAX)
}

/// Parses a member id as etcd prints it (hex, as `member add` and
/// `member list` show it): 1..=[`MEMBER_ID_MAX`].
pub fn parse_member_id(text: &str) -> Result<NodeId, String> {
    let t = text.trim();
    let t = t.strip_prefix("0x").unwrap_or(t);
    match u64::from_str_radix(t, 16) {
        Ok(v) if v != 0 && v <= MEMBER_ID_MAX => Ok(NodeId(v)),
        Ok(v) => Err(format!(
            "member id {v:x} is out of range 1..={MEMBER_ID_MAX:x}"
        )),
        Err(e) => Err(format!("member id {text:?} is not hex: {e}")),
    }
}

/// Id of a founding member named `name` in the cluster `token`.
pub fn member_id(token: &str, name: &str) -> NodeId {
    NodeId(member_bits(pinned_hash(
        "ha-member-v1",
        &[token.as_bytes(), name.as_bytes()],
    )))
}

/// Id of a member added at run time with `peer_urls` (order-insensitive)
/// by the `MemberAdd` entry at `log_index` of cluster `cluster_id`; the
/// member table calls it with `attempt` 0, 1, … until the id is unused.
pub fn fresh_member_id(
    cluster_id: u64,
    peer_urls: &[String],
    log_index: u64,
    attempt: u32,
) -> NodeId {
    let mut urls: Vec<&str> = peer_urls.iter().map(String::as_str).collect();
    urls.sort_unstable();
    urls.dedup();
    let joined = urls.join(",");
    NodeId(member_bits(pinned_hash(
        "ha-fresh-member-v1",
        &[
            &cluster_id.to_le_bytes(),
            joined.as_bytes(),
            &log_index.to_le_bytes(),
            &attempt.to_le_bytes(),
        ],
    )))
}

/// Id of the cluster founded by `token` with `members` (name, peer URLs);
/// order-insensitive.
pub fn cluster_id(token: &str, members: &[(String, Vec<String>)]) -> u64 {
    let mut lines: Vec<String> = members
        .iter()
        .map(|(name, urls)| {
            let mut urls = urls.clone();
            urls.sort_unstable();
            format!("{name}={}", urls.join(","))
        })
        .collect();
    lines.sort_unstable();
    let joined = lines.join("\n");
    non_zero(pinned_hash(
        "ha-cluster-v1",
        &[token.as_bytes(), joined.as_bytes()],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_pinned() {
        // These values are persisted in data dirs and certificates: a change
        // of the hash must fail this test.
        assert_eq!(
            pinned_hash("d", &[b"a"]),
            pinned_hash("d", &[b"a"]),
            "deterministic"
        );
        // Checked against an independent implementation of the documented hash.
        assert_eq!(member_id("ha-cluster", "node1").0, 0x00d6_d384);
        assert!(member_id("t", "a").0 <= MEMBER_ID_MAX);
        let url = vec!["https://10.0.0.1:2380".to_string()];
        assert!(fresh_member_id(9, &url, 5, 0).0 <= MEMBER_ID_MAX);
        assert_eq!(
            fresh_member_id(9, &url, 5, 0),
            fresh_member_id(9, &url, 5, 0)
        );
    }

    #[test]
    fn member_ids_parse_as_hex_in_range() {
        assert_eq!(parse_member_id("5a3c1b2e"), Ok(NodeId(0x5a3c_1b2e)));
        assert_eq!(parse_member_id("0xff"), Ok(NodeId(0xff)));
        for bad in ["", "0", "g1", "100000000", "-1"] {
            assert!(parse_member_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn fields_are_length_prefixed() {
        assert_ne!(
            pinned_hash("d", &[b"ab", b"c"]),
            pinned_hash("d", &[b"a", b"bc"])
        );
        assert_ne!(member_id("t", "a"), member_id("u", "a"));
    }

    #[test]
    fn fresh_ids_depend_on_cluster_entry_and_attempt() {
        let url = vec!["https://10.0.0.1:2380".to_string()];
        let base = fresh_member_id(9, &url, 5, 0);
        assert_ne!(base, fresh_member_id(10, &url, 5, 0), "cluster id");
        assert_ne!(base, fresh_member_id(9, &url, 6, 0), "log index");
        assert_ne!(base, fresh_member_id(9, &url, 5, 1), "attempt");
        let other = vec!["https://10.0.0.2:2380".to_string()];
        assert_ne!(base, fresh_member_id(9, &other, 5, 0), "peer URLs");
    }

    #[test]
    fn order_insensitive_where_documented() {
        let a = vec!["https://b:1".to_string(), "https://a:1".to_string()];
        let b = vec!["https://a:1".to_string(), "https://b:1".to_string()];
        assert_eq!(fresh_member_id(1, &a, 7, 0), fresh_member_id(1, &b, 7, 0));
        let m1 = vec![
            ("x".to_string(), vec!["u1".to_string()]),
            ("y".to_string(), vec!["u2".to_string()]),
        ];
        let mut m2 = m1.clone();
        m2.reverse();
        assert_eq!(cluster_id("t", &m1), cluster_id("t", &m2));
        assert_ne!(cluster_id("t", &m1), cluster_id("t2", &m1));
    }
}
