//! Lock-safety simulation (acceptance of #7), deterministic per seed.
//!
//! A toy replicated log (one global sequence of committed commands; the
//! consensus itself is assumed correct — its own simulator checks it)
//! drives three `LockMachine` replicas that apply at different speeds.
//! Faults: leader failover (the old leader's uncommitted proposals are lost,
//! its lessor stops; the new leader's lessor starts from its replica's
//! replicated lease state), replica crashes (restart from the replica's last
//! snapshot, then replay of the log), client pauses longer than the lease
//! TTL (no keep-alives, then a write with the old token), and lost client
//! requests (a partitioned client).
//!
//! Clients contend for one lock and write to a resource that rejects
//! tokens lower than the highest it has seen. Checked after every step:
//!
//! * the resource accepts writes in token order and each token belongs to
//!   exactly one client (no two owners share a token);
//! * the lock service grants in FIFO order: each new owner's token is
//!   higher than every earlier owner's, and the owner's lease exists;
//! * a guarded write (Txn with `Compare::is_owner`) succeeds only for the
//!   current owner at that log index;
//! * all replicas have byte-identical snapshots once caught up;
//! * no starvation: after the faults stop, every client that keeps its
//!   lease alive acquires the lock within a bounded time.
//!
//! Default: 1,000 seeds × 400 steps (well under a minute of CPU in a dev
//! build). `HA_LOCK_SIM_SEEDS=N` and `HA_LOCK_SIM_STEPS=M` run more;
//! `HA_LOCK_SIM_SEED=s` runs one seed.

use std::collections::BTreeMap;

use bytes::Bytes;
use ha_core::state_machine::{Applied as Entry, SnapshotSource, StateMachine, VecChunks};
use ha_core::testkit::rng::SimRng;
use ha_core::types::{LogId, SnapshotMeta};
use ha_lock::api::*;
use ha_lock::{Lessor, LockMachine};

const REPLICAS: usize = 3;
const CLIENTS: usize = 4;
const TTL_MS: i64 = 1_000;
const KEEPALIVE_EVERY_MS: u64 = 250;
const CHECKPOINT_EVERY_MS: u64 = 200;
const STEP_MAX_MS: u64 = 40;
/// Steps after the last fault in which every live client must acquire.
const HEAL_STEPS: usize = 1_500;
const LOCK: &[u8] = b"sim-lock";
const REQUEST_TIMEOUT_MS: u64 = 500;

#[derive(Clone, Debug, PartialEq)]
enum Phase {
    Idle,
    Granting,
    Locking {
        lease: i64,
    },
    Waiting {
        lease: i64,
        key: Bytes,
    },
    Owner {
        lease: i64,
        key: Bytes,
        token: i64,
        until_ms: u64,
    },
    Unlocking {
        lease: i64,
    },
}

struct Client {
    phase: Phase,
    /// Pending request: log index it was proposed at (None = lost / none).
    pending: Option<(u64, u64)>, // (client tag, sent_ms)
    paused_until_ms: u64,
    next_keepalive_ms: u64,
    acquisitions: u64,
}

struct Replica {
    m: LockMachine,
    up: bool,
    snapshot: Option<(SnapshotMeta, Vec<Bytes>)>,
}

struct Resource {
    highest: i64,
    owners: BTreeMap<i64, usize>,
    accepted: u64,
    rejected: u64,
}

impl Resource {
    fn write(&mut self, token: i64, client: usize) -> bool {
        if token < self.highest {
            self.rejected += 1;
            return false;
        }
        if let Some(c) = self.owners.insert(token, client) {
            assert_eq!(c, client, "token {token} used by two clients");
        }
        self.highest = token;
        self.accepted += 1;
        true
    }
}

struct Sim {
    rng: SimRng,
    now_ms: u64,
    log: Vec<Bytes>,
    /// Proposals not yet committed: (client tag or none, command bytes).
    proposed: Vec<(Option<u64>, Bytes)>,
    /// Responses by client tag, once the leader applied them.
    responses: BTreeMap<u64, Applied>,
    next_tag: u64,
    /// Tag of each committed log index (for answering clients).
    tags: BTreeMap<u64, u64>,
    replicas: Vec<Replica>,
    leader: usize,
    lessor: Lessor,
    clients: Vec<Client>,
    client_of_tag: BTreeMap<u64, usize>,
    resource: Resource,
    last_owner_token: i64,
    faults: bool,
}

fn cmd(c: &Command) -> Bytes {
    encode_command(c)
}

impl Sim {
    fn new(seed: u64) -> Self {
        let replicas = (0..REPLICAS)
            .map(|_| Replica {
                m: LockMachine::in_memory(Limits::default()).expect("limits"),
                up: true,
                snapshot: None,
            })
            .collect();
        let mut lessor = Lessor::new(CHECKPOINT_EVERY_MS);
        lessor.become_leader(0, &[]);
        Sim {
            rng: SimRng::new(seed),
            now_ms: 0,
            log: Vec::new(),
            proposed: Vec::new(),
            responses: BTreeMap::new(),
            next_tag: 1,
            tags: BTreeMap::new(),
            replicas,
            leader: 0,
            lessor,
            clients: (0..CLIENTS)
                .map(|_| Client {
                    phase: Phase::Idle,
                    pending: None,
                    paused_until_ms: 0,
                    next_keepalive_ms: 0,
                    acquisitions: 0,
                })
                .collect(),
            client_of_tag: BTreeMap::new(),
            resource: Resource {
                highest: 0,
                owners: BTreeMap::new(),
                accepted: 0,
                rejected: 0,
            },
            last_owner_token: 0,
            faults: true,
        }
    }

    fn propose(&mut self, client: Option<usize>, c: &Command) -> Option<u64> {
        // a partitioned client's request may be lost on the way
        if client.is_some() && self.faults && self.rng.chance_ppm(20_000) {
            return None;
        }
        let tag = client.map(|ci| {
            let t = self.next_tag;
            self.next_tag += 1;
            self.client_of_tag.insert(t, ci);
            t
        });
        self.proposed.push((tag, cmd(c)));
        tag
    }

    /// Commits some proposals, applies on the leader (answering clients and
    /// feeding the lessor), lets followers lag and catch up.
    fn replicate(&mut self) {
        let n = self.rng.below(self.proposed.len() as u64 + 1) as usize;
        for (tag, bytes) in self.proposed.drain(..n) {
            self.log.push(bytes);
            if let Some(t) = tag {
                self.tags.insert(self.log.len() as u64, t);
            }
        }
        let leader = self.leader;
        self.catch_up(leader, usize::MAX);
        for r in 0..REPLICAS {
            if r != leader && self.replicas[r].up {
                let k = self.rng.below(8) as usize;
                self.catch_up(r, k);
            }
        }
    }

    fn catch_up(&mut self, r: usize, max: usize) {
        let mut done = 0;
        while done < max {
            let next = self.replicas[r].m.last_applied().index.get() + 1;
            let Some(bytes) = self.log.get(next as usize - 1).cloned() else {
                break;
            };
            let out = self.replicas[r]
                .m
                .apply(LogId::new(1, next), Entry::Command(&bytes))
                .expect("apply");
            if r == self.leader {
                let applied = decode_applied(&out).expect("applied");
                self.on_leader_apply(next, &bytes, applied);
            }
            done += 1;
            if next.is_multiple_of(128) {
                let mut s = self.replicas[r].m.snapshot().expect("snapshot");
                let meta = s.meta().clone();
                let mut chunks = Vec::new();
                while let Some(c) = s.next_chunk().expect("chunk") {
                    chunks.push(c);
                }
                self.replicas[r].snapshot = Some((meta, chunks));
            }
        }
    }

    fn on_leader_apply(&mut self, index: u64, bytes: &[u8], applied: Applied) {
        let c = decode_command(bytes).expect("command");
        match (&c, &applied.result) {
            (Command::LeaseGrant(_), Ok(Response::LeaseGrant(g))) => {
                self.lessor.keep_alive(g.id, g.ttl_ms, self.now_ms)
            }
            (Command::LeaseKeepAlive { .. }, Ok(Response::LeaseKeepAlive(k))) => {
                self.lessor.keep_alive(k.id, k.ttl_ms, self.now_ms)
            }
            (Command::LeaseRevoke { id } | Command::LeaseExpire { id }, Ok(_)) => {
                self.lessor.forget(*id)
            }
            (Command::Txn(t), Ok(Response::Txn(r))) if r.succeeded => {
                // a guarded write succeeded: its token must be the current owner's
                if let Some(Compare {
                    key,
                    target: CompareTarget::CreateRevision(tok),
                    ..
                }) = t.compare.first()
                {
                    let owner = self.replicas[self.leader]
                        .m
                        .lock_owner(LOCK)
                        .expect("guarded write without owner");
                    assert_eq!(
                        (&owner.key, owner.create_revision),
                        (key, *tok),
                        "guarded write by a non-owner"
                    );
                }
            }
            _ => {}
        }
        // lock service invariants at every index
        let m = &self.replicas[self.leader].m;
        if let Some(owner) = m.lock_owner(LOCK) {
            assert!(
                owner.create_revision >= self.last_owner_token,
                "owner tokens went backwards"
            );
            assert!(
                m.lease_time_to_live(owner.lease, false).ttl_ms >= 0,
                "owner's lease does not exist"
            );
            self.last_owner_token = owner.create_revision;
        }
        if let Some(tag) = self.tags.remove(&index) {
            self.responses.insert(tag, applied);
        }
    }

    fn failover(&mut self) {
        // the old leader's uncommitted proposals are lost
        self.proposed.clear();
        self.lessor.step_down();
        let candidates: Vec<usize> = (0..REPLICAS).filter(|r| self.replicas[*r].up).collect();
        let Some(&new) = self.rng.pick(&candidates) else {
            return;
        };
        self.leader = new;
        // a new leader has every committed entry before it serves
        let old_index = self.replicas[new].m.last_applied().index.get();
        for idx in old_index + 1..=self.log.len() as u64 {
            let bytes = self.log[idx as usize - 1].clone();
            let out = self.replicas[new]
                .m
                .apply(LogId::new(1, idx), Entry::Command(&bytes))
                .expect("apply");
            if let Some(tag) = self.tags.remove(&idx) {
                self.responses
                    .insert(tag, decode_applied(&out).expect("applied"));
            }
        }
        let mut lessor = Lessor::new(CHECKPOINT_EVERY_MS);
        let leases = self.replicas[new].m.leases();
        lessor.become_leader(self.now_ms, &leases);
        for l in &leases {
            assert!(l.remaining_ms <= l.ttl_ms);
        }
        self.lessor = lessor;
    }

    fn crash_restart(&mut self, r: usize) {
        if r == self.leader {
            return;
        }
        let mut m = LockMachine::in_memory(Limits::default()).expect("limits");
        if let Some((meta, chunks)) = &self.replicas[r].snapshot {
            m.install_snapshot(meta, &mut VecChunks::new(chunks.clone()))
                .expect("install");
        }
        self.replicas[r].m = m;
    }

    fn response(&mut self, ci: usize) -> Option<Applied> {
        let (tag, sent) = self.clients[ci].pending?;
        if let Some(a) = self.responses.remove(&tag) {
            self.clients[ci].pending = None;
            return Some(a);
        }
        if self.now_ms > sent + REQUEST_TIMEOUT_MS {
            // lost (failover or partition): the client gives up on it
            self.clients[ci].pending = None;
            self.client_of_tag.remove(&tag);
        }
        None
    }

    fn send(&mut self, ci: usize, c: &Command) {
        let tag = self.propose(Some(ci), c);
        self.clients[ci].pending = tag.map(|t| (t, self.now_ms));
        if tag.is_none() {
            // lost on the way: the client retries after its timeout
            self.clients[ci].pending = Some((u64::MAX, self.now_ms));
        }
    }

    fn client_step(&mut self, ci: usize) {
        if self.now_ms < self.clients[ci].paused_until_ms {
            return;
        }
        if self.faults && self.rng.chance_ppm(3_000) {
            // a pause (GC, stop-the-world) longer than the lease TTL
            self.clients[ci].paused_until_ms = self.now_ms + self.rng.range_inclusive(1_200, 3_000);
            return;
        }
        let phase = self.clients[ci].phase.clone();
        let lease = match &phase {
            Phase::Locking { lease }
            | Phase::Waiting { lease, .. }
            | Phase::Owner { lease, .. }
            | Phase::Unlocking { lease } => Some(*lease),
            _ => None,
        };
        if let Some(lease) = lease
            && self.now_ms >= self.clients[ci].next_keepalive_ms
        {
            self.clients[ci].next_keepalive_ms = self.now_ms + KEEPALIVE_EVERY_MS;
            self.propose(None, &Command::LeaseKeepAlive { id: lease });
            let lost = self.replicas[self.leader]
                .m
                .lease_time_to_live(lease, false)
                .ttl_ms
                < 0;
            if lost && !matches!(phase, Phase::Locking { .. }) {
                // lease gone (expired during a pause): a stale owner tries its
                // write with the old token; the resource must judge it
                if let Phase::Owner { token, .. } = phase {
                    self.resource.write(token, ci);
                }
                self.clients[ci].phase = Phase::Idle;
                self.clients[ci].pending = None;
                return;
            }
        }
        let resp = self.response(ci);
        let waiting_for_reply = self.clients[ci].pending.is_some();
        match phase {
            Phase::Idle => {
                if !waiting_for_reply {
                    self.clients[ci].phase = Phase::Granting;
                    self.send(
                        ci,
                        &Command::LeaseGrant(LeaseGrantRequest {
                            id: 0,
                            ttl_ms: TTL_MS,
                        }),
                    );
                }
            }
            Phase::Granting => match resp {
                Some(Applied {
                    result: Ok(Response::LeaseGrant(g)),
                    ..
                }) => {
                    self.clients[ci].phase = Phase::Locking { lease: g.id };
                    self.clients[ci].next_keepalive_ms = self.now_ms + KEEPALIVE_EVERY_MS;
                    self.send(
                        ci,
                        &Command::Lock {
                            name: Bytes::from_static(LOCK),
                            lease: g.id,
                        },
                    );
                }
                Some(_) => self.clients[ci].phase = Phase::Idle,
                None if !waiting_for_reply => self.clients[ci].phase = Phase::Idle,
                None => {}
            },
            Phase::Locking { lease } => match resp {
                Some(Applied {
                    result: Ok(Response::Lock(l)),
                    ..
                }) => {
                    self.clients[ci].phase = Phase::Waiting { lease, key: l.key };
                }
                Some(Applied { result: Err(_), .. }) => self.clients[ci].phase = Phase::Idle,
                Some(_) => unreachable!("lock answered with another response"),
                None if !waiting_for_reply => {
                    // retry (idempotent for the same lease)
                    self.send(
                        ci,
                        &Command::Lock {
                            name: Bytes::from_static(LOCK),
                            lease,
                        },
                    );
                }
                None => {}
            },
            Phase::Waiting { lease, key } => {
                // linearizable read on the leader, with the lease re-check
                match self.replicas[self.leader].m.lock_status(LOCK, lease) {
                    Ok(l) if l.acquired => {
                        assert_eq!(l.key, key);
                        let owner = self.replicas[self.leader]
                            .m
                            .lock_owner(LOCK)
                            .expect("owner");
                        assert_eq!((owner.key, owner.create_revision), (l.key, l.token));
                        self.clients[ci].acquisitions += 1;
                        let until = self.now_ms + self.rng.range_inclusive(20, 400);
                        self.clients[ci].phase = Phase::Owner {
                            lease,
                            key,
                            token: l.token,
                            until_ms: until,
                        };
                    }
                    Ok(_) => {}
                    Err(_) => self.clients[ci].phase = Phase::Idle,
                }
            }
            Phase::Owner {
                lease,
                key,
                token,
                until_ms,
            } => {
                if self.rng.chance_ppm(300_000) {
                    self.resource.write(token, ci);
                    // and a guarded write through the store
                    self.propose(
                        None,
                        &Command::Txn(TxnRequest {
                            compare: vec![Compare::is_owner(key.clone(), token)],
                            success: vec![RequestOp::Put(PutRequest {
                                key: Bytes::from_static(b"res"),
                                value: Bytes::from(format!("{ci}:{token}")),
                                ..Default::default()
                            })],
                            failure: vec![],
                        }),
                    );
                }
                if self.now_ms >= until_ms {
                    self.clients[ci].phase = Phase::Unlocking { lease };
                    self.send(ci, &Command::Unlock { key });
                }
            }
            Phase::Unlocking { lease } => match resp {
                Some(_) => {
                    // release the lease too, start over
                    self.propose(None, &Command::LeaseRevoke { id: lease });
                    self.clients[ci].phase = Phase::Idle;
                }
                None if !waiting_for_reply => {
                    let key = owner_key(LOCK, lease);
                    self.send(ci, &Command::Unlock { key });
                }
                None => {}
            },
        }
    }

    fn step(&mut self) {
        self.now_ms += self.rng.range_inclusive(1, STEP_MAX_MS);
        if self.faults {
            if self.rng.chance_ppm(4_000) {
                self.failover();
            }
            if self.rng.chance_ppm(4_000) {
                let r = self.rng.below(REPLICAS as u64) as usize;
                self.crash_restart(r);
            }
        }
        let mut order: Vec<usize> = (0..CLIENTS).collect();
        self.rng.shuffle(&mut order);
        for ci in order {
            self.client_step(ci);
        }
        let leases = self.replicas[self.leader].m.leases();
        self.lessor.sync(self.now_ms, &leases);
        for c in self.lessor.tick(self.now_ms) {
            self.propose(None, &c);
        }
        self.replicate();
    }

    fn check_replicas_agree(&mut self) {
        for r in 0..REPLICAS {
            self.catch_up(r, usize::MAX);
        }
        let want = snapshot(&mut self.replicas[0].m);
        for r in 1..REPLICAS {
            assert_eq!(
                snapshot(&mut self.replicas[r].m),
                want,
                "replica {r} diverged"
            );
        }
    }
}

fn snapshot(m: &mut LockMachine) -> Vec<u8> {
    let mut s: Box<dyn SnapshotSource> = m.snapshot().expect("snapshot");
    let mut out = Vec::new();
    while let Some(c) = s.next_chunk().expect("chunk") {
        out.extend_from_slice(&c);
    }
    out
}

fn run(seed: u64, steps: usize) -> (u64, u64) {
    let mut sim = Sim::new(seed);
    for _ in 0..steps {
        sim.step();
    }
    // heal: no more faults; every client must acquire again
    sim.faults = false;
    for c in &mut sim.clients {
        c.paused_until_ms = c.paused_until_ms.min(sim.now_ms);
    }
    let before: Vec<u64> = sim.clients.iter().map(|c| c.acquisitions).collect();
    let mut all = false;
    for _ in 0..HEAL_STEPS {
        sim.step();
        if sim
            .clients
            .iter()
            .zip(&before)
            .all(|(c, b)| c.acquisitions > *b)
        {
            all = true;
            break;
        }
    }
    assert!(
        all,
        "seed {seed}: a client starved after healing: {:?}",
        sim.clients
            .iter()
            .map(|c| (&c.phase, c.acquisitions))
            .collect::<Vec<_>>()
    );
    sim.check_replicas_agree();
    (sim.resource.accepted, sim.resource.rejected)
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn lock_safety_over_many_seeds() {
    let steps = env("HA_LOCK_SIM_STEPS", 400) as usize;
    if let Ok(s) = std::env::var("HA_LOCK_SIM_SEED") {
        let seed: u64 = s.parse().expect("HA_LOCK_SIM_SEED is a number");
        run(seed, steps);
        return;
    }
    let seeds = env("HA_LOCK_SIM_SEEDS", 1_000);
    let (mut accepted, mut rejected) = (0, 0);
    for seed in 0..seeds {
        let (a, r) = run(seed, steps);
        accepted += a;
        rejected += r;
    }
    // the run must exercise both paths: fenced writes and stale writes refused
    assert!(accepted > seeds, "too few accepted writes: {accepted}");
    assert!(
        rejected > 0,
        "no stale write was ever refused: the pauses did not bite"
    );
    eprintln!(
        "{seeds} seeds x {steps} steps: {accepted} writes accepted, {rejected} stale writes refused"
    );
}
