//! The membership operator (`SimConfig::membership`): now and then, while faults and clients
//! run, it asks the current leader for a membership change, as `kvctl member ...` would, and
//! retries a refused change later, as an operator would:
//! - add a learner: a NEW id (never reused), started empty on its own simulated disk with
//!   `Config::joining` (it learns the membership from the leader);
//! - promote a learner (refused until it caught up: retried);
//! - remove a voter or a learner, the leader and down (crashed or paused) nodes included.
//!
//! Voters stay within 1..=5 (a removal is not asked below 2 voters, a promotion not above
//! 4). A change the strict live-quorum check keeps refusing for a down node is forced after a
//! few attempts (etcd `--strict-reconfig-check=false`). Once a removal is applied somewhere
//! (so committed), the removed node is decommissioned a little later: stopped for good, never
//! restarted (etcd stops a member that learns it was removed). Until then it runs and must be
//! harmless.

use rand::Rng;

use super::{new_node, Ev, Input, World, MS, TICK};
use crate::raft::{
    ConfChange, ConfChangeError, ConfChangeKind, Entry, Membership, NodeId, Payload, Role,
};

/// Attempts of a change before the operator forces it (the strict check refused it) or gives
/// it up for another.
const FORCE_AFTER: u32 = 4;
const GIVE_UP_AFTER: u32 = 8;

/// The operator's state.
#[derive(Debug, Default)]
pub(crate) struct Operator {
    /// The id the next learner gets (0: not yet set; ids are never reused).
    next_id: NodeId,
    /// The change being asked for, and how often it was refused.
    intent: Option<(ConfChange, u32)>,
    /// The last refusal, for the trace.
    refused_by_strict_check: bool,
    /// The highest configuration index counted in the outcome (each committed change counts
    /// once, at its first apply anywhere).
    counted: u64,
    /// The membership of that configuration entry (the founding voters before the first).
    applied: Membership,
}

impl World {
    /// The operator's move: retry the change it wants, or choose a new one; then sleep.
    pub(super) fn reconfigure(&mut self) {
        if !self.faults_on {
            return;
        }
        let next = self.rng.random_range(50 * MS..250 * MS);
        self.schedule(next, Ev::Reconfig);
        if self.operator.next_id == 0 {
            self.operator.next_id = self.cfg.nodes + 1;
        }
        let Some(leader) = self.current_leader() else {
            return;
        };
        let m = self.nodes[&leader].core.membership().clone();
        let still_fits = |c: &ConfChange| m.apply(c).is_ok();
        let (change, attempts) = match self.operator.intent.take() {
            Some((c, a)) if a < GIVE_UP_AFTER && still_fits(&c) => (c, a),
            _ => match self.choose_change(&m) {
                Some(c) => (c, 0),
                None => return,
            },
        };
        let force = attempts >= FORCE_AFTER
            && self.operator.refused_by_strict_check
            && change.kind == ConfChangeKind::Remove
            && !self.is_running(change.node);
        self.operator.intent = Some((change.clone(), attempts + 1));
        let d = self.net_delay();
        self.schedule(d, Ev::Deliver(leader, Input::Reconfig(change, force)));
    }

    /// A new change that fits membership `m`: add a learner, promote one, remove a voter
    /// (down to 1) or a learner, chosen at random among those that fit.
    fn choose_change(&mut self, m: &Membership) -> Option<ConfChange> {
        let voters: Vec<NodeId> = m.voters.iter().copied().collect();
        let learners: Vec<NodeId> = m.learners.iter().copied().collect();
        let mut options = Vec::new();
        if learners.len() < 2 && voters.len() + learners.len() < 7 {
            options.push((ConfChangeKind::AddLearner, self.operator.next_id));
        }
        for &l in &learners {
            if voters.len() < 5 {
                options.push((ConfChangeKind::PromoteLearner, l));
            }
            options.push((ConfChangeKind::Remove, l));
        }
        if voters.len() > 1 {
            for &v in &voters {
                options.push((ConfChangeKind::Remove, v));
            }
        }
        if options.is_empty() {
            return None;
        }
        let (kind, node) = options[self.rng.random_range(0..options.len())];
        Some(ConfChange {
            kind,
            node,
            context: format!("10.0.0.{node}:7000").into_bytes(),
        })
    }

    /// The up, running leader of the highest term (the one an operator's request reaches).
    fn current_leader(&self) -> Option<NodeId> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.up && !n.paused && !n.retired && n.role == Role::Leader)
            .max_by_key(|(_, n)| n.core.status().term)
            .map(|(&id, _)| id)
    }

    fn is_running(&self, id: NodeId) -> bool {
        self.nodes.get(&id).is_some_and(|n| n.up && !n.paused)
    }

    /// The operator's request reached node `id`: propose it there. An accepted learner gets
    /// its node (empty disk, joining); a refusal is retried at the operator's next move.
    pub(super) fn propose_conf_change(&mut self, id: NodeId, change: ConfChange, force: bool) {
        let Some(n) = self.nodes.get_mut(&id) else {
            return;
        };
        let result = n.core.propose_conf_change(change.clone(), force);
        let (kind, node) = (change.kind, change.node);
        match &result {
            Ok(p) => {
                self.outcome.conf_changes_proposed += 1;
                self.operator.intent = None;
                self.operator.refused_by_strict_check = false;
                if kind == ConfChangeKind::AddLearner && !self.nodes.contains_key(&node) {
                    self.operator.next_id = self.operator.next_id.max(node + 1);
                    let seed = self.rng.random();
                    let mut fresh = new_node(node, seed, &self.cfg);
                    fresh.born = self.now;
                    self.nodes.insert(node, fresh);
                    let jitter = self.rng.random_range(0..TICK);
                    self.schedule(jitter, Ev::Tick(node));
                }
                let at = p.index;
                self.note(|| {
                    format!("MEMBERSHIP node {id} proposes {kind:?} of node {node} at index {at} (force {force})")
                });
            }
            Err(e) => {
                self.outcome.conf_changes_refused += 1;
                self.operator.refused_by_strict_check =
                    matches!(e, ConfChangeError::WouldLoseQuorum { .. });
                let e = e.to_string();
                self.note(|| format!("MEMBERSHIP node {id} refuses {kind:?} of node {node}: {e}"));
            }
        }
    }

    /// Node `id` applies configuration entry `e`: counted in the outcome at its first apply
    /// anywhere; a node it removed is decommissioned a little later.
    pub(super) fn conf_applied(&mut self, id: NodeId, e: &Entry) {
        let Payload::ConfChange(c) = &e.payload else {
            return;
        };
        if e.index <= self.operator.counted {
            return;
        }
        self.operator.counted = e.index;
        if self.operator.applied.voters.is_empty() {
            self.operator.applied = Membership::with_voters(1..=self.cfg.nodes);
        }
        let node = c.change.node;
        let o = &mut self.outcome;
        match c.change.kind {
            ConfChangeKind::AddLearner => o.learners_added += 1,
            ConfChangeKind::PromoteLearner => o.learners_promoted += 1,
            ConfChangeKind::Remove => {
                if self.operator.applied.is_voter(node) {
                    o.voters_removed += 1;
                } else {
                    o.learners_removed += 1;
                }
                if self.inv.leader_of(e.term) == Some(node) {
                    self.outcome.leaders_removed += 1;
                }
                if !self.is_running(node) {
                    self.outcome.down_nodes_removed += 1;
                }
                let d = self.rng.random_range(20 * MS..400 * MS);
                self.schedule(d, Ev::Retire(node));
            }
            ConfChangeKind::AddVoter | ConfChangeKind::UpdateAddress => {}
        }
        self.operator.applied = c.membership.clone();
        let line = format!(
            "MEMBERSHIP entry {} applied first on node {id}: {:?} of node {node}; voters {:?} learners {:?}",
            e.index, c.change.kind, c.membership.voters, c.membership.learners
        );
        self.note(|| line);
    }

    /// The operator decommissions removed node `id`: it stops and is never restarted.
    pub(super) fn retire(&mut self, id: NodeId) {
        let Some(n) = self.nodes.get_mut(&id) else {
            return;
        };
        if n.retired {
            return;
        }
        n.retired = true;
        self.note(|| format!("RETIRE node {id}: removed from the cluster, stopped for good"));
        self.stop(id, false);
    }

    /// Where clients may send requests with membership changes on: every node not
    /// decommissioned (`None` otherwise: the founding nodes, drawn as before).
    pub(crate) fn client_targets(&self) -> Option<Vec<NodeId>> {
        self.cfg.membership.then(|| {
            self.nodes
                .iter()
                .filter(|(_, n)| !n.retired)
                .map(|(&id, _)| id)
                .collect()
        })
    }

    /// The nodes the end-of-run checks cover: the members of the leader's membership (every
    /// node when the membership never changed).
    pub(super) fn final_members(&self) -> Vec<NodeId> {
        match self.current_leader() {
            Some(l) => self.nodes[&l].core.membership().members().collect(),
            None => self
                .nodes
                .iter()
                .filter(|(_, n)| !n.retired)
                .map(|(&id, _)| id)
                .collect(),
        }
    }
}
