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
