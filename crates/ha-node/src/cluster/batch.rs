//! Coalescing of the writes a follower forwards to the leader.
//!
//! Every forwarded write used to be its own transport request (one QUIC
//! stream, one encode/decode, one task on the leader). A [`Coalescer`] per
//! (group, leader) queues the writes that arrive while
//! [`MAX_BATCHES_IN_FLIGHT`] batches are already on their way, and sends
//! everything queued (bounded by [`MAX_BATCH_ITEMS`] and
//! [`MAX_BATCH_BYTES`]) as one [`PeerRequest::ProposeBatch`] when a batch
//! returns. The leader proposes the items concurrently (they share a
//! consensus round) and answers each item's own result, in order.
//!
//! The forwarding contract of the [module docs](super) holds per item:
//! an item's result is its own ([`BatchItem`]); a batch that certainly never
//! left ([`BatchFailure::NotSent`]) may be retried by every caller; a batch
//! whose fate is unknown ([`BatchFailure::Unknown`]) is unknown for every
//! item. A caller that stops waiting drops its receiver; if its item has not
//! left yet it is skipped (certainly not applied), otherwise its result is
//! discarded.
//!
//! A leader of a build from before batches answers a batch
//! "undecodable" ([`BatchFailure::Unsupported`]: nothing was applied). The
//! coalescer then remembers that this leader refuses batches, for as long
//! as the term it was seen in lasts and at most [`BATCH_REFUSAL_TTL`], and
//! answers its queued callers `Unsupported` too; the callers send their
//! entries singly meanwhile. An upgraded leader (a new term, or the time
//! is up) gets batches again.
//!
//! [`PeerRequest::ProposeBatch`]: super::wire::PeerRequest::ProposeBatch

use std::collections::VecDeque;
use std::future::Future;
use std::ops::ControlFlow;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::NodeError;
use super::wire::{BatchItem, WireError};

/// Most items in one forwarded batch.
pub const MAX_BATCH_ITEMS: usize = 256;
/// Most entry bytes in one forwarded batch of several items (a single
/// larger entry travels alone).
pub const MAX_BATCH_BYTES: usize = 1 << 20;
/// Batches a follower keeps in flight to one leader for one group; writes
/// arriving while this many are out wait for the next batch.
pub const MAX_BATCHES_IN_FLIGHT: usize = 2;
/// How long a leader's refusal of batches (a build from before them) is
/// remembered at most; then one batch tries again.
pub const BATCH_REFUSAL_TTL: Duration = Duration::from_secs(60);

/// Why a whole batch has no per-item answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchFailure {
    /// The batch certainly never reached the leader: nothing was applied.
    NotSent(String),
    /// The batch was larger than the transport accepts (nothing was sent).
    TooLarge {
        /// Its encoded size.
        size_bytes: usize,
        /// The transport's limit.
        max_bytes: usize,
    },
    /// This member is shutting down.
    Shutdown,
    /// The leader cannot decode batches (it runs a build from before them)
    /// and applied nothing; the entries go singly.
    Unsupported {
        /// The term this member was in when the refusal came (the refusal
        /// is remembered for that term only).
        term: u64,
    },
    /// The batch may or may not have been applied (timeout, connection lost
    /// mid-request, leader change while waiting, undecodable answer).
    Unknown(String),
}

/// What one caller learns about its item.
pub type ItemResult = Result<BatchItem, BatchFailure>;

/// Sends one batch of entries to the leader, answering one result per
/// entry, in order (or a failure of the whole batch).
pub type SendFn = Arc<dyn Fn(Vec<Bytes>) -> BatchFuture + Send + Sync>;

/// The future a [`SendFn`] returns.
pub type BatchFuture = Pin<Box<dyn Future<Output = Result<Vec<BatchItem>, BatchFailure>> + Send>>;

/// Bounds of a [`Coalescer`].
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Most items per batch.
    pub max_items: usize,
    /// Most entry bytes per batch of several items.
    pub max_bytes: usize,
    /// Most batches in flight at once.
    pub max_in_flight: usize,
    /// How long a refusal of batches is remembered at most.
    pub refusal_ttl: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_items: MAX_BATCH_ITEMS,
            max_bytes: MAX_BATCH_BYTES,
            max_in_flight: MAX_BATCHES_IN_FLIGHT,
            refusal_ttl: BATCH_REFUSAL_TTL,
        }
    }
}

type Waiter = (Bytes, oneshot::Sender<ItemResult>);

#[derive(Default)]
struct State {
    queue: VecDeque<Waiter>,
    in_flight: usize,
    /// The leader refused batches: in this term, since then.
    refused: Option<(u64, Instant)>,
}

/// Queues forwarded entries for one (group, leader) and sends them in
/// batches (see the [module docs](self)).
pub struct Coalescer {
    limits: Limits,
    state: Mutex<State>,
}

impl Coalescer {
    /// A coalescer with these bounds (each at least 1).
    pub fn new(limits: Limits) -> Self {
        Coalescer {
            limits: Limits {
                max_items: limits.max_items.max(1),
                max_bytes: limits.max_bytes.max(1),
                max_in_flight: limits.max_in_flight.max(1),
                refusal_ttl: limits.refusal_ttl,
            },
            state: Mutex::new(State::default()),
        }
    }

    /// Queues `entry`; if fewer than the allowed batches are in flight, a
    /// task starts sending batches with `send` until the queue is empty.
    /// The receiver gets this entry's result (it is dropped unanswered only
    /// if the runtime shuts down).
    pub fn submit(self: &Arc<Self>, entry: Bytes, send: SendFn) -> oneshot::Receiver<ItemResult> {
        let (tx, rx) = oneshot::channel();
        let first = {
            let mut st = self.lock();
            st.queue.push_back((entry, tx));
            if st.in_flight < self.limits.max_in_flight {
                st.in_flight += 1;
                Some(self.take(&mut st))
            } else {
                None
            }
        };
        if let Some(batch) = first {
            let me = Arc::clone(self);
            tokio::spawn(async move { me.drive(batch, send).await });
        }
        rx
    }

    /// Entries queued and not yet sent.
    pub fn queued(&self) -> usize {
        self.lock().queue.len()
    }

    /// The term in which the leader refused batches, while that is
    /// remembered (at most [`Limits::refusal_ttl`]); `None` if batches go.
    pub fn batch_refusal(&self) -> Option<u64> {
        self.refusal(&mut self.lock())
    }

    fn refusal(&self, st: &mut State) -> Option<u64> {
        match st.refused {
            Some((term, at)) if at.elapsed() < self.limits.refusal_ttl => Some(term),
            Some(_) => {
                st.refused = None;
                None
            }
            None => None,
        }
    }

    /// Forgets a refusal of batches seen in `term` (the term is over: the
    /// leader may have been upgraded). A refusal seen in another term stays.
    pub fn forget_refusal(&self, term: u64) {
        let mut st = self.lock();
        if matches!(st.refused, Some((t, _)) if t == term) {
            st.refused = None;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state stays consistent across a panic (plain pushes/pops).
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next batch from the front of the queue, within the bounds;
    /// entries whose caller stopped waiting are dropped (never sent).
    fn take(&self, st: &mut State) -> Vec<Waiter> {
        let mut batch: Vec<Waiter> = Vec::new();
        let mut bytes = 0usize;
        while batch.len() < self.limits.max_items {
            let Some((entry, tx)) = st.queue.front() else {
                break;
            };
            if tx.is_closed() {
                st.queue.pop_front();
                continue;
            }
            if !batch.is_empty() && bytes.saturating_add(entry.len()) > self.limits.max_bytes {
                break;
            }
            bytes = bytes.saturating_add(entry.len());
            if let Some(w) = st.queue.pop_front() {
                batch.push(w);
            }
        }
        batch
    }

    async fn drive(self: Arc<Self>, mut batch: Vec<Waiter>, send: SendFn) {
        loop {
            if !batch.is_empty() {
                let entries: Vec<Bytes> = batch.iter().map(|(e, _)| e.clone()).collect();
                let n = entries.len();
                let answer = match send(entries).await {
                    Ok(items) if items.len() == n => Ok(items),
                    Ok(items) => Err(BatchFailure::Unknown(format!(
                        "the leader answered {} results for a batch of {n}",
                        items.len()
                    ))),
                    Err(f) => Err(f),
                };
                match answer {
                    Ok(items) => {
                        for ((_, tx), item) in batch.drain(..).zip(items) {
                            let _ = tx.send(Ok(item));
                        }
                    }
                    Err(f) => {
                        if let BatchFailure::Unsupported { term } = f {
                            self.lock().refused = Some((term, Instant::now()));
                        }
                        for (_, tx) in batch.drain(..) {
                            let _ = tx.send(Err(f.clone()));
                        }
                    }
                }
            }
            let mut st = self.lock();
            if let Some(term) = self.refusal(&mut st) {
                // Queued behind a refused batch: none of these leaves as a
                // batch (nothing was sent; the callers send them singly).
                for (_, tx) in st.queue.drain(..) {
                    let _ = tx.send(Err(BatchFailure::Unsupported { term }));
                }
            }
            batch = self.take(&mut st);
            if batch.is_empty() {
                st.in_flight -= 1;
                return;
            }
        }
    }
}

/// What a forwarding caller does with its item's result: `Break` with the
/// final answer, or `Continue` with the error to report if no later try
/// succeeds (retried only when the item was certainly not applied).
pub fn item_step(r: ItemResult) -> ControlFlow<Result<Bytes, NodeError>, NodeError> {
    match r {
        Ok(BatchItem::Applied(b)) => ControlFlow::Break(Ok(b)),
        Ok(BatchItem::Error(WireError::NotLeader(_))) => {
            ControlFlow::Continue(NodeError::NotLeader { leader: None })
        }
        Ok(BatchItem::Error(e)) => ControlFlow::Break(Err(e.into())),
        Err(BatchFailure::NotSent(m)) => ControlFlow::Continue(NodeError::Unavailable(m)),
        Err(BatchFailure::TooLarge {
            size_bytes,
            max_bytes,
        }) => ControlFlow::Break(Err(NodeError::TooLarge {
            size_bytes,
            max_bytes,
        })),
        Err(BatchFailure::Shutdown) => ControlFlow::Break(Err(NodeError::Shutdown)),
        Err(BatchFailure::Unsupported { .. }) => ControlFlow::Continue(NodeError::Unavailable(
            "the leader does not accept batches (a build from before them)".into(),
        )),
        Err(BatchFailure::Unknown(m)) => ControlFlow::Break(Err(NodeError::OutcomeUnknown(m))),
    }
}

/// The leader's check of a batch it is asked to propose: nothing is
/// applied when it is refused.
pub fn check_batch(entries: &[Bytes]) -> Result<(), NodeError> {
    if entries.len() > MAX_BATCH_ITEMS {
        return Err(NodeError::Invalid(format!(
            "a forwarded batch holds {} entries; at most {MAX_BATCH_ITEMS} are accepted",
            entries.len()
        )));
    }
    let bytes = entries
        .iter()
        .fold(0usize, |a, e| a.saturating_add(e.len()));
    if bytes > MAX_BATCH_BYTES {
        return Err(NodeError::Invalid(format!(
            "a forwarded batch holds {bytes} bytes of entries; at most {MAX_BATCH_BYTES} are accepted"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::sync::mpsc;

    /// A sender that reports each batch it is given and answers it only
    /// when the test says so.
    type Reply = oneshot::Sender<Result<Vec<BatchItem>, BatchFailure>>;

    fn gated() -> (SendFn, mpsc::UnboundedReceiver<(Vec<Bytes>, Reply)>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let send: SendFn = Arc::new(move |entries: Vec<Bytes>| -> BatchFuture {
            let tx = tx.clone();
            Box::pin(async move {
                let (rtx, rrx) = oneshot::channel();
                if tx.send((entries, rtx)).is_err() {
                    return Err(BatchFailure::Unknown("test ended".into()));
                }
                rrx.await
                    .unwrap_or_else(|_| Err(BatchFailure::Unknown("dropped".into())))
            })
        });
        (send, rx)
    }

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    async fn next_batch(
        rx: &mut mpsc::UnboundedReceiver<(Vec<Bytes>, Reply)>,
    ) -> (Vec<Bytes>, Reply) {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("a batch is sent")
            .expect("sender alive")
    }

    fn echo(entries: &[Bytes]) -> Vec<BatchItem> {
        entries
            .iter()
            .map(|e| BatchItem::Applied(Bytes::from([b"ok:", &e[..]].concat())))
            .collect()
    }

    /// A caller's result, failing (not hanging) when none comes.
    async fn got(r: oneshot::Receiver<ItemResult>) -> ItemResult {
        tokio::time::timeout(Duration::from_secs(5), r)
            .await
            .expect("the caller is answered")
            .expect("the coalescer answers")
    }

    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn writes_arriving_while_a_batch_is_in_flight_go_as_one_batch() {
        let c = Arc::new(Coalescer::new(Limits {
            max_in_flight: 1,
            ..Limits::default()
        }));
        let (send, mut sent) = gated();
        let r0 = c.submit(b("a"), send.clone());
        let (first, reply0) = next_batch(&mut sent).await;
        assert_eq!(first, vec![b("a")]);
        let rs: Vec<_> = ["b", "c", "d"]
            .iter()
            .map(|s| c.submit(b(s), send.clone()))
            .collect();
        settle().await;
        assert!(
            sent.try_recv().is_err(),
            "nothing more leaves while one batch is out"
        );
        assert_eq!(c.queued(), 3);
        reply0.send(Ok(echo(&first))).unwrap();
        let (second, reply1) = next_batch(&mut sent).await;
        assert_eq!(second, vec![b("b"), b("c"), b("d")], "coalesced");
        reply1.send(Ok(echo(&second))).unwrap();
        assert_eq!(got(r0).await, Ok(BatchItem::Applied(b("ok:a"))));
        for (r, s) in rs.into_iter().zip(["b", "c", "d"]) {
            assert_eq!(
                got(r).await,
                Ok(BatchItem::Applied(Bytes::from(format!("ok:{s}"))))
            );
        }
    }

    #[tokio::test]
    async fn up_to_the_in_flight_limit_batches_leave_without_waiting() {
        let c = Arc::new(Coalescer::new(Limits {
            max_in_flight: 2,
            ..Limits::default()
        }));
        let (send, mut sent) = gated();
        let _r0 = c.submit(b("a"), send.clone());
        let _r1 = c.submit(b("b"), send.clone());
        let _r2 = c.submit(b("c"), send.clone());
        let (x, _g0) = next_batch(&mut sent).await;
        let (y, _g1) = next_batch(&mut sent).await;
        assert_eq!((x, y), (vec![b("a")], vec![b("b")]));
        settle().await;
        assert!(sent.try_recv().is_err());
        assert_eq!(c.queued(), 1);
    }

    #[tokio::test]
    async fn each_caller_gets_its_own_item_result() {
        let c = Arc::new(Coalescer::new(Limits {
            max_in_flight: 1,
            ..Limits::default()
        }));
        let (send, mut sent) = gated();
        let r0 = c.submit(b("x"), send.clone());
        let (_, g0) = next_batch(&mut sent).await;
        let r1 = c.submit(b("y"), send.clone());
        let r2 = c.submit(b("z"), send.clone());
        g0.send(Ok(vec![BatchItem::Applied(b("0"))])).unwrap();
        let (batch, g1) = next_batch(&mut sent).await;
        assert_eq!(batch, vec![b("y"), b("z")]);
        g1.send(Ok(vec![
            BatchItem::Error(WireError::NotLeader(None)),
            BatchItem::Applied(b("2")),
        ]))
        .unwrap();
        assert_eq!(got(r0).await, Ok(BatchItem::Applied(b("0"))));
        let v1 = got(r1).await;
        let v2 = got(r2).await;
        assert_eq!(v1, Ok(BatchItem::Error(WireError::NotLeader(None))));
        assert_eq!(v2, Ok(BatchItem::Applied(b("2"))));
        // The NotLeader item is retried, the applied one answered.
        assert!(matches!(
            item_step(v1),
            ControlFlow::Continue(NodeError::NotLeader { .. })
        ));
        assert!(matches!(item_step(v2), ControlFlow::Break(Ok(ref x)) if x == &b("2")));
    }

    #[tokio::test]
    async fn an_unknown_batch_is_unknown_for_every_item_and_not_retried() {
        let c = Arc::new(Coalescer::new(Limits {
            max_in_flight: 1,
            ..Limits::default()
        }));
        let (send, mut sent) = gated();
        let r0 = c.submit(b("a"), send.clone());
        let (_, g0) = next_batch(&mut sent).await;
        let r1 = c.submit(b("b"), send.clone());
        let r2 = c.submit(b("c"), send.clone());
        g0.send(Err(BatchFailure::NotSent("unreachable".into())))
            .unwrap();
        let (_, g1) = next_batch(&mut sent).await;
        g1.send(Err(BatchFailure::Unknown("timed out".into())))
            .unwrap();
        // Never left: retried.
        assert!(matches!(
            item_step(got(r0).await),
            ControlFlow::Continue(NodeError::Unavailable(_))
        ));
        for r in [r1, r2] {
            assert!(matches!(
                item_step(got(r).await),
                ControlFlow::Break(Err(NodeError::OutcomeUnknown(_)))
            ));
        }
        // A short answer cannot be matched to items: unknown for all.
        let r3 = c.submit(b("d"), send.clone());
        let r4 = c.submit(b("e"), send.clone());
        let (x, g2) = next_batch(&mut sent).await;
        assert_eq!(x, vec![b("d")]);
        let r5 = c.submit(b("f"), send.clone());
        g2.send(Ok(vec![])).unwrap();
        let (y, g3) = next_batch(&mut sent).await;
        assert_eq!(y, vec![b("e"), b("f")]);
        g3.send(Ok(vec![BatchItem::Applied(b("1"))])).unwrap();
        for r in [r3, r4, r5] {
            assert!(matches!(got(r).await, Err(BatchFailure::Unknown(_))));
        }
    }

    #[tokio::test]
    async fn batches_respect_the_item_and_byte_bounds() {
        let c = Arc::new(Coalescer::new(Limits {
            max_items: 3,
            max_bytes: 10,
            max_in_flight: 1,
            ..Limits::default()
        }));
        let (send, mut sent) = gated();
        let _r = c.submit(b("first"), send.clone());
        let (_, g) = next_batch(&mut sent).await;
        let mut rs = Vec::new();
        for s in ["1", "2", "3", "4", "12345678", "abc", "0123456789ABC", "z"] {
            rs.push(c.submit(b(s), send.clone()));
        }
        g.send(Ok(vec![BatchItem::Applied(b(""))])).unwrap();
        let mut batches = Vec::new();
        for _ in 0..5 {
            let (x, g) = next_batch(&mut sent).await;
            g.send(Ok(x.iter().map(|_| BatchItem::Applied(b(""))).collect()))
                .unwrap();
            batches.push(x);
        }
        assert_eq!(
            batches,
            vec![
                vec![b("1"), b("2"), b("3")],
                vec![b("4"), b("12345678")],
                vec![b("abc")],
                // Larger than the byte bound: travels alone.
                vec![b("0123456789ABC")],
                vec![b("z")],
            ]
        );
        for r in rs {
            assert!(got(r).await.is_ok());
        }
        // Leader side: oversize batches are refused as Invalid.
        let many = vec![b("x"); MAX_BATCH_ITEMS + 1];
        assert!(matches!(check_batch(&many), Err(NodeError::Invalid(_))));
        let big = vec![Bytes::from(vec![0u8; MAX_BATCH_BYTES / 2 + 1]); 2];
        assert!(matches!(check_batch(&big), Err(NodeError::Invalid(_))));
        assert!(check_batch(&vec![b("x"); MAX_BATCH_ITEMS]).is_ok());
    }

    #[tokio::test]
    async fn an_item_whose_caller_gave_up_before_it_left_is_never_sent() {
        let c = Arc::new(Coalescer::new(Limits {
            max_in_flight: 1,
            ..Limits::default()
        }));
        let (send, mut sent) = gated();
        let _r0 = c.submit(b("a"), send.clone());
        let (_, g0) = next_batch(&mut sent).await;
        drop(c.submit(b("gone"), send.clone()));
        let r2 = c.submit(b("kept"), send.clone());
        g0.send(Ok(vec![BatchItem::Applied(b(""))])).unwrap();
        let (x, g1) = next_batch(&mut sent).await;
        assert_eq!(x, vec![b("kept")]);
        g1.send(Ok(vec![BatchItem::Applied(b("k"))])).unwrap();
        assert_eq!(got(r2).await, Ok(BatchItem::Applied(b("k"))));
    }

    #[tokio::test]
    async fn a_refused_batch_is_remembered_for_its_term_and_nothing_queued_leaves() {
        let c = Arc::new(Coalescer::new(Limits {
            max_in_flight: 1,
            ..Limits::default()
        }));
        let (send, mut sent) = gated();
        let r0 = c.submit(b("a"), send.clone());
        let (_, g0) = next_batch(&mut sent).await;
        let r1 = c.submit(b("b"), send.clone());
        let r2 = c.submit(b("c"), send.clone());
        g0.send(Ok(vec![BatchItem::Applied(b("0"))])).unwrap();
        let (x, g1) = next_batch(&mut sent).await;
        assert_eq!(x, vec![b("b"), b("c")]);
        let r3 = c.submit(b("d"), send.clone());
        assert_eq!(c.batch_refusal(), None);
        g1.send(Err(BatchFailure::Unsupported { term: 7 })).unwrap();
        assert_eq!(got(r0).await, Ok(BatchItem::Applied(b("0"))));
        for r in [r1, r2, r3] {
            let v = got(r).await;
            assert_eq!(v, Err(BatchFailure::Unsupported { term: 7 }));
            // Certainly not applied: the caller may send it again.
            assert!(matches!(item_step(v), ControlFlow::Continue(_)));
        }
        settle().await;
        assert!(
            sent.try_recv().is_err(),
            "queued behind the refusal: not sent"
        );
        assert_eq!(c.batch_refusal(), Some(7));
        c.forget_refusal(6);
        assert_eq!(c.batch_refusal(), Some(7), "another term's refusal stays");
        c.forget_refusal(7);
        assert_eq!(c.batch_refusal(), None);
        // Batches go again.
        let r4 = c.submit(b("e"), send.clone());
        let (_, g2) = next_batch(&mut sent).await;
        g2.send(Ok(vec![BatchItem::Applied(b("4"))])).unwrap();
        assert_eq!(got(r4).await, Ok(BatchItem::Applied(b("4"))));
    }

    #[tokio::test]
    async fn a_refusal_is_forgotten_after_its_time() {
        let c = Arc::new(Coalescer::new(Limits {
            max_in_flight: 1,
            refusal_ttl: Duration::from_millis(200),
            ..Limits::default()
        }));
        let (send, mut sent) = gated();
        let _r0 = c.submit(b("a"), send.clone());
        let (_, g0) = next_batch(&mut sent).await;
        let r1 = c.submit(b("b"), send.clone());
        g0.send(Err(BatchFailure::Unsupported { term: 3 })).unwrap();
        assert_eq!(got(r1).await, Err(BatchFailure::Unsupported { term: 3 }));
        assert_eq!(c.batch_refusal(), Some(3));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(c.batch_refusal(), None);
        // Queued entries leave again once it is forgotten.
        let _r2 = c.submit(b("c"), send.clone());
        let (x, _g2) = next_batch(&mut sent).await;
        assert_eq!(x, vec![b("c")]);
    }
}
