//! The log's in-memory state, guarded by the one state mutex: where appends go, what is pending
//! for the writer, live-data accounting, and the overlay of index changes made since the last
//! checkpoint.
//!
//! The apply functions here are the single definition of what a record does. Live appends call
//! them with the record they just framed; recovery calls them with each record it replays.
//! Tombstones carry a scope (`segment_max`): they delete only a copy that lies in a segment at or
//! below it, which keeps a tombstone that compaction moved forward from deleting a newer record
//! that reuses the key.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::codec;
use crate::error::{Result, StorageError};
use crate::fs::LogFile;
use crate::ids::{Location, Lsn, SegmentId, StreamId};
use crate::index::{Checkpoint, Index, IndexOp, SegmentLive, StreamLive};
use crate::record::RecordKind;

pub(crate) use super::chunk::{Chunk, Tail};

/// Definitions changed in one overlay: the new location and value, or `None` once deleted.
pub(crate) type KvLayer = BTreeMap<Vec<u8>, Option<(Location, Vec<u8>)>>;

#[derive(Debug)]
pub(crate) struct SegmentState {
    pub file: Arc<dyn LogFile>,
    pub live: SegmentLive,
    /// What is known of the segment's records because every one of them was appended or
    /// replayed since the log was opened; `None` otherwise (it is then read to find out).
    pub seen: Option<Seen>,
}

/// Facts about a segment's records that spare compaction from reading it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Seen {
    /// The highest scope (`segment_max`) of the tombstones it holds, if it holds any.
    pub tombstone_reach: Option<u64>,
    /// How many of its live records are definitions (kv puts): those can be found through the
    /// index without reading the segment.
    pub kv_live: u64,
}

impl SegmentState {
    /// A segment just created: empty.
    pub fn new(file: Arc<dyn LogFile>) -> SegmentState {
        SegmentState {
            file,
            live: SegmentLive::default(),
            seen: Some(Seen::default()),
        }
    }

    /// Notes that record `op` is in this segment.
    pub fn note(&mut self, op: &LogOp) {
        if let (Some(seen), Some(scope)) = (&mut self.seen, op.scope()) {
            seen.tombstone_reach = seen.tombstone_reach.max(Some(scope));
        }
    }
}

/// One stream record's change since the last checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Slot {
    /// Where the record is now; `None` once deleted.
    pub location: Option<Location>,
    /// True if the layers below this overlay (the frozen overlay, then the index) hold no entry
    /// for the key: a record put and deleted since then needs no index change at all, which is
    /// the steady state of a queue whose messages are acked between two checkpoints.
    pub base_absent: bool,
}

/// Index changes not yet committed to the index: `None` is a deletion.
#[derive(Debug, Default)]
pub(crate) struct Overlay {
    pub messages: BTreeMap<(u64, u64), Slot>,
    pub kv: KvLayer,
}

impl Overlay {
    pub fn len(&self) -> usize {
        self.messages.len() + self.kv.len()
    }

    pub fn to_ops(&self) -> Vec<IndexOp> {
        let mut ops = Vec::with_capacity(self.len());
        for (&(stream, seq), slot) in &self.messages {
            ops.push(match slot.location {
                Some(location) => IndexOp::Put {
                    stream: StreamId(stream),
                    seq,
                    location,
                },
                None => IndexOp::Remove {
                    stream: StreamId(stream),
                    seq,
                },
            });
        }
        for (key, entry) in &self.kv {
            ops.push(match entry {
                Some((location, value)) => IndexOp::KvPut {
                    key: key.clone(),
                    location: *location,
                    value: value.clone(),
                },
                None => IndexOp::KvRemove { key: key.clone() },
            });
        }
        ops
    }
}

/// A record's meaning, decoded from its kind and payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum LogOp {
    Put {
        stream: StreamId,
        seq: u64,
    },
    Delete {
        stream: StreamId,
        seq: u64,
        segment_max: u64,
    },
    DeleteRange {
        stream: StreamId,
        from: u64,
        to: u64,
        segment_max: u64,
    },
    KvPut {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    KvDelete {
        key: Vec<u8>,
        segment_max: u64,
    },
}

#[derive(Serialize, Deserialize)]
struct RangePayload {
    to: u64,
    segment_max: u64,
}

#[derive(Serialize, Deserialize)]
struct ScopePayload {
    segment_max: u64,
}

#[derive(Serialize, Deserialize)]
struct KvPutPayload {
    key: Vec<u8>,
    value: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct KvDeletePayload {
    key: Vec<u8>,
    segment_max: u64,
}

impl LogOp {
    /// A tombstone's scope: the highest segment whose copy of its key it deletes.
    pub fn scope(&self) -> Option<u64> {
        match self {
            LogOp::Put { .. } | LogOp::KvPut { .. } => None,
            LogOp::Delete { segment_max, .. }
            | LogOp::DeleteRange { segment_max, .. }
            | LogOp::KvDelete { segment_max, .. } => Some(*segment_max),
        }
    }

    /// Kind, stream, seq and payload of the record that carries this op. Puts carry the caller's
    /// payload, which is passed separately.
    pub fn encode(&self) -> (RecordKind, u64, u64, Vec<u8>) {
        match self {
            LogOp::Put { stream, seq } => (RecordKind::Put, stream.0, *seq, Vec::new()),
            LogOp::Delete {
                stream,
                seq,
                segment_max,
            } => (
                RecordKind::Delete,
                stream.0,
                *seq,
                codec::encode(&ScopePayload {
                    segment_max: *segment_max,
                }),
            ),
            LogOp::DeleteRange {
                stream,
                from,
                to,
                segment_max,
            } => (
                RecordKind::DeleteRange,
                stream.0,
                *from,
                codec::encode(&RangePayload {
                    to: *to,
                    segment_max: *segment_max,
                }),
            ),
            LogOp::KvPut { key, value } => (
                RecordKind::KvPut,
                StreamId::DEFINITIONS.0,
                0,
                codec::encode(&KvPutPayload {
                    key: key.clone(),
                    value: value.clone(),
                }),
            ),
            LogOp::KvDelete { key, segment_max } => (
                RecordKind::KvDelete,
                StreamId::DEFINITIONS.0,
                0,
                codec::encode(&KvDeletePayload {
                    key: key.clone(),
                    segment_max: *segment_max,
                }),
            ),
        }
    }

    pub fn decode(kind: RecordKind, stream: u64, seq: u64, payload: &[u8]) -> Result<LogOp> {
        let stream = StreamId(stream);
        Ok(match kind {
            RecordKind::Put => LogOp::Put { stream, seq },
            RecordKind::Delete => {
                let p: ScopePayload = codec::decode(payload, "delete record")?;
                LogOp::Delete {
                    stream,
                    seq,
                    segment_max: p.segment_max,
                }
            }
            RecordKind::DeleteRange => {
                let p: RangePayload = codec::decode(payload, "delete-range record")?;
                LogOp::DeleteRange {
                    stream,
                    from: seq,
                    to: p.to,
                    segment_max: p.segment_max,
                }
            }
            RecordKind::KvPut => {
                let p: KvPutPayload = codec::decode(payload, "kv-put record")?;
                LogOp::KvPut {
                    key: p.key,
                    value: p.value,
                }
            }
            RecordKind::KvDelete => {
                let p: KvDeletePayload = codec::decode(payload, "kv-delete record")?;
                LogOp::KvDelete {
                    key: p.key,
                    segment_max: p.segment_max,
                }
            }
        })
    }
}

/// Callback run once a record is durable (or the log failed first).
pub type DurableCallback = Box<dyn FnOnce(Result<()>) + Send>;

/// Counters for statistics and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WalCounters {
    pub records: u64,
    pub batches: u64,
    pub batch_bytes: u64,
    pub syncs: u64,
    /// Chunks written with O_DIRECT, and through the page cache.
    pub direct_writes: u64,
    pub buffered_writes: u64,
}

pub(crate) struct LogState {
    pub next_lsn: Lsn,
    pub durable_lsn: Lsn,
    pub active: SegmentId,
    /// Logical end of the active segment, including framed bytes not yet written.
    pub active_len: u64,
    pub segments: BTreeMap<SegmentId, SegmentState>,
    pub streams: HashMap<u64, StreamLive>,
    pub overlay: Overlay,
    /// The batch a checkpoint is committing to the index right now.
    pub frozen: Option<Arc<Overlay>>,
    pub pending: Vec<Chunk>,
    pub pending_bytes: usize,
    pub pending_records: u64,
    pub pending_last_lsn: Lsn,
    /// Chunks the writer is writing now; readers look here too.
    pub inflight: Arc<Vec<Chunk>>,
    pub waiters: Vec<(Lsn, DurableCallback)>,
    pub spare_buffers: Vec<Vec<u8>>,
    /// The active segment's last written bytes: the lead of its next direct chunk.
    pub tail: Option<Tail>,
    /// Set when a write or sync failed: the log accepts nothing more.
    pub failure: Option<&'static str>,
    pub closed: bool,
    /// The spare segment file, zero-filled ahead of time by the preparer.
    pub prepared: Option<super::preparer::Prepared>,
    /// Retired segment files kept for reuse as spares (see `wal::preparer`).
    pub recyclable: Vec<super::preparer::Recyclable>,
    /// Segments rolled to whose files the writer has yet to name (see `preparer::Activation`),
    /// in roll order; the writer takes them with the batch that holds their headers.
    pub activations: Vec<super::preparer::Activation>,
    /// Set by a roll that found dead sealed segments while fewer retired files wait than are
    /// kept: the maintenance thread compacts at once rather than at its next interval, so the
    /// rolls that follow find files to reuse.
    pub compaction_due: bool,
    /// Opening the log truncated a torn tail.
    pub torn_tail_repaired: bool,
    /// The writer is waiting for work: only then does an append need to wake it (a condvar
    /// notify is a syscall, too dear to pay on every append).
    pub writer_idle: bool,
    /// While idle, the writer wants waking once this many records are pending (1 when it waits
    /// for any work; more while it gathers a batch).
    pub writer_wake_at: u64,
    /// Threads waiting on `Shared::progress`: the writer notifies it only when there are some
    /// (a notify is a futex syscall, two per batch otherwise, with nobody waiting in the steady
    /// state of a broker, whose appenders never block).
    pub progress_waiters: u32,
    pub counters: WalCounters,
}

impl std::fmt::Debug for LogState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogState")
            .field("next_lsn", &self.next_lsn)
            .field("durable_lsn", &self.durable_lsn)
            .field("active", &self.active)
            .field("active_len", &self.active_len)
            .field("segments", &self.segments.len())
            .field("pending_bytes", &self.pending_bytes)
            .field("failure", &self.failure)
            .finish_non_exhaustive()
    }
}

impl LogState {
    pub fn check_usable(&self) -> Result<()> {
        if let Some(action) = self.failure {
            return Err(StorageError::Poisoned {
                action,
                durable_lsn: self.durable_lsn,
            });
        }
        if self.closed {
            return Err(StorageError::Closed);
        }
        Ok(())
    }

    pub fn lookup(
        &self,
        index: &dyn Index,
        stream: StreamId,
        seq: u64,
    ) -> Result<Option<Location>> {
        if let Some(slot) = self.overlay.messages.get(&(stream.0, seq)) {
            return Ok(slot.location);
        }
        self.lookup_below_overlay(index, stream, seq)
    }

    fn lookup_below_overlay(
        &self,
        index: &dyn Index,
        stream: StreamId,
        seq: u64,
    ) -> Result<Option<Location>> {
        if let Some(slot) = self
            .frozen
            .as_ref()
            .and_then(|f| f.messages.get(&(stream.0, seq)))
        {
            return Ok(slot.location);
        }
        index.get(stream, seq)
    }

    /// The definitions changed since the last checkpoint: the frozen overlay's, then the
    /// overlay's (later layers win).
    pub fn kv_layers(&self) -> impl Iterator<Item = &KvLayer> {
        self.frozen
            .iter()
            .map(|f| &f.kv)
            .chain(std::iter::once(&self.overlay.kv))
    }

    pub fn kv_lookup(&self, index: &dyn Index, key: &[u8]) -> Result<Option<(Location, Vec<u8>)>> {
        if let Some(entry) = self.overlay.kv.get(key) {
            return Ok(entry.clone());
        }
        if let Some(entry) = self.frozen.as_ref().and_then(|f| f.kv.get(key)) {
            return Ok(entry.clone());
        }
        index.kv_get(key)
    }

    /// Live entries of `stream` with `from <= seq < to`, at most `limit`, merged from the index
    /// and the overlays.
    pub fn live_range(
        &self,
        index: &dyn Index,
        stream: StreamId,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Location)>> {
        if from >= to || limit == 0 {
            return Ok(Vec::new());
        }
        // A merge of the three layers in seq order (the overlay wins over the frozen overlay,
        // which wins over the index) that stops at `limit` live entries: the work is bounded by
        // what is returned (and the deletions passed on the way), not by the overlay's size. A
        // queue reading its next messages back from the log asks for a few hundred from an
        // overlay that may hold a checkpoint's worth of entries.
        let range = (stream.0, from)..(stream.0, to);
        let mut newest = layer_range(Some(&self.overlay.messages), range.clone());
        let mut frozen = layer_range(self.frozen.as_ref().map(|f| &f.messages), range);
        let mut below = IndexPages::new(index, stream, from, to, limit.min(INDEX_PAGE_MAX));
        let mut out = Vec::new();
        loop {
            let heads = [
                newest.peek().map(|(seq, _)| *seq),
                frozen.peek().map(|(seq, _)| *seq),
                below.peek()?.map(|(seq, _)| seq),
            ];
            let Some(seq) = heads.iter().flatten().min().copied() else {
                return Ok(out);
            };
            let from_index = below.next_if_seq(seq)?.map(|(_, location)| Some(location));
            let from_frozen = frozen.next_if(|(s, _)| *s == seq).map(|(_, l)| l);
            let from_newest = newest.next_if(|(s, _)| *s == seq).map(|(_, l)| l);
            if let Some(location) = from_newest.or(from_frozen).or(from_index).flatten() {
                out.push((seq, location));
                if out.len() == limit {
                    return Ok(out);
                }
            }
        }
    }

    fn account(&mut self, stream: u64, seq: u64, location: &Location, live: bool) {
        let bytes = u64::from(location.frame_bytes);
        if let Some(segment) = self.segments.get_mut(&location.segment) {
            let kv = match &mut segment.seen {
                Some(seen) if stream == StreamId::DEFINITIONS.0 => Some(&mut seen.kv_live),
                _ => None,
            };
            if live {
                segment.live.records += 1;
                segment.live.bytes += bytes;
                if let Some(kv) = kv {
                    *kv += 1;
                }
            } else {
                segment.live.records = segment.live.records.saturating_sub(1);
                segment.live.bytes = segment.live.bytes.saturating_sub(bytes);
                if let Some(kv) = kv {
                    *kv = kv.saturating_sub(1);
                }
            }
        }
        let entry = self.streams.entry(stream).or_default();
        if live {
            entry.records += 1;
            entry.bytes += bytes;
            entry.seq_bound = entry.seq_bound.max(seq);
        } else {
            entry.records = entry.records.saturating_sub(1);
            entry.bytes = entry.bytes.saturating_sub(bytes);
            if entry.records == 0 {
                self.streams.remove(&stream);
            }
        }
    }

    fn remove_entry(
        &mut self,
        index: &dyn Index,
        stream: StreamId,
        seq: u64,
        scope: u64,
    ) -> Result<()> {
        let key = (stream.0, seq);
        let slot = self.overlay.messages.get(&key).copied();
        let previous = match slot {
            Some(slot) => slot.location,
            None => self.lookup_below_overlay(index, stream, seq)?,
        };
        let Some(previous) = previous.filter(|p| p.segment.0 <= scope) else {
            return Ok(());
        };
        self.account(stream.0, seq, &previous, false);
        match slot {
            // Put and deleted since the layers below last heard of it: nothing to tell them.
            Some(Slot {
                base_absent: true, ..
            }) => {
                self.overlay.messages.remove(&key);
            }
            _ => {
                self.overlay.messages.insert(
                    key,
                    Slot {
                        location: None,
                        base_absent: false,
                    },
                );
            }
        }
        Ok(())
    }

    fn put_entry(
        &mut self,
        index: &dyn Index,
        stream: StreamId,
        seq: u64,
        location: Location,
    ) -> Result<()> {
        let key = (stream.0, seq);
        let slot = self.overlay.messages.get(&key).copied();
        let (previous, base_absent) = match slot {
            Some(slot) => (slot.location, slot.base_absent),
            None => {
                // Above the stream's bound nothing can be replaced, in any layer.
                let may_exist = self
                    .streams
                    .get(&stream.0)
                    .is_some_and(|s| seq <= s.seq_bound);
                let previous = if may_exist {
                    self.lookup_below_overlay(index, stream, seq)?
                } else {
                    None
                };
                (previous, previous.is_none())
            }
        };
        if let Some(previous) = previous {
            self.account(stream.0, seq, &previous, false);
        }
        self.account(stream.0, seq, &location, true);
        self.overlay.messages.insert(
            key,
            Slot {
                location: Some(location),
                base_absent,
            },
        );
        Ok(())
    }

    /// Applies the meaning of a record at `location` to the in-memory state.
    pub fn apply(&mut self, index: &dyn Index, op: &LogOp, location: Location) -> Result<()> {
        match op {
            LogOp::Put { stream, seq } => self.put_entry(index, *stream, *seq, location)?,
            LogOp::Delete {
                stream,
                seq,
                segment_max,
            } => {
                self.remove_entry(index, *stream, *seq, *segment_max)?;
            }
            LogOp::DeleteRange {
                stream,
                from,
                to,
                segment_max,
            } => {
                for (seq, _) in self.live_range(index, *stream, *from, *to, usize::MAX)? {
                    self.remove_entry(index, *stream, seq, *segment_max)?;
                }
            }
            LogOp::KvPut { key, value } => {
                if let Some((previous, _)) = self.kv_lookup(index, key)? {
                    self.account(StreamId::DEFINITIONS.0, 0, &previous, false);
                }
                self.account(StreamId::DEFINITIONS.0, 0, &location, true);
                self.overlay
                    .kv
                    .insert(key.clone(), Some((location, value.clone())));
            }
            LogOp::KvDelete { key, segment_max } => {
                if let Some((previous, _)) = self.kv_lookup(index, key)? {
                    if previous.segment.0 <= *segment_max {
                        self.account(StreamId::DEFINITIONS.0, 0, &previous, false);
                        self.overlay.kv.insert(key.clone(), None);
                    }
                }
            }
        }
        Ok(())
    }

    /// The checkpoint describing the state right now (with the overlay about to be frozen).
    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            next_lsn: self.next_lsn,
            segment: self.active.0,
            offset: self.active_len,
            segments: self.segments.iter().map(|(id, s)| (id.0, s.live)).collect(),
            streams: self.streams.iter().map(|(&id, &live)| (id, live)).collect(),
        }
    }

    /// Total bytes the segment files occupy (each is preallocated to its full size).
    pub fn live_bytes(&self) -> u64 {
        self.segments.values().map(|s| s.live.bytes).sum()
    }

    /// Takes the durable waiters whose records are now durable.
    pub fn take_ready_waiters(&mut self) -> Vec<(Lsn, DurableCallback)> {
        let durable = self.durable_lsn;
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiters)
            .into_iter()
            .partition(|(lsn, _)| *lsn <= durable);
        self.waiters = waiting;
        ready
    }
}

/// One overlay layer's slots in `range`, as (seq, location or deleted), in seq order.
fn layer_range(
    slots: Option<&BTreeMap<(u64, u64), Slot>>,
    range: std::ops::Range<(u64, u64)>,
) -> std::iter::Peekable<impl Iterator<Item = (u64, Option<Location>)> + '_> {
    slots
        .into_iter()
        .flat_map(move |slots| slots.range(range.clone()))
        .map(|(&(_, seq), slot)| (seq, slot.location))
        .peekable()
}

/// Index entries read ahead per call to the index while merging (see `live_range`).
const INDEX_PAGE_MAX: usize = 1024;

/// A stream's index entries in `[from, to)`, in seq order, read a page at a time.
struct IndexPages<'a> {
    index: &'a dyn Index,
    stream: StreamId,
    next_from: u64,
    to: u64,
    page: usize,
    buffered: std::collections::VecDeque<(u64, Location)>,
    exhausted: bool,
}

impl<'a> IndexPages<'a> {
    fn new(index: &'a dyn Index, stream: StreamId, from: u64, to: u64, page: usize) -> Self {
        IndexPages {
            index,
            stream,
            next_from: from,
            to,
            page: page.max(1),
            buffered: std::collections::VecDeque::new(),
            exhausted: false,
        }
    }

    fn peek(&mut self) -> Result<Option<(u64, Location)>> {
        if self.buffered.is_empty() && !self.exhausted {
            let page = self
                .index
                .range(self.stream, self.next_from, self.to, self.page)?;
            self.exhausted = page.len() < self.page;
            if let Some((seq, _)) = page.last() {
                self.next_from = seq.saturating_add(1);
                self.exhausted |= self.next_from >= self.to;
            }
            self.buffered.extend(page);
        }
        Ok(self.buffered.front().copied())
    }

    /// The next entry if it is for `seq`.
    fn next_if_seq(&mut self, seq: u64) -> Result<Option<(u64, Location)>> {
        Ok(match self.peek()? {
            Some((s, _)) if s == seq => self.buffered.pop_front(),
            _ => None,
        })
    }
}
