//! # ha-shard
//!
//! Sharding for the `ha` toolbox as a deterministic, sans-IO library: the
//! replicated **shard map** ([`map::ShardMap`]), the key **router**
//! ([`router::Router`]) and the **placement controller**
//! ([`controller::Controller`]) that rebuilds lost replicas and spreads
//! load and leadership. No IO, no clock, no randomness, no async runtime:
//! `ha-node` hosts it (the map in the metadata group, the controller on that
//! group's leader) and feeds it time and observations.
//!
//! ## The model
//!
//! - `--shards N` data shards, group ids `1..=N`, fixed at cluster creation
//!   ([`map::MAX_SHARDS`]); group 0 is the metadata group holding the map.
//!   A key's shard is a pinned hash of the key ([`router`] explains why
//!   hash partitioning, and that prefix reads are scatter-gather).
//! - Each shard lists its voters, learners (replicas catching up), a
//!   configuration epoch, a leader hint, and its **target**: the R replicas
//!   ha-ring's balanced [`ShardTable`](ha_ring::table::ShardTable) assigns
//!   it for the members currently counted live. The table keeps every
//!   member within one replica of its weighted share (peak/mean → 1),
//!   spreads zones first, and moves only what a membership change forces.
//! - Every change is a [`map::Step`], proposed to the metadata group and
//!   applied by [`map::ShardMap::apply`] on every member: idempotent,
//!   epoch-checked, never panicking.
//! - The controller is a pure function (map, observed liveness and learner
//!   progress) → bounded batch of steps, so a new metadata leader resumes
//!   from whatever prefix of the old leader's steps was applied.
//! - [`meta::MetaMachine`] is the metadata group's `StateMachine`: the map
//!   plus `Init` / `Step` / `ObserveLeader` commands and chunked snapshots,
//!   ready for the `Replica` driver.
//!
//! ## Example: a member dies, its replicas are rebuilt
//!
//! ```
//! use std::collections::BTreeSet;
//! use ha_ring::{Cluster, NodeSpec};
//! use ha_shard::controller::{ClusterView, Controller, ControllerConfig, MemberStatus};
//! use ha_shard::map::{ShardMap, Step};
//!
//! let mut map = ShardMap::new(16, 3, &Cluster::uniform(5)?)?;
//! let ctl = Controller::new(ControllerConfig { dead_after_ms: 3_000, ..Default::default() })?;
//! let mut view = ClusterView {
//!     members: (1..=5u64).map(|i| MemberStatus::unheard(NodeSpec::new(i))).collect(),
//!     ..Default::default()
//! };
//! // Member 5 goes silent at t = 0; the others keep heartbeating.
//! for t in (0..=60_000u64).step_by(100) {
//!     view.now_ms = t;
//!     for (i, m) in view.members[..4].iter_mut().enumerate() {
//!         *m = MemberStatus::heard(NodeSpec::new(i as u64 + 1), 0, t);
//!     }
//!     // Learners catch up at once in this example.
//!     view.caught_up = map.shards().iter()
//!         .flat_map(|s| s.learners().iter().map(move |l| (s.id(), *l)))
//!         .collect::<BTreeSet<_>>();
//!     for step in ctl.plan(&map, &view)?.steps {
//!         map.apply(&step)?; // ha-node: carry out on the shard group, then record
//!     }
//! }
//! let dead = ha_core::NodeId(5);
//! assert!(map.shards().iter().all(|s| s.is_settled() && !s.has_replica(dead)));
//! assert!(map.shards().iter().all(|s| s.voters().len() == 3));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Limits
//!
//! Every size is a named constant: [`map::MAX_SHARDS`],
//! [`map::MAX_REPLICATION`], [`map::MAX_SHARD_MEMBERS`],
//! [`map::MAX_MEMBERS`], [`map::MAX_MAP_BYTES`], [`map::MAX_COUNTER`],
//! [`controller::MAX_CONCURRENT_MOVES`], [`controller::MAX_STEPS_PER_BATCH`],
//! [`controller::MAX_CAUGHT_UP_REPORTS`], [`meta::META_SNAPSHOT_CHUNK_BYTES`], and `dead_after_ms` lies in
//! [`controller::MIN_DEAD_AFTER_MS`]`..=`[`controller::MAX_DEAD_AFTER_MS`].
//! Bad input — bytes, steps, views, configuration — is an error and changes
//! nothing.
//!
//! ## Known limits of this version
//!
//! - The target remembers member weights, not zone/rack labels: relabelling
//!   a live member does not by itself trigger a re-placement (the next
//!   membership change takes the new labels into account).
//! - Leader spreading caps each live member at `⌈shards / live members⌉`
//!   regardless of weight.
//! - A shard that lost its live majority is reported ([`controller::Note::NoQuorum`])
//!   but not repaired: that needs an operator-approved forced
//!   reconfiguration, which this crate does not model.
//!
//! ## Next step: hosting many groups in one `ha-node` (design note)
//!
//! What the next engineer builds on top of this crate, reusing what exists
//! (`Replica`, `RocksLogStore`, `QuicTransport`, ha-lock's state machine):
//!
//! **Groups.** Group 0 is the metadata group: a Raft group on the first
//! `min(5, members)` members whose state machine is [`meta::MetaMachine`]
//! (to be extended with the member registry: id, address, weight, zone),
//! applying [`meta::MetaCommand`] frames. Data shards
//! `1..=N` are one `Replica` each, state machine = ha-lock's MVCC store, so
//! revisions are per shard (the response header names the shard).
//!
//! **Storage.** One RocksDB per node, as now: `RocksLogStore` already keys
//! every record by `group id ‖ index` in the `log` and `meta` column
//! families and shares one writer + one fsync thread across groups, so
//! group commit amortises fsyncs across shards for free. State-machine data
//! goes to the `sm` family under `group id (8 bytes, big-endian) ‖ key`.
//! Dropping a replica (`RemoveReplica` applied for this node): stop the
//! group, write a `deleting(group)` marker in `meta`, `DeleteRange
//! [gid, gid+1)` in every family, remove the marker; on start, finish any
//! marked deletion before opening groups, and delete every local group
//! the map does not list this node as a replica of (it may have been
//! removed while the node was down). A node that is added back to a shard
//! always starts that group empty and is filled by the leader's snapshot.
//!
//! **Transport.** One QUIC endpoint. Every protocol frame becomes
//! `(GroupId, message)`; the receiver demultiplexes into a bounded inbox
//! per group (full: drop the newest and count — the protocols tolerate
//! loss). A frame for a group this node does not host is dropped and
//! counted unless the map lists this node as a replica of it, in which
//! case the node creates an empty learner `Replica` and the leader's
//! snapshot (own stream, as now) fills it.
//!
//! **Heartbeat coalescing.** With N shards, per-group heartbeats cost
//! `N × peers` frames per tick. First version, protocol-agnostic: the node
//! buffers every group's outgoing messages per peer during a tick and
//! sends them as one frame `Vec<(GroupId, message)>` (bounded by the frame
//! limit; overflow splits into several frames), so idle groups cost bytes,
//! not packets or syscalls. Later: a dedicated `Heartbeats { (group, term,
//! commit) }` message and quiescing idle groups (no heartbeats while every
//! follower is caught up and nothing is proposed).
//!
//! **Ticks.** One timer task ticks every hosted group (a `Vec` of handles),
//! each group's election timeout randomised from the node seed and the
//! group id so groups do not elect in lock-step.
//!
//! **Controller.** On group 0's leader, every `controller_interval_ms`
//! (e.g. 500): build a [`ClusterView`] — `last_heard_ms` and
//! `up_since_ms` from the transport (any frame from a peer counts; a gap
//! longer than two heartbeat intervals restarts `up_since_ms`), `observing_since_ms` = when it became
//! leader, `caught_up` from small `ShardReport { group, leader, learners
//! caught up }` messages that shard leaders piggyback on the coalesced
//! frames (caught up = snapshot installed and match index within a named
//! lag bound of the commit index) — then carry out [`Controller::plan`]'s
//! steps in order. A membership step goes to the shard's leader as
//! `change_membership(AddLearner | Promote | Remove)` (redirect on
//! `NotLeader`); once the shard commits it, the step is proposed to group
//! 0. A shard that already has the change counts as done (the step is then
//! [`map::Applied::AlreadyApplied`] or records it); a
//! [`map::StepError::StaleEpoch`] means "re-plan". `SetTarget` goes straight
//! to group 0. Metrics: steps by kind and outcome, learners in flight,
//! shards unsettled, shards without quorum.
//!
//! **Routing.** A request's keys go through [`Router`]: one shard → that
//! shard's leader (local or forwarded by leader hint); a transaction whose
//! keys span shards → [`router::CrossShard`] as a `FAILED_PRECONDITION`;
//! a range → [`Router::shards_for_range`], each shard read with its own
//! ReadIndex in parallel, merged by key, limit applied after the merge.
//! Consistency of a multi-shard range: each shard's part is linearizable,
//! the whole is not an atomic snapshot across shards — say so in the API
//! docs. With `--shards 1` every request goes to shard 1 and the etcd
//! semantics are unchanged.
//!
//! ### Slice 1 as built (`ha-node --shards N --replication R`)
//!
//! What differs from the plan above, and why:
//!
//! - **Group 0 is unchanged**: the member table on every member, with the
//!   lock machine as its application (empty when sharded: it keeps the
//!   leases loop's home, and `--shards 1` stays byte-for-byte the old
//!   layout, group 0 holding the data). The shard map is **not** stored in
//!   group 0 yet: it is `ShardMap::new(N, R, founding members)`, computed
//!   identically on every member from the founding ids recorded in the
//!   data dir's `member.toml` (with N and R, checked on every restart).
//!   Membership changes are refused while sharded, so the static map never
//!   goes stale; storing it in group 0 comes with the controller.
//! - **Shard replicas wrap the same `ClusterMachine`** as group 0 (an empty
//!   member table): the sidecar that stores the configuration with the
//!   applied state is what lets a shard restart after its log was purged,
//!   so the shard path reuses it rather than a second mechanism.
//! - **No heartbeat coalescing yet**: one replica, timer and heartbeat per
//!   shard. Inbound frames are demultiplexed by group into a bounded inbox
//!   per shard (full: dropped and counted); frames for unhosted groups are
//!   counted too (`/metrics`).
//! - **Reads of a shard this member does not host** travel as a request
//!   carrying the encoded range; any replica serves it (its own read
//!   barrier when linearizable), writes go to the shard's leader through
//!   a hint from whichever replica is asked.
//! - **Leaders spread** by transfer to a preferred leader (voters rotated by
//!   shard id) once it answers a progress probe and is caught up.
#![deny(missing_docs)]

pub mod controller;
pub mod map;
pub mod meta;
pub mod router;

pub use controller::{ClusterView, Controller, ControllerConfig, MemberStatus, Plan};
pub use map::{Applied, ShardMap, ShardState, Step};
pub use meta::{MetaCommand, MetaMachine, MetaResponse};
pub use router::{KeyRange, Router};
