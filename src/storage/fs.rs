//! [`Fs`]: the few file operations the segment log and the snapshot files use, so the same
//! code runs on the real file system ([`RealFs`], `std::fs`, no cost: the store is generic
//! over it) and on [`SimFs`], an in-memory file system that models what a crash does.
//!
//! Only what the storage code needs: open/create a file, positional writes and reads, the
//! two syncs, rename, unlink, list and sync a directory. sled is not behind this trait: it
//! opens its own files.

use std::ffi::OsString;
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

mod sim;

use super::error::StorageError;
pub use sim::{Fault, SimFile, SimFs, SimFsConfig};

/// `fdatasync` of the file at `path`, its failure a [`StorageError::Sync`] naming it.
pub(crate) fn sync_file(fs: &impl Fs, path: &Path) -> Result<(), StorageError> {
    fs.open(path, Mode::Read)
        .and_then(|file| file.sync_data())
        .map_err(|cause| StorageError::Sync {
            path: path.to_path_buf(),
            cause,
        })
}

/// [`Fs::sync_dir`], its failure a [`StorageError::Sync`] naming the directory.
pub(crate) fn sync_dir(fs: &impl Fs, dir: &Path) -> Result<(), StorageError> {
    fs.sync_dir(dir).map_err(|cause| StorageError::Sync {
        path: dir.to_path_buf(),
        cause,
    })
}

/// How [`Fs::open`] opens a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// An existing file, read-only.
    Read,
    /// An existing file, read and write.
    ReadWrite,
    /// A new file (fails if the name exists), read and write.
    CreateNew,
    /// A file created, or emptied if it exists, write-only.
    CreateTruncate,
}

/// A file system: the operations of the storage code on names and directories.
pub trait Fs: Clone + Debug + Send + Sync + 'static {
    /// An open file.
    type File: FsFile;

    /// Creates `path` and its missing parents.
    ///
    /// # Errors
    /// As `std::fs::create_dir_all`.
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;

    /// The names in directory `dir`, in no particular order.
    ///
    /// # Errors
    /// `dir` cannot be listed.
    fn list(&self, dir: &Path) -> io::Result<Vec<OsString>>;

    /// Opens `path` as `mode` says.
    ///
    /// # Errors
    /// As `std::fs::OpenOptions::open`.
    fn open(&self, path: &Path, mode: Mode) -> io::Result<Self::File>;

    /// The whole content of `path`.
    ///
    /// # Errors
    /// As `std::fs::read`.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;

    /// Renames `from` to `to` (replacing `to`), atomically. Durable once the directory is
    /// synced.
    ///
    /// # Errors
    /// As `std::fs::rename`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;

    /// Unlinks `path`. Durable once the directory is synced.
    ///
    /// # Errors
    /// As `std::fs::remove_file` (`NotFound` included).
    fn remove(&self, path: &Path) -> io::Result<()>;

    /// fsyncs directory `dir`: the creates, renames and unlinks in it become durable.
    ///
    /// # Errors
    /// The directory cannot be opened or synced.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// An open file of an [`Fs`].
pub trait FsFile: Debug + Send + Sync {
    /// Writes all of `buf` at `offset` (extending the file if needed). Not durable until a
    /// sync.
    ///
    /// # Errors
    /// As `FileExt::write_all_at` (a full disk, an I/O error).
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;

    /// Fills `buf` from `offset`.
    ///
    /// # Errors
    /// As `FileExt::read_exact_at`.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;

    /// The file's length in bytes.
    ///
    /// # Errors
    /// As `File::metadata`.
    fn size(&self) -> io::Result<u64>;

    /// `fdatasync`: the data written and the file's size become durable.
    ///
    /// # Errors
    /// The sync failed (never retry it).
    fn sync_data(&self) -> io::Result<()>;

    /// `fsync`: as [`sync_data`](Self::sync_data), plus the file's metadata.
    ///
    /// # Errors
    /// The sync failed (never retry it).
    fn sync_all(&self) -> io::Result<()>;
}

/// The real file system, through `std::fs`.
#[derive(Clone, Copy, Debug, Default)]
pub struct RealFs;

impl Fs for RealFs {
    type File = File;

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir_all(path)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<OsString>> {
        std::fs::read_dir(dir)?
            .map(|item| item.map(|item| item.file_name()))
            .collect()
    }

    fn open(&self, path: &Path, mode: Mode) -> io::Result<File> {
        let mut options = OpenOptions::new();
        match mode {
            Mode::Read => options.read(true),
            Mode::ReadWrite => options.read(true).write(true),
            Mode::CreateNew => options.read(true).write(true).create_new(true),
            Mode::CreateTruncate => options.write(true).create(true).truncate(true),
        };
        options.open(path)
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}

impl FsFile for File {
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        FileExt::write_all_at(self, buf, offset)
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }

    fn sync_data(&self) -> io::Result<()> {
        File::sync_data(self)
    }

    fn sync_all(&self) -> io::Result<()> {
        File::sync_all(self)
    }
}
