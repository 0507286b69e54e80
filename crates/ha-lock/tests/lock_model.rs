//! Lock fairness and fencing against a FIFO-queue model: random lock,
//! unlock, lease expiry/revoke and keep-alive commands from several
//! clients; after every command the owner is the head of the model's queue
//! (requests in arrival order, released ones removed), the fencing token
//! is the owner key's create revision, and tokens only grow.

mod common;

use std::collections::BTreeMap;

use bytes::Bytes;
use common::apply;
use ha_lock::LockMachine;
use ha_lock::api::*;
use proptest::prelude::*;

const CLIENTS: i64 = 5;

#[derive(Clone, Debug)]
enum Op {
    Lock(i64),
    Unlock(i64),
    Expire(i64),
    Revoke(i64),
    KeepAlive(i64),
    Grant(i64),
}

fn op() -> impl Strategy<Value = Op> {
    let c = 1..=CLIENTS;
    prop_oneof![
        6 => c.clone().prop_map(Op::Lock),
        3 => c.clone().prop_map(Op::Unlock),
        1 => c.clone().prop_map(Op::Expire),
        1 => c.clone().prop_map(Op::Revoke),
        1 => c.clone().prop_map(Op::KeepAlive),
        2 => c.prop_map(Op::Grant),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn lock_is_fifo_and_tokens_grow(ops in proptest::collection::vec(op(), 1..120)) {
        let name = Bytes::from_static(b"the-lock");
        let mut m = LockMachine::in_memory(Limits::default()).unwrap();
        let mut index = 0u64;
        let mut leases: BTreeMap<i64, bool> = BTreeMap::new(); // client -> lease alive
        // model: FIFO queue of clients holding a key under the lock
        let mut queue: Vec<i64> = Vec::new();
        let mut last_token = 0i64;
        let mut tokens_seen: BTreeMap<i64, i64> = BTreeMap::new(); // token -> client
        for op in &ops {
            index += 1;
            let (cmd, client) = match *op {
                Op::Lock(c) => (Command::Lock { name: name.clone(), lease: c }, c),
                Op::Unlock(c) => (Command::Unlock { key: owner_key(&name, c) }, c),
                Op::Expire(c) => (Command::LeaseExpire { id: c }, c),
                Op::Revoke(c) => (Command::LeaseRevoke { id: c }, c),
                Op::KeepAlive(c) => (Command::LeaseKeepAlive { id: c }, c),
                Op::Grant(c) => (Command::LeaseGrant(LeaseGrantRequest { id: c, ttl_ms: 1000 }), c),
            };
            let alive = leases.get(&client).copied().unwrap_or(false);
            let a = apply(&mut m, index, &cmd);
            match op {
                Op::Grant(_) => {
                    prop_assert_eq!(a.result.is_ok(), !alive);
                    leases.insert(client, true);
                }
                Op::Lock(_) => {
                    if !alive {
                        prop_assert_eq!(a.result, Err(LockError::LeaseNotFound { id: client }));
                    } else {
                        if !queue.contains(&client) {
                            queue.push(client);
                        }
                        let Ok(Response::Lock(l)) = a.result else { panic!("lock failed") };
                        prop_assert_eq!(l.acquired, queue[0] == client);
                        prop_assert_eq!(&l.key, &owner_key(&name, client));
                    }
                }
                Op::Unlock(_) => {
                    prop_assert!(a.result.is_ok(), "unlock is idempotent");
                    queue.retain(|c| *c != client);
                }
                Op::Expire(_) | Op::Revoke(_) => {
                    prop_assert_eq!(a.result.is_ok(), alive);
                    leases.insert(client, false);
                    queue.retain(|c| *c != client);
                }
                Op::KeepAlive(_) => prop_assert_eq!(a.result.is_ok(), alive),
            }
            // the owner is the queue head; its token is its key's create revision
            match (m.lock_owner(&name), queue.first()) {
                (None, None) => {}
                (Some(o), Some(&head)) => {
                    prop_assert_eq!(&o.key, &owner_key(&name, head));
                    prop_assert_eq!(o.lease, head);
                    let st = m.lock_status(&name, head).unwrap();
                    prop_assert!(st.acquired);
                    prop_assert_eq!(st.token, o.create_revision);
                    prop_assert!(st.token >= last_token, "token went back");
                    if let Some(prev) = tokens_seen.insert(st.token, head) {
                        prop_assert_eq!(prev, head, "one token, two owners");
                    }
                    last_token = st.token;
                    // every waiter is waiting, with token 0
                    for w in &queue[1..] {
                        let s = m.lock_status(&name, *w).unwrap();
                        prop_assert!(!s.acquired && s.token == 0);
                    }
                }
                (o, h) => prop_assert!(false, "owner {:?} but model head {:?}", o, h),
            }
        }
    }
}
