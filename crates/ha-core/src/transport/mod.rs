//! The [`Transport`] contract: best-effort delivery of byte frames between
//! nodes.
//!
//! Unreliable by contract: a frame may be lost, duplicated, delayed or
//! reordered, and the protocols tolerate all of it. `send` never blocks; when
//! a peer's queue is full the frame is dropped and counted. Inbound frames
//! arrive on the receiver returned when the transport is built, tagged with
//! the sender's identity as the transport authenticated it.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::types::{GroupId, NodeId};

#[cfg(feature = "driver")]
pub mod mem;
#[cfg(feature = "driver")]
pub use mem::{MemNetwork, MemNetworkConfig, MemNetworkError, MemTransport};

/// What a frame carries; transports may route kinds over different streams
/// (snapshot chunks never delay protocol messages).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FrameKind {
    /// A codec-encoded protocol message.
    Protocol,
    /// A chunk of a snapshot transfer.
    Snapshot,
}

/// One frame between nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// The consensus group the frame belongs to.
    pub group: GroupId,
    /// Kind, for stream selection.
    pub kind: FrameKind,
    /// Payload, opaque to the transport.
    pub payload: Bytes,
}

/// A frame received from a peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inbound {
    /// Authenticated sender.
    pub from: NodeId,
    /// The frame.
    pub frame: Frame,
}

/// Best-effort, non-blocking frame delivery.
pub trait Transport: Send + Sync + 'static {
    /// Queues `frame` for `to`. Never blocks; may drop.
    fn send(&self, to: NodeId, frame: Frame);
}
