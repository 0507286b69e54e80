//! [`LocalBackend`]: a single-process [`Backend`] for tests and embedding.
//!
//! One [`LockMachine`] behind a mutex; writes are applied directly at
//! increasing log indexes (no consensus, no durability: state lives as long
//! as the value). Events go to a bounded broadcast; a [`Lessor`] driven by
//! a tokio interval proposes lease expiries and checkpoints, so leases
//! expire as on a real node. The member list is fixed (one member).
//!
//! Every read is trivially linearizable: there is one copy of the state.

use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use ha_core::LogId;
use ha_core::state_machine::{Applied as Entry, StateMachine};
use ha_lock::api::{self as hl, Applied, Command};
use ha_lock::{Lessor, LockMachine};
use tokio::sync::broadcast;

use super::backend::{
    Backend, BackendError, EventBatch, HeaderInfo, MemberInfo, StatusInfo, broadcast_sink,
};

/// Settings of a [`LocalBackend`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalBackendConfig {
    /// The state machine's limits.
    pub limits: hl::Limits,
    /// Cluster id reported in headers.
    pub cluster_id: u64,
    /// Member id reported in headers and the member list.
    pub member_id: u64,
    /// Member name in the member list.
    pub member_name: String,
    /// Client URLs in the member list.
    pub client_urls: Vec<String>,
    /// Peer URLs in the member list.
    pub peer_urls: Vec<String>,
    /// Capacity of the live event broadcast, in batches; a watcher that
    /// falls further behind recovers from history.
    pub event_queue_len: usize,
    /// How often the lessor runs, ms (lease expiry precision).
    pub lease_tick_ms: u64,
    /// How often the lessor checkpoints remaining TTLs, ms.
    pub lease_checkpoint_interval_ms: u64,
    /// Version string Status reports.
    pub version: String,
}

impl Default for LocalBackendConfig {
    fn default() -> Self {
        Self {
            limits: hl::Limits::default(),
            cluster_id: 0x6861_6c6f_6361_6c31,
            member_id: 1,
            member_name: "local".to_owned(),
            client_urls: Vec::new(),
            peer_urls: Vec::new(),
            event_queue_len: 1024,
            lease_tick_ms: 100,
            lease_checkpoint_interval_ms: 5_000,
            version: concat!("3.5.0+ha.", env!("CARGO_PKG_VERSION")).to_owned(),
        }
    }
}

/// A refused [`LocalBackend`] start.
#[derive(Debug, thiserror::Error)]
pub enum LocalBackendError {
    /// Not called inside a tokio runtime (the lease clock needs one).
    #[error("LocalBackend::new must be called inside a tokio runtime")]
    NoRuntime,
    /// The state machine's limits are invalid.
    #[error("state machine limits: {0}")]
    Limits(#[from] hl::LimitsError),
    /// A setting that must be positive is zero.
    #[error("local backend config: {0} must be > 0")]
    Zero(&'static str),
}

struct State {
    machine: LockMachine,
    lessor: Lessor,
    /// Index the next command is applied at.
    next_index: u64,
}

struct Inner {
    state: Mutex<State>,
    events: broadcast::Sender<Arc<EventBatch>>,
    config: LocalBackendConfig,
    started: Instant,
}

impl Inner {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn lock(&self) -> Result<MutexGuard<'_, State>, BackendError> {
        self.state
            .lock()
            .map_err(|_| BackendError::Internal("local backend state lock poisoned".to_owned()))
    }

    /// Applies `cmd` at the next index and keeps the lessor in step.
    fn apply(&self, state: &mut State, cmd: &Command) -> Result<Applied, BackendError> {
        let bytes = hl::encode_command(cmd);
        let index = state.next_index;
        let out = state
            .machine
            .apply(LogId::new(1, index), Entry::Command(&bytes))
            .map_err(|e| BackendError::Internal(e.to_string()))?;
        state.next_index = index.saturating_add(1);
        let applied =
            hl::decode_applied(&out).map_err(|e| BackendError::Internal(e.to_string()))?;
        let now_ms = self.now_ms();
        match (cmd, &applied.result) {
            (Command::LeaseGrant(_), Ok(hl::Response::LeaseGrant(g))) => {
                state.lessor.keep_alive(g.id, g.ttl_ms, now_ms);
            }
            (Command::LeaseKeepAlive { id }, Ok(hl::Response::LeaseKeepAlive(k))) => {
                state.lessor.keep_alive(*id, k.ttl_ms, now_ms);
            }
            (Command::LeaseRevoke { id } | Command::LeaseExpire { id }, _) => {
                state.lessor.forget(*id);
            }
            _ => {}
        }
        Ok(applied)
    }

    /// One lessor turn: applies the expiries and checkpoints it proposes.
    fn tick(&self) -> Result<(), BackendError> {
        let mut state = self.lock()?;
        let now_ms = self.now_ms();
        // Reconcile with the lease table (as ha-lock's wiring asks), then
        // apply what the lessor proposes.
        let leases = state.machine.leases();
        state.lessor.sync(now_ms, &leases);
        for cmd in state.lessor.tick(now_ms) {
            self.apply(&mut state, &cmd)?;
        }
        Ok(())
    }
}

/// A single-process [`Backend`] for tests and embedding (see the module docs).
/// Cloning shares the state.
#[derive(Clone)]
pub struct LocalBackend {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for LocalBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalBackend")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl LocalBackend {
    /// Starts a backend with an empty store; must run inside a tokio runtime
    /// (it spawns the lease clock, which stops when the last clone drops).
    pub fn new(config: LocalBackendConfig) -> Result<Self, LocalBackendError> {
        for (name, v) in [
            ("event_queue_len", config.event_queue_len as u64),
            ("lease_tick_ms", config.lease_tick_ms),
            (
                "lease_checkpoint_interval_ms",
                config.lease_checkpoint_interval_ms,
            ),
        ] {
            if v == 0 {
                return Err(LocalBackendError::Zero(name));
            }
        }
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| LocalBackendError::NoRuntime)?;
        let mut machine = LockMachine::in_memory(config.limits.clone())?;
        let (events, _) = broadcast::channel(config.event_queue_len);
        machine.set_event_sink(broadcast_sink(events.clone()));
        let mut lessor = Lessor::new(config.lease_checkpoint_interval_ms);
        lessor.become_leader(0, &machine.leases());
        let tick = Duration::from_millis(config.lease_tick_ms);
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                machine,
                lessor,
                next_index: 1,
            }),
            events,
            config,
            started: Instant::now(),
        });
        let weak: Weak<Inner> = Arc::downgrade(&inner);
        runtime.spawn(async move {
            let mut interval = tokio::time::interval(tick);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                if inner.tick().is_err() {
                    // A poisoned lock or a failed apply: the backend is broken;
                    // requests report it, the clock stops.
                    return;
                }
            }
        });
        Ok(Self { inner })
    }

    fn member(&self) -> MemberInfo {
        let c = &self.inner.config;
        MemberInfo {
            id: c.member_id,
            name: c.member_name.clone(),
            peer_urls: c.peer_urls.clone(),
            client_urls: c.client_urls.clone(),
            is_learner: false,
        }
    }

    fn fixed_members() -> BackendError {
        BackendError::Unsupported("LocalBackend has a fixed single-member list".to_owned())
    }
}

impl Backend for LocalBackend {
    async fn write(&self, cmd: Command) -> Result<Applied, BackendError> {
        let mut state = self.inner.lock()?;
        self.inner.apply(&mut state, &cmd)
    }

    async fn read<R, F>(&self, _linearizable: bool, f: F) -> Result<R, BackendError>
    where
        R: Send + 'static,
        F: FnOnce(&LockMachine) -> R + Send + 'static,
    {
        let state = self.inner.lock()?;
        Ok(f(&state.machine))
    }

    fn subscribe(&self) -> broadcast::Receiver<Arc<EventBatch>> {
        self.inner.events.subscribe()
    }

    fn header(&self) -> HeaderInfo {
        HeaderInfo {
            cluster_id: self.inner.config.cluster_id,
            member_id: self.inner.config.member_id,
            raft_term: 1,
        }
    }

    fn lease_remaining_ms(&self, id: i64) -> Option<i64> {
        let state = self.inner.lock().ok()?;
        state.lessor.remaining_ms(id, self.inner.now_ms())
    }

    async fn members(&self) -> Result<Vec<MemberInfo>, BackendError> {
        Ok(vec![self.member()])
    }

    async fn member_add(
        &self,
        _peer_urls: Vec<String>,
        _is_learner: bool,
    ) -> Result<(MemberInfo, Vec<MemberInfo>), BackendError> {
        Err(Self::fixed_members())
    }

    async fn member_remove(&self, id: u64) -> Result<Vec<MemberInfo>, BackendError> {
        if id != self.inner.config.member_id {
            return Err(BackendError::MemberNotFound);
        }
        Err(Self::fixed_members())
    }

    async fn member_promote(&self, id: u64) -> Result<Vec<MemberInfo>, BackendError> {
        if id != self.inner.config.member_id {
            return Err(BackendError::MemberNotFound);
        }
        Err(BackendError::MemberNotLearner)
    }

    async fn status(&self) -> Result<StatusInfo, BackendError> {
        let state = self.inner.lock()?;
        let applied = state.machine.last_applied().index.0;
        Ok(StatusInfo {
            version: self.inner.config.version.clone(),
            db_size_bytes: 0,
            leader: self.inner.config.member_id,
            raft_index: applied,
            raft_term: 1,
            raft_applied_index: applied,
            is_learner: false,
            errors: Vec::new(),
        })
    }
}
