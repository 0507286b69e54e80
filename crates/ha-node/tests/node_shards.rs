//! `ha-node --shards N --replication R` with real processes: keys spread
//! over data shards, every member serves every key (its own replica or a
//! forward to a member hosting the shard), cross-shard writes are refused
//! and change nothing, multi-shard ranges return each key once, the layout
//! is checked on restart. Every wait is bounded; every process is killed
//! on drop.
#![cfg(feature = "rocksdb")]

#[path = "proc_common/mod.rs"]
mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{CLUSTER_WAIT, Cluster, EXIT_WAIT, Member, Proc};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, Txn, TxnOp,
};
use ha_core::{GroupId, NodeId};
use ha_node::ctl::{ShardsPage, parse_shards};
use ha_ring::hash::HashFn;
use ha_shard::{Router, ShardMap};
use tonic::Code;

/// Bound on one test's async part.
const TEST_TIMEOUT: Duration = Duration::from_secs(120);
/// Pause between two tries of a request refused while shards elect.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

async fn client(ep: &str) -> Client {
    Client::connect(
        [format!("http://{ep}")],
        Some(
            ConnectOptions::new()
                .with_connect_timeout(Duration::from_secs(3))
                .with_timeout(Duration::from_secs(10)),
        ),
    )
    .await
    .expect("etcd-client connects")
}

fn code_of(e: &etcd_client::Error) -> Option<Code> {
    match e {
        etcd_client::Error::GRpcStatus(s) => Some(s.code()),
        _ => None,
    }
}

/// Retries the request expression while it fails with anything but
/// FAILED_PRECONDITION (a shard still electing), within `CLUSTER_WAIT`.
macro_rules! until_ok {
    ($what:expr, $req:expr) => {{
        let deadline = Instant::now() + CLUSTER_WAIT;
        loop {
            match $req.await {
                Ok(v) => break v,
                Err(e)
                    if Instant::now() < deadline
                        && code_of(&e) != Some(Code::FailedPrecondition) =>
                {
                    eprintln!("{}: {e}; retrying", $what);
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                Err(e) => panic!("{}: {e}", $what),
            }
        }
    }};
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn block<F: std::future::Future<Output = ()>>(rt: &tokio::runtime::Runtime, f: F) {
    rt.block_on(async {
        tokio::time::timeout(TEST_TIMEOUT, f)
            .await
            .expect("test step timed out")
    })
}

/// The placement every member computes for `cl` (founding members' ids).
fn placement(cl: &Cluster, shards: u64, replication: usize) -> ShardMap {
    let ids = cl
        .members
        .iter()
        .map(|m| ha_ring::NodeSpec::new(ha_node::ids::member_id(&cl.token, &m.name)));
    let cluster = ha_ring::Cluster::new(ids).expect("cluster");
    ShardMap::new(shards, replication, &cluster).expect("shard map")
}

/// Every key under `prefix` read through `ep`, as (key, value), checked to
/// be in key order with each key once.
async fn read_prefix(ep: &str, prefix: &str) -> Vec<(String, String)> {
    let mut c = client(ep).await;
    let r = until_ok!(
        "prefix read",
        c.get(prefix, Some(GetOptions::new().with_prefix()))
    );
    let kvs: Vec<(String, String)> = r
        .kvs()
        .iter()
        .map(|kv| {
            (
                kv.key_str().unwrap().to_string(),
                kv.value_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(r.count() as usize, kvs.len(), "count of {prefix} via {ep}");
    assert!(
        kvs.windows(2).all(|w| w[0].0 < w[1].0),
        "keys in order, each once, via {ep}"
    );
    kvs
}

#[test]
fn three_members_four_shards_serve_route_refuse_and_restart() {
    three_members_four_shards("raft");
}

#[cfg(feature = "paxos")]
#[test]
fn paxos_three_members_four_shards_serve_route_refuse_and_restart() {
    three_members_four_shards("paxos");
}

fn three_members_four_shards(consensus: &str) {
    let mut cl = Cluster::start_with(consensus, 3, &["--shards=4", "--replication=3"]);
    let eps: Vec<String> = cl.members.iter().map(Member::endpoint).collect();
    let router = Router::new(HashFn::V1, 4).unwrap();
    let rt = runtime();
    let per_member = 40;
    // Puts of many keys through every member.
    block(&rt, async {
        for (i, ep) in eps.iter().enumerate() {
            let mut c = client(ep).await;
            for j in 0..per_member {
                let (k, v) = (format!("k/{i}/{j:03}"), format!("v{i}.{j}"));
                until_ok!("put", c.put(k.clone(), v.clone(), None));
            }
        }
    });
    let want: Vec<(String, String)> = (0..eps.len())
        .flat_map(|i| (0..per_member).map(move |j| (format!("k/{i}/{j:03}"), format!("v{i}.{j}"))))
        .collect();
    let shards_used: BTreeSet<GroupId> = want
        .iter()
        .map(|(k, _)| router.shard_for_key(k.as_bytes()))
        .collect();
    assert_eq!(shards_used.len(), 4, "the keys spread over every shard");
    // Read back from every member: single keys and the prefix.
    block(&rt, async {
        for ep in &eps {
            let mut c = client(ep).await;
            for (k, v) in want.iter().step_by(7) {
                let r = until_ok!("get", c.get(k.clone(), None));
                assert_eq!(r.kvs().len(), 1, "{k} via {ep}");
                assert_eq!(r.kvs()[0].value_str().unwrap(), v);
            }
            assert_eq!(read_prefix(ep, "k/").await, want, "prefix via {ep}");
            // With a limit: the first keys in key order, the full count.
            let r = until_ok!(
                "limited read",
                c.get("k/", Some(GetOptions::new().with_prefix().with_limit(7)))
            );
            let keys: Vec<&str> = r.kvs().iter().map(|kv| kv.key_str().unwrap()).collect();
            let first: Vec<&str> = want[..7].iter().map(|(k, _)| k.as_str()).collect();
            assert_eq!(keys, first, "limit via {ep}");
            assert!(r.more());
            assert_eq!(r.count() as usize, want.len());
            // keys_only and count_only after the merge.
            let r = until_ok!(
                "count",
                c.get(
                    "k/",
                    Some(GetOptions::new().with_prefix().with_count_only())
                )
            );
            assert_eq!((r.count() as usize, r.kvs().len()), (want.len(), 0));
        }
    });
    // A txn within one shard works with full semantics; across shards it
    // is refused and changes nothing.
    block(&rt, async {
        let mut c = client(&eps[1]).await;
        let a = "k/0/000".to_string();
        let same = want
            .iter()
            .map(|(k, _)| k.clone())
            .find(|k| {
                *k != a && router.shard_for_key(k.as_bytes()) == router.shard_for_key(a.as_bytes())
            })
            .unwrap();
        let other = want
            .iter()
            .map(|(k, _)| k.clone())
            .find(|k| router.shard_for_key(k.as_bytes()) != router.shard_for_key(a.as_bytes()))
            .unwrap();
        let txn = Txn::new()
            .when([Compare::value(a.clone(), CompareOp::Equal, "v0.0")])
            .and_then([TxnOp::put(same.clone(), "txn", None)]);
        let r = until_ok!("one-shard txn", c.txn(txn.clone()));
        assert!(r.succeeded());
        let got = c.get(same.clone(), None).await.unwrap();
        assert_eq!(got.kvs()[0].value_str().unwrap(), "txn");

        let before = c.get(other.clone(), None).await.unwrap().kvs()[0]
            .value_str()
            .unwrap()
            .to_string();
        let cross = Txn::new()
            .when([Compare::value(a.clone(), CompareOp::Equal, "v0.0")])
            .and_then([TxnOp::put(other.clone(), "cross", None)]);
        let e = c.txn(cross).await.unwrap_err();
        assert_eq!(code_of(&e), Some(Code::FailedPrecondition), "{e}");
        assert!(e.to_string().contains("cross-shard"), "{e}");
        let after = c.get(other.clone(), None).await.unwrap();
        assert_eq!(
            after.kvs()[0].value_str().unwrap(),
            before,
            "nothing written"
        );
        // A prefix delete spans every shard: refused, nothing deleted.
        let e = c
            .delete("k/", Some(DeleteOptions::new().with_prefix()))
            .await
            .unwrap_err();
        assert_eq!(code_of(&e), Some(Code::FailedPrecondition), "{e}");
        assert_eq!(read_prefix(&eps[1], "k/").await.len(), want.len());
        // Single-key delete works.
        let d = c.delete(same.clone(), None).await.unwrap();
        assert_eq!(d.deleted(), 1);
        c.put(same.clone(), "back", None).await.unwrap();
        // Leases are refused with a clear error naming the limit.
        let e = c.lease_grant(10, None).await.unwrap_err();
        assert_eq!(code_of(&e), Some(Code::Unimplemented), "{e}");
        assert!(e.to_string().contains("--shards > 1"), "{e}");
    });
    // A restarted member keeps its data; a restart with another layout is
    // refused with a clear error.
    assert_eq!(cl.stop(2), 0, "clean stop:\n{}", cl.logs());
    let mut wrong = cl.args_of(2);
    wrong.retain(|a| !a.starts_with("--shards"));
    wrong.push("--shards=8".into());
    let mut p = Proc::spawn(&wrong);
    let started = Instant::now();
    let code = p.wait_exit();
    assert!(started.elapsed() < EXIT_WAIT + Duration::from_secs(5));
    assert_ne!(code, 0);
    assert!(
        p.stderr_tail()
            .contains("was created with --shards 4 --replication 3"),
        "{}",
        p.stderr_tail()
    );
    // While it is down, every shard moves well past --snapshot-count
    // (100) + --snapshot-catchup-entries (20): the member catches up each
    // shard from its leader's snapshot.
    let behind = 4 * 150;
    block(&rt, async {
        let mut c = client(&eps[0]).await;
        for j in 0..behind {
            until_ok!(
                "put while e3 is down",
                c.put(format!("s/{j:04}"), "x", None)
            );
        }
    });
    cl.restart(2);
    block(&rt, async {
        let mut c = client(&eps[2]).await;
        let deadline = Instant::now() + CLUSTER_WAIT;
        loop {
            let r = c
                .get(
                    "s/",
                    Some(GetOptions::new().with_prefix().with_serializable()),
                )
                .await;
            match r {
                Ok(r) if r.count() as usize == behind => break,
                other if Instant::now() < deadline => {
                    let n = other.as_ref().map(|r| r.count()).unwrap_or(-1);
                    eprintln!("restarted member has {n} of {behind} keys");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                other => panic!("restarted member did not catch up: {other:?}"),
            }
        }
        let got = read_prefix(&eps[2], "k/").await;
        assert_eq!(got.len(), want.len(), "restarted member serves every key");
        let mut c = client(&eps[2]).await;
        until_ok!("put after restart", c.put("k/after", "1", None));
    });
}

#[test]
fn five_members_eight_shards_serve_keys_of_shards_not_hosted() {
    let cl = Cluster::start_with("raft", 5, &["--shards=8", "--replication=3"]);
    let eps: Vec<String> = cl.members.iter().map(Member::endpoint).collect();
    let map = placement(&cl, 8, 3);
    let router = Router::from_map(&map);
    let me = NodeId(ha_node::ids::member_id(&cl.token, &cl.members[0].name).0);
    let keys: Vec<String> = (0..48).map(|j| format!("p/{j:03}")).collect();
    let remote: Vec<&String> = keys
        .iter()
        .filter(|k| {
            !map.shard(router.shard_for_key(k.as_bytes()))
                .unwrap()
                .has_replica(me)
        })
        .collect();
    assert!(
        !remote.is_empty(),
        "some keys live on shards member e1 does not host"
    );
    let rt = runtime();
    block(&rt, async {
        // Written and read through e1, which hosts only some shards.
        let mut c = client(&eps[0]).await;
        for k in &keys {
            until_ok!("put via e1", c.put(k.clone(), format!("x{k}"), None));
        }
        for k in &remote {
            for serializable in [false, true] {
                let opts = if serializable {
                    GetOptions::new().with_serializable()
                } else {
                    GetOptions::new()
                };
                let r = until_ok!("get via e1", c.get(k.as_str(), Some(opts.clone())));
                assert_eq!(r.kvs().len(), 1, "{k} (serializable: {serializable})");
                assert_eq!(r.kvs()[0].value_str().unwrap(), format!("x{k}"));
            }
        }
        for ep in &eps {
            let got = read_prefix(ep, "p/").await;
            let names: Vec<&str> = got.iter().map(|(k, _)| k.as_str()).collect();
            let want: Vec<&str> = keys.iter().map(String::as_str).collect();
            assert_eq!(names, want, "via {ep}");
        }
    });
    drop(cl);
}

/// Polls member `i`'s `/shards` (bounded by `within`) until `done` holds
/// for the page; the page then.
fn wait_for_map(
    cl: &Cluster,
    i: usize,
    within: Duration,
    what: &str,
    done: impl Fn(&ShardsPage) -> bool,
) -> ShardsPage {
    let deadline = Instant::now() + within;
    loop {
        let last = match cl.members[i].http_get("/shards") {
            Ok(text) => match parse_shards(&text) {
                Ok(p) if !p.shards.is_empty() && done(&p) => return p,
                Ok(_) => text,
                Err(e) => panic!("{e}"),
            },
            Err(e) => e,
        };
        assert!(
            Instant::now() < deadline,
            "{what}: not within {within:?}; last /shards:\n{last}\n{}",
            cl.logs()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Issue 11's failover: 5 members, one dies for good — group 0's leader,
/// so the placement controller fails over too — and its replicas are
/// rebuilt on the others (add learner → snapshot → promote → remove)
/// within `--dead-after` + a bound, nothing acknowledged lost; a new member
/// then receives its fair share (peak/mean ≤ 1.25), shown by `ha-node ctl
/// shards` too.
#[test]
fn a_killed_members_replicas_are_rebuilt_and_a_new_member_gets_its_share() {
    rebuilt_and_rebalanced("raft");
}

#[cfg(feature = "paxos")]
#[test]
fn paxos_a_killed_members_replicas_are_rebuilt_and_a_new_member_gets_its_share() {
    rebuilt_and_rebalanced("paxos");
}

fn rebuilt_and_rebalanced(consensus: &str) {
    const SHARDS: usize = 8;
    let mut cl = Cluster::start_with(
        consensus,
        5,
        &[
            "--shards=8",
            "--replication=3",
            "--dead-after=2000",
            "--join-after=1000",
        ],
    );
    let keys: Vec<String> = (0..64).map(|j| format!("m/{j:03}")).collect();
    let rt = runtime();
    let ep0 = cl.members[0].endpoint();
    block(&rt, async {
        let mut c = client(&ep0).await;
        for k in &keys {
            until_ok!("put", c.put(k.clone(), format!("v{k}"), None));
        }
    });
    // Group 0's leader (the placement controller) dies for good.
    let victim = cl.leader();
    let dead = ha_node::ids::member_id(&cl.token, &cl.members[victim].name).0;
    let watcher = (victim + 1) % 5;
    let before = wait_for_map(&cl, watcher, CLUSTER_WAIT, "the map is replicated", |p| {
        p.shards.len() == SHARDS
    });
    let lost = before
        .shards
        .iter()
        .filter(|s| s.voters.contains(&dead))
        .count();
    assert!(lost > 0, "the victim holds replicas: {before:?}");
    cl.kill9(victim);
    let killed = Instant::now();
    let after = wait_for_map(
        &cl,
        watcher,
        Duration::from_secs(60),
        "every shard has 3 live voters again",
        |p| {
            p.shards
                .iter()
                .all(|s| s.voters.len() == 3 && !s.voters.contains(&dead) && s.learners.is_empty())
        },
    );
    eprintln!(
        "{lost} replicas of the dead member rebuilt in {:?}: {:?}",
        killed.elapsed(),
        after.loads()
    );
    // Nothing acknowledged is lost, through every live member.
    let live_eps: Vec<String> = cl
        .live()
        .iter()
        .map(|i| cl.members[*i].endpoint())
        .collect();
    block(&rt, async {
        for ep in &live_eps {
            let got = read_prefix(ep, "m/").await;
            assert_eq!(got.len(), keys.len(), "via {ep}");
            for (k, v) in &got {
                assert_eq!(v, &format!("v{k}"));
            }
        }
    });
    // A new member (new id, empty data dir) receives its fair share.
    let mut m = Member::new(cl.root(), "e6");
    let ep = live_eps[0].clone();
    let url = m.peer_url();
    let added = block_on_value(&rt, async move {
        let mut c = client(&ep).await;
        let r = until_ok!("member add", c.member_add([url.clone()], None));
        r.member().expect("added member").id()
    });
    m.member_id = Some(format!("{added:x}"));
    let e6 = cl.join(m);
    let balanced = wait_for_map(
        &cl,
        watcher,
        Duration::from_secs(90),
        "the new member gets its share",
        |p| {
            let loads = p.loads();
            let live: Vec<usize> = loads
                .iter()
                .filter(|(id, _)| **id != dead)
                .map(|(_, n)| *n)
                .collect();
            let total: usize = live.iter().sum();
            let peak = live.iter().copied().max().unwrap_or(0);
            p.moving() == 0
                && loads.get(&added).copied().unwrap_or(0) > 0
                && live.len() == 5
                && (peak as f64) <= 1.25 * (total as f64 / live.len() as f64)
        },
    );
    eprintln!("after the join: {:?}", balanced.loads());
    let e6_ep = cl.members[e6].endpoint();
    block(&rt, async {
        let got = read_prefix(&e6_ep, "m/").await;
        assert_eq!(got.len(), keys.len(), "via the new member");
    });
    // The operator's view says the same.
    let out = std::process::Command::new(common::BIN)
        .args([
            "ctl",
            "shards",
            &format!(
                "--endpoint=http://127.0.0.1:{}",
                cl.members[watcher].metrics
            ),
        ])
        .output()
        .expect("ha-node ctl shards");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("moves in progress: 0; under-replicated shards: 0 (replication 3)")
            && text.contains(&format!("{added:x}=")),
        "{text}"
    );
}

fn block_on_value<T, F: std::future::Future<Output = T>>(rt: &tokio::runtime::Runtime, f: F) -> T {
    rt.block_on(async {
        tokio::time::timeout(TEST_TIMEOUT, f)
            .await
            .expect("test timeout")
    })
}
