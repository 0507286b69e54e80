//! Multi-Paxos under the same async `Replica` driver as Raft: three nodes
//! on the in-process network with in-memory log stores and `MemKv`. A
//! write commits and is read back linearizably on every node; when the
//! leader is cut off, another node runs phase 1, keeps the chosen write and
//! commits new ones. Real time, bounded: every wait has a deadline.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ha_core::consensus::{Recovered, Role};
use ha_core::kv::{KvCommand, MemKv};
use ha_core::replica::{Replica, ReplicaConfig, ReplicaError, ReplicaHandle};
use ha_core::storage::MemLogStore;
use ha_core::transport::mem::{MemNetwork, MemNetworkConfig};
use ha_core::{Bytes, GroupId, Membership, NodeId};
use ha_paxos::{Config, Paxos};

/// Longest any step of the test may take.
const STEP_DEADLINE: Duration = Duration::from_secs(20);

fn paxos_config() -> Config {
    Config {
        election_timeout_min_ms: 150,
        election_timeout_max_ms: 300,
        heartbeat_interval_ms: 30,
        accept_retransmit_ms: 60,
        prepare_timeout_ms: 150,
        ..Config::default()
    }
}

struct Node {
    id: NodeId,
    replica: Replica<MemKv>,
}

fn start(net: &MemNetwork, id: NodeId, members: &Membership) -> Node {
    let (transport, inbound) = match net.join(id) {
        Ok(j) => j,
        Err(e) => panic!("{id:?} cannot join: {e}"),
    };
    let store = Arc::new(MemLogStore::new());
    let px = match Paxos::new(
        id,
        paxos_config(),
        Recovered::default(),
        members.clone(),
        id.0,
    ) {
        Ok(p) => p,
        Err(e) => panic!("{id:?}: {e}"),
    };
    let config = ReplicaConfig {
        group: GroupId(1),
        ..ReplicaConfig::default()
    };
    let replica = match Replica::start(
        config,
        px,
        store,
        MemKv::default(),
        Arc::new(transport),
        inbound,
    ) {
        Ok(r) => r,
        Err(e) => panic!("{id:?} cannot start: {e}"),
    };
    Node { id, replica }
}

async fn leader(nodes: &[Node], except: Option<NodeId>) -> (NodeId, ReplicaHandle<MemKv>) {
    let end = Instant::now() + STEP_DEADLINE;
    while Instant::now() < end {
        for n in nodes {
            if Some(n.id) == except {
                continue;
            }
            let h = n.replica.handle();
            if let Ok(s) = h.status().await
                && s.protocol.role == Role::Leader
            {
                return (n.id, h);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no leader within {STEP_DEADLINE:?}");
}

async fn put(h: &ReplicaHandle<MemKv>, key: &'static str, value: &'static str) {
    let cmd = KvCommand::Put {
        key: Bytes::from_static(key.as_bytes()),
        value: Bytes::from_static(value.as_bytes()),
    };
    match tokio::time::timeout(STEP_DEADLINE, h.propose(cmd.encode())).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => panic!("put {key} refused: {e}"),
        Err(_) => panic!("put {key} timed out"),
    }
}

async fn get(h: &ReplicaHandle<MemKv>, key: &'static str) -> Result<Option<Bytes>, ReplicaError> {
    let k = Bytes::from_static(key.as_bytes());
    let r = tokio::time::timeout(
        STEP_DEADLINE,
        h.linearizable_query(move |kv: &MemKv| kv.get(&k).cloned()),
    )
    .await;
    match r {
        Ok(r) => r,
        Err(_) => panic!("read of {key} timed out"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paxos_runs_under_the_replica_driver_and_survives_losing_its_leader() {
    let net = match MemNetwork::new(MemNetworkConfig::default()) {
        Ok(n) => n,
        Err(e) => panic!("{e}"),
    };
    let ids = [NodeId(1), NodeId(2), NodeId(3)];
    let members = Membership::new(ids);
    let nodes: Vec<Node> = ids.iter().map(|id| start(&net, *id, &members)).collect();

    let (l1, h1) = leader(&nodes, None).await;
    put(&h1, "k", "v1").await;
    for n in &nodes {
        let got = get(&n.replica.handle(), "k").await;
        assert_eq!(got, Ok(Some(Bytes::from_static(b"v1"))), "{:?}", n.id);
    }

    // Cut the leader off: the others elect a new one, which still holds
    // the chosen write and commits a new one.
    net.isolate(l1);
    let (l2, h2) = leader(&nodes, Some(l1)).await;
    assert_ne!(l1, l2);
    assert_eq!(get(&h2, "k").await, Ok(Some(Bytes::from_static(b"v1"))));
    put(&h2, "k", "v2").await;
    for n in &nodes {
        if n.id == l1 {
            continue;
        }
        let got = get(&n.replica.handle(), "k").await;
        assert_eq!(got, Ok(Some(Bytes::from_static(b"v2"))), "{:?}", n.id);
    }
    for n in nodes {
        if let Err(e) = n.replica.shutdown().await {
            panic!("{:?} shutdown: {e}", n.id);
        }
    }
}
