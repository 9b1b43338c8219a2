//! Property tests of the wire path a hostile peer controls: raw bytes and arbitrary protobuf
//! requests go through prost decoding, `convert`, and into a live core. Nothing may panic,
//! malformed input must be refused, and whatever is accepted must leave the log consistent.

use proptest::prelude::*;
use prost::Message as _;

use super::convert::{append_request_in, vote_request_in};
use crate::pb;
use crate::raft::{Config, HardState, RaftCore};

fn absurd() -> impl Strategy<Value = u64> {
    prop_oneof![0u64..6, Just(u64::MAX), any::<u64>()]
}

fn pb_entry() -> impl Strategy<Value = pb::Entry> {
    (
        absurd(),
        absurd(),
        -2i32..5,
        prop::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(term, index, r#type, data)| pb::Entry {
            term,
            index,
            r#type,
            data: data.into(),
        })
}

fn append_req() -> impl Strategy<Value = pb::AppendEntriesRequest> {
    (
        absurd(),
        0u64..5,
        absurd(),
        absurd(),
        prop::collection::vec(pb_entry(), 0..40),
        absurd(),
        0u64..3,
        absurd(),
    )
        .prop_map(
            |(
                term,
                leader_id,
                prev_log_index,
                prev_log_term,
                entries,
                leader_commit,
                to,
                read_ctx,
            )| {
                pb::AppendEntriesRequest {
                    term,
                    leader_id,
                    prev_log_index,
                    prev_log_term,
                    entries,
                    leader_commit,
                    to,
                    read_ctx,
                }
            },
        )
}

fn follower() -> RaftCore {
    let mut c = RaftCore::new(Config::new(1, vec![2, 3]), HardState::default(), vec![])
        .unwrap_or_else(|e| panic!("config: {e}"));
    let _ = c.ready();
    c.advance();
    c
}

fn feed(core: &mut RaftCore, msg: crate::raft::Message) {
    core.step(msg);
    let rd = core.ready();
    core.advance();
    let s = core.status();
    assert!(
        s.commit <= s.last_index,
        "commit {} past last index {}",
        s.commit,
        s.last_index
    );
    // Every accepted entry sits at its own index.
    for e in &rd.entries {
        assert_eq!(core.entry(e.index).map(|x| x.index), Some(e.index));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let mut core = follower();
        if let Ok(req) = pb::AppendEntriesRequest::decode(bytes.as_slice()) {
            if let Ok(m) = append_request_in(req, 1) { feed(&mut core, m); }
        }
        if let Ok(req) = pb::RequestVoteRequest::decode(bytes.as_slice()) {
            if let Ok(m) = vote_request_in(req, 1) { feed(&mut core, m); }
        }
    }

    #[test]
    fn arbitrary_requests_are_refused_or_handled(reqs in prop::collection::vec(append_req(), 1..6)) {
        let mut core = follower();
        for req in reqs {
            let bytes = req.encode_to_vec();
            let decoded = pb::AppendEntriesRequest::decode(bytes.as_slice());
            prop_assert!(decoded.is_ok());
            if let Ok(m) = append_request_in(decoded.unwrap_or_default(), 1) {
                prop_assert_eq!(m.to, 1);
                feed(&mut core, m);
            }
        }
    }
}
