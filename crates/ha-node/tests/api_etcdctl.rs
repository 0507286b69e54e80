//! The etcd API driven by the real `etcdctl` binary (v3 API) against an
//! in-process server. These tests FAIL when `etcdctl` is not on PATH — they
//! never pass silently (CI installs it: Debian package `etcd-client`).
//! Every child process is killed when its guard drops; every wait is bounded.

#[path = "api_common/mod.rs"]
mod common;

mod proc_common;

use std::time::Duration;

use common::{TEST_TIMEOUT, TestServer};
use proc_common::{CTL_TIMEOUT, CtlStream};
use tokio::time::timeout;

/// Runs etcdctl to completion (bounded, off the runtime's workers);
/// returns (success, stdout, stderr).
async fn run(endpoint: &str, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    let endpoint = endpoint.to_owned();
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let stdin = stdin.map(str::to_owned);
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = proc_common::ctl_run(&endpoint, &args, stdin.as_deref());
        (o.success, o.stdout, o.stderr)
    })
    .await
    .expect("etcdctl runner")
}

/// Runs `etcdctl args` expecting success; its stdout.
async fn ok(endpoint: &str, args: &[&str]) -> String {
    let (success, out, err) = run(endpoint, args, None).await;
    assert!(success, "etcdctl {args:?} failed: {err}");
    out
}

/// A long-running etcdctl whose stdout lines arrive on a channel; the
/// waits block in place so the in-process server keeps its workers.
struct Streaming(CtlStream);

impl Streaming {
    fn spawn(endpoint: &str, args: &[&str]) -> Self {
        Self(CtlStream::spawn(endpoint, args))
    }

    /// The next `n` lines (bounded wait).
    async fn next_lines(&self, n: usize) -> Vec<String> {
        tokio::task::block_in_place(|| self.0.next_lines(n, CTL_TIMEOUT))
    }

    /// Asserts that nothing is printed for `quiet`.
    fn assert_quiet_for(&self, quiet: Duration) {
        tokio::task::block_in_place(|| self.0.assert_quiet_for(quiet))
    }
}

async fn bounded<F: std::future::Future<Output = ()>>(f: F) {
    timeout(TEST_TIMEOUT, f).await.expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_put_get_del() {
    bounded(async {
        let server = TestServer::start().await;
        let ep = server.endpoint();
        assert_eq!(ok(&ep, &["put", "foo/a", "1"]).await.trim(), "OK");
        assert_eq!(ok(&ep, &["put", "foo/b", "2"]).await.trim(), "OK");
        let out = ok(&ep, &["get", "foo/", "--prefix"]).await;
        assert_eq!(
            out.lines().collect::<Vec<_>>(),
            ["foo/a", "1", "foo/b", "2"]
        );
        let out = ok(&ep, &["get", "foo/", "--prefix", "--keys-only"]).await;
        let keys: Vec<&str> = out.lines().filter(|l| !l.is_empty()).collect();
        assert_eq!(keys, ["foo/a", "foo/b"]);
        let out = ok(&ep, &["get", "foo/", "--prefix", "--limit=1"]).await;
        assert_eq!(out.lines().collect::<Vec<_>>(), ["foo/a", "1"]);
        // etcdctl 3.4 has no --count-only; the count rides every range answer.
        let out = ok(&ep, &["get", "foo/", "--prefix", "--limit=1", "-w", "json"]).await;
        assert!(out.contains("\"count\":2"), "{out}");
        assert!(out.contains("\"more\":true"), "{out}");
        assert_eq!(ok(&ep, &["del", "foo/a"]).await.trim(), "1");
        let out = ok(&ep, &["get", "foo/", "--prefix", "--keys-only"]).await;
        assert_eq!(out.trim(), "foo/b");
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_txn_both_branches() {
    bounded(async {
        let server = TestServer::start().await;
        let ep = server.endpoint();
        ok(&ep, &["put", "tx", "old"]).await;
        let script = "value(\"tx\") = \"old\"\n\nput tx new\n\nput tx-failed yes\n\n";
        let (success, out, err) = run(&ep, &["txn"], Some(script)).await;
        assert!(success, "{err}");
        assert!(out.starts_with("SUCCESS"), "{out}");
        assert_eq!(
            ok(&ep, &["get", "tx", "--print-value-only"]).await.trim(),
            "new"
        );
        let (success, out, err) = run(&ep, &["txn"], Some(script)).await;
        assert!(success, "{err}");
        assert!(out.starts_with("FAILURE"), "{out}");
        assert_eq!(
            ok(&ep, &["get", "tx-failed", "--print-value-only"])
                .await
                .trim(),
            "yes"
        );
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_watch_from_revision_and_live() {
    bounded(async {
        let server = TestServer::start().await;
        let ep = server.endpoint();
        ok(&ep, &["put", "wk", "v1"]).await;
        let watch = Streaming::spawn(&ep, &["watch", "wk", "--rev=1"]);
        assert_eq!(watch.next_lines(3).await, ["PUT", "wk", "v1"]);
        ok(&ep, &["put", "wk", "v2"]).await;
        assert_eq!(watch.next_lines(3).await, ["PUT", "wk", "v2"]);
        ok(&ep, &["del", "wk"]).await;
        assert_eq!(watch.next_lines(2).await, ["DELETE", "wk"]);
        drop(watch);
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_lease_grant_attach_ttl_revoke() {
    bounded(async {
        let server = TestServer::start().await;
        let ep = server.endpoint();
        let out = ok(&ep, &["lease", "grant", "60"]).await;
        // "lease 694d77aa9e38260f granted with TTL(60s)"
        let id = out
            .split_whitespace()
            .nth(1)
            .unwrap_or_else(|| panic!("unexpected grant output {out}"))
            .to_owned();
        assert!(out.contains("TTL(60s)"), "{out}");
        ok(&ep, &["put", "leased", "v", &format!("--lease={id}")]).await;
        let out = ok(&ep, &["lease", "timetolive", &id, "--keys"]).await;
        assert!(out.contains("granted with TTL(60s)"), "{out}");
        assert!(out.contains("leased"), "{out}");
        let out = ok(&ep, &["lease", "keep-alive", "--once", &id]).await;
        assert!(out.contains("TTL(60)"), "{out}");
        let out = ok(&ep, &["lease", "list"]).await;
        assert!(out.contains(&id), "{out}");
        ok(&ep, &["lease", "revoke", &id]).await;
        assert_eq!(ok(&ep, &["get", "leased"]).await.trim(), "");
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_lock_excludes_second_holder() {
    bounded(async {
        let server = TestServer::start().await;
        let ep = server.endpoint();
        // Holder 1 keeps the lock while it runs (prints its key first).
        // A short session TTL: killing holder 1 (SIGKILL, no revoke) frees
        // the lock when its lease expires.
        let first = Streaming::spawn(&ep, &["lock", "--ttl=2", "biglock"]);
        let key = first.next_lines(1).await;
        assert!(key[0].starts_with("biglock/"), "{key:?}");
        let second = Streaming::spawn(&ep, &["lock", "--ttl=2", "biglock"]);
        second.assert_quiet_for(Duration::from_millis(700));
        drop(first); // SIGKILL: its session lease expires after 2 s
        let key2 = second.next_lines(1).await;
        assert!(key2[0].starts_with("biglock/"), "{key2:?}");
        assert_ne!(key2, key);
        drop(second);
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_elect_and_observe() {
    bounded(async {
        let server = TestServer::start().await;
        let ep = server.endpoint();
        // On a store never written: etcdctl's recipe waits on keys with
        // "create revision <= mine - 1", where 0 would mean "no bound"; a
        // fresh store is at revision 1 (as etcd), so this must not hang.
        let leader = Streaming::spawn(&ep, &["elect", "myelect", "alice"]);
        let lines = leader.next_lines(2).await;
        assert!(lines[0].starts_with("myelect/"), "{lines:?}");
        assert_eq!(lines[1], "alice");
        let observer = Streaming::spawn(&ep, &["elect", "-l", "myelect"]);
        let seen = observer.next_lines(2).await;
        assert_eq!(seen[1], "alice");
        drop((leader, observer));
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_member_list_and_endpoint_status() {
    bounded(async {
        let server = TestServer::start().await;
        let ep = server.endpoint();
        let out = ok(&ep, &["member", "list"]).await;
        assert!(out.contains("local"), "{out}");
        let out = ok(&ep, &["endpoint", "status"]).await;
        assert!(out.contains(&server.addr.to_string()), "{out}");
        // No alarms: ha has no space quota.
        assert_eq!(ok(&ep, &["alarm", "list"]).await.trim(), "");
        // etcdctl 3.4 prints the health verdict on stderr.
        let (success, out, err) = run(&ep, &["endpoint", "health"], None).await;
        assert!(success, "{out}{err}");
        assert!(err.contains("is healthy"), "{out}{err}");
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_endpoint_status_accepts_url_and_bare_endpoints() {
    bounded(async {
        let server = TestServer::start().await;
        // etcdctl 3.4 sends `:authority: http://host:port` for per-endpoint
        // calls given a URL; h2 alone refuses that (RST_STREAM
        // PROTOCOL_ERROR), the server repairs it.
        let url = server.endpoint();
        assert!(url.starts_with("http://"), "{url}");
        for ep in [url.clone(), format!("{url}/"), server.addr.to_string()] {
            let (success, out, err) = run(&ep, &["endpoint", "status"], None).await;
            assert!(success, "endpoint status at {ep}: {out}{err}");
            assert!(out.starts_with(&format!("{ep}, ")), "{out}");
            assert!(out.contains(", 3.5."), "{out}");
            let (success, out, err) = run(&ep, &["endpoint", "health"], None).await;
            assert!(success, "endpoint health at {ep}: {out}{err}");
            assert!(err.contains(&format!("{ep} is healthy")), "{out}{err}");
        }
        server.stop().await;
    })
    .await;
}
