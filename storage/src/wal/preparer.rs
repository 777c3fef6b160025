//! Segment preparation: a background thread zero-fills the next segment file ahead of time, so
//! that when the log rolls, the new segment's blocks are already written (fdatasync then has no
//! extent conversions to commit) and the roll costs a rename, a header write and two syncs.
//!
//! The spare lives under `<segment file name>.prep` until it is activated; recovery removes
//! any spare left by a crash. If no spare is ready (or preparing failed, for example with
//! ENOSPC), the roll creates the segment itself by fallocate, exactly as without a preparer.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::{lock, Shared, WalConfig};
use crate::error::{Result, StorageError};
use crate::fs::{FileSystem, LogFile};
use crate::ids::SegmentId;
use crate::segment::{self, SegmentHeader};

/// File name suffix of a spare segment.
pub(crate) const SUFFIX: &str = ".prep";
const ZERO_CHUNK_BYTES: usize = 1 << 20;
/// Pause after a failed preparation before trying again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// A zero-filled, synced spare for segment `segment`.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub segment: SegmentId,
    pub file: Arc<dyn LogFile>,
}

fn spare_path(config: &WalConfig, segment: SegmentId) -> PathBuf {
    config.dir.join(format!("{}{SUFFIX}", segment.file_name()))
}

pub(crate) fn run(shared: &Shared) {
    loop {
        let target = {
            let mut state = lock(&shared.state);
            loop {
                if state.closed || state.failure.is_some() {
                    return;
                }
                let wanted = SegmentId(state.active.0 + 1);
                if state.prepared.as_ref().map(|p| p.segment) != Some(wanted) {
                    break wanted;
                }
                state = shared
                    .prepare_wake
                    .wait(state)
                    .unwrap_or_else(|p| p.into_inner());
            }
        };
        match prepare(&shared.config, shared.fs.as_ref(), target) {
            Ok(file) => {
                let mut state = lock(&shared.state);
                let stale = if state.active.0 + 1 == target.0 {
                    state.prepared.replace(Prepared {
                        segment: target,
                        file,
                    })
                } else {
                    Some(Prepared {
                        segment: target,
                        file,
                    }) // the log rolled past it meanwhile
                };
                drop(state);
                if let Some(stale) = stale {
                    discard(&shared.config, shared.fs.as_ref(), stale);
                }
            }
            Err(error) => {
                tracing::warn!(segment = target.0, %error, "could not prepare the next segment; the roll will allocate it");
                let state = lock(&shared.state);
                let _ = shared.prepare_wake.wait_timeout(state, RETRY_AFTER);
            }
        }
    }
}

fn prepare(
    config: &WalConfig,
    fs: &dyn FileSystem,
    segment: SegmentId,
) -> Result<Arc<dyn LogFile>> {
    let path = spare_path(config, segment);
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

/// Turns the spare into segment `header.segment`: rename, header, syncs. Space is already
/// allocated, so this cannot fail with ENOSPC.
pub(crate) fn activate(
    config: &WalConfig,
    fs: &dyn FileSystem,
    prepared: Prepared,
    header: &SegmentHeader,
) -> Result<(Arc<dyn LogFile>, u64)> {
    let from = spare_path(config, prepared.segment);
    let to = config.segment_path(prepared.segment);
    let bytes = segment::encode_header(header);
    (|| {
        fs.rename(&from, &to)?;
        prepared.file.write_all_at(&bytes, 0)?;
        prepared.file.sync_data()?;
        fs.sync_dir(&config.dir)
    })()
    .map_err(|e| StorageError::io("activating a prepared segment", &to, e))?;
    Ok((prepared.file, bytes.len() as u64))
}

pub(crate) fn discard(config: &WalConfig, fs: &dyn FileSystem, prepared: Prepared) {
    let _ = fs.remove(&spare_path(config, prepared.segment));
}
