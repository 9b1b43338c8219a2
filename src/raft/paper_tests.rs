//! One test per rule of the Raft paper's Figure 2 and §5 (extended version, Ongaro &
//! Ousterhout 2014), each named after the rule it checks.

use crate::raft::testkit::*;
use crate::raft::*;

fn entry(term: Term, index: LogIndex) -> Entry {
    Entry {
        term,
        index,
        payload: Payload::Command(vec![index as u8].into()),
    }
}

fn reply(rd: &Ready) -> MessageBody {
    let all = all_msgs(rd);
    assert_eq!(all.len(), 1, "exactly one reply expected, got {all:?}");
    all[0].body.clone()
}

/// §5.2: "If election timeout elapses without receiving AppendEntries from current leader or
/// granting vote to candidate: convert to candidate", with a randomized timeout.
#[test]
fn s5_2_follower_times_out_into_candidate_within_randomized_window() {
    let mut seen = std::collections::BTreeSet::new();
    for seed in 0..20 {
        let mut c = cfg(1, &[2, 3]);
        c.seed = seed;
        let mut core = RaftCore::new(c, HardState::default(), vec![]).unwrap();
        let mut ticks = 0;
        while core.status().role == Role::Follower {
            core.tick();
            ticks += 1;
        }
        assert!(
            (10..20).contains(&ticks),
            "timeout {ticks} outside [10, 20)"
        );
        seen.insert(ticks);
        assert_eq!(
            (core.status().role, core.status().term),
            (Role::Candidate, 1)
        );
    }
    assert!(seen.len() > 3, "timeouts must be randomized, saw {seen:?}");
}

/// §5.2: AppendEntries from the current leader resets the election timer.
#[test]
fn s5_2_heartbeats_keep_a_follower_from_campaigning() {
    let mut c = core(1, 3, 1, None, &[]);
    for _ in 0..100 {
        c.tick();
        c.step(append(2, 1, 1, (0, 0), vec![], 0));
        take_ready(&mut c);
    }
    assert_eq!(c.status().role, Role::Follower);
}

/// Figure 2 RequestVote rule 2: vote for at most one candidate per term.
#[test]
fn fig2_request_vote_one_vote_per_term() {
    let mut c = core(1, 3, 1, None, &[]);
    c.step(msg(
        2,
        1,
        2,
        MessageBody::RequestVote {
            last_log_index: 0,
            last_log_term: 0,
        },
    ));
    assert_eq!(
        reply(&take_ready(&mut c)),
        MessageBody::RequestVoteResponse { granted: true }
    );
    c.step(msg(
        3,
        1,
        2,
        MessageBody::RequestVote {
            last_log_index: 0,
            last_log_term: 0,
        },
    ));
    assert_eq!(
        reply(&take_ready(&mut c)),
        MessageBody::RequestVoteResponse { granted: false }
    );
    // The same candidate asking again (a retransmission) gets the same answer.
    c.step(msg(
        2,
        1,
        2,
        MessageBody::RequestVote {
            last_log_index: 0,
            last_log_term: 0,
        },
    ));
    assert_eq!(
        reply(&take_ready(&mut c)),
        MessageBody::RequestVoteResponse { granted: true }
    );
}

/// §5.4.1: deny the vote if the candidate's log is less up-to-date than ours.
#[test]
fn s5_4_1_vote_requires_up_to_date_log() {
    // Our log: terms [1, 2, 2]; last (term 2, index 3).
    let cases = [
        ((3, 1), false), // lower last term, longer log
        ((2, 2), false), // same last term, shorter
        ((3, 2), true),  // same
        ((4, 2), true),  // same term, longer
        ((1, 3), true),  // higher last term, shorter
    ];
    for ((lli, llt), want) in cases {
        let mut c = core(1, 3, 2, None, &[1, 2, 2]);
        c.step(msg(
            2,
            1,
            3,
            MessageBody::RequestVote {
                last_log_index: lli,
                last_log_term: llt,
            },
        ));
        assert_eq!(
            reply(&take_ready(&mut c)),
            MessageBody::RequestVoteResponse { granted: want },
            "candidate log (index {lli}, term {llt})"
        );
    }
}

/// §5.2: a candidate that receives votes from a majority becomes leader; a split vote does not.
#[test]
fn s5_2_candidate_wins_with_majority_only() {
    let mut c = core(1, 5, 0, None, &[]);
    campaign(&mut c);
    take_ready(&mut c);
    c.step(msg(
        2,
        1,
        1,
        MessageBody::RequestVoteResponse { granted: true },
    ));
    c.step(msg(
        3,
        1,
        1,
        MessageBody::RequestVoteResponse { granted: false },
    ));
    c.step(msg(
        4,
        1,
        1,
        MessageBody::RequestVoteResponse { granted: false },
    ));
    assert_eq!(c.status().role, Role::Candidate, "2 of 5 is not a majority");
    // A duplicate grant from the same voter is not a second vote.
    c.step(msg(
        2,
        1,
        1,
        MessageBody::RequestVoteResponse { granted: true },
    ));
    assert_eq!(c.status().role, Role::Candidate);
    c.step(msg(
        5,
        1,
        1,
        MessageBody::RequestVoteResponse { granted: true },
    ));
    assert_eq!(c.status().role, Role::Leader);
}

/// Figure 2 AppendEntries rule 2: reply false if the log has no entry at prevLogIndex whose
/// term matches prevLogTerm, with a hint so the leader skips a whole term (§5.3).
#[test]
fn fig2_append_rejects_mismatch_with_conflict_hint() {
    // Too short: hint is our last index + 1, term 0.
    let mut c = core(1, 3, 3, None, &[1, 1]);
    c.step(append(2, 1, 3, (5, 3), vec![], 0));
    assert!(matches!(
        reply(&take_ready(&mut c)),
        MessageBody::AppendEntriesResponse {
            success: false,
            conflict_index: 3,
            conflict_term: 0,
            ..
        }
    ));
    // Term mismatch: hint is the first index of our conflicting term.
    let mut c = core(1, 3, 3, None, &[1, 2, 2, 2]);
    c.step(append(2, 1, 3, (4, 3), vec![], 0));
    assert!(matches!(
        reply(&take_ready(&mut c)),
        MessageBody::AppendEntriesResponse {
            success: false,
            conflict_index: 2,
            conflict_term: 2,
            ..
        }
    ));
}

/// Figure 2 AppendEntries rule 3: a conflicting entry is deleted with all that follow it.
#[test]
fn fig2_append_truncates_at_first_conflict_only() {
    let mut c = core(1, 3, 2, None, &[1, 2, 2, 2]);
    c.step(append(2, 1, 3, (1, 1), vec![entry(2, 2), entry(3, 3)], 0));
    let rd = take_ready(&mut c);
    assert_eq!(
        rd.entries,
        vec![entry(3, 3)],
        "only the conflicting suffix is rewritten"
    );
    assert_eq!(c.status().last_index, 3);
    assert_eq!(c.entry(3).unwrap().term, 3);
}

/// Figure 2 AppendEntries rule 4 (and the Students' Guide pitfall): entries already present are
/// not rewritten, and a stale or duplicate append never truncates entries after it.
#[test]
fn fig2_append_of_present_entries_never_truncates() {
    let mut c = core(1, 3, 2, None, &[1, 2, 2]);
    c.step(append(2, 1, 2, (0, 0), vec![entry(1, 1)], 0));
    let rd = take_ready(&mut c);
    assert!(rd.entries.is_empty());
    assert_eq!(c.status().last_index, 3);
    assert!(matches!(
        reply(&rd),
        MessageBody::AppendEntriesResponse {
            success: true,
            match_index: 1,
            ..
        }
    ));
}

/// Figure 2 AppendEntries rule 5: commitIndex = min(leaderCommit, index of last new entry).
#[test]
fn fig2_append_commit_is_bounded_by_last_new_entry() {
    let mut c = core(1, 3, 1, None, &[1, 1, 1, 1]);
    // The leader only vouches for the prefix up to 2 in this message; our index 3-4 are unverified.
    c.step(append(2, 1, 1, (1, 1), vec![entry(1, 2)], 10));
    take_ready(&mut c);
    assert_eq!(c.status().commit, 2);
    // Commit never goes backwards.
    c.step(append(2, 1, 1, (1, 1), vec![], 1));
    take_ready(&mut c);
    assert_eq!(c.status().commit, 2);
}

/// Figure 8's setting: node 1 of 5 has [1, 2] (a term-2 entry from an old leader) and becomes
/// leader of term 4, its no-op at index 3; a majority (1, 2, 3) then holds index 2. Returns
/// the leader and its commit index at that point.
fn figure8_old_entry_on_a_majority(mutation: Mutation) -> (RaftCore, LogIndex) {
    let mut c = core(1, 5, 3, None, &[1, 2]);
    c.set_mutation(mutation);
    campaign(&mut c);
    take_ready(&mut c);
    for v in [2, 3] {
        c.step(msg(
            v,
            1,
            4,
            MessageBody::RequestVoteResponse { granted: true },
        ));
    }
    assert_eq!(c.status().role, Role::Leader);
    take_ready(&mut c); // no-op (term 4) at index 3 persisted
    for from in [2, 3] {
        c.step(figure8_ack(from, 2));
    }
    let commit = c.status().commit;
    (c, commit)
}

fn figure8_ack(from: NodeId, match_index: LogIndex) -> Message {
    msg(
        from,
        1,
        4,
        MessageBody::AppendEntriesResponse {
            success: true,
            match_index,
            conflict_index: 0,
            conflict_term: 0,
            read_ctx: 0,
        },
    )
}

/// §5.4.2 / Figure 8: a leader never commits an entry of an earlier term by counting replicas;
/// it commits it only together with an entry of its own term.
#[test]
fn s5_4_2_figure8_old_term_entries_commit_only_via_current_term() {
    let (mut c, commit) = figure8_old_entry_on_a_majority(Mutation::None);
    assert_eq!(commit, 0, "Figure 8: old-term entry committed by counting");
    // Once the term-4 no-op is on a majority, everything up to it commits.
    for from in [2, 3] {
        c.step(figure8_ack(from, 3));
    }
    assert_eq!(c.status().commit, 3);
}

/// The check above catches `Mutation::CommitOldTerms` (the README's mutation table claims it):
/// with the mutation on, the term-2 entry commits by counting replicas.
#[test]
fn s5_4_2_figure8_check_catches_the_commit_old_terms_mutation() {
    let (_, commit) = figure8_old_entry_on_a_majority(Mutation::CommitOldTerms);
    assert_eq!(
        commit, 2,
        "the mutation commits the old-term entry by counting"
    );
    // Control: the same steps without it (the test above, in short).
    assert_eq!(figure8_old_entry_on_a_majority(Mutation::None).1, 0);
}

/// §5.3: a far-behind follower with a divergent log converges in a few round trips thanks to
/// the conflict hint (one per conflicting term, not one per entry).
#[test]
fn s5_3_far_behind_follower_catches_up_in_few_round_trips() {
    // Follower: 300 entries of term 1, then 300 of term 2 (never committed elsewhere).
    let mut follower_terms = vec![1; 300];
    follower_terms.extend(vec![2; 300]);
    let mut f = core(2, 3, 2, None, &follower_terms);
    // Leader: the same 300 entries of term 1, then 500 of term 3, leader of term 4.
    let mut leader_terms = vec![1; 300];
    leader_terms.extend(vec![3; 500]);
    let mut l = core(1, 3, 3, None, &leader_terms);
    campaign(&mut l);
    take_ready(&mut l);
    l.step(msg(
        3,
        1,
        4,
        MessageBody::RequestVoteResponse { granted: true },
    ));
    assert_eq!(l.status().role, Role::Leader);
    let mut rejections = 0;
    let mut round_trips = 0;
    let mut to_follower: Vec<Message> = all_msgs(&take_ready(&mut l))
        .into_iter()
        .filter(|m| m.to == 2)
        .collect();
    while !to_follower.is_empty() && round_trips < 50 {
        round_trips += 1;
        let mut to_leader = Vec::new();
        for m in to_follower.drain(..) {
            f.step(m);
        }
        for m in all_msgs(&take_ready(&mut f)) {
            if matches!(
                m.body,
                MessageBody::AppendEntriesResponse { success: false, .. }
            ) {
                rejections += 1;
            }
            to_leader.push(m);
        }
        for m in to_leader {
            l.step(m);
        }
        to_follower = all_msgs(&take_ready(&mut l))
            .into_iter()
            .filter(|m| m.to == 2)
            .collect();
        if f.status().last_index == l.status().last_index && f.entry(801).map(|e| e.term) == Some(4)
        {
            break;
        }
    }
    assert_eq!(f.status().last_index, 801);
    assert_eq!(
        f.entry(600).unwrap().term,
        3,
        "the divergent term-2 suffix was replaced"
    );
    assert!(
        rejections <= 2,
        "{rejections} rejections: the hint should skip whole terms"
    );
    assert!(
        round_trips <= 6,
        "{round_trips} round trips to catch up 500 entries"
    );
}

/// Figure 2 "Rules for servers": if commitIndex > lastApplied, apply; every node applies the
/// same entries in the same order (State Machine Safety), across a leader crash.
#[test]
fn fig2_all_nodes_apply_the_same_sequence_across_leader_failure() {
    let mut net = Net::new(3);
    let l1 = net.elect();
    for i in 0..5u8 {
        net.nodes.get_mut(&l1).unwrap().propose(vec![i]).unwrap();
    }
    net.settle();
    net.tick_all();
    // Crash the leader: what it persisted survives, nothing else.
    net.isolate(l1);
    let l2 = loop {
        net.tick_all();
        if let Some(c) = net
            .nodes
            .values()
            .find(|c| c.status().role == Role::Leader && c.status().id != l1)
        {
            break c.status().id;
        }
    };
    assert!(net.status(l2).term > net.status(l1).term);
    for i in 5..10u8 {
        net.nodes.get_mut(&l2).unwrap().propose(vec![i]).unwrap();
    }
    // The old leader, still believing it leads, takes writes that must never commit.
    let stale = net.nodes.get_mut(&l1).unwrap().propose(vec![99]);
    assert!(
        stale.is_ok(),
        "the cut-off node does not know it was deposed yet"
    );
    net.settle();
    net.restart(l1);
    net.heal();
    for _ in 0..30 {
        net.tick_all();
    }
    let commands = |id: NodeId| -> Vec<Vec<u8>> {
        net.applied[&id]
            .iter()
            .filter_map(|e| match &e.payload {
                Payload::Command(d) => Some(d.to_vec()),
                Payload::Noop | Payload::ConfChange(_) => None,
            })
            .collect()
    };
    let want: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i]).collect();
    for id in 1..=3 {
        assert_eq!(commands(id), want, "node {id} applied a different sequence");
    }
    assert_eq!(net.status(l1).role, Role::Follower);
}

/// Figure 2, persistent state: a restarted node keeps its term, vote and log, so it cannot vote
/// twice in one term.
#[test]
fn fig2_restart_keeps_term_vote_and_log() {
    let mut net = Net::new(3);
    let l = net.elect();
    net.nodes
        .get_mut(&l)
        .unwrap()
        .propose(b"x".to_vec())
        .unwrap();
    net.settle();
    for id in 1..=3 {
        let before = (
            net.status(id).term,
            net.nodes[&id].hard_state().vote,
            net.status(id).last_index,
        );
        net.restart(id);
        let after = (
            net.status(id).term,
            net.nodes[&id].hard_state().vote,
            net.status(id).last_index,
        );
        assert_eq!(before, after, "node {id}");
    }
}
