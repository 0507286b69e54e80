//! Optimistic locking on the client side: read-modify-write with
//! compare-and-swap on `mod_revision`, bounded retries and capped
//! exponential backoff.
//!
//! The helper is transport-agnostic: it talks to the store through a
//! [`KvClient`] (a gRPC client, an in-process replica handle, a test fake).
//! A transaction's failure branch reads the key again, so a conflict costs
//! one round trip, not two.
//!
//! ```
//! use ha_lock::optimistic::{RetryPolicy, update};
//! # use ha_lock::optimistic::KvClient;
//! # use ha_lock::api::*;
//! # use ha_lock::LockMachine;
//! # use ha_core::state_machine::{Applied as Entry, StateMachine};
//! # use ha_core::types::LogId;
//! # struct Local(LockMachine, u64);
//! # impl KvClient for Local {
//! #     type Error = LockError;
//! #     fn get(&mut self, key: &[u8]) -> Result<Option<KeyValue>, LockError> {
//! #         Ok(self.0.range(&RangeRequest { key: bytes::Bytes::copy_from_slice(key), ..Default::default() })?.kvs.pop())
//! #     }
//! #     fn txn(&mut self, t: TxnRequest) -> Result<Applied, LockError> {
//! #         self.1 += 1;
//! #         let out = self.0.apply(LogId::new(1, self.1), Entry::Command(&encode_command(&Command::Txn(t)))).unwrap();
//! #         decode_applied(&out)
//! #     }
//! #     fn sleep_ms(&mut self, _ms: u64) {}
//! # }
//! # let mut client = Local(LockMachine::in_memory(Limits::default()).unwrap(), 0);
//! // increment a counter
//! let out = update(&mut client, "counter".into(), RetryPolicy::default(), |cur| {
//!     let n: u64 = cur.map_or(0, |kv| std::str::from_utf8(&kv.value).unwrap().parse().unwrap());
//!     Some((n + 1).to_string().into())
//! })
//! .unwrap();
//! assert_eq!(out.value.as_ref(), b"1");
//! ```

use bytes::Bytes;

use crate::api::{
    Applied, Compare, CompareResult, CompareTarget, KeyValue, LockError, PutRequest, RangeRequest,
    RequestOp, Response, ResponseOp, TxnRequest,
};

/// What [`update`] needs from a connection to the store.
pub trait KvClient {
    /// Transport error.
    type Error;
    /// Reads one key (linearizably).
    fn get(&mut self, key: &[u8]) -> Result<Option<KeyValue>, Self::Error>;
    /// Runs a transaction through consensus.
    fn txn(&mut self, t: TxnRequest) -> Result<Applied, Self::Error>;
    /// Waits `ms` milliseconds before the next attempt.
    fn sleep_ms(&mut self, ms: u64);
}

/// Retry policy of [`update`]. Backoff doubles from `initial_backoff_ms`
/// up to `max_backoff_ms` (deterministic, no jitter: add jitter in
/// `KvClient::sleep_ms` if many clients contend).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Most compare-and-swap attempts (at least 1) [10].
    pub max_attempts: u32,
    /// Wait after the first conflict, in ms [5].
    pub initial_backoff_ms: u64,
    /// Longest wait between attempts, in ms [500].
    pub max_backoff_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 10,
            initial_backoff_ms: 5,
            max_backoff_ms: 500,
        }
    }
}

/// Why [`update`] gave up.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError<E> {
    /// The client failed.
    #[error("transport: {0}")]
    Transport(E),
    /// The store refused the write (e.g. value too large).
    #[error("store refused the update: {0}")]
    Rejected(LockError),
    /// Every attempt lost a race with another writer.
    #[error("gave up after {attempts} conflicting attempts")]
    Conflict {
        /// Attempts made.
        attempts: u32,
    },
    /// The store answered with a response that does not fit the request.
    #[error("unexpected response from the store")]
    Unexpected,
}

/// Result of a successful [`update`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Updated {
    /// The value now stored (the new value, or the current one when `f`
    /// returned `None`).
    pub value: Bytes,
    /// Store revision of the write (or of the read, when nothing was written).
    pub revision: i64,
    /// Attempts used.
    pub attempts: u32,
}

/// Atomically replaces `key`'s value with `f(current)`: reads the key,
/// computes the new value, writes it only if the key's `mod_revision` is
/// unchanged (`mod_revision == 0` for an absent key), and on a conflict
/// retries with the value the failed transaction read. `f` returning `None`
/// leaves the key unchanged. `f` may run several times.
pub fn update<C: KvClient>(
    client: &mut C,
    key: Bytes,
    policy: RetryPolicy,
    mut f: impl FnMut(Option<&KeyValue>) -> Option<Bytes>,
) -> Result<Updated, UpdateError<C::Error>> {
    let attempts_max = policy.max_attempts.max(1);
    let mut current = client.get(&key).map_err(UpdateError::Transport)?;
    let mut backoff_ms = policy.initial_backoff_ms;
    for attempt in 1..=attempts_max {
        let Some(value) = f(current.as_ref()) else {
            return Ok(Updated {
                value: current.map(|kv| kv.value).unwrap_or_default(),
                revision: 0,
                attempts: attempt,
            });
        };
        let expect = current.as_ref().map_or(0, |kv| kv.mod_revision);
        let t = TxnRequest {
            compare: vec![Compare {
                key: key.clone(),
                range_end: Bytes::new(),
                result: CompareResult::Equal,
                target: CompareTarget::ModRevision(expect),
            }],
            success: vec![RequestOp::Put(PutRequest {
                key: key.clone(),
                value: value.clone(),
                ..PutRequest::default()
            })],
            failure: vec![RequestOp::Range(RangeRequest {
                key: key.clone(),
                ..RangeRequest::default()
            })],
        };
        let applied = client.txn(t).map_err(UpdateError::Transport)?;
        let resp = match applied.result {
            Ok(Response::Txn(r)) => r,
            Ok(_) => return Err(UpdateError::Unexpected),
            Err(e) => return Err(UpdateError::Rejected(e)),
        };
        if resp.succeeded {
            return Ok(Updated {
                value,
                revision: applied.revision,
                attempts: attempt,
            });
        }
        current = match resp.responses.into_iter().next() {
            Some(ResponseOp::Range(mut r)) => r.kvs.pop(),
            _ => return Err(UpdateError::Unexpected),
        };
        if attempt < attempts_max {
            client.sleep_ms(backoff_ms);
            backoff_ms = backoff_ms.saturating_mul(2).min(policy.max_backoff_ms);
        }
    }
    Err(UpdateError::Conflict {
        attempts: attempts_max,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Command, LockError};
    use crate::tests::H;

    /// A client over a machine where another writer changes the key before
    /// each of the first `races` transactions.
    struct Racy {
        h: H,
        races: u32,
        sleeps: Vec<u64>,
    }

    impl KvClient for Racy {
        type Error = LockError;
        fn get(&mut self, key: &[u8]) -> Result<Option<KeyValue>, LockError> {
            Ok(self.h.get(std::str::from_utf8(key).unwrap_or("")))
        }
        fn txn(&mut self, t: TxnRequest) -> Result<Applied, LockError> {
            if self.races > 0 {
                self.races -= 1;
                let v = self.h.get("c").map_or(0, |kv| kv.value.len());
                self.h.put("c", &"x".repeat(v + 1));
            }
            Ok(self.h.apply(Command::Txn(t)))
        }
        fn sleep_ms(&mut self, ms: u64) {
            self.sleeps.push(ms);
        }
    }

    fn append_y(cur: Option<&KeyValue>) -> Option<Bytes> {
        let mut v = cur.map(|kv| kv.value.to_vec()).unwrap_or_default();
        v.push(b'y');
        Some(v.into())
    }

    #[test]
    fn conflicts_are_retried_with_backoff_and_no_update_is_lost() {
        let mut c = Racy {
            h: H::new(),
            races: 3,
            sleeps: Vec::new(),
        };
        let policy = RetryPolicy {
            max_attempts: 5,
            initial_backoff_ms: 10,
            max_backoff_ms: 25,
        };
        let out = update(&mut c, "c".into(), policy, append_y).unwrap();
        assert_eq!(out.attempts, 4);
        assert_eq!(
            out.value.as_ref(),
            b"xxxy",
            "built on the racer's last write"
        );
        assert_eq!(c.h.get("c").unwrap().value.as_ref(), b"xxxy");
        assert_eq!(c.sleeps, vec![10, 20, 25]);
    }

    #[test]
    fn gives_up_after_max_attempts() {
        let mut c = Racy {
            h: H::new(),
            races: 100,
            sleeps: Vec::new(),
        };
        let policy = RetryPolicy {
            max_attempts: 3,
            ..RetryPolicy::default()
        };
        let err = update(&mut c, "c".into(), policy, append_y).unwrap_err();
        assert!(matches!(err, UpdateError::Conflict { attempts: 3 }));
        assert!(!c.h.get("c").unwrap().value.ends_with(b"y"));
    }

    #[test]
    fn store_errors_are_reported() {
        let mut c = Racy {
            h: H::with(crate::api::Limits {
                max_value_bytes: 2,
                ..Default::default()
            }),
            races: 0,
            sleeps: Vec::new(),
        };
        c.h.put("c", "xx");
        let err = update(&mut c, "c".into(), RetryPolicy::default(), append_y).unwrap_err();
        assert!(matches!(
            err,
            UpdateError::Rejected(LockError::ValueTooLarge { size: 3, max: 2 })
        ));
        assert_eq!(c.h.get("c").unwrap().value.as_ref(), b"xx");
    }
}
