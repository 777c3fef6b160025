//! The write-ahead log: one per node, shared by every stream (queue or raft group).
//!
//! Threads and locks: callers append under the single state mutex, which only frames bytes into
//! a memory buffer and updates in-memory state (no I/O except when a segment rolls). One writer
//! thread takes everything pending, writes it with one positional write per segment, fdatasyncs
//! once, and completes every waiter. One maintenance thread (optional) checkpoints the index and
//! compacts segments; checkpoints and compactions are serialized by `maintenance`, which is
//! always taken before the state mutex, never while holding it.

mod checkpoint;
mod chunk;
mod compaction;
pub(crate) mod preparer;
mod recovery;
pub(crate) mod state;
mod writer;

use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

pub use self::compaction::CompactionReport;
use self::state::{Chunk, LogOp, LogState};
pub use self::state::{DurableCallback, WalCounters};
use crate::error::{Result, StorageError};
use crate::fs::{FileSystem, RealFs};
use crate::ids::{Location, Lsn, SegmentId, StreamId};
use crate::index::{Index, SegmentLive, SledIndex, StreamLive};
use crate::record::{self, Decoded, RecordHeader, RecordKind};
use crate::segment::{self, SegmentHeader};

/// Every setting of the log, with defaults that suit a broker node.
#[derive(Clone, Debug)]
pub struct WalConfig {
    /// Directory holding the segment files (and, with [`Wal::open_dir`], the index).
    pub dir: PathBuf,
    /// Size of each segment file; segments are preallocated to it.
    pub segment_bytes_max: u64,
    /// Largest payload one record may carry.
    pub record_bytes_max: usize,
    /// Framed bytes that may wait for the writer before appenders block (backpressure).
    pub pending_bytes_max: usize,
    /// Index changes held in memory before a checkpoint is due.
    pub checkpoint_ops_max: usize,
    /// Longest time between checkpoints while there are changes.
    pub checkpoint_interval_ms: u64,
    /// A sealed segment is compacted once at least this fraction of it is dead.
    pub compaction_dead_ratio: f64,
    /// Run checkpoints and compaction on a background thread.
    pub background_maintenance: bool,
    /// Page cache of the sled index.
    pub index_cache_bytes: u64,
    /// Zero-fill a spare segment ahead of time on a background thread when no retired segment
    /// waits to be reused (see `wal/preparer.rs`). A write into blocks that were only
    /// fallocated makes each fdatasync also convert extents, which on ext4 roughly doubles its
    /// cost for multi-page batches. A new log's first segment is zero-filled at open too.
    pub prepare_segments: bool,
    /// Longest time the writer waits, under load only, for a batch to fill (see `wal/writer.rs`);
    /// 0 disables the wait.
    pub group_commit_wait_us_max: u64,
    /// Chunks whose records average at least this many bytes are written with O_DIRECT where
    /// the file system allows (see `wal/chunk.rs`); smaller ones go through the page cache,
    /// which keeps a backlog of small messages cheap to read back. 0: every chunk that can.
    pub direct_record_bytes_min: usize,
}

impl WalConfig {
    pub fn new(dir: impl Into<PathBuf>) -> WalConfig {
        WalConfig {
            dir: dir.into(),
            segment_bytes_max: 64 << 20,
            record_bytes_max: 32 << 20,
            pending_bytes_max: 32 << 20,
            checkpoint_ops_max: 200_000,
            checkpoint_interval_ms: 2_000,
            compaction_dead_ratio: 0.5,
            background_maintenance: true,
            index_cache_bytes: 16 << 20,
            prepare_segments: true,
            group_commit_wait_us_max: 500,
            direct_record_bytes_min: 16 << 10,
        }
    }

    fn validate(&self) -> Result<()> {
        let largest_frame = record::frame_bytes(self.record_bytes_max) as u64 + 256;
        if self.segment_bytes_max < largest_frame {
            return Err(StorageError::Config(format!(
                "segment_bytes_max ({}) must exceed the largest frame ({largest_frame})",
                self.segment_bytes_max
            )));
        }
        // Direct writes pad a segment's last block: it must end on a block boundary.
        if self.segment_bytes_max % crate::fs::DIRECT_ALIGN as u64 != 0 {
            return Err(StorageError::Config(format!(
                "segment_bytes_max ({}) must be a multiple of {}",
                self.segment_bytes_max,
                crate::fs::DIRECT_ALIGN
            )));
        }
        if !(0.0..=1.0).contains(&self.compaction_dead_ratio) {
            return Err(StorageError::Config(
                "compaction_dead_ratio must be in [0, 1]".into(),
            ));
        }
        if self.pending_bytes_max == 0 || self.checkpoint_ops_max == 0 {
            return Err(StorageError::Config("limits must be positive".into()));
        }
        Ok(())
    }

    /// The path of a segment file.
    pub fn segment_path(&self, segment: SegmentId) -> PathBuf {
        self.dir.join(segment.file_name())
    }
}

/// What an append returns: the record's LSN (wait on it for durability) and where it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Receipt {
    pub lsn: Lsn,
    pub location: Location,
}

/// A record read back from the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub header: RecordHeader,
    pub payload: Vec<u8>,
}

/// A snapshot of the log's figures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalStats {
    pub next_lsn: Lsn,
    pub durable_lsn: Lsn,
    pub segments: usize,
    /// Bytes the segment files occupy on disk (preallocated to their full size).
    pub disk_bytes: u64,
    /// Files the log keeps beyond its segments: retired segments waiting to be reused and the
    /// zero-filled spare (see `wal/preparer.rs`), each of the segment size.
    pub reserve_files: usize,
    pub reserve_bytes: u64,
    /// Bytes of live record frames.
    pub live_bytes: u64,
    pub counters: WalCounters,
    /// The last open found a torn tail and truncated it: the log was not closed cleanly (a
    /// clean close seals the log where it ends).
    pub torn_tail_repaired: bool,
}

pub(crate) struct Shared {
    pub config: WalConfig,
    pub fs: Arc<dyn FileSystem>,
    pub index: Arc<dyn Index>,
    pub state: Mutex<LogState>,
    /// Wakes the writer when something is pending (or the log closes).
    pub writer_wake: Condvar,
    /// Signalled when the durable LSN moves, pending space frees up, or the log fails.
    pub progress: Condvar,
    /// Wakes the maintenance thread.
    pub maintenance_wake: Condvar,
    /// Serializes checkpoints and compactions. Taken before `state`, never while holding it.
    pub maintenance: Mutex<()>,
    /// Wakes the segment preparer.
    pub prepare_wake: Condvar,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Shared {
    pub(crate) fn wait_durable(&self, lsn: Lsn) -> Result<()> {
        let mut state = lock(&self.state);
        loop {
            if lsn <= state.durable_lsn {
                return Ok(());
            }
            state.check_usable()?;
            state = self.wait_progress(state);
        }
    }

    /// Waits for the durable LSN to move, pending space to free up, or the log to fail.
    pub(crate) fn wait_progress<'a>(
        &'a self,
        mut state: MutexGuard<'a, LogState>,
    ) -> MutexGuard<'a, LogState> {
        state.progress_waiters += 1;
        let mut state = self.progress.wait(state).unwrap_or_else(|p| p.into_inner());
        state.progress_waiters -= 1;
        state
    }

    /// Takes the state lock once fewer than `pending_bytes_max` bytes wait for the writer.
    pub(crate) fn lock_with_room(&self) -> Result<MutexGuard<'_, LogState>> {
        let mut state = lock(&self.state);
        loop {
            state.check_usable()?;
            if state.pending_bytes < self.config.pending_bytes_max {
                return Ok(state);
            }
            state = self.wait_progress(state);
        }
    }
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock is a programmer error that already crashed a thread; the
    // state it guards is only ever changed in whole steps, so keep serving the others.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The node's write-ahead log. See the crate docs for its durability contract.
#[derive(Debug)]
pub struct Wal {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    /// The directory's lock (`LOCK`, flock'd exclusively) while a real directory is open.
    _dir_lock: Option<std::fs::File>,
}

/// Takes the directory's exclusive lock, so that a second process (or a second open in this
/// one) is refused before it touches the index or the segments.
fn lock_dir(dir: &std::path::Path) -> Result<std::fs::File> {
    let path = dir.join("LOCK");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| StorageError::io("opening the lock file", &path, e))?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(file),
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => Err(StorageError::InUse { path }),
        Err(e) => Err(StorageError::io("locking", &path, e.into())),
    }
}

impl Wal {
    /// Opens (recovering if needed) the log in `config.dir` on the real file system, with the
    /// sled index in `config.dir/index`.
    pub fn open_dir(config: WalConfig) -> Result<Wal> {
        std::fs::create_dir_all(&config.dir)
            .map_err(|e| StorageError::io("creating the log directory", &config.dir, e))?;
        let dir_lock = lock_dir(&config.dir)?;
        let index = SledIndex::open_or_reset(&config.dir.join("index"), config.index_cache_bytes)?;
        let mut wal = Wal::open(config, Arc::new(RealFs), Arc::new(index))?;
        wal._dir_lock = Some(dir_lock);
        Ok(wal)
    }

    /// Opens the log on any file system and index (tests use the simulated ones).
    pub fn open(config: WalConfig, fs: Arc<dyn FileSystem>, index: Arc<dyn Index>) -> Result<Wal> {
        config.validate()?;
        let state = recovery::recover(&config, fs.as_ref(), index.as_ref())?;
        let shared = Arc::new(Shared {
            config,
            fs,
            index,
            state: Mutex::new(state),
            writer_wake: Condvar::new(),
            progress: Condvar::new(),
            maintenance_wake: Condvar::new(),
            maintenance: Mutex::new(()),
            prepare_wake: Condvar::new(),
        });
        let mut wal = Wal {
            shared,
            threads: Vec::new(),
            _dir_lock: None,
        };
        wal.spawn("wal-writer", writer::run)?;
        if wal.shared.config.prepare_segments {
            wal.spawn("wal-preparer", preparer::run)?;
        }
        if lock(&wal.shared.state).overlay.len() > 0 {
            // Make the next open fast: the replayed changes go into the index now.
            wal.checkpoint()?;
        }
        if wal.shared.config.background_maintenance {
            wal.spawn("wal-maintenance", checkpoint::run_maintenance)?;
        }
        Ok(wal)
    }

    fn spawn(&mut self, name: &'static str, body: fn(&Shared)) -> Result<()> {
        let shared = self.shared.clone();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || body(&shared))
            .map_err(|e| StorageError::io("starting a log thread", name, e))?;
        self.threads.push(thread);
        Ok(())
    }

    pub fn config(&self) -> &WalConfig {
        &self.shared.config
    }

    /// Appends (or replaces) record `seq` of `stream`. Returns once the record is readable;
    /// it is durable once [`Wal::durable_lsn`] reaches the returned LSN.
    pub fn append(&self, stream: StreamId, seq: u64, payload: &[u8]) -> Result<Receipt> {
        self.append_parts(stream, seq, &[payload])
    }

    /// [`Wal::append`] with the payload in pieces, framed one after the other: a caller that
    /// holds a record as a header and a body saves joining them (a copy of the body).
    pub fn append_parts(&self, stream: StreamId, seq: u64, parts: &[&[u8]]) -> Result<Receipt> {
        assert_ne!(
            stream,
            StreamId::DEFINITIONS,
            "stream 0 is reserved for definitions"
        );
        self.append_op(&LogOp::Put { stream, seq }, parts)
    }

    /// Deletes (settles) record `seq` of `stream`. `None` if it was not live: nothing is written.
    pub fn delete(&self, stream: StreamId, seq: u64) -> Result<Option<Lsn>> {
        let mut state = self.lock_for_append(0)?;
        let Some(location) = state.lookup(self.shared.index.as_ref(), stream, seq)? else {
            return Ok(None);
        };
        let op = LogOp::Delete {
            stream,
            seq,
            segment_max: location.segment.0,
        };
        self.append_locked(&mut state, &op, &[], None)
            .map(|r| Some(r.lsn))
    }

    /// Deletes every live record of `stream` with `from <= seq < to` with one record.
    pub fn delete_range(&self, stream: StreamId, from: u64, to: u64) -> Result<Option<Lsn>> {
        let mut state = self.lock_for_append(0)?;
        let live = state.live_range(self.shared.index.as_ref(), stream, from, to, usize::MAX)?;
        let Some(segment_max) = live.iter().map(|(_, l)| l.segment.0).max() else {
            return Ok(None);
        };
        let op = LogOp::DeleteRange {
            stream,
            from,
            to,
            segment_max,
        };
        self.append_locked(&mut state, &op, &[], None)
            .map(|r| Some(r.lsn))
    }

    /// Sets a key of the definitions namespace.
    pub fn kv_put(&self, key: &[u8], value: &[u8]) -> Result<Lsn> {
        let op = LogOp::KvPut {
            key: key.to_vec(),
            value: value.to_vec(),
        };
        self.append_op(&op, &[]).map(|r| r.lsn)
    }

    /// Removes a key of the definitions namespace; `None` if it was not set.
    pub fn kv_delete(&self, key: &[u8]) -> Result<Option<Lsn>> {
        let mut state = self.lock_for_append(0)?;
        let Some((location, _)) = state.kv_lookup(self.shared.index.as_ref(), key)? else {
            return Ok(None);
        };
        let op = LogOp::KvDelete {
            key: key.to_vec(),
            segment_max: location.segment.0,
        };
        self.append_locked(&mut state, &op, &[], None)
            .map(|r| Some(r.lsn))
    }

    pub fn kv_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let state = lock(&self.shared.state);
        Ok(state
            .kv_lookup(self.shared.index.as_ref(), key)?
            .map(|(_, value)| value))
    }

    /// Every key of the definitions namespace that starts with `prefix`, in key order.
    pub fn kv_prefix(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let state = lock(&self.shared.state);
        let mut merged: std::collections::BTreeMap<Vec<u8>, Vec<u8>> = self
            .shared
            .index
            .kv_prefix(prefix)?
            .into_iter()
            .map(|(key, _, value)| (key, value))
            .collect();
        for layer in state.kv_layers() {
            for (key, entry) in layer
                .range(prefix.to_vec()..)
                .take_while(|(k, _)| k.starts_with(prefix))
            {
                match entry {
                    Some((_, value)) => merged.insert(key.clone(), value.clone()),
                    None => merged.remove(key),
                };
            }
        }
        Ok(merged.into_iter().collect())
    }

    /// Where record `seq` of `stream` is, if it is live.
    pub fn locate(&self, stream: StreamId, seq: u64) -> Result<Option<Location>> {
        lock(&self.shared.state).lookup(self.shared.index.as_ref(), stream, seq)
    }

    /// The payload of record `seq` of `stream`, if it is live.
    pub fn get(&self, stream: StreamId, seq: u64) -> Result<Option<Vec<u8>>> {
        // Compaction may move the record between the lookup and the read: look again.
        for _ in 0..8 {
            let Some(location) = self.locate(stream, seq)? else {
                return Ok(None);
            };
            match self.read_at(location) {
                Ok(record) => return Ok(Some(record.payload)),
                Err(StorageError::SegmentGone { .. }) => continue,
                Err(error) => return Err(error),
            }
        }
        Err(StorageError::SegmentGone {
            segment: SegmentId(0),
        })
    }

    /// Up to `limit` live records of `stream` with `seq >= from`, in seq order. Reads only those
    /// records' bytes.
    pub fn read_stream(
        &self,
        stream: StreamId,
        from: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>> {
        let locations = {
            let state = lock(&self.shared.state);
            state.live_range(self.shared.index.as_ref(), stream, from, u64::MAX, limit)?
        };
        let mut out = Vec::with_capacity(locations.len());
        for (seq, location) in locations {
            match self.read_at(location) {
                Ok(record) => out.push((seq, record.payload)),
                Err(StorageError::SegmentGone { .. }) => {
                    if let Some(payload) = self.get(stream, seq)? {
                        out.push((seq, payload));
                    }
                }
                Err(error) => return Err(error),
            }
        }
        Ok(out)
    }

    /// Reads and checks the record at `location`.
    pub fn read_at(&self, location: Location) -> Result<Record> {
        let mut buf = vec![0u8; location.frame_bytes as usize];
        let file = {
            let state = lock(&self.shared.state);
            // Newest first: a record appended after a seal overwrites it at the same offset.
            let in_memory = state
                .pending
                .iter()
                .rev()
                .chain(state.inflight.iter().rev())
                .find_map(|c| c.slice(&location));
            if let Some(bytes) = in_memory {
                buf.copy_from_slice(bytes);
                None
            } else {
                match state.segments.get(&location.segment) {
                    Some(segment) => Some(segment.file.clone()),
                    None => {
                        return Err(StorageError::SegmentGone {
                            segment: location.segment,
                        })
                    }
                }
            }
        };
        if let Some(file) = file {
            file.read_exact_at(&mut buf, location.offset).map_err(|e| {
                StorageError::io(
                    "reading a record",
                    self.shared.config.segment_path(location.segment),
                    e,
                )
            })?;
            // Compaction may have retired the segment meanwhile, and a retired file is reused:
            // what was read counts only if the segment was still there after the read.
            if !lock(&self.shared.state)
                .segments
                .contains_key(&location.segment)
            {
                return Err(StorageError::SegmentGone {
                    segment: location.segment,
                });
            }
        }
        match record::decode(&buf, self.shared.config.record_bytes_max) {
            Decoded::Frame {
                header, payload, ..
            } => Ok(Record {
                header,
                payload: payload.to_vec(),
            }),
            Decoded::Truncated => Err(StorageError::ChecksumOnRead {
                segment: location.segment,
                offset: location.offset,
                reason: "frame shorter than its index entry".into(),
            }),
            Decoded::Invalid(reason) => Err(StorageError::ChecksumOnRead {
                segment: location.segment,
                offset: location.offset,
                reason: reason.into(),
            }),
        }
    }

    /// Every record with an LSN at or below this is on disk.
    pub fn durable_lsn(&self) -> Lsn {
        lock(&self.shared.state).durable_lsn
    }

    /// The LSN the next record will get.
    pub fn next_lsn(&self) -> Lsn {
        lock(&self.shared.state).next_lsn
    }

    /// Runs `callback` once record `lsn` is durable, or with the error that prevented it. It
    /// runs on the writer thread (or at once, here, if already decided): keep it short, and
    /// never call this log's write or wait methods from it (they may wait for the writer).
    pub fn on_durable(&self, lsn: Lsn, callback: DurableCallback) {
        let mut state = lock(&self.shared.state);
        if lsn <= state.durable_lsn {
            drop(state);
            callback(Ok(()));
        } else if let Err(error) = state.check_usable() {
            drop(state);
            callback(Err(error));
        } else {
            state.waiters.push((lsn, callback));
        }
    }

    /// Blocks until record `lsn` is durable.
    pub fn wait_durable(&self, lsn: Lsn) -> Result<()> {
        self.shared.wait_durable(lsn)
    }

    /// Blocks until everything appended so far is durable.
    pub fn sync(&self) -> Result<()> {
        let last = Lsn(self.next_lsn().0 - 1);
        self.wait_durable(last)
    }

    /// Live records and bytes of one stream.
    pub fn stream_live(&self, stream: StreamId) -> StreamLive {
        lock(&self.shared.state)
            .streams
            .get(&stream.0)
            .copied()
            .unwrap_or_default()
    }

    /// Live data per segment, oldest first.
    pub fn segment_live(&self) -> Vec<(SegmentId, SegmentLive)> {
        lock(&self.shared.state)
            .segments
            .iter()
            .map(|(id, s)| (*id, s.live))
            .collect()
    }

    pub fn stats(&self) -> WalStats {
        let state = lock(&self.shared.state);
        let reserve_files = state.recyclable.len() + usize::from(state.prepared.is_some());
        WalStats {
            next_lsn: state.next_lsn,
            durable_lsn: state.durable_lsn,
            segments: state.segments.len(),
            disk_bytes: state
                .segments
                .values()
                .map(|s| s.file.len().unwrap_or(0))
                .sum(),
            reserve_files,
            reserve_bytes: reserve_files as u64 * self.shared.config.segment_bytes_max,
            live_bytes: state.live_bytes(),
            counters: state.counters,
            torn_tail_repaired: state.torn_tail_repaired,
        }
    }

    /// Commits the index changes made so far (see `checkpoint.rs`).
    pub fn checkpoint(&self) -> Result<()> {
        let _serial = lock(&self.shared.maintenance);
        checkpoint::checkpoint_serialized(&self.shared)
    }

    /// Compacts every sealed segment that is at least `compaction_dead_ratio` dead (the
    /// background pass spares the newest sealed segments until they are entirely dead).
    pub fn compact(&self) -> Result<CompactionReport> {
        compaction::compact(&self.shared, self.shared.config.compaction_dead_ratio, 0)
    }

    /// Compacts every sealed segment with any dead data (used by tests and before backups).
    pub fn compact_all(&self) -> Result<CompactionReport> {
        compaction::compact(&self.shared, 0.0, 0)
    }

    /// Syncs, checkpoints, seals (see [`Wal::seal`]) and stops the log's threads.
    pub fn close(mut self) -> Result<()> {
        let result = self
            .sync()
            .and_then(|()| self.checkpoint())
            .and_then(|()| self.seal());
        self.shutdown();
        result
    }

    /// Writes a seal where the records end, after everything pending, and waits for the writer
    /// to have synced it. The next open then finds the end of the log there, instead of scanning
    /// what follows (the stale frames of a recycled file, which read as a torn tail to
    /// truncate). Appends may follow: the first one overwrites the seal. Call it after
    /// [`Wal::sync`] when stopping.
    pub fn seal(&self) -> Result<()> {
        let mut state = self.lock_for_append(0)?;
        // The batch being written now does not hold the seal; the next one does.
        let written_by = state.counters.batches + 1 + u64::from(!state.inflight.is_empty());
        let (active, end) = (state.active, state.active_len);
        queue_seal(&mut state, active, end);
        if state.writer_idle {
            state.writer_idle = false;
            self.shared.writer_wake.notify_one();
        }
        while state.counters.batches < written_by {
            state.check_usable()?;
            state = self.shared.wait_progress(state);
        }
        Ok(())
    }

    fn shutdown(&mut self) {
        {
            let mut state = lock(&self.shared.state);
            state.closed = true;
        }
        self.shared.writer_wake.notify_all();
        self.shared.maintenance_wake.notify_all();
        self.shared.prepare_wake.notify_all();
        self.shared.progress.notify_all();
        for thread in self.threads.drain(..) {
            if thread.join().is_err() {
                tracing::error!("a log thread panicked");
            }
        }
    }

    fn append_op(&self, op: &LogOp, payload: &[&[u8]]) -> Result<Receipt> {
        let len = payload.iter().map(|p| p.len()).sum();
        // A large message is summed before the lock is taken: the writer and other appenders
        // then wait for its copy alone (at 64 KiB, the crc was as long as the copy).
        let crc = (matches!(op, LogOp::Put { .. }) && len >= SUM_BEFORE_LOCK_BYTES)
            .then(|| record::payload_crc(payload));
        let mut state = self.lock_for_append(len)?;
        self.append_locked(&mut state, op, payload, crc.as_ref())
    }

    /// Takes the state lock once there is room for `payload_bytes` more pending bytes and the
    /// overlay of index changes is below its hard limit (twice `checkpoint_ops_max`). Past that
    /// limit the appender runs the checkpoint itself: backpressure that keeps memory bounded
    /// when the index falls behind.
    fn lock_for_append(&self, payload_bytes: usize) -> Result<MutexGuard<'_, LogState>> {
        let config = &self.shared.config;
        if payload_bytes > config.record_bytes_max {
            return Err(StorageError::RecordTooLarge {
                payload_bytes,
                record_bytes_max: config.record_bytes_max,
            });
        }
        let mut state = lock(&self.shared.state);
        loop {
            state.check_usable()?;
            if state.overlay.len() >= 2 * config.checkpoint_ops_max {
                drop(state);
                self.checkpoint()?;
                state = lock(&self.shared.state);
                continue;
            }
            if state.pending_bytes == 0
                || state.pending_bytes + payload_bytes <= config.pending_bytes_max
            {
                return Ok(state);
            }
            state = self.shared.wait_progress(state);
        }
    }

    fn append_locked(
        &self,
        state: &mut LogState,
        op: &LogOp,
        put_payload: &[&[u8]],
        put_crc: Option<&crc32fast::Hasher>,
    ) -> Result<Receipt> {
        let receipt = frame_locked(&self.shared, state, op, put_payload, put_crc)?;
        state.apply(self.shared.index.as_ref(), op, receipt.location)?;
        if state.overlay.len() >= self.shared.config.checkpoint_ops_max {
            self.shared.maintenance_wake.notify_one();
        }
        Ok(receipt)
    }
}

/// Put payloads from this size on are summed before the state lock is taken (below it, combining
/// the two sums costs about what summing under the lock would).
const SUM_BEFORE_LOCK_BYTES: usize = 16 << 10;

impl Drop for Wal {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Frames the record for `op` into the pending buffer (rolling to a new segment if needed) and
/// wakes the writer. `put_crc`, if given, is `record::payload_crc` of `put_payload`. Changes
/// nothing if it fails.
pub(crate) fn frame_locked(
    shared: &Shared,
    state: &mut LogState,
    op: &LogOp,
    put_payload: &[&[u8]],
    put_crc: Option<&crc32fast::Hasher>,
) -> Result<Receipt> {
    let (kind, stream, seq, encoded) = op.encode();
    let encoded = [&encoded[..]];
    let payload = if kind == RecordKind::Put {
        put_payload
    } else {
        &encoded[..]
    };
    let payload_len: usize = payload.iter().map(|p| p.len()).sum();
    if payload_len > shared.config.record_bytes_max {
        return Err(StorageError::RecordTooLarge {
            payload_bytes: payload_len,
            record_bytes_max: shared.config.record_bytes_max,
        });
    }
    let frame_bytes = record::frame_bytes(payload_len) as u64;
    // Every segment keeps room for its seal after its last record.
    if state.active_len + frame_bytes + segment::SEAL_BYTES as u64 > shared.config.segment_bytes_max
    {
        roll_locked(shared, state)?;
    }
    let header = RecordHeader {
        kind,
        lsn: state.next_lsn,
        durable_lsn: state.durable_lsn,
        stream,
        seq,
    };
    let offset = state.active_len;
    let active = state.active;
    let large = payload_len >= shared.config.direct_record_bytes_min;
    let out = pending_chunk(state, active, offset, large);
    match put_crc.filter(|_| kind == RecordKind::Put) {
        Some(crc) => record::encode_summed(out, &header, payload, crc),
        None => record::encode_into(out, &header, payload),
    }
    if !kind.is_tombstone() {
        state
            .pending
            .last_mut()
            .expect("chunk framed into")
            .readable += 1;
    }
    state
        .segments
        .get_mut(&active)
        .expect("active segment is open")
        .note(op);
    state.active_len += frame_bytes;
    state.pending_bytes += frame_bytes as usize;
    state.pending_records += 1;
    state.pending_last_lsn = header.lsn;
    state.next_lsn = Lsn(header.lsn.0 + 1);
    state.counters.records += 1;
    if state.writer_idle
        && (state.pending_records >= state.writer_wake_at
            || state.pending_bytes >= writer::GATHER_BYTES_ENOUGH)
    {
        state.writer_idle = false;
        shared.writer_wake.notify_one();
    }
    Ok(Receipt {
        lsn: header.lsn,
        location: Location {
            segment: active,
            offset,
            frame_bytes: frame_bytes as u32,
        },
    })
}

/// The pending buffer that bytes for `segment` at `offset` are appended to: the last chunk if
/// they continue it, else a new chunk.
fn pending_chunk(
    state: &mut LogState,
    segment: SegmentId,
    offset: u64,
    large: bool,
) -> &mut Vec<u8> {
    let continues = state
        .pending
        .last()
        .is_some_and(|c| c.segment == segment && c.end_offset() == offset);
    if !continues {
        let file = state
            .segments
            .get(&segment)
            .expect("written segment is open")
            .file
            .clone();
        let buf = chunk::buffer_for(&mut state.spare_buffers, large);
        let lead = chunk::find_lead(
            &state.pending,
            &state.inflight,
            state.tail.as_ref(),
            segment,
            offset,
        );
        let chunk = Chunk::new(segment, file, offset, buf, lead, large);
        state.pending.push(chunk);
    } else if large {
        let chunk = state.pending.last_mut().expect("continued above");
        if chunk.wants_direct_buffer() {
            let buf = chunk::buffer_for(&mut state.spare_buffers, true);
            let old = chunk.move_to(buf);
            chunk::keep_spare(&mut state.spare_buffers, old);
        }
    }
    state.pending.last_mut().expect("chunk pushed above").buf()
}

/// Queues the seal that ends `segment` at `end` (the next LSN due is the one it names).
fn queue_seal(state: &mut LogState, segment: SegmentId, end: u64) {
    let seal = segment::encode_seal(segment, state.next_lsn, state.durable_lsn);
    pending_chunk(state, segment, end, false).extend_from_slice(&seal);
    state.pending_bytes += seal.len();
}

/// Rolls to the next segment and queues the seal of the one it follows, which the writer writes
/// with that segment's last records. The new segment's header is queued here, as the first bytes
/// of its first chunk, and the writer names its file once that is synced (see `preparer`); the
/// roll itself waits on no device. ENOSPC (only a new file can meet it, in its allocation) fails
/// the append that needed the space and leaves everything as it was.
fn roll_locked(shared: &Shared, state: &mut LogState) -> Result<()> {
    let next = SegmentId(state.active.0 + 1);
    let header = SegmentHeader {
        segment: next,
        first_lsn: state.next_lsn,
        durable_lsn: state.durable_lsn,
    };
    let (file, activation) = preparer::new_segment(shared, state, &header)?;
    shared.prepare_wake.notify_one();
    let (sealed, sealed_len) = (state.active, state.active_len);
    queue_seal(state, sealed, sealed_len);
    state.segments.insert(next, state::SegmentState::new(file));
    state.activations.push(activation);
    let header_bytes = segment::encode_header(&header);
    pending_chunk(state, next, 0, false).extend_from_slice(&header_bytes);
    state.pending_bytes += header_bytes.len();
    if state.recyclable.len() < preparer::RECYCLABLE_MAX
        && state
            .segments
            .iter()
            .any(|(id, s)| *id < sealed && s.live.records == 0)
    {
        state.compaction_due = true;
        shared.maintenance_wake.notify_one();
    }
    state.active = next;
    state.active_len = header_bytes.len() as u64;
    tracing::debug!(
        segment = next.0,
        first_lsn = header.first_lsn.0,
        "rolled to a new segment"
    );
    Ok(())
}

pub(crate) fn create_segment(
    config: &WalConfig,
    fs: &dyn FileSystem,
    header: &SegmentHeader,
) -> Result<(Arc<dyn crate::fs::LogFile>, u64)> {
    let path = config.segment_path(header.segment);
    let file = fs
        .create(&path)
        .map_err(|e| StorageError::io("creating segment", &path, e))?;
    let prepared = (|| {
        file.allocate(config.segment_bytes_max)?;
        let bytes = segment::encode_header(header);
        file.write_all_at(&bytes, 0)?;
        file.sync_data()?;
        fs.sync_dir(&config.dir)?;
        Ok(bytes.len() as u64)
    })();
    match prepared {
        Ok(len) => Ok((file, len)),
        Err(error) => {
            // Leave no half-made segment behind; recovery would discard it anyway.
            let _ = fs.remove(&path);
            Err(StorageError::io("preparing segment", &path, error))
        }
    }
}
