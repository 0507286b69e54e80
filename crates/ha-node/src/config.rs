//! Command line, environment and config-file settings of `ha-node`, and
//! their validation.
//!
//! Every setting has one name used three ways: the flag `--data-dir`, the
//! environment variable `HA_DATA_DIR`, and the TOML key `data-dir` in the
//! file given by `--config-file`. Precedence: flag > environment > file >
//! built-in default. Names follow etcd where etcd has the setting.
//! [`Settings::resolve`] turns the merged settings into a validated
//! [`Config`]; every refusal names the setting and says what is wrong.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use ha_core::NodeId;
use serde::Deserialize;

use crate::ids;

/// Largest config file read, in bytes.
pub const MAX_CONFIG_FILE_BYTES: u64 = 1 << 20;
/// Longest member name, in bytes.
pub const MAX_NAME_BYTES: usize = 64;
/// Longest cluster token, in bytes.
pub const MAX_TOKEN_BYTES: usize = 256;
/// Longest URL, in bytes.
pub const MAX_URL_BYTES: usize = 256;
/// Most URLs in one list setting (or per member in `--initial-cluster`).
pub const MAX_URLS: usize = 8;
/// Most members in `--initial-cluster`.
pub const MAX_INITIAL_MEMBERS: usize = 64;
/// Largest `--heartbeat-interval`, in milliseconds.
pub const MAX_HEARTBEAT_INTERVAL_MS: u64 = 10_000;
/// Largest `--election-timeout`, in milliseconds (etcd's limit).
pub const MAX_ELECTION_TIMEOUT_MS: u64 = 50_000;
/// Default cluster token.
pub const DEFAULT_TOKEN: &str = "ha-cluster";
/// Default `--snapshot-count` (etcd's name): applied entries between two
/// snapshots, each of which lets the log be purged.
pub const DEFAULT_SNAPSHOT_COUNT: u64 = 10_000;
/// Largest `--shards` a node accepts: every shard is one replica (driver
/// task, protocol state, timers) on each member hosting it.
pub const MAX_NODE_SHARDS: u32 = 256;
/// Largest `--snapshot-count`.
pub const MAX_SNAPSHOT_COUNT: u64 = 100_000_000;
/// Default `--snapshot-catchup-entries` (etcd's name and default): entries
/// kept in the log behind a snapshot so that a slightly lagging member
/// catches up from the log rather than by a whole snapshot.
pub const DEFAULT_SNAPSHOT_CATCHUP_ENTRIES: u64 = 5_000;
/// Largest `--snapshot-catchup-entries`.
pub const MAX_SNAPSHOT_CATCHUP_ENTRIES: u64 = 100_000_000;

/// Why the settings were refused. Nothing was started.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A setting has a bad value.
    #[error("invalid --{field}: {reason}")]
    Invalid {
        /// The setting's name (flag without dashes).
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The config file could not be read.
    #[error("cannot read config file {path}: {error}")]
    FileRead {
        /// The file.
        path: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
    /// The config file is not valid TOML of the expected shape.
    #[error("config file {path}: {error}")]
    FileParse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        error: String,
    },
    /// The config file is larger than [`MAX_CONFIG_FILE_BYTES`].
    #[error("config file {path} is {size} bytes, more than the limit of {MAX_CONFIG_FILE_BYTES}")]
    FileTooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// The settings as given (flags and environment through clap, or a TOML
/// file); every field optional so that sources can be layered.
#[derive(clap::Args, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Settings {
    /// Human-readable name of this member (default "default").
    #[arg(long, env = "HA_NAME")]
    pub name: Option<String>,
    /// Directory for the log, state and member identity (default ./ha-data).
    #[arg(long, env = "HA_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Comma-separated URLs to serve clients on (default http://127.0.0.1:2379).
    #[arg(long, env = "HA_LISTEN_CLIENT_URLS")]
    pub listen_client_urls: Option<String>,
    /// Comma-separated client URLs advertised to the cluster (default: the listen URLs).
    #[arg(long, env = "HA_ADVERTISE_CLIENT_URLS")]
    pub advertise_client_urls: Option<String>,
    /// The URL to listen on for peers (QUIC/UDP; default https://127.0.0.1:2380).
    #[arg(long, env = "HA_LISTEN_PEER_URLS")]
    pub listen_peer_urls: Option<String>,
    /// Comma-separated peer URLs advertised to the cluster (default: the listen URL).
    #[arg(long, env = "HA_INITIAL_ADVERTISE_PEER_URLS")]
    pub initial_advertise_peer_urls: Option<String>,
    /// Founding members, `name=url,name=url,...` (default: this member alone).
    #[arg(long, env = "HA_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,
    /// `new` to found a cluster, `existing` to join one (default new).
    #[arg(long, env = "HA_INITIAL_CLUSTER_STATE")]
    pub initial_cluster_state: Option<String>,
    /// Cluster token: distinguishes clusters founded from the same member list.
    #[arg(long, env = "HA_INITIAL_CLUSTER_TOKEN")]
    pub initial_cluster_token: Option<String>,
    /// With `--initial-cluster-state existing`: this member's id (hex) as
    /// `member add` printed it. Optional: a joining member also takes its id
    /// from its data dir or its peer certificate; all that are given must
    /// agree.
    #[arg(long, env = "HA_MEMBER_ID")]
    pub member_id: Option<String>,
    /// Consensus protocol: raft or paxos (default raft; must be compiled in).
    #[arg(long, env = "HA_CONSENSUS")]
    pub consensus: Option<String>,
    /// Leader heartbeat interval in milliseconds (default 100).
    #[arg(long, env = "HA_HEARTBEAT_INTERVAL")]
    pub heartbeat_interval: Option<u64>,
    /// Election timeout in milliseconds (default 1000, at least 5
    /// heartbeats). A follower that hears no leader campaigns after a
    /// random time in [timeout, 1.5 × timeout).
    #[arg(long, env = "HA_ELECTION_TIMEOUT")]
    pub election_timeout: Option<u64>,
    /// Applied entries between two snapshots of the state (each lets the
    /// log be purged up to it, less --snapshot-catchup-entries); default
    /// 10000, 1..=100000000.
    #[arg(long, env = "HA_SNAPSHOT_COUNT")]
    pub snapshot_count: Option<u64>,
    /// Entries kept in the log behind a snapshot, so that a slow member
    /// catches up from the log instead of receiving a whole snapshot;
    /// default 5000, 0..=100000000.
    #[arg(long, env = "HA_SNAPSHOT_CATCHUP_ENTRIES")]
    pub snapshot_catchup_entries: Option<u64>,
    /// Data shards (consensus groups) the key space is split into, fixed
    /// at cluster creation (default 1: one group holds everything, as in
    /// etcd; 1..=256).
    #[arg(long, env = "HA_SHARDS")]
    pub shards: Option<u32>,
    /// Replicas of each data shard with `--shards` > 1, fixed at cluster
    /// creation (default min(3, founding members); at most the founding
    /// member count and 7). Not accepted with `--shards 1`.
    #[arg(long, env = "HA_REPLICATION")]
    pub replication: Option<usize>,
    /// With `--shards` > 1: ms without a frame from a member before the
    /// placement controller moves its replicas to other members (default
    /// 30000; 100..=604800000).
    #[arg(long, env = "HA_DEAD_AFTER")]
    pub dead_after: Option<u64>,
    /// With `--shards` > 1: ms a new (or returning) member must be heard
    /// without a gap before it receives replicas (default 10000;
    /// 0..=604800000).
    #[arg(long, env = "HA_JOIN_AFTER")]
    pub join_after: Option<u64>,
    /// PEM file of the cluster CA peers' certificates must chain to.
    #[arg(long, env = "HA_PEER_TRUSTED_CA_FILE")]
    pub peer_trusted_ca_file: Option<PathBuf>,
    /// PEM certificate of this member (must name its node id, see `ha-node certs`).
    #[arg(long, env = "HA_PEER_CERT_FILE")]
    pub peer_cert_file: Option<PathBuf>,
    /// PEM private key of this member.
    #[arg(long, env = "HA_PEER_KEY_FILE")]
    pub peer_key_file: Option<PathBuf>,
    /// INSECURE: peers use certificates from a CA derived from the cluster
    /// token (anyone who knows the token can join). Development only.
    #[arg(long, env = "HA_PEER_INSECURE_DEV_TLS", num_args = 0..=1, default_missing_value = "true")]
    pub peer_insecure_dev_tls: Option<bool>,
    /// Comma-separated http URLs serving /metrics and /health (default: none).
    #[arg(long, env = "HA_LISTEN_METRICS_URLS")]
    pub listen_metrics_urls: Option<String>,
    /// Log filter: error, warn, info, debug, trace, or a tracing directive
    /// list such as `info,ha_node=debug` (default info).
    #[arg(long, env = "HA_LOG_LEVEL")]
    pub log_level: Option<String>,
}

macro_rules! layer {
    ($hi:expr, $lo:expr, $($f:ident),*) => {
        Settings { $( $f: $hi.$f.or($lo.$f), )* }
    };
}

impl Settings {
    /// `self` with every unset field taken from `lower`.
    pub fn or(self, lower: Settings) -> Settings {
        layer!(
            self,
            lower,
            name,
            data_dir,
            listen_client_urls,
            advertise_client_urls,
            listen_peer_urls,
            initial_advertise_peer_urls,
            initial_cluster,
            initial_cluster_state,
            initial_cluster_token,
            member_id,
            consensus,
            heartbeat_interval,
            election_timeout,
            snapshot_count,
            snapshot_catchup_entries,
            shards,
            replication,
            dead_after,
            join_after,
            peer_trusted_ca_file,
            peer_cert_file,
            peer_key_file,
            peer_insecure_dev_tls,
            listen_metrics_urls,
            log_level
        )
    }

    /// Reads settings from a TOML file (keys are the flag names).
    pub fn from_file(path: &Path) -> Result<Settings, ConfigError> {
        let meta = std::fs::metadata(path).map_err(|error| ConfigError::FileRead {
            path: path.to_path_buf(),
            error,
        })?;
        if meta.len() > MAX_CONFIG_FILE_BYTES {
            return Err(ConfigError::FileTooLarge {
                path: path.to_path_buf(),
                size: meta.len(),
            });
        }
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::FileRead {
            path: path.to_path_buf(),
            error,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::FileParse {
            path: path.to_path_buf(),
            error: e.to_string(),
        })
    }

    /// Validates the settings (unset ones take their defaults).
    pub fn resolve(self) -> Result<Config, ConfigError> {
        let name = self.name.unwrap_or_else(|| "default".to_string());
        check_name("name", &name)?;
        let data_dir = self.data_dir.unwrap_or_else(|| PathBuf::from("./ha-data"));
        if data_dir.as_os_str().is_empty() {
            return Err(invalid("data-dir", "must not be empty"));
        }

        let listen_client_text = self
            .listen_client_urls
            .unwrap_or_else(|| "http://127.0.0.1:2379".to_string());
        let listen_client_urls = url_list("listen-client-urls", &listen_client_text)?;
        let listen_client = listen_client_urls
            .iter()
            .map(|u| u.listen_addr("listen-client-urls"))
            .collect::<Result<Vec<_>, _>>()?;
        let advertise_client_urls = match &self.advertise_client_urls {
            Some(t) => url_list("advertise-client-urls", t)?,
            None => listen_client_urls.clone(),
        };
        for u in &advertise_client_urls {
            u.require_port("advertise-client-urls")?;
        }

        let listen_peer_text = self
            .listen_peer_urls
            .unwrap_or_else(|| "https://127.0.0.1:2380".to_string());
        let listen_peer_urls = url_list("listen-peer-urls", &listen_peer_text)?;
        if listen_peer_urls.len() != 1 {
            return Err(invalid(
                "listen-peer-urls",
                "exactly one URL: the peer transport is one QUIC (UDP) endpoint",
            ));
        }
        let listen_peer = listen_peer_urls[0].listen_addr("listen-peer-urls")?;
        let advertise_peer_urls = match &self.initial_advertise_peer_urls {
            Some(t) => url_list("initial-advertise-peer-urls", t)?,
            None => listen_peer_urls.clone(),
        };
        for u in &advertise_peer_urls {
            u.require_port("initial-advertise-peer-urls")?;
            if u.host_is_unspecified() {
                return Err(invalid(
                    "initial-advertise-peer-urls",
                    format!(
                        "{} is not an address peers can reach (0.0.0.0/::); give --initial-advertise-peer-urls",
                        u.text
                    ),
                ));
            }
        }
        let advertise_peer_texts: Vec<String> =
            advertise_peer_urls.iter().map(|u| u.text.clone()).collect();

        let token = self
            .initial_cluster_token
            .unwrap_or_else(|| DEFAULT_TOKEN.to_string());
        if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
            return Err(invalid(
                "initial-cluster-token",
                format!("must be 1..={MAX_TOKEN_BYTES} bytes"),
            ));
        }

        let initial_cluster = match &self.initial_cluster {
            Some(t) => parse_initial_cluster(t)?,
            None => vec![InitialMember {
                name: name.clone(),
                peer_urls: advertise_peer_texts.clone(),
            }],
        };
        let Some(me) = initial_cluster.iter().find(|m| m.name == name) else {
            return Err(invalid(
                "initial-cluster",
                format!("does not list this member's --name {name:?}"),
            ));
        };
        let mut mine = me.peer_urls.clone();
        let mut adv = advertise_peer_texts.clone();
        mine.sort();
        adv.sort();
        if mine != adv {
            return Err(invalid(
                "initial-cluster",
                format!(
                    "lists {name}={} but --initial-advertise-peer-urls is {}",
                    me.peer_urls.join(","),
                    advertise_peer_texts.join(",")
                ),
            ));
        }

        let initial_cluster_state = match self.initial_cluster_state.as_deref() {
            None | Some("new") => ClusterState::New,
            Some("existing") => ClusterState::Existing,
            Some(other) => {
                return Err(invalid(
                    "initial-cluster-state",
                    format!("{other:?} is neither \"new\" nor \"existing\""),
                ));
            }
        };

        let consensus = match self.consensus.as_deref() {
            None | Some("raft") => ConsensusKind::Raft,
            Some("paxos") => ConsensusKind::Paxos,
            Some(other) => {
                return Err(invalid(
                    "consensus",
                    format!("{other:?} is neither \"raft\" nor \"paxos\""),
                ));
            }
        };
        if !consensus.compiled_in() {
            return Err(invalid(
                "consensus",
                format!(
                    "{} is not compiled into this binary (compiled in: {})",
                    consensus.name(),
                    ConsensusKind::compiled().join(", ")
                ),
            ));
        }

        let heartbeat_interval_ms = self.heartbeat_interval.unwrap_or(100);
        if !(1..=MAX_HEARTBEAT_INTERVAL_MS).contains(&heartbeat_interval_ms) {
            return Err(invalid(
                "heartbeat-interval",
                format!(
                    "must be in 1..={MAX_HEARTBEAT_INTERVAL_MS} ms, got {heartbeat_interval_ms}"
                ),
            ));
        }
        let election_timeout_ms = self.election_timeout.unwrap_or(1_000);
        if election_timeout_ms > MAX_ELECTION_TIMEOUT_MS {
            return Err(invalid(
                "election-timeout",
                format!("must be at most {MAX_ELECTION_TIMEOUT_MS} ms, got {election_timeout_ms}"),
            ));
        }
        if election_timeout_ms < heartbeat_interval_ms.saturating_mul(5) {
            return Err(invalid(
                "election-timeout",
                format!(
                    "must be at least 5 x --heartbeat-interval ({}), got {election_timeout_ms}",
                    heartbeat_interval_ms * 5
                ),
            ));
        }

        let snapshot_count = self.snapshot_count.unwrap_or(DEFAULT_SNAPSHOT_COUNT);
        if !(1..=MAX_SNAPSHOT_COUNT).contains(&snapshot_count) {
            return Err(invalid(
                "snapshot-count",
                format!("must be in 1..={MAX_SNAPSHOT_COUNT} entries, got {snapshot_count}"),
            ));
        }
        let snapshot_catchup_entries = self
            .snapshot_catchup_entries
            .unwrap_or(DEFAULT_SNAPSHOT_CATCHUP_ENTRIES);
        if snapshot_catchup_entries > MAX_SNAPSHOT_CATCHUP_ENTRIES {
            return Err(invalid(
                "snapshot-catchup-entries",
                format!(
                    "must be at most {MAX_SNAPSHOT_CATCHUP_ENTRIES} entries, got {snapshot_catchup_entries}"
                ),
            ));
        }

        let insecure = self.peer_insecure_dev_tls.unwrap_or(false);
        let files = (
            self.peer_trusted_ca_file,
            self.peer_cert_file,
            self.peer_key_file,
        );
        let peer_tls = match (files, insecure) {
            ((Some(ca), Some(cert), Some(key)), false) => PeerTls::Files { ca, cert, key },
            ((None, None, None), true) => PeerTls::InsecureDev,
            ((None, None, None), false) if initial_cluster.len() == 1 => PeerTls::SoloDev,
            ((None, None, None), false) => {
                return Err(invalid(
                    "peer-cert-file",
                    "a cluster of several members needs peer TLS: give --peer-trusted-ca-file, \
                     --peer-cert-file and --peer-key-file (see `ha-node certs`), or \
                     --peer-insecure-dev-tls for development",
                ));
            }
            ((_, _, _), true) => {
                return Err(invalid(
                    "peer-insecure-dev-tls",
                    "cannot be combined with --peer-*-file settings",
                ));
            }
            _ => {
                return Err(invalid(
                    "peer-cert-file",
                    "--peer-trusted-ca-file, --peer-cert-file and --peer-key-file go together: give all three",
                ));
            }
        };

        let listen_metrics = match &self.listen_metrics_urls {
            Some(t) if !t.trim().is_empty() => url_list("listen-metrics-urls", t)?
                .iter()
                .map(|u| {
                    if u.scheme != "http" {
                        return Err(invalid(
                            "listen-metrics-urls",
                            format!("{}: only http is served", u.text),
                        ));
                    }
                    u.listen_addr("listen-metrics-urls")
                })
                .collect::<Result<Vec<_>, _>>()?,
            _ => Vec::new(),
        };

        let log_level = self.log_level.unwrap_or_else(|| "info".to_string());
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&log_level) {
            return Err(invalid("log-level", format!("{log_level:?}: {e}")));
        }

        let shards = self.shards.unwrap_or(1);
        if !(1..=MAX_NODE_SHARDS).contains(&shards) {
            return Err(invalid(
                "shards",
                format!("must be in 1..={MAX_NODE_SHARDS}, got {shards}"),
            ));
        }
        let replication = match (shards, self.replication) {
            (1, None) => initial_cluster.len(),
            (1, Some(r)) => {
                return Err(invalid(
                    "replication",
                    format!(
                        "only with --shards > 1 (with --shards 1 every member replicates the one \
                         group), got {r}"
                    ),
                ));
            }
            (_, r) => {
                let max = initial_cluster.len().min(ha_shard::map::MAX_REPLICATION);
                let r = r.unwrap_or(max.min(3));
                if !(1..=max).contains(&r) {
                    return Err(invalid(
                        "replication",
                        format!(
                            "must be in 1..={max} (at most the {} founding members and {}), got {r}",
                            initial_cluster.len(),
                            ha_shard::map::MAX_REPLICATION
                        ),
                    ));
                }
                r
            }
        };
        let limits =
            ha_shard::controller::MIN_DEAD_AFTER_MS..=ha_shard::controller::MAX_DEAD_AFTER_MS;
        let (dead_after_ms, join_after_ms) = match (shards, self.dead_after, self.join_after) {
            (1, None, None) => (
                ha_shard::controller::DEFAULT_DEAD_AFTER_MS,
                ha_shard::controller::DEFAULT_JOIN_AFTER_MS,
            ),
            (1, _, _) => {
                return Err(invalid(
                    "dead-after",
                    "--dead-after and --join-after only with --shards > 1 (replicas move between \
                     members only in a sharded cluster)",
                ));
            }
            (_, dead, join) => {
                let dead = dead.unwrap_or(ha_shard::controller::DEFAULT_DEAD_AFTER_MS);
                if !limits.contains(&dead) {
                    return Err(invalid(
                        "dead-after",
                        format!(
                            "must be in {}..={} ms, got {dead}",
                            limits.start(),
                            limits.end()
                        ),
                    ));
                }
                let join = join.unwrap_or(ha_shard::controller::DEFAULT_JOIN_AFTER_MS);
                if join > *limits.end() {
                    return Err(invalid(
                        "join-after",
                        format!("must be at most {} ms, got {join}", limits.end()),
                    ));
                }
                (dead, join)
            }
        };

        let founding: Vec<(String, Vec<String>)> = initial_cluster
            .iter()
            .map(|m| (m.name.clone(), m.peer_urls.clone()))
            .collect();
        let cluster_id = ids::cluster_id(&token, &founding);
        let member_id = match (initial_cluster_state, self.member_id.as_deref()) {
            (ClusterState::New, None) => ids::member_id(&token, &name),
            (ClusterState::New, Some(_)) => {
                return Err(invalid(
                    "member-id",
                    "only for --initial-cluster-state existing (a founding member's id derives \
                     from its name and the token)",
                ));
            }
            (ClusterState::Existing, Some(text)) => {
                ids::parse_member_id(text).map_err(|e| invalid("member-id", e))?
            }
            // Learned at start from the data dir or the certificate.
            (ClusterState::Existing, None) => NodeId(0),
        };

        Ok(Config {
            name,
            data_dir,
            listen_client,
            listen_client_urls: listen_client_urls.into_iter().map(|u| u.text).collect(),
            advertise_client_urls: advertise_client_urls.into_iter().map(|u| u.text).collect(),
            listen_peer,
            advertise_peer_urls: advertise_peer_texts,
            initial_cluster,
            initial_cluster_state,
            token,
            consensus,
            heartbeat_interval_ms,
            election_timeout_ms,
            snapshot_count,
            snapshot_catchup_entries,
            shards,
            replication,
            dead_after_ms,
            join_after_ms,
            peer_tls,
            listen_metrics,
            log_level,
            member_id,
            cluster_id,
        })
    }
}

/// Whether this member founds a cluster or joins one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterState {
    /// Found a cluster with `--initial-cluster`.
    New,
    /// Join a running cluster (after `member add`).
    Existing,
}

/// The consensus protocol to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsensusKind {
    /// `ha-raft`.
    Raft,
    /// `ha-paxos`.
    Paxos,
}

impl ConsensusKind {
    /// The protocol's name as the flag takes it.
    pub fn name(self) -> &'static str {
        match self {
            ConsensusKind::Raft => "raft",
            ConsensusKind::Paxos => "paxos",
        }
    }

    /// Whether this binary can run the protocol.
    pub fn compiled_in(self) -> bool {
        match self {
            ConsensusKind::Raft => cfg!(feature = "raft"),
            ConsensusKind::Paxos => cfg!(feature = "paxos"),
        }
    }

    /// Names of the protocols compiled in.
    pub fn compiled() -> Vec<&'static str> {
        [ConsensusKind::Raft, ConsensusKind::Paxos]
            .into_iter()
            .filter(|k| k.compiled_in())
            .map(ConsensusKind::name)
            .collect()
    }
}

/// How this member authenticates peers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerTls {
    /// CA, certificate and key from PEM files (production).
    Files {
        /// Cluster CA.
        ca: PathBuf,
        /// This member's certificate chain.
        cert: PathBuf,
        /// This member's key.
        key: PathBuf,
    },
    /// `--peer-insecure-dev-tls`: a CA derived from the cluster token.
    InsecureDev,
    /// A single-member cluster without TLS settings: a CA derived from the
    /// cluster token as for `InsecureDev`, used only because there is no
    /// peer to talk to. Adding members needs real TLS settings (or the
    /// explicit insecure flag on every member).
    SoloDev,
}

/// A member of `--initial-cluster`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitialMember {
    /// Its name.
    pub name: String,
    /// Its peer URLs.
    pub peer_urls: Vec<String>,
}

/// The validated configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// This member's name.
    pub name: String,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Client API listen addresses.
    pub listen_client: Vec<SocketAddr>,
    /// Client API listen URLs as given.
    pub listen_client_urls: Vec<String>,
    /// Client URLs advertised in the member table.
    pub advertise_client_urls: Vec<String>,
    /// Peer transport listen address.
    pub listen_peer: SocketAddr,
    /// Peer URLs advertised in the member table.
    pub advertise_peer_urls: Vec<String>,
    /// Founding members (for `new`), or members to contact (for `existing`).
    pub initial_cluster: Vec<InitialMember>,
    /// New or existing.
    pub initial_cluster_state: ClusterState,
    /// Cluster token.
    pub token: String,
    /// Protocol.
    pub consensus: ConsensusKind,
    /// Heartbeat interval, ms.
    pub heartbeat_interval_ms: u64,
    /// Election timeout, ms.
    pub election_timeout_ms: u64,
    /// Applied entries between two snapshots (`--snapshot-count`).
    pub snapshot_count: u64,
    /// Entries kept behind a snapshot (`--snapshot-catchup-entries`).
    pub snapshot_catchup_entries: u64,
    /// Data shards (`--shards`): 1 = the single group 0 holds the data.
    pub shards: u32,
    /// Replicas per data shard (`--replication`; with `--shards 1` every
    /// member replicates group 0 and this is the member count).
    pub replication: usize,
    /// `--dead-after`, ms (used with `--shards` > 1).
    pub dead_after_ms: u64,
    /// `--join-after`, ms (used with `--shards` > 1).
    pub join_after_ms: u64,
    /// Peer authentication.
    pub peer_tls: PeerTls,
    /// Metrics/health listen addresses.
    pub listen_metrics: Vec<SocketAddr>,
    /// Log filter.
    pub log_level: String,
    /// This member's id (for `existing` without `--member-id`: 0 until
    /// the start resolves it from the data dir or the peer certificate).
    pub member_id: NodeId,
    /// The cluster's id (for `existing`: the id of the founding list given,
    /// replaced by the id learned from the cluster).
    pub cluster_id: u64,
}

/// A parsed `scheme://host:port` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimpleUrl {
    /// The URL as given.
    pub text: String,
    /// `http` or `https`.
    pub scheme: String,
    /// Host name or IP literal (brackets removed).
    pub host: String,
    /// Port.
    pub port: Option<u16>,
}

impl SimpleUrl {
    /// Parses `http(s)://host[:port][/]`.
    pub fn parse(text: &str) -> Result<SimpleUrl, String> {
        if text.len() > MAX_URL_BYTES {
            return Err(format!("URL longer than {MAX_URL_BYTES} bytes"));
        }
        let (scheme, rest) = text
            .split_once("://")
            .ok_or_else(|| format!("{text:?} is not a URL (scheme://host:port)"))?;
        if scheme != "http" && scheme != "https" {
            return Err(format!("{text:?}: scheme must be http or https"));
        }
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('/') || rest.contains('?') || rest.contains('@') {
            return Err(format!("{text:?}: only scheme://host:port is accepted"));
        }
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("{text:?}: unterminated [ipv6]"))?;
            let port = match after {
                "" => None,
                p => Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| format!("{text:?}: bad port"))?,
                ),
            };
            (h.to_string(), port)
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (rest.to_string(), None),
            }
        };
        if host.is_empty()
            || !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b':')
        {
            return Err(format!("{text:?}: bad host"));
        }
        let port = match port {
            None => None,
            Some(p) => Some(
                p.parse::<u16>()
                    .map_err(|_| format!("{text:?}: port must be a number 0..=65535"))?,
            ),
        };
        Ok(SimpleUrl {
            text: text.to_string(),
            scheme: scheme.to_string(),
            host,
            port,
        })
    }

    fn require_port(&self, field: &'static str) -> Result<u16, ConfigError> {
        self.port
            .ok_or_else(|| invalid(field, format!("{}: a port is required", self.text)))
    }

    fn host_is_unspecified(&self) -> bool {
        self.host
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_unspecified())
    }

    /// The socket address to bind: the host must be an IP literal or
    /// `localhost`.
    fn listen_addr(&self, field: &'static str) -> Result<SocketAddr, ConfigError> {
        let port = self.require_port(field)?;
        let ip = if self.host == "localhost" {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            self.host.parse::<IpAddr>().map_err(|_| {
                invalid(
                    field,
                    format!(
                        "{}: listen URLs need an IP address (or localhost), not a host name",
                        self.text
                    ),
                )
            })?
        };
        Ok(SocketAddr::new(ip, port))
    }
}

fn check_name(field: &'static str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return Err(invalid(
            field,
            format!("{name:?}: must be 1..={MAX_NAME_BYTES} bytes"),
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err(invalid(
            field,
            format!("{name:?}: only letters, digits, '-', '_' and '.' are allowed"),
        ));
    }
    Ok(())
}

fn url_list(field: &'static str, text: &str) -> Result<Vec<SimpleUrl>, ConfigError> {
    let urls: Vec<&str> = text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if urls.is_empty() {
        return Err(invalid(field, "needs at least one URL"));
    }
    if urls.len() > MAX_URLS {
        return Err(invalid(field, format!("more than {MAX_URLS} URLs")));
    }
    urls.into_iter()
        .map(|u| SimpleUrl::parse(u).map_err(|e| invalid(field, e)))
        .collect()
}

/// Parses `name=url,name=url,...` (a name may repeat to give several URLs).
pub fn parse_initial_cluster(text: &str) -> Result<Vec<InitialMember>, ConfigError> {
    const FIELD: &str = "initial-cluster";
    let mut members: Vec<InitialMember> = Vec::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, url) = item
            .split_once('=')
            .ok_or_else(|| invalid(FIELD, format!("{item:?} is not name=url")))?;
        check_name(FIELD, name)?;
        let url = SimpleUrl::parse(url).map_err(|e| invalid(FIELD, e))?;
        url.require_port(FIELD)?;
        match members.iter_mut().find(|m| m.name == name) {
            Some(m) => {
                if m.peer_urls.len() >= MAX_URLS {
                    return Err(invalid(FIELD, format!("{name}: more than {MAX_URLS} URLs")));
                }
                m.peer_urls.push(url.text);
            }
            None => {
                if members.len() >= MAX_INITIAL_MEMBERS {
                    return Err(invalid(
                        FIELD,
                        format!("more than {MAX_INITIAL_MEMBERS} members"),
                    ));
                }
                members.push(InitialMember {
                    name: name.to_string(),
                    peer_urls: vec![url.text],
                })
            }
        }
    }
    if members.is_empty() {
        return Err(invalid(FIELD, "lists no member"));
    }
    let mut seen = std::collections::BTreeSet::new();
    for m in &members {
        for u in &m.peer_urls {
            if !seen.insert(u.clone()) {
                return Err(invalid(FIELD, format!("URL {u} is listed twice")));
            }
        }
    }
    Ok(members)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s() -> Settings {
        Settings::default()
    }

    #[test]
    fn defaults_are_a_single_member_on_loopback() {
        let c = s().resolve().unwrap();
        assert_eq!(c.name, "default");
        assert_eq!(c.data_dir, PathBuf::from("./ha-data"));
        assert_eq!(c.listen_client, vec!["127.0.0.1:2379".parse().unwrap()]);
        assert_eq!(c.listen_peer, "127.0.0.1:2380".parse().unwrap());
        assert_eq!(c.initial_cluster.len(), 1);
        assert_eq!(c.peer_tls, PeerTls::SoloDev);
        assert_eq!(c.member_id, ids::member_id(DEFAULT_TOKEN, "default"));
        assert_eq!(c.consensus, ConsensusKind::Raft);
        assert_eq!(c.snapshot_count, DEFAULT_SNAPSHOT_COUNT);
        assert_eq!(c.snapshot_catchup_entries, DEFAULT_SNAPSHOT_CATCHUP_ENTRIES);
    }

    #[test]
    fn snapshot_settings_from_toml_and_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "snapshot-count = 50\nsnapshot-catchup-entries = 0\n").unwrap();
        let c = Settings::from_file(&p).unwrap().resolve().unwrap();
        assert_eq!((c.snapshot_count, c.snapshot_catchup_entries), (50, 0));
        for (st, want) in [
            (
                Settings {
                    snapshot_count: Some(0),
                    ..s()
                },
                "--snapshot-count",
            ),
            (
                Settings {
                    snapshot_count: Some(MAX_SNAPSHOT_COUNT + 1),
                    ..s()
                },
                "--snapshot-count",
            ),
            (
                Settings {
                    snapshot_catchup_entries: Some(MAX_SNAPSHOT_CATCHUP_ENTRIES + 1),
                    ..s()
                },
                "--snapshot-catchup-entries",
            ),
        ] {
            let e = st.clone().resolve().unwrap_err().to_string();
            assert!(e.contains(want), "{st:?}: {e}");
        }
    }

    #[test]
    fn precedence_higher_layer_wins() {
        let flag = Settings {
            name: Some("a".into()),
            ..s()
        };
        let file = Settings {
            name: Some("b".into()),
            log_level: Some("debug".into()),
            ..s()
        };
        let merged = flag.or(file);
        assert_eq!(merged.name.as_deref(), Some("a"));
        assert_eq!(merged.log_level.as_deref(), Some("debug"));
    }

    #[test]
    fn toml_uses_flag_names_and_refuses_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "name = \"x\"\nelection-timeout = 2000\n").unwrap();
        let st = Settings::from_file(&p).unwrap();
        assert_eq!(st.name.as_deref(), Some("x"));
        assert_eq!(st.election_timeout, Some(2000));
        std::fs::write(&p, "nmae = \"x\"\n").unwrap();
        let e = Settings::from_file(&p).unwrap_err().to_string();
        assert!(e.contains("nmae"), "{e}");
    }

    #[test]
    fn bad_values_are_named() {
        let cases: Vec<(Settings, &str)> = vec![
            (
                Settings {
                    election_timeout: Some(300),
                    ..s()
                },
                "--election-timeout",
            ),
            (
                Settings {
                    listen_client_urls: Some("ftp://1.2.3.4:5".into()),
                    ..s()
                },
                "--listen-client-urls",
            ),
            (
                Settings {
                    listen_client_urls: Some("http://example.com:5".into()),
                    ..s()
                },
                "IP address",
            ),
            (
                Settings {
                    initial_cluster: Some("other=https://127.0.0.1:2380".into()),
                    ..s()
                },
                "does not list",
            ),
            (
                Settings {
                    initial_cluster: Some(
                        "default=https://127.0.0.1:2380,b=https://127.0.0.1:2480".into(),
                    ),
                    ..s()
                },
                "needs peer TLS",
            ),
            (
                Settings {
                    consensus: Some("pbft".into()),
                    ..s()
                },
                "--consensus",
            ),
            (
                Settings {
                    name: Some("bad name".into()),
                    ..s()
                },
                "--name",
            ),
            (
                Settings {
                    peer_cert_file: Some("x".into()),
                    ..s()
                },
                "go together",
            ),
            (
                Settings {
                    log_level: Some("info,[[[".into()),
                    ..s()
                },
                "--log-level",
            ),
        ];
        for (st, want) in cases {
            let e = st.clone().resolve().unwrap_err().to_string();
            assert!(e.contains(want), "{st:?}: {e}");
        }
    }

    /// Member `b` of a three-member cluster with insecure dev TLS.
    fn three_members() -> Settings {
        Settings {
            name: Some("b".into()),
            listen_peer_urls: Some("https://127.0.0.1:12380".into()),
            initial_cluster: Some(
                "a=https://127.0.0.1:2380,b=https://127.0.0.1:12380,c=https://127.0.0.1:22380"
                    .into(),
            ),
            peer_insecure_dev_tls: Some(true),
            ..s()
        }
    }

    #[test]
    fn shards_and_replication_are_validated() {
        let three = three_members;
        let c = three().resolve().unwrap();
        assert_eq!((c.shards, c.replication), (1, 3));
        let c = Settings {
            shards: Some(4),
            ..three()
        }
        .resolve()
        .unwrap();
        assert_eq!((c.shards, c.replication), (4, 3));
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "shards = 8\nreplication = 2\n").unwrap();
        let c = Settings::from_file(&p)
            .unwrap()
            .or(three())
            .resolve()
            .unwrap();
        assert_eq!((c.shards, c.replication), (8, 2));
        for (st, want) in [
            (
                Settings {
                    shards: Some(0),
                    ..three()
                },
                "--shards: must be in 1..=256, got 0",
            ),
            (
                Settings {
                    shards: Some(MAX_NODE_SHARDS + 1),
                    ..three()
                },
                "--shards",
            ),
            (
                Settings {
                    replication: Some(2),
                    ..three()
                },
                "--replication: only with --shards > 1",
            ),
            (
                Settings {
                    shards: Some(4),
                    replication: Some(4),
                    ..three()
                },
                "--replication: must be in 1..=3",
            ),
            (
                Settings {
                    shards: Some(4),
                    replication: Some(0),
                    ..three()
                },
                "--replication",
            ),
            (
                Settings {
                    dead_after: Some(5_000),
                    ..three()
                },
                "--dead-after: --dead-after and --join-after only with --shards > 1",
            ),
            (
                Settings {
                    shards: Some(4),
                    dead_after: Some(10),
                    ..three()
                },
                "--dead-after: must be in 100..=604800000 ms, got 10",
            ),
            (
                Settings {
                    shards: Some(4),
                    join_after: Some(u64::MAX),
                    ..three()
                },
                "--join-after: must be at most",
            ),
        ] {
            let e = st.clone().resolve().unwrap_err().to_string();
            assert!(e.contains(want), "{st:?}: {e}");
        }
    }

    #[test]
    fn three_members_with_insecure_dev_tls() {
        let c = three_members().resolve().unwrap();
        assert_eq!(c.peer_tls, PeerTls::InsecureDev);
        assert_eq!(c.initial_cluster.len(), 3);
        assert_eq!(c.member_id, ids::member_id(DEFAULT_TOKEN, "b"));
    }

    #[test]
    fn url_parsing() {
        let u = SimpleUrl::parse("https://[::1]:2380").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", Some(2380)));
        assert!(SimpleUrl::parse("http://h:99999").is_err());
        assert!(SimpleUrl::parse("h:1").is_err());
        assert!(SimpleUrl::parse("http://u@h:1").is_err());
    }
}
