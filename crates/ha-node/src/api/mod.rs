//! The etcd v3 gRPC API, served over any [`Backend`].
//!
//! Wire compatible with etcd v3.5 (`proto/` is written for ha with etcd's
//! package, service and method names and field numbers), so `etcdctl`, the
//! Rust `etcd-client` crate and other etcd libraries work unchanged.
//!
//! # What is served
//!
//! | service | methods |
//! |---|---|
//! | KV | Range, Put, DeleteRange, Txn, Compact |
//! | Watch | Watch: many watches per stream, start revision in the past (history, then live with no gap and no duplicate), key ranges, prev_kv, NOPUT/NODELETE filters, progress_notify, progress requests, cancel |
//! | Lease | LeaseGrant, LeaseRevoke, LeaseKeepAlive (stream), LeaseTimeToLive (with keys), LeaseLeases |
//! | Lock | Lock (blocks until owned; fencing token = the owner key's create revision), Unlock |
//! | Election | Campaign (blocks until elected), Proclaim, Leader, Observe (stream), Resign |
//! | Cluster | MemberList, MemberAdd, MemberRemove, MemberPromote (MemberUpdate: Unimplemented) |
//! | Maintenance | Status, Alarm (GET lists none); Defragment, Hash, HashKV, Snapshot, MoveLeader, Downgrade answer Unimplemented naming the method |
//!
//! Auth is not served (Unimplemented).
//!
//! # Consistency of reads
//!
//! `Range` is linearizable unless the request sets `serializable`, in which
//! case it is served from this member's applied state (possibly stale, never
//! ahead of a committed write). Lease TimeToLive/Leases, Election Leader and
//! MemberList are linearizable reads. Txn always goes through consensus.
//! Every response header carries the cluster id, this member's id, the store
//! revision the answer reflects and the current term.
//!
//! # Errors
//!
//! Refusals carry etcd's gRPC code and exact message string (see
//! [`error`]); a refused request changes nothing.
//!
//! # Limits
//!
//! All limits are fields of [`ApiConfig`], each documented there: request
//! size, watches per stream, queued watch responses per stream, events per
//! watch response, history read per step, concurrent HTTP/2 streams.
//! A watch stream whose client reads too slowly first falls back to reading
//! history (bounded steps); if the history it needs was compacted meanwhile,
//! the watch is cancelled with etcd's compacted response — memory stays
//! bounded either way.
//!
//! # Known differences from etcd
//!
//! - The HTTP/2 server (h2) refuses a malformed `:authority`, which etcd
//!   accepts; etcdctl 3.4's per-endpoint commands (`endpoint status`) send
//!   `http://host:port` there when the endpoint is given as a URL. [`serve`]
//!   repairs such values on the way in ([`authority`]), so both forms work.
//! - Watch responses are split at `watch_max_events_per_response` /
//!   `watch_max_response_bytes` (etcd sends one response per revision batch);
//!   `fragment` is set on the non-final parts when the watch asked for it.
//! - Lease TTLs keep their remaining time across leader changes (etcd
//!   resets them to the full TTL).

pub mod authority;
mod backend;
mod cluster;
mod convert;
pub mod error;
mod kv;
mod lease;
pub mod local;
mod lock;
pub mod pb;
mod watch;

use std::net::SocketAddr;
use std::sync::Arc;

use ha_lock::api as hl;
use tokio::sync::watch as signal;
use tonic::Status;

pub use backend::{
    Backend, BackendError, EventBatch, HeaderInfo, MemberInfo, StatusInfo, broadcast_sink,
};
pub use local::{LocalBackend, LocalBackendConfig, LocalBackendError};

use pb::etcdserverpb::ResponseHeader;

/// Largest lease TTL etcd accepts, in seconds (etcd's `MaxLeaseTTL`).
pub const MAX_LEASE_TTL_S: i64 = 9_000_000_000;

/// Limits and knobs of the API layer. Every queue and size is bounded here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiConfig {
    /// Largest encoded request accepted, in bytes; larger ones get etcd's
    /// "request is too large" (default: ha-lock's `max_request_bytes`,
    /// 1.5 MiB + 512, as etcd's `--max-request-bytes`).
    pub max_request_bytes: usize,
    /// Extra bytes the gRPC decoder accepts above `max_request_bytes`, so an
    /// oversized request reaches our check and gets etcd's error rather than
    /// a transport error (etcd uses 512 KiB).
    pub grpc_overhead_bytes: usize,
    /// Most watches one Watch stream may hold; more creates are refused.
    pub max_watches_per_stream: usize,
    /// Most responses queued to one Watch stream's client before the stream
    /// stops pulling live events (it then catches up from history).
    pub watch_queue_len: usize,
    /// Most events in one watch response; larger batches are split.
    pub watch_max_events_per_response: usize,
    /// Most encoded event bytes in one watch response (at least one event
    /// is always sent); larger batches are split.
    pub watch_max_response_bytes: usize,
    /// Most events read from history in one step of a catch-up.
    pub watch_history_batch_events: usize,
    /// Period of progress notifications to watches that asked for them, ms
    /// (etcd: 10 minutes).
    pub watch_progress_interval_ms: u64,
    /// Lease TTLs below this are raised to it, in seconds (etcd raises short
    /// TTLs to a minimum derived from its election timeout).
    pub min_lease_ttl_s: i64,
    /// Most responses queued to one LeaseKeepAlive or Observe stream.
    pub stream_queue_len: usize,
    /// While Lock or Campaign waits, the state is re-checked at least this
    /// often even without events, ms (a safety net; events drive progress).
    pub wait_recheck_interval_ms: u64,
    /// Most concurrent HTTP/2 streams per client connection.
    pub max_concurrent_streams: u32,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            max_request_bytes: hl::Limits::default().max_request_bytes,
            grpc_overhead_bytes: 512 * 1024,
            max_watches_per_stream: 4096,
            watch_queue_len: 128,
            watch_max_events_per_response: 1000,
            watch_max_response_bytes: 1 << 20,
            watch_history_batch_events: 1000,
            watch_progress_interval_ms: 600_000,
            min_lease_ttl_s: 2,
            stream_queue_len: 64,
            wait_recheck_interval_ms: 1000,
            max_concurrent_streams: 1024,
        }
    }
}

/// A refused [`ApiConfig`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ApiConfigError {
    /// A limit that must be positive is zero.
    #[error("api config: {0} must be > 0")]
    Zero(&'static str),
}

impl ApiConfig {
    /// Checks that every limit is usable.
    pub fn validate(&self) -> Result<(), ApiConfigError> {
        let positive = [
            ("max_request_bytes", self.max_request_bytes as u64),
            ("max_watches_per_stream", self.max_watches_per_stream as u64),
            ("watch_queue_len", self.watch_queue_len as u64),
            (
                "watch_max_events_per_response",
                self.watch_max_events_per_response as u64,
            ),
            (
                "watch_max_response_bytes",
                self.watch_max_response_bytes as u64,
            ),
            (
                "watch_history_batch_events",
                self.watch_history_batch_events as u64,
            ),
            (
                "watch_progress_interval_ms",
                self.watch_progress_interval_ms,
            ),
            ("min_lease_ttl_s", self.min_lease_ttl_s.max(0) as u64),
            ("stream_queue_len", self.stream_queue_len as u64),
            ("wait_recheck_interval_ms", self.wait_recheck_interval_ms),
            (
                "max_concurrent_streams",
                u64::from(self.max_concurrent_streams),
            ),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(ApiConfigError::Zero(name));
            }
        }
        Ok(())
    }
}

/// What every service shares: the backend, the limits, the stop signal.
pub(crate) struct Shared<B> {
    pub(crate) backend: Arc<B>,
    pub(crate) config: ApiConfig,
    /// Flips to `true` when the server stops: long waits and streams end.
    pub(crate) stopping: signal::Receiver<bool>,
}

impl<B: Backend> Shared<B> {
    /// A response header at store revision `revision`.
    pub(crate) fn header(&self, revision: i64) -> Option<ResponseHeader> {
        let h = self.backend.header();
        Some(ResponseHeader {
            cluster_id: h.cluster_id,
            member_id: h.member_id,
            revision,
            raft_term: h.raft_term,
        })
    }

    /// This member's current store revision (no read barrier).
    pub(crate) async fn revision(&self) -> Result<i64, Status> {
        Ok(self.backend.read(false, |m| m.current_revision()).await?)
    }

    /// Refuses a request whose encoding exceeds `max_request_bytes`.
    pub(crate) fn check_size(&self, encoded_len: usize) -> Result<(), Status> {
        if encoded_len > self.config.max_request_bytes {
            return Err(error::backend_status(&BackendError::TooLarge));
        }
        Ok(())
    }

    /// Proposes `cmd`; the store revision after it and the machine's answer,
    /// refusals mapped to etcd's errors.
    pub(crate) async fn write(&self, cmd: hl::Command) -> Result<(i64, hl::Response), Status> {
        let applied = self.backend.write(cmd).await?;
        match applied.result {
            Ok(resp) => Ok((applied.revision, resp)),
            Err(e) => Err(error::lock_status(&e)),
        }
    }

    /// Resolves once the server is stopping.
    pub(crate) async fn stopped(&self) {
        let mut rx = self.stopping.clone();
        // An error means the sender is gone: the server is gone too.
        let _ = rx.wait_for(|stop| *stop).await;
    }
}

/// The answer for a machine response of the wrong kind (a backend bug).
pub(crate) fn unexpected(resp: &hl::Response) -> Status {
    Status::internal(format!("ha: unexpected state machine response {resp:?}"))
}

/// The status for a request refused because the server is stopping.
pub(crate) fn stopping_status() -> Status {
    error::backend_status(&BackendError::Stopped)
}

/// A refused server start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ApiConfigError),
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The listener failed.
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
}

/// The gRPC router with every service over `backend`, plus the handle that
/// stops its long-running calls. Keep the [`StopHandle`] while serving:
/// dropping it ends every watch, keep-alive, observe and waiting lock or
/// campaign at once. Prefer [`serve`], which wires both.
pub fn router<B: Backend>(
    backend: Arc<B>,
    config: ApiConfig,
) -> Result<(tonic::transport::server::Router, StopHandle), ServeError> {
    config.validate()?;
    let (stop_tx, stopping) = signal::channel(false);
    let max_decode = config
        .max_request_bytes
        .saturating_add(config.grpc_overhead_bytes);
    let shared = Arc::new(Shared {
        backend,
        config: config.clone(),
        stopping,
    });
    use pb::etcdserverpb::{
        cluster_server::ClusterServer, kv_server::KvServer, lease_server::LeaseServer,
        maintenance_server::MaintenanceServer, watch_server::WatchServer,
    };
    use pb::v3electionpb::election_server::ElectionServer;
    use pb::v3lockpb::lock_server::LockServer;
    let router = tonic::transport::Server::builder()
        .max_concurrent_streams(config.max_concurrent_streams)
        .add_service(
            KvServer::new(kv::KvService::new(shared.clone())).max_decoding_message_size(max_decode),
        )
        .add_service(
            WatchServer::new(watch::WatchService::new(shared.clone()))
                .max_decoding_message_size(max_decode),
        )
        .add_service(
            LeaseServer::new(lease::LeaseService::new(shared.clone()))
                .max_decoding_message_size(max_decode),
        )
        .add_service(
            LockServer::new(lock::LockService::new(shared.clone()))
                .max_decoding_message_size(max_decode),
        )
        .add_service(
            ElectionServer::new(lock::ElectionService::new(shared.clone()))
                .max_decoding_message_size(max_decode),
        )
        .add_service(
            ClusterServer::new(cluster::ClusterService::new(shared.clone()))
                .max_decoding_message_size(max_decode),
        )
        .add_service(
            MaintenanceServer::new(cluster::MaintenanceService::new(shared))
                .max_decoding_message_size(max_decode),
        );
    Ok((router, StopHandle { tx: stop_tx }))
}

/// Ends the long-running calls (watches, keep-alives, observes, waiting
/// locks and campaigns) of a [`router`], so a graceful shutdown completes.
#[derive(Debug)]
pub struct StopHandle {
    tx: signal::Sender<bool>,
}

impl StopHandle {
    /// Signals every long-running call to end (they answer "server stopped").
    pub fn stop(&self) {
        self.tx.send_replace(true);
    }
}

/// Serves the etcd API over `backend` on `listener` until `shutdown`
/// resolves, then ends open streams and waits for in-flight calls.
pub async fn serve<B: Backend>(
    backend: Arc<B>,
    config: ApiConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let (router, stop) = router(backend, config)?;
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    // Clients that send a whole URL as `:authority` (etcdctl 3.4) are
    // repaired before h2 sees them.
    let incoming =
        tokio_stream::StreamExt::map(incoming, |conn| conn.map(authority::AuthorityFix::new));
    router
        .serve_with_incoming_shutdown(incoming, async move {
            shutdown.await;
            stop.stop();
        })
        .await?;
    Ok(())
}

/// Binds `addr` and [`serve`]s; the bound address is reported through
/// `bound` before serving starts (useful with port 0).
pub async fn bind_and_serve<B: Backend>(
    backend: Arc<B>,
    config: ApiConfig,
    addr: SocketAddr,
    bound: tokio::sync::oneshot::Sender<SocketAddr>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    // The caller may have stopped waiting; serving goes on regardless.
    let _ = bound.send(local);
    serve(backend, config, listener, shutdown).await
}
