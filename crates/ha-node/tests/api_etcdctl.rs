//! The etcd API driven by the real `etcdctl` binary (v3 API) against an
//! in-process server. These tests FAIL when `etcdctl` is not on PATH — they
//! never pass silently (CI installs it: Debian package `etcd-client`).
//! Every child process is killed when its guard drops; every wait is bounded.

#[path = "api_common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{TEST_TIMEOUT, TestServer};
use tokio::time::timeout;

/// Most time one etcdctl invocation may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(20);

fn etcdctl_path() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("etcdctl"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "etcdctl not found on PATH: install it (Debian package `etcd-client`); \
                 these tests must not pass without it"
            )
        })
}

fn command(endpoint: &str, args: &[&str]) -> Command {
    // Endpoints are URLs (`http://host:port`), as etcd users give them.
    let mut cmd = Command::new(etcdctl_path());
    cmd.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .arg("--dial-timeout=5s")
        .arg("--command-timeout=10s")
        .args(args);
    cmd
}

/// Kills and reaps the child when dropped.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs etcdctl to completion (bounded); returns (success, stdout, stderr).
async fn run(endpoint: &str, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    let mut cmd = command(endpoint, args);
    let stdin = stdin.map(str::to_owned);
    let what = format!("{args:?}");
    tokio::task::spawn_blocking(move || {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut guard = Guard(cmd.spawn().expect("spawn etcdctl"));
        let mut input = guard.0.stdin.take().expect("stdin");
        if let Some(text) = stdin {
            input.write_all(text.as_bytes()).expect("write stdin");
        }
        drop(input);
        let deadline = Instant::now() + RUN_TIMEOUT;
        loop {
            if let Some(_status) = guard.0.try_wait().expect("try_wait") {
                break;
            }
            assert!(Instant::now() < deadline, "etcdctl {what} timed out");
            std::thread::sleep(Duration::from_millis(20));
        }
        let status = guard.0.wait().expect("wait");
        let mut out = String::new();
        let mut err = String::new();
        if let Some(mut s) = guard.0.stdout.take() {
            std::io::Read::read_to_string(&mut s, &mut out).expect("stdout");
        }
        if let Some(mut s) = guard.0.stderr.take() {
            std::io::Read::read_to_string(&mut s, &mut err).expect("stderr");
        }
        (status.success(), out, err)
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

/// A long-running etcdctl whose stdout lines arrive on a channel.
struct Streaming {
    _guard: Guard,
    lines: mpsc::Receiver<String>,
}

impl Streaming {
    fn spawn(endpoint: &str, args: &[&str]) -> Self {
        let mut cmd = command(endpoint, args);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().expect("spawn etcdctl");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        // Ends when the child's stdout closes (the guard kills the child).
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Self {
            _guard: Guard(child),
            lines,
        }
    }

    /// The next `n` lines (bounded wait).
    async fn next_lines(&self, n: usize) -> Vec<String> {
        let mut out = Vec::new();
        let deadline = Instant::now() + RUN_TIMEOUT;
        while out.len() < n {
            match self.lines.try_recv() {
                Ok(line) => out.push(line),
                Err(mpsc::TryRecvError::Empty) => {
                    assert!(Instant::now() < deadline, "no output; got {out:?}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(mpsc::TryRecvError::Disconnected) => {
                    panic!("etcdctl exited; got {out:?}")
                }
            }
        }
        out
    }

    /// Whether a line is already waiting (without blocking).
    fn has_output(&self) -> bool {
        self.lines.try_recv().is_ok()
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
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(!second.has_output(), "second holder must wait");
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
