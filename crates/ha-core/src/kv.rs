//! A small replicated key-value application: the command set the test kit's
//! clients use and the in-memory [`MemKv`] state machine, for tests,
//! examples and embedding.
//!
//! Commands and responses travel as [`codec`](crate::codec) frames.
//!
//! ```
//! use ha_core::kv::{KvCommand, KvResponse, MemKv};
//! use ha_core::state_machine::{Applied, StateMachine};
//! use ha_core::LogId;
//!
//! let mut kv = MemKv::default();
//! let put = KvCommand::Put { key: "k".into(), value: "v1".into() };
//! let out = kv.apply(LogId::new(1, 1), Applied::Command(&put.encode())).unwrap();
//! assert_eq!(KvResponse::decode(&out).unwrap(), KvResponse::Written { prev: None });
//!
//! let cas = KvCommand::Cas { key: "k".into(), expect: Some("v1".into()), value: "v2".into() };
//! let out = kv.apply(LogId::new(1, 2), Applied::Command(&cas.encode())).unwrap();
//! assert_eq!(KvResponse::decode(&out).unwrap(), KvResponse::Cas { ok: true, current: Some("v1".into()) });
//! assert_eq!(kv.get(b"k"), Some(&"v2".into()));
//! ```

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::codec::{self, CodecError};
use crate::state_machine::{
    Applied, ChunkSource, SnapshotSource, StateMachine, StateMachineError, VecChunks,
};
use crate::types::{LogId, Membership, SnapshotMeta};

/// A KV operation.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KvCommand {
    /// Read a key (through the log: linearizable without read-index).
    Get {
        /// Key.
        key: Bytes,
    },
    /// Write a key.
    Put {
        /// Key.
        key: Bytes,
        /// New value.
        value: Bytes,
    },
    /// Remove a key.
    Delete {
        /// Key.
        key: Bytes,
    },
    /// Write `value` only if the current value equals `expect` (`None`:
    /// the key must be absent).
    Cas {
        /// Key.
        key: Bytes,
        /// Expected current value.
        expect: Option<Bytes>,
        /// New value.
        value: Bytes,
    },
}

impl KvCommand {
    /// The key the command touches.
    pub fn key(&self) -> &Bytes {
        match self {
            KvCommand::Get { key }
            | KvCommand::Put { key, .. }
            | KvCommand::Delete { key }
            | KvCommand::Cas { key, .. } => key,
        }
    }
    /// Encodes as a codec frame.
    pub fn encode(&self) -> Bytes {
        codec::encode(self).into()
    }
    /// Decodes a codec frame.
    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        codec::decode(bytes)
    }
}

/// The answer to a [`KvCommand`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KvResponse {
    /// Answer to `Get`.
    Value(Option<Bytes>),
    /// Answer to `Put` / `Delete`, with the value before.
    Written {
        /// Previous value.
        prev: Option<Bytes>,
    },
    /// Answer to `Cas`: whether it wrote, and the value it found.
    Cas {
        /// Whether the write happened.
        ok: bool,
        /// The value found before.
        current: Option<Bytes>,
    },
    /// The command bytes did not decode; nothing changed.
    BadCommand(String),
}

impl KvResponse {
    /// Encodes as a codec frame.
    pub fn encode(&self) -> Bytes {
        codec::encode(self).into()
    }
    /// Decodes a codec frame.
    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        codec::decode(bytes)
    }
}

/// In-memory KV state machine. Snapshots are one codec frame per chunk of at
/// most [`MemKv::SNAPSHOT_CHUNK_PAIRS`] pairs, preceded by a header frame.
/// It keeps a sidecar ([`StateMachine::stage_sidecar`]) in memory, as
/// durable as the rest of its state (that is: not across a restart).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemKv {
    data: BTreeMap<Bytes, Bytes>,
    last_applied: LogId,
    membership: Membership,
    sidecar: Option<Bytes>,
}

#[derive(Serialize, Deserialize)]
struct SnapshotHeader {
    meta: SnapshotMeta,
    pairs: u64,
}

impl MemKv {
    /// Key/value pairs per snapshot chunk.
    pub const SNAPSHOT_CHUNK_PAIRS: usize = 1024;

    /// Current value of `key`.
    pub fn get(&self, key: &[u8]) -> Option<&Bytes> {
        self.data.get(key)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// All pairs, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&Bytes, &Bytes)> {
        self.data.iter()
    }

    /// Applies one decoded command to the map (no log bookkeeping).
    pub fn execute(&mut self, cmd: KvCommand) -> KvResponse {
        match cmd {
            KvCommand::Get { key } => KvResponse::Value(self.data.get(&key).cloned()),
            KvCommand::Put { key, value } => KvResponse::Written {
                prev: self.data.insert(key, value),
            },
            KvCommand::Delete { key } => KvResponse::Written {
                prev: self.data.remove(&key),
            },
            KvCommand::Cas { key, expect, value } => {
                let current = self.data.get(&key).cloned();
                let ok = current == expect;
                if ok {
                    self.data.insert(key, value);
                }
                KvResponse::Cas { ok, current }
            }
        }
    }
}

struct MemKvSnapshot {
    meta: SnapshotMeta,
    chunks: VecChunks,
}

impl ChunkSource for MemKvSnapshot {
    fn next_chunk(&mut self) -> Result<Option<Bytes>, StateMachineError> {
        self.chunks.next_chunk()
    }
}

impl SnapshotSource for MemKvSnapshot {
    fn meta(&self) -> &SnapshotMeta {
        &self.meta
    }
}

impl StateMachine for MemKv {
    fn apply(&mut self, log_id: LogId, entry: Applied<'_>) -> Result<Bytes, StateMachineError> {
        if log_id.index <= self.last_applied.index {
            return Ok(Bytes::new());
        }
        self.last_applied = log_id;
        let resp = match entry {
            Applied::Blank => return Ok(Bytes::new()),
            Applied::Membership(m) => {
                self.membership = m.clone();
                return Ok(Bytes::new());
            }
            Applied::Command(bytes) => match KvCommand::decode(bytes) {
                Ok(cmd) => self.execute(cmd),
                Err(e) => KvResponse::BadCommand(e.to_string()),
            },
        };
        Ok(resp.encode())
    }

    fn last_applied(&self) -> LogId {
        self.last_applied
    }

    fn snapshot(&mut self) -> Result<Box<dyn SnapshotSource>, StateMachineError> {
        let meta = SnapshotMeta {
            last_log_id: self.last_applied,
            membership: self.membership.clone(),
        };
        let header = SnapshotHeader {
            meta: meta.clone(),
            pairs: self.data.len() as u64,
        };
        let mut chunks = vec![Bytes::from(codec::encode(&header))];
        let pairs: Vec<(&Bytes, &Bytes)> = self.data.iter().collect();
        for chunk in pairs.chunks(Self::SNAPSHOT_CHUNK_PAIRS) {
            chunks.push(codec::encode(chunk).into());
        }
        Ok(Box::new(MemKvSnapshot {
            meta,
            chunks: VecChunks::new(chunks),
        }))
    }

    fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        chunks: &mut dyn ChunkSource,
    ) -> Result<(), StateMachineError> {
        let corrupt = |e: CodecError| StateMachineError::CorruptSnapshot(e.to_string());
        let first = chunks
            .next_chunk()?
            .ok_or_else(|| StateMachineError::CorruptSnapshot("empty snapshot".into()))?;
        let header: SnapshotHeader = codec::decode(&first).map_err(corrupt)?;
        if header.meta.last_log_id.index != meta.last_log_id.index {
            return Err(StateMachineError::CorruptSnapshot(format!(
                "snapshot covers {:?}, expected {:?}",
                header.meta.last_log_id, meta.last_log_id
            )));
        }
        let mut data = BTreeMap::new();
        while let Some(chunk) = chunks.next_chunk()? {
            let pairs: Vec<(Bytes, Bytes)> = codec::decode(&chunk).map_err(corrupt)?;
            data.extend(pairs);
        }
        if data.len() as u64 != header.pairs {
            return Err(StateMachineError::CorruptSnapshot(format!(
                "snapshot promised {} pairs, carried {}",
                header.pairs,
                data.len()
            )));
        }
        self.data = data;
        self.last_applied = meta.last_log_id;
        self.membership = meta.membership.clone();
        Ok(())
    }

    fn keeps_sidecar(&self) -> bool {
        true
    }

    fn stage_sidecar(&mut self, blob: Bytes) -> Result<(), StateMachineError> {
        self.sidecar = Some(blob);
        Ok(())
    }

    fn sidecar(&self) -> Option<Bytes> {
        self.sidecar.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(k: &str, v: &str) -> Bytes {
        KvCommand::Put {
            key: Bytes::copy_from_slice(k.as_bytes()),
            value: Bytes::copy_from_slice(v.as_bytes()),
        }
        .encode()
    }

    #[test]
    fn replay_below_last_applied_is_a_noop() {
        let mut kv = MemKv::default();
        kv.apply(LogId::new(1, 1), Applied::Command(&put("a", "1")))
            .unwrap();
        kv.apply(LogId::new(1, 2), Applied::Command(&put("a", "2")))
            .unwrap();
        let out = kv
            .apply(LogId::new(1, 1), Applied::Command(&put("a", "1")))
            .unwrap();
        assert!(out.is_empty());
        assert_eq!(kv.get(b"a"), Some(&Bytes::from("2")));
    }

    #[test]
    fn bad_command_changes_nothing() {
        let mut kv = MemKv::default();
        let out = kv
            .apply(LogId::new(1, 1), Applied::Command(b"garbage"))
            .unwrap();
        assert!(matches!(
            KvResponse::decode(&out).unwrap(),
            KvResponse::BadCommand(_)
        ));
        assert!(kv.is_empty());
        assert_eq!(kv.last_applied(), LogId::new(1, 1));
    }

    #[test]
    fn snapshot_roundtrip_across_many_chunks() {
        let mut kv = MemKv::default();
        for i in 0..3000u64 {
            kv.apply(
                LogId::new(1, i + 1),
                Applied::Command(&put(&format!("k{i}"), "v")),
            )
            .unwrap();
        }
        let mut snap = kv.snapshot().unwrap();
        let meta = snap.meta().clone();
        let mut other = MemKv::default();
        other.install_snapshot(&meta, snap.as_mut()).unwrap();
        assert_eq!(other, kv);
    }

    #[test]
    fn corrupt_snapshot_keeps_old_state() {
        let mut kv = MemKv::default();
        kv.apply(LogId::new(1, 1), Applied::Command(&put("a", "1")))
            .unwrap();
        let mut snap = kv.snapshot().unwrap();
        let meta = snap.meta().clone();
        let mut chunks = Vec::new();
        while let Some(c) = snap.next_chunk().unwrap() {
            chunks.push(c);
        }
        let mut bad = chunks[1].to_vec();
        bad[2] ^= 0x40;
        chunks[1] = bad.into();
        let mut target = MemKv::default();
        target
            .apply(LogId::new(1, 1), Applied::Command(&put("b", "2")))
            .unwrap();
        let before = target.clone();
        assert!(
            target
                .install_snapshot(&meta, &mut VecChunks::new(chunks))
                .is_err()
        );
        assert_eq!(target, before);
    }
}
