//! [`MemNetwork`]: an in-process network of [`Transport`]s for tests,
//! examples and embedding.
//!
//! Every node that [joins](MemNetwork::join) gets a [`MemTransport`] to send
//! with and a bounded inbound queue to receive from. Delivery is immediate
//! and in order per link unless the test interferes: links can be cut in one
//! direction ([`MemNetwork::block`]), between two sets of nodes
//! ([`MemNetwork::partition`]) or around one node ([`MemNetwork::isolate`]),
//! and healed again. Like a real transport it never blocks the sender: a
//! frame to a full queue, over a cut link, to an unknown node or over the
//! size limit is dropped and counted.
//!
//! ```
//! use ha_core::transport::{Frame, FrameKind, MemNetwork, MemNetworkConfig, Transport};
//! use ha_core::{Bytes, GroupId, NodeId};
//!
//! let net = MemNetwork::new(MemNetworkConfig::default()).unwrap();
//! let (t1, _rx1) = net.join(NodeId(1)).unwrap();
//! let (_t2, mut rx2) = net.join(NodeId(2)).unwrap();
//! let frame = Frame { group: GroupId(0), kind: FrameKind::Protocol, payload: Bytes::from_static(b"hi") };
//! t1.send(NodeId(2), frame.clone());
//! assert_eq!(rx2.try_recv().unwrap().frame, frame);
//!
//! net.isolate(NodeId(2));
//! t1.send(NodeId(2), frame);
//! assert!(rx2.try_recv().is_err());
//! assert_eq!(net.stats(NodeId(1)).dropped_blocked, 1);
//! ```

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::mpsc;

use super::{Frame, Inbound, Transport};
use crate::types::NodeId;

/// Limits of a [`MemNetwork`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemNetworkConfig {
    /// Frames each node's inbound queue holds before further frames to it are
    /// dropped. Default 4096.
    pub inbound_queue_frames: usize,
    /// Largest payload delivered; larger frames are dropped and counted.
    /// Default 16 MiB.
    pub max_frame_bytes: usize,
}

impl Default for MemNetworkConfig {
    fn default() -> Self {
        Self {
            inbound_queue_frames: 4096,
            max_frame_bytes: 16 << 20,
        }
    }
}

/// Why a [`MemNetwork`] call was refused. Nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemNetworkError {
    /// A configuration value is out of range.
    #[error("invalid network config: {0}")]
    Config(&'static str),
    /// A node with this id is already attached.
    #[error("node {0} already joined the network")]
    DuplicateNode(NodeId),
    /// `NodeId(0)` is reserved.
    #[error("node id 0 is reserved")]
    ReservedId,
}

/// Per-sender delivery counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemLinkStats {
    /// Frames queued at the destination.
    pub delivered: u64,
    /// Dropped because the destination queue was full.
    pub dropped_full: u64,
    /// Dropped because the link was cut.
    pub dropped_blocked: u64,
    /// Dropped because no such node is attached (or it left).
    pub dropped_unknown: u64,
    /// Dropped because the payload exceeded `max_frame_bytes`.
    pub dropped_oversize: u64,
}

#[derive(Debug, Default)]
struct NetState {
    nodes: HashMap<NodeId, mpsc::Sender<Inbound>>,
    /// Cut directed links `(from, to)`.
    blocked: HashSet<(NodeId, NodeId)>,
    stats: HashMap<NodeId, MemLinkStats>,
}

#[derive(Debug)]
struct NetInner {
    config: MemNetworkConfig,
    state: Mutex<NetState>,
}

impl NetInner {
    fn lock(&self) -> MutexGuard<'_, NetState> {
        // Every critical section leaves the maps consistent after each
        // statement, so a poisoned lock holds usable state.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// An in-process network. Cloning shares the network.
#[derive(Clone, Debug)]
pub struct MemNetwork {
    inner: Arc<NetInner>,
}

impl MemNetwork {
    /// A network with no nodes.
    pub fn new(config: MemNetworkConfig) -> Result<Self, MemNetworkError> {
        if config.inbound_queue_frames == 0 {
            return Err(MemNetworkError::Config("inbound_queue_frames must be >= 1"));
        }
        if config.max_frame_bytes == 0 {
            return Err(MemNetworkError::Config("max_frame_bytes must be >= 1"));
        }
        Ok(Self {
            inner: Arc::new(NetInner {
                config,
                state: Mutex::new(NetState::default()),
            }),
        })
    }

    /// Attaches node `id`: returns its transport and its inbound queue.
    pub fn join(
        &self,
        id: NodeId,
    ) -> Result<(MemTransport, mpsc::Receiver<Inbound>), MemNetworkError> {
        if id == NodeId(0) {
            return Err(MemNetworkError::ReservedId);
        }
        let mut st = self.inner.lock();
        if st.nodes.get(&id).is_some_and(|tx| !tx.is_closed()) {
            return Err(MemNetworkError::DuplicateNode(id));
        }
        let (tx, rx) = mpsc::channel(self.inner.config.inbound_queue_frames);
        st.nodes.insert(id, tx);
        Ok((
            MemTransport {
                id,
                net: Arc::clone(&self.inner),
            },
            rx,
        ))
    }

    /// Detaches node `id`; frames to it are dropped as unknown until it
    /// joins again.
    pub fn leave(&self, id: NodeId) {
        self.inner.lock().nodes.remove(&id);
    }

    /// Cuts the directed link `from → to`.
    pub fn block(&self, from: NodeId, to: NodeId) {
        self.inner.lock().blocked.insert((from, to));
    }

    /// Restores the directed link `from → to`.
    pub fn unblock(&self, from: NodeId, to: NodeId) {
        self.inner.lock().blocked.remove(&(from, to));
    }

    /// Cuts every link between a node of `a` and a node of `b`, both ways.
    pub fn partition(&self, a: &[NodeId], b: &[NodeId]) {
        let mut st = self.inner.lock();
        for x in a {
            for y in b {
                if x != y {
                    st.blocked.insert((*x, *y));
                    st.blocked.insert((*y, *x));
                }
            }
        }
    }

    /// Cuts every link to and from `id` (including to nodes that join later,
    /// until [`heal`](Self::heal) or [`rejoin`](Self::rejoin)).
    pub fn isolate(&self, id: NodeId) {
        let mut st = self.inner.lock();
        // NodeId(0) is never a member, so (id, 0) / (0, id) mark "isolated".
        st.blocked.insert((id, NodeId(0)));
        st.blocked.insert((NodeId(0), id));
    }

    /// Undoes [`isolate`](Self::isolate) and every cut link touching `id`.
    pub fn rejoin(&self, id: NodeId) {
        self.inner
            .lock()
            .blocked
            .retain(|(from, to)| *from != id && *to != id);
    }

    /// Restores every link.
    pub fn heal(&self) {
        self.inner.lock().blocked.clear();
    }

    /// Attached nodes, sorted.
    pub fn nodes(&self) -> BTreeSet<NodeId> {
        self.inner.lock().nodes.keys().copied().collect()
    }

    /// Delivery counters of frames sent by `from`.
    pub fn stats(&self, from: NodeId) -> MemLinkStats {
        self.inner
            .lock()
            .stats
            .get(&from)
            .copied()
            .unwrap_or_default()
    }
}

/// One node's sending end of a [`MemNetwork`].
#[derive(Clone, Debug)]
pub struct MemTransport {
    id: NodeId,
    net: Arc<NetInner>,
}

impl MemTransport {
    /// The node this transport sends as.
    pub fn id(&self) -> NodeId {
        self.id
    }
}

impl Transport for MemTransport {
    fn send(&self, to: NodeId, frame: Frame) {
        let mut st = self.net.lock();
        let from = self.id;
        let cut = st.blocked.contains(&(from, to))
            || st.blocked.contains(&(from, NodeId(0)))
            || st.blocked.contains(&(NodeId(0), to));
        let oversize = frame.payload.len() > self.net.config.max_frame_bytes;
        let outcome = if oversize {
            Outcome::Oversize
        } else if cut {
            Outcome::Blocked
        } else {
            match st.nodes.get(&to) {
                None => Outcome::Unknown,
                Some(tx) => match tx.try_send(Inbound { from, frame }) {
                    Ok(()) => Outcome::Delivered,
                    Err(mpsc::error::TrySendError::Full(_)) => Outcome::Full,
                    Err(mpsc::error::TrySendError::Closed(_)) => Outcome::Unknown,
                },
            }
        };
        let stats = st.stats.entry(from).or_default();
        match outcome {
            Outcome::Delivered => stats.delivered += 1,
            Outcome::Full => stats.dropped_full += 1,
            Outcome::Blocked => stats.dropped_blocked += 1,
            Outcome::Unknown => stats.dropped_unknown += 1,
            Outcome::Oversize => stats.dropped_oversize += 1,
        }
    }
}

enum Outcome {
    Delivered,
    Full,
    Blocked,
    Unknown,
    Oversize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::FrameKind;
    use crate::types::GroupId;
    use bytes::Bytes;

    fn frame(n: u8) -> Frame {
        Frame {
            group: GroupId(1),
            kind: FrameKind::Protocol,
            payload: Bytes::from(vec![n]),
        }
    }

    fn net(queue: usize) -> MemNetwork {
        MemNetwork::new(MemNetworkConfig {
            inbound_queue_frames: queue,
            max_frame_bytes: 8,
        })
        .unwrap()
    }

    #[test]
    fn delivers_in_order_with_sender_identity() {
        let net = net(16);
        let (t1, _r1) = net.join(NodeId(1)).unwrap();
        let (_t2, mut r2) = net.join(NodeId(2)).unwrap();
        for i in 0..5 {
            t1.send(NodeId(2), frame(i));
        }
        for i in 0..5 {
            let got = r2.try_recv().unwrap();
            assert_eq!(got.from, NodeId(1));
            assert_eq!(got.frame, frame(i));
        }
        assert_eq!(net.stats(NodeId(1)).delivered, 5);
    }

    #[test]
    fn full_queue_drops_and_counts_without_blocking() {
        let net = net(2);
        let (t1, _r1) = net.join(NodeId(1)).unwrap();
        let (_t2, mut r2) = net.join(NodeId(2)).unwrap();
        for i in 0..5 {
            t1.send(NodeId(2), frame(i));
        }
        let s = net.stats(NodeId(1));
        assert_eq!((s.delivered, s.dropped_full), (2, 3));
        assert_eq!(r2.try_recv().unwrap().frame, frame(0));
        assert_eq!(r2.try_recv().unwrap().frame, frame(1));
        assert!(r2.try_recv().is_err());
    }

    #[test]
    fn partition_cuts_both_directions_and_heal_restores() {
        let net = net(16);
        let (t1, mut r1) = net.join(NodeId(1)).unwrap();
        let (t2, mut r2) = net.join(NodeId(2)).unwrap();
        let (t3, mut r3) = net.join(NodeId(3)).unwrap();
        net.partition(&[NodeId(1)], &[NodeId(2), NodeId(3)]);
        t1.send(NodeId(2), frame(1));
        t2.send(NodeId(1), frame(2));
        t2.send(NodeId(3), frame(3));
        assert!(r2.try_recv().is_err());
        assert!(r1.try_recv().is_err());
        assert_eq!(r3.try_recv().unwrap().frame, frame(3), "2↔3 still linked");
        assert_eq!(net.stats(NodeId(1)).dropped_blocked, 1);
        net.heal();
        t3.send(NodeId(1), frame(4));
        assert_eq!(r1.try_recv().unwrap().frame, frame(4));
    }

    #[test]
    fn isolate_and_rejoin() {
        let net = net(16);
        let (t1, mut r1) = net.join(NodeId(1)).unwrap();
        let (t2, mut r2) = net.join(NodeId(2)).unwrap();
        net.isolate(NodeId(2));
        t1.send(NodeId(2), frame(1));
        t2.send(NodeId(1), frame(2));
        assert!(r1.try_recv().is_err() && r2.try_recv().is_err());
        net.rejoin(NodeId(2));
        t1.send(NodeId(2), frame(3));
        assert_eq!(r2.try_recv().unwrap().frame, frame(3));
    }

    #[test]
    fn unknown_oversize_duplicate_and_reserved() {
        let net = net(16);
        let (t1, _r1) = net.join(NodeId(1)).unwrap();
        t1.send(NodeId(9), frame(1));
        let mut big = frame(1);
        big.payload = Bytes::from(vec![0u8; 9]);
        let (_t2, mut r2) = net.join(NodeId(2)).unwrap();
        t1.send(NodeId(2), big);
        assert!(r2.try_recv().is_err());
        let s = net.stats(NodeId(1));
        assert_eq!((s.dropped_unknown, s.dropped_oversize), (1, 1));
        assert_eq!(
            net.join(NodeId(1)).err(),
            Some(MemNetworkError::DuplicateNode(NodeId(1)))
        );
        assert_eq!(net.join(NodeId(0)).err(), Some(MemNetworkError::ReservedId));
        assert!(
            MemNetwork::new(MemNetworkConfig {
                inbound_queue_frames: 0,
                max_frame_bytes: 1
            })
            .is_err()
        );
        net.leave(NodeId(2));
        t1.send(NodeId(2), frame(2));
        assert_eq!(net.stats(NodeId(1)).dropped_unknown, 2);
    }

    #[test]
    fn rejoin_after_receiver_dropped_is_allowed() {
        let net = net(4);
        let (_t1, r1) = net.join(NodeId(1)).unwrap();
        drop(r1);
        assert!(net.join(NodeId(1)).is_ok());
    }
}
