//! [`Solo`]: the [`Consensus`] of a group with exactly one voter.
//!
//! With one voter, the voter's own durable log *is* a quorum: an entry is
//! committed as soon as its own write is fsync'd. Solo is what a one-member
//! Raft group reduces to — no elections, no messages — and it is complete on
//! its own: it lets the [`Replica`](crate::replica::Replica) driver run a
//! durable, group-committed log before (or without) a multi-node protocol.
//!
//! Behaviour:
//!
//! - It leads term `saved term + 1` from the moment it is built (term 1 on a
//!   fresh store); the first Ready persists that hard state, together with
//!   any entries proposed by then.
//! - [`propose`](Consensus::propose) appends at the next index. Entries go
//!   out in the next Ready; proposals made while a Ready is being persisted
//!   accumulate, so they share the next fsync (group commit).
//! - [`advance`](Consensus::advance) of a Ready that carried entries commits
//!   them. The next Ready then carries *only* the newly committed entries and
//!   the reads that became safe — never new entries — so the driver applies
//!   them without waiting for another fsync; the entries accumulated
//!   meanwhile follow in the Ready after. One Ready carries at most
//!   [`SoloConfig::max_committed_per_ready`] committed entries.
//! - [`read_index`](Consensus::read_index) answers with the index of the last
//!   entry proposed before the call, once that entry is committed.
//! - On recovery every stored entry is committed (it is durable on the only
//!   voter) and is handed out again for the state machine to replay
//!   (state machines ignore entries at or below their last applied index).
//!   The saved `commit` is therefore not needed and Solo does not rewrite
//!   the hard state to advance it.
//! - [`snapshot_built`](Consensus::snapshot_built) lets the next Ready purge
//!   the log up to the snapshot. Only a durable state machine should build
//!   snapshots: after the purge, the log can no longer rebuild its state.
//! - Membership changes that would add a member and leader transfers are
//!   refused with [`ProposeError::Invalid`]: Solo is single-voter; a group
//!   that needs more members runs `ha-raft`.
//!
//! Memory is bounded: Solo keeps only entries that were not yet handed out
//! as committed, at most [`SoloConfig::max_uncommitted_entries`].

use std::collections::VecDeque;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::consensus::{
    Consensus, MembershipChange, ProposeError, ReadCtx, ReadState, Ready, ReadyNumber, Recovered,
    Role, Status,
};
use crate::types::{
    Entry, EntryPayload, HardState, LogId, LogIndex, Membership, Millis, NodeId, SnapshotMeta, Term,
};

/// Solo has no peers, so it has no messages; this type has no values and
/// every inbound frame for a Solo group fails to decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SoloMessage {}

/// Limits of a [`Solo`] instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SoloConfig {
    /// This node. Must not be `NodeId(0)`.
    pub id: NodeId,
    /// Entries proposed but not yet handed out as committed; further
    /// proposals are refused with [`ProposeError::Overloaded`]. Default 65536.
    pub max_uncommitted_entries: usize,
    /// Read requests waiting for their index to commit; further reads are
    /// refused with [`ProposeError::Overloaded`]. Default 65536.
    pub max_pending_reads: usize,
    /// Most committed entries in one Ready (a restart replays the whole log
    /// in Readys of at most this many). Default 4096.
    pub max_committed_per_ready: usize,
}

impl SoloConfig {
    /// Defaults for node `id`.
    pub fn new(id: NodeId) -> Self {
        Self {
            id,
            max_uncommitted_entries: 65536,
            max_pending_reads: 65536,
            max_committed_per_ready: 4096,
        }
    }
}

/// Why a [`Solo`] could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SoloError {
    /// A configuration value is out of range.
    #[error("invalid Solo config: {0}")]
    Config(&'static str),
    /// The recovered log is not one Solo could have written.
    #[error("recovered state unusable by Solo: {0}")]
    Recovered(String),
}

const SINGLE_VOTER: &str = "Solo is single-voter; use ha-raft";

/// The single-voter consensus. See the [module docs](self).
#[derive(Debug)]
pub struct Solo {
    config: SoloConfig,
    term: Term,
    membership: Membership,
    /// Last entry covered by the latest snapshot (or before the first stored
    /// entry).
    snapshot: LogId,
    /// Entries after `emitted`, in index order, contiguous.
    entries: VecDeque<Entry>,
    /// Last index in the log.
    last: LogId,
    /// Last index handed to the driver to persist.
    sent_to_persist: LogIndex,
    /// Last index known durable.
    persisted: LogIndex,
    /// Last index handed out in `Ready::committed`.
    emitted: LogIndex,
    /// Last index the state machine reported applied.
    applied: LogIndex,
    /// Whether the hard state must be (re)written.
    hard_state_dirty: bool,
    /// Purge the store up to here in the next persisting Ready.
    purge_pending: Option<LogIndex>,
    /// Reads waiting for their index to be committed (ascending index).
    pending_reads: VecDeque<ReadState>,
    /// Ready number last handed out.
    ready_number: ReadyNumber,
    /// The Ready handed out and not advanced: its number and, if it carried
    /// a persist, the last entry index and whether it carried the hard state.
    in_flight: Option<InFlight>,
    now: Millis,
}

#[derive(Clone, Copy, Debug)]
struct InFlight {
    number: ReadyNumber,
    persists_to: Option<LogIndex>,
    wrote_hard_state: bool,
}

impl Solo {
    /// Builds the protocol from what the log store recovered.
    ///
    /// Fails if the recovered log has gaps or out-of-order entries, or names
    /// a configuration other than this node as the only voter.
    pub fn new(config: SoloConfig, recovered: Recovered) -> Result<Self, SoloError> {
        if config.id == NodeId(0) {
            return Err(SoloError::Config("id 0 is reserved"));
        }
        if config.max_uncommitted_entries == 0 {
            return Err(SoloError::Config("max_uncommitted_entries must be >= 1"));
        }
        if config.max_pending_reads == 0 {
            return Err(SoloError::Config("max_pending_reads must be >= 1"));
        }
        if config.max_committed_per_ready == 0 {
            return Err(SoloError::Config("max_committed_per_ready must be >= 1"));
        }
        let Recovered {
            hard_state,
            snapshot,
            entries,
        } = recovered;
        let mut membership = Membership::new([config.id]);
        let base = match (&snapshot, entries.first()) {
            (Some(meta), _) => {
                membership = meta.membership.clone();
                meta.last_log_id
            }
            // The log was purged without a recorded snapshot meta (or starts
            // at 1): everything before the first entry is covered elsewhere.
            (None, Some(first)) => LogId {
                term: first.term(),
                index: first.index().prev(),
            },
            (None, None) => LogId::default(),
        };
        let mut last = base;
        for e in &entries {
            if e.index() != last.index.next() {
                return Err(SoloError::Recovered(format!(
                    "entry {:?} does not follow {:?} (Solo never leaves gaps)",
                    e.log_id, last
                )));
            }
            if e.term() < last.term {
                return Err(SoloError::Recovered(format!(
                    "entry {:?} has a lower term than {:?}",
                    e.log_id, last
                )));
            }
            if let EntryPayload::Membership(m) = &e.payload {
                membership = Membership::clone(m);
            }
            last = e.log_id;
        }
        if membership.all_nodes().into_iter().collect::<Vec<_>>() != vec![config.id]
            || membership.is_joint()
        {
            return Err(SoloError::Recovered(format!(
                "membership {membership:?} is not {{{}}} alone",
                config.id
            )));
        }
        let prev_term = hard_state.term.max(last.term);
        let term = Term(prev_term.0.checked_add(1).ok_or_else(|| {
            SoloError::Recovered("saved term is u64::MAX; cannot start a new term".into())
        })?);
        Ok(Self {
            config,
            term,
            membership,
            snapshot: base,
            entries: entries.into(),
            last,
            sent_to_persist: last.index,
            persisted: last.index,
            emitted: base.index,
            applied: base.index,
            hard_state_dirty: true,
            purge_pending: None,
            pending_reads: VecDeque::new(),
            ready_number: 0,
            in_flight: None,
            now: 0,
        })
    }

    /// Index of the highest committed entry: every durable entry.
    fn commit(&self) -> LogIndex {
        self.persisted
    }

    fn append(&mut self, payload: EntryPayload) -> Result<LogId, ProposeError> {
        let uncommitted = self.last.index.0 - self.emitted.0;
        if uncommitted >= self.config.max_uncommitted_entries as u64 {
            return Err(ProposeError::Overloaded(format!(
                "{uncommitted} entries not yet committed (max_uncommitted_entries)"
            )));
        }
        let log_id = LogId {
            term: self.term,
            index: self.last.index.next(),
        };
        self.entries.push_back(Entry { log_id, payload });
        self.last = log_id;
        Ok(log_id)
    }

    fn take_safe_reads(&mut self) -> Vec<ReadState> {
        let commit = self.commit();
        let n = self
            .pending_reads
            .iter()
            .take_while(|r| r.index <= commit)
            .count();
        self.pending_reads.drain(..n).collect()
    }

    fn has_safe_reads(&self) -> bool {
        self.pending_reads
            .front()
            .is_some_and(|r| r.index <= self.commit())
    }

    fn has_committed_to_emit(&self) -> bool {
        self.commit() > self.emitted
    }

    fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: Some(self.config.id),
            commit: self.commit(),
        }
    }
}

impl Consensus for Solo {
    type Message = SoloMessage;

    fn id(&self) -> NodeId {
        self.config.id
    }

    fn tick(&mut self, now: Millis) {
        self.now = self.now.max(now);
    }

    fn step(&mut self, _from: NodeId, msg: SoloMessage) {
        match msg {}
    }

    fn propose(&mut self, data: Bytes) -> Result<LogId, ProposeError> {
        self.append(EntryPayload::Normal(data))
    }

    fn read_index(&mut self, ctx: ReadCtx) -> Result<(), ProposeError> {
        if self.pending_reads.len() >= self.config.max_pending_reads {
            return Err(ProposeError::Overloaded(format!(
                "{} reads pending (max_pending_reads)",
                self.pending_reads.len()
            )));
        }
        // Reads are answered in order of their index, which only grows.
        self.pending_reads.push_back(ReadState {
            ctx,
            index: self.last.index,
        });
        Ok(())
    }

    fn change_membership(&mut self, change: MembershipChange) -> Result<LogId, ProposeError> {
        let me = self.config.id;
        match change {
            MembershipChange::Replace(m) => {
                m.validate()
                    .map_err(|e| ProposeError::Invalid(e.to_string()))?;
                if m.is_joint() || m.all_nodes().into_iter().collect::<Vec<_>>() != vec![me] {
                    return Err(ProposeError::Invalid(SINGLE_VOTER.into()));
                }
                self.append(EntryPayload::Membership(Box::new(m)))
            }
            MembershipChange::Remove(n) if n == me => {
                Err(ProposeError::Invalid("cannot remove the only voter".into()))
            }
            MembershipChange::Remove(n) => Err(ProposeError::Invalid(format!(
                "{n} is not a member of this group"
            ))),
            MembershipChange::AddLearner(_)
            | MembershipChange::Promote(_)
            | MembershipChange::AddVoter(_) => Err(ProposeError::Invalid(SINGLE_VOTER.into())),
        }
    }

    fn transfer_leader(&mut self, to: NodeId) -> Result<(), ProposeError> {
        if to == self.config.id {
            return Ok(());
        }
        Err(ProposeError::Invalid(SINGLE_VOTER.into()))
    }

    fn has_ready(&self) -> bool {
        self.in_flight.is_none()
            && (self.has_committed_to_emit()
                || self.has_safe_reads()
                || self.last.index > self.sent_to_persist
                || self.hard_state_dirty
                || self.purge_pending.is_some())
    }

    fn ready(&mut self) -> Ready<SoloMessage> {
        self.ready_number += 1;
        let mut rd = Ready::empty(self.ready_number);
        if self.has_committed_to_emit() || self.has_safe_reads() {
            // Apply-only Ready: no fsync needed, so committed entries reach
            // the state machine without waiting behind the next write.
            let commit = self.commit();
            while let Some(e) = self.entries.front() {
                if e.index() > commit || rd.committed.len() >= self.config.max_committed_per_ready {
                    break;
                }
                if let Some(e) = self.entries.pop_front() {
                    self.emitted = e.index();
                    rd.committed.push(e);
                }
            }
            if rd.committed.is_empty() {
                // Nothing left in memory below `commit` (cannot happen while
                // the invariants hold); never hand out empty Readys forever.
                self.emitted = self.emitted.max(commit);
            }
            rd.reads = self.take_safe_reads();
            self.in_flight = Some(InFlight {
                number: rd.number,
                persists_to: None,
                wrote_hard_state: false,
            });
            return rd;
        }
        rd.entries = self
            .entries
            .iter()
            .filter(|e| e.index() > self.sent_to_persist)
            .cloned()
            .collect();
        if self.hard_state_dirty {
            rd.hard_state = Some(self.hard_state());
        }
        rd.purge_to = self.purge_pending.take();
        self.sent_to_persist = self.last.index;
        self.in_flight = Some(InFlight {
            number: rd.number,
            persists_to: Some(self.last.index),
            wrote_hard_state: rd.hard_state.is_some(),
        });
        rd
    }

    fn advance(&mut self, number: ReadyNumber) {
        let Some(f) = self.in_flight else { return };
        if f.number != number {
            return;
        }
        self.in_flight = None;
        if let Some(to) = f.persists_to {
            self.persisted = self.persisted.max(to);
        }
        if f.wrote_hard_state {
            self.hard_state_dirty = false;
        }
    }

    fn applied(&mut self, index: LogIndex) {
        self.applied = self.applied.max(index.min(self.emitted));
    }

    fn snapshot_built(&mut self, meta: SnapshotMeta) {
        let idx = meta.last_log_id.index;
        // Only a snapshot of applied, durable state may replace log entries.
        if idx <= self.snapshot.index || idx > self.applied || idx > self.persisted {
            return;
        }
        self.snapshot = meta.last_log_id;
        self.purge_pending = Some(self.purge_pending.map_or(idx, |p| p.max(idx)));
    }

    fn status(&self) -> Status {
        Status {
            id: self.config.id,
            role: Role::Leader,
            term: self.term,
            leader: Some(self.config.id),
            commit: self.commit(),
            last_index: self.last.index,
            membership: self.membership.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn solo() -> Solo {
        Solo::new(SoloConfig::new(NodeId(1)), Recovered::default()).unwrap()
    }

    fn data(i: u8) -> Bytes {
        Bytes::from(vec![i])
    }

    /// Carries a Ready out the way the driver would and returns it.
    fn step_ready(s: &mut Solo) -> Ready<SoloMessage> {
        assert!(s.has_ready());
        let rd = s.ready();
        assert!(!s.has_ready(), "one Ready at a time");
        s.advance(rd.number);
        rd
    }

    #[test]
    fn first_ready_persists_term_one_then_commits_after_advance() {
        let mut s = solo();
        let id = s.propose(data(1)).unwrap();
        assert_eq!(id, LogId::new(1, 1));
        let rd = s.ready();
        assert_eq!(
            rd.hard_state,
            Some(HardState {
                term: Term(1),
                vote: Some(NodeId(1)),
                commit: LogIndex(0)
            })
        );
        assert_eq!(rd.entries.len(), 1);
        assert!(rd.committed.is_empty(), "nothing commits before its fsync");
        assert_eq!(s.status().commit, LogIndex(0));
        s.advance(rd.number);
        assert_eq!(s.status().commit, LogIndex(1));
        let rd2 = step_ready(&mut s);
        assert!(!rd2.needs_persist(), "apply-only Ready needs no fsync");
        assert_eq!(rd2.committed.len(), 1);
        assert_eq!(rd2.committed[0].log_id, id);
        assert!(!s.has_ready());
    }

    #[test]
    fn proposals_during_a_persist_share_the_next_write() {
        let mut s = solo();
        s.propose(data(0)).unwrap();
        let rd1 = s.ready();
        for i in 1..=10 {
            s.propose(data(i)).unwrap();
        }
        assert!(!s.has_ready(), "no second Ready before advance");
        s.advance(rd1.number);
        let apply = step_ready(&mut s);
        assert_eq!(apply.committed.len(), 1);
        let rd3 = step_ready(&mut s);
        assert_eq!(rd3.entries.len(), 10, "ten proposals, one write");
        assert_eq!(rd3.hard_state, None, "term already durable");
        let apply2 = step_ready(&mut s);
        let idx: Vec<u64> = apply2.committed.iter().map(|e| e.index().0).collect();
        assert_eq!(idx, (2..=11).collect::<Vec<_>>());
    }

    #[test]
    fn unadvanced_or_wrong_number_commits_nothing() {
        let mut s = solo();
        s.propose(data(1)).unwrap();
        let rd = s.ready();
        s.advance(rd.number + 7);
        assert_eq!(s.status().commit, LogIndex(0));
        assert!(!s.has_ready());
        s.advance(rd.number);
        assert_eq!(s.status().commit, LogIndex(1));
    }

    #[test]
    fn read_waits_for_every_earlier_proposal() {
        let mut s = solo();
        let _ = step_ready(&mut s); // term
        s.read_index(7).unwrap();
        let rd = step_ready(&mut s);
        assert_eq!(
            rd.reads,
            vec![ReadState {
                ctx: 7,
                index: LogIndex(0)
            }]
        );
        s.propose(data(1)).unwrap();
        s.read_index(8).unwrap();
        let persist = s.ready();
        assert!(persist.reads.is_empty(), "index 1 is not durable yet");
        s.advance(persist.number);
        let rd = step_ready(&mut s);
        assert_eq!(
            rd.reads,
            vec![ReadState {
                ctx: 8,
                index: LogIndex(1)
            }]
        );
        assert_eq!(rd.committed.len(), 1);
    }

    #[test]
    fn limits_refuse_with_overloaded() {
        let mut cfg = SoloConfig::new(NodeId(1));
        cfg.max_uncommitted_entries = 2;
        cfg.max_pending_reads = 1;
        let mut s = Solo::new(cfg, Recovered::default()).unwrap();
        s.propose(data(1)).unwrap();
        s.propose(data(2)).unwrap();
        assert!(matches!(
            s.propose(data(3)),
            Err(ProposeError::Overloaded(_))
        ));
        assert_eq!(
            s.status().last_index,
            LogIndex(2),
            "refusal changes nothing"
        );
        s.read_index(1).unwrap();
        assert!(matches!(s.read_index(2), Err(ProposeError::Overloaded(_))));
        let _ = step_ready(&mut s);
        let _ = step_ready(&mut s);
        s.propose(data(3)).unwrap();
    }

    #[test]
    fn recovery_starts_a_new_term_and_replays_the_log() {
        let mut s = solo();
        for i in 0..3 {
            s.propose(data(i)).unwrap();
        }
        let rd = step_ready(&mut s);
        let rec = Recovered {
            hard_state: rd.hard_state.unwrap(),
            snapshot: None,
            entries: rd.entries.clone(),
        };
        let mut s2 = Solo::new(SoloConfig::new(NodeId(1)), rec).unwrap();
        let st = s2.status();
        assert_eq!(st.term, Term(2));
        assert_eq!(st.commit, LogIndex(3), "durable entries are committed");
        let replay = step_ready(&mut s2);
        assert_eq!(replay.committed, rd.entries);
        let next = s2.propose(data(9)).unwrap();
        assert_eq!(next, LogId::new(2, 4));
        let persist = step_ready(&mut s2);
        assert_eq!(persist.hard_state.map(|h| h.term), Some(Term(2)));
        assert_eq!(persist.entries.len(), 1);
    }

    #[test]
    fn replay_is_split_into_bounded_readys() {
        let entries: Vec<Entry> = (1..=10)
            .map(|i| Entry {
                log_id: LogId::new(1, i),
                payload: EntryPayload::Normal(data(i as u8)),
            })
            .collect();
        let rec = Recovered {
            entries: entries.clone(),
            ..Recovered::default()
        };
        let mut cfg = SoloConfig::new(NodeId(1));
        cfg.max_committed_per_ready = 4;
        let mut s = Solo::new(cfg, rec).unwrap();
        s.read_index(1).unwrap();
        let mut got = Vec::new();
        let mut sizes = Vec::new();
        let mut read_at = None;
        for _ in 0..10 {
            if !s.has_ready() {
                break;
            }
            let rd = step_ready(&mut s);
            sizes.push(rd.committed.len());
            if !rd.reads.is_empty() {
                read_at = Some(rd.reads[0].index);
            }
            got.extend(rd.committed);
        }
        assert_eq!(got, entries);
        assert_eq!(&sizes[..3], &[4, 4, 2]);
        assert_eq!(read_at, Some(LogIndex(10)));
    }

    #[test]
    fn recovery_after_snapshot_and_purge() {
        let entries: Vec<Entry> = (6..=8)
            .map(|i| Entry {
                log_id: LogId::new(3, i),
                payload: EntryPayload::Normal(data(i as u8)),
            })
            .collect();
        let rec = Recovered {
            hard_state: HardState {
                term: Term(3),
                vote: Some(NodeId(1)),
                commit: LogIndex(8),
            },
            snapshot: Some(SnapshotMeta {
                last_log_id: LogId::new(3, 5),
                membership: Membership::new([NodeId(1)]),
            }),
            entries: entries.clone(),
        };
        let mut s = Solo::new(SoloConfig::new(NodeId(1)), rec).unwrap();
        assert_eq!(step_ready(&mut s).committed, entries);
        assert_eq!(s.propose(data(0)).unwrap(), LogId::new(4, 9));
    }

    #[test]
    fn recovery_rejects_gaps_and_foreign_voters() {
        let e = |i| Entry {
            log_id: LogId::new(1, i),
            payload: EntryPayload::Blank,
        };
        let gap = Recovered {
            entries: vec![e(1), e(3)],
            ..Recovered::default()
        };
        assert!(matches!(
            Solo::new(SoloConfig::new(NodeId(1)), gap),
            Err(SoloError::Recovered(_))
        ));
        let foreign = Recovered {
            entries: vec![Entry {
                log_id: LogId::new(1, 1),
                payload: EntryPayload::Membership(Box::new(Membership::new([
                    NodeId(1),
                    NodeId(2),
                ]))),
            }],
            ..Recovered::default()
        };
        assert!(matches!(
            Solo::new(SoloConfig::new(NodeId(1)), foreign),
            Err(SoloError::Recovered(_))
        ));
        assert!(matches!(
            Solo::new(SoloConfig::new(NodeId(0)), Recovered::default()),
            Err(SoloError::Config(_))
        ));
        let max_term = Recovered {
            hard_state: HardState {
                term: Term(u64::MAX),
                ..HardState::default()
            },
            ..Recovered::default()
        };
        assert!(Solo::new(SoloConfig::new(NodeId(1)), max_term).is_err());
    }

    #[test]
    fn membership_changes_that_add_members_are_refused() {
        let mut s = solo();
        for change in [
            MembershipChange::AddVoter(NodeId(2)),
            MembershipChange::AddLearner(NodeId(2)),
            MembershipChange::Promote(NodeId(2)),
            MembershipChange::Replace(Membership::new([NodeId(1), NodeId(2)])),
            MembershipChange::Remove(NodeId(1)),
        ] {
            let err = s.change_membership(change.clone()).unwrap_err();
            assert!(matches!(err, ProposeError::Invalid(_)), "{change:?}");
        }
        assert_eq!(
            s.change_membership(MembershipChange::AddVoter(NodeId(2))),
            Err(ProposeError::Invalid(SINGLE_VOTER.into()))
        );
        assert_eq!(s.status().last_index, LogIndex(0));
        assert!(s.transfer_leader(NodeId(2)).is_err());
        let same = s
            .change_membership(MembershipChange::Replace(Membership::new([NodeId(1)])))
            .unwrap();
        assert_eq!(same, LogId::new(1, 1));
    }

    #[test]
    fn snapshot_built_purges_only_applied_durable_prefix() {
        let mut s = solo();
        for i in 0..5 {
            s.propose(data(i)).unwrap();
        }
        let _ = step_ready(&mut s);
        let meta = |i| SnapshotMeta {
            last_log_id: LogId::new(1, i),
            membership: Membership::new([NodeId(1)]),
        };
        s.snapshot_built(meta(3));
        assert!(s.has_ready());
        let apply = step_ready(&mut s);
        assert!(apply.purge_to.is_none(), "3 not applied yet: ignored");
        s.applied(LogIndex(5));
        s.snapshot_built(meta(3));
        let rd = step_ready(&mut s);
        assert_eq!(rd.purge_to, Some(LogIndex(3)));
        s.snapshot_built(meta(2));
        assert!(!s.has_ready(), "older snapshot ignored");
    }

    #[test]
    fn ready_numbers_increase_and_status_is_leader() {
        let mut s = solo();
        let a = step_ready(&mut s).number;
        s.propose(data(1)).unwrap();
        let b = step_ready(&mut s).number;
        assert!(b > a);
        let st = s.status();
        assert_eq!(st.role, Role::Leader);
        assert_eq!(st.leader, Some(NodeId(1)));
    }
}
