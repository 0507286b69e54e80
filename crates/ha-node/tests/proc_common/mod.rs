//! Shared by the process-level tests: a cluster of real `ha-node`
//! processes on loopback, and bounded runs of the real `etcdctl`.
//!
//! Every process started here is owned by a guard that kills (SIGKILL) and
//! reaps it on drop, so a panicking test leaves nothing running. Every wait
//! is bounded. `etcdctl` (Debian package `etcd-client`) must be on PATH:
//! the tests fail, never skip, without it.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_ha-node");
/// Bound for the cluster to elect a leader, recover from a crash, or for a
/// restarted or added member to catch up.
pub const CLUSTER_WAIT: Duration = Duration::from_secs(30);
/// Most time one `etcdctl` invocation may take before it is killed.
pub const CTL_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound for a process to exit on its own (after SIGTERM, or a start that
/// must fail).
pub const EXIT_WAIT: Duration = Duration::from_secs(20);
/// Bytes of a process's stderr kept for failure messages (the tail).
const STDERR_TAIL_BYTES: usize = 256 * 1024;
/// Peer heartbeat of the test clusters, ms.
pub const HEARTBEAT_MS: u64 = 50;
/// Election timeout of the test clusters, ms (10 heartbeats: slack for a
/// loaded 2-core machine).
pub const ELECTION_TIMEOUT_MS: u64 = 500;
/// `--snapshot-count` of every member the suites start.
pub const SNAPSHOT_COUNT: u64 = 100;
/// `--snapshot-catchup-entries` of every member the suites start.
pub const SNAPSHOT_CATCHUP_ENTRIES: u64 = 20;

/// A child process killed and reaped on drop; its stderr tail is kept.
pub struct Proc {
    child: Option<Child>,
    stderr: Arc<Mutex<String>>,
    /// Set by the reader thread once the child's stderr is closed and read.
    stderr_done: Arc<AtomicBool>,
}

impl Proc {
    /// Starts `ha-node` with `args` (empty environment but PATH).
    pub fn spawn(args: &[String]) -> Proc {
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
        let mut pipe = child.stderr.take().expect("stderr is piped");
        let sink = Arc::clone(&stderr);
        let stderr_done = Arc::new(AtomicBool::new(false));
        let done = Arc::clone(&stderr_done);
        // Ends when the child's stderr closes (it exited or was killed).
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let mut s = sink.lock().unwrap_or_else(|e| e.into_inner());
                s.push_str(&String::from_utf8_lossy(&buf[..n]));
                if s.len() > STDERR_TAIL_BYTES {
                    let mut cut = s.len() - STDERR_TAIL_BYTES / 2;
                    while !s.is_char_boundary(cut) {
                        cut += 1;
                    }
                    s.drain(..cut);
                }
            }
            done.store(true, Ordering::SeqCst);
        });
        Proc {
            child: Some(child),
            stderr,
            stderr_done,
        }
    }

    /// Waits (at most [`EXIT_WAIT`]) for the process to exit on its own and
    /// for its stderr to be read to the end; its exit code (-1 when killed
    /// by a signal). Panics with the stderr tail when it does not exit.
    pub fn wait_exit(&mut self) -> i32 {
        let deadline = Instant::now() + EXIT_WAIT;
        let child = self.child.as_mut().expect("the process was started");
        let code = loop {
            if let Some(st) = child.try_wait().expect("try_wait") {
                break st.code().unwrap_or(-1);
            }
            assert!(
                Instant::now() < deadline,
                "process did not exit within {EXIT_WAIT:?}; stderr:\n{}",
                self.stderr_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        // A grandchild holding the pipe open must not hang the test.
        let drained = Instant::now() + Duration::from_secs(2);
        while !self.stderr_done.load(Ordering::SeqCst) && Instant::now() < drained {
            std::thread::sleep(Duration::from_millis(10));
        }
        code
    }

    /// Sends SIGTERM without waiting (see [`Proc::wait_exit`]).
    pub fn sigterm(&mut self) {
        let pid = self.child.as_ref().expect("the process was started").id();
        signal(pid, "TERM");
    }

    /// The kept tail of the process's stderr.
    pub fn stderr_tail(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGKILLs and reaps the process (no-op when already gone).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits up to 20 s (SIGKILL after that); the exit code
    /// (-1 when it had to be killed or was not running).
    pub fn sigterm_and_wait(&mut self) -> i32 {
        let Some(mut c) = self.child.take() else {
            return -1;
        };
        signal(c.id(), "TERM");
        let deadline = Instant::now() + EXIT_WAIT;
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

/// Sends `SIG<name>` to `pid` with kill(1).
fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .args([format!("-{name}"), pid.to_string()])
        .status();
}

/// Ports this test binary handed out already: tests run in parallel, and
/// a port is bound by a member only after it is picked, so the OS could
/// hand the same free port to two tests in between.
static HANDED_OUT: Mutex<Vec<u16>> = Mutex::new(Vec::new());

/// A port from `pick` (bind port 0, release) not handed out before here.
fn fresh_port(pick: impl Fn() -> u16) -> u16 {
    let mut used = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
    for _ in 0..1_000 {
        let p = pick();
        if !used.contains(&p) {
            used.push(p);
            return p;
        }
    }
    panic!("no unused loopback port after 1000 tries")
}

/// A free TCP port on loopback (bound then released), never one handed out
/// before in this test binary.
pub fn free_tcp_port() -> u16 {
    fresh_port(|| {
        TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free TCP port")
            .port()
    })
}

/// A free UDP port on loopback (bound then released), never one handed out
/// before in this test binary.
pub fn free_udp_port() -> u16 {
    fresh_port(|| {
        std::net::UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .expect("a free UDP port")
            .port()
    })
}

/// Retries `f` every 200 ms until it succeeds; panics after `within`.
pub fn retry_for<T>(within: Duration, what: &str, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + within;
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "{what}: still failing after {within:?}: {e}"
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

/// [`retry_for`] bounded by [`CLUSTER_WAIT`].
pub fn retry<T>(what: &str, f: impl FnMut() -> Result<T, String>) -> T {
    retry_for(CLUSTER_WAIT, what, f)
}

// ---------------------------------------------------------------- etcdctl

/// The etcdctl binary; panics (the test fails) when it is not on PATH.
pub fn etcdctl_path() -> PathBuf {
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

fn ctl_command(endpoints: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(etcdctl_path());
    cmd.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .args(["--dial-timeout=3s", "--command-timeout=8s"])
        .args(args);
    cmd
}

/// What one etcdctl run printed.
#[derive(Debug)]
pub struct CtlOutput {
    /// Exit status 0.
    pub success: bool,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// Runs etcdctl to completion, killed after [`CTL_TIMEOUT`].
pub fn ctl_run(endpoints: &str, args: &[&str], stdin: Option<&str>) -> CtlOutput {
    let mut cmd = ctl_command(endpoints, args);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut guard = ChildGuard(cmd.spawn().expect("spawn etcdctl"));
    let mut input = guard.0.stdin.take().expect("stdin is piped");
    if let Some(text) = stdin {
        input
            .write_all(text.as_bytes())
            .expect("write etcdctl stdin");
    }
    drop(input);
    // Drain both pipes on threads: a chatty child must not block on a full pipe.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut p) = pipe {
                let mut buf = Vec::new();
                let _ = p.read_to_end(&mut buf);
                s = String::from_utf8_lossy(&buf).into_owned();
            }
            s
        })
    };
    let out = drain(
        guard
            .0
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = drain(
        guard
            .0
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + CTL_TIMEOUT;
    let status = loop {
        if let Some(st) = guard.0.try_wait().expect("try_wait etcdctl") {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "etcdctl {args:?} at {endpoints} ran longer than {CTL_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    CtlOutput {
        success: status.success(),
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// Runs etcdctl: `Ok(stdout)` on exit 0, `Err(stdout + stderr)` otherwise.
pub fn ctl(endpoints: &str, args: &[&str]) -> Result<String, String> {
    let o = ctl_run(endpoints, args, None);
    if o.success {
        Ok(o.stdout)
    } else {
        Err(format!("{}{}", o.stdout, o.stderr))
    }
}

/// Runs etcdctl expecting success; its stdout.
pub fn ctl_ok(endpoints: &str, args: &[&str]) -> String {
    ctl(endpoints, args).unwrap_or_else(|e| panic!("etcdctl {args:?} at {endpoints}: {e}"))
}

/// Kills and reaps a child on drop.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A long-running etcdctl (watch, lock, elect) whose stdout lines arrive on
/// a channel. Killed on drop.
pub struct CtlStream {
    child: ChildGuard,
    lines: mpsc::Receiver<String>,
    what: String,
}

impl CtlStream {
    /// Whether the etcdctl process is still running (its call unanswered).
    pub fn running(&mut self) -> bool {
        matches!(self.child.0.try_wait(), Ok(None))
    }

    /// Starts `etcdctl args` against `endpoints`.
    pub fn spawn(endpoints: &str, args: &[&str]) -> CtlStream {
        let mut cmd = ctl_command(endpoints, args);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().expect("spawn etcdctl");
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, lines) = mpsc::channel();
        // Ends when the child's stdout closes.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        CtlStream {
            child: ChildGuard(child),
            lines,
            what: format!("{args:?}"),
        }
    }

    /// The next `n` lines, waiting at most `within`.
    pub fn next_lines(&self, n: usize, within: Duration) -> Vec<String> {
        let deadline = Instant::now() + within;
        let mut out = Vec::new();
        while out.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => out.push(line),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!(
                        "etcdctl {}: {n} lines not printed within {within:?}; got {out:?}",
                        self.what
                    )
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    panic!("etcdctl {} exited; printed {out:?}", self.what)
                }
            }
        }
        out
    }

    /// Asserts that nothing is printed for `quiet` (the command is blocked).
    pub fn assert_quiet_for(&self, quiet: Duration) {
        match self.lines.recv_timeout(quiet) {
            Ok(line) => panic!("etcdctl {} printed {line:?}, expected to wait", self.what),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                panic!("etcdctl {} exited, expected to wait", self.what)
            }
        }
    }

    /// Sends SIGINT (etcdctl unlocks / resigns on it, then exits) and waits
    /// up to `within` for the process to exit; its exit success.
    ///
    /// A test run from a background job inherits SIGINT as *ignored*, and a
    /// Go program keeps it ignored unless it installs its own handler:
    /// etcdctl's lock and elect do (they unlock / resign on it), `lease
    /// keep-alive` does not. So after [`SIGINT_GRACE`] without an exit the
    /// process gets SIGTERM; it then exits by signal, which reads as no
    /// success, so a lock or elect that ignored SIGINT still fails its check.
    pub fn interrupt_and_wait(&mut self, within: Duration) -> bool {
        signal(self.child.0.id(), "INT");
        let started = Instant::now();
        let deadline = started + within;
        let mut terminated = false;
        loop {
            if let Ok(Some(st)) = self.child.0.try_wait() {
                return st.success();
            }
            if !terminated && started.elapsed() >= SIGINT_GRACE {
                signal(self.child.0.id(), "TERM");
                terminated = true;
            }
            assert!(
                Instant::now() < deadline,
                "etcdctl {} did not exit within {within:?} of SIGINT (and SIGTERM)",
                self.what
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// How long [`CtlStream::interrupt_and_wait`] waits for an exit on SIGINT
/// before it sends SIGTERM.
pub const SIGINT_GRACE: Duration = Duration::from_secs(3);

/// The value of the first `"name":<integer>` in etcdctl's `-w json` output.
pub fn json_int(out: &str, name: &str) -> Option<i64> {
    let pat = format!("\"{name}\":");
    let at = out.find(&pat)? + pat.len();
    let digits: String = out[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '-')
        .collect();
    digits.parse().ok()
}

// ---------------------------------------------------------------- cluster

/// One member's addresses and data dir.
#[derive(Clone, Debug)]
pub struct Member {
    /// `--name`.
    pub name: String,
    /// Client (gRPC) TCP port.
    pub client: u16,
    /// Peer (QUIC) UDP port.
    pub peer: u16,
    /// `--data-dir`.
    pub dir: PathBuf,
    /// `--initial-cluster` it starts with.
    pub initial_cluster: String,
    /// Whether it joins a running cluster (`--initial-cluster-state=existing`).
    pub joins: bool,
    /// `--member-id` (hex) of a joining member, as `member add` assigned it.
    pub member_id: Option<String>,
    /// Port of `--listen-metrics-urls` (`/metrics`, `/health`, `/shards`).
    pub metrics: u16,
}

impl Member {
    /// A member named `name` with fresh ports under `root`.
    pub fn new(root: &Path, name: &str) -> Member {
        Member {
            name: name.to_string(),
            client: free_tcp_port(),
            peer: free_udp_port(),
            dir: root.join(name),
            initial_cluster: String::new(),
            joins: false,
            member_id: None,
            metrics: free_tcp_port(),
        }
    }

    /// GETs `path` from the member's metrics listener (`ha-node ctl`'s
    /// bounded HTTP/1.0 client): the body, or why not.
    pub fn http_get(&self, path: &str) -> Result<String, String> {
        ha_node::ctl::http_get(&format!("http://127.0.0.1:{}", self.metrics), path)
    }

    /// The bare `host:port` client endpoint.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client)
    }

    /// The client URL (what members advertise, and what etcd users type).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client)
    }

    /// The peer URL.
    pub fn peer_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.peer)
    }

    fn args(&self, consensus: &str, token: &str) -> Vec<String> {
        let mut args = vec![
            format!("--name={}", self.name),
            format!("--data-dir={}", self.dir.display()),
            format!("--listen-client-urls={}", self.url()),
            format!("--listen-peer-urls={}", self.peer_url()),
            format!("--listen-metrics-urls=http://127.0.0.1:{}", self.metrics),
            format!("--initial-cluster={}", self.initial_cluster),
            format!(
                "--initial-cluster-state={}",
                if self.joins { "existing" } else { "new" }
            ),
            format!("--consensus={consensus}"),
            format!("--initial-cluster-token={token}"),
            "--peer-insecure-dev-tls".into(),
            format!("--heartbeat-interval={HEARTBEAT_MS}"),
            format!("--election-timeout={ELECTION_TIMEOUT_MS}"),
            // Small, so that the suites run with log compaction: members
            // snapshot and purge often, and one that was down catches up by
            // snapshot.
            format!("--snapshot-count={SNAPSHOT_COUNT}"),
            format!("--snapshot-catchup-entries={SNAPSHOT_CATCHUP_ENTRIES}"),
        ];
        if let Some(id) = &self.member_id {
            args.push(format!("--member-id={id}"));
        }
        args
    }
}

/// Real `ha-node` processes forming one cluster; all killed on drop.
pub struct Cluster {
    /// Consensus protocol (`raft` or `paxos`).
    pub consensus: String,
    /// Cluster token.
    pub token: String,
    /// Members, in start order (removed ones stay, with no process).
    pub members: Vec<Member>,
    /// The process of each member (`None` when stopped).
    pub procs: Vec<Option<Proc>>,
    /// Flags every member gets besides the suite's (e.g. `--shards=4`).
    pub extra: Vec<String>,
    root: tempfile::TempDir,
}

impl Cluster {
    /// Starts `n` founding members on `consensus` and waits until every one
    /// reports the same leader.
    pub fn start(consensus: &str, n: usize) -> Cluster {
        Self::start_with(consensus, n, &[])
    }

    /// [`start`](Self::start) with `extra` flags for every member.
    pub fn start_with(consensus: &str, n: usize, extra: &[&str]) -> Cluster {
        let extra: Vec<String> = extra.iter().map(|a| a.to_string()).collect();
        let root = tempfile::tempdir().expect("temp dir");
        let mut members: Vec<Member> = (1..=n)
            .map(|i| Member::new(root.path(), &format!("e{i}")))
            .collect();
        let initial = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        for m in &mut members {
            m.initial_cluster = initial.clone();
        }
        let token = format!("suite-{consensus}");
        let procs = members
            .iter()
            .map(|m| {
                let mut args = m.args(consensus, &token);
                args.extend(extra.iter().cloned());
                Some(Proc::spawn(&args))
            })
            .collect();
        let c = Cluster {
            consensus: consensus.to_string(),
            token,
            members,
            procs,
            extra,
            root,
        };
        c.leader();
        c
    }

    /// The data root (for members added later).
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// Indexes of members with a running process.
    pub fn live(&self) -> Vec<usize> {
        (0..self.members.len())
            .filter(|i| self.procs[*i].is_some())
            .collect()
    }

    /// Bare endpoints of the live members, comma-separated.
    pub fn endpoints(&self) -> String {
        self.live()
            .iter()
            .map(|i| self.members[*i].endpoint())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `endpoint status -w fields` of `endpoint`: (member id, leader id).
    pub fn status(endpoint: &str) -> Result<(u64, u64), String> {
        let out = ctl(endpoint, &["endpoint", "status", "-w", "fields"])?;
        let field = |name: &str| -> Result<u64, String> {
            out.lines()
                .find(|l| l.trim_start().starts_with(&format!("\"{name}\"")))
                .and_then(|l| l.split(':').nth(1))
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| format!("no {name} in {out}"))
        };
        Ok((field("MemberID")?, field("Leader")?))
    }

    /// Waits until every live member names the same leader, which is one
    /// of them; its index.
    pub fn leader(&self) -> usize {
        retry("one leader named by every live member", || {
            let mut seen = Vec::new();
            for i in self.live() {
                let (id, leader) = Self::status(&self.members[i].endpoint()).map_err(|e| {
                    // A member that exited (e.g. a port taken) says why.
                    format!("{e}\n{}", self.logs())
                })?;
                seen.push((i, id, leader));
            }
            let leader = seen.first().map(|s| s.2).unwrap_or(0);
            if leader == 0 || seen.iter().any(|s| s.2 != leader) {
                return Err(format!("no agreed leader: {seen:?}"));
            }
            seen.iter()
                .find(|s| s.1 == leader)
                .map(|s| s.0)
                .ok_or_else(|| format!("leader {leader:x} is not live: {seen:?}"))
        })
    }

    /// The member id of member `i` (from its own status).
    pub fn member_id(&self, i: usize) -> u64 {
        retry("member id", || Self::status(&self.members[i].endpoint())).0
    }

    /// SIGKILLs member `i`.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut p) = self.procs[i].take() {
            p.kill9();
        }
    }

    /// Starts member `i` again on its data dir.
    pub fn restart(&mut self, i: usize) {
        assert!(self.procs[i].is_none(), "member {i} is running");
        self.procs[i] = Some(Proc::spawn(&self.args_of(i)));
    }

    /// The command line member `i` runs with.
    pub fn args_of(&self, i: usize) -> Vec<String> {
        let mut args = self.members[i].args(&self.consensus, &self.token);
        args.extend(self.extra.iter().cloned());
        args
    }

    /// Starts `m` as a new member joining the running cluster, with the
    /// live members and itself as its `--initial-cluster`.
    pub fn join(&mut self, mut m: Member) -> usize {
        m.joins = true;
        m.initial_cluster = self
            .live()
            .iter()
            .map(|i| &self.members[*i])
            .chain([&m])
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        let mut args = m.args(&self.consensus, &self.token);
        args.extend(self.extra.iter().cloned());
        let p = Proc::spawn(&args);
        self.members.push(m);
        self.procs.push(Some(p));
        self.members.len() - 1
    }

    /// SIGTERMs member `i`; its exit code.
    pub fn stop(&mut self, i: usize) -> i32 {
        self.stop_with_log(i).0
    }

    /// SIGTERMs member `i`; its exit code and the tail of its stderr.
    pub fn stop_with_log(&mut self, i: usize) -> (i32, String) {
        match self.procs[i].take() {
            Some(mut p) => {
                let code = p.sigterm_and_wait();
                (code, p.stderr_tail())
            }
            None => (-1, String::new()),
        }
    }

    /// The stderr tails of every member, for failure messages.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        for (m, p) in self.members.iter().zip(&self.procs) {
            if let Some(p) = p {
                let tail = p.stderr_tail();
                let start = tail.len().saturating_sub(8 * 1024);
                let mut start = start;
                while !tail.is_char_boundary(start) {
                    start += 1;
                }
                s.push_str(&format!(
                    "--- {} stderr (tail) ---\n{}\n",
                    m.name,
                    &tail[start..]
                ));
            }
        }
        s
    }
}
