//! `warren-storage`: the node's write-ahead log and its index.
//!
//! Every durable queue and every raft group of a Warren node writes into one [`Wal`]: one
//! stream of appends, one fdatasync for many records of many streams. The crate knows nothing of
//! AMQP, tokio or raft.
//!
//! # Module map
//! - [`wal`]: the log: append, group commit (`wal/writer.rs`), recovery (`wal/recovery.rs`),
//!   checkpoints (`wal/checkpoint.rs`), compaction (`wal/compaction.rs`), in-memory state and
//!   the meaning of each record (`wal/state.rs`).
//! - [`record`]: the frame of one record. [`segment`]: segment files and scanning.
//! - [`index`]: the index trait, its sled implementation and an in-memory one for tests.
//! - [`fs`]: file I/O behind a trait; the real file system and a fault-injecting simulator.
//! - [`ids`], [`error`], `codec` (the one place bincode is used).
//!
//! # On disk
//! `DIR/00000000000000000001.wal`, `…2.wal`, …: segment files, each preallocated to
//! `segment_bytes_max`, starting with a header frame (segment id, first LSN) and followed by
//! record frames, each 8-byte aligned (layout in [`record`]), ended by a seal frame once the
//! log moves on or closes. `DIR/<segment>.wal.<lsn>.free`: retired segments kept for reuse;
//! `DIR/spare.prep`: a zero-filled spare (both in `wal/preparer.rs`). `DIR/index/`: the sled
//! index.
//!
//! Records: `put(stream, seq, payload)` stores or replaces a record; `delete(stream, seq)` and
//! `delete_range(stream, from, to)` remove; `kv_put(key, value)` and `kv_delete(key)` maintain
//! a definitions namespace. Every record gets a dense, increasing LSN.
//!
//! # Durability contract
//! 1. `append` (and every other write) returns once the record is framed into memory: it is
//!    readable at once, and durable once [`Wal::durable_lsn`] reaches its LSN
//!    ([`Wal::wait_durable`], [`Wal::on_durable`]).
//! 2. The writer thread writes each batch, then fdatasyncs every segment it wrote, then moves
//!    the durable LSN and runs the callbacks. A new segment's header and directory entry are
//!    synced before any record goes into it.
//! 3. A failed write or fdatasync poisons the log: every waiter and every later write fails with
//!    [`StorageError::Poisoned`]. ENOSPC is taken when a segment is created (segments are
//!    preallocated), so it fails only the append that needed the new segment; nothing else
//!    changes and appends succeed again once space is freed.
//! 4. The index is a cache of the log. A checkpoint commits the changes since the last one
//!    atomically with the position replay must start from, and only once every record it
//!    covers is durable. The index never holds anything the log could not rebuild.
//! 5. Recovery replays from the checkpoint (or rebuilds the index from the whole log), truncates
//!    a torn tail, and refuses to open, naming segment and offset, when a record that had been
//!    synced is damaged (see `wal/recovery.rs` for how the two are told apart). Limit: damage to
//!    the very last synced batch, with nothing written after its sync, looks like a torn tail.
//! 6. Compaction moves live records forward and deletes segments only after the moved copies
//!    are durable and a checkpoint no longer points into them.

pub(crate) mod codec;
pub(crate) mod copy;
pub mod error;
pub mod fs;
pub mod ids;
pub mod index;
pub mod record;
pub mod segment;
pub mod wal;

pub use error::{Result, StorageError};
pub use ids::{Location, Lsn, SegmentId, StreamId};
pub use index::{Index, MemoryIndex, SegmentLive, SledIndex, StreamLive};
pub use wal::{CompactionReport, Receipt, Record, Wal, WalConfig, WalCounters, WalStats};
