//! Forwarding on a real in-process cluster (three members on loopback over
//! QUIC, in-memory logs): the leader's [`PeerRequest::ProposeBatch`] path,
//! and the fallback of a follower whose leader runs a build from before
//! batches. Every wait is bounded; every node started is shut down.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use ha_core::codec::CodecError;
use ha_core::kv::{KvCommand, KvResponse, MemKv};
use ha_core::state_machine::{Applied, ChunkSource, SnapshotSource, StateMachineError};
use ha_core::types::{LogId, SnapshotMeta};

use super::wire::tests::PeerRequestBeforeBatches;
use super::*;

/// Members (by id) that serve requests as a build from before batches.
static BEFORE_BATCHES: Mutex<BTreeSet<NodeId>> = Mutex::new(BTreeSet::new());
/// Requests those members could not decode, per member.
static UNDECODED: Mutex<BTreeMap<NodeId, u64>> = Mutex::new(BTreeMap::new());

/// How `serve_requests` on member `me` decodes `payload` if `me` plays a
/// build from before batches (`None`: it does not).
pub(super) fn decode_as_old_build(
    me: NodeId,
    payload: &[u8],
) -> Option<Result<PeerRequest, CodecError>> {
    if !BEFORE_BATCHES.lock().unwrap().contains(&me) {
        return None;
    }
    let r = PeerRequestBeforeBatches::decode(payload);
    if r.is_err() {
        *UNDECODED.lock().unwrap().entry(me).or_default() += 1;
    }
    Some(r)
}

fn undecoded(id: NodeId) -> u64 {
    UNDECODED.lock().unwrap().get(&id).copied().unwrap_or(0)
}

/// Bound for an election or a start.
const WAIT: Duration = Duration::from_secs(20);

/// Application commands applied, by their bytes (shared by a member's
/// state machine and the test).
type Seen = Arc<Mutex<BTreeMap<Bytes, u32>>>;

/// [`MemKv`] that counts how often each command is applied.
#[derive(Default)]
struct Counted {
    kv: MemKv,
    seen: Seen,
}

impl StateMachine for Counted {
    fn apply(&mut self, log_id: LogId, entry: Applied<'_>) -> Result<Bytes, StateMachineError> {
        if let Applied::Command(c) = entry {
            *self
                .seen
                .lock()
                .unwrap()
                .entry(Bytes::copy_from_slice(c))
                .or_default() += 1;
        }
        self.kv.apply(log_id, entry)
    }
    fn flush(&mut self) -> Result<(), StateMachineError> {
        self.kv.flush()
    }
    fn last_applied(&self) -> LogId {
        self.kv.last_applied()
    }
    fn snapshot(&mut self) -> Result<Box<dyn SnapshotSource>, StateMachineError> {
        self.kv.snapshot()
    }
    fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        chunks: &mut dyn ChunkSource,
    ) -> Result<(), StateMachineError> {
        self.kv.install_snapshot(meta, chunks)
    }
    fn keeps_sidecar(&self) -> bool {
        self.kv.keeps_sidecar()
    }
    fn stage_sidecar(&mut self, blob: Bytes) -> Result<(), StateMachineError> {
        self.kv.stage_sidecar(blob)
    }
    fn sidecar(&self) -> Option<Bytes> {
        self.kv.sidecar()
    }
}

struct Cluster {
    nodes: Vec<Node<Counted>>,
    seen: Vec<Seen>,
}

impl Cluster {
    /// Three founding members of a cluster named by `token` (their ids
    /// derive from it: each test uses its own).
    async fn start(token: &'static str) -> Cluster {
        let ports: Vec<u16> = (0..3)
            .map(|_| {
                let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                s.local_addr().unwrap().port()
            })
            .collect();
        let names = ["m1", "m2", "m3"];
        let ids: Vec<NodeId> = names.iter().map(|n| ids::member_id(token, n)).collect();
        let url = |i: usize| format!("https://127.0.0.1:{}", ports[i]);
        let founding: Vec<Member> = (0..3)
            .map(|i| Member {
                id: ids[i].0,
                name: names[i].into(),
                peer_urls: vec![url(i)],
                client_urls: vec![],
                is_learner: false,
            })
            .collect();
        let mut nodes = Vec::new();
        let mut seen = Vec::new();
        for i in 0..3 {
            let cfg = NodeConfig {
                name: names[i].into(),
                member_id: ids[i],
                cluster_id: 0xf0,
                token: token.into(),
                founding: Some(founding.clone()),
                contacts: (0..3)
                    .filter(|&j| j != i)
                    .map(|j| (ids[j], vec![url(j)]))
                    .collect(),
                advertise_peer_urls: vec![url(i)],
                advertise_client_urls: vec![],
                listen_peer: format!("127.0.0.1:{}", ports[i]).parse().unwrap(),
                identity: crate::certs::insecure_dev_identity(token, ids[i]).unwrap(),
                consensus: ConsensusKind::Raft,
                heartbeat_interval_ms: 50,
                election_timeout_ms: 500,
                storage: StorageKind::Memory,
                forward_timeout_ms: 5_000,
                status_interval_ms: 50,
                peer_resolve_interval_ms: 200,
                replica: ReplicaConfig {
                    group: GROUP,
                    ..ReplicaConfig::default()
                },
                snapshot_catchup_entries: 5_000,
                db_dir: None,
            };
            let s: Seen = Arc::default();
            let app = Counted {
                kv: MemKv::default(),
                seen: Arc::clone(&s),
            };
            let node = Node::start(cfg, app, Arc::new(Metrics::new()))
                .await
                .expect("start a member");
            nodes.push(node);
            seen.push(s);
        }
        Cluster { nodes, seen }
    }

    fn ids(&self) -> Vec<NodeId> {
        self.nodes.iter().map(|n| n.handle().member_id()).collect()
    }

    /// The index of the member that reports itself leader.
    async fn leader(&self) -> usize {
        let deadline = Instant::now() + WAIT;
        loop {
            for (i, n) in self.nodes.iter().enumerate() {
                if let Ok(st) = n.handle().status().await
                    && st.role == Role::Leader
                {
                    return i;
                }
            }
            assert!(Instant::now() < deadline, "no leader within {WAIT:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// How often member `i` applied `cmd`.
    fn applied(&self, i: usize, cmd: &Bytes) -> u32 {
        self.seen[i].lock().unwrap().get(cmd).copied().unwrap_or(0)
    }

    async fn stop(self) {
        for n in self.nodes {
            let _ = tokio::time::timeout(WAIT, n.shutdown()).await;
        }
    }
}

fn put(k: &str, v: &str) -> Bytes {
    KvCommand::Put {
        key: Bytes::copy_from_slice(k.as_bytes()),
        value: Bytes::copy_from_slice(v.as_bytes()),
    }
    .encode()
}

fn written(prev: Option<&str>) -> Bytes {
    KvResponse::Written {
        prev: prev.map(|p| Bytes::copy_from_slice(p.as_bytes())),
    }
    .encode()
}

/// `n` concurrent writes of `{prefix}{i}` from `h`, each with the caller's
/// deadline; their answers in order.
async fn concurrent_writes(
    h: &NodeHandle<Counted>,
    prefix: &str,
    n: usize,
) -> Vec<Result<Bytes, NodeError>> {
    let mut tasks = Vec::new();
    for i in 0..n {
        let h = h.clone();
        let cmd = put(&format!("{prefix}{i}"), "v");
        tasks.push(tokio::spawn(async move { h.propose(&cmd).await }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(
            tokio::time::timeout(WAIT, t)
                .await
                .expect("a write is answered within its deadline")
                .expect("the write task"),
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_of_a_build_before_batches_gets_the_entries_singly() {
    let c = Cluster::start("fwd-old-leader").await;
    // Every member serves requests as a build from before batches would
    // (whoever leads); the forwarding side is this build's.
    BEFORE_BATCHES.lock().unwrap().extend(c.ids());
    let l = c.leader().await;
    let f = (l + 1) % 3;
    let follower = c.nodes[f].handle();
    let leader_id = c.ids()[l];
    let term = follower.status().await.unwrap().term;

    // Concurrent writes on a follower queue behind the batches in flight
    // and leave as batches, which the leader cannot decode. Repeated
    // (bounded) until a batch was really refused.
    let mut rounds = 0;
    while undecoded(leader_id) == 0 {
        rounds += 1;
        assert!(rounds <= 5, "no batch was sent in {rounds} rounds");
        let prefix = format!("r{rounds}-");
        for (i, r) in concurrent_writes(&follower, &prefix, 64)
            .await
            .into_iter()
            .enumerate()
        {
            // Refused batches are resent singly: every write succeeds ...
            assert_eq!(
                r.expect("a write on the follower"),
                written(None),
                "write {i}"
            );
            // ... and is applied once.
            assert_eq!(c.applied(l, &put(&format!("{prefix}{i}"), "v")), 1);
        }
    }

    // The refusal is remembered for this leader in this term: the next
    // writes go singly at once (no batch is refused again).
    let refused = undecoded(leader_id);
    for r in concurrent_writes(&follower, "after-", 64).await {
        assert_eq!(r.expect("a write on the follower"), written(None));
    }
    if follower.status().await.unwrap().term == term && c.leader().await == l {
        assert_eq!(undecoded(leader_id), refused, "no batch sent again");
    }
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_leader_applies_a_batch_once_per_entry_and_answers_in_order() {
    let c = Cluster::start("fwd-leader-batch").await;
    let l = c.leader().await;
    let leader = c.nodes[l].handle();
    let entries = |v: &str, n: usize| -> Vec<Bytes> {
        (0..n)
            .map(|i| machine::app_entry(&put(&format!("k{i}"), &format!("{v}{i}"))))
            .collect()
    };
    let n = 100;

    // First values, then second ones: each answer names the value its own
    // entry replaced, so the answers are in the order of the entries.
    for (round, v) in ["a", "b"].into_iter().enumerate() {
        let answer = leader
            .handle_local(PeerRequest::ProposeBatch(entries(v, n)))
            .await
            .expect("the leader serves a batch");
        let PeerResponse::Batch(items) = answer else {
            panic!("answered {answer:?}");
        };
        assert_eq!(items.len(), n);
        for (i, item) in items.into_iter().enumerate() {
            let prev = (round == 1).then(|| format!("a{i}"));
            assert_eq!(
                item,
                BatchItem::Applied(written(prev.as_deref())),
                "item {i} of round {round}"
            );
            assert_eq!(c.applied(l, &put(&format!("k{i}"), &format!("{v}{i}"))), 1);
        }
    }

    // Oversize batches are refused as a whole, nothing applied.
    let many: Vec<Bytes> = (0..=batch::MAX_BATCH_ITEMS)
        .map(|i| machine::app_entry(&put(&format!("many{i}"), "x")))
        .collect();
    let big_value = "y".repeat(batch::MAX_BATCH_BYTES / 2 + 1);
    let big: Vec<Bytes> = (0..2)
        .map(|i| machine::app_entry(&put(&format!("big{i}"), &big_value)))
        .collect();
    for refused in [many.clone(), big.clone()] {
        let r = leader
            .handle_local(PeerRequest::ProposeBatch(refused))
            .await;
        assert!(matches!(r, Err(NodeError::Invalid(_))), "{r:?}");
    }
    // A later write is applied after anything proposed before it.
    let last = put("last", "z");
    leader.propose(&last).await.expect("a later write");
    assert_eq!(c.applied(l, &last), 1);
    for e in many.iter().chain(&big) {
        assert_eq!(
            c.applied(l, &e.slice(1..)),
            0,
            "a refused batch applied nothing"
        );
    }

    // A member that does not lead refuses every entry as not the leader.
    let follower = c.nodes[(l + 1) % 3].handle();
    match follower
        .handle_local(PeerRequest::ProposeBatch(entries("c", 3)))
        .await
    {
        Ok(PeerResponse::Batch(items)) => {
            assert_eq!(items.len(), 3);
            for item in items {
                assert!(
                    matches!(item, BatchItem::Error(WireError::NotLeader(_))),
                    "{item:?}"
                );
            }
        }
        Err(NodeError::NotLeader { .. }) => {}
        other => panic!("a follower answered {other:?}"),
    }
    c.stop().await;
}

/// Writes through every member while leadership is handed around: each is
/// answered with success — a write the leader refuses while it hands over
/// (nothing applied) is held or sent on to the new leader, never failed —
/// and applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_during_leader_transfers_all_succeed_once() {
    let cl = Cluster::start("transfer-writes").await;
    let ids = cl.ids();
    cl.leader().await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for (m, node) in cl.nodes.iter().enumerate() {
        for w in 0..8 {
            let h = node.handle();
            let stop = Arc::clone(&stop);
            writers.push(tokio::spawn(async move {
                let mut out = Vec::new();
                let mut i = 0u32;
                while !stop.load(Ordering::Relaxed) && i < 10_000 {
                    let cmd = put(&format!("t/{m}/{w}/{i}"), "v");
                    let started = Instant::now();
                    let r = h.propose(&cmd).await;
                    out.push((cmd, r, started.elapsed()));
                    i += 1;
                }
                out
            }));
        }
    }
    // Five hand-overs, each to the next member, while the writers run.
    for k in 0..5 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let l = cl.leader().await;
        let to = ids[(l + 1 + k % 2) % 3];
        let _ = cl.nodes[l].handle().replica.transfer_leader(to).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for w in writers {
        all.extend(
            tokio::time::timeout(WAIT, w)
                .await
                .expect("writer ends")
                .expect("writer"),
        );
    }
    let failed: Vec<String> = all
        .iter()
        .filter_map(|(c, r, t)| {
            r.as_ref()
                .err()
                .map(|e| format!("{:?} after {t:?}: {e}", c.len()))
        })
        .collect();
    let slowest = all.iter().map(|(_, _, t)| *t).max().unwrap_or_default();
    eprintln!("{} writes, slowest {slowest:?}", all.len());
    assert!(
        failed.is_empty(),
        "{} of {} writes failed: {:?}",
        failed.len(),
        all.len(),
        &failed[..failed.len().min(5)]
    );
    let leader = cl.leader().await;
    let h = cl.nodes[leader].handle();
    h.read(true, |_: &Counted| ()).await.expect("barrier");
    for (cmd, _, _) in &all {
        assert_eq!(cl.applied(leader, cmd), 1);
    }
    cl.stop().await;
}
