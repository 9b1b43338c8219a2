//! sled-backed durable storage. (API stub; H1 implements.)
#![warn(missing_docs)]

use crate::raft::storage::LogStore;
use crate::raft::{Entry, HardState};
use std::path::Path;

/// Storage failure: fatal to the node.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// Placeholder.
    #[error("storage error: {0}")]
    Other(String),
}

/// The node's sled database. Cheap to clone (shares the database).
#[derive(Clone)]
pub struct SledStore {
    _p: (),
}

impl SledStore {
    /// Opens (creating if needed) and locks the data dir.
    ///
    /// # Errors
    /// The dir cannot be created/opened, is locked by another process, or is corrupt.
    pub fn open(_dir: &Path) -> Result<Self, StorageError> {
        todo!()
    }
}

impl LogStore for SledStore {
    type Error = StorageError;
    fn load(&self) -> Result<(HardState, Vec<Entry>), StorageError> {
        todo!()
    }
    fn persist(
        &mut self,
        _hard_state: Option<&HardState>,
        _entries: &[Entry],
    ) -> Result<(), StorageError> {
        todo!()
    }
}
