//! Space reclamation. A sealed segment that is mostly dead has its live records re-appended at
//! the head of the log; then the index is checkpointed and the segment file deleted.
//!
//! Which records move: a put (or kv-put) moves if the index still points at this copy. A
//! tombstone moves only while a segment it may apply to still exists (any segment other than the
//! victim with an id at or below its `segment_max`): every older copy of the key it deletes lies
//! in such a segment, and a full rebuild from the log must still see it deleted. Moved tombstones
//! are not applied again (they already were); their scope stops them deleting newer copies when
//! a rebuild replays them.
//!
//! A tombstone is needed while a segment that survives this pass may hold a copy it deletes:
//! one with an id at or below its `segment_max` that is not a victim of this pass. Victims are
//! deleted in ascending id order with a directory sync after each, so a crash part-way never
//! leaves an old copy on disk without the tombstone that deletes it (the tombstone's own segment
//! is never below the copies it deletes).
//!
//! Reading a victim is skipped when what is known of it since the log was opened (`Seen`) says
//! that no tombstone in it must move and that all its live records, if any, are definitions:
//! those are found through the index. That is the steady state of queues whose consumers keep
//! up: without it, every pass read a whole segment to move a handful of definitions.
//!
//! Ordering that makes a crash at any step safe: everything queued for the victims is written
//! before they are read (and so before a retired file can be reused), moved copies are durable
//! before the checkpoint, the checkpoint (which no longer points into the victims) is committed
//! before any victim is retired.

use std::collections::BTreeSet;

use super::state::{LogOp, LogState};
use super::{frame_locked, lock, Shared};
use crate::error::{Result, StorageError};
use crate::ids::{Location, Lsn, SegmentId};
use crate::record::RecordKind;
use crate::segment::{self, ScanEnd};

/// What one compaction pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompactionReport {
    pub segments_removed: usize,
    pub records_moved: u64,
    pub bytes_moved: u64,
    pub tombstones_moved: u64,
}

/// Frames moved per hold of the state lock, so appenders are not stalled for long.
const FRAMES_PER_LOCK: usize = 256;

/// Sealed segments this close to the head are compacted only once they are entirely dead: their
/// live records are mostly deliveries in flight that consumers are about to settle, and moving
/// them would write them twice for nothing (the background pass; explicit calls pass 0).
pub(crate) const YOUNG_SEGMENTS: u64 = 2;

pub(crate) fn compact(
    shared: &Shared,
    dead_ratio_min: f64,
    young_segments: u64,
) -> Result<CompactionReport> {
    let _serial = lock(&shared.maintenance);
    let capacity = shared.config.segment_bytes_max as f64;
    let (victims, queued_upto) = {
        let state = lock(&shared.state);
        state.check_usable()?;
        // Bytes still queued for a victim (its last records, its seal) must be in its file
        // before it is read, and before it is retired: a retired file is reused, and a late
        // write would land in the segment that reuses it. Everything queued now is written
        // once this LSN is durable.
        let queued_upto = Lsn(state.next_lsn.0 - 1);
        let young_from = state.active.0.saturating_sub(young_segments);
        let victims: Vec<SegmentId> = state
            .segments
            .iter()
            .filter(|(id, _)| **id < state.active)
            .filter(|(id, s)| {
                if id.0 >= young_from {
                    s.live.records == 0
                } else {
                    1.0 - s.live.bytes as f64 / capacity >= dead_ratio_min
                }
            })
            .map(|(id, _)| *id)
            .collect();
        (victims, queued_upto)
    };
    let mut report = CompactionReport::default();
    if victims.is_empty() {
        return Ok(report);
    }
    shared.wait_durable(queued_upto)?;
    let mut last_lsn = Lsn(0);
    for &victim in &victims {
        last_lsn = last_lsn.max(move_live_records(shared, victim, &victims, &mut report)?);
    }
    shared.wait_durable(last_lsn)?;
    super::checkpoint::checkpoint_serialized(shared)?;
    for &victim in &victims {
        let (still_live, file) = {
            let mut state = lock(&shared.state);
            let live = state
                .segments
                .get(&victim)
                .map(|s| s.live.records)
                .unwrap_or(0);
            let file = (live == 0)
                .then(|| state.segments.remove(&victim))
                .flatten()
                .map(|s| s.file);
            (live, file)
        };
        if still_live > 0 {
            tracing::error!(
                segment = victim.0,
                still_live,
                "segment still has live records after compaction; kept"
            );
            continue;
        }
        // Only compaction removes segments, one pass at a time: a victim is still there.
        let Some(file) = file else {
            tracing::error!(
                segment = victim.0,
                "compacted segment already gone; skipped"
            );
            continue;
        };
        super::preparer::retire(shared, victim, file)?;
        shared
            .fs
            .sync_dir(&shared.config.dir)
            .map_err(|e| StorageError::io("syncing the log directory", &shared.config.dir, e))?;
        report.segments_removed += 1;
    }
    tracing::debug!(?report, "compaction done");
    Ok(report)
}

/// Whether a tombstone with scope `scope` must move: a segment it may apply to survives this pass.
fn tombstone_needed(state: &LogState, victims: &[SegmentId], scope: u64) -> bool {
    state
        .segments
        .keys()
        .any(|id| id.0 <= scope && !victims.contains(id))
}

/// Re-appends the definitions (kv puts) that live in `victim`, found through the index and its
/// overlays. The index does not change meanwhile: checkpoints are serialized with compaction.
/// Returns the last LSN written.
fn move_definitions(
    shared: &Shared,
    victim: SegmentId,
    report: &mut CompactionReport,
) -> Result<Lsn> {
    let index = shared.index.as_ref();
    let mut keys: BTreeSet<Vec<u8>> = index
        .kv_prefix(&[])?
        .into_iter()
        .filter(|(_, location, _)| location.segment == victim)
        .map(|(key, _, _)| key)
        .collect();
    {
        let state = lock(&shared.state);
        for layer in state.kv_layers() {
            for (key, entry) in layer {
                if matches!(entry, Some((location, _)) if location.segment == victim) {
                    keys.insert(key.clone());
                }
            }
        }
    }
    let keys: Vec<Vec<u8>> = keys.into_iter().collect();
    let mut last_lsn = Lsn(0);
    for group in keys.chunks(FRAMES_PER_LOCK) {
        let mut state = shared.lock_with_room()?;
        for key in group {
            let Some((location, value)) = state.kv_lookup(index, key)? else {
                continue;
            };
            if location.segment != victim {
                continue;
            }
            let op = LogOp::KvPut {
                key: key.clone(),
                value,
            };
            let receipt = frame_locked(shared, &mut state, &op, &[], None)?;
            state.apply(index, &op, receipt.location)?;
            last_lsn = receipt.lsn;
            report.records_moved += 1;
            report.bytes_moved += u64::from(receipt.location.frame_bytes);
        }
    }
    Ok(last_lsn)
}

/// Re-appends the victim's live records and needed tombstones. Returns the last LSN written.
fn move_live_records(
    shared: &Shared,
    victim: SegmentId,
    victims: &[SegmentId],
    report: &mut CompactionReport,
) -> Result<Lsn> {
    let config = &shared.config;
    let path = config.segment_path(victim);
    let file = {
        let state = lock(&shared.state);
        let Some(segment) = state.segments.get(&victim) else {
            return Ok(Lsn(0));
        };
        match segment.seen {
            // No tombstone must move and every live record is a definition: the index says
            // where those are, so the segment need not be read.
            Some(seen)
                if seen.kv_live == segment.live.records
                    && !seen
                        .tombstone_reach
                        .is_some_and(|scope| tombstone_needed(&state, victims, scope)) =>
            {
                if segment.live.records == 0 {
                    return Ok(Lsn(0));
                }
                drop(state);
                return move_definitions(shared, victim, report);
            }
            _ => segment.file.clone(),
        }
    };
    let len = file
        .len()
        .map_err(|e| StorageError::io("sizing a segment", &path, e))?;
    let mut buf = vec![0u8; len as usize];
    file.read_exact_at(&mut buf, 0)
        .map_err(|e| StorageError::io("reading a segment", &path, e))?;
    let (header, header_bytes) =
        segment::decode_header(&buf, config.record_bytes_max).map_err(|reason| {
            StorageError::Corrupt {
                segment: victim,
                offset: 0,
                reason: reason.into(),
            }
        })?;
    let mut frames = Vec::new();
    let mut expected = Some(header.first_lsn);
    let end = segment::scan_frames::<()>(
        &buf,
        header_bytes,
        config.record_bytes_max,
        &mut expected,
        |frame| {
            frames.push(frame);
            Ok(())
        },
    )
    .expect("the visitor never fails");
    if let ScanEnd::Bad { offset, reason } = end {
        // A sealed segment was fully synced: anything unreadable in it is corruption.
        return Err(StorageError::Corrupt {
            segment: victim,
            offset,
            reason: reason.into(),
        });
    }

    let index = shared.index.as_ref();
    let mut last_lsn = Lsn(0);
    for group in frames.chunks(FRAMES_PER_LOCK) {
        let mut state = shared.lock_with_room()?;
        for frame in group {
            let location = Location {
                segment: victim,
                offset: frame.offset,
                frame_bytes: frame.frame_bytes as u32,
            };
            let h = &frame.header;
            let op = LogOp::decode(h.kind, h.stream, h.seq, frame.payload)?;
            let keep = match &op {
                LogOp::Put { stream, seq } => state.lookup(index, *stream, *seq)? == Some(location),
                LogOp::KvPut { key, .. } => {
                    state.kv_lookup(index, key)?.map(|(l, _)| l) == Some(location)
                }
                LogOp::Delete { segment_max, .. }
                | LogOp::DeleteRange { segment_max, .. }
                | LogOp::KvDelete { segment_max, .. } => {
                    tombstone_needed(&state, victims, *segment_max)
                }
            };
            if !keep {
                continue;
            }
            let payload = if h.kind == RecordKind::Put {
                frame.payload
            } else {
                &[][..]
            };
            let receipt = frame_locked(shared, &mut state, &op, &[payload], None)?;
            last_lsn = receipt.lsn;
            if h.kind.is_tombstone() {
                report.tombstones_moved += 1;
            } else {
                state.apply(index, &op, receipt.location)?;
                report.records_moved += 1;
                report.bytes_moved += u64::from(receipt.location.frame_bytes);
            }
        }
    }
    Ok(last_lsn)
}
