//! A quorum queue's replicated state: its stored messages by seq, as every replica applies
//! them. The leader's queue actor appends and removes through [`super::store::RaftStore`];
//! the commands below are what reaches the raft log.
//!
//! Commands are encoded by hand (a tag byte and big-endian integers) so a message's record is
//! carried as it is, without a per-byte serde pass.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use warren_cluster::state_machine::ReplicatedState;

/// The messages a quorum queue holds (ready or delivered but unsettled).
#[derive(Debug, Default)]
pub struct QueueData {
    pub messages: BTreeMap<u64, Bytes>,
    /// One past the highest seq ever enqueued (a new leader numbers on from here).
    pub bound: u64,
    pub bytes: u64,
}

impl QueueData {
    fn insert(&mut self, seq: u64, record: Bytes) {
        self.bound = self.bound.max(seq + 1);
        self.bytes += record.len() as u64;
        if let Some(old) = self.messages.insert(seq, record) {
            self.bytes -= old.len() as u64;
        }
    }

    fn remove(&mut self, seq: u64) {
        if let Some(old) = self.messages.remove(&seq) {
            self.bytes -= old.len() as u64;
        }
    }
}

pub type SharedData = Arc<Mutex<QueueData>>;

pub fn lock(data: &SharedData) -> std::sync::MutexGuard<'_, QueueData> {
    data.lock().unwrap_or_else(|e| e.into_inner())
}

const ENQUEUE: u8 = 0;
const REMOVE: u8 = 1;
const REMOVE_FROM: u8 = 2;

/// What the raft log carries for a quorum queue.
#[derive(Debug, Clone, PartialEq)]
pub enum QuorumCommand {
    /// Message `seq` (its record as the queue's log stream would hold it).
    Enqueue { seq: u64, record: Bytes },
    /// Settled (acked, discarded, dead-lettered, purged) messages.
    Remove { seqs: Vec<u64> },
    /// Every message with `seq >= from` (a queue deleted or purged past a point).
    RemoveFrom { from: u64 },
}

impl QuorumCommand {
    pub fn encode(&self) -> Vec<u8> {
        let mut buf = BytesMut::new();
        match self {
            QuorumCommand::Enqueue { seq, record } => {
                buf.reserve(9 + record.len());
                buf.put_u8(ENQUEUE);
                buf.put_u64(*seq);
                buf.put_slice(record);
            }
            QuorumCommand::Remove { seqs } => {
                buf.put_u8(REMOVE);
                for s in seqs {
                    buf.put_u64(*s);
                }
            }
            QuorumCommand::RemoveFrom { from } => {
                buf.put_u8(REMOVE_FROM);
                buf.put_u64(*from);
            }
        }
        buf.to_vec()
    }

    pub fn decode(bytes: &[u8]) -> Result<QuorumCommand, String> {
        let mut b = bytes;
        if b.is_empty() {
            return Err("empty quorum command".into());
        }
        let tag = b.get_u8();
        let need = |b: &[u8], n: usize| {
            if b.len() < n {
                Err(format!("quorum command {tag} truncated"))
            } else {
                Ok(())
            }
        };
        match tag {
            ENQUEUE => {
                need(b, 8)?;
                let seq = b.get_u64();
                Ok(QuorumCommand::Enqueue {
                    seq,
                    record: Bytes::copy_from_slice(b),
                })
            }
            REMOVE => {
                if b.len() % 8 != 0 {
                    return Err("quorum remove command of odd length".into());
                }
                let mut seqs = Vec::with_capacity(b.len() / 8);
                while b.has_remaining() {
                    seqs.push(b.get_u64());
                }
                Ok(QuorumCommand::Remove { seqs })
            }
            REMOVE_FROM => {
                need(b, 8)?;
                Ok(QuorumCommand::RemoveFrom { from: b.get_u64() })
            }
            other => Err(format!("unknown quorum command {other}")),
        }
    }
}

/// The state machine of one quorum queue's raft group (on every replica).
#[derive(Debug, Clone, Default)]
pub struct QuorumState {
    pub data: SharedData,
}

impl ReplicatedState for QuorumState {
    async fn apply(&mut self, command: &[u8]) -> Vec<u8> {
        match QuorumCommand::decode(command) {
            Ok(QuorumCommand::Enqueue { seq, record }) => lock(&self.data).insert(seq, record),
            Ok(QuorumCommand::Remove { seqs }) => {
                let mut data = lock(&self.data);
                for s in seqs {
                    data.remove(s);
                }
            }
            Ok(QuorumCommand::RemoveFrom { from }) => {
                let mut data = lock(&self.data);
                let gone: Vec<u64> = data.messages.range(from..).map(|(s, _)| *s).collect();
                for s in gone {
                    data.remove(s);
                }
            }
            Err(error) => tracing::error!(%error, "undecodable quorum queue entry skipped"),
        }
        Vec::new()
    }

    fn snapshot(&self) -> Vec<u8> {
        let data = lock(&self.data);
        let mut buf = BytesMut::with_capacity(16 + data.bytes as usize + 12 * data.messages.len());
        buf.put_u64(data.bound);
        buf.put_u64(data.messages.len() as u64);
        for (seq, record) in &data.messages {
            buf.put_u64(*seq);
            buf.put_u32(record.len() as u32);
            buf.put_slice(record);
        }
        buf.to_vec()
    }

    async fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        let mut b = snapshot;
        let truncated = || "quorum queue snapshot truncated".to_string();
        if b.len() < 16 {
            return Err(truncated());
        }
        let mut fresh = QueueData {
            bound: b.get_u64(),
            ..QueueData::default()
        };
        let count = b.get_u64();
        for _ in 0..count {
            if b.len() < 12 {
                return Err(truncated());
            }
            let seq = b.get_u64();
            let len = b.get_u32() as usize;
            if b.len() < len {
                return Err(truncated());
            }
            fresh.insert(seq, Bytes::copy_from_slice(&b[..len]));
            b.advance(len);
        }
        *lock(&self.data) = fresh;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn commands_round_trip_and_snapshots_restore_the_same_state() {
        let commands = [
            QuorumCommand::Enqueue {
                seq: 7,
                record: Bytes::from_static(b"seven"),
            },
            QuorumCommand::Enqueue {
                seq: 9,
                record: Bytes::from_static(b"nine"),
            },
            QuorumCommand::Enqueue {
                seq: 12,
                record: Bytes::from_static(b"twelve"),
            },
            QuorumCommand::Remove { seqs: vec![7] },
            QuorumCommand::RemoveFrom { from: 10 },
        ];
        let mut state = QuorumState::default();
        for c in &commands {
            let bytes = c.encode();
            assert_eq!(&QuorumCommand::decode(&bytes).unwrap(), c);
            state.apply(&bytes).await;
        }
        {
            let data = lock(&state.data);
            assert_eq!(data.messages.keys().copied().collect::<Vec<_>>(), [9]);
            assert_eq!(data.bound, 13, "removal never lowers the bound");
            assert_eq!(data.bytes, 4);
        }
        let mut copy = QuorumState::default();
        copy.restore(&state.snapshot()).await.unwrap();
        let (a, b) = (lock(&state.data), lock(&copy.data));
        assert_eq!(a.messages, b.messages);
        assert_eq!((a.bound, a.bytes), (b.bound, b.bytes));
        assert!(QuorumCommand::decode(&[REMOVE, 1, 2]).is_err());
        assert!(QuorumCommand::decode(&[]).is_err());
    }
}
