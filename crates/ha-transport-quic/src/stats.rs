//! Counters of a transport, readable as a plain [`TransportStats`] snapshot.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($( $(#[$doc:meta])* $name:ident ),* $(,)?) => {
        /// A snapshot of the transport's counters (monotonic since start).
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct TransportStats {
            $( $(#[$doc])* pub $name: u64, )*
        }

        #[derive(Debug, Default)]
        pub(crate) struct Counters {
            $( pub(crate) $name: AtomicU64, )*
        }

        impl Counters {
            pub(crate) fn snapshot(&self) -> TransportStats {
                TransportStats {
                    $( $name: self.$name.load(Ordering::Relaxed), )*
                }
            }
        }
    };
}

counters!(
    /// Protocol and snapshot frames written to a peer's stream.
    frames_sent,
    /// Payload bytes of `frames_sent`.
    bytes_sent,
    /// Protocol and snapshot frames received and handed to the consumer.
    frames_received,
    /// Payload bytes of `frames_received`.
    bytes_received,
    /// Frames dropped by `send` because the peer's queue was full
    /// (drop-newest).
    dropped_queue_full,
    /// Frames dropped because the destination is not a known peer.
    dropped_unknown_peer,
    /// Frames dropped because the payload exceeds `max_frame_bytes`.
    dropped_oversize,
    /// Frames lost because the connection failed while writing them, or
    /// still queued when the transport shut down or the peer was removed.
    dropped_disconnected,
    /// Inbound frames dropped because the consumer's receiver was gone.
    dropped_inbound_closed,
    /// Outbound connections established (first connect and reconnects).
    connects,
    /// Outbound connections re-established after one was lost.
    reconnects,
    /// Outbound connection attempts that failed (peer unreachable, timeout,
    /// or TLS refused; TLS refusals also count in `handshake_failures`).
    connect_failures,
    /// Handshakes that failed TLS verification, either side: unknown CA,
    /// expired certificate, wrong node name, missing client certificate,
    /// wrong ALPN.
    handshake_failures,
    /// Authenticated peers refused because the node id they claimed does
    /// not match their certificate, or the certificate names no node id.
    identity_rejections,
    /// Inbound connections accepted and authenticated.
    inbound_connections,
    /// Inbound connections refused because `max_inbound_connections` was
    /// reached.
    inbound_refused,
    /// Streams closed because of a malformed or oversized preamble/frame.
    frame_errors,
    /// Requests this node sent that got a response.
    requests_ok,
    /// Requests this node sent that failed (timeout, refusal, connection).
    requests_failed,
    /// Requests from peers answered by the local handler.
    requests_served,
    /// Requests from peers refused (queue full, no handler, handler gave up
    /// or missed the deadline).
    requests_refused,
);
