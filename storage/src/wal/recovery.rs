//! Opening the log: find the segments, decide where replay starts, replay, and repair a torn
//! tail, refusing (with the segment and offset) anything that looks like lost synced data.
//!
//! Where replay starts: at the index checkpoint if the index has one, its segment still exists,
//! and every segment it counted live data in still exists; otherwise the index is cleared and
//! rebuilt from the first segment. Replay first re-reads the checkpoint's segment up to the
//! checkpoint and checks every frame there (the index must agree with the log).
//!
//! Torn tail or corruption: a scan stops at the first thing that is not the next frame (nor the
//! segment's seal, nor zeros), at (segment S, offset O) where record L was expected. If any valid
//! frame anywhere after that point (stale frames of a recycled file aside: they carry LSNs below
//! their segment's first) carries `durable_lsn >= L`, record L had been synced before that frame
//! was written, so its loss is corruption: open fails with `Corrupt { S, O }`. Otherwise nothing
//! after O was ever reported durable; O is the torn end of the log: the segment is truncated
//! there and any later segment (which can only hold unsynced bytes) is removed. Each segment is
//! fdatasynced before it is trusted, so bytes a killed process left in the page cache are made
//! durable before anyone is told they are.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::state::{LogOp, LogState, Overlay, Seen, SegmentState, WalCounters};
use super::{preparer, WalConfig};
use crate::error::{Result, StorageError};
use crate::fs::{FileSystem, LogFile};
use crate::ids::{Location, Lsn, SegmentId};
use crate::index::{Checkpoint, Index, SegmentLive};
use crate::segment::{self, ScanEnd, SegmentHeader};

struct Recovery<'a> {
    config: &'a WalConfig,
    fs: &'a dyn FileSystem,
    index: &'a dyn Index,
    files: BTreeMap<SegmentId, Arc<dyn LogFile>>,
    torn_tail_repaired: bool,
}

pub(crate) fn recover(
    config: &WalConfig,
    fs: &dyn FileSystem,
    index: &dyn Index,
) -> Result<LogState> {
    let dir = &config.dir;
    fs.create_dir_all(dir)
        .map_err(|e| StorageError::io("creating the log directory", dir, e))?;
    let names = fs
        .list(dir)
        .map_err(|e| StorageError::io("listing the log directory", dir, e))?;
    let mut files = BTreeMap::new();
    for id in names
        .iter()
        .filter_map(|name| SegmentId::parse_file_name(name))
    {
        let path = config.segment_path(id);
        files.insert(
            id,
            fs.open(&path)
                .map_err(|e| StorageError::io("opening segment", &path, e))?,
        );
    }
    let mut recovery = Recovery {
        config,
        fs,
        index,
        files,
        torn_tail_repaired: false,
    };
    let checkpoint = index.load_checkpoint()?;
    let replay_from = checkpoint
        .clone()
        .filter(|cp| recovery.checkpoint_usable(cp));
    if replay_from.is_none() {
        if checkpoint.is_some() {
            tracing::warn!("the index checkpoint refers to segments that are gone; rebuilding the index from the log");
        }
        index.clear()?;
    }
    super::preparer::remove_leftovers(config, fs, &names);
    let mut state = recovery.replay(replay_from.as_ref())?;
    state.torn_tail_repaired = recovery.torn_tail_repaired;
    if let Some(cp) = &checkpoint {
        if cp.next_lsn > state.next_lsn {
            return Err(StorageError::IndexAheadOfLog {
                checkpoint: cp.next_lsn,
                log_end: state.next_lsn,
            });
        }
    }
    tracing::info!(
        dir = %dir.display(),
        segments = state.segments.len(),
        next_lsn = state.next_lsn.0,
        rebuilt = replay_from.is_none(),
        "log recovered"
    );
    Ok(state)
}

fn read_all(file: &dyn LogFile, path: &std::path::Path) -> Result<Vec<u8>> {
    let len = file
        .len()
        .map_err(|e| StorageError::io("sizing segment", path, e))?;
    let mut buf = vec![0u8; len as usize];
    file.read_exact_at(&mut buf, 0)
        .map_err(|e| StorageError::io("reading segment", path, e))?;
    Ok(buf)
}

impl Recovery<'_> {
    fn checkpoint_usable(&self, cp: &Checkpoint) -> bool {
        self.files.contains_key(&cp.segment_id())
            && cp
                .segments
                .iter()
                .all(|(id, live)| live.records == 0 || self.files.contains_key(&SegmentId(*id)))
    }

    fn new_state(&self, checkpoint: Option<&Checkpoint>) -> LogState {
        let live: HashMap<u64, SegmentLive> = checkpoint
            .map(|cp| cp.segments.iter().copied().collect())
            .unwrap_or_default();
        LogState {
            next_lsn: Lsn(1),
            durable_lsn: Lsn(0),
            active: SegmentId(0),
            active_len: 0,
            segments: self
                .files
                .iter()
                .map(|(id, file)| {
                    let live = live.get(&id.0).copied().unwrap_or_default();
                    (
                        *id,
                        SegmentState {
                            file: file.clone(),
                            live,
                            seen: None, // known once replayed whole
                        },
                    )
                })
                .collect(),
            streams: checkpoint
                .map(|cp| cp.streams.iter().copied().collect())
                .unwrap_or_default(),
            overlay: Overlay::default(),
            frozen: None,
            pending: Vec::new(),
            pending_bytes: 0,
            pending_records: 0,
            pending_last_lsn: Lsn(0),
            inflight: Arc::new(Vec::new()),
            waiters: Vec::new(),
            spare_buffers: Vec::new(),
            tail: None,
            failure: None,
            closed: false,
            writer_idle: false,
            writer_wake_at: 1,
            progress_waiters: 0,
            prepared: None,
            recyclable: Vec::new(),
            activations: Vec::new(),
            compaction_due: false,
            torn_tail_repaired: false,
            counters: WalCounters::default(),
        }
    }

    /// The highest durable claim of any frame after `offset` in `buf` or in any segment after
    /// `segment`.
    fn durable_claim_after(
        &self,
        segment: SegmentId,
        buf: &[u8],
        offset: usize,
    ) -> Result<Option<Lsn>> {
        let max = self.config.record_bytes_max;
        // Frames below a segment's first LSN are a recycled file's stale contents. A segment
        // whose header does not decode has all its frames counted (the cautious side).
        let lsn_min = |buf: &[u8]| {
            segment::decode_header(buf, max).map_or(Lsn(0), |(header, _)| header.first_lsn)
        };
        let mut best = segment::max_durable_claim(buf, offset + 1, max, lsn_min(buf));
        for (id, file) in self.files.range(SegmentId(segment.0 + 1)..) {
            let later = read_all(file.as_ref(), &self.config.segment_path(*id))?;
            best = best.max(segment::max_durable_claim(&later, 0, max, lsn_min(&later)));
        }
        Ok(best)
    }

    /// Handles a stop at (segment, offset) where `expected` was due: corruption if something
    /// later proves `expected` had been synced, else the torn end of the log.
    fn bad_point(
        &mut self,
        segment: SegmentId,
        buf: &[u8],
        offset: u64,
        expected: Lsn,
        reason: &'static str,
    ) -> Result<()> {
        if let Some(claim) = self.durable_claim_after(segment, buf, offset as usize)? {
            if claim >= expected {
                tracing::error!(
                    segment = segment.0,
                    offset,
                    reason,
                    "corrupt record inside the synced log"
                );
                return Err(StorageError::Corrupt {
                    segment,
                    offset,
                    reason: reason.into(),
                });
            }
        }
        tracing::warn!(
            segment = segment.0,
            offset,
            reason,
            lsn = expected.0,
            "truncating the torn tail of the log"
        );
        self.torn_tail_repaired = true;
        let path = self.config.segment_path(segment);
        let file = self.files[&segment].clone();
        (|| {
            file.set_len(offset)?;
            file.allocate(self.config.segment_bytes_max)?;
            file.sync_data()
        })()
        .map_err(|e| StorageError::io("truncating the torn tail", &path, e))?;
        self.remove_after(segment)
    }

    fn remove_after(&mut self, segment: SegmentId) -> Result<()> {
        let later: Vec<SegmentId> = self
            .files
            .range(SegmentId(segment.0 + 1)..)
            .map(|(id, _)| *id)
            .collect();
        for id in &later {
            let path = self.config.segment_path(*id);
            self.fs
                .remove(&path)
                .map_err(|e| StorageError::io("removing an unsynced segment", &path, e))?;
            self.files.remove(id);
        }
        if !later.is_empty() {
            tracing::warn!(
                removed = later.len(),
                "removed segments that held only unsynced records"
            );
            self.sync_dir()?;
        }
        Ok(())
    }

    fn sync_dir(&self) -> Result<()> {
        self.fs
            .sync_dir(&self.config.dir)
            .map_err(|e| StorageError::io("syncing the log directory", &self.config.dir, e))
    }

    fn replay(&mut self, checkpoint: Option<&Checkpoint>) -> Result<LogState> {
        let mut state = self.new_state(checkpoint);
        let first = checkpoint.map(|cp| cp.segment_id()).unwrap_or(SegmentId(0));
        let ids: Vec<SegmentId> = self.files.range(first..).map(|(id, _)| *id).collect();
        let mut expected: Option<Lsn> = checkpoint.map(|cp| cp.next_lsn);
        let mut previous: Option<(SegmentId, u64)> = None;
        let max = self.config.record_bytes_max;
        for (position, &id) in ids.iter().enumerate() {
            if !self.files.contains_key(&id) {
                break; // removed as part of a torn tail
            }
            let path = self.config.segment_path(id);
            let file = self.files[&id].clone();
            file.sync_data()
                .map_err(|e| StorageError::io("syncing segment before replay", &path, e))?;
            let buf = read_all(file.as_ref(), &path)?;
            let header = match segment::decode_header(&buf, max) {
                Ok((header, _)) if header.segment != id => {
                    return Err(StorageError::Corrupt {
                        segment: id,
                        offset: 0,
                        reason: "header names another segment".into(),
                    });
                }
                Ok((header, bytes)) => (header, bytes as u64),
                Err(reason) if position + 1 == ids.len() => {
                    // Its header is synced before the segment is used, so a torn header means
                    // the crash came while creating it: it holds nothing.
                    tracing::warn!(
                        segment = id.0,
                        reason,
                        "removing a segment whose creation was interrupted"
                    );
                    self.fs
                        .remove(&path)
                        .map_err(|e| StorageError::io("removing a torn segment", &path, e))?;
                    self.files.remove(&id);
                    state.segments.remove(&id);
                    self.sync_dir()?;
                    break;
                }
                Err(reason) => {
                    return Err(StorageError::Corrupt {
                        segment: id,
                        offset: 0,
                        reason: reason.into(),
                    });
                }
            };
            let (header, header_bytes): (SegmentHeader, u64) = header;
            let start = if let (Some(cp), 0) = (checkpoint, position) {
                self.verify_checkpoint_prefix(&buf, &header, header_bytes, cp)?;
                cp.offset
            } else {
                if let (Some((previous_id, previous_end)), Some(due)) = (previous, expected) {
                    if header.first_lsn < due {
                        return Err(StorageError::Corrupt {
                            segment: id,
                            offset: 0,
                            reason: format!(
                                "segment starts at lsn {} but lsn {} came before it",
                                header.first_lsn.0,
                                due.0 - 1
                            ),
                        });
                    }
                    if header.first_lsn > due && previous_id.0 + 1 == id.0 {
                        // The previous segment lost records at its end.
                        let previous_buf = read_all(
                            self.files[&previous_id].as_ref(),
                            &self.config.segment_path(previous_id),
                        )?;
                        self.bad_point(
                            previous_id,
                            &previous_buf,
                            previous_end,
                            due,
                            "records missing at the end of the segment",
                        )?;
                        state.segments.retain(|sid, _| self.files.contains_key(sid));
                        break;
                    }
                }
                expected = Some(header.first_lsn);
                if let Some(segment) = state.segments.get_mut(&id) {
                    segment.seen = Some(Seen::default()); // every record of it is replayed
                }
                header_bytes
            };
            state.active = id;
            let index = self.index;
            let checkpoint_ops_max = self.config.checkpoint_ops_max;
            let end = segment::scan_frames(&buf, start as usize, max, &mut expected, |frame| {
                let h = &frame.header;
                let op = LogOp::decode(h.kind, h.stream, h.seq, frame.payload)?;
                let location = Location {
                    segment: id,
                    offset: frame.offset,
                    frame_bytes: frame.frame_bytes as u32,
                };
                state.apply(index, &op, location)?;
                if let Some(segment) = state.segments.get_mut(&id) {
                    segment.note(&op);
                }
                state.next_lsn = Lsn(h.lsn.0 + 1);
                state.active_len = frame.offset + frame.frame_bytes as u64;
                if state.overlay.len() >= checkpoint_ops_max {
                    // Bound memory during a long replay: the records so far are synced (above).
                    index.commit(&state.overlay.to_ops(), &state.checkpoint())?;
                    state.overlay = Overlay::default();
                }
                Ok::<(), StorageError>(())
            })?;
            match end {
                ScanEnd::Clean { offset } => {
                    state.active_len = offset;
                    previous = Some((id, offset));
                }
                ScanEnd::Bad { offset, reason } => {
                    let due = expected.expect("set from the header or checkpoint");
                    self.bad_point(id, &buf, offset, due, reason)?;
                    state.segments.retain(|sid, _| self.files.contains_key(sid));
                    state.active_len = offset;
                    break;
                }
            }
        }
        if let Some(due) = expected {
            state.next_lsn = due;
        }
        state.durable_lsn = Lsn(state.next_lsn.0 - 1);
        match self.files.keys().next_back().copied() {
            Some(last) if state.segments.contains_key(&last) && state.active == last => {}
            last => {
                // No usable segment is left to append to: start a new one after the last id.
                let id = SegmentId(last.map(|l| l.0).unwrap_or(0).max(state.active.0) + 1);
                let header = SegmentHeader {
                    segment: id,
                    first_lsn: state.next_lsn,
                    durable_lsn: state.durable_lsn,
                };
                let (file, header_bytes) =
                    preparer::opening_segment(self.config, self.fs, &header)?;
                self.files.insert(id, file.clone());
                state.segments.insert(id, SegmentState::new(file));
                state.active = id;
                state.active_len = header_bytes;
            }
        }
        Ok(state)
    }

    /// Checks that the checkpoint's segment holds valid, contiguous frames up to the checkpoint.
    fn verify_checkpoint_prefix(
        &self,
        buf: &[u8],
        header: &SegmentHeader,
        header_bytes: u64,
        cp: &Checkpoint,
    ) -> Result<()> {
        let corrupt = |offset: u64, reason: String| StorageError::Corrupt {
            segment: header.segment,
            offset,
            reason,
        };
        if cp.offset > buf.len() as u64 || cp.offset < header_bytes {
            return Err(corrupt(
                cp.offset,
                "the index checkpoint points outside its segment".into(),
            ));
        }
        let mut expected = Some(header.first_lsn);
        let end = segment::scan_frames::<()>(
            &buf[..cp.offset as usize],
            header_bytes as usize,
            self.config.record_bytes_max,
            &mut expected,
            |_| Ok(()),
        )
        .expect("the visitor never fails");
        match end {
            ScanEnd::Clean { offset } if offset == cp.offset && expected == Some(cp.next_lsn) => {
                Ok(())
            }
            ScanEnd::Clean { offset } | ScanEnd::Bad { offset, .. } => Err(corrupt(
                offset,
                format!(
                    "records covered by the index checkpoint (up to lsn {}) are damaged or missing",
                    cp.next_lsn.0 - 1
                ),
            )),
        }
    }
}
