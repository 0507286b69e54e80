//! Crash safety of `RocksLogStore` under `kill -9`.
//!
//! The test re-executes its own binary as a child (test `crash_child`, run
//! only when [`CHILD_DIR_ENV`] is set) that appends to several groups from
//! several threads — appends, suffix overwrites and purges, synced and not —
//! and prints `SYNCED <group> <version>` after every synced write returns.
//! The parent SIGKILLs the child at a random moment (sometimes during
//! start-up and recovery, mostly while it writes), reopens the store and
//! checks, for every group:
//!
//! * every write reported synced is present: the stored version (kept in the
//!   hard state, written in the same batch as the entries) is at least the
//!   last reported one;
//! * the log is exactly the one the deterministic write plan produces at
//!   that version: nothing torn, nothing half-applied, every entry decodes
//!   and is one that was written, the log is a contiguous range.
//!
//! [`KILLS_ENV`] sets the number of kills (default [`DEFAULT_KILLS`]);
//! `HA_CRASH_SEED` replays a run's kill timing.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ha_core::storage::{LogStore, LogWrite, RocksLogStore, RocksOptions};
use ha_core::{Entry, EntryPayload, GroupId, HardState, LogId, LogIndex, Term};

/// Set in the child: the store directory.
const CHILD_DIR_ENV: &str = "HA_CRASH_CHILD_DIR";
/// Number of kills; more than the default for long runs.
const KILLS_ENV: &str = "HA_CRASH_KILLS";
/// Kills in the default run.
const DEFAULT_KILLS: usize = 200;
/// Groups the child writes, one thread each.
const GROUPS: u64 = 4;
/// The child stops by itself after this long, in case the parent is gone.
const CHILD_MAX_RUN_MS: u64 = 20_000;
/// The child stops by itself after this many writes per group.
const CHILD_MAX_WRITES: u64 = 20_000;
/// Longest wait for a child to start writing.
const READY_TIMEOUT_MS: u64 = 20_000;
/// Whole-test wall-clock limit.
const TEST_LIMIT_MS: u64 = 15 * 60_000;
/// Logs longer than this are purged back to [`KEEP_AFTER_PURGE`] entries.
const MAX_LOG_LEN: u64 = 200;
/// Entries kept by the length-bounding purge.
const KEEP_AFTER_PURGE: u64 = 100;

/// SplitMix64: a pinned, well-mixed hash of the plan inputs.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Kill-timing randomness: SplitMix64 over a counter (no dependency, and a
/// seed replays a run's timing).
struct KillRng(u64);

impl KillRng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(1);
        mix(self.0) % n.max(1)
    }
}

/// The payload of entry `index` written at `version` of group `g`: length and
/// bytes derived from all three, so any stale, torn or misplaced entry shows.
fn payload(g: u64, index: u64, version: u64) -> Bytes {
    let seed = mix(g ^ mix(index ^ mix(version)));
    let len = 16 + (seed % 300) as usize;
    let mut out = format!("{g}/{index}/{version}:").into_bytes();
    let mut x = seed;
    while out.len() < len {
        x = mix(x);
        out.extend_from_slice(&x.to_le_bytes());
    }
    Bytes::from(out)
}

fn entry(g: u64, index: u64, version: u64) -> Entry {
    Entry {
        log_id: LogId::new(version, index),
        payload: EntryPayload::Normal(payload(g, index, version)),
    }
}

/// Log bounds of a group between writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Span {
    first: u64,
    last: u64,
}

/// The write that takes group `g` from `version - 1` (log `span`) to
/// `version`. Deterministic, so parent and child agree on every state.
fn plan(g: u64, version: u64, span: Option<Span>) -> (LogWrite, Span) {
    let r = mix((g << 40) ^ version);
    let n = 1 + (r >> 8) % 4;
    let sync = !(r >> 20).is_multiple_of(4);
    let mut w = LogWrite {
        sync,
        ..LogWrite::default()
    };
    let (mut first, last) = match span {
        Some(s) => (s.first, s.last),
        None => (1, 0),
    };
    let new_last;
    if r.is_multiple_of(8) && last >= 3 {
        // Overwrite a suffix of up to 3 entries with longer new ones.
        let from = last - (r >> 16) % 3;
        w.truncate_from = Some(LogIndex(from));
        w.entries = (from..from + n).map(|i| entry(g, i, version)).collect();
        new_last = from + n - 1;
    } else {
        w.entries = (last + 1..=last + n)
            .map(|i| entry(g, i, version))
            .collect();
        new_last = last + n;
    }
    if r % 8 == 1 && new_last - first >= 16 {
        let to = first + (r >> 12) % 8;
        w.purge_to = Some(LogIndex(to));
        first = to + 1;
    } else if new_last - first + 1 > MAX_LOG_LEN {
        let to = new_last - KEEP_AFTER_PURGE;
        w.purge_to = Some(LogIndex(to));
        first = to + 1;
    }
    w.hard_state = Some(HardState {
        term: Term(version),
        vote: None,
        commit: LogIndex(new_last),
    });
    (
        w,
        Span {
            first,
            last: new_last,
        },
    )
}

fn store_opts() -> RocksOptions {
    RocksOptions::default()
}

/// Reads a group's version and span as the child resumes from them.
fn resume(store: &RocksLogStore, g: u64) -> Result<(u64, Option<Span>), String> {
    let hs = store.hard_state(GroupId(g)).map_err(|e| e.to_string())?;
    let span = store
        .bounds(GroupId(g))
        .map_err(|e| e.to_string())?
        .map(|(lo, hi)| Span {
            first: lo.0,
            last: hi.0,
        });
    Ok((hs.term.0, span))
}

/// Child mode: write until killed (or the self-imposed limits).
#[test]
#[ignore = "child process of rocks_log_store_survives_sigkill; started by it"]
fn crash_child() {
    let Some(dir) = std::env::var_os(CHILD_DIR_ENV) else {
        return;
    };
    let store = match RocksLogStore::open(&dir, store_opts()) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            eprintln!("child: open failed: {e}");
            std::process::exit(3);
        }
    };
    let out = Arc::new(Mutex::new(()));
    println!("READY");
    let deadline = Instant::now() + Duration::from_millis(CHILD_MAX_RUN_MS);
    let threads: Vec<_> = (0..GROUPS)
        .map(|g| {
            let store = Arc::clone(&store);
            let out = Arc::clone(&out);
            std::thread::spawn(move || -> Result<(), String> {
                let (mut version, mut span) = resume(&store, g)?;
                for _ in 0..CHILD_MAX_WRITES {
                    if Instant::now() > deadline {
                        break;
                    }
                    version += 1;
                    let (w, next) = plan(g, version, span);
                    let sync = w.sync;
                    store.write(GroupId(g), w).map_err(|e| e.to_string())?;
                    span = Some(next);
                    if sync {
                        let _guard = out.lock().unwrap_or_else(|p| p.into_inner());
                        println!("SYNCED {g} {version}");
                    }
                }
                Ok(())
            })
        })
        .collect();
    for t in threads {
        match t.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                eprintln!("child: write failed: {e}");
                std::process::exit(4);
            }
            Err(_) => std::process::exit(5),
        }
    }
}

/// What the parent expects of one group: the model log at `version`.
struct Model {
    g: u64,
    version: u64,
    span: Option<Span>,
    log: BTreeMap<u64, Entry>,
}

impl Model {
    fn new(g: u64) -> Self {
        Self {
            g,
            version: 0,
            span: None,
            log: BTreeMap::new(),
        }
    }

    /// Replays the plan up to `version` (from scratch if it is behind).
    fn advance_to(&mut self, version: u64) {
        if version < self.version {
            *self = Self::new(self.g);
        }
        while self.version < version {
            self.version += 1;
            let (w, span) = plan(self.g, self.version, self.span);
            if let Some(from) = w.truncate_from {
                self.log.split_off(&from.0);
            }
            for e in w.entries {
                self.log.insert(e.index().0, e);
            }
            if let Some(to) = w.purge_to {
                self.log = self.log.split_off(&(to.0 + 1));
            }
            self.span = Some(span);
        }
    }
}

/// Opens the store after a kill and checks every group against its model.
fn verify(dir: &Path, models: &mut [Model], reported: &[u64]) -> Result<(), String> {
    let store = RocksLogStore::open(dir, store_opts()).map_err(|e| format!("reopen: {e}"))?;
    for m in models.iter_mut() {
        let g = GroupId(m.g);
        let r = store
            .recover(g)
            .map_err(|e| format!("group {}: recover: {e}", m.g))?;
        let version = r.hard_state.term.0;
        let want_synced = reported[m.g as usize];
        if version < want_synced {
            return Err(format!(
                "group {}: version {version} on disk, but {want_synced} was reported synced",
                m.g
            ));
        }
        m.advance_to(version);
        let want: Vec<&Entry> = m.log.values().collect();
        let got: Vec<&Entry> = r.entries.iter().collect();
        if got != want {
            let show = |v: &[&Entry]| -> Vec<(u64, u64)> {
                v.iter().map(|e| (e.index().0, e.term().0)).collect()
            };
            return Err(format!(
                "group {}: log at version {version} differs from the plan:\n got  {:?}\n want {:?}",
                m.g,
                show(&got),
                show(&want)
            ));
        }
        let last = m.span.map_or(0, |s| s.last);
        if r.hard_state.commit.0 != last {
            return Err(format!(
                "group {}: hard state commit {} but the log ends at {last}",
                m.g, r.hard_state.commit.0
            ));
        }
    }
    Ok(())
}

/// One line the child printed.
enum Line {
    Ready,
    Synced(u64, u64),
}

#[test]
fn rocks_log_store_survives_sigkill() {
    let kills: usize = std::env::var(KILLS_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_KILLS);
    let seed: u64 = std::env::var("HA_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    eprintln!("rocks crash test: {kills} kills, HA_CRASH_SEED={seed}");
    let mut rng = KillRng(seed);
    let exe = std::env::current_exe().expect("test binary path");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut models: Vec<Model> = (0..GROUPS).map(Model::new).collect();
    let mut reported = vec![0u64; GROUPS as usize];
    let mut rounds_with_writes = 0usize;
    let mut synced_total = 0u64;
    let started = Instant::now();

    for round in 0..kills {
        assert!(
            started.elapsed() < Duration::from_millis(TEST_LIMIT_MS),
            "crash test exceeded its time limit at round {round}"
        );
        let mut child = Command::new(&exe)
            .args(["--exact", "crash_child", "--ignored", "--nocapture"])
            .args(["--test-threads", "1"])
            .env(CHILD_DIR_ENV, dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("child stdout");
        let mut stderr = child.stderr.take().expect("child stderr");
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // libtest prints "test crash_child ... " before the first
                // line of the child, so markers are searched, not anchored.
                let parsed = if line.ends_with("READY") {
                    Some(Line::Ready)
                } else if let Some(at) = line.find("SYNCED ") {
                    let mut parts = line[at..].split_whitespace().skip(1);
                    let g = parts.next().and_then(|v| v.parse().ok());
                    let v = parts.next().and_then(|v| v.parse().ok());
                    g.zip(v).map(|(g, v)| Line::Synced(g, v))
                } else {
                    None
                };
                if let Some(p) = parsed
                    && tx.send(p).is_err()
                {
                    break;
                }
            }
        });
        let err_reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });

        let mut lines: Vec<Line> = Vec::new();
        if rng.below(4) == 0 {
            // Kill anywhere from start-up through recovery into writing.
            std::thread::sleep(Duration::from_millis(rng.below(60)));
        } else {
            let deadline = Instant::now() + Duration::from_millis(READY_TIMEOUT_MS);
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match rx.recv_timeout(left) {
                    Ok(Line::Ready) => break,
                    Ok(l) => lines.push(l),
                    Err(_) => {
                        let _ = child.kill();
                        let _ = child.wait();
                        let err = err_reader.join().unwrap_or_default();
                        panic!("round {round}: child never became ready; stderr:\n{err}");
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(rng.below(40)));
        }
        if let Ok(Some(status)) = child.try_wait()
            && !status.success()
        {
            let err = err_reader.join().unwrap_or_default();
            panic!("round {round}: child failed with {status}; stderr:\n{err}");
        }
        // Child::kill sends SIGKILL on Unix.
        let _ = child.kill();
        let _ = child.wait();
        let _ = reader.join();
        let _ = err_reader.join();
        lines.extend(rx.try_iter());

        let mut wrote = false;
        for l in lines {
            if let Line::Synced(g, v) = l {
                assert!(g < GROUPS, "child reported unknown group {g}");
                let slot = &mut reported[g as usize];
                assert!(v > *slot, "group {g}: version {v} reported after {slot}");
                *slot = v;
                synced_total += 1;
                wrote = true;
            }
        }
        rounds_with_writes += usize::from(wrote);
        if let Err(e) = verify(dir.path(), &mut models, &reported) {
            panic!("round {round} (HA_CRASH_SEED={seed}): {e}");
        }
    }
    eprintln!(
        "rocks crash test: {kills} kills, {rounds_with_writes} mid-write, \
         {synced_total} synced writes reported, versions {reported:?}, {:.1}s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        rounds_with_writes >= kills / 10,
        "only {rounds_with_writes} of {kills} kills hit a writing child"
    );
}

/// The plan and its model agree with a live store when nothing crashes:
/// guards the crash test's oracle itself.
#[test]
fn plan_model_matches_an_uncrashed_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = RocksLogStore::open(dir.path(), store_opts()).expect("open");
    let g = 2;
    let mut span = None;
    let (mut overwrites, mut purges, mut unsynced) = (0, 0, 0);
    for version in 1..=600 {
        let (w, next) = plan(g, version, span);
        overwrites += usize::from(w.truncate_from.is_some());
        purges += usize::from(w.purge_to.is_some());
        unsynced += usize::from(!w.sync);
        store.write(GroupId(g), w).expect("write");
        span = Some(next);
    }
    drop(store);
    assert!(
        overwrites > 10 && purges > 10 && unsynced > 10,
        "plan lacks variety: {overwrites} overwrites, {purges} purges, {unsynced} unsynced"
    );
    let mut models: Vec<Model> = (0..GROUPS).map(Model::new).collect();
    let mut reported = vec![0; GROUPS as usize];
    reported[g as usize] = 600;
    verify(dir.path(), &mut models, &reported).expect("model matches store");
    let len = models[g as usize].log.len() as u64;
    assert!(len > 0 && len <= MAX_LOG_LEN, "log length {len} unbounded");
}
