//! PreVote (Raft thesis §9.6), CheckQuorum and leader stickiness (§6.2, §4.2.3). Each
//! behavioural test has a control run without the feature, so it is shown able to fail.

use crate::raft::testkit::*;
use crate::raft::*;

fn full_core(id: NodeId, n: u64) -> RaftCore {
    let peers: Vec<NodeId> = (1..=n).filter(|&p| p != id).collect();
    RaftCore::new(
        cfg_full(id, &peers),
        HardState {
            term: 3,
            vote: None,
            commit: 0,
        },
        vec![],
    )
    .unwrap()
}

fn tick_until_messages(c: &mut RaftCore) -> Ready {
    for _ in 0..100 {
        c.tick();
        if c.has_ready() {
            let rd = take_ready(c);
            if !rd.messages.is_empty() || !rd.persisted_messages.is_empty() {
                return rd;
            }
        }
    }
    panic!("no messages after 100 ticks");
}

#[test]
fn timeout_sends_pre_votes_without_touching_term_or_vote() {
    let mut c = full_core(1, 3);
    let rd = tick_until_messages(&mut c);
    assert_eq!(c.status().term, 3, "a pre-vote does not bump the term");
    assert_eq!(c.status().role, Role::Follower);
    assert_eq!(
        rd.hard_state, None,
        "nothing to persist before the real election"
    );
    assert!(rd.persisted_messages.is_empty());
    assert_eq!(rd.messages.len(), 2);
    for m in &rd.messages {
        assert_eq!(m.term, 4, "asks about the next term");
        assert_eq!(
            m.body,
            MessageBody::PreVote {
                last_log_index: 0,
                last_log_term: 0
            }
        );
    }
}

#[test]
fn granted_pre_votes_start_the_real_election() {
    let mut c = full_core(1, 3);
    tick_until_messages(&mut c);
    // A grant carries the proposed term; it must not make the pre-candidate step down.
    c.step(msg(2, 1, 4, MessageBody::PreVoteResponse { granted: true }));
    let s = c.status();
    assert_eq!((s.role, s.term), (Role::Candidate, 4));
    let rd = take_ready(&mut c);
    assert_eq!(rd.hard_state.map(|h| (h.term, h.vote)), Some((4, Some(1))));
    assert!(rd
        .persisted_messages
        .iter()
        .all(|m| matches!(m.body, MessageBody::RequestVote { .. })));
}

#[test]
fn a_pre_vote_is_never_adopted_and_is_refused_while_the_leader_is_alive() {
    let mut c = full_core(2, 3);
    // Heard from leader 1 just now.
    c.step(msg(
        1,
        2,
        3,
        MessageBody::AppendEntries {
            prev_log_index: 0,
            prev_log_term: 0,
            entries: vec![],
            leader_commit: 0,
            read_ctx: 0,
        },
    ));
    take_ready(&mut c);
    c.step(msg(
        3,
        2,
        9,
        MessageBody::PreVote {
            last_log_index: 5,
            last_log_term: 3,
        },
    ));
    let rd = take_ready(&mut c);
    assert_eq!(c.status().term, 3, "the proposed term is not adopted");
    assert_eq!(c.status().leader, Some(1));
    assert_eq!(
        rd.messages[0].body,
        MessageBody::PreVoteResponse { granted: false }
    );
    assert_eq!(rd.messages[0].term, 3, "a refusal carries our own term");
    // Once the leader has been silent for an election timeout, the same request is granted.
    for _ in 0..10 {
        c.tick();
        take_ready(&mut c);
    }
    c.step(msg(
        3,
        2,
        9,
        MessageBody::PreVote {
            last_log_index: 5,
            last_log_term: 3,
        },
    ));
    let rd = take_ready(&mut c);
    let grant = rd.messages.iter().find(|m| m.to == 3).unwrap();
    assert_eq!(grant.body, MessageBody::PreVoteResponse { granted: true });
    assert_eq!(grant.term, 9, "a grant carries the proposed term");
    assert_eq!(c.status().term, 3);
    assert_eq!(
        c.hard_state().vote,
        None,
        "no vote is recorded for a pre-vote"
    );
}

#[test]
fn stickiness_refuses_a_real_vote_of_a_higher_term_while_the_leader_is_alive() {
    let mut c = full_core(2, 3);
    c.step(msg(
        1,
        2,
        3,
        MessageBody::AppendEntries {
            prev_log_index: 0,
            prev_log_term: 0,
            entries: vec![],
            leader_commit: 0,
            read_ctx: 0,
        },
    ));
    take_ready(&mut c);
    c.step(msg(
        3,
        2,
        7,
        MessageBody::RequestVote {
            last_log_index: 9,
            last_log_term: 6,
        },
    ));
    let rd = take_ready(&mut c);
    assert_eq!(
        (c.status().term, c.status().leader),
        (3, Some(1)),
        "no step-down while in lease"
    );
    assert_eq!(
        all_msgs(&rd)[0].body,
        MessageBody::RequestVoteResponse { granted: false }
    );
}

/// Thesis §9.6: a node flapping in and out of a partition never raises the healthy leader's
/// term. The control run without PreVote shows the same flapping does disrupt it.
#[test]
fn a_flapping_node_never_disrupts_a_healthy_leader() {
    fn flap(full: bool) -> (Term, Term, bool) {
        let mut net = Net::with_config(3, full);
        let leader = net.elect();
        let term = net.status(leader).term;
        let flapper = (1..=3).find(|&i| i != leader).unwrap();
        for _ in 0..5 {
            net.isolate(flapper);
            for _ in 0..40 {
                net.tick_all();
            }
            net.heal();
            for _ in 0..40 {
                net.tick_all();
            }
        }
        let now = net.status(leader);
        (term, now.term, now.role == Role::Leader)
    }
    let (before, after, still) = flap(true);
    assert_eq!(after, before, "PreVote: the leader's term must not move");
    assert!(still, "the same node still leads");
    let (before, after, _) = flap(false);
    assert!(
        after > before,
        "control: without PreVote the rejoining node bumps the term"
    );
}

/// CheckQuorum: a leader cut off from its majority steps down by itself within two election
/// timeouts, before it sees any higher term. Control: without CheckQuorum it stays leader.
#[test]
fn an_isolated_leader_steps_down_within_two_election_timeouts() {
    fn ticks_to_step_down(full: bool) -> Option<u32> {
        let mut net = Net::with_config(3, full);
        let leader = net.elect();
        net.isolate(leader);
        for t in 1..=100 {
            net.nodes.get_mut(&leader).unwrap().tick();
            net.settle();
            if net.status(leader).role != Role::Leader {
                return Some(t);
            }
        }
        None
    }
    let t = ticks_to_step_down(true).expect("isolated leader never stepped down");
    assert!(
        t <= 2 * 10,
        "stepped down after {t} ticks; the bound is 2 election timeouts (20)"
    );
    assert_eq!(
        ticks_to_step_down(false),
        None,
        "control: without CheckQuorum it stays leader"
    );
}

#[test]
fn a_leader_with_its_quorum_keeps_leading() {
    let mut net = Net::with_config(5, true);
    let leader = net.elect();
    let term = net.status(leader).term;
    // Two of five followers gone: the leader still hears from a majority.
    let gone: Vec<NodeId> = (1..=5).filter(|&i| i != leader).take(2).collect();
    for g in &gone {
        net.isolate(*g);
    }
    for _ in 0..100 {
        net.nodes.get_mut(&leader).unwrap().tick();
        net.settle();
    }
    assert_eq!(net.status(leader).role, Role::Leader);
    assert_eq!(net.status(leader).term, term);
}
