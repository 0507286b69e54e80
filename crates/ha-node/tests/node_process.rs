//! Process tests of the `ha-node` binary: configuration errors, port in use,
//! a data dir of another cluster, `certs` output driving a real 3-member
//! cluster over mutual TLS, health and metrics endpoints, SIGTERM.
//! Every child is killed by a guard, also when a test panics.
//! Restarts members on their data dirs: needs durable storage (`rocksdb`).
#![cfg(feature = "rocksdb")]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod proc_common;

use proc_common::{Proc, free_tcp_port, free_udp_port};

/// Bound for a cluster to elect a leader and report healthy.
const HEALTH_WAIT: Duration = Duration::from_secs(30);

/// GET `path` on 127.0.0.1:`port`: (status code, body).
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(
        &format!("127.0.0.1:{port}").parse().unwrap(),
        Duration::from_secs(2),
    )
    .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let code = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((code, body))
}

fn wait_healthy(port: u16, p: &Proc) -> String {
    let deadline = Instant::now() + HEALTH_WAIT;
    loop {
        if let Some((200, body)) = http_get(port, "/health") {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "not healthy within {HEALTH_WAIT:?}; stderr:\n{}",
            p.stderr_tail()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

struct Member {
    name: String,
    client: u16,
    peer: u16,
    metrics: u16,
    dir: PathBuf,
}

fn member(dir: &Path, name: &str) -> Member {
    Member {
        name: name.into(),
        client: free_tcp_port(),
        peer: free_udp_port(),
        metrics: free_tcp_port(),
        dir: dir.join(name),
    }
}

fn args(m: &Member, cluster: &str, extra: &[&str]) -> Vec<String> {
    let mut a = vec![
        format!("--name={}", m.name),
        format!("--data-dir={}", m.dir.display()),
        format!("--listen-client-urls=http://127.0.0.1:{}", m.client),
        format!("--listen-peer-urls=https://127.0.0.1:{}", m.peer),
        format!("--listen-metrics-urls=http://127.0.0.1:{}", m.metrics),
        format!("--initial-cluster={cluster}"),
        "--heartbeat-interval=50".into(),
        "--election-timeout=500".into(),
    ];
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

#[test]
fn bad_config_exits_non_zero_and_names_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let d = format!("--data-dir={}", dir.path().display());
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![d.clone(), "--election-timeout=10".into()],
            "--election-timeout",
        ),
        (
            vec![d.clone(), "--listen-client-urls=ftp://x".into()],
            "--listen-client-urls",
        ),
        (vec![d.clone(), "--consensus=pbft".into()], "--consensus"),
        (
            vec![d.clone(), "--initial-cluster-state=maybe".into()],
            "--initial-cluster-state",
        ),
        (
            vec![d.clone(), "--heartbeat-interval=abc".into()],
            "--heartbeat-interval",
        ),
        (
            vec![d.clone(), "--snapshot-count=0".into()],
            "--snapshot-count",
        ),
        (
            vec![d.clone(), "--snapshot-catchup-entries=-1".into()],
            "--snapshot-catchup-entries",
        ),
        (
            vec![d.clone(), "--config-file=/nonexistent/ha.toml".into()],
            "/nonexistent/ha.toml",
        ),
    ];
    for (a, want) in cases {
        let mut p = Proc::spawn(&a);
        let code = p.wait_exit();
        let err = p.stderr_tail();
        assert_eq!(code, 2, "{a:?}: {err}");
        assert!(
            err.contains(want),
            "{a:?}: stderr does not name {want}: {err}"
        );
    }
    // The environment and a config file are read too.
    let file = dir.path().join("ha.toml");
    std::fs::write(&file, "election-timeout = 7\n").unwrap();
    let mut p = Proc::spawn(&[d.clone(), format!("--config-file={}", file.display())]);
    assert_eq!(p.wait_exit(), 2);
    assert!(
        p.stderr_tail().contains("--election-timeout"),
        "{}",
        p.stderr_tail()
    );
    std::fs::write(&file, "no-such-setting = 1\n").unwrap();
    let mut p = Proc::spawn(&[d, format!("--config-file={}", file.display())]);
    assert_eq!(p.wait_exit(), 2);
    assert!(
        p.stderr_tail().contains("no-such-setting"),
        "{}",
        p.stderr_tail()
    );
}

#[test]
fn port_in_use_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let m = member(dir.path(), "solo");
    let mut a = args(&m, &format!("solo=https://127.0.0.1:{}", m.peer), &[]);
    a.retain(|s| !s.starts_with("--listen-client-urls"));
    a.push(format!("--listen-client-urls=http://127.0.0.1:{port}"));
    let mut p = Proc::spawn(&a);
    assert_eq!(p.wait_exit(), 1, "{}", p.stderr_tail());
    let err = p.stderr_tail();
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(err.contains("--listen-client-urls"), "{err}");
    drop(taken);
}

#[test]
fn single_member_restarts_and_refuses_a_data_dir_of_another_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let m = member(dir.path(), "solo");
    let cluster = format!("solo=https://127.0.0.1:{}", m.peer);
    let mut p = Proc::spawn(&args(&m, &cluster, &[]));
    let body = wait_healthy(m.metrics, &p);
    assert_eq!(body, "{\"health\":\"true\"}");
    let (code, metrics) = http_get(m.metrics, "/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(
        metrics.contains("\nha_consensus_is_leader 1\n"),
        "{metrics}"
    );
    assert!(metrics.contains("ha_storage_fsyncs_total"), "{metrics}");
    p.sigterm();
    assert_eq!(p.wait_exit(), 0, "clean shutdown: {}", p.stderr_tail());

    // Same member again: starts on its data.
    let mut p = Proc::spawn(&args(&m, &cluster, &[]));
    wait_healthy(m.metrics, &p);
    p.sigterm();
    assert_eq!(p.wait_exit(), 0, "{}", p.stderr_tail());

    // Another cluster token: refused, nothing changed.
    let before = std::fs::read_to_string(m.dir.join("member.toml")).unwrap();
    let mut p = Proc::spawn(&args(&m, &cluster, &["--initial-cluster-token=other"]));
    assert_eq!(p.wait_exit(), 1, "{}", p.stderr_tail());
    assert!(
        p.stderr_tail().contains("belongs to cluster"),
        "{}",
        p.stderr_tail()
    );
    assert_eq!(
        std::fs::read_to_string(m.dir.join("member.toml")).unwrap(),
        before
    );
}

#[test]
fn certs_output_runs_a_three_member_cluster_with_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let mut g = Proc::spawn(&[
        "certs".into(),
        "--nodes".into(),
        "3".into(),
        format!("--out={}", certs.display()),
    ]);
    assert_eq!(g.wait_exit(), 0, "{}", g.stderr_tail());
    for f in [
        "ca.pem",
        "ca-key.pem",
        "node1.pem",
        "node1-key.pem",
        "node3.pem",
        "members.txt",
    ] {
        assert!(certs.join(f).exists(), "{f} missing");
    }
    let ms: Vec<Member> = ["node1", "node2", "node3"]
        .iter()
        .map(|n| member(dir.path(), n))
        .collect();
    let cluster = ms
        .iter()
        .map(|m| format!("{}=https://127.0.0.1:{}", m.name, m.peer))
        .collect::<Vec<_>>()
        .join(",");
    let mut procs = Vec::new();
    for m in &ms {
        let ca = format!("--peer-trusted-ca-file={}", certs.join("ca.pem").display());
        let cert = format!(
            "--peer-cert-file={}",
            certs.join(format!("{}.pem", m.name)).display()
        );
        let key = format!(
            "--peer-key-file={}",
            certs.join(format!("{}-key.pem", m.name)).display()
        );
        procs.push(Proc::spawn(&args(m, &cluster, &[&ca, &cert, &key])));
    }
    for (m, p) in ms.iter().zip(&procs) {
        wait_healthy(m.metrics, p);
    }
    // Exactly one leader.
    let leaders = ms
        .iter()
        .filter(|m| {
            http_get(m.metrics, "/metrics")
                .is_some_and(|(_, b)| b.contains("\nha_consensus_is_leader 1\n"))
        })
        .count();
    assert_eq!(leaders, 1);

    // A member with another member's certificate is refused at start.
    let m4 = member(dir.path(), "node4");
    let mut p = Proc::spawn(&args(
        &m4,
        &format!("node4=https://127.0.0.1:{}", m4.peer),
        &[
            &format!("--peer-trusted-ca-file={}", certs.join("ca.pem").display()),
            &format!("--peer-cert-file={}", certs.join("node1.pem").display()),
            &format!("--peer-key-file={}", certs.join("node1-key.pem").display()),
        ],
    ));
    assert_eq!(p.wait_exit(), 1);
    assert!(
        p.stderr_tail().contains("not usable for member id"),
        "{}",
        p.stderr_tail()
    );

    for p in &mut procs {
        p.sigterm();
    }
    for p in &mut procs {
        assert_eq!(p.wait_exit(), 0, "{}", p.stderr_tail());
    }
}
