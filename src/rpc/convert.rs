//! Conversions between protobuf types and the core's types; the only place that knows both.
//! Incoming data is validated here: a malformed peer request becomes INVALID_ARGUMENT and
//! never reaches the core.

use crate::pb;
use crate::raft::{
    ConfEntry, Entry, Membership, Message, MessageBody, NodeId, Payload, Snapshot, SnapshotMeta,
};
use bytes::{Bytes, BytesMut};
use tonic::Status;

/// Below this many bytes of entry data in all, an AppendEntries' entries are copied out of
/// the received message into one buffer of their own; from it on they stay slices of it.
/// A slice keeps the whole receive buffer alive (tonic's is at least 8 KiB) for as long as
/// the entry stays in the in-memory log, which for one small entry would be ~50x its size.
const SHARE_RECEIVE_BUFFER_FROM: usize = 4096;

impl TryFrom<pb::Entry> for Entry {
    type Error = Status;

    fn try_from(e: pb::Entry) -> Result<Self, Status> {
        let payload = match pb::EntryType::try_from(e.r#type) {
            Ok(pb::EntryType::Noop) if e.data.is_empty() => Payload::Noop,
            Ok(pb::EntryType::Noop) => {
                return Err(Status::invalid_argument(format!(
                    "entry {}: a no-op entry must carry no data",
                    e.index
                )))
            }
            Ok(pb::EntryType::Command) => Payload::Command(e.data),
            Ok(pb::EntryType::ConfChange) => match ConfEntry::decode(&e.data) {
                Ok(conf) => Payload::ConfChange(Box::new(conf)),
                Err(err) => {
                    return Err(Status::invalid_argument(format!(
                        "entry {}: {err}",
                        e.index
                    )))
                }
            },
            Ok(pb::EntryType::Unspecified) | Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "entry {}: unknown entry type {}",
                    e.index, e.r#type
                )))
            }
        };
        Ok(Entry {
            term: e.term,
            index: e.index,
            payload,
        })
    }
}

impl From<Entry> for pb::Entry {
    fn from(e: Entry) -> Self {
        let (r#type, data) = match e.payload {
            Payload::Noop => (pb::EntryType::Noop, Bytes::new()),
            Payload::Command(data) => (pb::EntryType::Command, data),
            Payload::ConfChange(conf) => (pb::EntryType::ConfChange, Bytes::from(conf.encode())),
        };
        pb::Entry {
            term: e.term,
            index: e.index,
            r#type: r#type as i32,
            data,
        }
    }
}

/// Checks that a peer request is addressed to this node.
fn check_to(to: NodeId, me: NodeId) -> Result<(), Status> {
    if to == me {
        return Ok(());
    }
    Err(Status::failed_precondition(format!(
        "message for node {to} reached node {me}: check --peers (peers without ID= get ids in the order given)"
    )))
}

fn check_sender(id: NodeId, field: &str) -> Result<(), Status> {
    if id == 0 {
        return Err(Status::invalid_argument(format!("{field} must not be 0")));
    }
    Ok(())
}

/// An incoming RequestVote, for the core.
///
/// # Errors
/// INVALID_ARGUMENT for a malformed request, FAILED_PRECONDITION if it is not for `me`.
pub fn vote_request_in(req: pb::RequestVoteRequest, me: NodeId) -> Result<Message, Status> {
    check_sender(req.candidate_id, "candidate_id")?;
    check_to(req.to, me)?;
    if req.leadership_transfer {
        return transfer_vote_request_in(req, me);
    }
    let (last_log_index, last_log_term) = (req.last_log_index, req.last_log_term);
    Ok(Message {
        from: req.candidate_id,
        to: me,
        term: req.term,
        rpc_id: 0,
        body: if req.pre_vote {
            MessageBody::PreVote {
                last_log_index,
                last_log_term,
            }
        } else {
            MessageBody::RequestVote {
                last_log_index,
                last_log_term,
            }
        },
    })
}

/// An incoming AppendEntries, for the core.
///
/// # Errors
/// INVALID_ARGUMENT for a malformed request (bad entry type, entries not contiguous from
/// `prev_log_index + 1`), FAILED_PRECONDITION if it is not for `me`.
pub fn append_request_in(req: pb::AppendEntriesRequest, me: NodeId) -> Result<Message, Status> {
    check_sender(req.leader_id, "leader_id")?;
    check_to(req.to, me)?;
    let data_len: usize = req.entries.iter().map(|e| e.data.len()).sum();
    let mut own_buffer =
        (data_len < SHARE_RECEIVE_BUFFER_FROM).then(|| BytesMut::with_capacity(data_len));
    let mut entries = Vec::with_capacity(req.entries.len());
    for (i, mut e) in req.entries.into_iter().enumerate() {
        let expected = req
            .prev_log_index
            .saturating_add(1)
            .saturating_add(i as u64);
        if e.index != expected {
            return Err(Status::invalid_argument(format!(
                "entries must be contiguous from prev_log_index + 1 = {}: entry {i} has index {}",
                req.prev_log_index.saturating_add(1),
                e.index
            )));
        }
        if let Some(buf) = &mut own_buffer {
            buf.extend_from_slice(&e.data);
            e.data = buf.split().freeze();
        }
        entries.push(Entry::try_from(e)?);
    }
    Ok(Message {
        from: req.leader_id,
        to: me,
        term: req.term,
        rpc_id: 0,
        body: MessageBody::AppendEntries {
            prev_log_index: req.prev_log_index,
            prev_log_term: req.prev_log_term,
            entries,
            leader_commit: req.leader_commit,
            read_ctx: req.read_ctx,
        },
    })
}

fn wrong_response(msg: &Message, expected: &str) -> Status {
    Status::internal(format!(
        "invariant: the core answered a {expected} with {}",
        msg.body.kind()
    ))
}

/// The core's answer to a RequestVote, for the wire.
///
/// # Errors
/// INTERNAL if the core answered with another message kind.
pub fn vote_response_out(msg: Message) -> Result<pb::RequestVoteResponse, Status> {
    match msg.body {
        MessageBody::RequestVoteResponse { granted } => Ok(pb::RequestVoteResponse {
            term: msg.term,
            vote_granted: granted,
            from: msg.from,
            pre_vote: false,
        }),
        MessageBody::PreVoteResponse { granted } => Ok(pb::RequestVoteResponse {
            term: msg.term,
            vote_granted: granted,
            from: msg.from,
            pre_vote: true,
        }),
        _ => Err(wrong_response(&msg, "RequestVote")),
    }
}

/// The core's answer to an AppendEntries, for the wire.
///
/// # Errors
/// INTERNAL if the core answered with another message kind.
pub fn append_response_out(msg: Message) -> Result<pb::AppendEntriesResponse, Status> {
    match msg.body {
        MessageBody::AppendEntriesResponse {
            success,
            match_index,
            conflict_index,
            conflict_term,
            read_ctx,
        } => Ok(pb::AppendEntriesResponse {
            term: msg.term,
            success,
            from: msg.from,
            match_index,
            conflict_index,
            conflict_term,
            read_ctx,
        }),
        _ => Err(wrong_response(&msg, "AppendEntries")),
    }
}

/// A request the core wants sent to a peer, as the matching RPC's request.
#[derive(Clone, Debug, PartialEq)]
pub enum PeerRequest {
    /// For `Raft/RequestVote`.
    Vote(pb::RequestVoteRequest),
    /// For `Raft/AppendEntries`.
    Append(pb::AppendEntriesRequest),
    /// For `Raft/InstallSnapshot`: the chunks to stream.
    Snapshot(Vec<pb::InstallSnapshotChunk>),
    /// For `Raft/TimeoutNow`.
    TimeoutNow(pb::TimeoutNowRequest),
}

/// The RequestVote call for a vote, PreVote or transfer vote request `msg`.
fn vote(
    msg: &Message,
    last_log_index: u64,
    last_log_term: u64,
    pre_vote: bool,
    leadership_transfer: bool,
) -> PeerRequest {
    PeerRequest::Vote(pb::RequestVoteRequest {
        term: msg.term,
        candidate_id: msg.from,
        last_log_index,
        last_log_term,
        to: msg.to,
        pre_vote,
        leadership_transfer,
    })
}

impl TryFrom<Message> for PeerRequest {
    /// Responses are not sent on their own: they travel back on the request's call.
    type Error = Message;

    fn try_from(msg: Message) -> Result<Self, Message> {
        match msg.body {
            MessageBody::RequestVote {
                last_log_index,
                last_log_term,
            } => Ok(vote(&msg, last_log_index, last_log_term, false, false)),
            MessageBody::PreVote {
                last_log_index,
                last_log_term,
            } => Ok(vote(&msg, last_log_index, last_log_term, true, false)),
            MessageBody::AppendEntries {
                prev_log_index,
                prev_log_term,
                entries,
                leader_commit,
                read_ctx,
            } => Ok(PeerRequest::Append(pb::AppendEntriesRequest {
                term: msg.term,
                leader_id: msg.from,
                prev_log_index,
                prev_log_term,
                entries: entries.into_iter().map(pb::Entry::from).collect(),
                leader_commit,
                to: msg.to,
                read_ctx,
            })),
            MessageBody::InstallSnapshot { ref snapshot } => Ok(PeerRequest::Snapshot(
                snapshot_chunks(&msg, snapshot, SNAPSHOT_CHUNK_BYTES),
            )),
            MessageBody::TransferRequestVote {
                last_log_index,
                last_log_term,
            } => Ok(vote(&msg, last_log_index, last_log_term, false, true)),
            MessageBody::TimeoutNow => Ok(PeerRequest::TimeoutNow(pb::TimeoutNowRequest {
                term: msg.term,
                leader_id: msg.from,
                to: msg.to,
            })),
            _ => Err(msg),
        }
    }
}

/// A peer's RequestVote answer, for the core (`from` is the peer we called).
pub fn vote_response_in(resp: pb::RequestVoteResponse, peer: NodeId, me: NodeId) -> Message {
    Message {
        from: peer,
        to: me,
        term: resp.term,
        rpc_id: 0,
        body: if resp.pre_vote {
            MessageBody::PreVoteResponse {
                granted: resp.vote_granted,
            }
        } else {
            MessageBody::RequestVoteResponse {
                granted: resp.vote_granted,
            }
        },
    }
}

/// A peer's AppendEntries answer, for the core (`from` is the peer we called).
pub fn append_response_in(resp: pb::AppendEntriesResponse, peer: NodeId, me: NodeId) -> Message {
    Message {
        from: peer,
        to: me,
        term: resp.term,
        rpc_id: 0,
        body: MessageBody::AppendEntriesResponse {
            success: resp.success,
            match_index: resp.match_index,
            conflict_index: resp.conflict_index,
            conflict_term: resp.conflict_term,
            read_ctx: resp.read_ctx,
        },
    }
}

/// Bytes of snapshot data per `InstallSnapshotChunk`.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;

/// Largest snapshot a node accepts (a bound on what a peer can make it buffer).
pub const MAX_SNAPSHOT_BYTES: u64 = 64 << 30;

/// Splits a snapshot into chunks of at most `chunk` bytes (at least one chunk, the last
/// marked `done` with the CRC32 of the whole data).
fn snapshot_chunks(
    msg: &Message,
    snapshot: &Snapshot,
    chunk: usize,
) -> Vec<pb::InstallSnapshotChunk> {
    let data = &snapshot.data;
    let header = pb::InstallSnapshotChunk {
        term: msg.term,
        leader_id: msg.from,
        to: msg.to,
        last_included_index: snapshot.meta.index,
        last_included_term: snapshot.meta.term,
        total_size: data.len() as u64,
        membership: snapshot
            .membership
            .as_ref()
            .map_or_else(Vec::new, |m| m.encode()),
        ..Default::default()
    };
    let mut chunks: Vec<pb::InstallSnapshotChunk> = data
        .chunks(chunk.max(1))
        .scan(0u64, |offset, part| {
            let c = pb::InstallSnapshotChunk {
                offset: *offset,
                data: data.slice_ref(part),
                ..header.clone()
            };
            *offset += part.len() as u64;
            Some(c)
        })
        .collect();
    if chunks.is_empty() {
        chunks.push(header);
    }
    if let Some(last) = chunks.last_mut() {
        last.done = true;
        last.crc32 = crc32fast::hash(data);
    }
    chunks
}

/// Reassembles an incoming `InstallSnapshot` stream, checking every chunk against the first
/// one and the data against its size and checksum.
#[derive(Debug)]
pub struct SnapshotReceiver {
    me: NodeId,
    first: Option<pb::InstallSnapshotChunk>,
    data: Vec<u8>,
    done: bool,
}

impl SnapshotReceiver {
    /// A receiver for node `me`.
    pub fn new(me: NodeId) -> Self {
        SnapshotReceiver {
            me,
            first: None,
            data: Vec::new(),
            done: false,
        }
    }

    /// Takes the next chunk.
    ///
    /// # Errors
    /// INVALID_ARGUMENT if the chunk does not continue the stream (other header, wrong
    /// offset, past the announced size, data after the last chunk, bad checksum),
    /// FAILED_PRECONDITION if the snapshot is not for this node.
    pub fn push(&mut self, chunk: pb::InstallSnapshotChunk) -> Result<(), Status> {
        let bad = |what: String| Err(Status::invalid_argument(format!("InstallSnapshot: {what}")));
        if self.done {
            return bad("data after the last chunk".into());
        }
        let first = match &self.first {
            Some(f) => f,
            None => {
                check_sender(chunk.leader_id, "leader_id")?;
                check_to(chunk.to, self.me)?;
                if chunk.total_size > MAX_SNAPSHOT_BYTES {
                    return bad(format!(
                        "snapshot of {} bytes is larger than the {MAX_SNAPSHOT_BYTES}-byte limit",
                        chunk.total_size
                    ));
                }
                self.first.insert(pb::InstallSnapshotChunk {
                    data: Bytes::new(),
                    ..chunk.clone()
                })
            }
        };
        let same_header = (chunk.term, chunk.leader_id, chunk.to)
            == (first.term, first.leader_id, first.to)
            && (
                chunk.last_included_index,
                chunk.last_included_term,
                chunk.total_size,
            ) == (
                first.last_included_index,
                first.last_included_term,
                first.total_size,
            )
            && chunk.membership == first.membership;
        if !same_header {
            return bad("a chunk's header differs from the first chunk's".into());
        }
        if chunk.offset != self.data.len() as u64 {
            return bad(format!(
                "chunk at offset {} but {} bytes received so far",
                chunk.offset,
                self.data.len()
            ));
        }
        let total = first.total_size;
        if self.data.len() as u64 + chunk.data.len() as u64 > total {
            return bad(format!("more data than the announced {total} bytes"));
        }
        self.data.extend_from_slice(&chunk.data);
        if chunk.done {
            self.done = true;
            if self.data.len() as u64 != total {
                return bad(format!(
                    "stream ended after {} of {total} bytes",
                    self.data.len()
                ));
            }
            if crc32fast::hash(&self.data) != chunk.crc32 {
                return bad("checksum mismatch: the snapshot was damaged in transit".into());
            }
        }
        Ok(())
    }

    /// The complete snapshot as a message for the core.
    ///
    /// # Errors
    /// INVALID_ARGUMENT if the stream was empty or ended before its last chunk.
    pub fn finish(self) -> Result<Message, Status> {
        let (Some(first), true) = (self.first, self.done) else {
            return Err(Status::invalid_argument(
                "InstallSnapshot: the stream ended before its last chunk",
            ));
        };
        let membership = match first.membership.is_empty() {
            true => None,
            false => Some(
                Membership::decode(&first.membership)
                    .map_err(|e| Status::invalid_argument(format!("InstallSnapshot: {e}")))?,
            ),
        };
        Ok(Message {
            from: first.leader_id,
            to: self.me,
            term: first.term,
            rpc_id: 0,
            body: MessageBody::InstallSnapshot {
                snapshot: Snapshot {
                    meta: SnapshotMeta {
                        index: first.last_included_index,
                        term: first.last_included_term,
                    },
                    data: self.data.into(),
                    membership,
                },
            },
        })
    }
}

/// A RequestVote with the leadership-transfer flag (already checked to be for `me`).
fn transfer_vote_request_in(req: pb::RequestVoteRequest, me: NodeId) -> Result<Message, Status> {
    if req.pre_vote {
        return Err(Status::invalid_argument(
            "a vote request cannot be both a pre-vote and a leadership transfer",
        ));
    }
    Ok(Message {
        from: req.candidate_id,
        to: me,
        term: req.term,
        rpc_id: 0,
        body: MessageBody::TransferRequestVote {
            last_log_index: req.last_log_index,
            last_log_term: req.last_log_term,
        },
    })
}

/// An incoming TimeoutNow, for the core.
///
/// # Errors
/// INVALID_ARGUMENT without a sender, FAILED_PRECONDITION if it is not for `me`.
pub fn timeout_now_request_in(req: pb::TimeoutNowRequest, me: NodeId) -> Result<Message, Status> {
    check_sender(req.leader_id, "leader_id")?;
    check_to(req.to, me)?;
    Ok(Message {
        from: req.leader_id,
        to: me,
        term: req.term,
        rpc_id: 0,
        body: MessageBody::TimeoutNow,
    })
}

/// The core's answer to a TimeoutNow, for the wire.
///
/// # Errors
/// INTERNAL if the core answered with another message kind.
pub fn timeout_now_response_out(msg: Message) -> Result<pb::TimeoutNowResponse, Status> {
    match msg.body {
        MessageBody::TimeoutNowResponse => Ok(pb::TimeoutNowResponse {
            term: msg.term,
            from: msg.from,
        }),
        _ => Err(wrong_response(&msg, "TimeoutNow")),
    }
}

/// A peer's TimeoutNow answer, for the core (`from` is the peer we called).
pub fn timeout_now_response_in(resp: pb::TimeoutNowResponse, peer: NodeId, me: NodeId) -> Message {
    Message {
        from: peer,
        to: me,
        term: resp.term,
        rpc_id: 0,
        body: MessageBody::TimeoutNowResponse,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn cmd(term: u64, index: u64, data: &[u8]) -> Entry {
        Entry {
            term,
            index,
            payload: Payload::Command(Bytes::copy_from_slice(data)),
        }
    }

    #[test]
    fn entries_round_trip() {
        for e in [
            cmd(3, 7, b"abc"),
            Entry {
                term: 1,
                index: 1,
                payload: Payload::Noop,
            },
        ] {
            let wire = pb::Entry::from(e.clone());
            assert_eq!(Entry::try_from(wire).unwrap(), e);
        }
    }

    #[test]
    fn unknown_entry_types_are_rejected() {
        for t in [0, 4, -1] {
            let e = pb::Entry {
                term: 1,
                index: 1,
                r#type: t,
                data: Bytes::new(),
            };
            let s = Entry::try_from(e).unwrap_err();
            assert_eq!(s.code(), Code::InvalidArgument);
            assert!(
                s.message().contains("unknown entry type"),
                "{}",
                s.message()
            );
        }
    }

    #[test]
    fn append_request_round_trips_through_the_wire() {
        let msg = appends(vec![cmd(4, 6, b"x"), cmd(4, 7, b"y")]);
        let PeerRequest::Append(wire) = PeerRequest::try_from(msg.clone()).unwrap() else {
            panic!("expected an append");
        };
        assert_eq!(append_request_in(wire, 2).unwrap(), msg);
    }

    /// An AppendEntries as the follower's gRPC server decodes it: from one received buffer.
    fn received(msg: &Message) -> (Bytes, pb::AppendEntriesRequest) {
        let PeerRequest::Append(wire) = PeerRequest::try_from(msg.clone()).unwrap() else {
            panic!("expected an append");
        };
        let buf = Bytes::from(prost::Message::encode_to_vec(&wire));
        let decoded = <pb::AppendEntriesRequest as prost::Message>::decode(buf.clone()).unwrap();
        (buf, decoded)
    }

    fn appends(entries: Vec<Entry>) -> Message {
        Message {
            from: 1,
            to: 2,
            term: 4,
            rpc_id: 0,
            body: MessageBody::AppendEntries {
                prev_log_index: 5,
                prev_log_term: 3,
                entries,
                leader_commit: 5,
                read_ctx: 9,
            },
        }
    }

    fn command_data(msg: &Message) -> Vec<Bytes> {
        let MessageBody::AppendEntries { entries, .. } = &msg.body else {
            panic!("expected an append");
        };
        entries
            .iter()
            .filter_map(|e| match &e.payload {
                Payload::Command(d) => Some(d.clone()),
                Payload::Noop | Payload::ConfChange(_) => None,
            })
            .collect()
    }

    fn inside(part: &Bytes, buf: &Bytes) -> bool {
        let range = buf.as_ptr_range();
        range.contains(&part.as_ptr())
    }

    #[test]
    fn large_appends_share_the_received_buffer() {
        let big = vec![7u8; SHARE_RECEIVE_BUFFER_FROM];
        let msg = appends(vec![cmd(4, 6, &big), cmd(4, 7, b"y")]);
        let (buf, wire) = received(&msg);
        let got = append_request_in(wire, 2).unwrap();
        assert_eq!(got, msg);
        for d in command_data(&got) {
            assert!(inside(&d, &buf), "entry data was copied out of the message");
        }
    }

    #[test]
    fn small_appends_are_copied_out_of_the_received_buffer() {
        let msg = appends(vec![cmd(4, 6, b"x"), cmd(4, 7, b"yz")]);
        let (buf, wire) = received(&msg);
        let got = append_request_in(wire, 2).unwrap();
        assert_eq!(got, msg);
        for d in command_data(&got) {
            assert!(!inside(&d, &buf), "a small entry pins the receive buffer");
        }
    }

    #[test]
    fn vote_request_round_trips_through_the_wire() {
        let msg = Message {
            from: 3,
            to: 1,
            term: 2,
            rpc_id: 0,
            body: MessageBody::RequestVote {
                last_log_index: 4,
                last_log_term: 1,
            },
        };
        let PeerRequest::Vote(wire) = PeerRequest::try_from(msg.clone()).unwrap() else {
            panic!("expected a vote");
        };
        assert_eq!(vote_request_in(wire, 1).unwrap(), msg);
    }

    #[test]
    fn transfer_messages_round_trip_through_the_wire() {
        let vote = Message {
            from: 3,
            to: 1,
            term: 8,
            rpc_id: 0,
            body: MessageBody::TransferRequestVote {
                last_log_index: 4,
                last_log_term: 7,
            },
        };
        let PeerRequest::Vote(wire) = PeerRequest::try_from(vote.clone()).unwrap() else {
            panic!("expected a vote");
        };
        assert!(wire.leadership_transfer && !wire.pre_vote);
        assert_eq!(vote_request_in(wire, 1).unwrap(), vote);
        let both = pb::RequestVoteRequest {
            pre_vote: true,
            ..wire
        };
        assert_eq!(
            vote_request_in(both, 1).unwrap_err().code(),
            Code::InvalidArgument
        );

        let now = Message {
            from: 1,
            to: 2,
            term: 8,
            rpc_id: 0,
            body: MessageBody::TimeoutNow,
        };
        let PeerRequest::TimeoutNow(wire) = PeerRequest::try_from(now.clone()).unwrap() else {
            panic!("expected a TimeoutNow");
        };
        assert_eq!(timeout_now_request_in(wire, 2).unwrap(), now);
        let ack = Message {
            from: 2,
            to: 1,
            term: 8,
            rpc_id: 0,
            body: MessageBody::TimeoutNowResponse,
        };
        let wire = timeout_now_response_out(ack.clone()).unwrap();
        assert_eq!(timeout_now_response_in(wire, 2, 1), ack);
    }

    #[test]
    fn responses_round_trip() {
        let vote = Message {
            from: 2,
            to: 1,
            term: 5,
            rpc_id: 0,
            body: MessageBody::RequestVoteResponse { granted: true },
        };
        let wire = vote_response_out(vote.clone()).unwrap();
        assert_eq!(vote_response_in(wire, 2, 1), vote);
        let append = Message {
            from: 3,
            to: 1,
            term: 5,
            rpc_id: 0,
            body: MessageBody::AppendEntriesResponse {
                success: false,
                match_index: 0,
                conflict_index: 4,
                conflict_term: 2,
                read_ctx: 7,
            },
        };
        let wire = append_response_out(append.clone()).unwrap();
        assert_eq!(append_response_in(wire, 3, 1), append);
        // A response never goes out as a request, and the wrong kind is an internal error.
        assert!(PeerRequest::try_from(append.clone()).is_err());
        assert_eq!(
            vote_response_out(append).unwrap_err().code(),
            Code::Internal
        );
    }

    #[test]
    fn misdirected_message_names_both_nodes() {
        let req = pb::RequestVoteRequest {
            pre_vote: false,
            leadership_transfer: false,
            term: 1,
            candidate_id: 1,
            last_log_index: 0,
            last_log_term: 0,
            to: 3,
        };
        let s = vote_request_in(req, 2).unwrap_err();
        assert_eq!(s.code(), Code::FailedPrecondition);
        assert_eq!(
            s.message(),
            "message for node 3 reached node 2: check --peers (peers without ID= get ids in the order given)"
        );
    }

    #[test]
    fn malformed_appends_are_rejected() {
        let base = pb::AppendEntriesRequest {
            term: 2,
            leader_id: 1,
            prev_log_index: 3,
            prev_log_term: 1,
            entries: vec![pb::Entry::from(cmd(2, 5, b"gap"))],
            leader_commit: 0,
            to: 2,
            read_ctx: 0,
        };
        let s = append_request_in(base.clone(), 2).unwrap_err();
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(s.message().contains("contiguous"));
        let no_leader = pb::AppendEntriesRequest {
            leader_id: 0,
            entries: vec![],
            ..base
        };
        assert_eq!(
            append_request_in(no_leader, 2).unwrap_err().code(),
            Code::InvalidArgument
        );
    }

    fn snapshot_msg(data: &'static [u8]) -> Message {
        Message {
            from: 1,
            to: 2,
            term: 4,
            rpc_id: 0,
            body: MessageBody::InstallSnapshot {
                snapshot: Snapshot {
                    membership: None,
                    meta: SnapshotMeta { index: 90, term: 3 },
                    data: bytes::Bytes::from_static(data),
                },
            },
        }
    }

    fn chunks_of(msg: &Message, size: usize) -> Vec<pb::InstallSnapshotChunk> {
        let MessageBody::InstallSnapshot { snapshot } = &msg.body else {
            unreachable!()
        };
        snapshot_chunks(msg, snapshot, size)
    }

    #[test]
    fn snapshots_round_trip_through_chunks() {
        for data in [&b""[..], b"a", b"0123456789abcdef0123"] {
            let msg = snapshot_msg(data);
            let chunks = chunks_of(&msg, 7);
            assert_eq!(chunks.len(), data.len().div_ceil(7).max(1));
            let mut rx = SnapshotReceiver::new(2);
            for c in chunks {
                rx.push(c).unwrap();
            }
            assert_eq!(rx.finish().unwrap(), msg);
        }
    }

    #[test]
    fn memberships_and_configuration_entries_cross_the_wire() {
        use crate::raft::{ConfChange, ConfChangeKind};
        let mut membership = Membership::with_voters([1, 2, 3]);
        membership.learners.insert(4);
        membership.removed.insert(5);
        let mut msg = snapshot_msg(b"0123456789");
        if let MessageBody::InstallSnapshot { snapshot } = &mut msg.body {
            snapshot.membership = Some(membership.clone());
        }
        let mut rx = SnapshotReceiver::new(2);
        for c in chunks_of(&msg, 3) {
            rx.push(c).unwrap();
        }
        assert_eq!(rx.finish().unwrap(), msg);

        let entry = Entry {
            term: 2,
            index: 9,
            payload: Payload::ConfChange(Box::new(ConfEntry {
                change: ConfChange {
                    kind: ConfChangeKind::Remove,
                    node: 5,
                    context: Vec::new(),
                },
                membership,
            })),
        };
        let wire = pb::Entry::from(entry.clone());
        assert_eq!(wire.r#type, pb::EntryType::ConfChange as i32);
        assert_eq!(Entry::try_from(wire.clone()).unwrap(), entry);
        let damaged = pb::Entry {
            data: wire.data.slice(1..),
            ..wire
        };
        let s = Entry::try_from(damaged).unwrap_err();
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(s.message().contains("entry 9"), "{}", s.message());
    }

    #[test]
    fn damaged_or_incomplete_snapshot_streams_are_refused() {
        let msg = snapshot_msg(b"0123456789abcdef0123");
        let push_all = |chunks: Vec<pb::InstallSnapshotChunk>| {
            let mut rx = SnapshotReceiver::new(2);
            for c in chunks {
                rx.push(c)?;
            }
            rx.finish()
        };
        let mut flipped = chunks_of(&msg, 7);
        let mut damaged = flipped[1].data.to_vec();
        damaged[0] ^= 1;
        flipped[1].data = damaged.into();
        assert!(push_all(flipped)
            .unwrap_err()
            .message()
            .contains("checksum"));
        let mut missing = chunks_of(&msg, 7);
        missing.remove(1);
        assert!(push_all(missing).unwrap_err().message().contains("offset"));
        let mut truncated = chunks_of(&msg, 7);
        truncated.pop();
        assert!(push_all(truncated).unwrap_err().message().contains("ended"));
        let mut other = chunks_of(&msg, 7);
        other[2].last_included_index = 91;
        assert!(push_all(other).unwrap_err().message().contains("header"));
        let mut huge = chunks_of(&msg, 7);
        huge[0].total_size = MAX_SNAPSHOT_BYTES + 1;
        assert!(push_all(huge).is_err());
        let mut misdirected = chunks_of(&msg, 7);
        misdirected[0].to = 3;
        assert_eq!(
            push_all(misdirected).unwrap_err().code(),
            tonic::Code::FailedPrecondition
        );
        assert!(push_all(Vec::new()).is_err());
    }
}
