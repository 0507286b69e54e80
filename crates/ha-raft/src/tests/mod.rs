//! Unit tests named after the Raft paper's rules and scenarios (Ongaro &
//! Ousterhout 2014, §5; Ongaro's thesis ch. 3, 4 and 6), run on the small
//! in-test cluster of [`harness`].

mod harness;

use ha_core::consensus::{Consensus, MembershipChange, ProposeError, Recovered, Role};
use ha_core::{
    Bytes, Entry, EntryPayload, HardState, LogId, LogIndex, Membership, NodeId, SnapshotMeta, Term,
};

use crate::message::{AppendOutcome, AppendRequest, AppendResponse, Message, VoteRequest};
use crate::{Config, Raft, RaftError};
use harness::{Cluster, ids, test_config};

fn entries(terms: &[u64]) -> Vec<Entry> {
    terms
        .iter()
        .enumerate()
        .map(|(i, t)| Entry {
            log_id: LogId::new(*t, i as u64 + 1),
            payload: EntryPayload::Normal(Bytes::from(format!("t{t}i{}", i + 1))),
        })
        .collect()
}

fn single(id: u64, members: &[u64]) -> Raft {
    Raft::new(
        NodeId(id),
        test_config(),
        Recovered::default(),
        Membership::new(ids(members)),
        42,
    )
    .expect("valid")
}

// ------------------------------------------------------------------ election

#[test]
fn leader_election_elects_exactly_one_leader() {
    for seed in 0..20 {
        let mut c = Cluster::new(3, test_config(), seed);
        let l = c.elect();
        c.run_for(500, 10);
        assert_eq!(
            c.leader(),
            Some(l),
            "seed {seed}: leadership stable without faults"
        );
        let leaders = c
            .ids()
            .into_iter()
            .filter(|i| c.raft(i.0).role() == Role::Leader)
            .count();
        assert_eq!(leaders, 1);
        for id in c.ids() {
            assert_eq!(c.raft(id.0).status().leader, Some(l));
        }
    }
}

#[test]
fn election_timeouts_are_randomized_from_the_seed() {
    // Same seed: same winner and term; the node id is mixed in, so nodes
    // with one seed still draw different timeouts.
    let run = |seed| {
        let mut c = Cluster::new(5, test_config(), seed);
        let l = c.elect();
        (l, c.raft(l.0).term(), c.now)
    };
    assert_eq!(run(7), run(7));
    let winners: std::collections::BTreeSet<_> = (0..30).map(|s| run(s).0).collect();
    assert!(winners.len() > 1, "different seeds elect different nodes");
}

#[test]
fn new_leader_appends_a_noop_of_its_term() {
    let mut c = Cluster::new(3, test_config(), 1);
    let l = c.elect();
    c.run_for(100, 10);
    let r = c.raft(l.0);
    let e = r.entry(LogIndex(1)).expect("no-op present");
    assert_eq!(e.payload, EntryPayload::Blank);
    assert_eq!(e.term(), r.term());
    assert_eq!(r.commit_index(), LogIndex(1));
}

#[test]
fn election_restriction_voter_rejects_a_less_up_to_date_candidate() {
    // §5.4.1: a vote is granted only if the candidate's log is at least as
    // up to date as the voter's.
    let mut voter = single(2, &[1, 2, 3]);
    voter.set_log_for_test(entries(&[1, 2]), Term(2));
    voter.tick(0);
    voter.tick(10_000); // past stickiness; becomes pre-candidate itself maybe
    let mut voter = single(2, &[1, 2, 3]);
    voter.set_log_for_test(entries(&[1, 2]), Term(2));
    let stale = VoteRequest {
        term: Term(3),
        last: LogId::new(1, 5),
        pre_vote: false,
        transfer: false,
    };
    voter.step(NodeId(1), Message::Vote(stale));
    let rd = voter.ready();
    let granted: Vec<bool> = rd
        .persisted_messages
        .iter()
        .filter_map(|m| match &m.msg {
            Message::VoteResponse(v) => Some(v.granted),
            _ => None,
        })
        .collect();
    assert_eq!(
        granted,
        vec![false],
        "higher index but lower last term loses"
    );
    voter.advance(rd.number);
    let ok = VoteRequest {
        term: Term(3),
        last: LogId::new(2, 2),
        pre_vote: false,
        transfer: false,
    };
    voter.step(NodeId(3), Message::Vote(ok));
    let rd = voter.ready();
    assert_eq!(rd.hard_state.map(|h| h.vote), Some(Some(NodeId(3))));
    assert!(
        rd.messages.is_empty(),
        "the grant waits for the vote to be durable"
    );
    assert!(matches!(&rd.persisted_messages[0].msg, Message::VoteResponse(v) if v.granted));
}

#[test]
fn votes_at_most_once_per_term() {
    let mut v = single(3, &[1, 2, 3]);
    for (cand, want) in [(1, true), (2, false), (1, true)] {
        let req = VoteRequest {
            term: Term(5),
            last: LogId::default(),
            pre_vote: false,
            transfer: false,
        };
        v.step(NodeId(cand), Message::Vote(req));
        let rd = v.ready();
        let g = rd
            .persisted_messages
            .iter()
            .any(|m| matches!(&m.msg, Message::VoteResponse(r) if r.granted));
        assert_eq!(g, want, "candidate {cand}");
        v.advance(rd.number);
    }
}

#[test]
fn candidate_term_and_vote_are_durable_before_vote_requests() {
    let cfg = Config {
        pre_vote: false,
        ..test_config()
    };
    let mut r = Raft::new(
        NodeId(1),
        cfg,
        Recovered::default(),
        Membership::new(ids(&[1, 2, 3])),
        3,
    )
    .unwrap();
    r.tick(0);
    r.tick(1_000);
    assert_eq!(r.role(), Role::Candidate);
    let rd = r.ready();
    assert_eq!(
        rd.hard_state,
        Some(HardState {
            term: Term(1),
            vote: Some(NodeId(1)),
            commit: LogIndex(0)
        })
    );
    assert!(rd.messages.is_empty());
    assert_eq!(rd.persisted_messages.len(), 2);
    assert!(!r.has_ready(), "one Ready outstanding at a time");
}

#[test]
fn pre_vote_prevents_term_inflation_by_a_partitioned_node() {
    let mut c = Cluster::new(3, test_config(), 11);
    let l = c.elect();
    let term = c.raft(l.0).term();
    let victim = c.ids().into_iter().find(|i| *i != l).unwrap();
    c.isolate(victim.0);
    c.run_for(3_000, 10);
    assert_eq!(
        c.raft(victim.0).term(),
        term,
        "pre-vote keeps the isolated node's term"
    );
    assert_eq!(c.raft(victim.0).role(), Role::PreCandidate);
    c.heal();
    c.run_for(1_000, 10);
    assert_eq!(
        c.leader(),
        Some(l),
        "the rejoining node does not depose the leader"
    );
    assert_eq!(c.raft(l.0).term(), term);
}

#[test]
fn without_pre_vote_a_partitioned_node_inflates_its_term() {
    // The contrast case: shows the previous test can fail.
    let cfg = Config {
        pre_vote: false,
        ..test_config()
    };
    let mut c = Cluster::new(3, cfg, 11);
    let l = c.elect();
    let term = c.raft(l.0).term();
    let victim = c.ids().into_iter().find(|i| *i != l).unwrap();
    c.isolate(victim.0);
    c.run_for(3_000, 10);
    assert!(c.raft(victim.0).term() > term);
}

#[test]
fn check_quorum_isolated_leader_steps_down() {
    let mut c = Cluster::new(5, test_config(), 5);
    let l = c.elect();
    c.isolate(l.0);
    c.run_for(1_000, 10);
    assert_ne!(
        c.raft(l.0).role(),
        Role::Leader,
        "a leader without a quorum steps down"
    );
    let new = c.leader().expect("the majority elects a new leader");
    assert_ne!(new, l);
}

#[test]
fn leader_stickiness_ignores_votes_while_a_leader_is_alive() {
    let mut c = Cluster::new(3, test_config(), 2);
    let l = c.elect();
    c.run_for(50, 10);
    let f = c.ids().into_iter().find(|i| *i != l).unwrap();
    let term = c.raft(f.0).term();
    let last = c.raft(f.0).last_log_id();
    let req = VoteRequest {
        term: Term(term.0 + 5),
        last: LogId::new(99, last.index.0 + 10),
        pre_vote: false,
        transfer: false,
    };
    c.raft_mut(f.0).step(NodeId(9), Message::Vote(req));
    assert_eq!(
        c.raft(f.0).term(),
        term,
        "a disruptive candidate is ignored"
    );
}

// --------------------------------------------------------------- replication

#[test]
fn figure7_leader_brings_every_follower_log_in_line() {
    // The Raft paper, Figure 7: the leader of term 8 and followers (a)-(f).
    let leader = [1, 1, 1, 4, 4, 5, 5, 6, 6, 6];
    let followers: [&[u64]; 6] = [
        &[1, 1, 1, 4, 4, 5, 5, 6, 6],
        &[1, 1, 1, 4],
        &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6],
        &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7],
        &[1, 1, 1, 4, 4, 4, 4],
        &[1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3],
    ];
    let mut c = Cluster::new(7, test_config(), 8);
    c.raft_mut(1).set_log_for_test(entries(&leader), Term(7));
    for (i, f) in followers.iter().enumerate() {
        c.raft_mut(i as u64 + 2)
            .set_log_for_test(entries(f), Term(7));
    }
    // (c) holds an extra entry of term 6 that was never the leader's.
    c.raft_mut(1).campaign_for_test();
    c.deliver();
    assert_eq!(c.raft(1).role(), Role::Leader);
    assert_eq!(c.raft(1).term(), Term(8));
    c.run_for(200, 10);
    let want: Vec<_> = (1..=11)
        .map(|i| c.raft(1).entry(LogIndex(i)).cloned())
        .collect();
    for id in 2..=7 {
        let got: Vec<_> = (1..=11)
            .map(|i| c.raft(id).entry(LogIndex(i)).cloned())
            .collect();
        assert_eq!(got, want, "follower {id} converged to the leader's log");
        assert_eq!(c.raft(id).last_log_id(), LogId::new(8, 11));
    }
    assert_eq!(c.raft(1).commit_index(), LogIndex(11));
    c.check_logs();
}

#[test]
fn fast_backtracking_needs_one_round_trip_per_conflicting_term() {
    // Follower (f) of Figure 7 diverges over terms 2 and 3 (8 entries); a
    // one-entry-at-a-time backtrack would need 8 rejections.
    let mut c = Cluster::new(3, test_config(), 3);
    c.raft_mut(1)
        .set_log_for_test(entries(&[1, 1, 1, 4, 4, 5, 5, 6, 6, 6]), Term(7));
    c.raft_mut(2)
        .set_log_for_test(entries(&[1, 1, 1, 4, 4, 5, 5, 6, 6, 6]), Term(7));
    c.raft_mut(3)
        .set_log_for_test(entries(&[1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3]), Term(7));
    c.raft_mut(1).campaign_for_test();
    let mut rejections = 0;
    // count conflicts sent by node 3
    for _ in 0..20 {
        c.process_all();
        let n = c
            .queue
            .iter()
            .filter(|(f, _, d)| {
                f.0 == 3
                    && matches!(
                        d,
                        harness::Delivery::Msg(Message::AppendResponse(AppendResponse {
                            outcome: AppendOutcome::Conflict { .. },
                            ..
                        }))
                    )
            })
            .count();
        rejections += n;
        if c.queue.is_empty() {
            break;
        }
        let (from, to, d) = c.queue.pop_front().unwrap();
        if let harness::Delivery::Msg(m) = d {
            c.raft_mut(to.0).step(from, m);
        }
    }
    c.deliver();
    assert!(rejections <= 2, "{rejections} rejections");
    assert_eq!(c.raft(3).last_log_id(), c.raft(1).last_log_id());
}

#[test]
fn log_matching_holds_after_leader_changes_with_divergent_suffixes() {
    for seed in 0..10 {
        let mut c = Cluster::new(3, test_config(), seed);
        let l = c.elect();
        c.propose("a");
        c.deliver();
        // the leader appends entries nobody else sees, then is cut off
        c.isolate(l.0);
        for i in 0..3 {
            let _ = c.raft_mut(l.0).propose(Bytes::from(format!("lost{i}")));
        }
        c.run_for(1_000, 10);
        c.propose("b");
        c.run_for(100, 10);
        c.heal();
        c.run_for(1_000, 10);
        c.check_logs();
        let new = c.leader().unwrap();
        for id in c.ids() {
            assert_eq!(
                c.raft(id.0).last_log_id(),
                c.raft(new.0).last_log_id(),
                "seed {seed}"
            );
            assert!(c.applied_data(id.0).iter().all(|b| !b.starts_with(b"lost")));
        }
    }
}

#[test]
fn figure8_earlier_term_entry_commits_only_through_a_current_term_entry() {
    // Figure 8 (c): S1 leads term 4 with the term-2 entry at index 2, which
    // S2 and S3 also hold — a majority — yet it must not be committed by
    // counting, since S5 (with a term-3 entry at index 2) could still win.
    let mut c = Cluster::new(5, test_config(), 4);
    c.raft_mut(1).set_log_for_test(entries(&[1, 2]), Term(3));
    c.raft_mut(2).set_log_for_test(entries(&[1, 2]), Term(3));
    c.raft_mut(3).set_log_for_test(entries(&[1]), Term(3));
    c.raft_mut(4).set_log_for_test(entries(&[1]), Term(3));
    c.raft_mut(5).set_log_for_test(entries(&[1, 3]), Term(3));
    c.raft_mut(1).campaign_for_test();
    // Votes only; appends are dropped so we can craft the acknowledgements.
    c.deliver_where(|_, _, m| matches!(m, Message::Vote(_) | Message::VoteResponse(_)));
    assert_eq!(c.raft(1).role(), Role::Leader);
    assert_eq!(c.raft(1).term(), Term(4));
    assert_eq!(
        c.raft(1).last_log_id(),
        LogId::new(4, 3),
        "no-op of term 4 appended"
    );
    let ack = |m: u64| {
        Message::AppendResponse(AppendResponse {
            term: Term(4),
            round: 0,
            outcome: AppendOutcome::Success {
                match_index: LogIndex(m),
            },
        })
    };
    // index 2 (term 2) on S1, S2, S3: a majority, not committed.
    c.raft_mut(1).step(NodeId(2), ack(2));
    c.raft_mut(1).step(NodeId(3), ack(2));
    c.process_all();
    assert!(
        c.raft(1).commit_index() < LogIndex(2),
        "figure 8: no commit of an earlier-term entry by counting"
    );
    // S1 crashes here in the paper; S5 can still be elected and overwrite
    // index 2 — so committing it would have been wrong.
    // (e): the term-4 entry reaches the majority: both commit.
    c.raft_mut(1).step(NodeId(2), ack(3));
    c.raft_mut(1).step(NodeId(3), ack(3));
    assert_eq!(c.raft(1).commit_index(), LogIndex(3));
}

#[test]
fn figure8_s5_may_overwrite_an_uncommitted_earlier_term_entry() {
    // Figure 8 (d): with index 2 only replicated (not committed), S5 wins
    // term 5 with votes from S2, S3, S4 and overwrites it everywhere.
    let mut c = Cluster::new(5, test_config(), 4);
    c.raft_mut(1).set_log_for_test(entries(&[1, 2]), Term(4));
    c.raft_mut(2).set_log_for_test(entries(&[1, 2]), Term(4));
    c.raft_mut(3).set_log_for_test(entries(&[1, 2]), Term(4));
    c.raft_mut(4).set_log_for_test(entries(&[1]), Term(4));
    c.raft_mut(5).set_log_for_test(entries(&[1, 3]), Term(4));
    c.isolate(1);
    c.raft_mut(5).campaign_for_test();
    c.deliver();
    assert_eq!(c.raft(5).role(), Role::Leader);
    c.run_for(100, 10);
    for id in 2..=5 {
        assert_eq!(
            c.raft(id).entry(LogIndex(2)).map(|e| e.term()),
            Some(Term(3)),
            "node {id}"
        );
    }
}

#[test]
fn leader_counts_itself_toward_commit_only_after_its_own_advance() {
    let mut c = Cluster::new(3, test_config(), 9);
    let l = c.elect();
    c.run_for(100, 10);
    let others: Vec<NodeId> = c.ids().into_iter().filter(|i| *i != l).collect();
    // Follower 2 is unreachable; the leader holds its own Ready.
    c.isolate(others[1].0);
    c.nodes.get_mut(&l).unwrap().hold = true;
    let id = c.raft_mut(l.0).propose(Bytes::from_static(b"x")).unwrap();
    c.deliver();
    assert!(c.nodes[&l].held.is_some());
    assert!(
        c.raft(l.0).commit_index() < id.index,
        "one follower alone is no quorum while the leader's write is in flight"
    );
    c.release(l.0);
    assert!(
        c.raft(l.0).commit_index() >= id.index,
        "after its own persist the leader completes the quorum"
    );
}

#[test]
fn follower_acknowledges_appends_only_after_persisting() {
    let mut f = single(2, &[1, 2, 3]);
    let req = AppendRequest {
        term: Term(1),
        prev: LogId::default(),
        entries: entries(&[1, 1]),
        commit: LogIndex(0),
        round: 1,
    };
    f.step(NodeId(1), Message::Append(req));
    let rd = f.ready();
    assert_eq!(rd.entries.len(), 2);
    assert!(
        rd.messages
            .iter()
            .all(|m| !matches!(m.msg, Message::AppendResponse(_)))
    );
    assert!(matches!(
        rd.persisted_messages.last().map(|m| &m.msg),
        Some(Message::AppendResponse(AppendResponse {
            outcome: AppendOutcome::Success {
                match_index: LogIndex(2)
            },
            ..
        }))
    ));
}

#[test]
fn proposals_batch_into_one_message_and_one_persist() {
    let mut c = Cluster::new(3, test_config(), 12);
    let l = c.elect();
    c.run_for(100, 10);
    let before = c.nodes[&l].store.sync_count();
    for i in 0..50 {
        c.raft_mut(l.0)
            .propose(Bytes::from(format!("p{i}")))
            .unwrap();
    }
    let rd = c.raft_mut(l.0).ready();
    assert_eq!(rd.entries.len(), 50, "one persist for the batch");
    let appends: Vec<_> = rd
        .messages
        .iter()
        .filter(|m| matches!(m.msg, Message::Append(_)))
        .collect();
    assert_eq!(appends.len(), 2, "one append per follower");
    assert!(
        appends
            .iter()
            .all(|m| matches!(&m.msg, Message::Append(a) if a.entries.len() == 50))
    );
    let _ = before;
}

#[test]
fn inflight_window_bounds_messages_and_bytes() {
    let cfg = Config {
        max_inflight_msgs: 3,
        max_entries_per_msg: 1,
        ..test_config()
    };
    let mut c = Cluster::new(2, cfg, 1);
    let l = c.elect();
    c.run_for(100, 10);
    let f = if l.0 == 1 { 2 } else { 1 };
    c.isolate(f);
    for i in 0..10 {
        c.raft_mut(l.0)
            .propose(Bytes::from(format!("p{i}")))
            .unwrap();
    }
    let rd = c.raft_mut(l.0).ready();
    let n = rd
        .messages
        .iter()
        .filter(|m| matches!(m.msg, Message::Append(_)))
        .count();
    assert_eq!(n, 3, "window of 3 messages");
    c.raft_mut(l.0).advance(rd.number);

    let cfg = Config {
        max_inflight_bytes: 100,
        max_bytes_per_msg: 40,
        ..test_config()
    };
    let mut c = Cluster::new(2, cfg, 1);
    let l = c.elect();
    c.run_for(100, 10);
    for i in 0..10 {
        c.raft_mut(l.0)
            .propose(Bytes::from(format!("{i:010}")))
            .unwrap(); // 34 bytes each
    }
    let rd = c.raft_mut(l.0).ready();
    let sent: usize = rd
        .messages
        .iter()
        .filter_map(|m| match &m.msg {
            Message::Append(a) => Some(a.entries.iter().map(Entry::size_bytes).sum::<usize>()),
            _ => None,
        })
        .sum();
    assert!(
        sent <= 100 + 40,
        "bytes in flight {sent} stay within the window (plus one message)"
    );
    assert!(sent < 340);
}

#[test]
fn lost_appends_are_retransmitted() {
    let mut c = Cluster::new(3, test_config(), 6);
    let l = c.elect();
    c.run_for(100, 10);
    c.drop_per_mille = 300;
    for i in 0..30 {
        c.propose(&format!("v{i}"));
        c.run_for(20, 10);
    }
    c.drop_per_mille = 0;
    c.run_for(2_000, 10);
    let l2 = c.leader().unwrap();
    let want = c.raft(l2.0).last_log_id();
    for id in c.ids() {
        assert_eq!(c.raft(id.0).last_log_id(), want);
        assert_eq!(c.raft(id.0).commit_index(), want.index);
    }
    let _ = l;
    c.check_logs();
}

#[test]
fn malformed_and_stale_messages_change_nothing() {
    let mut f = single(2, &[1, 2, 3]);
    f.set_log_for_test(entries(&[1, 1]), Term(2));
    let before = f.status();
    // entries that skip an index
    let mut bad = entries(&[2, 2, 2]);
    bad.remove(1);
    f.step(
        NodeId(1),
        Message::Append(AppendRequest {
            term: Term(2),
            prev: LogId::default(),
            entries: bad,
            commit: LogIndex(0),
            round: 0,
        }),
    );
    // a lower term
    f.step(
        NodeId(1),
        Message::Append(AppendRequest {
            term: Term(1),
            prev: LogId::new(1, 2),
            entries: entries(&[1, 1, 1])[2..].to_vec(),
            commit: LogIndex(3),
            round: 0,
        }),
    );
    // from node 0 and from itself
    f.step(NodeId(0), Message::TimeoutNow { term: Term(9) });
    f.step(NodeId(2), Message::TimeoutNow { term: Term(9) });
    let after = f.status();
    assert_eq!(before.last_index, after.last_index);
    assert_eq!(before.commit, after.commit);
    assert_eq!(before.term, after.term);
}

#[test]
fn proposal_limits_are_enforced() {
    let cfg = Config {
        max_proposal_bytes: 10,
        max_uncommitted_bytes: 100,
        ..test_config()
    };
    let mut c = Cluster::new(3, cfg, 1);
    let l = c.elect();
    c.run_for(100, 10);
    let r = c.raft_mut(l.0);
    assert!(matches!(
        r.propose(Bytes::from(vec![0u8; 11])),
        Err(ProposeError::Overloaded(_))
    ));
    // nothing commits while followers are unreachable: the suffix grows
    c.isolate(l.0);
    let r = c.raft_mut(l.0);
    let mut ok = 0;
    while r.propose(Bytes::from(vec![0u8; 10])).is_ok() {
        ok += 1;
        assert!(ok < 100);
    }
    assert!((2..=3).contains(&ok), "{ok} proposals fit in 100 bytes");
    let f = c.ids().into_iter().find(|i| *i != l).unwrap();
    assert!(matches!(
        c.raft_mut(f.0).propose(Bytes::new()),
        Err(ProposeError::NotLeader { .. })
    ));
}

// ----------------------------------------------------------------- recovery

#[test]
fn restart_recovers_term_vote_log_and_reapplies() {
    let mut c = Cluster::new(3, test_config(), 21);
    c.elect();
    for i in 0..5 {
        c.propose(&format!("v{i}"));
    }
    c.run_for(200, 10);
    for id in c.ids() {
        let before = c.raft(id.0).last_log_id();
        let term = c.raft(id.0).term();
        c.crash(id.0);
        assert_eq!(c.raft(id.0).last_log_id(), before);
        assert_eq!(c.raft(id.0).term(), term);
    }
    c.run_for(2_000, 10);
    for id in c.ids() {
        assert_eq!(c.applied_data(id.0).len(), 5);
    }
    c.check_logs();
}

#[test]
fn inconsistent_recovered_state_is_an_error() {
    let cfg = test_config();
    let m = Membership::new(ids(&[1]));
    let gap = Recovered {
        hard_state: HardState {
            term: Term(1),
            ..Default::default()
        },
        snapshot: None,
        entries: entries(&[1, 1])[1..].to_vec(),
    };
    assert!(matches!(
        Raft::new(NodeId(1), cfg.clone(), gap, m.clone(), 1),
        Err(RaftError::Recovered(_))
    ));
    let low_term = Recovered {
        hard_state: HardState {
            term: Term(1),
            ..Default::default()
        },
        snapshot: None,
        entries: entries(&[1, 2]),
    };
    assert!(matches!(
        Raft::new(NodeId(1), cfg.clone(), low_term, m.clone(), 1),
        Err(RaftError::Recovered(_))
    ));
    let decreasing = Recovered {
        hard_state: HardState {
            term: Term(3),
            ..Default::default()
        },
        snapshot: None,
        entries: entries(&[2, 1]),
    };
    assert!(matches!(
        Raft::new(NodeId(1), cfg.clone(), decreasing, m.clone(), 1),
        Err(RaftError::Recovered(_))
    ));
    assert!(matches!(
        Raft::new(NodeId(0), cfg.clone(), Recovered::default(), m.clone(), 1),
        Err(RaftError::ReservedId)
    ));
    let bad_cfg = Config {
        max_inflight_msgs: 0,
        ..cfg
    };
    assert!(matches!(
        Raft::new(NodeId(1), bad_cfg, Recovered::default(), m, 1),
        Err(RaftError::Config(_))
    ));
}

// ---------------------------------------------------------------------- reads

#[test]
fn read_index_on_leader_waits_for_a_heartbeat_quorum() {
    let mut c = Cluster::new(3, test_config(), 31);
    let l = c.elect();
    c.run_for(100, 10);
    c.propose("w");
    c.deliver();
    let commit = c.raft(l.0).commit_index();
    c.raft_mut(l.0).read_index(7).unwrap();
    c.process(l);
    assert!(
        c.nodes[&l].reads.is_empty(),
        "not before a quorum confirmed leadership"
    );
    c.deliver();
    let reads = &c.nodes[&l].reads;
    assert_eq!(reads.len(), 1);
    assert_eq!(reads[0].ctx, 7);
    assert_eq!(reads[0].index, commit);
}

#[test]
fn read_index_on_a_deposed_leader_never_completes() {
    let mut c = Cluster::new(3, test_config(), 32);
    let l = c.elect();
    c.run_for(100, 10);
    c.isolate(l.0);
    c.raft_mut(l.0).read_index(1).unwrap();
    c.run_for(1_000, 10);
    assert!(c.nodes[&l].reads.is_empty());
}

#[test]
fn read_index_on_follower_is_forwarded_to_the_leader() {
    let mut c = Cluster::new(3, test_config(), 33);
    let l = c.elect();
    c.run_for(100, 10);
    c.propose("w");
    c.deliver();
    let f = c.ids().into_iter().find(|i| *i != l).unwrap();
    c.raft_mut(f.0).read_index(99).unwrap();
    c.deliver();
    let reads = &c.nodes[&f].reads;
    assert_eq!(reads.len(), 1);
    assert_eq!(reads[0].ctx, 99);
    assert_eq!(reads[0].index, c.raft(l.0).commit_index());
}

#[test]
fn read_index_waits_for_the_new_leaders_first_commit() {
    let mut c = Cluster::new(3, test_config(), 34);
    let l = c.elect();
    c.run_for(100, 10);
    // A fresh leader whose no-op is not committed yet must wait (thesis §6.4).
    c.isolate(l.0);
    c.run_for(600, 10);
    let l2 = c.leader().filter(|x| *x != l).unwrap();
    let _ = l2;
    c.heal();
    c.run_for(500, 10);
    let l3 = c.leader().unwrap();
    let _ = c.raft_mut(l3.0).propose(Bytes::from_static(b"x"));
    c.raft_mut(l3.0).read_index(5).unwrap();
    c.deliver();
    assert_eq!(c.nodes[&l3].reads.len(), 1);
}

#[test]
fn lease_read_needs_no_round_while_the_lease_holds() {
    let cfg = Config {
        lease_read: true,
        ..test_config()
    };
    let mut c = Cluster::new(3, cfg, 35);
    let l = c.elect();
    c.run_for(100, 10);
    assert!(c.raft(l.0).lease_valid());
    c.raft_mut(l.0).read_index(1).unwrap();
    c.process(l);
    assert_eq!(c.nodes[&l].reads.len(), 1, "served from the lease at once");
    // Isolated: the lease runs out, then reads wait.
    c.isolate(l.0);
    c.run_for(150, 10);
    assert!(!c.raft(l.0).lease_valid());
    c.raft_mut(l.0).read_index(2).unwrap();
    c.process(l);
    assert_eq!(c.nodes[&l].reads.len(), 1);
}

// ------------------------------------------------------------------ transfer

#[test]
fn leadership_transfer_hands_over_with_timeout_now() {
    let mut c = Cluster::new(3, test_config(), 41);
    let l = c.elect();
    c.run_for(100, 10);
    c.propose("x");
    let target = c.ids().into_iter().find(|i| *i != l).unwrap();
    c.raft_mut(l.0).transfer_leader(target).unwrap();
    assert!(matches!(
        c.raft_mut(l.0).propose(Bytes::new()),
        Err(ProposeError::InProgress)
    ));
    c.deliver();
    assert_eq!(c.leader(), Some(target));
    assert_eq!(c.raft(l.0).role(), Role::Follower);
    c.run_for(500, 10);
    assert_eq!(c.leader(), Some(target));
}

#[test]
fn leadership_transfer_to_a_lagging_node_catches_it_up_first() {
    let mut c = Cluster::new(3, test_config(), 42);
    let l = c.elect();
    c.run_for(100, 10);
    let target = c.ids().into_iter().find(|i| *i != l).unwrap();
    c.isolate(target.0);
    for i in 0..5 {
        c.propose(&format!("x{i}"));
    }
    c.run_for(50, 10);
    c.heal();
    c.raft_mut(l.0).transfer_leader(target).unwrap();
    c.run_for(300, 10);
    assert_eq!(c.leader(), Some(target));
    assert_eq!(c.applied_data(target.0).len(), 5);
}

#[test]
fn leadership_transfer_to_an_unreachable_node_times_out() {
    let mut c = Cluster::new(3, test_config(), 43);
    let l = c.elect();
    c.run_for(100, 10);
    let target = c.ids().into_iter().find(|i| *i != l).unwrap();
    c.cut.insert((l, target));
    c.raft_mut(l.0).transfer_leader(target).unwrap();
    c.run_for(400, 10);
    assert_eq!(c.leader(), Some(l));
    assert!(
        c.raft_mut(l.0)
            .propose(Bytes::from_static(b"after"))
            .is_ok(),
        "proposals resume after the timeout"
    );
}

// ---------------------------------------------------------------- membership

#[test]
fn learner_replicates_without_voting_then_is_promoted() {
    let mut c = Cluster::with_members(Membership::new(ids(&[1, 2, 3])), &[4], test_config(), 51);
    let l = c.elect();
    c.run_for(100, 10);
    c.raft_mut(l.0)
        .change_membership(MembershipChange::AddLearner(NodeId(4)))
        .unwrap();
    c.propose("x");
    c.run_for(300, 10);
    assert_eq!(c.raft(4).status().role, Role::Learner);
    assert_eq!(c.applied_data(4).len(), 1);
    assert!(c.raft(l.0).membership().learners.contains(&NodeId(4)));
    // learners never campaign
    c.isolate(4);
    c.run_for(1_000, 10);
    assert_eq!(c.raft(4).status().role, Role::Learner);
    c.heal();
    c.run_for(300, 10);
    let l = c.leader().unwrap();
    c.raft_mut(l.0)
        .change_membership(MembershipChange::Promote(NodeId(4)))
        .unwrap();
    c.run_for(300, 10);
    assert!(c.raft(4).membership().voters.contains(&NodeId(4)));
    assert_eq!(c.raft(4).status().role, Role::Follower);
}

#[test]
fn membership_change_takes_effect_when_appended_and_one_at_a_time() {
    let mut c = Cluster::with_members(Membership::new(ids(&[1, 2, 3])), &[4], test_config(), 52);
    let l = c.elect();
    c.run_for(100, 10);
    c.isolate(l.0); // nothing can commit
    let idx = c
        .raft_mut(l.0)
        .change_membership(MembershipChange::AddVoter(NodeId(4)))
        .unwrap();
    assert!(
        c.raft(l.0).membership().voters.contains(&NodeId(4)),
        "in force once appended"
    );
    assert_eq!(c.raft(l.0).membership_index(), idx.index);
    assert_eq!(
        c.raft_mut(l.0)
            .change_membership(MembershipChange::Remove(NodeId(2))),
        Err(ProposeError::InProgress),
        "the previous change is not committed"
    );
}

#[test]
fn invalid_membership_changes_are_refused() {
    let mut c = Cluster::new(3, test_config(), 53);
    let l = c.elect();
    c.run_for(100, 10);
    let r = c.raft_mut(l.0);
    for ch in [
        MembershipChange::AddLearner(NodeId(1)),
        MembershipChange::Promote(NodeId(9)),
        MembershipChange::AddVoter(NodeId(2)),
        MembershipChange::Remove(NodeId(9)),
        MembershipChange::AddLearner(NodeId(0)),
        MembershipChange::Replace(Membership::default()),
        MembershipChange::Replace(Membership::new(ids(&[1, 2, 3]))),
    ] {
        assert!(
            matches!(
                r.change_membership(ch.clone()),
                Err(ProposeError::Invalid(_))
            ),
            "{ch:?}"
        );
    }
    let before = r.last_log_id();
    assert_eq!(r.last_log_id(), before, "refusals append nothing");
}

#[test]
fn joint_consensus_replaces_the_whole_configuration() {
    let mut c = Cluster::with_members(
        Membership::new(ids(&[1, 2, 3])),
        &[4, 5, 6],
        test_config(),
        54,
    );
    let l = c.elect();
    c.run_for(100, 10);
    let target = Membership::new(ids(&[4, 5, 6]));
    c.raft_mut(l.0)
        .change_membership(MembershipChange::Replace(target.clone()))
        .unwrap();
    let m = c.raft(l.0).membership().clone();
    assert!(m.is_joint());
    assert_eq!(m.voters_outgoing.as_ref().map(|o| o.len()), Some(3));
    c.run_for(2_000, 10);
    let l2 = c.leader().expect("a leader of the new configuration");
    assert!(
        target.voters.contains(&l2),
        "the old leader stepped down after leaving the config"
    );
    assert_eq!(c.raft(l2.0).membership(), &target);
    c.propose("after");
    c.run_for(300, 10);
    for id in [4, 5, 6] {
        assert!(c.applied_data(id).contains(&Bytes::from_static(b"after")));
    }
}

#[test]
fn joint_consensus_needs_both_majorities() {
    // Joint {1,2,3}+{1,4,5}: with 4 and 5 down, {1,2,3} is a majority of
    // the old half only; nothing may commit.
    let mut c = Cluster::with_members(Membership::new(ids(&[1, 2, 3])), &[4, 5], test_config(), 55);
    c.raft_mut(1).campaign_for_test();
    c.deliver();
    assert_eq!(c.leader(), Some(NodeId(1)));
    c.run_for(100, 10);
    c.isolate(4);
    c.isolate(5);
    c.raft_mut(1)
        .change_membership(MembershipChange::Replace(Membership::new(ids(&[1, 4, 5]))))
        .unwrap();
    let joint_idx = c.raft(1).membership_index();
    assert!(c.raft(1).membership().is_joint());
    let pending = c.propose("blocked").unwrap();
    c.run_for(100, 10);
    // check-quorum counts both halves too: the leader gives up
    c.run_for(300, 10);
    assert_ne!(c.raft(1).role(), Role::Leader);
    assert!(
        c.raft(1).commit_index() < joint_idx,
        "joint config needs a majority of {{1,4,5}} too"
    );
    assert!(c.raft(1).commit_index() < pending.index);
    c.heal();
    c.run_for(1_000, 10);
    let l = c.leader().unwrap();
    assert_eq!(c.raft(l.0).membership(), &Membership::new(ids(&[1, 4, 5])));
}

#[test]
fn joint_consensus_survives_a_leader_crash_midway() {
    let mut c = Cluster::with_members(Membership::new(ids(&[1, 2, 3])), &[4], test_config(), 56);
    let l = c.elect();
    c.run_for(100, 10);
    // the leader leaves; the other two founders and node 4 form the target
    let mut keep: Vec<u64> = [1, 2, 3].into_iter().filter(|x| *x != l.0).collect();
    keep.push(4);
    let target = Membership::new(ids(&keep));
    c.raft_mut(l.0)
        .change_membership(MembershipChange::Replace(target.clone()))
        .unwrap();
    c.deliver();
    c.crash(l.0);
    c.isolate(l.0);
    c.run_for(2_000, 10);
    let l2 = c.leader().unwrap();
    assert_eq!(
        c.raft(l2.0).membership(),
        &target,
        "the new leader finishes the joint change"
    );
}

#[test]
fn removing_the_leader_makes_it_step_down_once_committed() {
    let mut c = Cluster::new(3, test_config(), 57);
    let l = c.elect();
    c.run_for(100, 10);
    c.raft_mut(l.0)
        .change_membership(MembershipChange::Remove(l))
        .unwrap();
    assert_eq!(
        c.raft(l.0).role(),
        Role::Leader,
        "leads until the change commits"
    );
    c.run_for(600, 10);
    assert_ne!(c.raft(l.0).role(), Role::Leader);
    let l2 = c.leader().expect("the remaining voters elect a leader");
    assert_ne!(l2, l);
    assert!(!c.raft(l2.0).membership().all_nodes().contains(&l));
    c.propose("after");
    c.run_for(300, 10);
    assert!(c.applied_data(l2.0).contains(&Bytes::from_static(b"after")));
}

/// A voter being removed still receives the entry that removes it while
/// that entry is uncommitted (thesis §4.2.2 lets a leader stop at once).
/// Otherwise the removed voter and a voter that missed the entry have equal
/// logs, elect a leader of the old configuration between them and discard
/// the removal: a change the caller gave up waiting for then never
/// completes. Here the third voter is down while the leader removes the
/// second; then the leader is cut off and the third voter returns: no
/// leader may emerge without the one holding the removal, and once it is
/// back the removal commits.
#[test]
fn removed_voter_gets_its_removal_so_a_leader_change_cannot_discard_it() {
    for seed in 0..10 {
        let mut c = Cluster::new(3, test_config(), seed);
        let l = c.elect();
        c.run_for(100, 10);
        let others: Vec<NodeId> = c.ids().into_iter().filter(|n| *n != l).collect();
        let (victim, down) = (others[0], others[1]);
        c.isolate(down.0);
        let at = c
            .raft_mut(l.0)
            .change_membership(MembershipChange::Remove(victim))
            .unwrap();
        c.process(l);
        c.run_for(100, 10);
        assert_eq!(
            c.raft(victim.0).entry(at.index).map(|e| e.log_id),
            Some(at),
            "seed {seed}: the removed voter has the entry that removes it"
        );
        assert!(!c.raft(victim.0).membership().is_voter(victim));

        c.heal();
        c.isolate(l.0);
        c.run_for(2_000, 10);
        for n in [victim, down] {
            assert_ne!(
                c.raft(n.0).role(),
                Role::Leader,
                "seed {seed}: {n:?} leads the old configuration without the removal"
            );
        }

        c.heal();
        c.run_for(2_000, 10);
        assert_eq!(c.leader(), Some(l), "seed {seed}");
        for n in [l, down] {
            let r = c.raft(n.0);
            assert_eq!(r.entry(at.index).map(|e| e.log_id), Some(at), "seed {seed}");
            assert!(
                r.commit_index() >= at.index,
                "seed {seed}: the removal commits"
            );
            assert!(!r.membership().all_nodes().contains(&victim));
        }
        c.check_logs();
    }
}

// ------------------------------------------------------------------ snapshots

#[test]
fn snapshot_compacts_the_log_and_emits_purge_to() {
    let cfg = Config {
        snapshot_trailing_entries: 2,
        ..test_config()
    };
    let mut c = Cluster::new(1, cfg, 61);
    c.elect();
    for i in 0..10 {
        c.propose(&format!("v{i}"));
    }
    c.run_for(50, 10);
    let commit = c.raft(1).commit_index();
    assert_eq!(commit, LogIndex(11));
    // Take the next Ready by hand to observe purge_to.
    let meta = SnapshotMeta {
        last_log_id: c.raft(1).entry(LogIndex(8)).unwrap().log_id,
        membership: c.raft(1).membership().clone(),
    };
    c.raft_mut(1).snapshot_built(meta);
    assert_eq!(
        c.raft(1).log_start().index,
        LogIndex(6),
        "keeps 2 trailing entries"
    );
    let rd = c.raft_mut(1).ready();
    assert_eq!(rd.purge_to, Some(LogIndex(6)));
    c.raft_mut(1).advance(rd.number);
    // stale or bogus snapshots are ignored
    let bogus = SnapshotMeta {
        last_log_id: LogId::new(99, 9),
        membership: c.raft(1).membership().clone(),
    };
    c.raft_mut(1).snapshot_built(bogus);
    assert_eq!(c.raft(1).log_start().index, LogIndex(6));
}

#[test]
fn follower_behind_the_compaction_point_catches_up_from_a_snapshot() {
    let cfg = Config {
        snapshot_trailing_entries: 0,
        ..test_config()
    };
    let mut c = Cluster::new(3, cfg, 62);
    let l = c.elect();
    c.run_for(100, 10);
    let f = c.ids().into_iter().find(|i| *i != l).unwrap();
    c.isolate(f.0);
    for i in 0..20 {
        c.propose(&format!("v{i}"));
    }
    c.run_for(100, 10);
    let l = c.leader().unwrap();
    c.snapshot(l.0);
    assert!(c.raft(l.0).log_start().index > c.raft(f.0).last_log_id().index);
    c.heal();
    c.run_for(500, 10);
    assert_eq!(c.applied_data(f.0).len(), 20, "restored from the snapshot");
    assert_eq!(c.raft(f.0).log_start(), c.raft(l.0).log_start());
    c.propose("after");
    c.run_for(200, 10);
    assert_eq!(c.applied_data(f.0).len(), 21);
    // and the follower survives a restart from its installed snapshot
    c.crash(f.0);
    c.run_for(500, 10);
    assert_eq!(c.applied_data(f.0).len(), 21);
    c.check_logs();
}

#[test]
fn joint_consensus_can_demote_a_voter_to_learner() {
    let mut c = Cluster::new(3, test_config(), 58);
    let l = c.elect();
    c.run_for(100, 10);
    let demoted = c.ids().into_iter().find(|i| *i != l).unwrap();
    let mut target = Membership::new(c.ids().into_iter().filter(|i| *i != demoted));
    target.learners.insert(demoted);
    c.raft_mut(l.0)
        .change_membership(MembershipChange::Replace(target.clone()))
        .unwrap();
    let joint = c.raft(l.0).membership().clone();
    assert!(joint.is_joint());
    assert!(
        joint.validate().is_ok(),
        "the joint config is structurally valid"
    );
    c.run_for(500, 10);
    assert_eq!(c.raft(l.0).membership(), &target);
    assert_eq!(c.raft(demoted.0).status().role, Role::Learner);
    c.propose("x");
    c.run_for(200, 10);
    assert!(
        c.applied_data(demoted.0)
            .contains(&Bytes::from_static(b"x"))
    );
}

#[test]
fn wants_snapshot_after_the_configured_number_of_applied_entries() {
    let cfg = Config {
        snapshot_threshold_entries: 5,
        ..test_config()
    };
    let mut c = Cluster::new(1, cfg, 63);
    c.elect();
    c.run_for(20, 10);
    assert!(!c.raft(1).wants_snapshot());
    for i in 0..5 {
        c.propose(&format!("v{i}"));
    }
    c.run_for(20, 10);
    assert!(c.raft(1).wants_snapshot());
    c.snapshot(1);
    assert!(!c.raft(1).wants_snapshot());
}

#[test]
fn requests_to_a_node_without_a_leader_are_refused() {
    let mut r = single(1, &[1, 2, 3]);
    assert_eq!(
        r.read_index(1),
        Err(ProposeError::NotLeader { leader: None })
    );
    assert_eq!(
        r.propose(Bytes::new()),
        Err(ProposeError::NotLeader { leader: None })
    );
    assert_eq!(
        r.change_membership(MembershipChange::AddLearner(NodeId(4))),
        Err(ProposeError::NotLeader { leader: None })
    );
    assert_eq!(
        r.transfer_leader(NodeId(2)),
        Err(ProposeError::NotLeader { leader: None })
    );
    assert!(!r.has_ready(), "refusals change nothing");
}

#[test]
fn a_follower_reports_the_leader_hint() {
    let mut c = Cluster::new(3, test_config(), 64);
    let l = c.elect();
    c.run_for(50, 10);
    let f = c.ids().into_iter().find(|i| *i != l).unwrap();
    assert_eq!(
        c.raft_mut(f.0).propose(Bytes::new()),
        Err(ProposeError::NotLeader { leader: Some(l) })
    );
}

#[test]
fn a_deposed_leader_drops_the_snapshot_sends_it_decided() {
    let cfg = Config {
        snapshot_trailing_entries: 0,
        ..test_config()
    };
    let mut c = Cluster::new(3, cfg, 65);
    let l = c.elect();
    c.run_for(100, 10);
    let others: Vec<NodeId> = c.ids().into_iter().filter(|i| *i != l).collect();
    c.isolate(others[0].0);
    for i in 0..5 {
        c.propose(&format!("v{i}"));
    }
    c.run_for(50, 10);
    c.snapshot(l.0);
    let term = c.raft(l.0).term();
    let start = c.raft(l.0).log_start().index;
    // The lagging follower's rejection makes the leader decide a snapshot…
    c.raft_mut(l.0).step(
        others[0],
        Message::AppendResponse(AppendResponse {
            term,
            round: 0,
            outcome: AppendOutcome::Conflict {
                rejected_prev: start,
                hint: LogId::default(),
            },
        }),
    );
    // …then a newer leader appears before the Ready is taken.
    c.raft_mut(l.0).step(
        others[1],
        Message::Heartbeat {
            term: Term(term.0 + 1),
            commit: LogIndex(0),
            round: 1,
        },
    );
    assert_eq!(c.raft(l.0).role(), Role::Follower);
    let rd = c.raft_mut(l.0).ready();
    assert!(rd.send_snapshots.is_empty());
}
