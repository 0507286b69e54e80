//! `ha-chaos chaos`: a cluster under faults, three checked workloads, a
//! verdict and an HTML report.
//!
//! A run: sweep leftovers of dead runs → make one network namespace per
//! member (or fall back to loopback with process-level faults only, saying
//! so) → start the cluster → run the workloads for `duration` while the
//! nemesis cycles through its mix (quiet, fault, heal, …; each kind once
//! before any repeats, order from the seed) → heal everything → final reads
//! → check → report. Processes, namespaces and rules are removed on every
//! exit path: normal, error, Ctrl-C (the run future is dropped, and the
//! owners' `Drop` impls clean up) and panic (unwinding runs the same
//! `Drop`s).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use etcd_client::Client;
use ha_core::testkit::linearizability::{CheckConfig, CheckError, KvModel, check};
use ha_core::testkit::rng::SimRng;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::net::{Lab, namespaces_available, sweep_leftovers};
use crate::server::{Cluster, ClusterConfig, MemberState, ServerKind, layout};
use crate::status::{all_status, connect_one, leader_of, wait_ready};
use crate::workload::{
    self, Broken, Clock, Endpoints, FencingViolation, LockLog, OpSpan, RegisterLog, SetLog,
    SetVerdict,
};

/// Longest run a chaos invocation accepts, seconds.
pub const MAX_DURATION_S: u64 = 3_600;
/// Longest the cluster may take to become ready (start and after healing).
pub const READY_TIMEOUT_MS: u64 = 30_000;
/// Time without faults between two faults, ms.
pub const QUIET_MS: u64 = 2_000;
/// How long a fault is held, ms.
pub const FAULT_HOLD_MS: u64 = 4_000;
/// How long a fault waits for a leader to target, ms.
pub const LEADER_WAIT_MS: u64 = 3_000;
/// How long a membership change keeps retrying a refused removal, ms.
pub const MEMBERSHIP_RETRY_MS: u64 = 8_000;

/// A kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum NemesisKind {
    /// SIGKILL a member (the leader every other time) and restart it.
    Kill,
    /// SIGSTOP a member (the leader every other time), SIGCONT later.
    Pause,
    /// Cut the leader off from every other member.
    IsolateLeader,
    /// Split the members into a minority and a majority.
    MajorityMinority,
    /// Drop packets in one direction only (one member stops hearing another).
    OneWay,
    /// Two halves that do not see each other, one member seeing both.
    Bridge,
    /// Remove a follower from the membership and add it back as a new,
    /// empty member.
    Membership,
}

impl NemesisKind {
    /// All kinds.
    pub const ALL: [NemesisKind; 7] = [
        NemesisKind::Kill,
        NemesisKind::Pause,
        NemesisKind::IsolateLeader,
        NemesisKind::MajorityMinority,
        NemesisKind::OneWay,
        NemesisKind::Bridge,
        NemesisKind::Membership,
    ];
    /// Command-line name.
    pub fn name(self) -> &'static str {
        match self {
            NemesisKind::Kill => "kill",
            NemesisKind::Pause => "pause",
            NemesisKind::IsolateLeader => "isolate-leader",
            NemesisKind::MajorityMinority => "majority-minority",
            NemesisKind::OneWay => "one-way",
            NemesisKind::Bridge => "bridge",
            NemesisKind::Membership => "membership",
        }
    }
    /// Whether the kind needs network namespaces.
    pub fn is_partition(self) -> bool {
        matches!(
            self,
            NemesisKind::IsolateLeader
                | NemesisKind::MajorityMinority
                | NemesisKind::OneWay
                | NemesisKind::Bridge
        )
    }
}

impl std::str::FromStr for NemesisKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        NemesisKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown nemesis `{s}` (known: {})",
                    NemesisKind::ALL.map(NemesisKind::name).join(", ")
                )
            })
    }
}

/// Options of one chaos run.
#[derive(Clone, Debug)]
pub struct ChaosOptions {
    /// Server and protocol.
    pub kind: ServerKind,
    /// Members (3 or 5 make sense).
    pub nodes: usize,
    /// Workload time, ms (final checks come after).
    pub duration_ms: u64,
    /// Seed of the nemesis schedule and the clients.
    pub seed: u64,
    /// Fault kinds to use.
    pub mix: Vec<NemesisKind>,
    /// Register clients.
    pub register_clients: u64,
    /// Set clients.
    pub set_clients: u64,
    /// Lock clients.
    pub lock_clients: u64,
    /// Deliberate client-side fault (to prove the checks catch it).
    pub broken: Broken,
    /// Refuse namespaces even when available (loopback, process faults).
    pub loopback: bool,
    /// First three octets of the loopback addresses used without
    /// namespaces (`127.0.20`: members on `127.0.20.{1..n}`).
    pub loopback_prefix: String,
    /// Report directory.
    pub out_dir: PathBuf,
    /// Heartbeat, ms.
    pub heartbeat_ms: u64,
    /// Election timeout, ms.
    pub election_timeout_ms: u64,
    /// Show a progress bar.
    pub progress: bool,
}

/// One fault as it happened.
#[derive(Clone, Debug, Serialize)]
pub struct FaultEvent {
    /// Kind.
    pub kind: NemesisKind,
    /// Human description (members involved).
    pub detail: String,
    /// Start, ns since epoch.
    pub start_ns: u64,
    /// Healed, ns since epoch.
    pub end_ns: u64,
    /// Whether it could be applied (e.g. a membership change may fail
    /// while the cluster has no leader).
    pub applied: bool,
}

/// The outcome of a run.
#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    /// System label.
    pub system: String,
    /// `namespaces` or `loopback (process faults only)`.
    pub network: String,
    /// Seed.
    pub seed: u64,
    /// Deliberate fault, if any.
    pub broken: Broken,
    /// Register operations recorded.
    pub register_ops: usize,
    /// Of which unknown outcome.
    pub register_unknown: usize,
    /// `linearizable`, `NOT linearizable`, or why no verdict.
    pub linearizability: String,
    /// Counter-example text when not linearizable.
    pub counterexample: Option<String>,
    /// Set workload result.
    pub set: SetVerdict,
    /// Lock grants.
    pub lock_grants: usize,
    /// Stale writes the fenced resource rejected (expected under faults).
    pub fencing_rejections: u64,
    /// Fencing violations.
    pub fencing_violations: Vec<FencingViolation>,
    /// Faults applied.
    pub faults: Vec<FaultEvent>,
    /// Count per kind of applied faults.
    pub exercised: BTreeMap<String, usize>,
    /// Kinds of the mix never applied.
    pub not_exercised: Vec<String>,
    /// Wall time of the run, s.
    pub elapsed_s: f64,
}

impl Verdict {
    /// Whether every check passed.
    pub fn ok(&self) -> bool {
        self.linearizability == "linearizable"
            && self.set.lost.is_empty()
            && self.set.phantom.is_empty()
            && self.fencing_violations.is_empty()
    }
    /// One-line summary.
    pub fn summary(&self) -> String {
        format!(
            "{}: {} ({} register ops, {} unknown); {} lost / {} acknowledged writes, {} phantom; {} fencing violations ({} grants, {} stale writes rejected); faults: {}",
            if self.ok() { "PASS" } else { "FAIL" },
            self.linearizability,
            self.register_ops,
            self.register_unknown,
            self.set.lost.len(),
            self.set.acked,
            self.set.phantom.len(),
            self.fencing_violations.len(),
            self.lock_grants,
            self.fencing_rejections,
            self.exercised
                .iter()
                .map(|(k, v)| format!("{k}×{v}"))
                .collect::<Vec<_>>()
                .join(" ")
        )
    }
}

/// Everything recorded, for the report.
pub struct Recording {
    /// Register history.
    pub register: RegisterLog,
    /// Set log.
    pub set: SetLog,
    /// Lock log.
    pub lock: LockLog,
}

/// The schedule: each kind of `mix` once in a seeded order, then again in
/// a new order, and so on.
pub fn schedule(mix: &[NemesisKind], seed: u64, count: usize) -> Vec<NemesisKind> {
    let mut rng = SimRng::new(seed);
    let mut out = Vec::with_capacity(count);
    if mix.is_empty() {
        return out;
    }
    while out.len() < count {
        let mut round = mix.to_vec();
        rng.shuffle(&mut round);
        out.extend(round);
    }
    out.truncate(count);
    out
}

/// The drop pairs of a partition kind over `n` members; `leader` is the
/// current leader's index. Returns the pairs and a description.
pub fn partition_pairs(
    kind: NemesisKind,
    n: usize,
    leader: usize,
    rng: &mut SimRng,
) -> (Vec<(usize, usize)>, String) {
    let both = |a: &[usize], b: &[usize]| {
        let mut v = Vec::new();
        for &x in a {
            for &y in b {
                v.push((x, y));
                v.push((y, x));
            }
        }
        v
    };
    if n < 3 || leader >= n {
        // No meaningful partition of fewer than three members.
        return (Vec::new(), format!("no partition of {n} members"));
    }
    let mut order: Vec<usize> = (0..n).collect();
    rng.shuffle(&mut order);
    let name = |v: &[usize]| {
        v.iter()
            .map(|i| format!("n{}", i + 1))
            .collect::<Vec<_>>()
            .join(",")
    };
    match kind {
        NemesisKind::IsolateLeader => {
            let others: Vec<usize> = (0..n).filter(|&i| i != leader).collect();
            (
                both(&[leader], &others),
                format!("leader n{} cut off from {}", leader + 1, name(&others)),
            )
        }
        NemesisKind::MajorityMinority => {
            let k = n / 2;
            let (minority, majority) = order.split_at(k);
            (
                both(minority, majority),
                format!("minority {} | majority {}", name(minority), name(majority)),
            )
        }
        NemesisKind::OneWay => {
            let (a, b) = (
                leader,
                order.iter().copied().find(|&i| i != leader).unwrap_or(0),
            );
            (
                vec![(a, b)],
                format!("n{} no longer hears n{} (one way)", b + 1, a + 1),
            )
        }
        NemesisKind::Bridge => {
            let bridge = order[0];
            let rest = &order[1..];
            let (left, right) = rest.split_at(rest.len() / 2);
            (
                both(left, right),
                format!(
                    "{} | {} with n{} seeing both",
                    name(left),
                    name(right),
                    bridge + 1
                ),
            )
        }
        _ => (Vec::new(), String::new()),
    }
}

fn leader_now(statuses: &[Result<crate::status::MemberStatus, String>]) -> Option<usize> {
    leader_of(statuses)
}

struct Nemesis<'a> {
    cluster: &'a mut Cluster,
    lab: Option<&'a Lab>,
    rng: SimRng,
    urls: Vec<String>,
    flip: bool,
}

impl Nemesis<'_> {
    /// The current leader, waiting up to [`LEADER_WAIT_MS`] for one (a
    /// previous fault may have just ended); member 0 when none shows up.
    async fn leader(&self) -> usize {
        match wait_ready(&self.urls, &[], LEADER_WAIT_MS).await {
            Some(l) => l,
            None => leader_now(&all_status(&self.urls).await).unwrap_or(0),
        }
    }

    fn victim(&mut self, leader: usize) -> usize {
        self.flip = !self.flip;
        if self.flip {
            leader
        } else {
            self.rng.below(self.urls.len() as u64) as usize
        }
    }

    /// Applies a fault; returns a description and an undo action.
    async fn apply(&mut self, kind: NemesisKind) -> Result<(String, Undo)> {
        let leader = self.leader().await;
        let n = self.urls.len();
        match kind {
            NemesisKind::Kill => {
                let v = self.victim(leader);
                self.cluster.kill9(v)?;
                Ok((format!("SIGKILL n{}", v + 1), Undo::Restart(v)))
            }
            NemesisKind::Pause => {
                let v = self.victim(leader);
                self.cluster.pause(v)?;
                Ok((format!("SIGSTOP n{}", v + 1), Undo::Resume(v)))
            }
            NemesisKind::Membership => {
                let follower = (0..n)
                    .map(|k| (leader + 1 + self.rng.below(n as u64) as usize + k) % n)
                    .find(|&i| i != leader && self.cluster.state(i) == MemberState::Up)
                    .context("no follower to remove")?;
                let name = self.cluster.members()[follower].name.clone();
                let peer = self.cluster.members()[follower].peer_url();
                // etcd refuses a removal until every member has been
                // connected for a while ("unhealthy cluster", e.g. right
                // after a restart); retry within a bound. A member is found
                // by name or, as its name stays empty until it has
                // published it (a re-added member right after starting), by
                // peer URL. A removal whose answer was lost (deadline) may
                // still have taken effect: once the member we asked to
                // remove has left the list, it is removed.
                let deadline = Instant::now() + Duration::from_millis(MEMBERSHIP_RETRY_MS);
                let mut asked: Option<u64> = None;
                let id = loop {
                    let attempt: Result<u64> = async {
                        let mut c = connect_one(&self.urls[self.leader().await], 3_000).await?;
                        let list = c.member_list().await?;
                        let found = list
                            .members()
                            .iter()
                            .find(|m| m.name() == name || m.peer_urls().contains(&peer))
                            .map(|m| m.id());
                        match (found, asked) {
                            (None, Some(id)) => Ok(id),
                            (None, None) => bail!("{name} ({peer}) not in the member list"),
                            (Some(id), _) => {
                                asked = Some(id);
                                c.member_remove(id).await?;
                                Ok(id)
                            }
                        }
                    }
                    .await;
                    match attempt {
                        Ok(id) => break id,
                        Err(e) if Instant::now() >= deadline => return Err(e),
                        Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
                    }
                };
                self.cluster.kill9(follower)?;
                self.cluster.mark_removed(follower);
                Ok((
                    format!("removed {name} (id {id:x}); re-added empty at heal"),
                    Undo::Readd(follower),
                ))
            }
            partition => {
                let lab = self.lab.context("partitions need network namespaces")?;
                let (pairs, what) = partition_pairs(partition, n, leader, &mut self.rng);
                lab.partition(&pairs)?;
                Ok((what, Undo::Heal))
            }
        }
    }

    async fn undo(&mut self, undo: Undo) -> Result<()> {
        match undo {
            Undo::Restart(i) => self.cluster.start(i)?,
            Undo::Resume(i) => self.cluster.resume(i)?,
            Undo::Heal => {
                if let Some(lab) = self.lab {
                    lab.heal()?;
                }
            }
            Undo::Readd(i) => {
                let peer = self.cluster.members()[i].peer_url();
                let name = self.cluster.members()[i].name.clone();
                let deadline = Instant::now() + Duration::from_millis(READY_TIMEOUT_MS);
                let mut last = String::new();
                loop {
                    if Instant::now() > deadline {
                        bail!("cannot re-add {name}: {last}");
                    }
                    let leader = self.leader().await;
                    let r = add_member_once(&self.urls[leader], &peer, self.cluster).await;
                    match r {
                        Ok((id, initial)) => {
                            self.cluster.prepare_rejoin(i, initial, id)?;
                            self.cluster.start(i)?;
                            break;
                        }
                        Err(e) => {
                            last = format!("{e:#}");
                            tokio::time::sleep(Duration::from_millis(300)).await;
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// Adds the member at `peer` through the member serving `client_url`,
/// unless it is listed already (an add whose answer was lost may have taken
/// effect): its id and the `--initial-cluster` it joins with. Names stay
/// empty until a member publishes them; this tool knows every member's name
/// in `cluster` by peer URL.
pub(crate) async fn add_member_once(
    client_url: &str,
    peer: &str,
    cluster: &Cluster,
) -> Result<(u64, String)> {
    let mut c = connect_one(client_url, 3_000).await?;
    let listed = c.member_list().await?;
    let members = if listed
        .members()
        .iter()
        .any(|m| m.peer_urls().iter().any(|u| u == peer))
    {
        listed.members().to_vec()
    } else {
        c.member_add([peer], None).await?.member_list().to_vec()
    };
    let id = members
        .iter()
        .find(|m| m.peer_urls().iter().any(|u| u == peer))
        .map(|m| m.id())
        .with_context(|| format!("{peer} is not listed after the add"))?;
    let initial = members
        .iter()
        .map(|m| {
            let url = m.peer_urls().first().cloned().unwrap_or_default();
            let name = cluster
                .members()
                .iter()
                .find(|s| s.peer_url() == url)
                .map(|s| s.name.clone())
                .or_else(|| (!m.name().is_empty()).then(|| m.name().to_string()))
                .with_context(|| format!("member {:x} ({url}) is unknown to this run", m.id()))?;
            Ok(format!("{name}={url}"))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((id, initial.join(",")))
}

enum Undo {
    Restart(usize),
    Resume(usize),
    Heal,
    Readd(usize),
}

/// Runs a chaos test and writes `report.html` and `verdict.json` into
/// `opts.out_dir`.
pub async fn run(opts: &ChaosOptions) -> Result<Verdict> {
    if opts.duration_ms == 0 || opts.duration_ms > MAX_DURATION_S * 1000 {
        bail!("--duration must be within 1 ms..{MAX_DURATION_S} s");
    }
    if !(3..=crate::server::MAX_MEMBERS).contains(&opts.nodes) {
        bail!("chaos needs 3..={} members", crate::server::MAX_MEMBERS);
    }
    let started = Instant::now();
    let swept = sweep_leftovers();
    if !swept.is_empty() {
        eprintln!(
            "ha-chaos: removed leftovers of dead runs: {}",
            swept.join(", ")
        );
    }
    std::fs::create_dir_all(&opts.out_dir)
        .with_context(|| format!("creating {}", opts.out_dir.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix(&crate::run_prefix())
        .tempdir()
        .context("temp dir")?;
    let lab = if opts.loopback {
        None
    } else {
        match namespaces_available().and_then(|()| Lab::create(opts.nodes)) {
            Ok(lab) => Some(lab),
            Err(e) => {
                eprintln!(
                    "ha-chaos: network namespaces unavailable ({e}); falling back to loopback with process-level faults only (kill, pause, membership)"
                );
                None
            }
        }
    };
    let network = if lab.is_some() {
        "network namespaces (veth + bridge, nftables partitions)".to_owned()
    } else {
        "loopback (process-level faults only)".to_owned()
    };
    let mix: Vec<NemesisKind> = opts
        .mix
        .iter()
        .copied()
        .filter(|k| lab.is_some() || !k.is_partition())
        .collect();
    let mut members = layout(opts.nodes, &opts.loopback_prefix, 2379, tmp.path())?;
    if let Some(lab) = &lab {
        for (m, ns) in members.iter_mut().zip(lab.members()) {
            m.ip = ns.ip.clone();
            m.netns = Some(ns.ns.clone());
        }
    }
    let cfg = ClusterConfig {
        kind: opts.kind.clone(),
        members,
        token: format!("{}chaos", crate::run_prefix()),
        heartbeat_ms: opts.heartbeat_ms,
        election_timeout_ms: opts.election_timeout_ms,
        log_dir: opts.out_dir.join("logs"),
        log_level: "warn".into(),
    };
    let _ = std::fs::remove_dir_all(opts.out_dir.join("logs"));
    let mut cluster = Cluster::new(cfg)?;
    cluster.start_all()?;
    let urls = cluster.client_urls();
    let all: Vec<usize> = (0..opts.nodes).collect();
    if wait_ready(&urls, &all, READY_TIMEOUT_MS).await.is_none() {
        bail!(
            "{}: no leader within {READY_TIMEOUT_MS} ms; n1 log tail:\n{}",
            opts.kind,
            cluster.log_tail(0, 2000)
        );
    }
    let mut clients = Vec::new();
    for u in &urls {
        clients.push(
            connect_one(u, workload::OP_TIMEOUT_MS)
                .await
                .with_context(|| format!("connecting to {u}"))?,
        );
    }
    let eps = Endpoints { clients };
    let clock = Clock(Instant::now());
    let stop_at = Instant::now() + Duration::from_millis(opts.duration_ms);
    let ops = Arc::new(AtomicU64::new(0));
    let reg = Arc::new(std::sync::Mutex::new(RegisterLog::default()));
    let set = Arc::new(std::sync::Mutex::new(SetLog::default()));
    let lock = Arc::new(std::sync::Mutex::new(LockLog::default()));
    let mut tasks = Vec::new();
    for id in 0..opts.register_clients {
        tasks.push(tokio::spawn(workload::register_client(
            id,
            eps.clone(),
            clock,
            stop_at,
            opts.seed,
            opts.broken,
            reg.clone(),
            ops.clone(),
        )));
    }
    for id in 0..opts.set_clients {
        tasks.push(tokio::spawn(workload::set_client(
            id,
            eps.clone(),
            clock,
            stop_at,
            opts.broken,
            set.clone(),
            ops.clone(),
        )));
    }
    for id in 0..opts.lock_clients {
        tasks.push(tokio::spawn(workload::lock_client(
            id,
            eps.clone(),
            clock,
            stop_at,
            lock.clone(),
            ops.clone(),
        )));
    }
    let bar = if opts.progress {
        let b = ProgressBar::new(opts.duration_ms / 1000);
        b.set_style(
            ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len}s {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b
    } else {
        ProgressBar::hidden()
    };
    let cycle_ms = QUIET_MS + FAULT_HOLD_MS;
    let rounds = (opts.duration_ms / cycle_ms).max(1) as usize;
    let mut plan: std::collections::VecDeque<NemesisKind> =
        schedule(&mix, opts.seed, rounds).into();
    // A fault that could not be applied (e.g. a removal refused while the
    // cluster is unhealthy) is tried once more one slot later.
    let mut retried: Vec<NemesisKind> = Vec::new();
    let mut faults = Vec::new();
    let mut nemesis = Nemesis {
        cluster: &mut cluster,
        lab: lab.as_ref(),
        rng: SimRng::new(opts.seed ^ 0x006e_656d_6573_6973),
        urls: urls.clone(),
        flip: false,
    };
    let tick = |bar: &ProgressBar, what: &str| {
        bar.set_position(clock.0.elapsed().as_secs().min(opts.duration_ms / 1000));
        bar.set_message(format!("{} ops | {what}", ops.load(Ordering::Relaxed)));
    };
    let sleep_until = |t: Instant, what: String| {
        let bar = bar.clone();
        async move {
            while Instant::now() < t {
                tick(&bar, &what);
                tokio::time::sleep(Duration::from_millis(250).min(t - Instant::now())).await;
            }
        }
    };
    while let Some(kind) = plan.pop_front() {
        let quiet_end = Instant::now() + Duration::from_millis(QUIET_MS);
        if quiet_end + Duration::from_millis(FAULT_HOLD_MS) > stop_at {
            break;
        }
        sleep_until(quiet_end, "quiet".into()).await;
        let start_ns = clock.now_ns();
        match nemesis.apply(kind).await {
            Ok((detail, undo)) => {
                sleep_until(
                    Instant::now() + Duration::from_millis(FAULT_HOLD_MS),
                    format!("{}: {detail}", kind.name()),
                )
                .await;
                // A failed heal is reported, not fatal: the final phase
                // restarts every member anyway, and the checks still hold.
                let detail = match nemesis.undo(undo).await {
                    Ok(()) => detail,
                    Err(e) => {
                        bar.println(format!("ha-chaos: healing {} failed: {e:#}", kind.name()));
                        format!("{detail} (heal failed: {e:#})")
                    }
                };
                faults.push(FaultEvent {
                    kind,
                    detail,
                    start_ns,
                    end_ns: clock.now_ns(),
                    applied: true,
                });
            }
            Err(e) => {
                faults.push(FaultEvent {
                    kind,
                    detail: format!("not applied: {e:#}"),
                    start_ns,
                    end_ns: clock.now_ns(),
                    applied: false,
                });
                if !retried.contains(&kind) {
                    retried.push(kind);
                    plan.insert(plan.len().min(1), kind);
                }
            }
        }
    }
    sleep_until(stop_at, "quiet".into()).await;
    bar.set_message("final reads");
    // Heal everything (already done per fault), make sure all members run.
    if let Some(lab) = &lab {
        lab.heal()?;
    }
    for i in 0..opts.nodes {
        cluster.resume(i)?;
        if !cluster.is_removed(i) {
            cluster.start(i)?;
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    let ready = wait_ready(&urls, &[], READY_TIMEOUT_MS).await;
    let present = match ready {
        Some(_) => workload::read_set(&eps).await.ok(),
        None => None,
    };
    // One final linearizable read of every register key, recorded.
    let keys: Vec<bytes::Bytes> = {
        let r = reg.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        let mut k: Vec<_> = r.history.iter().map(|o| o.input.key().clone()).collect();
        k.sort();
        k.dedup();
        k
    };
    final_reads(&eps, &clock, &keys, &reg).await;
    bar.finish_and_clear();
    cluster.stop_all();
    let reg = std::mem::take(&mut *reg.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    let set = std::mem::take(&mut *set.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    let lock = std::mem::take(&mut *lock.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    let (linearizability, counterexample) =
        match check(&KvModel, &reg.history, &CheckConfig::default()) {
            Ok(_) => ("linearizable".to_owned(), None),
            Err(CheckError::NotLinearizable(ce)) => {
                ("NOT linearizable".to_owned(), Some(ce.to_string()))
            }
            Err(e) => (format!("no verdict: {e}"), None),
        };
    let set_verdict = match &present {
        Some(p) => workload::check_set(&set, p),
        None => SetVerdict {
            acked: set.acked.len(),
            unknown: set.unknown.len(),
            lost: vec!["(final read failed: cluster not ready after healing)".into()],
            ..SetVerdict::default()
        },
    };
    let mut exercised: BTreeMap<String, usize> = BTreeMap::new();
    for f in faults.iter().filter(|f| f.applied) {
        *exercised.entry(f.kind.name().to_owned()).or_default() += 1;
    }
    let not_exercised = mix
        .iter()
        .filter(|k| !exercised.contains_key(k.name()))
        .map(|k| k.name().to_owned())
        .collect();
    let verdict = Verdict {
        system: opts.kind.label(),
        network,
        seed: opts.seed,
        broken: opts.broken,
        register_ops: reg.history.len(),
        register_unknown: reg.history.iter().filter(|o| o.is_unknown()).count(),
        linearizability,
        counterexample,
        set: set_verdict,
        lock_grants: lock.grants.len(),
        fencing_rejections: lock.resource.rejected,
        fencing_violations: workload::check_grants(&lock.grants),
        faults,
        exercised,
        not_exercised,
        elapsed_s: started.elapsed().as_secs_f64(),
    };
    let rec = Recording {
        register: reg,
        set,
        lock,
    };
    std::fs::write(
        opts.out_dir.join("verdict.json"),
        serde_json::to_string_pretty(&verdict)?,
    )?;
    std::fs::write(
        opts.out_dir.join("report.html"),
        crate::report::html(&verdict, &rec, opts),
    )?;
    drop(lab);
    Ok(verdict)
}

/// One linearizable read of each register key (through the first member
/// that answers), recorded in `reg` as completed reads of client
/// `u64::MAX`: the values every later check compares against.
pub async fn final_reads(
    eps: &Endpoints,
    clock: &Clock,
    keys: &[bytes::Bytes],
    reg: &std::sync::Mutex<RegisterLog>,
) {
    use ha_core::kv::{KvCommand, KvResponse};
    use ha_core::testkit::history::Operation;
    for key in keys {
        for c in &eps.clients {
            let mut c: Client = c.clone();
            let invoked = clock.now_ns();
            let r = tokio::time::timeout(
                Duration::from_millis(workload::OP_TIMEOUT_MS * 3),
                c.get(key.to_vec(), None),
            )
            .await;
            if let Ok(Ok(resp)) = r {
                let done = clock.now_ns();
                let v = resp
                    .kvs()
                    .first()
                    .map(|kv| bytes::Bytes::copy_from_slice(kv.value()));
                if let Ok(mut l) = reg.lock() {
                    l.history.push(Operation::completed(
                        u64::MAX,
                        invoked,
                        done,
                        KvCommand::Get { key: key.clone() },
                        KvResponse::Value(v),
                    ));
                }
                break;
            }
        }
    }
}

/// Spans of the register history for plots.
pub fn register_spans(reg: &RegisterLog) -> Vec<OpSpan> {
    use ha_core::kv::KvCommand;
    reg.history
        .iter()
        .map(|o| OpSpan {
            row: if o.client == u64::MAX {
                "final reads".into()
            } else {
                format!("reg c{}", o.client)
            },
            start_ns: o.invoked_at,
            end_ns: o.completed_at,
            kind: match o.input {
                KvCommand::Get { .. } => "get",
                KvCommand::Put { .. } => "put",
                KvCommand::Delete { .. } => "delete",
                KvCommand::Cas { .. } => "cas",
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_covers_every_kind_before_repeating() {
        let s = schedule(&NemesisKind::ALL, 7, 10);
        assert_eq!(s.len(), 10);
        let mut first: Vec<_> = s[..7].to_vec();
        first.sort();
        assert_eq!(first, NemesisKind::ALL.to_vec());
        assert_eq!(schedule(&NemesisKind::ALL, 7, 10), s, "seeded");
        assert!(schedule(&[], 1, 5).is_empty());
    }

    #[test]
    fn partitions_cut_the_intended_links() {
        let mut rng = SimRng::new(1);
        let (p, _) = partition_pairs(NemesisKind::IsolateLeader, 3, 1, &mut rng);
        let mut p2 = p.clone();
        p2.sort();
        assert_eq!(p2, vec![(0, 1), (1, 0), (1, 2), (2, 1)]);
        let (p, _) = partition_pairs(NemesisKind::OneWay, 3, 2, &mut rng);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].0, 2);
        let (p, _) = partition_pairs(NemesisKind::MajorityMinority, 5, 0, &mut rng);
        assert_eq!(p.len(), 2 * 2 * 3, "2 minority × 3 majority, both ways");
        let (p, d) = partition_pairs(NemesisKind::Bridge, 5, 0, &mut rng);
        assert_eq!(p.len(), 2 * 2 * 2, "{d}");
        // The bridge member appears in no pair.
        let bridge: usize = (0..5)
            .find(|i| !p.iter().any(|&(a, b)| a == *i || b == *i))
            .unwrap();
        assert!(d.contains(&format!("n{} seeing both", bridge + 1)));
        let (p, _) = partition_pairs(NemesisKind::Bridge, 2, 0, &mut rng);
        assert!(p.is_empty(), "too few members: no partition, no panic");
    }

    #[test]
    fn nemesis_names_round_trip() {
        for k in NemesisKind::ALL {
            assert_eq!(k.name().parse::<NemesisKind>(), Ok(k));
        }
        assert!("flood".parse::<NemesisKind>().is_err());
    }
}
