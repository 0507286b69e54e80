//! `ha-node`: the replicated coordination service.
//!
//! `ha-node` with no arguments starts a single-member cluster with data in
//! `./ha-data`, clients on 127.0.0.1:2379 and the peer port on
//! 127.0.0.1:2380, like `etcd`. `ha-node --help` lists every setting (flags,
//! `HA_*` environment variables, or a TOML `--config-file`);
//! `ha-node certs --nodes 3 --out certs` writes a dev CA and member
//! certificates.
//!
//! Adding a member (etcd's flow, with one more step for its certificate):
//!
//! ```text
//! etcdctl member add n4 --peer-urls=https://10.0.0.4:2380
//!   → Member 5a3c1b2e added to cluster …   (a fresh id, never used before)
//! ha-node certs --ca-dir certs --member-ids 5a3c1b2e --out certs \
//!   --initial-cluster-token TOKEN           → certs/member-5a3c1b2e.pem
//! ha-node --name n4 --initial-cluster-state existing --initial-cluster … \
//!   --peer-cert-file certs/member-5a3c1b2e.pem …   (empty data dir)
//! ```
//!
//! The joining member takes its id from the certificate (or `--member-id`)
//! and records it in its data dir; a data dir or certificate of another id
//! is refused at start. A removed member's id is never admitted again.
//!
//! Exit codes: 0 after a clean shutdown (SIGTERM / Ctrl-C), 2 for invalid
//! settings, 1 for any other failure (port in use, data dir of another
//! cluster, storage errors, a shutdown that did not finish within
//! [`SHUTDOWN_DEADLINE_MS`]).
//!
//! Shutdown is bounded: client calls get [`API_DRAIN_MS`] to finish; then
//! the node stops under those still waiting (a write or membership change
//! that cannot commit, e.g. on a member whose peers are gone), which
//! answers them; past [`SHUTDOWN_DEADLINE_MS`] in all the process exits
//! anyway.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use ha_node::api::{self, ApiConfig};
use ha_node::certs::{self, CertsArgs};
use ha_node::cluster::NodeConfig;
use ha_node::config::{ClusterState, Config, PeerTls, Settings};
use ha_node::lock_node::{LockNode, LockNodeConfig};
use ha_node::metrics::Metrics;
use ha_node::{datadir, http};

/// How long in-flight client calls may take to finish after SIGTERM before
/// the node stops under them, in milliseconds.
const API_DRAIN_MS: u64 = 5_000;
/// Bound on the whole shutdown after SIGTERM (client calls, node, transport,
/// store), in milliseconds; past it the process exits with code 1.
const SHUTDOWN_DEADLINE_MS: u64 = 15_000;
/// How long the runtime waits for tasks still running once the shutdown
/// returned (e.g. a blocking call), in milliseconds.
const RUNTIME_STOP_MS: u64 = 1_000;

#[derive(Parser, Debug)]
#[command(
    name = "ha-node",
    version,
    about = "Replicated coordination service (etcd v3 compatible)",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// TOML file with settings named like the flags (e.g. `data-dir = "/var/lib/ha"`).
    #[arg(long, env = "HA_CONFIG_FILE")]
    config_file: Option<PathBuf>,
    #[command(flatten)]
    settings: Settings,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Generate a development CA and one peer certificate per member.
    Certs(CertsArgs),
    /// Inspect a running member.
    #[command(subcommand)]
    Ctl(CtlCommand),
}

#[derive(Subcommand, Debug)]
enum CtlCommand {
    /// The shard map (shard -> voters -> learners -> leader), replicas per
    /// member and moves in progress, read from a member's metrics listener.
    Shards {
        /// The member's `--listen-metrics-urls` endpoint.
        #[arg(long, default_value = "http://127.0.0.1:2381")]
        endpoint: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Certs(args)) => run_certs(&args),
        Some(Command::Ctl(CtlCommand::Shards { endpoint })) => {
            match ha_node::ctl::http_get(&endpoint, "/shards")
                .and_then(|t| ha_node::ctl::parse_shards(&t))
            {
                Ok(page) if page.shards.is_empty() => {
                    eprintln!(
                        "ha-node ctl shards: {endpoint} lists no data shards (--shards 1, or the map is not known yet)"
                    );
                    ExitCode::FAILURE
                }
                Ok(page) => {
                    print!("{}", ha_node::ctl::render(&page));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("ha-node ctl shards: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        None => run_node(cli.config_file, cli.settings),
    }
}

fn run_certs(args: &CertsArgs) -> ExitCode {
    match certs::generate(args) {
        Ok(issued) => {
            println!(
                "wrote {} (cluster CA; keep ca-key.pem off the members)",
                args.out.join("ca.pem").display()
            );
            for m in issued {
                println!(
                    "member {:<12} id {:>16x}  --peer-cert-file {} --peer-key-file {}",
                    m.name,
                    m.id.0,
                    m.cert.display(),
                    m.key.display()
                );
            }
            println!(
                "start each member with --name <member> --initial-cluster-token {} --peer-trusted-ca-file {}",
                args.initial_cluster_token,
                args.out.join("ca.pem").display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ha-node certs: {e}");
            ExitCode::FAILURE
        }
    }
}

fn resolve(config_file: Option<PathBuf>, settings: Settings) -> Result<Config, String> {
    let merged = match config_file {
        Some(path) => settings.or(Settings::from_file(&path).map_err(|e| e.to_string())?),
        None => settings,
    };
    merged.resolve().map_err(|e| e.to_string())
}

fn run_node(config_file: Option<PathBuf>, settings: Settings) -> ExitCode {
    let cfg = match resolve(config_file, settings) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ha-node: {e}");
            return ExitCode::from(2);
        }
    };
    let filter = match tracing_subscriber::EnvFilter::try_new(&cfg.log_level) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("ha-node: invalid --log-level: {e}");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("ha-node: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The id of a member joining an existing cluster: what its data dir
/// records, what its peer certificate names and what `--member-id` says —
/// all that are present must agree (a data dir of another member, or a
/// certificate of another id, is refused before anything starts).
fn joining_member_id(cfg: &Config) -> Result<ha_core::NodeId, String> {
    let mut found: Vec<(String, u64)> = Vec::new();
    if let Some(id) = datadir::read_member_id(&cfg.data_dir).map_err(|e| e.to_string())? {
        found.push((format!("data dir {}", cfg.data_dir.display()), id));
    }
    if let PeerTls::Files { cert, .. } = &cfg.peer_tls {
        let id = certs::cert_member_id(cert).map_err(|e| e.to_string())?;
        found.push((format!("certificate {}", cert.display()), id.0));
    }
    if cfg.member_id.0 != 0 {
        found.push(("--member-id".to_string(), cfg.member_id.0));
    }
    match found.first() {
        None => Err(
            "--initial-cluster-state existing: this member's id is unknown; give the id              `member add` printed as --member-id, or a peer certificate issued for it              (`ha-node certs --ca-dir DIR --member-ids ID`)"
                .to_string(),
        ),
        Some((_, id)) => match found.iter().find(|(_, other)| other != id) {
            Some(_) => Err(format!(
                "conflicting member ids: {}; a member added again gets a new id: use an                  empty data dir and a certificate for the new id",
                found
                    .iter()
                    .map(|(what, id)| format!("{what} says {id:x}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            None => Ok(ha_core::NodeId(*id)),
        },
    }
}

fn run(mut cfg: Config) -> Result<(), String> {
    if cfg.initial_cluster_state == ClusterState::Existing {
        cfg.member_id = joining_member_id(&cfg)?;
    }
    let cluster_id = match cfg.initial_cluster_state {
        ClusterState::New => cfg.cluster_id,
        ClusterState::Existing => 0,
    };
    let layout = if cfg.shards > 1 {
        datadir::ShardLayout {
            shards: cfg.shards,
            replication: cfg.replication,
            // A joining member learns the map from group 0.
            members: match cfg.initial_cluster_state {
                ClusterState::New => cfg
                    .initial_cluster
                    .iter()
                    .map(|m| ha_node::ids::member_id(&cfg.token, &m.name).0)
                    .collect(),
                ClusterState::Existing => Vec::new(),
            },
        }
    } else {
        datadir::ShardLayout::single()
    };
    let (fresh, layout) = datadir::check_or_init_layout(
        &cfg.data_dir,
        &cfg.token,
        cluster_id,
        cfg.member_id.0,
        &cfg.name,
        &layout,
    )
    .map_err(|e| e.to_string())?;
    let sharding = (layout.shards > 1)
        .then(|| -> Result<_, String> {
            Ok(ha_node::cluster::hosting::ShardingConfig {
                shards: layout.shards,
                replication: layout.replication,
                founding: shard_map_of(&layout)?,
                controller: ha_shard::controller::ControllerConfig {
                    dead_after_ms: cfg.dead_after_ms,
                    join_after_ms: cfg.join_after_ms,
                    ..Default::default()
                },
            })
        })
        .transpose()?;
    let identity = match &cfg.peer_tls {
        PeerTls::Files { ca, cert, key } => {
            certs::load_identity(cfg.member_id, ca, cert, key).map_err(|e| e.to_string())?
        }
        PeerTls::InsecureDev => {
            tracing::warn!(
                "--peer-insecure-dev-tls: peer certificates come from a CA derived from the cluster \
                 token; anyone who knows the token can join this cluster. Development only."
            );
            certs::insecure_dev_identity(&cfg.token, cfg.member_id).map_err(|e| e.to_string())?
        }
        PeerTls::SoloDev => {
            tracing::info!(
                "single-member cluster without peer TLS files: using a development peer identity; \
                 give --peer-trusted-ca-file/--peer-cert-file/--peer-key-file before adding members"
            );
            certs::insecure_dev_identity(&cfg.token, cfg.member_id).map_err(|e| e.to_string())?
        }
    };
    #[cfg(not(feature = "rocksdb"))]
    {
        // A member that forgot its votes and log must not come back under
        // the same id: it could vote twice in a term.
        if !fresh {
            return Err(format!(
                "built without rocksdb, this member kept its log in memory and lost it; it cannot \
                 restart on {} under the same id: remove the data dir and add the member again",
                cfg.data_dir.display()
            ));
        }
        tracing::warn!("built without rocksdb: the log is kept in memory and lost on exit");
    }
    tracing::info!(
        name = %cfg.name,
        member = %format!("{:x}", cfg.member_id.0),
        cluster = %format!("{:x}", cfg.cluster_id),
        data_dir = %cfg.data_dir.display(),
        new_data_dir = fresh,
        "starting"
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the tokio runtime: {e}"))?;
    let result = rt.block_on(serve(cfg, identity, sharding));
    // Whatever is still running (a blocking call, a task that did not
    // stop) does not hold the exit up.
    rt.shutdown_timeout(Duration::from_millis(RUNTIME_STOP_MS));
    result
}

/// The founding placement of a sharded cluster: computed from the founding
/// members recorded in the data dir, so it is the same on every founding
/// member and after every restart (`None` with one shard, and for a member
/// that joined later: it learns the replicated map from group 0).
fn shard_map_of(layout: &datadir::ShardLayout) -> Result<Option<ha_shard::ShardMap>, String> {
    if layout.shards <= 1 || layout.members.is_empty() {
        return Ok(None);
    }
    let cluster = ha_ring::Cluster::new(
        layout
            .members
            .iter()
            .map(|id| ha_ring::NodeSpec::new(ha_core::NodeId(*id))),
    )
    .map_err(|e| format!("shard placement: {e}"))?;
    ha_shard::ShardMap::new(u64::from(layout.shards), layout.replication, &cluster)
        .map(Some)
        .map_err(|e| format!("shard placement: {e}"))
}

async fn serve(
    cfg: Config,
    identity: ha_transport_quic::NodeIdentity,
    sharding: Option<ha_node::cluster::hosting::ShardingConfig>,
) -> Result<(), String> {
    // Bind every listener before starting the replica so that a port in use
    // fails fast with the setting's name.
    let mut client_listeners = Vec::new();
    for addr in &cfg.listen_client {
        client_listeners.push(http::bind(*addr, "--listen-client-urls").await?);
    }
    let mut metrics_listeners = Vec::new();
    for addr in &cfg.listen_metrics {
        metrics_listeners.push(http::bind(*addr, "--listen-metrics-urls").await?);
    }
    let metrics = Arc::new(Metrics::new());
    if let Some(s) = &sharding {
        tracing::info!(
            shards = s.shards,
            replication = s.replication,
            founding = s.founding.is_some(),
            dead_after_ms = s.controller.dead_after_ms,
            join_after_ms = s.controller.join_after_ms,
            "sharded"
        );
    }
    let node = LockNode::start_sharded(
        NodeConfig::from_config(&cfg, identity),
        LockNodeConfig::default(),
        Arc::clone(&metrics),
        sharding,
    )
    .await
    .map_err(|e| e.to_string())?;
    let backend = node.backend();

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut api_servers = Vec::new();
    for l in client_listeners {
        let mut stop = stop_rx.clone();
        api_servers.push(tokio::spawn(api::serve(
            Arc::clone(&backend),
            ApiConfig::default(),
            l,
            async move {
                let _ = stop.wait_for(|s| *s).await;
            },
        )));
    }
    let mut http_servers = Vec::new();
    for l in metrics_listeners {
        let router = http::router(Arc::clone(&metrics));
        http_servers.push(tokio::spawn(http::serve(l, router, stop_rx.clone())));
    }
    tracing::info!(
        clients = %cfg.listen_client_urls.join(","),
        metrics = ?cfg.listen_metrics,
        "ready"
    );

    wait_for_signal().await?;
    tracing::info!("shutting down");
    stop_tx.send_replace(true);
    let drain = shut_down(node, backend, api_servers, http_servers);
    match tokio::time::timeout(Duration::from_millis(SHUTDOWN_DEADLINE_MS), drain).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "shutdown did not finish within {SHUTDOWN_DEADLINE_MS} ms; exiting without it"
        )),
    }
}

/// After the stop signal went out: stop accepting, end open streams and let
/// in-flight calls finish for [`API_DRAIN_MS`], then drain the replica and
/// the transport. The node's shutdown answers the calls still waiting on
/// it (a write that cannot commit without the members that are gone);
/// waiting for them first would wait forever.
async fn shut_down(
    node: LockNode,
    backend: Arc<ha_node::lock_node::NodeBackend>,
    api_servers: Vec<tokio::task::JoinHandle<Result<(), api::ServeError>>>,
    http_servers: Vec<tokio::task::JoinHandle<std::io::Result<()>>>,
) -> Result<(), String> {
    let drained_by = tokio::time::Instant::now() + Duration::from_millis(API_DRAIN_MS);
    // Servers not finished by then (a finished task must not be polled again).
    let mut still_running = Vec::new();
    for mut s in api_servers {
        if !still_running.is_empty() {
            still_running.push(s);
            continue;
        }
        match tokio::time::timeout_at(drained_by, &mut s).await {
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "client API server"),
            Ok(Err(e)) => tracing::warn!(error = %e, "client API server task"),
            Ok(Ok(Ok(()))) => {}
            Err(_) => {
                tracing::warn!(
                    "client calls still in flight after {API_DRAIN_MS} ms; stopping the node under them"
                );
                still_running.push(s);
            }
        }
    }
    for mut s in http_servers {
        if tokio::time::timeout_at(drained_by, &mut s).await.is_err() {
            s.abort();
        }
    }
    drop(backend);
    let result = node.shutdown().await.map_err(|e| format!("shutdown: {e}"));
    // The node answered every call still waiting on it: the servers end.
    let ended_by = tokio::time::Instant::now() + Duration::from_millis(RUNTIME_STOP_MS);
    for mut s in still_running {
        if tokio::time::timeout_at(ended_by, &mut s).await.is_err() {
            s.abort();
        }
    }
    result
}

async fn wait_for_signal() -> Result<(), String> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term =
            signal(SignalKind::terminate()).map_err(|e| format!("cannot watch SIGTERM: {e}"))?;
        tokio::select! {
            _ = term.recv() => {}
            r = tokio::signal::ctrl_c() => r.map_err(|e| format!("cannot watch Ctrl-C: {e}"))?,
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c()
        .await
        .map_err(|e| format!("cannot watch Ctrl-C: {e}"))?;
    Ok(())
}
