//! Cluster membership (Raft thesis §4): who votes, who only learns, and which ids are gone
//! for good; the configuration-change entry that moves from one membership to the next, and
//! the one byte encoding both use on disk and on the wire.
//!
//! # Single-server changes, effective on append
//! Each change adds or removes one voter (or only touches learners), so any two consecutive
//! memberships share a voter in every pair of their quorums (thesis §4.1) and no joint
//! consensus is needed. A change takes effect on a node as soon as its entry is in that node's
//! log, committed or not (thesis §4.1, as LogCabin does), not when it is applied (etcd):
//! - why: the membership is then a pure function of the log (the snapshot's membership plus
//!   the last configuration entry after it), so a restart, a snapshot install and a follower
//!   truncating a conflicting tail all rebuild it the same way, and there is no window in
//!   which a node has a committed configuration it does not yet obey (etcd needs "no
//!   campaigning while committed configuration entries are unapplied" for that window);
//! - consequences: a node may use a configuration that is later truncated away (it then falls
//!   back to the previous one, see `RaftCore::refresh_membership`); the leader must keep at
//!   most one configuration entry beyond its commit index (`RaftCore::propose_conf_change`
//!   refuses a second one until the first is applied), and must have committed an entry of its
//!   own term before accepting one (the raft-dev fix to single-server changes: otherwise a
//!   change decided by an old leader's configuration and an uncommitted one of a newer leader
//!   can have disjoint quorums); a leader that removes itself keeps leading, without counting
//!   itself, until the removal commits, then hands over.
//!
//! Every configuration entry carries the complete membership it leads to, not only the change:
//! a node that joins with an empty log learns the whole membership from the first
//! configuration entry it receives, without knowing how the cluster was bootstrapped.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::types::NodeId;

/// The members of the cluster at one point of the log.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// Nodes that vote and count toward every quorum (commit, elections, PreVote,
    /// CheckQuorum, ReadIndex and lease reads).
    pub voters: BTreeSet<NodeId>,
    /// Nodes that receive the log and snapshots but never vote, never count toward a quorum
    /// and never campaign. Invariant: disjoint from `voters`.
    pub learners: BTreeSet<NodeId>,
    /// Ids removed from the cluster: never members again (ids are never reused), and their
    /// messages are refused. Invariant: disjoint from `voters` and `learners`.
    pub removed: BTreeSet<NodeId>,
    /// The peer address (`HOST:PORT`) of each member that joined by a configuration change or
    /// changed its address since: set by `AddLearner`/`AddVoter` and `UpdateAddress` from the
    /// change's context, dropped on `Remove`. Opaque to the core; it lives here so that every
    /// configuration entry and every snapshot carries the addresses, and a restarted node (or
    /// one that installed a snapshot) can reach the members that joined after it started.
    /// Members of the static start may be missing (their addresses come from `--peers`).
    /// Invariant: keys are members (voters or learners).
    #[serde(default)]
    pub addresses: BTreeMap<NodeId, String>,
}

impl Membership {
    /// A membership of `voters` only.
    pub fn with_voters(voters: impl IntoIterator<Item = NodeId>) -> Self {
        Membership {
            voters: voters.into_iter().collect(),
            ..Membership::default()
        }
    }

    /// True if `id` votes.
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.contains(&id)
    }

    /// True if `id` is a learner.
    pub fn is_learner(&self, id: NodeId) -> bool {
        self.learners.contains(&id)
    }

    /// True if `id` is a voter or a learner.
    pub fn contains(&self, id: NodeId) -> bool {
        self.is_voter(id) || self.is_learner(id)
    }

    /// Votes (or acknowledgements) needed for a majority of the voters.
    pub fn quorum(&self) -> usize {
        self.voters.len() / 2 + 1
    }

    /// Voters and learners, in id order.
    pub fn members(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.voters.union(&self.learners).copied()
    }

    /// The membership after `change`, or why the change does not fit this membership. Checks
    /// only what the membership itself decides (ids, roles); the leader's other rules (one
    /// change at a time, learner catch-up, live quorum) are in `RaftCore::propose_conf_change`.
    ///
    /// # Errors
    /// [`ConfChangeError`] naming the member and the problem.
    pub fn apply(&self, change: &ConfChange) -> Result<Membership, ConfChangeError> {
        let id = change.node;
        if id == 0 {
            return Err(ConfChangeError::ZeroId);
        }
        if self.removed.contains(&id) {
            return Err(ConfChangeError::IdRemoved(id));
        }
        let mut next = self.clone();
        match change.kind {
            ConfChangeKind::AddLearner | ConfChangeKind::AddVoter => {
                if self.contains(id) {
                    return Err(ConfChangeError::AlreadyMember(id));
                }
                if change.kind == ConfChangeKind::AddLearner {
                    next.learners.insert(id);
                } else {
                    next.voters.insert(id);
                }
                next.set_address(id, &change.context);
            }
            ConfChangeKind::PromoteLearner => {
                if self.is_voter(id) {
                    return Err(ConfChangeError::NotLearner(id));
                }
                if !next.learners.remove(&id) {
                    return Err(ConfChangeError::NotMember(id));
                }
                next.voters.insert(id);
            }
            ConfChangeKind::Remove => {
                if !self.contains(id) {
                    return Err(ConfChangeError::NotMember(id));
                }
                if self.voters.len() == 1 && self.is_voter(id) {
                    return Err(ConfChangeError::LastVoter(id));
                }
                next.voters.remove(&id);
                next.learners.remove(&id);
                next.addresses.remove(&id);
                next.removed.insert(id);
            }
            ConfChangeKind::UpdateAddress => {
                if !self.contains(id) {
                    return Err(ConfChangeError::NotMember(id));
                }
                next.set_address(id, &change.context);
            }
        }
        Ok(next)
    }

    /// The peer address recorded for `id`, if any (see [`Membership::addresses`]).
    pub fn address(&self, id: NodeId) -> Option<&str> {
        self.addresses.get(&id).map(String::as_str)
    }

    /// Records `context` as `id`'s address; an empty or non-UTF-8 context records nothing
    /// (the change then carries no address, as a static start's members do not).
    fn set_address(&mut self, id: NodeId, context: &[u8]) {
        match std::str::from_utf8(context) {
            Ok(addr) if !addr.is_empty() => {
                self.addresses.insert(id, addr.to_string());
            }
            _ => {}
        }
    }

    /// The byte encoding used by snapshot files and the peer protocol (see [`ConfEntry`]).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![ENCODING_VERSION];
        self.encode_into(&mut out);
        out
    }

    /// Decodes [`Membership::encode`]'s output.
    ///
    /// # Errors
    /// [`DecodeError`] if the bytes are not a membership this code wrote.
    pub fn decode(bytes: &[u8]) -> Result<Membership, DecodeError> {
        let mut r = Reader { bytes };
        let version = r.version()?;
        let m = Membership::decode_from(&mut r, version)?;
        r.end()?;
        Ok(m)
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        for set in [&self.voters, &self.learners, &self.removed] {
            put_u32(out, set.len());
            for id in set {
                out.extend_from_slice(&id.to_le_bytes());
            }
        }
        put_u32(out, self.addresses.len());
        for (id, addr) in &self.addresses {
            out.extend_from_slice(&id.to_le_bytes());
            put_u32(out, addr.len());
            out.extend_from_slice(addr.as_bytes());
        }
    }

    fn encoded_len(&self) -> usize {
        3 * 4
            + 8 * (self.voters.len() + self.learners.len() + self.removed.len())
            + 4
            + self
                .addresses
                .values()
                .map(|a| 8 + 4 + a.len())
                .sum::<usize>()
    }

    /// Version 1 (before addresses) ends after the three sets; version 2 adds the addresses.
    fn decode_from(r: &mut Reader<'_>, version: u8) -> Result<Membership, DecodeError> {
        let mut sets: [BTreeSet<NodeId>; 3] = Default::default();
        for set in &mut sets {
            let n = r.u32()?;
            for _ in 0..n {
                let id = r.u64()?;
                if id == 0 || !set.insert(id) {
                    return Err(DecodeError("a member id is 0 or repeated"));
                }
            }
        }
        let [voters, learners, removed] = sets;
        let mut addresses = BTreeMap::new();
        if version >= 2 {
            let n = r.u32()?;
            for _ in 0..n {
                let id = r.u64()?;
                let len = r.u32()?;
                let addr = std::str::from_utf8(r.take(len)?)
                    .map_err(|_| DecodeError("a member address is not UTF-8"))?;
                if !voters.contains(&id) && !learners.contains(&id) {
                    return Err(DecodeError("an address for a non-member"));
                }
                if addresses.insert(id, addr.to_string()).is_some() {
                    return Err(DecodeError("a member address is repeated"));
                }
            }
        }
        let m = Membership {
            voters,
            learners,
            removed,
            addresses,
        };
        let disjoint = m.voters.is_disjoint(&m.learners)
            && m.voters.is_disjoint(&m.removed)
            && m.learners.is_disjoint(&m.removed);
        if !disjoint {
            return Err(DecodeError("a member id is in two roles"));
        }
        Ok(m)
    }
}

/// What a configuration change does (etcd's `ConfChangeType`, with promotion explicit).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConfChangeKind {
    /// A new node that receives the log but does not vote (etcd `member add --learner`).
    AddLearner,
    /// A new voting node (etcd `member add`): raises the quorum before the node has any data,
    /// so adding a learner and promoting it is the safer path.
    AddVoter,
    /// A learner becomes a voter (etcd `member promote`).
    PromoteLearner,
    /// A voter or learner leaves for good; its id is never used again (etcd `member remove`).
    Remove,
    /// Only the member's peer address (in `context`) changes (etcd `member update`); the
    /// membership stays the same.
    UpdateAddress,
}

impl ConfChangeKind {
    fn tag(self) -> u8 {
        match self {
            ConfChangeKind::AddLearner => 0,
            ConfChangeKind::AddVoter => 1,
            ConfChangeKind::PromoteLearner => 2,
            ConfChangeKind::Remove => 3,
            ConfChangeKind::UpdateAddress => 4,
        }
    }

    fn from_tag(tag: u8) -> Option<Self> {
        Some(match tag {
            0 => ConfChangeKind::AddLearner,
            1 => ConfChangeKind::AddVoter,
            2 => ConfChangeKind::PromoteLearner,
            3 => ConfChangeKind::Remove,
            4 => ConfChangeKind::UpdateAddress,
            _ => return None,
        })
    }
}

/// A requested change of the membership (etcd's `ConfChange`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfChange {
    /// What to do.
    pub kind: ConfChangeKind,
    /// The member it concerns.
    pub node: NodeId,
    /// Opaque to Raft, for the driver (etcd's `ConfChange.Context`): the member's peer
    /// address for `AddLearner`, `AddVoter` and `UpdateAddress`.
    pub context: Vec<u8>,
}

/// What a configuration entry carries: the change and the complete membership it leads to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfEntry {
    /// The change that was asked for.
    pub change: ConfChange,
    /// The membership once the change is in the log.
    pub membership: Membership,
}

/// Version byte in front of every encoding in this module: 2 since memberships carry peer
/// addresses; version 1 (no addresses) is still read.
const ENCODING_VERSION: u8 = 2;

impl ConfEntry {
    /// The byte encoding of a configuration entry's payload, shared by the segment log and the
    /// peer protocol: version `2` u8 | kind u8 | node u64 LE | context length u32 LE | context |
    /// then voters, learners, removed, each a count u32 LE followed by that many u64 LE ids |
    /// then addresses: a count u32 LE, each an id u64 LE, a length u32 LE and UTF-8 bytes.
    /// Version 1 (no address part) is still read.
    pub fn encode(&self) -> Vec<u8> {
        let c = &self.change;
        let mut out = Vec::with_capacity(18 + c.context.len());
        out.push(ENCODING_VERSION);
        out.push(c.kind.tag());
        out.extend_from_slice(&c.node.to_le_bytes());
        put_u32(&mut out, c.context.len());
        out.extend_from_slice(&c.context);
        self.membership.encode_into(&mut out);
        out
    }

    /// Decodes [`ConfEntry::encode`]'s output.
    ///
    /// # Errors
    /// [`DecodeError`] if the bytes are not a configuration entry this code wrote.
    pub fn decode(bytes: &[u8]) -> Result<ConfEntry, DecodeError> {
        let mut r = Reader { bytes };
        let version = r.version()?;
        let kind = ConfChangeKind::from_tag(r.u8()?)
            .ok_or(DecodeError("unknown configuration change kind"))?;
        let node = r.u64()?;
        let len = r.u32()?;
        let context = r.take(len)?.to_vec();
        let membership = Membership::decode_from(&mut r, version)?;
        r.end()?;
        Ok(ConfEntry {
            change: ConfChange {
                kind,
                node,
                context,
            },
            membership,
        })
    }

    /// Test value: `learner` (peer address `127.0.0.1:<7000 + id>`) joins voters 1, 2, 3.
    #[cfg(test)]
    pub(crate) fn learner_joins_three(learner: NodeId) -> ConfEntry {
        let mut membership = Membership::with_voters([1, 2, 3]);
        membership.learners.insert(learner);
        ConfEntry {
            change: ConfChange {
                kind: ConfChangeKind::AddLearner,
                node: learner,
                context: format!("127.0.0.1:{}", 7000 + learner).into_bytes(),
            },
            membership,
        }
    }

    /// Size of [`ConfEntry::encode`]'s output, without encoding.
    pub fn encoded_len(&self) -> usize {
        1 + 1 + 8 + 4 + self.change.context.len() + self.membership.encoded_len()
    }
}

/// Bytes that are not an encoding this module wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("bad membership encoding: {0}")]
pub struct DecodeError(&'static str);

/// Why a configuration change is refused. One line each; etcd's wording where etcd has one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfChangeError {
    /// Not the leader, or a leadership transfer is under way.
    #[error(transparent)]
    Propose(#[from] super::ProposeError),
    /// The raft-dev fix: a leader takes a change only after committing an entry of its term.
    #[error("the leader has not committed an entry of its term yet; retry shortly")]
    NoCommitInTerm,
    /// At most one change in the log that is not applied yet.
    #[error("membership change at index {0} is not applied yet; one change at a time")]
    ChangeInProgress(u64),
    /// Node id 0 is reserved.
    #[error("member id 0 is reserved")]
    ZeroId,
    /// The id is a member already.
    #[error("member {0} already exists")]
    AlreadyMember(NodeId),
    /// The id was removed; ids are never reused.
    #[error("member {0} was removed from the cluster; ids are never reused")]
    IdRemoved(NodeId),
    /// The id is not a member.
    #[error("member {0} not found")]
    NotMember(NodeId),
    /// Only a learner can be promoted.
    #[error("member {0} is not a learner; can only promote a learner member")]
    NotLearner(NodeId),
    /// The cluster must keep a voter.
    #[error("member {0} is the only voter and cannot be removed")]
    LastVoter(NodeId),
    /// The learner's log is too far behind the leader's to vote yet.
    #[error("can only promote a learner member which is in sync with the leader: member {node} has {matched} of {last} entries ({behind} behind; needs at least {percent}%)")]
    LearnerNotReady {
        /// The learner.
        node: NodeId,
        /// Its match index.
        matched: u64,
        /// The leader's last index.
        last: u64,
        /// `last - matched`.
        behind: u64,
        /// The share of the leader's log it needs.
        percent: u64,
    },
    /// etcd's strict reconfiguration check: the new configuration would not have a quorum of
    /// voters that are live now.
    #[error("{change} would leave {live} live voters, fewer than the {quorum} the new configuration needs for a quorum (force to override)")]
    WouldLoseQuorum {
        /// What the change does, e.g. "removing member 3".
        change: String,
        /// Voters of the new configuration heard from within an election timeout.
        live: usize,
        /// The new configuration's quorum.
        quorum: usize,
    },
}

fn put_u32(out: &mut Vec<u8>, n: usize) {
    let n = u32::try_from(n).unwrap_or(u32::MAX);
    out.extend_from_slice(&n.to_le_bytes());
}

/// A cursor over bytes that fails instead of panicking on short input.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.bytes.len() < n {
            return Err(DecodeError("truncated"));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<usize, DecodeError> {
        let b: [u8; 4] = self.take(4)?.try_into().map_err(|_| DecodeError("u32"))?;
        usize::try_from(u32::from_le_bytes(b)).map_err(|_| DecodeError("length"))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        let b: [u8; 8] = self.take(8)?.try_into().map_err(|_| DecodeError("u64"))?;
        Ok(u64::from_le_bytes(b))
    }

    fn version(&mut self) -> Result<u8, DecodeError> {
        match self.u8()? {
            v @ (1 | ENCODING_VERSION) => Ok(v),
            _ => Err(DecodeError("unknown version")),
        }
    }

    fn end(&self) -> Result<(), DecodeError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(DecodeError("trailing bytes"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(kind: ConfChangeKind, node: NodeId) -> ConfChange {
        ConfChange {
            kind,
            node,
            context: b"127.0.0.1:7004".to_vec(),
        }
    }

    #[test]
    fn changes_move_ids_between_roles() {
        let m = Membership::with_voters([1, 2, 3]);
        let m = m.apply(&change(ConfChangeKind::AddLearner, 4)).unwrap();
        assert!(m.is_learner(4) && !m.is_voter(4));
        assert_eq!(m.quorum(), 2, "a learner does not change the quorum");
        let m = m.apply(&change(ConfChangeKind::PromoteLearner, 4)).unwrap();
        assert!(m.is_voter(4) && !m.is_learner(4));
        assert_eq!(m.quorum(), 3);
        let m = m.apply(&change(ConfChangeKind::Remove, 1)).unwrap();
        assert!(!m.contains(1) && m.removed.contains(&1));
        assert_eq!(
            m.apply(&change(ConfChangeKind::AddLearner, 1)),
            Err(ConfChangeError::IdRemoved(1)),
            "ids are never reused"
        );
        assert_eq!(
            m.apply(&change(ConfChangeKind::AddVoter, 2)),
            Err(ConfChangeError::AlreadyMember(2))
        );
        assert_eq!(
            m.apply(&change(ConfChangeKind::PromoteLearner, 2)),
            Err(ConfChangeError::NotLearner(2))
        );
        assert_eq!(
            m.apply(&change(ConfChangeKind::Remove, 9)),
            Err(ConfChangeError::NotMember(9))
        );
        assert_eq!(
            Membership::with_voters([5]).apply(&change(ConfChangeKind::Remove, 5)),
            Err(ConfChangeError::LastVoter(5))
        );
        let moved = m
            .apply(&ConfChange {
                kind: ConfChangeKind::UpdateAddress,
                node: 2,
                context: b"10.0.0.2:7002".to_vec(),
            })
            .unwrap();
        assert_eq!(moved.address(2), Some("10.0.0.2:7002"));
        assert_eq!(
            (&moved.voters, &moved.learners, &moved.removed),
            (&m.voters, &m.learners, &m.removed),
            "an address update changes no role"
        );
    }

    #[test]
    fn addresses_follow_the_members() {
        let m = Membership::with_voters([1, 2, 3]);
        let m = m.apply(&change(ConfChangeKind::AddLearner, 4)).unwrap();
        assert_eq!(m.address(4), Some("127.0.0.1:7004"), "set on add");
        let m = m.apply(&change(ConfChangeKind::PromoteLearner, 4)).unwrap();
        assert_eq!(m.address(4), Some("127.0.0.1:7004"), "kept on promotion");
        let m = m.apply(&change(ConfChangeKind::Remove, 4)).unwrap();
        assert_eq!(m.address(4), None, "dropped on removal");
        let bare = ConfChange {
            context: Vec::new(),
            ..change(ConfChangeKind::AddLearner, 5)
        };
        assert_eq!(m.apply(&bare).unwrap().address(5), None);
    }

    #[test]
    fn version_1_encodings_without_addresses_still_decode() {
        // A version-1 membership as part 1 wrote it: voters {1, 2}, no learners, removed {3}.
        let mut v1 = vec![1u8];
        for set in [&[1u64, 2][..], &[], &[3]] {
            v1.extend_from_slice(&(set.len() as u32).to_le_bytes());
            for id in set {
                v1.extend_from_slice(&id.to_le_bytes());
            }
        }
        let m = Membership::decode(&v1).unwrap();
        assert_eq!(m.voters, BTreeSet::from([1, 2]));
        assert_eq!(m.removed, BTreeSet::from([3]));
        assert!(m.addresses.is_empty());
        // An address for an id that is not a member is refused.
        let mut bad = Membership::with_voters([1]);
        bad.addresses.insert(9, "h:1".into());
        assert!(Membership::decode(&bad.encode()).is_err());
    }

    #[test]
    fn encodings_round_trip_and_refuse_garbage() {
        let mut m = Membership::with_voters([1, 2, 3]);
        m.learners.insert(7);
        m.removed.insert(4);
        m.addresses.insert(7, "127.0.0.1:7007".into());
        let e = ConfEntry {
            change: change(ConfChangeKind::AddLearner, 7),
            membership: m.clone(),
        };
        let bytes = e.encode();
        assert_eq!(bytes.len(), e.encoded_len());
        assert_eq!(ConfEntry::decode(&bytes), Ok(e));
        for cut in 0..bytes.len() {
            assert!(ConfEntry::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(ConfEntry::decode(&trailing).is_err());
        assert_eq!(Membership::decode(&m.encode()), Ok(m.clone()));
        let mut two_roles = m.clone();
        two_roles.learners.insert(1);
        assert!(Membership::decode(&two_roles.encode()).is_err());
        // A huge count is refused by running out of bytes, not by allocating.
        assert!(Membership::decode(&[1, 0xff, 0xff, 0xff, 0xff]).is_err());
    }
}
