//! A leader's view of one follower's replication.

use std::collections::VecDeque;

use ha_core::{LogIndex, Millis};

/// How the leader sends to a follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ProgressState {
    /// Where the logs agree is unknown: one message at a time, until the
    /// follower answers.
    Probe,
    /// The logs agree up to `match_index`: stream optimistically, bounded by
    /// the in-flight window.
    Replicate,
    /// A snapshot covering `index` is being streamed; nothing else is sent.
    Snapshot {
        /// Index the snapshot covers.
        index: LogIndex,
        /// When it was handed to the driver.
        sent_at_ms: Millis,
    },
}

/// Replication state of one peer, kept by the leader.
#[derive(Clone, Debug)]
pub(crate) struct Progress {
    /// Highest index known to match (and be durable) on the peer.
    pub(crate) match_index: LogIndex,
    /// Next index to send.
    pub(crate) next_index: LogIndex,
    pub(crate) state: ProgressState,
    /// In probe state: a probe is outstanding.
    pub(crate) probe_sent: bool,
    /// Last index and byte size of each message in flight (replicate state).
    pub(crate) inflight: VecDeque<(LogIndex, usize)>,
    /// Sum of the byte sizes in `inflight`.
    pub(crate) inflight_bytes: usize,
    /// The peer answered since the last check-quorum round.
    pub(crate) recent_active: bool,
    /// Highest heartbeat round the peer acknowledged in this term.
    pub(crate) acked_round: u64,
    /// Last heartbeat round sent to the peer (coalescing heartbeats).
    pub(crate) sent_round: u64,
    /// When `match_index` last moved (or the state last changed).
    pub(crate) progress_at_ms: Millis,
}

impl Progress {
    /// A fresh progress: probing from `next`.
    pub(crate) fn new(next: LogIndex, now: Millis) -> Self {
        Self {
            match_index: LogIndex(0),
            next_index: next,
            state: ProgressState::Probe,
            probe_sent: false,
            inflight: VecDeque::new(),
            inflight_bytes: 0,
            recent_active: false,
            acked_round: 0,
            sent_round: 0,
            progress_at_ms: now,
        }
    }

    fn clear_inflight(&mut self) {
        self.inflight.clear();
        self.inflight_bytes = 0;
    }

    /// Switches to probing from `match_index + 1`.
    pub(crate) fn become_probe(&mut self, now: Millis) {
        self.state = ProgressState::Probe;
        self.probe_sent = false;
        self.next_index = self.match_index.next();
        self.clear_inflight();
        self.progress_at_ms = now;
    }

    /// Switches to streaming from `match_index + 1`.
    pub(crate) fn become_replicate(&mut self, now: Millis) {
        self.state = ProgressState::Replicate;
        self.probe_sent = false;
        self.next_index = self.match_index.next();
        self.clear_inflight();
        self.progress_at_ms = now;
    }

    /// Switches to snapshot streaming.
    pub(crate) fn become_snapshot(&mut self, index: LogIndex, now: Millis) {
        self.state = ProgressState::Snapshot {
            index,
            sent_at_ms: now,
        };
        self.probe_sent = false;
        self.clear_inflight();
        self.progress_at_ms = now;
    }

    /// Records an acknowledged match; returns whether it moved.
    pub(crate) fn update_match(&mut self, index: LogIndex, now: Millis) -> bool {
        let moved = index > self.match_index;
        if moved {
            self.match_index = index;
            self.progress_at_ms = now;
        }
        if self.next_index <= index {
            self.next_index = index.next();
        }
        while let Some(&(last, bytes)) = self.inflight.front() {
            if last > self.match_index {
                break;
            }
            self.inflight.pop_front();
            self.inflight_bytes -= bytes;
        }
        moved
    }

    /// Whether the in-flight window is full.
    pub(crate) fn window_full(&self, max_msgs: usize, max_bytes: usize) -> bool {
        self.inflight.len() >= max_msgs || self.inflight_bytes >= max_bytes
    }

    /// Records a message in flight (replicate state).
    pub(crate) fn add_inflight(&mut self, last: LogIndex, bytes: usize) {
        self.inflight.push_back((last, bytes));
        self.inflight_bytes += bytes;
        self.next_index = last.next();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_frees_on_ack() {
        let mut p = Progress::new(LogIndex(1), 0);
        p.become_replicate(0);
        p.add_inflight(LogIndex(3), 100);
        p.add_inflight(LogIndex(6), 100);
        assert!(p.window_full(2, 1_000));
        assert!(p.window_full(10, 200));
        assert!(p.update_match(LogIndex(3), 5));
        assert!(!p.window_full(2, 1_000));
        assert_eq!(p.inflight_bytes, 100);
        assert_eq!(p.next_index, LogIndex(7));
        assert!(!p.update_match(LogIndex(2), 6), "a stale ack moves nothing");
        p.become_probe(7);
        assert_eq!(p.next_index, LogIndex(4));
        assert!(p.inflight.is_empty());
    }
}
