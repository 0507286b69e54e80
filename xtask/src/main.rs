//! `cargo xtask`: the workspace's chores.
//!
//! - `cargo xtask test` — format check, the dependency rules of the crate
//!   map (ha-core without features builds no RocksDB and no tokio; ha-raft
//!   pulls no tokio, quinn, RocksDB or OS entropy), clippy with
//!   `-D warnings`, every test of the workspace, and the test kit's
//!   10,000-seed run of its correct toy protocol in a release build
//!   (all features). This is the command `.ci/run` runs.
//! - `cargo xtask test --quick` — the same without fmt/clippy.
//! - `cargo xtask demo [ARGS]` — the runnable example until `ha-node` serves:
//!   a durable single-node replicated KV on RocksDB (see the README).
//! - `cargo xtask sim --protocol raft --seeds N [--base B]` — the protocol's
//!   simulator suite over N seeds per scenario (release build).
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
        Some("setup") => setup(),
        Some("deps") => dependency_rules(),
        Some("sim") => sim(&args[1..]),
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
         demo [ARGS]      durable single-node replicated KV on RocksDB (example kv_solo);\n                   ARGS go to the example, e.g. --dir ./ha-data --ops 20000 --clients 64\n  \
         deps             check the dependency rules of the crate map\n  \
         sim [--protocol raft] [--seeds N] [--base B]\n                   run the deterministic simulator suite over more seeds\n                   (release build; prints the failing seed and its trace)\n  \
         setup            install the system packages the build and tests need\n                   (libclang-dev, protobuf-compiler, etcd-client)\n"
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
    run(
        "tests",
        cargo().args(["test", "--workspace", "--all-features", "--no-fail-fast"]),
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
///   engine or OS entropy.
fn dependency_rules() -> Result<()> {
    let rules: [(&str, &[&str], &[&str]); 2] = [
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
        "paxos" => bail!("ha-paxos is not built yet (issue 10); only `raft` can be simulated"),
        other => bail!("unknown protocol `{other}` (known: raft)"),
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
