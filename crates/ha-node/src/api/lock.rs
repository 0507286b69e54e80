//! The Lock and Election services. Both block server-side: the request is
//! proposed once (ha-lock queues the caller in create-revision order), then
//! the call waits on this member's event stream until the caller's key is
//! first in line, re-checking that the key still exists (its lease may
//! expire while waiting). A waiter whose client goes away withdraws its key
//! so it never blocks the line. The checks are linearizable reads: on a
//! follower the proposal may have applied on the leader first, and a stale
//! read must not report the caller's fresh key as gone.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use ha_lock::api as hl;
use prost::Message;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::backend::EventBatch;
use super::convert::kv_to_pb;
use super::error::{MSG_ELECTION_NO_LEADER, MSG_LEASE_NOT_FOUND};
use super::pb::v3electionpb as epb;
use super::pb::v3electionpb::election_server::Election;
use super::pb::v3lockpb as lpb;
use super::pb::v3lockpb::lock_server::Lock;
use super::{Backend, Shared, stopping_status, unexpected};

/// etcd's message for Proclaim/Resign without a leader key.
const MSG_MISSING_LEADER_KEY: &str = "\"leader\" field must be provided";

/// `name` followed by `/`: every candidate/waiter key lies under it.
fn key_prefix(name: &[u8]) -> Bytes {
    let mut p = BytesMut::with_capacity(name.len() + 1);
    p.put_slice(name);
    p.put_u8(b'/');
    p.freeze()
}

/// Waits until something under `prefix` may have changed: an event on it,
/// lost events (lag), or the re-check interval. Errors when the server stops
/// or the event source is gone.
async fn wait_for_change<B: Backend>(
    shared: &Shared<B>,
    events: &mut broadcast::Receiver<Arc<EventBatch>>,
    prefix: &[u8],
) -> Result<(), Status> {
    let recheck = Duration::from_millis(shared.config.wait_recheck_interval_ms);
    let deadline = tokio::time::sleep(recheck);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Ok(batch) => {
                    if batch.events.iter().any(|e| e.kv.key.starts_with(prefix)) {
                        return Ok(());
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => return Ok(()),
                Err(broadcast::error::RecvError::Closed) => return Err(stopping_status()),
            },
            () = &mut deadline => return Ok(()),
            () = shared.stopped() => return Err(stopping_status()),
        }
    }
}

/// Withdraws a waiting key (lock waiter or candidate) if the call ends before
/// it is granted — the client went away, the server stops, or an error.
struct Withdraw<B: Backend> {
    shared: Arc<Shared<B>>,
    cmd: Option<hl::Command>,
}

impl<B: Backend> Withdraw<B> {
    fn disarm(mut self) {
        self.cmd = None;
    }
}

impl<B: Backend> Drop for Withdraw<B> {
    fn drop(&mut self) {
        let Some(cmd) = self.cmd.take() else { return };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let shared = self.shared.clone();
        rt.spawn(async move {
            // Best effort: if it fails, the lease's expiry removes the key.
            let _ = shared.backend.write(cmd).await;
        });
    }
}

/// Whether `key` exists on this member.
fn exists(m: &ha_lock::LockMachine, key: &Bytes) -> bool {
    let req = hl::RangeRequest {
        key: key.clone(),
        count_only: true,
        ..Default::default()
    };
    matches!(m.range(&req), Ok(r) if r.count > 0)
}

/// Lock over a [`Backend`].
pub(crate) struct LockService<B> {
    shared: Arc<Shared<B>>,
}

impl<B> LockService<B> {
    pub(crate) fn new(shared: Arc<Shared<B>>) -> Self {
        Self { shared }
    }
}

#[tonic::async_trait]
impl<B: Backend> Lock for LockService<B> {
    async fn lock(
        &self,
        request: Request<lpb::LockRequest>,
    ) -> Result<Response<lpb::LockResponse>, Status> {
        if let Some(e) = self.shared.backend.refuses("locks and elections") {
            return Err(e.into());
        }
        let req = request.into_inner();
        self.shared.check_size(req.encoded_len())?;
        let shared = &self.shared;
        // Subscribe before proposing so no release goes unnoticed.
        let mut events = shared.backend.subscribe();
        let name = req.name;
        let (rev, resp) = shared
            .write(hl::Command::Lock {
                name: name.clone(),
                lease: req.lease,
            })
            .await?;
        let hl::Response::Lock(lock) = resp else {
            return Err(unexpected(&resp));
        };
        if lock.acquired {
            return Ok(Response::new(lpb::LockResponse {
                header: shared.header(rev),
                key: lock.key,
            }));
        }
        let guard = Withdraw {
            shared: shared.clone(),
            cmd: Some(hl::Command::Unlock {
                key: lock.key.clone(),
            }),
        };
        let prefix = key_prefix(&name);
        loop {
            let (n, k) = (name.clone(), lock.key.clone());
            let (owner, mine, rev) = shared
                .backend
                .read(true, move |m| {
                    (m.lock_owner(&n), exists(m, &k), m.current_revision())
                })
                .await?;
            if owner.is_some_and(|o| o.key == lock.key) {
                guard.disarm();
                return Ok(Response::new(lpb::LockResponse {
                    header: shared.header(rev),
                    key: lock.key,
                }));
            }
            if !mine {
                // The lease expired or was revoked while waiting.
                guard.disarm();
                return Err(Status::not_found(MSG_LEASE_NOT_FOUND));
            }
            wait_for_change(shared, &mut events, &prefix).await?;
        }
    }

    async fn unlock(
        &self,
        request: Request<lpb::UnlockRequest>,
    ) -> Result<Response<lpb::UnlockResponse>, Status> {
        if let Some(e) = self.shared.backend.refuses("locks and elections") {
            return Err(e.into());
        }
        let key = request.into_inner().key;
        match self.shared.write(hl::Command::Unlock { key }).await? {
            (rev, hl::Response::Unlock) => Ok(Response::new(lpb::UnlockResponse {
                header: self.shared.header(rev),
            })),
            (_, other) => Err(unexpected(&other)),
        }
    }
}

/// Election over a [`Backend`].
pub(crate) struct ElectionService<B> {
    shared: Arc<Shared<B>>,
}

impl<B> ElectionService<B> {
    pub(crate) fn new(shared: Arc<Shared<B>>) -> Self {
        Self { shared }
    }
}

fn leader_to_pb(l: hl::LeaderKey) -> epb::LeaderKey {
    epb::LeaderKey {
        name: l.name,
        key: l.key,
        rev: l.rev,
        lease: l.lease,
    }
}

fn leader_from_pb(l: Option<epb::LeaderKey>) -> Result<hl::LeaderKey, Status> {
    let l = l.ok_or_else(|| Status::invalid_argument(MSG_MISSING_LEADER_KEY))?;
    Ok(hl::LeaderKey {
        name: l.name,
        key: l.key,
        rev: l.rev,
        lease: l.lease,
    })
}

/// The leader's key-value of election `name`, if any.
fn leader_kv(m: &ha_lock::LockMachine, name: &[u8]) -> Option<hl::KeyValue> {
    let leader = m.election_leader(name)?;
    let req = hl::RangeRequest {
        key: leader.key,
        ..Default::default()
    };
    m.range(&req).ok()?.kvs.into_iter().next()
}

/// The response stream of Observe.
type ObserveStream =
    Pin<Box<dyn Stream<Item = Result<epb::LeaderResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl<B: Backend> Election for ElectionService<B> {
    async fn campaign(
        &self,
        request: Request<epb::CampaignRequest>,
    ) -> Result<Response<epb::CampaignResponse>, Status> {
        if let Some(e) = self.shared.backend.refuses("locks and elections") {
            return Err(e.into());
        }
        let req = request.into_inner();
        self.shared.check_size(req.encoded_len())?;
        let shared = &self.shared;
        let mut events = shared.backend.subscribe();
        let name = req.name;
        let (rev, resp) = shared
            .write(hl::Command::Campaign {
                name: name.clone(),
                lease: req.lease,
                value: req.value,
            })
            .await?;
        let hl::Response::Campaign(c) = resp else {
            return Err(unexpected(&resp));
        };
        if c.elected {
            return Ok(Response::new(epb::CampaignResponse {
                header: shared.header(rev),
                leader: Some(leader_to_pb(c.leader)),
            }));
        }
        let guard = Withdraw {
            shared: shared.clone(),
            cmd: Some(hl::Command::Resign {
                leader: c.leader.clone(),
            }),
        };
        let prefix = key_prefix(&name);
        let mine = c.leader;
        loop {
            let (n, k) = (name.clone(), mine.key.clone());
            let (leader, still_there, rev) = shared
                .backend
                .read(true, move |m| {
                    (m.election_leader(&n), exists(m, &k), m.current_revision())
                })
                .await?;
            if let Some(leader) = leader.filter(|l| l.key == mine.key) {
                guard.disarm();
                return Ok(Response::new(epb::CampaignResponse {
                    header: shared.header(rev),
                    leader: Some(leader_to_pb(leader)),
                }));
            }
            if !still_there {
                guard.disarm();
                return Err(Status::not_found(MSG_LEASE_NOT_FOUND));
            }
            wait_for_change(shared, &mut events, &prefix).await?;
        }
    }

    async fn proclaim(
        &self,
        request: Request<epb::ProclaimRequest>,
    ) -> Result<Response<epb::ProclaimResponse>, Status> {
        if let Some(e) = self.shared.backend.refuses("locks and elections") {
            return Err(e.into());
        }
        let req = request.into_inner();
        self.shared.check_size(req.encoded_len())?;
        let cmd = hl::Command::Proclaim {
            leader: leader_from_pb(req.leader)?,
            value: req.value,
        };
        match self.shared.write(cmd).await? {
            (rev, hl::Response::Proclaim) => Ok(Response::new(epb::ProclaimResponse {
                header: self.shared.header(rev),
            })),
            (_, other) => Err(unexpected(&other)),
        }
    }

    async fn leader(
        &self,
        request: Request<epb::LeaderRequest>,
    ) -> Result<Response<epb::LeaderResponse>, Status> {
        if let Some(e) = self.shared.backend.refuses("locks and elections") {
            return Err(e.into());
        }
        let name = request.into_inner().name;
        let (kv, rev) = self
            .shared
            .backend
            .read(true, move |m| (leader_kv(m, &name), m.current_revision()))
            .await?;
        match kv {
            Some(kv) => Ok(Response::new(epb::LeaderResponse {
                header: self.shared.header(rev),
                kv: Some(kv_to_pb(kv)),
            })),
            None => Err(Status::unknown(MSG_ELECTION_NO_LEADER)),
        }
    }

    type ObserveStream = ObserveStream;

    async fn observe(
        &self,
        request: Request<epb::LeaderRequest>,
    ) -> Result<Response<Self::ObserveStream>, Status> {
        if let Some(e) = self.shared.backend.refuses("locks and elections") {
            return Err(e.into());
        }
        let name = request.into_inner().name;
        let shared = self.shared.clone();
        let (tx, rx) = mpsc::channel(shared.config.stream_queue_len);
        tokio::spawn(async move {
            let mut events = shared.backend.subscribe();
            let prefix = key_prefix(&name);
            // (key, mod_revision) of the last leader sent: only changes go out.
            let mut last: Option<(Bytes, i64)> = None;
            loop {
                let n = name.clone();
                let read = shared
                    .backend
                    .read(false, move |m| (leader_kv(m, &n), m.current_revision()))
                    .await;
                let (kv, rev) = match read {
                    Ok(v) => v,
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                };
                if let Some(kv) = kv {
                    let id = (kv.key.clone(), kv.mod_revision);
                    if last.as_ref() != Some(&id) {
                        let resp = epb::LeaderResponse {
                            header: shared.header(rev),
                            kv: Some(kv_to_pb(kv)),
                        };
                        // Only the newest leader matters: a slow observer
                        // waits here, and reads the state afresh after.
                        if tx.send(Ok(resp)).await.is_err() {
                            return;
                        }
                        last = Some(id);
                    }
                }
                tokio::select! {
                    r = wait_for_change(&shared, &mut events, &prefix) => {
                        if let Err(status) = r {
                            let _ = tx.send(Err(status)).await;
                            return;
                        }
                    }
                    () = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn resign(
        &self,
        request: Request<epb::ResignRequest>,
    ) -> Result<Response<epb::ResignResponse>, Status> {
        if let Some(e) = self.shared.backend.refuses("locks and elections") {
            return Err(e.into());
        }
        let leader = leader_from_pb(request.into_inner().leader)?;
        match self.shared.write(hl::Command::Resign { leader }).await? {
            (rev, hl::Response::Resign) => Ok(Response::new(epb::ResignResponse {
                header: self.shared.header(rev),
            })),
            (_, other) => Err(unexpected(&other)),
        }
    }
}
