//! The index: where each live record of each stream is, the definitions key-value namespace,
//! and the checkpoint that says how much of the log the index already reflects.
//!
//! The log is the source of truth. The index only ever receives whole checkpoints: a batch of
//! changes plus the [`Checkpoint`] they bring it to, applied atomically by [`Index::commit`].
//! After a crash it therefore holds exactly some earlier checkpoint, and recovery replays the
//! log from there. If it is lost or unreadable it is rebuilt from the log.

mod memory;
mod sled;

use std::fmt::Debug;

use serde::{Deserialize, Serialize};

pub use self::memory::MemoryIndex;
pub use self::sled::SledIndex;
use crate::error::Result;
use crate::ids::{Location, Lsn, SegmentId, StreamId};

/// Live data accounted to one segment at a checkpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentLive {
    pub records: u64,
    pub bytes: u64,
}

/// Live data of one stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamLive {
    pub records: u64,
    pub bytes: u64,
    /// An upper bound of the stream's live seqs: a put above it replaces nothing, so it needs
    /// no index lookup (queues and raft logs append in increasing seq order).
    pub seq_bound: u64,
}

/// The state of the index relative to the log: every record with `lsn < next_lsn` is reflected;
/// replay starts at `next_lsn`, which is (or will be) at `position` in `segment`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub next_lsn: Lsn,
    pub segment: u64,
    pub offset: u64,
    /// Live data per segment, for every segment that existed at the checkpoint.
    pub segments: Vec<(u64, SegmentLive)>,
    pub streams: Vec<(u64, StreamLive)>,
}

impl Checkpoint {
    pub fn segment_id(&self) -> SegmentId {
        SegmentId(self.segment)
    }
}

/// A definitions entry as the index holds it: key, where its record is, value.
pub type KvEntry = (Vec<u8>, Location, Vec<u8>);

/// One change to the index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IndexOp {
    Put {
        stream: StreamId,
        seq: u64,
        location: Location,
    },
    Remove {
        stream: StreamId,
        seq: u64,
    },
    KvPut {
        key: Vec<u8>,
        location: Location,
        value: Vec<u8>,
    },
    KvRemove {
        key: Vec<u8>,
    },
}

/// Storage for the index. Implementations must make `commit` atomic: after a crash the index
/// reads as of one whole commit, never part of one.
pub trait Index: Send + Sync + Debug {
    /// The checkpoint of the last commit, or `None` for an empty (new or lost) index.
    fn load_checkpoint(&self) -> Result<Option<Checkpoint>>;
    fn get(&self, stream: StreamId, seq: u64) -> Result<Option<Location>>;
    /// Up to `limit` entries of `stream` with `from <= seq < to`, in seq order.
    fn range(
        &self,
        stream: StreamId,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Location)>>;
    fn kv_get(&self, key: &[u8]) -> Result<Option<(Location, Vec<u8>)>>;
    /// Every key starting with `prefix`, in key order.
    fn kv_prefix(&self, prefix: &[u8]) -> Result<Vec<KvEntry>>;
    /// Applies `ops` and records `checkpoint`, atomically, and flushes.
    fn commit(&self, ops: &[IndexOp], checkpoint: &Checkpoint) -> Result<()>;
    /// Empties the index (before a rebuild from the log).
    fn clear(&self) -> Result<()>;
}
