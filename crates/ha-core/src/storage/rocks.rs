//! [`RocksLogStore`]: the durable [`LogStore`] on RocksDB, with group commit.
//!
//! # Layout
//!
//! One RocksDB instance per node hosts the logs of every group. Column
//! families:
//!
//! | family | key | value |
//! |---|---|---|
//! | `log`  | group id (u64 BE) ‖ index (u64 BE) — 16 bytes | [`codec`]-framed [`Entry`] |
//! | `meta` | group id (u64 BE) ‖ tag (1 = hard state, 2 = snapshot meta) — 9 bytes | [`codec`]-framed [`HardState`] / [`SnapshotMeta`] |
//! | `sm`   | reserved for state-machine data (owned by the state machine, never touched here) | |
//!
//! Big-endian keys sort by group, then by index, so a group's log is one
//! contiguous key range and range deletes (truncate, purge, snapshot reset)
//! are single range tombstones. Every value carries the codec's version byte
//! and CRC-32C; reads verify it and also check that the entry's own index
//! matches its key, so a corrupt or misplaced record is reported
//! ([`StorageError::Corrupt`], [`StorageError::Misplaced`]) and never returned
//! as data.
//!
//! # Writes and group commit
//!
//! A [`LogWrite`] is turned into key/value operations on the caller's thread
//! (encoding and checksumming run in parallel across callers), then queued.
//! Queued requests are grouped into batches as they arrive: a request joins
//! the newest batch still waiting if that stays within
//! [`RocksOptions::max_batch_writes`] requests and
//! [`RocksOptions::max_batch_bytes`] bytes, else it opens the next one.
//! Two threads then form a pipeline:
//!
//! 1. the **writer** takes the oldest batch and writes it as **one** RocksDB
//!    `WriteBatch` (WAL record + memtable, not yet fsync'd), then hands it to
//!    the sync thread and goes on with the next batch at once;
//! 2. the **sync thread** takes every batch written so far, fsyncs the WAL
//!    **once** for all of them (if any asked for `sync`), and only then
//!    answers their callers.
//!
//! So `n` concurrent synced appenders share one fsync instead of paying `n`,
//! and the next batch is written while the previous one is being fsync'd.
//! A synced write's caller is answered only after an fsync that started
//! after its batch was written (or with the error that stopped it), so
//! nothing is acknowledged before it is durable. Requests are applied in
//! queue order, batches are answered in that order, and every `LogWrite`
//! stays atomic (it is never split across batches).
//!
//! Callers of one batch wait on one shared completion (a mutex-protected
//! outcome and a condition variable, one allocation per batch): the sync
//! thread wakes them all with a single `notify_all` instead of one channel
//! and one wake-up call per request.
//!
//! The queue holds at most [`RocksOptions::queue_len`] requests not yet
//! taken by the writer. When it is full, callers **block** until the writer
//! has taken requests off it (back-pressure). At most
//! [`SYNC_PIPELINE_BATCHES_MAX`] written batches wait for the sync thread;
//! beyond that the writer waits. Neither thread ever waits on a caller, so a
//! wait lasts at most the time to commit the batches ahead.
//!
//! # Durability
//!
//! The write-ahead log is on and flushed to the OS on every write
//! (`manual_wal_flush = false`), so a process crash (`kill -9`) loses
//! nothing that a call returned for; a synced write or [`LogStore::sync`]
//! additionally survives power loss. A batch is visible to reads once the
//! writer wrote it, which may be before its fsync; its callers are answered
//! only after the fsync. Recovery uses RocksDB's point-in-time
//! mode: a torn tail of the WAL is dropped whole, never half-applied.

use std::collections::VecDeque;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, DB, DBCompressionType, DBRecoveryMode, Options,
    ReadOptions, WriteBatch, WriteOptions,
};

use super::{LogStore, LogWrite, NotQueued, StorageError, StorageResult, WriteDone};
use crate::codec;
use crate::consensus::Recovered;
use crate::types::{Entry, GroupId, HardState, LogIndex, SnapshotMeta};

/// Column family holding log entries.
pub const CF_LOG: &str = "log";
/// Column family holding hard state and snapshot meta.
pub const CF_META: &str = "meta";
/// Column family reserved for state-machine data. Created by
/// [`RocksLogStore::open`] so one DB serves the node; the log store never
/// reads or writes it.
pub const CF_SM: &str = "sm";

/// `meta` key tag of a group's hard state.
const META_HARD_STATE: u8 = 1;
/// `meta` key tag of a group's snapshot meta.
const META_SNAPSHOT: u8 = 2;

/// Length of a `log` key: group id and index, both u64 big-endian.
const LOG_KEY_LEN: usize = 16;

/// Bytes charged per operation on top of its key and value, for the batch
/// byte limit (RocksDB's own record framing).
const OP_OVERHEAD_BYTES: usize = 16;

/// Most batches written to the engine but not yet fsync'd and answered: when
/// the sync thread is this far behind, the writer thread waits. Bounds the
/// memory between the two pipeline stages (the operations of a written batch
/// are freed before it is handed over, so an entry is a few words).
pub const SYNC_PIPELINE_BATCHES_MAX: usize = 64;

/// Upper bound accepted for [`RocksOptions::queue_len`].
pub const QUEUE_LEN_LIMIT: usize = 1 << 20;
/// Upper bound accepted for [`RocksOptions::max_batch_writes`].
pub const BATCH_WRITES_LIMIT: usize = 1 << 16;
/// Upper bound accepted for [`RocksOptions::max_batch_bytes`] and
/// [`RocksOptions::max_read_bytes`] (1 GiB).
pub const BYTES_LIMIT: usize = 1 << 30;
/// Lower bound accepted for the byte limits (4 KiB).
pub const BYTES_FLOOR: usize = 4 << 10;
/// Upper bound accepted for [`RocksOptions::max_read_entries`].
pub const READ_ENTRIES_LIMIT: usize = 1 << 24;

/// Configuration of a [`RocksLogStore`]. Every limit is validated by
/// [`RocksLogStore::open`]; an out-of-range value is refused with
/// [`StorageError::Invalid`] before anything is created on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RocksOptions {
    /// Most write requests waiting for the writer thread; callers block while
    /// it is full. `1..=`[`QUEUE_LEN_LIMIT`]. Default 4096.
    pub queue_len: usize,
    /// Most requests merged into one `WriteBatch` (one fsync).
    /// `1..=`[`BATCH_WRITES_LIMIT`]. Default 1024.
    pub max_batch_writes: usize,
    /// Most bytes (keys + values + per-op overhead) merged into one
    /// `WriteBatch`. A single [`LogWrite`] larger than this is refused with
    /// [`StorageError::Invalid`]. [`BYTES_FLOOR`]`..=`[`BYTES_LIMIT`].
    /// Default 64 MiB.
    pub max_batch_bytes: usize,
    /// Most entries one [`LogStore::entries`] call returns; a range holding
    /// more is refused with [`StorageError::Invalid`] (read a narrower
    /// range). `1..=`[`READ_ENTRIES_LIMIT`]. Default 65536.
    pub max_read_entries: usize,
    /// Most stored bytes one [`LogStore::entries`] call reads; a range
    /// holding more is refused with [`StorageError::Invalid`].
    /// [`BYTES_FLOOR`]`..=`[`BYTES_LIMIT`]. Default 64 MiB.
    pub max_read_bytes: usize,
    /// RocksDB memtable size of the `log` family, in bytes (the `meta`
    /// family uses at most 8 MiB). 1 MiB..=1 GiB. Default 32 MiB.
    pub write_buffer_bytes: usize,
    /// Total WAL size, in bytes, at which RocksDB flushes the families
    /// holding the oldest WAL file, so a rarely written family cannot pin WAL
    /// files forever. 16 MiB..=64 GiB. Default 256 MiB.
    pub max_total_wal_bytes: u64,
    /// RocksDB background flush/compaction threads. 1..=64. Default 2.
    pub background_jobs: i32,
}

impl Default for RocksOptions {
    fn default() -> Self {
        Self {
            queue_len: 4096,
            max_batch_writes: 1024,
            max_batch_bytes: 64 << 20,
            max_read_entries: 65536,
            max_read_bytes: 64 << 20,
            write_buffer_bytes: 32 << 20,
            max_total_wal_bytes: 256 << 20,
            background_jobs: 2,
        }
    }
}

impl RocksOptions {
    /// Checks every limit; the error names the first offending field.
    pub fn validate(&self) -> StorageResult<()> {
        fn check<T: PartialOrd + std::fmt::Debug>(
            name: &str,
            v: T,
            lo: T,
            hi: T,
        ) -> StorageResult<()> {
            if v < lo || v > hi {
                return Err(StorageError::Invalid(format!(
                    "RocksOptions::{name} = {v:?} is outside {lo:?}..={hi:?}"
                )));
            }
            Ok(())
        }
        check("queue_len", self.queue_len, 1, QUEUE_LEN_LIMIT)?;
        check(
            "max_batch_writes",
            self.max_batch_writes,
            1,
            BATCH_WRITES_LIMIT,
        )?;
        check(
            "max_batch_bytes",
            self.max_batch_bytes,
            BYTES_FLOOR,
            BYTES_LIMIT,
        )?;
        check(
            "max_read_entries",
            self.max_read_entries,
            1,
            READ_ENTRIES_LIMIT,
        )?;
        check(
            "max_read_bytes",
            self.max_read_bytes,
            BYTES_FLOOR,
            BYTES_LIMIT,
        )?;
        check(
            "write_buffer_bytes",
            self.write_buffer_bytes,
            1 << 20,
            1 << 30,
        )?;
        check(
            "max_total_wal_bytes",
            self.max_total_wal_bytes,
            16 << 20,
            64 << 30,
        )?;
        check("background_jobs", self.background_jobs, 1, 64)?;
        Ok(())
    }
}

/// Counters of a [`RocksLogStore`], for metrics and benchmarks. Cumulative
/// since open, except `queued`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RocksStats {
    /// [`LogWrite`]s committed (successfully or not).
    pub writes: u64,
    /// Engine commits: `WriteBatch`es written plus bare WAL syncs.
    pub batches: u64,
    /// Commits that fsync'd the WAL.
    pub fsyncs: u64,
    /// Bytes of keys and values handed to the engine.
    pub bytes: u64,
    /// Requests waiting in the queue right now.
    pub queued: u64,
}

/// Which family an operation targets.
#[derive(Clone, Copy, Debug)]
enum Cf {
    Log,
    Meta,
}

/// One engine operation, prepared on the caller's thread.
#[derive(Debug)]
enum Op {
    Put {
        cf: Cf,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    DeleteRange {
        cf: Cf,
        from: Vec<u8>,
        to: Vec<u8>,
    },
}

/// Locks `m`, ignoring poisoning: every critical section here leaves the
/// protected state consistent at each step, so a panic elsewhere does not
/// make it unusable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Why [`RocksLogStore::enqueue`] did not queue a request.
enum Refused {
    /// The store is closed.
    Closed,
    /// The queue is full (only without blocking).
    Full,
}

/// How a batch ended, as its callers see it.
#[derive(Clone, Debug)]
enum Outcome {
    /// Committed (and fsync'd if any request of the batch asked for it).
    Done,
    /// The engine refused the write or the fsync.
    Engine(String),
    /// A pipeline thread stopped before answering (the store is closing or
    /// a thread died).
    Stopped,
}

/// Where the callers of one batch wait for its outcome: set once, then every
/// blocked waiter is woken with one `notify_all` and every queued caller's
/// callback ([`LogStore::write_queued`]) is called on the completing thread.
#[derive(Default)]
struct Completion {
    state: Mutex<CompletionState>,
    cv: Condvar,
}

#[derive(Default)]
struct CompletionState {
    outcome: Option<Outcome>,
    callbacks: Vec<WriteDone>,
}

impl Outcome {
    fn to_result(&self) -> StorageResult<()> {
        match self {
            Outcome::Done => Ok(()),
            Outcome::Engine(msg) => Err(StorageError::Engine(msg.clone())),
            Outcome::Stopped => Err(StorageError::Closed),
        }
    }
}

impl Completion {
    /// Sets the outcome unless one is set already; wakes the waiters and
    /// calls the callbacks if it set it.
    fn complete(&self, outcome: Outcome) {
        let callbacks = {
            let mut g = lock(&self.state);
            if g.outcome.is_some() {
                return;
            }
            g.outcome = Some(outcome.clone());
            std::mem::take(&mut g.callbacks)
        };
        self.cv.notify_all();
        for done in callbacks {
            done(outcome.to_result());
        }
    }

    /// Calls `done` with the outcome once it is set (at once if it is).
    fn on_complete(&self, done: WriteDone) {
        let mut g = lock(&self.state);
        match g.outcome.as_ref() {
            Some(o) => {
                let res = o.to_result();
                drop(g);
                done(res);
            }
            None => g.callbacks.push(done),
        }
    }

    /// Blocks until the outcome is set.
    fn wait(&self) -> StorageResult<()> {
        let mut g = lock(&self.state);
        loop {
            match g.outcome.as_ref() {
                Some(o) => return o.to_result(),
                None => g = self.cv.wait(g).unwrap_or_else(|p| p.into_inner()),
            }
        }
    }
}

/// The pipeline's handle on a batch's waiters. Dropping it unanswered (a
/// thread stopped or panicked) answers them with [`Outcome::Stopped`], so no
/// caller ever waits forever.
struct Answer(Arc<Completion>);

impl Answer {
    fn send(self, outcome: Outcome) {
        self.0.complete(outcome);
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        self.0.complete(Outcome::Stopped);
    }
}

/// Queued requests committed as one `WriteBatch` and answered together.
struct Batch {
    /// Operations of every request, in queue order.
    ops: Vec<Op>,
    /// Requests in the batch (for the `max_batch_writes` limit).
    requests: usize,
    /// Of which `LogWrite`s (the rest are bare syncs).
    writes: u64,
    /// Bytes of the operations, with [`OP_OVERHEAD_BYTES`] each.
    bytes: usize,
    /// Whether any request asked for an fsync.
    sync: bool,
    answer: Answer,
}

/// Requests waiting for the writer, grouped into batches.
#[derive(Default)]
struct Intake {
    batches: VecDeque<Batch>,
    /// Requests in `batches` (bounded by `queue_len`).
    requests: usize,
    /// No more requests are accepted; the writer drains and stops.
    closed: bool,
}

/// A batch the writer wrote, waiting for the sync thread.
struct Written {
    sync: bool,
    /// The write's own outcome (an fsync may still fail it).
    outcome: Outcome,
    answer: Answer,
}

/// Written batches between the writer and the sync thread.
#[derive(Default)]
struct Pipeline {
    written: VecDeque<Written>,
    /// The writer has stopped: the sync thread drains and stops.
    writer_done: bool,
    /// The sync thread has stopped (only by a panic before the writer): the
    /// writer answers what it writes with [`Outcome::Stopped`].
    syncer_gone: bool,
}

/// State shared by callers and the pipeline threads.
#[derive(Default)]
struct Shared {
    intake: Mutex<Intake>,
    /// Signalled when a batch is queued or the intake is closed.
    intake_ready: Condvar,
    /// Signalled when the writer took requests off the intake.
    intake_space: Condvar,
    pipeline: Mutex<Pipeline>,
    /// Signalled when a batch was written or the writer stopped.
    pipeline_ready: Condvar,
    /// Signalled when the sync thread took batches off the pipeline.
    pipeline_space: Condvar,
    writes: AtomicU64,
    batches: AtomicU64,
    fsyncs: AtomicU64,
    bytes: AtomicU64,
    queued: AtomicU64,
    #[cfg(test)]
    pause: test_hooks::Pause,
}

/// The durable log store on RocksDB. See the [module docs](self) for the
/// layout, group commit and durability. Thread-safe; share it with `Arc`.
///
/// Dropping the store stops the writer thread after it has answered every
/// queued request; [`RocksLogStore::close`] does the same explicitly and
/// reports errors.
pub struct RocksLogStore {
    db: Arc<DB>,
    path: PathBuf,
    opts: RocksOptions,
    closed: AtomicBool,
    /// The writer and sync threads, joined by [`RocksLogStore::close`].
    threads: Mutex<Vec<JoinHandle<()>>>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for RocksLogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksLogStore")
            .field("path", &self.path)
            .field("opts", &self.opts)
            .field("closed", &self.closed.load(Ordering::Relaxed))
            .field("stats", &self.stats())
            .finish()
    }
}

fn engine(e: rocksdb::Error) -> StorageError {
    StorageError::Engine(e.into_string())
}

/// `log` key of `(group, index)`.
fn log_key(group: GroupId, index: LogIndex) -> [u8; LOG_KEY_LEN] {
    let mut k = [0u8; LOG_KEY_LEN];
    k[..8].copy_from_slice(&group.0.to_be_bytes());
    k[8..].copy_from_slice(&index.0.to_be_bytes());
    k
}

/// The smallest key sorting after `log_key(group, index)`: the exclusive end
/// of a range that includes `index` (works for `index == u64::MAX` too).
fn log_key_after(group: GroupId, index: LogIndex) -> Vec<u8> {
    let mut k = log_key(group, index).to_vec();
    k.push(0);
    k
}

fn meta_key(group: GroupId, tag: u8) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[..8].copy_from_slice(&group.0.to_be_bytes());
    k[8] = tag;
    k
}

/// The index encoded in a `log` key of `group`.
fn parse_log_key(group: GroupId, key: &[u8]) -> StorageResult<LogIndex> {
    if key.len() != LOG_KEY_LEN || key[..8] != group.0.to_be_bytes() {
        return Err(StorageError::Corrupt {
            what: "log key",
            group,
            index: None,
            source: codec::CodecError::Malformed(format!(
                "log key {key:02x?} is not {LOG_KEY_LEN} bytes of this group"
            )),
        });
    }
    let mut b = [0u8; 8];
    b.copy_from_slice(&key[8..]);
    Ok(LogIndex(u64::from_be_bytes(b)))
}

/// Turns `w` into engine operations, in the order [`LogWrite`] documents.
fn prepare(group: GroupId, w: &LogWrite) -> (Vec<Op>, usize) {
    let mut ops = Vec::with_capacity(w.entries.len() + 4);
    if let Some(meta) = &w.snapshot {
        ops.push(Op::DeleteRange {
            cf: Cf::Log,
            from: log_key(group, LogIndex(0)).to_vec(),
            to: log_key_after(group, meta.last_log_id.index),
        });
        ops.push(Op::Put {
            cf: Cf::Meta,
            key: meta_key(group, META_SNAPSHOT).to_vec(),
            value: codec::encode(meta),
        });
    }
    if let Some(from) = w.truncate_from {
        ops.push(Op::DeleteRange {
            cf: Cf::Log,
            from: log_key(group, from).to_vec(),
            to: log_key_after(group, LogIndex(u64::MAX)),
        });
    }
    for e in &w.entries {
        ops.push(Op::Put {
            cf: Cf::Log,
            key: log_key(group, e.index()).to_vec(),
            value: codec::encode(e),
        });
    }
    if let Some(hs) = &w.hard_state {
        ops.push(Op::Put {
            cf: Cf::Meta,
            key: meta_key(group, META_HARD_STATE).to_vec(),
            value: codec::encode(hs),
        });
    }
    if let Some(to) = w.purge_to {
        ops.push(Op::DeleteRange {
            cf: Cf::Log,
            from: log_key(group, LogIndex(0)).to_vec(),
            to: log_key_after(group, to),
        });
    }
    let bytes = ops
        .iter()
        .map(|op| {
            OP_OVERHEAD_BYTES
                + match op {
                    Op::Put { key, value, .. } => key.len() + value.len(),
                    Op::DeleteRange { from, to, .. } => from.len() + to.len(),
                }
        })
        .sum();
    (ops, bytes)
}

/// End of a range read.
#[derive(Clone, Copy, Debug)]
enum End {
    /// Up to but excluding this index.
    Exclusive(LogIndex),
    /// Up to and including this index (reaches `u64::MAX`).
    Inclusive(LogIndex),
}

/// What one bounded range read found.
struct RangeRead {
    entries: Vec<Entry>,
    /// Where the read stopped because a limit was reached (`None`: the whole
    /// range was read).
    stopped_at: Option<LogIndex>,
}

impl RocksLogStore {
    /// Opens (creating if missing) the store in directory `path`.
    ///
    /// Fails with [`StorageError::Invalid`] for bad options (nothing is
    /// created then) and [`StorageError::Engine`] when RocksDB cannot open
    /// the directory (e.g. another process or store holds it).
    pub fn open(path: impl AsRef<Path>, opts: RocksOptions) -> StorageResult<Self> {
        Self::open_with(path.as_ref(), opts, Shared::default())
    }

    /// Opens with the writer held before its first batch (tests of batching).
    #[cfg(test)]
    fn open_paused(path: &Path, opts: RocksOptions) -> StorageResult<Self> {
        let shared = Shared::default();
        shared.pause.set(true);
        Self::open_with(path, opts, shared)
    }

    fn open_with(path: &Path, opts: RocksOptions, shared: Shared) -> StorageResult<Self> {
        opts.validate()?;
        let path = path.to_path_buf();

        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.set_manual_wal_flush(false);
        db_opts.set_wal_recovery_mode(DBRecoveryMode::PointInTime);
        db_opts.set_paranoid_checks(true);
        db_opts.set_max_total_wal_size(opts.max_total_wal_bytes);
        db_opts.set_max_background_jobs(opts.background_jobs);

        let mut log_opts = Options::default();
        log_opts.set_write_buffer_size(opts.write_buffer_bytes);
        // Entries are mostly opaque, often already-compressed client data,
        // and short-lived (purged after snapshots): compression costs CPU on
        // the write path for little gain.
        log_opts.set_compression_type(DBCompressionType::None);
        let mut meta_opts = Options::default();
        meta_opts.set_write_buffer_size(opts.write_buffer_bytes.min(8 << 20));
        meta_opts.set_compression_type(DBCompressionType::None);
        let sm_opts = Options::default();

        let mut cfs = vec![
            ColumnFamilyDescriptor::new(CF_LOG, log_opts),
            ColumnFamilyDescriptor::new(CF_META, meta_opts),
            ColumnFamilyDescriptor::new(CF_SM, sm_opts),
        ];
        // Families created by a newer version must be opened too (RocksDB
        // refuses to open a DB without all of them); keep them untouched.
        // A missing DB makes `list_cf` fail, which is fine: it has none.
        if let Ok(existing) = DB::list_cf(&db_opts, &path) {
            for name in existing {
                if ![CF_LOG, CF_META, CF_SM, rocksdb::DEFAULT_COLUMN_FAMILY_NAME]
                    .contains(&name.as_str())
                {
                    cfs.push(ColumnFamilyDescriptor::new(name, Options::default()));
                }
            }
        }
        let db = DB::open_cf_descriptors(&db_opts, &path, cfs).map_err(engine)?;
        for name in [CF_LOG, CF_META, CF_SM] {
            if db.cf_handle(name).is_none() {
                return Err(StorageError::Engine(format!(
                    "column family {name} missing after open"
                )));
            }
        }
        let db = Arc::new(db);
        let shared = Arc::new(shared);
        let mut threads = Vec::with_capacity(2);
        let spawned = {
            let (db, shared) = (Arc::clone(&db), Arc::clone(&shared));
            std::thread::Builder::new()
                .name("ha-rocks-writer".into())
                .spawn(move || run_writer(&db, &shared))
        }
        .and_then(|h| {
            threads.push(h);
            let (db, shared) = (Arc::clone(&db), Arc::clone(&shared));
            std::thread::Builder::new()
                .name("ha-rocks-sync".into())
                .spawn(move || run_syncer(&db, &shared))
        });
        match spawned {
            Ok(h) => threads.push(h),
            Err(e) => {
                stop_threads(&shared, threads);
                return Err(StorageError::Engine(format!(
                    "cannot start log store threads: {e}"
                )));
            }
        }
        Ok(Self {
            db,
            path,
            opts,
            closed: AtomicBool::new(false),
            threads: Mutex::new(threads),
            shared,
        })
    }

    /// The directory the store lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The underlying database, for the owner of the [`CF_SM`] family (a
    /// state machine keeping its data in the node's one DB). Writing to
    /// [`CF_LOG`] or [`CF_META`] through it bypasses every check of this
    /// store and must not be done.
    pub fn db(&self) -> Arc<DB> {
        Arc::clone(&self.db)
    }

    /// Deletes everything `group` has in this DB — its log, hard state and
    /// snapshot record, and its state machine's records in [`CF_SM`] (every
    /// key of every family starts with the group's id) — as one fsync'd
    /// write. For a replica this member stopped hosting: the caller must
    /// have stopped it first (nothing of `group` may be in flight). Other
    /// groups are untouched.
    pub fn delete_group(&self, group: GroupId) -> StorageResult<()> {
        self.check_open()?;
        let from = group.0.to_be_bytes();
        let mut wb = WriteBatch::default();
        for name in [CF_LOG, CF_META, CF_SM] {
            let cf = self
                .db
                .cf_handle(name)
                .ok_or_else(|| StorageError::Engine(format!("column family {name} missing")))?;
            match group.0.checked_add(1) {
                Some(next) => wb.delete_range_cf(cf, from, next.to_be_bytes()),
                None => {
                    // The last group id: everything from it on.
                    let mut end = [0xffu8; 9];
                    end[..8].copy_from_slice(&from);
                    wb.delete_range_cf(cf, from.as_slice(), end.as_slice());
                }
            }
        }
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.db.write_opt(wb, &opts).map_err(engine)
    }

    /// The options the store was opened with.
    pub fn options(&self) -> &RocksOptions {
        &self.opts
    }

    /// Current counters.
    pub fn stats(&self) -> RocksStats {
        let s = &self.shared;
        RocksStats {
            writes: s.writes.load(Ordering::Relaxed),
            batches: s.batches.load(Ordering::Relaxed),
            fsyncs: s.fsyncs.load(Ordering::Relaxed),
            bytes: s.bytes.load(Ordering::Relaxed),
            queued: s.queued.load(Ordering::Relaxed),
        }
    }

    /// Stops accepting calls, lets the writer answer every request already
    /// queued, stops it, and fsyncs the WAL. Every later call returns
    /// [`StorageError::Closed`]. Idempotent; the second call does nothing.
    pub fn close(&self) -> StorageResult<()> {
        if self.closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        // The writer answers every request already queued, then stops; the
        // sync thread follows once it has answered every written batch.
        let threads = std::mem::take(&mut *lock(&self.threads));
        if !stop_threads(&self.shared, threads) {
            return Err(StorageError::Engine("log store thread panicked".into()));
        }
        self.db.flush_wal(true).map_err(engine)
    }

    fn check_open(&self) -> StorageResult<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(StorageError::Closed);
        }
        Ok(())
    }

    fn cf(&self, name: &'static str) -> StorageResult<&ColumnFamily> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| StorageError::Engine(format!("column family {name} missing")))
    }

    /// Queues a request (joining the newest waiting batch when it fits) and
    /// waits for its batch's answer. `bytes` is at most `max_batch_bytes`
    /// (checked by the caller).
    fn submit(&self, ops: Vec<Op>, bytes: usize, sync: bool, is_write: bool) -> StorageResult<()> {
        match self.enqueue(ops, bytes, sync, is_write, true) {
            Ok(done) => done.wait(),
            Err(Refused::Closed) => Err(StorageError::Closed),
            // `block` was true: the queue never refuses for being full.
            Err(Refused::Full) => Err(StorageError::Closed),
        }
    }

    /// Queues a request and returns its batch's completion. With `block`,
    /// waits while the queue is full; without, refuses (the caller still
    /// holds the `LogWrite` the operations came from).
    fn enqueue(
        &self,
        ops: Vec<Op>,
        bytes: usize,
        sync: bool,
        is_write: bool,
        block: bool,
    ) -> Result<Arc<Completion>, Refused> {
        let sh = &*self.shared;
        let (max_writes, max_bytes) = (self.opts.max_batch_writes, self.opts.max_batch_bytes);
        let mut q = lock(&sh.intake);
        while !q.closed && q.requests >= self.opts.queue_len {
            if !block {
                return Err(Refused::Full);
            }
            q = sh.intake_space.wait(q).unwrap_or_else(|p| p.into_inner());
        }
        if q.closed {
            return Err(Refused::Closed);
        }
        q.requests += 1;
        sh.queued.fetch_add(1, Ordering::Relaxed);
        let fits = q
            .batches
            .back()
            .is_some_and(|b| b.requests < max_writes && b.bytes + bytes <= max_bytes);
        Ok(match q.batches.back_mut() {
            Some(b) if fits => {
                b.ops.extend(ops);
                b.requests += 1;
                b.writes += u64::from(is_write);
                b.bytes += bytes;
                b.sync |= sync;
                Arc::clone(&b.answer.0)
            }
            _ => {
                let done = Arc::new(Completion::default());
                q.batches.push_back(Batch {
                    ops,
                    requests: 1,
                    writes: u64::from(is_write),
                    bytes,
                    sync,
                    answer: Answer(Arc::clone(&done)),
                });
                if q.batches.len() == 1 {
                    // The writer may be idle: only then is it waiting.
                    sh.intake_ready.notify_one();
                }
                done
            }
        })
    }

    /// Reads the present entries of `range`, stopping (and saying where)
    /// once `max_entries` entries or `max_bytes` stored bytes were read.
    fn read_range(
        &self,
        group: GroupId,
        start: LogIndex,
        end: End,
        max_entries: usize,
        max_bytes: usize,
    ) -> StorageResult<RangeRead> {
        let mut out = Vec::new();
        let upper = match end {
            End::Exclusive(e) if e <= start => {
                return Ok(RangeRead {
                    entries: out,
                    stopped_at: None,
                });
            }
            End::Exclusive(e) => log_key(group, e).to_vec(),
            End::Inclusive(e) => log_key_after(group, e),
        };
        let mut ro = ReadOptions::default();
        ro.set_iterate_lower_bound(log_key(group, start).to_vec());
        ro.set_iterate_upper_bound(upper);
        let mut it = self.db.raw_iterator_cf_opt(self.cf(CF_LOG)?, ro);
        it.seek_to_first();
        let mut bytes = 0usize;
        while it.valid() {
            let (Some(key), Some(value)) = (it.key(), it.value()) else {
                break;
            };
            let index = parse_log_key(group, key)?;
            if out.len() >= max_entries || bytes.saturating_add(value.len()) > max_bytes {
                return Ok(RangeRead {
                    entries: out,
                    stopped_at: Some(index),
                });
            }
            bytes += value.len();
            out.push(decode_entry(group, index, value)?);
            it.next();
        }
        it.status().map_err(engine)?;
        Ok(RangeRead {
            entries: out,
            stopped_at: None,
        })
    }

    fn read_meta<T: serde::de::DeserializeOwned>(
        &self,
        group: GroupId,
        tag: u8,
        what: &'static str,
    ) -> StorageResult<Option<T>> {
        let Some(v) = self
            .db
            .get_pinned_cf(self.cf(CF_META)?, meta_key(group, tag))
            .map_err(engine)?
        else {
            return Ok(None);
        };
        codec::decode(&v)
            .map(Some)
            .map_err(|source| StorageError::Corrupt {
                what,
                group,
                index: None,
                source,
            })
    }
}

impl Drop for RocksLogStore {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            tracing::warn!(path = %self.path.display(), error = %e, "closing RocksLogStore failed");
        }
    }
}

impl LogStore for RocksLogStore {
    /// Validates and encodes `write` on the calling thread, queues it for
    /// the writer thread (blocking while the queue is full) and returns once
    /// its batch is committed — fsync'd if `write.sync`.
    fn write(&self, group: GroupId, write: LogWrite) -> StorageResult<()> {
        self.check_open()?;
        if write.is_empty() {
            return if write.sync { self.sync() } else { Ok(()) };
        }
        let (ops, bytes) = prepare(group, &write);
        if bytes > self.opts.max_batch_bytes {
            return Err(StorageError::Invalid(format!(
                "write of {bytes} bytes to group {group} exceeds max_batch_bytes {}",
                self.opts.max_batch_bytes
            )));
        }
        self.submit(ops, bytes, write.sync, true)
    }

    /// Validates and encodes `write` on the calling thread and queues it
    /// without waiting; `done` is called by the sync thread when its batch
    /// is committed (with `Ok` only after the fsync if `write.sync`). Gives
    /// `write` and `done` back only while the queue is full.
    fn write_queued(
        &self,
        group: GroupId,
        write: LogWrite,
        done: WriteDone,
    ) -> Result<(), Box<NotQueued>> {
        if let Err(e) = self.check_open() {
            done(Err(e));
            return Ok(());
        }
        let (ops, bytes, is_write) = if write.is_empty() {
            if !write.sync {
                done(Ok(()));
                return Ok(());
            }
            (Vec::new(), 0, false)
        } else {
            let (ops, bytes) = prepare(group, &write);
            if bytes > self.opts.max_batch_bytes {
                done(Err(StorageError::Invalid(format!(
                    "write of {bytes} bytes to group {group} exceeds max_batch_bytes {}",
                    self.opts.max_batch_bytes
                ))));
                return Ok(());
            }
            (ops, bytes, true)
        };
        match self.enqueue(ops, bytes, write.sync, is_write, false) {
            Ok(completion) => {
                completion.on_complete(done);
                Ok(())
            }
            Err(Refused::Closed) => {
                done(Err(StorageError::Closed));
                Ok(())
            }
            Err(Refused::Full) => Err(Box::new(NotQueued { write, done })),
        }
    }

    /// Fsyncs the WAL after every write queued before it; concurrent
    /// `sync`s and synced writes share one fsync.
    fn sync(&self) -> StorageResult<()> {
        self.check_open()?;
        self.submit(Vec::new(), 0, true, false)
    }

    /// Refuses (with [`StorageError::Invalid`]) a range holding more than
    /// [`RocksOptions::max_read_entries`] entries or
    /// [`RocksOptions::max_read_bytes`] stored bytes; memory use stays within
    /// those limits either way.
    fn entries(&self, group: GroupId, range: Range<LogIndex>) -> StorageResult<Vec<Entry>> {
        self.check_open()?;
        if range.start > range.end {
            return Err(StorageError::Invalid(format!(
                "range start {:?} after end {:?}",
                range.start, range.end
            )));
        }
        let read = self.read_range(
            group,
            range.start,
            End::Exclusive(range.end),
            self.opts.max_read_entries,
            self.opts.max_read_bytes,
        )?;
        if let Some(at) = read.stopped_at {
            return Err(StorageError::Invalid(format!(
                "range {:?}..{:?} of group {group} holds more than max_read_entries {} \
                 entries or max_read_bytes {} bytes (limit reached before {at:?}); \
                 read a narrower range",
                range.start, range.end, self.opts.max_read_entries, self.opts.max_read_bytes
            )));
        }
        Ok(read.entries)
    }

    /// A point lookup (no iterator); also reaches index `u64::MAX`.
    fn entry(&self, group: GroupId, index: LogIndex) -> StorageResult<Option<Entry>> {
        self.check_open()?;
        let Some(v) = self
            .db
            .get_pinned_cf(self.cf(CF_LOG)?, log_key(group, index))
            .map_err(engine)?
        else {
            return Ok(None);
        };
        let entry = decode_entry(group, index, &v)?;
        Ok(Some(entry))
    }

    fn bounds(&self, group: GroupId) -> StorageResult<Option<(LogIndex, LogIndex)>> {
        self.check_open()?;
        let mut ro = ReadOptions::default();
        ro.set_iterate_lower_bound(log_key(group, LogIndex(0)).to_vec());
        ro.set_iterate_upper_bound(log_key_after(group, LogIndex(u64::MAX)));
        let mut it = self.db.raw_iterator_cf_opt(self.cf(CF_LOG)?, ro);
        it.seek_to_first();
        let lo = match it.key() {
            Some(k) if it.valid() => parse_log_key(group, k)?,
            _ => {
                it.status().map_err(engine)?;
                return Ok(None);
            }
        };
        it.seek_to_last();
        let hi = match it.key() {
            Some(k) if it.valid() => parse_log_key(group, k)?,
            _ => {
                it.status().map_err(engine)?;
                // Found a first key but no last: the engine changed under us
                // or failed without a status; report rather than guess.
                return Err(StorageError::Engine(format!(
                    "group {group}: log has a first entry {lo:?} but no last"
                )));
            }
        };
        Ok(Some((lo, hi)))
    }

    fn hard_state(&self, group: GroupId) -> StorageResult<HardState> {
        self.check_open()?;
        Ok(self
            .read_meta(group, META_HARD_STATE, "hard state")?
            .unwrap_or_default())
    }

    fn snapshot_meta(&self, group: GroupId) -> StorageResult<Option<SnapshotMeta>> {
        self.check_open()?;
        self.read_meta(group, META_SNAPSHOT, "snapshot meta")
    }

    /// Reads the whole log in pages of at most the read limits, so recovery
    /// is not refused for a log longer than one `entries` call may return.
    /// The result holds the whole log in memory, as [`Recovered`] requires;
    /// snapshotting bounds it.
    fn recover(&self, group: GroupId) -> StorageResult<Recovered> {
        self.check_open()?;
        let hard_state = self.hard_state(group)?;
        let snapshot = self.snapshot_meta(group)?;
        let mut entries = Vec::new();
        if let Some((lo, hi)) = self.bounds(group)? {
            let mut start = lo;
            // Each round reads at least one entry, so this ends after at most
            // (hi - lo + 1) rounds.
            loop {
                let page = self.read_range(
                    group,
                    start,
                    End::Inclusive(hi),
                    self.opts.max_read_entries,
                    self.opts.max_read_bytes,
                )?;
                let progressed = !page.entries.is_empty();
                entries.extend(page.entries);
                match page.stopped_at {
                    None => break,
                    Some(at) if progressed => start = at,
                    Some(at) => {
                        // One entry alone exceeds max_read_bytes: read it
                        // without the byte limit rather than fail recovery.
                        let one = self.read_range(group, at, End::Inclusive(at), 1, usize::MAX)?;
                        entries.extend(one.entries);
                        if at >= hi {
                            break;
                        }
                        start = at.next();
                    }
                }
            }
        }
        Ok(Recovered {
            hard_state,
            snapshot,
            entries,
        })
    }
}

/// The writer thread: takes every waiting request (within the batch limits),
/// commits them as one batch and answers each. Ends when every sender is
/// gone and the queue is empty.
/// Decodes the log value stored under `(group, index)`: checksum and format
/// errors are `Corrupt`, an entry claiming another index is `Misplaced`.
fn decode_entry(group: GroupId, index: LogIndex, value: &[u8]) -> StorageResult<Entry> {
    let entry: Entry = codec::decode(value).map_err(|source| StorageError::Corrupt {
        what: "log entry",
        group,
        index: Some(index),
        source,
    })?;
    if entry.index() != index {
        return Err(StorageError::Misplaced {
            group,
            key: index,
            found: entry.index(),
        });
    }
    Ok(entry)
}

/// Marks the intake closed, lets the pipeline threads drain and stop, and
/// joins them. False if one of them panicked (its batches were answered
/// [`Outcome::Stopped`] when they were dropped).
fn stop_threads(shared: &Shared, threads: Vec<JoinHandle<()>>) -> bool {
    lock(&shared.intake).closed = true;
    shared.intake_ready.notify_all();
    shared.intake_space.notify_all();
    let mut clean = true;
    for h in threads {
        clean &= h.join().is_ok();
    }
    clean
}

/// Tells the sync thread that the writer stopped, however it stopped (a
/// panic included), and answers whatever is still queued.
struct WriterExit<'a>(&'a Shared);

impl Drop for WriterExit<'_> {
    fn drop(&mut self) {
        let sh = self.0;
        {
            let mut q = lock(&sh.intake);
            q.closed = true;
            // Dropping the batches answers their callers (`Outcome::Stopped`);
            // empty after a clean stop.
            q.batches.clear();
            q.requests = 0;
        }
        sh.queued.store(0, Ordering::Relaxed);
        sh.intake_space.notify_all();
        lock(&sh.pipeline).writer_done = true;
        sh.pipeline_ready.notify_all();
    }
}

/// The writer thread: writes queued batches in order, each as one
/// `WriteBatch` without fsync, and hands them to the sync thread.
fn run_writer(db: &DB, shared: &Shared) {
    let _exit = WriterExit(shared);
    loop {
        #[cfg(test)]
        shared.pause.wait_while_paused();
        let batch = {
            let mut q = lock(&shared.intake);
            loop {
                if let Some(b) = q.batches.pop_front() {
                    q.requests -= b.requests;
                    shared
                        .queued
                        .fetch_sub(b.requests as u64, Ordering::Relaxed);
                    break b;
                }
                if q.closed {
                    return;
                }
                q = shared
                    .intake_ready
                    .wait(q)
                    .unwrap_or_else(|p| p.into_inner());
            }
        };
        shared.intake_space.notify_all();
        let Batch {
            ops,
            writes,
            sync,
            answer,
            ..
        } = batch;
        let outcome = match write_batch(db, &ops) {
            Ok(bytes) => {
                if bytes > 0 || sync {
                    // A batch of bare syncs counts as the WAL sync it asks for.
                    shared.batches.fetch_add(1, Ordering::Relaxed);
                }
                shared.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
                Outcome::Done
            }
            Err(msg) => Outcome::Engine(msg),
        };
        shared.writes.fetch_add(writes, Ordering::Relaxed);
        drop(ops);
        let mut p = lock(&shared.pipeline);
        while !p.syncer_gone && p.written.len() >= SYNC_PIPELINE_BATCHES_MAX {
            p = shared
                .pipeline_space
                .wait(p)
                .unwrap_or_else(|e| e.into_inner());
        }
        if p.syncer_gone {
            // Nobody would fsync it: dropping `answer` answers `Stopped`.
            continue;
        }
        p.written.push_back(Written {
            sync,
            outcome,
            answer,
        });
        if p.written.len() == 1 {
            shared.pipeline_ready.notify_one();
        }
    }
}

/// Tells the writer that the sync thread stopped and answers what it left.
struct SyncerExit<'a>(&'a Shared);

impl Drop for SyncerExit<'_> {
    fn drop(&mut self) {
        let mut p = lock(&self.0.pipeline);
        p.syncer_gone = true;
        // Answered `Stopped` as they drop; empty after a clean stop.
        p.written.clear();
        drop(p);
        self.0.pipeline_space.notify_all();
    }
}

/// The sync thread: takes every written batch, fsyncs the WAL once if any
/// of them asked for it, then answers them in order.
fn run_syncer(db: &DB, shared: &Shared) {
    let _exit = SyncerExit(shared);
    let mut taken: Vec<Written> = Vec::with_capacity(SYNC_PIPELINE_BATCHES_MAX);
    loop {
        {
            let mut p = lock(&shared.pipeline);
            while p.written.is_empty() {
                if p.writer_done {
                    return;
                }
                p = shared
                    .pipeline_ready
                    .wait(p)
                    .unwrap_or_else(|e| e.into_inner());
            }
            taken.extend(p.written.drain(..));
        }
        shared.pipeline_space.notify_one();
        let needs_sync = taken
            .iter()
            .any(|w| w.sync && matches!(w.outcome, Outcome::Done));
        // Every batch in `taken` was written before this fsync starts, so it
        // covers all of them.
        let synced = if needs_sync {
            match db.flush_wal(true) {
                Ok(()) => {
                    shared.fsyncs.fetch_add(1, Ordering::Relaxed);
                    Outcome::Done
                }
                Err(e) => Outcome::Engine(e.into_string()),
            }
        } else {
            Outcome::Done
        };
        for w in taken.drain(..) {
            let outcome = match (&w.outcome, w.sync) {
                (Outcome::Done, true) => synced.clone(),
                (o, _) => o.clone(),
            };
            w.answer.send(outcome);
        }
    }
}

/// Writes `ops` as one `WriteBatch`, without fsync. Returns the bytes of
/// keys and values written (0 for a batch of bare syncs, which writes
/// nothing).
fn write_batch(db: &DB, ops: &[Op]) -> Result<usize, String> {
    if ops.is_empty() {
        return Ok(0);
    }
    let log = db
        .cf_handle(CF_LOG)
        .ok_or_else(|| format!("column family {CF_LOG} missing"))?;
    let meta = db
        .cf_handle(CF_META)
        .ok_or_else(|| format!("column family {CF_META} missing"))?;
    let mut wb = WriteBatch::default();
    let mut bytes = 0usize;
    for op in ops {
        match op {
            Op::Put { cf, key, value } => {
                let cf = if matches!(cf, Cf::Log) { log } else { meta };
                wb.put_cf(cf, key, value);
                bytes += key.len() + value.len();
            }
            Op::DeleteRange { cf, from, to } => {
                let cf = if matches!(cf, Cf::Log) { log } else { meta };
                wb.delete_range_cf(cf, from, to);
                bytes += from.len() + to.len();
            }
        }
    }
    let mut wo = WriteOptions::default();
    wo.set_sync(false);
    db.write_opt(wb, &wo).map_err(|e| e.into_string())?;
    Ok(bytes)
}

#[cfg(test)]
mod test_hooks {
    use std::sync::{Condvar, Mutex};
    use std::time::Duration;

    /// Lets a test hold the writer thread before it takes the next batch, so
    /// requests pile up deterministically.
    #[derive(Default)]
    pub(super) struct Pause {
        paused: Mutex<bool>,
        cv: Condvar,
    }

    impl Pause {
        pub(super) fn set(&self, paused: bool) {
            *self.paused.lock().unwrap_or_else(|p| p.into_inner()) = paused;
            self.cv.notify_all();
        }

        pub(super) fn wait_while_paused(&self) {
            let mut g = self.paused.lock().unwrap_or_else(|p| p.into_inner());
            // Bounded: a forgotten pause releases itself after 30 s.
            let mut rounds = 0;
            while *g && rounds < 300 {
                g = self
                    .cv
                    .wait_timeout(g, Duration::from_millis(100))
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
                rounds += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use bytes::Bytes;

    use super::*;
    use crate::codec::CodecError;
    use crate::storage::conformance::{self, Harness};
    use crate::types::{EntryPayload, LogId, Membership, NodeId, Term};

    const G: GroupId = GroupId(1);

    struct RocksHarness {
        dirs: Vec<tempfile::TempDir>,
        opts: RocksOptions,
    }

    impl Harness for RocksHarness {
        type Store = RocksLogStore;
        fn fresh(&mut self) -> RocksLogStore {
            let dir = tempfile::tempdir().expect("tempdir");
            let s = RocksLogStore::open(dir.path(), self.opts.clone()).expect("open fresh store");
            self.dirs.push(dir);
            s
        }
        fn reopen(&mut self, store: RocksLogStore) -> RocksLogStore {
            let path = store.path().to_path_buf();
            drop(store);
            RocksLogStore::open(&path, self.opts.clone()).expect("reopen store")
        }
    }

    fn ent(index: u64, term: u64) -> Entry {
        Entry {
            log_id: LogId::new(term, index),
            payload: EntryPayload::Normal(Bytes::from(format!("payload {index}/{term}"))),
        }
    }

    fn big(index: u64, len: usize) -> Entry {
        Entry {
            log_id: LogId::new(1, index),
            payload: EntryPayload::Normal(Bytes::from(vec![index as u8; len])),
        }
    }

    fn open(dir: &tempfile::TempDir) -> RocksLogStore {
        RocksLogStore::open(dir.path(), RocksOptions::default()).expect("open")
    }

    /// Opens the store's DB directly, as a tool (or a disk fault) would.
    fn raw_db(path: &Path) -> DB {
        // Uncompressed, as the store writes, so the test can find values
        // in table files.
        let cf_opts = || {
            let mut o = Options::default();
            o.set_compression_type(DBCompressionType::None);
            o
        };
        let cfs = [CF_LOG, CF_META, CF_SM].map(|n| ColumnFamilyDescriptor::new(n, cf_opts()));
        DB::open_cf_descriptors(&cf_opts(), path, cfs).expect("raw open")
    }

    fn raw_put(path: &Path, cf: &str, key: &[u8], value: &[u8]) {
        let db = raw_db(path);
        let cf = db.cf_handle(cf).expect("cf");
        db.put_cf(cf, key, value).expect("raw put");
        db.flush_wal(true).expect("raw flush");
    }

    #[test]
    fn rocks_log_store_passes_the_conformance_suite() {
        let mut h = RocksHarness {
            dirs: Vec::new(),
            opts: RocksOptions::default(),
        };
        conformance::run_all(&mut h);
    }

    /// The same suite with tiny batch limits, so group commit splits work
    /// into many batches (and the carry-over path runs).
    #[test]
    fn conformance_with_tiny_batches() {
        let mut h = RocksHarness {
            dirs: Vec::new(),
            opts: RocksOptions {
                max_batch_writes: 2,
                max_batch_bytes: 128 << 10,
                queue_len: 2,
                ..RocksOptions::default()
            },
        };
        conformance::run_all(&mut h);
    }

    #[test]
    fn bad_options_are_refused_before_touching_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db");
        let d = RocksOptions::default();
        let bad = [
            RocksOptions {
                queue_len: 0,
                ..d.clone()
            },
            RocksOptions {
                queue_len: QUEUE_LEN_LIMIT + 1,
                ..d.clone()
            },
            RocksOptions {
                max_batch_writes: 0,
                ..d.clone()
            },
            RocksOptions {
                max_batch_bytes: 100,
                ..d.clone()
            },
            RocksOptions {
                max_read_entries: 0,
                ..d.clone()
            },
            RocksOptions {
                max_read_bytes: BYTES_LIMIT + 1,
                ..d.clone()
            },
            RocksOptions {
                write_buffer_bytes: 10,
                ..d.clone()
            },
            RocksOptions {
                max_total_wal_bytes: 1,
                ..d.clone()
            },
            RocksOptions {
                background_jobs: 0,
                ..d.clone()
            },
        ];
        for opts in bad {
            let r = RocksLogStore::open(&path, opts.clone());
            assert!(
                matches!(r, Err(StorageError::Invalid(_))),
                "{opts:?} accepted: {r:?}"
            );
        }
        assert!(!path.exists(), "a refused open created the directory");
        assert_eq!(d.validate().ok(), Some(()), "defaults are valid");
    }

    #[test]
    fn corrupt_entry_bytes_give_a_checksum_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = open(&dir);
        s.write(G, LogWrite::append((1..=5).map(|i| ent(i, 1)).collect()))
            .expect("append");
        drop(s);

        let mut bad = codec::encode(&ent(3, 1));
        let mid = bad.len() / 2;
        bad[mid] ^= 0x40;
        raw_put(dir.path(), CF_LOG, &log_key(G, LogIndex(3)), &bad);

        let s = open(&dir);
        let r = s.entries(G, LogIndex(1)..LogIndex(6));
        assert!(
            matches!(
                r,
                Err(StorageError::Corrupt {
                    what: "log entry",
                    index: Some(LogIndex(3)),
                    source: CodecError::Checksum { .. },
                    ..
                })
            ),
            "range over the corrupt entry: {r:?}"
        );
        let r = s.entry(G, LogIndex(3));
        assert!(matches!(r, Err(StorageError::Corrupt { .. })), "{r:?}");
        assert!(matches!(s.recover(G), Err(StorageError::Corrupt { .. })));
        // Neighbours are intact and readable.
        assert_eq!(s.entry(G, LogIndex(2)).ok().flatten(), Some(ent(2, 1)));
        assert_eq!(
            s.entries(G, LogIndex(4)..LogIndex(6)).ok(),
            Some(vec![ent(4, 1), ent(5, 1)])
        );
        // Overwriting the bad slot repairs it.
        s.write(G, LogWrite::append(vec![ent(3, 2)]))
            .expect("overwrite");
        assert_eq!(s.entry(G, LogIndex(3)).ok().flatten(), Some(ent(3, 2)));
    }

    #[test]
    fn truncated_value_and_corrupt_meta_are_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = open(&dir);
        s.write(
            G,
            LogWrite {
                entries: vec![ent(1, 1), ent(2, 1)],
                hard_state: Some(HardState {
                    term: Term(1),
                    vote: Some(NodeId(1)),
                    commit: LogIndex(1),
                }),
                snapshot: Some(SnapshotMeta {
                    last_log_id: LogId::new(1, 0),
                    membership: Membership::new([NodeId(1)]),
                }),
                sync: true,
                ..LogWrite::default()
            },
        )
        .expect("write");
        drop(s);
        let good = codec::encode(&ent(2, 1));
        raw_put(dir.path(), CF_LOG, &log_key(G, LogIndex(2)), &good[..3]);
        raw_put(
            dir.path(),
            CF_META,
            &meta_key(G, META_HARD_STATE),
            b"\x01garbage!",
        );
        raw_put(dir.path(), CF_META, &meta_key(G, META_SNAPSHOT), b"");

        let s = open(&dir);
        let r = s.entry(G, LogIndex(2));
        assert!(
            matches!(
                r,
                Err(StorageError::Corrupt {
                    source: CodecError::TooShort { len: 3 },
                    ..
                })
            ),
            "{r:?}"
        );
        let r = s.hard_state(G);
        assert!(
            matches!(
                r,
                Err(StorageError::Corrupt {
                    what: "hard state",
                    index: None,
                    ..
                })
            ),
            "{r:?}"
        );
        let r = s.snapshot_meta(G);
        assert!(
            matches!(
                r,
                Err(StorageError::Corrupt {
                    what: "snapshot meta",
                    ..
                })
            ),
            "{r:?}"
        );
    }

    #[test]
    fn delete_group_removes_only_that_groups_log_state_and_records() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = open(&dir);
        let other = GroupId(2);
        for g in [G, other] {
            s.write(
                g,
                LogWrite {
                    hard_state: Some(HardState {
                        term: crate::types::Term(3),
                        ..HardState::default()
                    }),
                    ..LogWrite::append(vec![ent(1, 1), ent(2, 1)])
                },
            )
            .expect("write");
            let db = s.db();
            let sm = db.cf_handle(CF_SM).expect("sm");
            let mut k = g.0.to_be_bytes().to_vec();
            k.push(7);
            db.put_cf(sm, &k, b"record").expect("put");
        }
        s.delete_group(G).expect("delete");
        assert_eq!(s.bounds(G).expect("bounds"), None);
        assert_eq!(s.hard_state(G).expect("hs"), HardState::default());
        assert_eq!(
            s.bounds(other).expect("bounds"),
            Some((LogIndex(1), LogIndex(2)))
        );
        assert_eq!(s.hard_state(other).expect("hs").term, crate::types::Term(3));
        let db = s.db();
        let sm = db.cf_handle(CF_SM).expect("sm");
        let key = |g: GroupId| {
            let mut k = g.0.to_be_bytes().to_vec();
            k.push(7);
            k
        };
        assert_eq!(db.get_cf(sm, key(G)).expect("get"), None);
        assert!(db.get_cf(sm, key(other)).expect("get").is_some());
        // The group can be written again from scratch.
        s.write(G, LogWrite::append(vec![ent(1, 4)]))
            .expect("write");
        assert_eq!(
            s.bounds(G).expect("bounds"),
            Some((LogIndex(1), LogIndex(1)))
        );
    }

    #[test]
    fn entry_under_the_wrong_key_is_misplaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        drop(open(&dir));
        raw_put(
            dir.path(),
            CF_LOG,
            &log_key(G, LogIndex(5)),
            &codec::encode(&ent(7, 1)),
        );
        let s = open(&dir);
        let r = s.entry(G, LogIndex(5));
        assert!(
            matches!(
                r,
                Err(StorageError::Misplaced {
                    key: LogIndex(5),
                    found: LogIndex(7),
                    ..
                })
            ),
            "{r:?}"
        );
    }

    #[test]
    fn malformed_key_in_a_groups_range_is_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = open(&dir);
        s.write(G, LogWrite::append(vec![ent(1, 1)]))
            .expect("append");
        drop(s);
        // 17 bytes with group 1's prefix sorts between indexes 5 and 6.
        let mut key = log_key(G, LogIndex(5)).to_vec();
        key.push(0xaa);
        raw_put(dir.path(), CF_LOG, &key, &codec::encode(&ent(9, 1)));
        let s = open(&dir);
        let r = s.entries(G, LogIndex(0)..LogIndex(100));
        assert!(
            matches!(
                r,
                Err(StorageError::Corrupt {
                    what: "log key",
                    ..
                })
            ),
            "{r:?}"
        );
    }

    /// Flips bytes inside an SST file on disk: RocksDB's block checksum (or
    /// ours) must refuse the data; a wrong entry is never returned.
    #[test]
    fn flipped_bytes_in_a_table_file_never_return_data() {
        let dir = tempfile::tempdir().expect("tempdir");
        let marker = b"MARKER-MARKER-MARKER-MARKER";
        let s = open(&dir);
        let entries: Vec<Entry> = (1..=50)
            .map(|i| Entry {
                log_id: LogId::new(1, i),
                payload: EntryPayload::Normal(Bytes::from_static(marker)),
            })
            .collect();
        s.write(G, LogWrite::append(entries)).expect("append");
        drop(s);
        {
            let db = raw_db(dir.path());
            db.flush_cf(db.cf_handle(CF_LOG).expect("cf"))
                .expect("flush");
        }
        let mut flipped = 0;
        for f in std::fs::read_dir(dir.path()).expect("readdir") {
            let p = f.expect("dirent").path();
            if p.extension().is_some_and(|e| e == "sst") {
                let mut bytes = std::fs::read(&p).expect("read sst");
                if let Some(at) = bytes.windows(marker.len()).position(|w| w == marker) {
                    bytes[at + 3] ^= 0x01;
                    std::fs::write(&p, &bytes).expect("write sst");
                    flipped += 1;
                }
            }
        }
        let files: Vec<_> = std::fs::read_dir(dir.path())
            .expect("readdir")
            .filter_map(|f| f.ok().map(|f| f.file_name()))
            .collect();
        assert!(flipped > 0, "no table file held the entries: {files:?}");
        match RocksLogStore::open(dir.path(), RocksOptions::default()) {
            // Refusing to open a corrupt DB is a clear error too.
            Err(e) => assert!(matches!(e, StorageError::Engine(_)), "{e:?}"),
            Ok(s) => {
                let r = s.entries(G, LogIndex(1)..LogIndex(51));
                match r {
                    Err(StorageError::Engine(msg)) => {
                        assert!(msg.contains("Corruption"), "unexpected engine error {msg}")
                    }
                    Err(StorageError::Corrupt { .. }) => {}
                    other => panic!("corrupt table file returned {other:?}"),
                }
            }
        }
    }

    #[test]
    fn read_limits_refuse_large_ranges_but_recover_pages() {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = RocksOptions {
            max_read_entries: 4,
            max_read_bytes: BYTES_FLOOR,
            ..RocksOptions::default()
        };
        let s = RocksLogStore::open(dir.path(), opts).expect("open");
        s.write(G, LogWrite::append((1..=10).map(|i| ent(i, 1)).collect()))
            .expect("append");
        assert_eq!(
            s.entries(G, LogIndex(1)..LogIndex(5)).map(|v| v.len()).ok(),
            Some(4),
            "exactly the limit"
        );
        let r = s.entries(G, LogIndex(1)..LogIndex(6));
        assert!(matches!(r, Err(StorageError::Invalid(_))), "{r:?}");
        // Byte limit: three 2000-byte entries exceed 4 KiB.
        s.write(
            G,
            LogWrite::append(vec![big(20, 2000), big(21, 2000), big(22, 2000)]),
        )
        .expect("append big");
        let r = s.entries(G, LogIndex(20)..LogIndex(23));
        assert!(matches!(r, Err(StorageError::Invalid(_))), "{r:?}");
        // One entry larger than the byte limit, and one at u64::MAX.
        s.write(G, LogWrite::append(vec![big(30, 6000), ent(u64::MAX, 1)]))
            .expect("append huge");
        let r = s.recover(G).expect("recover pages past the limits");
        let got: Vec<u64> = r.entries.iter().map(|e| e.index().0).collect();
        let mut want: Vec<u64> = (1..=10).chain(20..=22).collect();
        want.extend([30, u64::MAX]);
        assert_eq!(got, want);
        assert_eq!(r.entries[13], big(30, 6000));
    }

    #[test]
    fn oversized_write_is_refused_and_changes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = RocksOptions {
            max_batch_bytes: BYTES_FLOOR,
            ..RocksOptions::default()
        };
        let s = RocksLogStore::open(dir.path(), opts).expect("open");
        let r = s.write(
            G,
            LogWrite {
                entries: vec![ent(1, 1), big(2, 5000)],
                hard_state: Some(HardState {
                    term: Term(3),
                    ..HardState::default()
                }),
                sync: true,
                ..LogWrite::default()
            },
        );
        assert!(matches!(r, Err(StorageError::Invalid(_))), "{r:?}");
        assert_eq!(s.bounds(G).ok(), Some(None));
        assert_eq!(s.hard_state(G).ok(), Some(HardState::default()));
        assert_eq!(s.stats().writes, 0);
    }

    #[test]
    fn indexes_at_u64_max_work() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = open(&dir);
        let max = LogIndex(u64::MAX);
        s.write(G, LogWrite::append(vec![ent(1, 1), ent(u64::MAX, 1)]))
            .expect("append");
        assert_eq!(s.bounds(G).ok(), Some(Some((LogIndex(1), max))));
        assert_eq!(s.entry(G, max).ok(), Some(Some(ent(u64::MAX, 1))));
        assert_eq!(s.entry(G, LogIndex(u64::MAX - 1)).ok(), Some(None));
        s.write(
            G,
            LogWrite {
                truncate_from: Some(max),
                sync: true,
                ..LogWrite::default()
            },
        )
        .expect("truncate at max");
        assert_eq!(s.bounds(G).ok(), Some(Some((LogIndex(1), LogIndex(1)))));
        s.write(G, LogWrite::append(vec![ent(u64::MAX, 2)]))
            .expect("append");
        s.write(
            G,
            LogWrite {
                snapshot: Some(SnapshotMeta {
                    last_log_id: LogId::new(2, u64::MAX),
                    membership: Membership::new([NodeId(1)]),
                }),
                sync: true,
                ..LogWrite::default()
            },
        )
        .expect("snapshot at max");
        assert_eq!(s.bounds(G).ok(), Some(None));
        // The next group is untouched by ranges ending at u64::MAX.
        s.write(GroupId(2), LogWrite::append(vec![ent(0, 1)]))
            .expect("append g2");
        s.write(
            G,
            LogWrite {
                purge_to: Some(max),
                sync: true,
                ..LogWrite::default()
            },
        )
        .expect("purge to max");
        assert_eq!(
            s.bounds(GroupId(2)).ok(),
            Some(Some((LogIndex(0), LogIndex(0))))
        );
    }

    #[test]
    fn calls_after_close_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = open(&dir);
        s.write(G, LogWrite::append(vec![ent(1, 1)]))
            .expect("append");
        s.close().expect("close");
        assert!(matches!(
            s.write(G, LogWrite::append(vec![ent(2, 1)])),
            Err(StorageError::Closed)
        ));
        assert!(matches!(s.sync(), Err(StorageError::Closed)));
        assert!(matches!(
            s.entries(G, LogIndex(1)..LogIndex(2)),
            Err(StorageError::Closed)
        ));
        assert!(matches!(s.bounds(G), Err(StorageError::Closed)));
        assert!(matches!(s.hard_state(G), Err(StorageError::Closed)));
        assert!(matches!(s.snapshot_meta(G), Err(StorageError::Closed)));
        assert!(matches!(s.recover(G), Err(StorageError::Closed)));
        s.close().expect("second close is a no-op");
        drop(s);
        let s = open(&dir);
        assert_eq!(s.entry(G, LogIndex(1)).ok().flatten(), Some(ent(1, 1)));
    }

    #[test]
    fn a_second_open_of_the_same_directory_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _s = open(&dir);
        let r = RocksLogStore::open(dir.path(), RocksOptions::default());
        assert!(matches!(r, Err(StorageError::Engine(_))), "{r:?}");
    }

    #[test]
    fn unknown_column_families_are_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut o = Options::default();
            o.create_if_missing(true);
            o.create_missing_column_families(true);
            let db = DB::open_cf(&o, dir.path(), ["future"]).expect("raw create");
            db.put_cf(db.cf_handle("future").expect("cf"), b"k", b"v")
                .expect("put");
        }
        let s = open(&dir);
        s.write(G, LogWrite::append(vec![ent(1, 1)]))
            .expect("append");
        drop(s);
        let names = DB::list_cf(&Options::default(), dir.path()).expect("list");
        for n in ["future", CF_LOG, CF_META, CF_SM] {
            assert!(names.iter().any(|x| x == n), "{n} missing from {names:?}");
        }
    }

    #[test]
    fn unsynced_writes_do_not_fsync_and_sync_does() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = open(&dir);
        for i in 1..=5 {
            s.write(
                G,
                LogWrite {
                    entries: vec![ent(i, 1)],
                    sync: false,
                    ..LogWrite::default()
                },
            )
            .expect("write");
        }
        let st = s.stats();
        assert_eq!((st.writes, st.batches, st.fsyncs), (5, 5, 0), "{st:?}");
        s.sync().expect("sync");
        let st = s.stats();
        assert_eq!((st.writes, st.batches, st.fsyncs), (5, 6, 1), "{st:?}");
        // An empty unsynced write is a no-op; an empty synced one is a sync.
        s.write(G, LogWrite::default()).expect("empty");
        assert_eq!(s.stats().batches, 6);
        s.write(
            G,
            LogWrite {
                sync: true,
                ..LogWrite::default()
            },
        )
        .expect("empty sync");
        assert_eq!(s.stats().fsyncs, 2);
    }

    /// Holds the writer, queues `n` synced single-entry writes from `n`
    /// threads (each to its own group), releases it, and returns the stats.
    fn queue_then_release(opts: RocksOptions, n: u64, payload_len: usize) -> RocksStats {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Arc::new(RocksLogStore::open_paused(dir.path(), opts).expect("open"));
        let handles: Vec<_> = (0..n)
            .map(|t| {
                let s = Arc::clone(&s);
                std::thread::spawn(move || {
                    s.write(GroupId(t), LogWrite::append(vec![big(1, payload_len)]))
                })
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(20);
        while s.stats().queued < n {
            assert!(Instant::now() < deadline, "writes never queued");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(s.stats().batches, 0, "writer ran while paused");
        s.shared.pause.set(false);
        for h in handles {
            h.join().expect("writer thread").expect("write");
        }
        for t in 0..n {
            assert_eq!(
                s.entry(GroupId(t), LogIndex(1)).ok().flatten(),
                Some(big(1, payload_len))
            );
        }
        s.stats()
    }

    #[test]
    fn queued_writes_share_one_batch_and_one_fsync() {
        let st = queue_then_release(RocksOptions::default(), 16, 256);
        assert_eq!((st.writes, st.batches, st.fsyncs), (16, 1, 1), "{st:?}");
        assert_eq!(st.queued, 0);
    }

    #[test]
    fn batches_respect_the_write_count_limit() {
        let opts = RocksOptions {
            max_batch_writes: 3,
            ..RocksOptions::default()
        };
        let st = queue_then_release(opts, 8, 256);
        assert_eq!((st.writes, st.batches), (8, 3), "{st:?}");
        // The sync thread may cover several written batches with one fsync.
        assert!((1..=3).contains(&st.fsyncs), "{st:?}");
    }

    /// A `WriteDone` that sends its outcome to the returned receiver.
    fn done_channel() -> (WriteDone, std::sync::mpsc::Receiver<StorageResult<()>>) {
        let (tx, rx) = std::sync::mpsc::channel();
        (
            Box::new(move |res| {
                let _ = tx.send(res);
            }),
            rx,
        )
    }

    #[test]
    fn queued_writes_are_answered_by_the_sync_thread_after_one_shared_fsync() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = RocksLogStore::open_paused(dir.path(), RocksOptions::default()).expect("open");
        let mut answers = Vec::new();
        for g in 0..8u64 {
            let (done, rx) = done_channel();
            let taken = s.write_queued(GroupId(g), LogWrite::append(vec![ent(1, 1)]), done);
            assert!(taken.is_ok(), "queue refused write {g}");
            answers.push(rx);
        }
        // Nothing is answered while the writer is held: the caller did not
        // block and no outcome is invented.
        for rx in &answers {
            assert!(rx.try_recv().is_err(), "answered before the write");
        }
        assert_eq!(s.stats().queued, 8);
        s.shared.pause.set(false);
        for rx in answers {
            let res = rx.recv_timeout(Duration::from_secs(20)).expect("answer");
            assert!(res.is_ok(), "{res:?}");
        }
        let st = s.stats();
        assert_eq!((st.writes, st.batches, st.fsyncs), (8, 1, 1), "{st:?}");
        for g in 0..8u64 {
            assert_eq!(
                s.entry(GroupId(g), LogIndex(1)).ok().flatten(),
                Some(ent(1, 1))
            );
        }
    }

    #[test]
    fn a_full_queue_gives_a_queued_write_back_untouched() {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = RocksOptions {
            queue_len: 2,
            ..RocksOptions::default()
        };
        let s = RocksLogStore::open_paused(dir.path(), opts).expect("open");
        let mut answers = Vec::new();
        for i in 1..=2u64 {
            let (done, rx) = done_channel();
            assert!(
                s.write_queued(G, LogWrite::append(vec![ent(i, 1)]), done)
                    .is_ok()
            );
            answers.push(rx);
        }
        let (done, rx) = done_channel();
        let third = LogWrite::append(vec![ent(3, 1)]);
        let Err(back) = s.write_queued(G, third.clone(), done) else {
            panic!("a full queue took the write");
        };
        assert_eq!(back.write, third);
        drop(back);
        assert!(rx.try_recv().is_err(), "a refused write was answered");
        s.shared.pause.set(false);
        for rx in answers {
            assert!(
                rx.recv_timeout(Duration::from_secs(20))
                    .expect("answer")
                    .is_ok()
            );
        }
        assert_eq!(
            s.bounds(G).expect("bounds"),
            Some((LogIndex(1), LogIndex(2)))
        );
    }

    #[test]
    fn queued_writes_report_bad_input_and_a_closed_store() {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = RocksOptions {
            max_batch_bytes: 4096,
            ..RocksOptions::default()
        };
        let s = RocksLogStore::open(dir.path(), opts).expect("open");
        let (done, rx) = done_channel();
        assert!(
            s.write_queued(G, LogWrite::append(vec![big(1, 8192)]), done)
                .is_ok()
        );
        let res = rx.recv_timeout(Duration::from_secs(20)).expect("answer");
        assert!(matches!(res, Err(StorageError::Invalid(_))), "{res:?}");
        assert_eq!(
            s.bounds(G).expect("bounds"),
            None,
            "an oversized write changed the log"
        );
        // An empty synced write is a sync; an empty unsynced one a no-op.
        let (done, rx) = done_channel();
        let sync_only = LogWrite {
            sync: true,
            ..LogWrite::default()
        };
        assert!(s.write_queued(G, sync_only, done).is_ok());
        assert!(
            rx.recv_timeout(Duration::from_secs(20))
                .expect("answer")
                .is_ok()
        );
        assert_eq!(s.stats().fsyncs, 1);
        s.close().expect("close");
        let (done, rx) = done_channel();
        assert!(
            s.write_queued(G, LogWrite::append(vec![ent(1, 1)]), done)
                .is_ok()
        );
        let res = rx.recv_timeout(Duration::from_secs(20)).expect("answer");
        assert!(matches!(res, Err(StorageError::Closed)), "{res:?}");
    }

    #[test]
    fn each_synced_write_is_answered_after_its_own_fsync() {
        // One caller: every synced write is alone in its batch, and its
        // answer comes only after the fsync that covers it was counted.
        let dir = tempfile::tempdir().expect("tempdir");
        let s = open(&dir);
        for i in 1..=20u64 {
            s.write(G, LogWrite::append(vec![ent(i, 1)]))
                .expect("write");
            let st = s.stats();
            assert_eq!((st.writes, st.fsyncs), (i, i), "{st:?}");
        }
    }

    #[test]
    fn close_answers_every_concurrent_writer() {
        // Writers keep appending while the store closes: each call returns
        // (Ok before the close, Closed after), none hangs, and everything
        // answered Ok is there after reopening.
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Arc::new(open(&dir));
        let handles: Vec<_> = (0..16u64)
            .map(|t| {
                let s = Arc::clone(&s);
                std::thread::spawn(move || {
                    let mut acked = 0u64;
                    // Bounded: at most 10,000 writes per thread.
                    for i in 1..=10_000u64 {
                        match s.write(GroupId(t), LogWrite::append(vec![ent(i, 1)])) {
                            Ok(()) => acked = i,
                            Err(StorageError::Closed) => break,
                            Err(e) => panic!("unexpected error: {e}"),
                        }
                    }
                    acked
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(50));
        s.close().expect("close");
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut acked = Vec::new();
        for h in handles {
            while !h.is_finished() {
                assert!(Instant::now() < deadline, "a writer hung after close");
                std::thread::sleep(Duration::from_millis(5));
            }
            acked.push(h.join().expect("writer thread"));
        }
        assert!(matches!(
            s.write(G, LogWrite::append(vec![ent(1, 1)])),
            Err(StorageError::Closed)
        ));
        drop(s);
        let s = open(&dir);
        for (t, n) in acked.into_iter().enumerate() {
            if n > 0 {
                assert_eq!(
                    s.bounds(GroupId(t as u64)).expect("bounds"),
                    Some((LogIndex(1), LogIndex(n)))
                );
            }
        }
    }

    #[test]
    fn batches_respect_the_byte_limit() {
        let opts = RocksOptions {
            max_batch_bytes: BYTES_FLOOR,
            ..RocksOptions::default()
        };
        // Each write is ~1.6 KiB with framing: two fit in 4 KiB, three don't.
        let st = queue_then_release(opts, 6, 1500);
        assert_eq!((st.writes, st.batches), (6, 3), "{st:?}");
    }
}
