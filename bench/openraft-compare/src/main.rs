//! `openraft-compare`: proposals per second through an in-process openraft
//! cluster, the shape of ha-raft's `benches/propose.rs`.
//!
//! ```text
//! openraft-compare --members 3 --clients 256 --ops 20000
//! ```

use anyhow::Context;
use clap::Parser;
use openraft_compare::{Cluster, Schedule, bench_config, measure};

/// Command line of one bench point.
#[derive(Debug, Parser)]
#[command(about = "openraft proposals/s: N in-memory nodes in one process, C clients")]
struct Args {
    /// Cluster size (voters), 1..=9.
    #[arg(long, default_value_t = 3)]
    members: u64,
    /// Concurrent clients, each keeping one empty proposal outstanding.
    #[arg(long, default_value_t = 256)]
    clients: u64,
    /// Proposals committed per round (ha-raft's bench: 20,000 per iteration).
    #[arg(long, default_value_t = 20_000)]
    ops: u64,
    /// Unmeasured warm-up time (ha-raft's criterion setting: 1 s).
    #[arg(long, default_value_t = 1_000)]
    warmup_ms: u64,
    /// Measure whole rounds for at least this long (criterion: 3 s).
    #[arg(long, default_value_t = 3_000)]
    measure_ms: u64,
    /// At least this many measured rounds.
    #[arg(long, default_value_t = 3)]
    min_rounds: u32,
    /// At most this many measured (and warm-up) rounds.
    #[arg(long, default_value_t = 1_000)]
    max_rounds: u32,
    /// Snapshot every this many applied entries (ha-raft's bench: 50,000).
    #[arg(long, default_value_t = 50_000)]
    snapshot_every: u64,
    /// openraft's `max_payload_entries` (openraft's default: 300).
    #[arg(long, default_value_t = 300)]
    max_payload_entries: u64,
    /// tokio worker threads (default: one per core, tokio's default).
    #[arg(long)]
    workers: Option<usize>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Some(w) = args.workers {
        anyhow::ensure!((1..=64).contains(&w), "workers must be 1..=64, got {w}");
        rt.worker_threads(w);
    }
    let rt = rt.build().context("tokio runtime")?;
    rt.block_on(async {
        let config = bench_config(args.snapshot_every, args.max_payload_entries)?;
        let cluster = Cluster::start(args.members, config).await?;
        let schedule = Schedule {
            warmup_ms: args.warmup_ms,
            measure_ms: args.measure_ms,
            min_rounds: args.min_rounds,
            max_rounds: args.max_rounds,
        };
        let m = measure(&cluster, args.clients, args.ops, schedule).await?;
        let (min, max) = m.min_max_ops_per_s();
        let cpu = m
            .cpu_ns_per_op()
            .map_or_else(|| "n/a".to_string(), |ns| format!("{ns:.0}"));
        println!(
            "openraft 0.9.25 members={} clients={} ops/round={} rounds={} ops/s={:.0} \
             (rounds min {:.0} max {:.0}) cpu_ns/op={cpu}",
            args.members,
            args.clients,
            args.ops,
            m.rounds.len(),
            m.ops_per_s(),
            min,
            max
        );
        cluster.shutdown().await?;
        Ok(())
    })
}
