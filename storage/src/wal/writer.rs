//! The group-commit writer: one thread that takes everything pending, writes it with one
//! positional write per segment touched, fdatasyncs each of those segments once, and completes
//! every waiter up to the batch's last LSN.
//!
//! Batches size themselves: while a sync is in flight, appends accumulate, and the next batch
//! takes them all; an idle log writes a single record at once. Only under load does the writer
//! wait, briefly and bounded by the last sync's duration, for a batch to fill (see `gather`).
//! A failed write or sync poisons the log (DESIGN.md §4): after a failed fdatasync the kernel may
//! have dropped the dirty pages, so retrying could report data durable that is not.

use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant};

use super::preparer::Activation;
use super::state::{Chunk, DurableCallback, LogState};
use super::{lock, Shared};
use crate::error::StorageError;
use crate::ids::Lsn;

/// Pending bytes after which the writer no longer waits for a batch to fill (see `gather`).
pub(crate) const GATHER_BYTES_ENOUGH: usize = 256 << 10;

pub(crate) fn run(shared: &Shared) {
    // Records in the last batch, and how long its write and sync took: under load the next
    // batch waits (briefly) to be as large, see `gather`.
    let mut last_batch_records = 0u64;
    let mut last_sync = Duration::ZERO;
    // Whether the last chunk written went direct (a chunk of settles alone goes the same way).
    let mut last_direct = false;
    loop {
        let (chunks, activations, last_lsn, records, waiting) = {
            let mut state = lock(&shared.state);
            while state.pending.is_empty() && !state.closed {
                state.writer_idle = true;
                state = shared
                    .writer_wake
                    .wait(state)
                    .unwrap_or_else(|p| p.into_inner());
            }
            state.writer_idle = false;
            if state.pending.is_empty() {
                return; // closed and drained
            }
            state = gather(shared, state, last_batch_records, last_sync);
            let mut chunks = std::mem::take(&mut state.pending);
            for chunk in &mut chunks {
                chunk.prepare_write(shared.config.direct_record_bytes_min, last_direct);
                last_direct = chunk.goes_direct();
            }
            let chunks = Arc::new(chunks);
            state.inflight = chunks.clone();
            state.pending_bytes = 0;
            let records = std::mem::take(&mut state.pending_records);
            let waiting = state.progress_waiters > 0;
            // Every roll's header is in the chunks just taken: its activation goes with them. It
            // stays listed until done, so the preparer does not reuse the spare's name meanwhile.
            let activations = state.activations.clone();
            (
                chunks,
                activations,
                state.pending_last_lsn,
                records,
                waiting,
            )
        };
        if waiting {
            shared.progress.notify_all(); // room for more pending bytes
        }
        let bytes: usize = chunks.iter().map(|c| c.own().len()).sum();
        let started = Instant::now();
        let outcome = write_and_sync(shared, &chunks, &activations).map(|written| {
            // The lead of the next chunk of the segment written last. Without it that chunk is
            // written through the page cache, so a failed read-back costs only speed.
            let tail = chunks.last().filter(|c| c.file.direct()).and_then(|c| match c.tail() {
                Ok(tail) => Some(tail),
                Err(error) => {
                    tracing::warn!(segment = c.segment.0, %error,
                        "reading back the log's last block failed; its next batch goes through the page cache");
                    None
                }
            });
            (written, tail)
        });
        last_sync = started.elapsed();
        last_batch_records = records;
        let callbacks: Vec<(Lsn, DurableCallback)>;
        let failed_action;
        let waiting = {
            let mut state = lock(&shared.state);
            state.inflight = Arc::new(Vec::new());
            state.activations.drain(..activations.len());
            match outcome {
                Ok((written, tail)) => {
                    state.durable_lsn = last_lsn;
                    state.counters.batches += 1;
                    state.counters.batch_bytes += bytes as u64;
                    state.counters.syncs += written.syncs;
                    state.counters.direct_writes += written.direct;
                    state.counters.buffered_writes += written.buffered;
                    if let Some(tail) = tail.filter(|t| t.segment == state.active) {
                        state.tail = Some(tail);
                    }
                    callbacks = state.take_ready_waiters();
                    failed_action = None;
                }
                Err(action) => {
                    state.failure = Some(action);
                    callbacks = std::mem::take(&mut state.waiters);
                    failed_action = Some((action, state.durable_lsn));
                }
            }
            if let Ok(chunks) = Arc::try_unwrap(chunks) {
                for chunk in chunks {
                    super::chunk::keep_spare(&mut state.spare_buffers, chunk.into_buffer());
                }
            }
            state.progress_waiters > 0
        };
        if waiting {
            shared.progress.notify_all();
        }
        if !activations.is_empty() {
            shared.prepare_wake.notify_one(); // the spare's name is free again
        }
        for (_, callback) in callbacks {
            match failed_action {
                None => callback(Ok(())),
                Some((action, durable_lsn)) => callback(Err(StorageError::Poisoned {
                    action,
                    durable_lsn,
                })),
            }
        }
        if failed_action.is_some() {
            return;
        }
    }
}

/// Under load, lets the batch fill up before writing it. When the last batch carried several
/// records, their appenders are busy re-issuing right after their completions; a writer that
/// took the first of them at once would sync a tiny batch and leave the rest to wait a whole
/// sync. So it waits until as many records are pending as the last batch had, or half the last
/// sync time has passed, whichever comes first (and never longer than `group_commit_wait_us_max`).
/// After a single-record batch (an idle or lone appender) it never waits, and it stops waiting
/// once `GATHER_BYTES_ENOUGH` are pending: a batch that large costs its bytes more than its sync,
/// so waiting for more only delays it (64 KiB messages with confirm window 100 ran 10-15 %
/// slower with the wait). Appenders wake a gathering writer only when one of those is reached.
fn gather<'a>(
    shared: &'a Shared,
    mut state: MutexGuard<'a, LogState>,
    last_batch_records: u64,
    last_sync: Duration,
) -> MutexGuard<'a, LogState> {
    let wait_max = Duration::from_micros(shared.config.group_commit_wait_us_max);
    if last_batch_records <= 1 || wait_max.is_zero() {
        return state;
    }
    let deadline = Instant::now() + (last_sync / 2).min(wait_max);
    state.writer_wake_at = last_batch_records;
    while state.pending_records < last_batch_records
        && state.pending_bytes < GATHER_BYTES_ENOUGH
        && !state.closed
    {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        state.writer_idle = true;
        state = shared
            .writer_wake
            .wait_timeout(state, deadline - now)
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
    state.writer_idle = false;
    state.writer_wake_at = 1;
    state
}

/// What a batch's write did.
struct Written {
    syncs: u64,
    direct: u64,
    buffered: u64,
}

/// Writes every chunk, syncs every segment written, then names the segments rolled to (see
/// `preparer::Activation`) and syncs the directory once if there were any.
fn write_and_sync(
    shared: &Shared,
    chunks: &[Chunk],
    activations: &[Activation],
) -> Result<Written, &'static str> {
    let mut written = Written {
        syncs: 0,
        direct: 0,
        buffered: 0,
    };
    for chunk in chunks {
        match chunk.write() {
            Ok(true) => written.direct += 1,
            Ok(false) => written.buffered += 1,
            Err(error) => {
                tracing::error!(segment = chunk.segment.0, offset = chunk.offset, %error,
                    dir = %shared.config.dir.display(), "log write failed; the log is poisoned");
                return Err("write");
            }
        }
    }
    let mut last_synced = None;
    for chunk in chunks {
        if last_synced == Some(chunk.segment) {
            continue;
        }
        if let Err(error) = chunk.file.sync_data() {
            tracing::error!(segment = chunk.segment.0, %error,
                dir = %shared.config.dir.display(), "log fdatasync failed; the log is poisoned");
            return Err("fdatasync");
        }
        written.syncs += 1;
        last_synced = Some(chunk.segment);
    }
    for activation in activations {
        debug_assert!(chunks.iter().any(|c| c.segment == activation.segment));
        if let Err(error) = shared.fs.rename(&activation.from, &activation.to) {
            tracing::error!(segment = activation.segment.0, %error, from = %activation.from.display(),
                "naming a new log segment failed; the log is poisoned");
            return Err("rename");
        }
    }
    if !activations.is_empty() {
        if let Err(error) = shared.fs.sync_dir(&shared.config.dir) {
            tracing::error!(%error, dir = %shared.config.dir.display(),
                "syncing the log directory failed; the log is poisoned");
            return Err("directory sync");
        }
    }
    Ok(written)
}
