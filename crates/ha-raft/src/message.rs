//! The Raft peer messages.
//!
//! Every message that can change a receiver's term carries the sender's
//! term. Messages arrive through an unreliable transport: a receiver checks
//! each one ([`AppendRequest::check`]) and ignores what is stale or
//! malformed.

use ha_core::consensus::ReadCtx;
use ha_core::{Entry, LogId, LogIndex, SnapshotMeta, Term};
use serde::{Deserialize, Serialize};

/// A leader's AppendEntries: the entries after `prev` and the leader's
/// commit index. With no entries it still probes where the logs agree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendRequest {
    /// Leader's term.
    pub term: Term,
    /// Id of the entry just before `entries` in the leader's log.
    pub prev: LogId,
    /// Entries following `prev`, contiguous.
    pub entries: Vec<Entry>,
    /// Leader's commit index.
    pub commit: LogIndex,
    /// Leader's heartbeat round when sending; echoed back, it confirms
    /// leadership for reads and the lease.
    pub round: u64,
}

/// Why an [`AppendRequest`] is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MalformedAppend {
    /// More entries than the receiver accepts.
    #[error("{count} entries exceed the limit of {max}")]
    TooManyEntries {
        /// Entries in the message.
        count: usize,
        /// Receiver's limit.
        max: usize,
    },
    /// An entry's index is not the one after its predecessor.
    #[error("entry {found:?} where index {expected:?} was expected")]
    NotContiguous {
        /// Expected index.
        expected: LogIndex,
        /// Entry found.
        found: LogId,
    },
    /// Terms go down along the log, or exceed the leader's term.
    #[error(
        "entry {found:?} has a term out of order (previous term {prev:?}, leader term {leader:?})"
    )]
    TermOrder {
        /// Entry found.
        found: LogId,
        /// Term of the previous entry.
        prev: Term,
        /// The message's term.
        leader: Term,
    },
}

impl AppendRequest {
    /// Checks the structure: at most `max_entries` entries, contiguous after
    /// `prev`, terms non-decreasing and not above the leader's term.
    pub fn check(&self, max_entries: usize) -> Result<(), MalformedAppend> {
        if self.entries.len() > max_entries {
            return Err(MalformedAppend::TooManyEntries {
                count: self.entries.len(),
                max: max_entries,
            });
        }
        let mut prev = self.prev;
        if prev.term > self.term {
            return Err(MalformedAppend::TermOrder {
                found: prev,
                prev: prev.term,
                leader: self.term,
            });
        }
        for e in &self.entries {
            if e.index() != prev.index.next() {
                return Err(MalformedAppend::NotContiguous {
                    expected: prev.index.next(),
                    found: e.log_id,
                });
            }
            if e.term() < prev.term || e.term() > self.term {
                return Err(MalformedAppend::TermOrder {
                    found: e.log_id,
                    prev: prev.term,
                    leader: self.term,
                });
            }
            prev = e.log_id;
        }
        Ok(())
    }
}

/// Outcome of an [`AppendRequest`] (or of an installed snapshot).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AppendOutcome {
    /// The follower's log matches the leader's up to `match_index` and
    /// everything up to it is durable.
    Success {
        /// Highest index known to match.
        match_index: LogIndex,
    },
    /// The follower's log has no entry `rejected_prev` of the leader's
    /// term; `hint` is the follower's last entry at or below
    /// `rejected_prev` whose term is at most the leader's term there — the
    /// leader resumes from the last index where both could agree, skipping a
    /// whole conflicting term per round trip.
    Conflict {
        /// The `prev.index` of the rejected request.
        rejected_prev: LogIndex,
        /// Follower's best guess of the last agreeing entry.
        hint: LogId,
    },
}

/// A follower's answer to [`AppendRequest`] or [`Message::InstallSnapshot`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendResponse {
    /// Follower's term.
    pub term: Term,
    /// Echo of the request's round.
    pub round: u64,
    /// Result.
    pub outcome: AppendOutcome,
}

/// A (pre-)vote request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoteRequest {
    /// The term the candidate stands in (for a pre-vote: the term it would
    /// stand in; its own term is not raised yet).
    pub term: Term,
    /// Candidate's last log entry (election restriction).
    pub last: LogId,
    /// A pre-vote: answering changes nothing at the voter.
    pub pre_vote: bool,
    /// The election follows a leadership transfer: voters skip the
    /// leader-stickiness check.
    pub transfer: bool,
}

/// Answer to a [`VoteRequest`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoteResponse {
    /// The request's term when granted, else the voter's term.
    pub term: Term,
    /// Answers a pre-vote.
    pub pre_vote: bool,
    /// Vote granted.
    pub granted: bool,
}

/// A Raft peer message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Leader → follower: replicate entries.
    Append(AppendRequest),
    /// Follower → leader: result of an append or snapshot install.
    AppendResponse(AppendResponse),
    /// Candidate → voter.
    Vote(VoteRequest),
    /// Voter → candidate.
    VoteResponse(VoteResponse),
    /// Leader → follower: "still here", with the commit index the follower
    /// is known to be able to apply.
    Heartbeat {
        /// Leader's term.
        term: Term,
        /// `min(leader commit, follower's match index)`.
        commit: LogIndex,
        /// Leader's heartbeat round.
        round: u64,
    },
    /// Follower → leader: heartbeat acknowledgement (or, with a higher term,
    /// the news that the sender's leadership is stale).
    HeartbeatResponse {
        /// Follower's term.
        term: Term,
        /// Echo of the heartbeat's round.
        round: u64,
    },
    /// Leader → follower, delivered by the driver after the snapshot data
    /// is staged: install the snapshot described by `meta`.
    InstallSnapshot {
        /// Leader's term.
        term: Term,
        /// The snapshot.
        meta: SnapshotMeta,
    },
    /// Leader → transfer target: start an election now.
    TimeoutNow {
        /// Leader's term.
        term: Term,
    },
    /// Follower → leader: confirm a linearizable read for the follower.
    ReadIndex {
        /// The follower's read token.
        ctx: ReadCtx,
    },
    /// Leader → follower: the read `ctx` may be served once `index` is
    /// applied.
    ReadIndexResponse {
        /// The follower's read token.
        ctx: ReadCtx,
        /// Commit index the read must wait for.
        index: LogIndex,
    },
}

impl Message {
    /// The term that the message carries, if it takes part in term rules.
    pub fn term(&self) -> Option<Term> {
        match self {
            Message::Append(a) => Some(a.term),
            Message::AppendResponse(r) => Some(r.term),
            Message::Vote(v) => Some(v.term),
            Message::VoteResponse(v) => Some(v.term),
            Message::Heartbeat { term, .. }
            | Message::HeartbeatResponse { term, .. }
            | Message::InstallSnapshot { term, .. }
            | Message::TimeoutNow { term } => Some(*term),
            Message::ReadIndex { .. } | Message::ReadIndexResponse { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ha_core::EntryPayload;

    fn e(term: u64, index: u64) -> Entry {
        Entry {
            log_id: LogId::new(term, index),
            payload: EntryPayload::Blank,
        }
    }

    #[test]
    fn check_accepts_well_formed() {
        let a = AppendRequest {
            term: Term(3),
            prev: LogId::new(1, 4),
            entries: vec![e(1, 5), e(3, 6)],
            commit: LogIndex(4),
            round: 0,
        };
        assert_eq!(a.check(10), Ok(()));
    }

    #[test]
    fn check_rejects_malformed() {
        let mut a = AppendRequest {
            term: Term(3),
            prev: LogId::new(1, 4),
            entries: vec![e(1, 5), e(3, 7)],
            commit: LogIndex(4),
            round: 0,
        };
        assert!(matches!(
            a.check(10),
            Err(MalformedAppend::NotContiguous { .. })
        ));
        a.entries = vec![e(2, 5), e(1, 6)];
        assert!(matches!(
            a.check(10),
            Err(MalformedAppend::TermOrder { .. })
        ));
        a.entries = vec![e(4, 5)];
        assert!(matches!(
            a.check(10),
            Err(MalformedAppend::TermOrder { .. })
        ));
        a.entries = vec![e(1, 5), e(1, 6)];
        assert!(matches!(
            a.check(1),
            Err(MalformedAppend::TooManyEntries { .. })
        ));
        a.entries.clear();
        a.prev = LogId::new(9, 4);
        assert!(matches!(
            a.check(10),
            Err(MalformedAppend::TermOrder { .. })
        ));
    }

    #[test]
    fn messages_roundtrip_through_the_codec() {
        let m = Message::Append(AppendRequest {
            term: Term(2),
            prev: LogId::new(1, 1),
            entries: vec![e(2, 2)],
            commit: LogIndex(1),
            round: 7,
        });
        let bytes = ha_core::codec::encode(&m);
        assert_eq!(ha_core::codec::decode::<Message>(&bytes), Ok(m));
    }
}
