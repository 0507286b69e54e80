//! The placement controller: replicated shard map + observed liveness →
//! the next bounded batch of idempotent [`Step`]s.
//!
//! The controller runs on the metadata group's leader and keeps **no state
//! of its own**: [`Controller::plan`] is a pure function of the
//! [`ShardMap`] (replicated) and a [`ClusterView`] (what this leader has
//! observed: heartbeats, learner progress). A new leader therefore resumes
//! exactly where the old one stopped, after any prefix of its steps was
//! applied — there is nothing to hand over.
//!
//! # What one plan does
//!
//! 1. **Liveness.** A member the current target counts is dead once nothing
//!    was heard from it for `dead_after_ms` — counted from when this
//!    controller started observing at the latest, so a fresh leader gives
//!    everyone a full grace period. A member the target does not count
//!    (new, or declared dead earlier) becomes live only on positive
//!    evidence: heard by this controller without a gap for at least
//!    `join_after_ms` and within `dead_after_ms` — so a flapping member
//!    does not pull replicas back and forth. The declaration itself is
//!    replicated (the target's member list), so a controller failover
//!    never resurrects a dead member.
//! 2. **Target.** If the live members (with weights) differ from the ones
//!    the target was balanced for, the plan is a single [`Step::SetTarget`]:
//!    ha-ring's [`ShardTable::rebalance`] of the stored target onto the live
//!    members — only a dead member's replicas move, a new member only
//!    receives, every member ends within one replica of its weighted share,
//!    zones spread first.
//! 3. **Moves**, at most one membership step per shard per batch (each one
//!    bumps the shard's epoch), most endangered shards first (fewest live
//!    voters):
//!    remove a learner that is no longer in the target → promote a target
//!    learner that caught up → once every target member votes, remove a
//!    voter outside the target (dead ones first; a live leader first hands
//!    leadership to a target voter) → add a missing, live target member as
//!    learner, while fewer than `max_concurrent_moves` learners are
//!    catching up. Hence the order add learner → catch up → promote →
//!    remove, a replica is never removed before its replacement votes, and
//!    a shard that had R live voters never drops below R − (failures).
//!    A shard whose live voters are not a majority cannot change its
//!    configuration and is skipped ([`Note::NoQuorum`]).
//! 4. **Leaders.** While a live member leads more than `⌈shards / live⌉`
//!    shards, leadership moves along a shortest chain of shards (leader →
//!    co-voter → … → a member below the cap), so the cap is reached even
//!    when the overloaded member shares no shard with an underloaded one.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use ha_core::{GroupId, NodeId};
use ha_ring::table::ShardTable;
use ha_ring::{Cluster, NodeSpec, RingError};

use crate::map::{MAX_MEMBERS, MAX_SHARD_MEMBERS, MAX_SHARDS, ShardMap, ShardState, Step};

/// Default time without a heartbeat before a member's replicas are moved
/// (`--dead-after`).
pub const DEFAULT_DEAD_AFTER_MS: u64 = 30_000;
/// Shortest accepted `dead_after_ms`: below this, a GC pause or a busy
/// network would trigger needless re-replication.
pub const MIN_DEAD_AFTER_MS: u64 = 100;
/// Longest accepted `dead_after_ms` (one week).
pub const MAX_DEAD_AFTER_MS: u64 = 7 * 24 * 3600 * 1000;
/// Default time a member outside the target must be heard without a gap
/// before it receives replicas (`--join-after`).
pub const DEFAULT_JOIN_AFTER_MS: u64 = 10_000;
/// Default learners catching up at once, cluster-wide.
pub const DEFAULT_MAX_CONCURRENT_MOVES: usize = 4;
/// Upper bound for `max_concurrent_moves` (each move streams a snapshot).
pub const MAX_CONCURRENT_MOVES: usize = 1024;
/// Default steps per plan.
pub const DEFAULT_MAX_STEPS_PER_BATCH: usize = 64;
/// Upper bound for `max_steps_per_batch`.
pub const MAX_STEPS_PER_BATCH: usize = 4096;
/// Default leader transfers per plan.
pub const DEFAULT_MAX_LEADER_TRANSFERS_PER_BATCH: usize = 8;
/// Most `(shard, learner)` progress reports a [`ClusterView`] may carry.
pub const MAX_CAUGHT_UP_REPORTS: usize = MAX_SHARDS as usize * MAX_SHARD_MEMBERS;

/// The controller's knobs. Every one is bounded; see [`ControllerConfig::validate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControllerConfig {
    /// Time without a heartbeat after which a member counts as dead and its
    /// replicas are rebuilt elsewhere (`MIN_DEAD_AFTER_MS..=MAX_DEAD_AFTER_MS`).
    pub dead_after_ms: u64,
    /// Time a member outside the target (new, or declared dead before) must
    /// be heard without a gap before it counts as live
    /// (`0..=MAX_DEAD_AFTER_MS`): damps flapping members.
    pub join_after_ms: u64,
    /// Most learners catching up at the same time, cluster-wide
    /// (`1..=MAX_CONCURRENT_MOVES`): bounds snapshot traffic.
    pub max_concurrent_moves: usize,
    /// Most steps in one plan (`1..=MAX_STEPS_PER_BATCH`).
    pub max_steps_per_batch: usize,
    /// Most leader transfers in one plan (`0..=max_steps_per_batch`; 0
    /// turns leader spreading off).
    pub max_leader_transfers_per_batch: usize,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            dead_after_ms: DEFAULT_DEAD_AFTER_MS,
            join_after_ms: DEFAULT_JOIN_AFTER_MS,
            max_concurrent_moves: DEFAULT_MAX_CONCURRENT_MOVES,
            max_steps_per_batch: DEFAULT_MAX_STEPS_PER_BATCH,
            max_leader_transfers_per_batch: DEFAULT_MAX_LEADER_TRANSFERS_PER_BATCH,
        }
    }
}

impl ControllerConfig {
    /// Checks every bound.
    pub fn validate(&self) -> Result<(), ControllerError> {
        let bad = |what: &str, value: u64, lo: u64, hi: u64| {
            Err(ControllerError::Config(format!(
                "{what} = {value} is outside {lo}..={hi}"
            )))
        };
        if !(MIN_DEAD_AFTER_MS..=MAX_DEAD_AFTER_MS).contains(&self.dead_after_ms) {
            return bad(
                "dead_after_ms",
                self.dead_after_ms,
                MIN_DEAD_AFTER_MS,
                MAX_DEAD_AFTER_MS,
            );
        }
        if self.join_after_ms > MAX_DEAD_AFTER_MS {
            return bad("join_after_ms", self.join_after_ms, 0, MAX_DEAD_AFTER_MS);
        }
        if !(1..=MAX_CONCURRENT_MOVES).contains(&self.max_concurrent_moves) {
            return bad(
                "max_concurrent_moves",
                self.max_concurrent_moves as u64,
                1,
                MAX_CONCURRENT_MOVES as u64,
            );
        }
        if !(1..=MAX_STEPS_PER_BATCH).contains(&self.max_steps_per_batch) {
            return bad(
                "max_steps_per_batch",
                self.max_steps_per_batch as u64,
                1,
                MAX_STEPS_PER_BATCH as u64,
            );
        }
        if self.max_leader_transfers_per_batch > self.max_steps_per_batch {
            return bad(
                "max_leader_transfers_per_batch",
                self.max_leader_transfers_per_batch as u64,
                0,
                self.max_steps_per_batch as u64,
            );
        }
        Ok(())
    }
}

/// Why the controller could not plan. Nothing is emitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControllerError {
    /// A configuration value out of range.
    #[error("controller config: {0}")]
    Config(String),
    /// The view lists more than [`MAX_MEMBERS`] members or more than
    /// [`MAX_CAUGHT_UP_REPORTS`] progress reports.
    #[error("cluster view: {what} {count} exceed the limit {max}")]
    ViewTooLarge {
        /// What overflowed.
        what: &'static str,
        /// How many were given.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A member listed twice in the view.
    #[error("cluster view lists {0:?} twice")]
    DuplicateMember(NodeId),
    /// A member description placement rejects (zero weight, reserved id,
    /// label too long).
    #[error("member rejected by placement: {0}")]
    Placement(#[from] RingError),
}

/// One member as the controller sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberStatus {
    /// Identity, weight and failure domains.
    pub spec: NodeSpec,
    /// When this controller last heard from the member (its own monotonic
    /// clock, ms); `None` if not yet.
    pub last_heard_ms: Option<u64>,
    /// Start of the member's current unbroken run of heartbeats as this
    /// controller saw it (reset when a gap longer than the heartbeat
    /// interval occurs); `None` if not heard.
    pub up_since_ms: Option<u64>,
}

impl MemberStatus {
    /// A member not heard from (yet).
    pub fn unheard(spec: NodeSpec) -> Self {
        Self {
            spec,
            last_heard_ms: None,
            up_since_ms: None,
        }
    }

    /// A member heard without a gap from `up_since_ms` to `last_heard_ms`.
    pub fn heard(spec: NodeSpec, up_since_ms: u64, last_heard_ms: u64) -> Self {
        Self {
            spec,
            last_heard_ms: Some(last_heard_ms),
            up_since_ms: Some(up_since_ms),
        }
    }
}

/// Everything the controller observed (not replicated).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterView {
    /// The controller's monotonic clock, ms.
    pub now_ms: u64,
    /// When this controller (metadata leader) started observing, same
    /// clock: silence before this instant is not held against anyone.
    pub observing_since_ms: u64,
    /// The registered members (at most [`MAX_MEMBERS`]).
    pub members: Vec<MemberStatus>,
    /// `(shard, learner)` pairs whose shard leader reports the learner
    /// caught up (installed the snapshot and is within the leader's
    /// catch-up lag bound), at most [`MAX_CAUGHT_UP_REPORTS`].
    pub caught_up: BTreeSet<(GroupId, NodeId)>,
}

/// Something a plan could not do, for logs and `ctl shards`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// Fewer live members than the replication factor: the target cannot
    /// be recomputed, lost replicas cannot all be rebuilt.
    NotEnoughLiveMembers {
        /// Live members.
        live: usize,
        /// R.
        replication: usize,
    },
    /// The shard's live voters are no majority: it cannot change its
    /// configuration until enough of them return.
    NoQuorum(GroupId),
    /// Additions waited for `max_concurrent_moves` learners to finish.
    MoveLimit {
        /// Learners catching up.
        in_flight: usize,
    },
    /// The batch filled up (`max_steps_per_batch`); more work remains.
    BatchFull,
}

/// The output of [`Controller::plan`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Steps to carry out, in order. Empty when the map is where it should
    /// be (or nothing can be done yet).
    pub steps: Vec<Step>,
    /// Members counted as live.
    pub live: BTreeSet<NodeId>,
    /// Learners catching up when the plan was made (moves in progress).
    pub in_flight: usize,
    /// What could not be done.
    pub notes: Vec<Note>,
}

/// The placement controller (see the module docs).
///
/// ```
/// use std::collections::BTreeSet;
/// use ha_ring::{Cluster, NodeSpec};
/// use ha_shard::controller::{ClusterView, Controller, ControllerConfig, MemberStatus};
/// use ha_shard::map::{ShardMap, Step};
///
/// let mut map = ShardMap::new(8, 3, &Cluster::uniform(4)?)?;
/// let ctl = Controller::new(ControllerConfig { dead_after_ms: 1_000, ..Default::default() })?;
/// // Member 4 was last heard at t = 0; at t = 5 s it is dead.
/// let view = ClusterView {
///     now_ms: 5_000,
///     observing_since_ms: 0,
///     members: (1..=4u64)
///         .map(|i| MemberStatus::heard(NodeSpec::new(i), 0, if i == 4 { 0 } else { 5_000 }))
///         .collect(),
///     caught_up: BTreeSet::new(),
/// };
/// let plan = ctl.plan(&map, &view)?;
/// assert!(matches!(plan.steps[..], [Step::SetTarget { .. }]));
/// map.apply(&plan.steps[0])?;
/// // Next: learners on the members that take over member 4's replicas.
/// let plan = ctl.plan(&map, &view)?;
/// assert!(plan.steps.iter().all(|s| matches!(s, Step::AddLearner { .. } | Step::TransferLeader { .. })));
/// assert!(!plan.steps.is_empty());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct Controller {
    config: ControllerConfig,
}

/// Per-shard facts the step rules need.
struct ShardFacts<'a> {
    s: &'a ShardState,
    live_voters: usize,
}

impl Controller {
    /// A controller with a validated configuration.
    pub fn new(config: ControllerConfig) -> Result<Self, ControllerError> {
        config.validate()?;
        Ok(Self { config })
    }

    /// The configuration.
    pub fn config(&self) -> &ControllerConfig {
        &self.config
    }

    /// The members counted as live (see the module docs, rule 1), with
    /// their specs. Errors: an oversized view or a member listed twice.
    pub fn live_members<'v>(
        &self,
        map: &ShardMap,
        view: &'v ClusterView,
    ) -> Result<BTreeMap<NodeId, &'v NodeSpec>, ControllerError> {
        if view.members.len() > MAX_MEMBERS {
            return Err(ControllerError::ViewTooLarge {
                what: "members",
                count: view.members.len(),
                max: MAX_MEMBERS,
            });
        }
        let mut live = BTreeMap::new();
        let mut seen = BTreeSet::new();
        for m in &view.members {
            if !seen.insert(m.spec.id) {
                return Err(ControllerError::DuplicateMember(m.spec.id));
            }
            let within = |t: u64| view.now_ms.saturating_sub(t) < self.config.dead_after_ms;
            let alive = if map.target_members().contains_key(&m.spec.id) {
                within(m.last_heard_ms.unwrap_or(0).max(view.observing_since_ms))
            } else {
                // The run of heartbeats actually observed, up_since ..=
                // last_heard, must span join_after: a run that stopped
                // early does not count however long ago it began.
                match (m.up_since_ms, m.last_heard_ms) {
                    (Some(up), Some(last)) => {
                        up >= view.observing_since_ms
                            && last.saturating_sub(up) >= self.config.join_after_ms
                            && within(last)
                    }
                    _ => false,
                }
            };
            if alive {
                live.insert(m.spec.id, &m.spec);
            }
        }
        Ok(live)
    }

    /// The next batch of steps for `map` given `view` (see the module docs).
    /// Deterministic: the same map and view give the same plan.
    pub fn plan(&self, map: &ShardMap, view: &ClusterView) -> Result<Plan, ControllerError> {
        if view.caught_up.len() > MAX_CAUGHT_UP_REPORTS {
            return Err(ControllerError::ViewTooLarge {
                what: "caught-up reports",
                count: view.caught_up.len(),
                max: MAX_CAUGHT_UP_REPORTS,
            });
        }
        let live_specs = self.live_members(map, view)?;
        let live: BTreeSet<NodeId> = live_specs.keys().copied().collect();
        let mut plan = Plan {
            live: live.clone(),
            ..Plan::default()
        };
        let r = map.replication();

        // 2. Target.
        let weights: BTreeMap<NodeId, u32> =
            live_specs.iter().map(|(&id, s)| (id, s.weight)).collect();
        if live.len() < r {
            plan.notes.push(Note::NotEnoughLiveMembers {
                live: live.len(),
                replication: r,
            });
        } else if weights != *map.target_members() {
            let cluster = Cluster::new(live_specs.values().map(|s| (*s).clone()))?;
            let table = ShardTable::restore(r, map.target_rows(), map.target_members().clone())?
                .rebalance(&cluster)?;
            plan.steps.push(Step::SetTarget {
                target_epoch: map.target_epoch(),
                members: weights,
                rows: table.assignments().values().cloned().collect(),
            });
            return Ok(plan);
        }

        // Leader counts (live leaders only) feed both leader hand-offs and
        // spreading.
        let mut leads: BTreeMap<NodeId, usize> = live.iter().map(|&n| (n, 0)).collect();
        for s in map.shards() {
            if let Some(l) = s.leader()
                && let Some(c) = leads.get_mut(&l)
            {
                *c += 1;
            }
        }

        // 3. Moves.
        let mut in_flight = map
            .shards()
            .iter()
            .map(|s| {
                s.learners()
                    .iter()
                    .filter(|l| s.target().contains(l))
                    .count()
            })
            .sum::<usize>();
        plan.in_flight = in_flight;
        let mut facts: Vec<ShardFacts<'_>> = map
            .shards()
            .iter()
            .map(|s| ShardFacts {
                s,
                live_voters: s.voters().iter().filter(|v| live.contains(v)).count(),
            })
            .collect();
        facts.sort_by_key(|f| (f.live_voters, f.s.id()));
        let mut transferred: BTreeSet<GroupId> = BTreeSet::new();
        let mut move_limited = false;
        for f in &facts {
            if f.s.is_settled() {
                continue;
            }
            if f.live_voters * 2 <= f.s.voters().len() {
                plan.notes.push(Note::NoQuorum(f.s.id()));
                continue;
            }
            let may_add = in_flight < self.config.max_concurrent_moves;
            match self.shard_step(f.s, &live, &view.caught_up, &leads, may_add) {
                Some(_) if plan.steps.len() >= self.config.max_steps_per_batch => {
                    plan.notes.push(Note::BatchFull);
                    return Ok(plan);
                }
                Some(step) => {
                    match &step {
                        Step::AddLearner { .. } => in_flight += 1,
                        Step::TransferLeader { shard, to } => {
                            transferred.insert(*shard);
                            if let Some(from) = f.s.leader()
                                && let Some(c) = leads.get_mut(&from)
                            {
                                *c = c.saturating_sub(1);
                            }
                            *leads.entry(*to).or_default() += 1;
                        }
                        _ => {}
                    }
                    plan.steps.push(step);
                }
                None => move_limited |= !may_add && self.wants_learner(f.s, &live),
            }
        }
        if move_limited {
            plan.notes.push(Note::MoveLimit { in_flight });
        }

        // 4. Leader spreading.
        let budget = self
            .config
            .max_leader_transfers_per_batch
            .min(self.config.max_steps_per_batch - plan.steps.len());
        let transfers = spread_leaders(map, &live, &mut leads, &mut transferred, budget);
        if transfers.len() == budget && budget > 0 && over_cap(map, &leads) {
            plan.notes.push(Note::BatchFull);
        }
        plan.steps.extend(transfers);
        Ok(plan)
    }

    /// Whether the shard misses a live target member that is not yet a
    /// replica.
    fn wants_learner(&self, s: &ShardState, live: &BTreeSet<NodeId>) -> bool {
        s.target()
            .iter()
            .any(|t| live.contains(t) && !s.has_replica(*t))
    }

    /// The one membership step (or leader hand-off) a shard needs next.
    fn shard_step(
        &self,
        s: &ShardState,
        live: &BTreeSet<NodeId>,
        caught_up: &BTreeSet<(GroupId, NodeId)>,
        leads: &BTreeMap<NodeId, usize>,
        may_add: bool,
    ) -> Option<Step> {
        let (shard, epoch) = (s.id(), s.epoch());
        let target = s.target();
        // a) A learner the target no longer wants (dead ones first).
        if let Some(&member) = s
            .learners()
            .iter()
            .filter(|l| !target.contains(l))
            .min_by_key(|l| (live.contains(l), **l))
        {
            return Some(Step::RemoveReplica {
                shard,
                member,
                epoch,
            });
        }
        // b) A caught-up, live target learner.
        if let Some(&member) = target.iter().find(|t| {
            s.learners().contains(t) && live.contains(t) && caught_up.contains(&(shard, **t))
        }) {
            return Some(Step::Promote {
                shard,
                member,
                epoch,
            });
        }
        // c) Every target member votes: drop voters outside the target.
        if target.iter().all(|t| s.voters().contains(t))
            && let Some(&member) = s
                .voters()
                .iter()
                .filter(|v| !target.contains(v))
                .min_by_key(|v| (live.contains(v), **v))
        {
            if s.leader() == Some(member) && live.contains(&member) {
                // Hand leadership to the least-loaded live target voter
                // (target order breaks ties: the preferred leader first).
                let to = target
                    .iter()
                    .filter(|t| live.contains(t))
                    .min_by_key(|t| leads.get(t).copied().unwrap_or(0))?;
                return Some(Step::TransferLeader { shard, to: *to });
            }
            return Some(Step::RemoveReplica {
                shard,
                member,
                epoch,
            });
        }
        // d) Bring a missing, live target member in as a learner.
        if may_add
            && let Some(&member) = target
                .iter()
                .find(|t| live.contains(t) && !s.has_replica(**t))
        {
            return Some(Step::AddLearner {
                shard,
                member,
                epoch,
            });
        }
        None
    }
}

/// The per-member leader cap: `⌈shards / live members⌉`.
fn leader_cap(map: &ShardMap, live: usize) -> usize {
    (map.shard_count() as usize).div_ceil(live.max(1))
}

fn over_cap(map: &ShardMap, leads: &BTreeMap<NodeId, usize>) -> bool {
    let cap = leader_cap(map, leads.len());
    leads.values().any(|&c| c > cap)
}

/// Leader transfers (at most `budget`) that bring every live member to at
/// most the cap, each along a shortest chain of shards `u → … → w` where
/// `w` is below the cap (carried out from `w`'s end; a chain longer than
/// the budget left is cut to its last hops). `leads` and `used` are
/// updated.
fn spread_leaders(
    map: &ShardMap,
    live: &BTreeSet<NodeId>,
    leads: &mut BTreeMap<NodeId, usize>,
    used: &mut BTreeSet<GroupId>,
    budget: usize,
) -> Vec<Step> {
    let cap = leader_cap(map, live.len());
    let mut out = Vec::new();
    if budget == 0 || leads.values().all(|&c| c <= cap) {
        return out;
    }
    // Edges: a shard led by `a` → each of its live target voters `b`.
    // Built once; a shard moved in this batch (`used`) is skipped below.
    let mut edges: BTreeMap<NodeId, Vec<(GroupId, NodeId)>> = BTreeMap::new();
    for s in map.shards() {
        let Some(a) = s.leader() else { continue };
        if !live.contains(&a) {
            continue;
        }
        for &b in s.target() {
            if b != a && live.contains(&b) && s.voters().contains(&b) {
                edges.entry(a).or_default().push((s.id(), b));
            }
        }
    }
    // Members with no chain to an underloaded member (given the shards
    // still free in this batch).
    let mut stuck: BTreeSet<NodeId> = BTreeSet::new();
    // Each round moves one leadership off an over-cap member or marks one
    // stuck, so at most shards + members rounds; the budget usually ends it
    // far sooner.
    for _ in 0..(map.shard_count() as usize + leads.len()) {
        if out.len() >= budget {
            break;
        }
        let Some((&start, _)) = leads
            .iter()
            .filter(|&(n, &c)| c > cap && !stuck.contains(n))
            .max_by_key(|&(n, &c)| (c, std::cmp::Reverse(*n)))
        else {
            break;
        };
        // Breadth-first search for the nearest member below the cap.
        let mut parent: BTreeMap<NodeId, (NodeId, GroupId)> = BTreeMap::new();
        let mut queue = VecDeque::from([start]);
        let mut seen = BTreeSet::from([start]);
        let mut end = None;
        while let Some(a) = queue.pop_front() {
            if a != start && leads.get(&a).copied().unwrap_or(0) < cap {
                end = Some(a);
                break;
            }
            for &(g, b) in edges.get(&a).map(Vec::as_slice).unwrap_or(&[]) {
                if !used.contains(&g) && seen.insert(b) {
                    parent.insert(b, (a, g));
                    queue.push_back(b);
                }
            }
        }
        let Some(end) = end else {
            stuck.insert(start);
            continue;
        };
        // Hops from the end back to the start: the last hop (into the
        // underloaded member) first. Carried out in this order, every
        // intermediate member goes cap → cap − 1 → cap and never above, so
        // a batch cut short (budget, controller failover) leaves no new
        // over-cap member and a shorter chain for the next plan.
        let mut hops: Vec<(NodeId, GroupId, NodeId)> = Vec::new();
        let mut at = end;
        while at != start {
            let Some(&(prev, g)) = parent.get(&at) else {
                break;
            };
            hops.push((prev, g, at));
            at = prev;
        }
        let k = hops.len().min(budget - out.len());
        let Some(&(from, _, _)) = hops[..k].last() else {
            break;
        };
        if let Some(c) = leads.get_mut(&from) {
            *c = c.saturating_sub(1);
        }
        *leads.entry(end).or_default() += 1;
        for &(_, g, to) in &hops[..k] {
            used.insert(g);
            out.push(Step::TransferLeader { shard: g, to });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::map::Applied;

    fn view(now_ms: u64, heard: &[(u64, Option<u64>)]) -> ClusterView {
        ClusterView {
            now_ms,
            observing_since_ms: 0,
            members: heard
                .iter()
                .map(|&(id, last)| MemberStatus {
                    spec: NodeSpec::new(id),
                    last_heard_ms: last,
                    up_since_ms: last.map(|_| 0),
                })
                .collect(),
            caught_up: BTreeSet::new(),
        }
    }

    fn ctl() -> Controller {
        Controller::new(ControllerConfig {
            dead_after_ms: 1000,
            join_after_ms: 0,
            ..ControllerConfig::default()
        })
        .unwrap()
    }

    #[test]
    fn config_bounds_are_enforced() {
        let ok = ControllerConfig::default();
        assert!(ok.validate().is_ok());
        for bad in [
            ControllerConfig {
                dead_after_ms: 1,
                ..ok
            },
            ControllerConfig {
                max_concurrent_moves: 0,
                ..ok
            },
            ControllerConfig {
                max_steps_per_batch: MAX_STEPS_PER_BATCH + 1,
                ..ok
            },
            ControllerConfig {
                max_leader_transfers_per_batch: ok.max_steps_per_batch + 1,
                ..ok
            },
        ] {
            assert!(matches!(
                Controller::new(bad),
                Err(ControllerError::Config(_))
            ));
        }
    }

    #[test]
    fn liveness_needs_silence_for_dead_after_and_evidence_to_join() {
        let map = ShardMap::new(4, 3, &Cluster::uniform(4).unwrap()).unwrap();
        let c = ctl();
        // Member 4 silent 999 ms: still live; 1000 ms: dead. Member 9 is not
        // in the target: live only once heard.
        let v = view(
            2000,
            &[
                (1, Some(2000)),
                (2, Some(2000)),
                (3, None),
                (4, Some(1001)),
                (9, None),
            ],
        );
        let live = c.live_members(&map, &v).unwrap();
        assert_eq!(live.keys().map(|n| n.0).collect::<Vec<_>>(), [1, 2, 4]);
        let mut v2 = v.clone();
        v2.now_ms = 2001;
        v2.observing_since_ms = 1500; // a new controller: grace for 3 and 4
        v2.members[4] = MemberStatus::heard(NodeSpec::new(9), 1500, 1990);
        let live = c.live_members(&map, &v2).unwrap();
        assert_eq!(
            live.keys().map(|n| n.0).collect::<Vec<_>>(),
            [1, 2, 3, 4, 9]
        );
        // Heard before this controller started: no evidence for a newcomer.
        v2.members[4] = MemberStatus::heard(NodeSpec::new(9), 1400, 1400);
        assert!(!c.live_members(&map, &v2).unwrap().contains_key(&NodeId(9)));
        let mut dup = v.clone();
        dup.members.push(dup.members[0].clone());
        assert_eq!(
            c.plan(&map, &dup).unwrap_err(),
            ControllerError::DuplicateMember(NodeId(1))
        );
    }

    #[test]
    fn a_member_outside_the_target_joins_only_after_steady_heartbeats() {
        let map = ShardMap::new(4, 3, &Cluster::uniform(4).unwrap()).unwrap();
        let c = Controller::new(ControllerConfig {
            dead_after_ms: 1000,
            join_after_ms: 5000,
            ..ControllerConfig::default()
        })
        .unwrap();
        let view_with = |five: MemberStatus| ClusterView {
            now_ms: 20_000,
            observing_since_ms: 0,
            members: (1..=4u64)
                .map(|i| MemberStatus::heard(NodeSpec::new(i), 0, 20_000))
                .chain([five])
                .collect(),
            caught_up: BTreeSet::new(),
        };
        let spec = NodeSpec::new(5);
        let cases = [
            (MemberStatus::unheard(spec.clone()), false),
            // Up for 4.9 s: not yet.
            (MemberStatus::heard(spec.clone(), 15_100, 20_000), false),
            // Up for 5 s: joins, and the plan re-targets onto it.
            (MemberStatus::heard(spec.clone(), 15_000, 20_000), true),
            // Up long ago but silent for dead_after since: not live.
            (MemberStatus::heard(spec.clone(), 0, 19_000), false),
            // A 4 s run that began 5.5 s ago and stopped 1.5 s ago: too
            // short, however long ago it started.
            (MemberStatus::heard(spec.clone(), 14_500, 18_500), false),
        ];
        for (five, live) in cases {
            let v = view_with(five.clone());
            let plan = c.plan(&map, &v).unwrap();
            assert_eq!(plan.live.contains(&NodeId(5)), live, "{five:?}");
            let retarget = matches!(plan.steps.first(), Some(Step::SetTarget { .. }));
            assert_eq!(retarget, live, "{five:?}: {:?}", plan.steps);
        }
        let bad = ControllerConfig {
            join_after_ms: MAX_DEAD_AFTER_MS + 1,
            ..ControllerConfig::default()
        };
        assert!(Controller::new(bad).is_err());
    }

    #[test]
    fn too_few_live_members_is_noted_and_changes_no_target() {
        let map = ShardMap::new(4, 3, &Cluster::uniform(3).unwrap()).unwrap();
        let v = view(5000, &[(1, Some(5000)), (2, Some(5000)), (3, Some(0))]);
        let plan = ctl().plan(&map, &v).unwrap();
        assert!(plan.notes.contains(&Note::NotEnoughLiveMembers {
            live: 2,
            replication: 3
        }));
        assert!(
            plan.steps
                .iter()
                .all(|s| matches!(s, Step::TransferLeader { .. }))
        );
    }

    /// `shards` shards on 5 members, member 5 silent long enough to be
    /// dead, and the re-target that follows already applied.
    fn member_5_dead(shards: u64, config: ControllerConfig) -> (ShardMap, Controller, ClusterView) {
        let mut map = ShardMap::new(shards, 3, &Cluster::uniform(5).unwrap()).unwrap();
        let c = Controller::new(config).unwrap();
        let heard: Vec<(u64, Option<u64>)> = (1..=5)
            .map(|i| (i, Some(if i == 5 { 0 } else { 9000 })))
            .collect();
        let v = view(9000, &heard);
        let retarget = c.plan(&map, &v).unwrap();
        assert!(matches!(retarget.steps[..], [Step::SetTarget { .. }]));
        assert_eq!(map.apply(&retarget.steps[0]), Ok(Applied::Changed));
        (map, c, v)
    }

    #[test]
    fn concurrency_bound_limits_learners() {
        let (mut map, c, v) = member_5_dead(
            32,
            ControllerConfig {
                dead_after_ms: 1000,
                max_concurrent_moves: 2,
                ..ControllerConfig::default()
            },
        );
        let plan = c.plan(&map, &v).unwrap();
        let adds = plan
            .steps
            .iter()
            .filter(|s| matches!(s, Step::AddLearner { .. }))
            .count();
        assert_eq!(adds, 2);
        assert!(plan.notes.contains(&Note::MoveLimit { in_flight: 2 }));
        for s in &plan.steps {
            map.apply(s).unwrap();
        }
        // Nothing caught up yet: no further additions.
        let plan = c.plan(&map, &v).unwrap();
        assert!(
            plan.steps
                .iter()
                .all(|s| !matches!(s, Step::AddLearner { .. }))
        );
        assert_eq!(plan.in_flight, 2);
    }

    #[test]
    fn a_full_batch_is_noted_and_bounded() {
        let (map, c, v) = member_5_dead(
            64,
            ControllerConfig {
                dead_after_ms: 1000,
                max_concurrent_moves: MAX_CONCURRENT_MOVES,
                max_steps_per_batch: 5,
                max_leader_transfers_per_batch: 0,
                ..ControllerConfig::default()
            },
        );
        let plan = c.plan(&map, &v).unwrap();
        assert_eq!(plan.steps.len(), 5);
        assert!(plan.notes.contains(&Note::BatchFull));
        // Settled map, nothing to do: no note.
        let quiet = ShardMap::new(64, 3, &Cluster::uniform(5).unwrap()).unwrap();
        let all: Vec<(u64, Option<u64>)> = (1..=5).map(|i| (i, Some(9000))).collect();
        let plan = c.plan(&quiet, &view(9000, &all)).unwrap();
        assert!(plan.steps.is_empty() && plan.notes.is_empty(), "{plan:?}");
    }

    #[test]
    fn a_live_leader_hands_off_before_its_removal() {
        let mut map = ShardMap::new(1, 3, &Cluster::uniform(4).unwrap()).unwrap();
        let g = GroupId(1);
        let s = map.shard(g).unwrap().clone();
        let outsider = (1..=4).map(NodeId).find(|n| !s.has_replica(*n)).unwrap();
        let leaving = s.target()[2];
        let mut rows = vec![s.target().to_vec()];
        rows[0][2] = outsider;
        let members = map.target_members().clone();
        map.apply(&Step::SetTarget {
            target_epoch: 1,
            members,
            rows,
        })
        .unwrap();
        map.observe_leader(g, Some(leaving)).unwrap();
        for step in [
            Step::AddLearner {
                shard: g,
                member: outsider,
                epoch: 1,
            },
            Step::Promote {
                shard: g,
                member: outsider,
                epoch: 2,
            },
        ] {
            map.apply(&step).unwrap();
        }
        let all: Vec<(u64, Option<u64>)> = (1..=4).map(|i| (i, Some(10))).collect();
        let v = view(10, &all);
        let plan = ctl().plan(&map, &v).unwrap();
        assert!(
            matches!(plan.steps[0], Step::TransferLeader { shard, to } if shard == g && to != leaving)
        );
        map.apply(&plan.steps[0]).unwrap();
        let plan = ctl().plan(&map, &v).unwrap();
        assert_eq!(
            plan.steps[0],
            Step::RemoveReplica {
                shard: g,
                member: leaving,
                epoch: 3
            }
        );
    }
}
