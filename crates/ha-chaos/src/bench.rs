//! `ha-chaos bench`: a closed-loop load generator over the etcd v3 gRPC
//! API, so one client drives `ha-node` and etcd alike, and the leader
//! failover measurement.
//!
//! Each point runs `clients` concurrent closed-loop clients for a fixed
//! time after a warm-up, over at most [`MAX_CONNECTIONS`] gRPC connections
//! spread over all members, and records every operation's latency in an
//! HDR histogram (µs, 3 significant digits).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use etcd_client::{Client, Compare, CompareOp, GetOptions, LockOptions, Txn, TxnOp};
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::server::{Cluster, ClusterConfig, ServerKind, layout};
use crate::status::{connect_one, wait_ready};
use crate::svg::{Chart, Scale, Series};

/// Most gRPC connections one point opens (clients share them round-robin).
pub const MAX_CONNECTIONS: usize = 32;
/// Most concurrent clients one point may ask for.
pub const MAX_CLIENTS: usize = 4_096;
/// Value size of the put workload, in bytes.
pub const VALUE_BYTES: usize = 256;
/// Keys the read workloads spread over (written before the point).
pub const READ_KEYS: usize = 1_000;
/// Per-request timeout of the load generator.
pub const REQUEST_TIMEOUT_MS: u64 = 5_000;
/// Longest latency the histograms record (larger values are clamped).
pub const MAX_LATENCY_US: u64 = 60_000_000;
/// Lease TTL held by each lock client.
pub const LOCK_LEASE_TTL_S: i64 = 30;
/// Longest a freshly started cluster may take to elect a leader.
pub const READY_TIMEOUT_MS: u64 = 30_000;

/// One operation mix of the benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Workload {
    /// `Put` of a [`VALUE_BYTES`] value to a per-client key.
    Put,
    /// Single-key linearizable `Range`.
    RangeLinearizable,
    /// Single-key serializable `Range`.
    RangeSerializable,
    /// `Txn`: compare version > 0, then put, else get.
    Txn,
    /// Lock acquire + release (uncontended, one lease per client).
    Lock,
}

impl Workload {
    /// All workloads.
    pub const ALL: [Workload; 5] = [
        Workload::Put,
        Workload::RangeLinearizable,
        Workload::RangeSerializable,
        Workload::Txn,
        Workload::Lock,
    ];

    /// Name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Put => "put",
            Workload::RangeLinearizable => "range-lin",
            Workload::RangeSerializable => "range-ser",
            Workload::Txn => "txn",
            Workload::Lock => "lock",
        }
    }
}

impl FromStr for Workload {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Workload::ALL
            .into_iter()
            .find(|w| w.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown workload `{s}` (known: {})",
                    Workload::ALL.map(Workload::name).join(", ")
                )
            })
    }
}

/// Result of one (system, workload, clients) point.
#[derive(Clone, Debug, Serialize)]
pub struct Point {
    /// System label (`etcd`, `ha-node/raft`).
    pub system: String,
    /// Workload name.
    pub workload: &'static str,
    /// Concurrent clients.
    pub clients: usize,
    /// Successful operations in the measured window.
    pub ops: u64,
    /// Failed operations in the measured window.
    pub errors: u64,
    /// The first failure's message, if any (what kind of errors they were).
    pub first_error: Option<String>,
    /// Measured window in seconds.
    pub seconds: f64,
    /// Successful operations per second.
    pub ops_per_s: f64,
    /// Median latency, µs.
    pub p50_us: u64,
    /// 99th percentile latency, µs.
    pub p99_us: u64,
    /// 99.9th percentile latency, µs.
    pub p999_us: u64,
    /// Latency CDF: (latency ms, percentile) pairs.
    #[serde(skip)]
    pub cdf: Vec<(f64, f64)>,
}

/// Options of one benchmark run.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Systems to measure.
    pub systems: Vec<ServerKind>,
    /// Workloads.
    pub workloads: Vec<Workload>,
    /// Client counts.
    pub clients: Vec<usize>,
    /// Measured time per point, ms.
    pub duration_ms: u64,
    /// Warm-up per point, ms (not recorded).
    pub warmup_ms: u64,
    /// Members per cluster.
    pub nodes: usize,
    /// Address prefix of the members (loopback).
    pub ip_prefix: String,
    /// Client port of the members.
    pub base_port: u16,
    /// Output directory.
    pub out_dir: PathBuf,
    /// Heartbeat / election timeout of the clusters, ms.
    pub heartbeat_ms: u64,
    /// Election timeout, ms.
    pub election_timeout_ms: u64,
    /// Root for member data (a temp dir is made inside).
    pub data_root: Option<PathBuf>,
    /// Which members the clients talk to.
    pub endpoints: Endpoints,
}

/// Starts a `nodes`-member cluster of `kind` in a fresh temp dir and waits
/// for a leader.
pub async fn start_cluster(
    kind: &ServerKind,
    nodes: usize,
    ip_prefix: &str,
    base_port: u16,
    heartbeat_ms: u64,
    election_timeout_ms: u64,
    data_root: Option<&Path>,
) -> Result<(Cluster, tempfile::TempDir)> {
    let tmp = match data_root {
        Some(r) => {
            std::fs::create_dir_all(r).with_context(|| format!("creating {}", r.display()))?;
            tempfile::Builder::new()
                .prefix(&crate::run_prefix())
                .tempdir_in(r)?
        }
        None => tempfile::Builder::new()
            .prefix(&crate::run_prefix())
            .tempdir()?,
    };
    let members = layout(nodes, ip_prefix, base_port, tmp.path())?;
    let cfg = ClusterConfig {
        kind: kind.clone(),
        members,
        token: format!("{}bench", crate::run_prefix()),
        heartbeat_ms,
        election_timeout_ms,
        log_dir: tmp.path().join("logs"),
        // Members log at warn unless HA_CHAOS_LOG_LEVEL says otherwise.
        log_level: std::env::var("HA_CHAOS_LOG_LEVEL").unwrap_or_else(|_| "warn".into()),
    };
    let mut cluster = Cluster::new(cfg)?;
    cluster.start_all()?;
    let all: Vec<usize> = (0..nodes).collect();
    if wait_ready(&cluster.client_urls(), &all, READY_TIMEOUT_MS)
        .await
        .is_none()
    {
        let tail = cluster.log_tail(0, 2000);
        cluster.stop_all();
        bail!("{kind}: no leader within {READY_TIMEOUT_MS} ms; n1 log tail:\n{tail}");
    }
    Ok((cluster, tmp))
}

async fn connections(urls: &[String], n: usize) -> Result<Vec<Client>> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let url = &urls[i % urls.len()];
        out.push(
            connect_one(url, REQUEST_TIMEOUT_MS)
                .await
                .with_context(|| format!("connecting to {url}"))?,
        );
    }
    Ok(out)
}

fn value_of(client: usize, seq: u64) -> Vec<u8> {
    let mut v = format!("c{client}-{seq}-").into_bytes();
    v.resize(VALUE_BYTES, b'x');
    v
}

/// Which members the load generator's connections go to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub enum Endpoints {
    /// Every member, round-robin (what a client given all endpoints does;
    /// with one client, only the first member). Requests reaching a
    /// follower are forwarded to the leader by the server.
    #[default]
    All,
    /// Only the leader as it is before the point (no forwarding; one
    /// member's client-side CPU for the whole load).
    Leader,
    /// Only the followers (every write is forwarded).
    Followers,
}

impl Endpoints {
    /// Name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Endpoints::All => "all",
            Endpoints::Leader => "leader",
            Endpoints::Followers => "followers",
        }
    }

    /// The URLs of `urls` this choice keeps, given the leader's index.
    pub fn pick(self, urls: &[String], leader: usize) -> Vec<String> {
        match self {
            Endpoints::All => urls.to_vec(),
            Endpoints::Leader => urls.get(leader).cloned().into_iter().collect(),
            Endpoints::Followers => urls
                .iter()
                .enumerate()
                .filter(|&(i, _)| i != leader)
                .map(|(_, u)| u.clone())
                .collect(),
        }
    }
}

impl FromStr for Endpoints {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        [Endpoints::All, Endpoints::Leader, Endpoints::Followers]
            .into_iter()
            .find(|e| e.name() == s)
            .ok_or_else(|| format!("unknown endpoints `{s}` (known: all, leader, followers)"))
    }
}

/// Runs one point against the given endpoints.
pub async fn run_point(
    system: &str,
    urls: &[String],
    workload: Workload,
    clients: usize,
    warmup_ms: u64,
    duration_ms: u64,
) -> Result<Point> {
    if clients == 0 || clients > MAX_CLIENTS {
        bail!("clients must be 1..={MAX_CLIENTS}, got {clients}");
    }
    if urls.is_empty() {
        bail!("no endpoints to benchmark");
    }
    let conns = connections(urls, clients.min(MAX_CONNECTIONS)).await?;
    // Read workloads need their keys.
    if matches!(
        workload,
        Workload::RangeLinearizable | Workload::RangeSerializable | Workload::Txn
    ) {
        let mut c = conns[0].clone();
        for k in 0..READ_KEYS {
            c.put(format!("bench/r/{k}"), value_of(0, k as u64), None)
                .await
                .context("preloading read keys")?;
        }
    }
    let start = Instant::now();
    let record_from = start + Duration::from_millis(warmup_ms);
    let stop_at = record_from + Duration::from_millis(duration_ms);
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let first_error: Arc<std::sync::OnceLock<String>> = Arc::new(std::sync::OnceLock::new());
    let mut tasks = Vec::with_capacity(clients);
    for id in 0..clients {
        let mut c = conns[id % conns.len()].clone();
        let stop = stop.clone();
        let errors = errors.clone();
        let first_error = first_error.clone();
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new_with_bounds(1, MAX_LATENCY_US, 3)
                .map_err(|e| anyhow::anyhow!("histogram: {e}"))?;
            let mut rng = ha_core::testkit::rng::SimRng::new(id as u64 + 1);
            let lease = if workload == Workload::Lock {
                Some(c.lease_grant(LOCK_LEASE_TTL_S, None).await?.id())
            } else {
                None
            };
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                seq += 1;
                let t0 = Instant::now();
                let r: Result<(), etcd_client::Error> = match workload {
                    Workload::Put => c
                        .put(
                            format!("bench/w/{id}/{}", seq % 1000),
                            value_of(id, seq),
                            None,
                        )
                        .await
                        .map(drop),
                    Workload::RangeLinearizable => c
                        .get(format!("bench/r/{}", rng.below(READ_KEYS as u64)), None)
                        .await
                        .map(drop),
                    Workload::RangeSerializable => c
                        .get(
                            format!("bench/r/{}", rng.below(READ_KEYS as u64)),
                            Some(GetOptions::new().with_serializable()),
                        )
                        .await
                        .map(drop),
                    Workload::Txn => {
                        let key = format!("bench/r/{}", rng.below(READ_KEYS as u64));
                        let txn = Txn::new()
                            .when([Compare::version(key.clone(), CompareOp::Greater, 0)])
                            .and_then([TxnOp::put(key.clone(), value_of(id, seq), None)])
                            .or_else([TxnOp::get(key, None)]);
                        c.txn(txn).await.map(drop)
                    }
                    Workload::Lock => {
                        let opts = lease.map(|l| LockOptions::new().with_lease(l));
                        match c.lock(format!("bench/l/{id}"), opts).await {
                            Ok(resp) => c.unlock(resp.key().to_vec()).await.map(drop),
                            Err(e) => Err(e),
                        }
                    }
                };
                let now = Instant::now();
                if now >= record_from && now <= stop_at {
                    match r {
                        Ok(()) => {
                            let us = (now - t0).as_micros().min(u128::from(MAX_LATENCY_US));
                            h.saturating_record(us as u64);
                        }
                        Err(e) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            let _ = first_error.set(e.to_string());
                        }
                    }
                }
            }
            if let Some(l) = lease {
                let _ = c.lease_revoke(l).await;
            }
            Ok::<_, anyhow::Error>(h)
        }));
    }
    tokio::time::sleep_until(stop_at.into()).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = Histogram::<u64>::new_with_bounds(1, MAX_LATENCY_US, 3)
        .map_err(|e| anyhow::anyhow!("histogram: {e}"))?;
    for t in tasks {
        let h = t.await.context("client task")??;
        total
            .add(&h)
            .map_err(|e| anyhow::anyhow!("histogram: {e}"))?;
    }
    let seconds = duration_ms as f64 / 1000.0;
    let ops = total.len();
    let cdf = CDF_PERCENTILES
        .iter()
        .map(|&p| (total.value_at_percentile(p) as f64 / 1000.0, p))
        .collect();
    Ok(Point {
        system: system.to_owned(),
        workload: workload.name(),
        clients,
        ops,
        errors: errors.load(Ordering::Relaxed),
        first_error: first_error.get().cloned(),
        seconds,
        ops_per_s: ops as f64 / seconds,
        p50_us: total.value_at_quantile(0.5),
        p99_us: total.value_at_quantile(0.99),
        p999_us: total.value_at_quantile(0.999),
        cdf,
    })
}

/// Width of the bench charts, px.
pub const CHART_WIDTH_PX: u32 = 640;
/// Height of one panel of the bench charts, px.
pub const CHART_PANEL_HEIGHT_PX: u32 = 300;

/// Percentiles sampled for each point's latency CDF.
pub const CDF_PERCENTILES: [f64; 22] = [
    0.0, 1.0, 5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 95.0, 97.5, 99.0, 99.5,
    99.75, 99.9, 99.95, 99.99, 99.999, 100.0,
];

/// Address prefix of the `i`-th system's cluster when several run at once:
/// `a.b.c` becomes `a.b.(c + i)`, so each cluster has a loopback range of
/// its own and the same ports.
pub fn system_ip_prefix(base: &str, i: usize) -> Result<String> {
    let (head, last) = base
        .rsplit_once('.')
        .with_context(|| format!("address prefix `{base}` is not `a.b.c`"))?;
    let last: usize = last
        .parse()
        .with_context(|| format!("address prefix `{base}`: last part is not a number"))?;
    let third = last + i;
    if third > 255 {
        bail!(
            "address prefix `{base}` leaves no room for {} clusters",
            i + 1
        );
    }
    Ok(format!("{head}.{third}"))
}

/// Runs every point of `opts`, printing a line per point; writes the
/// combined `results.{csv,md,svg,json}` and per workload
/// `<workload>.{csv,md,svg}` into `opts.out_dir`.
///
/// All systems' clusters run at once (each on its own loopback range, see
/// [`system_ip_prefix`]) and the points are interleaved: for each workload
/// and client count, every system in turn. On a shared machine whose load
/// changes over minutes, this keeps the ratios between systems fair.
pub async fn run(opts: &BenchOptions) -> Result<Vec<Point>> {
    std::fs::create_dir_all(&opts.out_dir)
        .with_context(|| format!("creating {}", opts.out_dir.display()))?;
    let mut clusters: Vec<(String, Cluster, tempfile::TempDir)> = Vec::new();
    let stop_all = |clusters: &mut Vec<(String, Cluster, tempfile::TempDir)>| {
        for (_, c, _) in clusters.iter_mut() {
            c.stop_all();
        }
    };
    for (i, kind) in opts.systems.iter().enumerate() {
        eprintln!("ha-chaos bench: starting {} × {kind}", opts.nodes);
        let started = match system_ip_prefix(&opts.ip_prefix, i) {
            Ok(prefix) => {
                start_cluster(
                    kind,
                    opts.nodes,
                    &prefix,
                    opts.base_port,
                    opts.heartbeat_ms,
                    opts.election_timeout_ms,
                    opts.data_root.as_deref(),
                )
                .await
            }
            Err(e) => Err(e),
        };
        match started {
            Ok((c, tmp)) => clusters.push((kind.label(), c, tmp)),
            Err(e) => {
                stop_all(&mut clusters);
                return Err(e);
            }
        }
    }
    eprintln!(
        "ha-chaos bench: clients connect to: {} members",
        opts.endpoints.name()
    );
    let mut points = Vec::new();
    for &w in &opts.workloads {
        for &c in &opts.clients {
            for i in 0..clusters.len() {
                let label = clusters[i].0.clone();
                let all_urls = clusters[i].1.client_urls();
                let urls = if opts.endpoints == Endpoints::All {
                    all_urls
                } else {
                    let every: Vec<usize> = (0..all_urls.len()).collect();
                    let Some(leader) = wait_ready(&all_urls, &every, READY_TIMEOUT_MS).await else {
                        stop_all(&mut clusters);
                        bail!("{label}: no leader within {READY_TIMEOUT_MS} ms before a point");
                    };
                    opts.endpoints.pick(&all_urls, leader)
                };
                let p = tokio::select! {
                    p = run_point(&label, &urls, w, c, opts.warmup_ms, opts.duration_ms) => p,
                    _ = tokio::signal::ctrl_c() => {
                        stop_all(&mut clusters);
                        bail!("interrupted");
                    }
                };
                let p = match p {
                    Ok(p) => p,
                    Err(e) => {
                        let e = e.context(format!("{label} {} × {c}", w.name()));
                        stop_all(&mut clusters);
                        return Err(e);
                    }
                };
                eprintln!(
                    "  {:14} {:9} {:4} clients: {:9.0} ops/s  p50 {:7.2} ms  p99 {:7.2} ms  p999 {:7.2} ms  errors {}",
                    p.system,
                    p.workload,
                    p.clients,
                    p.ops_per_s,
                    p.p50_us as f64 / 1000.0,
                    p.p99_us as f64 / 1000.0,
                    p.p999_us as f64 / 1000.0,
                    p.errors
                );
                if let Some(e) = &p.first_error {
                    eprintln!("    first error: {e}");
                }
                points.push(p);
            }
        }
    }
    stop_all(&mut clusters);
    write_outputs(&opts.out_dir, &points)?;
    Ok(points)
}

/// CSV of the points.
pub fn csv(points: &[Point]) -> String {
    let mut s = String::from(
        "system,workload,clients,ops,errors,seconds,ops_per_s,p50_us,p99_us,p999_us\n",
    );
    for p in points {
        let _ = writeln!(
            s,
            "{},{},{},{},{},{:.3},{:.1},{},{},{}",
            p.system,
            p.workload,
            p.clients,
            p.ops,
            p.errors,
            p.seconds,
            p.ops_per_s,
            p.p50_us,
            p.p99_us,
            p.p999_us
        );
    }
    s
}

/// The workloads present in `points`, in first-seen order.
fn workloads_of(points: &[Point]) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for p in points {
        if !out.contains(&p.workload) {
            out.push(p.workload);
        }
    }
    out
}

/// The systems present in `points`, in first-seen order.
fn systems_of(points: &[Point]) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    for p in points {
        if !out.contains(&p.system.as_str()) {
            out.push(&p.system);
        }
    }
    out
}

/// Markdown: one table per workload (a `### <workload>` heading each),
/// see [`markdown_table`].
pub fn markdown(points: &[Point]) -> String {
    let mut s = String::new();
    for w in workloads_of(points) {
        let _ = writeln!(s, "### {w}\n");
        s.push_str(&markdown_table(points, w));
        s.push('\n');
    }
    s
}

/// Markdown table of one workload's points, with throughput and p99 as
/// ratios to etcd's at the same client count where etcd ran (throughput:
/// higher is better; p99: lower is better).
pub fn markdown_table(points: &[Point], workload: &str) -> String {
    let mut s = String::from(
        "| clients | system | ops/s | p50 ms | p99 ms | p99.9 ms | errors | ops/s vs etcd | p99 vs etcd |\n|---:|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let mut rows: Vec<&Point> = points.iter().filter(|p| p.workload == workload).collect();
    rows.sort_by_key(|p| p.clients);
    for p in rows {
        let etcd = points
            .iter()
            .find(|q| q.system == "etcd" && q.workload == p.workload && q.clients == p.clients)
            .filter(|_| p.system != "etcd");
        let (ratio, p99_ratio) = match etcd {
            Some(e) if e.ops_per_s > 0.0 && e.p99_us > 0 => (
                format!("{:.2}×", p.ops_per_s / e.ops_per_s),
                format!("{:.2}×", p.p99_us as f64 / e.p99_us as f64),
            ),
            _ => ("—".into(), "—".into()),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {} | {} |",
            p.clients,
            p.system,
            p.ops_per_s,
            p.p50_us as f64 / 1000.0,
            p.p99_us as f64 / 1000.0,
            p.p999_us as f64 / 1000.0,
            p.errors,
            ratio,
            p99_ratio
        );
    }
    s
}

/// CSV of the points' latency CDFs: one row per (system, workload,
/// clients, percentile).
pub fn cdf_csv(points: &[Point]) -> String {
    let mut s = String::from("system,workload,clients,percentile,latency_ms\n");
    for p in points {
        for &(ms, pct) in &p.cdf {
            let _ = writeln!(s, "{},{},{},{pct},{ms:.3}", p.system, p.workload, p.clients);
        }
    }
    s
}

fn throughput_panel(points: &[Point], workload: &str) -> Chart {
    let series = systems_of(points)
        .into_iter()
        .map(|sys| Series {
            name: sys.to_owned(),
            points: points
                .iter()
                .filter(|p| p.system == sys && p.workload == workload)
                .map(|p| (p.clients as f64, p.ops_per_s))
                .collect(),
        })
        .collect();
    Chart {
        title: format!("{workload}: throughput vs clients"),
        x_label: "clients".into(),
        y_label: "ops/s".into(),
        x_scale: Scale::Log,
        y_scale: Scale::Linear,
        series,
        scatter: false,
    }
}

fn cdf_panel(points: &[Point], workload: &str, clients: usize) -> Chart {
    let series = points
        .iter()
        .filter(|p| p.workload == workload && p.clients == clients)
        .map(|p| Series {
            name: p.system.clone(),
            points: p.cdf.clone(),
        })
        .collect();
    Chart {
        title: format!("{workload}: latency CDF at {clients} clients"),
        x_label: "latency (ms)".into(),
        y_label: "percentile".into(),
        x_scale: Scale::Log,
        y_scale: Scale::Linear,
        series,
        scatter: false,
    }
}

/// SVG of every workload: its throughput vs clients and its latency CDF at
/// the largest client count.
pub fn chart(points: &[Point]) -> String {
    let max_clients = points.iter().map(|p| p.clients).max().unwrap_or(1);
    let mut panels = Vec::new();
    for w in workloads_of(points) {
        panels.push(throughput_panel(points, w));
        panels.push(cdf_panel(points, w, max_clients));
    }
    crate::svg::stack(&panels, CHART_WIDTH_PX, CHART_PANEL_HEIGHT_PX)
}

/// SVG of one workload: throughput vs clients, then a latency CDF panel
/// per client count (one line per system).
pub fn workload_chart(points: &[Point], workload: &str) -> String {
    let mut clients: Vec<usize> = points
        .iter()
        .filter(|p| p.workload == workload)
        .map(|p| p.clients)
        .collect();
    clients.sort_unstable();
    clients.dedup();
    let mut panels = vec![throughput_panel(points, workload)];
    panels.extend(clients.into_iter().map(|c| cdf_panel(points, workload, c)));
    crate::svg::stack(&panels, CHART_WIDTH_PX, CHART_PANEL_HEIGHT_PX)
}

fn write_outputs(dir: &Path, points: &[Point]) -> Result<()> {
    let write = |name: &str, text: String| {
        let p = dir.join(name);
        std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))
    };
    write("results.csv", csv(points))?;
    write("results-cdf.csv", cdf_csv(points))?;
    write("results.md", markdown(points))?;
    write("chart.svg", chart(points))?;
    write(
        "results.json",
        serde_json::to_string_pretty(points).context("encoding results")?,
    )?;
    for w in workloads_of(points) {
        let mine: Vec<Point> = points.iter().filter(|p| p.workload == w).cloned().collect();
        write(&format!("{w}.csv"), csv(&mine))?;
        write(&format!("{w}-cdf.csv"), cdf_csv(&mine))?;
        write(&format!("{w}.md"), markdown_table(&mine, w))?;
        write(&format!("{w}.svg"), workload_chart(&mine, w))?;
    }
    Ok(())
}

/// Result of the failover measurement.
#[derive(Clone, Debug, Serialize)]
pub struct Failover {
    /// System label.
    pub system: String,
    /// Configured election timeout, ms.
    pub election_timeout_ms: u64,
    /// Time from each leader kill to the first successful write invoked
    /// after it, ms.
    pub recoveries_ms: Vec<f64>,
    /// Kills after which no write succeeded within the bound.
    pub unrecovered: usize,
}

impl Failover {
    fn pct(&self, q: f64) -> f64 {
        let mut v = self.recoveries_ms.clone();
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            return f64::NAN;
        }
        let idx = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
        v[idx]
    }
    /// Median recovery, ms.
    pub fn p50_ms(&self) -> f64 {
        self.pct(0.5)
    }
    /// 99th percentile recovery, ms (nearest rank).
    pub fn p99_ms(&self) -> f64 {
        self.pct(0.99)
    }
    /// Slowest recovery, ms.
    pub fn max_ms(&self) -> f64 {
        self.pct(1.0)
    }
    /// The target of issue 9: p99 recovery at most
    /// [`FAILOVER_TARGET_ELECTION_TIMEOUTS`] election timeouts, ms.
    pub fn target_ms(&self) -> f64 {
        FAILOVER_TARGET_ELECTION_TIMEOUTS * self.election_timeout_ms as f64
    }
    /// Whether every kill recovered and p99 is within [`target_ms`](Self::target_ms).
    pub fn meets_target(&self) -> bool {
        self.unrecovered == 0 && !self.recoveries_ms.is_empty() && self.p99_ms() <= self.target_ms()
    }
}

/// Failover target: p99 time from a leader kill to the first successful
/// write, in election timeouts.
pub const FAILOVER_TARGET_ELECTION_TIMEOUTS: f64 = 2.0;

/// Markdown table of failover results: percentiles, p99 in election
/// timeouts, and whether the target is met.
pub fn failover_markdown(results: &[Failover]) -> String {
    let mut s = String::from(
        "| system | election timeout ms | kills | recovered | p50 ms | p99 ms | max ms | p99 / election timeout | target p99 ≤ 2× |\n|---|---:|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for f in results {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.2} | {} |",
            f.system,
            f.election_timeout_ms,
            f.recoveries_ms.len() + f.unrecovered,
            f.recoveries_ms.len(),
            f.p50_ms(),
            f.p99_ms(),
            f.max_ms(),
            f.p99_ms() / f.election_timeout_ms.max(1) as f64,
            if f.meets_target() {
                "met"
            } else {
                "**not met**"
            }
        );
    }
    s
}

/// Per-write timeout during failover (a write stuck on the dead leader is
/// retried elsewhere after this long).
pub const FAILOVER_WRITE_TIMEOUT_MS: u64 = 300;
/// Longest one failover may take before it counts as unrecovered.
pub const FAILOVER_BOUND_MS: u64 = 30_000;

/// Default pause between "every member answers and a leader exists" and
/// the next kill, ms.
pub const FAILOVER_SETTLE_MS: u64 = 300;

/// Kills the leader `kills` times under a write load of `clients` writers
/// spread over all members and measures time to the first successful write
/// invoked after each kill. The killed member is restarted; before the next
/// kill the tool waits until every member answers and one leads, then
/// `settle_ms` more (a long settle separates failover from effects of the
/// previous restart that last a while, such as peers' stale connections).
pub async fn failover(
    kind: &ServerKind,
    opts: &BenchOptions,
    kills: usize,
    clients: usize,
    settle_ms: u64,
) -> Result<Failover> {
    let (mut cluster, _tmp) = start_cluster(
        kind,
        opts.nodes,
        &opts.ip_prefix,
        opts.base_port,
        opts.heartbeat_ms,
        opts.election_timeout_ms,
        opts.data_root.as_deref(),
    )
    .await?;
    let urls = cluster.client_urls();
    let epoch = Instant::now();
    // Latest completion time (ns since epoch) of a successful write invoked
    // after `kill_ns`.
    let kill_ns = Arc::new(AtomicU64::new(u64::MAX));
    let first_ok_ns = Arc::new(AtomicU64::new(u64::MAX));
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients_v = Vec::new();
    for u in &urls {
        clients_v.push(connect_one(u, FAILOVER_WRITE_TIMEOUT_MS).await?);
    }
    let mut tasks = Vec::new();
    for id in 0..clients.max(1) {
        let conns = clients_v.clone();
        let (kill_ns, first_ok_ns, stop) = (kill_ns.clone(), first_ok_ns.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut target = id % conns.len();
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                seq += 1;
                let invoked = epoch.elapsed().as_nanos() as u64;
                let mut c = conns[target].clone();
                let r = tokio::time::timeout(
                    Duration::from_millis(FAILOVER_WRITE_TIMEOUT_MS),
                    c.put(format!("bench/f/{id}"), value_of(id, seq), None),
                )
                .await;
                match r {
                    Ok(Ok(_)) => {
                        let done = epoch.elapsed().as_nanos() as u64;
                        if invoked >= kill_ns.load(Ordering::SeqCst) {
                            first_ok_ns.fetch_min(done, Ordering::SeqCst);
                        }
                    }
                    _ => {
                        target = (target + 1) % conns.len();
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            }
        }));
    }
    let mut result = Failover {
        system: kind.label(),
        election_timeout_ms: opts.election_timeout_ms,
        recoveries_ms: Vec::new(),
        unrecovered: 0,
    };
    let all: Vec<usize> = (0..opts.nodes).collect();
    let outcome: Result<()> = async {
        for k in 0..kills {
            if wait_ready(&urls, &all, READY_TIMEOUT_MS).await.is_none() {
                bail!("kill {k}: no leader with all members up within {READY_TIMEOUT_MS} ms");
            }
            // Let the load settle on the current leader.
            tokio::time::sleep(Duration::from_millis(settle_ms)).await;
            // The leader may have changed while settling.
            let Some(leader) = wait_ready(&urls, &all, READY_TIMEOUT_MS).await else {
                bail!("kill {k}: no leader with all members up within {READY_TIMEOUT_MS} ms");
            };
            first_ok_ns.store(u64::MAX, Ordering::SeqCst);
            let t_kill = epoch.elapsed().as_nanos() as u64;
            kill_ns.store(t_kill, Ordering::SeqCst);
            cluster.kill9(leader)?;
            let bound = Instant::now() + Duration::from_millis(FAILOVER_BOUND_MS);
            while first_ok_ns.load(Ordering::SeqCst) == u64::MAX && Instant::now() < bound {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let ok = first_ok_ns.load(Ordering::SeqCst);
            kill_ns.store(u64::MAX, Ordering::SeqCst);
            if ok == u64::MAX {
                result.unrecovered += 1;
                eprintln!("  kill {:2}: no write within {FAILOVER_BOUND_MS} ms", k + 1);
            } else {
                let ms = (ok - t_kill) as f64 / 1e6;
                eprintln!(
                    "  kill {:2}: leader {} → first write after {ms:.1} ms",
                    k + 1,
                    cluster.members()[leader].name
                );
                result.recoveries_ms.push(ms);
            }
            cluster.start(leader)?;
        }
        Ok(())
    }
    .await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    cluster.stop_all();
    outcome?;
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_pick_the_leader_or_the_others() {
        let urls: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        assert_eq!(Endpoints::All.pick(&urls, 1), urls);
        assert_eq!(Endpoints::Leader.pick(&urls, 1), vec!["b".to_string()]);
        assert_eq!(
            Endpoints::Followers.pick(&urls, 1),
            vec!["a".to_string(), "c".to_string()]
        );
        assert_eq!("followers".parse::<Endpoints>(), Ok(Endpoints::Followers));
        assert!("most".parse::<Endpoints>().is_err());
    }

    fn point(system: &str, clients: usize, ops_per_s: f64) -> Point {
        Point {
            system: system.into(),
            workload: "put",
            clients,
            ops: 10,
            errors: 0,
            first_error: None,
            seconds: 1.0,
            ops_per_s,
            p50_us: 1500,
            p99_us: 3000,
            p999_us: 4000,
            cdf: vec![(1.0, 50.0), (3.0, 99.0)],
        }
    }

    #[test]
    fn workload_names_round_trip() {
        for w in Workload::ALL {
            assert_eq!(w.name().parse::<Workload>(), Ok(w));
        }
        assert!("nope".parse::<Workload>().is_err());
    }

    #[test]
    fn markdown_reports_ratios_to_etcd() {
        let mut ha = point("ha-node/raft", 64, 3500.0);
        ha.p99_us = 1500;
        let pts = [point("etcd", 64, 1000.0), ha];
        let md = markdown(&pts);
        assert!(md.starts_with("### put\n"), "{md}");
        assert!(
            md.contains("| 64 | ha-node/raft | 3500 | 1.50 | 1.50 | 4.00 | 0 | 3.50× | 0.50× |"),
            "{md}"
        );
        assert!(
            md.contains("| 64 | etcd | 1000 | 1.50 | 3.00 | 4.00 | 0 | — | — |"),
            "{md}"
        );
        let c = csv(&pts);
        assert_eq!(c.lines().count(), 3);
        assert!(c.contains("ha-node/raft,put,64,10,0,1.000,3500.0,1500,1500,4000"));
    }

    #[test]
    fn tables_are_per_workload_and_sorted_by_clients() {
        let mut txn = point("etcd", 16, 5.0);
        txn.workload = "txn";
        let pts = [point("etcd", 64, 1.0), txn, point("etcd", 1, 2.0)];
        let md = markdown(&pts);
        let put_at = md.find("### put").unwrap_or(usize::MAX);
        let txn_at = md.find("### txn").unwrap_or(usize::MAX);
        assert!(put_at < txn_at && txn_at < md.len(), "{md}");
        let put = markdown_table(&pts, "put");
        let one = put.find("| 1 | etcd").unwrap_or(usize::MAX);
        let many = put.find("| 64 | etcd").unwrap_or(usize::MAX);
        assert!(one < many && many < put.len(), "{put}");
        assert!(!put.contains("| 16 |"), "{put}");
    }

    #[test]
    fn cdf_csv_has_a_row_per_percentile() {
        let c = cdf_csv(&[point("etcd", 1, 10.0)]);
        assert_eq!(c.lines().count(), 3);
        assert!(c.contains("etcd,put,1,99,3.000"), "{c}");
    }

    #[test]
    fn chart_has_a_panel_per_workload_and_a_cdf() {
        let mut txn = point("etcd", 64, 5.0);
        txn.workload = "txn";
        let pts = [point("etcd", 1, 10.0), point("etcd", 64, 100.0), txn];
        let svg = chart(&pts);
        assert!(svg.contains("put: throughput vs clients"));
        assert!(svg.contains("put: latency CDF at 64 clients"));
        assert!(svg.contains("txn: latency CDF at 64 clients"));
        let one = workload_chart(&pts, "put");
        assert!(one.contains("put: latency CDF at 1 clients"));
        assert!(one.contains("put: latency CDF at 64 clients"));
        assert!(!one.contains("txn"));
    }

    #[test]
    fn system_prefixes_are_disjoint_loopback_ranges() {
        assert_eq!(
            system_ip_prefix("127.0.10", 0).ok().as_deref(),
            Some("127.0.10")
        );
        assert_eq!(
            system_ip_prefix("127.0.10", 2).ok().as_deref(),
            Some("127.0.12")
        );
        assert!(system_ip_prefix("127.0.255", 1).is_err());
        assert!(system_ip_prefix("localhost", 0).is_err());
    }

    #[test]
    fn failover_percentiles_use_nearest_rank() {
        let f = Failover {
            system: "x".into(),
            election_timeout_ms: 1000,
            recoveries_ms: (1..=20).map(f64::from).collect(),
            unrecovered: 0,
        };
        assert_eq!(f.p50_ms(), 10.0);
        assert_eq!(f.p99_ms(), 20.0);
        assert_eq!(f.max_ms(), 20.0);
    }

    #[test]
    fn failover_target_is_two_election_timeouts() {
        let mut f = Failover {
            system: "ha-node/raft".into(),
            election_timeout_ms: 1000,
            recoveries_ms: vec![900.0, 1500.0, 2000.0],
            unrecovered: 0,
        };
        assert!(f.meets_target());
        let md = failover_markdown(std::slice::from_ref(&f));
        assert!(
            md.contains("| ha-node/raft | 1000 | 3 | 3 | 1500 | 2000 | 2000 | 2.00 | met |"),
            "{md}"
        );
        f.recoveries_ms.push(2001.0);
        assert!(!f.meets_target());
        f.recoveries_ms.pop();
        f.unrecovered = 1;
        assert!(!f.meets_target());
        assert!(failover_markdown(&[f]).contains("| 4 | 3 |"));
    }

    #[test]
    fn values_have_the_benchmark_size() {
        assert_eq!(value_of(3, 99).len(), VALUE_BYTES);
    }
}
