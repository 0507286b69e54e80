//! The Cluster and Maintenance services: membership and status come from
//! the [`Backend`]; maintenance operations ha does not have answer
//! Unimplemented, naming the method.

use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::backend::MemberInfo;
use super::pb::etcdserverpb as pb;
use super::pb::etcdserverpb::cluster_server::Cluster;
use super::pb::etcdserverpb::maintenance_server::Maintenance;
use super::{Backend, Shared};

fn member_to_pb(m: MemberInfo) -> pb::Member {
    pb::Member {
        id: m.id,
        name: m.name,
        peer_urls: m.peer_urls,
        client_urls: m.client_urls,
        is_learner: m.is_learner,
    }
}

fn members_to_pb(ms: Vec<MemberInfo>) -> Vec<pb::Member> {
    ms.into_iter().map(member_to_pb).collect()
}

fn not_served(method: &str) -> Status {
    Status::unimplemented(format!("ha: Maintenance.{method} is not supported by ha"))
}

/// Cluster over a [`Backend`].
pub(crate) struct ClusterService<B> {
    shared: Arc<Shared<B>>,
}

impl<B> ClusterService<B> {
    pub(crate) fn new(shared: Arc<Shared<B>>) -> Self {
        Self { shared }
    }
}

#[tonic::async_trait]
impl<B: Backend> Cluster for ClusterService<B> {
    async fn member_add(
        &self,
        request: Request<pb::MemberAddRequest>,
    ) -> Result<Response<pb::MemberAddResponse>, Status> {
        let req = request.into_inner();
        if req.peer_urls.is_empty() {
            return Err(Status::invalid_argument("ha: member add needs peer URLs"));
        }
        let (member, members) = self
            .shared
            .backend
            .member_add(req.peer_urls, req.is_learner)
            .await?;
        let rev = self.shared.revision().await?;
        Ok(Response::new(pb::MemberAddResponse {
            header: self.shared.header(rev),
            member: Some(member_to_pb(member)),
            members: members_to_pb(members),
        }))
    }

    async fn member_remove(
        &self,
        request: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberRemoveResponse>, Status> {
        let members = self
            .shared
            .backend
            .member_remove(request.into_inner().id)
            .await?;
        let rev = self.shared.revision().await?;
        Ok(Response::new(pb::MemberRemoveResponse {
            header: self.shared.header(rev),
            members: members_to_pb(members),
        }))
    }

    async fn member_update(
        &self,
        _request: Request<pb::MemberUpdateRequest>,
    ) -> Result<Response<pb::MemberUpdateResponse>, Status> {
        Err(Status::unimplemented(
            "ha: Cluster.MemberUpdate is not supported by ha (remove and re-add the member)",
        ))
    }

    async fn member_list(
        &self,
        _request: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        let members = self.shared.backend.members().await?;
        let rev = self.shared.revision().await?;
        Ok(Response::new(pb::MemberListResponse {
            header: self.shared.header(rev),
            members: members_to_pb(members),
        }))
    }

    async fn member_promote(
        &self,
        request: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberPromoteResponse>, Status> {
        let members = self
            .shared
            .backend
            .member_promote(request.into_inner().id)
            .await?;
        let rev = self.shared.revision().await?;
        Ok(Response::new(pb::MemberPromoteResponse {
            header: self.shared.header(rev),
            members: members_to_pb(members),
        }))
    }
}

/// Maintenance over a [`Backend`].
pub(crate) struct MaintenanceService<B> {
    shared: Arc<Shared<B>>,
}

impl<B> MaintenanceService<B> {
    pub(crate) fn new(shared: Arc<Shared<B>>) -> Self {
        Self { shared }
    }
}

/// The response stream of Snapshot (never produced: Unimplemented).
type SnapshotStream =
    Pin<Box<dyn Stream<Item = Result<pb::SnapshotResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl<B: Backend> Maintenance for MaintenanceService<B> {
    async fn alarm(
        &self,
        request: Request<pb::AlarmRequest>,
    ) -> Result<Response<pb::AlarmResponse>, Status> {
        use pb::alarm_request::AlarmAction;
        match AlarmAction::try_from(request.into_inner().action) {
            // ha raises no alarms (no space quota): the list is empty.
            Ok(AlarmAction::Get) => {
                let rev = self.shared.revision().await?;
                Ok(Response::new(pb::AlarmResponse {
                    header: self.shared.header(rev),
                    alarms: Vec::new(),
                }))
            }
            Ok(AlarmAction::Activate | AlarmAction::Deactivate) => {
                Err(not_served("Alarm ACTIVATE/DEACTIVATE"))
            }
            Err(_) => Err(Status::invalid_argument("ha: unknown alarm action")),
        }
    }

    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let s = self.shared.backend.status().await?;
        let rev = self.shared.revision().await?;
        Ok(Response::new(pb::StatusResponse {
            header: self.shared.header(rev),
            version: s.version,
            db_size: s.db_size_bytes,
            leader: s.leader,
            raft_index: s.raft_index,
            raft_term: s.raft_term,
            raft_applied_index: s.raft_applied_index,
            errors: s.errors,
            db_size_in_use: s.db_size_bytes,
            is_learner: s.is_learner,
        }))
    }

    async fn defragment(
        &self,
        _request: Request<pb::DefragmentRequest>,
    ) -> Result<Response<pb::DefragmentResponse>, Status> {
        Err(not_served("Defragment"))
    }

    async fn hash(
        &self,
        _request: Request<pb::HashRequest>,
    ) -> Result<Response<pb::HashResponse>, Status> {
        Err(not_served("Hash"))
    }

    async fn hash_kv(
        &self,
        _request: Request<pb::HashKvRequest>,
    ) -> Result<Response<pb::HashKvResponse>, Status> {
        Err(not_served("HashKV"))
    }

    type SnapshotStream = SnapshotStream;

    async fn snapshot(
        &self,
        _request: Request<pb::SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        Err(not_served("Snapshot"))
    }

    async fn move_leader(
        &self,
        _request: Request<pb::MoveLeaderRequest>,
    ) -> Result<Response<pb::MoveLeaderResponse>, Status> {
        Err(not_served("MoveLeader"))
    }

    async fn downgrade(
        &self,
        _request: Request<pb::DowngradeRequest>,
    ) -> Result<Response<pb::DowngradeResponse>, Status> {
        Err(not_served("Downgrade"))
    }
}
