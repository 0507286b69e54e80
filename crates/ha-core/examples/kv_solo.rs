//! `kv_solo`: a durable key-value store on one node — the `Replica` driver
//! running the single-voter `Solo` protocol over a RocksDB log, with the
//! in-memory `MemKv` state machine rebuilt from the log on every start.
//!
//! ```text
//! cargo run --release -p ha-core --features rocksdb --example kv_solo -- \
//!     --dir ./ha-data/kv_solo --ops 20000 --clients 16
//! ```
//!
//! Each run replays the log, checks every key written by earlier runs in
//! the same `--dir`, writes `--ops` puts from `--clients` concurrent tasks,
//! prints throughput, latency and proposals per fsync, then reads every key
//! of this run back through a linearizable read. Run it twice with the same
//! `--dir` to see the data survive a restart.
//!
//! What this is not: replication. One voter means every write is durable
//! on this machine's disk only (fsync'd before it is acknowledged); a
//! multi-node group runs `ha-raft` behind the same driver.

use std::error::Error;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ha_core::kv::{KvCommand, KvResponse, MemKv};
use ha_core::replica::{Replica, ReplicaConfig, ReplicaHandle};
use ha_core::solo::{Solo, SoloConfig};
use ha_core::storage::{LogStore, RocksLogStore, RocksOptions};
use ha_core::transport::{MemNetwork, MemNetworkConfig};
use ha_core::{Bytes, GroupId, NodeId};

/// Most puts one run may issue (keeps the in-memory verification bounded).
const MAX_OPS: usize = 10_000_000;
/// Most concurrent client tasks.
const MAX_CLIENTS: usize = 4096;
/// Largest value size accepted by `--value-bytes`.
const MAX_VALUE_BYTES: usize = 1 << 20;

const GROUP: GroupId = GroupId(1);
const NODE: NodeId = NodeId(1);
const RUNS_KEY: &[u8] = b"meta/runs";

type BoxError = Box<dyn Error + Send + Sync>;

struct Args {
    dir: PathBuf,
    ops: usize,
    clients: usize,
    value_bytes: usize,
}

const USAGE: &str = "usage: kv_solo [--dir PATH] [--ops N] [--clients M] [--value-bytes B]
  --dir PATH         data directory (default ./ha-data/kv_solo)
  --ops N            puts to issue this run (default 20000, max 10000000)
  --clients M        concurrent client tasks (default 16, max 4096)
  --value-bytes B    bytes per value (default 100, min 16, max 1048576)";

fn parse_args() -> Result<Option<Args>, String> {
    let mut args = Args {
        dir: PathBuf::from("./ha-data/kv_solo"),
        ops: 20_000,
        clients: 16,
        value_bytes: 100,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            return Ok(None);
        }
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        let number = |max: usize, min: usize| -> Result<usize, String> {
            let n: usize = value
                .parse()
                .map_err(|_| format!("{flag}: {value:?} is not a number"))?;
            if n < min || n > max {
                return Err(format!("{flag} must be in {min}..={max}, got {n}"));
            }
            Ok(n)
        };
        match flag.as_str() {
            "--dir" => args.dir = PathBuf::from(&value),
            "--ops" => args.ops = number(MAX_OPS, 1)?,
            "--clients" => args.clients = number(MAX_CLIENTS, 1)?,
            "--value-bytes" => args.value_bytes = number(MAX_VALUE_BYTES, 16)?,
            other => return Err(format!("unknown flag {other}\n{USAGE}")),
        }
    }
    Ok(Some(args))
}

fn key(run: u64, i: usize) -> Bytes {
    Bytes::from(format!("run/{run}/{i:09}"))
}

/// The value of put `i` of run `run`: deterministic, so any run can check
/// any earlier run's data.
fn value(run: u64, i: usize, len: usize) -> Bytes {
    let mut v = format!("{run}-{i}-").into_bytes();
    v.resize(len.max(v.len()), b'x');
    Bytes::from(v)
}

fn run_meta_key(run: u64) -> Bytes {
    Bytes::from(format!("meta/run/{run}"))
}

async fn put(h: &ReplicaHandle<MemKv>, key: Bytes, value: Bytes) -> Result<(), BoxError> {
    let resp = h.propose(KvCommand::Put { key, value }.encode()).await?;
    match KvResponse::decode(&resp)? {
        KvResponse::Written { .. } => Ok(()),
        other => Err(format!("unexpected response to a put: {other:?}").into()),
    }
}

/// Checks every key of every earlier run; returns how many were checked.
async fn verify_earlier_runs(h: &ReplicaHandle<MemKv>, runs: u64) -> Result<usize, BoxError> {
    let mut checked = 0;
    for run in 0..runs {
        let meta = h
            .linearizable_query(move |kv: &MemKv| kv.get(&run_meta_key(run)).cloned())
            .await?;
        let Some(meta) = meta else {
            // The run was interrupted before it recorded itself; its puts
            // that were acknowledged are checked by that run's own readback.
            continue;
        };
        let text = std::str::from_utf8(&meta)?;
        let (ops, value_bytes) = text
            .split_once(':')
            .ok_or_else(|| format!("bad run record {text:?}"))?;
        let ops: usize = ops.parse()?;
        let value_bytes: usize = value_bytes.parse()?;
        let missing = h
            .query(move |kv: &MemKv| {
                (0..ops)
                    .filter(|i| kv.get(&key(run, *i)) != Some(&value(run, *i, value_bytes)))
                    .count()
            })
            .await?;
        if missing > 0 {
            return Err(format!("run {run}: {missing} of {ops} keys missing or wrong").into());
        }
        checked += ops;
    }
    Ok(checked)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

async fn run(args: Args) -> Result<(), BoxError> {
    std::fs::create_dir_all(&args.dir)?;
    let store = Arc::new(RocksLogStore::open(&args.dir, RocksOptions::default())?);
    let opened = Instant::now();
    let recovered = store.recover(GROUP)?;
    let recovered_entries = recovered.entries.len();
    let saved_term = recovered.hard_state.term;
    let solo = Solo::new(SoloConfig::new(NODE), recovered)?;
    let net = MemNetwork::new(MemNetworkConfig::default())?;
    let (transport, inbound) = net.join(NODE)?;
    let config = ReplicaConfig {
        group: GROUP,
        ..ReplicaConfig::default()
    };
    let replica = Replica::start(
        config,
        solo,
        Arc::clone(&store) as Arc<dyn LogStore>,
        MemKv::default(),
        Arc::new(transport),
        inbound,
    )?;
    let h = replica.handle();

    // A linearizable read waits until the whole recovered log is applied.
    let (keys, runs) = h
        .linearizable_query(|kv: &MemKv| (kv.len(), kv.get(RUNS_KEY).cloned()))
        .await?;
    let runs: u64 = match runs {
        Some(b) => std::str::from_utf8(&b)?.parse()?,
        None => 0,
    };
    let status = h.status().await?;
    println!("kv_solo: data dir {}", args.dir.display());
    println!(
        "  recovered {recovered_entries} log entries (saved term {}), replayed into MemKv in {:.2?}: {keys} keys, {runs} earlier runs",
        saved_term.get(),
        opened.elapsed()
    );
    println!(
        "  leading term {} as the only voter (Solo: no replication, durability = fsync on this disk)",
        status.protocol.term.get()
    );
    if runs > 0 {
        let t = Instant::now();
        let checked = verify_earlier_runs(&h, runs).await?;
        println!(
            "  verified {checked} keys written by earlier runs: all present with the right values ({:.2?})",
            t.elapsed()
        );
    }

    let this_run = runs;
    let fsyncs_before = store.stats().fsyncs;
    let persists_before = status.stats.persists;
    println!(
        "  writing {} puts of {}-byte values from {} concurrent clients ...",
        args.ops, args.value_bytes, args.clients
    );
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(args.clients);
    for c in 0..args.clients {
        let h = h.clone();
        let (ops, clients, value_bytes) = (args.ops, args.clients, args.value_bytes);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(ops / clients + 1);
            for i in (c..ops).step_by(clients) {
                let t = Instant::now();
                put(&h, key(this_run, i), value(this_run, i, value_bytes)).await?;
                latencies.push(t.elapsed());
            }
            Ok::<_, BoxError>(latencies)
        }));
    }
    let mut latencies = Vec::with_capacity(args.ops);
    for t in tasks {
        latencies.extend(t.await?.map_err(|e| e.to_string())?);
    }
    let elapsed = started.elapsed();
    let fsyncs = store.stats().fsyncs - fsyncs_before;
    let persists = h.status().await?.stats.persists - persists_before;
    latencies.sort_unstable();
    let secs = elapsed.as_secs_f64().max(1e-9);
    println!(
        "  done: {} puts in {:.2?} = {:.0} ops/s; latency p50 {:.2?}, p99 {:.2?}, max {:.2?}",
        args.ops,
        elapsed,
        args.ops as f64 / secs,
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        percentile(&latencies, 1.0),
    );
    println!(
        "  group commit: {persists} synced log writes by the driver, {fsyncs} RocksDB fsyncs -> {:.1} proposals per fsync",
        args.ops as f64 / fsyncs.max(1) as f64
    );

    // Record the run, then read every key of it back linearizably.
    put(
        &h,
        run_meta_key(this_run),
        Bytes::from(format!("{}:{}", args.ops, args.value_bytes)),
    )
    .await?;
    put(
        &h,
        Bytes::from_static(RUNS_KEY),
        Bytes::from((this_run + 1).to_string()),
    )
    .await?;
    let (ops, value_bytes) = (args.ops, args.value_bytes);
    let wrong = h
        .linearizable_query(move |kv: &MemKv| {
            (0..ops)
                .filter(|i| kv.get(&key(this_run, *i)) != Some(&value(this_run, *i, value_bytes)))
                .count()
        })
        .await?;
    if wrong > 0 {
        return Err(format!("read-back: {wrong} of {ops} keys missing or wrong").into());
    }
    println!("  read back all {ops} keys of this run through a linearizable read: OK");

    let kv = replica.shutdown().await?;
    store.close()?;
    println!(
        "  clean shutdown: {} keys in the state machine. Run again with --dir {} to replay and re-verify.",
        kv.len(),
        args.dir.display()
    );
    Ok(())
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(Some(a)) => a,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("kv_solo: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kv_solo: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kv_solo: error: {e}");
            ExitCode::FAILURE
        }
    }
}
