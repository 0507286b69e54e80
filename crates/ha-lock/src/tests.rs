//! Unit tests of the machine through its public surface (commands as bytes).

use bytes::Bytes;
use ha_core::state_machine::{Applied as Entry, StateMachine, VecChunks};
use ha_core::types::{LogId, Membership, NodeId};

use crate::LockMachine;
use crate::api::*;
use crate::machine::{snapshot_bytes, state_fingerprint};

pub(crate) struct H {
    pub m: LockMachine,
    pub index: u64,
}

pub(crate) fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

impl H {
    pub fn new() -> Self {
        Self::with(Limits::default())
    }
    pub fn with(limits: Limits) -> Self {
        H {
            m: LockMachine::in_memory(limits).unwrap(),
            index: 0,
        }
    }
    pub fn apply(&mut self, c: Command) -> Applied {
        self.index += 1;
        let out = self
            .m
            .apply(
                LogId::new(1, self.index),
                Entry::Command(&encode_command(&c)),
            )
            .unwrap();
        decode_applied(&out).unwrap()
    }
    pub fn ok(&mut self, c: Command) -> Response {
        let a = self.apply(c.clone());
        match a.result {
            Ok(r) => r,
            Err(e) => panic!("{c:?} failed: {e}"),
        }
    }
    pub fn err(&mut self, c: Command) -> LockError {
        let before = state_fingerprint(&self.m);
        let rev = self.m.current_revision();
        let a = self.apply(c.clone());
        let e = match a.result {
            Ok(r) => panic!("{c:?} succeeded: {r:?}"),
            Err(e) => e,
        };
        assert_eq!(a.revision, rev);
        assert_eq!(
            self.m.current_revision(),
            rev,
            "an error moved the revision"
        );
        // Only last_applied may differ.
        assert_eq!(
            before,
            state_fingerprint(&self.m),
            "an error changed the state: {e}"
        );
        e
    }
    pub fn put(&mut self, k: &str, v: &str) -> i64 {
        self.ok(Command::Put(PutRequest {
            key: b(k),
            value: b(v),
            ..Default::default()
        }));
        self.m.current_revision()
    }
    pub fn put_lease(&mut self, k: &str, v: &str, lease: i64) {
        self.ok(Command::Put(PutRequest {
            key: b(k),
            value: b(v),
            lease,
            ..Default::default()
        }));
    }
    pub fn get(&self, k: &str) -> Option<KeyValue> {
        self.m
            .range(&RangeRequest {
                key: b(k),
                ..Default::default()
            })
            .unwrap()
            .kvs
            .pop()
    }
    pub fn grant(&mut self, ttl_ms: i64) -> i64 {
        match self.ok(Command::LeaseGrant(LeaseGrantRequest { id: 0, ttl_ms })) {
            Response::LeaseGrant(g) => g.id,
            r => panic!("unexpected {r:?}"),
        }
    }
    pub fn lock(&mut self, name: &str, lease: i64) -> LockResponse {
        match self.ok(Command::Lock {
            name: b(name),
            lease,
        }) {
            Response::Lock(l) => l,
            r => panic!("unexpected {r:?}"),
        }
    }
}

fn all() -> RangeRequest {
    RangeRequest {
        key: Bytes::from_static(b"\0"),
        range_end: Bytes::from_static(b"\0"),
        ..Default::default()
    }
}

#[test]
fn put_tracks_revisions_and_versions() {
    let mut h = H::new();
    assert_eq!(
        h.m.current_revision(),
        1,
        "a fresh store is at revision 1, as etcd"
    );
    assert_eq!(h.put("a", "1"), 2);
    assert_eq!(h.put("b", "1"), 3);
    assert_eq!(h.put("a", "2"), 4);
    let a = h.get("a").unwrap();
    assert_eq!(
        (a.create_revision, a.mod_revision, a.version, a.value),
        (2, 4, 2, b("2"))
    );
    h.ok(Command::DeleteRange(DeleteRangeRequest {
        key: b("a"),
        ..Default::default()
    }));
    assert_eq!(h.m.current_revision(), 5);
    assert_eq!(h.put("a", "3"), 6);
    let a = h.get("a").unwrap();
    assert_eq!((a.create_revision, a.version), (6, 1), "a new generation");
    // deleting nothing does not move the revision
    let r = h.ok(Command::DeleteRange(DeleteRangeRequest {
        key: b("zz"),
        ..Default::default()
    }));
    assert_eq!(r, Response::DeleteRange(DeleteRangeResponse::default()));
    assert_eq!(h.m.current_revision(), 6);
}

#[test]
fn range_options() {
    let mut h = H::new();
    h.put("a", "z"); // 2
    h.put("b", "y"); // 3
    h.put("c", "x"); // 4
    h.put("a", "w"); // 5
    let r =
        h.m.range(&RangeRequest {
            revision: 3,
            ..all()
        })
        .unwrap();
    assert_eq!(
        r.kvs.iter().map(|k| k.key.clone()).collect::<Vec<_>>(),
        vec![b("a"), b("b")]
    );
    assert_eq!(r.kvs[0].value, b("z"));
    let r = h.m.range(&RangeRequest { limit: 2, ..all() }).unwrap();
    assert_eq!((r.kvs.len(), r.more, r.count), (2, true, 3));
    let r =
        h.m.range(&RangeRequest {
            sort_target: SortTarget::Value,
            sort_order: SortOrder::Descend,
            limit: 1,
            ..all()
        })
        .unwrap();
    assert_eq!(r.kvs[0].key, b("b"));
    let r =
        h.m.range(&RangeRequest {
            sort_target: SortTarget::Mod,
            ..all()
        })
        .unwrap();
    assert_eq!(
        r.kvs.iter().map(|k| k.mod_revision).collect::<Vec<_>>(),
        vec![3, 4, 5]
    );
    let r =
        h.m.range(&RangeRequest {
            count_only: true,
            ..all()
        })
        .unwrap();
    assert_eq!((r.kvs.len(), r.count, r.more), (0, 3, false));
    let r =
        h.m.range(&RangeRequest {
            keys_only: true,
            ..all()
        })
        .unwrap();
    assert!(r.kvs.iter().all(|k| k.value.is_empty()));
    let r =
        h.m.range(&RangeRequest {
            min_mod_revision: 4,
            max_create_revision: 3,
            ..all()
        })
        .unwrap();
    assert_eq!(
        r.kvs.iter().map(|k| k.key.clone()).collect::<Vec<_>>(),
        vec![b("a")]
    );
    let r =
        h.m.range(&RangeRequest {
            key: b("b"),
            range_end: b("c"),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(r.count, 1);
    // inverted range is empty, not a panic
    let r =
        h.m.range(&RangeRequest {
            key: b("c"),
            range_end: b("a"),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(r.count, 0);
    assert_eq!(
        h.m.range(&RangeRequest {
            revision: 9,
            ..all()
        }),
        Err(LockError::FutureRevision {
            revision: 9,
            current: 5
        })
    );
}

#[test]
fn put_ignore_value_and_lease() {
    let mut h = H::new();
    let l = h.grant(5000);
    assert_eq!(
        h.err(Command::Put(PutRequest {
            key: b("k"),
            ignore_value: true,
            ..Default::default()
        })),
        LockError::KeyNotFound
    );
    assert_eq!(
        h.err(Command::Put(PutRequest {
            key: b("k"),
            ignore_lease: true,
            ..Default::default()
        })),
        LockError::KeyNotFound
    );
    h.put_lease("k", "v", l);
    h.ok(Command::Put(PutRequest {
        key: b("k"),
        ignore_value: true,
        ..Default::default()
    }));
    let kv = h.get("k").unwrap();
    assert_eq!((kv.value, kv.lease, kv.version), (b("v"), 0, 2));
    h.ok(Command::Put(PutRequest {
        key: b("k"),
        lease: l,
        ignore_value: true,
        ..Default::default()
    }));
    h.ok(Command::Put(PutRequest {
        key: b("k"),
        value: b("w"),
        ignore_lease: true,
        prev_kv: true,
        ..Default::default()
    }));
    let kv = h.get("k").unwrap();
    assert_eq!((kv.value, kv.lease), (b("w"), l));
    assert_eq!(
        h.err(Command::Put(PutRequest {
            key: b("k"),
            value: b("x"),
            ignore_value: true,
            ..Default::default()
        })),
        LockError::ValueProvided
    );
    assert_eq!(
        h.err(Command::Put(PutRequest {
            key: b("k"),
            lease: l,
            ignore_lease: true,
            ..Default::default()
        })),
        LockError::LeaseProvided
    );
}

#[test]
fn bad_requests_change_nothing() {
    let limits = Limits {
        max_key_bytes: 8,
        max_value_bytes: 8,
        max_txn_ops: 3,
        max_request_bytes: 200,
        ..Limits::default()
    };
    let mut h = H::with(limits);
    h.put("a", "1");
    h.put("b", "1");
    h.ok(Command::Compact(CompactionRequest { revision: 3 }));
    let e = h.err(Command::Put(PutRequest {
        key: b("123456789"),
        ..Default::default()
    }));
    assert_eq!(e, LockError::KeyTooLarge { size: 9, max: 8 });
    let e = h.err(Command::Put(PutRequest {
        key: b("k"),
        value: b("123456789"),
        ..Default::default()
    }));
    assert_eq!(e, LockError::ValueTooLarge { size: 9, max: 8 });
    assert_eq!(
        h.err(Command::Put(PutRequest::default())),
        LockError::KeyEmpty
    );
    assert_eq!(
        h.err(Command::Put(PutRequest {
            key: b("k"),
            lease: 77,
            ..Default::default()
        })),
        LockError::LeaseNotFound { id: 77 }
    );
    let put = |k: &str| {
        RequestOp::Put(PutRequest {
            key: b(k),
            ..Default::default()
        })
    };
    assert_eq!(
        h.err(Command::Txn(TxnRequest {
            success: vec![put("x"), put("x")],
            ..Default::default()
        })),
        LockError::DuplicateKey
    );
    assert_eq!(
        h.err(Command::Txn(TxnRequest {
            success: vec![
                RequestOp::DeleteRange(DeleteRangeRequest {
                    key: b("a"),
                    range_end: b("z"),
                    ..Default::default()
                }),
                put("x")
            ],
            ..Default::default()
        })),
        LockError::DuplicateKey
    );
    assert_eq!(
        h.err(Command::Txn(TxnRequest {
            success: vec![put("p"), put("q"), put("r"), put("s")],
            ..Default::default()
        })),
        LockError::TooManyOps { ops: 4, max: 3 }
    );
    // a txn that fails half way (range at a compacted revision after a put)
    assert_eq!(
        h.err(Command::Txn(TxnRequest {
            success: vec![
                put("y"),
                RequestOp::Range(RangeRequest {
                    key: b("a"),
                    revision: 1,
                    ..Default::default()
                })
            ],
            ..Default::default()
        })),
        LockError::Compacted {
            revision: 1,
            compact_revision: 3
        }
    );
    assert_eq!(
        h.err(Command::Compact(CompactionRequest { revision: 1 })),
        LockError::Compacted {
            revision: 1,
            compact_revision: 3
        }
    );
    assert_eq!(
        h.err(Command::Compact(CompactionRequest { revision: 5 })),
        LockError::FutureRevision {
            revision: 5,
            current: 3
        }
    );
    assert_eq!(
        h.err(Command::LeaseRevoke { id: 5 }),
        LockError::LeaseNotFound { id: 5 }
    );
    assert_eq!(
        h.err(Command::Lock {
            name: b("l"),
            lease: 5
        }),
        LockError::LeaseNotFound { id: 5 }
    );
    let e = h.err(Command::Put(PutRequest {
        key: b("k"),
        value: Bytes::from(vec![0u8; 300]),
        ..Default::default()
    }));
    assert!(
        matches!(e, LockError::RequestTooLarge { max: 200, .. }),
        "{e}"
    );
    // garbage bytes
    let before = h.m.current_revision();
    h.index += 1;
    let out =
        h.m.apply(LogId::new(1, h.index), Entry::Command(b"garbage bytes"))
            .unwrap();
    assert!(matches!(
        decode_applied(&out).unwrap().result,
        Err(LockError::Malformed(_))
    ));
    assert_eq!(h.m.current_revision(), before);
}

#[test]
fn txn_compares_and_nested() {
    let mut h = H::new();
    h.put("k", "v"); // 2
    let cas = |expect_mod: i64, value: &str| {
        Command::Txn(TxnRequest {
            compare: vec![Compare {
                key: b("k"),
                target: CompareTarget::ModRevision(expect_mod),
                ..Default::default()
            }],
            success: vec![RequestOp::Put(PutRequest {
                key: b("k"),
                value: b(value),
                ..Default::default()
            })],
            failure: vec![RequestOp::Range(RangeRequest {
                key: b("k"),
                ..Default::default()
            })],
        })
    };
    let Response::Txn(t) = h.ok(cas(2, "w")) else {
        panic!()
    };
    assert!(t.succeeded);
    let Response::Txn(t) = h.ok(cas(2, "x")) else {
        panic!()
    };
    assert!(!t.succeeded);
    let ResponseOp::Range(r) = &t.responses[0] else {
        panic!()
    };
    assert_eq!(r.kvs[0].value, b("w"));
    // compares on absent keys
    let absent = |target| {
        Command::Txn(TxnRequest {
            compare: vec![Compare {
                key: b("nope"),
                target,
                ..Default::default()
            }],
            ..Default::default()
        })
    };
    let Response::Txn(t) = h.ok(absent(CompareTarget::Version(0))) else {
        panic!()
    };
    assert!(t.succeeded);
    let Response::Txn(t) = h.ok(absent(CompareTarget::Value(Bytes::new()))) else {
        panic!()
    };
    assert!(!t.succeeded, "a value compare on an absent key is false");
    // nested txn, puts of one key in both nested branches are fine
    let nested = TxnRequest {
        compare: vec![Compare {
            key: b("k"),
            result: CompareResult::Greater,
            target: CompareTarget::Version(1),
            ..Default::default()
        }],
        success: vec![RequestOp::Put(PutRequest {
            key: b("n"),
            value: b("s"),
            ..Default::default()
        })],
        failure: vec![RequestOp::Put(PutRequest {
            key: b("n"),
            value: b("f"),
            ..Default::default()
        })],
    };
    let rev = h.m.current_revision();
    let Response::Txn(t) = h.ok(Command::Txn(TxnRequest {
        success: vec![
            RequestOp::Put(PutRequest {
                key: b("o"),
                ..Default::default()
            }),
            RequestOp::Txn(nested),
        ],
        ..Default::default()
    })) else {
        panic!()
    };
    assert!(t.succeeded);
    assert_eq!(h.get("n").unwrap().value, b("s"));
    assert_eq!(h.m.current_revision(), rev + 1, "one revision per txn");
    assert_eq!(
        h.get("n").unwrap().mod_revision,
        h.get("o").unwrap().mod_revision
    );
}

#[test]
fn compaction_and_events() {
    let mut h = H::new();
    let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = events.clone();
    h.m.set_event_sink(Box::new(move |rev, evs| {
        sink.lock().unwrap().push((rev, evs.to_vec()))
    }));
    h.put("a", "1"); // 2
    h.put("a", "2"); // 3
    h.ok(Command::DeleteRange(DeleteRangeRequest {
        key: b("a"),
        ..Default::default()
    })); // 4
    h.put("b", "1"); // 5
    let seen = events.lock().unwrap().clone();
    assert_eq!(seen.len(), 4);
    assert_eq!(seen[2].0, 4);
    let del = &seen[2].1[0];
    assert_eq!(del.kind, EventType::Delete);
    assert_eq!(
        del.kv,
        KeyValue {
            key: b("a"),
            mod_revision: 4,
            ..Default::default()
        }
    );
    assert_eq!(del.prev_kv.as_ref().unwrap().value, b("2"));
    let hist = h.m.events_since(1, b"\0", b"\0", 100).unwrap();
    let flat: Vec<Event> = seen.iter().flat_map(|(_, e)| e.clone()).collect();
    assert_eq!(hist, flat, "history equals the live events");
    h.ok(Command::Compact(CompactionRequest { revision: 4 }));
    assert!(
        h.m.range(&RangeRequest {
            revision: 3,
            ..all()
        })
        .is_err()
    );
    let r =
        h.m.range(&RangeRequest {
            revision: 4,
            ..all()
        })
        .unwrap();
    assert_eq!(r.count, 0);
    assert!(matches!(
        h.m.events_since(4, b"\0", b"\0", 100),
        Err(LockError::Compacted { .. })
    ));
    assert_eq!(
        h.m.events_since(5, b"\0", b"\0", 100).unwrap(),
        flat[3..].to_vec()
    );
}

#[test]
fn replay_is_a_noop_and_snapshots_roundtrip() {
    let mut h = H::with(Limits {
        snapshot_chunk_bytes: 200,
        ..Limits::default()
    });
    let l = h.grant(1000);
    for i in 0..50 {
        h.put_lease(&format!("k{i}"), "v", if i % 2 == 0 { l } else { 0 });
    }
    let before = snapshot_bytes(&h.m);
    let out =
        h.m.apply(
            LogId::new(1, 3),
            Entry::Command(&encode_command(&Command::Put(PutRequest {
                key: b("zz"),
                ..Default::default()
            }))),
        )
        .unwrap();
    assert!(out.is_empty());
    assert_eq!(snapshot_bytes(&h.m), before);
    h.index += 1;
    h.m.apply(
        LogId::new(1, h.index),
        Entry::Membership(&Membership::new([NodeId(1)])),
    )
    .unwrap();
    let mut snap = h.m.snapshot().unwrap();
    let meta = snap.meta().clone();
    let mut chunks = Vec::new();
    while let Some(c) = snap.next_chunk().unwrap() {
        chunks.push(c);
    }
    assert!(chunks.len() > 3, "chunked");
    // chunk boundaries follow the limits: compare machines with equal limits
    let mut other = LockMachine::in_memory(h.m.limits().clone()).unwrap();
    other
        .install_snapshot(&meta, &mut VecChunks::new(chunks.clone()))
        .unwrap();
    assert_eq!(snapshot_bytes(&other), snapshot_bytes(&h.m));
    assert_eq!(other.last_applied(), h.m.last_applied());
    assert_eq!(other.lease_time_to_live(l, true).keys.len(), 25);
    // corrupt chunk: refused, old state kept
    let mut bad = chunks.clone();
    let mut c = bad[2].to_vec();
    c[3] ^= 1;
    bad[2] = c.into();
    let mut third = H::new();
    third.put("x", "y");
    let keep = snapshot_bytes(&third.m);
    assert!(
        third
            .m
            .install_snapshot(&meta, &mut VecChunks::new(bad))
            .is_err()
    );
    let mut missing = chunks.clone();
    missing.pop();
    assert!(
        third
            .m
            .install_snapshot(&meta, &mut VecChunks::new(missing))
            .is_err()
    );
    assert_eq!(snapshot_bytes(&third.m), keep);
}

#[test]
fn leases_delete_their_keys() {
    let mut h = H::new();
    let l = h.grant(3000);
    assert!(l > 0);
    h.put_lease("a", "1", l);
    h.put_lease("b", "1", l);
    h.put("c", "1");
    h.put_lease("b", "2", 0); // detaches b
    let ttl = h.m.lease_time_to_live(l, true);
    assert_eq!(
        (ttl.ttl_ms, ttl.granted_ttl_ms, ttl.keys.clone()),
        (3000, 3000, vec![b("a")])
    );
    h.ok(Command::LeaseCheckpoint(vec![LeaseCheckpoint {
        id: l,
        remaining_ms: 1200,
    }]));
    assert_eq!(h.m.lease_time_to_live(l, false).ttl_ms, 1200);
    h.ok(Command::LeaseKeepAlive { id: l });
    assert_eq!(h.m.lease_time_to_live(l, false).ttl_ms, 3000);
    let rev = h.m.current_revision();
    h.ok(Command::LeaseExpire { id: l });
    assert_eq!(h.m.current_revision(), rev + 1);
    assert!(h.get("a").is_none());
    assert!(h.get("b").is_some() && h.get("c").is_some());
    assert_eq!(h.m.lease_time_to_live(l, false).ttl_ms, -1);
    assert_eq!(
        h.err(Command::LeaseKeepAlive { id: l }),
        LockError::LeaseNotFound { id: l }
    );
    let l2 = h.grant(10);
    assert_ne!(l2, l);
    assert_eq!(
        h.err(Command::LeaseGrant(LeaseGrantRequest {
            id: l2,
            ttl_ms: 10
        })),
        LockError::LeaseExists { id: l2 }
    );
    assert_eq!(
        h.err(Command::LeaseGrant(LeaseGrantRequest { id: 0, ttl_ms: 0 })),
        LockError::LeaseTtlInvalid { ttl_ms: 0 }
    );
    let mut small = H::with(Limits {
        max_leases: 1,
        ..Limits::default()
    });
    small.grant(10);
    assert_eq!(
        small.err(Command::LeaseGrant(LeaseGrantRequest { id: 0, ttl_ms: 10 })),
        LockError::TooManyLeases { max: 1 }
    );
}

#[test]
fn lock_is_fifo_with_increasing_tokens() {
    let mut h = H::new();
    let (l1, l2, l3) = (h.grant(1000), h.grant(1000), h.grant(1000));
    let a = h.lock("job", l1);
    assert!(a.acquired);
    assert_eq!(a.key, owner_key(b"job", l1));
    assert_eq!(
        a.token,
        h.get(std::str::from_utf8(&a.key).unwrap())
            .unwrap()
            .create_revision
    );
    let b2 = h.lock("job", l2);
    let c = h.lock("job", l3);
    assert!(!b2.acquired && !c.acquired);
    assert_eq!((b2.token, c.token), (0, 0));
    // re-locking with the same lease is idempotent
    let a2 = h.lock("job", l1);
    assert_eq!(a2, a);
    // guarded write: succeeds for the owner only
    let guarded = |key: Bytes, token: i64| {
        Command::Txn(TxnRequest {
            compare: vec![Compare::is_owner(key, token)],
            success: vec![RequestOp::Put(PutRequest {
                key: b("resource"),
                value: b("x"),
                ..Default::default()
            })],
            ..Default::default()
        })
    };
    let Response::Txn(t) = h.ok(guarded(a.key.clone(), a.token)) else {
        panic!()
    };
    assert!(t.succeeded);
    assert_eq!(h.m.lock_status(b"job", l2).unwrap(), b2);
    // the owner's lease expires: the next waiter (FIFO) owns the lock
    h.ok(Command::LeaseExpire { id: l1 });
    assert_eq!(
        h.m.lock_status(b"job", l1),
        Err(LockError::LeaseNotFound { id: l1 })
    );
    let now = h.m.lock_status(b"job", l2).unwrap();
    assert!(now.acquired && now.token > a.token);
    let owner = h.m.lock_owner(b"job").unwrap();
    assert_eq!(owner.key, b2.key);
    assert!(owner.create_revision > a.token, "tokens grow");
    let Response::Txn(t) = h.ok(guarded(a.key.clone(), a.token)) else {
        panic!()
    };
    assert!(!t.succeeded, "a stale owner's guarded write is refused");
    // unlock releases to the next one
    h.ok(Command::Unlock {
        key: b2.key.clone(),
    });
    assert_eq!(h.m.lock_owner(b"job").unwrap().key, c.key);
    h.ok(Command::Unlock {
        key: b2.key.clone(),
    }); // idempotent
    h.put("plain", "v");
    assert_eq!(
        h.err(Command::Unlock { key: b("plain") }),
        LockError::NotLockOwner
    );
    assert_eq!(
        h.err(Command::Lock {
            name: Bytes::new(),
            lease: l2
        }),
        LockError::NameEmpty
    );
}

#[test]
fn election_campaign_proclaim_resign() {
    let mut h = H::new();
    let (l1, l2) = (h.grant(1000), h.grant(1000));
    let Response::Campaign(c1) = h.ok(Command::Campaign {
        name: b("e"),
        lease: l1,
        value: b("n1"),
    }) else {
        panic!()
    };
    let Response::Campaign(c2) = h.ok(Command::Campaign {
        name: b("e"),
        lease: l2,
        value: b("n2"),
    }) else {
        panic!()
    };
    assert!(c1.elected && !c2.elected);
    assert_eq!(h.m.election_leader(b"e"), Some(c1.leader.clone()));
    h.ok(Command::Proclaim {
        leader: c1.leader.clone(),
        value: b("n1b"),
    });
    assert_eq!(
        h.get(std::str::from_utf8(&c1.leader.key).unwrap())
            .unwrap()
            .value,
        b("n1b")
    );
    assert_eq!(
        h.err(Command::Proclaim {
            leader: c2.leader.clone(),
            value: b("x")
        }),
        LockError::NotLeader
    );
    let stale = LeaderKey {
        rev: c1.leader.rev - 1,
        ..c1.leader.clone()
    };
    assert_eq!(
        h.err(Command::Proclaim {
            leader: stale,
            value: b("x")
        }),
        LockError::NotLeader
    );
    h.ok(Command::Resign {
        leader: c1.leader.clone(),
    });
    assert_eq!(h.m.election_leader(b"e"), Some(c2.leader.clone()));
    h.ok(Command::Proclaim {
        leader: c2.leader.clone(),
        value: b("n2b"),
    });
}

#[test]
fn history_is_bounded_by_auto_compaction() {
    let mut h = H::with(Limits {
        history_retention_revisions: 10,
        ..Limits::default()
    });
    for i in 0..100 {
        h.put("k", &i.to_string());
        let (rev, compact) = (h.m.current_revision(), h.m.compact_revision());
        assert!(rev - compact <= 11, "rev {rev} compact {compact}");
    }
    // compacts to revision - 10 whenever the window exceeds 11: at 100 -> 90
    // (100 puts from revision 1 end at 101, which is within the window)
    assert_eq!(h.m.compact_revision(), 90);
    assert!(matches!(
        h.m.range(&RangeRequest {
            revision: 89,
            ..all()
        }),
        Err(LockError::Compacted { .. })
    ));
    assert_eq!(
        h.m.range(&RangeRequest {
            revision: 90,
            ..all()
        })
        .unwrap()
        .kvs[0]
            .value,
        b("88")
    );
    // only the retained window of history is stored
    assert_eq!(h.m.events_since(91, b"\0", b"\0", 1000).unwrap().len(), 11);
}

fn with_lock_delay(delay_ms: i64) -> H {
    H::with(Limits {
        lock_delay_ms: delay_ms,
        ..Limits::default()
    })
}

#[test]
fn lock_delay_holds_an_expired_owners_lock_for_the_delay() {
    let mut h = with_lock_delay(5_000);
    let (l1, l2) = (h.grant(1000), h.grant(1000));
    h.put_lease("other", "v", l1);
    let a = h.lock("job", l1);
    let w = h.lock("job", l2);
    assert!(a.acquired && !w.acquired);
    // The owner's lease expires: the lock stays taken, by a delay lease.
    h.ok(Command::LeaseExpire { id: l1 });
    assert_eq!(
        h.m.lock_status(b"job", l1),
        Err(LockError::LeaseNotFound { id: l1 }),
        "the expired owner no longer holds the lock"
    );
    assert!(!h.m.lock_status(b"job", l2).unwrap().acquired);
    let held = h.m.lock_owner(b"job").unwrap();
    assert_eq!(
        (&held.key, held.create_revision),
        (&a.key, a.token),
        "the expired owner's key (and token) stays in place"
    );
    assert!(h.get("other").is_none(), "the lease's other keys go");
    let delay = h.m.lease_time_to_live(held.lease, true);
    assert_eq!((delay.ttl_ms, delay.granted_ttl_ms), (5_000, 5_000));
    assert_eq!(delay.keys, vec![a.key.clone()]);
    assert_eq!(h.m.leases().len(), 2, "one lease expired, one delay lease");
    // Re-locking as the waiter does not jump the delay.
    assert!(!h.lock("job", l2).acquired);
    // The delay is replicated state: a snapshot carries it.
    let mut copy = LockMachine::in_memory(h.m.limits().clone()).unwrap();
    let mut snap = h.m.snapshot().unwrap();
    let meta = snap.meta().clone();
    let mut chunks = Vec::new();
    while let Some(c) = snap.next_chunk().unwrap() {
        chunks.push(c);
    }
    copy.install_snapshot(&meta, &mut VecChunks::new(chunks))
        .unwrap();
    assert!(!copy.lock_status(b"job", l2).unwrap().acquired);
    // The lessor expires the delay lease in turn: the waiter is granted,
    // with a higher token; no new delay (the delay lease held no lock of
    // its own).
    h.ok(Command::LeaseExpire { id: held.lease });
    let now = h.m.lock_status(b"job", l2).unwrap();
    assert!(now.acquired && now.token > a.token);
    assert_eq!(h.m.leases().len(), 1);
}

#[test]
fn lock_delay_applies_only_to_an_owner_whose_lease_expires() {
    let mut h = with_lock_delay(5_000);
    let (l1, l2, l3) = (h.grant(1000), h.grant(1000), h.grant(1000));
    let a = h.lock("job", l1);
    let w2 = h.lock("job", l2);
    let w3 = h.lock("job", l3);
    // A waiter's expiry: no delay, the owner is untouched.
    h.ok(Command::LeaseExpire { id: l2 });
    assert_eq!(h.m.leases().len(), 2);
    assert_eq!(h.m.lock_owner(b"job").unwrap().key, a.key);
    assert!(h.m.lock_status(b"job", l2).is_err());
    // A clean unlock hands over at once.
    h.ok(Command::Unlock { key: a.key.clone() });
    let s3 = h.m.lock_status(b"job", l3).unwrap();
    assert!(s3.acquired && s3.key == w3.key && s3.token > a.token);
    // So does a revoke.
    let l4 = h.grant(1000);
    let w4 = h.lock("job", l4);
    assert!(!w4.acquired && w2.key != w4.key);
    h.ok(Command::LeaseRevoke { id: l3 });
    assert!(h.m.lock_status(b"job", l4).unwrap().acquired);
    let ids = |h: &H| h.m.leases().iter().map(|l| l.id).collect::<Vec<_>>();
    let mut want = vec![l1, l4];
    want.sort();
    assert_eq!(ids(&h), want, "no delay lease after unlock or revoke");
    // An expiring lease that holds no lock: plain expiry.
    let l5 = h.grant(1000);
    h.put_lease("k", "v", l5);
    h.ok(Command::LeaseExpire { id: l5 });
    assert!(h.get("k").is_none());
    assert_eq!(ids(&h), want);
}

#[test]
fn lock_delay_holds_an_election_too_and_is_off_by_default() {
    let mut h = with_lock_delay(1_000);
    let (l1, l2) = (h.grant(1000), h.grant(1000));
    h.ok(Command::Campaign {
        name: b("e"),
        lease: l1,
        value: b("primary-1"),
    });
    h.ok(Command::Campaign {
        name: b("e"),
        lease: l2,
        value: b("primary-2"),
    });
    h.ok(Command::LeaseExpire { id: l1 });
    let leader = h.m.election_leader(b"e").unwrap();
    assert_eq!(
        leader.key,
        owner_key(b"e", l1),
        "no standby elected during the delay"
    );
    let kv = h.get(std::str::from_utf8(&leader.key).unwrap()).unwrap();
    assert_eq!(kv.value, b("primary-1"), "the value stays as it was");
    assert!(!h.m.campaign_status(b"e", l2).unwrap().elected);
    h.ok(Command::LeaseExpire { id: leader.lease });
    assert!(h.m.campaign_status(b"e", l2).unwrap().elected);

    // Default: no delay.
    let mut h = H::new();
    assert_eq!(h.m.limits().lock_delay_ms, 0);
    let (l1, l2) = (h.grant(1000), h.grant(1000));
    h.lock("job", l1);
    h.lock("job", l2);
    h.ok(Command::LeaseExpire { id: l1 });
    assert!(h.m.lock_status(b"job", l2).unwrap().acquired);
}

#[test]
fn lock_delay_limit_is_validated() {
    for bad in [-1, MAX_LOCK_DELAY_MS + 1, i64::MIN] {
        let limits = Limits {
            lock_delay_ms: bad,
            ..Limits::default()
        };
        assert!(
            matches!(limits.validate(), Err(LimitsError::Inconsistent(_))),
            "{bad}"
        );
        assert!(LockMachine::in_memory(limits).is_err());
    }
    for good in [0, 1, MAX_LOCK_DELAY_MS] {
        let limits = Limits {
            lock_delay_ms: good,
            ..Limits::default()
        };
        assert_eq!(limits.validate(), Ok(()));
    }
}
