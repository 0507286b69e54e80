//! Sharding at run time (`--shards N > 1`): which data shards this member
//! hosts, and the placement controller that moves replicas.
//!
//! # The replicated map
//!
//! Group 0 (every member) replicates the [`ShardMap`] in its member table
//! ([`MemberTable::shard_map`](super::MemberTable)). A new cluster starts
//! from the static placement over its founding members; the first
//! metadata leader proposes it ([`MetaCommand::ShardInit`]) and from then
//! on only [`MetaCommand::ShardStep`]s change it.
//!
//! # Hosting ([`reconcile`])
//!
//! Every member runs one replica per shard the map lists it in (voter or
//! learner) and none for the others. A shard it gains starts empty (a
//! learner waits for its leader's snapshot) — or, in a cluster whose map
//! never changed, with the founding voters. A shard it loses is stopped and
//! its data deleted, but only once group 0 is caught up (a leader is known
//! and everything it committed is applied), so a map that is stale after a
//! restart never deletes a replica the current map still counts on.
//!
//! # The controller ([`controller`])
//!
//! Runs on group 0's leader, every [`CONTROLLER_TICK_MS`]: builds a
//! [`ClusterView`] from what this member heard (any frame from a member
//! counts as a heartbeat), asks [`Controller::plan`] for the next steps and
//! carries each out — first on the shard's own group (a membership change
//! on the shard's leader, [`PeerRequest::ShardChange`], idempotent), then
//! records it in group 0. A step that fails is simply planned again next
//! tick; a new leader resumes from the replicated map (the controller keeps
//! no state of its own). Order per shard: add learner → the learner catches
//! up (snapshot + log) → promote (refused by the shard leader while the
//! learner lags) → remove the replica the target no longer wants.
//! Leadership spreading stays with the shard upkeep (preferred leaders
//! computed from the current map), so the controller's own leader
//! transfers are off.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ha_core::consensus::{MembershipChange, Role};
use ha_core::state_machine::StateMachine;
use ha_core::{GroupId, Membership, NodeId};
use ha_ring::NodeSpec;
use ha_shard::ShardMap;
use ha_shard::controller::{ClusterView, Controller, ControllerConfig, MemberStatus};
use ha_shard::map::Step;
use tokio::sync::watch;
use tokio::time::Instant;

use super::machine::MetaCommand;
use super::wire::{PeerRequest, PeerResponse, ShardChangeKind};
use super::{NodeError, NodeHandle, SHARD_INBOX_FRAMES, ShardSlot, Store};

/// Period of the placement controller on group 0's leader, ms.
pub const CONTROLLER_TICK_MS: u64 = 250;
/// Period of the hosting reconciliation on every member, ms.
pub const HOSTING_TICK_MS: u64 = 250;
/// A member not heard for this long starts a new run of heartbeats when it
/// is heard again (what `join_after` is measured on), ms.
pub const HEARD_GAP_MS: u64 = 2_000;

/// How a member takes part in a sharded cluster.
#[derive(Clone, Debug)]
pub struct ShardingConfig {
    /// `--shards N`.
    pub shards: u32,
    /// `--replication R`.
    pub replication: usize,
    /// The static placement over the founding members (what the map starts
    /// as); `None` for a member that joined later and learns the map from
    /// group 0.
    pub founding: Option<ShardMap>,
    /// The controller's knobs (`--dead-after`, `--join-after`).
    pub controller: ControllerConfig,
}

/// When a member was heard: the start of its current unbroken run and the
/// last time, both ms since the node started.
#[derive(Clone, Copy, Debug)]
pub(super) struct Heard {
    up_since_ms: u64,
    last_ms: u64,
}

/// What every member remembers of the others' frames.
#[derive(Default)]
pub(super) struct Liveness {
    heard: std::sync::Mutex<HashMap<NodeId, Heard>>,
}

impl Liveness {
    /// Records a frame from `from` at `now_ms`.
    pub(super) fn heard(&self, from: NodeId, now_ms: u64) {
        let mut m = self.heard.lock().unwrap_or_else(|p| p.into_inner());
        let e = m.entry(from).or_insert(Heard {
            up_since_ms: now_ms,
            last_ms: now_ms,
        });
        if now_ms.saturating_sub(e.last_ms) > HEARD_GAP_MS {
            e.up_since_ms = now_ms;
        }
        e.last_ms = now_ms;
    }

    /// Whether `id` was heard within [`HEARD_GAP_MS`] of `now_ms`.
    pub(super) fn recently(&self, id: NodeId, now_ms: u64) -> bool {
        self.get(id)
            .is_some_and(|h| now_ms.saturating_sub(h.last_ms) <= HEARD_GAP_MS)
    }

    fn get(&self, id: NodeId) -> Option<Heard> {
        self.heard
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .copied()
    }
}

/// Builds an application for a shard this member starts hosting.
pub(super) type MakeApp<S> =
    Box<dyn FnMut(super::AppStore<'_>, GroupId) -> Result<S, String> + Send>;

/// What starting and stopping shard replicas at run time needs.
pub(super) struct Hosting<S> {
    pub(super) config: ShardingConfig,
    pub(super) founding: Option<Arc<ShardMap>>,
    pub(super) make_app: std::sync::Mutex<MakeApp<S>>,
    pub(super) store: Store,
    pub(super) node_cfg: super::NodeConfig,
    /// One reconciliation at a time.
    pub(super) lock: tokio::sync::Mutex<()>,
    pub(super) liveness: Liveness,
    pub(super) started: Instant,
    /// Map versions already reported as mismatching this member's
    /// `--shards` (logged once).
    pub(super) mismatch_logged: std::sync::atomic::AtomicBool,
}

impl<S> Hosting<S> {
    pub(super) fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

impl<S: StateMachine> NodeHandle<S> {
    /// The shard map this member acts on: the replicated one, else the
    /// founding placement (a new cluster before its first controller ran);
    /// `None` with one shard, for a joining member that has not learned it
    /// yet, or when the replicated map's shard count differs from
    /// `--shards` (logged).
    pub fn shard_map(&self) -> Option<Arc<ShardMap>> {
        let h = self.shared.hosting.as_ref()?;
        let replicated = self.shared.view.borrow().shard_map.clone();
        let map = replicated.or_else(|| h.founding.clone())?;
        if map.shard_count() != h.config.shards {
            if !h.mismatch_logged.swap(true, Ordering::Relaxed) {
                tracing::error!(
                    replicated = map.shard_count(),
                    configured = h.config.shards,
                    "the cluster's shard map has another shard count than --shards; serving no shards"
                );
            }
            return None;
        }
        Some(map)
    }

    /// Whether group 0 has applied everything its leader committed (and a
    /// leader is known): the map this member sees is then current.
    async fn meta_caught_up(&self) -> bool {
        match self.shared.replica.status().await {
            Ok(st) => st.protocol.leader.is_some() && st.applied >= st.protocol.commit,
            Err(_) => false,
        }
    }

    /// Runs `req` on data shard `group`'s leader: through this member's
    /// replica if it hosts the shard, else sent to the shard's replicas.
    async fn on_shard_leader(
        &self,
        group: GroupId,
        req: PeerRequest,
    ) -> Result<PeerResponse, NodeError> {
        match self.shard(group) {
            Some(h) => h.on_leader(req).await,
            None => self.remote(group, req).await,
        }
    }

    /// Serves [`PeerRequest::ShardChange`] on this shard's replica (the
    /// caller holds `membership_lock`): refused unless this member leads
    /// the shard; a change already in effect answers at once.
    pub(super) async fn change_shard(
        &self,
        kind: ShardChangeKind,
        member: NodeId,
    ) -> Result<PeerResponse, NodeError> {
        let st = self.replica.status().await?;
        let p = &st.protocol;
        if p.role != Role::Leader {
            return Err(NodeError::NotLeader {
                leader: p.leader.filter(|l| *l != self.shared.me),
            });
        }
        let m: &Membership = &p.membership;
        let change = match kind {
            ShardChangeKind::AddLearner if m.all_nodes().contains(&member) => None,
            ShardChangeKind::AddLearner => Some(MembershipChange::AddLearner(member)),
            ShardChangeKind::Promote if m.is_voter(member) => None,
            ShardChangeKind::Promote if !m.is_learner(member) => {
                return Err(NodeError::Invalid(format!(
                    "{member} is not a learner of shard {}",
                    self.group
                )));
            }
            ShardChangeKind::Promote => {
                let applied = self.learner_applied(member).await?;
                if !super::learner_in_sync(p.commit.0, applied, super::PROMOTE_MAX_LAG_ENTRIES) {
                    return Err(NodeError::LearnerNotReady(format!(
                        "learner {member} of shard {} has applied index {applied}, the leader's \
                         commit index is {}",
                        self.group, p.commit.0
                    )));
                }
                Some(MembershipChange::Promote(member))
            }
            ShardChangeKind::Remove if !m.all_nodes().contains(&member) => None,
            ShardChangeKind::Remove => Some(MembershipChange::Remove(member)),
            ShardChangeKind::TransferLeader => {
                if member != self.shared.me {
                    self.replica.transfer_leader(member).await?;
                }
                return Ok(PeerResponse::ShardChanged);
            }
        };
        if let Some(change) = change {
            tracing::info!(shard = %self.group, ?change, "shard membership change");
            self.replica.change_membership(change).await?;
        }
        Ok(PeerResponse::ShardChanged)
    }
}

/// Starts the replicas of the shards `map` gives this member and stops
/// (and deletes) those it no longer gives it; see the module docs.
pub(super) async fn reconcile<S: StateMachine>(node: &NodeHandle<S>) -> Result<(), NodeError> {
    let Some(h) = node.shared.hosting.as_ref() else {
        return Ok(());
    };
    let _one = h.lock.lock().await;
    let Some(map) = node.shard_map() else {
        return Ok(());
    };
    let me = node.shared.me;
    let never_changed = node.shared.view.borrow().shard_map.is_none();
    let hosted: BTreeSet<GroupId> = node.hosted_shards();
    for st in map.shards() {
        let g = st.id();
        if !st.has_replica(me) || hosted.contains(&g) {
            continue;
        }
        // The founding voters only while the map is the founding one;
        // otherwise the shard's own log (or its leader) tells the replica
        // its configuration.
        let bootstrap = if never_changed && st.epoch() == 1 && st.voters().contains(&me) {
            Membership::new(st.voters().iter().copied())
        } else {
            Membership::default()
        };
        let app = {
            let mut make = h.make_app.lock().unwrap_or_else(|p| p.into_inner());
            make(h.store.app_store(), g)
                .map_err(|e| NodeError::Start(format!("state machine of shard {g}: {e}")))?
        };
        let (inbox, inbox_rx) = tokio::sync::mpsc::channel(SHARD_INBOX_FRAMES);
        let r = super::start_group(
            &h.node_cfg,
            g,
            bootstrap,
            app,
            &h.store.dyn_store(),
            &node.shared.transport,
            inbox_rx,
        )
        .await?;
        let role = if st.voters().contains(&me) {
            "voter"
        } else {
            "learner"
        };
        tracing::info!(shard = %g, role, epoch = st.epoch(), "hosting shard");
        node.shared.metrics.record_shard_hosting("started");
        let slot = Arc::new(ShardSlot {
            replica: r.handle(),
            inbox,
            drops: std::sync::atomic::AtomicU64::new(0),
            owner: std::sync::Mutex::new(Some(r)),
        });
        node.shards_write().insert(g, slot);
    }
    let gone: Vec<GroupId> = hosted
        .into_iter()
        .filter(|g| map.shard(*g).is_none_or(|st| !st.has_replica(me)))
        .collect();
    if gone.is_empty() || !node.meta_caught_up().await {
        return Ok(());
    }
    for g in gone {
        let Some(slot) = node.shards_write().remove(&g) else {
            continue;
        };
        let owner = slot.owner.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(r) = owner
            && let Err(e) = r.shutdown().await
        {
            tracing::warn!(shard = %g, error = %e, "a removed shard replica stopped with an error");
        }
        let store = h.store.clone();
        let deleted = tokio::task::spawn_blocking(move || store.delete_group(g))
            .await
            .map_err(|e| NodeError::Fatal(format!("delete task failed: {e}")))
            .and_then(|r| r);
        match deleted {
            Ok(()) => tracing::info!(shard = %g, "no longer hosting shard; its data is deleted"),
            Err(e) => {
                tracing::error!(shard = %g, error = %e, "no longer hosting shard; deleting its data failed")
            }
        }
        node.shared.metrics.record_shard_hosting("stopped");
    }
    Ok(())
}

/// Every [`HOSTING_TICK_MS`] (and whenever group 0's table changes):
/// [`reconcile`].
pub(super) async fn hosting_loop<S: StateMachine>(
    node: NodeHandle<S>,
    mut stop: watch::Receiver<bool>,
) {
    let mut view = node.shared.view.clone();
    loop {
        if let Err(e) = reconcile(&node).await {
            tracing::warn!(error = %e, "shard hosting: retrying");
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(HOSTING_TICK_MS)) => {}
            r = view.changed() => if r.is_err() { return },
            _ = stop.changed() => return,
        }
    }
}

/// The placement controller (see the module docs); acts only while this
/// member leads group 0.
pub(super) async fn controller<S: StateMachine>(
    node: NodeHandle<S>,
    mut stop: watch::Receiver<bool>,
) {
    let Some(h) = node.shared.hosting.as_ref() else {
        return;
    };
    let ctl = match Controller::new(ControllerConfig {
        // Leadership is spread by the shard upkeep (preferred leaders).
        max_leader_transfers_per_batch: 0,
        ..h.config.controller
    }) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "placement controller not started");
            return;
        }
    };
    let mut observing_since: Option<u64> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(CONTROLLER_TICK_MS)) => {}
            _ = stop.changed() => return,
        }
        let leading = matches!(node.shared.replica.status().await, Ok(st) if st.protocol.role == Role::Leader);
        if !leading {
            observing_since = None;
            continue;
        }
        let since = *observing_since.get_or_insert_with(|| h.now_ms());
        if let Err(e) = control_once(&node, h, &ctl, since).await {
            tracing::debug!(error = %e, "placement controller: will retry");
        }
    }
}

/// One controller round on group 0's leader.
async fn control_once<S: StateMachine>(
    node: &NodeHandle<S>,
    h: &Hosting<S>,
    ctl: &Controller,
    observing_since_ms: u64,
) -> Result<(), NodeError> {
    let table = node.local_members();
    if !table.initialized {
        return Ok(());
    }
    let Some(map) = table.shard_map.clone() else {
        if let Some(f) = &h.founding {
            tracing::info!(
                shards = f.shard_count(),
                "recording the founding shard map in group 0"
            );
            node.propose_meta(MetaCommand::ShardInit { map: f.encode() })
                .await?;
        }
        return Ok(());
    };
    if map.shard_count() != h.config.shards {
        return Err(NodeError::Invalid(format!(
            "the replicated map has {} shards, --shards is {}",
            map.shard_count(),
            h.config.shards
        )));
    }
    let now_ms = h.now_ms();
    let members: Vec<MemberStatus> = table
        .members
        .keys()
        .map(|&id| {
            let spec = NodeSpec::new(NodeId(id));
            if NodeId(id) == node.shared.me {
                return MemberStatus::heard(spec, observing_since_ms, now_ms);
            }
            // A run of frames counts from when this controller started
            // observing (what it saw itself).
            match h.liveness.get(NodeId(id)) {
                Some(x) => {
                    MemberStatus::heard(spec, x.up_since_ms.max(observing_since_ms), x.last_ms)
                }
                None => MemberStatus::unheard(spec),
            }
        })
        .collect();
    // Every learner counts as caught up here: the shard leader checks it
    // when asked to promote and refuses while it lags (planned again).
    let caught_up = map
        .shards()
        .iter()
        .flat_map(|s| s.learners().iter().map(move |l| (s.id(), *l)))
        .collect();
    let view = ClusterView {
        now_ms,
        observing_since_ms,
        members,
        caught_up,
    };
    let plan = ctl
        .plan(&map, &view)
        .map_err(|e| NodeError::Invalid(format!("placement plan: {e}")))?;
    if !plan.notes.is_empty() {
        tracing::debug!(notes = ?plan.notes, "placement notes");
    }
    // Each shard has at most one step per plan: carried out concurrently
    // (a shard whose leader is slow to answer holds no other back), then
    // recorded one by one in group 0.
    let mut work = tokio::task::JoinSet::new();
    for step in plan.steps {
        let node = node.clone();
        work.spawn(async move {
            let outcome = match &step {
                Step::SetTarget { members, .. } => {
                    tracing::info!(members = ?members.keys().collect::<Vec<_>>(), "new placement target");
                    Ok(true)
                }
                Step::AddLearner { shard, member, .. } => {
                    shard_change(&node, *shard, ShardChangeKind::AddLearner, *member).await.map(|()| true)
                }
                Step::Promote { shard, member, .. } => {
                    shard_change(&node, *shard, ShardChangeKind::Promote, *member).await.map(|()| true)
                }
                Step::RemoveReplica { shard, member, .. } => {
                    shard_change(&node, *shard, ShardChangeKind::Remove, *member).await.map(|()| true)
                }
                // Carried out, never recorded: the map's leader field stays
                // a hint the controller does not rely on.
                Step::TransferLeader { shard, to } => {
                    shard_change(&node, *shard, ShardChangeKind::TransferLeader, *to).await.map(|()| false)
                }
            };
            (step, outcome)
        });
    }
    while let Some(done) = work.join_next().await {
        let Ok((step, outcome)) = done else {
            continue;
        };
        match outcome {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                tracing::debug!(?step, error = %e, "placement step not done; planned again next round");
                continue;
            }
        }
        match node
            .propose_meta(MetaCommand::ShardStep {
                step: step.encode(),
            })
            .await
        {
            Ok(_) => {
                tracing::info!(?step, "placement step recorded");
                node.shared.metrics.record_shard_move(step_kind(&step));
            }
            Err(e) => tracing::debug!(?step, error = %e, "placement step not recorded"),
        }
    }
    Ok(())
}

fn step_kind(step: &Step) -> &'static str {
    match step {
        Step::SetTarget { .. } => "set_target",
        Step::AddLearner { .. } => "add_learner",
        Step::Promote { .. } => "promote",
        Step::RemoveReplica { .. } => "remove",
        Step::TransferLeader { .. } => "transfer_leader",
    }
}

async fn shard_change<S: StateMachine>(
    node: &NodeHandle<S>,
    shard: GroupId,
    kind: ShardChangeKind,
    member: NodeId,
) -> Result<(), NodeError> {
    match node
        .on_shard_leader(
            shard,
            PeerRequest::ShardChange {
                kind,
                member: member.0,
            },
        )
        .await?
    {
        PeerResponse::ShardChanged => Ok(()),
        other => Err(NodeError::Unavailable(format!(
            "unexpected answer from shard {shard}: {other:?}"
        ))),
    }
}

impl Store {
    /// Deletes everything `group` has in the store (`RocksLogStore::delete_group`).
    fn delete_group(&self, group: GroupId) -> Result<(), NodeError> {
        match self {
            #[cfg(feature = "rocksdb")]
            Store::Rocks(s) => s
                .delete_group(group)
                .map_err(|e| NodeError::Fatal(format!("deleting shard {group}: {e}"))),
            Store::Mem(s) => {
                s.delete_group(group);
                Ok(())
            }
        }
    }
}
