//! `cargo xtask`: the workspace's chores.
//!
//! - `cargo xtask test` — format check, the dependency rules of the crate
//!   map (ha-core without features builds no RocksDB and no tokio; ha-raft
//!   pulls no tokio, quinn, RocksDB or OS entropy), clippy with
//!   `-D warnings`, every test of the workspace (protocol simulators at 20
//!   seeds per scenario in that debug step), then in a release build the
//!   test kit's 10,000-seed run of its correct toy protocol and 12,000
//!   seeds of each protocol's simulator suite (raft, paxos). This is the
//!   command `.ci/run` runs.
//! - `cargo xtask test --quick` — the same without fmt/clippy.
//! - `cargo xtask node [ARGS]` — the README's first command: installs what
//!   the build needs, then `cargo run --release -p ha-node -- ARGS`.
//! - `cargo xtask demo [ARGS]` — the ha-core example: a durable single-node
//!   replicated KV on RocksDB, without the etcd API.
//! - `cargo xtask sim --protocol raft --seeds N [--base B]` — the protocol's
//!   simulator suite over N seeds per scenario (release build).
//! - `cargo xtask cluster [--nodes 3] [--consensus raft|paxos] [--server etcd]`
//!   — a local cluster with live status until Ctrl-C (`ha-chaos cluster`).
//! - `cargo xtask bench [failover] [ARGS]` — the etcd-v3 load generator
//!   against ha-node (Raft, Paxos) and etcd (`ha-chaos bench`, release).
//! - `cargo xtask chaos [ARGS]` — faults + checked workloads, verdict and
//!   HTML report (`ha-chaos chaos`).
//! - `cargo xtask shards [ARGS]` — shard failover: SIGKILL a member of a
//!   5-member `--shards 16 --replication 3` cluster under load, wait for
//!   re-replication, read everything back, check linearizability, add a new
//!   member and wait for its fair share (`ha-chaos shards`; `cargo xtask
//!   test` runs it with the defaults).
//! - `cargo xtask setup` — only the system-package step the others run first.
//!
//! Every command first makes sure the system packages the build and tests
//! need are present (libclang for RocksDB's bindgen, protoc for the
//! etcd-client test dependency, etcdctl for the ha-node integration tests),
//! installing them with `apt-get`
//! when running as root on Debian/Ubuntu, so one command works on a fresh
//! machine.
//!
//! Environment: `HA_CRASH_KILLS` raises the number of SIGKILLs in the crash
//! test (default 200).

use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::{Context, Result, bail};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => setup().and_then(|()| test(&args[1..])),
        Some("demo") => setup().and_then(|()| demo(&args[1..])),
        Some("node") => setup().and_then(|()| node(&args[1..])),
        Some("setup") => setup(),
        Some("deps") => dependency_rules(),
        Some("sim") => sim(&args[1..]),
        Some("cluster") => setup().and_then(|()| cluster(&args[1..])),
        Some("bench") => setup().and_then(|()| bench(&args[1..])),
        Some("chaos") => setup().and_then(|()| chaos(&args[1..])),
        Some("shards") => setup().and_then(|()| shards(&args[1..])),
        Some("-h") | Some("--help") | None => {
            print_help();
            Ok(())
        }
        Some(other) => Err(anyhow::anyhow!(
            "unknown xtask command `{other}`; run `cargo xtask --help`"
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn print_help() {
    println!(
        "cargo xtask <command>\n\n\
         commands:\n  \
         test [--quick]   fmt check, dependency rules, clippy -D warnings, all tests\n                   (--quick: tests only)\n  \
         node [ARGS]      ha-node in release (no ARGS: one member, etcd API on\n                   127.0.0.1:2379, data in ./ha-data); ARGS go to ha-node\n  \
         demo [ARGS]      durable single-node replicated KV on RocksDB (example kv_solo);\n                   ARGS go to the example, e.g. --dir ./ha-data --ops 20000 --clients 64\n  \
         deps             check the dependency rules of the crate map\n  \
         sim [--protocol raft|paxos] [--seeds N] [--base B]\n                   run the deterministic simulator suite over more seeds\n                   (release build; prints the failing seed and its trace)\n  \
         cluster [--nodes 3] [--consensus raft|paxos] [--server ha-node|etcd]\n                   local cluster with live status until Ctrl-C\n  \
         bench [failover] [--systems ha-node/raft,ha-node/paxos,etcd] [--clients 1,16,64,256]\n                   [--duration-ms 2000] [--workloads put,range-lin,range-ser,txn,lock]\n                   load generator over the etcd v3 API (release); CSV, SVG, Markdown\n  \
         chaos [--duration 60s] [--seed 1] [--consensus raft|paxos] [--nemesis kill,pause,...]\n                   [--server ha-node|etcd] [--broken ack-without-commit]\n                   faults + checked workloads; verdict and HTML report\n  \
         shards [--members 5] [--shards 16] [--replication 3] [--dead-after 3s] [--duration 15s]\n                   SIGKILL a member under load: re-replication, read-back,\n                   linearizability; then a new member's fair share\n                   (`cargo xtask <cluster|bench|chaos|shards> --help` for all options)\n  \
         setup            install the system packages the build and tests need\n                   (libclang-dev, protobuf-compiler, etcd-client, etcd-server,\n                   nftables, iproute2)\n"
    );
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn run(step: &str, cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: ── {step}: {cmd:?}");
    let started = Instant::now();
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {step}"))?;
    eprintln!(
        "xtask: ── {step}: {} in {:.1}s",
        if status.success() { "ok" } else { "FAILED" },
        started.elapsed().as_secs_f64()
    );
    if !status.success() {
        bail!("{step} failed ({status})");
    }
    Ok(())
}

/// Seeds per simulator scenario in the debug test step.
const DEBUG_SIM_SEEDS: &str = "20";
/// Seeds per simulator scenario in the release step (the shared suite's 6
/// scenarios: 12,000 seeds per protocol).
const RELEASE_SIM_SEEDS_PER_SCENARIO: &str = "2000";

fn test(args: &[String]) -> Result<()> {
    let quick = args.iter().any(|a| a == "--quick");
    if let Some(bad) = args.iter().find(|a| *a != "--quick") {
        bail!("unknown option `{bad}` for `cargo xtask test`");
    }
    let started = Instant::now();
    if !quick {
        run("fmt", cargo().args(["fmt", "--all", "--", "--check"]))?;
        dependency_rules()?;
        run(
            "clippy",
            cargo().args([
                "clippy",
                "--workspace",
                "--all-targets",
                "--all-features",
                "--",
                "-D",
                "warnings",
            ]),
        )?;
    }
    // The debug step runs the protocol simulators over a few seeds (debug
    // assertions on); the release steps below run the acceptance counts.
    run(
        "tests",
        cargo()
            .args(["test", "--workspace", "--all-features", "--no-fail-fast"])
            .env("HA_RAFT_SIM_SEEDS", DEBUG_SIM_SEEDS)
            .env("HA_PAXOS_SIM_SEEDS", DEBUG_SIM_SEEDS),
    )?;
    // The test kit's acceptance bar is 10,000 seeds of the correct toy
    // protocol; that fits CI only in an optimised build (~35 s).
    run(
        "testkit: correct toy protocol over 10,000 seeds (release)",
        cargo()
            .args([
                "test",
                "--release",
                "-p",
                "ha-core",
                "--features",
                "testkit",
                "--test",
                "testkit_sim",
                "--",
                "correct_toy",
            ])
            .env("HA_SIM_SEEDS", "10000"),
    )?;
    // Both protocols' simulator suites (ha_core::testkit::suite): six
    // scenarios x 2,000 seeds = 12,000 seeds each (~15 ms of CPU per seed
    // in release).
    run(
        "raft + paxos simulators over 12,000 seeds each (release)",
        cargo()
            .args([
                "test",
                "--release",
                "-p",
                "ha-raft",
                "-p",
                "ha-paxos",
                "--test",
                "sim",
            ])
            .env("HA_RAFT_SIM_SEEDS", RELEASE_SIM_SEEDS_PER_SCENARIO)
            .env("HA_PAXOS_SIM_SEEDS", RELEASE_SIM_SEEDS_PER_SCENARIO),
    )?;
    // ha-lock's lock-safety simulation on real Raft (the debug run above
    // covers 1,000 seeds; issue 7 asks for at least that many, a release
    // run gives a wider margin for ~1 minute).
    run(
        "ha-lock lock safety on Raft over 5,000 seeds (release)",
        cargo()
            .args(["test", "--release", "-p", "ha-lock", "--test", "lock_sim"])
            .env("HA_LOCK_SIM_SEEDS", "5000"),
    )?;
    chaos_scenario()?;
    shards_scenario()?;
    eprintln!(
        "xtask: all checks passed in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Dependency rules the crate map promises (ARCHITECTURE.md), checked on
/// the resolved normal + build dependency graph:
/// - `ha-core` without features builds no RocksDB and no async runtime;
/// - the protocol crates pull in no async runtime, network stack, storage
///   engine or OS entropy;
/// - ha-shard (shard map, router, placement controller) stays sans-IO: no
///   async runtime, network stack, storage engine or OS entropy.
fn dependency_rules() -> Result<()> {
    let rules: [(&str, &[&str], &[&str]); 4] = [
        (
            "ha-core",
            &["--no-default-features"],
            &["librocksdb-sys", "tokio"],
        ),
        (
            "ha-raft",
            &[],
            &["tokio", "quinn", "librocksdb-sys", "getrandom"],
        ),
        (
            "ha-paxos",
            &[],
            &["tokio", "quinn", "librocksdb-sys", "getrandom"],
        ),
        (
            "ha-shard",
            &[],
            &["tokio", "quinn", "librocksdb-sys", "getrandom"],
        ),
    ];
    for (package, flags, forbidden) in rules {
        let step = format!("dependency rules for {package} {}", flags.join(" "));
        eprintln!("xtask: ── {step}");
        let out = cargo()
            .args(["tree", "-p", package])
            .args(flags)
            .args(["--edges", "normal,build", "--prefix", "none"])
            .output()
            .context("cannot run cargo tree")?;
        if !out.status.success() {
            bail!(
                "cargo tree failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let tree = String::from_utf8_lossy(&out.stdout);
        for line in tree.lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            if forbidden.contains(&name) {
                bail!("{package} {} must not depend on `{line}`", flags.join(" "));
            }
        }
        eprintln!("xtask: ── {step}: ok");
    }
    Ok(())
}

/// Runs the `kv_solo` example of ha-core (RocksDB + Solo consensus + MemKv).
/// `cargo xtask node [ARGS]`: the system packages, then
/// `cargo run --release -p ha-node -- ARGS` (with no ARGS: a single-member
/// cluster serving the etcd API on 127.0.0.1:2379, data in `./ha-data`).
fn node(args: &[String]) -> Result<()> {
    let mut cmd = cargo();
    cmd.args(["run", "--release", "--package", "ha-node", "--"]);
    cmd.args(args);
    run("ha-node", &mut cmd)
}

fn demo(args: &[String]) -> Result<()> {
    let mut cmd = cargo();
    cmd.args([
        "run",
        "--package",
        "ha-core",
        "--features",
        "rocksdb",
        "--example",
        "kv_solo",
        "--",
    ]);
    cmd.args(args);
    run("demo", &mut cmd)
}

/// A system package the build or the tests need.
struct Need {
    /// Debian/Ubuntu package name.
    package: &'static str,
    /// Why it is needed (printed when it is missing).
    why: &'static str,
    /// Whether it is already usable.
    present: fn() -> bool,
}

/// The system packages `cargo xtask test` needs.
const NEEDS: &[Need] = &[
    Need {
        package: "libclang-dev",
        why: "RocksDB's bindgen",
        present: || std::env::var_os("LIBCLANG_PATH").is_some() || libclang_present(),
    },
    Need {
        package: "protobuf-compiler",
        why: "protoc, for the etcd-client crate the ha-node tests use (ha-node itself compiles its protos with protox)",
        present: || std::env::var_os("PROTOC").is_some() || in_path("protoc"),
    },
    Need {
        package: "etcd-client",
        why: "etcdctl, which the ha-node integration tests drive",
        present: || in_path("etcdctl"),
    },
    Need {
        package: "etcd-server",
        why: "etcd, the reference `cargo xtask bench` compares against and the chaos tests run on",
        present: || in_path("etcd"),
    },
    Need {
        package: "nftables",
        why: "nft, for the partitions of `cargo xtask chaos`",
        present: || in_path("nft") || std::path::Path::new("/usr/sbin/nft").exists(),
    },
    Need {
        package: "iproute2",
        why: "ip, for the network namespaces of `cargo xtask chaos`",
        present: || in_path("ip") || std::path::Path::new("/usr/sbin/ip").exists(),
    },
];

/// Whether an executable `name` is on `PATH`.
fn in_path(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(name).is_file()))
}

/// Makes sure the system packages in [`NEEDS`] are present, installing the
/// missing ones with `apt-get` when running as root on Debian/Ubuntu.
fn setup() -> Result<()> {
    let missing: Vec<&Need> = NEEDS.iter().filter(|n| !(n.present)()).collect();
    if missing.is_empty() {
        return Ok(());
    }
    for n in &missing {
        eprintln!("xtask: missing {} ({})", n.package, n.why);
    }
    let packages: Vec<&str> = missing.iter().map(|n| n.package).collect();
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    let has_apt = std::path::Path::new("/usr/bin/apt-get").exists();
    if !(is_root && has_apt) {
        bail!(
            "missing system packages: install them (Debian/Ubuntu: `apt-get install {}`), \
             then run this command again",
            packages.join(" ")
        );
    }
    let apt = |args: &[&str]| {
        let mut c = Command::new("apt-get");
        c.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        c
    };
    run("apt-get update", &mut apt(&["update", "-qq"]))?;
    let mut install = vec!["install", "-y", "-qq"];
    install.extend(&packages);
    run(
        &format!("apt-get install {}", packages.join(" ")),
        &mut apt(&install),
    )?;
    let still: Vec<&str> = NEEDS
        .iter()
        .filter(|n| !(n.present)())
        .map(|n| n.package)
        .collect();
    if !still.is_empty() {
        bail!("installed but still not usable: {}", still.join(" "));
    }
    Ok(())
}

fn libclang_present() -> bool {
    let dirs = [
        "/usr/lib",
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/usr/local/lib",
    ];
    let is_libclang = |name: &str| {
        name.starts_with("libclang") && name.contains(".so") && !name.starts_with("libclang-cpp")
    };
    let scan = |dir: &std::path::Path| -> bool {
        std::fs::read_dir(dir)
            .map(|rd| {
                rd.flatten()
                    .any(|e| is_libclang(&e.file_name().to_string_lossy()))
            })
            .unwrap_or(false)
    };
    if dirs.iter().any(|d| scan(std::path::Path::new(d))) {
        return true;
    }
    // Debian puts it under /usr/lib/llvm-N/lib.
    std::fs::read_dir("/usr/lib")
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("llvm-"))
                .any(|e| scan(&e.path().join("lib")))
        })
        .unwrap_or(false)
}

/// `cargo xtask sim`: the simulator suite of a protocol over more seeds.
fn sim(args: &[String]) -> Result<()> {
    let mut protocol = "raft".to_string();
    let mut seeds: u64 = 1000;
    let mut base: Option<u64> = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .with_context(|| format!("{name} needs a value"))
        };
        match arg.as_str() {
            "--protocol" => protocol = value("--protocol")?,
            "--seeds" => {
                seeds = value("--seeds")?
                    .parse()
                    .context("--seeds takes a whole number")?
            }
            "--base" => {
                base = Some(
                    value("--base")?
                        .parse()
                        .context("--base takes a whole number")?,
                )
            }
            other => bail!("unknown option `{other}` for `cargo xtask sim`"),
        }
    }
    if seeds == 0 {
        bail!("--seeds must be at least 1");
    }
    let (package, test, seeds_var, base_var) = match protocol.as_str() {
        "raft" => ("ha-raft", "sim", "HA_RAFT_SIM_SEEDS", "HA_RAFT_SIM_BASE"),
        "paxos" => ("ha-paxos", "sim", "HA_PAXOS_SIM_SEEDS", "HA_PAXOS_SIM_BASE"),
        other => bail!("unknown protocol `{other}` (known: raft, paxos)"),
    };
    let mut cmd = cargo();
    cmd.args(["test", "--release", "-p", package, "--test", test])
        .env(seeds_var, seeds.to_string());
    if let Some(b) = base {
        cmd.env(base_var, b.to_string());
    }
    run(
        &format!("sim {protocol}, {seeds} seeds per scenario"),
        &mut cmd,
    )
}

/// The cargo target directory (honours `CARGO_TARGET_DIR` and config).
fn target_dir() -> Result<std::path::PathBuf> {
    if let Some(d) = std::env::var_os("CARGO_TARGET_DIR") {
        return Ok(d.into());
    }
    let out = cargo()
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .output()
        .context("cannot run cargo metadata")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let key = "\"target_directory\":\"";
    let start = text
        .find(key)
        .map(|i| i + key.len())
        .context("cargo metadata has no target_directory")?;
    let end = text[start..]
        .find('"')
        .map(|i| start + i)
        .context("cargo metadata: unterminated target_directory")?;
    Ok(text[start..end].replace("\\\\", "\\").into())
}

/// The value of `--name V` / `--name=V` in `args`.
fn flag_value<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    let eq = format!("{name}=");
    args.iter().enumerate().find_map(|(i, a)| {
        if a == name {
            args.get(i + 1).map(String::as_str)
        } else {
            a.strip_prefix(&eq)
        }
    })
}

/// Builds `ha-node` (with Paxos when asked for) and returns its path, or
/// `None` when this build of `ha-node` does not serve the etcd API yet.
fn build_ha_node(release: bool, paxos: bool) -> Result<Option<std::path::PathBuf>> {
    let mut cmd = cargo();
    cmd.args(["build", "-p", "ha-node"]);
    if release {
        cmd.arg("--release");
    }
    if paxos {
        cmd.args(["--features", "paxos"]);
    }
    run("build ha-node", &mut cmd)?;
    let bin = target_dir()?
        .join(if release { "release" } else { "debug" })
        .join("ha-node");
    Ok(ha_node_serves_api(&bin).then_some(bin))
}

/// Whether the `ha-node` binary takes etcd's flags (i.e. serves the API).
fn ha_node_serves_api(bin: &std::path::Path) -> bool {
    Command::new(bin)
        .arg("--help")
        .output()
        .map(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned()
                + &String::from_utf8_lossy(&o.stderr);
            text.contains("--listen-client-urls")
        })
        .unwrap_or(false)
}

/// Builds `ha-chaos` and returns a command running it.
fn ha_chaos(release: bool) -> Result<Command> {
    let mut cmd = cargo();
    cmd.args(["build", "-p", "ha-chaos"]);
    if release {
        cmd.arg("--release");
    }
    run("build ha-chaos", &mut cmd)?;
    Ok(Command::new(
        target_dir()?
            .join(if release { "release" } else { "debug" })
            .join("ha-chaos"),
    ))
}

/// Whether the arguments ask for the help text only.
fn wants_help(args: &[String]) -> bool {
    args.iter().any(|a| a == "--help" || a == "-h")
}

/// `cargo xtask cluster`: `ha-chaos cluster` (which generates the peer
/// certificates with `ha-node certs`).
fn cluster(args: &[String]) -> Result<()> {
    let mut chaos = ha_chaos(false)?;
    chaos.arg("cluster").args(args);
    if !wants_help(args) && flag_value(args, "--server") != Some("etcd") {
        let paxos = flag_value(args, "--consensus") == Some("paxos");
        let Some(bin) = build_ha_node(false, paxos)? else {
            bail!(
                "this ha-node does not serve the etcd API yet (no --listen-client-urls); \
                 try `cargo xtask cluster --server etcd`"
            );
        };
        // ha-chaos runs `ha-node certs` itself (names and token must match
        // the members').
        chaos.arg("--ha-node-bin").arg(&bin);
    }
    run("ha-chaos cluster", &mut chaos)
}

/// `cargo xtask bench`: release builds, then `ha-chaos bench`.
fn bench(args: &[String]) -> Result<()> {
    let mut chaos = ha_chaos(true)?;
    chaos.arg("bench").args(args);
    if wants_help(args) {
        return run("ha-chaos bench", &mut chaos);
    }
    let systems = flag_value(args, "--systems").map(str::to_owned);
    let wants_ha = systems.as_deref().is_none_or(|s| s.contains("ha-node"));
    let mut defaults = Vec::new();
    if wants_ha {
        // Paxos is an optional feature of ha-node; without an explicit
        // --systems, fall back to a Raft-only build when it does not build.
        let explicit_paxos = systems.as_deref().is_some_and(|s| s.contains("paxos"));
        let built = match build_ha_node(true, true) {
            Ok(b) => b.map(|b| (b, true)),
            Err(e) if !explicit_paxos => {
                eprintln!("xtask: ha-node with Paxos does not build ({e:#}); Raft only");
                build_ha_node(true, false)?.map(|b| (b, false))
            }
            Err(e) => return Err(e),
        };
        match built {
            Some((bin, paxos)) => {
                chaos.arg("--ha-node-bin").arg(bin);
                defaults.push("ha-node/raft");
                if paxos {
                    defaults.push("ha-node/paxos");
                }
            }
            None if systems.is_some() => {
                bail!("this ha-node does not serve the etcd API yet; run with --systems etcd")
            }
            None => {
                eprintln!("xtask: ha-node does not serve the etcd API yet; benchmarking etcd only")
            }
        }
    }
    if in_path("etcd") {
        defaults.push("etcd");
    }
    if systems.is_none() {
        if defaults.is_empty() {
            bail!("nothing to benchmark: no ha-node serving the API and no etcd on PATH");
        }
        chaos.arg("--systems").arg(defaults.join(","));
    }
    run("ha-chaos bench", &mut chaos)
}

/// `cargo xtask chaos`: `ha-chaos chaos` against a dev build of ha-node
/// (a failed verdict is ha-chaos exit code 2, an error here).
fn chaos(args: &[String]) -> Result<()> {
    let mut chaos = ha_chaos(false)?;
    chaos.arg("chaos").args(args);
    if !wants_help(args) && flag_value(args, "--server") != Some("etcd") {
        let paxos = flag_value(args, "--consensus") == Some("paxos");
        let Some(bin) = build_ha_node(false, paxos)? else {
            bail!(
                "this ha-node does not serve the etcd API yet; \
                 `cargo xtask chaos --server etcd` checks real etcd meanwhile"
            );
        };
        chaos.arg("--ha-node-bin").arg(bin);
    }
    run("ha-chaos chaos", &mut chaos)
}

/// `cargo xtask shards`: `ha-chaos shards` against a dev build of ha-node
/// (a failed verdict is ha-chaos exit code 2, an error here).
fn shards(args: &[String]) -> Result<()> {
    let mut chaos = ha_chaos(false)?;
    chaos.arg("shards").args(args);
    if !wants_help(args) {
        let paxos = flag_value(args, "--consensus") == Some("paxos");
        let Some(bin) = build_ha_node(false, paxos)? else {
            bail!("this ha-node does not serve the etcd API yet");
        };
        chaos.arg("--ha-node-bin").arg(bin);
    }
    run("ha-chaos shards", &mut chaos)
}

/// The shard failover scenario of `cargo xtask test` (issue 11): ha-chaos
/// shards with its defaults (5 members, `--shards 16 --replication 3`,
/// dead-after 3 s, join-after 1 s, fixed seed), bounded to a few minutes
/// by its own deadlines.
fn shards_scenario() -> Result<()> {
    let Some(bin) = build_ha_node(false, false)? else {
        eprintln!(
            "xtask: ── shard failover scenario: skipped (ha-node does not serve the etcd API yet)"
        );
        return Ok(());
    };
    let out = target_dir()?.join("ha-chaos-shards-test");
    let mut cmd = ha_chaos(false)?;
    cmd.args(["shards", "--seed", TEST_CHAOS_SEED, "--ha-node-bin"])
        .arg(&bin)
        .arg("--out-dir")
        .arg(&out);
    run(
        "shard failover scenario: 5 members, 16 shards × 3, SIGKILL one, then a new member",
        &mut cmd,
    )
}

/// Seed of the fast default chaos scenario of `cargo xtask test`.
const TEST_CHAOS_SEED: &str = "1";
/// Workload time of that scenario: each of the seven fault kinds once at
/// 6 s a fault, plus room for the slower heals (a membership re-add starts
/// a member that must catch up).
const TEST_CHAOS_DURATION: &str = "55s";

/// The fast default chaos scenario of `cargo xtask test`: a fixed-seed run
/// against ha-node/raft that must pass, then the same with a deliberately
/// broken client (acknowledges writes it never sent) that must be caught.
/// Skipped, saying so, while `ha-node` does not serve the etcd API.
/// Faults of the default chaos scenario: every nemesis, `membership`
/// included (remove a follower, wipe it, add it back under a new id with a
/// certificate issued for that id; issues 8 and 9).
const TEST_CHAOS_NEMESES: &str =
    "kill,pause,isolate-leader,majority-minority,one-way,bridge,membership";

fn chaos_scenario() -> Result<()> {
    let Some(bin) = build_ha_node(false, false)? else {
        eprintln!("xtask: ── chaos scenario: skipped (ha-node does not serve the etcd API yet)");
        return Ok(());
    };
    let out = target_dir()?.join("ha-chaos-test");
    // A fresh directory each run: certificates left by an earlier run name
    // member ids of another cluster token and would be refused.
    if out.exists() {
        std::fs::remove_dir_all(&out).with_context(|| format!("cannot clear {}", out.display()))?;
    }
    let mut pass = ha_chaos(false)?;
    pass.args([
        "chaos",
        "--quiet",
        "--seed",
        TEST_CHAOS_SEED,
        "--duration",
        TEST_CHAOS_DURATION,
        "--nemesis",
        TEST_CHAOS_NEMESES,
        "--ha-node-bin",
    ])
    .arg(&bin)
    .arg("--out-dir")
    .arg(out.join("raft"));
    run(
        "chaos scenario: ha-node/raft, fixed seed, must pass",
        &mut pass,
    )?;
    let mut broken = ha_chaos(false)?;
    broken
        .args([
            "chaos",
            "--quiet",
            "--seed",
            TEST_CHAOS_SEED,
            "--duration",
            "10s",
            "--nemesis",
            "kill",
            "--broken",
            "ack-without-commit",
            "--ha-node-bin",
        ])
        .arg(&bin)
        .arg("--out-dir")
        .arg(out.join("broken"));
    eprintln!("xtask: ── chaos scenario: broken client must be caught: {broken:?}");
    let status = broken.status().context("cannot start ha-chaos")?;
    if status.code() != Some(2) {
        bail!("the deliberately broken run was not caught (ha-chaos exited with {status})");
    }
    eprintln!("xtask: ── chaos scenario: broken run caught (exit 2)");
    Ok(())
}
