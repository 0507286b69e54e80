//! Shared by the in-process cluster tests (`node_cluster`,
//! `node_compaction`): members of a `cluster::Node` on loopback over real
//! QUIC and RocksDB, whatever the state machine. Every wait is bounded.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ha_core::NodeId;
use ha_core::replica::ReplicaConfig;
use ha_core::state_machine::StateMachine;
use ha_node::certs::insecure_dev_identity;
use ha_node::cluster::{AppStore, GROUP, Member, Node, NodeConfig, NodeHandle, StorageKind};
use ha_node::config::ConsensusKind;
use ha_node::ids;
use ha_node::metrics::Metrics;

/// Bound for a start to succeed while a store or port just released by a
/// stopped node is still closing.
const START_WAIT: Duration = Duration::from_secs(10);

/// A free UDP port on loopback (free when asked; the node binds it later).
pub fn free_udp_port() -> u16 {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind udp");
    s.local_addr().expect("addr").port()
}

/// One member of a test cluster: its name (its id derives from `token`
/// and the name), its peer port and its data directory.
#[derive(Clone)]
pub struct Spec {
    pub token: &'static str,
    pub name: String,
    pub port: u16,
    pub dir: PathBuf,
}

impl Spec {
    /// A member `name` on a fresh port, with its data in `base/name`.
    pub fn new(token: &'static str, name: &str, base: &Path) -> Spec {
        Spec {
            token,
            name: name.into(),
            port: free_udp_port(),
            dir: base.join(name),
        }
    }
    /// The member id derived from the token and the name.
    pub fn id(&self) -> NodeId {
        ids::member_id(self.token, &self.name)
    }
    /// The peer URL.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }
    /// The RocksDB directory.
    pub fn db(&self) -> PathBuf {
        self.dir.join("db")
    }
}

/// Members `m1`..=`mn`, with their data under `dir`.
pub fn specs(token: &'static str, dir: &Path, n: usize) -> Vec<Spec> {
    (1..=n)
        .map(|i| Spec::new(token, &format!("m{i}"), dir))
        .collect()
}

/// The founding member list of a cluster of `specs` (all voters).
pub fn founding(specs: &[Spec]) -> Vec<Member> {
    specs
        .iter()
        .map(|s| Member {
            id: s.id().0,
            name: s.name.clone(),
            peer_urls: vec![s.url()],
            client_urls: vec![],
            is_learner: false,
        })
        .collect()
}

/// The configuration of `spec` as member `id` of cluster `cluster_id`
/// (Raft, 50 ms heartbeats, 500 ms election timeout, no log compaction),
/// knowing the other members of `all` as contacts.
pub fn config(
    spec: &Spec,
    all: &[Spec],
    founding_members: Option<Vec<Member>>,
    id: NodeId,
    cluster_id: u64,
) -> NodeConfig {
    NodeConfig {
        name: spec.name.clone(),
        member_id: id,
        cluster_id,
        token: spec.token.into(),
        founding: founding_members,
        contacts: all
            .iter()
            .filter(|o| o.name != spec.name)
            .map(|o| (o.id(), vec![o.url()]))
            .collect(),
        advertise_peer_urls: vec![spec.url()],
        advertise_client_urls: vec![format!("http://{}.invalid:2379", spec.name)],
        listen_peer: format!("127.0.0.1:{}", spec.port).parse().unwrap(),
        identity: insecure_dev_identity(spec.token, id).unwrap(),
        consensus: ConsensusKind::Raft,
        heartbeat_interval_ms: 50,
        election_timeout_ms: 500,
        storage: StorageKind::Rocks(spec.db()),
        forward_timeout_ms: 5_000,
        status_interval_ms: 50,
        peer_resolve_interval_ms: 200,
        replica: ReplicaConfig {
            group: GROUP,
            ..ReplicaConfig::default()
        },
        snapshot_catchup_entries: 5_000,
        db_dir: Some(spec.db()),
    }
}

/// Starts a member, building its state machine with `make_app`, retrying
/// while a store or port just released by a stopped node is still closing
/// (bounded).
pub async fn start_retrying<S, F>(cfg: NodeConfig, make_app: F) -> Node<S>
where
    S: StateMachine,
    F: Fn(AppStore<'_>) -> Result<S, String>,
{
    let deadline = Instant::now() + START_WAIT;
    loop {
        match Node::start_with(cfg.clone(), Arc::new(Metrics::new()), &make_app).await {
            Ok(n) => return n,
            Err(e) if Instant::now() < deadline => {
                eprintln!("retrying start of {}: {e}", cfg.name);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("cannot start {}: {e}", cfg.name),
        }
    }
}

/// The member that reports itself leader, the first of `handles` to do so,
/// waiting for one up to `within`.
pub async fn leader_among<S: StateMachine>(handles: &[NodeHandle<S>], within: Duration) -> NodeId {
    let deadline = Instant::now() + within;
    loop {
        for h in handles {
            if let Ok(st) = h.status().await
                && st.leader == Some(h.member_id())
            {
                return h.member_id();
            }
        }
        assert!(Instant::now() < deadline, "no leader within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// As [`leader_among`] over the running members of `nodes`.
pub async fn leader_of<S: StateMachine>(nodes: &[Option<Node<S>>], within: Duration) -> NodeId {
    let handles: Vec<NodeHandle<S>> = nodes.iter().flatten().map(Node::handle).collect();
    leader_among(&handles, within).await
}
