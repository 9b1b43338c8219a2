//! Tests of the driver itself, on a real data dir, with a transport that keeps what is sent.

use std::sync::Mutex;

use super::*;
use crate::state_machine::StateMachine;

/// Keeps every message the driver sends to peers.
#[derive(Default)]
struct Outbox(Mutex<Vec<Message>>);

impl Transport for Outbox {
    fn send(&self, msg: Message) {
        if let Ok(mut sent) = self.0.lock() {
            sent.push(msg);
        }
    }
}

/// Node 1 of three, on a fresh data dir in `dir`.
fn follower(dir: &tempfile::TempDir) -> Driver {
    let mut config = NodeConfig::new(1, 0);
    config.data_dir = dir.path().join("node-1");
    config.peers = crate::config::parse_peers("2=127.0.0.1:1,3=127.0.0.1:2", 1)
        .unwrap_or_else(|e| panic!("peers: {e}"));
    let (_handle, inbox) = super::super::channel(1, 16);
    Driver::open(Arc::new(config), inbox, Arc::new(Outbox::default()))
        .unwrap_or_else(|e| panic!("open: {e}"))
}

/// A decodable snapshot of a state machine with one key, applied up to `meta.index`.
fn snapshot(meta: SnapshotMeta) -> Snapshot {
    let mut sm = StateMachine::new();
    for index in 1..=meta.index {
        let put = Proposal {
            session: None,
            command: Command::Put {
                key: format!("k{index}"),
                value: "v".into(),
                fence: None,
            },
        };
        let _ = sm.apply(index, &put.encode());
    }
    Snapshot {
        meta,
        data: sm.snapshot().into(),
    }
}

/// Steps `snapshot` from node 2 as leader of `term` into the driver and handles the Ready;
/// returns the answer the peer call got.
async fn deliver(d: &mut Driver, term: Term, snapshot: Snapshot) -> Option<Message> {
    let (reply, rx) = oneshot::channel();
    let msg = Message {
        from: 2,
        to: 1,
        term,
        rpc_id: 0,
        body: MessageBody::InstallSnapshot { snapshot },
    };
    d.handle_request(Request::Peer { msg, reply });
    d.handle_ready()
        .await
        .unwrap_or_else(|e| panic!("handle_ready: {e}"));
    rx.await.ok()
}

/// Issue 11: a snapshot the core refuses (already covered by the commit index, or from a
/// term after its sender's) was decoded on arrival and its state machine kept in memory.
#[tokio::test]
async fn a_refused_snapshot_is_not_kept_in_memory() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut d = follower(&dir);
    // Covered: nothing is newer than the commit index 0.
    deliver(&mut d, 1, snapshot(SnapshotMeta { index: 0, term: 0 })).await;
    assert!(d.incoming_snapshot.is_none(), "kept a covered snapshot");
    // From a term after its sender's: refused.
    deliver(&mut d, 1, snapshot(SnapshotMeta { index: 5, term: 2 })).await;
    assert!(d.incoming_snapshot.is_none(), "kept a refused snapshot");
    assert_eq!(d.sm.applied_index(), 0);
}

/// Control: a snapshot the core accepts is installed from the state machine decoded on
/// arrival, and nothing stays behind.
#[tokio::test]
async fn an_accepted_snapshot_is_installed() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut d = follower(&dir);
    let answer = deliver(&mut d, 1, snapshot(SnapshotMeta { index: 5, term: 1 })).await;
    assert!(
        matches!(
            answer.map(|m| m.body),
            Some(MessageBody::AppendEntriesResponse {
                success: true,
                match_index: 5,
                ..
            })
        ),
        "snapshot not acknowledged"
    );
    assert!(d.incoming_snapshot.is_none());
    assert_eq!(d.sm.applied_index(), 5);
    assert_eq!(d.sm.get("k5"), Some("v"));
}
