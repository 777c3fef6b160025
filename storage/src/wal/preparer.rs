//! Where a new segment's file comes from when the log rolls, in order of preference:
//!
//! 1. A retired segment. Compaction retires a dead segment by renaming it to
//!    `<segment file name>.<lsn bound>.free` (then syncing the directory, exactly as a removal
//!    would) while fewer than [`RECYCLABLE_MAX`] wait, and removes it otherwise. Rewriting blocks
//!    a file already holds costs the disk and the CPU a fraction of filling fresh ones: with
//!    zero-filling, half of every byte the log wrote was a zero. The file's old frames stay
//!    behind the new segment's records; each has an LSN below the bound, and the bound is at most
//!    the new segment's first LSN, so no scan accepts one (see `segment`).
//! 2. The spare: a file zero-filled ahead of time by the preparer thread (when
//!    `prepare_segments` is on) whenever there is neither a spare nor a retired file, so the new
//!    segment's blocks are already written: fdatasync then has no extent conversions to commit.
//!    It lives under `spare.prep` until a roll takes it. Retired files go first, so zero-filling
//!    only happens when compaction cannot keep up (a backlog, or the first segments of a new log).
//! 3. A new file allocated by fallocate (also when preparing failed, for example with ENOSPC),
//!    created by the roll under `<segment file name>.new`: the allocation is what may fail with
//!    ENOSPC, and that must fail the append that needed it, leaving everything as it was.
//!
//! All three are activated by the log writer, not by the roll: the roll (which runs on an
//! appending thread, under the log's lock) only takes the file, already open (a retired file
//! keeps the handle its segment had; a new one is created and allocated, which waits on no
//! device), and queues the segment's header as the first bytes of its first chunk. The writer
//! writes and syncs that batch, then renames the file to the segment's name and syncs the
//! directory, and only then reports the batch durable ([`Activation`]). So the header is
//! durable before the file has the segment's name (a crash never leaves a segment-named file
//! with a retired segment's header), and no record in the segment is reported durable before
//! the name is. Done by the roll itself, the header's sync, the rename and the directory sync
//! stalled every connection of the broker's runtime for about 0.7 ms per roll, 17 times a
//! second with 64 KiB messages, with the log's lock held.
//!
//! At open, spares, new files and retired files a crash or a close left are removed, not
//! reused: a retired file whose activation a crash interrupted may hold frames of the segment it
//! was becoming, with LSNs at or above its bound, which a later reuse could mistake for its own
//! (the writes of a batch reach the disk in no particular order, so not even the header tells).
//! The first rolls after an open take zero-filled spares instead.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::state::LogState;
use super::{lock, Shared, WalConfig};
use crate::error::{Result, StorageError};
use crate::fs::{FileSystem, LogFile};
use crate::ids::{Lsn, SegmentId};
use crate::segment::{self, SegmentHeader};

/// File name suffix of the spare.
const SUFFIX: &str = ".prep";
/// File name suffix of a retired segment kept for reuse.
const RECYCLABLE_SUFFIX: &str = ".free";
/// File name suffix of a new segment file until the writer names it.
const NEW_SUFFIX: &str = ".new";
/// Retired segment files kept for reuse at most; compaction removes the others.
pub(crate) const RECYCLABLE_MAX: usize = 4;
const ZERO_CHUNK_BYTES: usize = 1 << 20;
/// Pause after a failed preparation before trying again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The zero-filled, synced spare.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub file: Arc<dyn LogFile>,
}

fn spare_path(config: &WalConfig) -> PathBuf {
    config.dir.join(format!("spare{SUFFIX}"))
}

/// Where retired segment `segment` waits for reuse; every frame in it has an LSN below `bound`.
fn recyclable_path(config: &WalConfig, segment: SegmentId, bound: Lsn) -> PathBuf {
    config.dir.join(format!(
        "{}.{}{RECYCLABLE_SUFFIX}",
        segment.file_name(),
        bound.0
    ))
}

/// A retired segment's file waiting for reuse, and its handle (kept from the segment, so that
/// a roll taking it need not even open it).
#[derive(Debug)]
pub(crate) struct Recyclable {
    pub path: PathBuf,
    pub file: Arc<dyn LogFile>,
}

/// Takes segment `segment` (sealed, dead, no longer in the log's state; `file` is its handle)
/// off the log: renamed for reuse if fewer than [`RECYCLABLE_MAX`] wait, else removed. The
/// caller syncs the directory.
pub(crate) fn retire(shared: &Shared, segment: SegmentId, file: Arc<dyn LogFile>) -> Result<()> {
    let config = &shared.config;
    let path = config.segment_path(segment);
    let keep = {
        let state = lock(&shared.state);
        (state.recyclable.len() < RECYCLABLE_MAX)
            .then(|| recyclable_path(config, segment, state.next_lsn))
    };
    let Some(recyclable) = keep else {
        return shared
            .fs
            .remove(&path)
            .map_err(|e| StorageError::io("removing a compacted segment", &path, e));
    };
    shared
        .fs
        .rename(&path, &recyclable)
        .map_err(|e| StorageError::io("retiring a compacted segment", &path, e))?;
    lock(&shared.state).recyclable.push(Recyclable {
        path: recyclable,
        file,
    });
    Ok(())
}

/// At open: removes the spares and retired segment files a crash or a close left (see the
/// module docs for why retired files are not reused across an open).
pub(crate) fn remove_leftovers(config: &WalConfig, fs: &dyn FileSystem, names: &[String]) {
    for name in names.iter().filter(|name| {
        name.ends_with(SUFFIX) || name.ends_with(RECYCLABLE_SUFFIX) || name.ends_with(NEW_SUFFIX)
    }) {
        let path = config.dir.join(name);
        if let Err(error) = fs.remove(&path) {
            tracing::warn!(path = %path.display(), %error, "could not remove a leftover spare segment");
        }
    }
}

pub(crate) fn run(shared: &Shared) {
    loop {
        {
            let mut state = lock(&shared.state);
            loop {
                if state.closed || state.failure.is_some() {
                    return;
                }
                // A spare the writer has yet to rename still has the spare's name.
                if state.prepared.is_none()
                    && state.recyclable.is_empty()
                    && state.activations.is_empty()
                {
                    break;
                }
                state = shared
                    .prepare_wake
                    .wait(state)
                    .unwrap_or_else(|p| p.into_inner());
            }
        }
        match prepare(&shared.config, shared.fs.as_ref()) {
            Ok(file) => lock(&shared.state).prepared = Some(Prepared { file }),
            Err(error) => {
                tracing::warn!(%error, "could not prepare a spare segment; the roll will allocate one");
                let state = lock(&shared.state);
                let _ = shared.prepare_wake.wait_timeout(state, RETRY_AFTER);
            }
        }
    }
}

fn prepare(config: &WalConfig, fs: &dyn FileSystem) -> Result<Arc<dyn LogFile>> {
    let path = spare_path(config);
    let _ = fs.remove(&path); // a leftover from an earlier attempt
    let file = fs
        .create(&path)
        .map_err(|e| StorageError::io("creating a spare segment", &path, e))?;
    let zeros = vec![0u8; ZERO_CHUNK_BYTES];
    let filled = (|| {
        let mut offset = 0u64;
        while offset < config.segment_bytes_max {
            let len = (config.segment_bytes_max - offset).min(ZERO_CHUNK_BYTES as u64) as usize;
            file.write_all_at(&zeros[..len], offset)?;
            offset += len as u64;
        }
        file.sync_data()
    })();
    if let Err(error) = filled {
        let _ = fs.remove(&path);
        return Err(StorageError::io(
            "zero-filling a spare segment",
            &path,
            error,
        ));
    }
    Ok(file)
}

/// A segment whose file the roll took but that the writer has yet to activate: once the batch
/// holding its header is synced, the writer renames `from` to `to` and syncs the directory.
#[derive(Clone, Debug)]
pub(crate) struct Activation {
    pub segment: SegmentId,
    pub from: PathBuf,
    pub to: PathBuf,
}

/// The file for new segment `header.segment`: a retired segment's file, else the spare, else a
/// new one (see the module docs), with what the writer must do to name it. Called by the roll,
/// under the state lock; only a new file costs it system calls, and none waits on the device.
pub(crate) fn new_segment(
    shared: &Shared,
    state: &mut LogState,
    header: &SegmentHeader,
) -> Result<(Arc<dyn LogFile>, Activation)> {
    let (config, fs) = (&shared.config, shared.fs.as_ref());
    let activation = |from| Activation {
        segment: header.segment,
        from,
        to: config.segment_path(header.segment),
    };
    if let Some(Recyclable { path, file }) = state.recyclable.pop() {
        return Ok((file, activation(path)));
    }
    if let Some(spare) = state.prepared.take() {
        return Ok((spare.file, activation(spare_path(config))));
    }
    let path = config
        .dir
        .join(format!("{}{NEW_SUFFIX}", header.segment.file_name()));
    let file = fs
        .create(&path)
        .map_err(|e| StorageError::io("creating segment", &path, e))?;
    if let Err(error) = file.allocate(config.segment_bytes_max) {
        let _ = fs.remove(&path);
        return Err(StorageError::io("preparing segment", &path, error));
    }
    Ok((file, activation(path)))
}

/// The file for the segment a log starts in at open when it has none to append to (a new log):
/// zero-filled first when `prepare_segments` is on, as every later segment's is. A log that
/// starts in a merely fallocated file pays for it on every sync until that segment is full:
/// each write converts unwritten extents, and the fdatasync then writes the inode as well, a
/// third disk round trip per batch. A fresh broker at 5000 msg/s of 1 KiB stays in that segment
/// for about twelve minutes; measured on fresh brokers, it cost a tenth more broker CPU per
/// message and a quarter more p99 latency.
pub(crate) fn opening_segment(
    config: &WalConfig,
    fs: &dyn FileSystem,
    header: &SegmentHeader,
) -> Result<(Arc<dyn LogFile>, u64)> {
    if config.prepare_segments {
        match prepare(config, fs) {
            Ok(file) => return activate(config, fs, &spare_path(config), file, header),
            Err(error) => {
                tracing::warn!(%error, "could not zero-fill the first segment; allocating it instead");
            }
        }
    }
    super::create_segment(config, fs, header)
}

/// Header, sync, rename to the segment's name, directory sync.
fn activate(
    config: &WalConfig,
    fs: &dyn FileSystem,
    from: &Path,
    file: Arc<dyn LogFile>,
    header: &SegmentHeader,
) -> Result<(Arc<dyn LogFile>, u64)> {
    let to = config.segment_path(header.segment);
    let bytes = segment::encode_header(header);
    (|| {
        file.write_all_at(&bytes, 0)?;
        file.sync_data()?;
        fs.rename(from, &to)?;
        fs.sync_dir(&config.dir)
    })()
    .map_err(|e| StorageError::io("activating a prepared segment", &to, e))?;
    Ok((file, bytes.len() as u64))
}
