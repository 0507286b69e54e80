//! Cluster status through the etcd v3 Maintenance API: which member leads,
//! at which term, and how far each member's log reaches.

use std::time::Duration;

use etcd_client::{Client, ConnectOptions};

/// Time allowed for one member's status answer.
pub const STATUS_TIMEOUT_MS: u64 = 1_000;

/// What one member says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberStatus {
    /// The member's id.
    pub member_id: u64,
    /// The id of the leader it knows (0: none).
    pub leader_id: u64,
    /// Its current term.
    pub term: u64,
    /// Its last log (raft) index.
    pub raft_index: u64,
    /// Its applied index.
    pub applied_index: u64,
    /// Server version string.
    pub version: String,
}

impl MemberStatus {
    /// Whether the member says it is the leader.
    pub fn is_leader(&self) -> bool {
        self.member_id != 0 && self.member_id == self.leader_id
    }
}

/// Connects a client to exactly one endpoint with request and connect
/// timeouts of `timeout_ms`.
pub async fn connect_one(url: &str, timeout_ms: u64) -> Result<Client, etcd_client::Error> {
    let opts = ConnectOptions::new()
        .with_timeout(Duration::from_millis(timeout_ms))
        .with_connect_timeout(Duration::from_millis(timeout_ms));
    Client::connect([url], Some(opts)).await
}

/// Asks one member for its status, within [`STATUS_TIMEOUT_MS`].
pub async fn member_status(url: &str) -> Result<MemberStatus, String> {
    let call = async {
        let mut c = connect_one(url, STATUS_TIMEOUT_MS)
            .await
            .map_err(|e| e.to_string())?;
        let s = c.status().await.map_err(|e| e.to_string())?;
        let member_id = s.header().map(|h| h.member_id()).unwrap_or(0);
        Ok::<_, String>(MemberStatus {
            member_id,
            leader_id: s.leader(),
            term: s.raft_term(),
            raft_index: s.raft_index(),
            applied_index: s.raft_applied_index(),
            version: s.version().to_owned(),
        })
    };
    match tokio::time::timeout(Duration::from_millis(STATUS_TIMEOUT_MS + 200), call).await {
        Ok(r) => r,
        Err(_) => Err(format!("no status answer within {STATUS_TIMEOUT_MS} ms")),
    }
}

/// Status of every endpoint, in order, asked concurrently.
pub async fn all_status(urls: &[String]) -> Vec<Result<MemberStatus, String>> {
    let tasks: Vec<_> = urls
        .iter()
        .map(|u| {
            let u = u.clone();
            tokio::spawn(async move { member_status(&u).await })
        })
        .collect();
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.unwrap_or_else(|e| Err(e.to_string())));
    }
    out
}

/// The endpoint (index) that claims leadership at the highest term, if any
/// member does.
pub fn leader_of(statuses: &[Result<MemberStatus, String>]) -> Option<usize> {
    statuses
        .iter()
        .enumerate()
        .filter_map(|(i, s)| s.as_ref().ok().map(|s| (i, s)))
        .filter(|(_, s)| s.is_leader())
        .max_by_key(|(_, s)| s.term)
        .map(|(i, _)| i)
}

/// Waits until some member leads and every endpoint in `must_answer`
/// answers, polling every 100 ms for at most `timeout_ms`. Returns the
/// leader's index.
pub async fn wait_ready(urls: &[String], must_answer: &[usize], timeout_ms: u64) -> Option<usize> {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms);
    while tokio::time::Instant::now() < deadline {
        let st = all_status(urls).await;
        let all = must_answer
            .iter()
            .all(|&i| st.get(i).is_some_and(|s| s.is_ok()));
        if all && let Some(l) = leader_of(&st) {
            return Some(l);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(id: u64, leader: u64, term: u64) -> Result<MemberStatus, String> {
        Ok(MemberStatus {
            member_id: id,
            leader_id: leader,
            term,
            raft_index: 0,
            applied_index: 0,
            version: String::new(),
        })
    }

    #[test]
    fn leader_is_the_self_claimer_with_the_highest_term() {
        assert_eq!(
            leader_of(&[st(1, 2, 3), st(2, 2, 3), Err("x".into())]),
            Some(1)
        );
        // A stale leader (lower term, partitioned away) loses to the new one.
        assert_eq!(leader_of(&[st(1, 1, 3), st(2, 2, 4), st(3, 2, 4)]), Some(1));
        assert_eq!(leader_of(&[st(1, 0, 3), st(2, 0, 3)]), None);
        assert_eq!(leader_of(&[st(0, 0, 3)]), None);
    }
}
