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
//!     members: (1..=5u64).map(|i| MemberStatus { spec: NodeSpec::new(i), last_heard_ms: None }).collect(),
//!     ..Default::default()
//! };
//! // Member 5 goes silent at t = 0; the others keep heartbeating.
//! for t in (0..=60_000u64).step_by(100) {
//!     view.now_ms = t;
//!     for m in &mut view.members[..4] {
//!         m.last_heard_ms = Some(t);
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
//! [`map::MAX_MEMBERS`], [`map::MAX_MAP_BYTES`],
//! [`controller::MAX_CONCURRENT_MOVES`], [`controller::MAX_STEPS_PER_BATCH`],
//! [`controller::MAX_CAUGHT_UP_REPORTS`], and `dead_after_ms` lies in
//! [`controller::MIN_DEAD_AFTER_MS`]`..=`[`controller::MAX_DEAD_AFTER_MS`].
//! Bad input — bytes, steps, views, configuration — is an error and changes
//! nothing.
#![deny(missing_docs)]

pub mod controller;
pub mod map;
pub mod router;

pub use controller::{ClusterView, Controller, ControllerConfig, MemberStatus, Plan};
pub use map::{Applied, ShardMap, ShardState, Step};
pub use router::{KeyRange, Router};
