//! [`Raft`]: the protocol state machine.

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
use crate::log::RaftLog;
use crate::message::{
    AppendOutcome, AppendRequest, AppendResponse, Message, VoteRequest, VoteResponse,
};
use crate::progress::{Progress, ProgressState};
use crate::rng::SplitMix64;

/// How many heartbeat rounds' start times a leader remembers for the lease.
/// Rounds older than the quorum-acknowledged one are dropped first; a round
/// that fell off only means the lease is not extended by it.
pub const ROUND_HISTORY_MAX: usize = 1_024;

/// Why a [`Raft`] could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RaftError {
    /// The configuration is invalid.
    #[error("invalid config: {0}")]
    Config(#[from] ConfigError),
    /// `NodeId(0)` is reserved.
    #[error("node id 0 is reserved")]
    ReservedId,
    /// The bootstrap membership is invalid.
    #[error("invalid bootstrap membership: {0}")]
    Membership(#[from] MembershipError),
    /// What the log store returned cannot be a Raft log.
    #[error("inconsistent recovered state: {0}")]
    Recovered(String),
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
    /// Last log index that will be durable once this Ready is advanced.
    last_index: LogIndex,
}

/// Raft as a deterministic, sans-IO state machine. See the
/// [crate docs](crate) for the protocol features and the driving loop.
#[derive(Debug)]
pub struct Raft {
    id: NodeId,
    cfg: Config,
    rng: SplitMix64,

    // Durable state (written through Readys).
    term: Term,
    vote: Option<NodeId>,
    log: RaftLog,
    commit: LogIndex,

    // Membership: the config at the log's start, then one per config entry.
    base_membership: Membership,
    /// The configuration at index 0 (see [`Raft::new`]).
    bootstrap: Membership,
    configs: Vec<(LogIndex, Membership)>,
    /// Latest snapshot known to exist (built locally or installed).
    snapshot: Option<SnapshotMeta>,

    // Volatile state of every role.
    role: Role,
    leader: Option<NodeId>,
    now_ms: Millis,
    started: bool,
    election_deadline_ms: Millis,
    /// Until then a follower ignores vote requests (leader stickiness).
    sticky_until_ms: Millis,
    votes: BTreeMap<NodeId, bool>,

    // Leader state.
    progress: BTreeMap<NodeId, Progress>,
    noop_index: LogIndex,
    uncommitted_bytes: usize,
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
    reads_awaiting_commit: Vec<(NodeId, ReadCtx)>,
    transfer: Option<Transfer>,
    joint_target: Option<Membership>,

    // Output staging.
    msgs: Vec<Outbound<Message>>,
    persisted_msgs: Vec<Outbound<Message>>,
    read_states: Vec<ReadState>,
    snapshot_sends: Vec<SnapshotSend<Message>>,
    pending_install: Option<SnapshotMeta>,
    pending_truncate: Option<LogIndex>,
    pending_purge: Option<LogIndex>,
    /// First log index not yet handed out in a Ready.
    persist_from: LogIndex,
    handed_hs: HardState,
    applied_handed: LogIndex,
    applied: LogIndex,
    /// Highest log index known durable locally.
    stable_index: LogIndex,
    ready_number: ReadyNumber,
    in_flight: Option<InFlightReady>,
}

impl Raft {
    /// Builds a node from its config, what its log store recovered, the
    /// bootstrap membership and a seed.
    ///
    /// `bootstrap` is the configuration at log index 0: every founding
    /// member of a new cluster passes the same one; a node that joins an
    /// existing cluster passes `Membership::default()` (it learns the
    /// configuration from the leader's log or snapshot). It is ignored when
    /// the recovered state has a snapshot.
    ///
    /// `seed` is the only randomness the node uses (election jitter); the
    /// node id is mixed in so that equal seeds on different nodes still give
    /// different timeouts.
    pub fn new(
        id: NodeId,
        config: Config,
        recovered: Recovered,
        bootstrap: Membership,
        seed: u64,
    ) -> Result<Self, RaftError> {
        config.validate()?;
        if id == NodeId(0) {
            return Err(RaftError::ReservedId);
        }
        let Recovered {
            hard_state,
            snapshot,
            entries,
        } = recovered;
        let start = snapshot
            .as_ref()
            .map_or(LogId::default(), |s| s.last_log_id);
        if bootstrap != Membership::default() {
            bootstrap.validate()?;
        }
        let base_membership = match &snapshot {
            // A snapshot taken before any configuration entry was applied
            // carries an empty membership: the bootstrap one is in force.
            Some(s) if s.membership == Membership::default() => bootstrap.clone(),
            Some(s) => {
                s.membership.validate()?;
                s.membership.clone()
            }
            None => bootstrap.clone(),
        };
        let mut kept = Vec::with_capacity(entries.len());
        let mut prev = start;
        for e in entries {
            if e.index() <= start.index {
                // Trailing entries kept below the snapshot: covered by it.
                continue;
            }
            if e.index() != prev.index.next() {
                return Err(RaftError::Recovered(format!(
                    "entry {:?} follows {:?}: the log has a gap (entries were purged without a snapshot?)",
                    e.log_id, prev
                )));
            }
            if e.term() < prev.term {
                return Err(RaftError::Recovered(format!(
                    "entry {:?} has a lower term than its predecessor {:?}",
                    e.log_id, prev
                )));
            }
            prev = e.log_id;
            kept.push(e);
        }
        if hard_state.term < prev.term {
            return Err(RaftError::Recovered(format!(
                "hard state term {:?} is below the last entry {:?}",
                hard_state.term, prev
            )));
        }
        if hard_state.vote == Some(NodeId(0)) {
            return Err(RaftError::Recovered("vote for node 0".into()));
        }
        let mut configs = Vec::new();
        for e in &kept {
            if let EntryPayload::Membership(m) = &e.payload {
                m.validate()?;
                configs.push((e.index(), Membership::clone(m)));
            }
        }
        let log = RaftLog::new(start, kept);
        let last = log.last_index();
        let commit = hard_state.commit.min(last).max(start.index);
        let mut rng = SplitMix64::new(seed ^ id.0.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        // Decorrelate nearby seeds.
        rng.next_u64();
        let handed_hs = HardState {
            term: hard_state.term,
            vote: hard_state.vote,
            commit,
        };
        Ok(Self {
            id,
            cfg: config,
            rng,
            term: hard_state.term,
            vote: hard_state.vote,
            log,
            commit,
            base_membership,
            bootstrap,
            configs,
            snapshot,
            role: Role::Follower,
            leader: None,
            now_ms: 0,
            started: false,
            election_deadline_ms: 0,
            sticky_until_ms: 0,
            votes: BTreeMap::new(),
            progress: BTreeMap::new(),
            noop_index: LogIndex(0),
            uncommitted_bytes: 0,
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
            reads_awaiting_commit: Vec::new(),
            transfer: None,
            joint_target: None,
            msgs: Vec::new(),
            persisted_msgs: Vec::new(),
            read_states: Vec::new(),
            snapshot_sends: Vec::new(),
            pending_install: None,
            pending_truncate: None,
            pending_purge: None,
            persist_from: last.next(),
            handed_hs,
            applied_handed: start.index,
            applied: start.index,
            stable_index: last,
            ready_number: 0,
            in_flight: None,
        })
    }

    /// The configuration in force: the latest one appended to the log.
    pub fn membership(&self) -> &Membership {
        self.configs
            .last()
            .map_or(&self.base_membership, |(_, m)| m)
    }

    /// Index of the entry that set the configuration in force (the log's
    /// start when it came from a snapshot or the bootstrap).
    pub fn membership_index(&self) -> LogIndex {
        self.configs
            .last()
            .map_or(self.log.start().index, |(i, _)| *i)
    }

    /// Current term.
    pub fn term(&self) -> Term {
        self.term
    }

    /// Current role as the protocol sees it.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Highest committed index.
    pub fn commit_index(&self) -> LogIndex {
        self.commit
    }

    /// The last entry of the in-memory log.
    pub fn last_log_id(&self) -> LogId {
        self.log.last_id()
    }

    /// The log's compaction point (entries at or below it are gone).
    pub fn log_start(&self) -> LogId {
        self.log.start()
    }

    /// The entry at `index`, if held in memory.
    pub fn entry(&self, index: LogIndex) -> Option<&Entry> {
        self.log.entry(index)
    }

    /// Whether the applied part of the in-memory log has grown past
    /// [`Config::snapshot_threshold_entries`] since the last snapshot: the
    /// driver should build a snapshot and call
    /// [`snapshot_built`](Consensus::snapshot_built).
    pub fn wants_snapshot(&self) -> bool {
        let snap = self
            .snapshot
            .as_ref()
            .map_or(LogIndex(0), |s| s.last_log_id.index);
        self.applied.0.saturating_sub(snap.0) >= self.cfg.snapshot_threshold_entries
    }

    /// Whether this leader can currently serve reads from its lease.
    pub fn lease_valid(&self) -> bool {
        self.cfg.lease_read
            && self.role == Role::Leader
            && !self.lease_disabled
            && self.transfer.is_none()
            && self.committed_in_term()
            && self.now_ms < self.lease_until_ms
    }

    fn committed_in_term(&self) -> bool {
        self.role == Role::Leader && self.commit >= self.noop_index
    }

    fn is_voter(&self) -> bool {
        self.membership().is_voter(self.id)
    }

    // ----------------------------------------------------------------- output

    fn send(&mut self, to: NodeId, msg: Message) {
        self.msgs.push(Outbound { to, msg });
    }

    fn send_persisted(&mut self, to: NodeId, msg: Message) {
        self.persisted_msgs.push(Outbound { to, msg });
    }

    // ------------------------------------------------------------------ roles

    fn reset_election_timer(&mut self) {
        self.election_deadline_ms = self.now_ms
            + self.rng.range(
                self.cfg.election_timeout_min_ms,
                self.cfg.election_timeout_max_ms,
            );
    }

    fn reset_leader_state(&mut self) {
        self.progress.clear();
        // Snapshot streams decided as leader are void once we are not.
        self.snapshot_sends.clear();
        self.pending_reads.clear();
        self.reads_awaiting_commit.clear();
        self.transfer = None;
        self.joint_target = None;
        self.heartbeat_pending = false;
        self.append_pending = false;
        self.lease_until_ms = 0;
        self.lease_round = 0;
        self.round_starts.clear();
        self.uncommitted_bytes = 0;
        self.votes.clear();
    }

    fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        if term > self.term {
            self.term = term;
            self.vote = None;
        }
        self.role = Role::Follower;
        self.leader = leader;
        self.reset_leader_state();
        self.reset_election_timer();
        if leader.is_some() {
            self.sticky_until_ms = self.now_ms + self.cfg.election_timeout_min_ms;
        }
    }

    fn campaign(&mut self, transfer: bool) {
        if !self.is_voter() || self.role == Role::Leader {
            return;
        }
        if self.cfg.pre_vote && !transfer {
            self.become_pre_candidate();
        } else {
            self.become_candidate(transfer);
        }
    }

    fn become_pre_candidate(&mut self) {
        self.reset_leader_state();
        self.role = Role::PreCandidate;
        self.leader = None;
        self.votes.insert(self.id, true);
        self.reset_election_timer();
        let req = VoteRequest {
            term: Term(self.term.0 + 1),
            last: self.log.last_id(),
            pre_vote: true,
            transfer: false,
        };
        for v in self.membership().all_voters() {
            if v != self.id {
                self.send(v, Message::Vote(req));
            }
        }
        self.check_votes();
    }

    fn become_candidate(&mut self, transfer: bool) {
        self.reset_leader_state();
        self.term = Term(self.term.0 + 1);
        self.vote = Some(self.id);
        self.role = Role::Candidate;
        self.leader = None;
        self.votes.insert(self.id, true);
        self.reset_election_timer();
        let req = VoteRequest {
            term: self.term,
            last: self.log.last_id(),
            pre_vote: false,
            transfer,
        };
        for v in self.membership().all_voters() {
            if v != self.id {
                // The request promises our own vote: durable first.
                self.send_persisted(v, Message::Vote(req));
            }
        }
        self.check_votes();
    }

    fn check_votes(&mut self) {
        let m = self.membership();
        let won = m.is_quorum(|n| self.votes.get(&n) == Some(&true));
        let lost = m.is_quorum(|n| self.votes.get(&n) == Some(&false));
        if won {
            match self.role {
                Role::PreCandidate => self.become_candidate(false),
                Role::Candidate => self.become_leader(),
                _ => {}
            }
        } else if lost {
            self.become_follower(self.term, None);
        }
    }

    fn become_leader(&mut self) {
        self.reset_leader_state();
        self.role = Role::Leader;
        self.leader = Some(self.id);
        self.lease_disabled = false;
        let next = self.log.last_index().next();
        let now = self.now_ms;
        for n in self.replication_targets() {
            if n != self.id {
                self.progress.insert(n, Progress::new(next, now));
            }
        }
        self.heartbeat_due_ms = now + self.cfg.heartbeat_interval_ms;
        self.quorum_check_due_ms = now + self.cfg.election_timeout_min_ms;
        self.new_round();
        self.uncommitted_bytes = self
            .log
            .slice(self.commit.next(), self.log.last_index())
            .iter()
            .map(Entry::size_bytes)
            .sum();
        // A no-op of the new term: commits everything before it (Raft §5.4.2)
        // and lets reads be served (thesis §6.4).
        self.noop_index = self.append_entry(EntryPayload::Blank).index;
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

    // ----------------------------------------------------------------- leader

    fn append_entry(&mut self, payload: EntryPayload) -> LogId {
        let log_id = LogId {
            term: self.term,
            index: self.log.last_index().next(),
        };
        let is_config = matches!(payload, EntryPayload::Membership(_));
        if let EntryPayload::Membership(m) = &payload {
            self.configs.push((log_id.index, Membership::clone(m)));
        }
        let entry = Entry { log_id, payload };
        self.uncommitted_bytes += entry.size_bytes();
        self.log.push(entry);
        self.append_pending = true;
        if is_config {
            self.sync_progress();
        }
        log_id
    }

    /// The nodes a leader replicates to: those of the configuration in
    /// force and, while it is uncommitted, those of the one before it. A
    /// member being removed thus gets the entry that removes it (and stops
    /// campaigning, as it is no voter there). Without it, its log would be
    /// as short as that of a voter that missed the entry, and the two could
    /// elect a leader of the old configuration that discards the removal.
    /// Only replication: commit, votes and quorum checks count the
    /// configuration in force alone.
    fn replication_targets(&self) -> BTreeSet<NodeId> {
        let mut nodes = self.membership().all_nodes();
        if self.membership_index() > self.commit {
            let previous = match self.configs.len() {
                0 | 1 => &self.base_membership,
                n => &self.configs[n - 2].1,
            };
            nodes.extend(previous.all_nodes());
        }
        nodes
    }

    /// Makes the progress map match [`Self::replication_targets`].
    fn sync_progress(&mut self) {
        if self.role != Role::Leader {
            return;
        }
        let members = self.replication_targets();
        let next = self.log.last_index().next();
        let now = self.now_ms;
        self.progress.retain(|n, _| members.contains(n));
        for n in members {
            if n != self.id {
                self.progress
                    .entry(n)
                    .or_insert_with(|| Progress::new(next, now));
            }
        }
        if let Some(t) = self.transfer
            && !self.membership().voters.contains(&t.to)
        {
            self.transfer = None;
        }
    }

    fn broadcast_append(&mut self) {
        let peers: Vec<NodeId> = self.progress.keys().copied().collect();
        for p in peers {
            self.maybe_send_append(p);
        }
    }

    fn maybe_send_append(&mut self, to: NodeId) {
        let last = self.log.last_index();
        loop {
            let Some(pr) = self.progress.get(&to) else {
                return;
            };
            match pr.state {
                ProgressState::Snapshot { .. } => return,
                ProgressState::Probe if pr.probe_sent => return,
                ProgressState::Probe => {}
                ProgressState::Replicate => {
                    if pr.next_index > last
                        || pr.window_full(self.cfg.max_inflight_msgs, self.cfg.max_inflight_bytes)
                    {
                        return;
                    }
                }
            }
            let next = pr.next_index;
            let state = pr.state;
            let prev_index = next.prev();
            let Some(prev_term) = self.log.term(prev_index) else {
                self.send_snapshot(to);
                return;
            };
            let slice = self.log.slice(next, last);
            let mut n = 0;
            let mut bytes = 0;
            for e in slice {
                let sz = e.size_bytes();
                if n >= self.cfg.max_entries_per_msg
                    || (n > 0 && bytes + sz > self.cfg.max_bytes_per_msg)
                {
                    break;
                }
                bytes += sz;
                n += 1;
            }
            let entries = slice[..n].to_vec();
            let last_sent = LogIndex(prev_index.0 + n as u64);
            let msg = Message::Append(AppendRequest {
                term: self.term,
                prev: LogId {
                    term: prev_term,
                    index: prev_index,
                },
                entries,
                commit: self.commit,
                round: self.round,
            });
            let now = self.now_ms;
            let round = self.round;
            let Some(pr) = self.progress.get_mut(&to) else {
                return;
            };
            pr.sent_round = round;
            self.msgs.push(Outbound { to, msg });
            match state {
                ProgressState::Replicate => {
                    if pr.inflight.is_empty() {
                        pr.progress_at_ms = now;
                    }
                    pr.add_inflight(last_sent, bytes.max(1));
                    if n == 0 {
                        return;
                    }
                }
                _ => {
                    pr.probe_sent = true;
                    pr.progress_at_ms = now;
                    return;
                }
            }
        }
    }

    fn send_snapshot(&mut self, to: NodeId) {
        let Some(meta) = self.snapshot.clone() else {
            // Entries are only ever compacted under a snapshot.
            return;
        };
        let now = self.now_ms;
        if let Some(pr) = self.progress.get_mut(&to) {
            pr.become_snapshot(meta.last_log_id.index, now);
            pr.sent_round = self.round;
        }
        self.snapshot_sends.push(SnapshotSend {
            to,
            meta: meta.clone(),
            header: Message::InstallSnapshot {
                term: self.term,
                meta,
            },
        });
    }

    fn send_heartbeats(&mut self) {
        let round = self.round;
        let commit = self.commit;
        let term = self.term;
        let mut out = Vec::new();
        for (n, pr) in self.progress.iter_mut() {
            if pr.sent_round >= round {
                continue; // an append of this round already went out
            }
            pr.sent_round = round;
            out.push(Outbound {
                to: *n,
                msg: Message::Heartbeat {
                    term,
                    commit: commit.min(pr.match_index),
                    round,
                },
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
            self.broadcast_append();
        }
        if mem::take(&mut self.heartbeat_pending) {
            self.send_heartbeats();
        }
    }

    /// The leader's own durable index counts toward commit; only an entry of
    /// the current term is committed by counting (Raft §5.4.2).
    fn maybe_commit(&mut self) {
        if self.role != Role::Leader {
            return;
        }
        let own = self.stable_index.min(self.log.last_index());
        let id = self.id;
        let progress = &self.progress;
        let q = LogIndex(self.membership().quorum_min(|n| {
            if n == id {
                own.0
            } else {
                progress.get(&n).map_or(0, |p| p.match_index.0)
            }
        }));
        if q > self.commit && self.log.term(q) == Some(self.term) {
            self.commit_to(q);
        }
    }

    fn commit_to(&mut self, index: LogIndex) {
        if index <= self.commit {
            return;
        }
        let old = self.commit;
        self.commit = index;
        if self.role != Role::Leader {
            return;
        }
        let freed: usize = self
            .log
            .slice(old.next(), index)
            .iter()
            .map(Entry::size_bytes)
            .sum();
        self.uncommitted_bytes = self.uncommitted_bytes.saturating_sub(freed);
        if old < self.membership_index() && index >= self.membership_index() {
            // Members the committed configuration removed get no more.
            self.sync_progress();
        }
        if old < self.noop_index && index >= self.noop_index {
            for (origin, ctx) in mem::take(&mut self.reads_awaiting_commit) {
                self.register_read(origin, ctx);
            }
        }
        self.after_config_commit();
    }

    fn after_config_commit(&mut self) {
        if self.role != Role::Leader || self.membership_index() > self.commit {
            return;
        }
        let m = self.membership().clone();
        if m.is_joint() {
            // Leave the joint configuration (the second step of joint
            // consensus) with the target the change asked for, or, if
            // another leader started it, the incoming half as it stands.
            let target = self
                .joint_target
                .take()
                .filter(|t| t.voters == m.voters)
                .unwrap_or(Membership {
                    voters: m.voters.clone(),
                    voters_outgoing: None,
                    learners: m.learners.clone(),
                });
            self.append_entry(EntryPayload::Membership(Box::new(target)));
        } else if !m.voters.contains(&self.id) {
            // Removed: hand over to the most up-to-date voter and step down.
            let last = self.log.last_index();
            let best = self
                .progress
                .iter()
                .filter(|(n, p)| m.voters.contains(n) && p.match_index == last)
                .map(|(n, _)| *n)
                .next();
            if let Some(b) = best {
                self.send(b, Message::TimeoutNow { term: self.term });
            }
            self.become_follower(self.term, None);
        }
    }

    fn register_read(&mut self, origin: NodeId, ctx: ReadCtx) {
        if !self.committed_in_term() {
            self.reads_awaiting_commit.push((origin, ctx));
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
        self.update_reads_and_lease();
    }

    fn release_read(&mut self, origin: NodeId, ctx: ReadCtx, index: LogIndex) {
        if origin == self.id {
            self.read_states.push(ReadState { ctx, index });
        } else {
            self.send(origin, Message::ReadIndexResponse { ctx, index });
        }
    }

    fn update_reads_and_lease(&mut self) {
        if self.role != Role::Leader {
            return;
        }
        let id = self.id;
        let own = self.round;
        let progress = &self.progress;
        let q = self.membership().quorum_min(|n| {
            if n == id {
                own
            } else {
                progress.get(&n).map_or(0, |p| p.acked_round)
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

    fn on_append_response(&mut self, from: NodeId, resp: AppendResponse) {
        let now = self.now_ms;
        let last = self.log.last_index();
        let round = self.round;
        let Some(pr) = self.progress.get_mut(&from) else {
            return;
        };
        pr.recent_active = true;
        if resp.round <= round && resp.round > pr.acked_round {
            pr.acked_round = resp.round;
        }
        match resp.outcome {
            AppendOutcome::Success { match_index } => {
                if match_index > last {
                    // Claims entries we never sent: malformed, ignore.
                    return;
                }
                let moved = pr.update_match(match_index, now);
                match pr.state {
                    ProgressState::Probe => {
                        if moved || pr.match_index == match_index {
                            pr.become_replicate(now);
                        }
                    }
                    ProgressState::Snapshot { index, .. } => {
                        if pr.match_index >= index {
                            pr.become_replicate(now);
                        }
                    }
                    ProgressState::Replicate => {}
                }
                let caught_up = pr.match_index == last;
                if moved {
                    self.maybe_commit();
                }
                if caught_up && self.transfer.is_some_and(|t| t.to == from) {
                    self.send_timeout_now(from);
                }
                self.maybe_send_append(from);
            }
            AppendOutcome::Conflict {
                rejected_prev,
                hint,
            } => {
                let stale = match pr.state {
                    ProgressState::Replicate => rejected_prev <= pr.match_index,
                    ProgressState::Probe => rejected_prev != pr.next_index.prev(),
                    ProgressState::Snapshot { .. } => true,
                };
                if !stale {
                    let match_index = pr.match_index;
                    // Last index at or below the hint where our term is at
                    // most the follower's: everything after it may differ.
                    let mut j = hint.index.min(last);
                    while j > LogIndex(0) {
                        match self.log.term(j) {
                            Some(t) if t <= hint.term => break,
                            Some(_) => j = j.prev(),
                            None => break,
                        }
                    }
                    let next = j.next().min(rejected_prev).max(match_index.next());
                    if let Some(pr) = self.progress.get_mut(&from) {
                        pr.next_index = next;
                        pr.state = ProgressState::Probe;
                        pr.probe_sent = false;
                        pr.inflight.clear();
                        pr.inflight_bytes = 0;
                        pr.progress_at_ms = now;
                    }
                    self.maybe_send_append(from);
                }
            }
        }
        self.update_reads_and_lease();
    }

    fn on_heartbeat_response(&mut self, from: NodeId, round: u64) {
        let last = self.log.last_index();
        let own = self.round;
        let Some(pr) = self.progress.get_mut(&from) else {
            return;
        };
        pr.recent_active = true;
        if round <= own && round > pr.acked_round {
            pr.acked_round = round;
        }
        if pr.state == ProgressState::Probe {
            pr.probe_sent = false;
        }
        if pr.match_index < last {
            self.maybe_send_append(from);
        }
        self.update_reads_and_lease();
    }

    fn send_timeout_now(&mut self, to: NodeId) {
        // The target may win an election at any moment now, so this term's
        // lease is over.
        self.lease_disabled = true;
        self.send(to, Message::TimeoutNow { term: self.term });
    }

    fn tick_leader(&mut self) {
        let now = self.now_ms;
        if self.cfg.check_quorum && now >= self.quorum_check_due_ms {
            self.quorum_check_due_ms = now + self.cfg.election_timeout_min_ms;
            let id = self.id;
            let progress = &self.progress;
            let active = self
                .membership()
                .is_quorum(|n| n == id || progress.get(&n).is_some_and(|p| p.recent_active));
            for p in self.progress.values_mut() {
                p.recent_active = false;
            }
            if !active {
                self.become_follower(self.term, None);
                return;
            }
        }
        if self.transfer.is_some_and(|t| now >= t.deadline_ms) {
            self.transfer = None;
        }
        if now >= self.heartbeat_due_ms {
            self.heartbeat_due_ms = now + self.cfg.heartbeat_interval_ms;
            self.new_round();
            let retransmit = self.cfg.append_retransmit_ms;
            let snap_timeout = self.cfg.snapshot_send_timeout_ms;
            for pr in self.progress.values_mut() {
                let waited = now.saturating_sub(pr.progress_at_ms);
                match pr.state {
                    ProgressState::Replicate if !pr.inflight.is_empty() && waited >= retransmit => {
                        pr.next_index = pr.match_index.next();
                        pr.become_probe(now);
                    }
                    ProgressState::Probe if pr.probe_sent && waited >= retransmit => {
                        pr.probe_sent = false;
                    }
                    ProgressState::Snapshot { sent_at_ms, .. }
                        if now.saturating_sub(sent_at_ms) >= snap_timeout =>
                    {
                        pr.next_index = pr.match_index.next();
                        pr.become_probe(now);
                    }
                    _ => {}
                }
            }
            self.append_pending = true;
        }
    }

    // --------------------------------------------------------------- follower

    fn follow(&mut self, from: NodeId) {
        if self.role != Role::Follower {
            self.become_follower(self.term, Some(from));
        }
        self.leader = Some(from);
        self.reset_election_timer();
        self.sticky_until_ms = self.now_ms + self.cfg.election_timeout_min_ms;
    }

    fn truncate_log(&mut self, from: LogIndex) {
        self.log.truncate_from(from);
        self.configs.retain(|(i, _)| *i < from);
        self.pending_truncate = Some(self.pending_truncate.map_or(from, |t| t.min(from)));
        self.persist_from = self.persist_from.min(from);
        self.stable_index = self.stable_index.min(from.prev());
        if let Some(f) = self.in_flight.as_mut() {
            f.last_index = f.last_index.min(from.prev());
        }
    }

    fn on_append(&mut self, from: NodeId, req: AppendRequest) {
        if req.check(self.cfg.max_recv_entries_per_msg).is_err() {
            return;
        }
        if self.role == Role::Leader {
            return; // one leader per term: a stray message
        }
        self.follow(from);
        let mut prev = req.prev;
        let mut skip = 0;
        let mut entries: &[Entry] = &req.entries;
        if prev.index < self.commit {
            // Everything up to our commit index matches any leader's log.
            skip = usize::try_from(self.commit.0 - prev.index.0)
                .unwrap_or(usize::MAX)
                .min(entries.len());
            entries = &entries[skip..];
            prev = LogId {
                term: self.log.term(self.commit).unwrap_or(Term(0)),
                index: self.commit,
            };
            if let Some(first) = entries.first() {
                prev.index = first.index().prev();
                prev.term = self.log.term(prev.index).unwrap_or(Term(0));
            }
        }
        if self.log.term(prev.index) != Some(prev.term) {
            let hint = self.log.conflict_hint(prev.index, prev.term);
            self.send_persisted(
                from,
                Message::AppendResponse(AppendResponse {
                    term: self.term,
                    round: req.round,
                    outcome: AppendOutcome::Conflict {
                        rejected_prev: req.prev.index,
                        hint,
                    },
                }),
            );
            return;
        }
        let mut new_from = entries.len();
        for (i, e) in entries.iter().enumerate() {
            match self.log.term(e.index()) {
                Some(t) if t == e.term() => continue,
                Some(_) => {
                    if e.index() <= self.commit {
                        // A leader contradicting a committed entry: impossible
                        // for a correct leader, so the message is bogus.
                        return;
                    }
                    self.truncate_log(e.index());
                    new_from = i;
                    break;
                }
                None => {
                    new_from = i;
                    break;
                }
            }
        }
        let last_new = LogIndex(prev.index.0 + entries.len() as u64);
        let (round, leader_commit) = (req.round, req.commit);
        for e in req.entries.into_iter().skip(skip + new_from) {
            if let EntryPayload::Membership(m) = &e.payload {
                self.configs.push((e.index(), Membership::clone(m)));
            }
            self.log.push(e);
        }
        let c = leader_commit.min(last_new);
        self.commit_to(c);
        let match_index = last_new.max(self.commit.min(self.log.last_index()));
        self.send_persisted(
            from,
            Message::AppendResponse(AppendResponse {
                term: self.term,
                round,
                outcome: AppendOutcome::Success { match_index },
            }),
        );
    }

    fn on_heartbeat(&mut self, from: NodeId, commit: LogIndex, round: u64) {
        if self.role == Role::Leader {
            return;
        }
        self.follow(from);
        self.commit_to(commit.min(self.log.last_index()));
        self.send(
            from,
            Message::HeartbeatResponse {
                term: self.term,
                round,
            },
        );
    }

    fn on_install_snapshot(&mut self, from: NodeId, meta: SnapshotMeta) {
        let membership = if meta.membership == Membership::default() {
            // Taken before any configuration entry: the bootstrap one.
            self.bootstrap.clone()
        } else {
            meta.membership.clone()
        };
        if self.role == Role::Leader
            || meta.last_log_id.term > self.term
            || (membership.validate().is_err() && membership != Membership::default())
        {
            return;
        }
        self.follow(from);
        let idx = meta.last_log_id.index;
        let match_index = if idx <= self.commit {
            self.commit
        } else if self.log.term(idx) == Some(meta.last_log_id.term) {
            // We hold the snapshot's last entry: by log matching everything
            // up to it agrees, so the snapshot teaches only the commit.
            self.commit_to(idx);
            idx
        } else {
            self.log.reset(meta.last_log_id);
            self.configs.clear();
            self.base_membership = membership;
            self.pending_truncate = Some(idx.next());
            self.persist_from = idx.next();
            self.stable_index = self.stable_index.min(idx);
            if let Some(f) = self.in_flight.as_mut() {
                f.last_index = f.last_index.min(idx);
            }
            self.commit = idx;
            self.applied_handed = idx;
            self.applied = self.applied.max(idx);
            self.pending_install = Some(meta.clone());
            self.pending_purge = None;
            self.snapshot = Some(meta);
            idx
        };
        self.send_persisted(
            from,
            Message::AppendResponse(AppendResponse {
                term: self.term,
                round: 0,
                outcome: AppendOutcome::Success { match_index },
            }),
        );
    }

    fn on_vote(&mut self, from: NodeId, req: VoteRequest) {
        let up_to_date = req.last >= self.log.last_id();
        if req.pre_vote {
            let can = req.term > self.term
                || (req.term == self.term
                    && (self.vote == Some(from) || (self.vote.is_none() && self.leader.is_none())));
            let granted = can && up_to_date;
            let term = if granted { req.term } else { self.term };
            self.send(
                from,
                Message::VoteResponse(VoteResponse {
                    term,
                    pre_vote: true,
                    granted,
                }),
            );
            return;
        }
        let can = self.vote == Some(from) || (self.vote.is_none() && self.leader.is_none());
        let granted = can && up_to_date && self.role != Role::Leader;
        if granted {
            self.vote = Some(from);
            self.reset_election_timer();
        }
        // A grant promises a durable vote.
        self.send_persisted(
            from,
            Message::VoteResponse(VoteResponse {
                term: self.term,
                pre_vote: false,
                granted,
            }),
        );
    }

    fn on_vote_response(&mut self, from: NodeId, resp: VoteResponse) {
        let expected = match self.role {
            Role::PreCandidate if resp.pre_vote => Term(self.term.0 + 1),
            Role::Candidate if !resp.pre_vote => self.term,
            _ => return,
        };
        if resp.granted && resp.term != expected {
            return;
        }
        if !self.membership().is_voter(from) {
            return;
        }
        self.votes.insert(from, resp.granted);
        self.check_votes();
    }

    fn sticky(&self) -> bool {
        self.cfg.check_quorum && (self.role == Role::Leader || self.now_ms < self.sticky_until_ms)
    }

    fn step_message(&mut self, from: NodeId, msg: Message) {
        if let Some(mt) = msg.term() {
            if mt > self.term {
                match &msg {
                    Message::Vote(v) => {
                        if self.sticky() && !v.transfer {
                            return; // a live leader exists: ignore
                        }
                        if !v.pre_vote {
                            self.become_follower(mt, None);
                        }
                    }
                    Message::VoteResponse(r) if r.pre_vote && r.granted => {}
                    Message::Append(_)
                    | Message::Heartbeat { .. }
                    | Message::InstallSnapshot { .. }
                    | Message::TimeoutNow { .. } => self.become_follower(mt, Some(from)),
                    _ => self.become_follower(mt, None),
                }
            } else if mt < self.term {
                match &msg {
                    Message::Append(_)
                    | Message::Heartbeat { .. }
                    | Message::InstallSnapshot { .. }
                        if self.cfg.check_quorum || self.cfg.pre_vote =>
                    {
                        // Tell the stale leader about the newer term.
                        self.send(
                            from,
                            Message::HeartbeatResponse {
                                term: self.term,
                                round: 0,
                            },
                        );
                    }
                    Message::Vote(v) => {
                        self.send(
                            from,
                            Message::VoteResponse(VoteResponse {
                                term: self.term,
                                pre_vote: v.pre_vote,
                                granted: false,
                            }),
                        );
                    }
                    _ => {}
                }
                return;
            }
        }
        match msg {
            Message::Append(req) => self.on_append(from, req),
            Message::AppendResponse(resp) => {
                if self.role == Role::Leader {
                    self.on_append_response(from, resp);
                }
            }
            Message::Vote(req) => self.on_vote(from, req),
            Message::VoteResponse(resp) => self.on_vote_response(from, resp),
            Message::Heartbeat { commit, round, .. } => self.on_heartbeat(from, commit, round),
            Message::HeartbeatResponse { round, .. } => {
                if self.role == Role::Leader {
                    self.on_heartbeat_response(from, round);
                }
            }
            Message::InstallSnapshot { meta, .. } => self.on_install_snapshot(from, meta),
            Message::TimeoutNow { .. } => {
                if self.role != Role::Leader {
                    self.campaign(true);
                }
            }
            Message::ReadIndex { ctx } => {
                if self.role == Role::Leader
                    && self.pending_reads.len() + self.reads_awaiting_commit.len()
                        < self.cfg.max_pending_reads
                {
                    self.register_read(from, ctx);
                }
            }
            Message::ReadIndexResponse { ctx, index } => {
                if self.read_states.len() < self.cfg.max_pending_reads {
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
                if let Err(e) = target.validate() {
                    return invalid(e.to_string());
                }
                if &target == cur {
                    return invalid("the target equals the configuration in force".into());
                }
                let learners = target
                    .learners
                    .iter()
                    .filter(|n| !cur.voters.contains(n) && !target.voters.contains(n))
                    .copied()
                    .collect();
                m = Membership {
                    voters: target.voters.clone(),
                    voters_outgoing: Some(cur.voters.clone()),
                    learners,
                };
            }
        }
        if let Err(e) = m.validate() {
            return invalid(e.to_string());
        }
        Ok(m)
    }

    #[cfg(test)]
    pub(crate) fn set_log_for_test(&mut self, entries: Vec<Entry>, term: Term) {
        self.log = RaftLog::new(LogId::default(), entries);
        self.term = term;
        self.persist_from = self.log.last_index().next();
        self.stable_index = self.log.last_index();
        self.handed_hs = HardState {
            term,
            vote: self.vote,
            commit: self.commit,
        };
    }

    #[cfg(test)]
    pub(crate) fn campaign_for_test(&mut self) {
        self.campaign(true);
    }
}

impl Consensus for Raft {
    type Message = Message;

    fn id(&self) -> NodeId {
        self.id
    }

    fn tick(&mut self, now: Millis) {
        if !self.started {
            self.started = true;
            self.now_ms = now;
            // A restarted node may have acknowledged a leader just before it
            // went down: honour that leader's lease.
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
                self.campaign(false);
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
                if self.pending_reads.len() + self.reads_awaiting_commit.len()
                    >= self.cfg.max_pending_reads
                {
                    return Err(ProposeError::Overloaded(format!(
                        "{} reads pending, max_pending_reads is {}",
                        self.pending_reads.len() + self.reads_awaiting_commit.len(),
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
            || !self.committed_in_term()
            || self.membership_index() > self.commit
            || self.membership().is_joint()
        {
            return Err(ProposeError::InProgress);
        }
        let joint_target = match &change {
            MembershipChange::Replace(t) => Some(t.clone()),
            _ => None,
        };
        let m = self.membership_target(change)?;
        self.joint_target = joint_target;
        Ok(self.append_entry(EntryPayload::Membership(Box::new(m))))
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
        if !self.membership().voters.contains(&to) {
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
        let caught_up = self
            .progress
            .get(&to)
            .is_some_and(|p| p.match_index == self.log.last_index());
        if caught_up {
            self.send_timeout_now(to);
        } else {
            self.maybe_send_append(to);
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
            || self.pending_truncate.is_some()
            || self.persist_from <= self.log.last_index()
            // A commit-only change needs no Ready of its own (see `ready`).
            || self.handed_hs.term != self.term
            || self.handed_hs.vote != self.vote
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
        rd.truncate_from = self.pending_truncate.take();
        let last = self.log.last_index();
        if self.persist_from <= last {
            rd.entries = self.log.slice(self.persist_from, last).to_vec();
        }
        self.persist_from = last.next();
        let hs = HardState {
            term: self.term,
            vote: self.vote,
            commit: self.commit,
        };
        let term_or_vote = hs.term != self.handed_hs.term || hs.vote != self.handed_hs.vote;
        // The commit index is volatile state in Raft (after a restart it is
        // re-learned from a quorum), so storing it is only a head start on
        // re-applying. A commit-only change therefore rides along with a
        // write this Ready makes anyway and never costs an fsync of its own:
        // on the leader that removes one fsync from every commit.
        let writes_anyway = !rd.entries.is_empty()
            || rd.truncate_from.is_some()
            || rd.snapshot.is_some()
            || self.pending_purge.is_some();
        if hs != self.handed_hs && (term_or_vote || writes_anyway) {
            if term_or_vote {
                // Every message may depend on the new term or vote.
                let mut all = mem::take(&mut rd.messages);
                all.append(&mut rd.persisted_messages);
                rd.persisted_messages = all;
            }
            rd.hard_state = Some(hs);
            self.handed_hs = hs;
        }
        if self.commit > self.applied_handed {
            let slice = self.log.slice(self.applied_handed.next(), self.commit);
            let mut bytes = 0;
            let mut n = 0;
            for e in slice {
                let sz = e.size_bytes();
                if n > 0 && bytes + sz > self.cfg.max_apply_bytes_per_ready {
                    break;
                }
                bytes += sz;
                n += 1;
            }
            rd.committed = slice[..n].to_vec();
            if let Some(e) = rd.committed.last() {
                self.applied_handed = e.index();
            }
        }
        rd.reads = mem::take(&mut self.read_states);
        rd.send_snapshots = mem::take(&mut self.snapshot_sends);
        if let Some(latest) = self.snapshot.as_ref().filter(|_| self.role == Role::Leader) {
            // The driver streams its latest snapshot: name that one in the
            // header, even if it was built after the send was decided.
            let now = self.now_ms;
            for s in &mut rd.send_snapshots {
                if s.meta.last_log_id.index < latest.last_log_id.index {
                    s.meta = latest.clone();
                    s.header = Message::InstallSnapshot {
                        term: self.term,
                        meta: latest.clone(),
                    };
                    if let Some(pr) = self.progress.get_mut(&s.to) {
                        pr.become_snapshot(latest.last_log_id.index, now);
                    }
                }
            }
        }
        rd.purge_to = self.pending_purge.take();
        self.in_flight = Some(InFlightReady {
            number: rd.number,
            last_index: last,
        });
        rd
    }

    fn advance(&mut self, number: ReadyNumber) {
        let Some(f) = self.in_flight else { return };
        if f.number != number {
            return;
        }
        self.in_flight = None;
        self.stable_index = self.stable_index.max(f.last_index);
        self.maybe_commit();
    }

    fn applied(&mut self, index: LogIndex) {
        if index > self.applied {
            self.applied = index.min(self.applied_handed);
        }
    }

    fn snapshot_built(&mut self, meta: SnapshotMeta) {
        let idx = meta.last_log_id.index;
        if idx > self.commit || idx > self.applied_handed || idx < self.log.start().index {
            return;
        }
        if self
            .snapshot
            .as_ref()
            .is_some_and(|s| s.last_log_id.index >= idx)
        {
            return;
        }
        if self.log.term(idx) != Some(meta.last_log_id.term) {
            return; // not a snapshot of this log
        }
        self.snapshot = Some(meta);
        let compact = LogIndex(idx.0.saturating_sub(self.cfg.snapshot_trailing_entries));
        if compact > self.log.start().index {
            if let Some(pos) = self.configs.iter().rposition(|(i, _)| *i <= compact) {
                self.base_membership = self.configs[pos].1.clone();
                self.configs.drain(..=pos);
            }
            self.log.compact_to(compact);
            self.pending_purge = Some(compact);
        }
    }

    fn status(&self) -> Status {
        let m = self.membership();
        let role = if self.role == Role::Follower && m.is_learner(self.id) {
            Role::Learner
        } else {
            self.role
        };
        Status {
            id: self.id,
            role,
            term: self.term,
            leader: self.leader,
            commit: self.commit,
            last_index: self.log.last_index(),
            membership: m.clone(),
        }
    }
}
