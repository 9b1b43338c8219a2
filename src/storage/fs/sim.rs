//! [`SimFs`]: an in-memory [`Fs`] that models what a crash (power loss) keeps, for the
//! storage model test and the simulator.
//!
//! The model, per file (inode) and per directory:
//! - A write changes the file at once for every reader, but is durable only once the file is
//!   synced (`sync_data` or `sync_all`, which here do the same). A crash keeps each file's
//!   unsynced writes in one of three ways, chosen at random: none of them; the writes in
//!   order up to one cut anywhere in its bytes (a prefix); or a random subset of the 512-byte
//!   sectors they touched, with the file's length either the old or the new one (bytes the
//!   crash kept no data for read as zeros).
//! - A create, rename or unlink is durable only once its directory is synced. A crash keeps,
//!   per directory, a prefix of the name operations since its last sync (each one atomic: a
//!   rename keeps either name, never both or none).
//! - Simplification: directories themselves are durable at once (the storage code fsyncs
//!   the parent after creating one anyway).
//! - A fault can be injected at the n-th mutating operation (write, sync, create, rename,
//!   unlink, directory sync): a failed operation (`EIO` or `ENOSPC`; a failed write may have
//!   written a prefix of its bytes), or a crash: the operation fails and so does every later
//!   one, until [`SimFs::restart`] resolves what survived and the store is opened again.
//!
//! Everything random comes from the seed in [`SimFsConfig`]: a run is reproducible.

use super::{Fs, FsFile, Mode};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Sector size of the torn-write model.
const SECTOR: u64 = 512;

/// How a [`SimFs`] behaves.
#[derive(Clone, Copy, Debug, Default)]
pub struct SimFsConfig {
    /// Seeds every random choice.
    pub seed: u64,
}

/// What to inject at a mutating operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Power loss: this operation and every later one fail until [`SimFs::restart`].
    Crash,
    /// This operation fails with an I/O error (`EIO`).
    Io,
    /// This operation fails as on a full disk (`ENOSPC`).
    NoSpace,
}

/// The in-memory file system. Clones share it (the store holds one, the test another).
#[derive(Clone, Debug)]
pub struct SimFs {
    state: Arc<Mutex<State>>,
}

#[derive(Debug)]
struct State {
    rng: SmallRng,
    inodes: BTreeMap<u64, Inode>,
    next_inode: u64,
    dirs: BTreeSet<PathBuf>,
    /// Names as every reader sees them.
    names: BTreeMap<PathBuf, u64>,
    /// Names as a crash now would leave them, before the pending operations.
    durable_names: BTreeMap<PathBuf, u64>,
    /// Per directory, the name operations since its last sync, in order.
    pending: BTreeMap<PathBuf, Vec<NameOp>>,
    /// Mutating operations so far.
    ops: u64,
    /// Faults to inject, by operation number.
    faults: BTreeMap<u64, Fault>,
    /// Power is lost: everything fails until `restart`.
    crashed: bool,
    /// An injected fault fired since the last restart.
    fired: bool,
    /// Bumped by every restart: handles opened before it fail.
    generation: u64,
    /// Syncs so far (files and directories), for tests.
    syncs: u64,
}

#[derive(Clone, Debug)]
enum NameOp {
    Link(PathBuf, u64),
    Unlink(PathBuf),
    Rename(PathBuf, PathBuf, u64),
}

#[derive(Debug, Default)]
struct Inode {
    data: Vec<u8>,
    durable: Vec<u8>,
    /// Writes since the last sync, in order ([`TRUNCATE`] at offset: the file was emptied).
    unsynced: Vec<(u64, Vec<u8>)>,
}

/// The offset of an unsynced "write" that empties the file.
const TRUNCATE: u64 = u64::MAX;

/// An open file of a [`SimFs`].
#[derive(Debug)]
pub struct SimFile {
    fs: SimFs,
    inode: u64,
    generation: u64,
    writable: bool,
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such file", path.display()),
    )
}

fn power_lost() -> io::Error {
    io::Error::other("simulated power loss")
}

fn parent(path: &Path) -> PathBuf {
    path.parent().map(Path::to_path_buf).unwrap_or_default()
}

impl SimFs {
    /// An empty file system.
    pub fn new(config: SimFsConfig) -> Self {
        SimFs {
            state: Arc::new(Mutex::new(State {
                rng: SmallRng::seed_from_u64(config.seed),
                inodes: BTreeMap::new(),
                next_inode: 1,
                dirs: BTreeSet::new(),
                names: BTreeMap::new(),
                durable_names: BTreeMap::new(),
                pending: BTreeMap::new(),
                ops: 0,
                faults: BTreeMap::new(),
                crashed: false,
                fired: false,
                generation: 0,
                syncs: 0,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Mutating operations so far (the numbers [`inject`](Self::inject) takes).
    pub fn ops(&self) -> u64 {
        self.lock().ops
    }

    /// Syncs so far (of files and directories).
    pub fn syncs(&self) -> u64 {
        self.lock().syncs
    }

    /// Injects `fault` at the `op`-th mutating operation from the start (see
    /// [`ops`](Self::ops); the next one is `ops() + 1`).
    pub fn inject(&self, op: u64, fault: Fault) {
        self.lock().faults.insert(op, fault);
    }

    /// Loses power now: every later operation fails until [`restart`](Self::restart).
    pub fn crash(&self) {
        self.lock().crashed = true;
    }

    /// Whether power is lost.
    pub fn crashed(&self) -> bool {
        self.lock().crashed
    }

    /// Whether an injected fault (or [`crash`](Self::crash)) hit since the last restart.
    pub fn fault_fired(&self) -> bool {
        let state = self.lock();
        state.fired || state.crashed
    }

    /// Powers the machine back on after a crash (or a clean stop: then nothing is lost if
    /// power was not lost): resolves what survived of everything not yet durable, as the
    /// module doc says, and makes it the state every reader sees. Files opened before fail.
    /// Clears the faults not yet reached.
    pub fn restart(&self) {
        let mut guard = self.lock();
        let state = &mut *guard;
        state.faults.clear();
        state.fired = false;
        state.generation += 1;
        if !state.crashed {
            return;
        }
        state.crashed = false;
        for ops in std::mem::take(&mut state.pending).into_values() {
            let keep = state.rng.random_range(0..=ops.len());
            for op in &ops[..keep] {
                match op {
                    NameOp::Link(path, inode) => {
                        state.durable_names.insert(path.clone(), *inode);
                    }
                    NameOp::Unlink(path) => {
                        state.durable_names.remove(path);
                    }
                    NameOp::Rename(from, to, inode) => {
                        state.durable_names.remove(from);
                        state.durable_names.insert(to.clone(), *inode);
                    }
                }
            }
        }
        state.names = state.durable_names.clone();
        let live: BTreeSet<u64> = state.names.values().copied().collect();
        state.inodes.retain(|id, _| live.contains(id));
        for inode in state.inodes.values_mut() {
            let kept = survive(inode, &mut state.rng);
            inode.durable = kept.clone();
            inode.data = kept;
            inode.unsynced.clear();
        }
    }

    /// Counts a mutating operation and injects its fault, if any.
    fn op(&self, state: &mut State) -> io::Result<Option<Fault>> {
        if state.crashed {
            return Err(power_lost());
        }
        state.ops += 1;
        let fault = state.faults.remove(&state.ops);
        state.fired |= fault.is_some();
        match fault {
            Some(Fault::Crash) => {
                state.crashed = true;
                Err(power_lost())
            }
            other => Ok(other),
        }
    }

    fn inode_of(&self, state: &State, path: &Path) -> io::Result<u64> {
        state
            .names
            .get(path)
            .copied()
            .ok_or_else(|| not_found(path))
    }

    fn link(&self, state: &mut State, path: &Path, op: NameOp) {
        state.pending.entry(parent(path)).or_default().push(op);
    }

    fn check_dir(state: &State, path: &Path) -> io::Result<()> {
        let dir = parent(path);
        if state.dirs.contains(&dir) {
            Ok(())
        } else {
            Err(not_found(&dir))
        }
    }
}

fn fault_error(fault: Fault) -> io::Error {
    match fault {
        Fault::NoSpace => io::Error::from_raw_os_error(28), // ENOSPC
        Fault::Io | Fault::Crash => io::Error::from_raw_os_error(5), // EIO
    }
}

/// What a crash leaves of `inode` (see the module doc).
fn survive(inode: &Inode, rng: &mut SmallRng) -> Vec<u8> {
    let mut kept = inode.durable.clone();
    if inode.unsynced.is_empty() {
        return kept;
    }
    match rng.random_range(0..3) {
        0 => {}
        1 => {
            let cut = rng.random_range(0..inode.unsynced.len());
            for (n, (offset, bytes)) in inode.unsynced.iter().enumerate() {
                let len = match n.cmp(&cut) {
                    std::cmp::Ordering::Less => bytes.len(),
                    std::cmp::Ordering::Equal => rng.random_range(0..=bytes.len()),
                    std::cmp::Ordering::Greater => break,
                };
                write_into(&mut kept, *offset, &bytes[..len]);
            }
        }
        _ => {
            let len = if rng.random_bool(0.5) {
                inode.data.len()
            } else {
                kept.len()
            };
            kept.truncate(len);
            grow(&mut kept, len);
            let sectors: BTreeSet<u64> = inode
                .unsynced
                .iter()
                .filter(|(offset, _)| *offset != TRUNCATE)
                .flat_map(|(offset, bytes)| {
                    let end = offset + bytes.len() as u64;
                    (offset / SECTOR)..end.div_ceil(SECTOR)
                })
                .collect();
            for sector in sectors {
                if rng.random_bool(0.5) {
                    let start = (sector * SECTOR) as usize;
                    let end = (start + SECTOR as usize).min(len).min(inode.data.len());
                    if start < end {
                        kept[start..end].copy_from_slice(&inode.data[start..end]);
                    }
                }
            }
        }
    }
    kept
}

/// Extends `data` with zeros up to `len` bytes (fast in debug builds too: `resize` is a
/// loop there).
fn grow(data: &mut Vec<u8>, len: usize) {
    if data.len() < len {
        data.extend_from_slice(&vec![0; len - data.len()]);
    }
}

fn write_into(data: &mut Vec<u8>, offset: u64, bytes: &[u8]) {
    if offset == TRUNCATE {
        data.clear();
        return;
    }
    let start = offset as usize;
    let end = start + bytes.len();
    grow(data, end);
    data[start..end].copy_from_slice(bytes);
}

impl Fs for SimFs {
    type File = SimFile;

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut state = self.lock();
        if state.crashed {
            return Err(power_lost());
        }
        for dir in path.ancestors() {
            state.dirs.insert(dir.to_path_buf());
        }
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<OsString>> {
        let state = self.lock();
        if state.crashed {
            return Err(power_lost());
        }
        if !state.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        let files = state.names.keys().filter(|p| p.parent() == Some(dir));
        let dirs = state.dirs.iter().filter(|p| p.parent() == Some(dir));
        Ok(files
            .chain(dirs)
            .filter_map(|p| p.file_name().map(OsString::from))
            .collect())
    }

    fn open(&self, path: &Path, mode: Mode) -> io::Result<SimFile> {
        let mut guard = self.lock();
        let state = &mut *guard;
        let existing = state.names.get(path).copied();
        let inode = match (mode, existing) {
            (Mode::Read | Mode::ReadWrite, Some(inode)) => {
                if state.crashed {
                    return Err(power_lost());
                }
                inode
            }
            (Mode::Read | Mode::ReadWrite, None) => return Err(not_found(path)),
            (Mode::CreateNew, Some(_)) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{}: file exists", path.display()),
                ))
            }
            (Mode::CreateTruncate, Some(inode)) => {
                if let Some(fault) = self.op(state)? {
                    return Err(fault_error(fault));
                }
                let file = state.inodes.entry(inode).or_default();
                file.data.clear();
                file.unsynced.push((TRUNCATE, Vec::new()));
                inode
            }
            (Mode::CreateNew | Mode::CreateTruncate, None) => {
                Self::check_dir(state, path)?;
                if let Some(fault) = self.op(state)? {
                    return Err(fault_error(fault));
                }
                let inode = state.next_inode;
                state.next_inode += 1;
                state.inodes.insert(inode, Inode::default());
                state.names.insert(path.to_path_buf(), inode);
                self.link(state, path, NameOp::Link(path.to_path_buf(), inode));
                inode
            }
        };
        Ok(SimFile {
            fs: self.clone(),
            inode,
            generation: state.generation,
            writable: mode != Mode::Read,
        })
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let state = self.lock();
        if state.crashed {
            return Err(power_lost());
        }
        let inode = self.inode_of(&state, path)?;
        Ok(state
            .inodes
            .get(&inode)
            .map(|f| f.data.clone())
            .unwrap_or_default())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut guard = self.lock();
        let state = &mut *guard;
        let inode = self.inode_of(state, from)?;
        Self::check_dir(state, to)?;
        if parent(from) != parent(to) {
            return Err(io::Error::other(
                "SimFs models renames within one directory only",
            ));
        }
        if let Some(fault) = self.op(state)? {
            return Err(fault_error(fault));
        }
        state.names.remove(from);
        state.names.insert(to.to_path_buf(), inode);
        let op = NameOp::Rename(from.to_path_buf(), to.to_path_buf(), inode);
        self.link(state, to, op);
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut guard = self.lock();
        let state = &mut *guard;
        if state.crashed {
            return Err(power_lost());
        }
        self.inode_of(state, path)?;
        if let Some(fault) = self.op(state)? {
            return Err(fault_error(fault));
        }
        state.names.remove(path);
        self.link(state, path, NameOp::Unlink(path.to_path_buf()));
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut guard = self.lock();
        let state = &mut *guard;
        if !state.dirs.contains(dir) && !state.crashed {
            return Err(not_found(dir));
        }
        if let Some(fault) = self.op(state)? {
            return Err(fault_error(fault));
        }
        state.syncs += 1;
        for op in state.pending.remove(dir).unwrap_or_default() {
            match op {
                NameOp::Link(path, inode) => {
                    state.durable_names.insert(path, inode);
                }
                NameOp::Unlink(path) => {
                    state.durable_names.remove(&path);
                }
                NameOp::Rename(from, to, inode) => {
                    state.durable_names.remove(&from);
                    state.durable_names.insert(to, inode);
                }
            }
        }
        Ok(())
    }
}

impl SimFile {
    /// The file's state, if power is on and it was opened since the last restart.
    fn with<T>(&self, f: impl FnOnce(&mut State) -> io::Result<T>) -> io::Result<T> {
        let mut state = self.fs.lock();
        if state.crashed || state.generation != self.generation {
            return Err(power_lost());
        }
        f(&mut state)
    }

    fn sync(&self) -> io::Result<()> {
        let fs = self.fs.clone();
        self.with(|state| {
            if let Some(fault) = fs.op(state)? {
                return Err(fault_error(fault));
            }
            state.syncs += 1;
            if let Some(file) = state.inodes.get_mut(&self.inode) {
                for (offset, bytes) in std::mem::take(&mut file.unsynced) {
                    write_into(&mut file.durable, offset, &bytes);
                }
            }
            Ok(())
        })
    }
}

impl FsFile for SimFile {
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if !self.writable {
            return Err(io::Error::from_raw_os_error(9)); // EBADF
        }
        let fs = self.fs.clone();
        self.with(|state| {
            let fault = fs.op(state)?;
            // A failed write may have written part of its bytes.
            let len = match fault {
                Some(_) => state.rng.random_range(0..=buf.len()),
                None => buf.len(),
            };
            if let Some(file) = state.inodes.get_mut(&self.inode) {
                write_into(&mut file.data, offset, &buf[..len]);
                file.unsynced.push((offset, buf[..len].to_vec()));
            }
            fault.map_or(Ok(()), |fault| Err(fault_error(fault)))
        })
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.with(|state| {
            let data = state
                .inodes
                .get(&self.inode)
                .map(|f| f.data.as_slice())
                .unwrap_or_default();
            let start = offset as usize;
            let Some(src) = data.get(start..start + buf.len()) else {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "read past the end of the file",
                ));
            };
            buf.copy_from_slice(src);
            Ok(())
        })
    }

    fn size(&self) -> io::Result<u64> {
        self.with(|state| {
            Ok(state
                .inodes
                .get(&self.inode)
                .map_or(0, |f| f.data.len() as u64))
        })
    }

    fn sync_data(&self) -> io::Result<()> {
        self.sync()
    }

    fn sync_all(&self) -> io::Result<()> {
        self.sync()
    }
}

#[cfg(test)]
mod tests;
