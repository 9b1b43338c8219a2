//! Unit tests of the core: the term gate on every message kind, exact Ready contents, reads.

use crate::raft::testkit::*;
use crate::raft::*;

fn vote_req(from: NodeId, to: NodeId, term: Term, lli: LogIndex, llt: Term) -> Message {
    msg(
        from,
        to,
        term,
        MessageBody::RequestVote {
            last_log_index: lli,
            last_log_term: llt,
        },
    )
}

fn append_resp(
    from: NodeId,
    to: NodeId,
    term: Term,
    success: bool,
    match_index: LogIndex,
) -> Message {
    msg(
        from,
        to,
        term,
        MessageBody::AppendEntriesResponse {
            success,
            match_index,
            conflict_index: 0,
            conflict_term: 0,
            read_ctx: 0,
        },
    )
}

// ---------------------------------------------------------------- the term gate: lower terms

#[test]
fn lower_term_vote_request_is_rejected_with_current_term() {
    let mut c = core(1, 3, 5, None, &[]);
    c.step(vote_req(2, 1, 4, 10, 4));
    let rd = take_ready(&mut c);
    assert_eq!(
        rd.messages,
        vec![Message {
            from: 1,
            to: 2,
            term: 5,
            rpc_id: 7,
            body: MessageBody::RequestVoteResponse { granted: false }
        }]
    );
    assert!(rd.persisted_messages.is_empty());
    assert_eq!(
        c.hard_state().vote,
        None,
        "no vote given to a stale candidate"
    );
}

#[test]
fn lower_term_append_is_rejected_and_log_untouched() {
    let mut c = core(1, 3, 5, None, &[1, 2]);
    c.step(append(
        2,
        1,
        4,
        (2, 2),
        entries(&[1, 2, 4])[2..].to_vec(),
        3,
    ));
    let rd = take_ready(&mut c);
    assert_eq!(rd.messages.len(), 1);
    assert_eq!(rd.messages[0].term, 5);
    assert!(matches!(
        rd.messages[0].body,
        MessageBody::AppendEntriesResponse { success: false, .. }
    ));
    assert_eq!(c.status().last_index, 2);
    assert_eq!(c.status().leader, None, "a stale leader is not recognised");
}

#[test]
fn lower_term_replies_are_ignored() {
    let mut c = leader(1, &[1]);
    let term = c.status().term;
    c.step(append_resp(2, 1, term - 1, true, 2));
    c.step(msg(
        3,
        1,
        term - 1,
        MessageBody::RequestVoteResponse { granted: true },
    ));
    let rd = take_ready(&mut c);
    assert!(all_msgs(&rd).is_empty());
    assert_eq!(c.status().role, Role::Leader);
    assert_eq!(
        c.status().commit,
        0,
        "a stale ack must not count toward commit"
    );
}

// ---------------------------------------------------------------- the term gate: higher terms

#[test]
fn leader_steps_down_on_higher_term_in_append_reply() {
    let mut c = leader(1, &[]);
    c.step(append_resp(2, 1, 9, false, 0));
    let s = c.status();
    assert_eq!((s.role, s.term, s.leader), (Role::Follower, 9, None));
    let rd = take_ready(&mut c);
    assert_eq!(
        rd.hard_state,
        Some(HardState {
            term: 9,
            vote: None,
            commit: 0
        })
    );
    // A leader that stepped down stops sending heartbeats at once.
    for _ in 0..5 {
        c.tick();
    }
    let rd = take_ready(&mut c);
    assert!(all_msgs(&rd)
        .iter()
        .all(|m| !matches!(m.body, MessageBody::AppendEntries { .. })));
}

#[test]
fn candidate_steps_down_on_higher_term_in_vote_reply() {
    let mut c = core(1, 3, 1, None, &[]);
    campaign(&mut c);
    assert_eq!(c.status().role, Role::Candidate);
    take_ready(&mut c);
    c.step(msg(
        2,
        1,
        7,
        MessageBody::RequestVoteResponse { granted: false },
    ));
    assert_eq!((c.status().role, c.status().term), (Role::Follower, 7));
    assert_eq!(
        c.hard_state().vote,
        None,
        "the vote is cleared with the new term"
    );
}

#[test]
fn leader_steps_down_on_higher_term_vote_request_and_may_vote() {
    let mut c = leader(1, &[]);
    let term = c.status().term;
    c.step(vote_req(3, 1, term + 1, 10, term));
    assert_eq!(c.status().role, Role::Follower);
    let rd = take_ready(&mut c);
    assert_eq!(rd.hard_state.unwrap().vote, Some(3));
    assert_eq!(rd.persisted_messages.len(), 1);
    assert!(matches!(
        rd.persisted_messages[0].body,
        MessageBody::RequestVoteResponse { granted: true }
    ));
}

#[test]
fn follower_adopts_higher_term_and_leader_from_append() {
    let mut c = core(1, 3, 2, Some(1), &[1]);
    c.step(append(3, 1, 4, (1, 1), vec![], 0));
    let s = c.status();
    assert_eq!((s.role, s.term, s.leader), (Role::Follower, 4, Some(3)));
    assert_eq!(c.hard_state().vote, None);
}

#[test]
fn candidate_returns_to_follower_on_append_of_its_term() {
    let mut c = core(1, 3, 0, None, &[]);
    campaign(&mut c);
    let term = c.status().term;
    take_ready(&mut c);
    c.step(append(2, 1, term, (0, 0), vec![], 0));
    let s = c.status();
    assert_eq!((s.role, s.term, s.leader), (Role::Follower, term, Some(2)));
    assert_eq!(
        c.hard_state().vote,
        Some(1),
        "same term: the vote for itself stays"
    );
}

// ---------------------------------------------------------------- Ready contents

#[test]
fn campaign_ready_persists_vote_before_asking() {
    let mut c = core(1, 3, 3, None, &[1, 3]);
    campaign(&mut c);
    let rd = take_ready(&mut c);
    assert_eq!(
        rd.hard_state,
        Some(HardState {
            term: 4,
            vote: Some(1),
            commit: 0
        })
    );
    assert!(
        rd.messages.is_empty(),
        "vote requests depend on the persisted vote"
    );
    let mut tos: Vec<NodeId> = rd.persisted_messages.iter().map(|m| m.to).collect();
    tos.sort();
    assert_eq!(tos, vec![2, 3]);
    for m in &rd.persisted_messages {
        assert_eq!(
            m.body,
            MessageBody::RequestVote {
                last_log_index: 2,
                last_log_term: 3
            }
        );
        assert_eq!(m.term, 4);
    }
}

#[test]
fn new_leader_appends_noop_and_sends_before_its_own_flush() {
    let mut c = core(1, 3, 1, None, &[1]);
    campaign(&mut c);
    take_ready(&mut c);
    c.step(msg(
        3,
        1,
        2,
        MessageBody::RequestVoteResponse { granted: true },
    ));
    let rd = c.ready();
    assert_eq!(
        rd.entries,
        vec![Entry {
            term: 2,
            index: 2,
            payload: Payload::Noop
        }]
    );
    // §10.2.1: appends go out in `messages`, in parallel with the leader's own write.
    assert_eq!(rd.messages.len(), 2);
    for m in &rd.messages {
        match &m.body {
            MessageBody::AppendEntries {
                prev_log_index,
                entries,
                ..
            } => {
                assert_eq!(*prev_log_index, 1);
                assert_eq!(entries.len(), 1);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    c.advance();
}

#[test]
fn append_ack_waits_for_persistence_and_carries_rpc_id() {
    let mut c = core(2, 3, 1, None, &[]);
    c.step(append(1, 2, 1, (0, 0), entries(&[1, 1]), 0));
    let rd = take_ready(&mut c);
    assert_eq!(rd.entries.len(), 2);
    assert!(rd.messages.is_empty());
    assert_eq!(rd.persisted_messages.len(), 1);
    let ack = &rd.persisted_messages[0];
    assert_eq!(ack.rpc_id, 7);
    assert!(matches!(
        ack.body,
        MessageBody::AppendEntriesResponse {
            success: true,
            match_index: 2,
            ..
        }
    ));
}

#[test]
fn leader_commits_only_after_its_own_flush() {
    let mut c = leader(0, &[]);
    let term = c.status().term;
    let p = c.propose(b"x".to_vec()).unwrap();
    assert_eq!(p, Proposed { index: 2, term });
    let rd = c.ready();
    assert_eq!(rd.entries.len(), 1);
    // Follower 2 acks entry 2 before the leader's own write of it is done: node 2 plus the
    // leader's durable prefix (index 1) is a quorum only for index 1.
    c.step_after_ready_for_test(append_resp(2, 1, term, true, 2));
    assert_eq!(
        c.status().commit,
        1,
        "the leader's unflushed copy must not count"
    );
    assert!(rd.committed_entries.is_empty());
    c.advance();
    assert_eq!(
        c.status().commit,
        2,
        "after its own flush the leader's copy counts"
    );
    let rd = take_ready(&mut c);
    assert_eq!(
        rd.committed_entries
            .iter()
            .map(|e| e.index)
            .collect::<Vec<_>>(),
        vec![1, 2]
    );
}

#[test]
fn single_node_commits_on_its_own_flush() {
    let mut c = RaftCore::new(cfg(1, &[]), HardState::default(), vec![]).unwrap();
    campaign(&mut c);
    assert_eq!(
        c.status().role,
        Role::Candidate,
        "a lone node's own vote is a quorum only once durable"
    );
    let rd = take_ready(&mut c);
    assert_eq!(rd.hard_state.map(|h| (h.term, h.vote)), Some((1, Some(1))));
    assert!(all_msgs(&rd).is_empty());
    assert_eq!(c.status().role, Role::Leader, "a lone node elects itself");
    take_ready(&mut c);
    let rd = take_ready(&mut c);
    assert_eq!(
        rd.committed_entries.len(),
        1,
        "its no-op commits after its flush"
    );
    c.propose(b"a".to_vec()).unwrap();
    take_ready(&mut c);
    let rd = take_ready(&mut c);
    assert_eq!(rd.committed_entries.len(), 1);
    c.read_index(42).unwrap();
    let rd = take_ready(&mut c);
    assert_eq!(rd.read_states, vec![ReadState { id: 42, index: 2 }]);
}

/// Issue 15: a sole voter leads only once its vote for itself is durable. Were it to lead at
/// once, the entries of its new term could reach a learner (or a node it is removing) and the
/// node crash before the term is on disk; back in the old term, it could vote for another
/// candidate of the same term (the simulator's `--membership` seed 612).
#[test]
fn a_sole_voter_sends_nothing_of_its_new_term_before_its_vote_is_durable() {
    let with_learner = || {
        let mut m = Membership::with_voters([1]);
        m.learners.insert(2);
        RaftCore::restore_with_membership(
            cfg(1, &[2]),
            HardState::default(),
            SnapshotMeta::default(),
            Some(m),
            vec![],
        )
        .unwrap()
    };
    let mut c = with_learner();
    campaign(&mut c);
    let rd = take_ready(&mut c);
    assert!(rd.hard_state.is_some_and(|h| h.term == 1));
    assert!(
        all_msgs(&rd).is_empty(),
        "no append of term 1 leaves with the vote that makes it leader"
    );
    assert_eq!(c.status().role, Role::Leader);
    let rd = take_ready(&mut c);
    assert!(all_msgs(&rd).iter().any(|m| m.to == 2 && m.term == 1));

    // Control: leading at once, its first Ready both persists the vote and sends appends.
    let mut c = with_learner();
    c.set_mutation(Mutation::LeadBeforeVotePersisted);
    campaign(&mut c);
    assert_eq!(c.status().role, Role::Leader);
    let rd = take_ready(&mut c);
    assert!(rd.hard_state.is_some_and(|h| h.term == 1));
    assert!(all_msgs(&rd).iter().any(|m| m.to == 2 && m.term == 1));
}

#[test]
fn followers_refuse_proposals_and_reads_with_leader_hint() {
    let mut c = core(2, 3, 1, None, &[]);
    c.step(append(3, 2, 1, (0, 0), vec![], 0));
    assert_eq!(
        c.propose(vec![1]),
        Err(NotLeader { leader: Some(3) }.into())
    );
    assert_eq!(c.read_index(1), Err(NotLeader { leader: Some(3) }));
}

#[test]
fn restart_reapplies_committed_prefix() {
    let hs = HardState {
        term: 3,
        vote: Some(2),
        commit: 2,
    };
    let mut c = RaftCore::new(cfg(1, &[2, 3]), hs, entries(&[1, 2, 3])).unwrap();
    let rd = take_ready(&mut c);
    assert_eq!(rd.committed_entries.len(), 2);
    assert_eq!(rd.hard_state, None, "nothing new to persist");
    assert_eq!(c.status().term, 3);
}

#[test]
fn restart_clamps_commit_hint_to_log() {
    let hs = HardState {
        term: 3,
        vote: None,
        commit: 9,
    };
    let c = RaftCore::new(cfg(1, &[2, 3]), hs, entries(&[1])).unwrap();
    assert_eq!(c.status().commit, 1);
}

// ---------------------------------------------------------------- reads

#[test]
fn read_index_waits_for_quorum_confirmation() {
    let mut net = Net::new(3);
    let l = net.elect();
    net.settle();
    net.nodes.get_mut(&l).unwrap().read_index(5).unwrap();
    // Cut the leader off: the read must never be confirmed.
    net.isolate(l);
    net.settle();
    for _ in 0..3 {
        net.nodes.get_mut(&l).unwrap().tick();
        net.settle();
    }
    assert!(
        net.reads[&l].is_empty(),
        "an isolated leader must not confirm a read"
    );
    net.heal();
    net.nodes.get_mut(&l).unwrap().tick();
    net.settle();
    assert_eq!(net.reads[&l].len(), 1);
    assert_eq!(net.reads[&l][0].id, 5);
}

#[test]
fn new_leader_defers_reads_until_its_noop_commits() {
    let mut c = leader(0, &[]);
    let term = c.status().term;
    c.read_index(9).unwrap();
    let rd = take_ready(&mut c);
    assert!(rd.read_states.is_empty());
    c.step(append_resp(2, 1, term, true, 1));
    // The no-op is committed; the read now needs one heartbeat round confirmed.
    let rd = take_ready(&mut c);
    assert!(rd.read_states.is_empty());
    let round = rd
        .messages
        .iter()
        .find_map(|m| match m.body {
            MessageBody::AppendEntries { read_ctx, .. } if m.to == 3 => Some(read_ctx),
            _ => None,
        })
        .expect("a heartbeat carrying the read round");
    assert!(round > 0);
    c.step(read_ack(3, term, round));
    let rd = take_ready(&mut c);
    assert_eq!(rd.read_states, vec![ReadState { id: 9, index: 1 }]);
}

/// The read round carried by the heartbeats of `rd` to `to`, if `rd` has one.
fn heartbeat_round(rd: &Ready, to: NodeId) -> Option<u64> {
    rd.messages.iter().find_map(|m| match &m.body {
        MessageBody::AppendEntries {
            read_ctx, entries, ..
        } if m.to == to && entries.is_empty() => Some(*read_ctx),
        _ => None,
    })
}

fn read_ack(from: NodeId, term: Term, round: u64) -> Message {
    msg(
        from,
        1,
        term,
        MessageBody::AppendEntriesResponse {
            success: true,
            match_index: 1,
            conflict_index: 0,
            conflict_term: 0,
            read_ctx: round,
        },
    )
}

/// A leader of term 1 whose no-op is committed, so reads need only a heartbeat round.
fn leader_ready_for_reads() -> (RaftCore, Term) {
    let mut c = leader(0, &[]);
    let term = c.status().term;
    c.step(append_resp(2, 1, term, true, 1));
    take_ready(&mut c);
    (c, term)
}

/// The ids of the reads the next Ready serves.
fn served_reads(c: &mut RaftCore) -> Vec<u64> {
    take_ready(c).read_states.iter().map(|r| r.id).collect()
}

#[test]
fn one_read_round_in_flight_carries_every_read_that_arrived_meanwhile() {
    let (mut c, term) = leader_ready_for_reads();
    c.read_index(1).unwrap();
    let first = heartbeat_round(&take_ready(&mut c), 2).expect("the first read starts a round");
    // Reads arriving while that round is out wait for it: no new heartbeats.
    c.read_index(2).unwrap();
    c.read_index(3).unwrap();
    let rd = take_ready(&mut c);
    assert_eq!(
        heartbeat_round(&rd, 2),
        None,
        "a second round while one is out"
    );
    assert!(rd.read_states.is_empty());
    // The first round is confirmed: read 1 is served and the next round goes out at once.
    c.step(read_ack(2, term, first));
    let rd = take_ready(&mut c);
    assert_eq!(rd.read_states, vec![ReadState { id: 1, index: 1 }]);
    let second = heartbeat_round(&rd, 3).expect("the waiting reads' round is sent");
    assert!(second > first);
    // An answer to the old round serves none of the waiting reads.
    c.step(read_ack(3, term, first));
    assert!(take_ready(&mut c).read_states.is_empty());
    c.step(read_ack(3, term, second));
    let served = served_reads(&mut c);
    assert_eq!(served, vec![2, 3]);
}

#[test]
fn a_waiting_read_round_goes_out_with_the_next_heartbeat_if_answers_are_lost() {
    let (mut c, term) = leader_ready_for_reads();
    c.read_index(1).unwrap();
    let first = heartbeat_round(&take_ready(&mut c), 2).expect("a round");
    c.read_index(2).unwrap();
    take_ready(&mut c);
    // The first round's answers are lost; the periodic heartbeat carries the waiting round.
    let mut round = None;
    for _ in 0..20 {
        c.tick();
        if c.has_ready() {
            round = round.or(heartbeat_round(&take_ready(&mut c), 2));
        }
        if round.is_some() {
            break;
        }
    }
    let round = round.expect("a heartbeat within one heartbeat interval");
    assert!(round > first);
    c.step(read_ack(2, term, round));
    let served = served_reads(&mut c);
    assert_eq!(served, vec![1, 2]);
}

// ---------------------------------------------------------------- hostile input

#[test]
fn malformed_appends_are_rejected_without_panic() {
    let mut c = core(2, 3, 1, None, &[1, 1]);
    // Non-contiguous indexes.
    let mut bad = entries(&[1, 1, 1]);
    bad[2].index = 99;
    c.step(append(1, 2, 1, (0, 0), bad, 0));
    // Absurd indexes and commit.
    c.step(append(1, 2, 1, (u64::MAX, 1), vec![], u64::MAX));
    c.step(append(1, 2, 1, (u64::MAX - 1, 1), entries(&[1]), u64::MAX));
    let rd = take_ready(&mut c);
    assert_eq!(c.status().last_index, 2);
    assert_eq!(c.status().commit, 0);
    assert_eq!(
        all_msgs(&rd).len(),
        3,
        "every request still gets exactly one answer"
    );
    // Absurd acknowledgement to a leader is clamped to what it has.
    let mut l = leader(0, &[]);
    let t = l.status().term;
    l.step(append_resp(2, 1, t, true, u64::MAX));
    assert!(l.status().commit <= l.status().last_index);
}

impl RaftCore {
    /// Steps a message while a Ready is out (only for tests that model a reply racing the
    /// leader's own flush; the driver never does this).
    fn step_after_ready_for_test(&mut self, m: Message) {
        let saved = self.in_flight.take();
        self.step(m);
        self.in_flight = saved;
    }
}

// ---------------------------------------------------------------- mutations, on purpose

/// Node 1 asks node 2 for its vote in term 2; the grant is delayed until node 1 campaigns
/// again in term 3, while node 3 wins term 3 with node 2's vote. Returns the roles of nodes
/// 1 and 3 in term 3 after node 1 finally receives the stale grant.
fn stale_grant_arrives(mutation: Mutation) -> (Role, Role) {
    let until_term = |c: &mut RaftCore, term: Term| {
        for _ in 0..100 {
            if c.status().term >= term {
                break;
            }
            c.tick();
        }
        assert_eq!(c.status().term, term);
        take_ready(c)
    };
    let mut n1 = core(1, 3, 1, None, &[]);
    n1.set_mutation(mutation);
    let ask = all_msgs(&until_term(&mut n1, 2));
    let mut n2 = core(2, 3, 1, None, &[]);
    let to_n2 = ask
        .iter()
        .find(|m| m.to == 2)
        .expect("a vote request")
        .clone();
    n2.step(to_n2);
    let stale_grant = all_msgs(&take_ready(&mut n2)).remove(0);
    assert_eq!(stale_grant.term, 2);
    until_term(&mut n1, 3); // its term-3 requests are lost
    let mut n3 = core(3, 3, 2, None, &[]);
    let ask3 = all_msgs(&until_term(&mut n3, 3));
    n2.step(
        ask3.iter()
            .find(|m| m.to == 2)
            .expect("a vote request")
            .clone(),
    );
    for grant in all_msgs(&take_ready(&mut n2)) {
        n3.step(grant);
    }
    n1.step(stale_grant);
    (n1.status().role, n3.status().role)
}

#[test]
fn a_stale_vote_counted_makes_two_leaders_of_one_term() {
    assert_eq!(
        stale_grant_arrives(Mutation::CountStaleVotes),
        (Role::Leader, Role::Leader),
        "the mutation should elect both"
    );
    // Control: the term gate refuses the term-2 grant in term 3.
    assert_eq!(
        stale_grant_arrives(Mutation::None),
        (Role::Candidate, Role::Leader)
    );
}

proptest::proptest! {
    /// `quorum_value` is the `quorum`-th highest value, as sorting a copy would find it.
    #[test]
    fn quorum_value_is_the_quorum_th_highest(
        values in proptest::collection::vec(0u64..6, 1..8),
        quorum in 1usize..8,
    ) {
        let mut sorted = values.clone();
        sorted.sort_unstable_by(|a, b| b.cmp(a));
        let want = sorted.get(quorum - 1).copied().unwrap_or(0);
        proptest::prop_assert_eq!(super::quorum_value(values.iter().copied(), quorum), want);
    }
}

// ---------------------------------------------------------------- reads confirmed too early

/// Issue 11, defect 4: a ReadIndex round must be confirmed only by answers to messages sent
/// after the read arrived. Five nodes; leader L, transfer target T, and a follower F whose
/// acknowledgement of a write P is delayed:
///
/// 1. Read A opens round 1; its heartbeats go out and their answers are lost.
/// 2. Read A2 arrives while round 1 is unanswered: round 2 opens, not yet sent.
/// 3. A write P goes out to every follower; their acknowledgements are delayed.
/// 4. T's acknowledgement arrives (T now holds L's whole log) and L hands leadership to T
///    (TimeoutNow, which bypasses stickiness). L hears nothing more from anyone.
/// 5. T wins the next term and commits a write W.
/// 6. Read B arrives at L, which still believes it leads: B joins the open round 2.
/// 7. F's acknowledgement of P, sent in step 3 before B arrived, finally reaches L.
///
/// Returns how B was served at L (if at all) and W's index. Serving B without W is a stale
/// read: W was committed before B arrived.
fn read_after_transfer_with_a_late_ack(mutation: Mutation) -> (Option<ReadState>, LogIndex) {
    let mut net = Net::new(5);
    let l = net.elect();
    net.tick_all();
    net.nodes.get_mut(&l).unwrap().set_mutation(mutation);
    let followers: Vec<NodeId> = net.nodes.keys().copied().filter(|&id| id != l).collect();
    let (target, late) = (followers[0], followers[1]);
    let term = net.status(l).term;
    for &f in &followers {
        net.hold.insert((f, l));
    }
    fn leader(net: &mut Net, l: NodeId) -> &mut RaftCore {
        net.nodes.get_mut(&l).unwrap()
    }
    // 1.
    leader(&mut net, l).read_index(100).unwrap();
    net.settle();
    net.held.clear();
    // 2. and 3.
    leader(&mut net, l).read_index(101).unwrap();
    leader(&mut net, l).propose(b"p".to_vec()).unwrap();
    net.settle();
    // 4.
    net.release(|m| m.from == target);
    assert!(
        net.reads[&l].is_empty(),
        "no read can be served yet: only T answered"
    );
    leader(&mut net, l).transfer_leadership(target).unwrap();
    net.settle();
    // 5.
    assert_eq!(net.status(target).role, Role::Leader, "T took over");
    let w = net
        .nodes
        .get_mut(&target)
        .unwrap()
        .propose(b"w".to_vec())
        .unwrap();
    net.settle();
    assert!(net.status(target).commit >= w.index, "W is committed");
    // 6.
    assert_eq!(net.status(l).role, Role::Leader, "L has not heard of it");
    leader(&mut net, l).read_index(102).unwrap();
    net.settle();
    // 7.
    net.release(|m| m.from == late && m.term == term);
    let b = net.reads[&l].iter().find(|r| r.id == 102).copied();
    (b, w.index)
}

#[test]
fn a_read_is_never_confirmed_by_an_ack_sent_before_it_arrived() {
    let (b, w) = read_after_transfer_with_a_late_ack(Mutation::None);
    assert!(
        b.is_none_or(|b| b.index >= w),
        "stale read: read B served at {b:?} although W (index {w}) committed before it arrived"
    );
    // The mutation stamps appends with the open round: the same interleaving reads stale.
    let (b, w) = read_after_transfer_with_a_late_ack(Mutation::StampOpenReadRound);
    let b = b.expect("with the mutation, the late ack confirms read B");
    assert!(b.index < w, "{b:?} misses W at {w}");
}

// ---------------------------------------------------------------- refused payloads

fn undecodable_snapshot(from: NodeId, term: Term) -> Message {
    msg(
        from,
        1,
        term,
        MessageBody::InstallSnapshot {
            snapshot: Snapshot {
                membership: None,
                meta: SnapshotMeta { index: 9, term },
                data: bytes::Bytes::from_static(b"not a state machine"),
            },
        },
    )
}

/// The one answer `rd` sends, as (term, success).
fn refusal_answer(rd: &Ready) -> (Term, bool) {
    let all = all_msgs(rd);
    assert_eq!(all.len(), 1, "exactly one answer: {all:?}");
    assert_eq!(all[0].rpc_id, 7, "the answer carries the request's rpc_id");
    match all[0].body {
        MessageBody::AppendEntriesResponse { success, .. } => (all[0].term, success),
        ref b => panic!("not an append answer: {b:?}"),
    }
}

#[test]
fn a_refused_snapshot_from_a_lower_term_gets_the_term_rejection() {
    let mut c = core(1, 3, 5, None, &[1]);
    c.step_refused(undecodable_snapshot(2, 4));
    let rd = take_ready(&mut c);
    assert_eq!(refusal_answer(&rd), (5, false), "rejected with our term");
    assert_eq!(c.status().leader, None, "a stale leader is not followed");
}

#[test]
fn a_refused_snapshot_of_a_higher_term_makes_a_leader_step_down_first() {
    let mut l = leader(0, &[]);
    let term = l.status().term;
    l.step_refused(undecodable_snapshot(2, term + 1));
    let rd = take_ready(&mut l);
    assert_eq!(l.status().role, Role::Follower);
    assert_eq!(l.status().term, term + 1);
    assert_eq!(l.status().leader, Some(2));
    assert_eq!(refusal_answer(&rd), (term + 1, false));
    assert!(rd.snapshot.is_none(), "nothing installed");
    assert_eq!(rd.hard_state.map(|h| h.term), Some(term + 1));
}

#[test]
fn a_refused_snapshot_of_our_term_is_refused_and_counts_as_leader_contact() {
    let mut c = core(1, 3, 2, None, &[1]);
    campaign(&mut c);
    take_ready(&mut c);
    let term = c.status().term;
    assert_eq!(c.status().role, Role::Candidate);
    c.step_refused(undecodable_snapshot(3, term));
    let rd = take_ready(&mut c);
    assert_eq!(refusal_answer(&rd), (term, false));
    assert!(rd.snapshot.is_none());
    assert_eq!(
        (c.status().role, c.status().leader),
        (Role::Follower, Some(3)),
        "§5.2: a candidate hearing from the leader of its term follows it"
    );
    assert_eq!(c.status().last_index, 1, "the log is untouched");
}

// ---------------------------------------------------------------- stale rejections

fn reject_hint(from: NodeId, term: Term, conflict_index: LogIndex) -> Message {
    msg(
        from,
        1,
        term,
        MessageBody::AppendEntriesResponse {
            success: false,
            match_index: 0,
            conflict_index,
            conflict_term: 0,
            read_ctx: 0,
        },
    )
}

/// True if `rd` sends `to` a snapshot.
fn sends_snapshot(rd: &Ready, to: NodeId) -> bool {
    rd.messages
        .iter()
        .any(|m| m.to == to && matches!(m.body, MessageBody::InstallSnapshot { .. }))
}

/// Issue 11: a rejection of an append sent before a snapshot, arriving after the snapshot's
/// acknowledgement (it travels on another connection), must not move `matched` back nor send
/// the snapshot again. Leader 1 replicates to node 2; node 3 acknowledged the no-op, lost the
/// first batch of entries and rejected the second (hint 2, held back); the leader compacts,
/// finds node 3 stalled, sends it the snapshot, which node 3 acknowledges; then the old
/// rejection arrives.
#[test]
fn a_rejection_older_than_a_snapshot_ack_is_ignored() {
    let mut c = leader(0, &[]);
    let term = c.status().term;
    c.step(append_resp(3, 1, term, true, 1));
    take_ready(&mut c);
    for batch in [2u8..7, 7..12] {
        for i in batch {
            c.propose(vec![i]).unwrap();
        }
        take_ready(&mut c);
    }
    let late = reject_hint(3, term, 2);
    c.step(append_resp(2, 1, term, true, 11));
    take_ready(&mut c); // commits and applies 11
    assert_eq!(c.status().commit, 11);
    c.compact(11);
    // Node 3 answers heartbeats (anchored at 0: its match is compacted) until the leader
    // sees its window stalled and sends the snapshot.
    let mut snapshot_sent = false;
    for _ in 0..20 {
        c.tick();
        let rd = take_ready(&mut c);
        snapshot_sent = sends_snapshot(&rd, 3);
        if !snapshot_sent && heartbeat_round(&rd, 3).is_some() {
            c.step(append_resp(3, 1, term, true, 0));
            snapshot_sent = sends_snapshot(&take_ready(&mut c), 3);
        }
        if snapshot_sent {
            break;
        }
    }
    assert!(snapshot_sent, "node 3 stalled and gets the snapshot");
    c.step(append_resp(3, 1, term, true, 11));
    take_ready(&mut c);
    assert_eq!(c.progress[&3].matched, 11);

    c.step(late);
    let rd = take_ready(&mut c);
    assert_eq!(c.progress[&3].matched, 11, "match never moves back");
    assert!(!sends_snapshot(&rd, 3), "no second snapshot");
    // Node 3 keeps answering heartbeats at its match: nothing more is sent to it.
    for _ in 0..10 {
        c.tick();
        let rd = take_ready(&mut c);
        assert!(!sends_snapshot(&rd, 3), "no second snapshot later either");
        for m in all_msgs(&rd).into_iter().filter(|m| m.to == 3) {
            if let MessageBody::AppendEntries { prev_log_index, .. } = m.body {
                c.step(append_resp(3, 1, term, true, prev_log_index.max(11)));
            }
        }
    }
    assert_eq!(c.progress[&3].matched, 11);
}

// ---------------------------------------------------------------- repeated warnings

/// A log sink for one test (tracing's fmt layer writing into a shared buffer).
#[derive(Clone, Default)]
struct LogBuf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Issue 11: a follower that will never accept its leader's log (it holds a different
/// committed entry) logged one warning per AppendEntries, forever. Now: the first, then one
/// per `WARN_EVERY_TICKS`, carrying the count suppressed.
#[test]
fn a_stuck_follower_warns_once_per_interval_not_once_per_message() {
    use super::warn_limit::WARN_EVERY_TICKS;
    let buf = LogBuf::default();
    let sink = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || sink.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        let mut c = core(2, 3, 1, None, &[1, 1]);
        c.step(append(1, 2, 1, (2, 1), vec![], 2));
        take_ready(&mut c);
        assert_eq!(c.status().commit, 2);
        let conflicting = Entry {
            term: 2,
            index: 2,
            payload: Payload::Noop,
        };
        for _ in 0..3 * WARN_EVERY_TICKS {
            c.tick();
            for _ in 0..10 {
                c.step(append(3, 2, 2, (1, 1), vec![conflicting.clone()], 2));
                let rd = take_ready(&mut c);
                assert_eq!(all_msgs(&rd).len(), 1, "each one is still answered");
            }
        }
    });
    let logs = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    let warnings: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("refusing to overwrite a committed entry"))
        .collect();
    assert_eq!(warnings.len(), 3, "one per interval:\n{logs}");
    assert!(warnings[0].contains("suppressed=0"), "{}", warnings[0]);
    assert!(
        warnings[1].contains(&format!("suppressed={}", 10 * WARN_EVERY_TICKS - 1)),
        "{}",
        warnings[1]
    );
}

/// A refusal without a hint (the follower will not overwrite a committed entry, or found the
/// batch malformed) says nothing about where its log ends: the leader used to restart from
/// index 1 and resend its whole log at once, which the follower refused again, in a loop
/// (issue 11's stuck node logged at 5.6 MiB/s). Now it changes nothing until the window
/// stalls.
#[test]
fn a_refusal_without_a_hint_neither_lowers_the_match_nor_resends_the_log() {
    let mut c = leader(0, &[]);
    let term = c.status().term;
    for i in 0..5u8 {
        c.propose(vec![i]).unwrap();
    }
    take_ready(&mut c);
    c.step(append_resp(3, 1, term, true, 6));
    take_ready(&mut c);
    c.propose(vec![9]).unwrap();
    take_ready(&mut c);
    c.step(reject_hint(3, term, 0));
    let rd = take_ready(&mut c);
    assert_eq!(c.progress[&3].matched, 6);
    assert!(
        all_msgs(&rd).iter().all(|m| m.to != 3),
        "nothing resent at once: {rd:?}"
    );
}

// ---------------------------------------------------------------- message byte cap

/// Node 1 of 3 leads and has ten 600 KiB entries to send, and node 2 asks for all of them
/// (its log is empty); returns the entries of each AppendEntries the leader sends node 2,
/// each acknowledged as it comes.
fn appends_to_an_empty_follower(mutation: Mutation) -> Vec<Vec<Entry>> {
    let mut c = leader(1, &[1]);
    c.set_mutation(mutation);
    for _ in 0..10 {
        c.propose(vec![7u8; 600 << 10]).unwrap();
    }
    take_ready(&mut c);
    let t = c.status().term;
    let rejected = MessageBody::AppendEntriesResponse {
        success: false,
        match_index: 0,
        conflict_index: 1,
        conflict_term: 0,
        read_ctx: 0,
    };
    c.step(msg(2, 1, t, rejected));
    let collect = |c: &mut RaftCore, sent: &mut Vec<Vec<Entry>>| {
        for m in take_ready(c).messages {
            if let (2, MessageBody::AppendEntries { entries, .. }) = (m.to, m.body) {
                sent.push(entries);
            }
        }
    };
    let mut sent = Vec::new();
    collect(&mut c, &mut sent);
    for _ in 0..20 {
        let Some(matched) = sent.last().and_then(|e| e.last()).map(|e| e.index) else {
            break;
        };
        if matched == c.status().last_index {
            break;
        }
        c.step(append_resp(2, 1, t, true, matched));
        collect(&mut c, &mut sent);
    }
    sent
}

#[test]
fn the_leader_caps_appends_by_bytes() {
    // From the start: the one-byte entry and the no-op together, then one 600 KiB entry per
    // message (two exceed the 1 MiB cap).
    let sent = appends_to_an_empty_follower(Mutation::None);
    let counts: Vec<usize> = sent.iter().map(Vec::len).collect();
    assert_eq!(counts, [3, 1, 1, 1, 1, 1, 1, 1, 1, 1]);
    for entries in &sent {
        assert!(append_bytes(entries) <= DEFAULT_MAX_BYTES_PER_MESSAGE);
    }
    // Control: without the cap, one message carries all twelve (nearly 6 MiB).
    let sent = appends_to_an_empty_follower(Mutation::NoByteCap);
    assert_eq!(sent[0].len(), 12);
    assert!(append_bytes(&sent[0]) > 10 * (600 << 10));
}
