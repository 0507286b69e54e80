//! Field-for-field mapping between the etcd wire messages and ha-lock's
//! request/response types. Out-of-range enum values and empty oneofs are
//! refused with `InvalidArgument` (nothing is proposed).

use bytes::Bytes;
use ha_lock::api as hl;
use tonic::Status;

use super::pb::etcdserverpb as pb;
use super::pb::mvccpb;

/// A wire `KeyValue` from ha-lock's.
pub fn kv_to_pb(kv: hl::KeyValue) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: kv.key,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: kv.value,
        lease: kv.lease,
    }
}

/// A wire `Event` from ha-lock's; `prev_kv` only when asked for.
pub fn event_to_pb(ev: &hl::Event, with_prev_kv: bool) -> mvccpb::Event {
    let kind = match ev.kind {
        hl::EventType::Put => mvccpb::event::EventType::Put,
        hl::EventType::Delete => mvccpb::event::EventType::Delete,
    };
    mvccpb::Event {
        r#type: kind as i32,
        kv: Some(kv_to_pb(ev.kv.clone())),
        prev_kv: if with_prev_kv {
            ev.prev_kv.clone().map(kv_to_pb)
        } else {
            None
        },
    }
}

fn bad(what: &str, value: i32) -> Status {
    Status::invalid_argument(format!("ha: unknown {what} {value}"))
}

/// ha-lock's range request from the wire one.
pub fn range_from_pb(r: pb::RangeRequest) -> Result<hl::RangeRequest, Status> {
    use pb::range_request::{SortOrder, SortTarget};
    let sort_order = match SortOrder::try_from(r.sort_order) {
        Ok(SortOrder::None) => hl::SortOrder::None,
        Ok(SortOrder::Ascend) => hl::SortOrder::Ascend,
        Ok(SortOrder::Descend) => hl::SortOrder::Descend,
        Err(_) => return Err(bad("sort order", r.sort_order)),
    };
    let sort_target = match SortTarget::try_from(r.sort_target) {
        Ok(SortTarget::Key) => hl::SortTarget::Key,
        Ok(SortTarget::Version) => hl::SortTarget::Version,
        Ok(SortTarget::Create) => hl::SortTarget::Create,
        Ok(SortTarget::Mod) => hl::SortTarget::Mod,
        Ok(SortTarget::Value) => hl::SortTarget::Value,
        Err(_) => return Err(bad("sort target", r.sort_target)),
    };
    Ok(hl::RangeRequest {
        key: r.key,
        range_end: r.range_end,
        limit: r.limit,
        revision: r.revision,
        sort_order,
        sort_target,
        keys_only: r.keys_only,
        count_only: r.count_only,
        min_mod_revision: r.min_mod_revision,
        max_mod_revision: r.max_mod_revision,
        min_create_revision: r.min_create_revision,
        max_create_revision: r.max_create_revision,
    })
}

/// The wire range response (without header) from ha-lock's.
pub fn range_to_pb(r: hl::RangeResponse, header: Option<pb::ResponseHeader>) -> pb::RangeResponse {
    pb::RangeResponse {
        header,
        kvs: r.kvs.into_iter().map(kv_to_pb).collect(),
        more: r.more,
        count: r.count,
    }
}

/// ha-lock's put request from the wire one.
pub fn put_from_pb(p: pb::PutRequest) -> hl::PutRequest {
    hl::PutRequest {
        key: p.key,
        value: p.value,
        lease: p.lease,
        prev_kv: p.prev_kv,
        ignore_value: p.ignore_value,
        ignore_lease: p.ignore_lease,
    }
}

/// The wire put response from ha-lock's.
pub fn put_to_pb(p: hl::PutResponse, header: Option<pb::ResponseHeader>) -> pb::PutResponse {
    pb::PutResponse {
        header,
        prev_kv: p.prev_kv.map(kv_to_pb),
    }
}

/// ha-lock's delete request from the wire one.
pub fn delete_from_pb(d: pb::DeleteRangeRequest) -> hl::DeleteRangeRequest {
    hl::DeleteRangeRequest {
        key: d.key,
        range_end: d.range_end,
        prev_kv: d.prev_kv,
    }
}

/// The wire delete response from ha-lock's.
pub fn delete_to_pb(
    d: hl::DeleteRangeResponse,
    header: Option<pb::ResponseHeader>,
) -> pb::DeleteRangeResponse {
    pb::DeleteRangeResponse {
        header,
        deleted: d.deleted,
        prev_kvs: d.prev_kvs.into_iter().map(kv_to_pb).collect(),
    }
}

/// ha-lock's compare from the wire one. As in etcd, the `target` enum picks
/// the operand; a missing or mismatched union member reads as zero/empty.
pub fn compare_from_pb(c: pb::Compare) -> Result<hl::Compare, Status> {
    use pb::compare::{CompareResult, CompareTarget, TargetUnion};
    let result = match CompareResult::try_from(c.result) {
        Ok(CompareResult::Equal) => hl::CompareResult::Equal,
        Ok(CompareResult::Greater) => hl::CompareResult::Greater,
        Ok(CompareResult::Less) => hl::CompareResult::Less,
        Ok(CompareResult::NotEqual) => hl::CompareResult::NotEqual,
        Err(_) => return Err(bad("compare result", c.result)),
    };
    let u = c.target_union;
    let target = match CompareTarget::try_from(c.target) {
        Ok(CompareTarget::Version) => hl::CompareTarget::Version(match u {
            Some(TargetUnion::Version(v)) => v,
            _ => 0,
        }),
        Ok(CompareTarget::Create) => hl::CompareTarget::CreateRevision(match u {
            Some(TargetUnion::CreateRevision(v)) => v,
            _ => 0,
        }),
        Ok(CompareTarget::Mod) => hl::CompareTarget::ModRevision(match u {
            Some(TargetUnion::ModRevision(v)) => v,
            _ => 0,
        }),
        Ok(CompareTarget::Value) => hl::CompareTarget::Value(match u {
            Some(TargetUnion::Value(v)) => v,
            _ => Bytes::new(),
        }),
        Ok(CompareTarget::Lease) => hl::CompareTarget::Lease(match u {
            Some(TargetUnion::Lease(v)) => v,
            _ => 0,
        }),
        Err(_) => return Err(bad("compare target", c.target)),
    };
    Ok(hl::Compare {
        key: c.key,
        range_end: c.range_end,
        result,
        target,
    })
}

/// ha-lock's transaction from the wire one (nesting is bounded by the
/// protobuf decoder's recursion limit; ha-lock enforces `max_txn_depth`).
pub fn txn_from_pb(t: pb::TxnRequest) -> Result<hl::TxnRequest, Status> {
    Ok(hl::TxnRequest {
        compare: t
            .compare
            .into_iter()
            .map(compare_from_pb)
            .collect::<Result<_, _>>()?,
        success: ops_from_pb(t.success)?,
        failure: ops_from_pb(t.failure)?,
    })
}

fn ops_from_pb(ops: Vec<pb::RequestOp>) -> Result<Vec<hl::RequestOp>, Status> {
    use pb::request_op::Request;
    ops.into_iter()
        .map(|op| match op.request {
            Some(Request::RequestRange(r)) => Ok(hl::RequestOp::Range(range_from_pb(r)?)),
            Some(Request::RequestPut(p)) => Ok(hl::RequestOp::Put(put_from_pb(p))),
            Some(Request::RequestDeleteRange(d)) => {
                Ok(hl::RequestOp::DeleteRange(delete_from_pb(d)))
            }
            Some(Request::RequestTxn(t)) => Ok(hl::RequestOp::Txn(txn_from_pb(t)?)),
            None => Err(Status::invalid_argument(
                "ha: transaction operation carries no request",
            )),
        })
        .collect()
}

/// The wire transaction response from ha-lock's; nested responses carry the
/// same header, as etcd's do.
pub fn txn_to_pb(t: hl::TxnResponse, header: Option<pb::ResponseHeader>) -> pb::TxnResponse {
    use pb::response_op::Response;
    let responses = t
        .responses
        .into_iter()
        .map(|r| pb::ResponseOp {
            response: Some(match r {
                hl::ResponseOp::Range(r) => Response::ResponseRange(range_to_pb(r, header)),
                hl::ResponseOp::Put(p) => Response::ResponsePut(put_to_pb(p, header)),
                hl::ResponseOp::DeleteRange(d) => {
                    Response::ResponseDeleteRange(delete_to_pb(d, header))
                }
                hl::ResponseOp::Txn(t) => Response::ResponseTxn(txn_to_pb(t, header)),
            }),
        })
        .collect();
    pb::TxnResponse {
        header,
        succeeded: t.succeeded,
        responses,
    }
}

/// Whether `key` lies in etcd's range `[start, end)`: an empty `end` means
/// `start` only; `"\0"` means every key from `start` on.
pub fn in_range(key: &[u8], start: &[u8], end: &[u8]) -> bool {
    match end {
        [] => key == start,
        [0] => key >= start,
        _ => key >= start && key < end,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_range_follows_etcd() {
        assert!(in_range(b"a", b"a", b""));
        assert!(!in_range(b"ab", b"a", b""));
        assert!(in_range(b"zzz", b"a", b"\0"));
        assert!(in_range(b"", b"", b"\0"));
        assert!(in_range(b"a/1", b"a/", b"a0"));
        assert!(!in_range(b"a0", b"a/", b"a0"));
        assert!(!in_range(b"0", b"a/", b"a0"));
    }

    #[test]
    fn unknown_enum_values_are_refused() {
        let r = pb::RangeRequest {
            sort_order: 9,
            ..Default::default()
        };
        assert_eq!(
            range_from_pb(r).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        let c = pb::Compare {
            target: 42,
            ..Default::default()
        };
        assert_eq!(
            compare_from_pb(c).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        let t = pb::TxnRequest {
            success: vec![pb::RequestOp { request: None }],
            ..Default::default()
        };
        assert_eq!(
            txn_from_pb(t).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }

    #[test]
    fn compare_takes_operand_by_target() {
        use pb::compare::{CompareTarget, TargetUnion};
        let c = pb::Compare {
            key: Bytes::from_static(b"k"),
            target: CompareTarget::Mod as i32,
            target_union: Some(TargetUnion::ModRevision(7)),
            ..Default::default()
        };
        let got = compare_from_pb(c).unwrap();
        assert_eq!(got.target, hl::CompareTarget::ModRevision(7));
        let mismatched = pb::Compare {
            target: CompareTarget::Version as i32,
            target_union: Some(TargetUnion::Value(Bytes::from_static(b"x"))),
            ..Default::default()
        };
        assert_eq!(
            compare_from_pb(mismatched).unwrap().target,
            hl::CompareTarget::Version(0)
        );
    }
}
