//! Membership changes (issue 15; Raft thesis §4.1–4.3 with learners): one test per rule, each
//! with a control that shows the rule is what makes it pass (a mutation switch re-opening the
//! hole, or the same scenario without the condition the rule is about).

use std::collections::BTreeSet;

use crate::raft::testkit::*;
use crate::raft::*;

fn change(kind: ConfChangeKind, node: NodeId) -> ConfChange {
    ConfChange {
        kind,
        node,
        context: format!("127.0.0.1:{}", 7000 + node).into_bytes(),
    }
}

/// A granted vote from `from` to node 1 in `term`.
fn granted_vote(from: NodeId, term: Term) -> Message {
    msg(
        from,
        1,
        term,
        MessageBody::RequestVoteResponse { granted: true },
    )
}

fn set(ids: &[NodeId]) -> BTreeSet<NodeId> {
    ids.iter().copied().collect()
}

fn leader_of(net: &Net) -> NodeId {
    let leaders: Vec<NodeId> = net
        .nodes
        .iter()
        .filter(|(_, c)| c.status().role == Role::Leader)
        .map(|(&id, _)| id)
        .collect();
    assert_eq!(leaders.len(), 1, "one leader: {leaders:?}");
    leaders[0]
}

/// Proposes `change` at the leader, then delivers and ticks until it is applied everywhere
/// reachable. Returns the entry's index.
fn conf(net: &mut Net, kind: ConfChangeKind, node: NodeId) -> LogIndex {
    let leader = leader_of(net);
    let p = net
        .nodes
        .get_mut(&leader)
        .unwrap()
        .propose_conf_change(change(kind, node), false)
        .unwrap_or_else(|e| panic!("{kind:?} {node}: {e}"));
    settle_ticks(net, 3);
    p.index
}

fn settle_ticks(net: &mut Net, ticks: usize) {
    net.settle();
    for _ in 0..ticks {
        net.tick_all();
    }
}

/// Proposes a command at the current leader and checks it commits on `on`.
fn commit_command(net: &mut Net, data: &[u8], on: &[NodeId]) {
    let leader = leader_of(net);
    let p = net
        .nodes
        .get_mut(&leader)
        .unwrap()
        .propose(data.to_vec())
        .unwrap();
    settle_ticks(net, 2);
    for id in on {
        let applied = net.applied[id]
            .iter()
            .any(|e| e.index == p.index && e.term == p.term);
        let installed = net.installed[id].iter().any(|m| m.index >= p.index);
        assert!(
            applied || installed,
            "node {id} applied entry {} of leader {leader}",
            p.index
        );
    }
}

// ---------------------------------------------------------------- growing

#[test]
fn grow_from_one_to_three_committing_after_each_change() {
    let mut net = Net::new(1);
    assert_eq!(net.elect(), 1);
    commit_command(&mut net, b"a", &[1]);
    for id in [2, 3] {
        net.add_node(id);
        assert_eq!(
            net.status(id).membership,
            Membership::default(),
            "a joining node knows no members"
        );
        conf(&mut net, ConfChangeKind::AddLearner, id);
        assert!(net.status(id).membership.is_learner(id));
        conf(&mut net, ConfChangeKind::PromoteLearner, id);
        let members: Vec<NodeId> = (1..=id).collect();
        commit_command(&mut net, &[id as u8], &members);
    }
    let want = with_addresses(Membership::with_voters([1, 2, 3]), &[2, 3]);
    for id in 1..=3 {
        assert_eq!(net.status(id).membership, want, "node {id}");
    }
    // The grown cluster survives the loss of its first node: 2 and 3 are a quorum of 3.
    net.isolate(1);
    for _ in 0..60 {
        net.tick_all();
    }
    let new_leader = [2, 3]
        .into_iter()
        .find(|&id| net.status(id).role == Role::Leader)
        .expect("2 or 3 leads without 1");
    let p = net
        .nodes
        .get_mut(&new_leader)
        .unwrap()
        .propose(b"after".to_vec())
        .unwrap();
    settle_ticks(&mut net, 2);
    assert!(net.status(2).commit >= p.index && net.status(3).commit >= p.index);
}

#[test]
fn grow_from_three_to_five_committing_after_each_change() {
    let mut net = Net::new(3);
    net.elect();
    for id in [4, 5] {
        net.add_node(id);
        conf(&mut net, ConfChangeKind::AddLearner, id);
        commit_command(&mut net, &[id as u8], &[1, 2, 3, id]);
        conf(&mut net, ConfChangeKind::PromoteLearner, id);
        let members: Vec<NodeId> = (1..=id).collect();
        commit_command(&mut net, &[id as u8, 1], &members);
    }
    for id in 1..=5 {
        assert_eq!(
            net.status(id).membership,
            with_addresses(Membership::with_voters([1, 2, 3, 4, 5]), &[4, 5])
        );
    }
    // Quorum is now 3 of 5: two nodes down, the other three still commit.
    let leader = leader_of(&net);
    let down: Vec<NodeId> = (1..=5).filter(|&i| i != leader).take(2).collect();
    for &d in &down {
        net.isolate(d);
    }
    let up: Vec<NodeId> = (1..=5).filter(|i| !down.contains(i)).collect();
    commit_command(&mut net, b"three of five", &up);
    // Control: a third node down and nothing commits any more.
    let third = *up.iter().find(|&&i| i != leader).unwrap();
    net.isolate(third);
    let p = net
        .nodes
        .get_mut(&leader)
        .unwrap()
        .propose(b"two of five".to_vec())
        .unwrap();
    settle_ticks(&mut net, 2);
    assert!(net.status(leader).commit < p.index, "2 of 5 is no quorum");
}

// ---------------------------------------------------------------- the leader's rules

/// Node 1 of 3 leads term 2 with its no-op in its log, not yet acknowledged by anyone.
fn fresh_leader() -> RaftCore {
    leader(1, &[1])
}

/// `from` acknowledges everything up to `index`.
fn ack(c: &mut RaftCore, from: NodeId, index: LogIndex) {
    let t = c.status().term;
    c.step(msg(
        from,
        1,
        t,
        MessageBody::AppendEntriesResponse {
            success: true,
            match_index: index,
            conflict_index: 0,
            conflict_term: 0,
            read_ctx: 0,
        },
    ));
    take_ready(c);
}

#[test]
fn a_change_before_the_leader_commits_an_entry_of_its_term_is_refused() {
    let mut c = fresh_leader();
    let learner = change(ConfChangeKind::AddLearner, 4);
    assert_eq!(
        c.propose_conf_change(learner.clone(), false),
        Err(ConfChangeError::NoCommitInTerm)
    );
    // Its no-op commits: now it may.
    let last = c.status().last_index;
    ack(&mut c, 2, last);
    assert_eq!(c.status().commit, last);
    assert!(c.propose_conf_change(learner.clone(), false).is_ok());

    // Control: with the rule switched off the same fresh leader accepts the change.
    let mut c = fresh_leader();
    c.set_mutation(Mutation::ConfChangeBeforeTermCommit);
    assert!(c.propose_conf_change(learner, false).is_ok());
}

#[test]
fn a_second_change_is_refused_until_the_first_is_applied() {
    let mut c = fresh_leader();
    let last = c.status().last_index;
    ack(&mut c, 2, last);
    let first = c
        .propose_conf_change(change(ConfChangeKind::AddLearner, 4), false)
        .unwrap();
    take_ready(&mut c);
    let second = change(ConfChangeKind::AddLearner, 5);
    let refused = c.propose_conf_change(second.clone(), false);
    assert_eq!(refused, Err(ConfChangeError::ChangeInProgress(first.index)));
    assert_eq!(
        refused.unwrap_err().to_string(),
        format!(
            "membership change at index {} is not applied yet; one change at a time",
            first.index
        )
    );
    // Committed and applied (the Ready that hands it out is advanced): the next one is fine.
    ack(&mut c, 2, first.index);
    assert_eq!(c.status().commit, first.index);
    take_ready(&mut c);
    assert!(c.propose_conf_change(second.clone(), false).is_ok());

    // Control: with the rule switched off a second change goes in while the first is pending.
    let mut c = fresh_leader();
    c.set_mutation(Mutation::ConcurrentConfChanges);
    let last = c.status().last_index;
    ack(&mut c, 2, last);
    c.propose_conf_change(change(ConfChangeKind::AddLearner, 4), false)
        .unwrap();
    assert!(c.propose_conf_change(second, false).is_ok());
}

#[test]
fn only_the_leader_takes_changes_and_ids_are_checked() {
    let mut c = core(2, 3, 1, None, &[]);
    assert_eq!(
        c.propose_conf_change(change(ConfChangeKind::AddLearner, 4), false),
        Err(ConfChangeError::Propose(ProposeError::NotLeader(
            NotLeader { leader: None }
        )))
    );
    let mut c = fresh_leader();
    let last = c.status().last_index;
    ack(&mut c, 2, last);
    for (kind, node, err) in [
        (
            ConfChangeKind::AddVoter,
            2,
            ConfChangeError::AlreadyMember(2),
        ),
        (ConfChangeKind::Remove, 9, ConfChangeError::NotMember(9)),
        (
            ConfChangeKind::PromoteLearner,
            3,
            ConfChangeError::NotLearner(3),
        ),
        (ConfChangeKind::AddLearner, 0, ConfChangeError::ZeroId),
    ] {
        assert_eq!(c.propose_conf_change(change(kind, node), false), Err(err));
    }
}

#[test]
fn a_learner_far_behind_is_not_promoted_and_the_error_says_how_far() {
    let mut net = Net::new(3);
    let leader = net.elect();
    net.add_node(4);
    // 4 hears nothing yet: it is added, but the leader's messages to it are lost.
    net.cut.insert((leader, 4));
    conf(&mut net, ConfChangeKind::AddLearner, 4);
    net.propose_commands(leader, 20);
    settle_ticks(&mut net, 1);
    let last = net.status(leader).last_index;
    let err = net
        .nodes
        .get_mut(&leader)
        .unwrap()
        .propose_conf_change(change(ConfChangeKind::PromoteLearner, 4), false)
        .unwrap_err();
    assert_eq!(
        err,
        ConfChangeError::LearnerNotReady {
            node: 4,
            matched: 0,
            last,
            behind: last,
            percent: 90
        }
    );
    assert_eq!(
        err.to_string(),
        format!("can only promote a learner member which is in sync with the leader: member 4 has 0 of {last} entries ({last} behind; needs at least 90%)")
    );
    assert_eq!(
        net.status(leader).matched.get(&4),
        Some(&0),
        "status shows the lag"
    );
    // Control: once it caught up, the same promotion is accepted.
    net.heal();
    settle_ticks(&mut net, 3);
    assert_eq!(net.status(leader).matched.get(&4), Some(&last));
    conf(&mut net, ConfChangeKind::PromoteLearner, 4);
    assert!(net.status(4).membership.is_voter(4));
}

#[test]
fn removing_a_voter_that_would_leave_no_live_quorum_is_refused_unless_forced() {
    let mut net = Net::new(3);
    let leader = net.elect();
    let (a, b) = {
        let f: Vec<NodeId> = (1..=3).filter(|&i| i != leader).collect();
        (f[0], f[1])
    };
    net.isolate(b); // b is down
    for _ in 0..12 {
        net.tick_all(); // longer than an election timeout without hearing from b
    }
    assert_eq!(
        net.status(leader).role,
        Role::Leader,
        "a and the leader are a quorum"
    );
    let refused = net
        .nodes
        .get_mut(&leader)
        .unwrap()
        .propose_conf_change(change(ConfChangeKind::Remove, a), false);
    let err = refused.unwrap_err();
    assert_eq!(
        err,
        ConfChangeError::WouldLoseQuorum {
            change: format!("removing member {a}"),
            live: 1,
            quorum: 2
        }
    );
    assert_eq!(
        err.to_string(),
        format!("removing member {a} would leave 1 live voters, fewer than the 2 the new configuration needs for a quorum (force to override)")
    );
    // Control 1: forced, the refused removal is accepted.
    net.nodes
        .get_mut(&leader)
        .unwrap()
        .propose_conf_change(change(ConfChangeKind::Remove, a), true)
        .unwrap();
    // Control 2: removing the dead node instead keeps a live quorum and is accepted.
    let mut net = Net::new(3);
    let leader = net.elect();
    let b = (1..=3).find(|&i| i != leader).unwrap();
    net.isolate(b);
    for _ in 0..12 {
        net.tick_all();
    }
    conf(&mut net, ConfChangeKind::Remove, b);
    assert_eq!(
        net.status(leader).membership.voters.len(),
        2,
        "the dead node is removed"
    );
}

// ---------------------------------------------------------------- learners

/// Node `id` follows a membership of voters 1, 2, 3 and learner 4.
fn with_learner(id: NodeId, full: bool) -> RaftCore {
    let peers: Vec<NodeId> = [1, 2, 3].into_iter().filter(|&p| p != id).collect();
    let mut c = if full {
        cfg_full(id, &peers)
    } else {
        cfg(id, &peers)
    };
    if id == 4 {
        c.peers.clear();
        c.joining = true;
    }
    let mut m = Membership::with_voters([1, 2, 3]);
    m.learners.insert(4);
    RaftCore::restore_with_membership(
        c,
        HardState::default(),
        SnapshotMeta { index: 5, term: 1 },
        Some(m),
        vec![],
    )
    .unwrap()
}

#[test]
fn a_learners_vote_is_not_counted() {
    let mut c = with_learner(1, false);
    campaign(&mut c);
    let rd = take_ready(&mut c);
    let asked: BTreeSet<NodeId> = all_msgs(&rd).iter().map(|m| m.to).collect();
    assert_eq!(asked, set(&[2, 3]), "vote requests go to voters only");
    let t = c.status().term;
    let grant = |from| granted_vote(from, t);
    c.step(grant(4));
    assert_eq!(
        c.status().role,
        Role::Candidate,
        "1 + a learner is no quorum"
    );
    c.step(grant(2));
    assert_eq!(c.status().role, Role::Leader, "1 + a voter is");

    // Control: counting the learner's vote elects the candidate without a voter's.
    let mut c = with_learner(1, false);
    c.set_mutation(Mutation::CountLearnerVotes);
    campaign(&mut c);
    take_ready(&mut c);
    let t = c.status().term;
    c.step(granted_vote(4, t));
    assert_eq!(c.status().role, Role::Leader);
}

#[test]
fn a_learners_pre_vote_is_not_counted() {
    let mut c = with_learner(1, true);
    for _ in 0..100 {
        c.tick();
        if !take_ready(&mut c).messages.is_empty() {
            break;
        }
    }
    let proposed = c.status().term + 1;
    c.step(msg(
        4,
        1,
        proposed,
        MessageBody::PreVoteResponse { granted: true },
    ));
    assert_eq!(
        c.status().role,
        Role::Follower,
        "no campaign on a learner's pre-vote"
    );
    c.step(msg(
        2,
        1,
        proposed,
        MessageBody::PreVoteResponse { granted: true },
    ));
    assert_eq!(
        c.status().role,
        Role::Candidate,
        "a voter's pre-vote makes a quorum"
    );
}

#[test]
fn a_learner_never_campaigns() {
    let mut c = with_learner(4, true);
    let mut m = with_learner(4, false);
    for _ in 0..200 {
        c.tick();
        m.tick();
        assert!(take_ready(&mut c).messages.is_empty());
        assert!(all_msgs(&take_ready(&mut m)).is_empty());
    }
    assert_eq!(c.status().role, Role::Follower);
    assert_eq!(m.status().term, 0);
    // Nor on a TimeoutNow from its leader.
    let mut c = with_learner(4, false);
    c.step(msg(
        1,
        4,
        1,
        MessageBody::AppendEntries {
            prev_log_index: 5,
            prev_log_term: 1,
            entries: vec![],
            leader_commit: 5,
            read_ctx: 0,
        },
    ));
    take_ready(&mut c);
    c.step(msg(1, 4, 1, MessageBody::TimeoutNow));
    assert_eq!(c.status().role, Role::Follower);
    // Control: a voter in the same place campaigns.
    let mut v = with_learner(3, false);
    campaign(&mut v);
    assert_eq!(v.status().role, Role::Candidate);
}

#[test]
fn learners_do_not_count_for_commit_or_check_quorum_and_never_lead() {
    let mut net = Net::with_config(3, true);
    let leader = net.elect();
    net.add_node(4);
    conf(&mut net, ConfChangeKind::AddLearner, 4);
    let followers: Vec<NodeId> = (1..=3).filter(|&i| i != leader).collect();
    // Only the learner still hears from the leader (and from nobody else, so no term of a
    // new leader reaches the old one through it).
    for &f in &followers {
        for (a, b) in [(leader, f), (f, 4)] {
            net.cut.insert((a, b));
            net.cut.insert((b, a));
        }
    }
    let p = net
        .nodes
        .get_mut(&leader)
        .unwrap()
        .propose(b"x".to_vec())
        .unwrap();
    net.settle();
    assert_eq!(net.status(4).last_index, p.index, "the learner has it");
    assert!(
        net.status(leader).commit < p.index,
        "leader + learner is no quorum"
    );
    assert_eq!(
        net.nodes.get_mut(&leader).unwrap().transfer_leadership(4),
        Err(TransferError::TargetIsLearner(4))
    );
    // ReadIndex: the learner confirms the heartbeat round, which is no quorum either.
    net.nodes.get_mut(&leader).unwrap().read_index(99).unwrap();
    for _ in 0..3 {
        net.tick_all();
    }
    assert!(
        net.reads[&leader].iter().all(|r| r.id != 99),
        "no read served"
    );
    for _ in 0..25 {
        net.tick_all();
    }
    assert_ne!(
        net.status(leader).role,
        Role::Leader,
        "CheckQuorum: the learner's answers do not keep a leader"
    );
    assert_ne!(net.status(4).role, Role::Leader);
}

#[test]
fn a_learner_catches_up_through_a_snapshot_and_is_promoted() {
    let mut net = Net::new(3);
    let leader = net.elect();
    net.propose_commands(leader, 10);
    settle_ticks(&mut net, 1);
    for id in 1..=3 {
        net.compact(id);
    }
    net.add_node(4);
    conf(&mut net, ConfChangeKind::AddLearner, 4);
    assert_eq!(net.installed[&4].len(), 1, "caught up through the snapshot");
    assert_eq!(
        net.status(4).membership,
        net.status(leader).membership,
        "and learned the membership from it and the log"
    );
    conf(&mut net, ConfChangeKind::PromoteLearner, 4);
    commit_command(&mut net, b"after promotion", &[1, 2, 3, 4]);
    assert_eq!(net.status(4).commit, net.status(leader).commit);
    // The learner's snapshot recorded the membership (without 4: it was taken before).
    let snap = crate::raft::storage::LogStore::snapshot(&net.stores[&4])
        .unwrap()
        .unwrap();
    assert_eq!(snap.membership, Some(Membership::with_voters([1, 2, 3])));
}

#[test]
fn a_learner_added_before_a_compaction_learns_the_membership_from_the_snapshot() {
    let mut net = Net::new(3);
    let leader = net.elect();
    net.add_node(4);
    net.cut.insert((leader, 4)); // 4 is added but reached only after the compaction
    conf(&mut net, ConfChangeKind::AddLearner, 4);
    net.propose_commands(leader, 3);
    settle_ticks(&mut net, 2);
    for id in 1..=3 {
        net.compact(id);
    }
    net.heal();
    settle_ticks(&mut net, 3);
    assert_eq!(net.installed[&4].len(), 1);
    let log_has_conf =
        (net.nodes[&4].snapshot_meta().index + 1..=net.status(4).last_index).any(|i| {
            matches!(
                net.nodes[&4].entry(i).map(|e| &e.payload),
                Some(Payload::ConfChange(_))
            )
        });
    assert!(!log_has_conf, "no configuration entry after the snapshot");
    let mut want = with_addresses(Membership::with_voters([1, 2, 3]), &[4]);
    want.learners.insert(4);
    assert_eq!(net.status(4).membership, want, "from the snapshot");
}

// ---------------------------------------------------------------- removal

#[test]
fn a_removed_leader_hands_over_and_the_rest_carry_on() {
    let mut net = Net::with_config(3, true);
    let old = net.elect();
    let index = conf(&mut net, ConfChangeKind::Remove, old);
    assert!(net.status(old).commit >= index);
    assert_ne!(
        net.status(old).role,
        Role::Leader,
        "stepped down once committed"
    );
    assert!(net.status(old).removed, "and knows it was removed");
    // TimeoutNow: a successor took over without waiting out an election timeout.
    let new = leader_of(&net);
    assert_ne!(new, old);
    let rest: Vec<NodeId> = (1..=3).filter(|&i| i != old).collect();
    commit_command(&mut net, b"without the old leader", &rest);
    // The old leader never campaigns again, and nobody hears it if it tries.
    let term = net.status(new).term;
    for _ in 0..100 {
        net.tick_all();
    }
    assert_eq!(leader_of(&net), new);
    assert_eq!(
        net.status(new).term,
        term,
        "no election disturbed the others"
    );
    // It stops counting: two more removals would be refused without the remaining voters.
    assert_eq!(
        net.status(new).membership,
        Membership {
            voters: rest.iter().copied().collect(),
            learners: BTreeSet::new(),
            removed: set(&[old]),
            addresses: net.status(new).membership.addresses,
        }
    );
}

#[test]
fn a_removed_follower_learns_it_and_cannot_disturb_the_cluster_after_a_restart() {
    let mut net = Net::new(3);
    let leader = net.elect();
    let gone = (1..=3).find(|&i| i != leader).unwrap();
    // Its acknowledgement of the removal arrives after the removal committed.
    net.hold.insert((gone, leader));
    let p = net
        .nodes
        .get_mut(&leader)
        .unwrap()
        .propose_conf_change(change(ConfChangeKind::Remove, gone), false)
        .unwrap();
    net.settle();
    assert!(net.status(leader).commit >= p.index);
    assert!(!net.status(gone).removed);
    net.hold.clear();
    net.release(|_| true);
    settle_ticks(&mut net, 2);
    assert!(
        net.status(gone).removed,
        "the leader waited for its acknowledgement, then its last heartbeat told it the removal committed"
    );
    assert!(net.nodes[&leader].is_removed(gone));
    // It comes back with its old data dir and forces an election (no PreVote in this net).
    let term = net.status(leader).term;
    net.restart(gone);
    // Its log has the removal. Whether it knows the removal committed depends on the commit
    // hint it stored; if not, it may campaign (`may_campaign`), but its requests are refused.
    assert!(net.status(gone).membership.removed.contains(&gone));
    for _ in 0..50 {
        net.tick_all();
    }
    assert_ne!(net.status(gone).role, Role::Leader);
    assert_eq!(
        net.status(leader).term,
        term,
        "its campaign disturbed no one"
    );
    let stale = net.status(gone).term + 5;
    for to in (1..=3).filter(|&i| i != gone) {
        let core = net.nodes.get_mut(&to).unwrap();
        core.step(msg(
            gone,
            to,
            stale,
            MessageBody::RequestVote {
                last_log_index: 1000,
                last_log_term: stale,
            },
        ));
        take_ready(core);
    }
    assert_eq!(net.status(leader).term, term, "its vote request is refused");
    assert_eq!(leader_of(&net), leader);
    // Control: the same request from a member deposes the leader (term adopted).
    let member = (1..=3).find(|&i| i != leader && i != gone).unwrap();
    let core = net.nodes.get_mut(&leader).unwrap();
    core.step(msg(
        member,
        leader,
        stale,
        MessageBody::RequestVote {
            last_log_index: 1000,
            last_log_term: stale,
        },
    ));
    assert_eq!(core.status().term, stale);
}

// ---------------------------------------------------------------- rebuilding the membership

#[test]
fn a_restart_rebuilds_the_membership_from_the_log_and_the_snapshot() {
    let mut net = Net::new(3);
    net.elect();
    net.add_node(4);
    let index = conf(&mut net, ConfChangeKind::AddLearner, 4);
    let mut want = with_addresses(Membership::with_voters([1, 2, 3]), &[4]);
    want.learners.insert(4);
    // From the log.
    net.restart(2);
    assert_eq!(net.status(2).membership, want);
    net.restart(4);
    assert_eq!(net.status(4).membership, want, "a joined node too");
    // From the snapshot, once the configuration entry is compacted away.
    settle_ticks(&mut net, 2);
    let meta = net.compact(2);
    assert!(
        meta.index >= index,
        "the snapshot covers the configuration entry"
    );
    net.restart(2);
    assert_eq!(net.status(2).membership, want);
    // And from a second snapshot, taken (without a restart in between) when the log holds
    // no configuration entry at all: the first compaction kept the membership it covered.
    let first = net.compact(3);
    let leader = leader_of(&net);
    net.propose_commands(leader, 3);
    settle_ticks(&mut net, 2);
    let second = net.compact(3);
    assert!(second.index > first.index);
    net.restart(3);
    assert_eq!(net.status(3).membership, want);
    // Control: the same core restored without the snapshot's membership falls back to the
    // configured one, which is what the snapshot's record prevents.
    let (hs, log) = crate::raft::storage::LogStore::load(&net.stores[&2]).unwrap();
    let plain = RaftCore::restore(cfg(2, &[1, 3]), hs, meta, log).unwrap();
    assert_eq!(
        plain.status().membership,
        Membership::with_voters([1, 2, 3])
    );
}

#[test]
fn a_truncated_configuration_entry_stops_counting() {
    let mut c = core(2, 3, 1, None, &[]);
    let conf = ConfEntry::learner_joins_three(4);
    let m = conf.membership.clone();
    let conf_entry = Entry {
        term: 1,
        index: 2,
        payload: Payload::ConfChange(Box::new(conf)),
    };
    let noop = |term, index| Entry {
        term,
        index,
        payload: Payload::Noop,
    };
    c.step(append(1, 2, 1, (0, 0), vec![noop(1, 1), conf_entry], 1));
    take_ready(&mut c);
    assert_eq!(c.status().membership, m, "in effect once appended");
    // A new leader of term 2 never had it: its entry at 2 replaces the configuration entry.
    c.step(append(3, 2, 2, (1, 1), vec![noop(2, 2)], 1));
    take_ready(&mut c);
    assert_eq!(c.status().membership, Membership::with_voters([1, 2, 3]));
}

#[test]
fn config_entries_travel_and_persist_intact() {
    let mut net = Net::new(3);
    let leader = net.elect();
    net.add_node(4);
    let index = conf(&mut net, ConfChangeKind::AddLearner, 4);
    let entry = net.nodes[&leader].entry(index).unwrap().clone();
    let Payload::ConfChange(c) = &entry.payload else {
        panic!("not a configuration entry: {entry:?}");
    };
    assert_eq!(c.change.context, b"127.0.0.1:7004");
    for id in 1..=4 {
        assert_eq!(net.nodes[&id].entry(index), Some(&entry), "node {id}");
        assert!(net.applied[&id].contains(&entry), "node {id} applied it");
    }
    assert!(entry_bytes(&entry) >= c.encode().len());
}

/// etcd's rule (and its example): a learner grants a vote it is asked for, since the
/// candidate may know of its promotion before it does; the candidate's membership decides
/// whether the vote counts.
#[test]
fn a_promoted_learner_that_missed_its_promotion_still_helps_elect_a_leader() {
    // Voters 2 and 3, learner 4. Leader 2 commits the promotion of 4 with 3's ack alone, then
    // fails: 3 can only win with 4's vote, and 4 does not know it was promoted.
    let node = |id: NodeId| {
        let mut c = cfg(id, &[]);
        c.joining = true;
        let mut m = Membership::with_voters([2, 3]);
        m.learners.insert(4);
        let meta = SnapshotMeta { index: 5, term: 1 };
        RaftCore::restore_with_membership(c, HardState::default(), meta, Some(m), vec![]).unwrap()
    };
    let promotion = Entry {
        term: 1,
        index: 6,
        payload: Payload::ConfChange(Box::new(ConfEntry {
            change: change(ConfChangeKind::PromoteLearner, 4),
            membership: Membership::with_voters([2, 3, 4]),
        })),
    };
    let mut three = node(3);
    three.step(append(2, 3, 1, (5, 1), vec![promotion], 6));
    take_ready(&mut three);
    campaign(&mut three);
    let rd = take_ready(&mut three);
    let to_four = all_msgs(&rd)
        .into_iter()
        .find(|m| m.to == 4)
        .expect("4 is asked");
    let mut four = node(4);
    four.step(to_four);
    let answer = all_msgs(&take_ready(&mut four)).pop().unwrap();
    assert_eq!(
        answer.body,
        MessageBody::RequestVoteResponse { granted: true }
    );
    three.step(answer);
    assert_eq!(
        three.status().role,
        Role::Leader,
        "3 and 4 are 2 of the 3 voters"
    );
}

/// `m` with the addresses the `conf` helper's changes give `ids` (`127.0.0.1:<7000 + id>`).
fn with_addresses(mut m: Membership, ids: &[NodeId]) -> Membership {
    for &id in ids {
        m.addresses.insert(id, format!("127.0.0.1:{}", 7000 + id));
    }
    m
}

// ---------------------------------------------------------------- liveness across uncommitted changes

/// Two voters; the leader removes itself and restarts before anyone else has the entry. Its
/// log is the longest, so only it can win the other voter's vote: it campaigns as the
/// candidate of its latest configuration (`may_campaign`), commits the removal and hands over.
/// Control: a node that an uncommitted entry excludes never campaigns, and nobody ever leads
/// (the simulator's `--membership` seed 22).
#[test]
fn a_leader_whose_uncommitted_self_removal_is_the_longest_log_campaigns_and_hands_over() {
    for mutation in [Mutation::None, Mutation::ExcludedNeverCampaigns] {
        let mut net = Net::with_config(2, true);
        let old = net.elect();
        let other = 3 - old;
        net.hold.insert((old, other));
        net.nodes
            .get_mut(&old)
            .unwrap()
            .propose_conf_change(change(ConfChangeKind::Remove, old), false)
            .unwrap();
        net.settle();
        net.restart(old);
        net.nodes.get_mut(&old).unwrap().set_mutation(mutation);
        net.nodes.get_mut(&other).unwrap().set_mutation(mutation);
        net.hold.clear();
        net.held.clear();
        assert!(
            net.status(old).membership.removed.contains(&old),
            "its log holds its own removal, uncommitted"
        );
        assert!(!net.status(other).membership.removed.contains(&old));
        for _ in 0..200 {
            net.tick_all();
            net.settle();
        }
        if mutation == Mutation::ExcludedNeverCampaigns {
            for id in [old, other] {
                assert_ne!(net.status(id).role, Role::Leader, "control: node {id}");
            }
            continue;
        }
        assert_eq!(
            leader_of(&net),
            other,
            "the removal committed, then the handover"
        );
        assert!(net.status(old).removed);
        assert_eq!(net.status(other).membership.voters, set(&[other]));
        commit_command(&mut net, b"after", &[other]);
    }
}

/// A follower whose log holds `Remove(2)` at index 2, committed or not.
fn follower_with_removal_of_2(committed: bool) -> RaftCore {
    let before = Membership::with_voters([1, 2, 3]);
    let after = before.apply(&change(ConfChangeKind::Remove, 2)).unwrap();
    let mut log = entries(&[1]);
    log.push(Entry {
        term: 2,
        index: 2,
        payload: Payload::ConfChange(Box::new(ConfEntry {
            change: change(ConfChangeKind::Remove, 2),
            membership: after,
        })),
    });
    let hs = HardState {
        term: 2,
        vote: None,
        commit: if committed { 2 } else { 1 },
    };
    RaftCore::restore_with_membership(
        cfg(3, &[1, 2]),
        hs,
        SnapshotMeta::default(),
        Some(before),
        log,
    )
    .unwrap()
}

/// An append of term 3 from `from`, replacing index 2.
fn append_of_term_3(from: NodeId) -> Message {
    append(from, 3, 3, (1, 1), entries(&[1, 3]).split_off(1), 1)
}

/// Only a committed removal refuses a member: an uncommitted one may be truncated and the
/// member it names may lead (seeds 134, 149 of `--membership`). Control: refusing on the
/// uncommitted entry leaves this follower deaf to that leader.
#[test]
fn only_a_committed_removal_refuses_a_member() {
    let mut c = follower_with_removal_of_2(false);
    assert!(c.membership().removed.contains(&2));
    assert!(!c.is_removed(2) && c.status().committed_removals.is_empty());
    c.step(append_of_term_3(2));
    assert_eq!((c.status().term, c.status().leader), (3, Some(2)));
    assert!(
        !c.membership().removed.contains(&2),
        "the uncommitted removal was truncated"
    );

    let mut c = follower_with_removal_of_2(false);
    c.set_mutation(Mutation::RefuseUnknownAndUncommitted);
    c.step(append_of_term_3(2));
    assert_eq!(c.status().term, 2, "control: refused");

    let mut c = follower_with_removal_of_2(true);
    assert!(c.is_removed(2));
    assert_eq!(c.status().committed_removals, set(&[2]));
    c.step(append_of_term_3(2));
    assert_eq!(c.status().term, 2, "a committed removal refuses");
}

/// A follower that was down while node 4 joined, was promoted and won an election hears of
/// it first from its appends (seed 277 of `--membership`). Control: refusing ids the
/// membership does not know leaves it behind for good.
#[test]
fn a_leader_the_membership_does_not_know_yet_is_heard() {
    for mutation in [Mutation::None, Mutation::RefuseUnknownAndUncommitted] {
        let mut c = core(3, 3, 2, None, &[1, 1]);
        c.set_mutation(mutation);
        c.step(append(4, 3, 3, (2, 1), entries(&[1, 1, 3]).split_off(2), 3));
        let s = c.status();
        if mutation == Mutation::None {
            assert_eq!((s.term, s.leader, s.last_index), (3, Some(4), 3));
        } else {
            assert_eq!(s.term, 2, "control: refused");
        }
    }
}
