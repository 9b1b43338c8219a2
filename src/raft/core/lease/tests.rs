//! Lease reads: served without a round while the lease holds, ReadIndex once it is gone, and
//! never by a partitioned leader once another could have been elected. Controls show the
//! same scenario without lease mode.

use crate::raft::storage::LogStore;
use crate::raft::testkit::*;
use crate::raft::*;

fn lease_cfg(id: NodeId, n: u64, lease: bool) -> Config {
    let peers: Vec<NodeId> = (1..=n).filter(|&p| p != id).collect();
    let mut c = cfg_full(id, &peers);
    c.lease_reads = lease;
    c
}

/// A network whose cores run with PreVote, CheckQuorum and (if `lease`) lease reads.
fn lease_net(n: u64, lease: bool) -> Net {
    let mut net = Net::with_config(n, true);
    for id in 1..=n {
        let core = RaftCore::new(lease_cfg(id, n, lease), HardState::default(), vec![]).unwrap();
        net.nodes.insert(id, core);
    }
    net
}

/// Restarts `id` from its storage, in lease mode.
fn restart(net: &mut Net, id: NodeId) {
    let n = net.nodes.len() as u64;
    let (hs, log) = net.stores[&id].load().unwrap();
    let mut c = lease_cfg(id, n, true);
    c.seed = 77;
    net.nodes.insert(id, RaftCore::new(c, hs, log).unwrap());
}

/// A leader elected, its no-op committed, a couple of heartbeat rounds answered.
fn settled_leader(net: &mut Net) -> NodeId {
    let l = net.elect();
    net.tick_all();
    net.tick_all();
    l
}

#[test]
fn a_read_in_lease_is_served_without_a_heartbeat_round() {
    let mut net = lease_net(3, true);
    let l = settled_leader(&mut net);
    let c = net.nodes.get_mut(&l).unwrap();
    let commit = c.status().commit;
    c.read_index(42).unwrap();
    let rd = take_ready(c);
    assert_eq!(
        rd.read_states,
        vec![ReadState {
            id: 42,
            index: commit
        }]
    );
    assert!(
        rd.messages.is_empty(),
        "no heartbeat round: {:?}",
        rd.messages
    );
    assert_eq!(c.lease_reads_served(), 1);

    // Control: ReadIndex mode needs a round for the same read.
    let mut net = lease_net(3, false);
    let l = settled_leader(&mut net);
    let c = net.nodes.get_mut(&l).unwrap();
    c.read_index(42).unwrap();
    let rd = take_ready(c);
    assert!(rd.read_states.is_empty());
    assert_eq!(rd.messages.len(), 2, "one heartbeat per follower");
    assert_eq!(c.lease_reads_served(), 0);
}

#[test]
fn once_the_lease_is_gone_reads_fall_back_to_read_index() {
    let mut net = lease_net(3, true);
    let l = settled_leader(&mut net);
    // The followers still hear the leader, but their answers are lost.
    for f in (1..=3).filter(|&i| i != l) {
        net.cut.insert((f, l));
    }
    let mut served_by_lease = 0;
    let mut id = 0;
    loop {
        id += 1;
        let c = net.nodes.get_mut(&l).unwrap();
        let before = c.lease_reads_served();
        c.read_index(id).unwrap();
        if c.lease_reads_served() == before {
            break;
        }
        served_by_lease += 1;
        net.tick_all();
        assert!(served_by_lease < 10, "the lease never ran out");
    }
    // Lease = 10 - 2 - 1 = 7 ticks from the send of the last answered round.
    assert!(
        (6..=7).contains(&served_by_lease),
        "served {served_by_lease} ticks after the last answer"
    );
    // The read waits for a round, which the answers now confirm.
    assert!(!net.reads[&l].iter().any(|r| r.id == id));
    net.heal();
    net.tick_all();
    assert!(
        net.reads[&l].iter().any(|r| r.id == id),
        "served through ReadIndex"
    );
}

/// Isolates the leader and ticks everyone; returns (ticks at which the old leader served a
/// lease read, first tick at which another node campaigned in a higher term).
fn partition_run(net: &mut Net, l: NodeId, restart_follower: bool) -> (Vec<u32>, Option<u32>) {
    let term = net.status(l).term;
    net.isolate(l);
    if restart_follower {
        // Crash and restart a follower right after it answered: it forgets its leader.
        let f = (1..=3).find(|&i| i != l).unwrap();
        restart(net, f);
    }
    let mut lease_ticks = Vec::new();
    let mut campaign_at = None;
    for t in 0..300u32 {
        let c = net.nodes.get_mut(&l).unwrap();
        let before = c.lease_reads_served();
        if c.read_index(1000 + u64::from(t)).is_ok() && c.lease_reads_served() > before {
            lease_ticks.push(t);
        }
        let moved = net
            .nodes
            .iter()
            .any(|(&id, c)| id != l && c.status().term > term && c.status().role != Role::Follower);
        if moved && campaign_at.is_none() {
            campaign_at = Some(t);
        }
        if net
            .nodes
            .values()
            .any(|c| c.status().role == Role::Leader && c.status().term > term)
        {
            break;
        }
        net.tick_all();
    }
    (lease_ticks, campaign_at)
}

#[test]
fn a_partitioned_leader_stops_lease_reads_before_anyone_else_can_campaign() {
    for restart_follower in [false, true] {
        let mut net = lease_net(3, true);
        let l = settled_leader(&mut net);
        let (served, campaign_at) = partition_run(&mut net, l, restart_follower);
        let campaign_at = campaign_at.expect("the majority elects a new leader");
        assert!(!served.is_empty(), "the lease held for a while");
        let last = *served.last().unwrap();
        assert!(
            last < campaign_at,
            "restart={restart_follower}: lease read at tick {last}, campaign at tick {campaign_at}"
        );
    }
}

#[test]
fn a_restarted_node_refuses_votes_for_an_election_timeout_in_lease_mode() {
    let vote = |c: &mut RaftCore| {
        c.step(msg(
            2,
            1,
            6,
            MessageBody::RequestVote {
                last_log_index: 0,
                last_log_term: 0,
            },
        ));
        let rd = take_ready(c);
        all_msgs(&rd)[0].body.clone()
    };
    let hs = HardState {
        term: 5,
        vote: None,
        commit: 0,
    };
    let mut fresh = RaftCore::new(lease_cfg(1, 3, true), hs, vec![]).unwrap();
    assert_eq!(
        vote(&mut fresh),
        MessageBody::RequestVoteResponse { granted: false },
        "it may have answered the leader just before it crashed"
    );
    for _ in 0..10 {
        fresh.tick();
        take_ready(&mut fresh);
    }
    // (no election of its own yet: its timeout is at least 10 ticks and PreVote keeps its term)
    assert_eq!(
        vote(&mut fresh),
        MessageBody::RequestVoteResponse { granted: true }
    );
    // Control: without lease mode a fresh node grants at once.
    let mut plain = RaftCore::new(lease_cfg(1, 3, false), hs, vec![]).unwrap();
    assert_eq!(
        vote(&mut plain),
        MessageBody::RequestVoteResponse { granted: true }
    );
}

#[test]
fn a_leader_that_sent_timeout_now_gives_its_lease_up_for_the_term() {
    let mut net = lease_net(3, true);
    let l = settled_leader(&mut net);
    let target = (1..=3).find(|&i| i != l).unwrap();
    net.cut.insert((l, target)); // TimeoutNow is sent, but lost
    let c = net.nodes.get_mut(&l).unwrap();
    c.transfer_leadership(target).unwrap();
    net.settle();
    // Abandon the transfer (an election timeout), the lease would be fresh again...
    for _ in 0..10 {
        net.tick_all();
    }
    let c = net.nodes.get_mut(&l).unwrap();
    assert_eq!(c.transfer_target(), None);
    assert_eq!(c.status().role, Role::Leader);
    let before = c.lease_reads_served();
    c.read_index(5).unwrap();
    // ...but a late TimeoutNow could still start an election nobody refuses.
    assert_eq!(
        c.lease_reads_served(),
        before,
        "no lease read after TimeoutNow"
    );
}
