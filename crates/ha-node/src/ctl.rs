//! `ha-node ctl shards`: the shard map as a member sees it, for operators.
//!
//! Reads `/shards` from a member's metrics listener (`--listen-metrics-urls`)
//! and prints shard → voters → learners → leader, then a summary: replicas
//! per member, moves in progress (a shard with a learner, or with more or
//! fewer voters than `--replication`) and whether every shard is fully
//! replicated.
//!
//! ```text
//! $ ha-node ctl shards --endpoint http://127.0.0.1:2381
//! shard  voters                          learners    leader
//! 1      2707234028,2786509108,3759488949  -           2786509108
//! ...
//! replicas per member: 1961859118=5 2191490557=4 ...
//! moves in progress: 0; under-replicated shards: 0
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Bound on connecting to and reading from the member.
pub const CTL_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest `/shards` answer read, bytes (4096 shards of 7 replicas fit).
pub const MAX_SHARDS_TEXT_BYTES: u64 = 4 << 20;

/// One data shard as `/shards` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardLine {
    /// The shard's group id.
    pub shard: u64,
    /// Voting replicas.
    pub voters: BTreeSet<u64>,
    /// Learners (replicas catching up: a move in progress).
    pub learners: BTreeSet<u64>,
    /// The leader the answering member knows of (only for shards it hosts).
    pub leader: Option<u64>,
    /// Whether the answering member hosts the shard.
    pub hosted: bool,
}

/// The parsed `/shards` page.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShardsPage {
    /// `--replication` from the header (0 when absent).
    pub replication: usize,
    /// One entry per data shard.
    pub shards: Vec<ShardLine>,
}

impl ShardsPage {
    /// Replicas (voters and learners) per member.
    pub fn loads(&self) -> BTreeMap<u64, usize> {
        let mut out = BTreeMap::new();
        for s in &self.shards {
            for id in s.voters.iter().chain(&s.learners) {
                *out.entry(*id).or_default() += 1;
            }
        }
        out
    }

    /// Shards with a move in progress: a learner, or a voter count other
    /// than the replication factor.
    pub fn moving(&self) -> usize {
        self.shards
            .iter()
            .filter(|s| !s.learners.is_empty() || s.voters.len() != self.replication)
            .count()
    }

    /// Shards with fewer voters than the replication factor.
    pub fn under_replicated(&self) -> usize {
        self.shards
            .iter()
            .filter(|s| s.voters.len() < self.replication)
            .count()
    }
}

/// Parses a `/shards` page; a malformed line is an error naming it.
pub fn parse_shards(text: &str) -> Result<ShardsPage, String> {
    let mut page = ShardsPage::default();
    let ids = |f: &str| -> Result<BTreeSet<u64>, String> {
        if f == "-" {
            return Ok(BTreeSet::new());
        }
        f.split(',')
            .map(|x| {
                x.parse::<u64>()
                    .map_err(|e| format!("member id {x:?}: {e}"))
            })
            .collect()
    };
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# shards ") {
            let f: Vec<&str> = rest.split_whitespace().collect();
            if let Some(i) = f.iter().position(|w| *w == "replication") {
                page.replication = f
                    .get(i + 1)
                    .and_then(|r| r.trim_end_matches(';').parse().ok())
                    .unwrap_or(0);
            }
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() != 6 {
            return Err(format!("malformed /shards line {line:?}"));
        }
        page.shards.push(ShardLine {
            shard: f[0]
                .parse()
                .map_err(|e| format!("shard id in {line:?}: {e}"))?,
            voters: ids(f[1])?,
            learners: ids(f[2])?,
            leader: if f[3] == "-" {
                None
            } else {
                Some(
                    f[3].parse()
                        .map_err(|e| format!("leader in {line:?}: {e}"))?,
                )
            },
            hosted: f[4] == "yes",
        });
    }
    Ok(page)
}

/// GETs `path` from `endpoint` (`http://host:port`), bounded by
/// [`CTL_TIMEOUT`] and [`MAX_SHARDS_TEXT_BYTES`].
pub fn http_get(endpoint: &str, path: &str) -> Result<String, String> {
    let hostport = endpoint
        .strip_prefix("http://")
        .ok_or_else(|| format!("{endpoint}: only http:// metrics endpoints are supported"))?
        .trim_end_matches('/');
    let addr: SocketAddr = hostport
        .to_socket_addrs()
        .map_err(|e| format!("{endpoint}: {e}"))?
        .next()
        .ok_or_else(|| format!("{endpoint}: no address"))?;
    let mut s =
        TcpStream::connect_timeout(&addr, CTL_TIMEOUT).map_err(|e| format!("{endpoint}: {e}"))?;
    s.set_read_timeout(Some(CTL_TIMEOUT))
        .and_then(|()| s.set_write_timeout(Some(CTL_TIMEOUT)))
        .map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {hostport}\r\n\r\n")
        .map_err(|e| format!("{endpoint}: {e}"))?;
    let mut raw = Vec::new();
    s.take(MAX_SHARDS_TEXT_BYTES)
        .read_to_end(&mut raw)
        .map_err(|e| format!("{endpoint}{path}: {e}"))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{endpoint}{path}: not an HTTP answer"))?;
    let status = head.lines().next().unwrap_or_default();
    if !status.contains(" 200") {
        return Err(format!("{endpoint}{path}: {status}"));
    }
    Ok(body.to_string())
}

/// Renders `page` for a terminal.
pub fn render(page: &ShardsPage) -> String {
    let list = |ids: &BTreeSet<u64>| {
        if ids.is_empty() {
            "-".to_string()
        } else {
            ids.iter()
                .map(|i| format!("{i:x}"))
                .collect::<Vec<_>>()
                .join(",")
        }
    };
    let mut out = format!(
        "{:<6} {:<36} {:<20} {:<10}\n",
        "shard", "voters", "learners", "leader"
    );
    for s in &page.shards {
        out.push_str(&format!(
            "{:<6} {:<36} {:<20} {:<10}\n",
            s.shard,
            list(&s.voters),
            list(&s.learners),
            s.leader.map_or("?".into(), |l| format!("{l:x}")),
        ));
    }
    let loads: Vec<String> = page
        .loads()
        .iter()
        .map(|(id, n)| format!("{id:x}={n}"))
        .collect();
    out.push_str(&format!(
        "replicas per member: {}\nmoves in progress: {}; under-replicated shards: {} (replication {})\n",
        loads.join(" "),
        page.moving(),
        page.under_replicated(),
        page.replication
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = "# shards 2 replication 3 map-version 7 target-epoch 2; member 1\n\
        # target members 1,2,3,4\n\
        # shard voters learners leader hosted role\n\
        1 1,2,3 - 2 yes Follower\n\
        2 1,2,4 3 - no -\n";

    #[test]
    fn a_shards_page_parses_and_summarises() {
        let p = parse_shards(PAGE).unwrap();
        assert_eq!(p.replication, 3);
        assert_eq!(p.shards.len(), 2);
        assert_eq!(p.shards[0].leader, Some(2));
        assert!(p.shards[0].hosted && !p.shards[1].hosted);
        assert_eq!(p.shards[1].learners, BTreeSet::from([3]));
        assert_eq!(p.loads(), BTreeMap::from([(1, 2), (2, 2), (3, 2), (4, 1)]));
        assert_eq!((p.moving(), p.under_replicated()), (1, 0));
        let r = render(&p);
        assert!(r.contains("moves in progress: 1"), "{r}");
    }

    #[test]
    fn a_malformed_line_is_an_error_naming_it() {
        let e = parse_shards("1 1,2,3 -\n").unwrap_err();
        assert!(e.contains("malformed /shards line"), "{e}");
        let e = parse_shards("1 1,x,3 - - no -\n").unwrap_err();
        assert!(e.contains("member id \"x\""), "{e}");
    }
}
