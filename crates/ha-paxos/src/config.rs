//! [`Config`]: every timeout and limit of the protocol, named, documented
//! and validated.
//!
//! Times are milliseconds of the monotonic clock the driver passes to
//! [`Consensus::tick`](ha_core::consensus::Consensus::tick); sizes are bytes
//! as measured by [`Entry::size_bytes`](ha_core::Entry::size_bytes).

use ha_core::Millis;

/// Protocol configuration. Start from [`Config::default`] and adjust;
/// [`Paxos::new`](crate::Paxos::new) calls [`Config::validate`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Lower bound of the randomized leader-failure timeout: a voter that
    /// hears nothing from a leader for a random time in
    /// `election_timeout_min_ms..election_timeout_max_ms` runs phase 1.
    /// Also the leader's quorum-check period and the stickiness window in
    /// which an acceptor that heard from a live leader refuses to promise
    /// to anyone else (duel and disruption avoidance).
    pub election_timeout_min_ms: Millis,
    /// Upper bound (exclusive) of the randomized leader-failure timeout.
    pub election_timeout_max_ms: Millis,
    /// How often a leader sends an empty Accept (heartbeat) carrying its
    /// commit point to every member.
    pub heartbeat_interval_ms: Millis,
    /// How long a leader waits for a follower's acknowledgements to move
    /// before it assumes Accepts were lost and re-sends from the
    /// follower's last acknowledged slot.
    pub accept_retransmit_ms: Millis,
    /// How long a candidate waits for phase 1 to complete (plus a random
    /// jitter of up to `election_timeout_max_ms - election_timeout_min_ms`)
    /// before it starts over with a new PrePrepare round and a higher
    /// ballot (a lost Prepare or Promise chunk is not re-requested).
    pub prepare_timeout_ms: Millis,
    /// Serve reads from a leader lease, without a heartbeat round.
    ///
    /// **Clock assumption**: the lease lasts
    /// `election_timeout_min_ms - lease_drift_margin_ms` from the moment the
    /// leader began the heartbeat round a quorum acknowledged. Every
    /// acknowledging acceptor refuses other candidates for
    /// `election_timeout_min_ms` after it heard from the leader
    /// (stickiness), so no other ballot can complete phase 1 before the
    /// lease ends — provided that over that span no node's clock runs
    /// slower than the leader's by more than `lease_drift_margin_ms`, and
    /// that a paused process (GC, SIGSTOP, VM migration) resumes its clock
    /// accordingly. The protocol judges the lease by the last time passed
    /// to `tick`, so a driver that enables lease reads must `tick` with the
    /// current time before each `read_index`. A leader transfer ends the
    /// lease at once.
    pub lease_read: bool,
    /// Safety margin subtracted from the lease for clock drift between
    /// nodes; see [`lease_read`](Self::lease_read).
    pub lease_drift_margin_ms: Millis,
    /// At most this many Accept messages with entries in flight (sent, not
    /// acknowledged) to one follower.
    pub max_inflight_msgs: usize,
    /// At most this many entry bytes in flight to one follower.
    pub max_inflight_bytes: usize,
    /// At most this many entries in one Accept or Promise message.
    pub max_entries_per_msg: usize,
    /// At most this many entry bytes in one Accept or Promise message (a
    /// single larger entry still goes alone).
    pub max_bytes_per_msg: usize,
    /// A receiver ignores an Accept or Promise carrying more entries than
    /// this (malformed or hostile); at least `max_entries_per_msg` of every
    /// sender.
    pub max_recv_entries_per_msg: usize,
    /// An acceptor holds slots at most this far above its commit point;
    /// Accepts for slots further ahead are ignored (bounds the memory a
    /// hostile or confused proposer can make it hold).
    pub max_slots_ahead: u64,
    /// A candidate gives up phase 1 if the slots it must recover (above its
    /// commit point) exceed this: it is too far behind to lead and waits to
    /// be caught up by a more current leader.
    pub max_recovery_slots: u64,
    /// A leader refuses proposals (`Overloaded`) while its uncommitted
    /// slots hold more bytes than this.
    pub max_uncommitted_bytes: usize,
    /// Largest accepted proposal, in bytes of payload.
    pub max_proposal_bytes: usize,
    /// At most this many read requests waiting on a leader.
    pub max_pending_reads: usize,
    /// At most this many bytes of committed entries in one `Ready` (at least
    /// one entry always goes).
    pub max_apply_bytes_per_ready: usize,
    /// A leader transfer not completed within this time is abandoned and
    /// the leader accepts proposals again.
    pub transfer_timeout_ms: Millis,
    /// A snapshot sent to a follower and not acknowledged within this time
    /// is assumed lost; the leader re-sends from the follower's known
    /// commit point (with a new snapshot if still needed).
    pub snapshot_send_timeout_ms: Millis,
    /// [`Paxos::wants_snapshot`](crate::Paxos::wants_snapshot) turns true
    /// when this many applied entries are held after the last snapshot.
    pub snapshot_threshold_entries: u64,
    /// Entries kept below a new snapshot's index so that a follower only
    /// slightly behind catches up from the log, not the whole snapshot.
    pub snapshot_trailing_entries: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            election_timeout_min_ms: 1_000,
            election_timeout_max_ms: 2_000,
            heartbeat_interval_ms: 100,
            accept_retransmit_ms: 500,
            prepare_timeout_ms: 1_000,
            lease_read: false,
            lease_drift_margin_ms: 100,
            max_inflight_msgs: 256,
            max_inflight_bytes: 32 << 20,
            max_entries_per_msg: 4_096,
            max_bytes_per_msg: 1 << 20,
            max_recv_entries_per_msg: 65_536,
            max_slots_ahead: 1 << 20,
            max_recovery_slots: 1 << 20,
            max_uncommitted_bytes: 64 << 20,
            max_proposal_bytes: 1 << 20,
            max_pending_reads: 65_536,
            max_apply_bytes_per_ready: 16 << 20,
            transfer_timeout_ms: 2_000,
            snapshot_send_timeout_ms: 60_000,
            snapshot_threshold_entries: 100_000,
            snapshot_trailing_entries: 1_000,
        }
    }
}

/// Why a [`Config`] was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A value that must be positive is zero.
    #[error("{0} must be greater than zero")]
    Zero(&'static str),
    /// The election timeout range is empty.
    #[error("election_timeout_max_ms ({max}) must be greater than election_timeout_min_ms ({min})")]
    ElectionRange {
        /// Configured minimum.
        min: Millis,
        /// Configured maximum.
        max: Millis,
    },
    /// Heartbeats too slow to keep followers from starting phase 1.
    #[error(
        "heartbeat_interval_ms ({heartbeat}) must be at most half of election_timeout_min_ms ({min})"
    )]
    HeartbeatTooSlow {
        /// Configured heartbeat interval.
        heartbeat: Millis,
        /// Configured election timeout minimum.
        min: Millis,
    },
    /// The lease margin leaves no lease.
    #[error(
        "lease_drift_margin_ms ({margin}) must be smaller than election_timeout_min_ms ({min})"
    )]
    LeaseMargin {
        /// Configured margin.
        margin: Millis,
        /// Configured election timeout minimum.
        min: Millis,
    },
    /// Two limits contradict each other.
    #[error("{small} ({small_value}) must not exceed {large} ({large_value})")]
    Order {
        /// Name of the limit that must be smaller.
        small: &'static str,
        /// Its value.
        small_value: u64,
        /// Name of the limit that must be larger.
        large: &'static str,
        /// Its value.
        large_value: u64,
    },
}

impl Config {
    /// Checks every value and their relations.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive: [(&'static str, u64); 17] = [
            ("election_timeout_min_ms", self.election_timeout_min_ms),
            ("heartbeat_interval_ms", self.heartbeat_interval_ms),
            ("accept_retransmit_ms", self.accept_retransmit_ms),
            ("prepare_timeout_ms", self.prepare_timeout_ms),
            ("max_inflight_msgs", self.max_inflight_msgs as u64),
            ("max_inflight_bytes", self.max_inflight_bytes as u64),
            ("max_entries_per_msg", self.max_entries_per_msg as u64),
            ("max_bytes_per_msg", self.max_bytes_per_msg as u64),
            (
                "max_recv_entries_per_msg",
                self.max_recv_entries_per_msg as u64,
            ),
            ("max_slots_ahead", self.max_slots_ahead),
            ("max_recovery_slots", self.max_recovery_slots),
            ("max_uncommitted_bytes", self.max_uncommitted_bytes as u64),
            ("max_proposal_bytes", self.max_proposal_bytes as u64),
            ("max_pending_reads", self.max_pending_reads as u64),
            (
                "max_apply_bytes_per_ready",
                self.max_apply_bytes_per_ready as u64,
            ),
            ("transfer_timeout_ms", self.transfer_timeout_ms),
            ("snapshot_send_timeout_ms", self.snapshot_send_timeout_ms),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(ConfigError::Zero(name));
            }
        }
        if self.snapshot_threshold_entries == 0 {
            return Err(ConfigError::Zero("snapshot_threshold_entries"));
        }
        if self.election_timeout_max_ms <= self.election_timeout_min_ms {
            return Err(ConfigError::ElectionRange {
                min: self.election_timeout_min_ms,
                max: self.election_timeout_max_ms,
            });
        }
        if self.heartbeat_interval_ms.saturating_mul(2) > self.election_timeout_min_ms {
            return Err(ConfigError::HeartbeatTooSlow {
                heartbeat: self.heartbeat_interval_ms,
                min: self.election_timeout_min_ms,
            });
        }
        if self.lease_read && self.lease_drift_margin_ms >= self.election_timeout_min_ms {
            return Err(ConfigError::LeaseMargin {
                margin: self.lease_drift_margin_ms,
                min: self.election_timeout_min_ms,
            });
        }
        let order = |small: &'static str, s: u64, large: &'static str, l: u64| {
            if s > l {
                Err(ConfigError::Order {
                    small,
                    small_value: s,
                    large,
                    large_value: l,
                })
            } else {
                Ok(())
            }
        };
        order(
            "max_entries_per_msg",
            self.max_entries_per_msg as u64,
            "max_recv_entries_per_msg",
            self.max_recv_entries_per_msg as u64,
        )?;
        order(
            "max_proposal_bytes",
            self.max_proposal_bytes as u64,
            "max_uncommitted_bytes",
            self.max_uncommitted_bytes as u64,
        )?;
        order(
            "max_bytes_per_msg",
            self.max_bytes_per_msg as u64,
            "max_inflight_bytes",
            self.max_inflight_bytes as u64,
        )?;
        order(
            "heartbeat_interval_ms",
            self.heartbeat_interval_ms,
            "accept_retransmit_ms",
            self.accept_retransmit_ms,
        )?;
        order(
            "max_entries_per_msg",
            self.max_entries_per_msg as u64,
            "max_slots_ahead",
            self.max_slots_ahead,
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        assert_eq!(Config::default().validate(), Ok(()));
    }

    #[test]
    fn bad_values_are_named() {
        let c = Config {
            max_slots_ahead: 0,
            ..Config::default()
        };
        assert_eq!(c.validate(), Err(ConfigError::Zero("max_slots_ahead")));
        let c = Config {
            election_timeout_max_ms: 1_000,
            ..Config::default()
        };
        assert!(matches!(
            c.validate(),
            Err(ConfigError::ElectionRange { .. })
        ));
        let c = Config {
            heartbeat_interval_ms: 700,
            ..Config::default()
        };
        assert!(matches!(
            c.validate(),
            Err(ConfigError::HeartbeatTooSlow { .. })
        ));
        let c = Config {
            lease_read: true,
            lease_drift_margin_ms: 1_000,
            ..Config::default()
        };
        assert!(matches!(c.validate(), Err(ConfigError::LeaseMargin { .. })));
        let c = Config {
            max_entries_per_msg: 100,
            max_recv_entries_per_msg: 10,
            ..Config::default()
        };
        assert!(matches!(
            c.validate(),
            Err(ConfigError::Order {
                small: "max_entries_per_msg",
                ..
            })
        ));
    }
}
