//! [`Paxos`]: the Multi-Paxos state machine (proposer, acceptor and learner
//! in one node).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::mem;

use bytes::Bytes;
use ha_core::consensus::{
    Consensus, MembershipChange, Outbound, ProposeError, ReadCtx, ReadState, Ready, ReadyNumber,
    Recovered, Role, SnapshotSend, Status,
};
use ha_core::types::MembershipError;
use ha_core::{
    Entry, EntryPayload, HardState, LogId, LogIndex, Membership, Millis, NodeId, SnapshotMeta, Term,
};

use crate::config::{Config, ConfigError};
use crate::log::SlotLog;
use crate::message::{
    Accept, Accepted, BALLOT_NODE_MAX, Message, Prepare, Promise, ballot, ballot_node, ballot_round,
};
use crate::rng::SplitMix64;

/// How many heartbeat rounds' start times a leader remembers for the lease.
/// Older rounds are dropped first; a round that fell off only means the
/// lease is not extended by it.
pub const ROUND_HISTORY_MAX: usize = 1_024;

/// Why a [`Paxos`] node could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PaxosError {
    /// The configuration is invalid.
    #[error("invalid config: {0}")]
    Config(#[from] ConfigError),
    /// `NodeId(0)` is reserved, and ids above [`BALLOT_NODE_MAX`] do not fit
    /// in a ballot.
    #[error("node id {0} cannot own ballots (must be 1..={BALLOT_NODE_MAX})")]
    BadId(NodeId),
    /// The bootstrap membership is invalid.
    #[error("invalid membership: {0}")]
    Membership(#[from] MembershipError),
    /// What the log store returned cannot be this protocol's state.
    #[error("inconsistent recovered state: {0}")]
    Recovered(String),
}

/// A leader's view of one member.
#[derive(Clone, Debug)]
struct Peer {
    /// Next slot to send.
    next: LogIndex,
    /// Every slot up to here is durably accepted in our ballot or known
    /// chosen at the member.
    matched: LogIndex,
    /// The member's reported commit point.
    commit: LogIndex,
    /// Last slot of each Accept in flight, with its bytes.
    inflight: VecDeque<(LogIndex, usize)>,
    inflight_bytes: usize,
    /// When `matched` last moved (or the first Accept of an empty window
    /// went out).
    progress_at_ms: Millis,
    /// A snapshot send in progress: its index and when it was decided.
    snapshot: Option<(LogIndex, Millis)>,
    /// Highest heartbeat round acknowledged.
    acked_round: u64,
    /// Round of the last message sent.
    sent_round: u64,
    /// Heard from since the last quorum check.
    recent_active: bool,
}

impl Peer {
    fn new(next: LogIndex, matched: LogIndex, now_ms: Millis) -> Self {
        Self {
            next,
            matched,
            commit: LogIndex(0),
            inflight: VecDeque::new(),
            inflight_bytes: 0,
            progress_at_ms: now_ms,
            snapshot: None,
            acked_round: 0,
            sent_round: 0,
            recent_active: true,
        }
    }

    fn reset_to_matched(&mut self, now_ms: Millis) {
        self.next = self.matched.next();
        self.inflight.clear();
        self.inflight_bytes = 0;
        self.progress_at_ms = now_ms;
        self.snapshot = None;
    }
}

/// A phase 1 in progress.
#[derive(Clone, Debug)]
struct Campaign {
    ballot: Term,
    /// First slot asked about: our commit point + 1 when it started.
    from: LogIndex,
    transfer: bool,
    /// Acceptors asked.
    asked: BTreeSet<NodeId>,
    /// Acceptors whose whole answer arrived.
    complete: BTreeSet<NodeId>,
    /// Acceptors that refused (stickiness) without a higher ballot.
    refused: BTreeSet<NodeId>,
    /// Commit points reported by acceptors.
    commits: BTreeMap<NodeId, LogIndex>,
    /// Highest-ballot entry reported per slot (above `from - 1`).
    reported: BTreeMap<LogIndex, Entry>,
}

#[derive(Clone, Copy, Debug)]
struct PendingRead {
    origin: NodeId,
    ctx: ReadCtx,
    index: LogIndex,
    round: u64,
}

#[derive(Clone, Copy, Debug)]
struct Transfer {
    to: NodeId,
    deadline_ms: Millis,
}

#[derive(Clone, Copy, Debug)]
struct InFlightReady {
    number: ReadyNumber,
    /// As leader: every own slot up to here is durable once advanced.
    leader_last: LogIndex,
    /// The promised ballot this Ready makes durable.
    promised: Term,
}

/// Multi-Paxos as a deterministic, sans-IO state machine. See the
/// [crate docs](crate) for the model and the driving loop.
#[derive(Debug)]
pub struct Paxos {
    id: NodeId,
    cfg: Config,
    rng: SplitMix64,

    // Durable acceptor state (written through Readys).
    /// Highest ballot promised (and the ballot we lead or campaign in).
    promised: Term,
    /// Accepted entries above the snapshot, each stamped with the ballot it
    /// was accepted in. May have gaps above `commit`.
    log: SlotLog,
    /// Every slot at or below this is in the snapshot.
    log_start: LogIndex,
    /// Every slot up to here is known chosen and held (or in the snapshot).
    commit: LogIndex,

    // Membership.
    bootstrap: Membership,
    /// Configuration at `log_start`.
    base_membership: Membership,
    /// Configuration entries in the log, by slot.
    configs: BTreeMap<LogIndex, Membership>,
    snapshot: Option<SnapshotMeta>,

    // Volatile state of every role.
    role: Role,
    leader: Option<NodeId>,
    now_ms: Millis,
    started: bool,
    election_deadline_ms: Millis,
    sticky_until_ms: Millis,
    /// Cache for [`Self::accepted_through`]: (ballot, slot).
    run: (Term, LogIndex),
    durable_promised: Term,

    // Candidate state.
    campaign: Option<Campaign>,
    /// Pre-phase-1 round: the ballot asked about and the answers.
    pre: Option<(Term, BTreeMap<NodeId, bool>)>,
    /// Highest ballot heard of (promised by someone); our next ballot goes
    /// above it.
    max_ballot_seen: Term,

    // Leader state.
    peers: BTreeMap<NodeId, Peer>,
    /// Last slot recovered in phase 1: reads wait until it is committed.
    recovery_end: LogIndex,
    uncommitted_bytes: usize,
    /// Own slots durably accepted in our ballot.
    stable_index: LogIndex,
    round: u64,
    round_starts: VecDeque<(u64, Millis)>,
    lease_round: u64,
    lease_until_ms: Millis,
    lease_disabled: bool,
    heartbeat_due_ms: Millis,
    quorum_check_due_ms: Millis,
    heartbeat_pending: bool,
    append_pending: bool,
    pending_reads: VecDeque<PendingRead>,
    reads_awaiting_recovery: Vec<(NodeId, ReadCtx)>,
    transfer: Option<Transfer>,

    // Output staging.
    msgs: Vec<Outbound<Message>>,
    persisted_msgs: Vec<Outbound<Message>>,
    read_states: Vec<ReadState>,
    snapshot_sends: Vec<SnapshotSend<Message>>,
    pending_install: Option<SnapshotMeta>,
    pending_purge: Option<LogIndex>,
    /// Slots written since the last Ready, as inclusive runs in write
    /// order (runs may overlap or come out of order; `ready` sorts and
    /// merges them). A run per stretch of consecutive writes, not an entry
    /// per slot: a batch of N appended or accepted slots costs one run.
    dirty: Vec<(LogIndex, LogIndex)>,
    handed_hs: HardState,
    applied_handed: LogIndex,
    applied: LogIndex,
    ready_number: ReadyNumber,
    in_flight: Option<InFlightReady>,
}

impl Paxos {
    /// Builds a node from its config, what its log store recovered, the
    /// bootstrap membership and a seed.
    ///
    /// `bootstrap` is the configuration at slot 0: every founding member of
    /// a new cluster passes the same one; a node joining an existing
    /// cluster passes `Membership::default()` and learns the configuration
    /// from the leader. It is ignored when the recovered state has a
    /// snapshot with a membership.
    ///
    /// `seed` is the only randomness used (timeout jitter); the node id is
    /// mixed in so that equal seeds on different nodes still differ.
    pub fn new(
        id: NodeId,
        config: Config,
        recovered: Recovered,
        bootstrap: Membership,
        seed: u64,
    ) -> Result<Self, PaxosError> {
        config.validate()?;
        if id == NodeId(0) || id.0 > BALLOT_NODE_MAX {
            return Err(PaxosError::BadId(id));
        }
        if bootstrap != Membership::default() {
            bootstrap.validate()?;
        }
        let Recovered {
            hard_state,
            snapshot,
            entries,
        } = recovered;
        let log_start = snapshot
            .as_ref()
            .map_or(LogIndex(0), |s| s.last_log_id.index);
        let base_membership = match &snapshot {
            Some(s) if s.membership != Membership::default() => {
                s.membership.validate()?;
                s.membership.clone()
            }
            _ => bootstrap.clone(),
        };
        let promised = hard_state.term;
        let mut log = SlotLog::new(log_start);
        let mut configs = BTreeMap::new();
        let horizon = LogIndex(
            hard_state
                .commit
                .max(log_start)
                .0
                .saturating_add(config.max_slots_ahead),
        );
        for e in entries {
            if e.index() <= log_start {
                continue; // trailing entries kept below the snapshot
            }
            if e.index() > horizon {
                return Err(PaxosError::Recovered(format!(
                    "slot {:?} lies more than max_slots_ahead ({}) beyond the commit point {:?}",
                    e.index(),
                    config.max_slots_ahead,
                    hard_state.commit
                )));
            }
            if e.term() > promised {
                return Err(PaxosError::Recovered(format!(
                    "entry {:?} was accepted in a ballot above the promised {promised:?}",
                    e.log_id
                )));
            }
            if let EntryPayload::Membership(m) = &e.payload {
                m.validate()?;
                configs.insert(e.index(), Membership::clone(m));
            }
            log.insert(e);
        }
        let mut commit = log_start;
        while commit < hard_state.commit && log.get(commit.next()).is_some() {
            commit = commit.next();
        }
        let mut rng = SplitMix64::new(seed ^ id.0.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        rng.next_u64();
        let handed_hs = HardState {
            term: promised,
            vote: None,
            commit,
        };
        Ok(Self {
            id,
            cfg: config,
            rng,
            promised,
            log,
            log_start,
            commit,
            bootstrap,
            base_membership,
            configs,
            snapshot,
            role: Role::Follower,
            leader: None,
            now_ms: 0,
            started: false,
            election_deadline_ms: 0,
            sticky_until_ms: 0,
            run: (Term(0), LogIndex(0)),
            durable_promised: promised,
            campaign: None,
            pre: None,
            max_ballot_seen: promised,
            peers: BTreeMap::new(),
            recovery_end: LogIndex(0),
            uncommitted_bytes: 0,
            stable_index: LogIndex(0),
            round: 0,
            round_starts: VecDeque::new(),
            lease_round: 0,
            lease_until_ms: 0,
            lease_disabled: false,
            heartbeat_due_ms: 0,
            quorum_check_due_ms: 0,
            heartbeat_pending: false,
            append_pending: false,
            pending_reads: VecDeque::new(),
            reads_awaiting_recovery: Vec::new(),
            transfer: None,
            msgs: Vec::new(),
            persisted_msgs: Vec::new(),
            read_states: Vec::new(),
            snapshot_sends: Vec::new(),
            pending_install: None,
            pending_purge: None,
            dirty: Vec::new(),
            handed_hs,
            applied_handed: log_start,
            applied: log_start,
            ready_number: 0,
            in_flight: None,
        })
    }

    // ------------------------------------------------------------ accessors

    /// The newest configuration in the log (in force for the slots after
    /// it once it is chosen; see the crate docs).
    pub fn membership(&self) -> &Membership {
        self.configs
            .values()
            .next_back()
            .unwrap_or(&self.base_membership)
    }

    /// The configuration that governs the slots after the commit point:
    /// the newest configuration at or below it.
    pub fn committed_membership(&self) -> &Membership {
        self.configs
            .range(..=self.commit)
            .next_back()
            .map_or(&self.base_membership, |(_, m)| m)
    }

    /// The promised ballot (the ballot this node leads in, when leader).
    pub fn ballot(&self) -> Term {
        self.promised
    }

    /// Current role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Highest slot up to which everything is known chosen here.
    pub fn commit_index(&self) -> LogIndex {
        self.commit
    }

    /// Highest slot held (accepted or chosen), or the snapshot index.
    pub fn last_index(&self) -> LogIndex {
        self.log
            .last()
            .unwrap_or(self.log_start)
            .max(self.log_start)
    }

    /// Slots at or below this are compacted into the snapshot.
    pub fn log_start(&self) -> LogIndex {
        self.log_start
    }

    /// The entry held at `slot`, stamped with the ballot it was accepted in.
    pub fn entry(&self, slot: LogIndex) -> Option<&Entry> {
        self.log.get(slot)
    }

    /// Whether the applied part of the log has grown past
    /// [`Config::snapshot_threshold_entries`] since the last snapshot.
    pub fn wants_snapshot(&self) -> bool {
        let snap = self
            .snapshot
            .as_ref()
            .map_or(LogIndex(0), |s| s.last_log_id.index);
        self.applied.0.saturating_sub(snap.0) >= self.cfg.snapshot_threshold_entries
    }

    fn is_voter(&self) -> bool {
        self.committed_membership().is_voter(self.id) || self.membership().is_voter(self.id)
    }

    /// First configuration slot above the commit point: a change not yet
    /// chosen. Slots after it are not sent to peers until it is chosen.
    fn pending_config(&self) -> Option<(LogIndex, &Membership)> {
        self.configs
            .range(self.commit.next()..)
            .next()
            .map(|(i, m)| (*i, m))
    }

    // --------------------------------------------------------------- output

    fn send(&mut self, to: NodeId, msg: Message) {
        self.msgs.push(Outbound { to, msg });
    }

    fn send_persisted(&mut self, to: NodeId, msg: Message) {
        self.persisted_msgs.push(Outbound { to, msg });
    }

    /// Stores `e` at its slot (overwriting), tracking configurations.
    fn put_entry(&mut self, e: Entry) {
        let slot = e.index();
        match &e.payload {
            EntryPayload::Membership(m) => {
                self.configs.insert(slot, Membership::clone(m));
            }
            _ if !self.configs.is_empty() => {
                self.configs.remove(&slot);
            }
            _ => {}
        }
        self.mark_dirty(slot, slot);
        self.log.insert(e);
        debug_assert_eq!(self.log.start(), self.log_start);
    }

    /// Records that slots `from..=to` were written since the last Ready.
    fn mark_dirty(&mut self, from: LogIndex, to: LogIndex) {
        match self.dirty.last_mut() {
            Some((first, last)) if from >= *first && from.0 <= last.0.saturating_add(1) => {
                *last = (*last).max(to);
            }
            _ => self.dirty.push((from, to)),
        }
    }

    /// Stores `entries[lo..hi]`, which hold contiguous ascending slots, as
    /// [`Self::put_entry`] of each in turn would: without a configuration
    /// among them, as one block.
    fn put_run(&mut self, entries: &mut Vec<Entry>, lo: usize, hi: usize) {
        let run = &entries[lo..hi];
        let (Some(from), Some(to)) = (run.first().map(Entry::index), run.last().map(Entry::index))
        else {
            return;
        };
        if run
            .iter()
            .any(|e| matches!(e.payload, EntryPayload::Membership(_)))
        {
            for e in entries.drain(lo..hi) {
                self.put_entry(e);
            }
            return;
        }
        if !self.configs.is_empty() {
            // Non-configuration values overwrite these slots.
            let mut tail = self.configs.split_off(&from);
            let mut after = tail.split_off(&to.next());
            self.configs.append(&mut after);
        }
        self.mark_dirty(from, to);
        self.log.insert_run(entries.drain(lo..hi));
        debug_assert_eq!(self.log.start(), self.log_start);
    }

    // ---------------------------------------------------------------- roles

    fn reset_election_timer(&mut self) {
        self.election_deadline_ms = self.now_ms
            + self.rng.range(
                self.cfg.election_timeout_min_ms,
                self.cfg.election_timeout_max_ms,
            );
    }

    fn reset_leader_state(&mut self) {
        self.peers.clear();
        self.snapshot_sends.clear();
        self.pending_reads.clear();
        self.reads_awaiting_recovery.clear();
        self.transfer = None;
        self.heartbeat_pending = false;
        self.append_pending = false;
        self.uncommitted_bytes = 0;
        self.campaign = None;
        self.pre = None;
        self.round_starts.clear();
        self.lease_round = 0;
        self.lease_until_ms = 0;
    }

    fn raise_promise(&mut self, b: Term) {
        self.max_ballot_seen = self.max_ballot_seen.max(b);
        if b > self.promised {
            self.promised = b;
        }
    }

    fn become_follower(&mut self, leader: Option<NodeId>) {
        self.role = Role::Follower;
        self.leader = leader;
        self.reset_leader_state();
        self.reset_election_timer();
        if leader.is_some() {
            self.sticky_until_ms = self.now_ms + self.cfg.election_timeout_min_ms;
        }
    }

    /// The configurations whose quorums a phase 1 must hear from: the one
    /// governing the slots after our commit point, and every configuration
    /// among the values it would adopt.
    fn phase1_configs(&self) -> Vec<Membership> {
        let mut out = vec![self.committed_membership().clone()];
        let Some(c) = &self.campaign else {
            return out;
        };
        for (slot, m) in self.configs.range(c.from..) {
            let superseded = c
                .reported
                .get(slot)
                .is_some_and(|r| self.log.get(*slot).is_none_or(|own| r.term() > own.term()));
            if !superseded && !out.contains(m) {
                out.push(m.clone());
            }
        }
        for (slot, e) in &c.reported {
            if let EntryPayload::Membership(m) = &e.payload {
                let own_higher = self
                    .log
                    .get(*slot)
                    .is_some_and(|own| own.term() >= e.term());
                if !own_higher && !out.contains(m) {
                    out.push(Membership::clone(m));
                }
            }
        }
        out
    }

    /// A ballot of ours above every ballot we promised or heard of.
    fn next_ballot(&self) -> Term {
        let top = self.promised.max(self.max_ballot_seen);
        ballot(ballot_round(top).saturating_add(1), self.id)
    }

    /// Asks the voters whether they would promise our next ballot; runs
    /// phase 1 only with a quorum of yes (see [`Message::PrePrepare`]).
    fn start_pre_campaign(&mut self) {
        if !self.is_voter() || self.role == Role::Leader {
            return;
        }
        self.reset_leader_state();
        self.role = Role::PreCandidate;
        self.leader = None;
        self.reset_election_timer();
        let b = self.next_ballot();
        let mut answers = BTreeMap::new();
        answers.insert(self.id, true);
        self.pre = Some((b, answers));
        let req = Prepare {
            ballot: b,
            from: self.commit.next(),
            transfer: false,
        };
        let mut voters = self.committed_membership().all_voters();
        voters.extend(self.membership().all_voters());
        for v in voters {
            if v != self.id {
                self.send(v, Message::PrePrepare(req));
            }
        }
        self.check_pre_campaign();
    }

    fn check_pre_campaign(&mut self) {
        let Some((_, answers)) = &self.pre else {
            return;
        };
        let m = self.committed_membership();
        let won = m.is_quorum(|n| answers.get(&n) == Some(&true));
        let lost = m.is_quorum(|n| answers.get(&n) == Some(&false));
        if won {
            self.start_campaign(false);
        } else if lost {
            self.become_follower(None);
        }
    }

    fn on_pre_prepare(&mut self, from: NodeId, p: Prepare) {
        let sticky = self.role == Role::Leader || self.now_ms < self.sticky_until_ms;
        let granted = ballot_node(p.ballot) == from
            && p.ballot > self.promised
            && !sticky
            && p.from > self.log_start;
        self.send(
            from,
            Message::PrePromise {
                ballot: p.ballot,
                granted,
                promised: self.promised,
            },
        );
    }

    fn on_pre_promise(&mut self, from: NodeId, b: Term, granted: bool, promised: Term) {
        self.max_ballot_seen = self.max_ballot_seen.max(promised);
        if self.role != Role::PreCandidate {
            return;
        }
        let Some((mine, answers)) = self.pre.as_mut() else {
            return;
        };
        if *mine != b {
            return;
        }
        answers.insert(from, granted);
        self.check_pre_campaign();
    }

    fn start_campaign(&mut self, transfer: bool) {
        if !self.is_voter() || self.role == Role::Leader {
            return;
        }
        self.reset_leader_state();
        let b = self.next_ballot();
        self.promised = b;
        self.role = Role::Candidate;
        self.leader = None;
        self.election_deadline_ms = self.now_ms
            + self.cfg.prepare_timeout_ms
            + self.rng.range(
                0,
                self.cfg.election_timeout_max_ms - self.cfg.election_timeout_min_ms,
            );
        self.campaign = Some(Campaign {
            ballot: b,
            from: self.commit.next(),
            transfer,
            asked: BTreeSet::new(),
            complete: BTreeSet::new(),
            refused: BTreeSet::new(),
            commits: BTreeMap::new(),
            reported: BTreeMap::new(),
        });
        self.check_campaign();
    }

    /// Asks every voter of the phase 1 configurations not asked yet, and
    /// becomes leader once a quorum of each has answered in full.
    fn check_campaign(&mut self) {
        if self.role != Role::Candidate {
            return;
        }
        let configs = self.phase1_configs();
        let Some(c) = self.campaign.as_mut() else {
            return;
        };
        let req = Prepare {
            ballot: c.ballot,
            from: c.from,
            transfer: c.transfer,
        };
        let mut ask = Vec::new();
        for m in &configs {
            for v in m.all_voters() {
                if v != self.id && c.asked.insert(v) {
                    ask.push(v);
                }
            }
        }
        for v in ask {
            self.send(v, Message::Prepare(req));
        }
        let Some(c) = self.campaign.as_ref() else {
            return;
        };
        let self_ok = self.durable_promised == c.ballot;
        let id = self.id;
        let won = configs
            .iter()
            .all(|m| m.is_quorum(|n| (n == id && self_ok) || c.complete.contains(&n)));
        let lost = configs
            .first()
            .is_some_and(|m| m.is_quorum(|n| c.refused.contains(&n)));
        if won {
            self.become_leader();
        } else if lost {
            self.become_follower(None);
        }
    }

    fn become_leader(&mut self) {
        let Some(c) = self.campaign.take() else {
            return;
        };
        let b = c.ballot;
        // Adopt, per open slot, the value accepted in the highest ballot
        // (ours or reported); fill gaps with no-ops.
        let own_end = self.last_index();
        let reported_end = c
            .reported
            .keys()
            .next_back()
            .copied()
            .unwrap_or(LogIndex(0));
        let end = own_end.max(reported_end).max(self.commit);
        let mut slot = self.commit.next();
        let mut bytes = 0usize;
        while slot <= end {
            let own = self.log.get(slot);
            let rep = c.reported.get(&slot);
            let payload = match (own, rep) {
                (Some(o), Some(r)) if r.term() > o.term() => r.payload.clone(),
                (Some(o), _) => o.payload.clone(),
                (None, Some(r)) => r.payload.clone(),
                (None, None) => EntryPayload::Blank,
            };
            let e = Entry {
                log_id: LogId {
                    term: b,
                    index: slot,
                },
                payload,
            };
            bytes += e.size_bytes();
            self.put_entry(e);
            slot = slot.next();
        }
        self.reset_leader_state();
        self.role = Role::Leader;
        self.leader = Some(self.id);
        self.lease_disabled = false;
        self.recovery_end = end;
        self.uncommitted_bytes = bytes;
        self.stable_index = self.commit;
        if let Some(f) = self.in_flight.as_mut() {
            f.leader_last = f.leader_last.min(self.commit);
        }
        self.run = (Term(0), LogIndex(0));
        let now = self.now_ms;
        let commit = self.commit;
        let mut members = self.membership().all_nodes();
        members.extend(self.committed_membership().all_nodes());
        for n in members {
            if n == self.id {
                continue;
            }
            let peer = match c.commits.get(&n) {
                Some(&fc) => {
                    let m = fc.min(end);
                    Peer::new(m.next(), m, now)
                }
                None => Peer::new(commit.next(), LogIndex(0), now),
            };
            self.peers.insert(n, peer);
        }
        self.heartbeat_due_ms = now + self.cfg.heartbeat_interval_ms;
        self.quorum_check_due_ms = now + self.cfg.election_timeout_min_ms;
        self.new_round();
        self.append_pending = true;
        self.maybe_commit();
    }

    fn new_round(&mut self) {
        self.round += 1;
        self.round_starts.push_back((self.round, self.now_ms));
        while self.round_starts.len() > ROUND_HISTORY_MAX {
            self.round_starts.pop_front();
        }
        self.heartbeat_pending = true;
    }

    /// Whether this leader can serve reads from its lease right now (see
    /// [`Config::lease_read`] for the clock assumption).
    pub fn lease_valid(&self) -> bool {
        self.cfg.lease_read
            && self.role == Role::Leader
            && !self.lease_disabled
            && self.transfer.is_none()
            && self.commit >= self.recovery_end
            && self.now_ms < self.lease_until_ms
    }

    /// Tells `to` to run phase 1 now. The target may win at any moment,
    /// so our lease is over.
    fn send_timeout_now(&mut self, to: NodeId) {
        self.lease_disabled = true;
        self.send(
            to,
            Message::TimeoutNow {
                ballot: self.promised,
            },
        );
    }

    // --------------------------------------------------------------- leader

    fn append_entry(&mut self, payload: EntryPayload) -> LogId {
        let log_id = LogId {
            term: self.promised,
            index: self.last_index().next(),
        };
        let e = Entry { log_id, payload };
        self.uncommitted_bytes += e.size_bytes();
        if matches!(e.payload, EntryPayload::Membership(_)) || !self.configs.is_empty() {
            self.put_entry(e);
        } else {
            // A slot above every held one, on the hot path of every
            // proposal: no configuration to track, the log just grows.
            self.mark_dirty(log_id.index, log_id.index);
            self.log.insert(e);
        }
        self.append_pending = true;
        log_id
    }

    /// Makes the peer map match the configurations (newest and committed).
    fn sync_peers(&mut self) {
        if self.role != Role::Leader {
            return;
        }
        let mut members = self.membership().all_nodes();
        members.extend(self.committed_membership().all_nodes());
        let now = self.now_ms;
        self.peers.retain(|n, _| members.contains(n));
        for n in members {
            if n != self.id {
                self.peers
                    .entry(n)
                    .or_insert_with(|| Peer::new(LogIndex(1), LogIndex(0), now));
            }
        }
        if let Some(t) = self.transfer
            && !self.membership().voters.contains(&t.to)
        {
            self.transfer = None;
        }
    }

    /// Highest slot a peer may be sent: the last slot, or a configuration
    /// change not yet chosen (slots after it wait until it is).
    fn send_limit(&self) -> LogIndex {
        let last = self.last_index();
        match self.pending_config() {
            Some((g, _)) => g.min(last),
            None => last,
        }
    }

    fn window_full(&self, p: &Peer) -> bool {
        p.inflight.len() >= self.cfg.max_inflight_msgs
            || p.inflight_bytes >= self.cfg.max_inflight_bytes
    }

    fn maybe_send_accept(&mut self, to: NodeId) {
        let limit = self.send_limit();
        loop {
            let Some(p) = self.peers.get(&to) else {
                return;
            };
            if p.snapshot.is_some() || p.next > limit || self.window_full(p) {
                return;
            }
            let next = p.next;
            if next <= self.log_start {
                self.send_snapshot(to);
                return;
            }
            // The leader's log is gap-free up to its last slot (phase 1
            // filled every hole), so the batch is one or two slices of the
            // prefix. Size it first so the buffer is allocated once.
            let (a, b) = self.log.prefix_slices(next, limit);
            let mut count = 0usize;
            let mut bytes = 0usize;
            for e in a.iter().chain(b) {
                let sz = e.size_bytes();
                if count >= self.cfg.max_entries_per_msg
                    || (count > 0 && bytes + sz > self.cfg.max_bytes_per_msg)
                {
                    break;
                }
                bytes += sz;
                count += 1;
            }
            if count == 0 || a.first().map(Entry::index) != Some(next) {
                // Nothing to send, or a hole in our own log at `next`:
                // cannot happen for a leader; do not send garbage.
                return;
            }
            let mut entries = Vec::with_capacity(count);
            let from_a = count.min(a.len());
            entries.extend_from_slice(&a[..from_a]);
            entries.extend_from_slice(&b[..count - from_a]);
            // Slots this leader wrote carry its ballot already; slots at or
            // below the commit point may still carry the ballot they were
            // chosen in. Every slot goes out in ours.
            let ballot = self.promised;
            for e in &mut entries {
                e.log_id.term = ballot;
            }
            let last_sent = LogIndex(next.0 + count as u64 - 1);
            let msg = Message::Accept(Accept {
                ballot: self.promised,
                entries,
                commit: self.commit,
                round: self.round,
            });
            let now = self.now_ms;
            let round = self.round;
            let Some(p) = self.peers.get_mut(&to) else {
                return;
            };
            if p.inflight.is_empty() {
                p.progress_at_ms = now;
            }
            p.inflight.push_back((last_sent, bytes.max(1)));
            p.inflight_bytes += bytes.max(1);
            p.next = last_sent.next();
            p.sent_round = round;
            self.msgs.push(Outbound { to, msg });
        }
    }

    fn send_snapshot(&mut self, to: NodeId) {
        let Some(meta) = self.snapshot.clone() else {
            return; // slots are only compacted under a snapshot
        };
        let now = self.now_ms;
        let round = self.round;
        if let Some(p) = self.peers.get_mut(&to) {
            p.snapshot = Some((meta.last_log_id.index, now));
            p.sent_round = round;
        }
        self.snapshot_sends.push(SnapshotSend {
            to,
            meta: meta.clone(),
            header: Message::InstallSnapshot {
                ballot: self.promised,
                meta,
            },
        });
    }

    fn send_heartbeats(&mut self) {
        let round = self.round;
        let mut out = Vec::new();
        for (n, p) in self.peers.iter_mut() {
            if p.sent_round >= round {
                continue; // an Accept of this round already went out
            }
            p.sent_round = round;
            out.push(Outbound {
                to: *n,
                msg: Message::Accept(Accept {
                    ballot: self.promised,
                    entries: Vec::new(),
                    commit: self.commit,
                    round,
                }),
            });
        }
        self.msgs.extend(out);
    }

    fn flush(&mut self) {
        if self.role != Role::Leader {
            self.append_pending = false;
            self.heartbeat_pending = false;
            return;
        }
        if mem::take(&mut self.append_pending) {
            let peers: Vec<NodeId> = self.peers.keys().copied().collect();
            for p in peers {
                self.maybe_send_accept(p);
            }
        }
        if mem::take(&mut self.heartbeat_pending) {
            self.send_heartbeats();
        }
    }

    /// Highest slot a quorum of `m` holds in our ballot (we count our own
    /// durable slots).
    fn quorum_index(&self, m: &Membership) -> LogIndex {
        let id = self.id;
        let own = self.stable_index;
        LogIndex(m.quorum_min(|n| {
            if n == id {
                own.0
            } else {
                self.peers.get(&n).map_or(0, |p| p.matched.0)
            }
        }))
    }

    /// Advances the commit point by counting acknowledgements. A slot is
    /// chosen when a quorum of the configuration governing it accepted it;
    /// a configuration entry needs a quorum of the old and of the new
    /// configuration.
    fn maybe_commit(&mut self) {
        if self.role != Role::Leader {
            return;
        }
        loop {
            let last = self.last_index();
            let mut q = self.quorum_index(self.committed_membership()).min(last);
            if let Some((g, m)) = self.pending_config()
                && q >= g
            {
                q = if self.quorum_index(m) >= g {
                    g
                } else {
                    g.prev()
                };
            }
            if q <= self.commit {
                return;
            }
            let old = self.commit;
            self.commit_to(q);
            // Only a configuration chosen just now changes the quorums
            // (and may let the slots after it be counted): count again.
            let config_chosen = self.configs.range(old.next()..=q).next().is_some();
            if !config_chosen || self.role != Role::Leader {
                return;
            }
        }
    }

    fn commit_to(&mut self, index: LogIndex) {
        if index <= self.commit {
            return;
        }
        let old = self.commit;
        self.commit = index;
        let config_changed = self.configs.range(old.next()..=index).next().is_some();
        if self.role != Role::Leader {
            return;
        }
        // Every slot up to the commit point is held: one or two slices.
        let (a, b) = self.log.prefix_slices(old.next(), index);
        let freed: usize = a.iter().chain(b).map(Entry::size_bytes).sum();
        self.uncommitted_bytes = self.uncommitted_bytes.saturating_sub(freed);
        if old < self.recovery_end && index >= self.recovery_end {
            for (origin, ctx) in mem::take(&mut self.reads_awaiting_recovery) {
                self.register_read(origin, ctx);
            }
        }
        if config_changed {
            self.sync_peers();
            self.append_pending = true;
            if !self.committed_membership().voters.contains(&self.id) {
                // Removed: hand over to an up-to-date voter and step down.
                let last = self.last_index();
                let m = self.committed_membership().clone();
                let best = self
                    .peers
                    .iter()
                    .filter(|(n, p)| m.voters.contains(n) && p.matched >= self.commit.min(last))
                    .map(|(n, _)| *n)
                    .next();
                if let Some(b) = best {
                    self.send_timeout_now(b);
                }
                self.become_follower(None);
            }
        }
    }

    fn register_read(&mut self, origin: NodeId, ctx: ReadCtx) {
        if self.commit < self.recovery_end {
            self.reads_awaiting_recovery.push((origin, ctx));
            return;
        }
        if self.lease_valid() {
            self.release_read(origin, ctx, self.commit);
            return;
        }
        if !self.heartbeat_pending {
            self.new_round();
        }
        self.pending_reads.push_back(PendingRead {
            origin,
            ctx,
            index: self.commit,
            round: self.round,
        });
        self.update_reads();
    }

    fn release_read(&mut self, origin: NodeId, ctx: ReadCtx, index: LogIndex) {
        if origin == self.id {
            self.read_states.push(ReadState { ctx, index });
        } else {
            self.send(origin, Message::ReadIndexResponse { ctx, index });
        }
    }

    /// Releases reads whose round a quorum of the committed configuration
    /// acknowledged: no other ballot could have chosen anything new before
    /// they were registered.
    fn update_reads(&mut self) {
        if self.role != Role::Leader || (self.pending_reads.is_empty() && !self.cfg.lease_read) {
            return;
        }
        let id = self.id;
        let own = self.round;
        let peers = &self.peers;
        let q = self.committed_membership().quorum_min(|n| {
            if n == id {
                own
            } else {
                peers.get(&n).map_or(0, |p| p.acked_round)
            }
        });
        while let Some(r) = self.pending_reads.front().copied() {
            if r.round > q {
                break;
            }
            self.pending_reads.pop_front();
            self.release_read(r.origin, r.ctx, r.index);
        }
        if self.cfg.lease_read && q > self.lease_round {
            while let Some(&(r, _)) = self.round_starts.front() {
                if r >= q {
                    break;
                }
                self.round_starts.pop_front();
            }
            if let Some(&(r, start)) = self.round_starts.front()
                && r == q
            {
                self.lease_round = q;
                self.lease_until_ms =
                    start + self.cfg.election_timeout_min_ms - self.cfg.lease_drift_margin_ms;
            }
        }
    }

    fn on_accepted(&mut self, from: NodeId, a: Accepted) {
        if self.role != Role::Leader || a.ballot != self.promised {
            return;
        }
        let now = self.now_ms;
        let last = self.last_index();
        let round = self.round;
        let Some(p) = self.peers.get_mut(&from) else {
            return;
        };
        p.recent_active = true;
        if a.round <= round && a.round > p.acked_round {
            p.acked_round = a.round;
        }
        p.commit = a.commit.min(last);
        let through = a.through.max(a.commit).min(last);
        let moved = through > p.matched;
        if moved {
            p.matched = through;
            p.progress_at_ms = now;
        }
        while let Some(&(l, b)) = p.inflight.front() {
            if l > p.matched {
                break;
            }
            p.inflight.pop_front();
            p.inflight_bytes = p.inflight_bytes.saturating_sub(b);
        }
        if p.next <= p.matched {
            p.next = p.matched.next();
        }
        if p.snapshot.is_some_and(|(i, _)| p.matched >= i) {
            p.snapshot = None;
        }
        if p.inflight.is_empty() && p.snapshot.is_none() && p.next > p.matched.next() {
            // Nothing in flight can fill the member's gap: re-send from it.
            p.reset_to_matched(now);
        }
        let caught_up = p.matched >= last;
        if moved {
            self.maybe_commit();
        }
        if self.role != Role::Leader {
            return;
        }
        if caught_up && self.transfer.is_some_and(|t| t.to == from) {
            self.send_timeout_now(from);
        }
        self.maybe_send_accept(from);
        self.update_reads();
    }

    fn tick_leader(&mut self) {
        let now = self.now_ms;
        if now >= self.quorum_check_due_ms {
            self.quorum_check_due_ms = now + self.cfg.election_timeout_min_ms;
            let id = self.id;
            let peers = &self.peers;
            let active = self
                .committed_membership()
                .is_quorum(|n| n == id || peers.get(&n).is_some_and(|p| p.recent_active));
            for p in self.peers.values_mut() {
                p.recent_active = false;
            }
            if !active {
                self.become_follower(None);
                return;
            }
        }
        if self.transfer.is_some_and(|t| now >= t.deadline_ms) {
            self.transfer = None;
        }
        if now >= self.heartbeat_due_ms {
            self.heartbeat_due_ms = now + self.cfg.heartbeat_interval_ms;
            self.new_round();
            let retransmit = self.cfg.accept_retransmit_ms;
            let snap_timeout = self.cfg.snapshot_send_timeout_ms;
            for p in self.peers.values_mut() {
                let waited = now.saturating_sub(p.progress_at_ms);
                match p.snapshot {
                    Some((_, at)) if now.saturating_sub(at) >= snap_timeout => {
                        p.reset_to_matched(now)
                    }
                    Some(_) => {}
                    None if !p.inflight.is_empty() && waited >= retransmit => {
                        p.reset_to_matched(now)
                    }
                    None => {}
                }
            }
            self.append_pending = true;
        }
    }

    // ------------------------------------------------------------- acceptor

    /// Every slot up to the returned one is known chosen here or accepted
    /// in ballot `b` (cached per ballot; amortised O(1) per accepted slot).
    fn accepted_through(&mut self, b: Term) -> LogIndex {
        // Slots in the snapshot are chosen (the commit point is never
        // below it; the max only keeps the count below exact).
        let s = if self.run.0 == b {
            self.run.1.max(self.commit)
        } else {
            self.commit
        }
        .max(self.log_start);
        // The slot after the prefix is a hole, so the run ends in it.
        let (x, y) = self.log.prefix_slices(s.next(), self.log.filled_to());
        let more = x.iter().chain(y).take_while(|e| e.term() == b).count();
        let s = LogIndex(s.0 + more as u64);
        self.run = (b, s);
        s
    }

    /// Learns that every slot up to `c` holds ballot `b`'s value, which is
    /// chosen: extends the commit point over the slots we accepted in `b`.
    fn learn_commit(&mut self, c: LogIndex, b: Term) {
        if c <= self.commit {
            return;
        }
        let through = self.accepted_through(b);
        self.commit_to(c.min(through));
    }

    fn follow(&mut self, b: Term) {
        let leader = ballot_node(b);
        if self.role != Role::Follower || self.leader != Some(leader) {
            self.become_follower(Some(leader));
        } else {
            self.reset_election_timer();
            self.sticky_until_ms = self.now_ms + self.cfg.election_timeout_min_ms;
        }
    }

    fn nack(&mut self, to: NodeId, b: Term) {
        self.send(
            to,
            Message::Nack {
                ballot: b,
                promised: self.promised,
            },
        );
    }

    fn valid_payloads(entries: &[Entry]) -> bool {
        entries.iter().all(|e| match &e.payload {
            EntryPayload::Membership(m) => m.validate().is_ok(),
            _ => true,
        })
    }

    fn on_prepare(&mut self, from: NodeId, p: Prepare) {
        if ballot_node(p.ballot) != from || p.from == LogIndex(0) {
            return; // a ballot belongs to its proposer
        }
        if p.ballot < self.promised {
            self.nack(from, p.ballot);
            return;
        }
        if p.from <= self.log_start {
            // The candidate has not learned slots we already compacted: it
            // cannot lead. Tell it so without promising, and without
            // resetting our timer, so that a current node takes over.
            let behind = Promise {
                ballot: p.ballot,
                from: p.from,
                entries: Vec::new(),
                next: None,
                commit: self.commit,
                log_start: self.log_start,
            };
            self.send(from, Message::Promise(behind));
            return;
        }
        if p.ballot > self.promised {
            let sticky = self.role == Role::Leader || self.now_ms < self.sticky_until_ms;
            if sticky && !p.transfer {
                self.nack(from, p.ballot);
                return;
            }
            self.promised = p.ballot;
            self.become_follower(None);
        }
        let mut entries = Vec::new();
        let mut bytes = 0usize;
        let mut next = None;
        let start = p.from.max(self.log_start.next());
        let last = self.last_index();
        for e in self.log.range(start, last) {
            let slot = &e.index();
            let sz = e.size_bytes();
            if entries.len() >= self.cfg.max_entries_per_msg
                || (!entries.is_empty() && bytes + sz > self.cfg.max_bytes_per_msg)
            {
                next = Some(*slot);
                break;
            }
            bytes += sz;
            entries.push(e.clone());
        }
        let promise = Promise {
            ballot: p.ballot,
            from: p.from,
            entries,
            next,
            commit: self.commit,
            log_start: self.log_start,
        };
        // The promise is about durable state: send once persisted.
        self.send_persisted(from, Message::Promise(promise));
    }

    fn on_promise(&mut self, from: NodeId, p: Promise) {
        let Some(c) = self.campaign.as_ref() else {
            return;
        };
        if self.role != Role::Candidate
            || p.ballot != c.ballot
            || p.from < c.from
            || p.check(self.cfg.max_recv_entries_per_msg).is_err()
            || !Self::valid_payloads(&p.entries)
        {
            return;
        }
        if p.log_start >= p.from {
            // The acceptor compacted slots we never learned: we are too far
            // behind to lead. Wait for a current leader to catch us up.
            self.become_follower(None);
            return;
        }
        let too_far = p.entries.last().is_some_and(|e| {
            e.index().0.saturating_sub(self.commit.0) > self.cfg.max_recovery_slots
        });
        if too_far {
            self.become_follower(None);
            return;
        }
        let Some(c) = self.campaign.as_mut() else {
            return;
        };
        if c.complete.contains(&from) {
            return; // a duplicate
        }
        for e in p.entries {
            let keep = c
                .reported
                .get(&e.index())
                .is_none_or(|r| r.term() < e.term());
            if keep {
                c.reported.insert(e.index(), e);
            }
        }
        let prev = c.commits.get(&from).copied().unwrap_or(LogIndex(0));
        c.commits.insert(from, prev.max(p.commit));
        match p.next {
            Some(n) => {
                let req = Prepare {
                    ballot: c.ballot,
                    from: n,
                    transfer: c.transfer,
                };
                self.send(from, Message::Prepare(req));
            }
            None => {
                c.complete.insert(from);
                self.check_campaign();
            }
        }
    }

    fn on_nack(&mut self, from: NodeId, b: Term, promised: Term) {
        self.max_ballot_seen = self.max_ballot_seen.max(promised);
        let mine = match self.role {
            Role::Leader => self.promised,
            Role::Candidate => self.campaign.as_ref().map_or(Term(0), |c| c.ballot),
            _ => return,
        };
        if b != mine {
            return;
        }
        if promised > mine {
            self.raise_promise(promised);
            self.become_follower(None);
            return;
        }
        if self.role == Role::Candidate
            && let Some(c) = self.campaign.as_mut()
        {
            c.refused.insert(from);
            self.check_campaign();
        }
    }

    fn on_accept(&mut self, from: NodeId, a: Accept) {
        if ballot_node(a.ballot) != from
            || a.check(self.cfg.max_recv_entries_per_msg).is_err()
            || !Self::valid_payloads(&a.entries)
        {
            return;
        }
        if a.ballot < self.promised {
            self.nack(from, a.ballot);
            return;
        }
        if self.role == Role::Leader && a.ballot == self.promised {
            return; // our own ballot from someone else: bogus
        }
        self.raise_promise(a.ballot);
        self.follow(a.ballot);
        let window_end = LogIndex(self.commit.0.saturating_add(self.cfg.max_slots_ahead));
        let mut entries = a.entries;
        if let Some(first) = entries.first().map(Entry::index) {
            // The slots are contiguous (checked): skip those chosen here
            // already and those beyond the window, store the rest.
            let floor = self.commit.max(self.log_start);
            let pos =
                |slot: u64| usize::try_from(slot.saturating_sub(first.0)).unwrap_or(usize::MAX);
            let hi = pos(window_end.0.saturating_add(1)).min(entries.len());
            let lo = pos(floor.0.saturating_add(1)).min(hi);
            self.put_run(&mut entries, lo, hi);
        }
        self.learn_commit(a.commit, a.ballot);
        let through = self.accepted_through(a.ballot);
        self.send_persisted(
            from,
            Message::Accepted(Accepted {
                ballot: a.ballot,
                through,
                commit: self.commit,
                round: a.round,
            }),
        );
    }

    fn on_install_snapshot(&mut self, from: NodeId, b: Term, meta: SnapshotMeta) {
        if ballot_node(b) != from {
            return;
        }
        if b < self.promised {
            self.nack(from, b);
            return;
        }
        if self.role == Role::Leader && b == self.promised {
            return;
        }
        let membership = if meta.membership == Membership::default() {
            self.bootstrap.clone()
        } else {
            meta.membership.clone()
        };
        if membership != Membership::default() && membership.validate().is_err() {
            return;
        }
        self.raise_promise(b);
        self.follow(b);
        let idx = meta.last_log_id.index;
        if idx > self.commit {
            self.log.compact_to(idx);
            self.configs = self.configs.split_off(&idx.next());
            self.base_membership = membership;
            self.log_start = idx;
            self.commit = idx;
            self.applied_handed = idx;
            self.applied = self.applied.max(idx);
            self.pending_install = Some(meta.clone());
            self.pending_purge = None;
            self.snapshot = Some(meta);
            self.run = (Term(0), LogIndex(0));
        }
        let through = self.accepted_through(b);
        self.send_persisted(
            from,
            Message::Accepted(Accepted {
                ballot: b,
                through,
                commit: self.commit,
                round: 0,
            }),
        );
    }

    fn step_message(&mut self, from: NodeId, msg: Message) {
        match msg {
            Message::PrePrepare(p) => self.on_pre_prepare(from, p),
            Message::PrePromise {
                ballot,
                granted,
                promised,
            } => self.on_pre_promise(from, ballot, granted, promised),
            Message::Prepare(p) => self.on_prepare(from, p),
            Message::Promise(p) => self.on_promise(from, p),
            Message::Nack { ballot, promised } => self.on_nack(from, ballot, promised),
            Message::Accept(a) => self.on_accept(from, a),
            Message::Accepted(a) => self.on_accepted(from, a),
            Message::InstallSnapshot { ballot, meta } => {
                self.on_install_snapshot(from, ballot, meta)
            }
            Message::TimeoutNow { ballot } => {
                if ballot >= self.promised && ballot_node(ballot) == from {
                    self.start_campaign(true);
                }
            }
            Message::ReadIndex { ctx } => {
                if self.role == Role::Leader
                    && self.pending_reads.len() + self.reads_awaiting_recovery.len()
                        < self.cfg.max_pending_reads
                {
                    self.register_read(from, ctx);
                }
            }
            Message::ReadIndexResponse { ctx, index } => {
                if self.leader == Some(from) && self.read_states.len() < self.cfg.max_pending_reads
                {
                    self.read_states.push(ReadState { ctx, index });
                }
            }
        }
    }

    fn membership_target(&self, change: MembershipChange) -> Result<Membership, ProposeError> {
        let cur = self.membership();
        let invalid = |s: String| Err(ProposeError::Invalid(s));
        let mut m = cur.clone();
        match change {
            MembershipChange::AddLearner(n) => {
                if cur.all_nodes().contains(&n) {
                    return invalid(format!("{n:?} is already a member"));
                }
                m.learners.insert(n);
            }
            MembershipChange::Promote(n) => {
                if !cur.learners.contains(&n) {
                    return invalid(format!("{n:?} is not a learner"));
                }
                m.learners.remove(&n);
                m.voters.insert(n);
            }
            MembershipChange::AddVoter(n) => {
                if cur.voters.contains(&n) {
                    return invalid(format!("{n:?} is already a voter"));
                }
                m.learners.remove(&n);
                m.voters.insert(n);
            }
            MembershipChange::Remove(n) => {
                if !cur.all_nodes().contains(&n) {
                    return invalid(format!("{n:?} is not a member"));
                }
                m.voters.remove(&n);
                m.learners.remove(&n);
            }
            MembershipChange::Replace(target) => {
                if target.voters_outgoing.is_some() {
                    return invalid("the target of a change cannot be joint".into());
                }
                if &target == cur {
                    return invalid("the target equals the configuration in force".into());
                }
                // No joint step: the entry itself needs a quorum of both the
                // old and the new configuration (see the crate docs).
                m = target;
            }
        }
        if m.voters
            .iter()
            .chain(m.learners.iter())
            .any(|n| n.0 > BALLOT_NODE_MAX)
        {
            return invalid(format!("node ids must be at most {BALLOT_NODE_MAX}"));
        }
        if let Err(e) = m.validate() {
            return invalid(e.to_string());
        }
        Ok(m)
    }

    /// Starts phase 1 now, as on a leader transfer (tests only).
    #[cfg(test)]
    pub(crate) fn campaign_for_test(&mut self) {
        self.start_campaign(true);
    }

    fn hard_state(&self) -> HardState {
        HardState {
            term: self.promised,
            vote: None,
            commit: self.commit,
        }
    }
}

/// Sorts inclusive slot runs and merges the ones that overlap or touch,
/// so each slot appears once, ascending.
fn merge_runs(mut runs: Vec<(LogIndex, LogIndex)>) -> Vec<(LogIndex, LogIndex)> {
    runs.sort_unstable();
    let mut merged: Vec<(LogIndex, LogIndex)> = Vec::with_capacity(runs.len());
    for (first, last) in runs {
        match merged.last_mut() {
            Some((_, end)) if first.0 <= end.0.saturating_add(1) => *end = (*end).max(last),
            _ => merged.push((first, last)),
        }
    }
    merged
}

impl Consensus for Paxos {
    type Message = Message;

    fn id(&self) -> NodeId {
        self.id
    }

    fn tick(&mut self, now: Millis) {
        if !self.started {
            self.started = true;
            self.now_ms = now;
            // A restarted node may have acknowledged a leader just before
            // it went down: honour that leader for a timeout.
            self.sticky_until_ms = now + self.cfg.election_timeout_min_ms;
            self.reset_election_timer();
            return;
        }
        if now < self.now_ms {
            return; // time never goes back
        }
        self.now_ms = now;
        if self.role == Role::Leader {
            self.tick_leader();
        } else if now >= self.election_deadline_ms {
            if self.is_voter() {
                self.start_pre_campaign();
            } else {
                self.reset_election_timer();
            }
        }
    }

    fn step(&mut self, from: NodeId, msg: Message) {
        if from == self.id || from == NodeId(0) {
            return;
        }
        self.step_message(from, msg);
    }

    fn propose(&mut self, data: Bytes) -> Result<LogId, ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader {
                leader: self.leader,
            });
        }
        if self.transfer.is_some() {
            return Err(ProposeError::InProgress);
        }
        if data.len() > self.cfg.max_proposal_bytes {
            return Err(ProposeError::Overloaded(format!(
                "proposal of {} bytes exceeds max_proposal_bytes {}",
                data.len(),
                self.cfg.max_proposal_bytes
            )));
        }
        let size = data.len() + 24;
        if self.uncommitted_bytes > 0
            && self.uncommitted_bytes + size > self.cfg.max_uncommitted_bytes
        {
            return Err(ProposeError::Overloaded(format!(
                "{} uncommitted bytes, max_uncommitted_bytes is {}",
                self.uncommitted_bytes, self.cfg.max_uncommitted_bytes
            )));
        }
        Ok(self.append_entry(EntryPayload::Normal(data)))
    }

    fn read_index(&mut self, ctx: ReadCtx) -> Result<(), ProposeError> {
        match self.role {
            Role::Leader => {
                let pending = self.pending_reads.len() + self.reads_awaiting_recovery.len();
                if pending >= self.cfg.max_pending_reads {
                    return Err(ProposeError::Overloaded(format!(
                        "{pending} reads pending, max_pending_reads is {}",
                        self.cfg.max_pending_reads
                    )));
                }
                self.register_read(self.id, ctx);
                Ok(())
            }
            _ => match self.leader {
                Some(l) if l != self.id => {
                    self.send(l, Message::ReadIndex { ctx });
                    Ok(())
                }
                _ => Err(ProposeError::NotLeader { leader: None }),
            },
        }
    }

    fn change_membership(&mut self, change: MembershipChange) -> Result<LogId, ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader {
                leader: self.leader,
            });
        }
        if self.transfer.is_some()
            || self.commit < self.recovery_end
            || self.pending_config().is_some()
        {
            return Err(ProposeError::InProgress);
        }
        let m = self.membership_target(change)?;
        let id = self.append_entry(EntryPayload::Membership(Box::new(m)));
        self.sync_peers();
        Ok(id)
    }

    fn transfer_leader(&mut self, to: NodeId) -> Result<(), ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader {
                leader: self.leader,
            });
        }
        if to == self.id {
            return Ok(());
        }
        if !self.committed_membership().voters.contains(&to)
            || !self.membership().voters.contains(&to)
        {
            return Err(ProposeError::Invalid(format!("{to:?} is not a voter")));
        }
        if let Some(t) = self.transfer {
            return if t.to == to {
                Ok(())
            } else {
                Err(ProposeError::InProgress)
            };
        }
        self.transfer = Some(Transfer {
            to,
            deadline_ms: self.now_ms + self.cfg.transfer_timeout_ms,
        });
        let last = self.last_index();
        let caught_up = self.peers.get(&to).is_some_and(|p| p.matched >= last);
        if caught_up {
            self.send_timeout_now(to);
        } else {
            self.maybe_send_accept(to);
        }
        Ok(())
    }

    fn has_ready(&self) -> bool {
        if self.in_flight.is_some() {
            return false;
        }
        !self.msgs.is_empty()
            || !self.persisted_msgs.is_empty()
            || self.pending_install.is_some()
            || !self.dirty.is_empty()
            || self.promised != self.handed_hs.term
            || self.commit > self.applied_handed
            || !self.read_states.is_empty()
            || !self.snapshot_sends.is_empty()
            || self.pending_purge.is_some()
            || (self.role == Role::Leader && (self.append_pending || self.heartbeat_pending))
    }

    fn ready(&mut self) -> Ready<Message> {
        self.flush();
        self.ready_number += 1;
        let mut rd = Ready::empty(self.ready_number);
        rd.messages = mem::take(&mut self.msgs);
        rd.persisted_messages = mem::take(&mut self.persisted_msgs);
        rd.snapshot = self.pending_install.take();
        let mut dirty = mem::take(&mut self.dirty);
        if !dirty.is_sorted_by(|a, b| a.1 < b.0) {
            dirty = merge_runs(dirty);
        }
        // Every slot of a run was written since the last Ready, so this is
        // at most the number of writes.
        let held: u64 = dirty.iter().map(|(a, b)| b.0 - a.0 + 1).sum();
        rd.entries.reserve_exact(usize::try_from(held).unwrap_or(0));
        for &(first, last) in &dirty {
            // Slots compacted since they were written are skipped.
            self.log.clone_range_into(first, last, &mut rd.entries);
        }
        // Keep the buffer: most Readys write slots.
        dirty.clear();
        self.dirty = dirty;
        let hs = self.hard_state();
        let promise_changed = hs.term != self.handed_hs.term;
        // The commit point is volatile here as in Raft: after a restart it
        // is re-learned from the leader (or, on a new leader, phase 1
        // recovers every chosen value above the stored one), so storing it
        // is only a head start on re-applying. A commit-only change rides
        // along with a write this Ready makes anyway and never costs an
        // fsync of its own — before, every commit cost the leader one more
        // fsync between choosing a value and applying it. The recovery
        // horizon check stays sound: slots are written together with the
        // commit point they were accepted under.
        let writes_anyway =
            !rd.entries.is_empty() || rd.snapshot.is_some() || self.pending_purge.is_some();
        if hs != self.handed_hs && (promise_changed || writes_anyway) {
            if promise_changed {
                // Every message may depend on the new promise.
                let mut all = mem::take(&mut rd.messages);
                all.append(&mut rd.persisted_messages);
                rd.persisted_messages = all;
            }
            rd.hard_state = Some(hs);
            self.handed_hs = hs;
        }
        if self.commit > self.applied_handed {
            // Every slot up to the commit point is held, so the slots to
            // apply are one or two slices of the prefix.
            let (a, b) = self
                .log
                .prefix_slices(self.applied_handed.next(), self.commit);
            let mut count = 0usize;
            let mut bytes = 0usize;
            for e in a.iter().chain(b) {
                let sz = e.size_bytes();
                if count > 0 && bytes + sz > self.cfg.max_apply_bytes_per_ready {
                    break;
                }
                bytes += sz;
                count += 1;
            }
            if a.first().map(Entry::index) == Some(self.applied_handed.next()) {
                let from_a = count.min(a.len());
                rd.committed.reserve_exact(count);
                rd.committed.extend_from_slice(&a[..from_a]);
                rd.committed.extend_from_slice(&b[..count - from_a]);
                self.applied_handed = LogIndex(self.applied_handed.0 + count as u64);
            }
        }
        rd.reads = mem::take(&mut self.read_states);
        rd.send_snapshots = mem::take(&mut self.snapshot_sends);
        if let Some(latest) = self.snapshot.as_ref().filter(|_| self.role == Role::Leader) {
            // The driver streams its latest snapshot: name that one.
            let now = self.now_ms;
            for s in &mut rd.send_snapshots {
                if s.meta.last_log_id.index < latest.last_log_id.index {
                    s.meta = latest.clone();
                    s.header = Message::InstallSnapshot {
                        ballot: self.promised,
                        meta: latest.clone(),
                    };
                    if let Some(p) = self.peers.get_mut(&s.to) {
                        p.snapshot = Some((latest.last_log_id.index, now));
                    }
                }
            }
        }
        rd.purge_to = self.pending_purge.take();
        let leader_last = if self.role == Role::Leader {
            self.last_index()
        } else {
            LogIndex(0)
        };
        self.in_flight = Some(InFlightReady {
            number: rd.number,
            leader_last,
            promised: self.promised,
        });
        rd
    }

    fn advance(&mut self, number: ReadyNumber) {
        let Some(f) = self.in_flight else { return };
        if f.number != number {
            return;
        }
        self.in_flight = None;
        self.durable_promised = f.promised;
        match self.role {
            // Only our own durable slots moved: count again if they did.
            Role::Leader if f.leader_last > self.stable_index => {
                self.stable_index = f.leader_last;
                self.maybe_commit();
            }
            Role::Candidate => self.check_campaign(),
            _ => {}
        }
    }

    fn applied(&mut self, index: LogIndex) {
        if index > self.applied {
            self.applied = index.min(self.applied_handed);
        }
    }

    fn snapshot_built(&mut self, meta: SnapshotMeta) {
        let idx = meta.last_log_id.index;
        if idx > self.commit || idx > self.applied_handed || idx <= self.log_start {
            return;
        }
        if self
            .snapshot
            .as_ref()
            .is_some_and(|s| s.last_log_id.index >= idx)
        {
            return;
        }
        if self.log.get(idx).map(Entry::term) != Some(meta.last_log_id.term) {
            return; // not a snapshot of this log
        }
        self.snapshot = Some(meta);
        let compact = LogIndex(idx.0.saturating_sub(self.cfg.snapshot_trailing_entries));
        if compact > self.log_start {
            let below: Vec<LogIndex> = self.configs.range(..=compact).map(|(i, _)| *i).collect();
            if let Some(last) = below.last()
                && let Some(m) = self.configs.get(last)
            {
                self.base_membership = m.clone();
            }
            self.configs = self.configs.split_off(&compact.next());
            self.log.compact_to(compact);
            self.log_start = compact;
            self.pending_purge = Some(compact);
        }
    }

    fn status(&self) -> Status {
        let m = self.membership();
        let role = if self.role == Role::Follower && !self.is_voter() && m.is_learner(self.id) {
            Role::Learner
        } else {
            self.role
        };
        Status {
            id: self.id,
            role,
            term: self.promised,
            leader: self.leader,
            commit: self.commit,
            last_index: self.last_index(),
            membership: m.clone(),
        }
    }
}

#[cfg(test)]
mod run_tests {
    use super::*;

    fn runs(v: &[(u64, u64)]) -> Vec<(LogIndex, LogIndex)> {
        v.iter().map(|&(a, b)| (LogIndex(a), LogIndex(b))).collect()
    }

    #[test]
    fn written_runs_merge_into_sorted_disjoint_runs() {
        let got = merge_runs(runs(&[(7, 9), (1, 3), (2, 5), (10, 10), (20, 21), (6, 6)]));
        assert_eq!(got, runs(&[(1, 10), (20, 21)]));
        assert_eq!(merge_runs(Vec::new()), runs(&[]));
        assert_eq!(merge_runs(runs(&[(4, 4), (4, 4)])), runs(&[(4, 4)]));
    }
}
