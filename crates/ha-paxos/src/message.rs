//! Ballots and the Multi-Paxos peer messages.
//!
//! A ballot is a [`Term`]: the round in the high 32 bits, the proposer's
//! node id in the low 32 bits, so ballots are totally ordered and no two
//! proposers ever use the same one. Every message carries the ballot it
//! belongs to; a receiver checks each message ([`Accept::check`],
//! [`Promise::check`]) and ignores what is stale or malformed.

use ha_core::consensus::ReadCtx;
use ha_core::{Entry, LogIndex, NodeId, SnapshotMeta, Term};
use serde::{Deserialize, Serialize};

/// Largest node id that can own a ballot (ids live in the low 32 bits).
pub const BALLOT_NODE_MAX: u64 = u32::MAX as u64;

/// The ballot `(round, node)`.
pub const fn ballot(round: u64, node: NodeId) -> Term {
    Term((round << 32) | (node.0 & BALLOT_NODE_MAX))
}

/// The round of a ballot.
pub const fn ballot_round(b: Term) -> u64 {
    b.0 >> 32
}

/// The proposer that owns a ballot (`NodeId(0)` for the zero ballot).
pub const fn ballot_node(b: Term) -> NodeId {
    NodeId(b.0 & BALLOT_NODE_MAX)
}

/// Phase 1a: "promise `ballot` and tell me what you accepted at slots
/// `from` and above". Also sent again with a higher `from` to fetch the
/// next chunk of a long answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prepare {
    /// The candidate's ballot.
    pub ballot: Term,
    /// First slot the candidate asks about (its commit point + 1, or where
    /// the previous chunk ended).
    pub from: LogIndex,
    /// Sent on a leader transfer: acceptors skip the stickiness check.
    pub transfer: bool,
}

/// Phase 1b: the acceptor promised `ballot` (durably) and reports the
/// entries it accepted at `from` and above, each stamped with the ballot it
/// was accepted in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Promise {
    /// The ballot promised.
    pub ballot: Term,
    /// Echo of the request's `from`.
    pub from: LogIndex,
    /// Accepted entries with slot `>= from`, ascending (gaps allowed).
    pub entries: Vec<Entry>,
    /// `Some(slot)`: the answer was cut at the message limit; ask again
    /// from `slot`.
    pub next: Option<LogIndex>,
    /// The acceptor's commit point.
    pub commit: LogIndex,
    /// The acceptor's snapshot index: slots at or below it are gone from
    /// its log (they are chosen). If `>= from`, the candidate is too far
    /// behind to learn them from this answer.
    pub log_start: LogIndex,
}

/// Why a message's shape is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// More entries than the receiver accepts.
    #[error("{count} entries exceed the limit of {max}")]
    TooManyEntries {
        /// Entries in the message.
        count: usize,
        /// Receiver's limit.
        max: usize,
    },
    /// Slots not strictly ascending (or not contiguous where required).
    #[error("slot {found:?} where {expected} was expected")]
    SlotOrder {
        /// The offending slot.
        found: LogIndex,
        /// What was expected.
        expected: &'static str,
    },
    /// An entry's ballot is wrong for the message.
    #[error("entry at {slot:?} has ballot {found:?}, message ballot {ballot:?}")]
    Ballot {
        /// Slot.
        slot: LogIndex,
        /// Ballot in the entry.
        found: Term,
        /// Ballot of the message.
        ballot: Term,
    },
    /// A chunk continuation that does not move forward.
    #[error("continuation {next:?} does not follow the last entry")]
    Continuation {
        /// The `next` field.
        next: LogIndex,
    },
}

impl Promise {
    /// Checks the shape: at most `max_entries`, slots strictly ascending
    /// from `from`, no slot 0, ballots not above the promised one, and a
    /// continuation past the last entry.
    pub fn check(&self, max_entries: usize) -> Result<(), Malformed> {
        if self.entries.len() > max_entries {
            return Err(Malformed::TooManyEntries {
                count: self.entries.len(),
                max: max_entries,
            });
        }
        let mut floor = self.from.max(LogIndex(1));
        for e in &self.entries {
            if e.index() < floor {
                return Err(Malformed::SlotOrder {
                    found: e.index(),
                    expected: "ascending slots at or after `from`",
                });
            }
            if e.term() > self.ballot {
                return Err(Malformed::Ballot {
                    slot: e.index(),
                    found: e.term(),
                    ballot: self.ballot,
                });
            }
            floor = e.index().next();
        }
        if let Some(n) = self.next
            && (n < floor || n <= self.from)
        {
            return Err(Malformed::Continuation { next: n });
        }
        Ok(())
    }
}

/// Phase 2a with the commit point piggybacked: "accept these contiguous
/// slots at `ballot`; everything up to `commit` is chosen". Without entries
/// it is the leader's heartbeat.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accept {
    /// The leader's ballot.
    pub ballot: Term,
    /// Contiguous ascending slots, each stamped with `ballot`.
    pub entries: Vec<Entry>,
    /// The leader's commit point.
    pub commit: LogIndex,
    /// The leader's heartbeat round; echoed back it confirms leadership for
    /// reads.
    pub round: u64,
}

impl Accept {
    /// Checks the shape: at most `max_entries`, contiguous slots from a
    /// slot above 0, each stamped with the message's ballot.
    pub fn check(&self, max_entries: usize) -> Result<(), Malformed> {
        if self.entries.len() > max_entries {
            return Err(Malformed::TooManyEntries {
                count: self.entries.len(),
                max: max_entries,
            });
        }
        let mut expect: Option<LogIndex> = None;
        for e in &self.entries {
            if e.index() == LogIndex(0) || expect.is_some_and(|x| x != e.index()) {
                return Err(Malformed::SlotOrder {
                    found: e.index(),
                    expected: "contiguous slots above 0",
                });
            }
            if e.term() != self.ballot {
                return Err(Malformed::Ballot {
                    slot: e.index(),
                    found: e.term(),
                    ballot: self.ballot,
                });
            }
            expect = Some(LogIndex(e.index().0.saturating_add(1)));
        }
        Ok(())
    }
}

/// Phase 2b (and heartbeat answer): what the acceptor holds durably in the
/// leader's ballot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accepted {
    /// The leader's ballot.
    pub ballot: Term,
    /// Every slot up to this one is either known chosen here or durably
    /// accepted in `ballot` (a cumulative acknowledgement: a lost or
    /// reordered answer is repaired by any later one).
    pub through: LogIndex,
    /// The acceptor's commit point.
    pub commit: LogIndex,
    /// Echo of the Accept's round.
    pub round: u64,
}

/// A Multi-Paxos peer message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Would-be candidate → acceptor: "would you promise this ballot?"
    /// Answering changes nothing. Only with a quorum of yes does the node
    /// run phase 1, so a node that cannot win (cut off, or behind the
    /// others' snapshots) never raises anyone's promise and never deposes a
    /// healthy leader.
    PrePrepare(Prepare),
    /// Acceptor → would-be candidate: the answer to a `PrePrepare`.
    PrePromise {
        /// The ballot asked about.
        ballot: Term,
        /// Whether the acceptor would promise it now: the ballot is above
        /// its promise, it has not heard from a live leader within the
        /// stickiness window, and the asker is not behind its snapshot.
        granted: bool,
        /// The acceptor's promised ballot (a refused asker picks its next
        /// ballot above it).
        promised: Term,
    },
    /// Candidate → acceptor: phase 1a.
    Prepare(Prepare),
    /// Acceptor → candidate: phase 1b.
    Promise(Promise),
    /// Acceptor → proposer: refused `ballot` because it promised
    /// `promised` (higher) or a live leader exists (stickiness).
    Nack {
        /// The refused ballot.
        ballot: Term,
        /// The acceptor's promised ballot.
        promised: Term,
    },
    /// Leader → member: phase 2a / heartbeat.
    Accept(Accept),
    /// Member → leader: phase 2b.
    Accepted(Accepted),
    /// Leader → member, delivered by the driver once the snapshot data is
    /// staged: install the snapshot described by `meta` (every slot up to
    /// its index is chosen).
    InstallSnapshot {
        /// Leader's ballot.
        ballot: Term,
        /// The snapshot.
        meta: SnapshotMeta,
    },
    /// Leader → transfer target: run phase 1 now.
    TimeoutNow {
        /// Leader's ballot.
        ballot: Term,
    },
    /// Follower → leader: a linearizable read request.
    ReadIndex {
        /// The follower's token.
        ctx: ReadCtx,
    },
    /// Leader → follower: the read may be served once `index` is applied.
    ReadIndexResponse {
        /// The follower's token.
        ctx: ReadCtx,
        /// Commit point confirmed by a quorum.
        index: LogIndex,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use ha_core::{EntryPayload, LogId};

    fn e(b: Term, slot: u64) -> Entry {
        Entry {
            log_id: LogId {
                term: b,
                index: LogIndex(slot),
            },
            payload: EntryPayload::Blank,
        }
    }

    #[test]
    fn ballots_order_by_round_then_node() {
        let a = ballot(3, NodeId(9));
        let b = ballot(4, NodeId(1));
        assert!(a < b);
        assert!(ballot(4, NodeId(1)) < ballot(4, NodeId(2)));
        assert_eq!(ballot_round(b), 4);
        assert_eq!(ballot_node(a), NodeId(9));
    }

    #[test]
    fn accept_check_rejects_gaps_wrong_ballots_and_floods() {
        let b = ballot(1, NodeId(1));
        let ok = Accept {
            ballot: b,
            entries: vec![e(b, 4), e(b, 5)],
            commit: LogIndex(3),
            round: 1,
        };
        assert_eq!(ok.check(10), Ok(()));
        let gap = Accept {
            entries: vec![e(b, 4), e(b, 6)],
            ..ok.clone()
        };
        assert!(matches!(gap.check(10), Err(Malformed::SlotOrder { .. })));
        let stale = Accept {
            entries: vec![e(Term(1), 4)],
            ..ok.clone()
        };
        assert!(matches!(stale.check(10), Err(Malformed::Ballot { .. })));
        assert!(matches!(ok.check(1), Err(Malformed::TooManyEntries { .. })));
        let zero = Accept {
            entries: vec![e(b, 0)],
            ..ok
        };
        assert!(zero.check(10).is_err());
    }

    #[test]
    fn promise_check_rejects_disorder_and_future_ballots() {
        let b = ballot(2, NodeId(1));
        let old = ballot(1, NodeId(3));
        let ok = Promise {
            ballot: b,
            from: LogIndex(5),
            entries: vec![e(old, 5), e(old, 9)],
            next: Some(LogIndex(10)),
            commit: LogIndex(4),
            log_start: LogIndex(0),
        };
        assert_eq!(ok.check(10), Ok(()));
        let below = Promise {
            entries: vec![e(old, 4)],
            ..ok.clone()
        };
        assert!(below.check(10).is_err());
        let future = Promise {
            entries: vec![e(ballot(3, NodeId(1)), 6)],
            ..ok.clone()
        };
        assert!(future.check(10).is_err());
        let stuck = Promise {
            next: Some(LogIndex(9)),
            ..ok
        };
        assert!(stuck.check(10).is_err());
    }
}
