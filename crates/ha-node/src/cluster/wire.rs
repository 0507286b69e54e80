//! Requests a member sends to the leader over the transport's request path
//! (writes and membership changes made on a follower), as codec frames.

use bytes::Bytes;
use ha_core::codec::{self, CodecError};
use serde::{Deserialize, Serialize};

use super::machine::Member;

/// What a member asks the leader to do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerRequest {
    /// Propose this entry payload (already tagged, see
    /// [`machine`](super::machine)) and answer with the state machine's
    /// response.
    Propose(Bytes),
    /// Add a member.
    MemberAdd {
        /// Its peer URLs.
        peer_urls: Vec<String>,
        /// Whether it joins as a learner.
        is_learner: bool,
    },
    /// Remove a member.
    MemberRemove {
        /// Its id.
        id: u64,
    },
    /// Promote a learner.
    MemberPromote {
        /// Its id.
        id: u64,
    },
    /// Sent by the leader to a learner it is asked to promote: how far has
    /// it applied the log? Served locally, never forwarded.
    Progress,
    /// A read of a data shard the sender does not host, served by a member
    /// that hosts it (any replica: linearizable through its read barrier,
    /// or serializable on its applied state) through the node's read hook;
    /// answered with [`PeerResponse::Applied`] holding the hook's bytes.
    Read {
        /// Whether to pass a read barrier first.
        linearizable: bool,
        /// The query, as the read hook decodes it.
        query: Bytes,
    },
    /// Propose each of these entry payloads (as [`PeerRequest::Propose`],
    /// concurrently) and answer [`PeerResponse::Batch`] with each one's
    /// result, in order. Refused as a whole (`Invalid`, nothing applied)
    /// beyond [`MAX_BATCH_ITEMS`](super::batch::MAX_BATCH_ITEMS) entries or
    /// [`MAX_BATCH_BYTES`](super::batch::MAX_BATCH_BYTES) bytes.
    ProposeBatch(Vec<Bytes>),
    /// A placement step on a data shard's own group, sent by the placement
    /// controller to the shard's leader (see [`super::hosting`]):
    /// idempotent — a change whose effect is present answers
    /// [`PeerResponse::ShardChanged`] without doing anything.
    ShardChange {
        /// What to change.
        kind: ShardChangeKind,
        /// The member it concerns.
        member: u64,
    },
}

/// The kinds of [`PeerRequest::ShardChange`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShardChangeKind {
    /// Add `member` as a non-voting learner.
    AddLearner,
    /// Make the learner `member` a voter (refused while it lags).
    Promote,
    /// Remove `member` (voter or learner).
    Remove,
    /// Hand the shard's leadership to the voter `member`.
    TransferLeader,
}

/// The leader's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerResponse {
    /// The state machine's response to a proposal.
    Applied(Bytes),
    /// A membership change was applied: the member concerned (for adds) and
    /// the table after it.
    Members {
        /// The added member.
        added: Option<Member>,
        /// All members.
        members: Vec<Member>,
    },
    /// Refused or failed.
    Error(WireError),
    /// The answer to [`PeerRequest::Progress`].
    Progress {
        /// The highest log index this member has applied.
        applied_index: u64,
    },
    /// The answer to [`PeerRequest::ProposeBatch`]: one result per entry,
    /// in the order of the request.
    Batch(Vec<BatchItem>),
    /// The answer to [`PeerRequest::ShardChange`]: the change is in effect.
    ShardChanged,
}

/// One entry's result in a [`PeerResponse::Batch`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BatchItem {
    /// The state machine's response to the entry.
    Applied(Bytes),
    /// The entry was refused or failed (as [`PeerResponse::Error`] for a
    /// single proposal).
    Error(WireError),
}

/// An error as it travels between members.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireError {
    /// The receiver is not the leader (nothing was done); leader hint.
    NotLeader(Option<u64>),
    /// A limit was reached (nothing was done).
    Busy(String),
    /// No leader or the cluster cannot make progress.
    Unavailable(String),
    /// The request may or may not have been applied.
    OutcomeUnknown(String),
    /// The request is invalid (nothing was done).
    Invalid(String),
    /// No such member.
    MemberNotFound(u64),
    /// A learner cannot be promoted yet: it is behind the leader or
    /// unreachable (nothing was done).
    LearnerNotReady(String),
    /// The sender's id belongs to a removed member (refused).
    Removed(u64),
}

/// How the answer to a request the receiver could not decode begins.
const UNDECODABLE_REQUEST: &str = "undecodable request: ";

/// What a member answers a request it cannot decode (nothing was done).
/// A member of a build from before [`PeerRequest::ProposeBatch`] answers
/// this to a batch too: the text must stay as it is so that
/// [`WireError::is_undecodable_request`] recognises those members.
pub fn undecodable_request(e: &CodecError) -> WireError {
    WireError::Invalid(format!("{UNDECODABLE_REQUEST}{e}"))
}

impl WireError {
    /// Whether this is the answer to a request the receiver could not
    /// decode ([`undecodable_request`]): nothing was done. To a
    /// [`PeerRequest::ProposeBatch`] it means the receiver runs a build
    /// that does not know batches.
    pub fn is_undecodable_request(&self) -> bool {
        matches!(self, WireError::Invalid(m) if m.starts_with(UNDECODABLE_REQUEST))
    }
}

impl PeerRequest {
    /// Encodes as a codec frame.
    pub fn encode(&self) -> Bytes {
        codec::encode(self).into()
    }
    /// Decodes a codec frame.
    pub fn decode(b: &[u8]) -> Result<Self, CodecError> {
        codec::decode(b)
    }
}

impl PeerResponse {
    /// Encodes as a codec frame.
    pub fn encode(&self) -> Bytes {
        codec::encode(self).into()
    }
    /// Decodes a codec frame.
    pub fn decode(b: &[u8]) -> Result<Self, CodecError> {
        codec::decode(b)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// [`PeerRequest`] as a build from before batching knew it (same
    /// variants, same order): decodes what such a member decodes.
    #[derive(Debug, Serialize, Deserialize)]
    pub(crate) enum PeerRequestBeforeBatches {
        Propose(Bytes),
        MemberAdd {
            peer_urls: Vec<String>,
            is_learner: bool,
        },
        MemberRemove {
            id: u64,
        },
        MemberPromote {
            id: u64,
        },
        Progress,
        Read {
            linearizable: bool,
            query: Bytes,
        },
    }

    impl PeerRequestBeforeBatches {
        /// Decodes `b` as such a member does, as today's request.
        pub(crate) fn decode(b: &[u8]) -> Result<PeerRequest, CodecError> {
            Ok(match codec::decode::<Self>(b)? {
                Self::Propose(e) => PeerRequest::Propose(e),
                Self::MemberAdd {
                    peer_urls,
                    is_learner,
                } => PeerRequest::MemberAdd {
                    peer_urls,
                    is_learner,
                },
                Self::MemberRemove { id } => PeerRequest::MemberRemove { id },
                Self::MemberPromote { id } => PeerRequest::MemberPromote { id },
                Self::Progress => PeerRequest::Progress,
                Self::Read {
                    linearizable,
                    query,
                } => PeerRequest::Read {
                    linearizable,
                    query,
                },
            })
        }
    }

    #[test]
    fn a_member_before_batches_answers_a_batch_undecodable_and_that_is_recognised() {
        let old =
            PeerRequestBeforeBatches::decode(&PeerRequest::Propose(Bytes::from("x")).encode());
        assert_eq!(
            old,
            Ok(PeerRequest::Propose(Bytes::from("x"))),
            "old variants still decode"
        );
        let batch = PeerRequest::ProposeBatch(vec![Bytes::from("a"), Bytes::from("b")]).encode();
        let Err(e) = PeerRequestBeforeBatches::decode(&batch) else {
            panic!("a build before batches cannot decode a batch");
        };
        // Exactly what such a build answered (its serve_requests).
        let answered = WireError::Invalid(format!("undecodable request: {e}"));
        assert_eq!(undecodable_request(&e), answered, "the text is unchanged");
        let answered = PeerResponse::decode(&PeerResponse::Error(answered).encode());
        assert!(matches!(answered, Ok(PeerResponse::Error(ref w)) if w.is_undecodable_request()));
        // Other refusals are not taken for it.
        for other in [
            WireError::Invalid(
                "a forwarded batch holds 300 entries; at most 256 are accepted".into(),
            ),
            WireError::NotLeader(None),
            WireError::Busy("undecodable request: no".into()),
        ] {
            assert!(!other.is_undecodable_request(), "{other:?}");
        }
    }
}
