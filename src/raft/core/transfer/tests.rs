//! Leadership transfer: errors, catching a lagging target up before TimeoutNow, proposals
//! refused meanwhile, abandonment, and the stickiness exemption (with a control run).

use crate::raft::testkit::*;
use crate::raft::*;

fn append(from: NodeId, to: NodeId, term: Term) -> Message {
    msg(
        from,
        to,
        term,
        MessageBody::AppendEntries {
            prev_log_index: 0,
            prev_log_term: 0,
            entries: vec![],
            leader_commit: 0,
            read_ctx: 0,
        },
    )
}

#[test]
fn only_a_leader_transfers_and_only_to_another_member() {
    let mut net = Net::with_config(3, true);
    let l = net.elect();
    let f = (1..=3).find(|&i| i != l).unwrap();
    assert_eq!(
        net.nodes.get_mut(&f).unwrap().transfer_leadership(l),
        Err(TransferError::NotLeader(NotLeader { leader: Some(l) }))
    );
    let leader = net.nodes.get_mut(&l).unwrap();
    assert_eq!(
        leader.transfer_leadership(l),
        Err(TransferError::TargetIsSelf(l))
    );
    assert_eq!(
        leader.transfer_leadership(9),
        Err(TransferError::UnknownTarget(9))
    );
    assert_eq!(leader.transfer_target(), None);
}

#[test]
fn a_lagging_target_is_caught_up_before_timeout_now_and_then_wins() {
    let mut net = Net::with_config(3, true);
    let l = net.elect();
    let others: Vec<NodeId> = (1..=3).filter(|&i| i != l).collect();
    let (lagging, other) = (others[0], others[1]);
    let term = net.status(l).term;
    // The target misses ten entries, committed by the leader and the other follower.
    net.cut.insert((l, lagging));
    for i in 0..10u8 {
        net.nodes.get_mut(&l).unwrap().propose(vec![i]).unwrap();
    }
    net.settle();
    let last = net.status(l).last_index;
    assert_eq!(net.status(l).commit, last);
    assert!(net.status(lagging).last_index < last, "the target lags");
    net.heal();

    let leader = net.nodes.get_mut(&l).unwrap();
    leader.transfer_leadership(lagging).unwrap();
    assert_eq!(leader.transfer_target(), Some(lagging));
    assert!(
        matches!(
            leader.propose(vec![99]),
            Err(ProposeError::TransferInProgress { target }) if target == lagging
        ),
        "no new entries while handing over"
    );
    // The first thing the target gets is replication, not TimeoutNow.
    let rd = take_ready(leader);
    let to_target: Vec<&Message> = rd.messages.iter().filter(|m| m.to == lagging).collect();
    assert!(!to_target.is_empty());
    assert!(to_target
        .iter()
        .all(|m| matches!(m.body, MessageBody::AppendEntries { .. })));
    for m in rd.messages {
        net.nodes.get_mut(&m.to).unwrap().step(m);
    }
    net.settle();

    let s = net.status(lagging);
    assert_eq!(s.role, Role::Leader, "the target took over at once");
    assert_eq!(s.term, term + 1, "one election, no PreVote round");
    assert!(
        s.last_index > last,
        "it holds every entry plus its own no-op"
    );
    assert_eq!(net.status(l).role, Role::Follower);
    assert_eq!(net.status(other).leader, Some(lagging));
    assert_eq!(
        net.nodes.get_mut(&l).unwrap().transfer_target(),
        None,
        "stepping down ends the transfer"
    );
}

#[test]
fn a_transfer_that_does_not_happen_is_abandoned_after_an_election_timeout() {
    let mut net = Net::with_config(3, true);
    let l = net.elect();
    let target = (1..=3).find(|&i| i != l).unwrap();
    net.isolate(target);
    net.cut.remove(&(target, l)); // the leader still hears it; only its way in is cut
    net.nodes
        .get_mut(&l)
        .unwrap()
        .transfer_leadership(target)
        .unwrap();
    for _ in 0..9 {
        net.tick_all();
        assert!(net.nodes.get_mut(&l).unwrap().propose(vec![1]).is_err());
    }
    net.tick_all();
    let leader = net.nodes.get_mut(&l).unwrap();
    assert_eq!(leader.transfer_target(), None, "abandoned after 10 ticks");
    assert_eq!(leader.status().role, Role::Leader);
    assert!(leader.propose(vec![2]).is_ok(), "takes writes again");
}

#[test]
fn timeout_now_is_acted_on_only_from_the_current_leader() {
    let mut c = core(2, 3, 5, None, &[]);
    c.step(append(1, 2, 5));
    take_ready(&mut c);
    // From a node that is not our leader: acknowledged, ignored.
    c.step(msg(3, 2, 5, MessageBody::TimeoutNow));
    let rd = take_ready(&mut c);
    assert_eq!(c.status().role, Role::Follower);
    assert_eq!(rd.messages[0].body, MessageBody::TimeoutNowResponse);
    // From an earlier term: rejected by check_term like any message.
    c.step(msg(1, 2, 4, MessageBody::TimeoutNow));
    let rd = take_ready(&mut c);
    assert_eq!(c.status().term, 5);
    assert_eq!(rd.messages[0].body, MessageBody::TimeoutNowResponse);
    assert_eq!(rd.messages[0].term, 5);
    // From our leader: campaign now, with flagged vote requests, skipping PreVote.
    c.step(msg(1, 2, 5, MessageBody::TimeoutNow));
    let rd = take_ready(&mut c);
    assert_eq!((c.status().role, c.status().term), (Role::Candidate, 6));
    assert_eq!(rd.hard_state.map(|h| h.vote), Some(Some(2)));
    assert_eq!(rd.persisted_messages.len(), 2);
    assert!(rd.persisted_messages.iter().all(|m| m.body
        == MessageBody::TransferRequestVote {
            last_log_index: 0,
            last_log_term: 0
        }));
}

/// A vote request from node 2 to node 3 in term 6 with an empty log, flagged or not.
fn vote_request(flagged: bool) -> Message {
    let (last_log_index, last_log_term) = (0, 0);
    let body = if flagged {
        MessageBody::TransferRequestVote {
            last_log_index,
            last_log_term,
        }
    } else {
        MessageBody::RequestVote {
            last_log_index,
            last_log_term,
        }
    };
    msg(2, 3, 6, body)
}

/// A follower that heard from its leader just now, with CheckQuorum on.
fn sticky_follower() -> RaftCore {
    let mut c = RaftCore::new(
        cfg_full(3, &[1, 2]),
        HardState {
            term: 5,
            vote: None,
            commit: 0,
        },
        vec![],
    )
    .unwrap();
    c.step(append(1, 3, 5));
    take_ready(&mut c);
    c
}

#[test]
fn the_transfer_flag_bypasses_leader_stickiness_and_nothing_else() {
    // Control: a plain vote request of a higher term is refused while the leader is alive.
    let mut c = sticky_follower();
    c.step(vote_request(false));
    let rd = take_ready(&mut c);
    assert_eq!(c.status().term, 5, "stickiness: term not adopted");
    assert_eq!(
        rd.messages[0].body,
        MessageBody::RequestVoteResponse { granted: false }
    );

    // The same request with the transfer flag is granted.
    let mut c = sticky_follower();
    c.step(vote_request(true));
    let rd = take_ready(&mut c);
    assert_eq!(c.status().term, 6);
    assert_eq!(
        rd.persisted_messages[0].body,
        MessageBody::RequestVoteResponse { granted: true }
    );

    // The log check still applies: a flagged candidate with a shorter log is refused.
    let mut c = RaftCore::new(
        cfg_full(3, &[1, 2]),
        HardState {
            term: 5,
            vote: None,
            commit: 0,
        },
        entries(&[5]),
    )
    .unwrap();
    c.step(vote_request(true));
    let rd = take_ready(&mut c);
    assert_eq!(
        all_msgs(&rd)[0].body,
        MessageBody::RequestVoteResponse { granted: false }
    );
}

#[test]
fn shutdown_hands_over_to_the_most_up_to_date_peer() {
    let mut net = Net::with_config(3, true);
    let l = net.elect();
    let others: Vec<NodeId> = (1..=3).filter(|&i| i != l).collect();
    net.cut.insert((l, others[0]));
    net.nodes.get_mut(&l).unwrap().propose(vec![1]).unwrap();
    net.settle();
    assert_eq!(
        net.nodes[&l].most_up_to_date_peer(),
        Some(others[1]),
        "the peer that holds the new entry"
    );
    assert_eq!(net.nodes[&others[0]].most_up_to_date_peer(), None);
}
