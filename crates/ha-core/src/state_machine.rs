//! The [`StateMachine`] contract: the application the log drives.

use bytes::Bytes;

use crate::types::{LogId, Membership, SnapshotMeta};

/// What a committed entry asks of the state machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied<'a> {
    /// An application command (without the driver's request tag).
    Command(&'a [u8]),
    /// A no-op: only the applied index moves.
    Blank,
    /// A configuration change: recorded so snapshots carry it.
    Membership(&'a Membership),
}

/// State-machine failures. An error from `apply` is fatal for the replica
/// (the state machine is deterministic: every replica would fail alike, so
/// it must be a storage failure, not a bad command — bad commands get an
/// error *response*).
#[derive(Debug, thiserror::Error)]
pub enum StateMachineError {
    /// Snapshot bytes failed their checksum or did not decode.
    #[error("corrupt snapshot: {0}")]
    CorruptSnapshot(String),
    /// Backing storage failed.
    #[error("state machine storage: {0}")]
    Storage(String),
}

/// A stream of snapshot chunks. Sizes need not be known up front.
pub trait ChunkSource: Send {
    /// The next chunk, or `None` at the end.
    fn next_chunk(&mut self) -> Result<Option<Bytes>, StateMachineError>;
}

/// A built snapshot, ready to stream.
pub trait SnapshotSource: ChunkSource {
    /// What the snapshot covers.
    fn meta(&self) -> &SnapshotMeta;
}

/// A deterministic application of committed log entries.
///
/// Entries are applied strictly in index order, each once — except after a
/// crash, when entries after the last durable applied index are applied
/// again: `apply` at an index `<= last_applied()` must be a no-op (idempotent
/// replay), judged by `log_id.index`.
///
/// # Batched durability
///
/// A durable state machine may stage the writes of several `apply` calls
/// and make them durable together in [`flush`](StateMachine::flush) (one
/// storage write per batch instead of one per entry). Whoever applies
/// entries calls `flush` after each run of applies and before it reports
/// their results; the replica driver does so after every apply batch, and
/// sends no response of a batch before its flush succeeded. Between two
/// flushes the durable state may lag the applied one by at most the
/// unflushed entries, which stay in the (durable) log and are applied
/// again after a crash. The in-memory state is current after every
/// `apply`: reads never wait for a flush.
pub trait StateMachine: Send + 'static {
    /// Applies the entry `log_id` and returns the response for its proposer.
    fn apply(&mut self, log_id: LogId, entry: Applied<'_>) -> Result<Bytes, StateMachineError>;

    /// Makes every `apply` since the last flush durable (see "Batched
    /// durability"). The default does nothing: for state machines that are
    /// durable after each `apply`, or not durable at all.
    fn flush(&mut self) -> Result<(), StateMachineError> {
        Ok(())
    }

    /// Id of the last entry applied (`LogId::default()` before any).
    fn last_applied(&self) -> LogId;

    /// Builds a snapshot of the current state (covering `last_applied`).
    fn snapshot(&mut self) -> Result<Box<dyn SnapshotSource>, StateMachineError>;

    /// Replaces the whole state with the snapshot streamed from `chunks`.
    /// On error the previous state is kept.
    ///
    /// A sidecar staged with [`stage_sidecar`](Self::stage_sidecar) is
    /// stored with the installed state, in the same atomic write.
    fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        chunks: &mut dyn ChunkSource,
    ) -> Result<(), StateMachineError>;

    /// Whether this machine keeps a sidecar ([`stage_sidecar`](Self::stage_sidecar)).
    /// Default: no.
    ///
    /// A *sidecar* is a small opaque blob that a layer wrapping the state
    /// machine (e.g. ha-node's member table around the application) needs
    /// to be exactly as durable as the applied state: it is stored in the
    /// same atomic write as `last_applied`, so after a crash the blob and
    /// the state always belong to the same applied index.
    fn keeps_sidecar(&self) -> bool {
        false
    }

    /// Stages `blob` as the new sidecar: [`sidecar`](Self::sidecar) returns
    /// it at once, and it is stored by the next [`apply`](Self::apply) that
    /// moves `last_applied` (or the next
    /// [`install_snapshot`](Self::install_snapshot)), in that call's atomic
    /// write. An install keeps the current sidecar when none is staged. A
    /// machine that does not keep sidecars ([`keeps_sidecar`](Self::keeps_sidecar)
    /// false) refuses with [`StateMachineError::Storage`].
    fn stage_sidecar(&mut self, blob: Bytes) -> Result<(), StateMachineError> {
        let _ = blob;
        Err(StateMachineError::Storage(
            "this state machine keeps no sidecar".into(),
        ))
    }

    /// The sidecar stored with the current state (`None` if none was ever
    /// stored): after a restart, the blob written with `last_applied`.
    fn sidecar(&self) -> Option<Bytes> {
        None
    }
}

/// A [`ChunkSource`] over chunks held in memory.
#[derive(Debug, Default)]
pub struct VecChunks {
    chunks: std::collections::VecDeque<Bytes>,
}

impl VecChunks {
    /// Wraps `chunks`.
    pub fn new(chunks: impl IntoIterator<Item = Bytes>) -> Self {
        Self {
            chunks: chunks.into_iter().collect(),
        }
    }
}

impl ChunkSource for VecChunks {
    fn next_chunk(&mut self) -> Result<Option<Bytes>, StateMachineError> {
        Ok(self.chunks.pop_front())
    }
}
