//! Driver obligations, proven with a scripted `Consensus` whose Readys the
//! test writes, a log store whose writes the test holds back, and a state
//! machine and transport that record what happened in one shared event log.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use super::*;
use crate::consensus::{MembershipChange, Ready, Role};
use crate::state_machine::{Applied, ChunkSource, SnapshotSource, StateMachineError};
use crate::storage::{MemLogStore, StorageError, StorageResult};
use crate::types::{LogId, Membership, SnapshotMeta, Term};

const ME: NodeId = NodeId(1);
const PEER: NodeId = NodeId(2);

/// What happened, in order, across store, transport, state machine and
/// protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Ev {
    Sent(u32),
    WriteDone(Option<LogIndex>),
    Apply(LogIndex),
    Advance(u64),
}

type Events = Arc<Mutex<Vec<Ev>>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn pos(events: &[Ev], ev: &Ev) -> usize {
    events
        .iter()
        .position(|e| e == ev)
        .unwrap_or_else(|| panic!("{ev:?} missing from {events:?}"))
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct TestMsg(u32);

#[derive(Default)]
struct Script {
    /// Readys the test queued; numbered when handed out.
    queued: VecDeque<Ready<TestMsg>>,
    awaiting_advance: Option<u64>,
    next_number: u64,
    next_index: u64,
    propose_err: Option<ProposeError>,
    proposals: Vec<(LogId, Bytes)>,
    reads: Vec<ReadCtx>,
    steps: Vec<(NodeId, TestMsg)>,
    ticks: Vec<u64>,
    advanced: Vec<u64>,
    applied: Vec<LogIndex>,
}

/// A `Consensus` that does what the test says.
struct Scripted {
    id: NodeId,
    script: Arc<Mutex<Script>>,
    events: Events,
}

impl Consensus for Scripted {
    type Message = TestMsg;
    fn id(&self) -> NodeId {
        self.id
    }
    fn tick(&mut self, now: u64) {
        lock(&self.script).ticks.push(now);
    }
    fn step(&mut self, from: NodeId, msg: TestMsg) {
        lock(&self.script).steps.push((from, msg));
    }
    fn propose(&mut self, data: Bytes) -> Result<LogId, ProposeError> {
        let mut s = lock(&self.script);
        if let Some(e) = s.propose_err.clone() {
            return Err(e);
        }
        s.next_index += 1;
        let id = LogId::new(1, s.next_index);
        s.proposals.push((id, data));
        Ok(id)
    }
    fn read_index(&mut self, ctx: ReadCtx) -> Result<(), ProposeError> {
        lock(&self.script).reads.push(ctx);
        Ok(())
    }
    fn change_membership(&mut self, _: MembershipChange) -> Result<LogId, ProposeError> {
        Err(ProposeError::Invalid("scripted".into()))
    }
    fn transfer_leader(&mut self, _: NodeId) -> Result<(), ProposeError> {
        Err(ProposeError::Invalid("scripted".into()))
    }
    fn has_ready(&self) -> bool {
        let s = lock(&self.script);
        s.awaiting_advance.is_none() && !s.queued.is_empty()
    }
    fn ready(&mut self) -> Ready<TestMsg> {
        let mut s = lock(&self.script);
        s.next_number += 1;
        let number = s.next_number;
        s.awaiting_advance = Some(number);
        let mut rd = s.queued.pop_front().unwrap_or_else(|| Ready::empty(0));
        rd.number = number;
        rd
    }
    fn advance(&mut self, number: u64) {
        let mut s = lock(&self.script);
        assert_eq!(
            s.awaiting_advance,
            Some(number),
            "advance of the Ready in flight"
        );
        s.awaiting_advance = None;
        s.advanced.push(number);
        lock(&self.events).push(Ev::Advance(number));
    }
    fn applied(&mut self, index: LogIndex) {
        lock(&self.script).applied.push(index);
    }
    fn snapshot_built(&mut self, _: SnapshotMeta) {}
    fn status(&self) -> Status {
        Status {
            id: self.id,
            role: Role::Leader,
            term: Term(1),
            leader: Some(self.id),
            commit: LogIndex(0),
            last_index: LogIndex(lock(&self.script).next_index),
            membership: Membership::new([self.id]),
        }
    }
}

/// Writes wait while the gate is closed.
struct Gate {
    open: Mutex<bool>,
    cv: Condvar,
}

/// A `MemLogStore` whose writes the test can hold back or fail.
struct GatedStore {
    inner: MemLogStore,
    gate: Gate,
    fail: Mutex<bool>,
    events: Events,
    writes_started: watch::Sender<u64>,
}

impl GatedStore {
    fn set_open(&self, open: bool) {
        *lock(&self.gate.open) = open;
        self.gate.cv.notify_all();
    }
}

impl LogStore for GatedStore {
    fn write(&self, group: GroupId, write: LogWrite) -> StorageResult<()> {
        self.writes_started.send_modify(|n| *n += 1);
        let guard = lock(&self.gate.open);
        // Bounded: a test that forgets to open the gate fails, never hangs.
        let (guard, timeout) = self
            .gate
            .cv
            .wait_timeout_while(guard, Duration::from_secs(30), |open| !*open)
            .unwrap_or_else(|p| p.into_inner());
        drop(guard);
        if timeout.timed_out() {
            return Err(StorageError::Engine("test gate never opened".into()));
        }
        if *lock(&self.fail) {
            return Err(StorageError::Engine("injected failure".into()));
        }
        let last = write.entries.last().map(|e| e.index());
        self.inner.write(group, write)?;
        lock(&self.events).push(Ev::WriteDone(last));
        Ok(())
    }
    fn sync(&self) -> StorageResult<()> {
        self.inner.sync()
    }
    fn entries(&self, g: GroupId, r: std::ops::Range<LogIndex>) -> StorageResult<Vec<Entry>> {
        self.inner.entries(g, r)
    }
    fn bounds(&self, g: GroupId) -> StorageResult<Option<(LogIndex, LogIndex)>> {
        self.inner.bounds(g)
    }
    fn hard_state(&self, g: GroupId) -> StorageResult<crate::types::HardState> {
        self.inner.hard_state(g)
    }
    fn snapshot_meta(&self, g: GroupId) -> StorageResult<Option<SnapshotMeta>> {
        self.inner.snapshot_meta(g)
    }
}

/// Records every applied entry; answers `ok:<data>`.
struct RecSm {
    last: LogId,
    applied: Vec<(LogIndex, Option<Bytes>)>,
    events: Events,
    fail_at: Option<LogIndex>,
    /// Every flush fails (a storage write error).
    fail_flush: bool,
}

impl StateMachine for RecSm {
    fn flush(&mut self) -> Result<(), StateMachineError> {
        if self.fail_flush {
            return Err(StateMachineError::Storage("injected flush failure".into()));
        }
        Ok(())
    }

    fn apply(&mut self, log_id: LogId, entry: Applied<'_>) -> Result<Bytes, StateMachineError> {
        if Some(log_id.index) == self.fail_at {
            return Err(StateMachineError::Storage("injected".into()));
        }
        if log_id.index <= self.last.index {
            return Ok(Bytes::new());
        }
        self.last = log_id;
        lock(&self.events).push(Ev::Apply(log_id.index));
        let data = match entry {
            Applied::Command(d) => Some(Bytes::copy_from_slice(d)),
            _ => None,
        };
        self.applied.push((log_id.index, data.clone()));
        let mut out = b"ok:".to_vec();
        out.extend_from_slice(data.as_deref().unwrap_or_default());
        Ok(out.into())
    }
    fn last_applied(&self) -> LogId {
        self.last
    }
    fn snapshot(&mut self) -> Result<Box<dyn SnapshotSource>, StateMachineError> {
        Err(StateMachineError::Storage(
            "no snapshots in this test".into(),
        ))
    }
    fn install_snapshot(
        &mut self,
        _: &SnapshotMeta,
        _: &mut dyn ChunkSource,
    ) -> Result<(), StateMachineError> {
        Err(StateMachineError::Storage(
            "no snapshots in this test".into(),
        ))
    }
}

/// Records sent protocol messages (decoded) as events.
struct RecTransport {
    events: Events,
    frames: Mutex<Vec<(NodeId, Frame)>>,
}

impl Transport for RecTransport {
    fn send(&self, to: NodeId, frame: Frame) {
        if let Ok(TestMsg(n)) = codec::decode::<TestMsg>(&frame.payload) {
            lock(&self.events).push(Ev::Sent(n));
        }
        lock(&self.frames).push((to, frame));
    }
}

struct Rig {
    replica: Option<Replica<RecSm>>,
    h: ReplicaHandle<RecSm>,
    script: Arc<Mutex<Script>>,
    store: Arc<GatedStore>,
    events: Events,
    inbound: mpsc::Sender<Inbound>,
    writes_started: watch::Receiver<u64>,
}

fn config() -> ReplicaConfig {
    ReplicaConfig {
        group: GroupId(7),
        seq_base: Some(100),
        ..ReplicaConfig::default()
    }
}

impl Rig {
    fn new(config: ReplicaConfig) -> Self {
        Self::with_sm(config, None)
    }

    fn with_sm(config: ReplicaConfig, fail_at: Option<LogIndex>) -> Self {
        Self::with_sm_flush(config, fail_at, false)
    }

    fn with_sm_flush(config: ReplicaConfig, fail_at: Option<LogIndex>, fail_flush: bool) -> Self {
        let events: Events = Arc::default();
        let script = Arc::new(Mutex::new(Script::default()));
        let (ws_tx, ws_rx) = watch::channel(0);
        let store = Arc::new(GatedStore {
            inner: MemLogStore::new(),
            gate: Gate {
                open: Mutex::new(true),
                cv: Condvar::new(),
            },
            fail: Mutex::new(false),
            events: Arc::clone(&events),
            writes_started: ws_tx,
        });
        let transport = Arc::new(RecTransport {
            events: Arc::clone(&events),
            frames: Mutex::default(),
        });
        let sm = RecSm {
            last: LogId::default(),
            applied: Vec::new(),
            events: Arc::clone(&events),
            fail_at,
            fail_flush,
        };
        let consensus = Scripted {
            id: ME,
            script: Arc::clone(&script),
            events: Arc::clone(&events),
        };
        let (in_tx, in_rx) = mpsc::channel(64);
        let replica = Replica::start(
            config,
            consensus,
            Arc::clone(&store) as Arc<dyn LogStore>,
            sm,
            transport,
            in_rx,
        )
        .unwrap();
        let h = replica.handle();
        Self {
            replica: Some(replica),
            h,
            script,
            store,
            events,
            inbound: in_tx,
            writes_started: ws_rx,
        }
    }

    fn events(&self) -> Vec<Ev> {
        lock(&self.events).clone()
    }

    /// Waits (bounded, without advancing time) until `f` holds.
    async fn until(&self, what: &str, mut f: impl FnMut(&Script) -> bool) {
        for i in 0..10_000 {
            if f(&lock(&self.script)) {
                return;
            }
            pause(i).await;
        }
        panic!("timed out waiting for: {what}");
    }

    /// Lets the driver notice newly queued Readys.
    async fn kick(&self) {
        self.h.status().await.unwrap();
    }

    fn push(&self, rd: Ready<TestMsg>) {
        lock(&self.script).queued.push_back(rd);
    }

    fn proposal(&self, i: usize) -> Entry {
        let (log_id, data) = lock(&self.script).proposals[i].clone();
        Entry {
            log_id,
            payload: EntryPayload::Normal(data),
        }
    }

    async fn writes_started(&mut self, n: u64) {
        let w = self.writes_started.wait_for(|k| *k >= n);
        tokio::time::timeout(Duration::from_secs(30), w)
            .await
            .expect("write never started")
            .unwrap();
    }

    async fn shutdown(&mut self) -> Result<RecSm, ReplicaError> {
        self.replica.take().unwrap().shutdown().await
    }
}

fn out(n: u32) -> Outbound<TestMsg> {
    Outbound {
        to: PEER,
        msg: TestMsg(n),
    }
}

fn ready() -> Ready<TestMsg> {
    Ready::empty(0)
}

fn spawn_propose(
    h: &ReplicaHandle<RecSm>,
    data: &'static [u8],
) -> tokio::task::JoinHandle<Result<Bytes, ReplicaError>> {
    let h = h.clone();
    tokio::spawn(async move { h.propose(Bytes::from_static(data)).await })
}

/// One step of a bounded wait: mostly yields; every 100th step sleeps 1 ms
/// of (paused) time, which also waits for outstanding blocking-pool work
/// (tokio does not auto-advance paused time while such work runs).
async fn pause(i: u32) {
    if i % 100 == 99 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    } else {
        tokio::task::yield_now().await;
    }
}

async fn settle() {
    for _ in 0..200 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn proposal_is_answered_only_after_persist_and_apply() {
    let mut t = Rig::new(config());
    t.store.set_open(false);
    let p = spawn_propose(&t.h, b"x");
    t.until("proposal", |s| s.proposals.len() == 1).await;
    let e = t.proposal(0);
    t.push(Ready {
        messages: vec![out(1)],
        entries: vec![e.clone()],
        persisted_messages: vec![out(2)],
        committed: vec![e.clone()],
        ..ready()
    });
    t.kick().await;
    t.writes_started(1).await;
    settle().await;
    assert!(!p.is_finished(), "answered before the write was durable");
    assert_eq!(
        t.events(),
        vec![Ev::Sent(1)],
        "messages go out while persisting; nothing else may"
    );
    assert!(lock(&t.script).advanced.is_empty());
    t.store.set_open(true);
    let resp = p.await.unwrap().unwrap();
    assert_eq!(resp, Bytes::from_static(b"ok:x"));
    let ev = t.events();
    let write = pos(&ev, &Ev::WriteDone(Some(LogIndex(1))));
    assert!(pos(&ev, &Ev::Sent(1)) < write);
    assert!(
        write < pos(&ev, &Ev::Sent(2)),
        "persisted message after fsync"
    );
    assert!(
        write < pos(&ev, &Ev::Apply(LogIndex(1))),
        "apply after fsync"
    );
    assert!(write < pos(&ev, &Ev::Advance(1)));
    let sm = t.shutdown().await.unwrap();
    assert_eq!(
        sm.applied,
        vec![(LogIndex(1), Some(Bytes::from_static(b"x")))]
    );
}

#[tokio::test(start_paused = true)]
async fn committed_entry_waits_for_the_ready_it_came_with() {
    // The entry is persisted by Ready 1 but committed only in Ready 2: no
    // answer before Ready 2's apply, even though the write is long done.
    let mut t = Rig::new(config());
    let p = spawn_propose(&t.h, b"y");
    t.until("proposal", |s| s.proposals.len() == 1).await;
    let e = t.proposal(0);
    t.push(Ready {
        entries: vec![e.clone()],
        ..ready()
    });
    t.kick().await;
    t.until("advance 1", |s| s.advanced == [1]).await;
    settle().await;
    assert!(!p.is_finished(), "persisted but not committed");
    t.push(Ready {
        committed: vec![e],
        ..ready()
    });
    t.kick().await;
    assert_eq!(p.await.unwrap().unwrap(), Bytes::from_static(b"ok:y"));
    let st = t.h.status().await.unwrap();
    assert_eq!(st.stats.persists, 1, "a commit-only Ready needs no fsync");
    assert_eq!(st.stats.proposals_committed, 1);
    t.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn applies_in_order_across_many_readys() {
    let mut t = Rig::new(config());
    let data: Vec<&'static [u8]> = vec![b"a", b"b", b"c", b"d", b"e", b"f", b"g", b"h"];
    let mut waiters = Vec::new();
    for d in &data {
        waiters.push(spawn_propose(&t.h, d));
    }
    t.until("8 proposals", |s| s.proposals.len() == 8).await;
    // The script hands out entries sorted by index; the spawn order need not
    // match the index order, so compare by proposal, not by position.
    let entries: Vec<Entry> = (0..8).map(|i| t.proposal(i)).collect();
    // Ready k persists entries 2k+1..2k+2 and commits the previous pair.
    let mut prev: Vec<Entry> = Vec::new();
    for pair in entries.chunks(2) {
        t.push(Ready {
            entries: pair.to_vec(),
            committed: std::mem::replace(&mut prev, pair.to_vec()),
            ..ready()
        });
    }
    t.push(Ready {
        committed: prev,
        ..ready()
    });
    t.kick().await;
    let mut answers = Vec::new();
    for w in waiters {
        answers.push(w.await.unwrap().unwrap());
    }
    let mut expected: Vec<Bytes> = data
        .iter()
        .map(|d| Bytes::from([b"ok:".as_slice(), d].concat()))
        .collect();
    answers.sort();
    expected.sort();
    assert_eq!(answers, expected, "each proposer got its own response");
    let sm = t.shutdown().await.unwrap();
    let order: Vec<u64> = sm.applied.iter().map(|(i, _)| i.0).collect();
    assert_eq!(order, (1..=8).collect::<Vec<_>>());
    let applied_data: Vec<Bytes> = sm.applied.iter().filter_map(|(_, d)| d.clone()).collect();
    let proposed: Vec<Bytes> = entries
        .iter()
        .map(|e| match &e.payload {
            EntryPayload::Normal(raw) => TaggedCommand::decode(raw).unwrap().data,
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(
        applied_data, proposed,
        "the state machine sees untagged data"
    );
}

#[tokio::test(start_paused = true)]
async fn every_proposer_is_answered_exactly_once() {
    let mut t = Rig::new(config());
    let a = spawn_propose(&t.h, b"a");
    t.until("a", |s| s.proposals.len() == 1).await;
    let b = spawn_propose(&t.h, b"b");
    t.until("b", |s| s.proposals.len() == 2).await;
    let c = spawn_propose(&t.h, b"c");
    t.until("c", |s| s.proposals.len() == 3).await;
    let ea = t.proposal(0);
    let eb = t.proposal(1);
    // Another proposer's entry takes b's index.
    let foreign = Entry {
        log_id: LogId::new(2, eb.index().0),
        payload: EntryPayload::Normal(
            TaggedCommand {
                proposer: PEER,
                seq: 100 + 1,
                data: Bytes::from_static(b"foreign"),
            }
            .encode(),
        ),
    };
    t.push(Ready {
        entries: vec![ea.clone(), foreign.clone()],
        committed: vec![ea, foreign],
        ..ready()
    });
    t.kick().await;
    assert_eq!(a.await.unwrap(), Ok(Bytes::from_static(b"ok:a")));
    assert_eq!(b.await.unwrap(), Err(ReplicaError::Dropped));
    settle().await;
    assert!(!c.is_finished(), "c is neither committed nor dropped yet");
    let st = t.h.status().await.unwrap();
    assert_eq!(
        (st.stats.proposals_committed, st.stats.proposals_dropped),
        (1, 1)
    );
    let sm = t.shutdown().await.unwrap();
    assert_eq!(c.await.unwrap(), Err(ReplicaError::Shutdown));
    assert_eq!(
        sm.applied[1],
        (LogIndex(2), Some(Bytes::from_static(b"foreign")))
    );
    // After shutdown the handle answers at once.
    assert_eq!(
        t.h.propose(Bytes::from_static(b"late")).await,
        Err(ReplicaError::Shutdown)
    );
}

#[tokio::test(start_paused = true)]
async fn dropping_the_replica_answers_every_waiter() {
    let mut t = Rig::new(config());
    let p = spawn_propose(&t.h, b"p");
    t.until("proposal", |s| s.proposals.len() == 1).await;
    let h = t.h.clone();
    let r = tokio::spawn(async move { h.read_index().await });
    t.until("read", |s| s.reads.len() == 1).await;
    drop(t.replica.take());
    assert_eq!(p.await.unwrap(), Err(ReplicaError::Shutdown));
    assert_eq!(r.await.unwrap(), Err(ReplicaError::Shutdown));
    assert_eq!(t.h.status().await, Err(ReplicaError::Shutdown));
}

#[tokio::test(start_paused = true)]
async fn a_reused_index_drops_the_older_proposal() {
    let mut t = Rig::new(config());
    let a = spawn_propose(&t.h, b"a");
    t.until("a", |s| s.proposals.len() == 1).await;
    // The protocol lost and regained leadership and truncated index 1: the
    // next proposal gets index 1 again, so `a` can no longer commit there.
    lock(&t.script).next_index = 0;
    let b = spawn_propose(&t.h, b"b");
    t.until("b", |s| s.proposals.len() == 2).await;
    assert_eq!(a.await.unwrap(), Err(ReplicaError::Dropped));
    let eb = t.proposal(1);
    assert_eq!(eb.index(), LogIndex(1));
    t.push(Ready {
        entries: vec![eb.clone()],
        committed: vec![eb],
        ..ready()
    });
    t.kick().await;
    assert_eq!(b.await.unwrap(), Ok(Bytes::from_static(b"ok:b")));
    let st = t.h.status().await.unwrap();
    assert_eq!(
        (st.stats.proposals_committed, st.stats.proposals_dropped),
        (1, 1)
    );
    t.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn untagged_entries_are_applied_raw() {
    let mut t = Rig::new(config());
    let raw = Entry {
        log_id: LogId::new(1, 1),
        payload: EntryPayload::Normal(Bytes::from_static(b"not a tagged command")),
    };
    t.push(Ready {
        entries: vec![raw.clone()],
        committed: vec![raw],
        ..ready()
    });
    t.kick().await;
    t.until("advance", |s| s.advanced.len() == 1).await;
    let st = t.h.status().await.unwrap();
    assert_eq!(st.stats.untagged_entries, 1);
    let sm = t.shutdown().await.unwrap();
    assert_eq!(
        sm.applied,
        vec![(
            LogIndex(1),
            Some(Bytes::from_static(b"not a tagged command"))
        )]
    );
}

#[tokio::test(start_paused = true)]
async fn busy_when_full_and_slots_come_back() {
    let mut cfg = config();
    cfg.max_pending_proposals = 2;
    cfg.max_inflight_reads = 1;
    cfg.max_proposal_bytes = 8;
    let mut t = Rig::new(cfg.clone());
    let a = spawn_propose(&t.h, b"a");
    let b = spawn_propose(&t.h, b"b");
    t.until("2 proposals", |s| s.proposals.len() == 2).await;
    assert!(matches!(
        t.h.propose(Bytes::from_static(b"c")).await,
        Err(ReplicaError::Busy(_))
    ));
    assert_eq!(lock(&t.script).proposals.len(), 2, "Busy proposes nothing");
    assert_eq!(
        t.h.propose(Bytes::from_static(b"123456789")).await,
        Err(ReplicaError::TooLarge {
            size_bytes: 9,
            max_bytes: 8
        })
    );
    let h = t.h.clone();
    let r = tokio::spawn(async move { h.read_index().await });
    t.until("read", |s| s.reads.len() == 1).await;
    assert!(matches!(t.h.read_index().await, Err(ReplicaError::Busy(_))));
    // Answering `a` frees its slot.
    let ea = t.proposal(0);
    t.push(Ready {
        entries: vec![ea.clone()],
        committed: vec![ea],
        ..ready()
    });
    t.kick().await;
    a.await.unwrap().unwrap();
    let c = spawn_propose(&t.h, b"c");
    t.until("c accepted", |s| s.proposals.len() == 3).await;
    // A caller that gives up frees its slot within prune_interval_ticks.
    b.abort();
    let _ = b.await;
    assert!(matches!(
        t.h.propose(Bytes::from_static(b"d")).await,
        Err(ReplicaError::Busy(_))
    ));
    tokio::time::sleep(Duration::from_millis(
        cfg.tick_interval_ms * u64::from(cfg.prune_interval_ticks) * 2,
    ))
    .await;
    let d = spawn_propose(&t.h, b"d");
    t.until("d accepted", |s| s.proposals.len() == 4).await;
    assert!(t.h.status().await.unwrap().stats.waiters_abandoned >= 1);
    t.shutdown().await.unwrap();
    assert_eq!(c.await.unwrap(), Err(ReplicaError::Shutdown));
    assert_eq!(d.await.unwrap(), Err(ReplicaError::Shutdown));
    assert_eq!(r.await.unwrap(), Err(ReplicaError::Shutdown));
}

#[tokio::test(start_paused = true)]
async fn undecodable_and_misrouted_frames_are_counted_and_ignored() {
    let mut t = Rig::new(config());
    let frame = |group, kind, payload: Vec<u8>| Inbound {
        from: PEER,
        frame: Frame {
            group: GroupId(group),
            kind,
            payload: payload.into(),
        },
    };
    let good = codec::encode(&TestMsg(7));
    let mut corrupt = good.clone();
    corrupt[1] ^= 0xff;
    for inb in [
        frame(7, FrameKind::Protocol, b"garbage".to_vec()),
        frame(7, FrameKind::Protocol, corrupt),
        frame(7, FrameKind::Protocol, Vec::new()),
        frame(8, FrameKind::Protocol, good.clone()),
        frame(7, FrameKind::Snapshot, vec![1, 2, 3]),
        frame(7, FrameKind::Protocol, good),
    ] {
        t.inbound.send(inb).await.unwrap();
    }
    t.until("one step", |s| !s.steps.is_empty()).await;
    let st = t.h.status().await.unwrap();
    assert_eq!(st.stats.frames_received, 6);
    assert_eq!(st.stats.frames_undecodable, 3);
    assert_eq!(st.stats.frames_wrong_group, 1);
    assert_eq!(st.stats.snapshot_frames_rejected, 1);
    assert_eq!(lock(&t.script).steps, vec![(PEER, TestMsg(7))]);
    t.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn read_index_resolves_once_applied() {
    let mut t = Rig::new(config());
    let p = spawn_propose(&t.h, b"w");
    t.until("proposal", |s| s.proposals.len() == 1).await;
    let h = t.h.clone();
    let r = tokio::spawn(async move { h.linearizable_query(|sm: &RecSm| sm.applied.len()).await });
    t.until("read", |s| s.reads.len() == 1).await;
    let ctx = lock(&t.script).reads[0];
    let e = t.proposal(0);
    t.push(Ready {
        entries: vec![e.clone()],
        reads: vec![ReadState {
            ctx,
            index: LogIndex(1),
        }],
        ..ready()
    });
    t.kick().await;
    t.until("advance", |s| s.advanced.len() == 1).await;
    settle().await;
    assert!(!r.is_finished(), "index 1 is not applied yet");
    t.push(Ready {
        committed: vec![e],
        ..ready()
    });
    t.kick().await;
    assert_eq!(r.await.unwrap(), Ok(1), "the read sees the write");
    p.await.unwrap().unwrap();
    assert_eq!(t.h.status().await.unwrap().stats.reads_served, 1);
    t.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn refusals_are_immediate() {
    let mut t = Rig::new(config());
    lock(&t.script).propose_err = Some(ProposeError::NotLeader {
        leader: Some(NodeId(3)),
    });
    assert_eq!(
        t.h.propose(Bytes::from_static(b"x")).await,
        Err(ReplicaError::NotLeader {
            leader: Some(NodeId(3))
        })
    );
    lock(&t.script).propose_err = Some(ProposeError::Overloaded("full".into()));
    assert!(matches!(
        t.h.propose(Bytes::from_static(b"x")).await,
        Err(ReplicaError::Busy(_))
    ));
    lock(&t.script).propose_err = Some(ProposeError::Invalid("no".into()));
    assert!(matches!(
        t.h.propose(Bytes::from_static(b"x")).await,
        Err(ReplicaError::Rejected(_))
    ));
    t.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn shutdown_finishes_the_write_in_flight() {
    let mut t = Rig::new(config());
    t.store.set_open(false);
    let p = spawn_propose(&t.h, b"z");
    t.until("proposal", |s| s.proposals.len() == 1).await;
    let e = t.proposal(0);
    t.push(Ready {
        entries: vec![e.clone()],
        committed: vec![e],
        persisted_messages: vec![out(9)],
        ..ready()
    });
    t.kick().await;
    t.writes_started(1).await;
    let replica = t.replica.take().unwrap();
    let stop = tokio::spawn(replica.shutdown());
    settle().await;
    assert!(
        !stop.is_finished(),
        "shutdown waits for the write in flight"
    );
    t.store.set_open(true);
    let sm = stop.await.unwrap().unwrap();
    assert_eq!(p.await.unwrap(), Ok(Bytes::from_static(b"ok:z")));
    assert_eq!(sm.applied.len(), 1);
    assert!(t.events().contains(&Ev::Sent(9)));
    assert_eq!(lock(&t.script).advanced, vec![1]);
}

#[tokio::test(start_paused = true)]
async fn failed_write_stops_the_replica_and_acknowledges_nothing() {
    let mut t = Rig::new(config());
    *lock(&t.store.fail) = true;
    let p = spawn_propose(&t.h, b"x");
    t.until("proposal", |s| s.proposals.len() == 1).await;
    let e = t.proposal(0);
    t.push(Ready {
        entries: vec![e.clone()],
        committed: vec![e],
        persisted_messages: vec![out(5)],
        ..ready()
    });
    t.kick().await;
    assert!(matches!(p.await.unwrap(), Err(ReplicaError::Storage(_))));
    assert!(!t.events().contains(&Ev::Sent(5)), "no persisted message");
    assert!(lock(&t.script).advanced.is_empty(), "no advance");
    assert!(matches!(t.shutdown().await, Err(ReplicaError::Storage(_))));
}

/// Proposes `a` and `b` and commits both in one `Ready` (one apply batch).
async fn commit_two_in_one_batch(
    t: &mut Rig,
) -> (
    tokio::task::JoinHandle<Result<Bytes, ReplicaError>>,
    tokio::task::JoinHandle<Result<Bytes, ReplicaError>>,
) {
    let a = spawn_propose(&t.h, b"a");
    t.until("a", |s| s.proposals.len() == 1).await;
    let b = spawn_propose(&t.h, b"b");
    t.until("b", |s| s.proposals.len() == 2).await;
    let (ea, eb) = (t.proposal(0), t.proposal(1));
    t.push(Ready {
        entries: vec![ea.clone(), eb.clone()],
        committed: vec![ea, eb],
        ..ready()
    });
    t.kick().await;
    (a, b)
}

#[tokio::test(start_paused = true)]
async fn failed_apply_stops_the_replica() {
    let mut t = Rig::with_sm(config(), Some(LogIndex(2)));
    let (a, b) = commit_two_in_one_batch(&mut t).await;
    assert_eq!(a.await.unwrap(), Ok(Bytes::from_static(b"ok:a")));
    assert!(matches!(
        b.await.unwrap(),
        Err(ReplicaError::StateMachine(_))
    ));
    assert!(matches!(
        t.shutdown().await,
        Err(ReplicaError::StateMachine(_))
    ));
}

/// The state machine's flush makes a batch durable: no proposer hears
/// success before it, and a failed flush fails the whole batch.
#[tokio::test(start_paused = true)]
async fn failed_flush_fails_the_batch_and_stops_the_replica() {
    let mut t = Rig::with_sm_flush(config(), None, true);
    let (a, b) = commit_two_in_one_batch(&mut t).await;
    for p in [a, b] {
        assert!(matches!(
            p.await.unwrap(),
            Err(ReplicaError::StateMachine(_))
        ));
    }
    assert!(matches!(
        t.shutdown().await,
        Err(ReplicaError::StateMachine(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn ticks_carry_monotonic_ms_since_start() {
    let mut t = Rig::new(config());
    tokio::time::sleep(Duration::from_millis(105)).await;
    t.kick().await;
    let ticks = lock(&t.script).ticks.clone();
    assert!(ticks.len() >= 10, "{ticks:?}");
    assert!(ticks.windows(2).all(|w| w[0] < w[1]), "{ticks:?}");
    assert!(*ticks.last().unwrap_or(&0) >= 100);
    t.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn installing_an_unstaged_snapshot_stops_instead_of_diverging() {
    let mut t = Rig::new(config());
    t.push(Ready {
        snapshot: Some(SnapshotMeta::default()),
        ..ready()
    });
    t.kick().await;
    assert!(matches!(t.shutdown().await, Err(ReplicaError::Protocol(_))));
}

#[test]
fn config_validation() {
    assert!(ReplicaConfig::default().validate().is_ok());
    for bad in [
        ReplicaConfig {
            tick_interval_ms: 0,
            ..ReplicaConfig::default()
        },
        ReplicaConfig {
            max_pending_proposals: 0,
            ..ReplicaConfig::default()
        },
        ReplicaConfig {
            max_inflight_reads: 0,
            ..ReplicaConfig::default()
        },
        ReplicaConfig {
            max_proposal_bytes: 0,
            ..ReplicaConfig::default()
        },
        ReplicaConfig {
            prune_interval_ticks: 0,
            ..ReplicaConfig::default()
        },
    ] {
        assert!(matches!(bad.validate(), Err(ReplicaError::Config(_))));
    }
}

#[test]
fn start_outside_a_runtime_is_an_error() {
    let (_tx, rx) = mpsc::channel(1);
    let res = Replica::start(
        config(),
        crate::solo::Solo::new(
            crate::solo::SoloConfig::new(ME),
            crate::consensus::Recovered::default(),
        )
        .unwrap(),
        Arc::new(MemLogStore::new()),
        crate::kv::MemKv::default(),
        Arc::new(RecTransport {
            events: Arc::default(),
            frames: Mutex::default(),
        }),
        rx,
    );
    assert!(matches!(res, Err(ReplicaError::Config(_))));
}

#[tokio::test(start_paused = true)]
async fn messages_cross_a_mem_network_between_two_drivers() {
    use crate::transport::{MemNetwork, MemNetworkConfig};
    let net = MemNetwork::new(MemNetworkConfig::default()).unwrap();
    let mut nodes = Vec::new();
    for id in [ME, PEER] {
        let (transport, rx) = net.join(id).unwrap();
        let script = Arc::new(Mutex::new(Script::default()));
        let consensus = Scripted {
            id,
            script: Arc::clone(&script),
            events: Arc::default(),
        };
        let sm = RecSm {
            last: LogId::default(),
            applied: Vec::new(),
            events: Arc::default(),
            fail_at: None,
            fail_flush: false,
        };
        let r = Replica::start(
            config(),
            consensus,
            Arc::new(MemLogStore::new()),
            sm,
            Arc::new(transport),
            rx,
        )
        .unwrap();
        nodes.push((r, script));
    }
    lock(&nodes[0].1).queued.push_back(Ready {
        messages: vec![out(41)],
        persisted_messages: vec![out(42)],
        hard_state: Some(crate::types::HardState::default()),
        ..ready()
    });
    nodes[0].0.handle().status().await.unwrap();
    // The persisted message leaves only after the log store's write, which
    // may run on another thread: wait for it by the wall clock (bounded),
    // not by a count of scheduler yields.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while lock(&nodes[1].1).steps.len() < 2 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    assert_eq!(
        lock(&nodes[1].1).steps,
        vec![(ME, TestMsg(41)), (ME, TestMsg(42))]
    );
    net.isolate(PEER);
    lock(&nodes[0].1).queued.push_back(Ready {
        messages: vec![out(43)],
        ..ready()
    });
    nodes[0].0.handle().status().await.unwrap();
    nodes[0].0.handle().status().await.unwrap();
    assert_eq!(net.stats(ME).dropped_blocked, 1);
    for (r, _) in nodes {
        r.shutdown().await.unwrap();
    }
}

mod with_solo {
    use super::*;
    use crate::kv::{KvCommand, KvResponse, MemKv};
    use crate::solo::{Solo, SoloConfig};
    use crate::transport::{MemNetwork, MemNetworkConfig};

    fn start(store: Arc<dyn LogStore>, net: &MemNetwork) -> Replica<MemKv> {
        let recovered = store.recover(GroupId(3)).unwrap();
        let solo = Solo::new(SoloConfig::new(ME), recovered).unwrap();
        net.leave(ME);
        let (transport, rx) = net.join(ME).unwrap();
        let cfg = ReplicaConfig {
            group: GroupId(3),
            ..ReplicaConfig::default()
        };
        Replica::start(cfg, solo, store, MemKv::default(), Arc::new(transport), rx).unwrap()
    }

    /// `clients` tasks each put `per_client` new keys `c<client>-<i>` one
    /// after another; every put must be answered as a fresh write.
    async fn put_concurrently(replica: &Replica<MemKv>, clients: usize, per_client: usize) {
        let mut tasks = Vec::new();
        for c in 0..clients {
            let h = replica.handle();
            tasks.push(tokio::spawn(async move {
                for i in 0..per_client {
                    let resp = h.propose(put(&format!("c{c}-{i}"), "v")).await?;
                    assert_eq!(
                        KvResponse::decode(&resp).ok(),
                        Some(KvResponse::Written { prev: None })
                    );
                }
                Ok::<(), ReplicaError>(())
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
    }

    fn put(k: &str, v: &str) -> Bytes {
        KvCommand::Put {
            key: Bytes::copy_from_slice(k.as_bytes()),
            value: Bytes::copy_from_slice(v.as_bytes()),
        }
        .encode()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_puts_share_fsyncs_and_survive_restart() {
        const CLIENTS: usize = 8;
        const PER_CLIENT: usize = 50;
        let store = Arc::new(MemLogStore::new());
        let net = MemNetwork::new(MemNetworkConfig::default()).unwrap();
        let replica = start(store.clone(), &net);
        put_concurrently(&replica, CLIENTS, PER_CLIENT).await;
        let total = CLIENTS * PER_CLIENT;
        let n = replica
            .handle()
            .linearizable_query(|kv: &MemKv| kv.len())
            .await
            .unwrap();
        assert_eq!(n, total);
        let st = replica.handle().status().await.unwrap();
        assert_eq!(st.stats.proposals_committed, total as u64);
        assert!(
            st.stats.persists < total as u64,
            "group commit: {} fsyncs for {total} proposals",
            st.stats.persists
        );
        assert_eq!(st.protocol.term, Term(1));
        let kv = replica.shutdown().await.unwrap();
        assert_eq!(kv.len(), total);

        // Restart from the same store: Solo replays the log into a fresh MemKv.
        store.crash(); // only synced writes survive; everything acked was synced
        let replica = start(store.clone(), &net);
        let h = replica.handle();
        let (n, sample) = h
            .linearizable_query(|kv: &MemKv| (kv.len(), kv.get(b"c7-49").cloned()))
            .await
            .unwrap();
        assert_eq!(n, total, "every acknowledged put survived the restart");
        assert_eq!(sample, Some(Bytes::from_static(b"v")));
        assert_eq!(h.status().await.unwrap().protocol.term, Term(2));
        let resp = h.propose(put("after", "restart")).await.unwrap();
        assert_eq!(
            KvResponse::decode(&resp).unwrap(),
            KvResponse::Written { prev: None }
        );
        replica.shutdown().await.unwrap();
    }

    /// A store that takes writes through `write_queued`: each one is
    /// written by a thread of its own after a short delay and answered
    /// through `done`; every third call is refused (a full queue), so the
    /// driver's blocking fallback runs too. `fail_after` writes, every
    /// queued write is answered with an engine error.
    struct QueuedStore {
        inner: Arc<MemLogStore>,
        calls: std::sync::atomic::AtomicU64,
        queued: std::sync::atomic::AtomicU64,
        blocking: std::sync::atomic::AtomicU64,
        fail_after: u64,
    }

    impl QueuedStore {
        fn new(fail_after: u64) -> Self {
            QueuedStore {
                inner: Arc::new(MemLogStore::new()),
                calls: Default::default(),
                queued: Default::default(),
                blocking: Default::default(),
                fail_after,
            }
        }
    }

    impl LogStore for QueuedStore {
        fn write(&self, group: GroupId, write: LogWrite) -> StorageResult<()> {
            self.blocking.fetch_add(1, Ordering::SeqCst);
            self.inner.write(group, write)
        }
        fn write_queued(
            &self,
            group: GroupId,
            write: LogWrite,
            done: crate::storage::WriteDone,
        ) -> Result<(), Box<crate::storage::NotQueued>> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            if n % 3 == 2 {
                return Err(Box::new(crate::storage::NotQueued { write, done }));
            }
            let q = self.queued.fetch_add(1, Ordering::SeqCst);
            let fail = q >= self.fail_after;
            let inner = Arc::clone(&self.inner);
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(1));
                if fail {
                    done(Err(StorageError::Engine("injected queued failure".into())));
                } else {
                    done(inner.write(group, write));
                }
            });
            Ok(())
        }
        fn sync(&self) -> StorageResult<()> {
            self.inner.sync()
        }
        fn entries(&self, g: GroupId, r: std::ops::Range<LogIndex>) -> StorageResult<Vec<Entry>> {
            self.inner.entries(g, r)
        }
        fn bounds(&self, g: GroupId) -> StorageResult<Option<(LogIndex, LogIndex)>> {
            self.inner.bounds(g)
        }
        fn hard_state(&self, g: GroupId) -> StorageResult<crate::types::HardState> {
            self.inner.hard_state(g)
        }
        fn snapshot_meta(&self, g: GroupId) -> StorageResult<Option<SnapshotMeta>> {
            self.inner.snapshot_meta(g)
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_queued_to_the_store_and_refused_ones_all_land_and_are_answered() {
        const CLIENTS: usize = 6;
        const PER_CLIENT: usize = 30;
        let store = Arc::new(QueuedStore::new(u64::MAX));
        let net = MemNetwork::new(MemNetworkConfig::default()).unwrap();
        let replica = start(store.clone(), &net);
        put_concurrently(&replica, CLIENTS, PER_CLIENT).await;
        let total = (CLIENTS * PER_CLIENT) as u64;
        let st = replica.handle().status().await.unwrap();
        assert_eq!(st.stats.proposals_committed, total);
        // One store write per persist (a fallback write is counted once its
        // blocking thread runs: wait for it, bounded).
        let mut seen = (0, 0, 0);
        for _ in 0..200 {
            let persists = replica.handle().status().await.unwrap().stats.persists;
            seen = (
                store.queued.load(Ordering::SeqCst),
                store.blocking.load(Ordering::SeqCst),
                persists,
            );
            if seen.0 + seen.1 == seen.2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let (queued, blocking, persists) = seen;
        assert!(
            queued > 0 && blocking > 0,
            "queued {queued}, blocking {blocking}"
        );
        assert_eq!(queued + blocking, persists, "one store write per persist");
        let kv = replica.shutdown().await.unwrap();
        assert_eq!(kv.len() as u64, total);
        // Everything answered is in the log (and nothing was lost unsynced).
        store.inner.crash();
        let (_, last) = store.inner.bounds(GroupId(3)).unwrap().unwrap();
        assert!(last.0 >= total, "log ends at {last:?}, after {total} puts");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_queued_write_stops_the_replica_and_answers_with_the_error() {
        let store = Arc::new(QueuedStore::new(1));
        let net = MemNetwork::new(MemNetworkConfig::default()).unwrap();
        let replica = start(store.clone(), &net);
        let h = replica.handle();
        let mut results = Vec::new();
        for i in 0..6 {
            results.push(h.propose(put(&format!("k{i}"), "v")).await);
            if results.last().is_some_and(|r| r.is_err()) {
                break;
            }
        }
        let failed = results.iter().filter(|r| r.is_err()).count();
        assert_eq!(failed, 1, "{results:?}");
        assert!(
            matches!(results.last(), Some(Err(ReplicaError::Storage(_)))),
            "{results:?}"
        );
        let exit = replica.shutdown().await;
        assert!(
            matches!(&exit, Err(ReplicaError::Storage(m)) if m.contains("injected queued failure")),
            "{exit:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn periodic_snapshots_let_solo_purge_the_log() {
        let store = Arc::new(MemLogStore::new());
        let net = MemNetwork::new(MemNetworkConfig::default()).unwrap();
        let (transport, rx) = net.join(ME).unwrap();
        let solo = Solo::new(SoloConfig::new(ME), Default::default()).unwrap();
        let cfg = ReplicaConfig {
            group: GroupId(3),
            snapshot_every_entries: Some(10),
            ..ReplicaConfig::default()
        };
        let replica = Replica::start(
            cfg,
            solo,
            Arc::clone(&store) as Arc<dyn LogStore>,
            MemKv::default(),
            Arc::new(transport),
            rx,
        )
        .unwrap();
        let h = replica.handle();
        for i in 0..25 {
            h.propose(put(&format!("k{i}"), "v")).await.unwrap();
        }
        // Bounded wait for the asynchronous build + purge to land.
        let mut lowest = 1;
        for _ in 0..2000 {
            lowest = store.bounds(GroupId(3)).unwrap().map_or(0, |(lo, _)| lo.0);
            if lowest > 10 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(
            lowest > 10,
            "log purged past the first snapshot, lowest {lowest}"
        );
        assert!(h.status().await.unwrap().stats.snapshots_built >= 1);
        assert_eq!(h.query(|kv: &MemKv| kv.len()).await, Ok(25));
        replica.shutdown().await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn membership_changes_and_transfers_go_through_the_protocol() {
        let store = Arc::new(MemLogStore::new());
        let net = MemNetwork::new(MemNetworkConfig::default()).unwrap();
        let replica = start(store.clone(), &net);
        let h = replica.handle();
        let same = crate::types::Membership::new([ME]);
        let id = h
            .change_membership(MembershipChange::Replace(same.clone()))
            .await
            .unwrap();
        assert_eq!(id, LogId::new(1, 1));
        assert_eq!(
            h.status().await.unwrap().applied,
            LogIndex(1),
            "answered once applied"
        );
        assert!(matches!(
            h.change_membership(MembershipChange::AddVoter(PEER)).await,
            Err(ReplicaError::Rejected(ProposeError::Invalid(_)))
        ));
        assert!(matches!(
            h.transfer_leader(PEER).await,
            Err(ReplicaError::Rejected(ProposeError::Invalid(_)))
        ));
        assert_eq!(h.transfer_leader(ME).await, Ok(()));
        replica.shutdown().await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn solo_rejects_every_inbound_frame_as_undecodable() {
        let store = Arc::new(MemLogStore::new());
        let net = MemNetwork::new(MemNetworkConfig::default()).unwrap();
        let replica = start(store.clone(), &net);
        let (peer, _rx) = net.join(PEER).unwrap();
        peer.send(
            ME,
            Frame {
                group: GroupId(3),
                kind: FrameKind::Protocol,
                payload: codec::encode(&42u32).into(),
            },
        );
        let h = replica.handle();
        let mut undecodable = 0;
        for _ in 0..1000 {
            undecodable = h.status().await.unwrap().stats.frames_undecodable;
            if undecodable == 1 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(undecodable, 1);
        replica.shutdown().await.unwrap();
    }
}

mod snapshot_transfer {
    use super::*;
    use crate::consensus::SnapshotSend;
    use crate::kv::{KvCommand, MemKv};
    use crate::transport::{MemNetwork, MemNetworkConfig};

    struct Node {
        replica: Replica<MemKv>,
        script: Arc<Mutex<Script>>,
        store: Arc<MemLogStore>,
    }

    fn node(net: &MemNetwork, id: NodeId) -> Node {
        let (transport, rx) = net.join(id).unwrap();
        let script = Arc::new(Mutex::new(Script::default()));
        let consensus = Scripted {
            id,
            script: Arc::clone(&script),
            events: Arc::default(),
        };
        let store = Arc::new(MemLogStore::new());
        let replica = Replica::start(
            config(),
            consensus,
            Arc::clone(&store) as Arc<dyn LogStore>,
            MemKv::default(),
            Arc::new(transport),
            rx,
        )
        .unwrap();
        Node {
            replica,
            script,
            store,
        }
    }

    async fn until(what: &str, mut f: impl FnMut() -> bool) {
        for i in 0..10_000 {
            if f() {
                return;
            }
            pause(i).await;
        }
        panic!("timed out waiting for: {what}");
    }

    /// The scripted protocol answers no reads, so wait on the applied index
    /// (bounded; the status request also wakes the driver).
    async fn wait_applied(h: &ReplicaHandle<MemKv>, index: u64) {
        for i in 0..10_000 {
            if h.status().await.unwrap().applied >= LogIndex(index) {
                return;
            }
            pause(i).await;
        }
        panic!("never applied {index}");
    }

    fn put_entry(i: u64) -> Entry {
        Entry {
            log_id: LogId::new(1, i),
            payload: EntryPayload::Normal(
                KvCommand::Put {
                    key: Bytes::from(format!("k{i}")),
                    value: Bytes::from(format!("v{i}")),
                }
                .encode(),
            ),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn snapshot_streams_stages_and_installs_before_persisting() {
        let net = MemNetwork::new(MemNetworkConfig::default()).unwrap();
        let leader = node(&net, ME);
        let follower = node(&net, PEER);
        // The leader's state machine holds 3000 keys (3 MemKv chunks + header).
        let entries: Vec<Entry> = (1..=3000).map(put_entry).collect();
        lock(&leader.script).queued.push_back(Ready {
            entries: entries.clone(),
            committed: entries,
            ..ready()
        });
        let lh = leader.replica.handle();
        wait_applied(&lh, 3000).await;
        assert_eq!(lh.query(|kv: &MemKv| kv.len()).await, Ok(3000));
        let meta = SnapshotMeta {
            last_log_id: LogId::new(1, 3000),
            membership: Membership::default(),
        };
        lock(&leader.script).queued.push_back(Ready {
            send_snapshots: vec![SnapshotSend {
                to: PEER,
                meta: meta.clone(),
                header: TestMsg(77),
            }],
            ..ready()
        });
        lh.status().await.unwrap();
        until("header delivered", || {
            !lock(&follower.script).steps.is_empty()
        })
        .await;
        assert_eq!(lock(&follower.script).steps, vec![(ME, TestMsg(77))]);
        let fh = follower.replica.handle();
        let st = fh.status().await.unwrap();
        assert_eq!(st.stats.snapshots_received, 1);
        assert_eq!(st.stats.snapshot_frames_rejected, 0);
        assert_eq!(lh.status().await.unwrap().stats.snapshots_sent, 1);
        // The follower's protocol now asks to install it.
        lock(&follower.script).queued.push_back(Ready {
            snapshot: Some(meta.clone()),
            hard_state: Some(crate::types::HardState::default()),
            ..ready()
        });
        fh.status().await.unwrap();
        until("advance", || lock(&follower.script).advanced.len() == 1).await;
        let (n, v) = fh
            .query(|kv: &MemKv| (kv.len(), kv.get(b"k2999").cloned()))
            .await
            .unwrap();
        assert_eq!((n, v), (3000, Some(Bytes::from_static(b"v2999"))));
        assert_eq!(fh.status().await.unwrap().applied, LogIndex(3000));
        assert_eq!(
            follower.store.snapshot_meta(GroupId(7)).unwrap(),
            Some(meta),
            "the snapshot is recorded in the log store"
        );
        leader.replica.shutdown().await.unwrap();
        follower.replica.shutdown().await.unwrap();
    }

    /// Puts `k1..=k{n}` on `node` through committed entries.
    async fn commit_puts(node: &Node, from: u64, to: u64) {
        let entries: Vec<Entry> = (from..=to).map(put_entry).collect();
        lock(&node.script).queued.push_back(Ready {
            entries: entries.clone(),
            committed: entries,
            ..ready()
        });
        wait_applied(&node.replica.handle(), to).await;
    }

    /// `node`'s protocol asks to stream its snapshot `meta` to `to`.
    async fn send_snapshot(node: &Node, to: NodeId, meta: &SnapshotMeta, header: u32) {
        lock(&node.script).queued.push_back(Ready {
            send_snapshots: vec![SnapshotSend {
                to,
                meta: meta.clone(),
                header: TestMsg(header),
            }],
            ..ready()
        });
        node.replica.handle().status().await.unwrap();
    }

    fn meta_at(i: u64) -> SnapshotMeta {
        SnapshotMeta {
            last_log_id: LogId::new(1, i),
            membership: Membership::default(),
        }
    }

    /// The sender streams its state machine's *current* snapshot, newer than
    /// the one its protocol named: the receiver installs it (under what it
    /// really covers), records the protocol's meta in its log store, skips
    /// the entries the snapshot already covers when they commit, and never
    /// moves its state backwards for a later, older snapshot.
    #[tokio::test(start_paused = true)]
    async fn a_snapshot_newer_than_the_protocol_named_is_installed() {
        let net = MemNetwork::new(MemNetworkConfig::default()).unwrap();
        let leader = node(&net, ME);
        let follower = node(&net, PEER);
        let other = node(&net, NodeId(3));
        commit_puts(&leader, 1, 3000).await;
        // A proposal waiting on the follower at an index the snapshot covers
        // (beyond the index the protocol names).
        lock(&follower.script).next_index = 2499;
        let fh = follower.replica.handle();
        let waiting = {
            let fh = fh.clone();
            tokio::spawn(async move { fh.propose(Bytes::from_static(b"mine")).await })
        };
        until("proposal", || lock(&follower.script).proposals.len() == 1).await;

        // The protocol's snapshot is at 2000; the state machine is at 3000.
        send_snapshot(&leader, PEER, &meta_at(2000), 77).await;
        until("header delivered", || {
            !lock(&follower.script).steps.is_empty()
        })
        .await;
        lock(&follower.script).queued.push_back(Ready {
            snapshot: Some(meta_at(2000)),
            hard_state: Some(crate::types::HardState::default()),
            ..ready()
        });
        fh.status().await.unwrap();
        until("advance", || lock(&follower.script).advanced.len() == 1).await;
        let st = fh.status().await.unwrap();
        assert_eq!(st.stats.snapshots_installed, 1);
        assert_eq!(st.applied, LogIndex(3000), "at the staged snapshot's index");
        assert_eq!(
            fh.query(|kv: &MemKv| (kv.len(), kv.last_applied())).await,
            Ok((3000, LogId::new(1, 3000)))
        );
        assert_eq!(
            follower.store.snapshot_meta(GroupId(7)).unwrap(),
            Some(meta_at(2000)),
            "the log store records the protocol's snapshot"
        );
        assert_eq!(
            waiting.await.unwrap(),
            Err(ReplicaError::OutcomeUnknown),
            "a waiter the installed state covers cannot be matched to its entry"
        );

        // The protocol re-learns 2001..=3000 and commits them with one more:
        // the state machine skips what it has and applies 3001.
        let entries: Vec<Entry> = (2001..=3001).map(put_entry).collect();
        lock(&follower.script).queued.push_back(Ready {
            entries: entries.clone(),
            committed: entries,
            ..ready()
        });
        wait_applied(&fh, 3001).await;
        assert_eq!(fh.query(|kv: &MemKv| kv.len()).await, Ok(3001));

        // Another sender's older snapshot (its state machine at 2800) for an
        // install at 2500: the state machine is past it and stays put.
        commit_puts(&other, 1, 2800).await;
        send_snapshot(&other, PEER, &meta_at(2500), 78).await;
        until("second header", || lock(&follower.script).steps.len() == 2).await;
        lock(&follower.script).queued.push_back(Ready {
            snapshot: Some(meta_at(2500)),
            ..ready()
        });
        fh.status().await.unwrap();
        until("advance", || lock(&follower.script).advanced.len() == 3).await;
        let st = fh.status().await.unwrap();
        assert_eq!(
            (st.stats.snapshots_installed, st.stats.snapshots_skipped),
            (1, 1)
        );
        assert_eq!(st.applied, LogIndex(3001));
        assert_eq!(
            fh.query(|kv: &MemKv| (kv.len(), kv.last_applied())).await,
            Ok((3001, LogId::new(1, 3001))),
            "the state never moves backwards"
        );
        for n in [leader, follower, other] {
            n.replica.shutdown().await.unwrap();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn lost_chunk_fails_the_transfer_and_nothing_is_stepped() {
        let net = MemNetwork::new(MemNetworkConfig {
            inbound_queue_frames: 3,
            ..MemNetworkConfig::default()
        })
        .unwrap();
        let leader = node(&net, ME);
        let follower = node(&net, PEER);
        let entries: Vec<Entry> = (1..=3000).map(put_entry).collect();
        lock(&leader.script).queued.push_back(Ready {
            entries: entries.clone(),
            committed: entries,
            ..ready()
        });
        let lh = leader.replica.handle();
        wait_applied(&lh, 3000).await;
        // Cut the link while streaming: block, send, heal.
        net.block(ME, PEER);
        lock(&leader.script).queued.push_back(Ready {
            send_snapshots: vec![SnapshotSend {
                to: PEER,
                meta: SnapshotMeta::default(),
                header: TestMsg(1),
            }],
            ..ready()
        });
        lh.status().await.unwrap();
        until("sent", || net.stats(ME).dropped_blocked >= 6).await;
        net.heal();
        // A transfer whose Begin was lost: the chunks that get through are
        // rejected, and the protocol never hears of a snapshot.
        settle().await;
        assert!(lock(&follower.script).steps.is_empty());
        leader.replica.shutdown().await.unwrap();
        follower.replica.shutdown().await.unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn a_burst_of_queries_larger_than_one_call_is_answered_in_order_of_state() {
    let mut t = Rig::new(ReplicaConfig {
        max_queued_queries: 1024,
        ..config()
    });
    // More queries than one trip to the blocking pool runs, queued at once
    // behind a committed entry: each is answered exactly once, and every
    // query that was queued after the entry was handed over sees it.
    let p = spawn_propose(&t.h, b"w");
    t.until("proposal", |s| s.proposals.len() == 1).await;
    let e = t.proposal(0);
    t.push(Ready {
        entries: vec![e.clone()],
        committed: vec![e],
        ..ready()
    });
    t.kick().await;
    p.await.unwrap().unwrap();
    let n = apply::MAX_QUERIES_PER_CALL * 2 + 3;
    let queries: Vec<_> = (0..n)
        .map(|i| {
            let h = t.h.clone();
            tokio::spawn(async move { h.query(move |sm: &RecSm| (i, sm.applied.len())).await })
        })
        .collect();
    for (i, q) in queries.into_iter().enumerate() {
        assert_eq!(q.await.unwrap(), Ok((i, 1)), "query {i}");
    }
    t.shutdown().await.unwrap();
}
