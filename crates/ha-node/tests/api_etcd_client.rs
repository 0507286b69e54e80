//! The etcd API driven by the Rust `etcd-client` crate against an
//! in-process server over `LocalBackend`. Every test is bounded by
//! `TEST_TIMEOUT` and stops its server.

#[path = "api_common/mod.rs"]
mod common;

use std::time::Duration;

use common::{TEST_TIMEOUT, TestServer, grpc_status};
use etcd_client::{
    Compare, CompareOp, DeleteOptions, EventType, GetOptions, LockOptions, PutOptions,
    ResignOptions, SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use ha_node::api::{ApiConfig, Backend};
use tokio::time::timeout;
use tonic::Code;

async fn bounded<F: std::future::Future<Output = ()>>(f: F) {
    timeout(TEST_TIMEOUT, f).await.expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_get_prefix_revision_limit_keys_only_count_only() {
    bounded(async {
        let server = TestServer::start().await;
        let mut c = server.client().await;
        let r1 = c.put("app/a", "1", None).await.unwrap();
        let rev_a = r1.header().unwrap().revision();
        c.put("app/b", "2", None).await.unwrap();
        c.put("app/c", "3", None).await.unwrap();
        c.put("other", "x", None).await.unwrap();
        let put = c
            .put("app/a", "1b", Some(PutOptions::new().with_prev_key()))
            .await
            .unwrap();
        assert_eq!(put.prev_key().unwrap().value(), b"1");

        let all = c
            .get("app/", Some(GetOptions::new().with_prefix()))
            .await
            .unwrap();
        let keys: Vec<&[u8]> = all.kvs().iter().map(|kv| kv.key()).collect();
        assert_eq!(keys, vec![&b"app/a"[..], b"app/b", b"app/c"]);
        assert_eq!(all.count(), 3);
        assert_eq!(all.kvs()[0].value(), b"1b");
        assert_eq!(all.kvs()[0].version(), 2);
        assert_eq!(all.header().unwrap().revision(), rev_a + 4);

        let old = c
            .get("app/a", Some(GetOptions::new().with_revision(rev_a)))
            .await
            .unwrap();
        assert_eq!(old.kvs()[0].value(), b"1");

        let limited = c
            .get(
                "app/",
                Some(
                    GetOptions::new()
                        .with_prefix()
                        .with_limit(2)
                        .with_sort(SortTarget::Key, SortOrder::Descend),
                ),
            )
            .await
            .unwrap();
        assert_eq!(limited.kvs().len(), 2);
        assert!(limited.more());
        assert_eq!(limited.count(), 3);
        assert_eq!(limited.kvs()[0].key(), b"app/c");

        let keys_only = c
            .get(
                "app/",
                Some(GetOptions::new().with_prefix().with_keys_only()),
            )
            .await
            .unwrap();
        assert!(keys_only.kvs().iter().all(|kv| kv.value().is_empty()));
        assert_eq!(keys_only.kvs().len(), 3);

        let count_only = c
            .get(
                "app/",
                Some(GetOptions::new().with_prefix().with_count_only()),
            )
            .await
            .unwrap();
        assert!(count_only.kvs().is_empty());
        assert_eq!(count_only.count(), 3);

        let serializable = c
            .get("other", Some(GetOptions::new().with_serializable()))
            .await
            .unwrap();
        assert_eq!(serializable.kvs()[0].value(), b"x");

        let header = all.header().unwrap();
        assert_eq!(header.member_id(), 1);
        assert_ne!(header.cluster_id(), 0);
        assert_eq!(header.raft_term(), 1);
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_single_and_prefix_with_prev_kvs() {
    bounded(async {
        let server = TestServer::start().await;
        let mut c = server.client().await;
        for k in ["d/1", "d/2", "d/3", "keep"] {
            c.put(k, "v", None).await.unwrap();
        }
        let one = c.delete("d/1", None).await.unwrap();
        assert_eq!(one.deleted(), 1);
        let rest = c
            .delete(
                "d/",
                Some(DeleteOptions::new().with_prefix().with_prev_key()),
            )
            .await
            .unwrap();
        assert_eq!(rest.deleted(), 2);
        assert_eq!(rest.prev_kvs().len(), 2);
        let left = c
            .get("", Some(GetOptions::new().with_all_keys()))
            .await
            .unwrap();
        assert_eq!(left.kvs().len(), 1);
        assert_eq!(left.kvs()[0].key(), b"keep");
        let none = c.delete("missing", None).await.unwrap();
        assert_eq!(none.deleted(), 0);
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn txn_takes_success_or_failure_branch() {
    bounded(async {
        let server = TestServer::start().await;
        let mut c = server.client().await;
        c.put("t/k", "v1", None).await.unwrap();
        let ok = c
            .txn(
                Txn::new()
                    .when([Compare::value("t/k", CompareOp::Equal, "v1")])
                    .and_then([TxnOp::put("t/k", "v2", None), TxnOp::get("t/k", None)])
                    .or_else([TxnOp::put("t/failed", "1", None)]),
            )
            .await
            .unwrap();
        assert!(ok.succeeded());
        match &ok.op_responses()[1] {
            TxnOpResponse::Get(g) => assert_eq!(g.kvs()[0].value(), b"v2"),
            other => panic!("expected a get response, got {other:?}"),
        }
        let rev = ok.header().unwrap().revision();
        let fail = c
            .txn(
                Txn::new()
                    .when([Compare::mod_revision("t/k", CompareOp::Less, rev)])
                    .and_then([TxnOp::put("t/k", "v3", None)])
                    .or_else([
                        TxnOp::put("t/failed", "1", None),
                        TxnOp::delete("t/none", None),
                    ]),
            )
            .await
            .unwrap();
        assert!(!fail.succeeded());
        assert_eq!(fail.op_responses().len(), 2);
        let k = c.get("t/k", None).await.unwrap();
        assert_eq!(k.kvs()[0].value(), b"v2");
        let f = c.get("t/failed", None).await.unwrap();
        assert_eq!(f.kvs()[0].value(), b"1");
        // Version compare on a missing key: version 0.
        let absent = c
            .txn(
                Txn::new()
                    .when([Compare::version("t/new", CompareOp::Equal, 0)])
                    .and_then([TxnOp::put("t/new", "created", None)]),
            )
            .await
            .unwrap();
        assert!(absent.succeeded());
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_from_past_revision_then_live_then_cancel() {
    bounded(async {
        let server = TestServer::start().await;
        let mut c = server.client().await;
        let first = c.put("w/a", "1", None).await.unwrap();
        let start = first.header().unwrap().revision();
        c.put("w/b", "2", None).await.unwrap();
        c.put("unwatched", "x", None).await.unwrap();
        c.delete("w/a", None).await.unwrap();

        let mut stream = c
            .watch(
                "w/",
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(start)
                        .with_prev_key(),
                ),
            )
            .await
            .unwrap();
        let created = stream.message().await.unwrap().unwrap();
        assert!(created.created());
        let watch_id = created.watch_id();

        // History: put a, put b, delete a — in order, nothing else.
        let mut seen = Vec::new();
        while seen.len() < 3 {
            let resp = stream.message().await.unwrap().unwrap();
            for ev in resp.events() {
                let kv = ev.kv().unwrap();
                seen.push((ev.event_type(), kv.key().to_vec(), kv.mod_revision()));
            }
        }
        assert_eq!(seen[0].0, EventType::Put);
        assert_eq!(seen[0].1, b"w/a");
        assert_eq!(seen[0].2, start);
        assert_eq!(seen[1].1, b"w/b");
        assert_eq!(seen[2].0, EventType::Delete);
        assert_eq!(seen[2].1, b"w/a");
        assert!(seen.windows(2).all(|w| w[0].2 < w[1].2));

        // Live, with prev_kv.
        c.put("w/b", "3", None).await.unwrap();
        c.put("elsewhere", "y", None).await.unwrap();
        c.put("w/c", "4", None).await.unwrap();
        let mut live = Vec::new();
        while live.len() < 2 {
            let resp = stream.message().await.unwrap().unwrap();
            live.extend(resp.events().iter().cloned());
        }
        assert_eq!(live[0].kv().unwrap().key(), b"w/b");
        assert_eq!(live[0].prev_kv().unwrap().value(), b"2");
        assert_eq!(live[1].kv().unwrap().key(), b"w/c");

        stream.cancel(watch_id).await.unwrap();
        let canceled = stream.message().await.unwrap().unwrap();
        assert!(canceled.canceled());
        assert_eq!(canceled.watch_id(), watch_id);
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_watches_on_one_stream_with_filters_and_progress() {
    bounded(async {
        let server = TestServer::start().await;
        let mut c = server.client().await;
        let mut stream = c.watch("m/x", None).await.unwrap();
        let first = stream.message().await.unwrap().unwrap();
        assert!(first.created());
        stream
            .watch(
                "m/",
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_filters([etcd_client::WatchFilterType::NoPut]),
                ),
            )
            .await
            .unwrap();
        let second = stream.message().await.unwrap().unwrap();
        assert!(second.created());
        assert_ne!(first.watch_id(), second.watch_id());

        c.put("m/x", "1", None).await.unwrap();
        let del = c.delete("m/x", None).await.unwrap();
        let del_rev = del.header().unwrap().revision();
        // watch 1 sees put + delete; watch 2 (NOPUT) only the delete.
        let (mut w1, mut w2) = (Vec::new(), Vec::new());
        while w1.len() < 2 || w2.is_empty() {
            let resp = stream.message().await.unwrap().unwrap();
            let sink = if resp.watch_id() == first.watch_id() {
                &mut w1
            } else {
                &mut w2
            };
            sink.extend(resp.events().iter().map(|e| e.event_type()));
        }
        assert_eq!(w1, vec![EventType::Put, EventType::Delete]);
        assert_eq!(w2, vec![EventType::Delete]);

        stream.request_progress().await.unwrap();
        let progress = stream.message().await.unwrap().unwrap();
        assert!(progress.events().is_empty());
        assert_eq!(progress.watch_id(), -1);
        assert_eq!(progress.header().unwrap().revision(), del_rev);
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_below_compaction_gets_compacted_response_and_reads_fail() {
    bounded(async {
        let server = TestServer::start().await;
        let mut c = server.client().await;
        let r1 = c
            .put("c/k", "1", None)
            .await
            .unwrap()
            .header()
            .unwrap()
            .revision();
        c.put("c/k", "2", None).await.unwrap();
        let r3 = c
            .put("c/k", "3", None)
            .await
            .unwrap()
            .header()
            .unwrap()
            .revision();
        c.compact(r3, None).await.unwrap();

        let err = c
            .get("c/k", Some(GetOptions::new().with_revision(r1)))
            .await
            .unwrap_err();
        let status = grpc_status(err);
        assert_eq!(status.code(), Code::OutOfRange);
        assert_eq!(
            status.message(),
            "etcdserver: mvcc: required revision has been compacted"
        );
        let now = c.get("c/k", None).await.unwrap();
        assert_eq!(now.kvs()[0].value(), b"3");

        let mut stream = c
            .watch("c/k", Some(WatchOptions::new().with_start_revision(r1)))
            .await
            .unwrap();
        let mut compacted = None;
        for _ in 0..3 {
            let resp = stream.message().await.unwrap().unwrap();
            if resp.canceled() {
                compacted = Some(resp);
                break;
            }
        }
        let resp = compacted.expect("a cancel with the compact revision");
        assert_eq!(resp.compact_revision(), r3);
        assert!(resp.cancel_reason().contains("compacted"));
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_grant_keep_alive_ttl_revoke_deletes_keys() {
    bounded(async {
        let server = TestServer::start().await;
        let mut c = server.client().await;
        let lease = c.lease_grant(30, None).await.unwrap();
        assert_eq!(lease.ttl(), 30);
        let id = lease.id();
        c.put("l/a", "1", Some(PutOptions::new().with_lease(id)))
            .await
            .unwrap();
        c.put("l/b", "2", Some(PutOptions::new().with_lease(id)))
            .await
            .unwrap();

        let (mut keeper, mut responses) = c.lease_keep_alive(id).await.unwrap();
        keeper.keep_alive().await.unwrap();
        let ka = responses.message().await.unwrap().unwrap();
        assert_eq!(ka.id(), id);
        assert_eq!(ka.ttl(), 30);

        let ttl = c
            .lease_time_to_live(
                id,
                Some(etcd_client::LeaseTimeToLiveOptions::new().with_keys()),
            )
            .await
            .unwrap();
        assert_eq!(ttl.granted_ttl(), 30);
        assert!(ttl.ttl() > 25 && ttl.ttl() <= 30, "ttl {}", ttl.ttl());
        let mut keys = ttl.keys().to_vec();
        keys.sort();
        assert_eq!(keys, vec![b"l/a".to_vec(), b"l/b".to_vec()]);

        let leases = c.leases().await.unwrap();
        assert!(leases.leases().iter().any(|l| l.id() == id));

        c.lease_revoke(id).await.unwrap();
        let gone = c
            .get("l/", Some(GetOptions::new().with_prefix()))
            .await
            .unwrap();
        assert!(gone.kvs().is_empty());
        let ttl = c.lease_time_to_live(id, None).await.unwrap();
        assert_eq!(ttl.ttl(), -1);
        // Keep-alive of a revoked lease answers TTL 0, as etcd.
        keeper.keep_alive().await.unwrap();
        let dead = responses.message().await.unwrap().unwrap();
        assert_eq!(dead.ttl(), 0);
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_expiry_deletes_keys() {
    bounded(async {
        let server = TestServer::start().await;
        let mut c = server.client().await;
        let id = c.lease_grant(1, None).await.unwrap().id();
        c.put("exp/k", "v", Some(PutOptions::new().with_lease(id)))
            .await
            .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let r = c.get("exp/k", None).await.unwrap();
            if r.kvs().is_empty() {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "lease never expired"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let ttl = c.lease_time_to_live(id, None).await.unwrap();
        assert_eq!(ttl.ttl(), -1);
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_locker_waits_until_first_unlocks() {
    bounded(async {
        let server = TestServer::start().await;
        let mut c1 = server.client().await;
        let mut c2 = server.client().await;
        let l1 = c1.lease_grant(30, None).await.unwrap().id();
        let l2 = c2.lease_grant(30, None).await.unwrap().id();
        let first = c1
            .lock("mylock", Some(LockOptions::new().with_lease(l1)))
            .await
            .unwrap();
        let first_key = first.key().to_vec();
        assert!(first_key.starts_with(b"mylock/"));

        let waiter = tokio::spawn(async move {
            let r = c2
                .lock("mylock", Some(LockOptions::new().with_lease(l2)))
                .await
                .unwrap();
            r.key().to_vec()
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiter.is_finished(), "second locker must wait");

        let owner_rev = c1.get(first_key.clone(), None).await.unwrap().kvs()[0].create_revision();
        c1.unlock(first_key.clone()).await.unwrap();
        let second_key = timeout(Duration::from_secs(10), waiter)
            .await
            .expect("second locker acquires after unlock")
            .unwrap();
        assert_ne!(second_key, first_key);
        // The fencing token (create revision) grows.
        let second_rev = c1.get(second_key, None).await.unwrap().kvs()[0].create_revision();
        assert!(second_rev > owner_rev);
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn election_campaign_observe_resign_hands_over() {
    bounded(async {
        let server = TestServer::start().await;
        let mut c1 = server.client().await;
        let mut c2 = server.client().await;
        let l1 = c1.lease_grant(30, None).await.unwrap().id();
        let l2 = c2.lease_grant(30, None).await.unwrap().id();
        let won = c1.campaign("elect", "alice", l1).await.unwrap();
        let leader1 = won.leader().unwrap().clone();

        let mut observer = c1.observe("elect").await.unwrap();
        let seen = observer.message().await.unwrap().unwrap();
        assert_eq!(seen.kv().unwrap().value(), b"alice");

        let candidate = tokio::spawn(async move {
            c2.campaign("elect", "bob", l2)
                .await
                .unwrap()
                .leader()
                .unwrap()
                .clone()
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!candidate.is_finished(), "second candidate must wait");

        let leader = c1.leader("elect").await.unwrap();
        assert_eq!(leader.kv().unwrap().value(), b"alice");
        c1.proclaim(
            "alice-2",
            Some(etcd_client::ProclaimOptions::new().with_leader(leader1.clone())),
        )
        .await
        .unwrap();
        let seen = observer.message().await.unwrap().unwrap();
        assert_eq!(seen.kv().unwrap().value(), b"alice-2");

        c1.resign(Some(ResignOptions::new().with_leader(leader1)))
            .await
            .unwrap();
        let leader2 = timeout(Duration::from_secs(10), candidate)
            .await
            .expect("second candidate elected after resign")
            .unwrap();
        assert_eq!(leader2.lease(), l2);
        let seen = observer.message().await.unwrap().unwrap();
        assert_eq!(seen.kv().unwrap().value(), b"bob");
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_list_status_and_unimplemented_maintenance() {
    bounded(async {
        let server = TestServer::start().await;
        let mut c = server.client().await;
        let members = c.member_list().await.unwrap();
        assert_eq!(members.members().len(), 1);
        assert_eq!(members.members()[0].id(), 1);
        c.put("s", "1", None).await.unwrap();
        let status = c.status().await.unwrap();
        assert_eq!(status.leader(), 1);
        assert!(status.raft_index() >= 1);
        assert!(status.version().starts_with("3.5"));
        let err = grpc_status(c.defragment().await.unwrap_err());
        assert_eq!(err.code(), Code::Unimplemented);
        assert!(err.message().contains("Defragment"));
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_get_etcd_errors_and_change_nothing() {
    bounded(async {
        let server = TestServer::start().await;
        let mut c = server.client().await;
        let before = c
            .put("bad/k", "v", None)
            .await
            .unwrap()
            .header()
            .unwrap()
            .revision();

        // Oversized value.
        let big = vec![b'x'; 2 * 1024 * 1024];
        let s = grpc_status(c.put("bad/k", big, None).await.unwrap_err());
        assert_eq!(s.code(), Code::InvalidArgument);
        assert_eq!(s.message(), "etcdserver: request is too large");

        // A transaction writing one key twice.
        let s = grpc_status(
            c.txn(Txn::new().and_then([
                TxnOp::put("bad/k", "1", None),
                TxnOp::put("bad/k", "2", None),
            ]))
            .await
            .unwrap_err(),
        );
        assert_eq!(s.code(), Code::InvalidArgument);
        assert_eq!(
            s.message(),
            "etcdserver: duplicate key given in txn request"
        );

        // Unknown lease.
        let s = grpc_status(
            c.put("bad/k", "v2", Some(PutOptions::new().with_lease(0x1234)))
                .await
                .unwrap_err(),
        );
        assert_eq!(s.code(), Code::NotFound);
        assert_eq!(s.message(), "etcdserver: requested lease not found");

        // Too many operations.
        let ops: Vec<TxnOp> = (0..200)
            .map(|i| TxnOp::put(format!("bad/{i}"), "v", None))
            .collect();
        let s = grpc_status(c.txn(Txn::new().and_then(ops)).await.unwrap_err());
        assert_eq!(s.code(), Code::InvalidArgument);
        assert_eq!(
            s.message(),
            "etcdserver: too many operations in txn request"
        );

        // Empty key.
        let s = grpc_status(c.put("", "v", None).await.unwrap_err());
        assert_eq!(s.code(), Code::InvalidArgument);
        assert_eq!(s.message(), "etcdserver: key is not provided");

        // Lock and campaign on a lease that does not exist.
        let s = grpc_status(
            c.lock("bad/lock", Some(LockOptions::new().with_lease(0x4242)))
                .await
                .unwrap_err(),
        );
        assert_eq!(s.code(), Code::NotFound);
        assert_eq!(s.message(), "etcdserver: requested lease not found");
        let s = grpc_status(c.campaign("bad/el", "v", 0x4243).await.unwrap_err());
        assert_eq!(s.code(), Code::NotFound);
        assert_eq!(s.message(), "etcdserver: requested lease not found");

        // Nothing changed: same revision, same value, no stray keys.
        let after = c
            .get("bad/", Some(GetOptions::new().with_prefix()))
            .await
            .unwrap();
        assert_eq!(after.header().unwrap().revision(), before);
        assert_eq!(after.kvs().len(), 1);
        assert_eq!(after.kvs()[0].value(), b"v");
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_store_revision_is_one_as_etcd() {
    bounded(async {
        let server = TestServer::start().await;
        let mut c = server.client().await;
        let empty = c.get("any", None).await.unwrap();
        assert_eq!(empty.header().unwrap().revision(), 1);
        let first = c.put("k", "v", None).await.unwrap();
        assert_eq!(first.header().unwrap().revision(), 2);
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_watch_recovers_from_history_without_gap_or_duplicate() {
    bounded(async {
        // A one-batch live queue and a two-response outbound queue: a burst
        // of writes overflows them, so the stream must catch up from history.
        let server = TestServer::start_with_backend(
            ApiConfig {
                watch_queue_len: 2,
                watch_history_batch_events: 7,
                ..ApiConfig::default()
            },
            ha_node::api::LocalBackendConfig {
                event_queue_len: 1,
                ..TestServer::backend_config()
            },
        )
        .await;
        let mut c = server.client().await;
        let mut stream = c
            .watch("lag/", Some(WatchOptions::new().with_prefix()))
            .await
            .unwrap();
        assert!(stream.message().await.unwrap().unwrap().created());
        const WRITES: i64 = 300;
        let mut first_rev = 0;
        for i in 0..WRITES {
            let put = ha_lock::api::PutRequest {
                key: format!("lag/{}", i % 10).into(),
                value: format!("{i}").into(),
                ..Default::default()
            };
            let applied = server
                .backend
                .write(ha_lock::api::Command::Put(put))
                .await
                .unwrap();
            assert!(applied.result.is_ok());
            if i == 0 {
                first_rev = applied.revision;
            }
            // Unrelated writes interleave.
            let other = ha_lock::api::PutRequest {
                key: "elsewhere".into(),
                value: "x".into(),
                ..Default::default()
            };
            server
                .backend
                .write(ha_lock::api::Command::Put(other))
                .await
                .unwrap();
        }
        let mut revs = Vec::new();
        while revs.len() < WRITES as usize {
            let resp = stream.message().await.unwrap().unwrap();
            assert!(!resp.canceled(), "cancelled: {}", resp.cancel_reason());
            for ev in resp.events() {
                let kv = ev.kv().unwrap();
                assert!(kv.key().starts_with(b"lag/"));
                revs.push(kv.mod_revision());
            }
        }
        let expected: Vec<i64> = (0..WRITES).map(|i| first_rev + 2 * i).collect();
        assert_eq!(revs, expected, "every event once, in order");
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_waiter_that_goes_away_withdraws_its_key() {
    bounded(async {
        let server = TestServer::start().await;
        let mut c1 = server.client().await;
        let mut c2 = server.client().await;
        let l1 = c1.lease_grant(30, None).await.unwrap().id();
        let l2 = c2.lease_grant(30, None).await.unwrap().id();
        let owner = c1
            .lock("gone", Some(LockOptions::new().with_lease(l1)))
            .await
            .unwrap();
        let waiter = tokio::spawn(async move {
            let _ = c2
                .lock("gone", Some(LockOptions::new().with_lease(l2)))
                .await;
        });
        // The waiter's key appears, then the waiter gives up.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let r = c1
                .get("gone/", Some(GetOptions::new().with_prefix()))
                .await
                .unwrap();
            if r.kvs().len() == 2 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "waiter key never appeared"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        waiter.abort();
        loop {
            let r = c1
                .get("gone/", Some(GetOptions::new().with_prefix()))
                .await
                .unwrap();
            if r.kvs().len() == 1 {
                assert_eq!(r.kvs()[0].key(), owner.key());
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "waiter key never withdrawn"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_notify_reports_the_revision_seen() {
    bounded(async {
        let server = TestServer::start_with(ApiConfig {
            watch_progress_interval_ms: 100,
            ..ApiConfig::default()
        })
        .await;
        let mut c = server.client().await;
        let rev = c
            .put("p/k", "1", None)
            .await
            .unwrap()
            .header()
            .unwrap()
            .revision();
        let mut stream = c
            .watch(
                "p/",
                Some(WatchOptions::new().with_prefix().with_progress_notify()),
            )
            .await
            .unwrap();
        let created = stream.message().await.unwrap().unwrap();
        assert!(created.created());
        let notify = stream.message().await.unwrap().unwrap();
        assert!(notify.events().is_empty());
        assert!(!notify.canceled());
        assert_eq!(notify.watch_id(), created.watch_id());
        assert_eq!(notify.header().unwrap().revision(), rev);
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_open_streams_with_server_stopped() {
    bounded(async {
        let server = TestServer::start().await;
        let mut c = server.client().await;
        let mut stream = c.watch("s/", None).await.unwrap();
        assert!(stream.message().await.unwrap().unwrap().created());
        let stopping = tokio::spawn(server.stop());
        match stream.message().await {
            Err(err) => {
                let s = grpc_status(err);
                assert_eq!(s.code(), Code::Unavailable);
                assert_eq!(s.message(), "etcdserver: server stopped");
            }
            Ok(other) => panic!("expected the stream to end with server stopped, got {other:?}"),
        }
        stopping.await.unwrap();
    })
    .await;
}
