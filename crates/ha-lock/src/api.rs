//! The public API of the coordination state machine: data types, requests,
//! responses, replicated [`Command`]s, the [`Applied`] outcome, errors and
//! [`Limits`].
//!
//! Field meanings follow etcd v3 (`mvccpb.KeyValue`,
//! `etcdserverpb.*Request` / `*Response`) so an etcd gRPC layer maps them
//! field for field. Revisions, versions and lease ids are `i64` as in etcd;
//! `0` means "none". Lease TTLs are in **milliseconds** (etcd uses seconds;
//! the gRPC layer converts).
//!
//! Commands and outcomes travel as [`ha_core::codec`] frames (version byte,
//! postcard payload, CRC-32C trailer):
//!
//! ```
//! use ha_lock::api::{Command, PutRequest, decode_command, encode_command};
//!
//! let cmd = Command::Put(PutRequest { key: "k".into(), value: "v".into(), ..Default::default() });
//! let bytes = encode_command(&cmd);
//! assert_eq!(decode_command(&bytes).unwrap(), cmd);
//! assert!(decode_command(&bytes[1..]).is_err()); // torn bytes are an error, never a panic
//! ```

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use ha_core::codec;

// ---------------------------------------------------------------- data ----

/// One key with its MVCC metadata (etcd `mvccpb.KeyValue`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    /// The key.
    pub key: Bytes,
    /// Revision of the put that created the key (in its current generation).
    pub create_revision: i64,
    /// Revision of the last change of the key.
    pub mod_revision: i64,
    /// Number of puts since the key was (re)created; 1 after creation.
    pub version: i64,
    /// The value (empty in keys-only reads).
    pub value: Bytes,
    /// Lease the key is attached to; 0 = none.
    pub lease: i64,
}

/// Kind of a change event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventType {
    /// The key was written.
    Put,
    /// The key was deleted.
    Delete,
}

/// One change of one key (etcd `mvccpb.Event`).
///
/// `kv.mod_revision` is the revision of the event. For a delete, `kv` holds
/// only the key and `mod_revision` (the delete revision); the other fields
/// are 0, as in etcd.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Put or delete.
    pub kind: EventType,
    /// The key after the change.
    pub kv: KeyValue,
    /// The key before the change, if it existed (and is not compacted).
    pub prev_kv: Option<KeyValue>,
}

// ------------------------------------------------------------------ KV ----

/// Order of a range result.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SortOrder {
    /// Key order (ascending), the natural order.
    #[default]
    None,
    /// Ascending by the sort target.
    Ascend,
    /// Descending by the sort target.
    Descend,
}

/// What a range result is sorted by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SortTarget {
    /// The key.
    #[default]
    Key,
    /// The version.
    Version,
    /// The create revision.
    Create,
    /// The mod revision.
    Mod,
    /// The value (bytewise).
    Value,
}

/// Read keys (etcd `RangeRequest`).
///
/// `range_end` semantics as in etcd: empty = the single key `key`;
/// `"\0"` = every key `>= key`; otherwise the half-open range
/// `[key, range_end)`. A `key` of `"\0"` with `range_end` `"\0"` means all
/// keys.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeRequest {
    /// First key (or the single key).
    pub key: Bytes,
    /// End of the range (see above).
    pub range_end: Bytes,
    /// Maximum keys returned; `<= 0` = no limit (the machine's own
    /// `Limits::max_range_keys` still applies).
    pub limit: i64,
    /// Read at this past revision; 0 = current.
    pub revision: i64,
    /// Sort order.
    pub sort_order: SortOrder,
    /// Sort target.
    pub sort_target: SortTarget,
    /// Return keys without values.
    pub keys_only: bool,
    /// Return only the count.
    pub count_only: bool,
    /// Only keys with `mod_revision >= min_mod_revision` (0 = no filter).
    pub min_mod_revision: i64,
    /// Only keys with `mod_revision <= max_mod_revision` (0 = no filter).
    pub max_mod_revision: i64,
    /// Only keys with `create_revision >= min_create_revision` (0 = no filter).
    pub min_create_revision: i64,
    /// Only keys with `create_revision <= max_create_revision` (0 = no filter).
    pub max_create_revision: i64,
}

/// Result of a range read.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeResponse {
    /// The keys (empty when `count_only`).
    pub kvs: Vec<KeyValue>,
    /// Whether more keys matched than were returned.
    pub more: bool,
    /// Number of keys that matched (before the limit).
    pub count: i64,
}

/// Write one key (etcd `PutRequest`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutRequest {
    /// Key.
    pub key: Bytes,
    /// Value.
    pub value: Bytes,
    /// Lease to attach; 0 = none.
    pub lease: i64,
    /// Return the previous key-value.
    pub prev_kv: bool,
    /// Keep the current value (the key must exist; `value` must be empty).
    pub ignore_value: bool,
    /// Keep the current lease (the key must exist; `lease` must be 0).
    pub ignore_lease: bool,
}

/// Result of a put.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutResponse {
    /// The previous key-value, when asked for and the key existed.
    pub prev_kv: Option<KeyValue>,
}

/// Delete keys (etcd `DeleteRangeRequest`); `range_end` as in [`RangeRequest`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteRangeRequest {
    /// First key (or the single key).
    pub key: Bytes,
    /// End of the range.
    pub range_end: Bytes,
    /// Return the deleted key-values.
    pub prev_kv: bool,
}

/// Result of a delete.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteRangeResponse {
    /// Number of keys deleted.
    pub deleted: i64,
    /// The deleted key-values, when asked for.
    pub prev_kvs: Vec<KeyValue>,
}

/// How a compare relates the stored field to the target.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareResult {
    /// stored == target
    #[default]
    Equal,
    /// stored > target
    Greater,
    /// stored < target
    Less,
    /// stored != target
    NotEqual,
}

/// The field a compare looks at, with the value to compare against.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareTarget {
    /// The key's version (0 if absent).
    Version(i64),
    /// The key's create revision (0 if absent).
    CreateRevision(i64),
    /// The key's mod revision (0 if absent).
    ModRevision(i64),
    /// The key's value (a compare on an absent key is false).
    Value(Bytes),
    /// The key's lease (0 if absent or no lease).
    Lease(i64),
}

impl Default for CompareTarget {
    fn default() -> Self {
        CompareTarget::Version(0)
    }
}

/// One condition of a transaction (etcd `Compare`).
///
/// With a non-empty `range_end`, every key in the range must satisfy the
/// condition; an empty range compares like an absent key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    /// Key (or first key of the range).
    pub key: Bytes,
    /// End of the range; empty = the single key.
    pub range_end: Bytes,
    /// Relation.
    pub result: CompareResult,
    /// Field and value.
    pub target: CompareTarget,
}

impl Compare {
    /// The fencing guard for a lock: true while `owner_key` still exists
    /// with the create revision `token` — i.e. while the lock acquisition
    /// that returned `token` is still alive (the key is deleted on unlock and
    /// on lease expiry, and a re-created key gets a new, higher revision).
    ///
    /// Put it in a [`TxnRequest`]'s `compare` so the writes run only while
    /// the caller still holds the lock:
    /// `Compare { key: owner_key, target: CreateRevision(token), result: Equal }`.
    ///
    /// ```
    /// use ha_lock::api::{Compare, CompareResult, CompareTarget};
    /// let c = Compare::is_owner("locks/a/1f".into(), 42);
    /// assert_eq!(c.target, CompareTarget::CreateRevision(42));
    /// assert_eq!(c.result, CompareResult::Equal);
    /// ```
    pub fn is_owner(owner_key: Bytes, token: i64) -> Compare {
        Compare {
            key: owner_key,
            range_end: Bytes::new(),
            result: CompareResult::Equal,
            target: CompareTarget::CreateRevision(token),
        }
    }
}

/// One operation inside a transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RequestOp {
    /// A read.
    Range(RangeRequest),
    /// A write.
    Put(PutRequest),
    /// A delete.
    DeleteRange(DeleteRangeRequest),
    /// A nested transaction.
    Txn(TxnRequest),
}

/// The result of one operation inside a transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResponseOp {
    /// Result of a read.
    Range(RangeResponse),
    /// Result of a write.
    Put(PutResponse),
    /// Result of a delete.
    DeleteRange(DeleteRangeResponse),
    /// Result of a nested transaction.
    Txn(TxnResponse),
}

/// An atomic transaction (etcd `TxnRequest`): if every compare holds, run
/// `success`, else `failure`. All or nothing: on any error nothing changes.
/// A transaction may not write one key twice (put twice, or put a key that a
/// delete of the same transaction covers) → [`LockError::DuplicateKey`].
/// All writes of a transaction share one revision.
///
/// Decoding refuses transactions nested deeper than
/// [`MAX_DECODE_TXN_DEPTH`] (a hostile frame cannot exhaust the stack);
/// `Limits::max_txn_depth` then applies on apply.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TxnRequest {
    /// Conditions.
    pub compare: Vec<Compare>,
    /// Operations when every condition holds.
    pub success: Vec<RequestOp>,
    /// Operations otherwise.
    pub failure: Vec<RequestOp>,
}

/// Deepest transaction nesting [`decode_command`] accepts. Deserialising
/// is recursive, so without this bound a small hostile frame of nested
/// transactions could overflow the stack (an abort, not an error).
pub const MAX_DECODE_TXN_DEPTH: usize = 32;

thread_local! {
    /// Transactions being deserialised on this thread, outermost first.
    static TXN_DECODE_DEPTH: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Decrements the decode depth when a nested decode ends (also on error).
struct DepthGuard;

impl Drop for DepthGuard {
    fn drop(&mut self) {
        TXN_DECODE_DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
    }
}

/// The serde shape of [`TxnRequest`] (same fields, same encoding).
#[derive(Deserialize)]
#[serde(rename = "TxnRequest")]
struct TxnRequestRepr {
    compare: Vec<Compare>,
    success: Vec<RequestOp>,
    failure: Vec<RequestOp>,
}

impl<'de> Deserialize<'de> for TxnRequest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let depth = TXN_DECODE_DEPTH.with(|c| {
            let v = c.get() + 1;
            c.set(v);
            v
        });
        let _guard = DepthGuard;
        if depth > MAX_DECODE_TXN_DEPTH {
            return Err(serde::de::Error::custom(format!(
                "transactions nested deeper than {MAX_DECODE_TXN_DEPTH}"
            )));
        }
        let r = TxnRequestRepr::deserialize(d)?;
        Ok(TxnRequest {
            compare: r.compare,
            success: r.success,
            failure: r.failure,
        })
    }
}

/// Result of a transaction.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnResponse {
    /// Whether the compares held (and `success` ran).
    pub succeeded: bool,
    /// One response per operation of the branch that ran.
    pub responses: Vec<ResponseOp>,
}

/// Compact the history: revisions below `revision` are forgotten.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompactionRequest {
    /// The new compact revision (must be `<=` the current revision and
    /// `>` the current compact revision).
    pub revision: i64,
}

// -------------------------------------------------------------- leases ----

/// Grant a lease.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseGrantRequest {
    /// Wanted id; 0 = the machine picks a fresh id deterministically.
    pub id: i64,
    /// Time to live in milliseconds.
    pub ttl_ms: i64,
}

/// Result of a lease grant.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseGrantResponse {
    /// The lease id.
    pub id: i64,
    /// The granted TTL in milliseconds.
    pub ttl_ms: i64,
}

/// Result of a lease keep-alive.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseKeepAliveResponse {
    /// The lease id.
    pub id: i64,
    /// The renewed TTL in milliseconds.
    pub ttl_ms: i64,
}

/// Result of a lease time-to-live query.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseTimeToLiveResponse {
    /// The lease id.
    pub id: i64,
    /// Remaining TTL in milliseconds as last replicated (granted, renewed
    /// or checkpointed); -1 if the lease does not exist.
    pub ttl_ms: i64,
    /// The TTL the lease was granted with.
    pub granted_ttl_ms: i64,
    /// Keys attached to the lease (when asked for), in key order.
    pub keys: Vec<Bytes>,
}

/// One lease as the replicated state knows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseStatus {
    /// The lease id.
    pub id: i64,
    /// Granted TTL in milliseconds.
    pub ttl_ms: i64,
    /// Remaining TTL at the last grant, keep-alive or checkpoint.
    pub remaining_ms: i64,
}

/// The remaining TTL of one lease, as the leader's lessor measured it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseCheckpoint {
    /// The lease id.
    pub id: i64,
    /// Remaining TTL in milliseconds.
    pub remaining_ms: i64,
}

// ------------------------------------------------- locks and elections ----

/// Result of a lock request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockResponse {
    /// The owner key: `name ++ "/" ++ lease id in lower-case hex`, as etcd.
    pub key: Bytes,
    /// Whether the lock is held now (else the caller waits until every
    /// key under `name/` with a lower create revision is gone).
    pub acquired: bool,
    /// The fencing token: the owner key's create revision; 0 while waiting.
    /// Tokens of one lock name only grow.
    pub token: i64,
}

/// Identifies one campaign of an election (etcd `v3election.LeaderKey`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderKey {
    /// The election name.
    pub name: Bytes,
    /// The campaign key: `name ++ "/" ++ lease id in hex`.
    pub key: Bytes,
    /// The campaign key's create revision (the leader's fencing token).
    pub rev: i64,
    /// The lease the campaign key is attached to.
    pub lease: i64,
}

/// Result of a campaign.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CampaignResponse {
    /// The caller's campaign key.
    pub leader: LeaderKey,
    /// Whether the caller is the leader now (else it waits, FIFO).
    pub elected: bool,
}

// ------------------------------------------------ replicated commands ----

/// What is proposed through consensus and applied by every replica.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Write a key.
    Put(PutRequest),
    /// Delete keys.
    DeleteRange(DeleteRangeRequest),
    /// A transaction.
    Txn(TxnRequest),
    /// Compact the history.
    Compact(CompactionRequest),
    /// Grant a lease.
    LeaseGrant(LeaseGrantRequest),
    /// Revoke a lease and delete its keys.
    LeaseRevoke {
        /// Lease id.
        id: i64,
    },
    /// Renew a lease to its full TTL.
    LeaseKeepAlive {
        /// Lease id.
        id: i64,
    },
    /// Proposed periodically by the leader's lessor: remaining TTLs, so a new leader resumes them.
    LeaseCheckpoint(Vec<LeaseCheckpoint>),
    /// Proposed by the leader's lessor when a lease's remaining TTL reached 0.
    LeaseExpire {
        /// Lease id.
        id: i64,
    },
    /// Acquire (or queue for) the lock `name` with a lease.
    Lock {
        /// Lock name.
        name: Bytes,
        /// Lease of the owner key (must exist).
        lease: i64,
    },
    /// Release a lock (or stop waiting): delete the owner key.
    Unlock {
        /// The owner key returned by [`Command::Lock`].
        key: Bytes,
    },
    /// Campaign for leadership of the election `name`.
    Campaign {
        /// Election name.
        name: Bytes,
        /// Lease of the campaign key (must exist).
        lease: i64,
        /// Value published while leader.
        value: Bytes,
    },
    /// Update the leader's value; only while `leader` is the leader.
    Proclaim {
        /// The caller's campaign key.
        leader: LeaderKey,
        /// New value.
        value: Bytes,
    },
    /// Give up leadership (or stop campaigning): delete the campaign key.
    Resign {
        /// The caller's campaign key.
        leader: LeaderKey,
    },
}

/// The successful result of a [`Command`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Result of [`Command::Put`].
    Put(PutResponse),
    /// Result of [`Command::DeleteRange`].
    DeleteRange(DeleteRangeResponse),
    /// Result of [`Command::Txn`].
    Txn(TxnResponse),
    /// Result of [`Command::Compact`].
    Compact,
    /// Result of [`Command::LeaseGrant`].
    LeaseGrant(LeaseGrantResponse),
    /// Result of [`Command::LeaseRevoke`].
    LeaseRevoke,
    /// Result of [`Command::LeaseKeepAlive`].
    LeaseKeepAlive(LeaseKeepAliveResponse),
    /// Result of [`Command::LeaseCheckpoint`].
    LeaseCheckpoint,
    /// Result of [`Command::LeaseExpire`].
    LeaseExpire,
    /// Result of [`Command::Lock`].
    Lock(LockResponse),
    /// Result of [`Command::Unlock`].
    Unlock,
    /// Result of [`Command::Campaign`].
    Campaign(CampaignResponse),
    /// Result of [`Command::Proclaim`].
    Proclaim,
    /// Result of [`Command::Resign`].
    Resign,
}

/// What `apply` returns for a command, encoded as the state machine's
/// response bytes ([`encode_applied`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// Store revision after the command (etcd's response header revision).
    pub revision: i64,
    /// The outcome. An error means the command changed nothing.
    pub result: Result<Response, LockError>,
}

/// Errors a client sees. Every variant means "nothing changed".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum LockError {
    /// The key is empty.
    #[error("key is not provided (empty key)")]
    KeyEmpty,
    /// The key exceeds `Limits::max_key_bytes`.
    #[error("key is {size} bytes, over the limit max_key_bytes = {max}")]
    KeyTooLarge {
        /// Size of the key.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The value exceeds `Limits::max_value_bytes`.
    #[error("value is {size} bytes, over the limit max_value_bytes = {max}")]
    ValueTooLarge {
        /// Size of the value.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// A transaction (with its nested transactions) has too many operations
    /// (`Limits::max_txn_ops`).
    #[error("transaction has {ops} operations, over the limit max_txn_ops = {max}")]
    TooManyOps {
        /// Operations counted (compares and ops, nested included).
        ops: usize,
        /// The limit.
        max: usize,
    },
    /// The encoded command exceeds `Limits::max_request_bytes`.
    #[error("request is {size} bytes, over the limit max_request_bytes = {max}")]
    RequestTooLarge {
        /// Size of the encoded command.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// A transaction writes one key twice.
    #[error("duplicate key given in txn request (a transaction may not write one key twice)")]
    DuplicateKey,
    /// The revision asked for was compacted.
    #[error("revision {revision} has been compacted (compact revision {compact_revision})")]
    Compacted {
        /// Revision asked for.
        revision: i64,
        /// The current compact revision.
        compact_revision: i64,
    },
    /// The revision asked for is in the future.
    #[error("revision {revision} is a future revision (current revision {current})")]
    FutureRevision {
        /// Revision asked for.
        revision: i64,
        /// The current revision.
        current: i64,
    },
    /// The lease does not exist (never granted, revoked or expired).
    #[error("lease {id:#x} not found")]
    LeaseNotFound {
        /// Lease id.
        id: i64,
    },
    /// A lease with this id exists already.
    #[error("lease {id:#x} already exists")]
    LeaseExists {
        /// Lease id.
        id: i64,
    },
    /// The TTL is outside `[Limits::min_lease_ttl_ms, Limits::max_lease_ttl_ms]`.
    #[error("lease TTL {ttl_ms} ms is out of the allowed range")]
    LeaseTtlInvalid {
        /// TTL asked for.
        ttl_ms: i64,
    },
    /// Unlock of a key that is not a lock owner key (no lease, or not of
    /// the form `name/<lease hex>`); or, from `LockMachine::lock_status`,
    /// the lease lives but its owner key was deleted (unlocked).
    #[error("not a lock owner key (or the lock key no longer exists)")]
    NotLockOwner,
    /// Election: the given `LeaderKey` is not the leader.
    #[error("election: not leader")]
    NotLeader,
    /// The command bytes did not decode.
    #[error("malformed command: {0}")]
    Malformed(String),
    /// `ignore_value` / `ignore_lease` on a key that does not exist.
    #[error("key not found (ignore_value / ignore_lease need an existing key)")]
    KeyNotFound,
    /// `ignore_value` with a non-empty value.
    #[error("value is provided together with ignore_value")]
    ValueProvided,
    /// `ignore_lease` with a non-zero lease.
    #[error("lease is provided together with ignore_lease")]
    LeaseProvided,
    /// `Limits::max_leases` leases exist already.
    #[error("too many leases: the limit max_leases = {max} is reached")]
    TooManyLeases {
        /// The limit.
        max: usize,
    },
    /// A lease id below 0 was asked for.
    #[error("lease id {id} is invalid (must be > 0)")]
    LeaseIdInvalid {
        /// Lease id.
        id: i64,
    },
    /// A lease checkpoint carries more entries than
    /// `Limits::max_checkpoint_leases`.
    #[error("checkpoint has {count} leases, over the limit max_checkpoint_leases = {max}")]
    TooManyCheckpoints {
        /// Entries in the command.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A range or compare would touch more keys than `Limits::max_range_keys`.
    #[error("operation touches {count} keys, over the limit max_range_keys = {max}")]
    TooManyKeys {
        /// Keys matched.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// Nested transactions deeper than `Limits::max_txn_depth`.
    #[error("transactions nested {depth} deep, over the limit max_txn_depth = {max}")]
    TxnTooDeep {
        /// Depth found.
        depth: usize,
        /// The limit.
        max: usize,
    },
    /// A name (lock or election) is empty.
    #[error("lock or election name is empty")]
    NameEmpty,
}

/// Why a [`Limits`] value was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LimitsError {
    /// A limit that must be positive is zero.
    #[error("limit {0} must be > 0")]
    Zero(&'static str),
    /// Two limits contradict each other.
    #[error("limits contradict: {0}")]
    Inconsistent(&'static str),
}

/// Named limits: the validated configuration of the machine. Every limit is
/// enforced on apply with an error naming it. Defaults in brackets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Largest key in bytes [1536].
    pub max_key_bytes: usize,
    /// Largest value in bytes [1.5 MiB].
    pub max_value_bytes: usize,
    /// Most compares + operations in one transaction, nested included [128].
    pub max_txn_ops: usize,
    /// Largest encoded command in bytes [1.5 MiB + 512].
    pub max_request_bytes: usize,
    /// Most leases alive at once [100 000].
    pub max_leases: usize,
    /// Most events a watcher may have buffered before it is cancelled
    /// (enforced by the watch layer of the node) [4096].
    pub max_watch_events_buffered: usize,
    /// Smallest lease TTL in milliseconds [1].
    pub min_lease_ttl_ms: i64,
    /// Largest lease TTL in milliseconds [9 000 000 000 000 (etcd's max of
    /// 9e9 s is too large for ms arithmetic headroom; this is ~285 years)].
    pub max_lease_ttl_ms: i64,
    /// Most entries in one [`Command::LeaseCheckpoint`] [1000].
    pub max_checkpoint_leases: usize,
    /// Most keys one range may read, one delete may delete, one compare may
    /// check, or one lease revocation may delete [100 000].
    pub max_range_keys: usize,
    /// Deepest nesting of transactions [8].
    pub max_txn_depth: usize,
    /// Target size of one snapshot chunk in bytes [1 MiB].
    pub snapshot_chunk_bytes: usize,
    /// Most revisions of history kept [1 000 000; 0 = keep all]: when the
    /// store revision is more than `history_retention_revisions` plus a
    /// tenth of it above the compact revision, the machine compacts
    /// itself to `revision - history_retention_revisions` in the same
    /// apply (deterministic: every replica does it at the same index).
    /// Bounds the memory and disk the history takes without relying on
    /// clients to call Compact.
    #[serde(default = "default_history_retention_revisions")]
    pub history_retention_revisions: i64,
    /// Lock-delay (Chubby's) in milliseconds [0 = off; at most
    /// [`MAX_LOCK_DELAY_MS`]]: when a lease that owns a lock (or leads an
    /// election) **expires** — not on unlock, resign or revoke — the
    /// owner key stays in place for this long, held by a fresh *delay
    /// lease*, so the next waiter is granted only after the delay: the
    /// expired owner's writes still in flight drain before anyone else
    /// holds the lock. The delay is a lease, so the leader's [`Lessor`](crate::Lessor)
    /// measures it, checkpoints its remaining time and expires it exactly
    /// like a client lease (a failover never shortens it).
    #[serde(default)]
    pub lock_delay_ms: i64,
}

/// Largest [`Limits::lock_delay_ms`]: ten minutes (a longer delay would
/// leave a lock unusable for longer than any client waits).
pub const MAX_LOCK_DELAY_MS: i64 = 600_000;

fn default_history_retention_revisions() -> i64 {
    1_000_000
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_key_bytes: 1536,
            max_value_bytes: 3 * 512 * 1024,
            max_txn_ops: 128,
            max_request_bytes: 3 * 512 * 1024 + 512,
            max_leases: 100_000,
            max_watch_events_buffered: 4096,
            min_lease_ttl_ms: 1,
            max_lease_ttl_ms: 9_000_000_000_000,
            max_checkpoint_leases: 1000,
            max_range_keys: 100_000,
            max_txn_depth: 8,
            snapshot_chunk_bytes: 1 << 20,
            history_retention_revisions: default_history_retention_revisions(),
            lock_delay_ms: 0,
        }
    }
}

impl Limits {
    /// Checks that every limit is usable.
    pub fn validate(&self) -> Result<(), LimitsError> {
        let positive = [
            ("max_key_bytes", self.max_key_bytes),
            ("max_value_bytes", self.max_value_bytes),
            ("max_txn_ops", self.max_txn_ops),
            ("max_request_bytes", self.max_request_bytes),
            ("max_leases", self.max_leases),
            ("max_watch_events_buffered", self.max_watch_events_buffered),
            ("max_checkpoint_leases", self.max_checkpoint_leases),
            ("max_range_keys", self.max_range_keys),
            ("max_txn_depth", self.max_txn_depth),
            ("snapshot_chunk_bytes", self.snapshot_chunk_bytes),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(LimitsError::Zero(name));
            }
        }
        if self.min_lease_ttl_ms <= 0 {
            return Err(LimitsError::Zero("min_lease_ttl_ms"));
        }
        if self.max_lease_ttl_ms < self.min_lease_ttl_ms {
            return Err(LimitsError::Inconsistent(
                "max_lease_ttl_ms < min_lease_ttl_ms",
            ));
        }
        if self.history_retention_revisions < 0 {
            return Err(LimitsError::Inconsistent("history_retention_revisions < 0"));
        }
        if !(0..=MAX_LOCK_DELAY_MS).contains(&self.lock_delay_ms) {
            return Err(LimitsError::Inconsistent(
                "lock_delay_ms outside 0..=MAX_LOCK_DELAY_MS",
            ));
        }
        if self.max_request_bytes < self.max_key_bytes {
            return Err(LimitsError::Inconsistent(
                "max_request_bytes < max_key_bytes",
            ));
        }
        Ok(())
    }
}

// ------------------------------------------------------------ encoding ----

/// Encodes a command as a codec frame (version + postcard + CRC-32C).
pub fn encode_command(c: &Command) -> Bytes {
    codec::encode(c).into()
}

/// Decodes a command frame; torn, corrupt or foreign bytes give
/// [`LockError::Malformed`], never a panic.
pub fn decode_command(b: &[u8]) -> Result<Command, LockError> {
    codec::decode(b).map_err(|e| LockError::Malformed(e.to_string()))
}

/// Encodes an apply outcome as a codec frame.
pub fn encode_applied(a: &Applied) -> Bytes {
    codec::encode(a).into()
}

/// Decodes an apply outcome frame; bad bytes give [`LockError::Malformed`].
pub fn decode_applied(b: &[u8]) -> Result<Applied, LockError> {
    codec::decode(b).map_err(|e| LockError::Malformed(e.to_string()))
}

/// The smallest key greater than every key with prefix `prefix` (etcd's
/// `GetPrefixRangeEnd`): the range `[prefix, prefix_end(prefix))` holds
/// exactly the keys starting with `prefix`. For a prefix of only `0xff`
/// bytes (or empty) it is `"\0"` (all keys from `prefix` on).
pub fn prefix_end(prefix: &[u8]) -> Bytes {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end.into();
        }
    }
    Bytes::from_static(b"\0")
}

/// The owner key of lock or campaign `name` for `lease`:
/// `name ++ "/" ++ lease id in lower-case hex` (etcd's format).
pub fn owner_key(name: &[u8], lease: i64) -> Bytes {
    let mut k = Vec::with_capacity(name.len() + 17);
    k.extend_from_slice(name);
    k.push(b'/');
    k.extend_from_slice(format!("{lease:x}").as_bytes());
    k.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applied_roundtrip_and_corruption() {
        let a = Applied {
            revision: 7,
            result: Err(LockError::KeyTooLarge { size: 9, max: 3 }),
        };
        let b = encode_applied(&a);
        assert_eq!(decode_applied(&b).unwrap(), a);
        let mut bad = b.to_vec();
        bad[2] ^= 0x40;
        assert!(matches!(decode_applied(&bad), Err(LockError::Malformed(_))));
    }

    #[test]
    fn deeply_nested_txn_frames_are_refused_not_a_stack_overflow() {
        let mut t = TxnRequest::default();
        for _ in 0..MAX_DECODE_TXN_DEPTH - 1 {
            t = TxnRequest {
                success: vec![RequestOp::Txn(t)],
                ..Default::default()
            };
        }
        let ok = Command::Txn(t.clone());
        assert_eq!(decode_command(&encode_command(&ok)).unwrap(), ok);
        let deeper = Command::Txn(TxnRequest {
            failure: vec![RequestOp::Txn(t)],
            ..Default::default()
        });
        assert!(matches!(
            decode_command(&encode_command(&deeper)),
            Err(LockError::Malformed(_))
        ));
        // the depth counter is back at 0 after an error: a normal decode works
        assert_eq!(decode_command(&encode_command(&ok)).unwrap(), ok);
        // a hostile frame: 100 000 nested Txn openings (varint tags), no stack overflow
        let mut payload = vec![2u8]; // Command::Txn
        for _ in 0..100_000 {
            payload.extend_from_slice(&[0, 1, 3]); // no compares, 1 success op: RequestOp::Txn
        }
        let mut frame = vec![ha_core::codec::FORMAT_VERSION];
        frame.extend_from_slice(&payload);
        let crc = crc32c_of(&frame);
        frame.extend_from_slice(&crc.to_le_bytes());
        assert!(matches!(
            decode_command(&frame),
            Err(LockError::Malformed(_))
        ));
    }

    /// CRC-32C (Castagnoli), bitwise, for building a hostile frame by hand.
    fn crc32c_of(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0x82f6_3b78
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[test]
    fn prefix_end_matches_etcd() {
        assert_eq!(prefix_end(b"a/"), Bytes::from_static(b"a0"));
        assert_eq!(prefix_end(b"a\xff"), Bytes::from_static(b"b"));
        assert_eq!(prefix_end(b"\xff\xff"), Bytes::from_static(b"\0"));
        assert_eq!(prefix_end(b""), Bytes::from_static(b"\0"));
    }

    #[test]
    fn owner_key_is_name_slash_hex() {
        assert_eq!(owner_key(b"l", 0x1f), Bytes::from_static(b"l/1f"));
    }

    #[test]
    fn default_limits_are_valid_and_zero_is_refused() {
        assert_eq!(Limits::default().validate(), Ok(()));
        let l = Limits {
            max_txn_ops: 0,
            ..Limits::default()
        };
        assert_eq!(l.validate(), Err(LimitsError::Zero("max_txn_ops")));
    }
}
