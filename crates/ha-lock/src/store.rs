//! The replicated state and its deterministic execution.
//!
//! Representation (like etcd's tree index + backend):
//!
//! * `records`: revision `(main, sub)` → the key's value after that change
//!   (a put) or a tombstone (a delete). One main revision per write command;
//!   `sub` numbers the changes inside it in execution order.
//! * `index`: key → the revisions of its records, ascending. A read at
//!   revision `r` takes the last record with `main <= r`.
//! * `leases`: id → TTLs and the keys attached.
//!
//! Every container is ordered (`BTreeMap`/`BTreeSet`), so iteration, events
//! and snapshots are deterministic. A write command executes against the live
//! state and keeps an undo log; on any error the undo log restores the state
//! exactly, so every error means "nothing changed".

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::api::{
    CampaignResponse, Command, CompactionRequest, Compare, CompareResult, CompareTarget,
    DeleteRangeRequest, DeleteRangeResponse, Event, EventType, KeyValue, LeaderKey,
    LeaseCheckpoint, LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveResponse, LeaseStatus,
    LeaseTimeToLiveResponse, Limits, LockError, LockResponse, PutRequest, PutResponse,
    RangeRequest, RangeResponse, RequestOp, Response, ResponseOp, SortOrder, SortTarget,
    TxnRequest, TxnResponse, owner_key, prefix_end,
};

/// A revision: the command's main revision and the change's position in it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub(crate) struct Rev {
    pub main: i64,
    pub sub: i64,
}

/// One change of one key: its value after a put, `None` after a delete.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Record {
    pub key: Bytes,
    pub kv: Option<KeyValue>,
}

/// A lease as replicated.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Lease {
    pub ttl_ms: i64,
    pub remaining_ms: i64,
    pub keys: BTreeSet<Bytes>,
}

/// A lease as persisted (the key set is rebuilt from the keys).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LeaseRecord {
    pub id: i64,
    pub ttl_ms: i64,
    pub remaining_ms: i64,
}

/// What changed in one command, for a durable store to write.
#[derive(Debug, Default)]
pub(crate) struct Journal {
    /// Records added.
    pub put_records: Vec<Rev>,
    /// Records removed (compaction).
    pub removed_records: Vec<Rev>,
    /// Leases added, changed or removed (look the id up to know which).
    pub leases: BTreeSet<i64>,
}

impl Journal {
    fn clear(&mut self) {
        self.put_records.clear();
        self.removed_records.clear();
        self.leases.clear();
    }
}

/// One reversible change, for rolling back a failed command.
enum Undo {
    /// A record was appended for `key` at `rev`; lease attachment moved
    /// from `old_lease` to `new_lease`.
    Record {
        rev: Rev,
        key: Bytes,
        old_lease: i64,
        new_lease: i64,
    },
}

/// The whole replicated key space, leases and revision counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct State {
    pub revision: i64,
    pub compact_revision: i64,
    pub records: BTreeMap<Rev, Record>,
    pub index: BTreeMap<Bytes, Vec<Rev>>,
    pub leases: BTreeMap<i64, Lease>,
}

impl Default for State {
    /// An empty store at revision 1, as etcd starts: the first change gets
    /// revision 2, so "revision 0" always means "none" in a request (etcd's
    /// client recipes rely on that, e.g. `max_create_revision = 0`).
    fn default() -> Self {
        State {
            revision: 1,
            compact_revision: 0,
            records: BTreeMap::new(),
            index: BTreeMap::new(),
            leases: BTreeMap::new(),
        }
    }
}

/// Reads see everything (including the running command's own writes).
const LATEST: i64 = i64::MAX;

/// `[key, range_end)` as bounds, with etcd's conventions.
fn bounds(key: &[u8], range_end: &[u8]) -> (Bound<Bytes>, Bound<Bytes>) {
    let start = Bound::Included(Bytes::copy_from_slice(key));
    if range_end.is_empty() {
        (start.clone(), start)
    } else if range_end == b"\0" {
        (start, Bound::Unbounded)
    } else {
        (start, Bound::Excluded(Bytes::copy_from_slice(range_end)))
    }
}

/// Whether the bounds describe an empty or inverted range (BTreeMap::range
/// panics on inverted bounds, so they are filtered first).
fn is_empty_range(b: &(Bound<Bytes>, Bound<Bytes>)) -> bool {
    match b {
        (Bound::Included(s), Bound::Excluded(e)) => s >= e,
        (Bound::Included(s), Bound::Included(e)) => s > e,
        _ => false,
    }
}

fn in_range(k: &[u8], key: &[u8], range_end: &[u8]) -> bool {
    if range_end.is_empty() {
        k == key
    } else if range_end == b"\0" {
        k >= key
    } else {
        k >= key && k < range_end
    }
}

/// Deterministic pseudo-random lease id for log index `seed` (SplitMix64).
fn lease_id_for(seed: u64) -> i64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z & (i64::MAX as u64)) as i64
}

/// Execution context of one command.
pub(crate) struct Exec<'a> {
    pub state: &'a mut State,
    pub limits: &'a Limits,
    /// Log index of the command (seeds lease ids).
    pub index: u64,
    pub events: Vec<Event>,
    pub journal: &'a mut Journal,
    undo: Vec<Undo>,
    /// Revision the state had before the command.
    base_revision: i64,
    /// Next sub-revision of the command's main revision.
    next_sub: i64,
}

impl<'a> Exec<'a> {
    pub fn new(
        state: &'a mut State,
        limits: &'a Limits,
        index: u64,
        journal: &'a mut Journal,
    ) -> Self {
        journal.clear();
        let base_revision = state.revision;
        Exec {
            state,
            limits,
            index,
            events: Vec::new(),
            journal,
            undo: Vec::new(),
            base_revision,
            next_sub: 0,
        }
    }

    /// Runs `cmd`. On error the state is exactly as before.
    pub fn run(&mut self, cmd: Command) -> Result<Response, LockError> {
        let out = self.dispatch(cmd);
        match out {
            Ok(r) => {
                if self.next_sub > 0 {
                    self.state.revision = self.base_revision + 1;
                    self.auto_compact();
                }
                Ok(r)
            }
            Err(e) => {
                self.rollback();
                Err(e)
            }
        }
    }

    fn rollback(&mut self) {
        while let Some(u) = self.undo.pop() {
            match u {
                Undo::Record {
                    rev,
                    key,
                    old_lease,
                    new_lease,
                } => {
                    self.state.records.remove(&rev);
                    if let Some(h) = self.state.index.get_mut(&key) {
                        h.pop();
                        if h.is_empty() {
                            self.state.index.remove(&key);
                        }
                    }
                    if new_lease != old_lease {
                        if let Some(l) = self.state.leases.get_mut(&new_lease) {
                            l.keys.remove(&key);
                        }
                        if let Some(l) = self.state.leases.get_mut(&old_lease) {
                            l.keys.insert(key);
                        }
                    }
                }
            }
        }
        self.events.clear();
        self.journal.clear();
        self.next_sub = 0;
        self.state.revision = self.base_revision;
    }

    fn dispatch(&mut self, cmd: Command) -> Result<Response, LockError> {
        match cmd {
            Command::Put(p) => self.put(&p).map(Response::Put),
            Command::DeleteRange(d) => self.delete_range(&d).map(Response::DeleteRange),
            Command::Txn(t) => {
                check_txn_shape(&t, self.limits, 1)?;
                check_intervals(&t.success)?;
                check_intervals(&t.failure)?;
                self.txn(&t).map(Response::Txn)
            }
            Command::Compact(c) => self.compact(&c).map(|()| Response::Compact),
            Command::LeaseGrant(g) => self.lease_grant(&g).map(Response::LeaseGrant),
            Command::LeaseRevoke { id } => self.lease_remove(id).map(|()| Response::LeaseRevoke),
            Command::LeaseExpire { id } => self.lease_expire(id).map(|()| Response::LeaseExpire),
            Command::LeaseKeepAlive { id } => {
                let lease = self
                    .state
                    .leases
                    .get_mut(&id)
                    .ok_or(LockError::LeaseNotFound { id })?;
                lease.remaining_ms = lease.ttl_ms;
                self.journal.leases.insert(id);
                Ok(Response::LeaseKeepAlive(LeaseKeepAliveResponse {
                    id,
                    ttl_ms: lease.ttl_ms,
                }))
            }
            Command::LeaseCheckpoint(cps) => self
                .lease_checkpoint(&cps)
                .map(|()| Response::LeaseCheckpoint),
            Command::Lock { name, lease } => self.lock(&name, lease).map(Response::Lock),
            Command::Unlock { key } => self.unlock(&key).map(|()| Response::Unlock),
            Command::Campaign { name, lease, value } => {
                self.campaign(&name, lease, &value).map(Response::Campaign)
            }
            Command::Proclaim { leader, value } => {
                self.proclaim(&leader, &value).map(|()| Response::Proclaim)
            }
            Command::Resign { leader } => self.resign(&leader).map(|()| Response::Resign),
        }
    }

    // ------------------------------------------------------------ writes --

    fn check_key(&self, key: &[u8]) -> Result<(), LockError> {
        check_key(key, self.limits)
    }

    /// Appends a record for `key` (`kv = None`: a delete) at the command's
    /// revision, moves lease attachment, and emits the event.
    fn write(&mut self, key: &Bytes, kv: Option<KeyValue>, prev: Option<KeyValue>) {
        let rev = Rev {
            main: self.base_revision + 1,
            sub: self.next_sub,
        };
        self.next_sub += 1;
        let old_lease = prev.as_ref().map_or(0, |p| p.lease);
        let new_lease = kv.as_ref().map_or(0, |k| k.lease);
        if old_lease != new_lease {
            if let Some(l) = self.state.leases.get_mut(&old_lease) {
                l.keys.remove(key);
            }
            if let Some(l) = self.state.leases.get_mut(&new_lease) {
                l.keys.insert(key.clone());
            }
        }
        let event = match &kv {
            Some(kv) => Event {
                kind: EventType::Put,
                kv: kv.clone(),
                prev_kv: prev,
            },
            None => Event {
                kind: EventType::Delete,
                kv: KeyValue {
                    key: key.clone(),
                    mod_revision: rev.main,
                    ..KeyValue::default()
                },
                prev_kv: prev,
            },
        };
        self.events.push(event);
        self.state.records.insert(
            rev,
            Record {
                key: key.clone(),
                kv,
            },
        );
        self.state.index.entry(key.clone()).or_default().push(rev);
        self.journal.put_records.push(rev);
        self.undo.push(Undo::Record {
            rev,
            key: key.clone(),
            old_lease,
            new_lease,
        });
    }

    fn put(&mut self, p: &PutRequest) -> Result<PutResponse, LockError> {
        self.check_key(&p.key)?;
        if p.value.len() > self.limits.max_value_bytes {
            return Err(LockError::ValueTooLarge {
                size: p.value.len(),
                max: self.limits.max_value_bytes,
            });
        }
        if p.ignore_value && !p.value.is_empty() {
            return Err(LockError::ValueProvided);
        }
        if p.ignore_lease && p.lease != 0 {
            return Err(LockError::LeaseProvided);
        }
        if p.lease != 0 && !self.state.leases.contains_key(&p.lease) {
            return Err(LockError::LeaseNotFound { id: p.lease });
        }
        let prev = self.state.get(&p.key, LATEST);
        let Some(prev_kv) = prev
            .clone()
            .or_else(|| (!p.ignore_value && !p.ignore_lease).then(KeyValue::default))
        else {
            return Err(LockError::KeyNotFound);
        };
        let exists = prev.is_some();
        let rev = self.base_revision + 1;
        let lease = if p.ignore_lease {
            prev_kv.lease
        } else {
            p.lease
        };
        if lease != 0 && lease != prev_kv.lease {
            let attached = self.state.leases.get(&lease).map_or(0, |l| l.keys.len());
            if attached >= self.limits.max_range_keys {
                return Err(LockError::TooManyKeys {
                    count: attached + 1,
                    max: self.limits.max_range_keys,
                });
            }
        }
        let kv = KeyValue {
            key: p.key.clone(),
            create_revision: if exists { prev_kv.create_revision } else { rev },
            mod_revision: rev,
            version: if exists { prev_kv.version + 1 } else { 1 },
            value: if p.ignore_value {
                prev_kv.value.clone()
            } else {
                p.value.clone()
            },
            lease,
        };
        self.write(&p.key, Some(kv), prev.clone());
        Ok(PutResponse {
            prev_kv: if p.prev_kv { prev } else { None },
        })
    }

    fn delete_range(&mut self, d: &DeleteRangeRequest) -> Result<DeleteRangeResponse, LockError> {
        self.check_key(&d.key)?;
        let victims = self
            .state
            .live_in_range(&d.key, &d.range_end, self.limits)?;
        let mut resp = DeleteRangeResponse {
            deleted: victims.len() as i64,
            prev_kvs: Vec::new(),
        };
        for kv in victims {
            let key = kv.key.clone();
            if d.prev_kv {
                resp.prev_kvs.push(kv.clone());
            }
            self.write(&key, None, Some(kv));
        }
        Ok(resp)
    }

    fn txn(&mut self, t: &TxnRequest) -> Result<TxnResponse, LockError> {
        let mut ok = true;
        for c in &t.compare {
            if !self.state.compare(c, self.limits)? {
                ok = false;
                break;
            }
        }
        let ops = if ok { &t.success } else { &t.failure };
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            let r = match op {
                RequestOp::Range(r) => ResponseOp::Range(self.range_in_txn(r)?),
                RequestOp::Put(p) => ResponseOp::Put(self.put(p)?),
                RequestOp::DeleteRange(d) => ResponseOp::DeleteRange(self.delete_range(d)?),
                RequestOp::Txn(t) => ResponseOp::Txn(self.txn(t)?),
            };
            responses.push(r);
        }
        Ok(TxnResponse {
            succeeded: ok,
            responses,
        })
    }

    /// A range inside a transaction: sees the transaction's own writes;
    /// revisions are judged against the revision before the transaction.
    fn range_in_txn(&self, r: &RangeRequest) -> Result<RangeResponse, LockError> {
        self.state
            .range_at(r, self.base_revision, LATEST, self.limits)
    }

    /// Keeps at most `history_retention_revisions` (+10 % slack, so the
    /// O(keys) compaction runs once per tenth of the window, not per write).
    fn auto_compact(&mut self) {
        let keep = self.limits.history_retention_revisions;
        if keep <= 0 {
            return;
        }
        let slack = (keep / 10).max(1);
        let s = &*self.state;
        if s.revision - s.compact_revision > keep.saturating_add(slack) {
            let at = s.revision - keep;
            // at > compact_revision and <= revision: cannot fail
            let _ = self.compact(&CompactionRequest { revision: at });
        }
    }

    fn compact(&mut self, c: &CompactionRequest) -> Result<(), LockError> {
        let s = &mut *self.state;
        if c.revision <= s.compact_revision {
            return Err(LockError::Compacted {
                revision: c.revision,
                compact_revision: s.compact_revision,
            });
        }
        if c.revision > s.revision {
            return Err(LockError::FutureRevision {
                revision: c.revision,
                current: s.revision,
            });
        }
        let at = c.revision;
        let mut empty_keys = Vec::new();
        for (key, revs) in s.index.iter_mut() {
            // revisions <= at: keep only the last, and only if it is a put.
            let n = revs.partition_point(|r| r.main <= at);
            if n == 0 {
                continue;
            }
            let last = revs[n - 1];
            let last_is_put = s.records.get(&last).is_some_and(|r| r.kv.is_some());
            let drop_upto = if last_is_put { n - 1 } else { n };
            for r in revs.drain(..drop_upto) {
                s.records.remove(&r);
                self.journal.removed_records.push(r);
            }
            if revs.is_empty() {
                empty_keys.push(key.clone());
            }
        }
        for k in empty_keys {
            s.index.remove(&k);
        }
        s.compact_revision = at;
        Ok(())
    }

    fn lease_grant(&mut self, g: &LeaseGrantRequest) -> Result<LeaseGrantResponse, LockError> {
        if g.id < 0 {
            return Err(LockError::LeaseIdInvalid { id: g.id });
        }
        if g.ttl_ms < self.limits.min_lease_ttl_ms || g.ttl_ms > self.limits.max_lease_ttl_ms {
            return Err(LockError::LeaseTtlInvalid { ttl_ms: g.ttl_ms });
        }
        if g.id > 0 && self.state.leases.contains_key(&g.id) {
            return Err(LockError::LeaseExists { id: g.id });
        }
        if self.state.leases.len() >= self.limits.max_leases {
            return Err(LockError::TooManyLeases {
                max: self.limits.max_leases,
            });
        }
        let id = if g.id > 0 {
            g.id
        } else {
            self.fresh_lease_id()
        };
        self.state.leases.insert(
            id,
            Lease {
                ttl_ms: g.ttl_ms,
                remaining_ms: g.ttl_ms,
                keys: BTreeSet::new(),
            },
        );
        self.journal.leases.insert(id);
        Ok(LeaseGrantResponse {
            id,
            ttl_ms: g.ttl_ms,
        })
    }

    /// An unused lease id for this command: the hash of its log index,
    /// probing past ids in use. At most `max_leases + 1` ids are taken
    /// (a lock-delay lease is created just before its expired lease is
    /// removed), so the probe ends within `max_leases + 2` steps.
    fn fresh_lease_id(&self) -> i64 {
        let mut id = lease_id_for(self.index);
        while id == 0 || self.state.leases.contains_key(&id) {
            id = if id == i64::MAX { 1 } else { id + 1 };
        }
        id
    }

    /// The owner keys (lock or election) that lease `id` holds now: its
    /// keys of the form `name/<id hex>` that are the oldest under `name/`.
    fn held_locks(&self, id: i64) -> Vec<Bytes> {
        let Some(lease) = self.state.leases.get(&id) else {
            return Vec::new();
        };
        let suffix = format!("/{id:x}");
        lease
            .keys
            .iter()
            .filter(|k| {
                k.len() > suffix.len()
                    && k.ends_with(suffix.as_bytes())
                    && self
                        .state
                        .first_created(&k[..k.len() - suffix.len()])
                        .is_some_and(|o| o.key == **k)
            })
            .cloned()
            .collect()
    }

    /// Expiry (proposed by the leader's lessor). Without lock-delay, or
    /// when the lease holds no lock, the same as a revoke. With lock-delay,
    /// every lock the lease holds keeps its owner key, moved to a new
    /// delay lease of `lock_delay_ms` (so the lock stays taken, and the
    /// expired lease's fencing token stays the highest, until the delay
    /// lease expires in turn); then the lease and its other keys go.
    fn lease_expire(&mut self, id: i64) -> Result<(), LockError> {
        let delay = self.limits.lock_delay_ms;
        let held = if delay > 0 {
            self.held_locks(id)
        } else {
            Vec::new()
        };
        if held.is_empty() {
            return self.lease_remove(id);
        }
        // One lease more than before for the length of this command: the
        // expired one goes below, so the count never grows.
        let delay_id = self.fresh_lease_id();
        self.state.leases.insert(
            delay_id,
            Lease {
                ttl_ms: delay,
                remaining_ms: delay,
                keys: BTreeSet::new(),
            },
        );
        self.journal.leases.insert(delay_id);
        for key in held {
            let moved = self.put(&PutRequest {
                key,
                lease: delay_id,
                ignore_value: true,
                ..PutRequest::default()
            });
            if let Err(e) = moved {
                // `run` rolls the records back; the lease is ours to undo.
                self.state.leases.remove(&delay_id);
                return Err(e);
            }
        }
        self.lease_remove(id)
    }

    /// Revoke or expire: delete the lease's keys (in key order, one
    /// revision), then the lease.
    fn lease_remove(&mut self, id: i64) -> Result<(), LockError> {
        let keys: Vec<Bytes> = self
            .state
            .leases
            .get(&id)
            .ok_or(LockError::LeaseNotFound { id })?
            .keys
            .iter()
            .cloned()
            .collect();
        for k in keys {
            let prev = self.state.get(&k, LATEST);
            self.write(&k, None, prev);
        }
        self.state.leases.remove(&id);
        self.journal.leases.insert(id);
        Ok(())
    }

    fn lease_checkpoint(&mut self, cps: &[LeaseCheckpoint]) -> Result<(), LockError> {
        if cps.len() > self.limits.max_checkpoint_leases {
            return Err(LockError::TooManyCheckpoints {
                count: cps.len(),
                max: self.limits.max_checkpoint_leases,
            });
        }
        for cp in cps {
            // A lease revoked since the checkpoint was measured is skipped.
            if let Some(l) = self.state.leases.get_mut(&cp.id) {
                l.remaining_ms = cp.remaining_ms.clamp(0, l.ttl_ms);
                self.journal.leases.insert(cp.id);
            }
        }
        Ok(())
    }

    fn check_name(&self, name: &[u8], lease: i64) -> Result<Bytes, LockError> {
        if name.is_empty() {
            return Err(LockError::NameEmpty);
        }
        let key = owner_key(name, lease);
        self.check_key(&key)?;
        if lease == 0 || !self.state.leases.contains_key(&lease) {
            return Err(LockError::LeaseNotFound { id: lease });
        }
        Ok(key)
    }

    fn lock(&mut self, name: &[u8], lease: i64) -> Result<LockResponse, LockError> {
        let key = self.check_name(name, lease)?;
        let mine = match self.state.get(&key, LATEST) {
            Some(kv) => kv,
            None => {
                self.put(&PutRequest {
                    key: key.clone(),
                    lease,
                    ..PutRequest::default()
                })?;
                self.state.get(&key, LATEST).ok_or(LockError::KeyNotFound)?
            }
        };
        let acquired = self.state.first_created(name).is_some_and(|o| o.key == key);
        Ok(LockResponse {
            key,
            acquired,
            token: if acquired { mine.create_revision } else { 0 },
        })
    }

    fn unlock(&mut self, key: &Bytes) -> Result<(), LockError> {
        self.check_key(key)?;
        let Some(kv) = self.state.get(key, LATEST) else {
            // Already released (unlocked before, or the lease expired):
            // unlock is idempotent so a client may retry it.
            return Ok(());
        };
        if kv.lease == 0 || !key.ends_with(format!("/{:x}", kv.lease).as_bytes()) {
            return Err(LockError::NotLockOwner);
        }
        self.write(key, None, Some(kv));
        Ok(())
    }

    fn campaign(
        &mut self,
        name: &Bytes,
        lease: i64,
        value: &Bytes,
    ) -> Result<CampaignResponse, LockError> {
        let key = self.check_name(name, lease)?;
        if value.len() > self.limits.max_value_bytes {
            return Err(LockError::ValueTooLarge {
                size: value.len(),
                max: self.limits.max_value_bytes,
            });
        }
        let existing = self.state.get(&key, LATEST);
        if existing
            .as_ref()
            .is_none_or(|kv| kv.value != *value || kv.lease != lease)
        {
            self.put(&PutRequest {
                key: key.clone(),
                value: value.clone(),
                lease,
                ..PutRequest::default()
            })?;
        }
        let mine = self.state.get(&key, LATEST).ok_or(LockError::KeyNotFound)?;
        let elected = self.state.first_created(name).is_some_and(|o| o.key == key);
        Ok(CampaignResponse {
            leader: LeaderKey {
                name: name.clone(),
                key,
                rev: mine.create_revision,
                lease,
            },
            elected,
        })
    }

    fn proclaim(&mut self, leader: &LeaderKey, value: &Bytes) -> Result<(), LockError> {
        if leader.name.is_empty() {
            return Err(LockError::NameEmpty);
        }
        self.check_key(&leader.key)?;
        if value.len() > self.limits.max_value_bytes {
            return Err(LockError::ValueTooLarge {
                size: value.len(),
                max: self.limits.max_value_bytes,
            });
        }
        let is_leader = self
            .state
            .first_created(&leader.name)
            .is_some_and(|o| o.key == leader.key && o.create_revision == leader.rev);
        if !is_leader {
            return Err(LockError::NotLeader);
        }
        self.put(&PutRequest {
            key: leader.key.clone(),
            value: value.clone(),
            ignore_lease: true,
            ..PutRequest::default()
        })?;
        Ok(())
    }

    fn resign(&mut self, leader: &LeaderKey) -> Result<(), LockError> {
        self.check_key(&leader.key)?;
        if let Some(kv) = self.state.get(&leader.key, LATEST)
            && kv.create_revision == leader.rev
        {
            let key = kv.key.clone();
            self.write(&key, None, Some(kv));
        }
        Ok(())
    }
}

/// Key non-empty and within `max_key_bytes`.
pub(crate) fn check_key(key: &[u8], limits: &Limits) -> Result<(), LockError> {
    if key.is_empty() {
        return Err(LockError::KeyEmpty);
    }
    if key.len() > limits.max_key_bytes {
        return Err(LockError::KeyTooLarge {
            size: key.len(),
            max: limits.max_key_bytes,
        });
    }
    Ok(())
}

/// Per-list op counts (etcd's rule: compares, success and failure each at
/// most `max_txn_ops`), nesting depth, and key/range_end sizes.
fn check_txn_shape(t: &TxnRequest, limits: &Limits, depth: usize) -> Result<(), LockError> {
    if depth > limits.max_txn_depth {
        return Err(LockError::TxnTooDeep {
            depth,
            max: limits.max_txn_depth,
        });
    }
    for n in [t.compare.len(), t.success.len(), t.failure.len()] {
        if n > limits.max_txn_ops {
            return Err(LockError::TooManyOps {
                ops: n,
                max: limits.max_txn_ops,
            });
        }
    }
    for c in &t.compare {
        check_key(&c.key, limits)?;
    }
    for op in t.success.iter().chain(&t.failure) {
        if let RequestOp::Txn(inner) = op {
            check_txn_shape(inner, limits, depth + 1)?;
        }
    }
    Ok(())
}

/// A delete's key interval, `end = None` for a single key.
struct Interval {
    start: Bytes,
    end: Bytes,
}

impl Interval {
    fn contains(&self, k: &[u8]) -> bool {
        in_range(k, &self.start, &self.end)
    }
}

/// etcd's duplicate-key rule for one branch: a key may be put once, and not
/// inside a range deleted in the same branch (nested transactions included;
/// a key put in both branches of one nested transaction counts once, as
/// only one branch runs). Returns the branch's puts and deletes.
fn check_intervals(ops: &[RequestOp]) -> Result<(BTreeSet<Bytes>, Vec<Interval>), LockError> {
    let mut dels: Vec<Interval> = ops
        .iter()
        .filter_map(|op| match op {
            RequestOp::DeleteRange(d) => Some(Interval {
                start: d.key.clone(),
                end: d.range_end.clone(),
            }),
            _ => None,
        })
        .collect();
    let mut puts: BTreeSet<Bytes> = BTreeSet::new();
    for op in ops {
        let RequestOp::Txn(t) = op else { continue };
        let (puts_then, dels_then) = check_intervals(&t.success)?;
        let (puts_else, dels_else) = check_intervals(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || dels.iter().any(|d| d.contains(k)) {
                return Err(LockError::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        for k in &puts_else {
            if (puts.contains(k) && !puts_then.contains(k)) || dels.iter().any(|d| d.contains(k)) {
                return Err(LockError::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        dels.extend(dels_then);
        dels.extend(dels_else);
    }
    for op in ops {
        let RequestOp::Put(p) = op else { continue };
        if puts.contains(&p.key) || dels.iter().any(|d| d.contains(&p.key)) {
            return Err(LockError::DuplicateKey);
        }
        puts.insert(p.key.clone());
    }
    Ok((puts, dels))
}

// ---------------------------------------------------------------- reads --

impl State {
    /// The key's value at revision `at` (`LATEST` = now), if it existed.
    pub fn get(&self, key: &[u8], at: i64) -> Option<KeyValue> {
        let revs = self.index.get(key)?;
        self.value_at(revs, at)
    }

    fn value_at(&self, revs: &[Rev], at: i64) -> Option<KeyValue> {
        let n = revs.partition_point(|r| r.main <= at);
        let rev = revs.get(n.checked_sub(1)?)?;
        self.records.get(rev)?.kv.clone()
    }

    /// Live keys in `[key, range_end)` at `at`, in key order, without a
    /// limit; refuses (TooManyKeys) beyond `max_range_keys`.
    fn live_in_range(
        &self,
        key: &[u8],
        range_end: &[u8],
        limits: &Limits,
    ) -> Result<Vec<KeyValue>, LockError> {
        let mut out = Vec::new();
        for kv in self.iter_range(key, range_end, LATEST) {
            if out.len() == limits.max_range_keys {
                return Err(LockError::TooManyKeys {
                    count: out.len() + 1,
                    max: limits.max_range_keys,
                });
            }
            out.push(kv);
        }
        Ok(out)
    }

    /// Keys alive at `at` in the range, in key order.
    fn iter_range<'s>(
        &'s self,
        key: &[u8],
        range_end: &[u8],
        at: i64,
    ) -> impl Iterator<Item = KeyValue> + 's {
        let b = bounds(key, range_end);
        let empty = is_empty_range(&b);
        let it = (!empty).then(|| self.index.range(b)).into_iter().flatten();
        it.filter_map(move |(_, revs)| self.value_at(revs, at))
    }

    /// The live key with the lowest create revision under `name/`.
    pub fn first_created(&self, name: &[u8]) -> Option<KeyValue> {
        let mut prefix = name.to_vec();
        prefix.push(b'/');
        let end = prefix_end(&prefix);
        self.iter_range(&prefix, &end, LATEST)
            .min_by_key(|kv| kv.create_revision)
    }

    /// Evaluates one compare against the latest state.
    fn compare(&self, c: &Compare, limits: &Limits) -> Result<bool, LockError> {
        let kvs: Vec<KeyValue> = if c.range_end.is_empty() {
            self.get(&c.key, LATEST).into_iter().collect()
        } else {
            self.live_in_range(&c.key, &c.range_end, limits)?
        };
        if kvs.is_empty() {
            if matches!(c.target, CompareTarget::Value(_)) {
                return Ok(false);
            }
            return Ok(compare_kv(c, &KeyValue::default()));
        }
        Ok(kvs.iter().all(|kv| compare_kv(c, kv)))
    }

    /// A range read: `current` is the revision reads are judged against
    /// (future/compacted), `latest` what revision 0 means.
    pub fn range_at(
        &self,
        r: &RangeRequest,
        current: i64,
        latest: i64,
        limits: &Limits,
    ) -> Result<RangeResponse, LockError> {
        check_key(&r.key, limits)?;
        let at = if r.revision > 0 {
            if r.revision > current {
                return Err(LockError::FutureRevision {
                    revision: r.revision,
                    current,
                });
            }
            if r.revision < self.compact_revision {
                return Err(LockError::Compacted {
                    revision: r.revision,
                    compact_revision: self.compact_revision,
                });
            }
            r.revision
        } else {
            latest
        };
        let keep = |kv: &KeyValue| {
            (r.min_mod_revision <= 0 || kv.mod_revision >= r.min_mod_revision)
                && (r.max_mod_revision <= 0 || kv.mod_revision <= r.max_mod_revision)
                && (r.min_create_revision <= 0 || kv.create_revision >= r.min_create_revision)
                && (r.max_create_revision <= 0 || kv.create_revision <= r.max_create_revision)
        };
        let mut sort_order = r.sort_order;
        if r.sort_target != SortTarget::Key && sort_order == SortOrder::None {
            sort_order = SortOrder::Ascend;
        } else if r.sort_target == SortTarget::Key && sort_order == SortOrder::Ascend {
            sort_order = SortOrder::None;
        }
        let cap = if r.limit > 0 {
            (r.limit as u64).min(limits.max_range_keys as u64) as usize
        } else {
            limits.max_range_keys
        };
        let mut count: i64 = 0;
        let mut kvs: Vec<KeyValue> = Vec::new();
        if r.count_only {
            count = self
                .iter_range(&r.key, &r.range_end, at)
                .filter(|kv| keep(kv))
                .count() as i64;
            return Ok(RangeResponse {
                kvs,
                more: false,
                count,
            });
        }
        if sort_order == SortOrder::None {
            // Key order: keep only the first `cap`, count the rest.
            for kv in self
                .iter_range(&r.key, &r.range_end, at)
                .filter(|kv| keep(kv))
            {
                count += 1;
                if kvs.len() < cap {
                    kvs.push(kv);
                }
            }
        } else {
            // Sorting needs every match; bounded by max_range_keys.
            for kv in self
                .iter_range(&r.key, &r.range_end, at)
                .filter(|kv| keep(kv))
            {
                count += 1;
                if kvs.len() == limits.max_range_keys {
                    return Err(LockError::TooManyKeys {
                        count: kvs.len() + 1,
                        max: limits.max_range_keys,
                    });
                }
                kvs.push(kv);
            }
            sort_kvs(&mut kvs, sort_order, r.sort_target);
            kvs.truncate(cap);
        }
        if r.keys_only {
            for kv in &mut kvs {
                kv.value = Bytes::new();
            }
        }
        Ok(RangeResponse {
            more: (kvs.len() as i64) < count,
            kvs,
            count,
        })
    }

    /// Events with revision `>= start`, in `[key, range_end)`, at most
    /// `max_events` (whole revisions are never split unless one revision
    /// alone exceeds the cap).
    pub fn events_since(
        &self,
        start: i64,
        key: &[u8],
        range_end: &[u8],
        max_events: usize,
    ) -> Result<Vec<Event>, LockError> {
        if start <= self.compact_revision && self.compact_revision > 0 {
            return Err(LockError::Compacted {
                revision: start,
                compact_revision: self.compact_revision,
            });
        }
        let from = Rev {
            main: start.max(1),
            sub: 0,
        };
        let mut out = Vec::new();
        let mut last_main = 0;
        for (rev, rec) in self.records.range(from..) {
            if out.len() >= max_events && rev.main != last_main {
                break;
            }
            if !in_range(&rec.key, key, range_end) {
                continue;
            }
            last_main = rev.main;
            let prev = self.index.get(&rec.key).and_then(|revs| {
                let i = revs.partition_point(|r| r < rev);
                let p = revs.get(i.checked_sub(1)?)?;
                self.records.get(p)?.kv.clone()
            });
            let ev = match &rec.kv {
                Some(kv) => Event {
                    kind: EventType::Put,
                    kv: kv.clone(),
                    prev_kv: prev,
                },
                None => Event {
                    kind: EventType::Delete,
                    kv: KeyValue {
                        key: rec.key.clone(),
                        mod_revision: rev.main,
                        ..KeyValue::default()
                    },
                    prev_kv: prev,
                },
            };
            out.push(ev);
        }
        Ok(out)
    }

    /// Remaining TTL, granted TTL and keys of a lease.
    pub fn lease_time_to_live(&self, id: i64, with_keys: bool) -> LeaseTimeToLiveResponse {
        match self.leases.get(&id) {
            Some(l) => LeaseTimeToLiveResponse {
                id,
                ttl_ms: l.remaining_ms,
                granted_ttl_ms: l.ttl_ms,
                keys: if with_keys {
                    l.keys.iter().cloned().collect()
                } else {
                    Vec::new()
                },
            },
            None => LeaseTimeToLiveResponse {
                id,
                ttl_ms: -1,
                granted_ttl_ms: 0,
                keys: Vec::new(),
            },
        }
    }

    /// Every lease, in id order.
    pub fn lease_list(&self) -> Vec<LeaseStatus> {
        self.leases
            .iter()
            .map(|(id, l)| LeaseStatus {
                id: *id,
                ttl_ms: l.ttl_ms,
                remaining_ms: l.remaining_ms,
            })
            .collect()
    }

    /// Rebuilds `index` and the lease key sets from `records` and lease
    /// records; checks the invariants a snapshot or a disk must satisfy.
    pub fn rebuild(
        revision: i64,
        compact_revision: i64,
        records: BTreeMap<Rev, Record>,
        leases: Vec<LeaseRecord>,
    ) -> Result<State, String> {
        if revision < 0 || compact_revision < 0 || compact_revision > revision {
            return Err(format!(
                "bad revisions: revision {revision}, compact revision {compact_revision}"
            ));
        }
        let mut index: BTreeMap<Bytes, Vec<Rev>> = BTreeMap::new();
        for (rev, rec) in &records {
            if rev.main < 1 || rev.main > revision || rev.sub < 0 {
                return Err(format!("record at {rev:?} outside revision {revision}"));
            }
            if let Some(kv) = &rec.kv
                && (kv.key != rec.key || kv.mod_revision != rev.main)
            {
                return Err(format!("record at {rev:?} disagrees with its key/revision"));
            }
            index.entry(rec.key.clone()).or_default().push(*rev);
        }
        let mut lease_map: BTreeMap<i64, Lease> = BTreeMap::new();
        for l in leases {
            if l.id <= 0 || l.ttl_ms <= 0 || l.remaining_ms < 0 || l.remaining_ms > l.ttl_ms {
                return Err(format!("bad lease record {l:?}"));
            }
            if lease_map
                .insert(
                    l.id,
                    Lease {
                        ttl_ms: l.ttl_ms,
                        remaining_ms: l.remaining_ms,
                        keys: BTreeSet::new(),
                    },
                )
                .is_some()
            {
                return Err(format!("lease {} listed twice", l.id));
            }
        }
        let mut state = State {
            revision,
            compact_revision,
            records,
            index,
            leases: lease_map,
        };
        let live: Vec<KeyValue> = state
            .index
            .values()
            .filter_map(|revs| state.value_at(revs, LATEST))
            .collect();
        for kv in live {
            if kv.lease != 0 {
                let l = state.leases.get_mut(&kv.lease).ok_or_else(|| {
                    format!("key {:?} attached to missing lease {}", kv.key, kv.lease)
                })?;
                l.keys.insert(kv.key);
            }
        }
        Ok(state)
    }

    /// Lease records in id order.
    pub fn lease_records(&self) -> Vec<LeaseRecord> {
        self.leases
            .iter()
            .map(|(id, l)| LeaseRecord {
                id: *id,
                ttl_ms: l.ttl_ms,
                remaining_ms: l.remaining_ms,
            })
            .collect()
    }
}

fn compare_kv(c: &Compare, kv: &KeyValue) -> bool {
    use std::cmp::Ordering;
    let ord: Ordering = match &c.target {
        CompareTarget::Version(v) => kv.version.cmp(v),
        CompareTarget::CreateRevision(v) => kv.create_revision.cmp(v),
        CompareTarget::ModRevision(v) => kv.mod_revision.cmp(v),
        CompareTarget::Value(v) => kv.value.as_ref().cmp(v.as_ref()),
        CompareTarget::Lease(v) => kv.lease.cmp(v),
    };
    match c.result {
        CompareResult::Equal => ord == Ordering::Equal,
        CompareResult::NotEqual => ord != Ordering::Equal,
        CompareResult::Greater => ord == Ordering::Greater,
        CompareResult::Less => ord == Ordering::Less,
    }
}

/// Stable sort by the target; ties keep key order.
pub(crate) fn sort_kvs(kvs: &mut [KeyValue], order: SortOrder, target: SortTarget) {
    let key = |a: &KeyValue, b: &KeyValue| match target {
        SortTarget::Key => a.key.cmp(&b.key),
        SortTarget::Version => a.version.cmp(&b.version),
        SortTarget::Create => a.create_revision.cmp(&b.create_revision),
        SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
        SortTarget::Value => a.value.cmp(&b.value),
    };
    match order {
        SortOrder::None => {}
        SortOrder::Ascend => kvs.sort_by(key),
        SortOrder::Descend => kvs.sort_by(|a, b| key(b, a)),
    }
}
