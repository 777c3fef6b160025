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
//!
//! Recent entries: a leader's replication streams read each new entry once per follower, soon
//! after it was appended. The last entries appended (up to [`RECENT_ENTRIES_MAX`] and
//! [`RECENT_BYTES_MAX`] per group, within a node-wide [`RecentBudget`]) are kept in memory and
//! served from there; reading them back from the log costs a read, a checksum and a decode
//! each time. Truncation and purging drop what they remove from the cache too.

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

/// Recent entries kept per group, at most: this many, and about this many payload bytes.
pub const RECENT_ENTRIES_MAX: usize = 256;
pub const RECENT_BYTES_MAX: usize = 8 << 20;
/// Recent entries kept by every group of a node together, at most (payload bytes).
pub const RECENT_NODE_BYTES_MAX: usize = 64 << 20;

/// The bytes of recent entries every group of a node holds, shared by their log stores.
#[derive(Debug, Clone, Default)]
pub struct RecentBudget(Arc<std::sync::atomic::AtomicUsize>);

impl RecentBudget {
    /// Takes `bytes` from the budget, if they fit.
    fn take(&self, bytes: usize) -> bool {
        use std::sync::atomic::Ordering;
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used + bytes <= RECENT_NODE_BYTES_MAX).then_some(used + bytes)
            })
            .is_ok()
    }

    fn give_back(&self, bytes: usize) {
        self.0.fetch_sub(bytes, std::sync::atomic::Ordering::AcqRel);
    }

    /// Bytes held now.
    pub fn used(&self) -> usize {
        self.0.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// The last entries appended, with consecutive indexes.
#[derive(Debug)]
struct Recent {
    entries: std::collections::VecDeque<(Entry, usize)>,
    bytes: usize,
    budget: RecentBudget,
}

/// What an entry counts for in the cache.
fn weight(entry: &Entry) -> usize {
    64 + match &entry.payload {
        openraft::EntryPayload::Normal(command) => command.0.len(),
        _ => 0,
    }
}

impl Recent {
    fn push(&mut self, entry: &Entry) {
        if self
            .entries
            .back()
            .is_some_and(|(last, _)| last.log_id.index + 1 != entry.log_id.index)
        {
            self.clear();
        }
        let weight = weight(entry);
        while !self.entries.is_empty()
            && (self.entries.len() >= RECENT_ENTRIES_MAX || self.bytes + weight > RECENT_BYTES_MAX)
        {
            self.pop_front();
        }
        if weight > RECENT_BYTES_MAX || !self.budget.take(weight) {
            // Not cached: what is cached must stay consecutive and end at the last entry.
            self.clear();
            return;
        }
        self.bytes += weight;
        self.entries.push_back((entry.clone(), weight));
    }

    fn pop_front(&mut self) {
        if let Some((_, weight)) = self.entries.pop_front() {
            self.bytes -= weight;
            self.budget.give_back(weight);
        }
    }

    fn clear(&mut self) {
        self.budget.give_back(self.bytes);
        self.bytes = 0;
        self.entries.clear();
    }

    /// Drops the entries from `index` on.
    fn truncate(&mut self, index: u64) {
        while self
            .entries
            .back()
            .is_some_and(|(e, _)| e.log_id.index >= index)
        {
            if let Some((_, weight)) = self.entries.pop_back() {
                self.bytes -= weight;
                self.budget.give_back(weight);
            }
        }
    }

    /// Drops the entries up to `index`.
    fn purge(&mut self, index: u64) {
        while self
            .entries
            .front()
            .is_some_and(|(e, _)| e.log_id.index <= index)
        {
            self.pop_front();
        }
    }

    /// The entries `start..end`, if every one of them is here.
    fn get(&self, start: u64, end: u64) -> Option<Vec<Entry>> {
        let first = self.entries.front()?.0.log_id.index;
        let last = self.entries.back()?.0.log_id.index;
        if start < first || end > last + 1 || start >= end {
            return None;
        }
        let from = (start - first) as usize;
        let to = (end - first) as usize;
        Some(
            self.entries
                .range(from..to)
                .map(|(e, _)| e.clone())
                .collect(),
        )
    }
}

impl Drop for Recent {
    fn drop(&mut self) {
        self.clear();
    }
}

/// One group's log store.
#[derive(Debug, Clone)]
pub struct WalLogStore {
    wal: Arc<Wal>,
    group: GroupId,
    /// The last entry present, or the last purged one (kept in memory; found at open).
    last_log_id: Option<LogId>,
    last_purged: Option<LogId>,
    /// Shared with the log readers handed to openraft (clones of this store).
    recent: Arc<std::sync::Mutex<Recent>>,
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
    /// Opens group `group`'s log (stream `group.0` of `wal`), finding its last entry; its
    /// recent entries count against a budget of its own.
    pub fn open(wal: Arc<Wal>, group: GroupId) -> Result<WalLogStore, StorageError> {
        WalLogStore::open_within(wal, group, RecentBudget::default())
    }

    /// Opens group `group`'s log, its recent entries counting against the node's `budget`.
    pub fn open_within(
        wal: Arc<Wal>,
        group: GroupId,
        budget: RecentBudget,
    ) -> Result<WalLogStore, StorageError> {
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
            recent: Arc::new(std::sync::Mutex::new(Recent {
                entries: Default::default(),
                bytes: 0,
                budget,
            })),
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

    fn recent(&self) -> std::sync::MutexGuard<'_, Recent> {
        self.recent.lock().unwrap_or_else(|e| e.into_inner())
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
        read_entry(&self.wal, self.group, index)
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
        if let Some(cached) = self.recent().get(start, end) {
            return Ok(cached);
        }
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
            self.recent().push(&entry);
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
        self.recent().truncate(log_id.index);
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
        self.recent().purge(log_id.index);
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

/// Entry `index` of `group`'s log, if the log holds it (a quorum queue's leader reads its
/// messages back from here).
pub fn read_entry(wal: &Wal, group: GroupId, index: u64) -> Result<Option<Entry>, StorageError> {
    match wal.get(StreamId(group.0), index).map_err(read_error)? {
        Some(bytes) => Ok(Some(decode(&bytes).map_err(read_error)?)),
        None => Ok(None),
    }
}

/// The command entry `index` of `group`'s log carries: `None` if the log does not hold the
/// entry or it carries no command (a blank or membership entry).
pub fn read_command(
    wal: &Wal,
    group: GroupId,
    index: u64,
) -> Result<Option<bytes::Bytes>, StorageError> {
    Ok(
        read_entry(wal, group, index)?.and_then(|entry| match entry.payload {
            openraft::EntryPayload::Normal(command) => Some(command.0),
            _ => None,
        }),
    )
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Command;
    use openraft::{CommittedLeaderId, EntryPayload};

    fn entry(index: u64, bytes: usize) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Command(vec![index as u8; bytes].into())),
        }
    }

    fn indexes(entries: &[Entry]) -> Vec<u64> {
        entries.iter().map(|e| e.log_id.index).collect()
    }

    #[test]
    fn recent_entries_stay_consecutive_and_within_their_budgets() {
        let budget = RecentBudget::default();
        let mut recent = Recent {
            entries: Default::default(),
            bytes: 0,
            budget: budget.clone(),
        };
        for i in 1..=10 {
            recent.push(&entry(i, 100));
        }
        assert_eq!(indexes(&recent.get(3, 8).unwrap()), [3, 4, 5, 6, 7]);
        assert!(recent.get(0, 5).is_none(), "not all of it is here");
        assert!(recent.get(8, 12).is_none(), "not all of it is here");
        assert_eq!(budget.used(), 10 * 164);
        // Truncation and purging drop what they remove; a gap starts over.
        recent.truncate(9);
        recent.purge(2);
        assert_eq!(indexes(&recent.get(3, 9).unwrap()), [3, 4, 5, 6, 7, 8]);
        recent.push(&entry(9, 100));
        assert_eq!(indexes(&recent.get(9, 10).unwrap()), [9]);
        recent.push(&entry(20, 100));
        assert!(recent.get(9, 10).is_none(), "a gap empties the cache");
        assert_eq!(budget.used(), 164);
        // At most RECENT_ENTRIES_MAX entries and about RECENT_BYTES_MAX bytes per group.
        for i in 21..21 + RECENT_ENTRIES_MAX as u64 + 5 {
            recent.push(&entry(i, 10));
        }
        assert_eq!(recent.entries.len(), RECENT_ENTRIES_MAX);
        let big = RECENT_BYTES_MAX / 3;
        let next = recent.entries.back().unwrap().0.log_id.index + 1;
        for i in next..next + 4 {
            recent.push(&entry(i, big));
        }
        assert!(recent.bytes <= RECENT_BYTES_MAX);
        assert_eq!(recent.entries.len(), 2);
        // The node-wide budget: a group that cannot take more caches nothing.
        let other_group = budget.clone();
        let rest = RECENT_NODE_BYTES_MAX - budget.used();
        assert!(other_group.take(rest));
        recent.push(&entry(next + 4, 10));
        assert!(recent.entries.is_empty());
        other_group.give_back(rest);
        drop(recent);
        assert_eq!(budget.used(), 0, "a dropped cache gives its bytes back");
    }
}
