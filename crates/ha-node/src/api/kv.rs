//! The KV service: Range, Put, DeleteRange, Txn, Compact.

use std::sync::Arc;

use ha_lock::api as hl;
use prost::Message;
use tonic::{Request, Response, Status};

use super::convert;
use super::error::lock_status;
use super::pb::etcdserverpb as pb;
use super::pb::etcdserverpb::kv_server::Kv;
use super::{Backend, Shared, unexpected};

/// KV over a [`Backend`].
pub(crate) struct KvService<B> {
    shared: Arc<Shared<B>>,
}

impl<B> KvService<B> {
    pub(crate) fn new(shared: Arc<Shared<B>>) -> Self {
        Self { shared }
    }
}

#[tonic::async_trait]
impl<B: Backend> Kv for KvService<B> {
    async fn range(
        &self,
        request: Request<pb::RangeRequest>,
    ) -> Result<Response<pb::RangeResponse>, Status> {
        let req = request.into_inner();
        self.shared.check_size(req.encoded_len())?;
        let linearizable = !req.serializable;
        let range = convert::range_from_pb(req)?;
        let (result, revision) = self.shared.backend.range(linearizable, range).await?;
        let resp = result.map_err(|e| lock_status(&e))?;
        Ok(Response::new(convert::range_to_pb(
            resp,
            self.shared.header(revision),
        )))
    }

    async fn put(
        &self,
        request: Request<pb::PutRequest>,
    ) -> Result<Response<pb::PutResponse>, Status> {
        let req = request.into_inner();
        self.shared.check_size(req.encoded_len())?;
        let cmd = hl::Command::Put(convert::put_from_pb(req));
        match self.shared.write(cmd).await? {
            (rev, hl::Response::Put(p)) => Ok(Response::new(convert::put_to_pb(
                p,
                self.shared.header(rev),
            ))),
            (_, other) => Err(unexpected(&other)),
        }
    }

    async fn delete_range(
        &self,
        request: Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        let req = request.into_inner();
        self.shared.check_size(req.encoded_len())?;
        let cmd = hl::Command::DeleteRange(convert::delete_from_pb(req));
        match self.shared.write(cmd).await? {
            (rev, hl::Response::DeleteRange(d)) => Ok(Response::new(convert::delete_to_pb(
                d,
                self.shared.header(rev),
            ))),
            (_, other) => Err(unexpected(&other)),
        }
    }

    async fn txn(
        &self,
        request: Request<pb::TxnRequest>,
    ) -> Result<Response<pb::TxnResponse>, Status> {
        let req = request.into_inner();
        self.shared.check_size(req.encoded_len())?;
        let cmd = hl::Command::Txn(convert::txn_from_pb(req)?);
        match self.shared.write(cmd).await? {
            (rev, hl::Response::Txn(t)) => Ok(Response::new(convert::txn_to_pb(
                t,
                self.shared.header(rev),
            ))),
            (_, other) => Err(unexpected(&other)),
        }
    }

    async fn compact(
        &self,
        request: Request<pb::CompactionRequest>,
    ) -> Result<Response<pb::CompactionResponse>, Status> {
        let req = request.into_inner();
        let cmd = hl::Command::Compact(hl::CompactionRequest {
            revision: req.revision,
        });
        match self.shared.write(cmd).await? {
            (rev, hl::Response::Compact) => Ok(Response::new(pb::CompactionResponse {
                header: self.shared.header(rev),
            })),
            (_, other) => Err(unexpected(&other)),
        }
    }
}
