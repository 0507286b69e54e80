//! How a client command travels through the log.
//!
//! The driver (and the simulator) wrap every application command in a
//! [`TaggedCommand`] before proposing it, so a committed entry can be matched
//! to the proposal that created it by `(proposer, seq)` — independent of the
//! term or ballot the entry finally committed under — and a proposal whose
//! index was taken by another entry is known to be dropped.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::codec::{self, CodecError};
use crate::types::NodeId;

/// An application command with its proposer's tag.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TaggedCommand {
    /// Node whose driver proposed the command.
    pub proposer: NodeId,
    /// Per-proposer sequence number, unique for the proposer's lifetime
    /// (drivers start it from a random or persisted base after restart).
    pub seq: u64,
    /// The command for the state machine.
    pub data: Bytes,
}

impl TaggedCommand {
    /// Encodes as a codec frame.
    pub fn encode(&self) -> Bytes {
        codec::encode(self).into()
    }

    /// Decodes a codec frame.
    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        codec::decode(bytes)
    }
}
