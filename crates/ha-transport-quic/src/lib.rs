//! # ha-transport-quic
//!
//! The peer [`Transport`](ha_core::transport::Transport) of the `ha` toolbox
//! over QUIC (quinn 0.11, rustls 0.23 with the *ring* provider), with mutual
//! TLS against a cluster CA. It moves opaque frames between nodes and knows
//! nothing about the protocols beyond framing.
//!
//! * **Identity** ([`identity`]): every node certificate names its node id as
//!   the DNS SAN `node-<id>.ha`. The dialer verifies the answering node's
//!   name; the acceptor learns the caller's id from its verified certificate
//!   (never from its address) and refuses streams that claim another id.
//!   Foreign CAs, expired certificates and wrong names fail the handshake.
//!   ALPN is `ha/1`. [`DevCa`] generates a development CA and node
//!   certificates.
//! * **Streams** ([`QuicTransport`]): one long-lived ordered stream per peer
//!   for protocol frames, one stream per snapshot transfer, one
//!   bidirectional stream per [request](QuicTransport::request) (with a
//!   deadline the handler sees).
//! * **Framing** ([`frame`]): a versioned stream preamble, then
//!   length-delimited frames with a version byte and a configurable size
//!   limit. A malformed or oversized frame closes its stream, is logged and
//!   counted; everything else goes on.
//! * **Flow**: `send` never blocks; bounded per-peer queues drop the newest
//!   frame when full (counted). Reconnect with exponential backoff and
//!   jitter; keep-alive below the idle timeout; [`QuicTransport::shutdown`]
//!   drains.
//! * **Counters**: [`TransportStats`], a plain snapshot.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use ha_core::transport::{Frame, FrameKind, Transport};
//! use ha_core::{Bytes, GroupId, NodeId};
//! use ha_transport_quic::{DevCa, QuicConfig, QuicTransport, Validity};
//!
//! let ca = DevCa::generate("dev cluster", Validity::days_from_now(365))?;
//! let mut config = QuicConfig::new("127.0.0.1:7001".parse()?);
//! config.peers.insert(NodeId(2), "127.0.0.1:7002".parse()?);
//! let node1 = QuicTransport::bind(ca.issue(NodeId(1), Validity::days_from_now(30))?, config)?;
//! node1.transport.send(
//!     NodeId(2),
//!     Frame { group: GroupId(0), kind: FrameKind::Protocol, payload: Bytes::from_static(b"hi") },
//! );
//! node1.transport.shutdown(1_000).await;
//! # Ok(()) }
//! ```

pub mod config;
pub mod frame;
pub mod identity;
mod recv;
pub mod stats;
pub mod transport;
mod udp;

pub use config::{ConfigError, QuicConfig};
pub use frame::{FrameDecoder, FrameError};
pub use identity::{DevCa, IdentityError, NodeIdentity, Validity};
pub use stats::TransportStats;
pub use transport::{
    Bound, IncomingRequest, QuicTransport, RequestError, Responder, SendError, TransportError,
};
