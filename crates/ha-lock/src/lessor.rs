//! [`Lessor`]: the leader's lease clock. Pure: time is an input.
//!
//! Only the leader measures lease time. It proposes
//! [`Command::LeaseExpire`] when a lease's deadline passes (so every replica
//! deletes the lease's keys at the same log index) and, every
//! `checkpoint_interval_ms`, a [`Command::LeaseCheckpoint`] with each
//! lease's remaining TTL. A new leader starts every lease from its last
//! replicated remaining TTL ([`LockMachine::leases`](crate::LockMachine::leases)),
//! never from the full TTL, so a lease granted for 10 s with 4 s left at the
//! last checkpoint has at most 4 s left after a failover (etcd resets it to
//! 10 s). The cost is that the remaining time measured since the last
//! checkpoint is forgotten on failover: a lease may outlive its TTL by at
//! most one checkpoint interval plus the failover time, never by a full TTL.
//!
//! Wiring it into a node (leader side only):
//!
//! 1. On becoming leader, after applying every committed entry:
//!    `become_leader(now_ms, &machine.leases())`.
//! 2. When a `LeaseGrant` or `LeaseKeepAlive` this leader proposed is
//!    applied: `keep_alive(id, ttl_ms, now_ms)`; when a `LeaseRevoke` or
//!    `LeaseExpire` is applied: `forget(id)`.
//! 3. Every tick: propose every command `tick(now_ms)` returns; at least
//!    once per checkpoint interval first `sync(now_ms, &machine.leases())`
//!    (adopts leases granted by entries an earlier leader proposed, drops
//!    revoked ones).
//! 4. On losing leadership: `step_down()`.
//!
//! ```
//! use ha_lock::Lessor;
//! use ha_lock::api::{Command, LeaseCheckpoint, LeaseStatus};
//!
//! let mut old = Lessor::new(1_000);
//! old.become_leader(0, &[]);
//! old.keep_alive(7, 10_000, 0); // granted at t = 0 with 10 s
//! let cmds = old.tick(6_000);
//! assert!(cmds.contains(&Command::LeaseCheckpoint(vec![LeaseCheckpoint { id: 7, remaining_ms: 4_000 }])));
//!
//! // failover: the new leader starts from the checkpointed 4 s
//! let mut new = Lessor::new(1_000);
//! new.become_leader(50_000, &[LeaseStatus { id: 7, ttl_ms: 10_000, remaining_ms: 4_000 }]);
//! assert_eq!(new.remaining_ms(7, 50_000), Some(4_000));
//! assert!(new.tick(54_000).contains(&Command::LeaseExpire { id: 7 }));
//! ```

use std::collections::BTreeMap;

use crate::api::{Command, LeaseCheckpoint, LeaseStatus};

/// Default most leases per [`Command::LeaseCheckpoint`] (matches
/// `Limits::max_checkpoint_leases`' default).
pub const DEFAULT_CHECKPOINT_BATCH: usize = 1000;

/// Default most `LeaseExpire` commands one [`Lessor::tick`] returns (the
/// rest follow on later ticks), so a mass expiry cannot flood the log.
pub const DEFAULT_MAX_EXPIRES_PER_TICK: usize = 1000;

#[derive(Clone, Debug)]
struct Timer {
    ttl_ms: i64,
    deadline_ms: u64,
    /// When a `LeaseExpire` was last proposed (re-proposed after
    /// `expire_retry_ms` if the lease is still known: the proposal may have
    /// been dropped).
    expire_proposed_ms: Option<u64>,
}

/// Leader-side lease bookkeeping. Feed it the applied lease commands
/// (`keep_alive` on grant and renewal, `forget` on revoke and expiry) and
/// call [`Lessor::tick`] regularly; propose what it returns.
#[derive(Clone, Debug)]
pub struct Lessor {
    checkpoint_interval_ms: u64,
    checkpoint_batch: usize,
    max_expires_per_tick: usize,
    expire_retry_ms: u64,
    leader: bool,
    next_checkpoint_ms: u64,
    timers: BTreeMap<i64, Timer>,
}

impl Lessor {
    /// A lessor (not leader yet) checkpointing every
    /// `checkpoint_interval_ms` (at least 1 ms).
    pub fn new(checkpoint_interval_ms: u64) -> Self {
        let interval = checkpoint_interval_ms.max(1);
        Lessor {
            checkpoint_interval_ms: interval,
            checkpoint_batch: DEFAULT_CHECKPOINT_BATCH,
            max_expires_per_tick: DEFAULT_MAX_EXPIRES_PER_TICK,
            expire_retry_ms: interval,
            leader: false,
            next_checkpoint_ms: 0,
            timers: BTreeMap::new(),
        }
    }

    /// Sets the most leases per checkpoint command (at least 1); must not
    /// exceed the machine's `Limits::max_checkpoint_leases`.
    pub fn with_checkpoint_batch(mut self, leases: usize) -> Self {
        self.checkpoint_batch = leases.max(1);
        self
    }

    /// Whether this lessor acts as leader.
    pub fn is_leader(&self) -> bool {
        self.leader
    }

    /// Becomes leader at `now_ms`: every lease's deadline is `now_ms +` its
    /// replicated remaining TTL.
    pub fn become_leader(&mut self, now_ms: u64, leases: &[LeaseStatus]) {
        self.leader = true;
        self.timers.clear();
        for l in leases {
            self.timers.insert(
                l.id,
                Timer {
                    ttl_ms: l.ttl_ms,
                    deadline_ms: now_ms.saturating_add(l.remaining_ms.max(0) as u64),
                    expire_proposed_ms: None,
                },
            );
        }
        self.next_checkpoint_ms = now_ms.saturating_add(self.checkpoint_interval_ms);
    }

    /// Stops acting as leader; forgets every deadline.
    pub fn step_down(&mut self) {
        self.leader = false;
        self.timers.clear();
    }

    /// A lease was granted or renewed (applied) at `now_ms`: its deadline
    /// becomes `now_ms + ttl_ms`.
    pub fn keep_alive(&mut self, id: i64, ttl_ms: i64, now_ms: u64) {
        if !self.leader {
            return;
        }
        self.timers.insert(
            id,
            Timer {
                ttl_ms,
                deadline_ms: now_ms.saturating_add(ttl_ms.max(0) as u64),
                expire_proposed_ms: None,
            },
        );
    }

    /// Reconciles with the replicated lease table (e.g.
    /// [`LockMachine::leases`](crate::LockMachine::leases) after applying):
    /// leases this lessor does not know yet (granted through an entry
    /// another leader proposed) start from their replicated remaining TTL;
    /// leases no longer in the table are forgotten. Known leases keep their
    /// deadlines. Call it regularly on the leader — at least once per
    /// checkpoint interval; it costs O(leases · log leases) — so no lease is
    /// ever left without a deadline.
    pub fn sync(&mut self, now_ms: u64, leases: &[LeaseStatus]) {
        if !self.leader {
            return;
        }
        // `leases` is in id order (as `LockMachine::leases` returns it);
        // look ids up by binary search, and fall back to a sort otherwise.
        let sorted = leases.windows(2).all(|w| w[0].id < w[1].id);
        let mut owned;
        let table: &[LeaseStatus] = if sorted {
            leases
        } else {
            owned = leases.to_vec();
            owned.sort_by_key(|l| l.id);
            &owned
        };
        self.timers
            .retain(|id, _| table.binary_search_by_key(id, |l| l.id).is_ok());
        for l in table {
            self.timers.entry(l.id).or_insert(Timer {
                ttl_ms: l.ttl_ms,
                deadline_ms: now_ms.saturating_add(l.remaining_ms.max(0) as u64),
                expire_proposed_ms: None,
            });
        }
    }

    /// A lease was revoked or expired (applied): stop tracking it.
    pub fn forget(&mut self, id: i64) {
        self.timers.remove(&id);
    }

    /// The remaining TTL of a lease at `now_ms` as this leader measures it
    /// (`None` if unknown or not leader).
    pub fn remaining_ms(&self, id: i64, now_ms: u64) -> Option<i64> {
        if !self.leader {
            return None;
        }
        self.timers.get(&id).map(|t| {
            t.deadline_ms
                .saturating_sub(now_ms)
                .min(t.ttl_ms.max(0) as u64) as i64
        })
    }

    /// Commands to propose at `now_ms`: `LeaseExpire` for each lease whose
    /// deadline passed (at most [`DEFAULT_MAX_EXPIRES_PER_TICK`]), and, when
    /// the checkpoint interval elapsed, `LeaseCheckpoint`s (in batches)
    /// with the remaining TTL of every live lease. Nothing when not leader.
    pub fn tick(&mut self, now_ms: u64) -> Vec<Command> {
        let mut out = Vec::new();
        if !self.leader {
            return out;
        }
        let mut expires = 0;
        for (id, t) in self.timers.iter_mut() {
            if t.deadline_ms > now_ms || expires == self.max_expires_per_tick {
                continue;
            }
            let due = t
                .expire_proposed_ms
                .is_none_or(|at| now_ms >= at.saturating_add(self.expire_retry_ms));
            if due {
                t.expire_proposed_ms = Some(now_ms);
                out.push(Command::LeaseExpire { id: *id });
                expires += 1;
            }
        }
        if now_ms >= self.next_checkpoint_ms {
            self.next_checkpoint_ms = now_ms.saturating_add(self.checkpoint_interval_ms);
            let live: Vec<LeaseCheckpoint> = self
                .timers
                .iter()
                .filter(|(_, t)| t.deadline_ms > now_ms)
                .map(|(id, t)| LeaseCheckpoint {
                    id: *id,
                    remaining_ms: (t.deadline_ms - now_ms).min(t.ttl_ms.max(0) as u64) as i64,
                })
                .collect();
            for batch in live.chunks(self.checkpoint_batch) {
                out.push(Command::LeaseCheckpoint(batch.to_vec()));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{LeaseGrantRequest, Response};
    use crate::tests::H;

    /// Acceptance of #7: a 10 s lease with 4 s left at the last checkpoint
    /// has at most 4 s (not 10 s) at a new leader, through the replicated
    /// state, and expires there on time.
    #[test]
    fn remaining_ttl_survives_leader_change() {
        let mut sm = H::new();
        let mut old = Lessor::new(1_000);
        old.become_leader(100, &sm.m.leases());
        let Response::LeaseGrant(g) = sm.ok(Command::LeaseGrant(LeaseGrantRequest {
            id: 0,
            ttl_ms: 10_000,
        })) else {
            panic!()
        };
        old.keep_alive(g.id, g.ttl_ms, 100);
        let mut last_cp = None;
        for now in (100..=6_100).step_by(250) {
            for c in old.tick(now) {
                assert!(
                    !matches!(c, Command::LeaseExpire { .. }),
                    "expired early at {now}"
                );
                if matches!(c, Command::LeaseCheckpoint(_)) {
                    last_cp = Some(now);
                }
                sm.ok(c);
            }
        }
        let cp_at = last_cp.unwrap();
        let replicated = sm.m.lease_time_to_live(g.id, false).ttl_ms;
        assert_eq!(replicated, 10_000 - (cp_at as i64 - 100));
        assert!(replicated <= 4_000);
        // the old leader dies; a new one (its own clock) takes over
        old.step_down();
        let mut new = Lessor::new(1_000);
        new.become_leader(1_000_000, &sm.m.leases());
        let left = new.remaining_ms(g.id, 1_000_000).unwrap();
        assert!(left <= 4_000, "lease reset to {left} ms after failover");
        assert!(
            new.tick(1_000_000 + left as u64 - 1)
                .iter()
                .all(|c| !matches!(c, Command::LeaseExpire { .. }))
        );
        let cmds = new.tick(1_000_000 + left as u64);
        assert!(cmds.contains(&Command::LeaseExpire { id: g.id }));
        sm.ok(Command::LeaseExpire { id: g.id });
        assert_eq!(sm.m.lease_time_to_live(g.id, false).ttl_ms, -1);
    }

    #[test]
    fn keep_alive_pushes_the_deadline_and_expiry_is_retried() {
        let mut l = Lessor::new(500);
        l.become_leader(0, &[]);
        l.keep_alive(1, 1_000, 0);
        l.keep_alive(1, 1_000, 800);
        assert!(
            l.tick(1_000)
                .iter()
                .all(|c| !matches!(c, Command::LeaseExpire { .. }))
        );
        assert!(l.tick(1_800).contains(&Command::LeaseExpire { id: 1 }));
        assert!(
            !l.tick(1_900).contains(&Command::LeaseExpire { id: 1 }),
            "not re-proposed at once"
        );
        assert!(
            l.tick(2_300).contains(&Command::LeaseExpire { id: 1 }),
            "retried after the interval"
        );
        l.forget(1);
        let later = l.tick(5_000);
        assert!(
            later
                .iter()
                .all(|c| !matches!(c, Command::LeaseExpire { .. })),
            "a forgotten lease is not expired again: {later:?}"
        );
        assert!(
            l.tick(5_000).is_empty()
                || l.tick(5_000)
                    .iter()
                    .all(|c| !matches!(c, Command::LeaseExpire { .. }))
        );
    }

    #[test]
    fn sync_adopts_unknown_leases_and_drops_gone_ones() {
        let mut l = Lessor::new(1_000);
        l.become_leader(0, &[]);
        l.keep_alive(1, 1_000, 0);
        l.keep_alive(2, 1_000, 0);
        // lease 3 was granted by an entry of the previous leader; 2 is gone
        let table = [
            LeaseStatus {
                id: 1,
                ttl_ms: 1_000,
                remaining_ms: 1_000,
            },
            LeaseStatus {
                id: 3,
                ttl_ms: 5_000,
                remaining_ms: 700,
            },
        ];
        l.sync(500, &table);
        assert_eq!(l.remaining_ms(1, 500), Some(500), "known deadline kept");
        assert_eq!(l.remaining_ms(2, 500), None);
        assert_eq!(l.remaining_ms(3, 500), Some(700));
        assert!(l.tick(1_200).contains(&Command::LeaseExpire { id: 3 }));
        // an unsorted table works too
        let mut rev = table.to_vec();
        rev.reverse();
        l.sync(1_300, &rev);
        assert_eq!(l.remaining_ms(1, 1_300), Some(0), "kept, deadline 1 000");
        assert!(l.remaining_ms(3, 1_300).is_some());
        l.sync(1_300, &rev[..1]);
        assert_eq!(l.remaining_ms(1, 1_300), None, "dropped: not in the table");
    }

    #[test]
    fn follower_proposes_nothing_and_checkpoints_are_batched() {
        let mut l = Lessor::new(100).with_checkpoint_batch(2);
        l.keep_alive(1, 1_000, 0);
        assert!(l.tick(10_000).is_empty());
        let leases: Vec<LeaseStatus> = (1..=5)
            .map(|id| LeaseStatus {
                id,
                ttl_ms: 1_000,
                remaining_ms: 1_000,
            })
            .collect();
        l.become_leader(0, &leases);
        let cps: Vec<Command> = l.tick(100);
        assert_eq!(cps.len(), 3);
        assert!(
            cps.iter()
                .all(|c| matches!(c, Command::LeaseCheckpoint(v) if v.len() <= 2))
        );
        assert!(
            l.tick(150).is_empty(),
            "next checkpoint only after the interval"
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 200, ..Default::default() })]

        /// Across keep-alives, checkpoints and failovers at random times, a
        /// lease is never expired before its client's view of it ends (last
        /// applied keep-alive + TTL), and the replicated remaining TTL never
        /// exceeds the granted TTL.
        #[test]
        fn expiry_is_never_early(steps in proptest::collection::vec((1u64..300, 0u8..10), 1..200)) {
            const TTL: i64 = 1_000;
            const CP: u64 = 100;
            let mut sm = H::new();
            let mut lessor = Lessor::new(CP);
            let mut now = 0u64;
            lessor.become_leader(now, &sm.m.leases());
            let Response::LeaseGrant(g) = sm.ok(Command::LeaseGrant(LeaseGrantRequest { id: 0, ttl_ms: TTL })) else {
                panic!()
            };
            lessor.keep_alive(g.id, TTL, now);
            let mut client_deadline = now + TTL as u64;
            for (dt, action) in steps {
                now += dt;
                match action {
                    // keep-alive (succeeds only while the lease lives)
                    0 | 1 if sm.apply(Command::LeaseKeepAlive { id: g.id }).result.is_ok() => {
                        lessor.keep_alive(g.id, TTL, now);
                        client_deadline = now + TTL as u64;
                    }
                    2 => {
                        // failover: the new leader starts from the replicated state
                        lessor.step_down();
                        now += dt; // the election takes a while
                        lessor = Lessor::new(CP);
                        lessor.become_leader(now, &sm.m.leases());
                    }
                    _ => {}
                }
                for c in lessor.tick(now) {
                    if let Command::LeaseExpire { id } = c {
                        proptest::prop_assert!(now >= client_deadline, "expired at {} before the client's deadline {}", now, client_deadline);
                        if sm.apply(Command::LeaseExpire { id }).result.is_ok() {
                            lessor.forget(id);
                        }
                    } else {
                        sm.ok(c);
                    }
                }
                let alive = sm.m.lease_time_to_live(g.id, false).ttl_ms >= 0;
                if !alive {
                    break;
                }
                // replicated remaining never exceeds what the client was promised
                let left = sm.m.lease_time_to_live(g.id, false).ttl_ms;
                proptest::prop_assert!(left <= TTL);
            }
        }
    }
}
