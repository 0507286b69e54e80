//! Chaos workloads over the etcd v3 API, recording what every client asked
//! and was told:
//!
//! - **register**: get / put / compare-and-set on a few keys, recorded as a
//!   [`KvHistory`] for the test kit's linearizability checker
//!   ([`KvModel`](ha_core::testkit::linearizability::KvModel));
//! - **set**: every client writes unique keys; at the end one linearizable
//!   read of the prefix must contain every acknowledged key (lost writes) and
//!   nothing never attempted (phantoms);
//! - **lock**: clients take one etcd lock with a lease, read the lock key's
//!   create revision as a fencing token and write a [`FencedResource`] that
//!   rejects stale tokens; grants must carry unique tokens increasing in
//!   real-time order of the grants.
//!
//! Every error or timeout makes an operation's outcome *unknown* (it may or
//! may not have happened), which the checker accounts for.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use etcd_client::{
    Client, Compare, CompareOp, GetOptions, LockOptions, PutOptions, Txn, TxnOp, TxnOpResponse,
};
use ha_core::kv::{KvCommand, KvResponse};
use ha_core::testkit::history::{KvHistory, Operation};
use ha_core::testkit::rng::SimRng;
use serde::Serialize;

/// Per-operation timeout of the chaos clients.
pub const OP_TIMEOUT_MS: u64 = 1_000;
/// Keys the register workload uses at once.
pub const REGISTER_KEYS: u64 = 4;
/// Seconds a register key generation lasts before the clients move to
/// fresh keys (bounds the per-key history the checker searches).
pub const KEY_GENERATION_S: u64 = 6;
/// Pause between two operations of one client, ms (bounds history size).
pub const THINK_MS: u64 = 15;
/// Most operations recorded per workload (later ones are not issued).
pub const MAX_RECORDED_OPS: usize = 200_000;
/// TTL of the lease each lock holder takes, seconds.
pub const LOCK_LEASE_TTL_S: i64 = 3;
/// How long a lock acquisition may wait, ms.
pub const LOCK_WAIT_MS: u64 = 5_000;
/// Every this many acquisitions, a lock client stalls past its lease
/// before using the lock (its write must then be rejected as stale when
/// another client took the lock meanwhile).
pub const STALL_EVERY: u64 = 8;
/// How long such a stall lasts, ms (longer than [`LOCK_LEASE_TTL_S`]).
pub const STALL_MS: u64 = (LOCK_LEASE_TTL_S as u64) * 1000 + 1_500;

/// Deliberate faults injected on the client side to prove the checks catch
/// them (see [`crate::chaos`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Broken {
    /// No fault.
    None,
    /// One write in [`ACK_WITHOUT_COMMIT_EVERY`] is acknowledged without
    /// reaching the cluster: what a server that acknowledges before commit
    /// and then loses the entry looks like to its clients.
    AckWithoutCommit,
    /// Reads are served serializably by whichever member the client talks
    /// to (may be stale): a server that skips the read-index check.
    StaleReads,
}

/// Period of the [`Broken::AckWithoutCommit`] fault.
pub const ACK_WITHOUT_COMMIT_EVERY: u64 = 10;

/// Time since the run's epoch, ns.
#[derive(Clone, Copy, Debug)]
pub struct Clock(pub Instant);

impl Clock {
    /// Nanoseconds since the epoch.
    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.0.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// When a workload client stops issuing operations.
#[derive(Clone, Debug)]
pub enum StopWhen {
    /// At a fixed instant.
    At(Instant),
    /// When the shared flag is raised (a run whose phases end on events).
    Flag(Arc<std::sync::atomic::AtomicBool>),
}

impl StopWhen {
    /// Whether the client must stop now.
    pub fn reached(&self) -> bool {
        match self {
            StopWhen::At(t) => Instant::now() >= *t,
            StopWhen::Flag(f) => f.load(std::sync::atomic::Ordering::Relaxed),
        }
    }
}

impl From<Instant> for StopWhen {
    fn from(t: Instant) -> Self {
        StopWhen::At(t)
    }
}

/// The register keys of one key generation (the argument): a client picks
/// each operation's key uniformly among them.
pub type KeyFn = Arc<dyn Fn(u64) -> Vec<String> + Send + Sync>;

/// The default register keys: [`REGISTER_KEYS`] keys `reg/<generation>/<k>`.
pub fn few_keys() -> KeyFn {
    Arc::new(|generation| {
        (0..REGISTER_KEYS)
            .map(|k| format!("reg/{generation}/{k}"))
            .collect()
    })
}

/// Clients of one member each; a client retries the next member after an
/// error.
#[derive(Clone)]
pub struct Endpoints {
    /// One client per member, in member order.
    pub clients: Vec<Client>,
}

async fn timed<T>(
    f: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(Duration::from_millis(OP_TIMEOUT_MS), f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("timeout after {OP_TIMEOUT_MS} ms")),
    }
}

/// What one register client recorded.
#[derive(Default)]
pub struct RegisterLog {
    /// The history.
    pub history: KvHistory,
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// Runs one register client on the [default keys](few_keys) until `stop_at`.
#[allow(clippy::too_many_arguments)]
pub async fn register_client(
    id: u64,
    eps: Endpoints,
    clock: Clock,
    stop_at: Instant,
    seed: u64,
    broken: Broken,
    log: Arc<Mutex<RegisterLog>>,
    ops_done: Arc<std::sync::atomic::AtomicU64>,
) {
    register_client_keys(
        id,
        eps,
        clock,
        stop_at.into(),
        few_keys(),
        seed,
        broken,
        log,
        ops_done,
    )
    .await;
}

/// Runs one register client over the keys `keys` gives per key generation
/// until `stop` (a generation without keys ends the client).
#[allow(clippy::too_many_arguments)]
pub async fn register_client_keys(
    id: u64,
    eps: Endpoints,
    clock: Clock,
    stop: StopWhen,
    keys: KeyFn,
    seed: u64,
    broken: Broken,
    log: Arc<Mutex<RegisterLog>>,
    ops_done: Arc<std::sync::atomic::AtomicU64>,
) {
    let mut rng = SimRng::new(seed ^ (id.wrapping_mul(0x9e37_79b9_7f4a_7c15)));
    let n = eps.clients.len();
    let mut target = (id as usize) % n;
    let mut seq = 0u64;
    let mut last_seen: BTreeMap<String, Option<Bytes>> = BTreeMap::new();
    let mut current: Option<(u64, Vec<String>)> = None;
    while !stop.reached() {
        if log.lock().map(|l| l.history.len()).unwrap_or(usize::MAX) >= MAX_RECORDED_OPS {
            break;
        }
        seq += 1;
        let generation = clock.0.elapsed().as_secs() / KEY_GENERATION_S;
        if current.as_ref().is_none_or(|(g, _)| *g != generation) {
            current = Some((generation, keys(generation)));
        }
        let Some((_, gen_keys)) = current.as_ref().filter(|(_, k)| !k.is_empty()) else {
            break;
        };
        let key = gen_keys[rng.below(gen_keys.len() as u64) as usize].clone();
        let value = format!("c{id}s{seq}");
        let roll = rng.below(100);
        let mut c = eps.clients[target].clone();
        let invoked = clock.now_ns();
        let (input, result) = if roll < 40 {
            let input = KvCommand::Get { key: b(&key) };
            let opts =
                (broken == Broken::StaleReads).then(|| GetOptions::new().with_serializable());
            let r = timed(c.get(key.as_str(), opts)).await.map(|resp| {
                KvResponse::Value(
                    resp.kvs()
                        .first()
                        .map(|kv| Bytes::copy_from_slice(kv.value())),
                )
            });
            (input, r)
        } else if roll < 70 {
            let input = KvCommand::Put {
                key: b(&key),
                value: b(&value),
            };
            let r = if broken == Broken::AckWithoutCommit
                && seq.is_multiple_of(ACK_WITHOUT_COMMIT_EVERY)
            {
                // Acknowledged, never sent.
                Ok(KvResponse::Written {
                    prev: last_seen.get(&key).cloned().flatten(),
                })
            } else {
                timed(c.put(
                    key.as_str(),
                    value.as_str(),
                    Some(PutOptions::new().with_prev_key()),
                ))
                .await
                .map(|resp| KvResponse::Written {
                    prev: resp.prev_key().map(|kv| Bytes::copy_from_slice(kv.value())),
                })
            };
            (input, r)
        } else {
            let expect = last_seen.get(&key).cloned().flatten();
            let input = KvCommand::Cas {
                key: b(&key),
                expect: expect.clone(),
                value: b(&value),
            };
            let cmp = match &expect {
                Some(v) => Compare::value(key.as_str(), CompareOp::Equal, v.to_vec()),
                None => Compare::version(key.as_str(), CompareOp::Equal, 0),
            };
            let txn = Txn::new()
                .when([cmp])
                .and_then([TxnOp::put(key.as_str(), value.as_str(), None)])
                .or_else([TxnOp::get(key.as_str(), None)]);
            let r = timed(c.txn(txn)).await.map(|resp| {
                if resp.succeeded() {
                    KvResponse::Cas {
                        ok: true,
                        current: expect.clone(),
                    }
                } else {
                    let current = resp.op_responses().into_iter().find_map(|o| match o {
                        TxnOpResponse::Get(g) => {
                            Some(g.kvs().first().map(|kv| Bytes::copy_from_slice(kv.value())))
                        }
                        _ => None,
                    });
                    KvResponse::Cas {
                        ok: false,
                        current: current.flatten(),
                    }
                }
            });
            (input, r)
        };
        let done = clock.now_ns();
        let op = match result {
            Ok(out) => {
                let seen = match (&input, &out) {
                    (_, KvResponse::Value(v)) => v.clone(),
                    (KvCommand::Put { value, .. }, _) => Some(value.clone()),
                    (KvCommand::Cas { value, .. }, KvResponse::Cas { ok: true, .. }) => {
                        Some(value.clone())
                    }
                    (_, KvResponse::Cas { current, .. }) => current.clone(),
                    _ => None,
                };
                last_seen.insert(key, seen);
                Operation::completed(id, invoked, done, input, out)
            }
            Err(_) => {
                target = (target + 1) % n;
                Operation::unknown(id, invoked, input)
            }
        };
        if let Ok(mut l) = log.lock() {
            l.history.push(op);
        }
        ops_done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(THINK_MS)).await;
    }
}

/// One timed operation for the timeline and latency plot.
#[derive(Clone, Debug, Serialize)]
pub struct OpSpan {
    /// Workload row label (`reg c3`, `set c1`, `lock c0`).
    pub row: String,
    /// Invocation, ns since epoch.
    pub start_ns: u64,
    /// Completion, ns since epoch (`None`: unknown outcome).
    pub end_ns: Option<u64>,
    /// Operation kind (`get`, `put`, `cas`, `append`, `lock`).
    pub kind: &'static str,
}

/// What the set workload recorded.
#[derive(Default, Debug)]
pub struct SetLog {
    /// Keys whose put was acknowledged.
    pub acked: BTreeSet<String>,
    /// Keys whose put had an unknown outcome.
    pub unknown: BTreeSet<String>,
    /// Spans, for plots.
    pub spans: Vec<OpSpan>,
}

/// Runs one set (append) client until `stop` (writes keys
/// `set/<id>/<seq>`: client ids must differ between runs sharing a log).
#[allow(clippy::too_many_arguments)]
pub async fn set_client(
    id: u64,
    eps: Endpoints,
    clock: Clock,
    stop: impl Into<StopWhen>,
    broken: Broken,
    log: Arc<Mutex<SetLog>>,
    ops_done: Arc<std::sync::atomic::AtomicU64>,
) {
    let stop = stop.into();
    let n = eps.clients.len();
    let mut target = (id as usize + 1) % n;
    let mut seq = 0u64;
    while !stop.reached() {
        if log.lock().map(|l| l.spans.len()).unwrap_or(usize::MAX) >= MAX_RECORDED_OPS {
            break;
        }
        seq += 1;
        let key = format!("set/{id}/{seq:08}");
        let mut c = eps.clients[target].clone();
        let invoked = clock.now_ns();
        let r =
            if broken == Broken::AckWithoutCommit && seq.is_multiple_of(ACK_WITHOUT_COMMIT_EVERY) {
                Ok(())
            } else {
                timed(c.put(key.as_str(), "1", None)).await.map(drop)
            };
        let done = clock.now_ns();
        if let Ok(mut l) = log.lock() {
            let ok = r.is_ok();
            if ok {
                l.acked.insert(key);
            } else {
                l.unknown.insert(key);
            }
            l.spans.push(OpSpan {
                row: format!("set c{id}"),
                start_ns: invoked,
                end_ns: ok.then_some(done),
                kind: "append",
            });
        }
        if r.is_err() {
            target = (target + 1) % n;
        }
        ops_done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(THINK_MS)).await;
    }
}

/// Result of the set check.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct SetVerdict {
    /// Acknowledged writes.
    pub acked: usize,
    /// Writes with unknown outcome.
    pub unknown: usize,
    /// Acknowledged keys missing from the final read.
    pub lost: Vec<String>,
    /// Keys in the final read never attempted.
    pub phantom: Vec<String>,
    /// Unknown-outcome writes that did take effect.
    pub unknown_present: usize,
}

/// Compares the final read with what was acknowledged.
pub fn check_set(log: &SetLog, present: &BTreeSet<String>) -> SetVerdict {
    SetVerdict {
        acked: log.acked.len(),
        unknown: log.unknown.len(),
        lost: log.acked.difference(present).cloned().collect(),
        phantom: present
            .iter()
            .filter(|k| !log.acked.contains(*k) && !log.unknown.contains(*k))
            .cloned()
            .collect(),
        unknown_present: log.unknown.intersection(present).count(),
    }
}

/// Reads every key under `set/` linearizably, trying each member in turn.
pub async fn read_set(eps: &Endpoints) -> Result<BTreeSet<String>, String> {
    let mut last = String::from("no members");
    for c in &eps.clients {
        let mut c = c.clone();
        let r = tokio::time::timeout(
            Duration::from_millis(OP_TIMEOUT_MS * 10),
            c.get(
                "set/",
                Some(GetOptions::new().with_prefix().with_keys_only()),
            ),
        )
        .await;
        match r {
            Ok(Ok(resp)) => {
                return Ok(resp
                    .kvs()
                    .iter()
                    .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
                    .collect());
            }
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = "timeout".into(),
        }
    }
    Err(last)
}

/// A resource protected by fencing tokens: accepts a write only with a
/// token larger than every token it accepted before.
#[derive(Debug, Default)]
pub struct FencedResource {
    max_token: Option<i64>,
    /// Writes accepted.
    pub accepted: u64,
    /// Writes rejected as stale.
    pub rejected: u64,
}

impl FencedResource {
    /// Offers a write under `token`; whether it was accepted.
    pub fn write(&mut self, token: i64) -> bool {
        if self.max_token.is_some_and(|m| token <= m) {
            self.rejected += 1;
            false
        } else {
            self.max_token = Some(token);
            self.accepted += 1;
            true
        }
    }
}

/// One lock grant.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Grant {
    /// Client.
    pub client: u64,
    /// When the lock call was invoked, ns.
    pub invoked_ns: u64,
    /// When it returned, ns.
    pub granted_ns: u64,
    /// The fencing token (create revision of the lock key).
    pub token: i64,
}

/// What the lock workload recorded.
#[derive(Default, Debug)]
pub struct LockLog {
    /// Grants.
    pub grants: Vec<Grant>,
    /// The protected resource.
    pub resource: FencedResource,
    /// Spans, for plots.
    pub spans: Vec<OpSpan>,
}

/// Name of the lock all lock clients contend for.
pub const LOCK_NAME: &str = "chaos-lock";

/// Runs one lock client until `stop_at`.
pub async fn lock_client(
    id: u64,
    eps: Endpoints,
    clock: Clock,
    stop_at: Instant,
    log: Arc<Mutex<LockLog>>,
    ops_done: Arc<std::sync::atomic::AtomicU64>,
) {
    let n = eps.clients.len();
    let mut target = (id as usize + 2) % n;
    let mut acquisitions = 0u64;
    while Instant::now() < stop_at {
        if log.lock().map(|l| l.grants.len()).unwrap_or(usize::MAX) >= MAX_RECORDED_OPS {
            break;
        }
        let mut c = eps.clients[target].clone();
        let invoked = clock.now_ns();
        let outcome: Result<(), String> = async {
            let lease = timed(c.lease_grant(LOCK_LEASE_TTL_S, None)).await?.id();
            let granted = tokio::time::timeout(
                Duration::from_millis(LOCK_WAIT_MS),
                c.lock(LOCK_NAME, Some(LockOptions::new().with_lease(lease))),
            )
            .await;
            let resp = match granted {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => {
                    let _ = timed(c.lease_revoke(lease)).await;
                    return Err(e.to_string());
                }
                Err(_) => {
                    let _ = timed(c.lease_revoke(lease)).await;
                    return Err("lock wait timed out".into());
                }
            };
            let granted_ns = clock.now_ns();
            let key = resp.key().to_vec();
            let kv = timed(c.get(key.clone(), None)).await?;
            let Some(token) = kv.kvs().first().map(|kv| kv.create_revision()) else {
                // The lease expired between grant and read: not held.
                let _ = timed(c.lease_revoke(lease)).await;
                return Err("lock key gone before use".into());
            };
            if let Ok(mut l) = log.lock() {
                l.grants.push(Grant {
                    client: id,
                    invoked_ns: invoked,
                    granted_ns,
                    token,
                });
            }
            acquisitions += 1;
            if acquisitions.is_multiple_of(STALL_EVERY) {
                // A holder stalled past its lease (a GC pause, a swapped-out
                // process): the lock moves on, and this write must be
                // rejected by the resource as stale.
                tokio::time::sleep(Duration::from_millis(STALL_MS)).await;
            }
            if let Ok(mut l) = log.lock() {
                l.resource.write(token);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            let _ = timed(c.unlock(key)).await;
            let _ = timed(c.lease_revoke(lease)).await;
            Ok(())
        }
        .await;
        let done = clock.now_ns();
        if let Ok(mut l) = log.lock() {
            l.spans.push(OpSpan {
                row: format!("lock c{id}"),
                start_ns: invoked,
                end_ns: outcome.is_ok().then_some(done),
                kind: "lock",
            });
        }
        if outcome.is_err() {
            target = (target + 1) % n;
        }
        ops_done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(THINK_MS)).await;
    }
}

/// A fencing-token violation.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct FencingViolation {
    /// What is wrong.
    pub what: String,
}

/// Checks the grants: tokens are unique, and a grant that returned before
/// another was invoked has the smaller token.
pub fn check_grants(grants: &[Grant]) -> Vec<FencingViolation> {
    let mut out = Vec::new();
    let mut by_token: BTreeMap<i64, &Grant> = BTreeMap::new();
    for g in grants {
        if let Some(prev) = by_token.insert(g.token, g) {
            out.push(FencingViolation {
                what: format!(
                    "token {} granted twice (clients {} and {})",
                    g.token, prev.client, g.client
                ),
            });
        }
    }
    // Sort by grant time; for each grant, every grant completed before its
    // invocation must have a smaller token. Track the running maximum.
    let mut by_done: Vec<&Grant> = grants.iter().collect();
    by_done.sort_by_key(|g| g.granted_ns);
    let mut by_invoked: Vec<&Grant> = grants.iter().collect();
    by_invoked.sort_by_key(|g| g.invoked_ns);
    let mut i = 0;
    let mut max_done: Option<&Grant> = None;
    for g in by_invoked {
        while i < by_done.len() && by_done[i].granted_ns < g.invoked_ns {
            if max_done.is_none_or(|m| by_done[i].token > m.token) {
                max_done = Some(by_done[i]);
            }
            i += 1;
        }
        if let Some(m) = max_done
            && m.token >= g.token
            && !std::ptr::eq(m, g)
        {
            out.push(FencingViolation {
                what: format!(
                    "client {} was granted token {} after client {}'s grant with token {} had returned",
                    g.client, g.token, m.client, m.token
                ),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(client: u64, invoked_ns: u64, granted_ns: u64, token: i64) -> Grant {
        Grant {
            client,
            invoked_ns,
            granted_ns,
            token,
        }
    }

    #[test]
    fn fenced_resource_rejects_stale_and_equal_tokens() {
        let mut r = FencedResource::default();
        assert!(r.write(5));
        assert!(!r.write(5));
        assert!(!r.write(3));
        assert!(r.write(9));
        assert_eq!((r.accepted, r.rejected), (2, 2));
    }

    #[test]
    fn grants_in_order_pass_and_reordered_or_duplicate_tokens_fail() {
        assert!(check_grants(&[g(0, 0, 10, 5), g(1, 5, 20, 8), g(2, 30, 40, 9)]).is_empty());
        // Concurrent acquisitions may come back in either order.
        assert!(check_grants(&[g(0, 0, 20, 9), g(1, 5, 10, 8)]).is_empty());
        let v = check_grants(&[g(0, 0, 10, 9), g(1, 15, 20, 8)]);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].what.contains("token 8"));
        let v = check_grants(&[g(0, 0, 10, 9), g(1, 0, 12, 9)]);
        assert!(v.iter().any(|v| v.what.contains("granted twice")), "{v:?}");
    }

    #[test]
    fn stop_conditions_and_default_keys() {
        let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop = StopWhen::Flag(flag.clone());
        assert!(!stop.reached());
        flag.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(stop.reached());
        assert!(StopWhen::from(Instant::now()).reached());
        assert!(!StopWhen::from(Instant::now() + Duration::from_secs(60)).reached());
        assert_eq!(
            few_keys()(7),
            vec!["reg/7/0", "reg/7/1", "reg/7/2", "reg/7/3"],
            "the chaos run's keys are unchanged"
        );
    }

    #[test]
    fn set_check_finds_lost_and_phantom_keys() {
        let mut log = SetLog::default();
        log.acked.extend(["a".to_string(), "b".to_string()]);
        log.unknown.insert("u".to_string());
        let present: BTreeSet<String> = ["a", "u", "z"].iter().map(|s| s.to_string()).collect();
        let v = check_set(&log, &present);
        assert_eq!(v.lost, vec!["b".to_string()]);
        assert_eq!(v.phantom, vec!["z".to_string()]);
        assert_eq!(v.unknown_present, 1);
    }
}
