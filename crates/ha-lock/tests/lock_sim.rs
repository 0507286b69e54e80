//! Lock safety on a real protocol (acceptance of #7), deterministic per
//! seed.
//!
//! Three `LockMachine` replicas are replicated by **ha-raft** (and, in a
//! shorter run, **ha-paxos**: the same world is generic over the protocol)
//! inside the test kit's [`AppCluster`]: virtual clock, message loss,
//! duplication and reordering, partitions, crashes that lose unsynced
//! writes, restarts from the synced log and the latest snapshot.
//!
//! On every node runs the leader-side lease loop of `ha-node`: while the
//! node leads, a [`Lessor`] (taken over after a linearizable read of the
//! replicated lease table) proposes `LeaseExpire` and `LeaseCheckpoint`;
//! grants and keep-alives the node applies while leading renew its
//! deadlines. Clients talk to one node at a time (following leader hints),
//! grant a lease, lock one lock, wait (polling with `read_index` reads),
//! hold it for a while writing to a *resource* with their fencing token,
//! unlock and start over. Some pause (stop the world) for longer than their
//! lease TTL, and write with their old token when they wake up.
//!
//! Checked, per seed:
//!
//! * **resource**: it accepts a write only with a token at least the
//!   highest it has seen, and no token is ever used by two clients;
//! * **grants in token order**: grants are linearizable — a grant a client
//!   learns (from the `Lock` command's result or a `read_index` read)
//!   carries a token higher than every grant another client had learned
//!   before this one was asked for, no two clients share a token, and a
//!   read's grant is the owner the replicated state names;
//! * **lock service**: along the log, the owner's token never decreases
//!   and the owner's lease exists; a guarded write (`Compare::is_owner`)
//!   succeeds only for the owner;
//! * **no starvation**: after the faults stop, no client waits longer than
//!   [`WAIT_BOUND_MS`] for a lock it queued for, and every client acquires
//!   the lock again;
//! * replicas that applied the same index hold byte-identical snapshots;
//! * with lock-delay on: after an owner's lease expires, the next owner is
//!   granted no sooner than the delay.
//!
//! A second test checks that a lease's remaining TTL survives a leader
//! crash (the checkpoint path) on Raft.
//!
//! Default: 1,000 Raft seeds, 100 Paxos seeds and 100 Raft seeds with
//! lock-delay (about a minute of CPU in a debug build); more with
//! `HA_LOCK_SIM_SEEDS=N`, `HA_LOCK_SIM_PAXOS_SEEDS=N`,
//! `HA_LOCK_SIM_DELAY_SEEDS=N`, from seed `HA_LOCK_SIM_BASE` (default 0);
//! `HA_LOCK_SIM_SEED=s` runs one Raft seed. A failure names the seed.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;

use bytes::Bytes;
use ha_core::consensus::{ProposeError, ReadCtx, Recovered, Role};
use ha_core::state_machine::{SnapshotSource, StateMachine};
use ha_core::testkit::app::{AppCluster, AppClusterConfig, AppOutput};
use ha_core::testkit::rng::SimRng;
use ha_core::testkit::sim::ProtocolFactory;
use ha_core::types::{LogIndex, Membership, Millis, NodeId};
use ha_lock::api::*;
use ha_lock::{Lessor, LockMachine};

/// Lease TTL of the clients.
const TTL_MS: i64 = 400;
/// Client keep-alive period (a third of the TTL, as etcd clients).
const KEEPALIVE_EVERY_MS: Millis = 130;
/// The leader's lease checkpoint interval.
const CHECKPOINT_EVERY_MS: u64 = 100;
/// Period of every node's lease loop (`LockNodeConfig::lease_tick_ms`).
const LEASE_TICK_MS: Millis = 20;
/// Granularity of the world: clients act and outputs are read this often.
const STEP_MS: Millis = 5;
/// A client request not answered in this time is given up (and retried).
const REQUEST_TIMEOUT_MS: Millis = 300;
/// A waiting client polls the lock's state this often.
const POLL_EVERY_MS: Millis = 50;
/// Longest an owner holds the lock before unlocking.
const HOLD_MAX_MS: Millis = 80;
/// Faults happen before this time, then everything heals.
const CHAOS_MS: Millis = 2_000;
/// Time after healing to elect a leader and expire leases orphaned by
/// the faults, before waits are judged.
const SETTLE_MS: Millis = 800;
/// Run length after healing.
const AFTER_HEAL_MS: Millis = 2_200;
/// Clients contending for the lock.
const CLIENTS: usize = 3;
/// Longest wait for a queued lock after the cluster settled: every waiter
/// ahead holds it at most `HOLD_MAX_MS` plus a few round trips, and a dead
/// waiter's lease runs out within `TTL_MS` plus a checkpoint interval.
const WAIT_BOUND_MS: Millis = 2 * TTL_MS as Millis + CLIENTS as Millis * (HOLD_MAX_MS + 250);
/// The lock.
const LOCK: &[u8] = b"sim-lock";

fn raft_factory() -> impl Fn(NodeId, &Membership, Recovered, u64) -> ha_raft::Raft {
    let cfg = ha_raft::Config {
        election_timeout_min_ms: 150,
        election_timeout_max_ms: 300,
        heartbeat_interval_ms: 30,
        append_retransmit_ms: 60,
        transfer_timeout_ms: 300,
        snapshot_send_timeout_ms: 500,
        snapshot_trailing_entries: 5,
        ..ha_raft::Config::default()
    };
    move |id, initial, recovered, seed| match ha_raft::Raft::new(
        id,
        cfg.clone(),
        recovered,
        initial.clone(),
        seed,
    ) {
        Ok(r) => r,
        Err(e) => panic!("raft node {id:?} cannot start: {e}"),
    }
}

fn paxos_factory() -> impl Fn(NodeId, &Membership, Recovered, u64) -> ha_paxos::Paxos {
    let cfg = ha_paxos::Config {
        election_timeout_min_ms: 150,
        election_timeout_max_ms: 300,
        heartbeat_interval_ms: 30,
        accept_retransmit_ms: 60,
        prepare_timeout_ms: 150,
        transfer_timeout_ms: 300,
        snapshot_send_timeout_ms: 500,
        snapshot_trailing_entries: 5,
        ..ha_paxos::Config::default()
    };
    move |id, initial, recovered, seed| match ha_paxos::Paxos::new(
        id,
        cfg.clone(),
        recovered,
        initial.clone(),
        seed,
    ) {
        Ok(p) => p,
        Err(e) => panic!("paxos node {id:?} cannot start: {e}"),
    }
}

// ----- the resource ----------------------------------------------------------

/// A storage service that fences writes: it refuses a token lower than the
/// highest it has seen.
#[derive(Default)]
struct Resource {
    highest: i64,
    /// Which client wrote with each accepted token.
    writers: BTreeMap<i64, usize>,
    accepted: u64,
    rejected: u64,
}

impl Resource {
    fn write(&mut self, token: i64, client: usize) -> Result<bool, String> {
        if token < self.highest {
            self.rejected += 1;
            return Ok(false);
        }
        if let Some(other) = self.writers.insert(token, client)
            && other != client
        {
            return Err(format!(
                "token {token} used by client {other} and client {client}"
            ));
        }
        self.highest = token;
        self.accepted += 1;
        Ok(true)
    }
}

// ----- clients ---------------------------------------------------------------

#[derive(Clone, Debug, PartialEq)]
enum Phase {
    Idle {
        next_ms: Millis,
    },
    Granting,
    Locking {
        lease: i64,
    },
    Waiting {
        lease: i64,
        key: Bytes,
        since_ms: Millis,
    },
    Owner {
        lease: i64,
        key: Bytes,
        token: i64,
        until_ms: Millis,
    },
    Unlocking {
        lease: i64,
        key: Bytes,
    },
}

struct Client {
    phase: Phase,
    /// The node it talks to.
    node: NodeId,
    /// Outstanding command: (node, seq, sent at).
    request: Option<(NodeId, u64, Millis)>,
    /// Outstanding read: (ctx, node, sent at).
    read: Option<(ReadCtx, NodeId, Millis)>,
    next_poll_ms: Millis,
    next_keepalive_ms: Millis,
    paused_until_ms: Millis,
    was_paused: bool,
    acquisitions: u64,
    acquisitions_after_heal: u64,
}

/// A node's leader-side lease loop (as `ha-node`'s `lease_loop`).
struct NodeLessor {
    lessor: Lessor,
    /// The read barrier before taking over: (ctx, sent at).
    takeover: Option<(ReadCtx, Millis)>,
}

/// The lock as one apply left it, recorded by the cluster's apply hook.
struct Observed {
    at_ms: Millis,
    owner: Option<KeyValue>,
    owner_lease_alive: bool,
}

/// A grant a client learned.
struct Grant {
    client: usize,
    token: i64,
    /// When the request that told it was sent.
    asked_ms: Millis,
    /// When the answer came.
    learned_ms: Millis,
}

/// What a world run counted.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    accepted: u64,
    rejected: u64,
    grants: u64,
    expiries: u64,
    crashes: u64,
}

/// The simulated world: cluster, lease loops, clients, resource.
struct World<F: ProtocolFactory> {
    seed: u64,
    cluster: AppCluster<F, LockMachine>,
    rng: SimRng,
    lessors: Vec<NodeLessor>,
    clients: Vec<Client>,
    resource: Resource,
    next_ctx: ReadCtx,
    /// Pending restarts and heals: (time, node) / (time, None = heal).
    scheduled: Vec<(Millis, Option<NodeId>)>,
    next_fault_ms: Millis,
    faults: bool,
    healed_at_ms: Millis,
    /// Every grant a client learned, in the order learned.
    grants: Vec<Grant>,
    /// The owner after the last index whose first application was checked:
    /// (index, owner token, owner lease).
    log_owner: (LogIndex, i64, i64),
    /// When the owner's lease last expired, and the owner's token
    /// (lock-delay check).
    owner_expired_at_ms: Option<(i64, Millis)>,
    lock_delay_ms: i64,
    expiries_of_owner: u64,
    /// Filled by the apply hook, one per applied entry, in output order.
    observed: Rc<RefCell<VecDeque<Observed>>>,
}

fn rotate(node: NodeId, nodes: u64) -> NodeId {
    NodeId(node.0 % nodes + 1)
}

impl<F: ProtocolFactory> World<F> {
    fn new(factory: F, seed: u64, limits: Limits, clients: usize) -> Self {
        let lock_delay_ms = limits.lock_delay_ms;
        let make = move |_id: NodeId| match LockMachine::in_memory(limits.clone()) {
            Ok(m) => m,
            Err(e) => panic!("limits: {e}"),
        };
        let cfg = AppClusterConfig {
            snapshot_every_entries: Some(100),
            tick_interval_ms: 20,
            ..AppClusterConfig::default()
        };
        let mut rng = SimRng::new(seed ^ 0x10c5_0000);
        let mut cluster = AppCluster::new(factory, make, cfg, seed);
        let observed = Rc::new(RefCell::new(VecDeque::new()));
        let sink = Rc::clone(&observed);
        let mut highest = LogIndex(0);
        cluster.set_apply_hook(Box::new(move |now, out, m: &LockMachine| {
            // Only an index's first application is checked (see
            // `check_log`); later ones are recorded without looking.
            let index = match out {
                AppOutput::Applied { log_id, .. } => log_id.index,
                AppOutput::ReadReady { .. } => LogIndex(0),
            };
            if index <= highest {
                sink.borrow_mut().push_back(Observed {
                    at_ms: now,
                    owner: None,
                    owner_lease_alive: false,
                });
                return;
            }
            highest = index;
            let owner = m.lock_owner(LOCK);
            let owner_lease_alive = owner
                .as_ref()
                .is_some_and(|o| m.lease_time_to_live(o.lease, false).ttl_ms >= 0);
            sink.borrow_mut().push_back(Observed {
                at_ms: now,
                owner,
                owner_lease_alive,
            });
        }));
        let clients = (0..clients)
            .map(|c| Client {
                phase: Phase::Idle {
                    next_ms: rng.below(50),
                },
                node: NodeId(c as u64 % 3 + 1),
                request: None,
                read: None,
                next_poll_ms: 0,
                next_keepalive_ms: 0,
                paused_until_ms: 0,
                was_paused: false,
                acquisitions: 0,
                acquisitions_after_heal: 0,
            })
            .collect();
        let lessors = (0..3)
            .map(|_| NodeLessor {
                lessor: Lessor::new(CHECKPOINT_EVERY_MS),
                takeover: None,
            })
            .collect();
        let first_fault = rng.range_inclusive(200, 500);
        World {
            seed,
            cluster,
            rng,
            lessors,
            clients,
            resource: Resource::default(),
            next_ctx: 0,
            scheduled: Vec::new(),
            next_fault_ms: first_fault,
            faults: true,
            healed_at_ms: CHAOS_MS,
            grants: Vec::new(),
            log_owner: (LogIndex(0), 0, 0),
            owner_expired_at_ms: None,
            lock_delay_ms,
            expiries_of_owner: 0,
            observed,
        }
    }

    fn fail(&self, why: String) -> String {
        let mut lock = String::new();
        if let Some(l) = self.cluster.leader()
            && let Some(m) = self.cluster.machine(l)
        {
            let mut prefix = LOCK.to_vec();
            prefix.push(b'/');
            let waiters = m.range(&RangeRequest {
                key: Bytes::from(prefix.clone()),
                range_end: prefix_end(&prefix),
                ..Default::default()
            });
            lock = format!(
                "\n  leader {l:?}: owner {:?}\n  keys {waiters:?}\n  leases {:?}\n  lessor leading: {}",
                m.lock_owner(LOCK),
                m.leases(),
                self.lessors[l.0 as usize - 1].lessor.is_leader(),
            );
        }
        format!(
            "seed {} at t={}ms: {why}\n  clients: {:?}{lock}",
            self.seed,
            self.cluster.now_ms(),
            self.clients
                .iter()
                .map(|c| (&c.phase, c.node, c.request, c.acquisitions))
                .collect::<Vec<_>>()
        )
    }

    fn ctx(&mut self) -> ReadCtx {
        self.next_ctx += 1;
        self.next_ctx
    }

    fn node_count(&self) -> u64 {
        self.cluster.node_ids().len() as u64
    }

    /// One step of the world at `now` (a multiple of `STEP_MS`).
    fn step(&mut self, now: Millis) -> Result<(), String> {
        self.cluster
            .run_until(now)
            .map_err(|e| self.fail(e.to_string()))?;
        self.handle_outputs()?;
        self.faults_step(now)?;
        if now.is_multiple_of(LEASE_TICK_MS) {
            self.lessor_step(now);
        }
        for c in 0..self.clients.len() {
            self.client_step(c, now)?;
        }
        Ok(())
    }

    /// The node whose lessor acts as leader, if one does.
    fn lessor_leader(&self) -> Option<NodeId> {
        self.cluster
            .node_ids()
            .into_iter()
            .find(|id| self.lessors[id.0 as usize - 1].lessor.is_leader())
    }

    /// Runs the whole scenario: chaos, heal, settle, judge.
    fn run(mut self) -> Result<Counts, String> {
        let end = CHAOS_MS + AFTER_HEAL_MS;
        let mut now = 0;
        while now < end {
            now += STEP_MS;
            self.step(now)?;
            self.check_starvation(now)?;
        }
        for (c, cl) in self.clients.iter().enumerate() {
            if cl.acquisitions_after_heal == 0 {
                return Err(self.fail(format!(
                    "client {c} never acquired the lock in the {AFTER_HEAL_MS} ms after healing"
                )));
            }
        }
        self.check_convergence()?;
        Ok(Counts {
            accepted: self.resource.accepted,
            rejected: self.resource.rejected,
            grants: self.clients.iter().map(|c| c.acquisitions).sum(),
            expiries: self.expiries_of_owner,
            crashes: self.cluster.crashes(),
        })
    }

    // ----- faults --------------------------------------------------------

    fn faults_step(&mut self, now: Millis) -> Result<(), String> {
        let due: Vec<(Millis, Option<NodeId>)> = self
            .scheduled
            .iter()
            .copied()
            .filter(|(t, _)| *t <= now)
            .collect();
        self.scheduled.retain(|(t, _)| *t > now);
        for (_, what) in due {
            self.apply_fault_end(what)?;
        }
        if self.faults && now >= CHAOS_MS {
            // Heal: every link, every node; pauses end.
            self.faults = false;
            self.healed_at_ms = now;
            self.cluster.heal();
            self.cluster.set_drop_ppm(0);
            for id in self.cluster.node_ids() {
                self.restart(id)?;
            }
            self.scheduled.clear();
            for c in &mut self.clients {
                c.paused_until_ms = c.paused_until_ms.min(now);
            }
            return Ok(());
        }
        if !self.faults || now < self.next_fault_ms {
            return Ok(());
        }
        self.next_fault_ms = now + self.rng.range_inclusive(150, 500);
        let ids = self.cluster.node_ids();
        let down = ids.iter().filter(|n| !self.cluster.is_up(**n)).count();
        match self.rng.below(5) {
            0 | 1 if down == 0 => {
                let victim = if self.rng.below(2) == 0 {
                    self.cluster.leader()
                } else {
                    self.rng.pick(&ids).copied()
                };
                if let Some(v) = victim {
                    self.crash(v);
                    let back = now + self.rng.range_inclusive(100, 700);
                    self.scheduled.push((back, Some(v)));
                }
            }
            2 => {
                let side = match self.cluster.leader() {
                    Some(l) if self.rng.below(2) == 0 => vec![l],
                    _ => self.rng.pick(&ids).copied().into_iter().collect(),
                };
                self.cluster.partition(&side);
                let heal = now + self.rng.range_inclusive(100, 800);
                self.scheduled.push((heal, None));
            }
            3 => {
                let ppm = self.rng.range_inclusive(0, 50_000) as u32;
                self.cluster.set_drop_ppm(ppm);
            }
            _ => {}
        }
        Ok(())
    }

    fn apply_fault_end(&mut self, what: Option<NodeId>) -> Result<(), String> {
        match what {
            Some(id) => self.restart(id),
            None => {
                self.cluster.heal();
                Ok(())
            }
        }
    }

    fn crash(&mut self, id: NodeId) {
        self.cluster.crash(id);
        let l = &mut self.lessors[id.0 as usize - 1];
        l.lessor.step_down();
        l.takeover = None;
    }

    fn restart(&mut self, id: NodeId) -> Result<(), String> {
        self.cluster
            .restart(id)
            .map_err(|e| self.fail(format!("restart of {id:?}: {e}")))
    }

    // ----- the lease loops -----------------------------------------------

    fn lessor_step(&mut self, now: Millis) {
        for id in self.cluster.node_ids() {
            let i = id.0 as usize - 1;
            let leading = self
                .cluster
                .status(id)
                .is_some_and(|s| s.role == Role::Leader);
            if !leading {
                if self.lessors[i].lessor.is_leader() {
                    self.lessors[i].lessor.step_down();
                }
                self.lessors[i].takeover = None;
                continue;
            }
            if !self.lessors[i].lessor.is_leader() {
                let stale = self.lessors[i]
                    .takeover
                    .is_none_or(|(_, at)| now >= at + REQUEST_TIMEOUT_MS);
                if stale {
                    let ctx = self.ctx();
                    if self.cluster.read_index(id, ctx).is_ok() {
                        self.lessors[i].takeover = Some((ctx, now));
                    }
                }
                continue;
            }
            let Some(m) = self.cluster.machine(id) else {
                continue;
            };
            let leases = m.leases();
            let cmds = {
                let l = &mut self.lessors[i].lessor;
                l.sync(now, &leases);
                l.tick(now)
            };
            for c in cmds {
                // Not proposed (lost leadership meanwhile): the lessor
                // proposes again on a later tick.
                let _ = self.cluster.propose(id, encode_command(&c));
            }
        }
    }

    // ----- outputs -------------------------------------------------------

    fn handle_outputs(&mut self) -> Result<(), String> {
        let now = self.cluster.now_ms();
        for out in self.cluster.take_outputs() {
            match out {
                AppOutput::ReadReady { node, ctx } => self.on_read(node, ctx, now)?,
                AppOutput::Applied {
                    node,
                    log_id,
                    tag,
                    command,
                    response,
                } => {
                    let seen = self.observed.borrow_mut().pop_front();
                    let Some(seen) = seen else {
                        return Err(self.fail(format!("no observation of {log_id:?}")));
                    };
                    if command.is_empty() {
                        // A blank or a membership entry.
                        self.check_log(log_id.index, None, &seen)?;
                        continue;
                    }
                    let applied = decode_applied(&response)
                        .map_err(|e| self.fail(format!("response does not decode: {e}")))?;
                    let cmd = decode_command(&command)
                        .map_err(|e| self.fail(format!("command does not decode: {e}")))?;
                    self.check_log(log_id.index, Some((&cmd, &applied)), &seen)?;
                    // The leader hook: renewals through the leader move
                    // its lessor's deadlines.
                    let lessor = &mut self.lessors[node.0 as usize - 1].lessor;
                    match &applied.result {
                        Ok(Response::LeaseGrant(g)) => lessor.keep_alive(g.id, g.ttl_ms, now),
                        Ok(Response::LeaseKeepAlive(k)) => lessor.keep_alive(k.id, k.ttl_ms, now),
                        _ => {}
                    }
                    if let Some((proposer, seq)) = tag
                        && proposer == node
                        && let Some(c) = self
                            .clients
                            .iter()
                            .position(|c| c.request.is_some_and(|(n, s, _)| n == node && s == seq))
                    {
                        let sent_ms = self.clients[c].request.map_or(now, |(_, _, at)| at);
                        self.clients[c].request = None;
                        self.on_response(c, applied, sent_ms, now)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Checks the lock service along the log, at the first application of
    /// each index (every index is first applied in order, by some node).
    fn check_log(
        &mut self,
        index: LogIndex,
        entry: Option<(&Command, &Applied)>,
        seen: &Observed,
    ) -> Result<(), String> {
        if index != self.log_owner.0.next() {
            return Ok(());
        }
        let now = seen.at_ms;
        let (prev_token, prev_lease) = (self.log_owner.1, self.log_owner.2);
        let owner = seen.owner.clone();
        let (token, lease) = owner
            .as_ref()
            .map_or((0, 0), |o| (o.create_revision, o.lease));
        if let Some(o) = &owner {
            if o.create_revision < prev_token {
                return Err(self.fail(format!(
                    "owner token went back from {prev_token} to {} at {index:?}",
                    o.create_revision
                )));
            }
            if !seen.owner_lease_alive {
                return Err(self.fail(format!(
                    "the owner {:?} holds lease {} which does not exist",
                    o.key, o.lease
                )));
            }
        }
        if let Some((Command::LeaseExpire { id }, Applied { result: Ok(_), .. })) = entry
            && *id == prev_lease
            && prev_token != 0
            && self
                .owner_expired_at_ms
                .is_none_or(|(t, _)| t != prev_token)
        {
            // The owner's lease expired (with lock-delay, the delay lease
            // that then holds the key expiring later does not count).
            self.expiries_of_owner += 1;
            self.owner_expired_at_ms = Some((prev_token, now));
        }
        if token != prev_token && token != 0 {
            // A new owner. With lock-delay, not sooner than the delay after
            // the previous owner's lease expired (measured at `STEP_MS`
            // granularity).
            if let Some((_, at)) = self.owner_expired_at_ms.take()
                && self.lock_delay_ms > 0
                && now + STEP_MS < at + self.lock_delay_ms as Millis
            {
                return Err(self.fail(format!(
                    "lock granted {} ms after the owner's lease expired; lock-delay is {} ms",
                    now - at,
                    self.lock_delay_ms
                )));
            }
        }
        if let Some((
            Command::Txn(t),
            Applied {
                result: Ok(Response::Txn(r)),
                ..
            },
        )) = entry
            && r.succeeded
            && let Some(Compare {
                key,
                target: CompareTarget::CreateRevision(tok),
                ..
            }) = t.compare.first()
            && key.starts_with(LOCK)
            && (owner.as_ref().map(|o| (&o.key, o.create_revision)) != Some((key, *tok)))
        {
            return Err(self.fail(format!(
                "guarded write with {key:?}/{tok} succeeded but the owner is {owner:?}"
            )));
        }
        self.log_owner = (index, token, lease);
        Ok(())
    }

    fn on_read(&mut self, node: NodeId, ctx: ReadCtx, now: Millis) -> Result<(), String> {
        let i = node.0 as usize - 1;
        if self.lessors[i].takeover.is_some_and(|(c, _)| c == ctx) {
            self.lessors[i].takeover = None;
            let leading = self
                .cluster
                .status(node)
                .is_some_and(|s| s.role == Role::Leader);
            if leading && let Some(m) = self.cluster.machine(node) {
                let leases = m.leases();
                self.lessors[i].lessor.become_leader(now, &leases);
            }
            return Ok(());
        }
        let Some(c) = self
            .clients
            .iter()
            .position(|c| c.read.is_some_and(|(x, n, _)| x == ctx && n == node))
        else {
            return Ok(());
        };
        let sent_ms = self.clients[c].read.map_or(now, |(_, _, at)| at);
        self.clients[c].read = None;
        let Phase::Waiting { lease, key, .. } = self.clients[c].phase.clone() else {
            return Ok(());
        };
        let Some(m) = self.cluster.machine(node) else {
            return Ok(());
        };
        match m.lock_status(LOCK, lease) {
            Ok(l) if l.acquired => {
                let owner = m.lock_owner(LOCK);
                if owner.as_ref().map(|o| (&o.key, o.create_revision)) != Some((&key, l.token)) {
                    return Err(self.fail(format!(
                        "client {c} read acquired {key:?}/{} but the owner is {owner:?}",
                        l.token
                    )));
                }
                self.granted_to(c, lease, key, l.token, sent_ms, now)?;
            }
            Ok(_) => {}
            Err(_) => self.clients[c].phase = Phase::Idle { next_ms: now },
        }
        Ok(())
    }

    fn granted_to(
        &mut self,
        c: usize,
        lease: i64,
        key: Bytes,
        token: i64,
        asked_ms: Millis,
        now: Millis,
    ) -> Result<(), String> {
        // Grants are linearizable: a grant learned by another client before
        // this one was even asked for has a lower token; no two clients
        // ever share a token.
        if let Some(g) = self.grants.iter().find(|g| {
            g.client != c && (g.token == token || (g.learned_ms < asked_ms && g.token > token))
        }) {
            return Err(self.fail(format!(
                "client {c} asked at t={asked_ms}ms and was granted token {token}, but client {} \
                 was granted token {} at t={}ms (asked at t={}ms)",
                g.client, g.token, g.learned_ms, g.asked_ms
            )));
        }
        self.grants.push(Grant {
            client: c,
            token,
            asked_ms,
            learned_ms: now,
        });
        let cl = &mut self.clients[c];
        cl.acquisitions += 1;
        if !self.faults && now >= self.healed_at_ms {
            cl.acquisitions_after_heal += 1;
        }
        let hold = self.rng.range_inclusive(10, HOLD_MAX_MS);
        self.clients[c].phase = Phase::Owner {
            lease,
            key,
            token,
            until_ms: now + hold,
        };
        Ok(())
    }

    fn on_response(
        &mut self,
        c: usize,
        applied: Applied,
        sent_ms: Millis,
        now: Millis,
    ) -> Result<(), String> {
        let phase = self.clients[c].phase.clone();
        match (phase, applied.result) {
            (Phase::Granting, Ok(Response::LeaseGrant(g))) => {
                self.clients[c].next_keepalive_ms = now + KEEPALIVE_EVERY_MS;
                self.clients[c].phase = Phase::Locking { lease: g.id };
                self.send(
                    c,
                    Command::Lock {
                        name: Bytes::from_static(LOCK),
                        lease: g.id,
                    },
                );
            }
            (Phase::Locking { lease }, Ok(Response::Lock(l))) => {
                if l.acquired {
                    self.granted_to(c, lease, l.key, l.token, sent_ms, now)?;
                } else {
                    self.clients[c].phase = Phase::Waiting {
                        lease,
                        key: l.key,
                        since_ms: now,
                    };
                    self.clients[c].next_poll_ms = now + POLL_EVERY_MS;
                }
            }
            (Phase::Unlocking { lease, .. }, _) => {
                // Released (or already gone): drop the lease too.
                let node = self.clients[c].node;
                let _ = self
                    .cluster
                    .propose(node, encode_command(&Command::LeaseRevoke { id: lease }));
                self.clients[c].phase = Phase::Idle {
                    next_ms: now + self.rng.below(40),
                };
            }
            (Phase::Granting | Phase::Locking { .. }, _) => {
                self.clients[c].phase = Phase::Idle { next_ms: now };
            }
            _ => {}
        }
        Ok(())
    }

    /// Proposes `cmd` for client `c` on its node; a refusal moves it to the
    /// hinted (or next) node, and the phase sends again on the next step.
    fn send(&mut self, c: usize, cmd: Command) {
        let node = self.clients[c].node;
        let now = self.cluster.now_ms();
        match self.cluster.propose(node, encode_command(&cmd)) {
            Ok((seq, _)) => self.clients[c].request = Some((node, seq, now)),
            Err(e) => {
                // Refused: the next step sends again, to the new node.
                self.redirect(c, &e);
                self.clients[c].request = None;
            }
        }
    }

    fn redirect(&mut self, c: usize, e: &ProposeError) {
        let n = self.node_count();
        let cl = &mut self.clients[c];
        cl.node = match e {
            ProposeError::NotLeader { leader: Some(l) }
                if *l != cl.node && l.0 >= 1 && l.0 <= n =>
            {
                *l
            }
            _ => rotate(cl.node, n),
        };
    }

    fn client_step(&mut self, c: usize, now: Millis) -> Result<(), String> {
        if now < self.clients[c].paused_until_ms {
            return Ok(());
        }
        if self.clients[c].was_paused {
            self.clients[c].was_paused = false;
            // Wakes up believing it still owns the lock: one write with the
            // old token, which the resource must judge.
            if let Phase::Owner { token, .. } = self.clients[c].phase {
                self.resource.write(token, c).map_err(|e| self.fail(e))?;
            }
        }
        if self.faults && self.rng.chance_ppm(1_500) {
            // Stop the world for longer than the lease TTL.
            let pause = self
                .rng
                .range_inclusive(TTL_MS as u64 + 50, 3 * TTL_MS as u64);
            self.clients[c].paused_until_ms = now + pause;
            self.clients[c].was_paused = true;
            return Ok(());
        }
        let phase = self.clients[c].phase.clone();
        let lease = match &phase {
            Phase::Locking { lease }
            | Phase::Waiting { lease, .. }
            | Phase::Owner { lease, .. }
            | Phase::Unlocking { lease, .. } => Some(*lease),
            Phase::Idle { .. } | Phase::Granting => None,
        };
        if let Some(lease) = lease
            && now >= self.clients[c].next_keepalive_ms
        {
            self.clients[c].next_keepalive_ms = now + KEEPALIVE_EVERY_MS;
            let node = self.clients[c].node;
            if let Err(e) = self
                .cluster
                .propose(node, encode_command(&Command::LeaseKeepAlive { id: lease }))
            {
                self.redirect(c, &e);
            }
        }
        let timed_out = self.clients[c]
            .request
            .is_some_and(|(_, _, at)| now >= at + REQUEST_TIMEOUT_MS);
        if timed_out {
            self.clients[c].request = None;
            let n = self.node_count();
            self.clients[c].node = rotate(self.clients[c].node, n);
        }
        let idle = self.clients[c].request.is_none();
        match phase {
            Phase::Idle { next_ms } if now >= next_ms => {
                self.clients[c].phase = Phase::Granting;
                self.send(
                    c,
                    Command::LeaseGrant(LeaseGrantRequest {
                        id: 0,
                        ttl_ms: TTL_MS,
                    }),
                );
            }
            Phase::Granting if idle => self.clients[c].phase = Phase::Idle { next_ms: now },
            Phase::Locking { lease } if idle => self.send(
                c,
                Command::Lock {
                    name: Bytes::from_static(LOCK),
                    lease,
                },
            ),
            Phase::Waiting { .. } => {
                let read_stale = self.clients[c]
                    .read
                    .is_some_and(|(_, _, at)| now >= at + REQUEST_TIMEOUT_MS);
                if read_stale {
                    self.clients[c].read = None;
                    let n = self.node_count();
                    self.clients[c].node = rotate(self.clients[c].node, n);
                }
                if self.clients[c].read.is_none() && now >= self.clients[c].next_poll_ms {
                    self.clients[c].next_poll_ms = now + POLL_EVERY_MS;
                    let ctx = self.ctx();
                    let node = self.clients[c].node;
                    match self.cluster.read_index(node, ctx) {
                        Ok(()) => self.clients[c].read = Some((ctx, node, now)),
                        Err(e) => self.redirect(c, &e),
                    }
                }
            }
            Phase::Owner {
                lease,
                key,
                token,
                until_ms,
            } => {
                if self.rng.chance_ppm(200_000) {
                    self.resource.write(token, c).map_err(|e| self.fail(e))?;
                }
                if self.rng.chance_ppm(50_000) {
                    // A write guarded by the token through the store itself.
                    let guarded = Command::Txn(TxnRequest {
                        compare: vec![Compare::is_owner(key.clone(), token)],
                        success: vec![RequestOp::Put(PutRequest {
                            key: Bytes::from_static(b"res"),
                            value: Bytes::from(format!("{c}:{token}")),
                            ..Default::default()
                        })],
                        failure: vec![],
                    });
                    let node = self.clients[c].node;
                    let _ = self.cluster.propose(node, encode_command(&guarded));
                }
                if now >= until_ms {
                    self.clients[c].phase = Phase::Unlocking {
                        lease,
                        key: key.clone(),
                    };
                    self.send(c, Command::Unlock { key });
                }
            }
            Phase::Unlocking { key, .. } if idle => self.send(c, Command::Unlock { key }),
            _ => {}
        }
        Ok(())
    }

    fn check_starvation(&self, now: Millis) -> Result<(), String> {
        let judged_from = self.healed_at_ms + SETTLE_MS;
        if self.faults || now < judged_from {
            return Ok(());
        }
        for (c, cl) in self.clients.iter().enumerate() {
            if let Phase::Waiting {
                since_ms, lease, ..
            } = cl.phase
            {
                let alive = self
                    .cluster
                    .leader()
                    .and_then(|l| self.cluster.machine(l))
                    .is_some_and(|m| m.lease_time_to_live(lease, false).ttl_ms >= 0);
                let from = since_ms.max(judged_from);
                if alive && now > from + WAIT_BOUND_MS {
                    return Err(self.fail(format!(
                        "client {c} starves: waiting since t={since_ms}ms with a live lease \
                         (bound {WAIT_BOUND_MS} ms after the cluster settled)"
                    )));
                }
            }
        }
        Ok(())
    }

    fn check_convergence(&mut self) -> Result<(), String> {
        let mut by_index: BTreeMap<LogIndex, (NodeId, Vec<u8>)> = BTreeMap::new();
        for id in self.cluster.node_ids() {
            let Some(m) = self.cluster.machine_mut(id) else {
                continue;
            };
            let idx = m.last_applied().index;
            let bytes = snapshot_bytes(m).map_err(|e| self.fail(e))?;
            match by_index.get(&idx) {
                Some((other, b)) if *b != bytes => {
                    return Err(self.fail(format!(
                        "{other:?} and {id:?} applied up to {idx:?} but hold different state"
                    )));
                }
                Some(_) => {}
                None => {
                    by_index.insert(idx, (id, bytes));
                }
            }
        }
        Ok(())
    }
}

/// The snapshot bytes of a machine.
fn snapshot_bytes(m: &mut LockMachine) -> Result<Vec<u8>, String> {
    let mut s: Box<dyn SnapshotSource> = m.snapshot().map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    while let Some(c) = s.next_chunk().map_err(|e| e.to_string())? {
        out.extend_from_slice(&c);
    }
    Ok(out)
}

/// The machines' limits: a short history (the machine compacts itself, as
/// in production, and snapshots stay small) and the given lock-delay.
fn sim_limits(lock_delay_ms: i64) -> Limits {
    Limits {
        history_retention_revisions: 50,
        lock_delay_ms,
        ..Limits::default()
    }
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn run_seeds<F: ProtocolFactory>(
    name: &str,
    factory: impl Fn() -> F,
    seeds: std::ops::Range<u64>,
    limits: &Limits,
) -> Counts {
    let mut total = Counts::default();
    let n = seeds.end - seeds.start;
    for seed in seeds {
        match World::new(factory(), seed, limits.clone(), CLIENTS).run() {
            Ok(c) => {
                total.accepted += c.accepted;
                total.rejected += c.rejected;
                total.grants += c.grants;
                total.expiries += c.expiries;
                total.crashes += c.crashes;
            }
            Err(e) => panic!("{name}: {e}\n(reproduce: HA_LOCK_SIM_SEED={seed})"),
        }
    }
    eprintln!("{name}: {n} seeds: {total:?}");
    total
}

#[test]
fn lock_safety_on_raft() {
    let limits = sim_limits(0);
    if let Ok(s) = std::env::var("HA_LOCK_SIM_SEED") {
        let seed: u64 = match s.parse() {
            Ok(s) => s,
            Err(e) => panic!("HA_LOCK_SIM_SEED is not a number: {e}"),
        };
        run_seeds("raft", raft_factory, seed..seed + 1, &limits);
        return;
    }
    let seeds = env("HA_LOCK_SIM_SEEDS", 1_000);
    let base = env("HA_LOCK_SIM_BASE", 0);
    let t = run_seeds("raft", raft_factory, base..base + seeds, &limits);
    // The runs must exercise what they check: grants, fenced writes, stale
    // writes refused, owners' leases expiring, crashes.
    assert!(t.grants > seeds, "too few grants: {t:?}");
    assert!(t.accepted > seeds, "too few accepted writes: {t:?}");
    assert!(t.rejected > 0, "no stale write was refused: {t:?}");
    assert!(t.expiries > 0, "no owner's lease ever expired: {t:?}");
    assert!(t.crashes > seeds, "too few crashes: {t:?}");
}

#[test]
fn lock_safety_on_paxos() {
    let seeds = env("HA_LOCK_SIM_PAXOS_SEEDS", 100);
    let base = env("HA_LOCK_SIM_BASE", 0);
    let t = run_seeds("paxos", paxos_factory, base..base + seeds, &sim_limits(0));
    assert!(t.grants > seeds, "too few grants: {t:?}");
    assert!(
        t.rejected > 0 || seeds < 50,
        "no stale write was refused: {t:?}"
    );
}

#[test]
fn lock_delay_on_raft() {
    // The delay is longer than a client's whole lock cycle, so a grant
    // right after an owner's expiry would show.
    let delay_ms = 300;
    let seeds = env("HA_LOCK_SIM_DELAY_SEEDS", 100);
    let base = env("HA_LOCK_SIM_BASE", 0);
    let t = run_seeds(
        "raft+lock-delay",
        raft_factory,
        base..base + seeds,
        &sim_limits(delay_ms),
    );
    assert!(t.expiries > 0, "no owner's lease expired: {t:?}");
    assert!(t.grants > seeds, "too few grants: {t:?}");
}

/// Acceptance of #7: a lease granted with 10 s that has 4 s left still
/// has at most 4 s (plus one checkpoint interval) after the leader
/// crashes — the new leader's lessor resumes from the replicated
/// checkpoint instead of the full TTL — and it expires about 4 s after
/// the failover, never before its 10 s are up.
#[test]
fn lease_ttl_survives_leader_crash_on_raft() {
    const LEASE: i64 = 0x7e57;
    const GRANTED_TTL_MS: i64 = 10_000;
    for seed in 0..env("HA_LOCK_SIM_TTL_SEEDS", 5) {
        let mut w = World::new(raft_factory(), seed, sim_limits(0), 0);
        w.faults = false;
        let mut now = 0;
        let step = |w: &mut World<_>, now: &mut Millis| {
            *now += STEP_MS;
            if let Err(e) = w.step(*now) {
                panic!("{e}");
            }
        };
        // A leader whose lessor runs.
        while w.lessor_leader().is_none() && now < 3_000 {
            step(&mut w, &mut now);
        }
        let Some(first) = w.lessor_leader() else {
            panic!("seed {seed}: no leader in 3 s");
        };
        let grant = Command::LeaseGrant(LeaseGrantRequest {
            id: LEASE,
            ttl_ms: GRANTED_TTL_MS,
        });
        if let Err(e) = w.cluster.propose(first, encode_command(&grant)) {
            panic!("seed {seed}: grant refused: {e}");
        }
        let remaining_on = |w: &World<_>, id: NodeId, now: Millis| {
            w.lessors[id.0 as usize - 1].lessor.remaining_ms(LEASE, now)
        };
        while remaining_on(&w, first, now).is_none() && now < 4_000 {
            step(&mut w, &mut now);
        }
        let granted_at = now;
        assert!(
            remaining_on(&w, first, now).is_some(),
            "seed {seed}: the grant was not applied on the leader"
        );
        // Six seconds later the lease has 4 s left ...
        while now < granted_at + 6_000 {
            step(&mut w, &mut now);
        }
        assert_eq!(
            w.lessor_leader(),
            Some(first),
            "seed {seed}: leadership moved without a fault"
        );
        let replicated = w
            .cluster
            .machine(first)
            .map_or(-1, |m| m.lease_time_to_live(LEASE, false).ttl_ms);
        let slack = (CHECKPOINT_EVERY_MS + LEASE_TICK_MS + 2 * STEP_MS) as i64;
        assert!(
            (4_000 - slack..=4_000 + slack).contains(&replicated),
            "seed {seed}: the replicated remaining TTL is {replicated} ms, 4 s expected"
        );
        // ... and the leader crashes.
        w.crash(first);
        let crashed_at = now;
        while w.lessor_leader().is_none() && now < crashed_at + 3_000 {
            step(&mut w, &mut now);
        }
        let Some(second) = w.lessor_leader() else {
            panic!("seed {seed}: no new leader 3 s after the crash");
        };
        let took_over_at = now;
        let left = remaining_on(&w, second, now);
        assert!(
            left.is_some_and(|ms| ms <= 4_000 + slack),
            "seed {seed}: after failover the lease has {left:?} ms left (4 s expected, not 10 s)"
        );
        let on_machine = w
            .cluster
            .machine(second)
            .map_or(-1, |m| m.lease_time_to_live(LEASE, false).ttl_ms);
        assert!(
            (0..=4_000 + slack).contains(&on_machine),
            "seed {seed}: the new leader's replicated TTL is {on_machine} ms"
        );
        // It expires about 4 s after the failover — not 10 s — and never
        // before the 10 s it was granted for.
        let alive = |w: &World<_>| {
            w.cluster
                .machine(second)
                .is_some_and(|m| m.lease_time_to_live(LEASE, false).ttl_ms >= 0)
        };
        while alive(&w) && now < took_over_at + 9_000 {
            step(&mut w, &mut now);
        }
        assert!(!alive(&w), "seed {seed}: the lease outlived its TTL by far");
        let expired_after_ms = now - granted_at;
        assert!(
            expired_after_ms >= GRANTED_TTL_MS as Millis,
            "seed {seed}: the lease expired {expired_after_ms} ms after its grant, before its TTL"
        );
        let late_ms = now - took_over_at;
        assert!(
            late_ms <= 4_000 + 3 * slack as Millis,
            "seed {seed}: the lease expired {late_ms} ms after the new leader took over (~4 s expected)"
        );
        eprintln!(
            "seed {seed}: leader crashed at +{} ms, {second:?} took over after {} ms with {left:?} ms \
             left, expired at +{expired_after_ms} ms",
            crashed_at - granted_at,
            took_over_at - crashed_at
        );
    }
}
