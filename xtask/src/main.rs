//! `cargo xtask`: the workspace's chores.
//!
//! - `cargo xtask test` — format check, clippy with `-D warnings`, the
//!   "ha-core builds without RocksDB" check, and every test of the workspace
//!   (all features). This is the command `.ci/run` runs.
//! - `cargo xtask test --quick` — the same without fmt/clippy.
//!
//! Environment: `HA_CRASH_KILLS` raises the number of SIGKILLs in the crash
//! test (default 200).

use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::{Context, Result, bail};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => test(&args[1..]),
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
         test [--quick]   fmt check, clippy -D warnings, no-RocksDB check, all tests\n                   (--quick: tests only)\n"
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
        no_rocksdb_without_feature()?;
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
    eprintln!(
        "xtask: all checks passed in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `ha-core` without features must not pull RocksDB's C++ build.
fn no_rocksdb_without_feature() -> Result<()> {
    let step = "ha-core without `rocksdb` has no librocksdb-sys";
    eprintln!("xtask: ── {step}");
    let out = cargo()
        .args([
            "tree",
            "-p",
            "ha-core",
            "--no-default-features",
            "--edges",
            "normal,build",
            "--prefix",
            "none",
        ])
        .output()
        .context("cannot run cargo tree")?;
    if !out.status.success() {
        bail!(
            "cargo tree failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let tree = String::from_utf8_lossy(&out.stdout);
    if let Some(line) = tree.lines().find(|l| l.starts_with("librocksdb-sys")) {
        bail!("ha-core --no-default-features depends on `{line}`");
    }
    eprintln!("xtask: ── {step}: ok");
    Ok(())
}
