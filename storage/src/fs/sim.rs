//! A simulated file system for fault-injection tests, deterministic for a given seed.
//!
//! Each file keeps two images: `current` (what reads see) and `durable` (what survived the last
//! `sync_data`). [`SimFs::crash`] models a power loss: every file becomes its durable image, and
//! each 512-byte sector written since the last sync independently either reached the disk,
//! did not, or was torn part-way; file lengths changed since the last sync land either way, and
//! directory entries created or removed since the last `sync_dir` may or may not persist.
//! Handles opened before a crash are detached from the new state, and clones of the file system
//! made before it (a log instance's) fail every directory operation after it, so a log instance
//! that was "running" at the crash can change nothing that survives it: not by writing, nor by
//! creating, renaming or removing files.
//!
//! Faults on demand: fail the next write or sync (EIO), a capacity that makes `allocate` and
//! writes fail with ENOSPC until space is freed, random bit flips on read, and persistent
//! corruption of a byte on "disk".

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{FileSystem, LogFile, DIRECT_ALIGN};

#[derive(Clone, Debug)]
pub struct SimFsOptions {
    pub seed: u64,
    /// Granularity at which unsynced writes persist or tear at a crash.
    pub sector_bytes: usize,
}

impl SimFsOptions {
    pub fn seeded(seed: u64) -> SimFsOptions {
        SimFsOptions {
            seed,
            sector_bytes: 512,
        }
    }
}

/// Counters of what the simulated disk was asked to do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimCounters {
    pub read_bytes: u64,
    pub writes: u64,
    /// Writes made through `write_direct_at` (also counted in `writes`).
    pub direct_writes: u64,
    pub syncs: u64,
    pub dir_syncs: u64,
}

#[derive(Debug, Default)]
struct FileData {
    current: Vec<u8>,
    durable: Vec<u8>,
    /// Sectors written since the last sync.
    dirty: BTreeSet<usize>,
    allocated: u64,
}

impl FileData {
    fn mark_dirty(&mut self, sector: usize, start: usize, end: usize) {
        if end > start {
            self.dirty.extend(start / sector..=(end - 1) / sector);
        }
    }
}

#[derive(Debug)]
struct SimFile {
    fs: Arc<Shared>,
    data: Mutex<FileData>,
}

#[derive(Debug)]
struct State {
    rng: StdRng,
    sector_bytes: usize,
    visible: BTreeMap<PathBuf, Arc<SimFile>>,
    durable_entries: BTreeMap<PathBuf, Arc<SimFile>>,
    dirs: BTreeSet<PathBuf>,
    capacity_bytes: Option<u64>,
    fail_next_write: bool,
    fail_next_sync: bool,
    read_flip_per_million: u32,
    counters: SimCounters,
    /// Crashes so far.
    crashes: u64,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
}

/// The simulated file system; clones share one disk. The instance `new` makes stands for the
/// test and outlives crashes; a clone belongs to the "boot" it was made in: after a crash its
/// directory operations fail with EIO (see the module docs).
#[derive(Debug)]
pub struct SimFs {
    shared: Arc<Shared>,
    /// The crash count when this clone was made; `None` for the instance `new` made.
    boot: Option<u64>,
}

impl Clone for SimFs {
    fn clone(&self) -> SimFs {
        SimFs {
            shared: self.shared.clone(),
            boot: Some(self.state().crashes),
        }
    }
}

fn errno(errno: rustix::io::Errno) -> io::Error {
    io::Error::from_raw_os_error(errno.raw_os_error())
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking test thread must not hide the disk from the rest of the test.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl State {
    fn used_bytes(&self) -> u64 {
        self.visible.values().map(|file| file.footprint()).sum()
    }

    fn check_capacity(&self, extra: u64) -> io::Result<()> {
        match self.capacity_bytes {
            Some(capacity) if self.used_bytes() + extra > capacity => {
                Err(errno(rustix::io::Errno::NOSPC))
            }
            _ => Ok(()),
        }
    }
}

impl SimFile {
    fn footprint(&self) -> u64 {
        let data = lock(&self.data);
        (data.current.len() as u64).max(data.allocated)
    }
}

impl SimFs {
    pub fn new(options: SimFsOptions) -> SimFs {
        SimFs {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    rng: StdRng::seed_from_u64(options.seed),
                    sector_bytes: options.sector_bytes.max(1),
                    visible: BTreeMap::new(),
                    durable_entries: BTreeMap::new(),
                    dirs: BTreeSet::new(),
                    capacity_bytes: None,
                    fail_next_write: false,
                    fail_next_sync: false,
                    read_flip_per_million: 0,
                    counters: SimCounters::default(),
                    crashes: 0,
                }),
            }),
            boot: None,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.shared.state)
    }

    /// The state, for a directory operation: refused with EIO to a clone made before a crash.
    fn namespace(&self) -> io::Result<MutexGuard<'_, State>> {
        let state = self.state();
        match self.boot {
            Some(boot) if boot != state.crashes => Err(errno(rustix::io::Errno::IO)),
            _ => Ok(state),
        }
    }

    /// The next `write_all_at` on any file fails with EIO (and writes nothing).
    pub fn fail_next_write(&self) {
        self.state().fail_next_write = true;
    }

    /// The next `sync_data` on any file fails with EIO; as on Linux, the unsynced bytes may or
    /// may not be on disk afterwards.
    pub fn fail_next_sync(&self) {
        self.state().fail_next_sync = true;
    }

    /// Limits the bytes all files together may occupy; `None` is unlimited.
    pub fn set_capacity(&self, capacity_bytes: Option<u64>) {
        self.state().capacity_bytes = capacity_bytes;
    }

    pub fn used_bytes(&self) -> u64 {
        self.state().used_bytes()
    }

    /// Each read flips one random bit of its result with this probability (per million reads).
    pub fn set_read_flip_per_million(&self, per_million: u32) {
        self.state().read_flip_per_million = per_million;
    }

    /// Flips bits of one byte on the simulated disk (both images): media corruption.
    pub fn corrupt_byte(&self, path: &Path, offset: u64, mask: u8) {
        let state = self.state();
        let file = state.visible.get(path).expect("corrupt_byte: no such file");
        let mut data = lock(&file.data);
        let at = offset as usize;
        data.current[at] ^= mask;
        if at < data.durable.len() {
            data.durable[at] ^= mask;
        }
    }

    pub fn counters(&self) -> SimCounters {
        self.state().counters
    }

    /// Simulates a power loss; see the module docs. Handles opened before it are detached.
    pub fn crash(&self) {
        let mut state = self.state();
        let state = &mut *state;
        let sector = state.sector_bytes;
        let names: BTreeSet<PathBuf> = state
            .visible
            .keys()
            .chain(state.durable_entries.keys())
            .cloned()
            .collect();
        let mut survivors = BTreeMap::new();
        for name in names {
            let file = match (state.visible.get(&name), state.durable_entries.get(&name)) {
                (Some(file), Some(_)) => file.clone(),
                // Created or removed since the directory was last synced: either way.
                (Some(file), None) | (None, Some(file)) => {
                    if state.rng.gen_bool(0.5) {
                        file.clone()
                    } else {
                        continue;
                    }
                }
                (None, None) => unreachable!("name came from one of the maps"),
            };
            let data = lock(&file.data);
            let image = crash_image(&mut state.rng, sector, &data);
            let fresh = Arc::new(SimFile {
                fs: self.shared.clone(),
                data: Mutex::new(FileData {
                    current: image.clone(),
                    durable: image,
                    dirty: BTreeSet::new(),
                    allocated: data.allocated,
                }),
            });
            survivors.insert(name, fresh);
        }
        state.durable_entries = survivors.clone();
        state.visible = survivors;
        state.fail_next_write = false;
        state.fail_next_sync = false;
        state.crashes += 1;
    }
}

/// What one file holds after a power loss: its durable image, with each sector written since
/// the last sync either lost, persisted, or torn part-way.
fn crash_image(rng: &mut StdRng, sector: usize, data: &FileData) -> Vec<u8> {
    let (durable, current) = (&data.durable, &data.current);
    let len = if durable.len() == current.len() || rng.gen_bool(0.5) {
        current.len()
    } else {
        durable.len()
    };
    let mut image = durable.clone();
    image.resize(len, 0);
    for &dirty in &data.dirty {
        let start = dirty * sector;
        let end = (start + sector).min(len).min(current.len());
        if start >= end {
            continue;
        }
        let written = &current[start..end];
        match rng.gen_range(0..3) {
            0 => {} // never reached the disk
            1 => image[start..end].copy_from_slice(written),
            _ => {
                let torn = rng.gen_range(0..=written.len());
                image[start..start + torn].copy_from_slice(&written[..torn]);
            }
        }
    }
    image
}

impl LogFile for SimFile {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let flip = {
            let mut state = lock(&self.fs.state);
            state.counters.read_bytes += buf.len() as u64;
            let per_million = state.read_flip_per_million;
            per_million > 0 && state.rng.gen_range(0..1_000_000) < per_million
        };
        let data = lock(&self.data);
        let start = offset as usize;
        let end = start + buf.len();
        if end > data.current.len() {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        buf.copy_from_slice(&data.current[start..end]);
        drop(data);
        if flip && !buf.is_empty() {
            let mut state = lock(&self.fs.state);
            let at = state.rng.gen_range(0..buf.len());
            let bit = state.rng.gen_range(0..8);
            buf[at] ^= 1 << bit;
        }
        Ok(())
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut state = lock(&self.fs.state);
        if std::mem::take(&mut state.fail_next_write) {
            return Err(errno(rustix::io::Errno::IO));
        }
        let end = offset + buf.len() as u64;
        let growth = end.saturating_sub(self.footprint());
        state.check_capacity(growth)?;
        state.counters.writes += 1;
        let mut data = lock(&self.data);
        if data.current.len() < end as usize {
            data.current.resize(end as usize, 0);
        }
        data.current[offset as usize..end as usize].copy_from_slice(buf);
        data.mark_dirty(state.sector_bytes, offset as usize, end as usize);
        Ok(())
    }

    fn direct(&self) -> bool {
        true
    }

    /// As `write_all_at`, after checking what O_DIRECT demands, so that a misaligned direct
    /// write fails the tests the way the kernel would fail it (EINVAL).
    fn write_direct_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if offset % DIRECT_ALIGN as u64 != 0
            || buf.len() % DIRECT_ALIGN != 0
            || buf.as_ptr().align_offset(DIRECT_ALIGN) != 0
        {
            return Err(errno(rustix::io::Errno::INVAL));
        }
        lock(&self.fs.state).counters.direct_writes += 1;
        self.write_all_at(buf, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut state = lock(&self.fs.state);
        if std::mem::take(&mut state.fail_next_sync) {
            return Err(errno(rustix::io::Errno::IO));
        }
        state.counters.syncs += 1;
        let sector = state.sector_bytes;
        let mut data = lock(&self.data);
        let data = &mut *data;
        let len = data.current.len();
        data.durable.resize(len, 0);
        for dirty in std::mem::take(&mut data.dirty) {
            let start = (dirty * sector).min(len);
            let end = (start + sector).min(len);
            data.durable[start..end].copy_from_slice(&data.current[start..end]);
        }
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        Ok(lock(&self.data).current.len() as u64)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let state = lock(&self.fs.state);
        state.check_capacity(len.saturating_sub(self.footprint()))?;
        let mut data = lock(&self.data);
        let old = data.current.len();
        data.current.resize(len as usize, 0);
        data.allocated = data.allocated.min(len);
        data.mark_dirty(
            state.sector_bytes,
            old.min(len as usize),
            old.max(len as usize),
        );
        Ok(())
    }

    fn allocate(&self, len: u64) -> io::Result<()> {
        let state = lock(&self.fs.state);
        state.check_capacity(len.saturating_sub(self.footprint()))?;
        let mut data = lock(&self.data);
        if (data.current.len() as u64) < len {
            data.current.resize(len as usize, 0);
        }
        data.allocated = data.allocated.max(len);
        Ok(())
    }
}

impl FileSystem for SimFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.namespace()?.dirs.insert(dir.to_path_buf());
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let state = self.namespace()?;
        if !state.dirs.contains(dir) {
            return Err(io::Error::from(io::ErrorKind::NotFound));
        }
        Ok(state
            .visible
            .keys()
            .filter(|path| path.parent() == Some(dir))
            .filter_map(|path| path.file_name()?.to_str().map(str::to_owned))
            .collect())
    }

    fn open(&self, path: &Path) -> io::Result<Arc<dyn LogFile>> {
        match self.namespace()?.visible.get(path) {
            Some(file) => Ok(file.clone()),
            None => Err(io::Error::from(io::ErrorKind::NotFound)),
        }
    }

    fn create(&self, path: &Path) -> io::Result<Arc<dyn LogFile>> {
        let mut state = self.namespace()?;
        if state.visible.contains_key(path) {
            return Err(io::Error::from(io::ErrorKind::AlreadyExists));
        }
        let file = Arc::new(SimFile {
            fs: self.shared.clone(),
            data: Mutex::new(FileData::default()),
        });
        state.visible.insert(path.to_path_buf(), file.clone());
        Ok(file)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        match self.namespace()?.visible.remove(path) {
            Some(_) => Ok(()),
            None => Err(io::Error::from(io::ErrorKind::NotFound)),
        }
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = self.namespace()?;
        match state.visible.remove(from) {
            Some(file) => {
                state.visible.insert(to.to_path_buf(), file);
                Ok(())
            }
            None => Err(io::Error::from(io::ErrorKind::NotFound)),
        }
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.namespace()?;
        let state = &mut *state;
        state.counters.dir_syncs += 1;
        state
            .durable_entries
            .retain(|path, _| path.parent() != Some(dir));
        for (path, file) in &state.visible {
            if path.parent() == Some(dir) {
                state.durable_entries.insert(path.clone(), file.clone());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        PathBuf::from("/sim")
    }

    #[test]
    fn synced_bytes_survive_a_crash_and_unsynced_may_not() {
        let fs = SimFs::new(SimFsOptions::seeded(1));
        fs.create_dir_all(&dir()).unwrap();
        let path = dir().join("a");
        let file = fs.create(&path).unwrap();
        file.write_all_at(&[1u8; 4096], 0).unwrap();
        file.sync_data().unwrap();
        fs.sync_dir(&dir()).unwrap();
        file.write_all_at(&[2u8; 4096], 4096).unwrap();
        fs.crash();
        let reopened = fs.open(&path).unwrap();
        let mut synced = vec![0u8; 4096];
        reopened.read_exact_at(&mut synced, 0).unwrap();
        assert_eq!(synced, vec![1u8; 4096]);
        // The old handle is detached: writing through it changes nothing visible.
        file.write_all_at(&[9u8; 16], 0).unwrap();
        reopened.read_exact_at(&mut synced[..16], 0).unwrap();
        assert_eq!(&synced[..16], &[1u8; 16]);
    }

    #[test]
    fn a_clone_made_before_a_crash_changes_no_name_after_it() {
        let fs = SimFs::new(SimFsOptions::seeded(4));
        fs.create_dir_all(&dir()).unwrap();
        let before = fs.clone(); // a log instance's view
        before.create(&dir().join("a")).unwrap();
        before.sync_dir(&dir()).unwrap();
        fs.crash();
        let stale = [
            before
                .rename(&dir().join("a"), &dir().join("b"))
                .unwrap_err(),
            before.remove(&dir().join("a")).unwrap_err(),
            before.create(&dir().join("c")).map(|_| ()).unwrap_err(),
            before.sync_dir(&dir()).unwrap_err(),
        ];
        for error in stale {
            assert_eq!(
                error.raw_os_error(),
                Some(rustix::io::Errno::IO.raw_os_error())
            );
        }
        assert_eq!(fs.list(&dir()).unwrap(), vec!["a".to_string()]);
        let after = fs.clone(); // the next instance's view
        after.rename(&dir().join("a"), &dir().join("b")).unwrap();
        assert_eq!(fs.list(&dir()).unwrap(), vec!["b".to_string()]);
    }

    #[test]
    fn capacity_gives_enospc_until_space_is_freed() {
        let fs = SimFs::new(SimFsOptions::seeded(2));
        fs.create_dir_all(&dir()).unwrap();
        fs.set_capacity(Some(1000));
        let a = fs.create(&dir().join("a")).unwrap();
        a.allocate(800).unwrap();
        let b = fs.create(&dir().join("b")).unwrap();
        let err = b.allocate(400).unwrap_err();
        assert_eq!(
            err.raw_os_error(),
            Some(rustix::io::Errno::NOSPC.raw_os_error())
        );
        fs.remove(&dir().join("a")).unwrap();
        b.allocate(400).unwrap();
    }

    #[test]
    fn injected_eio_hits_exactly_one_call() {
        let fs = SimFs::new(SimFsOptions::seeded(3));
        fs.create_dir_all(&dir()).unwrap();
        let a = fs.create(&dir().join("a")).unwrap();
        fs.fail_next_sync();
        assert!(a.sync_data().is_err());
        a.sync_data().unwrap();
        fs.fail_next_write();
        assert!(a.write_all_at(b"x", 0).is_err());
        a.write_all_at(b"x", 0).unwrap();
    }
}
