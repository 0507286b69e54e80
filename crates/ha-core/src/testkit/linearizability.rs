//! Linearizability checking of client histories.
//!
//! The search is Wing & Gong's, with the two improvements that make it
//! practical (Lowe; used by the Knossos and Porcupine checkers):
//!
//! * **memoization**: a (set of operations linearized so far, model state)
//!   pair that was already explored is never explored again;
//! * **P-compositionality**: a history is linearizable iff each of its
//!   per-key sub-histories is, when the model is a product of independent
//!   per-key objects (a KV map is), so each key is searched on its own.
//!
//! Operations with an unknown outcome (see
//! [`history::Operation`](super::history::Operation)) may take effect at any point
//! after their invocation, or never: they are given an infinitely late
//! completion, and their answer is not checked. Read-only operations with an
//! unknown outcome cannot matter and are dropped first.
//!
//! Two operations whose intervals touch (`a.completed_at == b.invoked_at`)
//! are treated as concurrent, so coarse clocks never produce a false alarm.
//!
//! On failure the checker reports a [`CounterExample`]: the key, the
//! shortest failing prefix of that key's history (linearizability is
//! prefix-closed, so the prefix is found by bisection), the operation whose
//! answer no order explains, and the states every order reaches when it
//! would have to take effect.
//!
//! ```
//! use ha_core::kv::{KvCommand, KvResponse};
//! use ha_core::testkit::history::Operation;
//! use ha_core::testkit::linearizability::{check, CheckConfig, CheckError, KvModel};
//!
//! let put = KvCommand::Put { key: "k".into(), value: "1".into() };
//! let get = KvCommand::Get { key: "k".into() };
//! let history = vec![
//!     Operation::completed(1, 0, 10, put, KvResponse::Written { prev: None }),
//!     // Invoked after the put completed, yet sees nothing: a stale read.
//!     Operation::completed(2, 20, 30, get, KvResponse::Value(None)),
//! ];
//! let err = check(&KvModel, &history, &CheckConfig::default()).unwrap_err();
//! assert!(matches!(err, CheckError::NotLinearizable(_)));
//! ```

use std::collections::{BTreeMap, HashSet};
use std::fmt::{self, Debug};
use std::hash::{BuildHasherDefault, Hash, Hasher};

use bytes::Bytes;

use crate::kv::{KvCommand, KvResponse};
use crate::testkit::history::{Operation, ShowBytes, ShowOpt, show_command, show_response};

/// A sequential specification the history is checked against.
pub trait Model {
    /// State of one partition (one key for a KV model).
    type State: Clone + Eq + Hash + Debug;
    /// Operation input.
    type Input: Debug;
    /// Operation output.
    type Output: Debug;

    /// State before any operation.
    fn init(&self) -> Self::State;

    /// The partition an operation belongs to. Operations in different
    /// partitions must touch independent state (P-compositionality); return
    /// the same key for all to check the history as a whole.
    fn partition(&self, input: &Self::Input) -> Vec<u8>;

    /// Applies `input` to `state`. `output` is the recorded answer, or
    /// `None` when unknown (then any answer is accepted). Returns the next
    /// state, or why the answer is impossible in `state`.
    fn step(
        &self,
        state: &Self::State,
        input: &Self::Input,
        output: Option<&Self::Output>,
    ) -> Result<Self::State, String>;

    /// Whether the operation never changes state (dropped when unknown).
    fn is_read_only(&self, input: &Self::Input) -> bool;

    /// Human-readable operation, for counter-examples.
    fn describe_op(&self, input: &Self::Input, output: Option<&Self::Output>) -> String;

    /// Human-readable state, for counter-examples.
    fn describe_state(&self, state: &Self::State) -> String;

    /// Human-readable partition key, for counter-examples.
    fn describe_partition(&self, partition: &[u8]) -> String {
        ShowBytes(partition).to_string()
    }
}

/// The KV map of [`crate::kv`], checked per key: each key is a register
/// holding an optional value. Put/Delete answers (`prev`) and CAS answers
/// (`ok`, `current`) are checked as strictly as reads.
#[derive(Clone, Copy, Debug, Default)]
pub struct KvModel;

impl Model for KvModel {
    type State = Option<Bytes>;
    type Input = KvCommand;
    type Output = KvResponse;

    fn init(&self) -> Self::State {
        None
    }

    fn partition(&self, input: &KvCommand) -> Vec<u8> {
        input.key().to_vec()
    }

    fn step(
        &self,
        state: &Option<Bytes>,
        input: &KvCommand,
        output: Option<&KvResponse>,
    ) -> Result<Option<Bytes>, String> {
        let (next, expected) = match input {
            KvCommand::Get { .. } => (state.clone(), KvResponse::Value(state.clone())),
            KvCommand::Put { value, .. } => (
                Some(value.clone()),
                KvResponse::Written {
                    prev: state.clone(),
                },
            ),
            KvCommand::Delete { .. } => (
                None,
                KvResponse::Written {
                    prev: state.clone(),
                },
            ),
            KvCommand::Cas { expect, value, .. } => {
                let ok = state == expect;
                let next = if ok {
                    Some(value.clone())
                } else {
                    state.clone()
                };
                (
                    next,
                    KvResponse::Cas {
                        ok,
                        current: state.clone(),
                    },
                )
            }
        };
        match output {
            None => Ok(next),
            Some(out) if *out == expected => Ok(next),
            Some(out) => Err(format!(
                "the value is {}, so the answer would be `{}`, not `{}`",
                ShowOpt(state.as_ref()),
                show_response(&expected),
                show_response(out)
            )),
        }
    }

    fn is_read_only(&self, input: &KvCommand) -> bool {
        matches!(input, KvCommand::Get { .. })
    }

    fn describe_op(&self, input: &KvCommand, output: Option<&KvResponse>) -> String {
        match output {
            Some(o) => format!("{} → {}", show_command(input), show_response(o)),
            None => format!("{} → unknown outcome", show_command(input)),
        }
    }

    fn describe_state(&self, state: &Option<Bytes>) -> String {
        ShowOpt(state.as_ref()).to_string()
    }
}

/// Input of the single-register model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RegisterInput {
    /// Read the value.
    Read,
    /// Write a value.
    Write(u64),
    /// Write `new` if the value is `expect`.
    Cas {
        /// Expected value.
        expect: u64,
        /// Value to write.
        new: u64,
    },
}

/// Output of the single-register model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RegisterOutput {
    /// The value read.
    Read(u64),
    /// The write happened.
    Written,
    /// Whether the CAS wrote.
    Cas(bool),
}

/// One `u64` register, initially 0: the classic model of the literature.
#[derive(Clone, Copy, Debug, Default)]
pub struct RegisterModel;

impl Model for RegisterModel {
    type State = u64;
    type Input = RegisterInput;
    type Output = RegisterOutput;

    fn init(&self) -> u64 {
        0
    }

    fn partition(&self, _input: &RegisterInput) -> Vec<u8> {
        Vec::new()
    }

    fn step(
        &self,
        state: &u64,
        input: &RegisterInput,
        output: Option<&RegisterOutput>,
    ) -> Result<u64, String> {
        let (next, expected) = match *input {
            RegisterInput::Read => (*state, RegisterOutput::Read(*state)),
            RegisterInput::Write(v) => (v, RegisterOutput::Written),
            RegisterInput::Cas { expect, new } => {
                let ok = *state == expect;
                (if ok { new } else { *state }, RegisterOutput::Cas(ok))
            }
        };
        match output {
            None => Ok(next),
            Some(o) if *o == expected => Ok(next),
            Some(o) => Err(format!(
                "the value is {state}, so the answer would be {expected:?}, not {o:?}"
            )),
        }
    }

    fn is_read_only(&self, input: &RegisterInput) -> bool {
        matches!(input, RegisterInput::Read)
    }

    fn describe_op(&self, input: &RegisterInput, output: Option<&RegisterOutput>) -> String {
        match output {
            Some(o) => format!("{input:?} → {o:?}"),
            None => format!("{input:?} → unknown outcome"),
        }
    }

    fn describe_state(&self, state: &u64) -> String {
        state.to_string()
    }

    fn describe_partition(&self, _partition: &[u8]) -> String {
        "(the register)".to_owned()
    }
}

/// Limits of one check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckConfig {
    /// Search steps allowed per partition before giving up with
    /// [`CheckError::BudgetExhausted`] (keeps pathological histories from
    /// running forever).
    pub max_steps_per_partition: u64,
    /// Approximate memory the memoization set of one partition may use
    /// before the search gives up with [`CheckError::BudgetExhausted`]
    /// (each entry holds a bitset of the partition's operations and a
    /// model state).
    pub memo_bytes_max: usize,
    /// Operations printed in a counter-example (the ones nearest the
    /// failure).
    pub max_counterexample_ops: usize,
    /// Distinct states listed when explaining why no order works.
    pub max_explained_states: usize,
}

impl Default for CheckConfig {
    fn default() -> Self {
        Self {
            max_steps_per_partition: 20_000_000,
            memo_bytes_max: 512 << 20,
            max_counterexample_ops: 24,
            max_explained_states: 4,
        }
    }
}

/// What a successful check looked at.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckStats {
    /// Operations checked (after dropping unknown reads).
    pub operations: usize,
    /// Operations with unknown outcome among them.
    pub unknown: usize,
    /// Partitions (keys) searched.
    pub partitions: usize,
    /// Total search steps.
    pub steps: u64,
}

/// Why a history was not judged linearizable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckError {
    /// No order of the operations explains the answers.
    #[error("not linearizable:\n{0}")]
    NotLinearizable(Box<CounterExample>),
    /// The search did not finish within the step budget: no verdict.
    #[error("no verdict for partition {partition}: search budget of {steps} steps exhausted")]
    BudgetExhausted {
        /// The partition (key) being searched.
        partition: String,
        /// Steps spent.
        steps: u64,
    },
    /// The history itself is malformed.
    #[error("malformed history: operation #{index}: {reason}")]
    Malformed {
        /// Index of the operation in the history.
        index: usize,
        /// What is wrong.
        reason: String,
    },
}

/// A small, readable witness of non-linearizability.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterExample {
    /// The key (partition) whose sub-history fails.
    pub partition: String,
    /// Operations of the shortest failing prefix, nearest the failure first
    /// cut to the configured count, in invocation order, one line each.
    pub operations: Vec<String>,
    /// Operations of the failing prefix left out of `operations`.
    pub omitted: usize,
    /// The operation (history index) whose answer no order explains.
    pub culprit: usize,
    /// Why no order works.
    pub explanation: String,
}

impl fmt::Display for CounterExample {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "key {}:", self.partition)?;
        if self.omitted > 0 {
            writeln!(f, "  ({} earlier operations omitted)", self.omitted)?;
        }
        for line in &self.operations {
            writeln!(f, "  {line}")?;
        }
        write!(f, "{}", self.explanation)
    }
}

/// A pinned, fast, non-cryptographic hasher (the Fx multiply-rotate
/// scheme) for the memoization set: deterministic across runs and
/// platforms, unlike std's randomly keyed default.
#[derive(Clone, Copy, Default)]
pub struct FxHasher {
    hash: u64,
}

const FX_SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(FX_SEED);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w) ^ ((rest.len() as u64) << 56));
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    fn finish(&self) -> u64 {
        self.hash
    }
}

type FxBuild = BuildHasherDefault<FxHasher>;

/// Checks `history` against `model`.
pub fn check<M: Model>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
    cfg: &CheckConfig,
) -> Result<CheckStats, CheckError> {
    let mut partitions: BTreeMap<Vec<u8>, Vec<usize>> = BTreeMap::new();
    let mut stats = CheckStats::default();
    for (i, op) in history.iter().enumerate() {
        if let Some(done) = op.completed_at
            && done < op.invoked_at
        {
            return Err(CheckError::Malformed {
                index: i,
                reason: format!(
                    "completed at {done}, before its invocation at {}",
                    op.invoked_at
                ),
            });
        }
        if op.is_unknown() && model.is_read_only(&op.input) {
            continue;
        }
        stats.operations += 1;
        if op.is_unknown() {
            stats.unknown += 1;
        }
        partitions
            .entry(model.partition(&op.input))
            .or_default()
            .push(i);
    }
    stats.partitions = partitions.len();
    for (key, ops) in &partitions {
        let view: Vec<View<'_, M>> = ops.iter().map(|&i| View::of(i, &history[i])).collect();
        match search(model, &view, cfg, None) {
            Search::Ok(steps) => stats.steps += steps,
            Search::Exhausted(steps) => {
                return Err(CheckError::BudgetExhausted {
                    partition: model.describe_partition(key),
                    steps,
                });
            }
            Search::Failed(_) => {
                return Err(CheckError::NotLinearizable(Box::new(counterexample(
                    model, key, &view, cfg,
                ))));
            }
        }
    }
    Ok(stats)
}

/// One operation as the search sees it.
struct View<'a, M: Model> {
    index: usize,
    op: &'a Operation<M::Input, M::Output>,
    invoked_at: u64,
    /// `u64::MAX` when unknown.
    completed_at: u64,
    output: Option<&'a M::Output>,
}

impl<M: Model> Clone for View<'_, M> {
    fn clone(&self) -> Self {
        Self {
            index: self.index,
            op: self.op,
            invoked_at: self.invoked_at,
            completed_at: self.completed_at,
            output: self.output,
        }
    }
}

impl<'a, M: Model> View<'a, M> {
    fn of(index: usize, op: &'a Operation<M::Input, M::Output>) -> Self {
        let (completed_at, output) = match (op.completed_at, op.output.as_ref()) {
            (Some(t), Some(o)) => (t, Some(o)),
            _ => (u64::MAX, None),
        };
        Self {
            index,
            op,
            invoked_at: op.invoked_at,
            completed_at,
            output,
        }
    }
}

enum Search<S> {
    Ok(u64),
    Exhausted(u64),
    /// Failed; states at which the tracked operation was rejected, with why.
    Failed(Vec<(S, String)>),
}

/// Tracks rejections of one operation (by position in `ops`) during a search.
struct Track {
    op: usize,
    max_states: usize,
}

/// A fixed-size bitset of linearized operations.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Self {
        Bits(vec![0; n.div_ceil(64)])
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

const NONE: usize = usize::MAX;

/// Estimated per-entry overhead of the memoization set (hash table slot,
/// bitset allocation header), for [`CheckConfig::memo_bytes_max`].
const MEMO_ENTRY_OVERHEAD_BYTES: usize = 48;

/// The Wing & Gong / Lowe search over one partition, on an array-backed
/// doubly-linked list of call and return events.
fn search<M: Model>(
    model: &M,
    ops: &[View<'_, M>],
    cfg: &CheckConfig,
    track: Option<&Track>,
) -> Search<M::State> {
    let n = ops.len();
    // Events: (time, kind, op) with calls (kind 0) before returns (kind 1) at
    // equal times, so touching intervals count as concurrent.
    let mut events: Vec<(u64, u8, usize)> = Vec::with_capacity(2 * n);
    for (i, v) in ops.iter().enumerate() {
        events.push((v.invoked_at, 0, i));
        events.push((v.completed_at, 1, i));
    }
    events.sort_unstable();
    let len = events.len();
    let head = len;
    let tail = len + 1;
    let mut next = vec![NONE; len + 2];
    let mut prev = vec![NONE; len + 2];
    let mut is_call = vec![false; len];
    let mut op_of = vec![0usize; len];
    let mut ret_of = vec![0usize; n];
    for (pos, &(_, kind, op)) in events.iter().enumerate() {
        is_call[pos] = kind == 0;
        op_of[pos] = op;
        if kind == 1 {
            ret_of[op] = pos;
        }
    }
    let mut last = head;
    for (pos, p) in prev.iter_mut().enumerate().take(len) {
        *p = last;
        next[last] = pos;
        last = pos;
    }
    next[last] = tail;
    prev[tail] = last;

    let lift = |next: &mut Vec<usize>, prev: &mut Vec<usize>, call: usize, ret: usize| {
        let (p, nx) = (prev[call], next[call]);
        next[p] = nx;
        prev[nx] = p;
        let (p, nx) = (prev[ret], next[ret]);
        next[p] = nx;
        prev[nx] = p;
    };
    let unlift = |next: &mut Vec<usize>, prev: &mut Vec<usize>, call: usize, ret: usize| {
        let (p, nx) = (prev[ret], next[ret]);
        next[p] = ret;
        prev[nx] = ret;
        let (p, nx) = (prev[call], next[call]);
        next[p] = call;
        prev[nx] = call;
    };

    let mut cache: HashSet<(Bits, M::State), FxBuild> = HashSet::default();
    let mut bits = Bits::new(n);
    let mut state = model.init();
    let mut stack: Vec<(usize, M::State)> = Vec::new();
    let mut rejected: Vec<(M::State, String)> = Vec::new();
    let mut steps = 0u64;
    let mut memo_bytes = 0usize;
    let memo_entry_bytes =
        bits.0.len() * 8 + std::mem::size_of::<M::State>() + MEMO_ENTRY_OVERHEAD_BYTES;
    let mut cur = next[head];
    while next[head] != tail {
        steps += 1;
        if steps > cfg.max_steps_per_partition || memo_bytes > cfg.memo_bytes_max {
            return Search::Exhausted(steps);
        }
        if cur == tail {
            // Unreachable by construction (a return entry always follows
            // its call), but never loop or index past the list.
            break;
        }
        let op = op_of[cur];
        if is_call[cur] {
            let v = &ops[op];
            match model.step(&state, &v.op.input, v.output) {
                Ok(new_state) => {
                    bits.set(op);
                    if cache.insert((bits.clone(), new_state.clone())) {
                        memo_bytes += memo_entry_bytes;
                        let old = std::mem::replace(&mut state, new_state);
                        stack.push((cur, old));
                        lift(&mut next, &mut prev, cur, ret_of[op]);
                        cur = next[head];
                    } else {
                        bits.clear(op);
                        cur = next[cur];
                    }
                }
                Err(why) => {
                    if let Some(t) = track
                        && t.op == op
                        && rejected.len() < t.max_states
                        && !rejected.iter().any(|(s, _)| *s == state)
                    {
                        rejected.push((state.clone(), why));
                    }
                    cur = next[cur];
                }
            }
        } else {
            // A return whose operation is not linearized yet: backtrack.
            let Some((call, old)) = stack.pop() else {
                return Search::Failed(rejected);
            };
            let op = op_of[call];
            bits.clear(op);
            state = old;
            unlift(&mut next, &mut prev, call, ret_of[op]);
            cur = next[call];
        }
    }
    Search::Ok(steps)
}

/// Builds the counter-example for a failing partition: bisects for the
/// shortest failing prefix, then explains its last completed operation.
fn counterexample<M: Model>(
    model: &M,
    key: &[u8],
    ops: &[View<'_, M>],
    cfg: &CheckConfig,
) -> CounterExample {
    // Known completions in time order; prefix k = everything invoked before
    // (or at) the k-th completion, later completions turned unknown.
    let mut completions: Vec<(u64, usize)> = ops
        .iter()
        .enumerate()
        .filter(|(_, v)| v.output.is_some())
        .map(|(i, v)| (v.completed_at, i))
        .collect();
    completions.sort_unstable();
    let prefix = |k: usize| -> (Vec<View<'_, M>>, usize) {
        let (t, culprit) = completions[k];
        let mut out = Vec::new();
        let mut culprit_pos = 0;
        for (i, v) in ops.iter().enumerate() {
            if v.invoked_at > t {
                continue;
            }
            let mut v2 = v.clone();
            let done_before = (v.completed_at, i) <= (t, culprit);
            if !done_before {
                v2.completed_at = u64::MAX;
                v2.output = None;
            }
            if i == culprit {
                culprit_pos = out.len();
            }
            out.push(v2);
        }
        (out, culprit_pos)
    };
    let fails = |k: usize| {
        let (p, _) = prefix(k);
        matches!(search(model, &p, cfg, None), Search::Failed(_))
    };
    // The full history fails, so the last prefix fails; find the first.
    let (mut lo, mut hi) = (0usize, completions.len().saturating_sub(1));
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if fails(mid) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    if completions.is_empty() {
        // Cannot happen (a history of unknown outcomes is always
        // linearizable), but describe the whole partition rather than panic.
        return CounterExample {
            partition: model.describe_partition(key),
            operations: ops.iter().map(|v| line(model, v, false)).collect(),
            omitted: 0,
            culprit: ops.first().map_or(0, |v| v.index),
            explanation: "no order of these operations is legal".to_owned(),
        };
    }
    let (p, culprit_pos) = prefix(lo);
    let track = Track {
        op: culprit_pos,
        max_states: cfg.max_explained_states,
    };
    let rejected = match search(model, &p, cfg, Some(&track)) {
        Search::Failed(r) => r,
        _ => Vec::new(),
    };
    let culprit = &p[culprit_pos];
    let mut sorted: Vec<&View<'_, M>> = p.iter().collect();
    sorted.sort_by_key(|v| (v.invoked_at, v.index));
    let omitted = sorted.len().saturating_sub(cfg.max_counterexample_ops);
    let operations = sorted[omitted..]
        .iter()
        .map(|v| line(model, v, v.index == culprit.index))
        .collect();
    let mut explanation = format!(
        "no order of these operations explains #{} ({}): it completed at {}, so it must take effect \
         before then, after the operations that completed before its invocation at {};",
        culprit.index,
        model.describe_op(&culprit.op.input, culprit.output),
        culprit.completed_at,
        culprit.invoked_at
    );
    if rejected.is_empty() {
        explanation
            .push_str("\nevery order of the others that it could follow is itself impossible.");
    } else {
        for (s, why) in &rejected {
            explanation.push_str(&format!(
                "\n  - where the others leave the value at {}: {why}",
                model.describe_state(s)
            ));
        }
    }
    CounterExample {
        partition: model.describe_partition(key),
        operations,
        omitted,
        culprit: culprit.index,
        explanation,
    }
}

fn line<M: Model>(model: &M, v: &View<'_, M>, culprit: bool) -> String {
    let done = if v.output.is_some() {
        v.completed_at.to_string()
    } else {
        "?".to_owned()
    };
    format!(
        "{} #{:<4} client {:<3} [{} → {}] {}",
        if culprit { "!" } else { " " },
        v.index,
        v.op.client,
        v.invoked_at,
        done,
        model.describe_op(&v.op.input, v.output)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(c: u64, a: u64, b: u64, v: u64) -> Operation<RegisterInput, RegisterOutput> {
        Operation::completed(c, a, b, RegisterInput::Write(v), RegisterOutput::Written)
    }
    fn r(c: u64, a: u64, b: u64, v: u64) -> Operation<RegisterInput, RegisterOutput> {
        Operation::completed(c, a, b, RegisterInput::Read, RegisterOutput::Read(v))
    }

    #[test]
    fn concurrent_read_may_see_either_value() {
        let h = vec![w(1, 0, 10, 1), r(2, 5, 6, 1), r(3, 7, 8, 0)];
        // r(1) then r(0) both overlap the write, but once 1 is seen, 0 cannot
        // follow: 0 was read after 1 in real time.
        assert!(check(&RegisterModel, &h, &CheckConfig::default()).is_err());
        let h = vec![w(1, 0, 10, 1), r(2, 5, 6, 0), r(3, 7, 8, 1)];
        assert!(check(&RegisterModel, &h, &CheckConfig::default()).is_ok());
    }

    #[test]
    fn touching_intervals_are_concurrent() {
        let h = vec![w(1, 0, 10, 1), r(2, 10, 12, 0)];
        assert!(check(&RegisterModel, &h, &CheckConfig::default()).is_ok());
    }

    #[test]
    fn budget_exhaustion_is_reported() {
        let h: Vec<_> = (0..12)
            .map(|i| w(i, 0, 100, i))
            .chain([r(99, 200, 201, 77)])
            .collect();
        let cfg = CheckConfig {
            max_steps_per_partition: 10,
            ..Default::default()
        };
        assert!(matches!(
            check(&RegisterModel, &h, &cfg),
            Err(CheckError::BudgetExhausted { .. })
        ));
        let cfg = CheckConfig {
            memo_bytes_max: 1_000,
            ..Default::default()
        };
        assert!(matches!(
            check(&RegisterModel, &h, &cfg),
            Err(CheckError::BudgetExhausted { .. })
        ));
    }

    #[test]
    fn malformed_interval_is_an_error() {
        let h = vec![w(1, 10, 5, 1)];
        assert!(matches!(
            check(&RegisterModel, &h, &CheckConfig::default()),
            Err(CheckError::Malformed { index: 0, .. })
        ));
    }

    #[test]
    fn fx_hasher_is_pinned() {
        let mut h = FxHasher::default();
        h.write_u64(1);
        h.write(b"abc");
        let mut h2 = FxHasher::default();
        h2.write_u64(1);
        h2.write(b"abc");
        assert_eq!(h.finish(), h2.finish());
        assert_ne!(h.finish(), 0);
    }
}
