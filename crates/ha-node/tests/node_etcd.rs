//! A 3-member cluster of real `ha-node` processes on loopback, driven with
//! `etcdctl` (Debian package `etcd-client`): put/get, a write through a
//! follower, endpoint status, member list, SIGKILL of the leader, restart of
//! the old leader with no acknowledged write lost. Fails (does not skip)
//! when `etcdctl` is missing. Every child is killed by a guard.
//! Restarts members on their data dirs: needs durable storage (`rocksdb`).
#![cfg(feature = "rocksdb")]

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_ha-node");
/// Bound for the cluster to elect a leader / recover from a crash.
const CLUSTER_WAIT: Duration = Duration::from_secs(30);

struct Proc {
    child: Option<Child>,
    stderr: Arc<Mutex<String>>,
}

impl Proc {
    fn spawn(args: &[String]) -> Proc {
        let mut child = Command::new(BIN)
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ha-node");
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().expect("stderr");
        let sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let mut s = sink.lock().unwrap();
                // Keep the tail only: a long run must not grow memory.
                if s.len() > 1 << 20 {
                    let cut = s.len() - (1 << 19);
                    s.drain(..cut);
                }
                s.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Proc {
            child: Some(child),
            stderr,
        }
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn sigterm_and_wait(&mut self) -> i32 {
        let Some(mut c) = self.child.take() else {
            return -1;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return st.code().unwrap_or(-1);
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return -1;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs etcdctl; `Ok(stdout)` on exit 0, `Err(stdout+stderr)` otherwise.
fn etcdctl(endpoints: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .args(["--dial-timeout=2s", "--command-timeout=5s"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect(
            "etcdctl is required for these tests (Debian package etcd-client); it could not be run",
        );
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)))
    }
}

fn retry<T>(what: &str, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + CLUSTER_WAIT;
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "{what}: still failing after {CLUSTER_WAIT:?}: {e}"
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

struct Member {
    name: String,
    client: u16,
    peer: u16,
    dir: PathBuf,
}

impl Member {
    /// Endpoint as etcdctl takes it. Without the scheme: etcdctl 3.4's
    /// `endpoint status` sends the whole URL as the HTTP/2 `:authority`,
    /// which the h2 server refuses as malformed.
    fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client)
    }
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client)
    }
    fn args(&self, cluster: &str, consensus: &str) -> Vec<String> {
        vec![
            format!("--name={}", self.name),
            format!("--data-dir={}", self.dir.display()),
            format!("--listen-client-urls={}", self.url()),
            format!("--listen-peer-urls=https://127.0.0.1:{}", self.peer),
            format!("--initial-cluster={cluster}"),
            format!("--consensus={consensus}"),
            "--initial-cluster-token=etcdctl-test".into(),
            "--peer-insecure-dev-tls".into(),
            "--heartbeat-interval=50".into(),
            "--election-timeout=500".into(),
        ]
    }
}

/// `endpoint status -w fields` of one endpoint: (member id, leader id).
fn status(ep: &str) -> Result<(u64, u64), String> {
    let out = etcdctl(ep, &["endpoint", "status", "-w", "fields"])?;
    let field = |name: &str| -> Result<u64, String> {
        out.lines()
            .find(|l| l.trim_start().starts_with(&format!("\"{name}\"")))
            .and_then(|l| l.split(':').nth(1))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| format!("no {name} in {out}"))
    };
    let member = field("MemberID")?;
    let leader = field("Leader")?;
    if leader == 0 {
        return Err("no leader yet".into());
    }
    Ok((member, leader))
}

fn cluster(dir: &Path) -> Vec<Member> {
    (1..=3)
        .map(|i| Member {
            name: format!("e{i}"),
            client: free_tcp_port(),
            peer: free_udp_port(),
            dir: dir.join(format!("e{i}")),
        })
        .collect()
}

fn run_suite(consensus: &str) {
    let dir = tempfile::tempdir().unwrap();
    let ms = cluster(dir.path());
    let initial = ms
        .iter()
        .map(|m| format!("{}=https://127.0.0.1:{}", m.name, m.peer))
        .collect::<Vec<_>>()
        .join(",");
    let mut procs: Vec<Proc> = ms
        .iter()
        .map(|m| Proc::spawn(&m.args(&initial, consensus)))
        .collect();
    let all = ms
        .iter()
        .map(Member::endpoint)
        .collect::<Vec<_>>()
        .join(",");

    // Every member reports the same leader.
    let statuses: Vec<(u64, u64)> = ms
        .iter()
        .map(|m| retry("endpoint status", || status(&m.endpoint())))
        .collect();
    let leader = statuses[0].1;
    assert!(statuses.iter().all(|s| s.1 == leader), "{statuses:?}");
    let li = statuses
        .iter()
        .position(|s| s.0 == leader)
        .expect("the leader is a member");
    let fi = (li + 1) % 3;

    // put/get, and a write through a follower.
    retry("put", || etcdctl(&all, &["put", "k1", "v1"]));
    let out = etcdctl(&ms[fi].endpoint(), &["put", "k2", "via-follower"]).unwrap();
    assert!(out.contains("OK"), "{out}");
    let out = etcdctl(&ms[li].endpoint(), &["get", "k", "--prefix"]).unwrap();
    assert_eq!(out, "k1\nv1\nk2\nvia-follower\n");

    // Member list: three started members with names and URLs.
    // (Each member publishes its client URLs once it runs: wait for all.)
    let out = retry("member list", || {
        let out = etcdctl(&all, &["member", "list"])?;
        if ms.iter().all(|m| out.contains(&m.url())) {
            Ok(out)
        } else {
            Err(format!("not all published: {out}"))
        }
    });
    for m in &ms {
        assert!(out.contains(&format!(", started, {}, ", m.name)), "{out}");
    }

    // Leases through a follower: keep-alives forwarded to the leader renew
    // the leader's lease clock; without them the lease expires.
    let out = etcdctl(&ms[fi].endpoint(), &["lease", "grant", "3"]).unwrap();
    let lease = out
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("no lease id in {out:?}"))
        .to_string();
    etcdctl(
        &ms[fi].endpoint(),
        &["put", "leased", "x", &format!("--lease={lease}")],
    )
    .unwrap();
    for _ in 0..6 {
        std::thread::sleep(Duration::from_millis(1_000));
        etcdctl(
            &ms[fi].endpoint(),
            &["lease", "keep-alive", "--once", &lease],
        )
        .unwrap();
    }
    let out = etcdctl(&ms[fi].endpoint(), &["get", "leased"]).unwrap();
    assert_eq!(out, "leased\nx\n", "kept alive past its 3 s TTL");
    retry("leased key expires without keep-alives", || {
        let out = etcdctl(&ms[li].endpoint(), &["get", "leased"])?;
        if out.is_empty() {
            Ok(())
        } else {
            Err(format!("still there: {out}"))
        }
    });

    // SIGKILL the leader: writes through the survivors resume.
    procs[li].kill9();
    let killed = Instant::now();
    let survivors = ms
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != li)
        .map(|(_, m)| m.endpoint())
        .collect::<Vec<_>>()
        .join(",");
    retry("put after leader kill", || {
        etcdctl(&survivors, &["put", "k3", "after-kill"])
    });
    assert!(killed.elapsed() < CLUSTER_WAIT);

    // The old leader restarts on its data dir; nothing acknowledged is lost.
    procs[li] = Proc::spawn(&ms[li].args(&initial, consensus));
    let got = retry("linearizable get on the restarted member", || {
        let out = etcdctl(
            &ms[li].endpoint(),
            &["get", "k", "--prefix", "--consistency=l"],
        )?;
        if out.contains("k3") {
            Ok(out)
        } else {
            Err(format!("not caught up: {out}"))
        }
    });
    assert_eq!(got, "k1\nv1\nk2\nvia-follower\nk3\nafter-kill\n");

    for p in &mut procs {
        let code = p.sigterm_and_wait();
        assert_eq!(
            code,
            0,
            "clean shutdown; stderr:\n{}",
            p.stderr.lock().unwrap()
        );
    }
}

#[test]
fn etcdctl_against_three_raft_members() {
    run_suite("raft");
}

#[test]
#[cfg_attr(
    not(feature = "paxos"),
    ignore = "needs the `paxos` feature (cargo test -p ha-node --all-features)"
)]
fn etcdctl_against_three_paxos_members() {
    run_suite("paxos");
}
