//! A raft group's log on the node's shared write-ahead log: one fdatasync serves every group
//! (and every classic durable queue) that wrote since the last one.
//!
//! Layout: entry `i` of group `g` is record `seq = i` of stream `g` (its bincode encoding); the
//! vote, the committed log id and the last purged log id are keys `raft \0 g \0 vote|committed|
//! purged` of the log's key-value namespace.
//!
//! Durability contract (openraft's `RaftLogStorage`):
//! - `append` returns once the entries are readable; its callback fires once they are durable
//!   (the log's group commit reached their last LSN), or with the error that prevented it.
//! - `save_vote` returns once the vote is durable.
//! - `truncate` and `purge` return once readable. They need no wait of their own: the log is
//!   one ordered sequence, so anything later made durable (the next append, vote or committed
//!   id) makes them durable first, and a crash before that loses only what openraft has not yet
//!   relied on.
//! - All writes of one group go through `&mut self`: they are serialized, as openraft requires.

use crate::codec::{decode, encode};
use crate::types::{Entry, GroupId, LogId, StorageError, TypeConfig, Vote};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{RaftLogReader, StorageIOError};
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;
use warren_storage::{Lsn, StreamId, Wal};

/// Entries read per `read_stream` call while scanning.
const SCAN_BATCH: usize = 1024;

/// One group's log store.
#[derive(Debug, Clone)]
pub struct WalLogStore {
    wal: Arc<Wal>,
    group: GroupId,
    /// The last entry present, or the last purged one (kept in memory; found at open).
    last_log_id: Option<LogId>,
    last_purged: Option<LogId>,
}

fn key(group: GroupId, what: &str) -> Vec<u8> {
    format!("raft\0{}\0{what}", group.0).into_bytes()
}

fn read_error(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read_logs(&e).into()
}

fn write_error(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_logs(&e).into()
}

/// Waits (without blocking the runtime) until `lsn` is durable.
async fn durable(wal: &Wal, lsn: Lsn) -> Result<(), warren_storage::StorageError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    wal.on_durable(
        lsn,
        Box::new(move |result| {
            let _ = tx.send(result);
        }),
    );
    rx.await
        .unwrap_or(Err(warren_storage::StorageError::Closed))
}

impl WalLogStore {
    /// Opens group `group`'s log (stream `group.0` of `wal`), finding its last entry.
    pub fn open(wal: Arc<Wal>, group: GroupId) -> Result<WalLogStore, StorageError> {
        assert_ne!(group.0, 0, "stream 0 holds the definitions");
        let last_purged: Option<LogId> =
            match wal.kv_get(&key(group, "purged")).map_err(read_error)? {
                Some(bytes) => Some(decode(&bytes).map_err(read_error)?),
                None => None,
            };
        let mut store = WalLogStore {
            wal,
            group,
            last_log_id: last_purged,
            last_purged,
        };
        let from = last_purged.map_or(0, |l| l.index + 1);
        if let Some(last) = store.scan_last(from)? {
            store.last_log_id = Some(last);
        }
        Ok(store)
    }

    fn stream(&self) -> StreamId {
        StreamId(self.group.0)
    }

    /// The log id of the highest entry at or above `from`.
    fn scan_last(&self, mut from: u64) -> Result<Option<LogId>, StorageError> {
        let mut last = None;
        loop {
            let batch = self
                .wal
                .read_stream(self.stream(), from, SCAN_BATCH)
                .map_err(read_error)?;
            let Some((seq, payload)) = batch.last() else {
                return Ok(last);
            };
            let entry: Entry = decode(payload).map_err(read_error)?;
            last = Some(entry.log_id);
            if batch.len() < SCAN_BATCH {
                return Ok(last);
            }
            from = seq + 1;
        }
    }

    fn entry_at(&self, index: u64) -> Result<Option<Entry>, StorageError> {
        match self.wal.get(self.stream(), index).map_err(read_error)? {
            Some(bytes) => Ok(Some(decode(&bytes).map_err(read_error)?)),
            None => Ok(None),
        }
    }

    async fn put_durable(&self, what: &str, bytes: &[u8]) -> Result<(), StorageError> {
        let lsn = self
            .wal
            .kv_put(&key(self.group, what), bytes)
            .map_err(write_error)?;
        durable(&self.wal, lsn).await.map_err(write_error)
    }

    fn get_kv<T: serde::de::DeserializeOwned>(
        &self,
        what: &str,
    ) -> Result<Option<T>, StorageError> {
        match self
            .wal
            .kv_get(&key(self.group, what))
            .map_err(read_error)?
        {
            Some(bytes) => Ok(Some(decode(&bytes).map_err(read_error)?)),
            None => Ok(None),
        }
    }
}

fn bounds(range: &impl RangeBounds<u64>) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(s) => *s,
        Bound::Excluded(s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(e) => e.saturating_add(1),
        Bound::Excluded(e) => *e,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

impl RaftLogReader<TypeConfig> for WalLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let (start, end) = bounds(&range);
        let mut out = Vec::new();
        let mut from = start;
        while from < end {
            let want = (end - from).min(SCAN_BATCH as u64) as usize;
            let batch = self
                .wal
                .read_stream(self.stream(), from, want)
                .map_err(read_error)?;
            let done = batch.len() < want;
            for (seq, payload) in batch {
                if seq >= end {
                    return Ok(out);
                }
                out.push(decode(&payload).map_err(read_error)?);
                from = seq + 1;
            }
            if done {
                break;
            }
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for WalLogStore {
    type LogReader = WalLogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        Ok(LogState {
            last_purged_log_id: self.last_purged,
            last_log_id: self.last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.put_durable("vote", &encode(vote))
            .await
            .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.get_kv("vote")
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not waited for: a committed id lost in a crash is found again from the leader.
        self.wal
            .kv_put(&key(self.group, "committed"), &encode(&committed))
            .map_err(write_error)?;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.get_kv::<Option<LogId>>("committed")?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut last_lsn = None;
        for entry in entries {
            let receipt = self
                .wal
                .append(self.stream(), entry.log_id.index, &encode(&entry))
                .map_err(write_error)?;
            last_lsn = Some(receipt.lsn);
            self.last_log_id = Some(entry.log_id);
        }
        let Some(lsn) = last_lsn else {
            callback.log_io_completed(Ok(()));
            return Ok(());
        };
        self.wal.on_durable(
            lsn,
            Box::new(move |result| {
                callback.log_io_completed(result.map_err(std::io::Error::other));
            }),
        );
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.wal
            .delete_range(self.stream(), log_id.index, u64::MAX)
            .map_err(write_error)?;
        self.last_log_id = match log_id.index.checked_sub(1) {
            Some(previous) => match self.entry_at(previous)? {
                Some(entry) => Some(entry.log_id),
                None => self.last_purged,
            },
            None => self.last_purged,
        };
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.wal
            .kv_put(&key(self.group, "purged"), &encode(&log_id))
            .map_err(write_error)?;
        self.wal
            .delete_range(self.stream(), 0, log_id.index.saturating_add(1))
            .map_err(write_error)?;
        self.last_purged = Some(log_id);
        if self
            .last_log_id
            .is_none_or(|last| last.index < log_id.index)
        {
            self.last_log_id = Some(log_id);
        }
        Ok(())
    }
}

/// Drops a group's log and its state (vote, committed and purged ids, snapshot) from the
/// shared log: the group was deleted. Its group must be stopped first.
pub fn destroy(wal: &Wal, group: GroupId) -> Result<(), warren_storage::StorageError> {
    wal.delete_range(StreamId(group.0), 0, u64::MAX)?;
    for what in ["vote", "committed", "purged", "snapshot"] {
        wal.kv_delete(&key(group, what))?;
    }
    Ok(())
}
