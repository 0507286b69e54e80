//! `ha-chaos`: local clusters, benchmarks and chaos runs over the etcd v3
//! API. Usually started by `cargo xtask cluster | bench | chaos`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};

use ha_chaos::bench::{self, BenchOptions, Workload};
use ha_chaos::chaos::{self, ChaosOptions, NemesisKind};
use ha_chaos::cluster_cmd::{self, ClusterOptions};
use ha_chaos::server::ServerKind;
use ha_chaos::shards::{self, ShardsOptions};
use ha_chaos::workload::Broken;

/// Local clusters, benchmarks and chaos runs for ha-node (and etcd).
#[derive(Parser, Debug)]
#[command(name = "ha-chaos", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Start a local cluster, show live status, stop on Ctrl-C.
    Cluster(ClusterArgs),
    /// Throughput/latency benchmark (or `bench failover`).
    Bench(BenchArgs),
    /// Faults + checked workloads; verdict and HTML report.
    Chaos(ChaosArgs),
    /// Shard failover: SIGKILL a member of a sharded ha-node cluster under
    /// load, wait for re-replication, check every write; add a new member
    /// and wait for its fair share.
    Shards(ShardsArgs),
}

#[derive(Args, Debug)]
struct ShardsArgs {
    /// Founding members.
    #[arg(long, default_value_t = 5)]
    members: usize,
    /// `--shards` of the members.
    #[arg(long, default_value_t = 16)]
    shards: u32,
    /// `--replication` of the members.
    #[arg(long, default_value_t = 3)]
    replication: usize,
    /// `--dead-after` of the members (e.g. `3s`).
    #[arg(long = "dead-after", default_value = "3s", value_parser = parse_duration_ms)]
    dead_after_ms: u64,
    /// `--join-after` of the members.
    #[arg(long = "join-after", default_value = "1s", value_parser = parse_duration_ms)]
    join_after_ms: u64,
    /// Bound on re-replication after dead-after (and on the new member's
    /// fair share after join-after).
    #[arg(long = "converge-timeout", default_value = "60s", value_parser = parse_duration_ms)]
    converge_timeout_ms: u64,
    /// Load before the kill.
    #[arg(long = "kill-after", default_value = "5s", value_parser = parse_duration_ms)]
    kill_after_ms: u64,
    /// Load kept running once every shard is fully replicated again (and
    /// after the new member's fair share).
    #[arg(long = "settle", default_value = "5s", value_parser = parse_duration_ms)]
    settle_ms: u64,
    /// Least load time before the first read-back (a longer run).
    #[arg(long = "duration", default_value = "15s", value_parser = parse_duration_ms)]
    duration_ms: u64,
    /// Member to kill (`n3`); default: chosen from the seed.
    #[arg(long)]
    victim: Option<String>,
    /// Skip adding a new member after the failover.
    #[arg(long)]
    no_join: bool,
    /// Seed of the victim choice and the clients.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Consensus protocol of ha-node.
    #[arg(long, default_value = "raft")]
    consensus: String,
    /// Register/CAS clients.
    #[arg(long, default_value_t = 5)]
    register_clients: u64,
    /// Set (append) clients.
    #[arg(long, default_value_t = 2)]
    set_clients: u64,
    /// Deliberate client-side fault the checks must catch:
    /// `ack-without-commit` or `stale-reads`.
    #[arg(long)]
    broken: Option<String>,
    /// Members listen on `<prefix>.<i>`.
    #[arg(long, default_value = "127.0.30")]
    loopback_prefix: String,
    /// Verdict, report and logs directory.
    #[arg(long, default_value = "target/ha-chaos-shards")]
    out_dir: PathBuf,
    #[command(flatten)]
    server_args: ServerArgs,
}

async fn shards_cmd(a: ShardsArgs) -> Result<bool> {
    let opts = ShardsOptions {
        kind: a.server_args.kind(Server::HaNode, &a.consensus),
        members: a.members,
        shards: a.shards,
        replication: a.replication,
        dead_after_ms: a.dead_after_ms,
        join_after_ms: a.join_after_ms,
        converge_timeout_ms: a.converge_timeout_ms,
        kill_after_ms: a.kill_after_ms,
        settle_ms: a.settle_ms,
        duration_ms: a.duration_ms,
        victim: a.victim.clone(),
        join: !a.no_join,
        seed: a.seed,
        register_clients: a.register_clients,
        set_clients: a.set_clients,
        broken: parse_broken(a.broken.as_deref())?,
        loopback_prefix: a.loopback_prefix.clone(),
        out_dir: a.out_dir.clone(),
        heartbeat_ms: a.server_args.heartbeat_ms,
        election_timeout_ms: a.server_args.election_timeout_ms,
    };
    eprintln!(
        "ha-chaos shards: {} members, --shards {} --replication {}, dead-after {} ms, seed {}",
        opts.members, opts.shards, opts.replication, opts.dead_after_ms, opts.seed
    );
    let v = tokio::select! {
        v = shards::run(&opts) => v?,
        _ = tokio::signal::ctrl_c() => bail!("interrupted; processes stopped"),
    };
    print!("{}", v.text(opts.join));
    println!("report: {}", a.out_dir.join("report.txt").display());
    Ok(v.ok(opts.join))
}

#[derive(Args, Debug)]
struct ChaosArgs {
    /// Workload time (e.g. `60s`, `1500ms`, `2m`).
    #[arg(long = "duration", default_value = "60s", value_parser = parse_duration_ms)]
    duration_ms: u64,
    /// Seed of the fault schedule and clients.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Consensus protocol of ha-node.
    #[arg(long, default_value = "raft")]
    consensus: String,
    /// Server to run.
    #[arg(long, value_enum, default_value = "ha-node")]
    server: Server,
    /// Members.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Fault kinds (comma separated): kill, pause, isolate-leader,
    /// majority-minority, one-way, bridge, membership.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "kill,pause,isolate-leader,majority-minority,one-way,bridge,membership"
    )]
    nemesis: Vec<String>,
    /// Register/CAS clients.
    #[arg(long, default_value_t = 5)]
    register_clients: u64,
    /// Set (append) clients.
    #[arg(long, default_value_t = 2)]
    set_clients: u64,
    /// Lock clients.
    #[arg(long, default_value_t = 3)]
    lock_clients: u64,
    /// Deliberate client-side fault the checks must catch:
    /// `ack-without-commit` or `stale-reads`.
    #[arg(long)]
    broken: Option<String>,
    /// Stay on loopback (process-level faults only) even as root.
    #[arg(long)]
    loopback: bool,
    /// Loopback members listen on `<prefix>.<i>` (without namespaces).
    #[arg(long, default_value = "127.0.20")]
    loopback_prefix: String,
    /// Report directory.
    #[arg(long, default_value = "target/ha-chaos")]
    out_dir: PathBuf,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    #[command(flatten)]
    server_args: ServerArgs,
}

/// Parses `60s`, `1500ms`, `2m` or a bare number of seconds into ms.
fn parse_duration_ms(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1000)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60_000)
    } else {
        (s, 1000)
    };
    num.trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .filter(|&ms| ms > 0)
        .ok_or_else(|| format!("`{s}` is not a duration like 60s, 1500ms or 2m"))
}

/// `--broken`: a deliberate client-side fault, or none.
fn parse_broken(s: Option<&str>) -> Result<Broken> {
    Ok(match s {
        None => Broken::None,
        Some("ack-without-commit") => Broken::AckWithoutCommit,
        Some("stale-reads") => Broken::StaleReads,
        Some(other) => bail!("unknown --broken `{other}` (known: ack-without-commit, stale-reads)"),
    })
}

async fn chaos_cmd(a: ChaosArgs) -> Result<bool> {
    let mix = a
        .nemesis
        .iter()
        .map(|k| k.parse::<NemesisKind>().map_err(anyhow::Error::msg))
        .collect::<Result<Vec<_>>>()?;
    let broken = parse_broken(a.broken.as_deref())?;
    let opts = ChaosOptions {
        kind: a.server_args.kind(a.server, &a.consensus),
        nodes: a.nodes,
        duration_ms: a.duration_ms,
        seed: a.seed,
        mix,
        register_clients: a.register_clients,
        set_clients: a.set_clients,
        lock_clients: a.lock_clients,
        broken,
        loopback: a.loopback,
        loopback_prefix: a.loopback_prefix.clone(),
        out_dir: a.out_dir.clone(),
        heartbeat_ms: a.server_args.heartbeat_ms,
        election_timeout_ms: a.server_args.election_timeout_ms,
        progress: !a.quiet,
    };
    eprintln!(
        "ha-chaos chaos: {} × {}, {} ms, seed {}, faults {}",
        opts.nodes,
        opts.kind,
        opts.duration_ms,
        opts.seed,
        a.nemesis.join(",")
    );
    let v = tokio::select! {
        v = chaos::run(&opts) => v?,
        _ = tokio::signal::ctrl_c() => bail!("interrupted; processes, namespaces and rules removed"),
    };
    println!("{}", v.summary());
    println!("network: {}", v.network);
    if !v.not_exercised.is_empty() {
        println!("faults never applied: {}", v.not_exercised.join(", "));
    }
    if let Some(ce) = &v.counterexample {
        println!("counter-example:\n{ce}");
    }
    println!("report: {}", a.out_dir.join("report.html").display());
    Ok(v.ok())
}

/// Which server to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Server {
    /// The ha-node binary.
    HaNode,
    /// Real etcd.
    Etcd,
}

#[derive(Args, Debug, Clone)]
struct ServerArgs {
    /// Path of the ha-node binary.
    #[arg(long, default_value = "ha-node")]
    ha_node_bin: PathBuf,
    /// Path of the etcd binary.
    #[arg(long, default_value = "etcd")]
    etcd_bin: PathBuf,
    /// Directory of the peer certificates `ha-node certs` wrote (ha-node only).
    #[arg(long)]
    certs_dir: Option<PathBuf>,
    /// `--heartbeat-interval` of the members, ms.
    #[arg(long, default_value_t = 100)]
    heartbeat_ms: u64,
    /// `--election-timeout` of the members, ms.
    #[arg(long, default_value_t = 1000)]
    election_timeout_ms: u64,
}

impl ServerArgs {
    fn kind(&self, server: Server, consensus: &str) -> ServerKind {
        match server {
            Server::HaNode => ServerKind::HaNode {
                binary: self.ha_node_bin.clone(),
                consensus: consensus.to_owned(),
                certs_dir: self.certs_dir.clone(),
                shards: 1,
            },
            Server::Etcd => ServerKind::Etcd {
                binary: self.etcd_bin.clone(),
            },
        }
    }
}

#[derive(Args, Debug)]
struct ClusterArgs {
    /// Members.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Consensus protocol of ha-node.
    #[arg(long, default_value = "raft")]
    consensus: String,
    /// Server to run.
    #[arg(long, value_enum, default_value = "ha-node")]
    server: Server,
    /// Members listen on `<ip-prefix>.<i>`.
    #[arg(long, default_value = "127.0.0")]
    ip_prefix: String,
    /// Client port (peer = +1, metrics = +2).
    #[arg(long, default_value_t = 2379)]
    base_port: u16,
    /// Root of the members' data directories.
    #[arg(long, default_value = "target/ha-cluster")]
    data_dir: PathBuf,
    /// Status refresh period, ms.
    #[arg(long, default_value_t = 1000)]
    refresh_ms: u64,
    /// Stop after this many status refreshes (default: run until Ctrl-C).
    #[arg(long)]
    max_refreshes: Option<u64>,
    #[command(flatten)]
    server_args: ServerArgs,
}

#[derive(Args, Debug)]
struct BenchArgs {
    /// `failover`: kill the leader repeatedly under load instead.
    #[arg(value_parser = ["failover"])]
    mode: Option<String>,
    /// Systems: `ha-node/raft`, `ha-node/paxos`, `etcd` (comma separated).
    #[arg(long, value_delimiter = ',', default_value = "ha-node/raft,etcd")]
    systems: Vec<String>,
    /// Workloads (comma separated): put, range-lin, range-ser, txn, lock.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "put,range-lin,range-ser,txn,lock"
    )]
    workloads: Vec<String>,
    /// Client counts (comma separated).
    #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
    clients: Vec<usize>,
    /// `ha-node --shards` values (comma separated): every ha-node system
    /// is measured once per value (labelled `ha-node/raft/s4`, ...), in the
    /// same run; 1 = one consensus group (the flag is not passed).
    #[arg(long, value_delimiter = ',', default_value = "1")]
    shards: Vec<u32>,
    /// Measured time per point, ms.
    #[arg(long, default_value_t = 2000)]
    duration_ms: u64,
    /// Warm-up per point, ms.
    #[arg(long, default_value_t = 500)]
    warmup_ms: u64,
    /// Members per cluster.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Members listen on `<ip-prefix>.<i>` (a loopback range of its own).
    #[arg(long, default_value = "127.0.10")]
    ip_prefix: String,
    /// Client port of the members.
    #[arg(long, default_value_t = 2379)]
    base_port: u16,
    /// Output directory (CSV, Markdown, SVG, JSON).
    #[arg(long, default_value = "target/ha-bench")]
    out_dir: PathBuf,
    /// Where member data goes (a temp dir is made inside; default: system temp).
    #[arg(long)]
    data_root: Option<PathBuf>,
    /// Members the clients connect to: `all` (round-robin over every
    /// member, like a client given all endpoints), `leader` or `followers`
    /// (found before each point; writes through a follower are forwarded).
    #[arg(long, default_value = "all")]
    endpoints: String,
    /// Failover: leader kills.
    #[arg(long, default_value_t = 20)]
    kills: usize,
    /// Failover: concurrent writers.
    #[arg(long, default_value_t = 16)]
    writers: usize,
    /// Failover: pause after the cluster is ready again before the next
    /// kill, ms.
    #[arg(long, default_value_t = bench::FAILOVER_SETTLE_MS)]
    settle_ms: u64,
    #[command(flatten)]
    server_args: ServerArgs,
}

fn parse_system(s: &str, args: &ServerArgs) -> Result<ServerKind> {
    match s.split_once('/') {
        Some(("ha-node", consensus)) => Ok(args.kind(Server::HaNode, consensus)),
        None if s == "ha-node" => Ok(args.kind(Server::HaNode, "raft")),
        None if s == "etcd" => Ok(args.kind(Server::Etcd, "")),
        _ => bail!("unknown system `{s}` (known: ha-node/raft, ha-node/paxos, etcd)"),
    }
}

async fn bench_cmd(a: BenchArgs) -> Result<()> {
    if a.shards.is_empty() || a.shards.contains(&0) {
        bail!("--shards must be positive each");
    }
    let systems = a
        .systems
        .iter()
        .map(|s| parse_system(s, &a.server_args))
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .flat_map(|kind| match kind {
            ServerKind::HaNode { .. } => a
                .shards
                .iter()
                .map(|n| {
                    let mut k = kind.clone();
                    if let ServerKind::HaNode { shards, .. } = &mut k {
                        *shards = *n;
                    }
                    k
                })
                .collect::<Vec<_>>(),
            other => vec![other],
        })
        .collect::<Vec<_>>();
    let workloads = a
        .workloads
        .iter()
        .map(|w| w.parse::<Workload>().map_err(anyhow::Error::msg))
        .collect::<Result<Vec<_>>>()?;
    if a.clients.is_empty() || a.clients.iter().any(|&c| c == 0 || c > bench::MAX_CLIENTS) {
        bail!("--clients must be 1..={} each", bench::MAX_CLIENTS);
    }
    if a.duration_ms == 0 {
        bail!("--duration-ms must be positive");
    }
    let opts = BenchOptions {
        systems: systems.clone(),
        workloads,
        clients: a.clients.clone(),
        duration_ms: a.duration_ms,
        warmup_ms: a.warmup_ms,
        nodes: a.nodes,
        ip_prefix: a.ip_prefix.clone(),
        base_port: a.base_port,
        out_dir: a.out_dir.clone(),
        heartbeat_ms: a.server_args.heartbeat_ms,
        election_timeout_ms: a.server_args.election_timeout_ms,
        data_root: a.data_root.clone(),
        endpoints: a.endpoints.parse().map_err(anyhow::Error::msg)?,
    };
    if a.mode.as_deref() == Some("failover") {
        std::fs::create_dir_all(&a.out_dir)
            .with_context(|| format!("creating {}", a.out_dir.display()))?;
        let mut all = Vec::new();
        for kind in &systems {
            eprintln!("ha-chaos bench failover: {kind}, {} kills", a.kills);
            let f = tokio::select! {
                f = bench::failover(kind, &opts, a.kills, a.writers, a.settle_ms) => f?,
                _ = tokio::signal::ctrl_c() => bail!("interrupted"),
            };
            all.push(f);
        }
        let md = bench::failover_markdown(&all);
        std::fs::write(a.out_dir.join("failover.md"), &md)?;
        std::fs::write(
            a.out_dir.join("failover.json"),
            serde_json::to_string_pretty(&all)?,
        )?;
        println!("{md}");
        println!("written to {}", a.out_dir.join("failover.md").display());
        return Ok(());
    }
    let points = bench::run(&opts).await?;
    println!("{}", bench::markdown(&points));
    println!(
        "written: {}/{{results.csv,results-cdf.csv,results.md,chart.svg,results.json}} and <workload>.{{csv,md,svg}}",
        a.out_dir.display()
    );
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ha-chaos: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        match cli.cmd {
            Cmd::Cluster(a) => {
                cluster_cmd::run(ClusterOptions {
                    kind: a.server_args.kind(a.server, &a.consensus),
                    nodes: a.nodes,
                    ip_prefix: a.ip_prefix,
                    base_port: a.base_port,
                    data_dir: a.data_dir,
                    heartbeat_ms: a.server_args.heartbeat_ms,
                    election_timeout_ms: a.server_args.election_timeout_ms,
                    refresh_ms: a.refresh_ms,
                    max_refreshes: a.max_refreshes,
                })
                .await
            }
            Cmd::Bench(a) => bench_cmd(a).await,
            Cmd::Chaos(a) => match chaos_cmd(a).await {
                Ok(true) => Ok(()),
                Ok(false) => return Ok(ExitCode::from(2)),
                Err(e) => Err(e),
            },
            Cmd::Shards(a) => match shards_cmd(a).await {
                Ok(true) => Ok(()),
                Ok(false) => return Ok(ExitCode::from(2)),
                Err(e) => Err(e),
            },
        }
        .map(|()| ExitCode::SUCCESS)
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ha-chaos: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
