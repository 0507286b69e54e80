//! Configuration and limits of a [`QuicTransport`](crate::QuicTransport).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use ha_core::NodeId;

use crate::frame::MAX_FRAME_BYTES_CEILING;

/// Smallest UDP payload QUIC allows (RFC 9000 §14): the floor of
/// [`QuicConfig::max_udp_payload_bytes`].
pub const MIN_UDP_PAYLOAD_BYTES: u16 = 1200;
/// Largest UDP payload an IPv4/IPv6 datagram can carry (65,535 minus the
/// 8-byte UDP header): the ceiling of [`QuicConfig::max_udp_payload_bytes`].
pub const MAX_UDP_PAYLOAD_BYTES: u16 = 65_527;
/// Largest [`QuicConfig::max_udp_payload_bytes`] at which a full batch of
/// quinn's segmentation offload (GSO: up to 10 datagrams per send) fits one
/// UDP send: a send may carry at most 65,487 bytes of UDP payload over
/// IPv6 (65,535 minus the IPv6 and UDP headers), and 10 × 6,548 fits. A
/// larger batch would be refused by the kernel (`EMSGSIZE`, all its packets
/// lost), so above this value the transport's socket splits each batch
/// into several sends of whole datagrams; GSO stays on either way.
pub const GSO_SAFE_UDP_PAYLOAD_BYTES: u16 = 6_548;
/// Default [`QuicConfig::max_udp_payload_bytes`]: 16,371, the largest
/// payload of which 4 datagrams fit one GSO send (4 × 16,371 ≤ 65,487), so a
/// batch splits into whole sends of ~64 KiB. On loopback (and paths with an
/// MTU that large) a 64 KiB message then takes 4 packets instead of 10 at
/// 6,548 bytes: fewer encryptions, acknowledgements and per-packet
/// bookkeeping per byte. Other paths stop where their MTU does (1452 on
/// Ethernet, ~8952 on jumbo frames).
pub const DEFAULT_MAX_UDP_PAYLOAD_BYTES: u16 = 16_371;
/// Smallest [`QuicConfig::udp_socket_buffer_bytes`].
pub const MIN_UDP_SOCKET_BUFFER_BYTES: usize = 64 << 10;
/// Largest [`QuicConfig::udp_socket_buffer_bytes`].
pub const MAX_UDP_SOCKET_BUFFER_BYTES: usize = 256 << 20;

/// Every limit and timer of the transport. Each value is validated by
/// [`QuicConfig::validate`] before anything is bound.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuicConfig {
    /// UDP address to listen on (port 0 picks a free port).
    pub listen_addr: SocketAddr,
    /// Peers to dial, by id. More can be added with
    /// [`QuicTransport::add_peer`](crate::QuicTransport::add_peer).
    pub peers: BTreeMap<NodeId, SocketAddr>,
    /// Largest payload of one frame, both directions. A larger outgoing
    /// frame is dropped and counted; a larger incoming one closes its
    /// stream. Default 8 MiB; at most 1 GiB.
    pub max_frame_bytes: usize,
    /// Protocol frames queued per peer before `send` drops (drop-newest).
    /// Default 4096.
    pub peer_queue_frames: usize,
    /// Snapshot frames queued per peer before `send` drops (drop-newest).
    /// Default 64.
    pub snapshot_queue_frames: usize,
    /// Inbound frames buffered for the consumer. When full, the streams
    /// stop reading and QUIC flow control pushes back on the senders.
    /// Default 8192.
    pub inbound_queue_frames: usize,
    /// Incoming requests buffered for the handler; beyond it a request is
    /// refused with [`RequestError::Busy`](crate::RequestError::Busy).
    /// Default 1024.
    pub request_queue: usize,
    /// Requests in flight to one peer from this node; beyond it
    /// [`request`](crate::QuicTransport::request) fails fast. Also the
    /// number of concurrent request streams a peer may open to us.
    /// Default 256.
    pub max_inflight_requests_per_peer: u32,
    /// Concurrent unidirectional streams a peer may open to us (one
    /// protocol stream plus snapshot transfers). Default 64.
    pub max_uni_streams_per_peer: u32,
    /// Inbound connections accepted at once; more are refused. Default 1024.
    pub max_inbound_connections: usize,
    /// Most bytes coalesced into one stream write. Default 256 KiB.
    pub write_batch_bytes_max: usize,
    /// A connection with no traffic for this long is dead. Default 10 s.
    pub idle_timeout_ms: u64,
    /// Keep-alive ping interval; must be below `idle_timeout_ms`.
    /// Default 3 s.
    pub keep_alive_ms: u64,
    /// Time allowed for a connection attempt (QUIC + TLS handshake), and
    /// for a new stream's preamble to arrive. Default 5 s.
    pub connect_timeout_ms: u64,
    /// First reconnect delay. Default 50 ms.
    pub reconnect_backoff_min_ms: u64,
    /// Reconnect delay ceiling; the delay doubles per failure up to it, and
    /// each wait is drawn uniformly from [delay/2, delay]. Default 5 s.
    pub reconnect_backoff_max_ms: u64,
    /// A snapshot stream with no chunk for this long is finished; the next
    /// chunk of that group opens a new stream. Default 2 s.
    pub snapshot_stream_idle_ms: u64,
    /// Longest wait a request may ask of the remote handler. Default 60 s.
    pub max_request_budget_ms: u64,
    /// Per-connection receive window (bytes in flight from one peer).
    /// Default 8 MiB.
    pub connection_window_bytes: u64,
    /// Per-stream receive window. Default 4 MiB.
    pub stream_window_bytes: u64,
    /// Largest UDP payload this endpoint sends or accepts. Connections start
    /// at 1200 bytes and path-MTU discovery (RFC 8899 style probing: a lost
    /// probe only stops the search, it is not treated as congestion) raises
    /// the packet size up to this bound where the path allows it: ~1452 on
    /// a standard 1500-byte Ethernet path, the bound itself on a
    /// jumbo-frame (9000) network or on loopback. Fewer, larger packets mean
    /// fewer encryptions, acknowledgements and syscalls per byte. Default
    /// [`DEFAULT_MAX_UDP_PAYLOAD_BYTES`] (16371); range
    /// [`MIN_UDP_PAYLOAD_BYTES`]..=[`MAX_UDP_PAYLOAD_BYTES`]; above
    /// [`GSO_SAFE_UDP_PAYLOAD_BYTES`] segmentation-offload batches are sent
    /// in several pieces. Set 1452 to never probe above Ethernet size.
    pub max_udp_payload_bytes: u16,
    /// Receive and send buffer size requested for the UDP socket
    /// (`SO_RCVBUF`/`SO_SNDBUF`). Bursts that overflow the receive buffer
    /// are dropped by the kernel and cost a loss-recovery round and a
    /// congestion-window cut, so it should hold at least one connection
    /// window's worth of packets in flight. The kernel caps the request at
    /// `net.core.rmem_max` / `wmem_max` (Linux) without an error; raise those
    /// sysctls for the full size. Default 8 MiB; range
    /// [`MIN_UDP_SOCKET_BUFFER_BYTES`]..=[`MAX_UDP_SOCKET_BUFFER_BYTES`].
    pub udp_socket_buffer_bytes: usize,
}

impl QuicConfig {
    /// Defaults for a node listening on `listen_addr`, with no peers yet.
    pub fn new(listen_addr: SocketAddr) -> Self {
        Self {
            listen_addr,
            peers: BTreeMap::new(),
            max_frame_bytes: 8 << 20,
            peer_queue_frames: 4096,
            snapshot_queue_frames: 64,
            inbound_queue_frames: 8192,
            request_queue: 1024,
            max_inflight_requests_per_peer: 256,
            max_uni_streams_per_peer: 64,
            max_inbound_connections: 1024,
            write_batch_bytes_max: 256 << 10,
            idle_timeout_ms: 10_000,
            keep_alive_ms: 3_000,
            connect_timeout_ms: 5_000,
            reconnect_backoff_min_ms: 50,
            reconnect_backoff_max_ms: 5_000,
            snapshot_stream_idle_ms: 2_000,
            max_request_budget_ms: 60_000,
            connection_window_bytes: 8 << 20,
            stream_window_bytes: 4 << 20,
            max_udp_payload_bytes: DEFAULT_MAX_UDP_PAYLOAD_BYTES,
            udp_socket_buffer_bytes: 8 << 20,
        }
    }

    /// Checks every value; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &'static str| Err(ConfigError(m));
        if self.max_frame_bytes == 0 || self.max_frame_bytes > MAX_FRAME_BYTES_CEILING {
            return bad("max_frame_bytes must be in 1..=1 GiB");
        }
        if self.peer_queue_frames == 0 || self.snapshot_queue_frames == 0 {
            return bad("peer_queue_frames and snapshot_queue_frames must be >= 1");
        }
        if self.inbound_queue_frames == 0 || self.request_queue == 0 {
            return bad("inbound_queue_frames and request_queue must be >= 1");
        }
        if self.max_inflight_requests_per_peer == 0 || self.max_uni_streams_per_peer < 2 {
            return bad("max_inflight_requests_per_peer >= 1 and max_uni_streams_per_peer >= 2");
        }
        if self.max_inbound_connections == 0 {
            return bad("max_inbound_connections must be >= 1");
        }
        if self.write_batch_bytes_max == 0 {
            return bad("write_batch_bytes_max must be >= 1");
        }
        if self.idle_timeout_ms == 0 || self.keep_alive_ms == 0 {
            return bad("idle_timeout_ms and keep_alive_ms must be >= 1");
        }
        if self.keep_alive_ms >= self.idle_timeout_ms {
            return bad("keep_alive_ms must be below idle_timeout_ms");
        }
        if self.connect_timeout_ms == 0 || self.snapshot_stream_idle_ms == 0 {
            return bad("connect_timeout_ms and snapshot_stream_idle_ms must be >= 1");
        }
        if self.reconnect_backoff_min_ms == 0
            || self.reconnect_backoff_max_ms < self.reconnect_backoff_min_ms
        {
            return bad("need 1 <= reconnect_backoff_min_ms <= reconnect_backoff_max_ms");
        }
        if self.max_request_budget_ms == 0 || self.max_request_budget_ms > u64::from(u32::MAX) {
            return bad("max_request_budget_ms must be in 1..=u32::MAX");
        }
        // quinn's VarInt ceiling is 2^62; a window must hold at least one frame.
        let min_window = (self.max_frame_bytes as u64).min(1 << 20);
        if self.stream_window_bytes < min_window
            || self.connection_window_bytes < self.stream_window_bytes
            || self.connection_window_bytes >= 1 << 62
        {
            return bad(
                "need min(max_frame_bytes, 1 MiB) <= stream_window_bytes <= connection_window_bytes < 2^62",
            );
        }
        if !(MIN_UDP_PAYLOAD_BYTES..=MAX_UDP_PAYLOAD_BYTES).contains(&self.max_udp_payload_bytes) {
            return bad("max_udp_payload_bytes must be in 1200..=65527");
        }
        if !(MIN_UDP_SOCKET_BUFFER_BYTES..=MAX_UDP_SOCKET_BUFFER_BYTES)
            .contains(&self.udp_socket_buffer_bytes)
        {
            return bad("udp_socket_buffer_bytes must be in 64 KiB..=256 MiB");
        }
        if self.peers.contains_key(&NodeId(0)) {
            return bad("node id 0 is reserved");
        }
        Ok(())
    }
}

/// A configuration value out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid transport config: {0}")]
pub struct ConfigError(pub &'static str);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_bad_values_are_named() {
        let ok = QuicConfig::new("127.0.0.1:0".parse().unwrap());
        ok.validate().unwrap();
        let mut c = ok.clone();
        c.keep_alive_ms = c.idle_timeout_ms;
        assert_eq!(
            c.validate(),
            Err(ConfigError("keep_alive_ms must be below idle_timeout_ms"))
        );
        let mut c = ok.clone();
        c.max_frame_bytes = 0;
        assert!(c.validate().is_err());
        let mut c = ok.clone();
        c.peer_queue_frames = 0;
        assert!(c.validate().is_err());
        let mut c = ok.clone();
        c.max_udp_payload_bytes = MIN_UDP_PAYLOAD_BYTES - 1;
        assert_eq!(
            c.validate(),
            Err(ConfigError("max_udp_payload_bytes must be in 1200..=65527"))
        );
        let mut c = ok.clone();
        c.udp_socket_buffer_bytes = MAX_UDP_SOCKET_BUFFER_BYTES + 1;
        assert!(c.validate().is_err());
        let mut c = ok.clone();
        c.reconnect_backoff_max_ms = c.reconnect_backoff_min_ms - 1;
        assert!(c.validate().is_err());
        let mut c = ok;
        c.peers.insert(NodeId(0), "127.0.0.1:1".parse().unwrap());
        assert_eq!(c.validate(), Err(ConfigError("node id 0 is reserved")));
    }
}
