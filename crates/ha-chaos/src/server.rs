//! Member processes: how to start, stop, kill, pause and restart one member
//! of an `ha-node` or etcd cluster, on loopback or inside a network
//! namespace.
//!
//! Both servers take etcd's flag names, so one command line builder serves
//! both; `ha-node` additionally gets `--consensus` and the peer TLS files.

use std::fmt;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Longest a member may take to exit after SIGTERM before it is SIGKILLed.
pub const STOP_GRACE_MS: u64 = 3_000;

/// Largest cluster the tools start (addresses are `x.y.z.{1..=MAX}`).
pub const MAX_MEMBERS: usize = 9;

/// Errors of member process management.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A process could not be started.
    #[error("cannot start member {member} ({program}): {source}")]
    Spawn {
        /// Member name.
        member: String,
        /// Program run.
        program: String,
        /// Cause.
        source: std::io::Error,
    },
    /// A file or directory could not be prepared.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Path involved.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A signal could not be delivered.
    #[error("cannot send {signal} to member {member} (pid {pid}): {source}")]
    Signal {
        /// Member name.
        member: String,
        /// Process id.
        pid: i32,
        /// Signal name.
        signal: &'static str,
        /// Cause.
        source: nix::Error,
    },
    /// A configuration value is out of range.
    #[error("invalid cluster configuration: {0}")]
    Config(String),
}

/// Which server binary runs the members.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerKind {
    /// The `ha-node` binary with a consensus protocol (`raft`, `paxos`).
    HaNode {
        /// Path of the binary.
        binary: PathBuf,
        /// Value of `--consensus`.
        consensus: String,
        /// Directory `ha-node certs` wrote the peer certificates to; `None`
        /// runs the peers without TLS flags.
        certs_dir: Option<PathBuf>,
        /// `--shards` (data shards; 1 = the flag is not passed, one group).
        /// The replication is ha-node's default, min(3, members).
        shards: u32,
    },
    /// Real etcd (3.4 or later).
    Etcd {
        /// Path of the binary.
        binary: PathBuf,
    },
}

impl ServerKind {
    /// Short label for reports (`ha-node/raft`, `etcd`).
    pub fn label(&self) -> String {
        match self {
            ServerKind::HaNode {
                consensus, shards, ..
            } if *shards > 1 => format!("ha-node/{consensus}/s{shards}"),
            ServerKind::HaNode { consensus, .. } => format!("ha-node/{consensus}"),
            ServerKind::Etcd { .. } => "etcd".to_owned(),
        }
    }

    fn binary(&self) -> &Path {
        match self {
            ServerKind::HaNode { binary, .. } | ServerKind::Etcd { binary } => binary,
        }
    }
}

impl fmt::Display for ServerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label())
    }
}

/// Where one member listens and keeps its data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberSpec {
    /// Member name (`n1`, `n2`, …).
    pub name: String,
    /// IP address the member binds (loopback alias or namespace address).
    pub ip: String,
    /// Client (gRPC) port.
    pub client_port: u16,
    /// Peer port.
    pub peer_port: u16,
    /// Metrics port.
    pub metrics_port: u16,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Network namespace to run in, if any.
    pub netns: Option<String>,
    /// Scheme of the peer URL: `https` for ha-node (QUIC with TLS), `http`
    /// for etcd (set by [`Cluster::new`]).
    pub peer_scheme: &'static str,
}

impl MemberSpec {
    /// `http://ip:client_port`.
    pub fn client_url(&self) -> String {
        format!("http://{}:{}", self.ip, self.client_port)
    }
    /// `<peer_scheme>://ip:peer_port`.
    pub fn peer_url(&self) -> String {
        format!("{}://{}:{}", self.peer_scheme, self.ip, self.peer_port)
    }
    /// `http://ip:metrics_port`.
    pub fn metrics_url(&self) -> String {
        format!("http://{}:{}", self.ip, self.metrics_port)
    }
}

/// Timing and identity of a cluster.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// Server binary and its options.
    pub kind: ServerKind,
    /// Members, in order.
    pub members: Vec<MemberSpec>,
    /// `--initial-cluster-token`.
    pub token: String,
    /// `--heartbeat-interval` in milliseconds.
    pub heartbeat_ms: u64,
    /// `--election-timeout` in milliseconds.
    pub election_timeout_ms: u64,
    /// Directory for the members' stdout/stderr logs.
    pub log_dir: PathBuf,
    /// `--log-level`.
    pub log_level: String,
}

/// Lays out `n` members on `ip_prefix.{1..=n}` with the three ports
/// `base_port`, `base_port + 1`, `base_port + 2`, data under `data_root`.
pub fn layout(
    n: usize,
    ip_prefix: &str,
    base_port: u16,
    data_root: &Path,
) -> Result<Vec<MemberSpec>, ServerError> {
    if n == 0 || n > MAX_MEMBERS {
        return Err(ServerError::Config(format!(
            "--nodes must be 1..={MAX_MEMBERS}, got {n}"
        )));
    }
    if base_port > u16::MAX - 2 {
        return Err(ServerError::Config(format!(
            "base port {base_port} leaves no room for peer and metrics ports"
        )));
    }
    Ok((1..=n)
        .map(|i| MemberSpec {
            name: format!("n{i}"),
            ip: format!("{ip_prefix}.{i}"),
            client_port: base_port,
            peer_port: base_port + 1,
            metrics_port: base_port + 2,
            data_dir: data_root.join(format!("n{i}")),
            netns: None,
            peer_scheme: "http",
        })
        .collect())
}

/// Peer TLS files of one member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerCerts {
    /// CA certificate.
    pub ca: PathBuf,
    /// Member certificate.
    pub cert: PathBuf,
    /// Member private key.
    pub key: PathBuf,
}

/// Finds the files `ha-node certs --nodes N --out DIR` wrote for member
/// number `index` (1-based) named `name`. Accepts the common layouts
/// (`ca.pem`/`ca.crt`; `<name>.pem`, `<name>.crt` or `<name>-cert.pem` with
/// `<name>-key.pem` or `<name>.key`, for the name, `node<i>` or `<i>`).
pub fn locate_certs(dir: &Path, index: usize, name: &str) -> Result<PeerCerts, ServerError> {
    let exists = |f: &str| {
        let p = dir.join(f);
        p.is_file().then_some(p)
    };
    let first = |cands: &[String]| cands.iter().find_map(|c| exists(c));
    let ca = first(&["ca.pem".into(), "ca.crt".into(), "ca-cert.pem".into()]);
    let stems = [name.to_owned(), format!("node{index}"), index.to_string()];
    let mut cert = None;
    let mut key = None;
    for s in &stems {
        cert = cert.or_else(|| {
            first(&[
                format!("{s}.pem"),
                format!("{s}.crt"),
                format!("{s}-cert.pem"),
                format!("{s}/cert.pem"),
            ])
        });
        key = key.or_else(|| {
            first(&[
                format!("{s}-key.pem"),
                format!("{s}.key"),
                format!("{s}/key.pem"),
            ])
        });
    }
    match (ca, cert, key) {
        (Some(ca), Some(cert), Some(key)) => Ok(PeerCerts { ca, cert, key }),
        _ => {
            let listing = fs::read_dir(dir)
                .map(|rd| {
                    rd.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default();
            Err(ServerError::Config(format!(
                "no CA/cert/key for member {name} in {} (files: {listing})",
                dir.display()
            )))
        }
    }
}

/// Runs `ha-node certs --names n1,…,nN --initial-cluster-token TOKEN --out
/// DIR` (member ids, which the certificates name, derive from the names and
/// the token). An existing directory is reused.
pub fn generate_certs(
    binary: &Path,
    members: &[MemberSpec],
    token: &str,
    dir: &Path,
) -> Result<(), ServerError> {
    if dir.join("ca.pem").is_file() {
        return Ok(());
    }
    let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
    let out = Command::new(binary)
        .arg("certs")
        .arg("--names")
        .arg(names.join(","))
        .arg("--initial-cluster-token")
        .arg(token)
        .arg("--out")
        .arg(dir)
        .output()
        .map_err(|source| ServerError::Spawn {
            member: "(certs)".into(),
            program: binary.display().to_string(),
            source,
        })?;
    if !out.status.success() {
        return Err(ServerError::Config(format!(
            "`{} certs` failed: {}",
            binary.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// File stem of the certificate of a member added at run time with `id`
/// (what `ha-node certs --member-ids` writes).
pub fn added_member_cert_stem(id: u64) -> String {
    format!("member-{id:x}")
}

/// Runs `ha-node certs --ca-dir DIR --member-ids ID --out DIR`: a
/// certificate, signed by the cluster CA in `dir`, for the member the
/// cluster added with `id` (ids of added members are assigned by the
/// cluster, so the certificate can only be issued after the add). Kept if it
/// exists already (an add whose answer was lost and is found listed).
pub fn issue_added_member_cert(
    binary: &Path,
    token: &str,
    dir: &Path,
    id: u64,
) -> Result<(), ServerError> {
    if dir
        .join(format!("{}.pem", added_member_cert_stem(id)))
        .is_file()
    {
        return Ok(());
    }
    let out = Command::new(binary)
        .arg("certs")
        .arg("--ca-dir")
        .arg(dir)
        .arg("--member-ids")
        .arg(format!("{id:x}"))
        .arg("--initial-cluster-token")
        .arg(token)
        .arg("--out")
        .arg(dir)
        .output()
        .map_err(|source| ServerError::Spawn {
            member: format!("(certificate of member {id:x})"),
            program: binary.display().to_string(),
            source,
        })?;
    if !out.status.success() {
        return Err(ServerError::Config(format!(
            "`{} certs --member-ids {id:x}` failed: {}",
            binary.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Life state of one member process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberState {
    /// Not started, or stopped/killed.
    Down,
    /// Running.
    Up,
    /// Stopped with SIGSTOP.
    Paused,
}

/// A running (or partly running) cluster whose processes this value owns:
/// dropping it kills every member.
pub struct Cluster {
    cfg: ClusterConfig,
    children: Vec<Option<Child>>,
    paused: Vec<bool>,
    /// `--initial-cluster` per member for its next (re)start, and whether
    /// it joins an existing cluster.
    joins: Vec<(String, bool)>,
    /// Member id of each member that was added back at run time (its
    /// certificate is `member-<id hex>.pem`, issued at the re-add).
    rejoined_ids: Vec<Option<u64>>,
    /// Members removed from the cluster (never restarted until re-added).
    removed: Vec<bool>,
    /// Arguments every member gets after the standard flags.
    extra_args: Vec<String>,
    /// Environment variables every member gets.
    extra_env: Vec<(String, String)>,
}

impl Cluster {
    /// Prepares data and log directories (and, for ha-node without a
    /// certificate directory, generates the members' peer certificates with
    /// `ha-node certs` into `<log_dir>/../certs`); starts nothing.
    pub fn new(mut cfg: ClusterConfig) -> Result<Self, ServerError> {
        if cfg.members.is_empty() || cfg.members.len() > MAX_MEMBERS {
            return Err(ServerError::Config(format!(
                "a cluster has 1..={MAX_MEMBERS} members"
            )));
        }
        if cfg.heartbeat_ms == 0 || cfg.election_timeout_ms < 2 * cfg.heartbeat_ms {
            return Err(ServerError::Config(format!(
                "election timeout ({} ms) must be at least twice the heartbeat ({} ms)",
                cfg.election_timeout_ms, cfg.heartbeat_ms
            )));
        }
        fs::create_dir_all(&cfg.log_dir).map_err(|source| ServerError::Io {
            what: "cannot create log directory",
            path: cfg.log_dir.clone(),
            source,
        })?;
        if let ServerKind::HaNode {
            binary, certs_dir, ..
        } = &mut cfg.kind
        {
            for m in &mut cfg.members {
                m.peer_scheme = "https";
            }
            if certs_dir.is_none() {
                let dir = cfg.log_dir.parent().unwrap_or(&cfg.log_dir).join("certs");
                generate_certs(binary, &cfg.members, &cfg.token, &dir)?;
                *certs_dir = Some(dir);
            }
        }
        let initial = cfg
            .members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        let n = cfg.members.len();
        Ok(Self {
            joins: vec![(initial, false); n],
            rejoined_ids: vec![None; n],
            children: (0..n).map(|_| None).collect(),
            paused: vec![false; n],
            removed: vec![false; n],
            extra_args: Vec::new(),
            extra_env: Vec::new(),
            cfg,
        })
    }

    /// Arguments and environment variables every member starts with from
    /// its next start on (appended after the standard flags), e.g.
    /// ha-node's `--replication` or placement timing.
    pub fn set_extra(&mut self, args: Vec<String>, env: Vec<(String, String)>) {
        self.extra_args = args;
        self.extra_env = env;
    }

    /// Adds a member that is not part of the cluster yet (it stays down,
    /// like a removed member, until [`Cluster::prepare_rejoin`] after the
    /// cluster's member-add); returns its index.
    pub fn add_member(&mut self, mut spec: MemberSpec) -> Result<usize, ServerError> {
        if self.cfg.members.len() >= MAX_MEMBERS {
            return Err(ServerError::Config(format!(
                "a cluster has 1..={MAX_MEMBERS} members"
            )));
        }
        if self
            .cfg
            .members
            .iter()
            .any(|m| m.name == spec.name || m.data_dir == spec.data_dir)
        {
            return Err(ServerError::Config(format!(
                "member {} (or its data directory) exists already",
                spec.name
            )));
        }
        spec.peer_scheme = self.cfg.members[0].peer_scheme;
        self.cfg.members.push(spec);
        self.children.push(None);
        self.paused.push(false);
        self.joins.push((String::new(), true));
        self.rejoined_ids.push(None);
        self.removed.push(true);
        Ok(self.cfg.members.len() - 1)
    }

    /// The configuration.
    pub fn config(&self) -> &ClusterConfig {
        &self.cfg
    }

    /// Member specs.
    pub fn members(&self) -> &[MemberSpec] {
        &self.cfg.members
    }

    /// Client URLs of all members.
    pub fn client_urls(&self) -> Vec<String> {
        self.cfg
            .members
            .iter()
            .map(MemberSpec::client_url)
            .collect()
    }

    /// Log file of member `i`.
    pub fn log_path(&self, i: usize) -> PathBuf {
        self.cfg
            .log_dir
            .join(format!("{}.log", self.cfg.members[i].name))
    }

    /// State of member `i`.
    pub fn state(&mut self, i: usize) -> MemberState {
        let Some(child) = self.children.get_mut(i).and_then(Option::as_mut) else {
            return MemberState::Down;
        };
        match child.try_wait() {
            Ok(None) if self.paused[i] => MemberState::Paused,
            Ok(None) => MemberState::Up,
            _ => {
                self.children[i] = None;
                self.paused[i] = false;
                MemberState::Down
            }
        }
    }

    /// Process id of member `i`, when running.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.children.get(i)?.as_ref().map(Child::id)
    }

    /// Whether member `i` was removed from the membership.
    pub fn is_removed(&self, i: usize) -> bool {
        self.removed.get(i).copied().unwrap_or(true)
    }

    /// The command line member `i` starts with.
    pub fn command(&self, i: usize) -> Result<Command, ServerError> {
        let m = &self.cfg.members[i];
        let (initial, existing) = &self.joins[i];
        let bin = self.cfg.kind.binary();
        let mut cmd = match &m.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        cmd.arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&m.data_dir)
            .arg("--listen-client-urls")
            .arg(m.client_url())
            .arg("--advertise-client-urls")
            .arg(m.client_url())
            .arg("--listen-peer-urls")
            .arg(m.peer_url())
            .arg("--initial-advertise-peer-urls")
            .arg(m.peer_url())
            .arg("--initial-cluster")
            .arg(initial)
            .arg("--initial-cluster-state")
            .arg(if *existing { "existing" } else { "new" })
            .arg("--initial-cluster-token")
            .arg(&self.cfg.token)
            .arg("--heartbeat-interval")
            .arg(self.cfg.heartbeat_ms.to_string())
            .arg("--election-timeout")
            .arg(self.cfg.election_timeout_ms.to_string())
            .arg("--listen-metrics-urls")
            .arg(m.metrics_url())
            .arg("--log-level")
            .arg(&self.cfg.log_level);
        match &self.cfg.kind {
            ServerKind::HaNode {
                consensus,
                certs_dir,
                shards,
                ..
            } => {
                cmd.arg("--consensus").arg(consensus);
                if *shards > 1 {
                    cmd.arg("--shards").arg(shards.to_string());
                }
                if let Some(dir) = certs_dir {
                    let c = match self.rejoined_ids[i] {
                        Some(id) => {
                            let stem = added_member_cert_stem(id);
                            let c = locate_certs(dir, i + 1, &stem)?;
                            // Never fall back to the founding certificate:
                            // its id was removed and is refused.
                            if c.cert != dir.join(format!("{stem}.pem")) {
                                return Err(ServerError::Config(format!(
                                    "no certificate {stem}.pem for re-added member {}",
                                    m.name
                                )));
                            }
                            c
                        }
                        None => locate_certs(dir, i + 1, &m.name)?,
                    };
                    cmd.arg("--peer-trusted-ca-file")
                        .arg(c.ca)
                        .arg("--peer-cert-file")
                        .arg(c.cert)
                        .arg("--peer-key-file")
                        .arg(c.key);
                }
            }
            ServerKind::Etcd { .. } => {
                // etcd 3.4 prints deprecation noise with its default logger.
                cmd.arg("--logger").arg("zap");
            }
        }
        cmd.args(&self.extra_args);
        cmd.envs(self.extra_env.iter().map(|(k, v)| (k, v)));
        Ok(cmd)
    }

    /// Starts member `i` (no-op when it runs).
    pub fn start(&mut self, i: usize) -> Result<(), ServerError> {
        if self.state(i) != MemberState::Down {
            return Ok(());
        }
        let m = self.cfg.members[i].clone();
        fs::create_dir_all(&m.data_dir).map_err(|source| ServerError::Io {
            what: "cannot create data directory",
            path: m.data_dir.clone(),
            source,
        })?;
        let log_path = self.log_path(i);
        let log = File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|source| ServerError::Io {
                what: "cannot open log",
                path: log_path.clone(),
                source,
            })?;
        let log2 = log.try_clone().map_err(|source| ServerError::Io {
            what: "cannot open log",
            path: log_path,
            source,
        })?;
        let mut cmd = self.command(i)?;
        // Own process group: a terminal Ctrl-C reaches only this tool, which
        // then stops the members itself (in order, with cleanup).
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .spawn()
            .map_err(|source| ServerError::Spawn {
                member: m.name.clone(),
                program: self.cfg.kind.binary().display().to_string(),
                source,
            })?;
        self.children[i] = Some(child);
        self.paused[i] = false;
        Ok(())
    }

    /// Starts every member not removed.
    pub fn start_all(&mut self) -> Result<(), ServerError> {
        for i in 0..self.cfg.members.len() {
            if !self.removed[i] {
                self.start(i)?;
            }
        }
        Ok(())
    }

    fn signal(&self, i: usize, sig: Signal, name: &'static str) -> Result<(), ServerError> {
        let Some(pid) = self.pid(i) else {
            return Ok(());
        };
        let pid = i32::try_from(pid).map_err(|_| ServerError::Config(format!("pid {pid}")))?;
        match kill(Pid::from_raw(pid), sig) {
            Ok(()) | Err(nix::Error::ESRCH) => Ok(()),
            Err(source) => Err(ServerError::Signal {
                member: self.cfg.members[i].name.clone(),
                pid,
                signal: name,
                source,
            }),
        }
    }

    /// SIGKILLs member `i` and reaps it.
    pub fn kill9(&mut self, i: usize) -> Result<(), ServerError> {
        self.signal(i, Signal::SIGKILL, "SIGKILL")?;
        if let Some(mut c) = self.children[i].take() {
            // After SIGKILL the wait returns promptly.
            let _ = c.wait();
        }
        self.paused[i] = false;
        Ok(())
    }

    /// SIGSTOPs member `i`.
    pub fn pause(&mut self, i: usize) -> Result<(), ServerError> {
        if self.state(i) == MemberState::Up {
            self.signal(i, Signal::SIGSTOP, "SIGSTOP")?;
            self.paused[i] = true;
        }
        Ok(())
    }

    /// SIGCONTs member `i`.
    pub fn resume(&mut self, i: usize) -> Result<(), ServerError> {
        if self.paused[i] {
            self.signal(i, Signal::SIGCONT, "SIGCONT")?;
            self.paused[i] = false;
        }
        Ok(())
    }

    /// Stops member `i`: SIGCONT (if paused), SIGTERM, then SIGKILL after
    /// [`STOP_GRACE_MS`].
    pub fn stop(&mut self, i: usize) -> Result<(), ServerError> {
        if self.pid(i).is_none() {
            return Ok(());
        }
        self.resume(i)?;
        self.signal(i, Signal::SIGTERM, "SIGTERM")?;
        let deadline = Instant::now() + Duration::from_millis(STOP_GRACE_MS);
        while Instant::now() < deadline {
            if self.state(i) == MemberState::Down {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill9(i)
    }

    /// Stops every member.
    pub fn stop_all(&mut self) {
        for i in 0..self.cfg.members.len() {
            if let Err(e) = self.stop(i) {
                eprintln!("ha-chaos: {e}");
            }
        }
    }

    /// Marks member `i` removed from the membership: it stays down.
    pub fn mark_removed(&mut self, i: usize) {
        self.removed[i] = true;
    }

    /// Prepares member `i` to join the running cluster as a new member
    /// with a fresh data directory (after a member-add), with the given
    /// `--initial-cluster` value. `member_id` is the id the cluster gave
    /// it; for ha-node, its certificate is issued here with the cluster CA.
    pub fn prepare_rejoin(
        &mut self,
        i: usize,
        initial_cluster: String,
        member_id: u64,
    ) -> Result<(), ServerError> {
        if let ServerKind::HaNode {
            binary,
            certs_dir: Some(certs),
            ..
        } = &self.cfg.kind
        {
            issue_added_member_cert(binary, &self.cfg.token, certs, member_id)?;
        }
        let dir = self.cfg.members[i].data_dir.clone();
        if dir.exists() {
            fs::remove_dir_all(&dir).map_err(|source| ServerError::Io {
                what: "cannot clear data directory of re-added member",
                path: dir,
                source,
            })?;
        }
        self.joins[i] = (initial_cluster, true);
        self.rejoined_ids[i] = Some(member_id);
        self.removed[i] = false;
        Ok(())
    }

    /// The last `max_bytes` of member `i`'s log, for error messages.
    pub fn log_tail(&self, i: usize, max_bytes: usize) -> String {
        let text = fs::read(self.log_path(i)).unwrap_or_default();
        let start = text.len().saturating_sub(max_bytes);
        String::from_utf8_lossy(&text[start..]).into_owned()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.children.len() {
            if self.children[i].is_some() {
                let _ = self.signal(i, Signal::SIGCONT, "SIGCONT");
                let _ = self.kill9(i);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(kind: ServerKind) -> ClusterConfig {
        ClusterConfig {
            kind,
            members: layout(3, "127.0.0", 2379, Path::new("/tmp/x")).unwrap(),
            token: "t".into(),
            heartbeat_ms: 100,
            election_timeout_ms: 1000,
            log_dir: std::env::temp_dir(),
            log_level: "warn".into(),
        }
    }

    #[test]
    fn layout_rejects_bad_sizes() {
        assert!(layout(0, "127.0.0", 2379, Path::new("/tmp")).is_err());
        assert!(layout(MAX_MEMBERS + 1, "127.0.0", 2379, Path::new("/tmp")).is_err());
        assert!(layout(3, "127.0.0", u16::MAX, Path::new("/tmp")).is_err());
        let l = layout(3, "127.0.0", 2379, Path::new("/tmp")).unwrap();
        assert_eq!(l[2].client_url(), "http://127.0.0.3:2379");
        assert_eq!(l[2].peer_url(), "http://127.0.0.3:2380");
        assert_eq!(l[2].metrics_url(), "http://127.0.0.3:2381");
    }

    #[test]
    fn ha_node_command_has_etcd_flags_and_consensus() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["ca.pem", "n2.pem", "n2-key.pem"] {
            fs::write(dir.path().join(f), b"x").unwrap();
        }
        let c = Cluster::new(cfg(ServerKind::HaNode {
            binary: "/bin/ha-node".into(),
            consensus: "paxos".into(),
            certs_dir: Some(dir.path().to_path_buf()),
            shards: 4,
        }))
        .unwrap();
        let cmd = c.command(1).unwrap();
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let val = |flag: &str| {
            let p = args.iter().position(|a| a == flag).unwrap();
            args[p + 1].clone()
        };
        assert_eq!(val("--name"), "n2");
        assert_eq!(val("--consensus"), "paxos");
        assert_eq!(val("--shards"), "4");
        assert_eq!(val("--initial-cluster-state"), "new");
        assert_eq!(
            val("--initial-cluster"),
            "n1=https://127.0.0.1:2380,n2=https://127.0.0.2:2380,n3=https://127.0.0.3:2380"
        );
        assert_eq!(
            val("--peer-cert-file"),
            dir.path().join("n2.pem").to_string_lossy()
        );
        assert!(!args.iter().any(|a| a == "--logger"));
    }

    #[test]
    fn added_member_stays_down_and_extra_flags_reach_every_member() {
        let mut c = Cluster::new(cfg(ServerKind::Etcd {
            binary: "/usr/bin/etcd".into(),
        }))
        .unwrap();
        c.set_extra(
            vec!["--dead-after".into(), "3000".into()],
            vec![("HA_JOIN_AFTER".into(), "1000".into())],
        );
        let mut spec = layout(4, "127.0.0", 2379, Path::new("/tmp/x")).unwrap()[3].clone();
        let i = c.add_member(spec.clone()).unwrap();
        assert_eq!(i, 3);
        assert!(c.is_removed(3), "not started before the cluster's add");
        assert!(c.add_member(spec.clone()).is_err(), "same name twice");
        spec.name = "n9".into();
        assert!(c.add_member(spec).is_err(), "same data directory twice");
        let cmd = c.command(3).unwrap();
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let p = args.iter().position(|a| a == "--dead-after").unwrap();
        assert_eq!(args[p + 1], "3000");
        assert!(
            cmd.get_envs()
                .any(|(k, v)| k == "HA_JOIN_AFTER" && v == Some("1000".as_ref()))
        );
        assert_eq!(
            args[args
                .iter()
                .position(|a| a == "--initial-cluster-state")
                .unwrap()
                + 1],
            "existing"
        );
    }

    #[test]
    fn etcd_command_has_no_consensus_flag() {
        let c = Cluster::new(cfg(ServerKind::Etcd {
            binary: "/usr/bin/etcd".into(),
        }))
        .unwrap();
        let args: Vec<String> = c
            .command(0)
            .unwrap()
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert!(!args.iter().any(|a| a == "--consensus"));
        assert!(args.iter().any(|a| a == "--logger"));
        assert!(args.iter().any(|a| a == "http://127.0.0.1:2380"));
    }

    #[test]
    fn failing_cert_generation_is_a_clear_error() {
        let mut c = cfg(ServerKind::HaNode {
            binary: "/bin/false".into(),
            consensus: "raft".into(),
            certs_dir: None,
            shards: 1,
        });
        let tmp = tempfile::tempdir().unwrap();
        c.log_dir = tmp.path().join("logs");
        let err = Cluster::new(c).err().unwrap().to_string();
        assert!(err.contains("certs` failed"), "{err}");
    }

    #[test]
    fn election_timeout_must_exceed_twice_heartbeat() {
        let mut c = cfg(ServerKind::Etcd {
            binary: "/usr/bin/etcd".into(),
        });
        c.election_timeout_ms = 150;
        assert!(matches!(Cluster::new(c), Err(ServerError::Config(_))));
    }

    #[test]
    fn certs_are_found_in_common_layouts_and_missing_ones_named() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["ca.pem", "node2.pem", "node2-key.pem"] {
            fs::write(dir.path().join(f), b"x").unwrap();
        }
        let c = locate_certs(dir.path(), 2, "n2").unwrap();
        assert_eq!(c.cert, dir.path().join("node2.pem"));
        assert_eq!(c.key, dir.path().join("node2-key.pem"));
        let err = locate_certs(dir.path(), 3, "n3").unwrap_err().to_string();
        assert!(err.contains("n3") && err.contains("node2.pem"), "{err}");
    }
}
