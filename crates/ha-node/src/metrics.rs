//! Prometheus metrics and the health state of a node.
//!
//! [`Metrics`] is a cheap shared handle (`Arc`): the node's status poller
//! mirrors consensus, storage and transport counters into it, and the API
//! layer records request latencies with [`Metrics::observe_request`].
//! [`Metrics::encode`] renders the text exposition format served on
//! `/metrics`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Label set of per-method metrics.
pub type MethodLabels = Vec<(String, String)>;

/// Most distinct `method` label values recorded; further methods are folded
/// into `method="other"` so a buggy caller cannot grow memory without bound.
pub const MAX_METHOD_LABELS: usize = 128;

fn latency_histogram() -> Histogram {
    // 100 µs .. ~6.5 s.
    Histogram::new(exponential_buckets(0.000_1, 2.0, 17))
}

/// A Prometheus counter that mirrors a monotonic counter read elsewhere.
#[derive(Default)]
struct Mirror {
    counter: Counter,
    last: AtomicU64,
}

impl Mirror {
    /// Advances the counter to `now` (a source that restarted from 0 is
    /// counted from its new value on).
    fn set(&self, now: u64) {
        let last = self.last.swap(now, Ordering::Relaxed);
        if now > last {
            self.counter.inc_by(now - last);
        }
    }
}

macro_rules! mirrors {
    ($($name:ident),* $(,)?) => {
        #[derive(Default)]
        struct Mirrors { $( $name: Mirror, )* }
    };
}

mirrors!(
    proposals,
    proposals_committed,
    proposals_dropped,
    persists,
    committed_entries,
    messages_sent,
    frames_received_replica,
    snapshots_sent,
    snapshots_installed,
    reads_served,
    storage_writes,
    storage_fsyncs,
    storage_bytes,
    removed_member_refusals,
    transport_frames_sent,
    transport_bytes_sent,
    transport_frames_received,
    transport_bytes_received,
    transport_dropped,
    transport_connects,
    transport_connect_failures,
    transport_handshake_failures,
    transport_requests_ok,
    transport_requests_failed,
    transport_requests_served,
    transport_requests_refused,
);

/// Consensus, storage and transport values for one poll.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sample {
    /// Current term.
    pub term: u64,
    /// Commit index.
    pub commit: u64,
    /// Applied index.
    pub applied: u64,
    /// Last log index.
    pub last_index: u64,
    /// Known leader (0 = none).
    pub leader: u64,
    /// Whether this member leads.
    pub is_leader: bool,
    /// Whether the replica is running.
    pub running: bool,
    /// Bytes of the data dir's database.
    pub db_size_bytes: u64,
}

/// The node's metrics registry and health state.
pub struct Metrics {
    registry: Registry,
    term: Gauge,
    commit: Gauge,
    applied: Gauge,
    last_index: Gauge,
    is_leader: Gauge,
    has_leader: Gauge,
    leader_changes: Counter,
    db_size_bytes: Gauge,
    mirrors: Mirrors,
    api_latency: Family<MethodLabels, Histogram, fn() -> Histogram>,
    api_errors: Family<MethodLabels, Counter>,
    shard_inbox_drops: Family<MethodLabels, Gauge>,
    shard_is_leader: Family<MethodLabels, Gauge>,
    shard_leader_known: Family<MethodLabels, Gauge>,
    shard_commit: Family<MethodLabels, Gauge>,
    shard_moves: Family<MethodLabels, Counter>,
    shard_hosting: Family<MethodLabels, Counter>,
    unknown_group_frames: Gauge,
    shards_text: std::sync::Mutex<String>,
    methods_seen: std::sync::Mutex<std::collections::BTreeSet<String>>,
    last_leader: AtomicU64,
    leader_known: AtomicBool,
    running: AtomicBool,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every metric registered (prefix `ha_`).
    pub fn new() -> Self {
        let mut m = Metrics {
            registry: Registry::with_prefix("ha"),
            term: Gauge::default(),
            commit: Gauge::default(),
            applied: Gauge::default(),
            last_index: Gauge::default(),
            is_leader: Gauge::default(),
            has_leader: Gauge::default(),
            leader_changes: Counter::default(),
            db_size_bytes: Gauge::default(),
            mirrors: Mirrors::default(),
            api_latency: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            api_errors: Family::default(),
            shard_inbox_drops: Family::default(),
            shard_is_leader: Family::default(),
            shard_leader_known: Family::default(),
            shard_commit: Family::default(),
            shard_moves: Family::default(),
            shard_hosting: Family::default(),
            unknown_group_frames: Gauge::default(),
            shards_text: std::sync::Mutex::new(String::new()),
            methods_seen: std::sync::Mutex::new(std::collections::BTreeSet::new()),
            last_leader: AtomicU64::new(0),
            leader_known: AtomicBool::new(false),
            running: AtomicBool::new(false),
        };
        let r = &mut m.registry;
        r.register(
            "shard_inbox_dropped_frames",
            "Frames for a hosted data shard dropped because its inbox was full",
            m.shard_inbox_drops.clone(),
        );
        r.register(
            "shard_is_leader",
            "Whether this member leads the hosted data shard",
            m.shard_is_leader.clone(),
        );
        r.register(
            "shard_has_leader",
            "Whether the hosted data shard knows a leader",
            m.shard_leader_known.clone(),
        );
        r.register(
            "shard_commit_index",
            "Commit index of the hosted data shard",
            m.shard_commit.clone(),
        );
        r.register(
            "shard_placement_steps",
            "Placement steps this member recorded as the controller, by kind",
            m.shard_moves.clone(),
        );
        r.register(
            "shard_replicas_hosting",
            "Shard replicas this member started or stopped hosting",
            m.shard_hosting.clone(),
        );
        r.register(
            "transport_unknown_group_frames",
            "Frames dropped because they named a group this member does not host",
            m.unknown_group_frames.clone(),
        );
        r.register(
            "consensus_term",
            "Current consensus term (Raft term / Paxos ballot)",
            m.term.clone(),
        );
        r.register(
            "consensus_commit_index",
            "Highest log index known committed",
            m.commit.clone(),
        );
        r.register(
            "consensus_applied_index",
            "Highest log index applied to the state machine",
            m.applied.clone(),
        );
        r.register(
            "consensus_last_index",
            "Last index in the local log",
            m.last_index.clone(),
        );
        r.register(
            "consensus_is_leader",
            "1 if this member is the leader",
            m.is_leader.clone(),
        );
        r.register(
            "consensus_has_leader",
            "1 if a leader is known",
            m.has_leader.clone(),
        );
        r.register(
            "consensus_leader_changes",
            "Times the known leader changed",
            m.leader_changes.clone(),
        );
        r.register(
            "storage_db_size_bytes",
            "Bytes of the member's database on disk",
            m.db_size_bytes.clone(),
        );
        let mi = &m.mirrors;
        let counters: [(&str, &str, &Mirror); 26] = [
            (
                "consensus_proposals",
                "Proposals accepted by the protocol",
                &mi.proposals,
            ),
            (
                "consensus_proposals_committed",
                "Proposals committed and answered",
                &mi.proposals_committed,
            ),
            (
                "consensus_proposals_dropped",
                "Proposals dropped (another entry won the index)",
                &mi.proposals_dropped,
            ),
            (
                "consensus_persists",
                "Synced log writes by the driver",
                &mi.persists,
            ),
            (
                "consensus_committed_entries",
                "Committed entries handed to the state machine",
                &mi.committed_entries,
            ),
            (
                "consensus_messages_sent",
                "Protocol messages handed to the transport",
                &mi.messages_sent,
            ),
            (
                "consensus_frames_received",
                "Frames received by the replica",
                &mi.frames_received_replica,
            ),
            (
                "consensus_snapshots_sent",
                "Snapshots streamed to followers",
                &mi.snapshots_sent,
            ),
            (
                "consensus_snapshots_installed",
                "Snapshots installed",
                &mi.snapshots_installed,
            ),
            (
                "consensus_reads_served",
                "Linearizable reads answered",
                &mi.reads_served,
            ),
            (
                "storage_writes",
                "Log store write requests",
                &mi.storage_writes,
            ),
            ("storage_fsyncs", "Log store fsyncs", &mi.storage_fsyncs),
            (
                "membership_removed_refusals",
                "Frames and requests refused because the sender's member id was removed",
                &mi.removed_member_refusals,
            ),
            (
                "storage_bytes_written",
                "Bytes written to the log store",
                &mi.storage_bytes,
            ),
            (
                "transport_frames_sent",
                "Frames written to peers",
                &mi.transport_frames_sent,
            ),
            (
                "transport_bytes_sent",
                "Payload bytes written to peers",
                &mi.transport_bytes_sent,
            ),
            (
                "transport_frames_received",
                "Frames received from peers",
                &mi.transport_frames_received,
            ),
            (
                "transport_bytes_received",
                "Payload bytes received from peers",
                &mi.transport_bytes_received,
            ),
            (
                "transport_frames_dropped",
                "Frames dropped (queue full, unknown peer, oversize, disconnected)",
                &mi.transport_dropped,
            ),
            (
                "transport_connects",
                "Outbound peer connections established",
                &mi.transport_connects,
            ),
            (
                "transport_connect_failures",
                "Outbound peer connection attempts that failed",
                &mi.transport_connect_failures,
            ),
            (
                "transport_handshake_failures",
                "TLS handshakes that failed verification",
                &mi.transport_handshake_failures,
            ),
            (
                "transport_requests_ok",
                "Forwarded requests answered",
                &mi.transport_requests_ok,
            ),
            (
                "transport_requests_failed",
                "Forwarded requests that failed",
                &mi.transport_requests_failed,
            ),
            (
                "transport_requests_served",
                "Requests from peers served",
                &mi.transport_requests_served,
            ),
            (
                "transport_requests_refused",
                "Requests from peers refused",
                &mi.transport_requests_refused,
            ),
        ];
        for (name, help, mirror) in counters {
            r.register(name, help, mirror.counter.clone());
        }
        r.register(
            "api_request_duration_seconds",
            "Client API request latency by method",
            m.api_latency.clone(),
        );
        r.register(
            "api_request_errors",
            "Client API requests that failed, by method",
            m.api_errors.clone(),
        );
        m
    }

    fn method_label(&self, method: &str) -> MethodLabels {
        let mut seen = self.methods_seen.lock().unwrap_or_else(|p| p.into_inner());
        let name = if seen.contains(method) {
            method.to_string()
        } else if seen.len() < MAX_METHOD_LABELS {
            seen.insert(method.to_string());
            method.to_string()
        } else {
            "other".to_string()
        };
        vec![("method".to_string(), name)]
    }

    /// Records one client API request (`method` such as `Range`, `Put`).
    pub fn observe_request(&self, method: &str, elapsed: Duration, ok: bool) {
        let labels = self.method_label(method);
        self.api_latency
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
        if !ok {
            self.api_errors.get_or_create(&labels).inc();
        }
    }

    /// Mirrors one status sample.
    pub fn record_sample(&self, s: &Sample) {
        let g = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.term.set(g(s.term));
        self.commit.set(g(s.commit));
        self.applied.set(g(s.applied));
        self.last_index.set(g(s.last_index));
        self.is_leader.set(i64::from(s.is_leader));
        self.has_leader.set(i64::from(s.leader != 0));
        self.db_size_bytes.set(g(s.db_size_bytes));
        let before = self.last_leader.swap(s.leader, Ordering::Relaxed);
        if before != s.leader && s.leader != 0 {
            self.leader_changes.inc();
        }
        self.leader_known.store(s.leader != 0, Ordering::Relaxed);
        self.running.store(s.running, Ordering::Relaxed);
    }

    /// Marks the replica stopped (health turns 503).
    pub fn mark_stopped(&self) {
        self.running.store(false, Ordering::Relaxed);
    }

    /// Mirrors the replica driver's counters.
    pub fn record_replica(&self, st: &ha_core::replica::ReplicaStats) {
        let m = &self.mirrors;
        m.proposals.set(st.proposals);
        m.proposals_committed.set(st.proposals_committed);
        m.proposals_dropped.set(st.proposals_dropped);
        m.persists.set(st.persists);
        m.committed_entries.set(st.committed_entries);
        m.messages_sent.set(st.messages_sent);
        m.frames_received_replica.set(st.frames_received);
        m.snapshots_sent.set(st.snapshots_sent);
        m.snapshots_installed.set(st.snapshots_installed);
        m.reads_served.set(st.reads_served);
    }

    /// Mirrors log store counters (writes, fsyncs, bytes).
    pub fn record_storage(&self, writes: u64, fsyncs: u64, bytes: u64) {
        self.mirrors.storage_writes.set(writes);
        self.mirrors.storage_fsyncs.set(fsyncs);
        self.mirrors.storage_bytes.set(bytes);
    }

    /// Mirrors the count of frames and requests refused from removed
    /// member ids.
    pub fn record_removed_refusals(&self, refusals: u64) {
        self.mirrors.removed_member_refusals.set(refusals);
    }

    /// Mirrors the peer transport's counters.
    #[cfg(feature = "quic")]
    pub fn record_transport(&self, t: &ha_transport_quic::TransportStats) {
        let m = &self.mirrors;
        m.transport_frames_sent.set(t.frames_sent);
        m.transport_bytes_sent.set(t.bytes_sent);
        m.transport_frames_received.set(t.frames_received);
        m.transport_bytes_received.set(t.bytes_received);
        m.transport_dropped.set(
            t.dropped_queue_full
                + t.dropped_unknown_peer
                + t.dropped_oversize
                + t.dropped_disconnected
                + t.dropped_inbound_closed,
        );
        m.transport_connects.set(t.connects);
        m.transport_connect_failures.set(t.connect_failures);
        m.transport_handshake_failures.set(t.handshake_failures);
        m.transport_requests_ok.set(t.requests_ok);
        m.transport_requests_failed.set(t.requests_failed);
        m.transport_requests_served.set(t.requests_served);
        m.transport_requests_refused.set(t.requests_refused);
    }

    /// Records one hosted data shard's state (`shard` = its group id).
    pub fn record_shard(&self, shard: u64, is_leader: bool, leader_known: bool, commit: u64) {
        let l = vec![("shard".to_string(), shard.to_string())];
        self.shard_is_leader
            .get_or_create(&l)
            .set(i64::from(is_leader));
        self.shard_leader_known
            .get_or_create(&l)
            .set(i64::from(leader_known));
        self.shard_commit
            .get_or_create(&l)
            .set(i64::try_from(commit).unwrap_or(i64::MAX));
    }

    /// Counts one placement step recorded by this member's controller.
    pub fn record_shard_move(&self, kind: &str) {
        self.shard_moves
            .get_or_create(&vec![("step".to_string(), kind.to_string())])
            .inc();
    }

    /// Counts a shard replica started or stopped here (`event`).
    pub fn record_shard_hosting(&self, event: &str) {
        self.shard_hosting
            .get_or_create(&vec![("event".to_string(), event.to_string())])
            .inc();
    }

    /// Mirrors the frame drop counters: per hosted shard (inbox full) and
    /// frames for groups not hosted here.
    pub fn record_frame_drops(&self, per_shard: &[(u64, u64)], unknown_group: u64) {
        for (shard, drops) in per_shard {
            self.shard_inbox_drops
                .get_or_create(&vec![("shard".to_string(), shard.to_string())])
                .set(i64::try_from(*drops).unwrap_or(i64::MAX));
        }
        self.unknown_group_frames
            .set(i64::try_from(unknown_group).unwrap_or(i64::MAX));
    }

    /// Replaces the shard table served at `/shards`.
    pub fn set_shards_text(&self, text: String) {
        if let Ok(mut t) = self.shards_text.lock() {
            *t = text;
        }
    }

    /// The shard table (shard → replicas → leader) as last recorded; a
    /// note when the node runs one group.
    pub fn shards_text(&self) -> String {
        match self.shards_text.lock() {
            Ok(t) if !t.is_empty() => t.clone(),
            _ => "one consensus group (--shards 1)\n".to_string(),
        }
    }

    /// Whether the member is healthy: the replica runs and a leader is known.
    pub fn healthy(&self) -> Result<(), &'static str> {
        if !self.running.load(Ordering::Relaxed) {
            return Err("replica not running");
        }
        if !self.leader_known.load(Ordering::Relaxed) {
            return Err("no leader");
        }
        Ok(())
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_and_requests_show_up() {
        let m = Metrics::new();
        assert_eq!(m.healthy(), Err("replica not running"));
        m.record_sample(&Sample {
            term: 3,
            commit: 10,
            applied: 9,
            leader: 2,
            running: true,
            ..Sample::default()
        });
        m.record_sample(&Sample {
            term: 4,
            leader: 1,
            running: true,
            ..Sample::default()
        });
        assert_eq!(m.healthy(), Ok(()));
        m.observe_request("Put", Duration::from_millis(3), true);
        m.observe_request("Put", Duration::from_millis(3), false);
        let text = m.encode();
        assert!(text.contains("ha_consensus_term 4"), "{text}");
        assert!(
            text.contains("ha_consensus_leader_changes_total 2"),
            "{text}"
        );
        assert!(
            text.contains("ha_api_request_duration_seconds_count{method=\"Put\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("ha_api_request_errors_total{method=\"Put\"} 1"),
            "{text}"
        );
        m.record_sample(&Sample::default());
        assert_eq!(m.healthy(), Err("replica not running"));
    }

    #[test]
    fn method_labels_are_bounded() {
        let m = Metrics::new();
        for i in 0..(MAX_METHOD_LABELS + 10) {
            m.observe_request(&format!("m{i}"), Duration::from_millis(1), true);
        }
        assert!(m.encode().contains("method=\"other\""));
    }

    #[test]
    fn mirrors_count_deltas() {
        let m = Metrics::new();
        m.record_storage(5, 2, 100);
        m.record_storage(7, 3, 150);
        let text = m.encode();
        assert!(text.contains("ha_storage_writes_total 7"), "{text}");
        assert!(
            text.contains("ha_storage_bytes_written_total 150"),
            "{text}"
        );
    }
}
