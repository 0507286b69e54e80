//! Snapshot transfer between drivers.
//!
//! A transfer is a sequence of [`FrameKind::Snapshot`] frames from the
//! leader's driver to one follower's driver, each payload one codec frame
//! (versioned, CRC-32C checked) holding a [`SnapshotFrame`]:
//!
//! ```text
//! Begin { transfer, meta, header }   header = codec-encoded protocol message
//! Chunk { transfer, seq: 0 }         the state machine's snapshot chunks, in order
//! Chunk { transfer, seq: 1 }
//! ...
//! End   { transfer, chunks, bytes }  totals, checked by the receiver
//! ```
//!
//! The receiver stages chunks in memory (at most
//! [`ReplicaConfig::max_snapshot_bytes`](super::ReplicaConfig::max_snapshot_bytes)
//! per transfer, one transfer per sender, at most [`MAX_STAGING_SENDERS`]
//! senders at once). A frame that is out of order, for an unknown transfer,
//! over the limit or undecodable discards that sender's transfer; the
//! protocol notices the follower did not catch up and sends again. Only when
//! `End` checks out is the header message handed to the protocol via
//! `step`; when the protocol then emits `Ready::snapshot` naming that index
//! or an older one, the driver installs the staged chunks (with the staged
//! meta: what they really cover) into the state machine before it persists
//! that Ready (see [`Receiver::take`] for why a newer snapshot may stand in).
//!
//! There is no per-chunk acknowledgement or flow control: the transport's
//! queue must hold a transfer's chunks (QUIC streams provide this; the
//! in-memory network drops and counts on overflow, failing the transfer).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::apply::SnapshotCounters;
use crate::codec;
use crate::state_machine::SnapshotSource;
use crate::transport::{Frame, FrameKind, Transport};
use crate::types::{GroupId, NodeId, SnapshotMeta};

/// Most senders whose transfers are staged at once; a Begin from another
/// sender is dropped.
pub const MAX_STAGING_SENDERS: usize = 4;

/// One frame of a snapshot transfer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) enum SnapshotFrame {
    /// Starts transfer `transfer` of the snapshot described by `meta`.
    Begin {
        transfer: u64,
        meta: SnapshotMeta,
        header: Bytes,
    },
    /// Chunk number `seq` (from 0) of the transfer.
    Chunk {
        transfer: u64,
        seq: u32,
        data: Bytes,
    },
    /// The transfer is complete: it carried `chunks` chunks of `bytes` total.
    End {
        transfer: u64,
        chunks: u32,
        bytes: u64,
    },
}

/// A snapshot send the driver asked the apply task for.
pub(super) struct SnapshotJob {
    pub(super) to: NodeId,
    pub(super) group: GroupId,
    pub(super) want: SnapshotMeta,
    pub(super) header: Bytes,
    pub(super) transfer: u64,
    pub(super) transport: Arc<dyn Transport>,
    pub(super) max_bytes: u64,
}

fn frame(group: GroupId, f: &SnapshotFrame) -> Frame {
    Frame {
        group,
        kind: FrameKind::Snapshot,
        payload: codec::encode(f).into(),
    }
}

/// Streams `source` to `job.to`. Runs on the blocking pool (reading chunks
/// may do IO); stops between chunks when `cancel` is set.
pub(super) fn stream(
    job: SnapshotJob,
    mut source: Box<dyn SnapshotSource>,
    counters: &SnapshotCounters,
    cancel: &AtomicBool,
) {
    let fail = |why: String| {
        counters.send_failed.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(to = %job.to, group = %job.group, "snapshot send failed: {why}");
    };
    let meta = source.meta().clone();
    if meta.last_log_id.index < job.want.last_log_id.index {
        return fail(format!(
            "state machine snapshot covers {:?}, protocol wants at least {:?}",
            meta.last_log_id, job.want.last_log_id
        ));
    }
    let send = |f: SnapshotFrame| job.transport.send(job.to, frame(job.group, &f));
    send(SnapshotFrame::Begin {
        transfer: job.transfer,
        meta,
        header: job.header.clone(),
    });
    let (mut chunks, mut bytes) = (0u32, 0u64);
    loop {
        if cancel.load(Ordering::SeqCst) {
            return fail("replica stopping".into());
        }
        match source.next_chunk() {
            Ok(Some(data)) => {
                bytes += data.len() as u64;
                if bytes > job.max_bytes || chunks == u32::MAX {
                    return fail(format!(
                        "snapshot exceeds max_snapshot_bytes ({})",
                        job.max_bytes
                    ));
                }
                send(SnapshotFrame::Chunk {
                    transfer: job.transfer,
                    seq: chunks,
                    data,
                });
                chunks += 1;
            }
            Ok(None) => break,
            Err(e) => return fail(format!("reading snapshot chunk {chunks}: {e}")),
        }
    }
    send(SnapshotFrame::End {
        transfer: job.transfer,
        chunks,
        bytes,
    });
    counters.sent.fetch_add(1, Ordering::Relaxed);
}

/// A transfer being received.
struct Staging {
    transfer: u64,
    meta: SnapshotMeta,
    header: Bytes,
    chunks: Vec<Bytes>,
    bytes: u64,
}

/// A fully received snapshot, waiting for the protocol to ask for it.
pub(super) struct Staged {
    pub(super) meta: SnapshotMeta,
    pub(super) chunks: Vec<Bytes>,
}

/// What a received frame led to.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Received {
    /// Nothing to do yet.
    Progress,
    /// The frame was bad; the sender's transfer (if any) was discarded.
    Failed(&'static str),
    /// A transfer completed: hand `header` to the protocol.
    Complete { header: Bytes },
}

/// The receiving side: transfers in progress and the latest complete one.
pub(super) struct Receiver {
    max_bytes: u64,
    staging: HashMap<NodeId, Staging>,
    staged: Option<Staged>,
}

impl Receiver {
    pub(super) fn new(max_bytes: u64) -> Self {
        Self {
            max_bytes,
            staging: HashMap::new(),
            staged: None,
        }
    }

    pub(super) fn on_frame(&mut self, from: NodeId, payload: &[u8]) -> Received {
        let Ok(f) = codec::decode::<SnapshotFrame>(payload) else {
            self.staging.remove(&from);
            return Received::Failed("undecodable snapshot frame");
        };
        match f {
            SnapshotFrame::Begin {
                transfer,
                meta,
                header,
            } => {
                if !self.staging.contains_key(&from) && self.staging.len() >= MAX_STAGING_SENDERS {
                    return Received::Failed("too many snapshot transfers at once");
                }
                if header.len() as u64 > self.max_bytes {
                    self.staging.remove(&from);
                    return Received::Failed("snapshot header over max_snapshot_bytes");
                }
                self.staging.insert(
                    from,
                    Staging {
                        transfer,
                        meta,
                        header,
                        chunks: Vec::new(),
                        bytes: 0,
                    },
                );
                Received::Progress
            }
            SnapshotFrame::Chunk {
                transfer,
                seq,
                data,
            } => {
                let Some(st) = self.staging.get_mut(&from) else {
                    return Received::Failed("snapshot chunk without a transfer");
                };
                let fits = st.bytes + data.len() as u64 <= self.max_bytes;
                if st.transfer != transfer || seq as usize != st.chunks.len() || !fits {
                    self.staging.remove(&from);
                    return Received::Failed(if fits {
                        "snapshot chunk out of order"
                    } else {
                        "snapshot over max_snapshot_bytes"
                    });
                }
                st.bytes += data.len() as u64;
                st.chunks.push(data);
                Received::Progress
            }
            SnapshotFrame::End {
                transfer,
                chunks,
                bytes,
            } => {
                let Some(st) = self.staging.remove(&from) else {
                    return Received::Failed("snapshot end without a transfer");
                };
                if st.transfer != transfer
                    || st.chunks.len() != chunks as usize
                    || st.bytes != bytes
                {
                    return Received::Failed("snapshot transfer incomplete");
                }
                let newer = self
                    .staged
                    .as_ref()
                    .is_none_or(|s| s.meta.last_log_id <= st.meta.last_log_id);
                if newer {
                    self.staged = Some(Staged {
                        meta: st.meta,
                        chunks: st.chunks,
                    });
                }
                Received::Complete { header: st.header }
            }
        }
    }

    /// Takes the staged snapshot if it covers at least what `meta` (the
    /// protocol's install request) names.
    ///
    /// The sender streams its state machine's *current* snapshot, which may
    /// be newer than the one the protocol named in the header (the
    /// [`SnapshotSend`](crate::consensus::SnapshotSend) contract: "at
    /// least `meta`"). Every snapshot a driver streams is of committed
    /// state, so a newer one is just as valid: the state machine is then
    /// ahead of the protocol's log, and the entries up to the staged index
    /// that the protocol later commits are skipped by the state machine
    /// (its idempotent-replay rule). A staged snapshot *older* than `meta`
    /// cannot stand in for it and is not taken.
    pub(super) fn take(&mut self, meta: &SnapshotMeta) -> Option<Staged> {
        if self
            .staged
            .as_ref()
            .is_some_and(|s| s.meta.last_log_id.index >= meta.last_log_id.index)
        {
            self.staged.take()
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::LogId;

    fn enc(f: SnapshotFrame) -> Vec<u8> {
        codec::encode(&f)
    }

    fn meta(i: u64) -> SnapshotMeta {
        SnapshotMeta {
            last_log_id: LogId::new(1, i),
            membership: Default::default(),
        }
    }

    fn begin(transfer: u64) -> Vec<u8> {
        enc(SnapshotFrame::Begin {
            transfer,
            meta: meta(5),
            header: Bytes::from_static(b"h"),
        })
    }

    fn chunk(transfer: u64, seq: u32, data: &'static [u8]) -> Vec<u8> {
        enc(SnapshotFrame::Chunk {
            transfer,
            seq,
            data: Bytes::from_static(data),
        })
    }

    #[test]
    fn complete_transfer_is_staged_and_taken_by_meta() {
        let mut r = Receiver::new(100);
        let a = NodeId(2);
        assert_eq!(r.on_frame(a, &begin(1)), Received::Progress);
        assert_eq!(r.on_frame(a, &chunk(1, 0, b"ab")), Received::Progress);
        assert_eq!(r.on_frame(a, &chunk(1, 1, b"c")), Received::Progress);
        let end = enc(SnapshotFrame::End {
            transfer: 1,
            chunks: 2,
            bytes: 3,
        });
        assert_eq!(
            r.on_frame(a, &end),
            Received::Complete {
                header: Bytes::from_static(b"h")
            }
        );
        assert!(r.take(&meta(6)).is_none(), "older than the protocol asks");
        let s = r.take(&meta(5)).unwrap();
        assert_eq!(
            s.chunks,
            vec![Bytes::from_static(b"ab"), Bytes::from_static(b"c")]
        );
        assert!(r.take(&meta(5)).is_none(), "taken once");
    }

    #[test]
    fn a_staged_snapshot_newer_than_the_named_one_is_taken() {
        // The sender streams its state machine's current snapshot (index 5)
        // while the protocol's header named an older one (index 3).
        let mut r = Receiver::new(100);
        let a = NodeId(2);
        r.on_frame(a, &begin(1));
        r.on_frame(a, &chunk(1, 0, b"x"));
        let end = enc(SnapshotFrame::End {
            transfer: 1,
            chunks: 1,
            bytes: 1,
        });
        assert!(matches!(r.on_frame(a, &end), Received::Complete { .. }));
        let s = r.take(&meta(3)).expect("a newer staged snapshot stands in");
        assert_eq!(s.meta, meta(5), "installed as what it really covers");
        assert!(r.take(&meta(3)).is_none(), "taken once");
    }

    #[test]
    fn bad_frames_discard_the_transfer() {
        let a = NodeId(2);
        let mut r = Receiver::new(4);
        r.on_frame(a, &begin(1));
        assert!(matches!(
            r.on_frame(a, &chunk(1, 1, b"x")),
            Received::Failed(_)
        ));
        assert!(matches!(
            r.on_frame(a, &chunk(1, 0, b"x")),
            Received::Failed(_)
        ));
        r.on_frame(a, &begin(2));
        assert!(matches!(
            r.on_frame(a, &chunk(2, 0, b"12345")),
            Received::Failed(_)
        ));
        r.on_frame(a, &begin(3));
        assert!(matches!(r.on_frame(a, b"garbage"), Received::Failed(_)));
        let end = enc(SnapshotFrame::End {
            transfer: 3,
            chunks: 0,
            bytes: 0,
        });
        assert!(
            matches!(r.on_frame(a, &end), Received::Failed(_)),
            "transfer 3 was discarded"
        );
        r.on_frame(a, &begin(4));
        let short = enc(SnapshotFrame::End {
            transfer: 4,
            chunks: 1,
            bytes: 0,
        });
        assert!(matches!(r.on_frame(a, &short), Received::Failed(_)));
        assert!(r.take(&meta(5)).is_none());
    }

    #[test]
    fn staging_senders_are_bounded() {
        let mut r = Receiver::new(100);
        for n in 0..MAX_STAGING_SENDERS as u64 {
            assert_eq!(r.on_frame(NodeId(10 + n), &begin(1)), Received::Progress);
        }
        assert!(matches!(
            r.on_frame(NodeId(99), &begin(1)),
            Received::Failed(_)
        ));
    }
}
