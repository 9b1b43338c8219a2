//! Which cluster, and which node of it, a data dir belongs to.
//!
//! At first start the data dir records a [`ClusterIdentity`] in sled's `meta` tree (key
//! `b"identity"`, written with flush + `fdatasync` like the hard state, before the node answers
//! anything): the cluster id, this node's id, the member set (ids and addresses) and the
//! `--initial-cluster-token`. Every later start compares it with the identity the flags make
//! and refuses, in one line naming both and the flags to use, a start that disagrees: another
//! `--id`, another member set (a missing `--peers` included, so a node of a three-node cluster
//! never starts as a cluster of its own and acknowledges writes the cluster never sees), or
//! another token. Nothing is ever rewritten: membership is static.
//!
//! # The cluster id
//! Like etcd's, it is derived from what every member is given, so all members compute the
//! same id without talking: a 64-bit FNV-1a hash of the token and of the members sorted by id
//! (each id and address, lengths first), printed as 16 hex digits. Members agree when their
//! flags agree: every node names every other node by the same address, and each node's own
//! `--host`/`--port` spell the address the others use for it (a node listening on `0.0.0.0`
//! computes another id than its peers; the check still works, since each data dir is compared
//! only with its own node's flags). The token tells apart clusters with the same members, for
//! example a cluster rebuilt on the same addresses: an old member's data dir is refused.
//!
//! # Data dirs from before
//! A data dir written before identities were recorded (it has no `identity` key) adopts the
//! identity of the flags it is next started with, and logs that it did. That start is not
//! checked, so make sure its flags are the usual ones; every start after it is.

use super::super::error::StorageError;
use super::super::keys::{decode_value, encode_value, HARD_STATE_KEY};
use super::SledStore;
use crate::raft::NodeId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

/// Key of the identity in the `meta` tree.
const IDENTITY_KEY: &[u8] = b"identity";
/// Version of the stored encoding, its first byte.
const IDENTITY_VERSION: u8 = 1;
/// How a corruption message names the identity.
const IDENTITY_WHAT: &str = "the cluster identity (sled tree \"meta\")";

/// The identity of a cluster member: what a data dir records at first start.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterIdentity {
    /// Derived from `members` and `token` (see the module docs).
    pub cluster_id: u64,
    /// This node's id.
    pub node_id: NodeId,
    /// Every member, this node included: id -> `HOST:PORT`.
    pub members: BTreeMap<NodeId, String>,
    /// The `--initial-cluster-token`.
    pub token: String,
}

impl ClusterIdentity {
    /// The identity of node `node_id` in the cluster of `members` (this node included) made
    /// with `token`.
    pub fn new(node_id: NodeId, members: BTreeMap<NodeId, String>, token: &str) -> Self {
        ClusterIdentity {
            cluster_id: cluster_id(&members, token),
            node_id,
            members,
            token: token.to_owned(),
        }
    }

    /// The members as `ID=HOST:PORT,...`, leaving out `except`.
    fn list(&self, except: Option<NodeId>) -> String {
        let mut out = String::new();
        for (id, addr) in self.members.iter().filter(|(&id, _)| Some(id) != except) {
            if !out.is_empty() {
                out.push(',');
            }
            let _ = write!(out, "{id}={addr}");
        }
        out
    }

    /// The flags that make this identity, for "start it with ...".
    fn flags(&self, token_differs: bool) -> String {
        let own = self.members.get(&self.node_id).map(String::as_str);
        let (host, port) = own.and_then(|a| a.rsplit_once(':')).unwrap_or(("?", "?"));
        let mut flags = format!("--id {} --host {host} --port {port}", self.node_id);
        let peers = self.list(Some(self.node_id));
        if !peers.is_empty() {
            let _ = write!(flags, " --peers {peers}");
        }
        if token_differs {
            let _ = write!(flags, " --initial-cluster-token {}", self.token);
        }
        flags
    }
}

/// FNV-1a (64-bit) of the token and the members, each length-prefixed: stable across
/// versions and platforms (unlike std's hasher), which is all an identifier needs.
fn cluster_id(members: &BTreeMap<NodeId, String>, token: &str) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET;
    let mut feed = |bytes: &[u8]| {
        for &b in bytes {
            hash = (hash ^ u64::from(b)).wrapping_mul(PRIME);
        }
    };
    feed(&(token.len() as u64).to_le_bytes());
    feed(token.as_bytes());
    for (id, addr) in members {
        feed(&id.to_le_bytes());
        feed(&(addr.len() as u64).to_le_bytes());
        feed(addr.as_bytes());
    }
    hash
}

/// A start whose flags disagree with the identity its data dir recorded. One line: what the
/// data dir says, what the flags say, what to do.
#[derive(Debug, thiserror::Error)]
#[error("data dir {dir} holds node {} of cluster {:016x}{recorded_members}, but {flags_say}: start it with the flags it was created with ({fix}), or give it a new, empty data dir", recorded.node_id, recorded.cluster_id)]
pub struct IdentityMismatch {
    dir: String,
    recorded: Box<ClusterIdentity>,
    /// ` with members ...`, or empty when the members are not what differs.
    recorded_members: String,
    flags_say: String,
    fix: String,
}

impl IdentityMismatch {
    /// The mismatch between `recorded` and `flags`, or None if they agree.
    fn between(dir: &Path, recorded: &ClusterIdentity, flags: &ClusterIdentity) -> Option<Self> {
        let token_differs = recorded.token != flags.token;
        let (recorded_members, flags_say) = if recorded.node_id != flags.node_id {
            (
                String::new(),
                format!("the flags say --id {}", flags.node_id),
            )
        } else if recorded.members != flags.members {
            let peers = if flags.members.len() == 1 {
                " (no --peers)"
            } else {
                ""
            };
            (
                format!(" with members {}", recorded.list(None)),
                format!("the flags give members {}{peers}", flags.list(None)),
            )
        } else if token_differs {
            (
                format!(" made with --initial-cluster-token {}", recorded.token),
                format!(
                    "the flags give --initial-cluster-token {} (cluster {:016x})",
                    flags.token, flags.cluster_id
                ),
            )
        } else if recorded.cluster_id != flags.cluster_id {
            // Same members and token, another id: recorded by another derivation.
            (
                String::new(),
                format!("the flags make cluster {:016x}", flags.cluster_id),
            )
        } else {
            return None;
        };
        Some(IdentityMismatch {
            dir: dir.display().to_string(),
            recorded: Box::new(recorded.clone()),
            recorded_members,
            flags_say,
            fix: recorded.flags(token_differs),
        })
    }
}

/// Why a data dir could not be opened as a given cluster member.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The flags disagree with the recorded identity: nothing was changed.
    #[error(transparent)]
    Mismatch(#[from] IdentityMismatch),
    /// The data dir could not be opened, read or written.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl SledStore {
    /// [`SledStore::open`], then checks the data dir's recorded identity against `flags`
    /// (recording `flags` durably if the dir has none yet, see the module docs).
    ///
    /// # Errors
    /// [`IdentityError::Mismatch`] if the recorded identity differs from `flags`;
    /// [`IdentityError::Storage`] if the dir cannot be opened, or the identity cannot be read
    /// or made durable.
    pub fn open_as(dir: &Path, flags: &ClusterIdentity) -> Result<Self, IdentityError> {
        let store = SledStore::open(dir)?;
        match store.check_identity(flags) {
            Ok(()) => Ok(store),
            Err(IdentityError::Storage(e)) => {
                // A failed write or sync: closing sled could hang (see `abandon`).
                store.abandon();
                Err(e.into())
            }
            Err(e) => Err(e),
        }
    }

    /// [`SledStore::open_as`], except that flags whose member set alone differs from the
    /// recorded one (same id, same token) open the store and return the mismatch, for the
    /// caller to accept if the flags name the data dir's current membership (its log's, after
    /// membership changes) and to refuse otherwise.
    ///
    /// # Errors
    /// As [`SledStore::open_as`] for every other mismatch.
    pub fn open_as_member(
        dir: &Path,
        flags: &ClusterIdentity,
    ) -> Result<(Self, Option<(IdentityMismatch, ClusterIdentity)>), IdentityError> {
        let store = SledStore::open(dir)?;
        if let Ok(Some(recorded)) = store.identity() {
            let members_only = recorded.node_id == flags.node_id
                && recorded.token == flags.token
                && recorded.members != flags.members;
            if members_only {
                if let Some(m) = IdentityMismatch::between(dir, &recorded, flags) {
                    return Ok((store, Some((m, recorded))));
                }
            }
        }
        // Everything else exactly as `open_as` (same store, not reopened).
        match store.check_identity(flags) {
            Ok(()) => Ok((store, None)),
            Err(IdentityError::Storage(e)) => {
                store.abandon();
                Err(e.into())
            }
            Err(e) => Err(e),
        }
    }

    /// Opens the data dir of a node started with `--join`. If the dir recorded an identity
    /// (not its first start), that identity is authoritative, like etcd's
    /// `--initial-cluster-state existing` after the first start: only the node id must agree,
    /// the members are the data dir's (its log and snapshots), and `joined` is ignored. At
    /// first start, `joined` (the identity the cluster reported) is recorded.
    ///
    /// # Errors
    /// As [`SledStore::open_as`]; also a first start without `joined`.
    pub fn open_joined(
        dir: &Path,
        node_id: NodeId,
        joined: Option<&ClusterIdentity>,
    ) -> Result<Self, IdentityError> {
        let store = SledStore::open(dir)?;
        let checked = match store.identity() {
            Ok(Some(recorded)) => {
                let flags = ClusterIdentity {
                    node_id,
                    ..recorded.clone()
                };
                match IdentityMismatch::between(dir, &recorded, &flags) {
                    None => Ok(()),
                    Some(m) => Err(m.into()),
                }
            }
            Ok(None) => match joined {
                Some(joined) => store.check_identity(joined),
                None => {
                    // Nothing was written: closed normally (not abandoned), lock released.
                    drop(store);
                    return Err(IdentityError::Storage(StorageError::Corrupt {
                        dir: dir.to_path_buf(),
                        what: IDENTITY_WHAT.to_owned(),
                        reason: "none recorded, and --join did not provide one".to_owned(),
                    }));
                }
            },
            Err(e) => Err(e.into()),
        };
        match checked {
            Ok(()) => Ok(store),
            Err(IdentityError::Storage(e)) => {
                store.abandon();
                Err(e.into())
            }
            Err(e) => Err(e),
        }
    }

    /// Whether the data dir at `dir` recorded a cluster identity (opens and closes it).
    ///
    /// # Errors
    /// The dir cannot be opened or read.
    pub fn recorded_identity(dir: &Path) -> Result<Option<ClusterIdentity>, StorageError> {
        if !dir.exists() {
            return Ok(None);
        }
        SledStore::open(dir)?.identity()
    }

    /// The identity this data dir recorded, if any.
    ///
    /// # Errors
    /// sled cannot be read, or the stored value is damaged.
    pub fn identity(&self) -> Result<Option<ClusterIdentity>, StorageError> {
        let inner = &self.inner;
        let Some(raw) = inner
            .meta
            .get(IDENTITY_KEY)
            .map_err(|e| self.sled_err("read the cluster identity", &e))?
        else {
            return Ok(None);
        };
        let corrupt = |reason: String| StorageError::Corrupt {
            dir: inner.dir.clone(),
            what: IDENTITY_WHAT.to_owned(),
            reason,
        };
        let (version, identity): (u8, ClusterIdentity) = decode_value(&raw).map_err(corrupt)?;
        if version != IDENTITY_VERSION {
            return Err(corrupt(format!(
                "encoding version {version}, this kvstore reads {IDENTITY_VERSION}"
            )));
        }
        Ok(Some(identity))
    }

    fn check_identity(&self, flags: &ClusterIdentity) -> Result<(), IdentityError> {
        let dir = &self.inner.dir;
        if let Some(recorded) = self.identity()? {
            return match IdentityMismatch::between(dir, &recorded, flags) {
                None => Ok(()),
                Some(mismatch) => Err(mismatch.into()),
            };
        }
        let had_state = self
            .inner
            .meta
            .contains_key(HARD_STATE_KEY)
            .map_err(|e| self.sled_err("read the hard state", &e))?
            || self.snapshot_index() > 0;
        let value = encode_value(&(IDENTITY_VERSION, flags), 128).map_err(|cause| {
            StorageError::Encode {
                dir: dir.clone(),
                what: "cluster identity".to_owned(),
                cause,
            }
        })?;
        self.inner
            .meta
            .insert(IDENTITY_KEY, value)
            .map_err(|e| self.sled_err("write the cluster identity", &e))?;
        self.sync_sled()?;
        tracing::info!(
            cluster_id = %format_args!("{:016x}", flags.cluster_id),
            node_id = flags.node_id,
            members = %flags.list(None),
            data_dir = %dir.display(),
            "{}",
            if had_state {
                "data dir had no cluster identity (written by an older kvstore): recorded the one the flags make"
            } else {
                "recorded the cluster identity in a new data dir"
            }
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::storage::LogStore;
    use crate::raft::HardState;

    fn members(list: &[(NodeId, u16)]) -> BTreeMap<NodeId, String> {
        list.iter()
            .map(|&(id, port)| (id, format!("127.0.0.1:{port}")))
            .collect()
    }

    fn three(id: NodeId) -> ClusterIdentity {
        ClusterIdentity::new(id, members(&[(1, 9001), (2, 9002), (3, 9003)]), "t")
    }

    fn refusal(dir: &Path, flags: &ClusterIdentity) -> String {
        match SledStore::open_as(dir, flags) {
            Err(IdentityError::Mismatch(m)) => m.to_string(),
            Err(e) => panic!("expected a mismatch, got {e}"),
            Ok(_) => panic!("expected a mismatch, the store opened"),
        }
    }

    #[test]
    fn every_member_computes_the_same_cluster_id_and_the_token_changes_it() {
        let ids: Vec<u64> = (1..=3).map(|id| three(id).cluster_id).collect();
        assert_eq!(ids, vec![ids[0]; 3]);
        // Pinned: the id must never change between versions, or every data dir is refused.
        assert_eq!(format!("{:016x}", ids[0]), "810f0759475d295a");
        let other = ClusterIdentity::new(1, three(1).members, "u");
        assert_ne!(other.cluster_id, ids[0]);
        let moved = ClusterIdentity::new(1, members(&[(1, 9001), (2, 9002), (3, 9004)]), "t");
        assert_ne!(moved.cluster_id, ids[0]);
    }

    #[test]
    fn a_new_data_dir_records_the_identity_durably_and_accepts_the_same_flags() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open_as(dir.path(), &three(2)).unwrap();
        drop(store);
        // Read back by a plain open: it is in sled, not only in memory.
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.identity().unwrap(), Some(three(2)));
        drop(store);
        SledStore::open_as(dir.path(), &three(2)).unwrap();
    }

    #[test]
    fn another_id_is_refused_in_one_line_naming_both() {
        let dir = tempfile::tempdir().unwrap();
        drop(SledStore::open_as(dir.path(), &three(1)).unwrap());
        let d = dir.path().display();
        assert_eq!(
            refusal(dir.path(), &three(3)),
            format!(
                "data dir {d} holds node 1 of cluster 810f0759475d295a, but the flags say --id 3: \
                 start it with the flags it was created with (--id 1 --host 127.0.0.1 --port 9001 \
                 --peers 2=127.0.0.1:9002,3=127.0.0.1:9003), or give it a new, empty data dir"
            )
        );
    }

    #[test]
    fn a_missing_or_different_peer_set_is_refused_in_one_line_naming_both() {
        let dir = tempfile::tempdir().unwrap();
        drop(SledStore::open_as(dir.path(), &three(2)).unwrap());
        let d = dir.path().display();
        // No --peers: the node would be a cluster of its own.
        let alone = ClusterIdentity::new(2, members(&[(2, 9002)]), "t");
        assert_eq!(
            refusal(dir.path(), &alone),
            format!(
                "data dir {d} holds node 2 of cluster 810f0759475d295a with members \
                 1=127.0.0.1:9001,2=127.0.0.1:9002,3=127.0.0.1:9003, but the flags give members \
                 2=127.0.0.1:9002 (no --peers): start it with the flags it was created with \
                 (--id 2 --host 127.0.0.1 --port 9002 --peers 1=127.0.0.1:9001,3=127.0.0.1:9003), \
                 or give it a new, empty data dir"
            )
        );
        let moved = ClusterIdentity::new(2, members(&[(1, 9001), (2, 9002), (3, 9004)]), "t");
        let msg = refusal(dir.path(), &moved);
        assert!(
            msg.contains(
                "but the flags give members 1=127.0.0.1:9001,2=127.0.0.1:9002,3=127.0.0.1:9004:"
            ),
            "{msg}"
        );
        let token = ClusterIdentity::new(2, three(2).members, "u");
        let msg = refusal(dir.path(), &token);
        assert!(
            msg.contains(" made with --initial-cluster-token t, but the flags give --initial-cluster-token u (cluster ")
                && msg.contains("--peers 1=127.0.0.1:9001,3=127.0.0.1:9003 --initial-cluster-token t)"),
            "{msg}"
        );
        assert!(!msg.contains('\n'));
        // Nothing was overwritten by the refused starts.
        drop(SledStore::open_as(dir.path(), &three(2)).unwrap());
    }

    #[test]
    fn a_data_dir_from_before_identities_adopts_the_flags_identity_once() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut store = SledStore::open(dir.path()).unwrap();
            let hs = HardState {
                term: 4,
                vote: Some(1),
                commit: 0,
            };
            store.persist(Some(&hs), &[]).unwrap();
        }
        drop(SledStore::open_as(dir.path(), &three(2)).unwrap());
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.identity().unwrap(), Some(three(2)));
        assert_eq!(
            store.load().unwrap().0.term,
            4,
            "the hard state is untouched"
        );
        drop(store);
        let alone = ClusterIdentity::new(2, members(&[(2, 9002)]), "t");
        assert!(refusal(dir.path(), &alone).contains("(no --peers)"));
    }

    #[test]
    fn a_damaged_identity_is_a_storage_error_not_a_fresh_start() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path()).unwrap();
            store
                .inner
                .meta
                .insert(IDENTITY_KEY, &b"garbage!"[..])
                .unwrap();
            store.sync_sled().unwrap();
        }
        match SledStore::open_as(dir.path(), &three(1)) {
            Err(IdentityError::Storage(e)) => {
                let msg = e.to_string();
                assert!(msg.contains("the cluster identity"), "{msg}");
            }
            Err(e) => panic!("expected a storage error, got {e}"),
            Ok(_) => panic!("a damaged identity was accepted"),
        }
    }

    /// `--join`: the first start records the identity the cluster reported; later starts keep
    /// it (only the node id must agree); a first start without one is refused.
    #[test]
    fn a_joined_data_dir_keeps_the_reported_identity_and_checks_only_the_id() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n4");
        assert!(matches!(
            SledStore::open_joined(&path, 4, None),
            Err(IdentityError::Storage(_))
        ));
        let reported = ClusterIdentity {
            node_id: 4,
            ..three(1)
        };
        drop(SledStore::open_joined(&path, 4, Some(&reported)).unwrap());
        assert_eq!(
            SledStore::recorded_identity(&path).unwrap(),
            Some(reported.clone())
        );
        // A restart: nothing reported, the recorded identity stands.
        drop(SledStore::open_joined(&path, 4, None).unwrap());
        let other = ClusterIdentity {
            cluster_id: 1,
            ..reported.clone()
        };
        drop(SledStore::open_joined(&path, 4, Some(&other)).unwrap());
        assert_eq!(SledStore::recorded_identity(&path).unwrap(), Some(reported));
        // Another id is refused in one line.
        match SledStore::open_joined(&path, 5, None) {
            Err(IdentityError::Mismatch(m)) => assert!(m.to_string().contains("--id 5"), "{m}"),
            Err(e) => panic!("expected a mismatch, got {e}"),
            Ok(_) => panic!("another id was accepted"),
        }
    }
}
