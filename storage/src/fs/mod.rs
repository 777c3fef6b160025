//! File I/O behind a small trait, so that every byte the engine reads or writes can be
//! intercepted by the fault simulator in tests.
//!
//! Contract shared by both implementations:
//! - `write_all_at` makes bytes visible to later reads of the same file at once; they are durable
//!   only after `sync_data` returns `Ok`.
//! - `allocate` reserves space so that later writes below that length cannot fail with ENOSPC; it
//!   is where the engine takes ENOSPC, before it has written anything.
//! - A new or removed directory entry is durable only after `sync_dir` of its directory.
//! - After a failed `sync_data`, nothing is known about which unsynced bytes reached the disk;
//!   the engine treats that as fatal for the log (it never retries as if nothing happened).

mod real;
mod sim;

use std::fmt::Debug;
use std::io;
use std::path::Path;
use std::sync::Arc;

pub use real::RealFs;
pub use sim::{SimFs, SimFsOptions};

/// Alignment of offset, length and memory of a direct write: the page size, a multiple of every
/// logical block size Linux supports for O_DIRECT.
pub const DIRECT_ALIGN: usize = 4096;

/// One open file of the log.
pub trait LogFile: Send + Sync + Debug {
    /// Reads exactly `buf.len()` bytes at `offset`; `UnexpectedEof` if the file is shorter.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `buf` at `offset`.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Whether [`LogFile::write_direct_at`] bypasses the page cache (the file is also open with
    /// O_DIRECT). When false the engine writes with `write_all_at` only.
    fn direct(&self) -> bool {
        false
    }
    /// Writes all of `buf` at `offset` from the caller's memory straight to the device
    /// (O_DIRECT): `offset`, `buf.len()` and `buf`'s address must be multiples of
    /// [`DIRECT_ALIGN`]. Durability is as for `write_all_at` (only after `sync_data`); reads see
    /// the bytes at once.
    fn write_direct_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.write_all_at(buf, offset)
    }
    /// fdatasync: every byte written before the call is durable when it returns `Ok`.
    fn sync_data(&self) -> io::Result<()>;
    /// Current length of the file in bytes.
    fn len(&self) -> io::Result<u64>;
    /// True if the file holds no bytes.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
    /// Shrinks or extends the file; an extended region reads as zeros.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Reserves disk blocks for the file up to `len` bytes (extending it with zeros if shorter).
    fn allocate(&self, len: u64) -> io::Result<()>;
}

/// The directory-level operations the engine needs.
pub trait FileSystem: Send + Sync + Debug {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Names (not paths) of the regular files in `dir`.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Opens an existing file for reading and writing.
    fn open(&self, path: &Path) -> io::Result<Arc<dyn LogFile>>;
    /// Creates a new file; fails if it already exists.
    fn create(&self, path: &Path) -> io::Result<Arc<dyn LogFile>>;
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Renames a file (durable after `sync_dir`); open handles stay valid.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes the directory's entries (creations, removals) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}
