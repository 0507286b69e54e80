//! Client histories: what each client asked, when, and what it was told.
//!
//! The types here know nothing about the simulator, so histories recorded
//! from real processes (e.g. `cargo xtask chaos`) are checked by the same
//! [`linearizability`](super::linearizability) checker. Times are plain
//! `u64`s in one monotonic unit chosen by the recorder (the simulator uses
//! virtual milliseconds; a multi-process recorder may use nanoseconds); only
//! their order matters.

use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::kv::{KvCommand, KvResponse, MemKv};
use crate::testkit::rng::SimRng;

/// One client operation: an invocation and, if the client learned it, its
/// completion. Serde-serialisable, so a recorder in another process can
/// write histories to a file for checking.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation<I, O> {
    /// The client (process) that issued it. Informational: the checker uses
    /// only the times.
    pub client: u64,
    /// When the client invoked it (same unit for the whole history).
    pub invoked_at: u64,
    /// When the client got the answer; `None` when the outcome is unknown
    /// (timed out, connection lost): the operation may or may not have taken
    /// effect, at any moment after its invocation.
    pub completed_at: Option<u64>,
    /// What was asked.
    pub input: I,
    /// The answer; `None` exactly when `completed_at` is `None`.
    pub output: Option<O>,
}

impl<I, O> Operation<I, O> {
    /// A completed operation.
    pub fn completed(client: u64, invoked_at: u64, completed_at: u64, input: I, output: O) -> Self {
        Self {
            client,
            invoked_at,
            completed_at: Some(completed_at),
            input,
            output: Some(output),
        }
    }

    /// An operation whose outcome is unknown.
    pub fn unknown(client: u64, invoked_at: u64, input: I) -> Self {
        Self {
            client,
            invoked_at,
            completed_at: None,
            input,
            output: None,
        }
    }

    /// Whether the outcome is unknown.
    pub fn is_unknown(&self) -> bool {
        self.completed_at.is_none() || self.output.is_none()
    }
}

/// An operation on the KV model: [`KvCommand`] in, [`KvResponse`] out.
pub type KvOperation = Operation<KvCommand, KvResponse>;

/// A KV history.
pub type KvHistory = Vec<KvOperation>;

/// Displays bytes as a quoted UTF-8 string when printable, hex otherwise.
pub struct ShowBytes<'a>(pub &'a [u8]);

impl fmt::Display for ShowBytes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match std::str::from_utf8(self.0) {
            Ok(s) if s.chars().all(|c| !c.is_control()) => write!(f, "{s:?}"),
            _ => {
                write!(f, "0x")?;
                for b in self.0 {
                    write!(f, "{b:02x}")?;
                }
                Ok(())
            }
        }
    }
}

/// Displays an optional value (`∅` for absent).
pub struct ShowOpt<'a>(pub Option<&'a Bytes>);

impl fmt::Display for ShowOpt<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(b) => write!(f, "{}", ShowBytes(b)),
            None => write!(f, "∅"),
        }
    }
}

/// Short human-readable form of a KV command (`put k1="v"`).
pub fn show_command(c: &KvCommand) -> String {
    match c {
        KvCommand::Get { key } => format!("get {}", ShowBytes(key)),
        KvCommand::Put { key, value } => format!("put {}={}", ShowBytes(key), ShowBytes(value)),
        KvCommand::Delete { key } => format!("delete {}", ShowBytes(key)),
        KvCommand::Cas { key, expect, value } => format!(
            "cas {} {}→{}",
            ShowBytes(key),
            ShowOpt(expect.as_ref()),
            ShowBytes(value)
        ),
    }
}

/// Short human-readable form of a KV response.
pub fn show_response(r: &KvResponse) -> String {
    match r {
        KvResponse::Value(v) => format!("value {}", ShowOpt(v.as_ref())),
        KvResponse::Written { prev } => format!("ok (prev {})", ShowOpt(prev.as_ref())),
        KvResponse::Cas { ok, current } => {
            format!(
                "cas {} (found {})",
                if *ok { "ok" } else { "failed" },
                ShowOpt(current.as_ref())
            )
        }
        KvResponse::BadCommand(e) => format!("bad command: {e}"),
    }
}

/// Parameters of [`sequential_kv_history`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SequentialHistoryConfig {
    /// Number of operations to generate.
    pub ops: usize,
    /// Number of distinct keys (`k0`, `k1`, …).
    pub keys: u64,
    /// Number of concurrent clients; each issues its operations one after
    /// another, so at most this many are in flight.
    pub clients: u64,
    /// Largest gap between an invocation and the moment the operation takes
    /// effect, and between that moment and the completion (time units).
    pub widen_max: u64,
    /// Percentage of operations recorded with an unknown outcome (0–100).
    pub unknown_percent: u64,
}

impl Default for SequentialHistoryConfig {
    fn default() -> Self {
        Self {
            ops: 200,
            keys: 5,
            clients: 4,
            widen_max: 20,
            unknown_percent: 0,
        }
    }
}

/// A random KV command on keys `k0..k{keys}` with unique values.
pub fn random_kv_command(rng: &mut SimRng, keys: u64, value_tag: &str) -> KvCommand {
    let key = Bytes::from(format!("k{}", rng.below(keys.max(1))));
    let value = Bytes::from(value_tag.to_owned());
    match rng.below(100) {
        0..35 => KvCommand::Get { key },
        35..65 => KvCommand::Put { key, value },
        65..80 => KvCommand::Delete { key },
        _ => {
            let expect = if rng.below(3) == 0 {
                None
            } else {
                Some(Bytes::from(format!("v{}", rng.below(8))))
            };
            KvCommand::Cas { key, expect, value }
        }
    }
}

/// A linearizable KV history by construction: `clients` clients each issue
/// operations one after another; every operation takes effect at a point
/// strictly inside its interval (intervals are randomly widened around that
/// point) and gets the answer a sequential [`MemKv`] gives at that point.
/// Unknown-outcome operations (if asked for) still take effect; only their
/// answer is forgotten.
pub fn sequential_kv_history(seed: u64, cfg: &SequentialHistoryConfig) -> KvHistory {
    let mut rng = SimRng::new(seed);
    let clients = cfg.clients.max(1);
    // Timing first: (effect point, client, invoke, complete); effect points
    // are made unique by scaling and adding the client id.
    let mut next_free = vec![0u64; clients as usize];
    let mut slots: Vec<(u64, u64, u64, u64)> = Vec::with_capacity(cfg.ops);
    for _ in 0..cfg.ops {
        let client = rng.below(clients);
        let free = next_free[client as usize];
        let invoke = free + 1 + rng.below(cfg.widen_max.max(1));
        let effect = invoke + 1 + rng.below(cfg.widen_max.max(1));
        let complete = effect + 1 + rng.below(cfg.widen_max.max(1));
        next_free[client as usize] = complete;
        // Scale so distinct clients never share an effect point.
        slots.push((
            effect * clients + client,
            client,
            invoke * clients,
            complete * clients,
        ));
    }
    slots.sort_unstable();
    let mut kv = MemKv::default();
    let mut history = Vec::with_capacity(slots.len());
    for (n, (_, client, invoke, complete)) in slots.into_iter().enumerate() {
        let mut cmd = random_kv_command(&mut rng, cfg.keys, &format!("v{n}"));
        // Half the CASes expect the current value, so some succeed.
        if let KvCommand::Cas { key, expect, .. } = &mut cmd
            && rng.below(2) == 0
        {
            *expect = kv.get(key).cloned();
        }
        let out = kv.execute(cmd.clone());
        if rng.below(100) < cfg.unknown_percent {
            history.push(Operation::unknown(client, invoke, cmd));
        } else {
            history.push(Operation::completed(client, invoke, complete, cmd, out));
        }
    }
    history.sort_by_key(|o| (o.invoked_at, o.client));
    history
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_clients_are_sequential() {
        let cfg = SequentialHistoryConfig {
            ops: 500,
            ..Default::default()
        };
        let h = sequential_kv_history(3, &cfg);
        assert_eq!(h.len(), 500);
        for c in 0..cfg.clients {
            let mut ops: Vec<_> = h.iter().filter(|o| o.client == c).collect();
            ops.sort_by_key(|o| o.invoked_at);
            for w in ops.windows(2) {
                assert!(w[0].completed_at.unwrap() < w[1].invoked_at);
            }
        }
    }

    #[test]
    fn show_bytes_escapes_binary() {
        assert_eq!(ShowBytes(b"ab").to_string(), "\"ab\"");
        assert_eq!(ShowBytes(&[0, 255]).to_string(), "0x00ff");
    }
}
