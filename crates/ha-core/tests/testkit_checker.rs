//! Acceptance tests of the linearizability checker: hand-written histories
//! judged right, generated sequential histories pass, mutated ones fail.
#![cfg(feature = "testkit")]

use bytes::Bytes;
use ha_core::kv::{KvCommand, KvResponse};
use ha_core::testkit::history::{
    KvHistory, KvOperation, Operation, SequentialHistoryConfig, sequential_kv_history,
};
use ha_core::testkit::linearizability::{
    CheckConfig, CheckError, KvModel, RegisterInput, RegisterModel, RegisterOutput, check,
};
use ha_core::testkit::rng::SimRng;

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn put(c: u64, t: (u64, u64), k: &str, v: &str, prev: Option<&str>) -> KvOperation {
    Operation::completed(
        c,
        t.0,
        t.1,
        KvCommand::Put {
            key: b(k),
            value: b(v),
        },
        KvResponse::Written { prev: prev.map(b) },
    )
}

fn get(c: u64, t: (u64, u64), k: &str, v: Option<&str>) -> KvOperation {
    Operation::completed(
        c,
        t.0,
        t.1,
        KvCommand::Get { key: b(k) },
        KvResponse::Value(v.map(b)),
    )
}

fn cas(
    c: u64,
    t: (u64, u64),
    k: &str,
    expect: Option<&str>,
    v: &str,
    ok: bool,
    cur: Option<&str>,
) -> KvOperation {
    Operation::completed(
        c,
        t.0,
        t.1,
        KvCommand::Cas {
            key: b(k),
            expect: expect.map(b),
            value: b(v),
        },
        KvResponse::Cas {
            ok,
            current: cur.map(b),
        },
    )
}

fn verdict(h: &KvHistory) -> Result<(), CheckError> {
    check(&KvModel, h, &CheckConfig::default()).map(|_| ())
}

fn counterexample(h: &KvHistory) -> String {
    match verdict(h) {
        Err(CheckError::NotLinearizable(ce)) => ce.to_string(),
        other => panic!("expected a counter-example, got {other:?}"),
    }
}

#[test]
fn stale_read_is_caught() {
    let h = vec![
        put(1, (0, 10), "x", "1", None),
        put(1, (20, 30), "x", "2", Some("1")),
        get(2, (40, 50), "x", Some("1")),
    ];
    let ce = counterexample(&h);
    assert!(ce.contains("key \"x\""), "{ce}");
    assert!(ce.contains("#2"), "{ce}");
    assert!(
        ce.contains("value is \"2\""),
        "names the state the read should see: {ce}"
    );
}

#[test]
fn read_concurrent_with_the_overwrite_may_see_the_old_value() {
    let h = vec![
        put(1, (0, 10), "x", "1", None),
        put(1, (20, 60), "x", "2", Some("1")),
        get(2, (40, 50), "x", Some("1")),
        get(2, (70, 80), "x", Some("2")),
    ];
    assert_eq!(verdict(&h), Ok(()));
}

#[test]
fn lost_write_is_caught() {
    // An acknowledged write vanishes: a later read sees the key absent.
    let h = vec![
        put(1, (0, 10), "x", "1", None),
        get(2, (20, 30), "x", Some("1")),
        get(3, (40, 50), "x", None),
    ];
    let ce = counterexample(&h);
    assert!(ce.contains("#2"), "{ce}");
    // The same read overlapping the write is fine.
    let ok = vec![put(1, (0, 30), "x", "1", None), get(3, (5, 20), "x", None)];
    assert_eq!(verdict(&ok), Ok(()));
}

#[test]
fn read_of_a_never_written_value_is_caught() {
    let h = vec![
        put(1, (0, 10), "x", "1", None),
        get(2, (0, 50), "x", Some("ghost")),
    ];
    let ce = counterexample(&h);
    assert!(ce.contains("ghost"), "{ce}");
    assert!(ce.contains("! #1"), "marks the culprit: {ce}");
}

#[test]
fn two_cas_from_one_version_cannot_both_succeed() {
    let h = vec![
        put(1, (0, 10), "x", "v0", None),
        cas(2, (20, 40), "x", Some("v0"), "a", true, Some("v0")),
        cas(3, (25, 45), "x", Some("v0"), "b", true, Some("v0")),
    ];
    let ce = counterexample(&h);
    assert!(ce.contains("cas"), "{ce}");
    let ok = vec![
        put(1, (0, 10), "x", "v0", None),
        cas(2, (20, 40), "x", Some("v0"), "a", true, Some("v0")),
        cas(3, (25, 45), "x", Some("v0"), "b", false, Some("a")),
    ];
    assert_eq!(verdict(&ok), Ok(()));
}

#[test]
fn unknown_outcome_may_apply_late_or_never_but_not_undo() {
    let unknown = Operation::unknown(
        1,
        0,
        KvCommand::Put {
            key: b("x"),
            value: b("1"),
        },
    );
    // Never took effect.
    assert_eq!(
        verdict(&vec![unknown.clone(), get(2, (100, 110), "x", None)]),
        Ok(())
    );
    // Took effect late: absent first, present after.
    let h = vec![
        unknown.clone(),
        get(2, (100, 110), "x", None),
        get(2, (200, 210), "x", Some("1")),
    ];
    assert_eq!(verdict(&h), Ok(()));
    // But once seen it cannot disappear.
    let h = vec![
        unknown,
        get(2, (100, 110), "x", Some("1")),
        get(2, (200, 210), "x", None),
    ];
    assert!(matches!(verdict(&h), Err(CheckError::NotLinearizable(_))));
}

#[test]
fn keys_are_independent() {
    // Per key the history is fine even though the keys interleave.
    let h = vec![
        put(1, (0, 10), "x", "1", None),
        put(2, (5, 15), "y", "1", None),
        get(3, (20, 30), "y", Some("1")),
        get(3, (31, 40), "x", Some("1")),
        put(1, (41, 50), "y", "2", Some("1")),
    ];
    assert_eq!(verdict(&h), Ok(()));
}

#[test]
fn register_model_judges_classic_cases() {
    let w = |c, a, z, v| {
        Operation::completed(c, a, z, RegisterInput::Write(v), RegisterOutput::Written)
    };
    let r =
        |c, a, z, v| Operation::completed(c, a, z, RegisterInput::Read, RegisterOutput::Read(v));
    let cas = |c, a, z, e, n, ok| {
        Operation::completed(
            c,
            a,
            z,
            RegisterInput::Cas { expect: e, new: n },
            RegisterOutput::Cas(ok),
        )
    };
    let cfg = CheckConfig::default();
    assert!(check(&RegisterModel, &[w(1, 0, 10, 1), r(2, 20, 30, 1)], &cfg).is_ok());
    assert!(check(&RegisterModel, &[w(1, 0, 10, 1), r(2, 20, 30, 0)], &cfg).is_err());
    assert!(
        check(
            &RegisterModel,
            &[cas(1, 0, 10, 0, 5, true), cas(2, 0, 10, 0, 6, true)],
            &cfg
        )
        .is_err()
    );
    assert!(
        check(
            &RegisterModel,
            &[cas(1, 0, 10, 0, 5, true), cas(2, 0, 10, 0, 6, false)],
            &cfg
        )
        .is_ok()
    );
}

fn generated(seed: u64, unknown_percent: u64) -> KvHistory {
    let mut rng = SimRng::new(seed);
    let cfg = SequentialHistoryConfig {
        ops: 60 + rng.below(140) as usize,
        keys: 1 + rng.below(4),
        clients: 1 + rng.below(6),
        widen_max: 1 + rng.below(40),
        unknown_percent,
    };
    sequential_kv_history(seed, &cfg)
}

#[test]
fn generated_sequential_histories_pass() {
    for seed in 0..300 {
        let h = generated(seed, if seed % 3 == 0 { 10 } else { 0 });
        if let Err(e) = verdict(&h) {
            panic!("seed {seed}: a sequential history was rejected: {e}");
        }
    }
}

/// Mutates one response so that no order can explain it, in one of two
/// ways: a value never written, or a read of a value written only after the
/// read completed. Returns `None` when the history has no place for it.
fn mutate(h: &mut KvHistory, rng: &mut SimRng) -> Option<usize> {
    let completed: Vec<usize> = (0..h.len()).filter(|&i| !h[i].is_unknown()).collect();
    let &i = rng.pick(&completed)?;
    if rng.below(2) == 0
        && let KvCommand::Get { key } = &h[i].input
    {
        let done = h[i].completed_at?;
        let future = h.iter().find_map(|o| match &o.input {
            KvCommand::Put { key: k, value } if k == key && o.invoked_at > done => {
                Some(value.clone())
            }
            _ => None,
        });
        if let Some(v) = future {
            h[i].output = Some(KvResponse::Value(Some(v)));
            return Some(i);
        }
    }
    let never = Some(b("never-written"));
    h[i].output = Some(match h[i].output.take()? {
        KvResponse::Value(_) => KvResponse::Value(never),
        KvResponse::Written { .. } => KvResponse::Written { prev: never },
        KvResponse::Cas { ok, .. } => KvResponse::Cas { ok, current: never },
        KvResponse::BadCommand(_) => return None,
    });
    Some(i)
}

#[test]
fn generated_histories_with_one_mutated_response_fail() {
    let mut rng = SimRng::new(99);
    let mut mutated = 0;
    for seed in 0..300 {
        let mut h = generated(seed, if seed % 3 == 0 { 10 } else { 0 });
        let Some(i) = mutate(&mut h, &mut rng) else {
            continue;
        };
        mutated += 1;
        match verdict(&h) {
            Err(CheckError::NotLinearizable(ce)) => {
                // Every prefix before the mutated answer is linearizable, so
                // the bisection must land exactly on it.
                assert_eq!(ce.culprit, i, "seed {seed}: {ce}");
            }
            other => panic!("seed {seed}: mutation of op #{i} not caught: {other:?}"),
        }
    }
    assert!(mutated > 250, "only {mutated} histories were mutated");
}

#[test]
fn counterexample_is_small_for_a_long_history() {
    let mut h = sequential_kv_history(
        5,
        &SequentialHistoryConfig {
            ops: 2_000,
            keys: 2,
            clients: 4,
            widen_max: 10,
            unknown_percent: 0,
        },
    );
    // Break an early read: the counter-example is the short failing prefix
    // of its key, capped, not the whole history.
    let i = h
        .iter()
        .position(|o| matches!(o.input, KvCommand::Get { .. }) && o.invoked_at > 200)
        .expect("history has a read");
    h[i].output = Some(KvResponse::Value(Some(b("never-written"))));
    match verdict(&h) {
        Err(CheckError::NotLinearizable(ce)) => {
            assert_eq!(ce.culprit, i);
            assert!(ce.operations.len() <= CheckConfig::default().max_counterexample_ops);
            assert!(ce.to_string().contains("never-written"));
        }
        other => panic!("not caught: {other:?}"),
    }
}

#[test]
fn histories_roundtrip_through_the_codec() {
    // A recorder in another process writes histories; the checker reads them.
    let h = sequential_kv_history(
        8,
        &SequentialHistoryConfig {
            unknown_percent: 10,
            ..Default::default()
        },
    );
    let bytes = ha_core::codec::encode(&h);
    let back: KvHistory = ha_core::codec::decode(&bytes).unwrap_or_else(|e| panic!("decode: {e}"));
    assert_eq!(back, h);
    assert_eq!(verdict(&back), Ok(()));
}
