//! The Watch service: one task per stream owns the stream's watches.
//!
//! Delivery without gap or duplicate: the stream subscribes to the
//! backend's live events *before* it reads anything, and each watch keeps
//! `next_rev`, the first revision it has not delivered. A watch starting in
//! the past (or one whose stream lagged) is *behind*: it reads history with
//! `events_since(next_rev)` in bounded steps until it reaches the current
//! revision, while live batches below its `next_rev` are skipped. Synced
//! watches take live batches with revision `>= next_rev`.
//!
//! Memory stays bounded: live batches wait in the backend's bounded
//! broadcast; responses wait in a `watch_queue_len` channel; when the client
//! reads too slowly the broadcast overflows, the stream gets `Lagged`, and
//! every watch falls back to history. If that history was compacted
//! meanwhile, the watch is cancelled with etcd's compacted response
//! (`compact_revision` set), which clients answer by re-reading and
//! re-watching.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ha_lock::api as hl;
use prost::Message;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::backend::EventBatch;
use super::convert::{event_to_pb, in_range};
use super::error::{MSG_WATCH_COMPACTED, MSG_WATCH_DUPLICATE_ID};
use super::pb::etcdserverpb as pb;
use super::pb::etcdserverpb::watch_server::Watch;
use super::pb::mvccpb;
use super::{Backend, Shared, stopping_status};

/// The watch id of responses not about one watch (etcd's `InvalidWatchID`).
const NO_WATCH_ID: i64 = -1;

/// Watch over a [`Backend`].
pub(crate) struct WatchService<B> {
    shared: Arc<Shared<B>>,
}

impl<B> WatchService<B> {
    pub(crate) fn new(shared: Arc<Shared<B>>) -> Self {
        Self { shared }
    }
}

/// The response stream of Watch.
type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl<B: Backend> Watch for WatchService<B> {
    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<Streaming<pb::WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        if let Some(e) = self.shared.backend.refuses("watch") {
            return Err(e.into());
        }
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(self.shared.config.watch_queue_len);
        // Subscribe first: every batch applied from now on is either in the
        // receiver or (if it overflows) in history read later.
        let live = self.shared.backend.subscribe();
        let stream = WatchStreamTask {
            shared: self.shared.clone(),
            tx,
            watchers: BTreeMap::new(),
            next_id: 0,
            known_rev: 0,
        };
        tokio::spawn(stream.run(inbound, live));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// One watch of a stream.
struct Watcher {
    key: Bytes,
    range_end: Bytes,
    no_put: bool,
    no_delete: bool,
    prev_kv: bool,
    progress_notify: bool,
    fragment: bool,
    /// First revision not yet delivered.
    next_rev: i64,
    /// Must read history from `next_rev` before taking live batches.
    behind: bool,
}

impl Watcher {
    /// The wire events of `events` this watch wants.
    fn select(&self, events: &[hl::Event]) -> Vec<mvccpb::Event> {
        events
            .iter()
            .filter(|e| in_range(&e.kv.key, &self.key, &self.range_end))
            .filter(|e| match e.kind {
                hl::EventType::Put => !self.no_put,
                hl::EventType::Delete => !self.no_delete,
            })
            .map(|e| event_to_pb(e, self.prev_kv))
            .collect()
    }
}

/// Why a stream task ends.
enum End {
    /// The client went away or closed its side.
    Client,
    /// The server stops (the client is told).
    Stopping,
}

/// The state of one Watch stream, owned by its task.
struct WatchStreamTask<B> {
    shared: Arc<Shared<B>>,
    tx: mpsc::Sender<Result<pb::WatchResponse, Status>>,
    watchers: BTreeMap<i64, Watcher>,
    next_id: i64,
    /// Highest store revision this stream knows is applied.
    known_rev: i64,
}

impl<B: Backend> WatchStreamTask<B> {
    async fn run(
        mut self,
        mut inbound: Streaming<pb::WatchRequest>,
        mut live: broadcast::Receiver<Arc<EventBatch>>,
    ) {
        let period = Duration::from_millis(self.shared.config.watch_progress_interval_ms);
        let mut progress = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let shared = self.shared.clone();
        let outcome: Result<(), End> = async {
            loop {
                let behind = self.watchers.values().any(|w| w.behind);
                tokio::select! {
                    req = inbound.next() => match req {
                        Some(Ok(req)) => self.handle(req, &mut live).await?,
                        Some(Err(_)) | None => return Err(End::Client),
                    },
                    batch = live.recv() => self.on_live(batch).await?,
                    _ = progress.tick() => self.progress_notify().await?,
                    () = shared.stopped() => return Err(End::Stopping),
                    () = self.tx.closed() => return Err(End::Client),
                    // Behind watches advance one bounded step per turn, so
                    // requests and live events keep flowing meanwhile.
                    () = std::future::ready(()), if behind => self.catch_up_step().await?,
                }
            }
        }
        .await;
        if let Err(End::Stopping) = outcome {
            // The client may be gone already.
            let _ = self.tx.send(Err(stopping_status())).await;
        }
    }

    fn header(&self, revision: i64) -> Option<pb::ResponseHeader> {
        self.shared.header(revision)
    }

    async fn send(&self, resp: pb::WatchResponse) -> Result<(), End> {
        self.tx.send(Ok(resp)).await.map_err(|_| End::Client)
    }

    /// A create refused before it got an id (etcd answers created+canceled
    /// with watch id -1 and the reason).
    async fn refuse_create(&self, reason: String) -> Result<(), End> {
        self.send(pb::WatchResponse {
            header: self.header(self.known_rev),
            watch_id: NO_WATCH_ID,
            created: true,
            canceled: true,
            cancel_reason: reason,
            ..Default::default()
        })
        .await
    }

    async fn handle(
        &mut self,
        req: pb::WatchRequest,
        live: &mut broadcast::Receiver<Arc<EventBatch>>,
    ) -> Result<(), End> {
        use pb::watch_request::RequestUnion;
        match req.request_union {
            Some(RequestUnion::CreateRequest(c)) => self.create(c).await,
            Some(RequestUnion::CancelRequest(c)) => {
                // As etcd: cancelling an unknown id is answered by nothing.
                if self.watchers.remove(&c.watch_id).is_some() {
                    self.send(pb::WatchResponse {
                        header: self.header(self.known_rev),
                        watch_id: c.watch_id,
                        canceled: true,
                        ..Default::default()
                    })
                    .await?;
                }
                Ok(())
            }
            Some(RequestUnion::ProgressRequest(_)) => {
                // Take in what is already queued so the answer is current.
                loop {
                    match live.try_recv() {
                        Ok(batch) => self.on_live(Ok(batch)).await?,
                        Err(broadcast::error::TryRecvError::Empty) => break,
                        Err(broadcast::error::TryRecvError::Lagged(n)) => {
                            self.on_live(Err(broadcast::error::RecvError::Lagged(n)))
                                .await?
                        }
                        Err(broadcast::error::TryRecvError::Closed) => {
                            return Err(End::Stopping);
                        }
                    }
                }
                if self.watchers.is_empty()
                    && let Ok(rev) = self.shared.revision().await
                {
                    self.known_rev = self.known_rev.max(rev);
                }
                let revision = self
                    .watchers
                    .values()
                    .map(|w| (w.next_rev - 1).min(self.known_rev))
                    .min()
                    .unwrap_or(self.known_rev);
                self.send(pb::WatchResponse {
                    header: self.header(revision),
                    watch_id: NO_WATCH_ID,
                    ..Default::default()
                })
                .await
            }
            // An empty request asks nothing.
            None => Ok(()),
        }
    }

    async fn create(&mut self, c: pb::WatchCreateRequest) -> Result<(), End> {
        use pb::watch_create_request::FilterType;
        let max = self.shared.config.max_watches_per_stream;
        if self.watchers.len() >= max {
            return self
                .refuse_create(format!(
                    "ha: too many watches on this stream (max_watches_per_stream = {max})"
                ))
                .await;
        }
        let (mut no_put, mut no_delete) = (false, false);
        for f in &c.filters {
            match FilterType::try_from(*f) {
                Ok(FilterType::Noput) => no_put = true,
                Ok(FilterType::Nodelete) => no_delete = true,
                Err(_) => {
                    return self
                        .refuse_create(format!("ha: unknown watch filter {f}"))
                        .await;
                }
            }
        }
        let id = if c.watch_id != 0 {
            if c.watch_id < 0 || self.watchers.contains_key(&c.watch_id) {
                return self.refuse_create(MSG_WATCH_DUPLICATE_ID.to_owned()).await;
            }
            c.watch_id
        } else {
            while self.watchers.contains_key(&self.next_id) {
                self.next_id = self.next_id.saturating_add(1);
            }
            self.next_id
        };
        self.next_id = self.next_id.max(id.saturating_add(1));
        let current = match self.shared.revision().await {
            Ok(rev) => rev,
            Err(status) => return self.refuse_create(status.message().to_owned()).await,
        };
        self.known_rev = self.known_rev.max(current);
        let (next_rev, behind) = if c.start_revision <= 0 {
            (current + 1, false)
        } else {
            (c.start_revision, c.start_revision <= current)
        };
        self.watchers.insert(
            id,
            Watcher {
                key: c.key,
                range_end: c.range_end,
                no_put,
                no_delete,
                prev_kv: c.prev_kv,
                progress_notify: c.progress_notify,
                fragment: c.fragment,
                next_rev,
                behind,
            },
        );
        self.send(pb::WatchResponse {
            header: self.header(current),
            watch_id: id,
            created: true,
            ..Default::default()
        })
        .await
    }

    /// Sends `events` for watch `id` at `revision`, split by the per-response
    /// event and byte limits.
    async fn deliver(&self, id: i64, revision: i64, events: Vec<mvccpb::Event>) -> Result<(), End> {
        if events.is_empty() {
            return Ok(());
        }
        let fragment = self.watchers.get(&id).is_some_and(|w| w.fragment);
        let max_events = self.shared.config.watch_max_events_per_response;
        let max_bytes = self.shared.config.watch_max_response_bytes;
        let mut chunks: Vec<Vec<mvccpb::Event>> = Vec::new();
        let mut current: Vec<mvccpb::Event> = Vec::new();
        let mut bytes = 0usize;
        for ev in events {
            let len = ev.encoded_len();
            if !current.is_empty() && (current.len() >= max_events || bytes + len > max_bytes) {
                chunks.push(std::mem::take(&mut current));
                bytes = 0;
            }
            bytes += len;
            current.push(ev);
        }
        chunks.push(current);
        let last = chunks.len() - 1;
        for (i, events) in chunks.into_iter().enumerate() {
            self.send(pb::WatchResponse {
                header: self.header(revision),
                watch_id: id,
                fragment: fragment && i < last,
                events,
                ..Default::default()
            })
            .await?;
        }
        Ok(())
    }

    async fn on_live(
        &mut self,
        batch: Result<Arc<EventBatch>, broadcast::error::RecvError>,
    ) -> Result<(), End> {
        let batch = match batch {
            Ok(batch) => batch,
            Err(broadcast::error::RecvError::Lagged(_)) => {
                // Batches were lost: every watch recovers them from history.
                for w in self.watchers.values_mut() {
                    w.behind = true;
                }
                return Ok(());
            }
            Err(broadcast::error::RecvError::Closed) => return Err(End::Stopping),
        };
        self.known_rev = self.known_rev.max(batch.revision);
        let mut out = Vec::new();
        for (id, w) in self.watchers.iter_mut() {
            if w.behind || batch.revision < w.next_rev {
                continue;
            }
            w.next_rev = batch.revision + 1;
            let events = w.select(&batch.events);
            if !events.is_empty() {
                out.push((*id, events));
            }
        }
        for (id, events) in out {
            self.deliver(id, batch.revision, events).await?;
        }
        Ok(())
    }

    /// One bounded history read for the first watch that is behind.
    async fn catch_up_step(&mut self) -> Result<(), End> {
        let Some((&id, w)) = self.watchers.iter().find(|(_, w)| w.behind) else {
            return Ok(());
        };
        let (start, key, end) = (w.next_rev, w.key.clone(), w.range_end.clone());
        let max = self.shared.config.watch_history_batch_events;
        let read = self
            .shared
            .backend
            .read(false, move |m| {
                (m.events_since(start, &key, &end, max), m.current_revision())
            })
            .await;
        let (events, current) = match read {
            Ok((Ok(events), current)) => (events, current),
            Ok((
                Err(hl::LockError::Compacted {
                    compact_revision, ..
                }),
                current,
            )) => {
                self.watchers.remove(&id);
                return self
                    .send(pb::WatchResponse {
                        header: self.header(current),
                        watch_id: id,
                        canceled: true,
                        compact_revision,
                        cancel_reason: MSG_WATCH_COMPACTED.to_owned(),
                        ..Default::default()
                    })
                    .await;
            }
            Ok((Err(e), current)) => {
                self.watchers.remove(&id);
                return self
                    .send(pb::WatchResponse {
                        header: self.header(current),
                        watch_id: id,
                        canceled: true,
                        cancel_reason: format!("ha: {e}"),
                        ..Default::default()
                    })
                    .await;
            }
            Err(e) => {
                self.watchers.remove(&id);
                return self
                    .send(pb::WatchResponse {
                        header: self.header(self.known_rev),
                        watch_id: id,
                        canceled: true,
                        cancel_reason: format!("ha: {e}"),
                        ..Default::default()
                    })
                    .await;
            }
        };
        self.known_rev = self.known_rev.max(current);
        // A full step may stop early; it always ends on a whole revision.
        let truncated = events.len() >= max;
        let last_rev = events.last().map_or(current, |e| e.kv.mod_revision);
        let Some(w) = self.watchers.get_mut(&id) else {
            return Ok(());
        };
        if truncated {
            w.next_rev = last_rev + 1;
        } else {
            w.next_rev = w.next_rev.max(current + 1);
            w.behind = false;
        }
        let selected = w.select(&events);
        let revision = if truncated { last_rev } else { current };
        self.deliver(id, revision, selected).await
    }

    /// Empty responses carrying the revision up to which each synced watch
    /// that asked for progress notifications has seen everything.
    async fn progress_notify(&mut self) -> Result<(), End> {
        let due: Vec<(i64, i64)> = self
            .watchers
            .iter()
            .filter(|(_, w)| w.progress_notify && !w.behind)
            .map(|(id, w)| (*id, (w.next_rev - 1).min(self.known_rev)))
            .collect();
        for (id, revision) in due {
            self.send(pb::WatchResponse {
                header: self.header(revision),
                watch_id: id,
                ..Default::default()
            })
            .await?;
        }
        Ok(())
    }
}
