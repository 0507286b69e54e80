//! Log compaction in ha-node (issue 8), in process over real QUIC and
//! RocksDB with the lock machine: the member table is stored with the
//! application's state, snapshots purge the log every `--snapshot-count`
//! entries, a member that missed purged entries catches up by snapshot, and
//! a restart after compaction keeps data and members. Raft and Paxos (the
//! Paxos tests need `--features paxos`, as `node_etcd`'s). Every wait is
//! bounded; every node started is shut down.
#![cfg(feature = "rocksdb")]

mod cluster_common;

use std::path::Path;
use std::time::{Duration, Instant};

use ha_core::Bytes;
use ha_core::storage::{LogStore, RocksLogStore};
use ha_core::{LogIndex, NodeId};
use ha_lock::LockMachine;
use ha_lock::api::{Command, Limits, PutRequest, RangeRequest, encode_command};
use ha_node::cluster::{AppStore, GROUP, Node, NodeConfig, NodeError};
use ha_node::config::ConsensusKind;

use cluster_common::{Spec, founding, start_retrying};

const TOKEN: &str = "node-compaction-test";
/// Upper bound for anything that needs an election or a catch-up.
const WAIT: Duration = Duration::from_secs(30);
/// `--snapshot-count` of these tests.
const SNAPSHOT_COUNT: u64 = 50;
/// `--snapshot-catchup-entries` of these tests.
const CATCHUP_ENTRIES: u64 = 10;

fn specs(dir: &Path, n: usize) -> Vec<Spec> {
    cluster_common::specs(TOKEN, dir, n)
}

fn config(spec: &Spec, all: &[Spec], kind: ConsensusKind) -> NodeConfig {
    let mut cfg = cluster_common::config(spec, all, Some(founding(all)), spec.id(), 0xc2);
    cfg.consensus = kind;
    cfg.replica.snapshot_every_entries = Some(SNAPSHOT_COUNT);
    cfg.snapshot_catchup_entries = CATCHUP_ENTRIES;
    cfg
}

/// Starts a member on the lock machine in its RocksDB, retrying while a
/// store or port just released by a stopped node is still closing
/// (bounded).
async fn start(spec: &Spec, all: &[Spec], kind: ConsensusKind) -> Node<LockMachine> {
    start_retrying(config(spec, all, kind), |store| match store {
        AppStore::Rocks(s) => {
            LockMachine::open_rocks(s.db(), GROUP, Limits::default()).map_err(|e| e.to_string())
        }
        AppStore::Memory(_) => Err("these tests need RocksDB".into()),
    })
    .await
}

fn put(k: &str, v: &str) -> Bytes {
    encode_command(&Command::Put(PutRequest {
        key: Bytes::copy_from_slice(k.as_bytes()),
        value: Bytes::copy_from_slice(v.as_bytes()),
        ..Default::default()
    }))
}

fn key(i: usize) -> String {
    format!("key{i:05}")
}

/// Writes `key(i)` for `i` in `range` through `node` (forwarded to the
/// leader), retrying a write that certainly did not apply (bounded).
async fn write_keys(node: &Node<LockMachine>, range: std::ops::Range<usize>) {
    let h = node.handle();
    for i in range {
        let deadline = Instant::now() + WAIT;
        loop {
            match h.propose(&put(&key(i), &format!("v{i}"))).await {
                Ok(_) => break,
                Err(
                    NodeError::NotLeader { .. } | NodeError::Unavailable(_) | NodeError::Busy(_),
                ) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("write {i}: {e}"),
            }
        }
    }
}

/// The keys `node` holds as applied locally (serializable read), with their
/// values.
async fn local_keys(node: &Node<LockMachine>) -> Result<Vec<(Bytes, Bytes)>, NodeError> {
    node.handle()
        .read(false, |m: &LockMachine| {
            m.range(&RangeRequest {
                key: Bytes::from_static(b"\0"),
                range_end: Bytes::from_static(b"\0"),
                ..Default::default()
            })
            .map(|r| r.kvs.into_iter().map(|kv| (kv.key, kv.value)).collect())
            .unwrap_or_default()
        })
        .await
}

fn expected(n: usize) -> Vec<(Bytes, Bytes)> {
    (0..n)
        .map(|i| (Bytes::from(key(i)), Bytes::from(format!("v{i}"))))
        .collect()
}

/// Waits until `node` has applied exactly the first `n` keys.
async fn wait_for_keys(node: &Node<LockMachine>, n: usize, what: &str) {
    let want = expected(n);
    let deadline = Instant::now() + WAIT;
    loop {
        if local_keys(node).await.ok().as_ref() == Some(&want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: keys not there in {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A counter from the node's Prometheus text (`ha_<name>_total`).
fn counter(node: &Node<LockMachine>, name: &str) -> u64 {
    let text = node.handle().metrics().encode();
    let prefix = format!("ha_{name}_total ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

async fn leader(nodes: &[Option<Node<LockMachine>>]) -> NodeId {
    cluster_common::leader_of(nodes, WAIT).await
}

/// The first and last index of a stopped member's stored log.
fn log_bounds(db: &Path) -> (LogIndex, LogIndex) {
    let store = RocksLogStore::open(db, Default::default()).expect("reopen the log store");
    store
        .bounds(GROUP)
        .expect("bounds")
        .expect("the log holds entries after the last snapshot")
}

/// Waits until `node`'s member table lists every founding member by name.
async fn wait_members_named(node: &Node<LockMachine>, all: &[Spec], what: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let t = node.handle().local_members();
        let mut names: Vec<String> = t.list().into_iter().map(|m| m.name).collect();
        names.sort();
        let mut want: Vec<String> = all.iter().map(|s| s.name.clone()).collect();
        want.sort();
        if t.initialized && t.cluster_id == 0xc2 && names == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: member table {names:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn lagging_member_catches_up_by_snapshot(kind: ConsensusKind) {
    let dir = tempfile::tempdir().unwrap();
    let sp = specs(dir.path(), 3);
    let mut nodes: Vec<Option<Node<LockMachine>>> = Vec::new();
    for s in &sp {
        nodes.push(Some(start(s, &sp, kind).await));
    }
    let l = leader(&nodes).await;
    let li = sp.iter().position(|s| s.id() == l).unwrap();
    let lagging = (li + 1) % 3;
    let writer = (li + 2) % 3;
    write_keys(nodes[writer].as_ref().unwrap(), 0..10).await;
    wait_for_keys(nodes[lagging].as_ref().unwrap(), 10, "before the stop").await;
    wait_members_named(nodes[lagging].as_ref().unwrap(), &sp, "before the stop").await;
    nodes[lagging].take().unwrap().shutdown().await.unwrap();

    // Well past several purge points while it is down.
    let n = 10 + 6 * SNAPSHOT_COUNT as usize;
    write_keys(nodes[writer].as_ref().unwrap(), 10..n).await;
    for i in [li, writer] {
        wait_for_keys(nodes[i].as_ref().unwrap(), n, "on the live members").await;
    }

    nodes[lagging] = Some(start(&sp[lagging], &sp, kind).await);
    let back = nodes[lagging].as_ref().unwrap();
    wait_for_keys(back, n, "on the restarted member").await;
    let deadline = Instant::now() + WAIT;
    while counter(back, "consensus_snapshots_installed") == 0 {
        assert!(
            Instant::now() < deadline,
            "the restarted member never installed a snapshot"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Its member table came with the snapshot: every member, by name.
    wait_members_named(back, &sp, "on the restarted member").await;
    let listed = back.handle().members().await.expect("member list");
    assert_eq!(
        listed.iter().map(|m| m.id).collect::<Vec<_>>(),
        {
            let mut ids: Vec<u64> = sp.iter().map(|s| s.id().0).collect();
            ids.sort();
            ids
        },
        "member list on the restarted member"
    );
    // It takes part again: a write through it lands everywhere.
    write_keys(back, n..n + 1).await;
    for node in nodes.iter().flatten() {
        wait_for_keys(node, n + 1, "after the catch-up").await;
    }
    for node in nodes.into_iter().flatten() {
        node.shutdown().await.unwrap();
    }
}

async fn restart_after_compaction_keeps_data_and_members(kind: ConsensusKind) {
    let dir = tempfile::tempdir().unwrap();
    let sp = specs(dir.path(), 1);
    let mut nodes = vec![Some(start(&sp[0], &sp, kind).await)];
    leader(&nodes).await;
    let node = nodes[0].take().unwrap();
    let n = 4 * SNAPSHOT_COUNT as usize;
    write_keys(&node, 0..n).await;
    wait_for_keys(&node, n, "before the restart").await;
    wait_members_named(&node, &sp, "before the restart").await;
    node.shutdown().await.unwrap();

    // The log on disk was purged behind a snapshot: at most the last
    // snapshot's trailing entries and what followed it are left.
    let (first, last) = log_bounds(&sp[0].db());
    assert!(
        first > LogIndex(1) && last.0 - first.0 < 2 * SNAPSHOT_COUNT + CATCHUP_ENTRIES,
        "log purged: entries {first:?}..={last:?}"
    );

    // Restart: data and member table come from the stored state, not from
    // the (purged) log.
    let mut nodes = vec![Some(start(&sp[0], &sp, kind).await)];
    leader(&nodes).await;
    let node = nodes[0].take().unwrap();
    wait_for_keys(&node, n, "after the restart").await;
    wait_members_named(&node, &sp, "after the restart").await;
    assert_eq!(node.handle().cluster_id(), 0xc2);
    assert_eq!(node.handle().members().await.expect("member list").len(), 1);
    write_keys(&node, n..n + 1).await;
    wait_for_keys(&node, n + 1, "a write after the restart").await;
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn raft_lagging_member_catches_up_by_snapshot() {
    lagging_member_catches_up_by_snapshot(ConsensusKind::Raft).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(feature = "paxos"),
    ignore = "needs the `paxos` feature (cargo test -p ha-node --all-features)"
)]
async fn paxos_lagging_member_catches_up_by_snapshot() {
    lagging_member_catches_up_by_snapshot(ConsensusKind::Paxos).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn raft_restart_after_compaction_keeps_data_and_members() {
    restart_after_compaction_keeps_data_and_members(ConsensusKind::Raft).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(feature = "paxos"),
    ignore = "needs the `paxos` feature (cargo test -p ha-node --all-features)"
)]
async fn paxos_restart_after_compaction_keeps_data_and_members() {
    restart_after_compaction_keeps_data_and_members(ConsensusKind::Paxos).await;
}
