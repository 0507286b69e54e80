//! Issue #8: the etcd v3 API against a 3-member cluster of real `ha-node`
//! processes on loopback, once per consensus protocol, driven by the real
//! `etcdctl` (Debian package `etcd-client`, 3.4) and by the Rust
//! `etcd-client` crate.
//!
//! One cluster per protocol serves every step of that protocol's test (start
//! time matters on a small machine); each step uses its own key prefix. A
//! failing step is recorded and the rest still run; the test then fails
//! naming every failed step with the members' log tails. Steps that change
//! the cluster (leader SIGKILL + restart, member remove/add) run last.
//!
//! Fails (does not skip) when `etcdctl` is missing. Every process is killed
//! by a guard (also on panic); every wait is bounded. Restarts members on
//! their data dirs: needs durable storage (`rocksdb`).
#![cfg(feature = "rocksdb")]

#[path = "proc_common/mod.rs"]
mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{
    CLUSTER_WAIT, Cluster, CtlStream, Member, ctl, ctl_ok, ctl_run, json_int, retry, retry_for,
};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions,
    LeaseTimeToLiveOptions, LockOptions, PutOptions, ResignOptions, Txn, TxnOp, TxnOpResponse,
    WatchOptions,
};
use tonic::Code;

/// Bound on one etcd-client step.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a blocked lock/campaign is watched to stay blocked.
const BLOCKED_FOR: Duration = Duration::from_millis(800);
/// Bound for a waiter to proceed once what it waits for is released.
const HANDOVER_WAIT: Duration = Duration::from_secs(15);
/// Bound from the leader's SIGKILL to the first write acknowledged by the
/// survivors (election timeout is 0.5 s; slack for a loaded machine).
const FAILOVER_BOUND: Duration = Duration::from_secs(15);
/// Most writes the failover writer issues (it normally stops far earlier).
const FAILOVER_MAX_WRITES: usize = 5_000;
/// Per-request bound of the failover writer.
const FAILOVER_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// Endpoints and the leader at the time the suite started.
struct Ctx {
    /// Bare `host:port` of every member.
    eps: Vec<String>,
    /// Index of the leader.
    leader: usize,
    /// Index of a follower.
    follower: usize,
}

impl Ctx {
    fn all(&self) -> String {
        self.eps.join(",")
    }
    fn lead(&self) -> &str {
        &self.eps[self.leader]
    }
    fn fol(&self) -> &str {
        &self.eps[self.follower]
    }
    fn url(&self, i: usize) -> String {
        format!("http://{}", self.eps[i])
    }
}

/// The current store revision, read (linearizably) through `ep`.
fn ctl_revision(ep: &str) -> i64 {
    let out = ctl_ok(ep, &["get", "rev-probe", "-w", "json"]);
    json_int(&out, "revision").unwrap_or_else(|| panic!("no revision in {out}"))
}

/// `put` through etcdctl; the revision it created.
fn ctl_put_rev(ep: &str, key: &str, value: &str) -> i64 {
    let out = ctl_ok(ep, &["put", key, value, "-w", "json"]);
    json_int(&out, "revision").unwrap_or_else(|| panic!("no revision in {out}"))
}

fn lines(s: &str) -> Vec<&str> {
    s.lines().collect()
}

// ------------------------------------------------------------ etcdctl steps

fn ctl_kv(c: &Ctx) {
    // Writes through a follower, reads through the leader and all members.
    assert_eq!(ctl_ok(c.fol(), &["put", "ctl/kv/a", "1"]).trim(), "OK");
    let rev_a = ctl_put_rev(c.fol(), "ctl/kv/b", "2") - 1;
    assert_eq!(ctl_ok(c.lead(), &["put", "ctl/kv/c", "3"]).trim(), "OK");
    assert_eq!(ctl_ok(&c.all(), &["put", "ctl/kv/a", "1b"]).trim(), "OK");
    ctl_ok(c.lead(), &["put", "ctl/kx", "outside"]);

    for ep in &c.eps {
        let out = ctl_ok(ep, &["get", "ctl/kv/", "--prefix"]);
        assert_eq!(
            lines(&out),
            ["ctl/kv/a", "1b", "ctl/kv/b", "2", "ctl/kv/c", "3"],
            "through {ep}"
        );
    }
    // A past revision: the first value of a.
    let out = ctl_ok(c.fol(), &["get", "ctl/kv/a", &format!("--rev={rev_a}")]);
    assert_eq!(lines(&out), ["ctl/kv/a", "1"]);
    // Limit: first two, and the JSON answer says there are more (count 3).
    let out = ctl_ok(c.fol(), &["get", "ctl/kv/", "--prefix", "--limit=2"]);
    assert_eq!(lines(&out), ["ctl/kv/a", "1b", "ctl/kv/b", "2"]);
    let out = ctl_ok(
        c.fol(),
        &["get", "ctl/kv/", "--prefix", "--limit=2", "-w", "json"],
    );
    assert_eq!(json_int(&out, "count"), Some(3), "{out}");
    assert!(out.contains("\"more\":true"), "{out}");
    // Keys only.
    let out = ctl_ok(c.lead(), &["get", "ctl/kv/", "--prefix", "--keys-only"]);
    let keys: Vec<&str> = out.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(keys, ["ctl/kv/a", "ctl/kv/b", "ctl/kv/c"]);
    // Serializable read on a follower sees the data too (eventually: it
    // may lag, never lead).
    retry("serializable read on the follower", || {
        let out = ctl(
            c.fol(),
            &[
                "get",
                "ctl/kv/",
                "--prefix",
                "--consistency=s",
                "--keys-only",
            ],
        )?;
        let n = out.lines().filter(|l| !l.is_empty()).count();
        if n == 3 { Ok(()) } else { Err(out) }
    });
    // Sorted by modification, newest first; and everything from a key on.
    let out = ctl_ok(
        c.fol(),
        &[
            "get",
            "ctl/kv/",
            "--prefix",
            "--keys-only",
            "--sort-by=MODIFY",
            "--order=DESCEND",
        ],
    );
    let keys: Vec<&str> = out.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(keys, ["ctl/kv/a", "ctl/kv/c", "ctl/kv/b"]);
    let out = ctl_ok(c.fol(), &["get", "ctl/kv/b", "--from-key", "--keys-only"]);
    let keys: Vec<&str> = out.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(keys[..3], ["ctl/kv/b", "ctl/kv/c", "ctl/kx"]);
    // Delete one (printing what it deleted), then the rest by prefix.
    let out = ctl_ok(c.fol(), &["del", "ctl/kv/a", "--prev-kv"]);
    assert_eq!(lines(&out), ["1", "ctl/kv/a", "1b"]);
    ctl_ok(c.lead(), &["put", "ctl/kv/a", "again"]);
    assert_eq!(ctl_ok(c.fol(), &["del", "ctl/kv/", "--prefix"]).trim(), "3");
    assert_eq!(ctl_ok(c.lead(), &["get", "ctl/kv/", "--prefix"]), "");
    assert_eq!(
        lines(&ctl_ok(c.lead(), &["get", "ctl/kx"])),
        ["ctl/kx", "outside"]
    );
}

fn ctl_txn(c: &Ctx) {
    ctl_ok(c.lead(), &["put", "ctl/tx/k", "old"]);
    let script = "value(\"ctl/tx/k\") = \"old\"\nmod(\"ctl/tx/k\") > \"0\"\n\n\
                  put ctl/tx/k new\nput ctl/tx/ok yes\n\n\
                  put ctl/tx/failed yes\n\n";
    let o = ctl_run(c.fol(), &["txn"], Some(script));
    assert!(o.success, "{}{}", o.stdout, o.stderr);
    assert_eq!(lines(&o.stdout), ["SUCCESS", "", "OK", "", "OK"]);
    let out = ctl_ok(c.lead(), &["get", "ctl/tx/", "--prefix"]);
    assert_eq!(lines(&out), ["ctl/tx/k", "new", "ctl/tx/ok", "yes"]);
    // A compare on a missing key (create revision 0), as lock recipes use.
    let absent = "create(\"ctl/tx/none\") = \"0\"\n\nput ctl/tx/none first\n\n\n";
    let o = ctl_run(c.lead(), &["txn"], Some(absent));
    assert!(o.success, "{}{}", o.stdout, o.stderr);
    assert_eq!(lines(&o.stdout), ["SUCCESS", "", "OK"]);
    let o = ctl_run(c.lead(), &["txn"], Some(absent));
    assert_eq!(lines(&o.stdout), ["FAILURE"], "{}", o.stderr);
    ctl_ok(c.lead(), &["del", "ctl/tx/none"]);
    // Same script again: the compare fails, the else branch runs.
    let o = ctl_run(c.fol(), &["txn"], Some(script));
    assert!(o.success, "{}{}", o.stdout, o.stderr);
    assert_eq!(lines(&o.stdout), ["FAILURE", "", "OK"]);
    let out = ctl_ok(c.lead(), &["get", "ctl/tx/", "--prefix"]);
    assert_eq!(
        lines(&out),
        [
            "ctl/tx/failed",
            "yes",
            "ctl/tx/k",
            "new",
            "ctl/tx/ok",
            "yes"
        ]
    );
}

fn ctl_watch(c: &Ctx) {
    let r1 = ctl_put_rev(c.lead(), "ctl/w/k", "v1");
    ctl_put_rev(c.lead(), "ctl/w/k", "v2");
    ctl_ok(c.lead(), &["put", "ctl/wx", "unwatched"]);
    let watch = CtlStream::spawn(
        c.fol(),
        &["watch", "ctl/w/", "--prefix", &format!("--rev={r1}")],
    );
    // History from r1, then live events written through another member.
    assert_eq!(
        watch.next_lines(6, HANDOVER_WAIT),
        ["PUT", "ctl/w/k", "v1", "PUT", "ctl/w/k", "v2"]
    );
    ctl_ok(c.lead(), &["put", "ctl/w/k", "v3"]);
    assert_eq!(watch.next_lines(3, HANDOVER_WAIT), ["PUT", "ctl/w/k", "v3"]);
    ctl_ok(&c.all(), &["del", "ctl/w/k"]);
    assert_eq!(watch.next_lines(2, HANDOVER_WAIT), ["DELETE", "ctl/w/k"]);
}

fn lease_id(grant_output: &str) -> String {
    // "lease 694d77aa9e38260f granted with TTL(60s)"
    grant_output
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("no lease id in {grant_output:?}"))
        .to_string()
}

fn ctl_lease(c: &Ctx) {
    let out = ctl_ok(c.fol(), &["lease", "grant", "60"]);
    assert!(out.contains("TTL(60s)"), "{out}");
    let id = lease_id(&out);
    let lease_flag = format!("--lease={id}");
    ctl_ok(c.fol(), &["put", "ctl/l/a", "1", &lease_flag]);
    ctl_ok(c.lead(), &["put", "ctl/l/b", "2", &lease_flag]);
    let out = ctl_ok(c.lead(), &["lease", "timetolive", &id, "--keys"]);
    assert!(out.contains("granted with TTL(60s)"), "{out}");
    assert!(out.contains("ctl/l/a") && out.contains("ctl/l/b"), "{out}");
    let out = ctl_ok(c.fol(), &["lease", "keep-alive", "--once", &id]);
    assert!(out.contains("TTL(60)"), "{out}");
    let out = ctl_ok(c.fol(), &["lease", "list"]);
    assert!(out.contains(&id), "{out}");
    // The streaming keep-alive, through a follower.
    let mut keeper = CtlStream::spawn(c.fol(), &["lease", "keep-alive", &id]);
    let line = keeper.next_lines(1, HANDOVER_WAIT);
    assert_eq!(line, [format!("lease {id} keepalived with TTL(60)")]);
    keeper.interrupt_and_wait(HANDOVER_WAIT);
    let out = ctl_ok(c.fol(), &["lease", "revoke", &id]);
    assert!(out.contains("revoked"), "{out}");
    assert_eq!(ctl_ok(c.lead(), &["get", "ctl/l/", "--prefix"]), "");
    let out = ctl_ok(c.lead(), &["lease", "timetolive", &id]);
    assert!(out.contains("already expired"), "{out}");
}

fn ctl_lease_keepalive_through_follower_then_expiry(c: &Ctx) {
    // Keep-alives forwarded to the leader renew the leader's lease clock;
    // without them the lease expires and takes its key along.
    let id = lease_id(&ctl_ok(c.fol(), &["lease", "grant", "3"]));
    ctl_ok(c.fol(), &["put", "ctl/le/k", "x", &format!("--lease={id}")]);
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(1_000));
        ctl_ok(c.fol(), &["lease", "keep-alive", "--once", &id]);
    }
    let out = ctl_ok(c.fol(), &["get", "ctl/le/k"]);
    assert_eq!(
        lines(&out),
        ["ctl/le/k", "x"],
        "kept alive past its 3 s TTL"
    );
    retry("leased key expires without keep-alives", || {
        let out = ctl(c.lead(), &["get", "ctl/le/k"])?;
        if out.is_empty() {
            Ok(())
        } else {
            Err(format!("still there: {out}"))
        }
    });
}

fn ctl_lock(c: &Ctx) {
    let mut first = CtlStream::spawn(c.fol(), &["lock", "ctl/lock"]);
    let key1 = first.next_lines(1, HANDOVER_WAIT);
    assert!(key1[0].starts_with("ctl/lock/"), "{key1:?}");
    let mut second = CtlStream::spawn(c.lead(), &["lock", "ctl/lock"]);
    second.assert_quiet_for(BLOCKED_FOR);
    // etcdctl unlocks on SIGINT.
    assert!(first.interrupt_and_wait(HANDOVER_WAIT), "first unlocks");
    let key2 = second.next_lines(1, HANDOVER_WAIT);
    assert!(key2[0].starts_with("ctl/lock/"), "{key2:?}");
    assert_ne!(key1, key2);
    assert!(second.interrupt_and_wait(HANDOVER_WAIT), "second unlocks");
    let out = ctl_ok(c.lead(), &["get", "ctl/lock/", "--prefix", "--keys-only"]);
    assert_eq!(out.trim(), "", "unlocked: no owner key left");
}

fn ctl_elect(c: &Ctx) {
    let mut alice = CtlStream::spawn(c.fol(), &["elect", "ctl/el", "alice"]);
    let won = alice.next_lines(2, HANDOVER_WAIT);
    assert!(won[0].starts_with("ctl/el/"), "{won:?}");
    assert_eq!(won[1], "alice");
    let observer = CtlStream::spawn(c.lead(), &["elect", "-l", "ctl/el"]);
    assert_eq!(observer.next_lines(2, HANDOVER_WAIT)[1], "alice");
    let mut bob = CtlStream::spawn(c.lead(), &["elect", "ctl/el", "bob"]);
    bob.assert_quiet_for(BLOCKED_FOR);
    // etcdctl resigns on SIGINT: leadership passes to the waiting candidate.
    assert!(alice.interrupt_and_wait(HANDOVER_WAIT), "alice resigns");
    let won = bob.next_lines(2, HANDOVER_WAIT);
    assert_eq!(won[1], "bob");
    assert_eq!(observer.next_lines(2, HANDOVER_WAIT)[1], "bob");
    assert!(bob.interrupt_and_wait(HANDOVER_WAIT), "bob resigns");
}

fn ctl_members_and_endpoints(c: &Ctx, cl: &Cluster) {
    // Every member publishes its client URLs once it runs: wait for all.
    let out = retry("member list names every client URL", || {
        let out = ctl(&c.all(), &["member", "list"])?;
        if cl.members.iter().all(|m| out.contains(&m.url())) {
            Ok(out)
        } else {
            Err(format!("not all published: {out}"))
        }
    });
    for m in &cl.members {
        assert!(
            out.contains(&format!(
                ", started, {}, {}, {}",
                m.name,
                m.peer_url(),
                m.url()
            )),
            "{out}"
        );
    }
    // Endpoints given as URLs, the way etcd users give them: etcdctl 3.4's
    // per-endpoint commands send the whole URL as HTTP/2 `:authority`.
    let urls = (0..c.eps.len())
        .map(|i| c.url(i))
        .collect::<Vec<_>>()
        .join(",");
    let out = ctl_ok(&urls, &["endpoint", "status"]);
    assert_eq!(out.lines().count(), 3, "{out}");
    let leaders = out
        .lines()
        .filter(|l| l.contains(", true, false, "))
        .count();
    assert_eq!(leaders, 1, "one leader among {out}");
    for i in 0..c.eps.len() {
        assert!(out.contains(&c.url(i)), "{out}");
    }
    let o = ctl_run(&urls, &["endpoint", "health"], None);
    assert!(o.success, "{}{}", o.stdout, o.stderr);
    // etcdctl 3.4 prints the verdicts on stderr.
    let healthy = format!("{}{}", o.stdout, o.stderr);
    for i in 0..c.eps.len() {
        assert!(
            healthy.contains(&format!("{} is healthy", c.url(i))),
            "{healthy}"
        );
    }
    // Bare host:port keeps working.
    let out = ctl_ok(&c.all(), &["endpoint", "status", "-w", "json"]);
    assert_eq!(out.matches("\"Endpoint\"").count(), 3, "{out}");
}

fn ctl_compaction(c: &Ctx) {
    let r1 = ctl_put_rev(c.lead(), "ctl/cmp/k", "1");
    let r2 = ctl_put_rev(c.lead(), "ctl/cmp/k", "2");
    ctl_put_rev(c.lead(), "ctl/cmp/k", "3");
    let out = ctl_ok(c.fol(), &["compact", &r2.to_string()]);
    assert!(out.contains(&format!("compacted revision {r2}")), "{out}");
    for ep in &c.eps {
        let err = ctl(ep, &["get", "ctl/cmp/k", &format!("--rev={r1}")])
            .expect_err("a read below the compaction fails");
        assert!(
            err.contains("etcdserver: mvcc: required revision has been compacted"),
            "through {ep}: {err}"
        );
    }
    let out = ctl_ok(c.fol(), &["get", "ctl/cmp/k", &format!("--rev={r2}")]);
    assert_eq!(lines(&out), ["ctl/cmp/k", "2"]);
    let out = ctl_ok(c.fol(), &["get", "ctl/cmp/k"]);
    assert_eq!(lines(&out), ["ctl/cmp/k", "3"]);
}

fn ctl_bad_input(c: &Ctx) {
    ctl_ok(c.lead(), &["put", "ctl/bad/k", "v"]);
    let before = ctl_revision(c.lead());
    let refused = |args: &[&str], stdin: Option<&str>, msg: &str| {
        let o = ctl_run(c.fol(), args, stdin);
        assert!(!o.success, "{args:?} was accepted: {}", o.stdout);
        // etcdctl prints "Error: <message>" (some commands wrap it:
        // "Error: failed to revoke lease (<message>)").
        let last = o.stderr.lines().last().unwrap_or("");
        assert!(
            last.starts_with("Error: ") && last.contains(msg),
            "{args:?}: want {msg:?}, got {}",
            o.stderr
        );
    };
    refused(
        &["put", "ctl/bad/k", "v2", "--lease=1234"],
        None,
        "etcdserver: requested lease not found",
    );
    // The value comes from stdin (too big for an argument). Over the
    // server's 1.5 MiB limit, under etcdctl's own 2 MiB send limit.
    let big = "x".repeat(1_700_000);
    refused(
        &["put", "ctl/bad/k"],
        Some(&big),
        "etcdserver: request is too large",
    );
    refused(
        &["txn"],
        Some("\nput ctl/bad/k 1\nput ctl/bad/k 2\n\n\n"),
        "etcdserver: duplicate key given in txn request",
    );
    let many: String = (0..200).map(|i| format!("put ctl/bad/{i} v\n")).collect();
    refused(
        &["txn"],
        Some(&format!("\n{many}\n\n")),
        "etcdserver: too many operations in txn request",
    );
    refused(
        &["lease", "revoke", "1234"],
        None,
        "etcdserver: requested lease not found",
    );
    // Nothing changed.
    assert_eq!(ctl_revision(c.lead()), before);
    let out = ctl_ok(c.lead(), &["get", "ctl/bad/", "--prefix"]);
    assert_eq!(lines(&out), ["ctl/bad/k", "v"]);
}

// ------------------------------------------------------- etcd-client steps

async fn client(eps: &[&str]) -> Client {
    let urls: Vec<String> = eps.iter().map(|e| format!("http://{e}")).collect();
    Client::connect(
        urls,
        Some(
            ConnectOptions::new()
                .with_connect_timeout(Duration::from_secs(3))
                .with_timeout(Duration::from_secs(10)),
        ),
    )
    .await
    .expect("etcd-client connects")
}

fn status_of(err: etcd_client::Error) -> tonic::Status {
    match err {
        etcd_client::Error::GRpcStatus(s) => s,
        other => panic!("expected a gRPC status, got {other:?}"),
    }
}

fn rev(h: Option<&etcd_client::ResponseHeader>) -> i64 {
    h.expect("response header").revision()
}

async fn cli_kv(c: &Ctx) {
    let mut f = client(&[c.fol()]).await;
    let mut l = client(&[c.lead()]).await;
    let rev_a = rev(f.put("cli/kv/a", "1", None).await.unwrap().header());
    f.put("cli/kv/b", "2", None).await.unwrap();
    l.put("cli/kv/c", "3", None).await.unwrap();
    l.put("cli/kx", "outside", None).await.unwrap();
    let put = f
        .put("cli/kv/a", "1b", Some(PutOptions::new().with_prev_key()))
        .await
        .unwrap();
    assert_eq!(put.prev_key().expect("prev kv").value(), b"1");
    let now = rev(put.header());

    let all = l
        .get("cli/kv/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    let keys: Vec<&[u8]> = all.kvs().iter().map(|kv| kv.key()).collect();
    assert_eq!(keys, [&b"cli/kv/a"[..], b"cli/kv/b", b"cli/kv/c"]);
    assert_eq!(all.kvs()[0].value(), b"1b");
    assert_eq!(all.kvs()[0].version(), 2);
    assert_eq!(all.kvs()[0].create_revision(), rev_a);
    assert_eq!(all.kvs()[0].mod_revision(), now);
    assert!(rev(all.header()) >= now);

    let old = f
        .get("cli/kv/a", Some(GetOptions::new().with_revision(rev_a)))
        .await
        .unwrap();
    assert_eq!(old.kvs()[0].value(), b"1");

    let limited = f
        .get(
            "cli/kv/",
            Some(GetOptions::new().with_prefix().with_limit(2)),
        )
        .await
        .unwrap();
    assert_eq!(limited.kvs().len(), 2);
    assert!(limited.more());
    assert_eq!(limited.count(), 3);

    let keys_only = f
        .get(
            "cli/kv/",
            Some(GetOptions::new().with_prefix().with_keys_only()),
        )
        .await
        .unwrap();
    assert_eq!(keys_only.kvs().len(), 3);
    assert!(keys_only.kvs().iter().all(|kv| kv.value().is_empty()));

    let count = f
        .get(
            "cli/kv/",
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .unwrap();
    assert_eq!(count.count(), 3);
    assert!(count.kvs().is_empty());

    let del = f
        .delete("cli/kv/a", Some(DeleteOptions::new().with_prev_key()))
        .await
        .unwrap();
    assert_eq!(del.deleted(), 1);
    assert_eq!(del.prev_kvs()[0].value(), b"1b");
    let del = f
        .delete("cli/kv/", Some(DeleteOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(del.deleted(), 2);
    let gone = l
        .get("cli/kv/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert!(gone.kvs().is_empty());
    assert_eq!(l.get("cli/kx", None).await.unwrap().kvs().len(), 1);
}

async fn cli_txn(c: &Ctx) {
    let mut f = client(&[c.fol()]).await;
    f.put("cli/tx/k", "old", None).await.unwrap();
    let txn = || {
        Txn::new()
            .when([
                Compare::value("cli/tx/k", CompareOp::Equal, "old"),
                Compare::version("cli/tx/k", CompareOp::Greater, 0),
            ])
            .and_then([
                TxnOp::put("cli/tx/k", "new", None),
                TxnOp::put("cli/tx/ok", "yes", None),
            ])
            .or_else([
                TxnOp::put("cli/tx/failed", "yes", None),
                TxnOp::get("cli/tx/k", None),
            ])
    };
    let won = f.txn(txn()).await.unwrap();
    assert!(won.succeeded());
    assert_eq!(won.op_responses().len(), 2);
    let lost = f.txn(txn()).await.unwrap();
    assert!(!lost.succeeded());
    match &lost.op_responses()[1] {
        TxnOpResponse::Get(g) => assert_eq!(g.kvs()[0].value(), b"new"),
        other => panic!("expected the get's answer, got {other:?}"),
    }
    let mut l = client(&[c.lead()]).await;
    let all = l
        .get("cli/tx/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    let kv: Vec<(&[u8], &[u8])> = all.kvs().iter().map(|kv| (kv.key(), kv.value())).collect();
    assert_eq!(
        kv,
        [
            (&b"cli/tx/failed"[..], &b"yes"[..]),
            (b"cli/tx/k", b"new"),
            (b"cli/tx/ok", b"yes")
        ]
    );
}

async fn cli_watch(c: &Ctx) {
    let mut l = client(&[c.lead()]).await;
    let start = rev(l.put("cli/w/a", "1", None).await.unwrap().header());
    l.put("cli/w/b", "2", None).await.unwrap();
    l.put("cli/wx", "unwatched", None).await.unwrap();
    l.delete("cli/w/a", None).await.unwrap();

    let mut f = client(&[c.fol()]).await;
    let mut stream = f
        .watch(
            "cli/w/",
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(start)
                    .with_prev_key(),
            ),
        )
        .await
        .unwrap();
    let created = stream.message().await.unwrap().expect("created");
    assert!(created.created());
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let resp = stream.message().await.unwrap().expect("history");
        for ev in resp.events() {
            let kv = ev.kv().expect("kv");
            seen.push((ev.event_type(), kv.key().to_vec(), kv.mod_revision()));
        }
    }
    let kinds: Vec<(EventType, &[u8])> = seen.iter().map(|s| (s.0, &s.1[..])).collect();
    assert_eq!(
        kinds,
        [
            (EventType::Put, &b"cli/w/a"[..]),
            (EventType::Put, b"cli/w/b"),
            (EventType::Delete, b"cli/w/a")
        ]
    );
    assert_eq!(seen[0].2, start);
    assert!(seen.windows(2).all(|w| w[0].2 < w[1].2));

    // Live events written through the leader, seen on the follower's watch.
    l.put("cli/w/b", "3", None).await.unwrap();
    l.put("cli/w/c", "4", None).await.unwrap();
    let mut live = Vec::new();
    while live.len() < 2 {
        let resp = stream.message().await.unwrap().expect("live");
        live.extend(resp.events().iter().cloned());
    }
    assert_eq!(live[0].kv().unwrap().key(), b"cli/w/b");
    assert_eq!(live[0].prev_kv().expect("prev kv").value(), b"2");
    assert_eq!(live[1].kv().unwrap().key(), b"cli/w/c");
    assert_eq!(live.len(), 2, "no duplicate or stray event");
}

async fn cli_lease(c: &Ctx) {
    let mut f = client(&[c.fol()]).await;
    let mut l = client(&[c.lead()]).await;
    let lease = f.lease_grant(60, None).await.unwrap();
    assert_eq!(lease.ttl(), 60);
    let id = lease.id();
    f.put("cli/l/a", "1", Some(PutOptions::new().with_lease(id)))
        .await
        .unwrap();
    l.put("cli/l/b", "2", Some(PutOptions::new().with_lease(id)))
        .await
        .unwrap();

    let (mut keeper, mut responses) = f.lease_keep_alive(id).await.unwrap();
    keeper.keep_alive().await.unwrap();
    let ka = responses
        .message()
        .await
        .unwrap()
        .expect("keep-alive answer");
    assert_eq!(ka.id(), id);
    assert_eq!(ka.ttl(), 60);

    let ttl = l
        .lease_time_to_live(id, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .unwrap();
    assert_eq!(ttl.granted_ttl(), 60);
    assert!(ttl.ttl() > 50 && ttl.ttl() <= 60, "ttl {}", ttl.ttl());
    let mut keys = ttl.keys().to_vec();
    keys.sort();
    assert_eq!(keys, [b"cli/l/a".to_vec(), b"cli/l/b".to_vec()]);
    assert!(
        f.leases()
            .await
            .unwrap()
            .leases()
            .iter()
            .any(|s| s.id() == id)
    );

    f.lease_revoke(id).await.unwrap();
    let gone = l
        .get("cli/l/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert!(gone.kvs().is_empty(), "revoke deletes the attached keys");
    assert_eq!(l.lease_time_to_live(id, None).await.unwrap().ttl(), -1);
    keeper.keep_alive().await.unwrap();
    let dead = responses.message().await.unwrap().expect("answer");
    assert_eq!(dead.ttl(), 0, "keep-alive of a revoked lease answers TTL 0");
}

async fn cli_lock(c: &Ctx) {
    let mut c1 = client(&[c.fol()]).await;
    let mut c2 = client(&[c.lead()]).await;
    let l1 = c1.lease_grant(30, None).await.unwrap().id();
    let l2 = c2.lease_grant(30, None).await.unwrap().id();
    let first = c1
        .lock("cli/lock", Some(LockOptions::new().with_lease(l1)))
        .await
        .unwrap();
    let first_key = first.key().to_vec();
    assert!(first_key.starts_with(b"cli/lock/"));
    let waiter = tokio::spawn(async move {
        let r = c2
            .lock("cli/lock", Some(LockOptions::new().with_lease(l2)))
            .await
            .unwrap();
        r.key().to_vec()
    });
    tokio::time::sleep(BLOCKED_FOR).await;
    assert!(!waiter.is_finished(), "second locker must wait");
    let owner_rev = c1.get(first_key.clone(), None).await.unwrap().kvs()[0].create_revision();
    c1.unlock(first_key.clone()).await.unwrap();
    let second_key = tokio::time::timeout(HANDOVER_WAIT, waiter)
        .await
        .expect("second locker acquires after unlock")
        .expect("locker task");
    assert_ne!(second_key, first_key);
    let second_rev = c1.get(second_key.clone(), None).await.unwrap().kvs()[0].create_revision();
    assert!(second_rev > owner_rev, "the fencing token grows");
    c1.unlock(second_key).await.unwrap();
    c1.lease_revoke(l1).await.unwrap();
    c1.lease_revoke(l2).await.unwrap();
}

async fn cli_elect(c: &Ctx) {
    let mut c1 = client(&[c.fol()]).await;
    let mut c2 = client(&[c.lead()]).await;
    let l1 = c1.lease_grant(30, None).await.unwrap().id();
    let l2 = c2.lease_grant(30, None).await.unwrap().id();
    let won = c1.campaign("cli/el", "alice", l1).await.unwrap();
    let leader1 = won.leader().expect("leader key").clone();
    let mut observer = c1.observe("cli/el").await.unwrap();
    let seen = observer.message().await.unwrap().expect("observed");
    assert_eq!(seen.kv().expect("kv").value(), b"alice");

    let candidate = tokio::spawn(async move {
        c2.campaign("cli/el", "bob", l2)
            .await
            .unwrap()
            .leader()
            .expect("leader key")
            .clone()
    });
    tokio::time::sleep(BLOCKED_FOR).await;
    assert!(!candidate.is_finished(), "second candidate must wait");
    assert_eq!(
        c1.leader("cli/el").await.unwrap().kv().expect("kv").value(),
        b"alice"
    );
    c1.resign(Some(ResignOptions::new().with_leader(leader1)))
        .await
        .unwrap();
    let leader2 = tokio::time::timeout(HANDOVER_WAIT, candidate)
        .await
        .expect("second candidate elected after resign")
        .expect("candidate task");
    assert_eq!(leader2.lease(), l2);
    let seen = observer.message().await.unwrap().expect("observed");
    assert_eq!(seen.kv().expect("kv").value(), b"bob");
    c1.lease_revoke(l1).await.unwrap();
    c1.lease_revoke(l2).await.unwrap();
}

async fn cli_members_and_status(c: &Ctx, ids: &[u64]) {
    let mut cl = client(&c.eps.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let members = cl.member_list().await.unwrap();
    let mut got: Vec<u64> = members.members().iter().map(|m| m.id()).collect();
    got.sort_unstable();
    let mut want = ids.to_vec();
    want.sort_unstable();
    assert_eq!(got, want);
    for m in members.members() {
        assert_eq!(m.client_urls().len(), 1, "{m:?}");
        assert!(!m.is_learner());
    }
    let leader_id = ids[c.leader];
    for (i, ep) in c.eps.iter().enumerate() {
        let mut one = client(&[ep]).await;
        let st = one.status().await.unwrap();
        assert_eq!(st.header().expect("header").member_id(), ids[i]);
        assert_eq!(st.leader(), leader_id);
        assert!(st.version().starts_with("3.5"), "{}", st.version());
        assert!(st.raft_index() >= 1);
    }
    // Add a member that never starts, then remove it: the API both ways.
    // (3 of 4 voters are up meanwhile: quorum holds.)
    let added = cl.member_add(["https://127.0.0.1:9"], None).await.unwrap();
    let new_id = added.member().expect("added member").id();
    assert!(!ids.contains(&new_id));
    assert_eq!(added.member_list().len(), ids.len() + 1);
    let removed = cl.member_remove(new_id).await.unwrap();
    assert_eq!(removed.members().len(), ids.len());
    let s = status_of(cl.member_remove(new_id).await.unwrap_err());
    assert_eq!(s.code(), Code::NotFound);
    assert_eq!(s.message(), "etcdserver: member not found");
    assert_eq!(cl.member_list().await.unwrap().members().len(), ids.len());
}

async fn cli_compaction(c: &Ctx) {
    let mut f = client(&[c.fol()]).await;
    let r1 = rev(f.put("cli/cmp/k", "1", None).await.unwrap().header());
    f.put("cli/cmp/k", "2", None).await.unwrap();
    let r3 = rev(f.put("cli/cmp/k", "3", None).await.unwrap().header());
    f.compact(r3, None).await.unwrap();
    for ep in &c.eps {
        let mut one = client(&[ep]).await;
        let s = status_of(
            one.get("cli/cmp/k", Some(GetOptions::new().with_revision(r1)))
                .await
                .unwrap_err(),
        );
        assert_eq!(s.code(), Code::OutOfRange, "through {ep}");
        assert_eq!(
            s.message(),
            "etcdserver: mvcc: required revision has been compacted"
        );
    }
    assert_eq!(
        f.get("cli/cmp/k", None).await.unwrap().kvs()[0].value(),
        b"3"
    );
    let mut stream = f
        .watch(
            "cli/cmp/k",
            Some(WatchOptions::new().with_start_revision(r1)),
        )
        .await
        .unwrap();
    let mut canceled = None;
    for _ in 0..3 {
        let resp = stream.message().await.unwrap().expect("watch answer");
        if resp.canceled() {
            canceled = Some(resp);
            break;
        }
    }
    let resp = canceled.expect("a watch below the compaction is cancelled");
    assert_eq!(resp.compact_revision(), r3);
}

async fn cli_bad_input(c: &Ctx) {
    let mut f = client(&[c.fol()]).await;
    let mut l = client(&[c.lead()]).await;
    let before = rev(f.put("cli/bad/k", "v", None).await.unwrap().header());
    let refused = |r: Result<(), etcd_client::Error>, code: Code, msg: &str| {
        let s = status_of(r.expect_err(msg));
        assert_eq!(s.code(), code, "{msg}");
        assert_eq!(s.message(), msg);
    };
    let big = vec![b'x'; 2 * 1024 * 1024];
    refused(
        f.put("cli/bad/k", big, None).await.map(drop),
        Code::InvalidArgument,
        "etcdserver: request is too large",
    );
    refused(
        f.txn(Txn::new().and_then([
            TxnOp::put("cli/bad/k", "1", None),
            TxnOp::put("cli/bad/k", "2", None),
        ]))
        .await
        .map(drop),
        Code::InvalidArgument,
        "etcdserver: duplicate key given in txn request",
    );
    refused(
        f.put(
            "cli/bad/k",
            "v2",
            Some(PutOptions::new().with_lease(0x1234)),
        )
        .await
        .map(drop),
        Code::NotFound,
        "etcdserver: requested lease not found",
    );
    let ops: Vec<TxnOp> = (0..200)
        .map(|i| TxnOp::put(format!("cli/bad/{i}"), "v", None))
        .collect();
    refused(
        f.txn(Txn::new().and_then(ops)).await.map(drop),
        Code::InvalidArgument,
        "etcdserver: too many operations in txn request",
    );
    refused(
        f.put("", "v", None).await.map(drop),
        Code::InvalidArgument,
        "etcdserver: key is not provided",
    );
    refused(
        f.lease_revoke(0x1234).await.map(drop),
        Code::NotFound,
        "etcdserver: requested lease not found",
    );
    refused(
        f.lock("cli/bad/lock", Some(LockOptions::new().with_lease(0x4242)))
            .await
            .map(drop),
        Code::NotFound,
        "etcdserver: requested lease not found",
    );
    // Nothing changed, as seen through the leader.
    let after = l
        .get("cli/bad/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(rev(after.header()), before);
    assert_eq!(after.kvs().len(), 1);
    assert_eq!(after.kvs()[0].value(), b"v");
}

// ------------------------------------------------- steps that change members

/// SIGKILL of the leader while a writer runs: the survivors take writes
/// within [`FAILOVER_BOUND`]; the old leader restarts and serves every
/// acknowledged write.
fn leader_kill_and_restart(cl: &mut Cluster, rt: &tokio::runtime::Runtime) {
    let li = cl.leader();
    let eps: Vec<String> = cl.members.iter().map(Member::endpoint).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = Arc::clone(&stop);
        let eps = eps.clone();
        rt.spawn(async move {
            let mut clients = Vec::new();
            for ep in &eps {
                clients.push(client(&[ep]).await);
            }
            // (key index, when acknowledged)
            let mut acked: Vec<(usize, Instant)> = Vec::new();
            for i in 0..FAILOVER_MAX_WRITES {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let n = clients.len();
                let c = &mut clients[i % n];
                let put = c.put(format!("fo/{i:05}"), format!("v{i}"), None);
                if let Ok(Ok(_)) = tokio::time::timeout(FAILOVER_REQUEST_TIMEOUT, put).await {
                    acked.push((i, Instant::now()));
                } else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            acked
        })
    };
    std::thread::sleep(Duration::from_millis(1_500));
    cl.kill9(li);
    let killed = Instant::now();
    std::thread::sleep(Duration::from_millis(3_000));
    stop.store(true, Ordering::Relaxed);
    let acked = rt
        .block_on(async { tokio::time::timeout(STEP_TIMEOUT, writer).await })
        .expect("writer stops")
        .expect("writer task");
    let before_kill = acked.iter().filter(|a| a.1 < killed).count();
    assert!(before_kill > 0, "writes were acknowledged before the kill");
    // Clients continue: a write acknowledged after the kill, within bound.
    // (The writer ran 3 s after the kill; give the survivors the rest of
    // the bound with a direct write if it got none.)
    let first_after = acked.iter().find(|a| a.1 >= killed).map(|a| a.1);
    let resumed_at = match first_after {
        Some(t) => t,
        None => {
            let survivors = cl.endpoints();
            retry_for(FAILOVER_BOUND, "a write through the survivors", || {
                ctl(&survivors, &["put", "fo/after", "x"]).map(|_| Instant::now())
            })
        }
    };
    let outage = resumed_at.duration_since(killed);
    assert!(
        outage < FAILOVER_BOUND,
        "writes resumed {outage:?} after the leader's SIGKILL"
    );
    eprintln!(
        "[{}] leader SIGKILL: writes resumed after {outage:?}; {} writes acknowledged",
        cl.consensus,
        acked.len()
    );

    // Clients given every endpoint, the dead one among them, continue too.
    let all = eps.join(",");
    retry_for(
        FAILOVER_BOUND,
        "etcdctl with a dead endpoint listed",
        || ctl(&all, &["put", "fo/ctl-all", "1"]),
    );
    rt.block_on(async {
        let refs: Vec<&str> = eps.iter().map(String::as_str).collect();
        let mut c = client(&refs).await;
        let deadline = Instant::now() + FAILOVER_BOUND;
        let mut last = None;
        while Instant::now() < deadline {
            match c.put("fo/client-all", "1", None).await {
                Ok(_) => return,
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!(
            "etcd-client with a dead endpoint listed: no write within {FAILOVER_BOUND:?}: {last:?}"
        );
    });

    // The old leader restarts on its data dir and serves every acked write.
    cl.restart(li);
    let last = acked.last().map(|a| a.0).expect("some write acknowledged");
    let ep = eps[li].clone();
    retry("the restarted member catches up", || {
        let out = ctl(
            &ep,
            &[
                "get",
                &format!("fo/{last:05}"),
                "--consistency=l",
                "--print-value-only",
            ],
        )?;
        if out.trim() == format!("v{last}") {
            Ok(())
        } else {
            Err(format!("not caught up: {out:?}"))
        }
    });
    let stored = rt.block_on(async {
        let mut c = client(&[&ep]).await;
        let resp = c
            .get("fo/", Some(GetOptions::new().with_prefix()))
            .await
            .unwrap();
        resp.kvs()
            .iter()
            .map(|kv| (kv.key_str().unwrap_or("").to_string(), kv.value().to_vec()))
            .collect::<std::collections::BTreeMap<_, _>>()
    });
    for (i, _) in &acked {
        let key = format!("fo/{i:05}");
        assert_eq!(
            stored.get(&key).map(Vec::as_slice),
            Some(format!("v{i}").as_bytes()),
            "acknowledged {key} lost after the old leader restarted"
        );
    }
    cl.leader();
}

/// Removes a follower, then adds a new member on new URLs and starts it.
fn member_remove_then_add(cl: &mut Cluster) {
    // A failed earlier step may have left a member down: start it again.
    for i in 0..cl.members.len() {
        if cl.procs[i].is_none() {
            cl.restart(i);
        }
    }
    let li = cl.leader();
    let fi = cl
        .live()
        .into_iter()
        .find(|i| *i != li)
        .expect("a live follower");
    let lead = cl.members[li].endpoint();
    let fid = cl.member_id(fi);
    let out = ctl_ok(&lead, &["member", "remove", &format!("{fid:x}")]);
    assert!(out.contains(&format!("Member {fid:16x} removed")), "{out}");
    let out = ctl_ok(&lead, &["member", "list"]);
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(!out.contains(&cl.members[fi].name), "{out}");
    cl.stop(fi);
    let survivors = cl.endpoints();
    retry("a write with the member removed", || {
        ctl(&survivors, &["put", "mem/after-remove", "1"])
    });

    // A new member on new URLs (and a fresh data dir).
    let mut m = Member::new(cl.root(), "e4");
    let out = ctl_ok(
        &lead,
        &[
            "member",
            "add",
            "e4",
            &format!("--peer-urls={}", m.peer_url()),
        ],
    );
    assert!(out.contains("Member") && out.contains("added"), "{out}");
    // "Member <id> added to cluster <cluster id>": the new member runs
    // under the id the cluster assigned.
    m.member_id = out
        .lines()
        .find(|l| l.starts_with("Member "))
        .and_then(|l| l.split_whitespace().nth(1))
        .map(str::to_string);
    assert!(m.member_id.is_some(), "no member id in {out}");
    // Listed before it starts: unstarted, no name, its peer URL.
    let out = ctl_ok(&lead, &["member", "list"]);
    assert_eq!(out.lines().count(), 3, "{out}");
    assert!(
        out.contains(&format!(", unstarted, , {}, , false", m.peer_url())),
        "{out}"
    );
    let url = m.url();
    let ep = m.endpoint();
    let name = m.name.clone();
    cl.join(m);
    let out = retry("the new member is started and published", || {
        let out = ctl(&lead, &["member", "list"])?;
        if out.contains(&format!(", started, {name}, ")) && out.contains(&url) {
            Ok(out)
        } else {
            Err(out)
        }
    });
    assert_eq!(out.lines().count(), 3, "{out}");
    // It serves data written before it joined, and takes writes.
    let got = retry("linearizable read through the new member", || {
        ctl(&ep, &["get", "mem/after-remove", "--print-value-only"])
    });
    assert_eq!(got.trim(), "1");
    assert_eq!(ctl_ok(&ep, &["put", "mem/via-new", "2"]).trim(), "OK");
    assert_eq!(
        ctl_ok(&lead, &["get", "mem/via-new", "--print-value-only"]).trim(),
        "2"
    );
}

// ------------------------------------------------------------------ driver

/// The failed steps of one protocol's run.
struct Steps {
    consensus: String,
    failures: Vec<String>,
}

/// Runs `f`, recording its panic (message) as a failure of `name`.
fn step(steps: &mut Steps, name: &str, f: impl FnOnce()) {
    let started = Instant::now();
    let tag = &steps.consensus;
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(()) => eprintln!("[{tag}] step {name}: ok in {:?}", started.elapsed()),
        Err(e) => {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "(non-string panic)".into());
            eprintln!("[{tag}] step {name}: FAILED: {msg}");
            steps.failures.push(format!("{name}: {msg}"));
        }
    }
}

fn run_suite(consensus: &str) {
    let started = Instant::now();
    let mut cl = Cluster::start(consensus, 3);
    let leader = cl.leader();
    let ctx = Ctx {
        eps: cl.members.iter().map(Member::endpoint).collect(),
        leader,
        follower: (leader + 1) % 3,
    };
    let ids: Vec<u64> = (0..3).map(|i| cl.member_id(i)).collect();
    eprintln!(
        "[{consensus}] cluster up in {:?}, leader e{}",
        started.elapsed(),
        leader + 1
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let async_step = |fut: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + '_>>| {
        rt.block_on(async {
            tokio::time::timeout(STEP_TIMEOUT, fut)
                .await
                .expect("step timed out");
        })
    };

    let mut steps = Steps {
        consensus: consensus.to_string(),
        failures: Vec::new(),
    };
    let f = &mut steps;
    step(f, "etcdctl kv", || ctl_kv(&ctx));
    step(f, "etcd-client kv", || async_step(Box::pin(cli_kv(&ctx))));
    step(f, "etcdctl txn", || ctl_txn(&ctx));
    step(f, "etcd-client txn", || async_step(Box::pin(cli_txn(&ctx))));
    step(f, "etcdctl watch", || ctl_watch(&ctx));
    step(f, "etcd-client watch", || {
        async_step(Box::pin(cli_watch(&ctx)))
    });
    step(f, "etcdctl lease", || ctl_lease(&ctx));
    step(f, "etcdctl lease keep-alive via follower, expiry", || {
        ctl_lease_keepalive_through_follower_then_expiry(&ctx)
    });
    step(f, "etcd-client lease", || {
        async_step(Box::pin(cli_lease(&ctx)))
    });
    step(f, "etcdctl lock", || ctl_lock(&ctx));
    step(f, "etcd-client lock", || {
        async_step(Box::pin(cli_lock(&ctx)))
    });
    step(f, "etcdctl elect", || ctl_elect(&ctx));
    step(f, "etcd-client election", || {
        async_step(Box::pin(cli_elect(&ctx)))
    });
    step(f, "etcdctl members and endpoints", || {
        ctl_members_and_endpoints(&ctx, &cl)
    });
    step(f, "etcd-client members and status", || {
        async_step(Box::pin(cli_members_and_status(&ctx, &ids)))
    });
    step(f, "etcdctl bad input", || ctl_bad_input(&ctx));
    step(f, "etcd-client bad input", || {
        async_step(Box::pin(cli_bad_input(&ctx)))
    });
    // After every watch from a past revision: compaction drops history.
    step(f, "etcdctl compaction", || ctl_compaction(&ctx));
    step(f, "etcd-client compaction", || {
        async_step(Box::pin(cli_compaction(&ctx)))
    });
    step(f, "leader SIGKILL and restart", || {
        leader_kill_and_restart(&mut cl, &rt)
    });
    step(f, "member remove, add new", || {
        member_remove_then_add(&mut cl)
    });

    let logs = cl.logs();
    let mut codes = Vec::new();
    let mut logs = logs;
    for i in cl.live() {
        let (code, tail) = cl.stop_with_log(i);
        if code != 0 {
            let start = tail.len().saturating_sub(16 * 1024);
            let start = (start..tail.len())
                .find(|s| tail.is_char_boundary(*s))
                .unwrap_or(tail.len());
            logs.push_str(&format!(
                "--- {} stderr at shutdown (tail) ---\n{}\n",
                cl.members[i].name,
                &tail[start..]
            ));
        }
        codes.push((cl.members[i].name.clone(), code));
    }
    eprintln!("[{consensus}] suite done in {:?}", started.elapsed());
    assert!(
        steps.failures.is_empty(),
        "[{consensus}] failed steps:\n{}\n{logs}",
        steps.failures.join("\n")
    );
    assert!(
        codes.iter().all(|c| c.1 == 0),
        "[{consensus}] clean shutdown (exit 0) expected: {codes:?}\n{logs}"
    );
    // Every wait above is bounded; this is the whole-suite sanity bound.
    assert!(started.elapsed() < 10 * CLUSTER_WAIT);
}

#[test]
fn etcd_suite_against_three_raft_processes() {
    run_suite("raft");
}

#[test]
#[cfg_attr(
    not(feature = "paxos"),
    ignore = "needs the `paxos` feature (cargo test -p ha-node --all-features)"
)]
fn etcd_suite_against_three_paxos_processes() {
    run_suite("paxos");
}

/// SIGTERM ends a member within bounds even while a client call on it waits
/// for a commit that cannot happen: a member removal on the leader while
/// the other follower is down (the new configuration needs the member that
/// is down). The call ends at its request deadline (etcd's: 5 s + 2
/// election timeouts) or, if it outlives the drain, the node's shutdown
/// answers it; the member once waited for the call to finish first and did
/// not exit within 20 s of SIGTERM.
#[test]
fn sigterm_ends_a_member_whose_client_call_waits_for_a_down_member() {
    let mut cl = Cluster::start("raft", 3);
    let li = cl.leader();
    let followers: Vec<usize> = (0..3).filter(|i| *i != li).collect();
    let victim = cl.member_id(followers[0]);
    let lead = cl.members[li].endpoint();
    cl.kill9(followers[1]);
    // A client that waits longer than the shutdown may take.
    let mut waiting = CtlStream::spawn(
        &lead,
        &[
            "--command-timeout=120s",
            "member",
            "remove",
            &format!("{victim:x}"),
        ],
    );
    // Long enough for the removal to reach the leader (it cannot commit).
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        waiting.running(),
        "the removal must still be waiting when SIGTERM is sent"
    );
    let (code, log) = cl.stop_with_log(li);
    let start = log.len().saturating_sub(8 * 1024);
    let start = (start..log.len())
        .find(|s| log.is_char_boundary(*s))
        .unwrap_or(log.len());
    assert_eq!(
        code,
        0,
        "clean exit within 20 s of SIGTERM expected (-1: it had to be killed)\n{}",
        &log[start..]
    );
    for i in cl.live() {
        cl.stop(i);
    }
}
