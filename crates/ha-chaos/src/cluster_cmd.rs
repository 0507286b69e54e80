//! `ha-chaos cluster`: start a local cluster, print how to reach it, show
//! live status, and stop everything on Ctrl-C.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::server::{Cluster, ClusterConfig, MemberState, ServerKind, layout};
use crate::status::{all_status, wait_ready};

/// `--initial-cluster-token` of `ha-chaos cluster` (fixed, so a restart
/// over the same data directory resumes the same cluster).
pub const CLUSTER_TOKEN: &str = "ha-cluster";

/// Longest the cluster may take to elect a first leader.
pub const CLUSTER_READY_TIMEOUT_MS: u64 = 30_000;

/// Options of `ha-chaos cluster`.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// Server and protocol.
    pub kind: ServerKind,
    /// Member count.
    pub nodes: usize,
    /// First three octets of the member addresses.
    pub ip_prefix: String,
    /// Client port (peer = +1, metrics = +2).
    pub base_port: u16,
    /// Root of the member data directories.
    pub data_dir: PathBuf,
    /// `--heartbeat-interval` in milliseconds.
    pub heartbeat_ms: u64,
    /// `--election-timeout` in milliseconds.
    pub election_timeout_ms: u64,
    /// Status refresh period in milliseconds.
    pub refresh_ms: u64,
    /// Stop after this many refreshes (`None`: until Ctrl-C).
    pub max_refreshes: Option<u64>,
}

/// Runs the cluster until Ctrl-C (or `max_refreshes`), then stops it.
pub async fn run(opts: ClusterOptions) -> Result<()> {
    let members = layout(opts.nodes, &opts.ip_prefix, opts.base_port, &opts.data_dir)?;
    let cfg = ClusterConfig {
        kind: opts.kind.clone(),
        members,
        token: CLUSTER_TOKEN.to_owned(),
        heartbeat_ms: opts.heartbeat_ms,
        election_timeout_ms: opts.election_timeout_ms,
        log_dir: opts.data_dir.join("logs"),
        log_level: "warn".into(),
    };
    // Fresh peer certificates every start (ha-node only; ids derive from the
    // member names and the token).
    let certs = opts.data_dir.join("certs");
    if certs.exists() {
        std::fs::remove_dir_all(&certs).with_context(|| format!("removing {}", certs.display()))?;
    }
    let mut cluster = Cluster::new(cfg)?;
    // A leftover data directory from another server kind would not start.
    cluster.start_all().context("starting members")?;
    let urls = cluster.client_urls();
    let all: Vec<usize> = (0..opts.nodes).collect();
    let ready = tokio::select! {
        r = wait_ready(&urls, &all, CLUSTER_READY_TIMEOUT_MS) => r,
        _ = tokio::signal::ctrl_c() => { cluster.stop_all(); return Ok(()); }
    };
    if ready.is_none() {
        let mut tails = String::new();
        for i in 0..opts.nodes {
            let state = cluster.state(i);
            tails.push_str(&format!(
                "--- {} ({state:?}) log tail:\n{}\n",
                cluster.members()[i].name,
                cluster.log_tail(i, 1500)
            ));
        }
        cluster.stop_all();
        bail!(
            "no leader within {CLUSTER_READY_TIMEOUT_MS} ms; logs in {}\n{tails}",
            opts.data_dir.join("logs").display()
        );
    }
    println!("cluster of {} {} members is up:", opts.nodes, opts.kind);
    for m in cluster.members() {
        println!(
            "  {:4} client {}  peer {}  metrics {}/metrics  data {}",
            m.name,
            m.client_url(),
            m.peer_url(),
            m.metrics_url(),
            m.data_dir.display()
        );
    }
    println!(
        "try:\n  etcdctl --endpoints={} put hello world\n  etcdctl --endpoints={} get hello\n  etcdctl --endpoints={} endpoint status -w table",
        urls.join(","),
        urls.join(","),
        urls.join(",")
    );
    println!(
        "logs in {}; Ctrl-C stops every member",
        opts.data_dir.join("logs").display()
    );
    let mut refreshes = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(opts.refresh_ms.max(100)));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::signal::ctrl_c() => break,
        }
        let st = all_status(&urls).await;
        let mut line = String::new();
        for (i, s) in st.iter().enumerate() {
            let state = cluster.state(i);
            let name = &cluster.members()[i].name;
            match s {
                Ok(s) => line.push_str(&format!(
                    "{name}{} term {} index {} applied {} | ",
                    if s.is_leader() { "*" } else { " " },
                    s.term,
                    s.raft_index,
                    s.applied_index
                )),
                Err(_) if state == MemberState::Down => {
                    line.push_str(&format!("{name}  exited (see log) | "))
                }
                Err(_) => line.push_str(&format!("{name}  not answering | ")),
            }
        }
        print!("\r{}(* = leader)   ", line);
        let _ = std::io::stdout().flush();
        refreshes += 1;
        if opts.max_refreshes.is_some_and(|m| refreshes >= m) {
            break;
        }
    }
    println!("\nstopping {} members…", opts.nodes);
    cluster.stop_all();
    println!("stopped");
    Ok(())
}
