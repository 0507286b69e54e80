//! `ha-chaos shards`: the shard failover scenario of issue 11 on real
//! processes (loopback only; a SIGKILL needs no network namespaces).
//!
//! A run: start `members` ha-node processes with `--shards S --replication
//! R` → wait until every shard has a leader (read from `/shards` of every
//! member) → start register/CAS clients on keys spread over every shard
//! (checked with [`ha_shard::Router`]) and set clients writing unique keys →
//! SIGKILL one member and keep it down → poll `/shards` of a live member
//! until every shard has R voters, all live, and no learners (bounded by
//! `dead-after` + `converge_timeout`) → keep the load a few seconds more →
//! stop it → read back every acknowledged write, read every register key,
//! check the history for linearizability → add a new member (fresh name,
//! fresh data directory, `--initial-cluster-state existing`) under load →
//! wait (bounded) until the replicas are spread fairly (peak/mean ≤ 1.25,
//! the new member holding at least mean/1.25) over the live members, no
//! learners left → stop the load, read back and check again.
//!
//! The replica map comes from `/shards` on the metrics listener, one line
//! per data shard: `<shard> <voters> <learners> <leader> <hosted> <role>`
//! ([`parse_shards`], which also takes the older five-column form without
//! learners and refuses anything else).
//!
//! Every process started is killed on every exit path (the [`Cluster`]'s
//! `Drop`), and every wait is bounded in time.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use etcd_client::GetOptions;
use ha_core::testkit::linearizability::{CheckConfig, CheckError, KvModel, check};
use ha_core::testkit::rng::SimRng;
use ha_ring::hash::HashFn;
use ha_shard::Router;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::chaos::final_reads;
use crate::net::sweep_leftovers;
use crate::server::{Cluster, ClusterConfig, MemberState, ServerKind, layout};
use crate::status::{connect_one, wait_ready};
use crate::workload::{
    self, Broken, Clock, Endpoints, KeyFn, RegisterLog, SetLog, SetVerdict, StopWhen,
};

/// Longest the cluster may take until every shard has a leader, ms.
pub const SHARDS_READY_MS: u64 = 90_000;
/// Period of the `/shards` polls, ms.
pub const POLL_MS: u64 = 500;
/// Time allowed for one `/shards` answer, ms.
pub const HTTP_TIMEOUT_MS: u64 = 2_000;
/// Largest `/shards` answer read, bytes.
pub const MAX_SHARDS_TEXT: usize = 1 << 20;
/// Fair share: every live member holds at most this times the mean number
/// of replicas per live member, and at least the mean divided by it.
pub const MAX_BALANCE_RATIO: f64 = 1.25;
/// Register keys per shard in each key generation.
pub const KEYS_PER_SHARD: usize = 2;
/// Longest the workload clients may take to return once told to stop, ms
/// (each operation is bounded by [`workload::OP_TIMEOUT_MS`]).
pub const LOAD_STOP_MS: u64 = 15_000;
/// How long every live member may take to show the map one member shows
/// (a replicated map is the same everywhere once applied), ms.
pub const AGREE_MS: u64 = 10_000;
/// Bound on one read-back of every written key, ms.
pub const READ_BACK_TIMEOUT_MS: u64 = 10_000;
/// Rounds over the members a read-back may take.
pub const READ_BACK_ROUNDS: usize = 2;
/// Bound on the key-by-key read-back that follows a failed prefix read,
/// ms (keys not read by then count as unreadable, failing the verdict).
pub const KEY_READ_BACK_MS: u64 = 45_000;
/// Concurrent gets of the key-by-key read-back.
pub const KEY_READ_BACK_CONCURRENCY: usize = 16;
/// Client ids of the load during the join start here (set keys are
/// `set/<client id>/<seq>`, so both phases must not share ids).
pub const JOIN_CLIENT_BASE: u64 = 100;

/// Options of one shard failover run.
#[derive(Clone, Debug)]
pub struct ShardsOptions {
    /// ha-node and its consensus protocol (`shards` is set from `shards`).
    pub kind: ServerKind,
    /// Founding members.
    pub members: usize,
    /// Data shards (`--shards`).
    pub shards: u32,
    /// Voters per shard (`--replication`).
    pub replication: usize,
    /// `--dead-after`, ms.
    pub dead_after_ms: u64,
    /// `--join-after`, ms.
    pub join_after_ms: u64,
    /// Bound on re-replication after `dead_after_ms` (and on the new
    /// member's fair share after `join_after_ms`), ms.
    pub converge_timeout_ms: u64,
    /// Load before the kill, ms.
    pub kill_after_ms: u64,
    /// Load after every shard is fully replicated again, ms.
    pub settle_ms: u64,
    /// Least total load time before the first read-back, ms.
    pub duration_ms: u64,
    /// Member to kill (`n3`); `None`: chosen from the seed.
    pub victim: Option<String>,
    /// Add a new member after the failover.
    pub join: bool,
    /// Seed of the victim choice and the clients.
    pub seed: u64,
    /// Register clients.
    pub register_clients: u64,
    /// Set clients.
    pub set_clients: u64,
    /// Deliberate client-side fault the checks must catch.
    pub broken: Broken,
    /// Members listen on `<prefix>.<i>`.
    pub loopback_prefix: String,
    /// Verdict, map and logs directory.
    pub out_dir: PathBuf,
    /// Heartbeat, ms.
    pub heartbeat_ms: u64,
    /// Election timeout, ms.
    pub election_timeout_ms: u64,
}

/// One line of `/shards`: a data shard in the replicated map as one member
/// shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ShardRow {
    /// Shard (group) id.
    pub shard: u64,
    /// Voting replicas.
    pub voters: Vec<u64>,
    /// Learners (catching up before promotion).
    pub learners: Vec<u64>,
    /// The leader this member knows of.
    pub leader: Option<u64>,
    /// Whether this member hosts a replica.
    pub hosted: bool,
    /// This member's role in the shard, when it hosts it.
    pub role: Option<String>,
}

fn parse_ids(field: &str, what: &str, allow_empty: bool) -> Result<Vec<u64>, String> {
    if field == "-" {
        return if allow_empty {
            Ok(Vec::new())
        } else {
            Err(format!("no {what}"))
        };
    }
    let ids = field
        .split(',')
        .map(|t| {
            t.parse::<u64>()
                .ok()
                .filter(|&id| id != 0)
                .ok_or_else(|| format!("{what}: `{t}` is not a member id"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let unique: BTreeSet<u64> = ids.iter().copied().collect();
    if unique.len() != ids.len() {
        return Err(format!("{what}: a member is listed twice in `{field}`"));
    }
    Ok(ids)
}

/// Parses the `/shards` table: lines starting with `#` and empty lines are
/// comments; every other line is
/// `<shard> <voters> <learners> <leader> <hosted yes|no> <role>` (six
/// columns), or, from members that do not show learners, the same without
/// the learners column (five columns). Ids are decimal, lists
/// comma-separated, `-` (or `?` for the leader) means none. Anything else —
/// another column count, a bad id, a shard listed twice, no shard at all —
/// is an error naming the line.
pub fn parse_shards(text: &str) -> Result<Vec<ShardRow>, String> {
    let mut rows: Vec<ShardRow> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        let bad = |why: String| format!("/shards line {}: {why}: `{line}`", n + 1);
        let (shard, voters, learners, leader, hosted, role) = match f.as_slice() {
            [s, v, l, ld, h, r] => (*s, *v, Some(*l), *ld, *h, *r),
            [s, v, ld, h, r] => (*s, *v, None, *ld, *h, *r),
            _ => {
                return Err(bad(format!(
                    "{} columns, expected 6 (shard voters learners leader hosted role) or 5 (without learners)",
                    f.len()
                )));
            }
        };
        let shard = shard
            .parse::<u64>()
            .map_err(|_| bad(format!("shard `{shard}` is not a number")))?;
        let voters = parse_ids(voters, "voters", false).map_err(&bad)?;
        let learners = match learners {
            Some(l) => parse_ids(l, "learners", true).map_err(&bad)?,
            None => Vec::new(),
        };
        let leader = match leader {
            "-" | "?" => None,
            l => Some(
                l.parse::<u64>()
                    .ok()
                    .filter(|&id| id != 0)
                    .ok_or_else(|| bad(format!("leader `{l}` is not a member id")))?,
            ),
        };
        let hosted = match hosted {
            "yes" => true,
            "no" => false,
            h => return Err(bad(format!("hosted `{h}` is neither yes nor no"))),
        };
        let role = (role != "-").then(|| role.to_owned());
        if rows.iter().any(|r| r.shard == shard) {
            return Err(bad(format!("shard {shard} listed twice")));
        }
        rows.push(ShardRow {
            shard,
            voters,
            learners,
            leader,
            hosted,
            role,
        });
    }
    if rows.is_empty() {
        return Err(format!(
            "/shards lists no shard (is --shards > 1?): `{}`",
            text.trim()
        ));
    }
    Ok(rows)
}

/// `GET <metrics_url>/shards` (plain HTTP/1.0 on the metrics listener),
/// within [`HTTP_TIMEOUT_MS`]; the body of a 200 answer.
pub async fn fetch_shards_text(metrics_url: &str) -> Result<String, String> {
    let addr = metrics_url
        .strip_prefix("http://")
        .ok_or_else(|| format!("metrics URL `{metrics_url}` is not http://host:port"))?
        .trim_end_matches('/')
        .to_owned();
    let call = async {
        let mut s = tokio::net::TcpStream::connect(&addr)
            .await
            .map_err(|e| format!("{addr}: {e}"))?;
        s.write_all(format!("GET /shards HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await
            .map_err(|e| format!("{addr}: {e}"))?;
        let mut buf = Vec::new();
        (&mut s)
            .take(MAX_SHARDS_TEXT as u64)
            .read_to_end(&mut buf)
            .await
            .map_err(|e| format!("{addr}: {e}"))?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| format!("{addr}: not an HTTP answer"))?;
        let status = head.lines().next().unwrap_or_default();
        if status.split_whitespace().nth(1) != Some("200") {
            return Err(format!("{addr}/shards: {status}"));
        }
        Ok(body.to_owned())
    };
    match tokio::time::timeout(Duration::from_millis(HTTP_TIMEOUT_MS), call).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "{addr}/shards: no answer within {HTTP_TIMEOUT_MS} ms"
        )),
    }
}

/// Why the map is not yet "every shard of `expected` has `replication`
/// voters, all in `live`, and no learners" (empty: it is).
pub fn replication_gaps(
    rows: &[ShardRow],
    expected: &BTreeSet<u64>,
    replication: usize,
    live: &BTreeSet<u64>,
) -> Vec<String> {
    let mut out = Vec::new();
    let listed: BTreeSet<u64> = rows.iter().map(|r| r.shard).collect();
    if listed != *expected {
        out.push(format!(
            "shards listed {listed:?}, the router has {expected:?}"
        ));
    }
    for r in rows {
        let dead: Vec<u64> = r
            .voters
            .iter()
            .filter(|v| !live.contains(v))
            .copied()
            .collect();
        if r.voters.len() != replication || !dead.is_empty() || !r.learners.is_empty() {
            out.push(format!(
                "shard {}: {} voters (want {replication}){}{}",
                r.shard,
                r.voters.len(),
                if dead.is_empty() {
                    String::new()
                } else {
                    format!(", not live: {dead:?}")
                },
                if r.learners.is_empty() {
                    String::new()
                } else {
                    format!(", learners {:?}", r.learners)
                }
            ));
        }
    }
    out
}

/// Voting replicas per live member.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Balance {
    /// Voters held by each live member (0 included).
    pub counts: BTreeMap<u64, usize>,
    /// Mean over the live members.
    pub mean: f64,
    /// Largest count / mean.
    pub peak_ratio: f64,
    /// Smallest count / mean.
    pub low_ratio: f64,
}

impl Balance {
    /// Counts the voters of `rows` held by each member of `live`.
    pub fn of(rows: &[ShardRow], live: &BTreeSet<u64>) -> Self {
        let mut counts: BTreeMap<u64, usize> = live.iter().map(|&m| (m, 0)).collect();
        for r in rows {
            for v in &r.voters {
                if let Some(c) = counts.get_mut(v) {
                    *c += 1;
                }
            }
        }
        let total: usize = counts.values().sum();
        let mean = if counts.is_empty() {
            0.0
        } else {
            total as f64 / counts.len() as f64
        };
        let ratio = |c: usize| if mean > 0.0 { c as f64 / mean } else { 0.0 };
        Self {
            peak_ratio: counts.values().copied().max().map_or(0.0, ratio),
            low_ratio: counts.values().copied().min().map_or(0.0, ratio),
            counts,
            mean,
        }
    }

    /// The fair share: peak/mean ≤ [`MAX_BALANCE_RATIO`], and the
    /// `newcomer` holds at least mean / [`MAX_BALANCE_RATIO`]. The second
    /// half matters: 48 replicas on 4 of 5 members is 12 each, a peak/mean
    /// of exactly 1.25, with the new member holding nothing.
    pub fn fair(&self, newcomer: u64) -> bool {
        let held = self.counts.get(&newcomer).copied().unwrap_or(0);
        self.mean > 0.0
            && self.peak_ratio <= MAX_BALANCE_RATIO + 1e-9
            && held as f64 * MAX_BALANCE_RATIO >= self.mean - 1e-9
    }
}

/// Shards of `expected` for which no member hosting them (in any of
/// `tables`) knows a leader.
pub fn leaderless(tables: &[Vec<ShardRow>], expected: &BTreeSet<u64>) -> Vec<u64> {
    expected
        .iter()
        .copied()
        .filter(|s| {
            !tables
                .iter()
                .flatten()
                .any(|r| r.shard == *s && r.hosted && r.leader.is_some())
        })
        .collect()
}

/// Register keys of one key generation: `per_shard` keys `reg/<g>/<j>` in
/// each shard of `router` (the first such `j`s). Fewer when a shard gets
/// no key among the first `64 × shards × per_shard` candidates (the run
/// then reports the shards its history touched).
pub fn spread_keys(router: &Router, generation: u64, per_shard: usize) -> Vec<String> {
    let shards = router.shard_count() as usize;
    let mut per: BTreeMap<u64, usize> = BTreeMap::new();
    let mut out = Vec::with_capacity(shards * per_shard);
    for j in 0..(64 * shards * per_shard) {
        if out.len() == shards * per_shard {
            break;
        }
        let key = format!("reg/{generation}/{j}");
        let n = per
            .entry(router.shard_for_key(key.as_bytes()).0)
            .or_default();
        if *n < per_shard {
            *n += 1;
            out.push(key);
        }
    }
    out
}

/// One line per shard: `shard 3: n1 n4 n5 (leader n4)`.
pub fn render_map(rows: &[ShardRow], names: &BTreeMap<u64, String>) -> Vec<String> {
    let name = |id: &u64| names.get(id).cloned().unwrap_or_else(|| format!("{id:x}"));
    rows.iter()
        .map(|r| {
            let mut s = format!(
                "shard {}: {}",
                r.shard,
                r.voters.iter().map(name).collect::<Vec<_>>().join(" ")
            );
            if !r.learners.is_empty() {
                s.push_str(&format!(
                    " + learners {}",
                    r.learners.iter().map(name).collect::<Vec<_>>().join(" ")
                ));
            }
            if let Some(l) = &r.leader {
                s.push_str(&format!(" (leader {})", name(l)));
            }
            s
        })
        .collect()
}

/// What the join of a new member did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct JoinOutcome {
    /// Name of the new member.
    pub member: String,
    /// Its id (given by the member-add; 0 when the add failed).
    pub id: u64,
    /// From its start to a fair share on every live member, ms.
    pub balanced_ms: Option<u64>,
    /// `balanced`, or why not.
    pub outcome: String,
    /// Replicas per live member at the end (by name).
    pub counts: BTreeMap<String, usize>,
    /// Peak / mean at the end.
    pub peak_ratio: f64,
    /// Least / mean at the end (any member).
    pub low_ratio: f64,
    /// The map at the end.
    pub map: Vec<String>,
    /// Read-back of every acknowledged write after the join.
    pub set: SetVerdict,
    /// Acknowledged writes read back through the new member itself
    /// (`None`: it did not answer).
    pub via_new_member: Option<SetVerdict>,
    /// Linearizability of the whole history after the join.
    pub linearizability: String,
    /// Counter-example when not linearizable.
    pub counterexample: Option<String>,
}

impl JoinOutcome {
    fn ok(&self) -> bool {
        self.balanced_ms.is_some()
            && set_ok(&self.set)
            && self.via_new_member.as_ref().is_some_and(set_ok)
            && self.linearizability == "linearizable"
    }
}

fn set_ok(v: &SetVerdict) -> bool {
    v.lost.is_empty() && v.phantom.is_empty()
}

/// The outcome of a run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ShardsVerdict {
    /// System label.
    pub system: String,
    /// Seed.
    pub seed: u64,
    /// Founding members.
    pub members: usize,
    /// Data shards.
    pub shards: u32,
    /// Voters per shard.
    pub replication: usize,
    /// `--dead-after`, ms.
    pub dead_after_ms: u64,
    /// `--join-after`, ms.
    pub join_after_ms: u64,
    /// The member killed.
    pub victim: String,
    /// The map before the kill.
    pub map_before: Vec<String>,
    /// The map after re-replication (or at the deadline).
    pub map_after_kill: Vec<String>,
    /// From the SIGKILL to every shard fully replicated on live members, ms.
    pub rereplicated_ms: Option<u64>,
    /// `complete`, or what was still missing at the deadline.
    pub rereplication: String,
    /// Whether every live member showed the same (replicated) map soon
    /// after (reported, not part of the verdict).
    pub map_agreement: String,
    /// Register operations recorded (final reads included).
    pub register_ops: usize,
    /// Of which unknown outcome.
    pub register_unknown: usize,
    /// Shards the register keys fell in.
    pub register_shards: usize,
    /// `linearizable`, `NOT linearizable`, or why no verdict.
    pub linearizability: String,
    /// Counter-example when not linearizable.
    pub counterexample: Option<String>,
    /// Read-back of every acknowledged write after the failover.
    pub set: SetVerdict,
    /// Shards the acknowledged set keys fell in.
    pub set_shards: usize,
    /// The join, when attempted.
    pub join: Option<JoinOutcome>,
    /// Why the join was not attempted.
    pub join_skipped: Option<String>,
    /// Wall time, s.
    pub elapsed_s: f64,
}

impl ShardsVerdict {
    /// Whether every check passed (the join's too, when asked for).
    pub fn ok(&self, join_wanted: bool) -> bool {
        let shards = self.shards as usize;
        self.rereplicated_ms.is_some()
            && self.linearizability == "linearizable"
            && set_ok(&self.set)
            && self.set.acked > 0
            && self.register_shards == shards
            && self.set_shards == shards
            && (!join_wanted || self.join.as_ref().is_some_and(JoinOutcome::ok))
    }

    /// Human-readable report.
    pub fn text(&self, join_wanted: bool) -> String {
        let mut s = String::new();
        let line = |s: &mut String, l: String| {
            s.push_str(&l);
            s.push('\n');
        };
        line(
            &mut s,
            format!(
                "{}: {} members, --shards {} --replication {}, dead-after {} ms, join-after {} ms, seed {}",
                self.system,
                self.members,
                self.shards,
                self.replication,
                self.dead_after_ms,
                self.join_after_ms,
                self.seed
            ),
        );
        line(&mut s, "map before the kill:".into());
        for l in &self.map_before {
            line(&mut s, format!("  {l}"));
        }
        line(&mut s, format!("SIGKILL {} (kept down)", self.victim));
        line(
            &mut s,
            match self.rereplicated_ms {
                Some(ms) => {
                    format!("every shard fully replicated on live members {ms} ms after the kill")
                }
                None => format!("re-replication NOT complete: {}", self.rereplication),
            },
        );
        line(&mut s, format!("map agreement: {}", self.map_agreement));
        line(&mut s, "map after the failover:".into());
        for l in &self.map_after_kill {
            line(&mut s, format!("  {l}"));
        }
        line(
            &mut s,
            format!(
                "writes: {} acknowledged, {} lost, {} phantom, {} unknown ({} of them present); keys in {}/{} shards",
                self.set.acked,
                self.set.lost.len(),
                self.set.phantom.len(),
                self.set.unknown,
                self.set.unknown_present,
                self.set_shards,
                self.shards
            ),
        );
        line(
            &mut s,
            format!(
                "register: {} ops ({} unknown) on keys in {}/{} shards: {}",
                self.register_ops,
                self.register_unknown,
                self.register_shards,
                self.shards,
                self.linearizability
            ),
        );
        if let Some(ce) = &self.counterexample {
            line(&mut s, format!("counter-example:\n{ce}"));
        }
        match (&self.join, &self.join_skipped) {
            (Some(j), _) => {
                line(
                    &mut s,
                    format!(
                        "join of {} (id {:x}): {}{}",
                        j.member,
                        j.id,
                        j.outcome,
                        j.balanced_ms
                            .map(|ms| format!(" after {ms} ms"))
                            .unwrap_or_default()
                    ),
                );
                if !j.map.is_empty() {
                    line(
                        &mut s,
                        format!(
                            "  replicas per live member: {} (peak/mean {:.2}, least/mean {:.2}; fair: peak/mean <= {MAX_BALANCE_RATIO}, new member >= mean/{MAX_BALANCE_RATIO})",
                            j.counts
                                .iter()
                                .map(|(n, c)| format!("{n}={c}"))
                                .collect::<Vec<_>>()
                                .join(" "),
                            j.peak_ratio,
                            j.low_ratio
                        ),
                    );
                    for l in &j.map {
                        line(&mut s, format!("  {l}"));
                    }
                }
                line(
                    &mut s,
                    format!(
                        "  read-back after the join: {} acknowledged, {} lost, {} phantom; through the new member: {}; register: {}",
                        j.set.acked,
                        j.set.lost.len(),
                        j.set.phantom.len(),
                        match &j.via_new_member {
                            Some(v) =>
                                format!("{} lost, {} phantom", v.lost.len(), v.phantom.len()),
                            None => "no answer".into(),
                        },
                        j.linearizability
                    ),
                );
                if let Some(ce) = &j.counterexample {
                    line(&mut s, format!("counter-example:\n{ce}"));
                }
            }
            (None, Some(why)) => line(&mut s, format!("join not attempted: {why}")),
            (None, None) => {}
        }
        let lost: Vec<&String> = self
            .set
            .lost
            .iter()
            .chain(self.join.iter().flat_map(|j| j.set.lost.iter()))
            .take(10)
            .collect();
        if !lost.is_empty() {
            line(&mut s, format!("first lost writes: {lost:?}"));
        }
        line(
            &mut s,
            format!(
                "{} in {:.1} s",
                if self.ok(join_wanted) { "PASS" } else { "FAIL" },
                self.elapsed_s
            ),
        );
        s
    }
}

/// Workload clients running until their flag is raised.
struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

struct Logs {
    reg: Arc<Mutex<RegisterLog>>,
    set: Arc<Mutex<SetLog>>,
    ops: Arc<AtomicU64>,
}

fn start_load(
    opts: &ShardsOptions,
    eps: &Endpoints,
    clock: Clock,
    keys: &KeyFn,
    id_base: u64,
    logs: &Logs,
) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for id in id_base..id_base + opts.register_clients {
        tasks.push(tokio::spawn(workload::register_client_keys(
            id,
            eps.clone(),
            clock,
            StopWhen::Flag(stop.clone()),
            keys.clone(),
            opts.seed,
            opts.broken,
            logs.reg.clone(),
            logs.ops.clone(),
        )));
    }
    for id in id_base..id_base + opts.set_clients {
        tasks.push(tokio::spawn(workload::set_client(
            id,
            eps.clone(),
            clock,
            StopWhen::Flag(stop.clone()),
            opts.broken,
            logs.set.clone(),
            logs.ops.clone(),
        )));
    }
    Load { stop, tasks }
}

impl Load {
    /// Stops the clients and waits for each (bounded): an operation in
    /// flight is recorded before its client returns.
    async fn stop(self) -> Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        let deadline = tokio::time::Instant::now() + Duration::from_millis(LOAD_STOP_MS);
        for t in self.tasks {
            match tokio::time::timeout_at(deadline, t).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => bail!("a workload client failed: {e}"),
                Err(_) => bail!("workload clients still running {LOAD_STOP_MS} ms after stop"),
            }
        }
        Ok(())
    }
}

/// Sleeps until `until`, printing the operation count every few seconds.
async fn run_for(until: Instant, ops: &AtomicU64, what: &str) {
    let mut last_print = Instant::now();
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(POLL_MS).min(until - Instant::now())).await;
        if last_print.elapsed() >= Duration::from_secs(5) {
            eprintln!(
                "ha-chaos shards: {what}: {} ops",
                ops.load(Ordering::Relaxed)
            );
            last_print = Instant::now();
        }
    }
}

/// The first live member's `/shards` table that answers (a format error is
/// returned at once: the harness must not guess).
async fn live_table(
    cluster: &mut Cluster,
    live: &[usize],
) -> Result<Option<(usize, Vec<ShardRow>)>> {
    ensure_running(cluster, live)?;
    for &i in live {
        if cluster.state(i) != MemberState::Up {
            continue;
        }
        let url = cluster.members()[i].metrics_url();
        if let Ok(text) = fetch_shards_text(&url).await {
            let rows = parse_shards(&text).map_err(anyhow::Error::msg)?;
            return Ok(Some((i, rows)));
        }
    }
    Ok(None)
}

/// The placement part of a table: shard → (voters, learners), sorted.
fn placement_of(rows: &[ShardRow]) -> BTreeMap<u64, (BTreeSet<u64>, BTreeSet<u64>)> {
    rows.iter()
        .map(|r| {
            (
                r.shard,
                (
                    r.voters.iter().copied().collect(),
                    r.learners.iter().copied().collect(),
                ),
            )
        })
        .collect()
}

/// Polls every member of `idx` (bounded by [`AGREE_MS`]) until each shows
/// the placement of `reference`; a description of the outcome.
async fn map_agreement(cluster: &Cluster, idx: &[usize], reference: &[ShardRow]) -> String {
    let want = placement_of(reference);
    let started = Instant::now();
    let mut differing: Vec<String> = Vec::new();
    while started.elapsed() < Duration::from_millis(AGREE_MS) {
        differing.clear();
        for &i in idx {
            let m = &cluster.members()[i];
            match fetch_shards_text(&m.metrics_url())
                .await
                .and_then(|t| parse_shards(&t))
            {
                Ok(rows) if placement_of(&rows) == want => {}
                Ok(_) => differing.push(format!("{} shows another map", m.name)),
                Err(e) => differing.push(format!("{}: {e}", m.name)),
            }
        }
        if differing.is_empty() {
            return format!(
                "all {} live members show the same map within {} ms",
                idx.len(),
                started.elapsed().as_millis()
            );
        }
        tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
    }
    format!(
        "after {AGREE_MS} ms not every live member shows the map: {}",
        differing.join("; ")
    )
}

/// An error with its log tail when a member of `idx` has exited: members
/// the scenario did not kill must keep running.
fn ensure_running(cluster: &mut Cluster, idx: &[usize]) -> Result<()> {
    for &i in idx {
        if cluster.state(i) == MemberState::Down {
            bail!(
                "member {} exited; log tail:\n{}",
                cluster.members()[i].name,
                cluster.log_tail(i, 2000)
            );
        }
    }
    Ok(())
}

/// Checks the register history; (verdict, counter-example).
fn check_register(reg: &Mutex<RegisterLog>) -> Result<(String, Option<String>, usize, usize)> {
    let r = reg.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    let (v, ce) = match check(&KvModel, &r.history, &CheckConfig::default()) {
        Ok(_) => ("linearizable".to_owned(), None),
        Err(CheckError::NotLinearizable(ce)) => {
            ("NOT linearizable".to_owned(), Some(ce.to_string()))
        }
        Err(e) => (format!("no verdict: {e}"), None),
    };
    let unknown = r.history.iter().filter(|o| o.is_unknown()).count();
    Ok((v, ce, r.history.len(), unknown))
}

fn register_keys(reg: &Mutex<RegisterLog>) -> Result<Vec<bytes::Bytes>> {
    let r = reg.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    let mut k: Vec<_> = r.history.iter().map(|o| o.input.key().clone()).collect();
    k.sort();
    k.dedup();
    Ok(k)
}

/// Reads every `set/` key back through the members `idx` (each in turn,
/// up to [`READ_BACK_ROUNDS`] rounds, each read bounded by
/// [`READ_BACK_TIMEOUT_MS`]: a read spans every shard) and compares with
/// what was acknowledged. When no read succeeds, every acknowledged write
/// counts as lost, with the last error.
async fn read_back(cluster: &Cluster, idx: &[usize], set: &Mutex<SetLog>) -> Result<SetVerdict> {
    let mut last = String::from("no member to read from");
    let mut present = None;
    'rounds: for _ in 0..READ_BACK_ROUNDS {
        for &i in idx {
            let url = cluster.members()[i].client_url();
            let r: Result<BTreeSet<String>> = async {
                let mut c = connect_one(&url, READ_BACK_TIMEOUT_MS).await?;
                let resp = tokio::time::timeout(
                    Duration::from_millis(READ_BACK_TIMEOUT_MS),
                    c.get(
                        "set/",
                        Some(GetOptions::new().with_prefix().with_keys_only()),
                    ),
                )
                .await
                .map_err(|_| anyhow::anyhow!("no answer within {READ_BACK_TIMEOUT_MS} ms"))??;
                Ok(resp
                    .kvs()
                    .iter()
                    .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
                    .collect())
            }
            .await;
            match r {
                Ok(p) => {
                    present = Some(p);
                    break 'rounds;
                }
                Err(e) => {
                    last = format!("{}: {e:#}", cluster.members()[i].name);
                    eprintln!("ha-chaos shards: read-back: {last}");
                }
            }
        }
    }
    if let Some(p) = present {
        let s = set.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        return Ok(workload::check_set(&s, &p));
    }
    // No prefix read answered (it spans every shard: one stuck shard fails
    // it): read the acknowledged and unknown keys one by one instead, so
    // the report tells lost writes from unreadable ones.
    eprintln!("ha-chaos shards: prefix read-back failed ({last}); reading key by key");
    let (acked, unknown) = {
        let s = set.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        (s.acked.clone(), s.unknown.clone())
    };
    let keys: Vec<String> = acked.iter().chain(unknown.iter()).cloned().collect();
    let (present, unreadable) = read_keys(cluster, idx, keys).await;
    let s = set.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    let mut v = workload::check_set(&s, &present);
    let unreadable_acked: Vec<String> = unreadable
        .into_iter()
        .filter(|k| acked.contains(k))
        .collect();
    v.lost.retain(|k| !unreadable_acked.contains(k));
    if !unreadable_acked.is_empty() {
        v.lost.insert(
            0,
            format!(
                "({} acknowledged keys unreadable within {KEY_READ_BACK_MS} ms, e.g. {}; prefix read: {last})",
                unreadable_acked.len(),
                unreadable_acked[0]
            ),
        );
    }
    Ok(v)
}

/// Gets each of `keys` through the members `idx` (rotating on errors),
/// [`KEY_READ_BACK_CONCURRENCY`] at a time, all within
/// [`KEY_READ_BACK_MS`]: the keys present, and the keys no member could
/// read.
async fn read_keys(
    cluster: &Cluster,
    idx: &[usize],
    keys: Vec<String>,
) -> (BTreeSet<String>, Vec<String>) {
    let mut clients = Vec::new();
    for &i in idx {
        if let Ok(c) = connect_one(&cluster.members()[i].client_url(), 3_000).await {
            clients.push(c);
        }
    }
    if clients.is_empty() {
        return (BTreeSet::new(), keys);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_millis(KEY_READ_BACK_MS);
    let queue = Arc::new(Mutex::new(keys));
    let mut workers = Vec::new();
    for w in 0..KEY_READ_BACK_CONCURRENCY {
        let queue = queue.clone();
        let clients = clients.clone();
        workers.push(tokio::spawn(async move {
            let mut present = BTreeSet::new();
            let mut unreadable = Vec::new();
            let mut target = w % clients.len();
            // The guard is consumed by the closure: never held across an
            // await.
            let next = || queue.lock().ok().and_then(|mut q| q.pop());
            while let Some(key) = next() {
                let mut read = None;
                while read.is_none() && tokio::time::Instant::now() < deadline {
                    let mut c = clients[target].clone();
                    match tokio::time::timeout_at(deadline, c.get(key.as_str(), None)).await {
                        Ok(Ok(r)) => read = Some(!r.kvs().is_empty()),
                        _ => target = (target + 1) % clients.len(),
                    }
                }
                match read {
                    Some(true) => {
                        present.insert(key);
                    }
                    Some(false) => {}
                    None => unreadable.push(key),
                }
            }
            (present, unreadable)
        }));
    }
    let mut present = BTreeSet::new();
    let mut unreadable = Vec::new();
    for w in workers {
        if let Ok((p, u)) = w.await {
            present.extend(p);
            unreadable.extend(u);
        }
    }
    // Keys a failed worker never took.
    if let Ok(mut q) = queue.lock() {
        unreadable.append(&mut q);
    }
    (present, unreadable)
}

async fn endpoints(cluster: &Cluster, idx: &[usize]) -> Result<Endpoints> {
    let mut clients = Vec::new();
    for &i in idx {
        let u = cluster.members()[i].client_url();
        clients.push(
            connect_one(&u, workload::OP_TIMEOUT_MS)
                .await
                .with_context(|| format!("connecting to {u}"))?,
        );
    }
    Ok(Endpoints { clients })
}

/// Member names by id, from the member list of the first member in `idx`
/// that answers (names a member has not published yet are taken from this
/// run's specs by peer URL).
async fn member_names(cluster: &Cluster, idx: &[usize]) -> Result<BTreeMap<u64, String>> {
    let mut last = String::from("no member to ask");
    for &i in idx {
        let r: Result<BTreeMap<u64, String>> = async {
            let mut c = connect_one(&cluster.members()[i].client_url(), 3_000).await?;
            let list = c.member_list().await?;
            Ok(list
                .members()
                .iter()
                .map(|m| {
                    let url = m.peer_urls().first().cloned().unwrap_or_default();
                    let name = if m.name().is_empty() {
                        cluster
                            .members()
                            .iter()
                            .find(|s| s.peer_url() == url)
                            .map_or_else(|| format!("{:x}", m.id()), |s| s.name.clone())
                    } else {
                        m.name().to_owned()
                    };
                    (m.id(), name)
                })
                .collect())
        }
        .await;
        match r {
            Ok(m) => return Ok(m),
            Err(e) => last = format!("{e:#}"),
        }
    }
    bail!("member list: {last}")
}

/// Whether `e` is an answer that retrying cannot change (the server does
/// not support or refuses the request), rather than a transient failure.
fn refused(e: &anyhow::Error) -> bool {
    use tonic::Code;
    matches!(
        e.downcast_ref::<etcd_client::Error>(),
        Some(etcd_client::Error::GRpcStatus(s))
            if matches!(s.code(), Code::Unimplemented | Code::InvalidArgument | Code::PermissionDenied)
    )
}

/// Adds member `new` (its spec already in `cluster`) through the
/// membership API of a member in `live`; returns its id and the
/// `--initial-cluster` it starts with. An add whose answer was lost is
/// found in the member list; a refusal (unsupported, invalid) is not
/// retried.
async fn member_add(cluster: &Cluster, live: &[usize], new: usize) -> Result<(u64, String)> {
    let peer = cluster.members()[new].peer_url();
    let deadline = Instant::now() + Duration::from_millis(crate::chaos::READY_TIMEOUT_MS);
    let mut last = String::new();
    while Instant::now() < deadline {
        for &i in live {
            let r =
                crate::chaos::add_member_once(&cluster.members()[i].client_url(), &peer, cluster)
                    .await;
            match r {
                Ok(v) => return Ok(v),
                Err(e) if refused(&e) => bail!("{peer} refused: {e:#}"),
                Err(e) => last = format!("{e:#}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    bail!("cannot add {peer}: {last}")
}

/// Runs the scenario; writes `verdict.json` and `report.txt` into
/// `opts.out_dir`.
pub async fn run(opts: &ShardsOptions) -> Result<ShardsVerdict> {
    if !(3..crate::server::MAX_MEMBERS).contains(&opts.members) {
        bail!(
            "--members must be 3..={} (one address is kept for the new member)",
            crate::server::MAX_MEMBERS - 1
        );
    }
    if opts.shards < 2 {
        bail!("--shards must be at least 2");
    }
    if opts.replication == 0 || opts.replication >= opts.members {
        bail!(
            "--replication must be 1..{} (fewer than the members, so a dead member's replicas have somewhere to go)",
            opts.members
        );
    }
    if opts.register_clients == 0 || opts.set_clients == 0 {
        bail!("at least one register and one set client");
    }
    if opts.register_clients >= JOIN_CLIENT_BASE || opts.set_clients >= JOIN_CLIENT_BASE {
        bail!("fewer than {JOIN_CLIENT_BASE} clients of each kind");
    }
    let ServerKind::HaNode { .. } = opts.kind else {
        bail!("the shard scenario runs ha-node only");
    };
    let started = Instant::now();
    let swept = sweep_leftovers();
    if !swept.is_empty() {
        eprintln!(
            "ha-chaos: removed leftovers of dead runs: {}",
            swept.join(", ")
        );
    }
    std::fs::create_dir_all(&opts.out_dir)
        .with_context(|| format!("creating {}", opts.out_dir.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix(&crate::run_prefix())
        .tempdir()
        .context("temp dir")?;
    let router = Router::new(HashFn::V1, opts.shards).map_err(|e| anyhow::anyhow!("{e}"))?;
    let expected: BTreeSet<u64> = router.all_shards().map(|g| g.0).collect();
    let n = opts.members;
    // One more address than founding members: the member added later.
    let mut specs = layout(n + 1, &opts.loopback_prefix, 2379, tmp.path())?;
    let new_spec = specs.pop().context("layout")?;
    let mut kind = opts.kind.clone();
    if let ServerKind::HaNode { shards, .. } = &mut kind {
        *shards = opts.shards;
    }
    let _ = std::fs::remove_dir_all(opts.out_dir.join("logs"));
    if let ServerKind::HaNode {
        certs_dir: None, ..
    } = &kind
    {
        // Certificates generated by an earlier run name the member ids of
        // another cluster token (this run's includes the pid).
        let _ = std::fs::remove_dir_all(opts.out_dir.join("certs"));
    }
    let mut cluster = Cluster::new(ClusterConfig {
        kind: kind.clone(),
        members: specs,
        token: format!("{}shards", crate::run_prefix()),
        heartbeat_ms: opts.heartbeat_ms,
        election_timeout_ms: opts.election_timeout_ms,
        log_dir: opts.out_dir.join("logs"),
        log_level: "warn".into(),
    })?;
    let args = vec![
        "--replication".to_owned(),
        opts.replication.to_string(),
        "--dead-after".to_owned(),
        opts.dead_after_ms.to_string(),
        "--join-after".to_owned(),
        opts.join_after_ms.to_string(),
    ];
    cluster.set_extra(args, Vec::new());
    cluster.start_all()?;
    let all: Vec<usize> = (0..n).collect();
    let urls = cluster.client_urls();
    // A leader of group 0, every member answering; a member that exits
    // meanwhile (e.g. refusing a flag) ends the wait at once.
    let deadline = Instant::now() + Duration::from_millis(crate::chaos::READY_TIMEOUT_MS);
    loop {
        ensure_running(&mut cluster, &all)?;
        if wait_ready(&urls, &all, 1_000).await.is_some() {
            break;
        }
        if Instant::now() >= deadline {
            bail!(
                "{kind}: no leader within {} ms; n1 log tail:\n{}",
                crate::chaos::READY_TIMEOUT_MS,
                cluster.log_tail(0, 2000)
            );
        }
    }
    // Every shard led (as its hosts see it).
    let deadline = Instant::now() + Duration::from_millis(SHARDS_READY_MS);
    let mut tables;
    loop {
        tables = Vec::new();
        let mut errors = Vec::new();
        for i in 0..n {
            // Until its first shard upkeep a member serves the one-group
            // note at /shards: parse errors are retried here (and reported
            // at the deadline), fatal from then on.
            match fetch_shards_text(&cluster.members()[i].metrics_url())
                .await
                .and_then(|t| parse_shards(&t))
            {
                Ok(rows) => tables.push(rows),
                Err(e) => errors.push(e),
            }
        }
        let missing = leaderless(&tables, &expected);
        if errors.is_empty() && missing.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            bail!(
                "not every shard led within {SHARDS_READY_MS} ms: leaderless {missing:?}; errors {errors:?}"
            );
        }
        ensure_running(&mut cluster, &all)?;
        tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
    }
    let names = member_names(&cluster, &all).await?;
    let before = tables[0].clone();
    for r in &before {
        if let Some(v) = r.voters.iter().find(|v| !names.contains_key(v)) {
            bail!(
                "/shards names voter {v} of shard {}, not in the member list {names:?}",
                r.shard
            );
        }
    }
    let map_before = render_map(&before, &names);
    eprintln!("ha-chaos shards: every shard led; map:");
    for l in &map_before {
        eprintln!("  {l}");
    }
    // Load on every member.
    let clock = Clock(Instant::now());
    let logs = Logs {
        reg: Arc::new(Mutex::new(RegisterLog::default())),
        set: Arc::new(Mutex::new(SetLog::default())),
        ops: Arc::new(AtomicU64::new(0)),
    };
    // Router is Copy: the closure keeps its own.
    let spread: KeyFn = Arc::new(move |g| spread_keys(&router, g, KEYS_PER_SHARD));
    let eps_all = endpoints(&cluster, &all).await?;
    let load = start_load(opts, &eps_all, clock, &spread, 0, &logs);
    let load_started = Instant::now();
    run_for(
        load_started + Duration::from_millis(opts.kill_after_ms),
        &logs.ops,
        "load",
    )
    .await;
    // The victim.
    let victim = match &opts.victim {
        Some(v) => all
            .iter()
            .copied()
            .find(|&i| cluster.members()[i].name == *v)
            .with_context(|| format!("--victim {v} is not a founding member"))?,
        None => SimRng::new(opts.seed ^ 0x7669_6374_696d).below(n as u64) as usize,
    };
    let victim_name = cluster.members()[victim].name.clone();
    let victim_id = names
        .iter()
        .find(|(_, nm)| **nm == victim_name)
        .map(|(id, _)| *id)
        .with_context(|| format!("{victim_name} not in the member list"))?;
    cluster.kill9(victim)?;
    let killed_at = Instant::now();
    eprintln!(
        "ha-chaos shards: SIGKILL {victim_name} (id {victim_id}); waiting for re-replication"
    );
    let live: Vec<usize> = all.iter().copied().filter(|&i| i != victim).collect();
    let live_ids: BTreeSet<u64> = names
        .keys()
        .copied()
        .filter(|&id| id != victim_id)
        .collect();
    let bound = Duration::from_millis(opts.dead_after_ms + opts.converge_timeout_ms);
    let mut rereplicated_ms = None;
    let mut last_gaps: Vec<String> = vec!["no /shards answer from a live member".into()];
    let mut last_rows = before.clone();
    let mut last_report = usize::MAX;
    while killed_at.elapsed() < bound {
        if let Some((_, rows)) = live_table(&mut cluster, &live).await? {
            let gaps = replication_gaps(&rows, &expected, opts.replication, &live_ids);
            last_rows = rows;
            if gaps.is_empty() {
                rereplicated_ms = Some(killed_at.elapsed().as_millis() as u64);
                break;
            }
            if gaps.len() != last_report {
                eprintln!(
                    "ha-chaos shards: {} ms after the kill, {} shard(s) short: {}",
                    killed_at.elapsed().as_millis(),
                    gaps.len(),
                    gaps.first().cloned().unwrap_or_default()
                );
                last_report = gaps.len();
            }
            last_gaps = gaps;
        }
        tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
    }
    let rereplication = match rereplicated_ms {
        Some(_) => "complete".to_owned(),
        None => format!(
            "after {} ms (dead-after {} + {} ms): {}",
            bound.as_millis(),
            opts.dead_after_ms,
            opts.converge_timeout_ms,
            last_gaps.join("; ")
        ),
    };
    eprintln!("ha-chaos shards: re-replication {rereplication}");
    let map_agreement = if rereplicated_ms.is_some() {
        map_agreement(&cluster, &live, &last_rows).await
    } else {
        "not checked (re-replication did not complete)".to_owned()
    };
    eprintln!("ha-chaos shards: {map_agreement}");
    let settle_end = (Instant::now() + Duration::from_millis(opts.settle_ms))
        .max(load_started + Duration::from_millis(opts.duration_ms));
    run_for(settle_end, &logs.ops, "load after the failover").await;
    load.stop().await?;
    // Read back everything through the live members.
    let eps_live = endpoints(&cluster, &live).await?;
    let set_verdict = read_back(&cluster, &live, &logs.set).await?;
    final_reads(&eps_live, &clock, &register_keys(&logs.reg)?, &logs.reg).await;
    let (linearizability, counterexample, register_ops, register_unknown) =
        check_register(&logs.reg)?;
    let shards_of = |keys: Vec<Vec<u8>>| -> usize {
        keys.iter()
            .map(|k| router.shard_for_key(k).0)
            .collect::<BTreeSet<_>>()
            .len()
    };
    let register_shards = shards_of(
        register_keys(&logs.reg)?
            .into_iter()
            .map(|k| k.to_vec())
            .collect(),
    );
    let set_shards = shards_of(
        logs.set
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .acked
            .iter()
            .map(|k| k.as_bytes().to_vec())
            .collect(),
    );
    let mut verdict = ShardsVerdict {
        system: kind.label(),
        seed: opts.seed,
        members: n,
        shards: opts.shards,
        replication: opts.replication,
        dead_after_ms: opts.dead_after_ms,
        join_after_ms: opts.join_after_ms,
        victim: format!("{victim_name} (id {victim_id})"),
        map_before,
        map_after_kill: render_map(&last_rows, &names),
        rereplicated_ms,
        rereplication,
        map_agreement,
        register_ops,
        register_unknown,
        register_shards,
        linearizability,
        counterexample,
        set: set_verdict,
        set_shards,
        join: None,
        join_skipped: None,
        elapsed_s: 0.0,
    };
    if !opts.join {
        verdict.join_skipped = Some("--no-join".into());
    } else if rereplicated_ms.is_none() {
        verdict.join_skipped = Some("re-replication did not complete".into());
    } else {
        verdict.join = Some(
            join_new_member(
                opts,
                &mut cluster,
                new_spec,
                &live,
                &live_ids,
                &expected,
                (clock, &spread, &logs),
            )
            .await?,
        );
    }
    cluster.stop_all();
    verdict.elapsed_s = started.elapsed().as_secs_f64();
    std::fs::write(
        opts.out_dir.join("verdict.json"),
        serde_json::to_string_pretty(&verdict)?,
    )?;
    std::fs::write(opts.out_dir.join("report.txt"), verdict.text(opts.join))?;
    Ok(verdict)
}

/// Adds a new member under load and waits (bounded) for its fair share,
/// then stops the load, reads everything back and checks again.
async fn join_new_member(
    opts: &ShardsOptions,
    cluster: &mut Cluster,
    spec: crate::server::MemberSpec,
    live: &[usize],
    live_ids: &BTreeSet<u64>,
    expected: &BTreeSet<u64>,
    (clock, keys, logs): (Clock, &KeyFn, &Logs),
) -> Result<JoinOutcome> {
    let name = spec.name.clone();
    let new = cluster.add_member(spec)?;
    let eps_live = endpoints(cluster, live).await?;
    let load = start_load(opts, &eps_live, clock, keys, JOIN_CLIENT_BASE, logs);
    let added = match member_add(cluster, live, new).await {
        Ok((id, initial)) => {
            cluster.prepare_rejoin(new, initial, id)?;
            cluster.start(new)?;
            Ok(id)
        }
        Err(e) => Err(format!("member add failed: {e:#}")),
    };
    let id = added.as_ref().map_or(0, |id| *id);
    let joined_at = Instant::now();
    let mut all_live = live.to_vec();
    all_live.push(new);
    let mut ids = live_ids.clone();
    if added.is_ok() {
        ids.insert(id);
    }
    let bound = Duration::from_millis(opts.join_after_ms + opts.converge_timeout_ms);
    let mut outcome = match &added {
        Ok(id) => {
            eprintln!("ha-chaos shards: added {name} (id {id}); waiting for its fair share");
            format!("no /shards answer within {} ms", bound.as_millis())
        }
        Err(e) => {
            eprintln!("ha-chaos shards: {e}");
            e.clone()
        }
    };
    let mut balanced_ms = None;
    let mut rows = Vec::new();
    let mut last_report = String::new();
    while added.is_ok() && joined_at.elapsed() < bound {
        if cluster.state(new) == MemberState::Down {
            outcome = format!("{name} exited; log tail:\n{}", cluster.log_tail(new, 2000));
            break;
        }
        if let Some((_, r)) = live_table(cluster, live).await? {
            let gaps = replication_gaps(&r, expected, opts.replication, &ids);
            let b = Balance::of(&r, &ids);
            rows = r;
            if gaps.is_empty() && b.fair(id) {
                balanced_ms = Some(joined_at.elapsed().as_millis() as u64);
                outcome = "balanced".into();
                break;
            }
            outcome = format!(
                "not fair after {} ms (join-after {} + {} ms): replicas per member {:?} (peak/mean {:.2}, least/mean {:.2}){}",
                bound.as_millis(),
                opts.join_after_ms,
                opts.converge_timeout_ms,
                b.counts,
                b.peak_ratio,
                b.low_ratio,
                if gaps.is_empty() {
                    String::new()
                } else {
                    format!("; {}", gaps.join("; "))
                }
            );
            let now = format!("{:?}", b.counts);
            if now != last_report {
                eprintln!(
                    "ha-chaos shards: {} ms after the join: replicas per member {now}",
                    joined_at.elapsed().as_millis()
                );
                last_report = now;
            }
        }
        tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
    }
    run_for(
        Instant::now() + Duration::from_millis(opts.settle_ms),
        &logs.ops,
        "load after the join",
    )
    .await;
    load.stop().await?;
    let names = member_names(cluster, &all_live).await?;
    let b = Balance::of(&rows, &ids);
    let set = read_back(cluster, live, &logs.set).await?;
    let via_new_member = if cluster.state(new) == MemberState::Up {
        Some(read_back(cluster, &[new], &logs.set).await?)
    } else {
        None
    };
    final_reads(&eps_live, &clock, &register_keys(&logs.reg)?, &logs.reg).await;
    let (linearizability, counterexample, _, _) = check_register(&logs.reg)?;
    let by_name = |id: &u64| names.get(id).cloned().unwrap_or_else(|| format!("{id:x}"));
    Ok(JoinOutcome {
        member: name,
        id,
        balanced_ms,
        outcome,
        counts: b.counts.iter().map(|(id, c)| (by_name(id), *c)).collect(),
        peak_ratio: b.peak_ratio,
        low_ratio: b.low_ratio,
        map: render_map(&rows, &names),
        set,
        via_new_member,
        linearizability,
        counterexample,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TODAY: &str = "# shards 4 replication 3; member 11\n# shard replicas leader hosted role\n1 11,22,33 22 yes Follower\n2 11,22,44 ? no -\n";
    const NEXT: &str = "# shard voters learners leader hosted role\n1 11,22,33 - 22 yes Follower\n2 11,22,44 55 - no -\n";

    #[test]
    fn parses_both_formats() {
        let rows = parse_shards(TODAY).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(
            rows[0],
            ShardRow {
                shard: 1,
                voters: vec![11, 22, 33],
                learners: vec![],
                leader: Some(22),
                hosted: true,
                role: Some("Follower".into()),
            }
        );
        assert_eq!(
            (rows[1].leader, rows[1].hosted, rows[1].role.clone()),
            (None, false, None)
        );
        let rows = parse_shards(NEXT).unwrap();
        assert_eq!(rows[1].learners, vec![55]);
        assert_eq!(rows[0].learners, Vec::<u64>::new());
        assert_eq!(rows[1].leader, None);
    }

    #[test]
    fn refuses_anything_else_naming_the_line() {
        for (text, want) in [
            ("1 11,22 22 yes\n", "4 columns"),
            ("1 11,22 - 22 yes Leader extra\n", "7 columns"),
            ("1 11,x 22 yes Leader\n", "`x` is not a member id"),
            ("1 11,11 22 yes Leader\n", "listed twice"),
            ("1 - 22 yes Leader\n", "no voters"),
            ("1 11 22 maybe Leader\n", "neither yes nor no"),
            ("one 11 22 yes Leader\n", "not a number"),
            ("1 11 22 yes L\n1 11 22 yes L\n", "shard 1 listed twice"),
            ("1 11 0 yes L\n", "leader `0`"),
            ("one consensus group (--shards 1)\n", "not a number"),
            ("# only comments\n\n", "no shard"),
        ] {
            let err = parse_shards(text).unwrap_err();
            assert!(err.contains(want), "{text:?}: {err}");
        }
        let err = parse_shards("# c\n\n1 11 22 yes L\n2 11 22\n").unwrap_err();
        assert!(err.starts_with("/shards line 4:"), "{err}");
    }

    fn row(shard: u64, voters: &[u64], learners: &[u64]) -> ShardRow {
        ShardRow {
            shard,
            voters: voters.to_vec(),
            learners: learners.to_vec(),
            leader: None,
            hosted: false,
            role: None,
        }
    }

    #[test]
    fn gaps_name_dead_voters_learners_short_shards_and_missing_shards() {
        let expected: BTreeSet<u64> = [1, 2].into();
        let live: BTreeSet<u64> = [1, 2, 3, 4].into();
        let ok = vec![row(1, &[1, 2, 3], &[]), row(2, &[2, 3, 4], &[])];
        assert!(replication_gaps(&ok, &expected, 3, &live).is_empty());
        let dead = vec![row(1, &[1, 2, 5], &[]), row(2, &[2, 3, 4], &[])];
        let g = replication_gaps(&dead, &expected, 3, &live);
        assert_eq!(g.len(), 1);
        assert!(g[0].contains("not live: [5]"), "{g:?}");
        let learning = vec![row(1, &[1, 2, 3], &[4]), row(2, &[2, 3], &[])];
        let g = replication_gaps(&learning, &expected, 3, &live);
        assert_eq!(g.len(), 2, "{g:?}");
        assert!(g[0].contains("learners [4]") && g[1].contains("2 voters"));
        let g = replication_gaps(&ok[..1], &expected, 3, &live);
        assert!(g[0].contains("router has"), "{g:?}");
    }

    #[test]
    fn fair_share_needs_the_new_member_too() {
        let live: BTreeSet<u64> = [1, 2, 3, 4, 5].into();
        // 16 shards × 3 on members 1..=4 only: 12 each, peak/mean exactly
        // 1.25, member 5 empty: not fair.
        let four: Vec<ShardRow> = (0..16u64)
            .map(|s| {
                let v: Vec<u64> = (0..3).map(|k| 1 + (s * 3 + k) % 4).collect();
                row(s + 1, &v, &[])
            })
            .collect();
        let b = Balance::of(&four, &live);
        assert_eq!(b.counts[&5], 0);
        assert!((b.peak_ratio - 1.25).abs() < 1e-9, "{b:?}");
        assert!(!b.fair(5), "{b:?}");
        assert!(b.fair(1), "peak/mean alone is met");
        // Spread over all five: 10,10,10,9,9.
        let five: Vec<ShardRow> = (0..16u64)
            .map(|s| {
                let v: Vec<u64> = (0..3).map(|k| 1 + (s * 3 + k) % 5).collect();
                row(s + 1, &v, &[])
            })
            .collect();
        let b = Balance::of(&five, &live);
        assert!(b.fair(5), "{b:?}");
        // Not fair: member 1 takes six more replicas (peak/mean > 1.25).
        let mut skewed = five.clone();
        for r in skewed.iter_mut().filter(|r| !r.voters.contains(&1)).take(6) {
            r.voters[0] = 1;
        }
        let b = Balance::of(&skewed, &live);
        assert!(b.peak_ratio > 1.25 && !b.fair(5), "{b:?}");
        // Dead members' replicas do not count for anyone.
        let b = Balance::of(&[row(1, &[1, 9, 9], &[])], &[1].into());
        assert_eq!(b.counts.values().sum::<usize>(), 1);
    }

    #[test]
    fn spread_keys_cover_every_shard() {
        let r = Router::new(HashFn::V1, 16).unwrap();
        for g in [0, 1, 17] {
            let keys = spread_keys(&r, g, 2);
            assert_eq!(keys.len(), 32);
            let mut per: BTreeMap<u64, usize> = BTreeMap::new();
            for k in &keys {
                assert!(k.starts_with(&format!("reg/{g}/")));
                *per.entry(r.shard_for_key(k.as_bytes()).0).or_default() += 1;
            }
            assert_eq!(per.len(), 16);
            assert!(per.values().all(|&c| c == 2));
        }
    }

    #[test]
    fn leaderless_needs_a_hosting_member_knowing_a_leader() {
        let mut a = row(1, &[1, 2, 3], &[]);
        a.leader = Some(2);
        let b = row(2, &[1, 2, 3], &[]);
        let mut c = row(2, &[1, 2, 3], &[]);
        c.leader = Some(1);
        let expected: BTreeSet<u64> = [1, 2].into();
        // Shard 2's leader is only known by a member not hosting it.
        a.hosted = true;
        assert_eq!(
            leaderless(&[vec![a.clone(), c.clone()]], &expected),
            vec![2]
        );
        c.hosted = true;
        assert!(leaderless(&[vec![a.clone(), b], vec![c]], &expected).is_empty());
    }

    #[test]
    fn verdict_fails_on_each_missing_part() {
        let good = ShardsVerdict {
            shards: 2,
            rereplicated_ms: Some(5),
            linearizability: "linearizable".into(),
            set: SetVerdict {
                acked: 3,
                ..SetVerdict::default()
            },
            register_shards: 2,
            set_shards: 2,
            ..ShardsVerdict::default()
        };
        assert!(good.ok(false));
        assert!(!good.ok(true), "join wanted, none done");
        let mut v = good.clone();
        v.rereplicated_ms = None;
        assert!(!v.ok(false));
        let mut v = good.clone();
        v.set.lost.push("set/0/1".into());
        assert!(!v.ok(false));
        let mut v = good.clone();
        v.register_shards = 1;
        assert!(!v.ok(false));
        let mut v = good.clone();
        v.linearizability = "NOT linearizable".into();
        assert!(!v.ok(false));
        assert!(v.text(false).contains("FAIL"));
    }
}
