//! The Lease service. etcd speaks seconds, ha-lock milliseconds: TTLs are
//! multiplied by 1000 going in; granted TTLs are rounded up and remaining
//! TTLs down going out.

use std::pin::Pin;
use std::sync::Arc;

use ha_lock::api as hl;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::error::{MSG_LEASE_TTL_TOO_LARGE, lock_status};
use super::pb::etcdserverpb as pb;
use super::pb::etcdserverpb::lease_server::Lease;
use super::{Backend, MAX_LEASE_TTL_S, Shared, stopping_status, unexpected};

/// Seconds, rounded up, of a granted TTL in milliseconds.
pub(crate) fn granted_s(ttl_ms: i64) -> i64 {
    if ttl_ms <= 0 {
        return ttl_ms.min(0);
    }
    ttl_ms.saturating_add(999) / 1000
}

/// Seconds, rounded down, of a remaining TTL (negative stays -1: not found).
pub(crate) fn remaining_s(ttl_ms: i64) -> i64 {
    if ttl_ms < 0 { -1 } else { ttl_ms / 1000 }
}

/// Lease over a [`Backend`].
pub(crate) struct LeaseService<B> {
    shared: Arc<Shared<B>>,
}

impl<B> LeaseService<B> {
    pub(crate) fn new(shared: Arc<Shared<B>>) -> Self {
        Self { shared }
    }
}

/// The response stream of LeaseKeepAlive.
type KeepAliveStream =
    Pin<Box<dyn Stream<Item = Result<pb::LeaseKeepAliveResponse, Status>> + Send + 'static>>;

/// One keep-alive: the response (TTL 0 when the lease does not exist, as etcd).
async fn keep_alive_once<B: Backend>(
    shared: &Shared<B>,
    id: i64,
) -> Result<pb::LeaseKeepAliveResponse, Status> {
    let applied = shared
        .backend
        .write(hl::Command::LeaseKeepAlive { id })
        .await?;
    let ttl = match applied.result {
        Ok(hl::Response::LeaseKeepAlive(k)) => granted_s(k.ttl_ms),
        Ok(other) => return Err(unexpected(&other)),
        Err(hl::LockError::LeaseNotFound { .. }) => 0,
        Err(e) => return Err(lock_status(&e)),
    };
    Ok(pb::LeaseKeepAliveResponse {
        header: shared.header(applied.revision),
        id,
        ttl,
    })
}

#[tonic::async_trait]
impl<B: Backend> Lease for LeaseService<B> {
    async fn lease_grant(
        &self,
        request: Request<pb::LeaseGrantRequest>,
    ) -> Result<Response<pb::LeaseGrantResponse>, Status> {
        if let Some(e) = self.shared.backend.refuses("leases") {
            return Err(e.into());
        }
        let req = request.into_inner();
        if req.ttl > MAX_LEASE_TTL_S {
            return Err(Status::out_of_range(MSG_LEASE_TTL_TOO_LARGE));
        }
        // etcd raises short (and zero) TTLs to its minimum.
        let ttl_s = req.ttl.max(self.shared.config.min_lease_ttl_s);
        let cmd = hl::Command::LeaseGrant(hl::LeaseGrantRequest {
            id: req.id,
            ttl_ms: ttl_s.saturating_mul(1000),
        });
        match self.shared.write(cmd).await? {
            (rev, hl::Response::LeaseGrant(g)) => Ok(Response::new(pb::LeaseGrantResponse {
                header: self.shared.header(rev),
                id: g.id,
                ttl: granted_s(g.ttl_ms),
                error: String::new(),
            })),
            (_, other) => Err(unexpected(&other)),
        }
    }

    async fn lease_revoke(
        &self,
        request: Request<pb::LeaseRevokeRequest>,
    ) -> Result<Response<pb::LeaseRevokeResponse>, Status> {
        if let Some(e) = self.shared.backend.refuses("leases") {
            return Err(e.into());
        }
        let id = request.into_inner().id;
        match self.shared.write(hl::Command::LeaseRevoke { id }).await? {
            (rev, hl::Response::LeaseRevoke) => Ok(Response::new(pb::LeaseRevokeResponse {
                header: self.shared.header(rev),
            })),
            (_, other) => Err(unexpected(&other)),
        }
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        if let Some(e) = self.shared.backend.refuses("leases") {
            return Err(e.into());
        }
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(self.shared.config.stream_queue_len);
        let shared = self.shared.clone();
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    next = inbound.next() => next,
                    () = shared.stopped() => {
                        // The client may be gone already; nothing to do then.
                        let _ = tx.send(Err(stopping_status())).await;
                        return;
                    }
                };
                let req = match next {
                    Some(Ok(req)) => req,
                    // Client closed its side or the stream broke: done.
                    Some(Err(_)) | None => return,
                };
                // One keep-alive at a time per stream: a client cannot queue
                // unbounded proposals; the bounded channel back-pressures it.
                let resp = keep_alive_once(&shared, req.id).await;
                let fatal = resp.is_err();
                if tx.send(resp).await.is_err() || fatal {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<pb::LeaseTimeToLiveResponse>, Status> {
        if let Some(e) = self.shared.backend.refuses("leases") {
            return Err(e.into());
        }
        let req = request.into_inner();
        let (id, with_keys) = (req.id, req.keys);
        let (ttl, revision) = self
            .shared
            .backend
            .read(true, move |m| {
                (m.lease_time_to_live(id, with_keys), m.current_revision())
            })
            .await?;
        // The leader's clock is more precise than the last checkpoint.
        let remaining_ms = match self.shared.backend.lease_remaining_ms(id) {
            Some(ms) if ttl.ttl_ms >= 0 => ms,
            _ => ttl.ttl_ms,
        };
        Ok(Response::new(pb::LeaseTimeToLiveResponse {
            header: self.shared.header(revision),
            id,
            ttl: remaining_s(remaining_ms),
            granted_ttl: if ttl.ttl_ms < 0 {
                0
            } else {
                granted_s(ttl.granted_ttl_ms)
            },
            keys: ttl.keys,
        }))
    }

    async fn lease_leases(
        &self,
        _request: Request<pb::LeaseLeasesRequest>,
    ) -> Result<Response<pb::LeaseLeasesResponse>, Status> {
        if let Some(e) = self.shared.backend.refuses("leases") {
            return Err(e.into());
        }
        let (leases, revision) = self
            .shared
            .backend
            .read(true, |m| (m.leases(), m.current_revision()))
            .await?;
        Ok(Response::new(pb::LeaseLeasesResponse {
            header: self.shared.header(revision),
            leases: leases
                .into_iter()
                .map(|l| pb::LeaseStatus { id: l.id })
                .collect(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_conversion_rounds_granted_up_and_remaining_down() {
        assert_eq!(granted_s(5000), 5);
        assert_eq!(granted_s(4001), 5);
        assert_eq!(remaining_s(4999), 4);
        assert_eq!(remaining_s(-1), -1);
        assert_eq!(granted_s(i64::MAX), i64::MAX / 1000);
    }
}
