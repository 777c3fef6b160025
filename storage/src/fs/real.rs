//! The real file system: `std::fs` with positional I/O, fdatasync and fallocate.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use super::{FileSystem, LogFile};

#[derive(Debug, Default, Clone, Copy)]
pub struct RealFs;

#[derive(Debug)]
struct RealFile {
    file: File,
    /// The same file opened with O_DIRECT, on its first direct write (most files never get one:
    /// sealed segments, retired and spare files; a second descriptor each would halve how many
    /// segments fit under the open-file limit). `None` inside once that open failed.
    direct: OnceLock<Option<File>>,
    /// Set when O_DIRECT cannot be had or a direct write was refused with EINVAL: the file is
    /// written through the page cache from then on.
    direct_refused: AtomicBool,
}

impl RealFile {
    fn new(file: File) -> RealFile {
        RealFile {
            file,
            direct: OnceLock::new(),
            direct_refused: AtomicBool::new(false),
        }
    }

    /// The O_DIRECT descriptor, opened through `/proc/self/fd` so that it is the same file
    /// whatever it has been renamed to since.
    fn direct_file(&self) -> Option<&File> {
        self.direct
            .get_or_init(|| {
                let path = format!("/proc/self/fd/{}", self.file.as_raw_fd());
                match OpenOptions::new()
                    .write(true)
                    .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
                    .open(&path)
                {
                    Ok(file) => Some(file),
                    Err(error) => {
                        tracing::info!(%error, "no O_DIRECT for a log file; writing it through the page cache");
                        self.direct_refused.store(true, Ordering::Relaxed);
                        None
                    }
                }
            })
            .as_ref()
    }
}

impl LogFile for RealFile {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    fn direct(&self) -> bool {
        !self.direct_refused.load(Ordering::Relaxed)
    }

    fn write_direct_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let Some(direct) = self.direct_file().filter(|_| self.direct()) else {
            return self.file.write_all_at(buf, offset);
        };
        match direct.write_all_at(buf, offset) {
            // Some file systems open with O_DIRECT but refuse the write (alignment rules of their
            // own): the same bytes through the page cache are as good.
            Err(error) if error.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {
                tracing::warn!(%error, "direct write refused; writing this file through the page cache");
                self.direct_refused.store(true, Ordering::Relaxed);
                self.file.write_all_at(buf, offset)
            }
            other => other,
        }
    }

    fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    fn allocate(&self, len: u64) -> io::Result<()> {
        match rustix::fs::fallocate(&self.file, rustix::fs::FallocateFlags::empty(), 0, len) {
            Ok(()) => Ok(()),
            // Some file systems (tmpfs on old kernels, some FUSE) cannot preallocate; extending
            // the file still gives us a fixed size, and ENOSPC then surfaces on write instead.
            Err(rustix::io::Errno::OPNOTSUPP) => {
                if self.len()? < len {
                    self.file.set_len(len)?;
                }
                Ok(())
            }
            Err(errno) => Err(errno.into()),
        }
    }
}

impl FileSystem for RealFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                if let Ok(name) = entry.file_name().into_string() {
                    names.push(name);
                }
            }
        }
        Ok(names)
    }

    fn open(&self, path: &Path) -> io::Result<Arc<dyn LogFile>> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        Ok(Arc::new(RealFile::new(file)))
    }

    fn create(&self, path: &Path) -> io::Result<Arc<dyn LogFile>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        Ok(Arc::new(RealFile::new(file)))
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::DIRECT_ALIGN;

    /// `len` bytes of `fill` at an address aligned for O_DIRECT, inside `storage`.
    fn aligned(storage: &mut Vec<u8>, len: usize, fill: u8) -> &[u8] {
        *storage = vec![fill; len + DIRECT_ALIGN];
        let at = storage.as_ptr().align_offset(DIRECT_ALIGN);
        &storage[at..at + len]
    }

    #[test]
    fn direct_writes_reach_the_file_even_after_a_rename_and_reads_see_them() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let file = RealFs.create(&a).unwrap();
        file.allocate(4 * DIRECT_ALIGN as u64).unwrap();
        let mut storage = Vec::new();
        file.write_direct_at(aligned(&mut storage, DIRECT_ALIGN, 7), 0)
            .unwrap();
        // The O_DIRECT descriptor is opened lazily through /proc/self/fd: it must still be the
        // same file after a rename (segments are renamed when retired and reused).
        RealFs.rename(&a, &b).unwrap();
        file.write_direct_at(
            aligned(&mut storage, 2 * DIRECT_ALIGN, 9),
            DIRECT_ALIGN as u64,
        )
        .unwrap();
        file.sync_data().unwrap();
        let mut back = vec![0u8; 3 * DIRECT_ALIGN];
        file.read_exact_at(&mut back, 0).unwrap();
        assert!(back[..DIRECT_ALIGN].iter().all(|&x| x == 7));
        assert!(back[DIRECT_ALIGN..].iter().all(|&x| x == 9));
        let reopened = RealFs.open(&b).unwrap();
        let mut again = vec![0u8; 3 * DIRECT_ALIGN];
        reopened.read_exact_at(&mut again, 0).unwrap();
        assert_eq!(again, back);
        assert!(!a.exists());
    }
}
