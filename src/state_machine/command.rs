//! The commands carried in log entries and their outcomes. Encoded with postcard.

use serde::{Deserialize, Serialize};

/// An exactly-once session tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// Client's id (random u64 chosen by the client).
    pub client_id: u64,
    /// Strictly increasing per client; 1-based.
    pub sequence: u64,
}

/// A state-machine command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Set `key` to `value`.
    Put {
        /// key
        key: String,
        /// value
        value: String,
    },
    /// Remove `key`.
    Delete {
        /// key
        key: String,
    },
}

/// What goes in a log entry: a command and its optional session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// Exactly-once session, if the client sent one.
    pub session: Option<Session>,
    /// The command.
    pub command: Command,
}

/// The result of applying a command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// A put applied.
    Put,
    /// A delete applied; `existed` says whether the key was there.
    Delete {
        /// whether the key existed
        existed: bool,
    },
}

impl Proposal {
    /// Encodes for a log entry.
    pub fn encode(&self) -> Vec<u8> {
        // Serializing plain strings and integers into a growable Vec cannot fail; the empty
        // fallback is unreachable and would decode as `Undecodable` on every replica alike.
        postcard::to_allocvec(self).unwrap_or_default()
    }

    /// Decodes from a log entry. Never panics, whatever the bytes.
    ///
    /// # Errors
    /// The bytes are not a valid proposal, or carry trailing bytes after one.
    pub fn decode(data: &[u8]) -> Result<Self, String> {
        let (proposal, rest) = postcard::take_from_bytes::<Proposal>(data)
            .map_err(|e| format!("not a proposal: {e}"))?;
        if !rest.is_empty() {
            return Err(format!(
                "not a proposal: {} trailing bytes after it",
                rest.len()
            ));
        }
        Ok(proposal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_proposal() -> impl Strategy<Value = Proposal> {
        let session = proptest::option::of((any::<u64>(), any::<u64>()).prop_map(
            |(client_id, sequence)| Session {
                client_id,
                sequence,
            },
        ));
        let command = prop_oneof![
            (".*", ".*").prop_map(|(key, value)| Command::Put { key, value }),
            ".*".prop_map(|key| Command::Delete { key }),
        ];
        (session, command).prop_map(|(session, command)| Proposal { session, command })
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut bytes = Proposal {
            session: None,
            command: Command::Delete { key: "k".into() },
        }
        .encode();
        bytes.push(0);
        let err = Proposal::decode(&bytes).unwrap_err();
        assert!(err.contains("trailing"), "{err}");
    }

    #[test]
    fn empty_bytes_are_rejected() {
        assert!(Proposal::decode(&[]).is_err());
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = Proposal::decode(&bytes);
        }

        #[test]
        fn encode_decode_round_trips(p in arb_proposal()) {
            prop_assert_eq!(Proposal::decode(&p.encode()), Ok(p));
        }
    }
}
