//! Shared test helpers: random command generators and the reference model.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use ha_core::state_machine::{Applied as Entry, StateMachine};
use ha_core::types::LogId;
use ha_lock::LockMachine;
use ha_lock::api::*;
use proptest::prelude::*;

pub const KEYS: &[&str] = &["a", "ab", "b", "c", "d"];

pub fn key() -> impl Strategy<Value = Bytes> {
    proptest::sample::select(KEYS).prop_map(|k| Bytes::from_static(k.as_bytes()))
}

fn value() -> impl Strategy<Value = Bytes> {
    proptest::sample::select(&["", "x", "y", "zz"][..])
        .prop_map(|v| Bytes::from_static(v.as_bytes()))
}

fn range_end() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        3 => Just(Bytes::new()),
        1 => Just(Bytes::from_static(b"\0")),
        2 => key(),
    ]
}

fn put() -> impl Strategy<Value = PutRequest> {
    (key(), value(), 0i64..4, any::<bool>(), 0u8..8).prop_map(
        |(key, value, lease, prev_kv, flags)| {
            let ignore_value = flags == 1 || flags == 3;
            let ignore_lease = flags == 2 || flags == 3;
            PutRequest {
                key,
                value: if ignore_value && flags != 3 {
                    Bytes::new()
                } else {
                    value
                },
                lease: if ignore_lease { 0 } else { lease },
                prev_kv,
                ignore_value,
                ignore_lease,
            }
        },
    )
}

fn delete() -> impl Strategy<Value = DeleteRangeRequest> {
    (key(), range_end(), any::<bool>()).prop_map(|(key, range_end, prev_kv)| DeleteRangeRequest {
        key,
        range_end,
        prev_kv,
    })
}

pub fn range() -> impl Strategy<Value = RangeRequest> {
    (
        key(),
        range_end(),
        -1i64..4,
        0i64..12,
        (0u8..3, 0u8..5, any::<bool>(), any::<bool>()),
        (0i64..8, 0i64..8, 0i64..8, 0i64..8),
    )
        .prop_map(
            |(key, range_end, limit, revision, (so, st, keys_only, count_only), f)| RangeRequest {
                key,
                range_end,
                limit,
                revision,
                sort_order: [SortOrder::None, SortOrder::Ascend, SortOrder::Descend][so as usize],
                sort_target: [
                    SortTarget::Key,
                    SortTarget::Version,
                    SortTarget::Create,
                    SortTarget::Mod,
                    SortTarget::Value,
                ][st as usize],
                keys_only,
                count_only,
                min_mod_revision: f.0,
                max_mod_revision: if f.1 > 0 { f.1 + 4 } else { 0 },
                min_create_revision: f.2,
                max_create_revision: if f.3 > 0 { f.3 + 4 } else { 0 },
            },
        )
}

fn compare() -> impl Strategy<Value = Compare> {
    (
        key(),
        prop_oneof![4 => Just(Bytes::new()), 1 => key()],
        0u8..4,
        0u8..5,
        0i64..8,
        value(),
    )
        .prop_map(|(key, range_end, r, t, n, v)| Compare {
            key,
            range_end,
            result: [
                CompareResult::Equal,
                CompareResult::Greater,
                CompareResult::Less,
                CompareResult::NotEqual,
            ][r as usize],
            target: match t {
                0 => CompareTarget::Version(n % 3),
                1 => CompareTarget::CreateRevision(n),
                2 => CompareTarget::ModRevision(n),
                3 => CompareTarget::Value(v),
                _ => CompareTarget::Lease(n % 4),
            },
        })
}

fn flat_op() -> impl Strategy<Value = RequestOp> {
    prop_oneof![
        3 => put().prop_map(RequestOp::Put),
        1 => delete().prop_map(RequestOp::DeleteRange),
        1 => range().prop_map(RequestOp::Range),
    ]
}

fn txn() -> impl Strategy<Value = TxnRequest> {
    let inner = (
        proptest::collection::vec(compare(), 0..2),
        proptest::collection::vec(flat_op(), 0..3),
        proptest::collection::vec(flat_op(), 0..3),
    )
        .prop_map(|(compare, success, failure)| TxnRequest {
            compare,
            success,
            failure,
        });
    let op = prop_oneof![5 => flat_op(), 1 => inner.prop_map(RequestOp::Txn)];
    (
        proptest::collection::vec(compare(), 0..3),
        proptest::collection::vec(op.clone(), 0..4),
        proptest::collection::vec(op, 0..3),
    )
        .prop_map(|(compare, success, failure)| TxnRequest {
            compare,
            success,
            failure,
        })
}

/// Commands of the KV + lease subset the model covers.
pub fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        8 => put().prop_map(Command::Put),
        3 => delete().prop_map(Command::DeleteRange),
        5 => txn().prop_map(Command::Txn),
        1 => (0i64..10).prop_map(|revision| Command::Compact(CompactionRequest { revision })),
        2 => (prop_oneof![4 => 1i64..4, 1 => Just(-1i64)], prop_oneof![Just(0i64), Just(1000), Just(-5)])
            .prop_map(|(id, ttl_ms)| Command::LeaseGrant(LeaseGrantRequest { id, ttl_ms })),
        1 => (0i64..4).prop_map(|id| Command::LeaseRevoke { id }),
        1 => (0i64..4).prop_map(|id| Command::LeaseExpire { id }),
        1 => (0i64..4).prop_map(|id| Command::LeaseKeepAlive { id }),
    ]
}

// ------------------------------------------------------------- model ----

/// The reference model: a full copy of the key space per revision.
#[derive(Clone, Debug, Default)]
pub struct Model {
    /// `revs[r]` = key space at revision r (revs[0] and revs[1] empty: a
    /// fresh store is at revision 1, as etcd).
    pub revs: Vec<BTreeMap<Bytes, KeyValue>>,
    pub compact: i64,
    /// lease id -> (ttl, remaining)
    pub leases: BTreeMap<i64, (i64, i64)>,
    /// every event, in order
    pub events: Vec<Event>,
}

fn in_range(k: &[u8], key: &[u8], end: &[u8]) -> bool {
    if end.is_empty() {
        k == key
    } else if end == b"\0" {
        k >= key
    } else {
        k >= key && k < end
    }
}

/// One command's working copy.
struct Work<'m> {
    model: &'m Model,
    base: i64,
    cur: BTreeMap<Bytes, KeyValue>,
    events: Vec<Event>,
}

impl Work<'_> {
    fn rev(&self) -> i64 {
        self.base + 1
    }
    fn write(&mut self, key: &Bytes, kv: Option<KeyValue>) {
        let prev = self.cur.get(key).cloned();
        match kv {
            Some(kv) => {
                self.events.push(Event {
                    kind: EventType::Put,
                    kv: kv.clone(),
                    prev_kv: prev,
                });
                self.cur.insert(key.clone(), kv);
            }
            None => {
                self.events.push(Event {
                    kind: EventType::Delete,
                    kv: KeyValue {
                        key: key.clone(),
                        mod_revision: self.rev(),
                        ..Default::default()
                    },
                    prev_kv: prev,
                });
                self.cur.remove(key);
            }
        }
    }
    fn put(&mut self, p: &PutRequest) -> Result<PutResponse, LockError> {
        if p.key.is_empty() {
            return Err(LockError::KeyEmpty);
        }
        if p.ignore_value && !p.value.is_empty() {
            return Err(LockError::ValueProvided);
        }
        if p.ignore_lease && p.lease != 0 {
            return Err(LockError::LeaseProvided);
        }
        if p.lease != 0 && !self.model.leases.contains_key(&p.lease) {
            return Err(LockError::LeaseNotFound { id: p.lease });
        }
        let prev = self.cur.get(&p.key).cloned();
        if (p.ignore_value || p.ignore_lease) && prev.is_none() {
            return Err(LockError::KeyNotFound);
        }
        let rev = self.rev();
        let kv = KeyValue {
            key: p.key.clone(),
            create_revision: prev.as_ref().map_or(rev, |k| k.create_revision),
            mod_revision: rev,
            version: prev.as_ref().map_or(1, |k| k.version + 1),
            value: if p.ignore_value {
                prev.as_ref().map(|k| k.value.clone()).unwrap_or_default()
            } else {
                p.value.clone()
            },
            lease: if p.ignore_lease {
                prev.as_ref().map_or(0, |k| k.lease)
            } else {
                p.lease
            },
        };
        self.write(&p.key, Some(kv));
        Ok(PutResponse {
            prev_kv: if p.prev_kv { prev } else { None },
        })
    }
    fn delete(&mut self, d: &DeleteRangeRequest) -> Result<DeleteRangeResponse, LockError> {
        if d.key.is_empty() {
            return Err(LockError::KeyEmpty);
        }
        let victims: Vec<KeyValue> = self
            .cur
            .values()
            .filter(|kv| in_range(&kv.key, &d.key, &d.range_end))
            .cloned()
            .collect();
        for kv in &victims {
            self.write(&kv.key, None);
        }
        Ok(DeleteRangeResponse {
            deleted: victims.len() as i64,
            prev_kvs: if d.prev_kv { victims } else { Vec::new() },
        })
    }
    fn compare(&self, c: &Compare) -> bool {
        let kvs: Vec<&KeyValue> = self
            .cur
            .values()
            .filter(|kv| in_range(&kv.key, &c.key, &c.range_end))
            .collect();
        let zero = KeyValue::default();
        if kvs.is_empty() && matches!(c.target, CompareTarget::Value(_)) {
            return false;
        }
        let check = |kv: &KeyValue| {
            let ord = match &c.target {
                CompareTarget::Version(v) => kv.version.cmp(v),
                CompareTarget::CreateRevision(v) => kv.create_revision.cmp(v),
                CompareTarget::ModRevision(v) => kv.mod_revision.cmp(v),
                CompareTarget::Value(v) => kv.value.cmp(v),
                CompareTarget::Lease(v) => kv.lease.cmp(v),
            };
            match c.result {
                CompareResult::Equal => ord.is_eq(),
                CompareResult::NotEqual => ord.is_ne(),
                CompareResult::Greater => ord.is_gt(),
                CompareResult::Less => ord.is_lt(),
            }
        };
        if kvs.is_empty() {
            check(&zero)
        } else {
            kvs.into_iter().all(check)
        }
    }
    fn txn(&mut self, t: &TxnRequest) -> Result<TxnResponse, LockError> {
        let ok = t.compare.iter().all(|c| self.compare(c));
        let mut responses = Vec::new();
        for op in if ok { &t.success } else { &t.failure } {
            responses.push(match op {
                RequestOp::Put(p) => ResponseOp::Put(self.put(p)?),
                RequestOp::DeleteRange(d) => ResponseOp::DeleteRange(self.delete(d)?),
                RequestOp::Range(r) => {
                    let view = if r.revision > 0 {
                        None
                    } else {
                        Some(&self.cur)
                    };
                    ResponseOp::Range(self.model.range_in(r, self.base, view)?)
                }
                RequestOp::Txn(t) => ResponseOp::Txn(self.txn(t)?),
            });
        }
        Ok(TxnResponse {
            succeeded: ok,
            responses,
        })
    }
}

/// etcd's duplicate-key rule, written as sets: returns (puts, deletes).
/// Puts and delete ranges of a branch.
type Writes = (BTreeSet<Bytes>, Vec<(Bytes, Bytes)>);

fn dup_check(ops: &[RequestOp]) -> Result<Writes, LockError> {
    let mut dels: Vec<(Bytes, Bytes)> = Vec::new();
    for op in ops {
        if let RequestOp::DeleteRange(d) = op {
            dels.push((d.key.clone(), d.range_end.clone()));
        }
    }
    let covered =
        |dels: &Vec<(Bytes, Bytes)>, k: &Bytes| dels.iter().any(|(s, e)| in_range(k, s, e));
    let mut puts = BTreeSet::new();
    for op in ops {
        if let RequestOp::Txn(t) = op {
            let (tp, td) = dup_check(&t.success)?;
            let (ep, ed) = dup_check(&t.failure)?;
            for k in &tp {
                if puts.contains(k) || covered(&dels, k) {
                    return Err(LockError::DuplicateKey);
                }
                puts.insert(k.clone());
            }
            for k in &ep {
                if (puts.contains(k) && !tp.contains(k)) || covered(&dels, k) {
                    return Err(LockError::DuplicateKey);
                }
                puts.insert(k.clone());
            }
            dels.extend(td);
            dels.extend(ed);
        }
    }
    for op in ops {
        if let RequestOp::Put(p) = op {
            if puts.contains(&p.key) || covered(&dels, &p.key) {
                return Err(LockError::DuplicateKey);
            }
            puts.insert(p.key.clone());
        }
    }
    Ok((puts, dels))
}

impl Model {
    pub fn new() -> Self {
        Model {
            revs: vec![BTreeMap::new(), BTreeMap::new()],
            ..Default::default()
        }
    }
    pub fn revision(&self) -> i64 {
        self.revs.len() as i64 - 1
    }
    fn latest(&self) -> &BTreeMap<Bytes, KeyValue> {
        &self.revs[self.revs.len() - 1]
    }

    /// A range read; `view` overrides the key space (a txn's own writes).
    pub fn range_in(
        &self,
        r: &RangeRequest,
        current: i64,
        view: Option<&BTreeMap<Bytes, KeyValue>>,
    ) -> Result<RangeResponse, LockError> {
        if r.key.is_empty() {
            return Err(LockError::KeyEmpty);
        }
        let space = if r.revision > 0 {
            if r.revision > current {
                return Err(LockError::FutureRevision {
                    revision: r.revision,
                    current,
                });
            }
            if r.revision < self.compact {
                return Err(LockError::Compacted {
                    revision: r.revision,
                    compact_revision: self.compact,
                });
            }
            &self.revs[r.revision as usize]
        } else {
            view.unwrap_or(self.latest())
        };
        let mut kvs: Vec<KeyValue> = space
            .values()
            .filter(|kv| in_range(&kv.key, &r.key, &r.range_end))
            .filter(|kv| r.min_mod_revision <= 0 || kv.mod_revision >= r.min_mod_revision)
            .filter(|kv| r.max_mod_revision <= 0 || kv.mod_revision <= r.max_mod_revision)
            .filter(|kv| r.min_create_revision <= 0 || kv.create_revision >= r.min_create_revision)
            .filter(|kv| r.max_create_revision <= 0 || kv.create_revision <= r.max_create_revision)
            .cloned()
            .collect();
        let count = kvs.len() as i64;
        if r.count_only {
            return Ok(RangeResponse {
                kvs: Vec::new(),
                more: false,
                count,
            });
        }
        let target = |kv: &KeyValue| -> (i64, Bytes) {
            match r.sort_target {
                SortTarget::Key => (0, kv.key.clone()),
                SortTarget::Version => (kv.version, Bytes::new()),
                SortTarget::Create => (kv.create_revision, Bytes::new()),
                SortTarget::Mod => (kv.mod_revision, Bytes::new()),
                SortTarget::Value => (0, kv.value.clone()),
            }
        };
        let order = match (r.sort_order, r.sort_target) {
            (SortOrder::None, SortTarget::Key) => SortOrder::None,
            (SortOrder::None, _) => SortOrder::Ascend,
            (o, _) => o,
        };
        match order {
            SortOrder::None => {}
            SortOrder::Ascend => kvs.sort_by_key(|kv| target(kv)),
            SortOrder::Descend => kvs.sort_by_key(|kv| std::cmp::Reverse(target(kv))),
        }
        if r.limit > 0 {
            kvs.truncate(r.limit as usize);
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

    /// Applies one command; returns (revision after, result).
    pub fn apply(&mut self, c: &Command) -> Applied {
        let base = self.revision();
        let mut w = Work {
            model: self,
            base,
            cur: self.latest().clone(),
            events: Vec::new(),
        };
        let result = match c {
            Command::Put(p) => w.put(p).map(Response::Put),
            Command::DeleteRange(d) => w.delete(d).map(Response::DeleteRange),
            Command::Txn(t) => dup_check(&t.success)
                .and_then(|_| dup_check(&t.failure))
                .and_then(|_| w.txn(t))
                .map(Response::Txn),
            Command::Compact(c) => {
                if c.revision <= self.compact {
                    Err(LockError::Compacted {
                        revision: c.revision,
                        compact_revision: self.compact,
                    })
                } else if c.revision > base {
                    Err(LockError::FutureRevision {
                        revision: c.revision,
                        current: base,
                    })
                } else {
                    Ok(Response::Compact)
                }
            }
            Command::LeaseGrant(g) => {
                if g.id < 0 {
                    Err(LockError::LeaseIdInvalid { id: g.id })
                } else if g.ttl_ms < 1 {
                    Err(LockError::LeaseTtlInvalid { ttl_ms: g.ttl_ms })
                } else if g.id == 0 {
                    panic!("the model does not pick lease ids")
                } else if self.leases.contains_key(&g.id) {
                    Err(LockError::LeaseExists { id: g.id })
                } else {
                    Ok(Response::LeaseGrant(LeaseGrantResponse {
                        id: g.id,
                        ttl_ms: g.ttl_ms,
                    }))
                }
            }
            Command::LeaseRevoke { id } | Command::LeaseExpire { id } => {
                if self.leases.contains_key(id) {
                    let keys: Vec<Bytes> = w
                        .cur
                        .values()
                        .filter(|kv| kv.lease == *id)
                        .map(|kv| kv.key.clone())
                        .collect();
                    for k in keys {
                        w.write(&k, None);
                    }
                    Ok(if matches!(c, Command::LeaseRevoke { .. }) {
                        Response::LeaseRevoke
                    } else {
                        Response::LeaseExpire
                    })
                } else {
                    Err(LockError::LeaseNotFound { id: *id })
                }
            }
            Command::LeaseKeepAlive { id } => match self.leases.get(id) {
                Some((ttl, _)) => Ok(Response::LeaseKeepAlive(LeaseKeepAliveResponse {
                    id: *id,
                    ttl_ms: *ttl,
                })),
                None => Err(LockError::LeaseNotFound { id: *id }),
            },
            other => panic!("the model does not cover {other:?}"),
        };
        let (cur, events) = (w.cur, w.events);
        if result.is_ok() {
            match c {
                Command::Compact(cr) => self.compact = cr.revision,
                Command::LeaseGrant(g) => {
                    self.leases.insert(g.id, (g.ttl_ms, g.ttl_ms));
                }
                Command::LeaseRevoke { id } | Command::LeaseExpire { id } => {
                    self.leases.remove(id);
                }
                Command::LeaseKeepAlive { id } => {
                    if let Some(l) = self.leases.get_mut(id) {
                        l.1 = l.0;
                    }
                }
                _ => {}
            }
            if !events.is_empty() {
                self.revs.push(cur);
                self.events.extend(events);
            }
        }
        Applied {
            revision: self.revision(),
            result,
        }
    }
}

/// Applies a command to a machine at `index`; decodes the outcome.
pub fn apply(m: &mut LockMachine, index: u64, c: &Command) -> Applied {
    let out = m
        .apply(LogId::new(1, index), Entry::Command(&encode_command(c)))
        .expect("apply");
    decode_applied(&out).expect("decode applied")
}

/// All snapshot chunks, concatenated.
pub fn snapshot_bytes(m: &mut LockMachine) -> Vec<u8> {
    let mut s = m.snapshot().expect("snapshot");
    let mut out = Vec::new();
    while let Some(c) = s.next_chunk().expect("chunk") {
        out.extend_from_slice(&c);
    }
    out
}

pub fn all_keys() -> RangeRequest {
    RangeRequest {
        key: Bytes::from_static(b"\0"),
        range_end: Bytes::from_static(b"\0"),
        ..Default::default()
    }
}

fn name() -> impl Strategy<Value = Bytes> {
    proptest::sample::select(&["l1", "l2"][..]).prop_map(|n| Bytes::from_static(n.as_bytes()))
}

/// Every command kind, including locks, elections and machine-picked lease
/// ids (for tests that compare two machines, not machine and model).
pub fn any_command() -> impl Strategy<Value = Command> {
    let lease = 1i64..4;
    prop_oneof![
        10 => command(),
        2 => (0i64..4).prop_map(|_| Command::LeaseGrant(LeaseGrantRequest { id: 0, ttl_ms: 500 })),
        3 => (name(), lease.clone()).prop_map(|(name, lease)| Command::Lock { name, lease }),
        2 => (name(), lease.clone()).prop_map(|(name, lease)| Command::Unlock { key: owner_key(&name, lease) }),
        2 => (name(), lease.clone(), value()).prop_map(|(name, lease, value)| Command::Campaign { name, lease, value }),
        1 => (name(), lease.clone(), 0i64..20, value()).prop_map(|(name, lease, rev, value)| Command::Proclaim {
            leader: LeaderKey { key: owner_key(&name, lease), name, rev, lease },
            value,
        }),
        1 => (name(), lease, 0i64..20).prop_map(|(name, lease, rev)| Command::Resign {
            leader: LeaderKey { key: owner_key(&name, lease), name, rev, lease },
        }),
        1 => proptest::collection::vec((1i64..4, 0i64..2000), 0..4).prop_map(|v| Command::LeaseCheckpoint(
            v.into_iter().map(|(id, remaining_ms)| LeaseCheckpoint { id, remaining_ms }).collect()
        )),
    ]
}
