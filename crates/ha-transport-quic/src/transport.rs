//! [`QuicTransport`]: one QUIC endpoint per node, mutual TLS, node identity
//! from certificates.
//!
//! # Connections and streams
//!
//! Each direction has its own connection: node A *dials* B to send to B, and
//! *accepts* B's connection to receive from B. A dialled connection carries
//!
//! * one long-lived unidirectional **protocol stream** (opened at the first
//!   frame, kept for the life of the connection): frames to one peer arrive
//!   in the order `send` queued them, as long as the connection lives;
//! * one unidirectional **snapshot stream per group being transferred**,
//!   finished after `snapshot_stream_idle_ms` without a chunk (or, at the
//!   peer's stream limit, when it is the least recently used). Snapshot
//!   chunks have their own queue, writer and QUIC flow control, so they never
//!   sit in front of protocol frames. A group's chunks keep their order
//!   within one stream; a transfer that outlives its stream continues on a
//!   new one, and chunks of the two may interleave (the contract allows
//!   reordering; snapshot chunks should carry their offset);
//! * one bidirectional stream per **request** ([`QuicTransport::request`]).
//!
//! # Overflow policy: drop newest
//!
//! `send` never blocks. Each peer has two bounded queues (protocol
//! `peer_queue_frames`, snapshot `snapshot_queue_frames`); when the one a
//! frame needs is full, *that* frame (the newest) is dropped and counted in
//! `dropped_queue_full`. Frames already queued keep their order. Consensus
//! protocols retransmit, so a lost frame costs a round trip, not safety.
//! Callers that want back-pressure instead (bulk snapshot senders,
//! benchmarks) use [`QuicTransport::send_wait`].
//!
//! # Inbound
//!
//! Received frames go to one bounded queue (`inbound_queue_frames`). When it
//! is full, the stream readers wait: QUIC flow control then stops the
//! senders, whose own queues fill and drop newest. Memory stays bounded end
//! to end.
//!
//! # Failure handling
//!
//! * A dialled connection that fails is re-dialled with exponential backoff
//!   (`reconnect_backoff_min_ms` doubling to `reconnect_backoff_max_ms`, each
//!   wait uniform in [d/2, d]); queued frames wait for it (within the bound).
//! * Keep-alives every `keep_alive_ms` (< `idle_timeout_ms`) keep idle links
//!   up and detect dead peers.
//! * A malformed or oversized preamble/frame stops that stream with
//!   [`code::FRAME_ERROR`], logs and counts `frame_errors`; the connection
//!   and every other stream go on.
//! * A stream whose preamble claims a node id other than the certificate's
//!   closes the whole connection with [`code::IDENTITY`] and counts
//!   `identity_rejections`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use ha_core::transport::{Frame, FrameKind, Inbound, Transport};
use ha_core::{GroupId, NodeId};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, ConnectionError, RecvStream, SendStream, VarInt};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::config::{ConfigError, QuicConfig};
use crate::frame::{
    FRAME_HEADER_BYTES, FrameDecoder, FrameError, PREAMBLE_BYTES, Preamble, StreamKind, WireFrame,
    WireKind, checked_len, encode_frame, encode_header,
};
use crate::identity::{self, IdentityError, NodeIdentity, node_dns_name, node_id_from_cert};
use crate::recv::StreamAssembler;
use crate::stats::{Counters, TransportStats};
use crate::udp::SplitGso;

/// Application error codes on the wire (stream stop/reset and connection
/// close codes).
pub mod code {
    /// Connection closed by an orderly shutdown.
    pub const SHUTDOWN: u32 = 0;
    /// Stream stopped: malformed or oversized preamble or frame.
    pub const FRAME_ERROR: u32 = 1;
    /// Connection closed: claimed node id does not match the certificate,
    /// or the certificate names no node id.
    pub const IDENTITY: u32 = 2;
    /// Request refused: the handler's queue is full.
    pub const BUSY: u32 = 3;
    /// Request refused by the handler (or its response was too large).
    pub const REJECTED: u32 = 4;
    /// Request not answered within its deadline.
    pub const TIMEOUT: u32 = 5;
    /// Request refused: this node serves no requests.
    pub const NO_HANDLER: u32 = 6;
    /// Connection closed: the peer was removed or the transport dropped.
    pub const GONE: u32 = 7;
}

/// Most bytes taken from a stream per read call.
const READ_CHUNK_BYTES_MAX: usize = 256 << 10;
/// Most received segments a stream reader takes per read call (one call,
/// one lock of the connection, instead of one per segment; each segment is
/// at most one UDP datagram's worth of stream data).
const READ_CHUNKS_PER_CALL: usize = 32;
/// Payloads up to this size are copied into the batch buffer; larger ones
/// are written as their own chunk without a copy.
const INLINE_PAYLOAD_BYTES_MAX: usize = 4 << 10;
/// Size of the buffers small frames are copied into. A full buffer becomes
/// one chunk of the stream write and the writer moves to the next one.
const SMALL_BUFFER_BYTES: usize = 64 << 10;
/// Copy buffers a protocol writer keeps for reuse (see [`CopyBuffers`]):
/// at most this many × [`SMALL_BUFFER_BYTES`] (1 MiB) stay allocated per
/// peer after a burst.
const COPY_BUFFERS_MAX: usize = 16;
/// Most frames coalesced into one write (in addition to the byte bound).
const WRITE_BATCH_FRAMES_MAX: usize = 1024;
/// How long `shutdown` waits for the endpoint to tell peers it is closing.
const CLOSE_WAIT_MS: u64 = 500;

/// Why the transport could not be built or a call was refused. Nothing
/// changed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// A configuration value is out of range.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The identity is unusable (bad key, certificate names another node …).
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The UDP socket could not be bound.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// A peer id that cannot be used (0, or this node's own id).
    #[error("invalid peer id {0}")]
    InvalidPeer(NodeId),
    /// The transport is shutting down.
    #[error("transport is shut down")]
    Shutdown,
}

/// Why [`QuicTransport::send_wait`] did not queue a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Not a known peer.
    #[error("unknown peer {0}")]
    UnknownPeer(NodeId),
    /// The payload exceeds `max_frame_bytes`.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Payload length.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// The peer was removed or the transport shut down.
    #[error("peer link closed")]
    Closed,
}

/// Why a [`QuicTransport::request`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Not a known peer.
    #[error("unknown peer {0}")]
    UnknownPeer(NodeId),
    /// The request or the response exceeds `max_frame_bytes`.
    #[error("message of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Length.
        len: u64,
        /// Limit.
        max: usize,
    },
    /// `max_inflight_requests_per_peer` requests are already waiting.
    #[error("too many requests in flight to this peer")]
    TooManyInflight,
    /// No answer before the deadline (including waiting for a connection).
    #[error("request timed out")]
    Timeout,
    /// The peer's handler queue is full.
    #[error("peer is busy")]
    Busy,
    /// The peer's handler refused or dropped the request.
    #[error("peer rejected the request")]
    Rejected,
    /// The peer's handler missed the deadline.
    #[error("peer handler timed out")]
    RemoteTimeout,
    /// The peer serves no requests.
    #[error("peer has no request handler")]
    NoHandler,
    /// The connection failed or the peer closed the stream unexpectedly.
    #[error("connection: {0}")]
    Connection(String),
    /// The response was malformed.
    #[error("malformed response: {0}")]
    Frame(#[from] FrameError),
    /// The transport is shutting down.
    #[error("transport is shut down")]
    Shutdown,
}

/// A request from a peer, waiting for an answer.
#[derive(Debug)]
pub struct IncomingRequest {
    /// Authenticated sender.
    pub from: NodeId,
    /// The group the request concerns.
    pub group: GroupId,
    /// The request body.
    pub payload: Bytes,
    /// When the requester stops waiting (its budget, capped at
    /// `max_request_budget_ms`).
    pub deadline: Instant,
    /// Answer through this.
    pub responder: Responder,
}

/// Answers one [`IncomingRequest`]. Dropping it refuses the request
/// ([`RequestError::Rejected`] at the requester).
#[derive(Debug)]
pub struct Responder {
    tx: oneshot::Sender<Bytes>,
}

impl Responder {
    /// Sends `payload` as the response. Returns false if the request is
    /// already gone (deadline passed or the requester gave up).
    pub fn respond(self, payload: Bytes) -> bool {
        self.tx.send(payload).is_ok()
    }
}

/// What [`QuicTransport::bind`] hands out.
#[derive(Debug)]
pub struct Bound {
    /// The transport.
    pub transport: QuicTransport,
    /// Frames received from peers.
    pub inbound: mpsc::Receiver<Inbound>,
    /// Requests from peers. Drop it to refuse all requests
    /// ([`RequestError::NoHandler`]).
    pub requests: mpsc::Receiver<IncomingRequest>,
}

/// A frame waiting in a peer queue (its kind is the queue's).
#[derive(Debug)]
struct OutFrame {
    group: GroupId,
    payload: Bytes,
}

/// Per-peer state shared by `send`, `request` and the peer task.
#[derive(Debug)]
struct PeerLink {
    id: NodeId,
    addr: Mutex<SocketAddr>,
    conn: watch::Sender<Option<Connection>>,
    permits: Arc<Semaphore>,
    /// Woken when the peer dials us: it is up (again), so a reconnect
    /// waiting out its backoff dials now. Without it a peer restarted after
    /// a crash heard us at once but could not be answered until our backoff
    /// (up to `reconnect_backoff_max_ms`) ran out, which stalled elections
    /// whose votes travel the other way.
    redial: tokio::sync::Notify,
}

/// The entry in the peer map. Dropping it (peer removed, shutdown) closes
/// the queues: the peer task writes what is queued, then ends.
#[derive(Debug)]
struct PeerHandle {
    link: Arc<PeerLink>,
    proto_tx: mpsc::Sender<OutFrame>,
    snap_tx: mpsc::Sender<OutFrame>,
    task: JoinHandle<()>,
}

#[derive(Debug)]
struct Shared {
    me: NodeId,
    config: QuicConfig,
    endpoint: quinn::Endpoint,
    client_config: quinn::ClientConfig,
    counters: Counters,
    /// Peers by id. A `BTreeMap`: a cluster has few peers, and an ordered
    /// lookup of a `u64` is cheaper than hashing it with SipHash on every
    /// `send`.
    peers: RwLock<BTreeMap<NodeId, PeerHandle>>,
    inbound_tx: mpsc::Sender<Inbound>,
    request_tx: mpsc::Sender<IncomingRequest>,
    /// Set to abort every task without draining.
    stop: watch::Sender<bool>,
    closing: AtomicBool,
    inbound_conns: AtomicUsize,
}

impl Shared {
    fn peers_read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<NodeId, PeerHandle>> {
        // Every critical section leaves the map consistent; a poisoned lock
        // holds usable state.
        self.peers.read().unwrap_or_else(|p| p.into_inner())
    }

    fn peers_write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<NodeId, PeerHandle>> {
        self.peers.write().unwrap_or_else(|p| p.into_inner())
    }

    fn count(&self, c: impl Fn(&Counters) -> &std::sync::atomic::AtomicU64, n: u64) {
        c(&self.counters).fetch_add(n, Ordering::Relaxed);
    }

    fn ms(&self, ms: u64) -> Duration {
        Duration::from_millis(ms)
    }
}

/// The QUIC peer transport of one node. Implements [`Transport`].
///
/// Must be created inside a Tokio runtime. Dropping it aborts every
/// connection without draining; call [`shutdown`](Self::shutdown) first for
/// an orderly stop.
#[derive(Debug)]
pub struct QuicTransport {
    shared: Arc<Shared>,
    accept_task: JoinHandle<()>,
}

impl QuicTransport {
    /// Binds the endpoint, starts accepting, and starts a link to every
    /// configured peer.
    pub fn bind(identity: NodeIdentity, config: QuicConfig) -> Result<Bound, TransportError> {
        config.validate()?;
        identity.check_names_self()?;
        let me = identity.node_id;
        if config.peers.contains_key(&me) {
            return Err(TransportError::InvalidPeer(me));
        }
        identity::install_ring_provider();

        let server_tls = identity::server_tls_config(&identity)?;
        let client_tls = identity::client_tls_config(&identity)?;
        let quic_server = QuicServerConfig::try_from(server_tls)
            .map_err(|e| IdentityError::Quic(e.to_string()))?;
        let quic_client = QuicClientConfig::try_from(client_tls)
            .map_err(|e| IdentityError::Quic(e.to_string()))?;

        let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(quic_server));
        server_config.transport_config(Arc::new(transport_config(&config, true)?));
        let mut client_config = quinn::ClientConfig::new(Arc::new(quic_client));
        client_config.transport_config(Arc::new(transport_config(&config, false)?));

        let bind_err = |source| TransportError::Bind {
            addr: config.listen_addr,
            source,
        };
        let socket = bind_udp(&config).map_err(bind_err)?;
        let mut endpoint_config = quinn::EndpointConfig::new(Arc::new(reset_key(&identity)));
        let cid_key = cid_key(&identity);
        endpoint_config.cid_generator(move || {
            Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
        });
        endpoint_config
            .max_udp_payload_size(config.max_udp_payload_bytes)
            .map_err(|_| ConfigError("max_udp_payload_bytes out of range"))?;
        let runtime = quinn::default_runtime()
            .ok_or_else(|| bind_err(std::io::Error::other("no Tokio runtime")))?;
        let socket = Arc::new(SplitGso::new(
            runtime.wrap_udp_socket(socket).map_err(bind_err)?,
        ));
        let endpoint = quinn::Endpoint::new_with_abstract_socket(
            endpoint_config,
            Some(server_config),
            socket,
            runtime,
        )
        .map_err(bind_err)?;

        let (inbound_tx, inbound) = mpsc::channel(config.inbound_queue_frames);
        let (request_tx, requests) = mpsc::channel(config.request_queue);
        let (stop, _) = watch::channel(false);
        let peers = config.peers.clone();
        let shared = Arc::new(Shared {
            me,
            config,
            endpoint,
            client_config,
            counters: Counters::default(),
            peers: RwLock::new(BTreeMap::new()),
            inbound_tx,
            request_tx,
            stop,
            closing: AtomicBool::new(false),
            inbound_conns: AtomicUsize::new(0),
        });
        let accept_task = tokio::spawn(accept_loop(Arc::clone(&shared)));
        let transport = Self {
            shared,
            accept_task,
        };
        for (id, addr) in peers {
            transport.add_peer(id, addr)?;
        }
        Ok(Bound {
            transport,
            inbound,
            requests,
        })
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.shared.me
    }

    /// The bound UDP address (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.shared.endpoint.local_addr()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> TransportStats {
        self.shared.counters.snapshot()
    }

    /// Whether a dialled connection to `peer` is up right now.
    pub fn is_connected(&self, peer: NodeId) -> bool {
        self.shared
            .peers_read()
            .get(&peer)
            .is_some_and(|p| p.link.conn.borrow().is_some())
    }

    /// The current packet size limit (path MTU as a UDP payload, in bytes)
    /// of the dialled connection to `peer`, if it is up: 1200 at first,
    /// raised by path-MTU discovery up to `max_udp_payload_bytes`.
    pub fn path_mtu(&self, peer: NodeId) -> Option<u16> {
        let peers = self.shared.peers_read();
        let conn = peers.get(&peer)?.link.conn.borrow();
        conn.as_ref().map(|c| c.stats().path.current_mtu)
    }

    /// Adds `id` at `addr`, or changes its address (used from the next
    /// connection attempt on).
    pub fn add_peer(&self, id: NodeId, addr: SocketAddr) -> Result<(), TransportError> {
        if id == NodeId(0) || id == self.shared.me {
            return Err(TransportError::InvalidPeer(id));
        }
        if self.shared.closing.load(Ordering::Acquire) {
            return Err(TransportError::Shutdown);
        }
        let mut peers = self.shared.peers_write();
        if let Some(p) = peers.get(&id) {
            *p.link.addr.lock().unwrap_or_else(|e| e.into_inner()) = addr;
            return Ok(());
        }
        let cfg = &self.shared.config;
        let (proto_tx, proto_rx) = mpsc::channel(cfg.peer_queue_frames);
        let (snap_tx, snap_rx) = mpsc::channel(cfg.snapshot_queue_frames);
        let link = Arc::new(PeerLink {
            id,
            addr: Mutex::new(addr),
            conn: watch::channel(None).0,
            permits: Arc::new(Semaphore::new(cfg.max_inflight_requests_per_peer as usize)),
            redial: tokio::sync::Notify::new(),
        });
        let task = tokio::spawn(run_peer(
            Arc::clone(&self.shared),
            Arc::clone(&link),
            proto_rx,
            snap_rx,
        ));
        peers.insert(
            id,
            PeerHandle {
                link,
                proto_tx,
                snap_tx,
                task,
            },
        );
        Ok(())
    }

    /// Removes `id`: frames already queued are still written if the link is
    /// up, then the link closes. Returns whether it was a peer.
    pub fn remove_peer(&self, id: NodeId) -> bool {
        self.shared.peers_write().remove(&id).is_some()
    }

    /// Queues `frame` for `to`, waiting for queue room instead of dropping.
    pub async fn send_wait(&self, to: NodeId, frame: Frame) -> Result<(), SendError> {
        let max = self.shared.config.max_frame_bytes;
        if frame.payload.len() > max {
            self.shared.count(|c| &c.dropped_oversize, 1);
            return Err(SendError::TooLarge {
                len: frame.payload.len(),
                max,
            });
        }
        let out = OutFrame {
            group: frame.group,
            payload: frame.payload,
        };
        let (tx, out) = {
            let peers = self.shared.peers_read();
            let p = peers.get(&to).ok_or(SendError::UnknownPeer(to))?;
            let q = match frame.kind {
                FrameKind::Protocol => &p.proto_tx,
                FrameKind::Snapshot => &p.snap_tx,
            };
            // Fast path: room in the queue, no sender clone, no await.
            match q.try_send(out) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::TrySendError::Closed(_)) => return Err(SendError::Closed),
                Err(mpsc::error::TrySendError::Full(out)) => (q.clone(), out),
            }
        };
        tx.send(out).await.map_err(|_| SendError::Closed)
    }

    /// Sends a request to `to` and waits at most `timeout_ms` for the
    /// response (connection set-up included). The peer's handler sees the
    /// remaining budget as its deadline.
    pub async fn request(
        &self,
        to: NodeId,
        group: GroupId,
        payload: Bytes,
        timeout_ms: u64,
    ) -> Result<Bytes, RequestError> {
        let r = self.request_inner(to, group, payload, timeout_ms).await;
        match &r {
            Ok(_) => self.shared.count(|c| &c.requests_ok, 1),
            Err(_) => self.shared.count(|c| &c.requests_failed, 1),
        }
        r
    }

    async fn request_inner(
        &self,
        to: NodeId,
        group: GroupId,
        payload: Bytes,
        timeout_ms: u64,
    ) -> Result<Bytes, RequestError> {
        let max = self.shared.config.max_frame_bytes;
        let len = checked_len(payload.len(), max).map_err(|_| RequestError::TooLarge {
            len: payload.len() as u64,
            max,
        })?;
        if self.shared.closing.load(Ordering::Acquire) {
            return Err(RequestError::Shutdown);
        }
        let link = {
            let peers = self.shared.peers_read();
            Arc::clone(&peers.get(&to).ok_or(RequestError::UnknownPeer(to))?.link)
        };
        let _permit = Arc::clone(&link.permits)
            .try_acquire_owned()
            .map_err(|_| RequestError::TooManyInflight)?;
        let deadline = Instant::now() + Duration::from_millis(timeout_ms);
        let me = self.shared.me;
        let exchange = async {
            let mut conn_rx = link.conn.subscribe();
            let conn = conn_rx
                .wait_for(Option::is_some)
                .await
                .map_err(|_| RequestError::Shutdown)?
                .clone()
                .ok_or(RequestError::Shutdown)?;
            let (mut send, mut recv) = conn
                .open_bi()
                .await
                .map_err(|e| RequestError::Connection(e.to_string()))?;
            let budget_ms = deadline
                .saturating_duration_since(Instant::now())
                .as_millis()
                .min(u128::from(u32::MAX)) as u32;
            let pre = Preamble {
                kind: StreamKind::Request,
                budget_ms,
                sender: me.0,
            };
            let mut chunks = [
                Bytes::copy_from_slice(&pre.encode()),
                Bytes::copy_from_slice(&encode_header(WireKind::Request, group, len)),
                payload,
            ];
            send.write_all_chunks(&mut chunks)
                .await
                .map_err(|e| RequestError::Connection(e.to_string()))?;
            // The stream may already be reset by the peer; the read reports it.
            let _ = send.finish();
            let decoder = FrameDecoder::only(WireKind::Response, max);
            let mut buf = BytesMut::new();
            loop {
                if let Some(f) = decoder.decode(&mut buf)? {
                    return Ok(f.payload);
                }
                match recv.read_chunk(READ_CHUNK_BYTES_MAX, true).await {
                    Ok(Some(chunk)) => buf.extend_from_slice(&chunk.bytes),
                    Ok(None) => return Err(FrameError::Truncated(buf.len()).into()),
                    Err(quinn::ReadError::Reset(code)) => return Err(remote_code(code)),
                    Err(e) => return Err(RequestError::Connection(e.to_string())),
                }
            }
        };
        tokio::time::timeout_at(deadline, exchange)
            .await
            .map_err(|_| RequestError::Timeout)?
    }

    /// Orderly stop: refuses new frames, writes what every peer queue holds
    /// (waiting until the peer acknowledged it), then closes the endpoint.
    /// Gives up draining after `drain_timeout_ms`; frames still queued then
    /// count as `dropped_disconnected`.
    pub async fn shutdown(&self, drain_timeout_ms: u64) {
        self.shared.closing.store(true, Ordering::Release);
        let handles: Vec<PeerHandle> = std::mem::take(&mut *self.shared.peers_write())
            .into_values()
            .collect();
        // Dropping the senders lets each peer task drain and finish.
        let mut tasks = Vec::with_capacity(handles.len());
        for p in handles {
            tasks.push(p.task);
        }
        let deadline = Instant::now() + self.shared.ms(drain_timeout_ms);
        wait_all(&mut tasks, deadline).await;
        // Past the drain deadline: tell the rest to stop (they count what is
        // left in their queues), give them a moment, then abort.
        self.shared.stop.send_replace(true);
        wait_all(&mut tasks, Instant::now() + self.shared.ms(CLOSE_WAIT_MS)).await;
        for t in &tasks {
            t.abort();
        }
        self.accept_task.abort();
        self.shared
            .endpoint
            .close(VarInt::from_u32(code::SHUTDOWN), b"shutdown");
        let _ = tokio::time::timeout(
            self.shared.ms(CLOSE_WAIT_MS),
            self.shared.endpoint.wait_idle(),
        )
        .await;
    }
}

impl Drop for QuicTransport {
    fn drop(&mut self) {
        self.shared.closing.store(true, Ordering::Release);
        self.shared.stop.send_replace(true);
        self.accept_task.abort();
        for p in std::mem::take(&mut *self.shared.peers_write()).into_values() {
            p.task.abort();
        }
        self.shared
            .endpoint
            .close(VarInt::from_u32(code::GONE), b"gone");
    }
}

impl Transport for QuicTransport {
    fn send(&self, to: NodeId, frame: Frame) {
        let sh = &self.shared;
        if frame.payload.len() > sh.config.max_frame_bytes {
            sh.count(|c| &c.dropped_oversize, 1);
            return;
        }
        let peers = sh.peers_read();
        let Some(p) = peers.get(&to) else {
            sh.count(|c| &c.dropped_unknown_peer, 1);
            return;
        };
        let q = match frame.kind {
            FrameKind::Protocol => &p.proto_tx,
            FrameKind::Snapshot => &p.snap_tx,
        };
        match q.try_send(OutFrame {
            group: frame.group,
            payload: frame.payload,
        }) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => sh.count(|c| &c.dropped_queue_full, 1),
            Err(mpsc::error::TrySendError::Closed(_)) => sh.count(|c| &c.dropped_disconnected, 1),
        }
    }
}

fn transport_config(
    cfg: &QuicConfig,
    inbound: bool,
) -> Result<quinn::TransportConfig, ConfigError> {
    let mut tc = quinn::TransportConfig::default();
    let idle = quinn::IdleTimeout::try_from(Duration::from_millis(cfg.idle_timeout_ms))
        .map_err(|_| ConfigError("idle_timeout_ms is too large"))?;
    tc.max_idle_timeout(Some(idle));
    tc.keep_alive_interval(Some(Duration::from_millis(cfg.keep_alive_ms)));
    let window = |v: u64| VarInt::from_u64(v).map_err(|_| ConfigError("window too large"));
    tc.stream_receive_window(window(cfg.stream_window_bytes)?);
    tc.receive_window(window(cfg.connection_window_bytes)?);
    tc.send_window(cfg.connection_window_bytes);
    let mut mtud = quinn::MtuDiscoveryConfig::default();
    mtud.upper_bound(cfg.max_udp_payload_bytes);
    tc.mtu_discovery_config(Some(mtud));

    if inbound {
        tc.max_concurrent_uni_streams(VarInt::from_u32(cfg.max_uni_streams_per_peer));
        tc.max_concurrent_bidi_streams(VarInt::from_u32(cfg.max_inflight_requests_per_peer));
    } else {
        // Peers never open streams on a connection we dialled.
        tc.max_concurrent_uni_streams(VarInt::from_u32(0));
        tc.max_concurrent_bidi_streams(VarInt::from_u32(0));
    }
    Ok(tc)
}

/// The key this node's stateless-reset tokens are derived from: a pure
/// function of its private key, so it is the same after a restart.
///
/// quinn's default is a random key per process. Then a node restarted
/// after a crash (`kill -9`: no CONNECTION_CLOSE was sent) cannot prove to
/// a peer that still holds a connection to its previous process that the
/// connection is gone: its resets carry tokens the peer does not know, the
/// peer keeps sending into the dead connection until the idle timeout, and
/// the two cannot talk for that long (measured: elections after a restart
/// stalled for up to the 10 s idle timeout). With a stable key the new
/// process answers the stale packets with a valid stateless reset (RFC 9000
/// §10.3), the peer drops the connection at once and redials. The key is
/// derived with a domain-separation label, so it reveals nothing about the
/// private key.
fn reset_key(identity: &NodeIdentity) -> ring::hmac::Key {
    let root = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, identity.key.secret_der());
    let derived = ring::hmac::sign(&root, b"ha-transport-quic stateless reset key v1");
    ring::hmac::Key::new(ring::hmac::HMAC_SHA256, derived.as_ref())
}

/// The key this node's connection ids are signed with: a pure function of
/// its private key, so it is the same after a restart.
///
/// quinn checks the destination connection id of a packet that matches no
/// connection before it answers with a stateless reset, and drops the
/// packet silently when the id was not made with its own key. With quinn's
/// default (a random key per process) a restarted node therefore dropped
/// every packet of its peers' stale connections to its previous process
/// ("dropping packet with invalid CID") and never sent the reset that
/// [`reset_key`] makes verifiable: the peers kept sending into the dead
/// connection until the idle timeout (measured: 10 s without a word from
/// a survivor to the restarted member, the slow mode of leader failover).
/// With a stable key the ids of the previous process validate, and the
/// reset goes out at the first stale packet.
fn cid_key(identity: &NodeIdentity) -> u64 {
    let root = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, identity.key.secret_der());
    let derived = ring::hmac::sign(&root, b"ha-transport-quic connection id key v1");
    let mut k = [0u8; 8];
    k.copy_from_slice(&derived.as_ref()[..8]);
    u64::from_le_bytes(k)
}

/// Binds the UDP socket with the configured kernel buffer sizes. The
/// kernel may grant less than asked (capped by `net.core.rmem_max` /
/// `wmem_max`); that is logged, not an error.
fn bind_udp(cfg: &QuicConfig) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let addr = cfg.listen_addr;
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    let want = cfg.udp_socket_buffer_bytes;
    for (what, set, get) in [
        (
            "SO_RCVBUF",
            Socket::set_recv_buffer_size as fn(&Socket, usize) -> std::io::Result<()>,
            Socket::recv_buffer_size as fn(&Socket) -> std::io::Result<usize>,
        ),
        (
            "SO_SNDBUF",
            Socket::set_send_buffer_size,
            Socket::send_buffer_size,
        ),
    ] {
        if let Err(e) = set(&socket, want) {
            warn!(%addr, option = what, error = %e, "cannot size UDP socket buffer");
            continue;
        }
        // Linux reports twice the usable size it granted.
        match get(&socket) {
            Ok(got) if got < want => debug!(
                %addr, option = what, want, got,
                "UDP socket buffer capped by the kernel (raise net.core.rmem_max/wmem_max)"
            ),
            _ => {}
        }
    }
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Waits until every task has finished or `deadline` passes.
async fn wait_all(tasks: &mut [JoinHandle<()>], deadline: Instant) {
    for t in tasks.iter_mut() {
        if t.is_finished() {
            continue;
        }
        if tokio::time::timeout_at(deadline, &mut *t).await.is_err() {
            return;
        }
    }
}

/// Whether a connection error is a TLS refusal (QUIC CRYPTO_ERROR range,
/// 0x0100–0x01ff), by either side.
fn is_tls_refusal(e: &ConnectionError) -> bool {
    let crypto = |code: quinn::TransportErrorCode| (0x100..0x200).contains(&u64::from(code));
    match e {
        ConnectionError::TransportError(t) => crypto(t.code),
        ConnectionError::ConnectionClosed(c) => crypto(c.error_code),
        _ => false,
    }
}

fn remote_code(code: VarInt) -> RequestError {
    match u32::try_from(code.into_inner()) {
        Ok(code::BUSY) => RequestError::Busy,
        Ok(code::REJECTED) => RequestError::Rejected,
        Ok(code::TIMEOUT) => RequestError::RemoteTimeout,
        Ok(code::NO_HANDLER) => RequestError::NoHandler,
        _ => RequestError::Connection(format!("stream reset with code {code}")),
    }
}

/// Exponential backoff with jitter: the n-th wait is uniform in
/// [d/2, d] with d = min(max, min·2ⁿ).
#[derive(Debug)]
struct Backoff {
    min_ms: u64,
    max_ms: u64,
    attempt: u32,
    rng: SmallRng,
}

impl Backoff {
    fn new(min_ms: u64, max_ms: u64, seed: u64) -> Self {
        Self {
            min_ms,
            max_ms,
            attempt: 0,
            rng: SmallRng::seed_from_u64(seed),
        }
    }

    fn reset(&mut self) {
        self.attempt = 0;
    }

    fn next_delay(&mut self) -> Duration {
        let d = self
            .min_ms
            .saturating_mul(1u64 << self.attempt.min(32))
            .min(self.max_ms);
        self.attempt = self.attempt.saturating_add(1);
        Duration::from_millis(self.rng.random_range(d / 2..=d))
    }
}

enum LinkEnd {
    /// Queues closed and everything written.
    Drained,
    /// The connection failed.
    Lost(String),
}

/// The life of one outgoing link: dial, write, re-dial.
async fn run_peer(
    shared: Arc<Shared>,
    link: Arc<PeerLink>,
    mut proto_rx: mpsc::Receiver<OutFrame>,
    mut snap_rx: mpsc::Receiver<OutFrame>,
) {
    let cfg = &shared.config;
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let seed = shared.me.0.rotate_left(32) ^ link.id.0 ^ u64::from(nanos);
    let mut backoff = Backoff::new(
        cfg.reconnect_backoff_min_ms,
        cfg.reconnect_backoff_max_ms,
        seed,
    );
    let mut stop = shared.stop.subscribe();
    let mut ever_connected = false;
    loop {
        let drained = proto_rx.is_closed()
            && proto_rx.is_empty()
            && snap_rx.is_closed()
            && snap_rx.is_empty();
        if drained || *stop.borrow() {
            break;
        }
        let addr = *link.addr.lock().unwrap_or_else(|e| e.into_inner());
        let attempt = tokio::select! {
            r = connect(&shared, link.id, addr) => r,
            _ = stop.wait_for(|s| *s) => break,
        };
        match attempt {
            Ok(conn) => {
                shared.count(|c| &c.connects, 1);
                if ever_connected {
                    shared.count(|c| &c.reconnects, 1);
                }
                ever_connected = true;
                backoff.reset();
                debug!(me = %shared.me, peer = %link.id, %addr, "connected");
                link.conn.send_replace(Some(conn.clone()));
                let end = tokio::select! {
                    end = drive(&shared, &conn, &mut proto_rx, &mut snap_rx) => Some(end),
                    _ = stop.wait_for(|s| *s) => None,
                };
                link.conn.send_replace(None);
                match end {
                    Some(LinkEnd::Drained) => {
                        conn.close(VarInt::from_u32(code::SHUTDOWN), b"drained");
                        return;
                    }
                    Some(LinkEnd::Lost(why)) => {
                        debug!(me = %shared.me, peer = %link.id, %why, "link lost");
                    }
                    None => {
                        conn.close(VarInt::from_u32(code::GONE), b"stopped");
                        break;
                    }
                }
            }
            Err(why) => {
                debug!(me = %shared.me, peer = %link.id, %addr, %why, "connect failed");
            }
        }
        let delay = backoff.next_delay();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            // The peer just dialed us: it is reachable now. (A wake-up left
            // over from a dial while we were connected skips one backoff
            // only; we never drop a live connection for it, so two nodes
            // cannot make each other redial in a loop.)
            _ = link.redial.notified() => backoff.reset(),
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    // Whatever is still queued will never be written.
    let left = proto_rx.len() + snap_rx.len();
    shared.count(|c| &c.dropped_disconnected, left as u64);
}

/// Dials `id` at `addr`, verifying the certificate names `node-<id>.ha`.
async fn connect(shared: &Shared, id: NodeId, addr: SocketAddr) -> Result<Connection, String> {
    let fail = |why: String| {
        shared.count(|c| &c.connect_failures, 1);
        why
    };
    let connecting = shared
        .endpoint
        .connect_with(shared.client_config.clone(), addr, &node_dns_name(id))
        .map_err(|e| fail(e.to_string()))?;
    let timeout = shared.ms(shared.config.connect_timeout_ms);
    match tokio::time::timeout(timeout, connecting).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => {
            if is_tls_refusal(&e) {
                shared.count(|c| &c.handshake_failures, 1);
                warn!(me = %shared.me, peer = %id, %addr, error = %e, "TLS handshake refused");
            }
            Err(fail(e.to_string()))
        }
        Err(_) => Err(fail("connect timed out".into())),
    }
}

/// Runs the writers of one connection until the queues are drained or the
/// connection fails.
async fn drive(
    shared: &Shared,
    conn: &Connection,
    proto_rx: &mut mpsc::Receiver<OutFrame>,
    snap_rx: &mut mpsc::Receiver<OutFrame>,
) -> LinkEnd {
    let writers = async {
        tokio::try_join!(
            protocol_writer(shared, conn, proto_rx),
            snapshot_writer(shared, conn, snap_rx)
        )
    };
    tokio::select! {
        r = writers => match r {
            Ok(_) => LinkEnd::Drained,
            Err(why) => LinkEnd::Lost(why),
        },
        e = conn.closed() => {
            if is_tls_refusal(&e) {
                // TLS 1.3: the server checks our certificate after our side
                // considered the handshake done.
                shared.count(|c| &c.handshake_failures, 1);
                warn!(me = %shared.me, error = %e, "peer refused our certificate");
            }
            LinkEnd::Lost(e.to_string())
        }
    }
}

async fn open_stream(
    shared: &Shared,
    conn: &Connection,
    kind: StreamKind,
) -> Result<SendStream, String> {
    let mut s = conn.open_uni().await.map_err(|e| e.to_string())?;
    let pre = Preamble {
        kind,
        budget_ms: 0,
        sender: shared.me.0,
    };
    s.write_all(&pre.encode())
        .await
        .map_err(|e| e.to_string())?;
    Ok(s)
}

/// The protocol writer's copy buffers, recycled.
///
/// Small frames are copied into `current`; a written batch is split off as
/// a `Bytes` chunk that quinn keeps until the peer acknowledges it, so a
/// buffer cannot be reused in place. Allocating a fresh one per batch made
/// the allocator map, page-fault and unmap memory continuously (~10% of the
/// CPU at 1 KiB messages). Instead, a used-up buffer (whose remainder still
/// owns the allocation) is parked in `parked`, and when a new one is needed
/// the oldest parked buffer is reclaimed if quinn has dropped every chunk
/// of it (acknowledged data is released in order, so the oldest frees
/// first); otherwise a new buffer is allocated.
#[derive(Debug)]
struct CopyBuffers {
    current: BytesMut,
    parked: std::collections::VecDeque<BytesMut>,
}

impl CopyBuffers {
    fn new() -> Self {
        Self {
            current: BytesMut::with_capacity(SMALL_BUFFER_BYTES),
            parked: std::collections::VecDeque::with_capacity(COPY_BUFFERS_MAX),
        }
    }

    /// Makes room for `need` bytes in `current`, moving what it holds to
    /// `chunks` first if it must switch buffers.
    fn room(&mut self, need: usize, chunks: &mut Vec<Bytes>) -> &mut BytesMut {
        if self.current.capacity() - self.current.len() >= need {
            return &mut self.current;
        }
        if !self.current.is_empty() {
            chunks.push(self.current.split().freeze());
        }
        let want = SMALL_BUFFER_BYTES.max(need);
        let reclaimed = self.parked.front_mut().is_some_and(|b| b.try_reclaim(want));
        let reused = if reclaimed {
            self.parked.pop_front()
        } else {
            None
        };
        let next = reused.unwrap_or_else(|| BytesMut::with_capacity(want));
        let used = std::mem::replace(&mut self.current, next);
        if self.parked.len() >= COPY_BUFFERS_MAX {
            // Still in flight: let quinn's chunks own it from now on.
            self.parked.pop_front();
        }
        self.parked.push_back(used);
        &mut self.current
    }

    /// Moves whatever `current` holds to `chunks`.
    fn flush(&mut self, chunks: &mut Vec<Bytes>) {
        if !self.current.is_empty() {
            chunks.push(self.current.split().freeze());
        }
    }
}

/// Appends one frame to the batch: small payloads are copied into the copy
/// buffers, large ones become their own chunk.
fn push_frame(
    kind: WireKind,
    f: OutFrame,
    bufs: &mut CopyBuffers,
    chunks: &mut Vec<Bytes>,
    max: usize,
) -> Option<usize> {
    let len = checked_len(f.payload.len(), max).ok()?;
    let inline = f.payload.len() <= INLINE_PAYLOAD_BYTES_MAX;
    let need = FRAME_HEADER_BYTES + if inline { f.payload.len() } else { 0 };
    let small = bufs.room(need, chunks);
    small.put_slice(&encode_header(kind, f.group, len));
    if inline {
        small.put_slice(&f.payload);
    } else {
        chunks.push(small.split().freeze());
        chunks.push(f.payload);
    }
    Some(len as usize)
}

/// Writes protocol frames, in queue order, on one long-lived stream.
async fn protocol_writer(
    shared: &Shared,
    conn: &Connection,
    rx: &mut mpsc::Receiver<OutFrame>,
) -> Result<(), String> {
    let cfg = &shared.config;
    let mut stream: Option<SendStream> = None;
    let mut chunks: Vec<Bytes> = Vec::with_capacity(16);
    let mut bufs = CopyBuffers::new();
    while let Some(first) = rx.recv().await {
        let mut frames = 0u64;
        let mut bytes = 0usize;
        let mut next = Some(first);
        while let Some(f) = next.take() {
            if let Some(n) = push_frame(
                WireKind::Protocol,
                f,
                &mut bufs,
                &mut chunks,
                cfg.max_frame_bytes,
            ) {
                frames += 1;
                bytes += n;
            }
            if bytes + (frames as usize) * FRAME_HEADER_BYTES >= cfg.write_batch_bytes_max
                || frames as usize >= WRITE_BATCH_FRAMES_MAX
            {
                break;
            }
            next = rx.try_recv().ok();
        }
        bufs.flush(&mut chunks);
        let s = match &mut stream {
            Some(s) => s,
            None => match open_stream(shared, conn, StreamKind::Protocol).await {
                Ok(s) => stream.insert(s),
                Err(e) => {
                    chunks.clear();
                    shared.count(|c| &c.dropped_disconnected, frames);
                    return Err(e);
                }
            },
        };
        let r = s.write_all_chunks(&mut chunks).await;
        chunks.clear();
        if let Err(e) = r {
            shared.count(|c| &c.dropped_disconnected, frames);
            return Err(e.to_string());
        }
        shared.count(|c| &c.frames_sent, frames);
        shared.count(|c| &c.bytes_sent, bytes as u64);
    }
    if let Some(mut s) = stream {
        let _ = s.finish();
        s.stopped().await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Writes snapshot chunks: one stream per group while chunks keep coming.
async fn snapshot_writer(
    shared: &Shared,
    conn: &Connection,
    rx: &mut mpsc::Receiver<OutFrame>,
) -> Result<(), String> {
    let cfg = &shared.config;
    let idle = shared.ms(cfg.snapshot_stream_idle_ms);
    let mut streams: HashMap<GroupId, (SendStream, Instant)> = HashMap::new();
    // Leave one stream of the peer's allowance for the protocol stream.
    let max_streams = (cfg.max_uni_streams_per_peer as usize)
        .saturating_sub(1)
        .max(1);
    let mut tick = tokio::time::interval(idle / 2 + Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let f = tokio::select! {
            f = rx.recv() => match f {
                Some(f) => f,
                None => break,
            },
            _ = tick.tick() => {
                let now = Instant::now();
                streams.retain(|_, (s, last)| {
                    if now.duration_since(*last) < idle {
                        return true;
                    }
                    let _ = s.finish();
                    false
                });
                continue;
            }
        };
        let group = f.group;
        let Ok(len) = checked_len(f.payload.len(), cfg.max_frame_bytes) else {
            shared.count(|c| &c.dropped_oversize, 1);
            continue;
        };
        if !streams.contains_key(&group) && streams.len() >= max_streams {
            // At the stream cap: finish the least recently used transfer
            // stream (its next chunk opens a new one) rather than wait in
            // open_uni while holding every stream open.
            let lru = streams
                .iter()
                .min_by_key(|(_, (_, last))| *last)
                .map(|(g, _)| *g);
            if let Some((mut old, _)) = lru.and_then(|g| streams.remove(&g)) {
                let _ = old.finish();
            }
        }
        let (s, last) = match streams.entry(group) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                match open_stream(shared, conn, StreamKind::Snapshot).await {
                    Ok(s) => v.insert((s, Instant::now())),
                    Err(e) => {
                        shared.count(|c| &c.dropped_disconnected, 1);
                        return Err(e);
                    }
                }
            }
        };
        let mut chunks = [
            Bytes::copy_from_slice(&encode_header(WireKind::Snapshot, group, len)),
            f.payload,
        ];
        match s.write_all_chunks(&mut chunks).await {
            Ok(()) => {
                *last = Instant::now();
                shared.count(|c| &c.frames_sent, 1);
                shared.count(|c| &c.bytes_sent, u64::from(len));
            }
            Err(quinn::WriteError::Stopped(code)) => {
                // The receiver gave up on this transfer only.
                warn!(me = %shared.me, %group, %code, "snapshot stream stopped by peer");
                shared.count(|c| &c.dropped_disconnected, 1);
                streams.remove(&group);
            }
            Err(e) => {
                shared.count(|c| &c.dropped_disconnected, 1);
                return Err(e.to_string());
            }
        }
    }
    for (_, (mut s, _)) in streams {
        let _ = s.finish();
        s.stopped().await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Counts an inbound connection for as long as it lives.
struct InboundGuard<'a>(&'a AtomicUsize);

impl Drop for InboundGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn accept_loop(shared: Arc<Shared>) {
    while let Some(incoming) = shared.endpoint.accept().await {
        if shared.closing.load(Ordering::Acquire) {
            incoming.refuse();
            continue;
        }
        let n = shared.inbound_conns.fetch_add(1, Ordering::AcqRel);
        if n >= shared.config.max_inbound_connections {
            shared.inbound_conns.fetch_sub(1, Ordering::AcqRel);
            shared.count(|c| &c.inbound_refused, 1);
            incoming.refuse();
            continue;
        }
        tokio::spawn(serve_connection(Arc::clone(&shared), incoming));
    }
}

/// The peer's node id from its verified certificate.
fn peer_node_id(conn: &Connection) -> Result<NodeId, String> {
    let ident = conn
        .peer_identity()
        .ok_or_else(|| "no peer certificate".to_string())?;
    let certs = ident
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .map_err(|_| "unexpected peer identity type".to_string())?;
    let leaf = certs
        .first()
        .ok_or_else(|| "empty peer certificate chain".to_string())?;
    node_id_from_cert(leaf).map_err(|e| e.to_string())
}

async fn serve_connection(shared: Arc<Shared>, incoming: quinn::Incoming) {
    let _guard = InboundGuard(&shared.inbound_conns);
    let remote = incoming.remote_address();
    let timeout = shared.ms(shared.config.connect_timeout_ms);
    let conn = match tokio::time::timeout(timeout, incoming).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            shared.count(|c| &c.handshake_failures, 1);
            warn!(me = %shared.me, %remote, error = %e, "inbound handshake failed");
            return;
        }
        Err(_) => {
            shared.count(|c| &c.handshake_failures, 1);
            warn!(me = %shared.me, %remote, "inbound handshake timed out");
            return;
        }
    };
    let peer = match peer_node_id(&conn) {
        Ok(id) if id != shared.me => id,
        Ok(id) => {
            reject_identity(&shared, &conn, format!("peer presents our own id {id}"));
            return;
        }
        Err(why) => {
            reject_identity(&shared, &conn, why);
            return;
        }
    };
    shared.count(|c| &c.inbound_connections, 1);
    debug!(me = %shared.me, %peer, %remote, "accepted connection");
    if let Some(p) = shared.peers_read().get(&peer) {
        p.link.redial.notify_one();
    }
    let mut stop = shared.stop.subscribe();
    loop {
        tokio::select! {
            s = conn.accept_uni() => match s {
                Ok(recv) => {
                    tokio::spawn(read_stream(Arc::clone(&shared), conn.clone(), peer, recv));
                }
                Err(_) => break,
            },
            s = conn.accept_bi() => match s {
                Ok((send, recv)) => {
                    tokio::spawn(serve_request(Arc::clone(&shared), conn.clone(), peer, send, recv));
                }
                Err(_) => break,
            },
            _ = stop.wait_for(|s| *s) => {
                conn.close(VarInt::from_u32(code::SHUTDOWN), b"shutdown");
                break;
            }
        }
    }
}

fn reject_identity(shared: &Shared, conn: &Connection, why: String) {
    shared.count(|c| &c.identity_rejections, 1);
    warn!(me = %shared.me, remote = %conn.remote_address(), %why, "peer identity refused");
    conn.close(VarInt::from_u32(code::IDENTITY), b"identity");
}

fn frame_error(shared: &Shared, peer: NodeId, recv: &mut RecvStream, e: &FrameError) {
    shared.count(|c| &c.frame_errors, 1);
    warn!(me = %shared.me, %peer, error = %e, "bad frame; closing stream");
    let _ = recv.stop(VarInt::from_u32(code::FRAME_ERROR));
}

/// Reads and checks a stream preamble. `Ok(None)`: the stream or connection
/// is gone (already handled).
async fn read_preamble(
    shared: &Shared,
    conn: &Connection,
    peer: NodeId,
    recv: &mut RecvStream,
) -> Option<Preamble> {
    let mut raw = [0u8; PREAMBLE_BYTES];
    let timeout = shared.ms(shared.config.connect_timeout_ms);
    let res = tokio::time::timeout(timeout, recv.read_exact(&mut raw)).await;
    let err = match res {
        Ok(Ok(())) => match Preamble::decode(&raw) {
            Ok(p) => {
                if p.sender != peer.0 {
                    reject_identity(
                        shared,
                        conn,
                        format!("certificate names node {peer}, stream claims {}", p.sender),
                    );
                    return None;
                }
                return Some(p);
            }
            Err(e) => e,
        },
        Ok(Err(quinn::ReadExactError::FinishedEarly(n))) => FrameError::Truncated(n),
        Ok(Err(quinn::ReadExactError::ReadError(_))) => return None,
        Err(_) => FrameError::Truncated(0),
    };
    frame_error(shared, peer, recv, &err);
    None
}

/// Reads one protocol or snapshot stream and delivers its frames in order.
async fn read_stream(shared: Arc<Shared>, conn: Connection, peer: NodeId, mut recv: RecvStream) {
    let Some(pre) = read_preamble(&shared, &conn, peer, &mut recv).await else {
        return;
    };
    let kind = match pre.kind {
        StreamKind::Protocol => FrameKind::Protocol,
        StreamKind::Snapshot => FrameKind::Snapshot,
        StreamKind::Request => {
            frame_error(&shared, peer, &mut recv, &FrameError::UnknownStreamKind(3));
            return;
        }
    };
    let decoder = FrameDecoder::for_stream(pre.kind, shared.config.max_frame_bytes);
    let mut asm = StreamAssembler::new(decoder);
    let mut chunks: [Bytes; READ_CHUNKS_PER_CALL] = Default::default();
    let mut ready: VecDeque<WireFrame> = VecDeque::new();
    // Delivered but not yet counted (counted once per read, not per frame).
    let (mut frames, mut bytes) = (0u64, 0u64);
    let count = |frames: &mut u64, bytes: &mut u64| {
        shared.count(|c| &c.frames_received, std::mem::take(frames));
        shared.count(|c| &c.bytes_received, std::mem::take(bytes));
    };
    loop {
        let mut bad = None;
        match recv.read_chunks(&mut chunks).await {
            Ok(Some(n)) => {
                for c in &mut chunks[..n] {
                    // Taken, so quinn's receive buffer is released now.
                    let c = std::mem::take(c);
                    if bad.is_none()
                        && let Err(e) = asm.push(&c, &mut ready)
                    {
                        bad = Some(e);
                    }
                }
            }
            Ok(None) => {
                if let Err(e) = asm.finish() {
                    frame_error(&shared, peer, &mut recv, &e);
                }
                return;
            }
            Err(e) => {
                debug!(me = %shared.me, %peer, error = %e, "stream ended");
                return;
            }
        }
        // The frames before a bad one are delivered, then the stream closes.
        while let Some(f) = ready.pop_front() {
            let n = f.payload.len() as u64;
            let inbound = Inbound {
                from: peer,
                frame: Frame {
                    group: f.group,
                    kind,
                    payload: f.payload,
                },
            };
            // Fast path without an await; wait (back-pressure) only when
            // the consumer's queue is full.
            let sent = match shared.inbound_tx.try_send(inbound) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Closed(_)) => false,
                Err(mpsc::error::TrySendError::Full(inbound)) => {
                    count(&mut frames, &mut bytes);
                    shared.inbound_tx.send(inbound).await.is_ok()
                }
            };
            if !sent {
                count(&mut frames, &mut bytes);
                shared.count(|c| &c.dropped_inbound_closed, 1);
                let _ = recv.stop(VarInt::from_u32(code::GONE));
                return;
            }
            frames += 1;
            bytes += n;
        }
        count(&mut frames, &mut bytes);
        if let Some(e) = bad {
            frame_error(&shared, peer, &mut recv, &e);
            return;
        }
    }
}

/// Serves one request stream: read the request, hand it to the handler,
/// write its answer (or reset the stream with a refusal code).
async fn serve_request(
    shared: Arc<Shared>,
    conn: Connection,
    peer: NodeId,
    mut send: SendStream,
    mut recv: RecvStream,
) {
    let refuse = |send: &mut SendStream, c: u32| {
        shared.count(|c| &c.requests_refused, 1);
        let _ = send.reset(VarInt::from_u32(c));
    };
    let Some(pre) = read_preamble(&shared, &conn, peer, &mut recv).await else {
        let _ = send.reset(VarInt::from_u32(code::FRAME_ERROR));
        return;
    };
    if pre.kind != StreamKind::Request {
        frame_error(&shared, peer, &mut recv, &FrameError::UnknownStreamKind(0));
        let _ = send.reset(VarInt::from_u32(code::FRAME_ERROR));
        return;
    }
    let max = shared.config.max_frame_bytes;
    let budget = u64::from(pre.budget_ms).min(shared.config.max_request_budget_ms);
    let deadline = Instant::now() + Duration::from_millis(budget);
    let decoder = FrameDecoder::for_stream(StreamKind::Request, max);
    let mut buf = BytesMut::new();
    let read = async {
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(f)) => return Ok(Some(f)),
                Ok(None) => {}
                Err(e) => return Err(e),
            }
            match recv.read_chunk(READ_CHUNK_BYTES_MAX, true).await {
                Ok(Some(chunk)) => buf.extend_from_slice(&chunk.bytes),
                Ok(None) => return Err(FrameError::Truncated(buf.len())),
                Err(_) => return Ok(None),
            }
        }
    };
    let req = match tokio::time::timeout_at(deadline, read).await {
        Ok(Ok(Some(f))) => f,
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            frame_error(&shared, peer, &mut recv, &e);
            let _ = send.reset(VarInt::from_u32(code::FRAME_ERROR));
            return;
        }
        Err(_) => {
            refuse(&mut send, code::TIMEOUT);
            return;
        }
    };
    let (tx, rx) = oneshot::channel();
    let incoming = IncomingRequest {
        from: peer,
        group: req.group,
        payload: req.payload,
        deadline,
        responder: Responder { tx },
    };
    match shared.request_tx.try_send(incoming) {
        Ok(()) => {}
        Err(mpsc::error::TrySendError::Full(_)) => return refuse(&mut send, code::BUSY),
        Err(mpsc::error::TrySendError::Closed(_)) => return refuse(&mut send, code::NO_HANDLER),
    }
    let response = match tokio::time::timeout_at(deadline, rx).await {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => return refuse(&mut send, code::REJECTED),
        Err(_) => return refuse(&mut send, code::TIMEOUT),
    };
    let mut out = BytesMut::new();
    if encode_frame(&mut out, WireKind::Response, req.group, &response, max).is_err() {
        warn!(me = %shared.me, %peer, len = response.len(), "response exceeds max_frame_bytes");
        return refuse(&mut send, code::REJECTED);
    }
    if send.write_all(&out).await.is_ok() {
        let _ = send.finish();
        shared.count(|c| &c.requests_served, 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter_in_range() {
        let mut b = Backoff::new(50, 1000, 7);
        let expect_caps = [50u64, 100, 200, 400, 800, 1000, 1000];
        for cap in expect_caps {
            let d = b.next_delay().as_millis() as u64;
            assert!(
                d >= cap / 2 && d <= cap,
                "delay {d} outside [{}, {cap}]",
                cap / 2
            );
        }
        b.reset();
        assert!(b.next_delay().as_millis() <= 50);
        // Far past the cap: no overflow.
        for _ in 0..100 {
            assert!(b.next_delay().as_millis() <= 1000);
        }
    }

    #[test]
    fn copy_buffers_keep_order_and_reuse_acknowledged_buffers() {
        let mut bufs = CopyBuffers::new();
        let first_alloc = bufs.current.as_ptr();
        let mut chunks = Vec::new();
        let piece = [7u8; 1000];
        // Fill well past one buffer: the switch flushes into `chunks` in order.
        for i in 0..100u8 {
            let b = bufs.room(piece.len() + 1, &mut chunks);
            b.put_u8(i);
            b.put_slice(&piece);
        }
        bufs.flush(&mut chunks);
        assert!(chunks.len() >= 2);
        let all: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        assert_eq!(all.len(), 100 * 1001);
        for (i, rec) in all.chunks(1001).enumerate() {
            assert_eq!(rec[0], i as u8);
        }
        // While the chunks are alive (quinn holds them), nothing is reused.
        assert!(
            bufs.parked
                .iter_mut()
                .all(|b| !b.try_reclaim(SMALL_BUFFER_BYTES))
        );
        // Once they are dropped, the next switch reuses the oldest buffer.
        drop(all);
        chunks.clear();
        let used = bufs.current.capacity() - bufs.current.len();
        bufs.room(used + 1, &mut chunks);
        assert_eq!(bufs.current.as_ptr(), first_alloc);
        assert_eq!(bufs.current.capacity(), SMALL_BUFFER_BYTES);
        // The parked list never exceeds its bound.
        for _ in 0..(4 * COPY_BUFFERS_MAX) {
            let cap = bufs.current.capacity() - bufs.current.len();
            bufs.room(cap + 1, &mut chunks);
            bufs.current.put_u8(1);
            assert!(bufs.parked.len() <= COPY_BUFFERS_MAX);
        }
    }

    #[test]
    fn udp_payload_bound_sets_mtu_discovery_and_gso() {
        let mut cfg = QuicConfig::new("127.0.0.1:0".parse().unwrap());
        let tc = format!("{:?}", transport_config(&cfg, true).unwrap());
        assert!(tc.contains("upper_bound: 16371"), "{tc}");
        assert!(tc.contains("enable_segmentation_offload: true"), "{tc}");
        // Any packet size keeps GSO on (the socket splits large batches).
        cfg.max_udp_payload_bytes = 65_527;
        let tc = format!("{:?}", transport_config(&cfg, false).unwrap());
        assert!(tc.contains("upper_bound: 65527"), "{tc}");
        assert!(tc.contains("enable_segmentation_offload: true"), "{tc}");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn udp_socket_gets_the_configured_buffers() {
        let mut cfg = QuicConfig::new("127.0.0.1:0".parse().unwrap());
        cfg.udp_socket_buffer_bytes = 1 << 20;
        let sock = bind_udp(&cfg).unwrap();
        let read_max = |path: &str| {
            std::fs::read_to_string(path)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0)
        };
        let sr = socket2::SockRef::from(&sock);
        // Linux grants min(asked, sysctl max) and reports twice that.
        let rcv_cap = read_max("/proc/sys/net/core/rmem_max").min(1 << 20);
        let snd_cap = read_max("/proc/sys/net/core/wmem_max").min(1 << 20);
        assert!(sr.recv_buffer_size().unwrap() >= rcv_cap);
        assert!(sr.send_buffer_size().unwrap() >= snd_cap);
        assert!(sock.local_addr().unwrap().port() != 0);
    }

    #[test]
    fn remote_codes_map_to_errors() {
        assert_eq!(
            remote_code(VarInt::from_u32(code::BUSY)),
            RequestError::Busy
        );
        assert_eq!(
            remote_code(VarInt::from_u32(code::REJECTED)),
            RequestError::Rejected
        );
        assert_eq!(
            remote_code(VarInt::from_u32(code::TIMEOUT)),
            RequestError::RemoteTimeout
        );
        assert_eq!(
            remote_code(VarInt::from_u32(code::NO_HANDLER)),
            RequestError::NoHandler
        );
        assert!(matches!(
            remote_code(VarInt::from_u32(99)),
            RequestError::Connection(_)
        ));
    }
}
