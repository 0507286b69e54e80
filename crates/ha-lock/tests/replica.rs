//! End to end on ha-core's driver: `LockMachine` on RocksDB (column family
//! `sm` of the log store's DB) behind `Replica<Solo>`, with periodic
//! snapshots that let the log be purged; after a restart the machine
//! recovers from its own durable state plus the log tail, and answers the
//! same as before.

use std::sync::Arc;

use bytes::Bytes;
use ha_core::replica::{Replica, ReplicaConfig};
use ha_core::solo::{Solo, SoloConfig};
use ha_core::storage::{LogStore, RocksLogStore, RocksOptions};
use ha_core::transport::{MemNetwork, MemNetworkConfig};
use ha_core::{GroupId, NodeId};
use ha_lock::LockMachine;
use ha_lock::api::*;

const GROUP: GroupId = GroupId(3);
const NODE: NodeId = NodeId(1);
const PUTS: usize = 300;

fn start(store: &Arc<RocksLogStore>) -> Replica<LockMachine> {
    let recovered = store.recover(GROUP).expect("recover");
    let solo = Solo::new(SoloConfig::new(NODE), recovered).expect("solo");
    let net = MemNetwork::new(MemNetworkConfig::default()).expect("net");
    let (transport, inbound) = net.join(NODE).expect("join");
    let machine = LockMachine::open_rocks(store.db(), GROUP, Limits::default()).expect("open sm");
    let config = ReplicaConfig {
        group: GROUP,
        snapshot_every_entries: Some(64),
        ..ReplicaConfig::default()
    };
    Replica::start(
        config,
        solo,
        Arc::clone(store) as Arc<dyn LogStore>,
        machine,
        Arc::new(transport),
        inbound,
    )
    .expect("start")
}

async fn run(h: &ha_core::replica::ReplicaHandle<LockMachine>, c: Command) -> Applied {
    let out = h.propose(encode_command(&c)).await.expect("propose");
    decode_applied(&out).expect("decode")
}

#[tokio::test(flavor = "current_thread")]
async fn restart_recovers_from_the_durable_machine_after_log_purge() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(RocksLogStore::open(dir.path(), RocksOptions::default()).expect("open"));
    let replica = start(&store);
    let h = replica.handle();
    let Ok(Response::LeaseGrant(g)) = run(
        &h,
        Command::LeaseGrant(LeaseGrantRequest {
            id: 0,
            ttl_ms: 60_000,
        }),
    )
    .await
    .result
    else {
        panic!("grant")
    };
    let Ok(Response::Lock(lock)) = run(
        &h,
        Command::Lock {
            name: Bytes::from_static(b"job"),
            lease: g.id,
        },
    )
    .await
    .result
    else {
        panic!("lock")
    };
    assert!(lock.acquired);
    for i in 0..PUTS {
        let a = run(
            &h,
            Command::Put(PutRequest {
                key: Bytes::from(format!("k{:03}", i % 50)),
                value: Bytes::from(i.to_string()),
                ..Default::default()
            }),
        )
        .await;
        assert!(a.result.is_ok());
    }
    let before = h
        .linearizable_query(|m: &LockMachine| {
            (
                m.current_revision(),
                m.range(&RangeRequest {
                    key: "\0".into(),
                    range_end: "\0".into(),
                    ..Default::default()
                }),
                m.lock_owner(b"job"),
            )
        })
        .await
        .expect("query");
    // a fresh store is at revision 1; the lock key and every put add one
    assert_eq!(before.0, PUTS as i64 + 2);
    let machine = replica.shutdown().await.expect("shutdown");
    drop(machine);
    // the log was purged below a snapshot: it alone could not rebuild the state
    let recovered = store.recover(GROUP).expect("recover");
    assert!(
        recovered
            .entries
            .first()
            .is_none_or(|e| e.log_id.index.get() > 1),
        "snapshots every 64 entries let the log be purged"
    );

    let replica = start(&store);
    let h = replica.handle();
    let after = h
        .linearizable_query(|m: &LockMachine| {
            (
                m.current_revision(),
                m.range(&RangeRequest {
                    key: "\0".into(),
                    range_end: "\0".into(),
                    ..Default::default()
                }),
                m.lock_owner(b"job"),
            )
        })
        .await
        .expect("query");
    assert_eq!(after, before);
    // and it keeps going: the lock is still held with the same token
    let Ok(Response::Lock(again)) = run(
        &h,
        Command::Lock {
            name: Bytes::from_static(b"job"),
            lease: g.id,
        },
    )
    .await
    .result
    else {
        panic!("lock")
    };
    assert_eq!(again, lock);
    replica.shutdown().await.expect("shutdown");
}
