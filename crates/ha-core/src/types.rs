//! Identifiers, log entries, membership and persisted protocol state.
//!
//! Every type here is plain data: `Clone`, `Debug`, `Eq`, serde-serialisable
//! with the project codec ([`crate::codec`]).

use std::collections::BTreeSet;
use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(
            Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(pub u64);

        impl $name {
            /// The raw value.
            pub const fn get(self) -> u64 {
                self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{}"), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }

        impl From<u64> for $name {
            fn from(v: u64) -> Self {
                Self(v)
            }
        }
    };
}

id_type!(
    /// Identity of a cluster member. Never reused for a different machine.
    /// `NodeId(0)` is reserved to mean "nobody" in wire formats and is never a member.
    NodeId,
    "n"
);
id_type!(
    /// Identity of one consensus group (one replicated log). Group 0 is the
    /// metadata group when a node hosts many shards.
    GroupId,
    "g"
);
id_type!(
    /// A Raft term, or a Multi-Paxos ballot (the protocol crate defines how a
    /// ballot's round and proposer id pack into the 64 bits). Totally ordered.
    Term,
    "t"
);
id_type!(
    /// Position in a replicated log. Index 0 is before the first entry; the
    /// first real entry has index 1.
    LogIndex,
    "i"
);

impl LogIndex {
    /// The next index, saturating at `u64::MAX` (a log never gets there:
    /// it would take 2^64 entries; saturating keeps a hostile index from
    /// a peer or a corrupt store from panicking range arithmetic).
    pub const fn next(self) -> Self {
        Self(self.0.saturating_add(1))
    }
    /// The previous index, saturating at 0.
    pub const fn prev(self) -> Self {
        Self(self.0.saturating_sub(1))
    }
}

/// Milliseconds on a monotonic clock. The protocols never read a clock; the
/// driver (or the simulator's virtual clock) passes the time in.
pub type Millis = u64;

/// The identity of a log entry: the term (or ballot) that created it and its
/// index. By the log-matching property, two logs holding entries with the same
/// `LogId` agree on that entry and all before it.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LogId {
    /// Term or ballot of the leader that created the entry.
    pub term: Term,
    /// Position in the log.
    pub index: LogIndex,
}

impl LogId {
    /// Builds a `LogId`.
    pub const fn new(term: u64, index: u64) -> Self {
        Self {
            term: Term(term),
            index: LogIndex(index),
        }
    }
}

impl fmt::Debug for LogId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.term.0, self.index.0)
    }
}

/// What an entry carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryPayload {
    /// A no-op, appended by a new leader (Raft) or used to fill a gap (Paxos).
    Blank,
    /// An application command, opaque to the protocol.
    Normal(Bytes),
    /// A configuration change; takes effect as the protocol documents.
    ///
    /// Boxed: configurations are rare and three sets wide, while every
    /// entry is moved and cloned on the hot path; boxing keeps [`Entry`]
    /// small (the serialized form is the same as unboxed).
    Membership(Box<Membership>),
}

/// One entry of the replicated log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Where the entry sits and who created it.
    pub log_id: LogId,
    /// What it carries.
    pub payload: EntryPayload,
}

impl Entry {
    /// The entry's index.
    pub fn index(&self) -> LogIndex {
        self.log_id.index
    }
    /// The entry's term.
    pub fn term(&self) -> Term {
        self.log_id.term
    }
    /// Approximate in-memory and on-wire size, for byte limits.
    pub fn size_bytes(&self) -> usize {
        24 + match &self.payload {
            EntryPayload::Blank => 0,
            EntryPayload::Normal(b) => b.len(),
            EntryPayload::Membership(m) => 8 * (m.voters.len() + m.learners.len() + 2),
        }
    }
}

/// The members of a group.
///
/// A *joint* configuration (`voters_outgoing` is `Some`) needs a majority of
/// both `voters` and `voters_outgoing` for every decision; it is the
/// intermediate step of joint consensus. Learners receive the log and never
/// vote. A node is never both voter and learner.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// Voters of the (incoming) configuration.
    pub voters: BTreeSet<NodeId>,
    /// Voters of the outgoing configuration while joint; `None` otherwise.
    pub voters_outgoing: Option<BTreeSet<NodeId>>,
    /// Non-voting members that replicate the log.
    pub learners: BTreeSet<NodeId>,
}

/// Why a [`Membership`] is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {
    /// No voters at all.
    #[error("a configuration needs at least one voter")]
    NoVoters,
    /// A node listed as both voter and learner.
    #[error("node {0} cannot be both voter and learner")]
    VoterAndLearner(NodeId),
    /// The reserved id 0 used as a member.
    #[error("node id 0 is reserved")]
    ReservedId,
}

impl Membership {
    /// A plain configuration with the given voters and no learners.
    pub fn new(voters: impl IntoIterator<Item = NodeId>) -> Self {
        Self {
            voters: voters.into_iter().collect(),
            voters_outgoing: None,
            learners: BTreeSet::new(),
        }
    }

    /// Checks the structural rules.
    pub fn validate(&self) -> Result<(), MembershipError> {
        if self.voters.is_empty() {
            return Err(MembershipError::NoVoters);
        }
        if self
            .voters_outgoing
            .as_ref()
            .is_some_and(|out| out.is_empty())
        {
            return Err(MembershipError::NoVoters);
        }
        for n in self.all_nodes() {
            if n == NodeId(0) {
                return Err(MembershipError::ReservedId);
            }
        }
        for l in &self.learners {
            if self.is_voter(*l) {
                return Err(MembershipError::VoterAndLearner(*l));
            }
        }
        Ok(())
    }

    /// Whether this is a joint configuration.
    pub fn is_joint(&self) -> bool {
        self.voters_outgoing.is_some()
    }

    /// Whether `node` votes in either half of the configuration.
    pub fn is_voter(&self, node: NodeId) -> bool {
        self.voters.contains(&node)
            || self
                .voters_outgoing
                .as_ref()
                .is_some_and(|o| o.contains(&node))
    }

    /// Whether `node` is a learner.
    pub fn is_learner(&self, node: NodeId) -> bool {
        self.learners.contains(&node)
    }

    /// Every member (voters of both halves and learners), sorted, unique.
    pub fn all_nodes(&self) -> BTreeSet<NodeId> {
        let mut all = self.voters.clone();
        if let Some(o) = &self.voters_outgoing {
            all.extend(o.iter().copied());
        }
        all.extend(self.learners.iter().copied());
        all
    }

    /// Every voter of either half, sorted, unique.
    pub fn all_voters(&self) -> BTreeSet<NodeId> {
        let mut all = self.voters.clone();
        if let Some(o) = &self.voters_outgoing {
            all.extend(o.iter().copied());
        }
        all
    }

    /// Whether the nodes for which `granted` returns true form a quorum:
    /// a strict majority of `voters`, and of `voters_outgoing` when joint.
    pub fn is_quorum(&self, granted: impl Fn(NodeId) -> bool) -> bool {
        let majority = |set: &BTreeSet<NodeId>| {
            let yes = set.iter().filter(|n| granted(**n)).count();
            yes * 2 > set.len()
        };
        majority(&self.voters) && self.voters_outgoing.as_ref().is_none_or(majority)
    }

    /// The highest value that a quorum has reached, given each voter's value
    /// (missing voters count as `0`). Used for commit indexes.
    pub fn quorum_min(&self, value: impl Fn(NodeId) -> u64) -> u64 {
        let half = |set: &BTreeSet<NodeId>| {
            let mut vals: Vec<u64> = set.iter().map(|n| value(*n)).collect();
            vals.sort_unstable_by(|a, b| b.cmp(a));
            // the (majority)-th largest value is held by a majority
            vals.get(set.len() / 2).copied().unwrap_or(0)
        };
        let a = half(&self.voters);
        match &self.voters_outgoing {
            Some(o) => a.min(half(o)),
            None => a,
        }
    }
}

/// Protocol state that must be durable before any message that depends on it
/// is sent: the current term (or promised ballot), the vote of that term, and
/// the highest index known committed (an optimisation: lets a restarted node
/// apply without waiting for a leader).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardState {
    /// Current term / promised ballot.
    pub term: Term,
    /// Candidate voted for in `term`, if any (Raft); unused by Paxos.
    pub vote: Option<NodeId>,
    /// Highest index known committed.
    pub commit: LogIndex,
}

/// Describes a state-machine snapshot: it contains the effect of every entry
/// up to and including `last_log_id`, under `membership`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// Last entry whose effect the snapshot contains.
    pub last_log_id: LogId,
    /// Configuration in force at `last_log_id`.
    pub membership: Membership,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[u64]) -> BTreeSet<NodeId> {
        v.iter().copied().map(NodeId).collect()
    }

    #[test]
    fn entries_stay_small_on_the_hot_path() {
        // Every entry is cloned once per follower and once more to apply;
        // a configuration payload inline made an entry 96 bytes. The
        // payload is at most a `Bytes` (32) plus its tag; with the log id
        // that is 56 on 64-bit targets.
        assert!(
            std::mem::size_of::<Entry>() <= 56,
            "{}",
            std::mem::size_of::<Entry>()
        );
    }

    #[test]
    fn boxed_membership_encodes_like_an_inline_one() {
        let m = Membership::new([NodeId(1), NodeId(2)]);
        let boxed = crate::codec::encode(&EntryPayload::Membership(Box::new(m.clone())));
        #[derive(Serialize)]
        enum Inline {
            #[allow(dead_code)]
            Blank,
            #[allow(dead_code)]
            Normal(Bytes),
            Membership(Membership),
        }
        let inline = crate::codec::encode(&Inline::Membership(m));
        assert_eq!(boxed, inline);
    }

    #[test]
    fn quorum_needs_both_halves_when_joint() {
        let m = Membership {
            voters: ids(&[1, 2, 3]),
            voters_outgoing: Some(ids(&[3, 4, 5])),
            learners: BTreeSet::new(),
        };
        assert!(!m.is_quorum(|n| [1, 2].contains(&n.0)));
        assert!(m.is_quorum(|n| [1, 3, 4].contains(&n.0)));
        assert_eq!(
            m.quorum_min(|n| [0, 9, 8, 7, 1, 1][n.0 as usize]),
            1,
            "outgoing half {{3,4,5}} has values 7,1,1 -> majority reached 1"
        );
    }

    #[test]
    fn quorum_min_single_config() {
        let m = Membership::new([NodeId(1), NodeId(2), NodeId(3)]);
        assert_eq!(m.quorum_min(|n| [0, 5, 3, 9][n.0 as usize]), 5);
        let m2 = Membership::new([NodeId(1), NodeId(2), NodeId(3), NodeId(4)]);
        // 4 voters need 3: values 5,3,9,1 -> sorted desc 9,5,3,1 -> 3
        assert_eq!(m2.quorum_min(|n| [0, 5, 3, 9, 1][n.0 as usize]), 3);
    }

    #[test]
    fn next_saturates_instead_of_overflowing() {
        assert_eq!(LogIndex(u64::MAX).next(), LogIndex(u64::MAX));
        assert_eq!(LogIndex(7).next(), LogIndex(8));
        assert_eq!(LogIndex(0).prev(), LogIndex(0));
    }

    #[test]
    fn validate_rejects_bad_configs() {
        assert_eq!(
            Membership::default().validate(),
            Err(MembershipError::NoVoters)
        );
        let mut m = Membership::new([NodeId(1)]);
        m.learners.insert(NodeId(1));
        assert_eq!(
            m.validate(),
            Err(MembershipError::VoterAndLearner(NodeId(1)))
        );
        assert_eq!(
            Membership::new([NodeId(0)]).validate(),
            Err(MembershipError::ReservedId)
        );
    }
}
