//! # ha-lock
//!
//! The coordination state machine of `ha`: an etcd-v3-style MVCC key space
//! with revisions, leases, fair locks with fencing tokens, optimistic
//! compare-and-swap, elections (primary/standby) and watch events — as a
//! deterministic [`ha_core::state_machine::StateMachine`] that any
//! `Consensus` replicates. It knows nothing of Raft, Paxos, QUIC or gRPC.
//!
//! Clients' writes are [`api::Command`]s proposed through consensus; every
//! replica applies them in log order and returns an [`api::Applied`]
//! (revision + result). Reads ([`LockMachine::range`], leases, lock owner,
//! election leader, history for watches) are methods on the machine, called
//! by the node after a read index (linearizable) or directly (serializable).
//!
//! ```
//! use ha_core::state_machine::{Applied as Entry, StateMachine};
//! use ha_core::types::LogId;
//! use ha_lock::LockMachine;
//! use ha_lock::api::*;
//!
//! let mut m = LockMachine::in_memory(Limits::default()).unwrap();
//! let mut index = 0;
//! let mut apply = |m: &mut LockMachine, c: Command| {
//!     index += 1;
//!     let out = m.apply(LogId::new(1, index), Entry::Command(&encode_command(&c))).unwrap();
//!     decode_applied(&out).unwrap()
//! };
//!
//! // a lease, and a lock held with it
//! let Ok(Response::LeaseGrant(lease)) =
//!     apply(&mut m, Command::LeaseGrant(LeaseGrantRequest { id: 0, ttl_ms: 10_000 })).result
//! else { panic!() };
//! let Ok(Response::Lock(lock)) =
//!     apply(&mut m, Command::Lock { name: "jobs".into(), lease: lease.id }).result
//! else { panic!() };
//! assert!(lock.acquired);
//!
//! // a write guarded by the fencing token: runs only while the lock is held
//! let guarded = Command::Txn(TxnRequest {
//!     compare: vec![Compare::is_owner(lock.key.clone(), lock.token)],
//!     success: vec![RequestOp::Put(PutRequest { key: "out".into(), value: "1".into(), ..Default::default() })],
//!     failure: vec![],
//! });
//! let Ok(Response::Txn(t)) = apply(&mut m, guarded.clone()).result else { panic!() };
//! assert!(t.succeeded);
//!
//! // the lease expires (the leader's Lessor proposes it): the lock is free,
//! // and the stale holder's guarded write no longer runs
//! apply(&mut m, Command::LeaseExpire { id: lease.id }).result.unwrap();
//! assert!(m.lock_owner(b"jobs").is_none());
//! let Ok(Response::Txn(t)) = apply(&mut m, guarded).result else { panic!() };
//! assert!(!t.succeeded);
//!
//! // bad input is a clear error that changes nothing
//! let rev = m.current_revision();
//! let a = apply(&mut m, Command::Put(PutRequest { key: "".into(), ..Default::default() }));
//! assert_eq!(a.result, Err(LockError::KeyEmpty));
//! assert_eq!(m.current_revision(), rev);
//! ```
//!
//! ## Semantics (etcd v3, with the documented differences)
//!
//! * **Revisions.** One store revision per command that changes keys (a
//!   transaction's writes share it); commands that change no key (reads,
//!   failed compares, deleting nothing, lease grant/keep-alive/checkpoint,
//!   compaction, errors) leave it unchanged. Per key: `create_revision`,
//!   `mod_revision`, `version` (1 at creation, +1 per put, reset by delete),
//!   `lease`.
//! * **Range** over `[key, range_end)` (`range_end` empty = one key,
//!   `"\0"` = to the end), at a past `revision`, with min/max mod/create
//!   filters, sort (stable: ties stay in key order), `limit`, `keys_only`,
//!   `count_only`. Filters apply before counting: `count` is the number of
//!   keys that match every filter, `more` = fewer returned than counted.
//! * **Txn**: compares (value, version, create, mod, lease; on a range:
//!   every key must match; a value compare on an absent key is false), then
//!   one branch. Reads inside see the transaction's own earlier writes.
//!   All-or-nothing: any error rolls the whole transaction back. A key may
//!   not be written twice (etcd's rule, nested transactions included) →
//!   `DuplicateKey`.
//! * **Compaction** at `r` forgets every version older than the one visible
//!   at `r`; reads below `r` → `Compacted`; history (`events_since`) starts
//!   after `r`.
//! * **Leases**: TTL in ms; expiry is decided by the leader's [`Lessor`] and
//!   replicated as `LeaseExpire`, so every replica deletes the keys at the
//!   same index. Remaining TTLs are checkpointed (`LeaseCheckpoint`) and a
//!   new leader resumes from them (etcd resets to the full TTL). Lease ids
//!   chosen by the machine are a SplitMix64 hash of the log index (never
//!   0, probing past ids in use) — deterministic on every replica.
//! * **Locks** (etcd v3lock): `Lock { name, lease }` creates the owner key
//!   `name/<lease hex>` (once per lease) and the owner is the key under
//!   `name/` with the lowest create revision — FIFO. The **fencing token**
//!   is the owner key's create revision; tokens of one name strictly grow.
//!   The lease must exist when the key is created (`LeaseNotFound`), and a
//!   waiter whose lease expires loses its key, so a lock is never granted
//!   to a dead lease. Unlock (or expiry) deletes the owner key; the next
//!   waiter is then the owner. Guard writes with [`api::Compare::is_owner`].
//!   Unlock of an absent key succeeds (idempotent retries); unlock of a key
//!   that is not an owner key is `NotLockOwner`.
//! * **Lock-delay** (Chubby's; [`api::Limits::lock_delay_ms`], off by
//!   default): when an owner's lease *expires* (not on unlock, resign or
//!   revoke: a clean release hands over at once), its owner keys stay in
//!   place, moved to a fresh *delay lease* of `lock_delay_ms`, so the next
//!   waiter is granted only when that lease expires in turn. Meanwhile the
//!   expired owner's lease is gone (`lock_status` says `LeaseNotFound`),
//!   its token is still the highest, and its in-flight guarded writes
//!   still land — which is the point: they drain before anyone else can
//!   hold the lock. Elections (same key shape) get the same delay.
//!   *Why a lease, not a timestamp or a revision count:* the machine has
//!   no clock, and leaders' monotonic clocks are not comparable (a
//!   deadline stamped by one leader means nothing to the next); revisions
//!   do not advance while the system is idle, so a delay counted in
//!   revisions could last forever or no time at all. A lease is the
//!   existing replicated, deterministic form of "this long from now": the
//!   leader's [`Lessor`] measures it, checkpoints its remaining time and
//!   proposes its expiry, and a failover resumes it from the checkpoint —
//!   it can only grow, never shrink. The delay lease is visible like any
//!   lease (listed, attached to the key); a client that revokes it ends
//!   the delay early, as a client may delete any lock key in etcd. While
//!   it holds the key, `Unlock` by the expired owner is `NotLockOwner`.
//! * **Elections** (etcd v3election): campaign = a lock whose key holds a
//!   value; the leader is the lowest create revision; `Proclaim` updates
//!   the value only while the given `LeaderKey` (key + create revision) is
//!   the leader (`NotLeader` otherwise); `Resign` deletes the key if it is
//!   still that campaign (idempotent).
//! * **Optimistic locking**: compare-and-swap on `mod_revision` or
//!   `version` in a Txn; [`optimistic::update`] is the client-side
//!   read-modify-write loop with bounded retries and capped backoff.
//! * **Events**: every change yields an [`api::Event`] (with `prev_kv`),
//!   pushed to the [`LockMachine::set_event_sink`] after the apply and
//!   readable later with [`LockMachine::events_since`].
//!
//! ## Limits
//!
//! All in [`api::Limits`], validated at construction, each enforced with an
//! error that names it: key (1536 B) and value (1.5 MiB) size, request size
//! (1.5 MiB + 512 B, checked before decoding), ops per transaction list
//! (128) and nesting depth (8), leases alive (100 000), leases per
//! checkpoint command (1000), keys one range returns / one delete or
//! compare touches / one lease holds (100 000), lease TTL range, snapshot
//! chunk size (1 MiB), and history kept (1 000 000 revisions: the machine
//! compacts itself, at the same index on every replica, when the window
//! grows 10 % past it). All replicas of a group must run with equal limits
//! (they decide results). [`Lessor`] bounds expiries per tick and leases per
//! checkpoint.
//!
//! ## Invariants
//!
//! * Deterministic: only ordered containers, no clocks, no randomness, no
//!   `std` hashers; identical logs give byte-identical snapshots on every
//!   replica and every store (memory or RocksDB).
//! * An error result changes nothing (revision, keys, leases, history);
//!   only `last_applied` moves.
//! * `apply` at an index `<= last_applied` is a no-op returning empty bytes.
//! * Bytes from the network or disk (commands, snapshots, RocksDB records)
//!   are checksummed and validated; bad bytes are an error, never a panic.
//! * The store revision never decreases; a key's `mod_revision` equals the
//!   revision of the command that wrote it.
//!
//! ## Storage
//!
//! The working state is in memory (key index, history, leases). With the
//! `rocksdb` feature, [`LockMachine::open_rocks`] also keeps it durable in
//! column family `sm` of the node's RocksDB: one `WriteBatch` per apply
//! (changed records, leases and `last_applied`), recovered on reopen.

#![forbid(unsafe_code)]

pub mod api;
mod lessor;
mod machine;
pub mod optimistic;
#[cfg(feature = "rocksdb")]
mod rocks;
mod store;

pub use lessor::{DEFAULT_CHECKPOINT_BATCH, DEFAULT_MAX_EXPIRES_PER_TICK, Lessor};
pub use machine::{EventSink, LockMachine};

#[cfg(test)]
mod tests;
