//! A durable queue's messages in the node's write-ahead log: one stream per queue, record seq =
//! the queue's message seq. Appends return an LSN the actor waits on (asynchronously) before
//! confirming; removals (acks) are synced lazily by later group commits (DESIGN §1, guarantee 2).

use crate::error::BrokerError;
use crate::message::StoredMessage;
use bytes::Bytes;
use std::sync::Arc;
use warren_storage::{Lsn, StreamId, Wal};

/// Where a queue keeps the messages it must not lose.
pub trait MessageStore: Send + Sync + std::fmt::Debug {
    /// Appends message `seq`; it is durable once the returned LSN is (see [`MessageStore::on_durable`]).
    fn append(&self, seq: u64, record: &StoredMessage) -> Result<Lsn, BrokerError>;
    /// Removes settled messages; `seqs` ascending.
    fn remove(&self, seqs: &[u64]) -> Result<(), BrokerError>;
    /// Removes every message with `seq >= from`.
    fn remove_from(&self, from: u64) -> Result<(), BrokerError>;
    /// Up to `limit` stored messages with `seq >= from`, in order.
    fn read_from(&self, from: u64, limit: usize) -> Result<Vec<(u64, StoredMessage)>, BrokerError>;
    /// Records that messages went back to the queue unsettled (requeued), for a store that
    /// keeps their delivery counts (a quorum queue's, so that `x-delivery-limit` counts on
    /// under a new leader). `seqs` ascending.
    fn returned(&self, _seqs: &[u64]) -> Result<(), BrokerError> {
        Ok(())
    }
    /// How many times stored message `seq` went back to the queue, as far as the store knows.
    fn delivery_count(&self, _seq: u64) -> u32 {
        0
    }
    /// Messages stored, and one past the highest seq ever stored.
    fn live(&self) -> (u64, u64);
    /// Calls `done` once `lsn` is durable (or with the error that prevented it).
    fn on_durable(&self, lsn: Lsn, done: Box<dyn FnOnce(bool) + Send>);
    /// Whether transient messages are stored too (a quorum queue replicates every message).
    fn keeps_transient(&self) -> bool {
        false
    }
    /// Whether the queue may hand messages to consumers now. A quorum queue's leader may not
    /// once it cannot be sure it still leads (its lease ran out): a new leader elsewhere may be
    /// delivering the same messages, and a deposed leader's deliveries would repeat them
    /// without the `redelivered` mark.
    fn may_deliver(&self) -> bool {
        true
    }
}

#[derive(Debug)]
pub struct WalStore {
    wal: Arc<Wal>,
    stream: StreamId,
}

impl WalStore {
    pub fn new(wal: Arc<Wal>, stream: u64) -> WalStore {
        WalStore {
            wal,
            stream: StreamId(stream),
        }
    }
}

impl MessageStore for WalStore {
    fn append(&self, seq: u64, record: &StoredMessage) -> Result<Lsn, BrokerError> {
        let head = record.encode_head();
        let parts = [&head[..], &record.message.body[..]];
        Ok(self.wal.append_parts(self.stream, seq, &parts)?.lsn)
    }

    fn remove(&self, seqs: &[u64]) -> Result<(), BrokerError> {
        // Contiguous runs become one range record.
        let mut i = 0;
        while i < seqs.len() {
            let mut j = i + 1;
            while j < seqs.len() && seqs[j] == seqs[j - 1] + 1 {
                j += 1;
            }
            if j - i == 1 {
                self.wal.delete(self.stream, seqs[i])?;
            } else {
                self.wal
                    .delete_range(self.stream, seqs[i], seqs[j - 1] + 1)?;
            }
            i = j;
        }
        Ok(())
    }

    fn remove_from(&self, from: u64) -> Result<(), BrokerError> {
        self.wal.delete_range(self.stream, from, u64::MAX)?;
        Ok(())
    }

    fn read_from(&self, from: u64, limit: usize) -> Result<Vec<(u64, StoredMessage)>, BrokerError> {
        self.wal
            .read_stream(self.stream, from, limit)?
            .into_iter()
            .map(|(seq, payload)| {
                StoredMessage::decode(Bytes::from(payload))
                    .map(|m| (seq, m))
                    .map_err(|source| BrokerError::BadRecord {
                        stream: self.stream.0,
                        seq,
                        source,
                    })
            })
            .collect()
    }

    fn live(&self) -> (u64, u64) {
        let live = self.wal.stream_live(self.stream);
        // `seq_bound` is the highest live seq (inclusive); nothing is live when it is absent.
        let bound = if live.records > 0 {
            live.seq_bound + 1
        } else {
            0
        };
        (live.records, bound)
    }

    fn on_durable(&self, lsn: Lsn, done: Box<dyn FnOnce(bool) + Send>) {
        self.wal
            .on_durable(lsn, Box::new(move |result| done(result.is_ok())));
    }
}

/// An in-memory store for the queue's unit tests.
#[cfg(test)]
#[derive(Debug, Default)]
pub struct MemoryStore {
    pub messages: std::sync::Mutex<std::collections::BTreeMap<u64, StoredMessage>>,
    pub bound: std::sync::atomic::AtomicU64,
}

#[cfg(test)]
impl MessageStore for MemoryStore {
    fn append(&self, seq: u64, record: &StoredMessage) -> Result<Lsn, BrokerError> {
        self.messages.lock().unwrap().insert(seq, record.clone());
        self.bound
            .fetch_max(seq + 1, std::sync::atomic::Ordering::Relaxed);
        Ok(Lsn(seq + 1))
    }
    fn remove(&self, seqs: &[u64]) -> Result<(), BrokerError> {
        let mut m = self.messages.lock().unwrap();
        for s in seqs {
            m.remove(s);
        }
        Ok(())
    }
    fn remove_from(&self, from: u64) -> Result<(), BrokerError> {
        self.messages.lock().unwrap().split_off(&from);
        Ok(())
    }
    fn read_from(&self, from: u64, limit: usize) -> Result<Vec<(u64, StoredMessage)>, BrokerError> {
        Ok(self
            .messages
            .lock()
            .unwrap()
            .range(from..)
            .take(limit)
            .map(|(s, m)| (*s, m.clone()))
            .collect())
    }
    fn live(&self) -> (u64, u64) {
        (
            self.messages.lock().unwrap().len() as u64,
            self.bound.load(std::sync::atomic::Ordering::Relaxed),
        )
    }
    fn on_durable(&self, _lsn: Lsn, done: Box<dyn FnOnce(bool) + Send>) {
        done(true)
    }
}
