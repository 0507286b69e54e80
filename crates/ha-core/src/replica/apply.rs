//! The apply task: owns the state machine, applies committed entries strictly
//! in order and answers the proposers whose entries they are.
//!
//! State-machine calls may block (a durable state machine writes to disk), so
//! every batch and every query runs on the blocking pool: the state machine
//! is moved into `spawn_blocking` and handed back when the call returns.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::snapshot::{self, SnapshotJob};
use super::{ReplicaError, Reply};
use crate::state_machine::{Applied, StateMachine, VecChunks};
use crate::types::{LogId, LogIndex, Membership, SnapshotMeta};

/// What the state machine gets for one entry.
#[derive(Debug)]
pub(super) enum ApplyPayload {
    Blank,
    Membership(Membership),
    /// The command without its request tag (or the raw payload of an
    /// untagged entry).
    Command(Bytes),
}

/// Who to answer once the entry is applied.
pub(super) enum ApplyReply {
    /// The entry is the proposer's: answer with the state machine's response.
    Matched(Reply<Bytes>),
    /// Another entry took the proposer's index: answer `Dropped`.
    Dropped(Reply<Bytes>),
}

/// One committed entry, ready for the state machine.
pub(super) struct ApplyItem {
    pub(super) log_id: LogId,
    pub(super) payload: ApplyPayload,
    pub(super) reply: Option<ApplyReply>,
}

/// A read of the state machine's state, run on the apply task.
pub(super) type Query<S> = Box<dyn FnOnce(&S) + Send + 'static>;

/// Work for the apply task, in the order the driver decided it.
pub(super) enum ApplyMsg {
    /// Committed entries.
    Batch(Vec<ApplyItem>),
    /// Replace the state with a snapshot staged from the leader.
    Install {
        meta: SnapshotMeta,
        chunks: Vec<Bytes>,
        done: oneshot::Sender<Result<(), ReplicaError>>,
    },
    /// Build a snapshot and stream it to a follower.
    Send(SnapshotJob),
    /// Build a snapshot and report what it covers (log compaction).
    Build {
        done: oneshot::Sender<Result<SnapshotMeta, ReplicaError>>,
    },
}

/// Snapshot counters shared by the apply task's streams and the driver.
#[derive(Debug, Default)]
pub(super) struct SnapshotCounters {
    pub(super) sent: AtomicU64,
    pub(super) send_failed: AtomicU64,
}

/// How the apply task ended.
pub(super) struct ApplyExit<S> {
    pub(super) state_machine: Option<S>,
    pub(super) error: Option<ReplicaError>,
}

/// Runs until `batches` closes (the driver is done) or the state machine
/// fails. Publishes the applied index on `applied_tx` after every batch.
pub(super) async fn run<S: StateMachine>(
    sm: S,
    batches: mpsc::UnboundedReceiver<ApplyMsg>,
    queries: mpsc::Receiver<Query<S>>,
    applied_tx: watch::Sender<LogIndex>,
    counters: Arc<SnapshotCounters>,
) -> ApplyExit<S> {
    let cancel = Arc::new(AtomicBool::new(false));
    let mut streams: Vec<JoinHandle<()>> = Vec::new();
    let exit = run_inner(
        sm,
        batches,
        queries,
        applied_tx,
        &counters,
        &cancel,
        &mut streams,
    )
    .await;
    // Stop snapshot streams between chunks and wait for them: no task is
    // left running once the replica has stopped.
    cancel.store(true, Ordering::SeqCst);
    for s in streams {
        let _ = s.await;
    }
    exit
}

#[allow(clippy::too_many_arguments)]
async fn run_inner<S: StateMachine>(
    mut sm: S,
    mut batches: mpsc::UnboundedReceiver<ApplyMsg>,
    mut queries: mpsc::Receiver<Query<S>>,
    applied_tx: watch::Sender<LogIndex>,
    counters: &Arc<SnapshotCounters>,
    cancel: &Arc<AtomicBool>,
    streams: &mut Vec<JoinHandle<()>>,
) -> ApplyExit<S> {
    let mut queries_open = true;
    // A message taken while merging batches that was not a batch; it is
    // handled next, before anything newer.
    let mut stash: Option<ApplyMsg> = None;
    loop {
        streams.retain(|s| !s.is_finished());
        let stashed = stash.take();
        let has_stash = stashed.is_some();
        tokio::select! {
            // Committed entries first: a query should see the newest state.
            biased;
            msg = async { match stashed { Some(m) => Some(m), None => batches.recv().await } } => {
                let mut batch = match msg {
                    None => break,
                    Some(ApplyMsg::Batch(batch)) => batch,
                    Some(ApplyMsg::Install { meta, chunks, done }) => {
                        let index = meta.last_log_id.index;
                        let res = tokio::task::spawn_blocking(move || {
                            let r = sm.install_snapshot(&meta, &mut VecChunks::new(chunks));
                            (sm, r)
                        })
                        .await;
                        match res {
                            Ok((back, r)) => {
                                sm = back;
                                let r = r.map_err(|e| {
                                    ReplicaError::StateMachine(format!("installing snapshot: {e}"))
                                });
                                if r.is_ok() {
                                    applied_tx.send_replace(index);
                                }
                                let _ = done.send(r);
                            }
                            Err(join) => {
                                let err = ReplicaError::StateMachine(format!(
                                    "state machine panicked installing a snapshot: {join}"
                                ));
                                let _ = done.send(Err(err.clone()));
                                return ApplyExit { state_machine: None, error: Some(err) };
                            }
                        }
                        continue;
                    }
                    Some(ApplyMsg::Build { done }) => {
                        let res = tokio::task::spawn_blocking(move || {
                            let r = sm.snapshot().map(|src| src.meta().clone());
                            (sm, r)
                        })
                        .await;
                        match res {
                            Ok((back, r)) => {
                                sm = back;
                                let _ = done.send(r.map_err(|e| {
                                    ReplicaError::StateMachine(format!("building a snapshot: {e}"))
                                }));
                            }
                            Err(join) => {
                                return ApplyExit {
                                    state_machine: None,
                                    error: Some(ReplicaError::StateMachine(format!(
                                        "state machine panicked building a snapshot: {join}"
                                    ))),
                                };
                            }
                        }
                        continue;
                    }
                    Some(ApplyMsg::Send(job)) => {
                        let res = tokio::task::spawn_blocking(move || {
                            let r = sm.snapshot();
                            (sm, r)
                        })
                        .await;
                        match res {
                            Ok((back, r)) => {
                                sm = back;
                                match r {
                                    Ok(source) => {
                                        let counters = Arc::clone(counters);
                                        let cancel = Arc::clone(cancel);
                                        streams.push(tokio::task::spawn_blocking(move || {
                                            snapshot::stream(job, source, &counters, &cancel)
                                        }));
                                    }
                                    Err(e) => {
                                        counters.send_failed.fetch_add(1, Ordering::Relaxed);
                                        tracing::warn!(to = %job.to, error = %e, "building a snapshot to send failed");
                                    }
                                }
                            }
                            Err(join) => {
                                return ApplyExit {
                                    state_machine: None,
                                    error: Some(ReplicaError::StateMachine(format!(
                                        "state machine panicked building a snapshot: {join}"
                                    ))),
                                };
                            }
                        }
                        continue;
                    }
                };
                // Everything already queued shares this trip to the blocking
                // pool: further batches (in order) and then waiting queries,
                // which see the state after them.
                for _ in 1..MAX_BATCHES_PER_CALL {
                    match batches.try_recv() {
                        Ok(ApplyMsg::Batch(more)) => batch.extend(more),
                        Ok(other) => {
                            stash = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                let waiting = drain_queries(&mut queries, None, queries_open);
                let done = tokio::task::spawn_blocking(move || {
                    let out = apply_batch(&mut sm, batch);
                    if out.1.is_none() {
                        for q in waiting {
                            q(&sm);
                        }
                    }
                    (sm, out)
                })
                .await;
                match done {
                    Ok((back, (last_ok, err))) => {
                        sm = back;
                        // Never publish a lower index: entries at or below
                        // an installed snapshot are skipped by the state
                        // machine but still pass through here.
                        if let Some(last) = last_ok {
                            applied_tx.send_if_modified(|cur| {
                                let newer = last > *cur;
                                if newer {
                                    *cur = last;
                                }
                                newer
                            });
                        }
                        if let Some(e) = err {
                            tracing::error!(error = %e, "state machine failed; stopping the replica");
                            return ApplyExit { state_machine: Some(sm), error: Some(e) };
                        }
                    }
                    Err(join) => {
                        return ApplyExit {
                            state_machine: None,
                            error: Some(ReplicaError::StateMachine(format!(
                                "state machine panicked: {join}"
                            ))),
                        };
                    }
                }
            }
            q = queries.recv(), if queries_open && !has_stash => {
                let Some(q) = q else {
                    queries_open = false;
                    continue;
                };
                let waiting = drain_queries(&mut queries, Some(q), queries_open);
                let done = tokio::task::spawn_blocking(move || {
                    for q in waiting {
                        q(&sm);
                    }
                    sm
                })
                .await;
                match done {
                    Ok(back) => sm = back,
                    Err(join) => {
                        return ApplyExit {
                            state_machine: None,
                            error: Some(ReplicaError::StateMachine(format!(
                                "a query panicked while holding the state machine: {join}"
                            ))),
                        };
                    }
                }
            }
        }
    }
    // Queries still queued are dropped; their callers see `Shutdown`.
    ApplyExit {
        state_machine: Some(sm),
        error: None,
    }
}

/// Most queued committed batches merged into one call on the blocking pool.
pub(super) const MAX_BATCHES_PER_CALL: usize = 64;
/// Most queued queries run in one call on the blocking pool (each trip
/// there costs a thread hand-off; a burst of reads shares one).
pub(super) const MAX_QUERIES_PER_CALL: usize = 256;

/// `first` and the queries already queued, at most [`MAX_QUERIES_PER_CALL`].
fn drain_queries<S>(
    queries: &mut mpsc::Receiver<Query<S>>,
    first: Option<Query<S>>,
    open: bool,
) -> Vec<Query<S>> {
    let mut out: Vec<Query<S>> = first.into_iter().collect();
    while open && out.len() < MAX_QUERIES_PER_CALL {
        match queries.try_recv() {
            Ok(q) => out.push(q),
            Err(_) => break,
        }
    }
    out
}

/// Applies `batch` in order. Returns the last index applied and, if the state
/// machine failed, the error (every remaining proposer gets it too).
fn apply_batch<S: StateMachine>(
    sm: &mut S,
    batch: Vec<ApplyItem>,
) -> (Option<LogIndex>, Option<ReplicaError>) {
    let mut last_ok = None;
    // Responses wait for the batch's flush: nothing is reported done
    // before the state machine made it durable.
    let mut done: Vec<(ApplyReply, Result<Bytes, ReplicaError>)> = Vec::with_capacity(batch.len());
    let mut failed = None;
    let mut items = batch.into_iter();
    for item in items.by_ref() {
        let entry = match &item.payload {
            ApplyPayload::Blank => Applied::Blank,
            ApplyPayload::Membership(m) => Applied::Membership(m),
            ApplyPayload::Command(data) => Applied::Command(data),
        };
        match sm.apply(item.log_id, entry) {
            Ok(response) => {
                last_ok = Some(item.log_id.index);
                match item.reply {
                    Some(ApplyReply::Matched(r)) => {
                        done.push((ApplyReply::Matched(r), Ok(response)))
                    }
                    Some(ApplyReply::Dropped(r)) => {
                        done.push((ApplyReply::Dropped(r), Err(ReplicaError::Dropped)))
                    }
                    None => {}
                }
            }
            Err(e) => {
                let err =
                    ReplicaError::StateMachine(format!("applying {:?} failed: {e}", item.log_id));
                if let Some(r) = item.reply {
                    done.push((r, Err(err.clone())));
                }
                failed = Some(err);
                break;
            }
        }
    }
    if let Err(e) = sm.flush() {
        let err = ReplicaError::StateMachine(format!(
            "making the applies up to {last_ok:?} durable failed: {e}"
        ));
        for (_, result) in &mut done {
            *result = Err(err.clone());
        }
        failed.get_or_insert(err);
    }
    for (reply, result) in done {
        match reply {
            ApplyReply::Matched(r) | ApplyReply::Dropped(r) => r.send(result),
        }
    }
    if let Some(err) = &failed {
        for rest in items {
            if let Some(ApplyReply::Matched(r) | ApplyReply::Dropped(r)) = rest.reply {
                r.send(Err(err.clone()));
            }
        }
    }
    (last_ok, failed)
}
