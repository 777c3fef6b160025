//! A quorum queue's replicated state: its stored messages by seq, as every replica applies
//! them. The leader's queue actor appends and removes through [`super::store::RaftStore`];
//! the commands below are what reaches the raft log.
//!
//! Commands are encoded by hand (a tag byte and big-endian integers) so a message's record is
//! carried as it is, without a per-byte serde pass. Each carries the proposer's stamp (a
//! random id of the leadership that proposed it, and a counter), which applying it returns:
//! the proposer accepts an answer only with its own stamp. (openraft answers a proposal by its
//! log index; a deposed leader that catches up from a snapshot could otherwise see another
//! leader's entry at that index answer for its own.)

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
    /// The leadership that last claimed the queue: only its commands apply (0: none yet).
    pub owner: u64,
    /// How many times each message went back to the queue unsettled (only those that did):
    /// its delivery count, which `x-delivery-limit` checks, kept across leaders.
    pub returns: BTreeMap<u64, u32>,
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
        self.returns.remove(&seq);
    }

    fn returned(&mut self, seq: u64) {
        if self.messages.contains_key(&seq) {
            *self.returns.entry(seq).or_default() += 1;
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
const CLAIM: u8 = 3;
const BATCH: u8 = 4;
const RETURNED: u8 = 5;

/// Who proposed a command: a leadership's random id and the proposal's number within it.
pub type Stamp = (u64, u64);

/// What the raft log carries for a quorum queue.
#[derive(Debug, Clone, PartialEq)]
pub enum QuorumCommand {
    /// Message `seq` (its record as the queue's log stream would hold it).
    Enqueue { seq: u64, record: Bytes },
    /// Settled (acked, discarded, dead-lettered, purged) messages.
    Remove { seqs: Vec<u64> },
    /// Every message with `seq >= from` (a queue deleted or purged past a point).
    RemoveFrom { from: u64 },
    /// A new leadership takes the queue over: from here on, commands stamped by any other
    /// leadership are ignored. (A deposed leader's proposals may still reach the log after
    /// its successor loaded the queue — even from the same node, re-elected in a later term —
    /// and must not change what the successor serves.)
    Claim,
    /// Messages that went back to the queue unsettled (rejected or nacked with requeue, or
    /// their consumer's channel closed): each one's delivery count goes up by one.
    Returned { seqs: Vec<u64> },
}

/// The reply of an applied command: its stamp.
pub fn stamp_bytes(stamp: Stamp) -> Vec<u8> {
    let mut out = Vec::with_capacity(16);
    out.extend_from_slice(&stamp.0.to_be_bytes());
    out.extend_from_slice(&stamp.1.to_be_bytes());
    out
}

impl QuorumCommand {
    pub fn encode(&self, stamp: Stamp) -> Vec<u8> {
        let mut buf = BytesMut::new();
        let tag = match self {
            QuorumCommand::Enqueue { .. } => ENQUEUE,
            QuorumCommand::Remove { .. } => REMOVE,
            QuorumCommand::RemoveFrom { .. } => REMOVE_FROM,
            QuorumCommand::Claim => CLAIM,
            QuorumCommand::Returned { .. } => RETURNED,
        };
        buf.put_u8(tag);
        buf.put_u64(stamp.0);
        buf.put_u64(stamp.1);
        match self {
            QuorumCommand::Enqueue { seq, record } => {
                buf.reserve(8 + record.len());
                buf.put_u64(*seq);
                buf.put_slice(record);
            }
            QuorumCommand::Remove { seqs } | QuorumCommand::Returned { seqs } => {
                for s in seqs {
                    buf.put_u64(*s);
                }
            }
            QuorumCommand::RemoveFrom { from } => buf.put_u64(*from),
            QuorumCommand::Claim => {}
        }
        buf.to_vec()
    }

    pub fn decode(bytes: &[u8]) -> Result<(QuorumCommand, Stamp), String> {
        let mut b = bytes;
        if b.len() < 17 {
            return Err("quorum command shorter than its header".into());
        }
        let tag = b.get_u8();
        let stamp = (b.get_u64(), b.get_u64());
        Self::decode_body(tag, b).map(|c| (c, stamp))
    }

    fn decode_body(tag: u8, mut b: &[u8]) -> Result<QuorumCommand, String> {
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
            REMOVE | RETURNED => {
                if b.len() % 8 != 0 {
                    return Err(format!("quorum command {tag} of odd length"));
                }
                let mut seqs = Vec::with_capacity(b.len() / 8);
                while b.has_remaining() {
                    seqs.push(b.get_u64());
                }
                Ok(if tag == REMOVE {
                    QuorumCommand::Remove { seqs }
                } else {
                    QuorumCommand::Returned { seqs }
                })
            }
            REMOVE_FROM => {
                need(b, 8)?;
                Ok(QuorumCommand::RemoveFrom { from: b.get_u64() })
            }
            CLAIM => Ok(QuorumCommand::Claim),
            other => Err(format!("unknown quorum command {other}")),
        }
    }
}

/// The state machine of one quorum queue's raft group (on every replica).
#[derive(Debug, Clone, Default)]
pub struct QuorumState {
    pub data: SharedData,
}

/// Several encoded commands of one leadership in one raft entry (the leader's proposer sends
/// what queued up while it was busy as one entry): a tag, the stamp of the last command, then
/// each command with its length. Fewer, larger entries cost openraft and the log far less
/// than one entry per message.
pub fn encode_batch(stamp: Stamp, parts: &[Vec<u8>]) -> Vec<u8> {
    let body: usize = parts.iter().map(|p| 4 + p.len()).sum();
    let mut buf = BytesMut::with_capacity(17 + body);
    buf.put_u8(BATCH);
    buf.put_u64(stamp.0);
    buf.put_u64(stamp.1);
    for part in parts {
        buf.put_u32(part.len() as u32);
        buf.put_slice(part);
    }
    buf.to_vec()
}

/// A batch: its stamp and its commands, each encoded.
type Batch<'a> = (Stamp, Vec<&'a [u8]>);

/// A batch's stamp and commands; `None` if `bytes` is not a batch.
fn split_batch(bytes: &[u8]) -> Option<Result<Batch<'_>, String>> {
    let mut b = bytes;
    if b.first() != Some(&BATCH) {
        return None;
    }
    if b.len() < 17 {
        return Some(Err("quorum batch shorter than its header".into()));
    }
    b.advance(1);
    let stamp = (b.get_u64(), b.get_u64());
    let mut parts = Vec::new();
    while b.has_remaining() {
        if b.len() < 4 {
            return Some(Err("quorum batch truncated".into()));
        }
        let len = b.get_u32() as usize;
        if b.len() < len {
            return Some(Err("quorum batch truncated".into()));
        }
        parts.push(&b[..len]);
        b.advance(len);
    }
    Some(Ok((stamp, parts)))
}

impl QuorumState {
    /// Applies one command; its stamp, or nothing when it was fenced off or undecodable.
    fn apply_one(&self, command: &[u8]) -> Vec<u8> {
        let (command, stamp) = match QuorumCommand::decode(command) {
            Ok(decoded) => decoded,
            Err(error) => {
                tracing::error!(%error, "undecodable quorum queue entry skipped");
                return Vec::new();
            }
        };
        let mut data = lock(&self.data);
        if let QuorumCommand::Claim = command {
            data.owner = stamp.0;
            return stamp_bytes(stamp);
        }
        if stamp.0 != data.owner {
            // Fenced: proposed by a leadership the queue has since been claimed from.
            tracing::debug!(
                leadership = stamp.0,
                owner = data.owner,
                "stale quorum queue entry ignored"
            );
            return Vec::new();
        }
        match command {
            QuorumCommand::Claim => {}
            QuorumCommand::Enqueue { seq, record } => data.insert(seq, record),
            QuorumCommand::Remove { seqs } => {
                for s in seqs {
                    data.remove(s);
                }
            }
            QuorumCommand::Returned { seqs } => {
                for s in seqs {
                    data.returned(s);
                }
            }
            QuorumCommand::RemoveFrom { from } => {
                let gone: Vec<u64> = data.messages.range(from..).map(|(s, _)| *s).collect();
                for s in gone {
                    data.remove(s);
                }
            }
        }
        stamp_bytes(stamp)
    }
}

impl ReplicatedState for QuorumState {
    async fn apply(&mut self, command: &[u8]) -> Vec<u8> {
        match split_batch(command) {
            None => self.apply_one(command),
            Some(Err(error)) => {
                tracing::error!(%error, "undecodable quorum queue batch skipped");
                Vec::new()
            }
            Some(Ok((stamp, parts))) => {
                // Every command applies (or is fenced off) on its own; the batch answers with
                // its stamp only if all applied.
                let mut all = true;
                for part in parts {
                    all &= !self.apply_one(part).is_empty();
                }
                if all {
                    stamp_bytes(stamp)
                } else {
                    Vec::new()
                }
            }
        }
    }

    /// Bound, owner, the messages (seq, length, record), then the delivery counts (seq,
    /// count) of those that went back to the queue. A snapshot written before delivery counts
    /// were kept ends after the messages, and restores with none.
    fn snapshot(&self) -> Vec<u8> {
        let data = lock(&self.data);
        let mut buf = BytesMut::with_capacity(
            32 + data.bytes as usize + 12 * (data.messages.len() + data.returns.len()),
        );
        buf.put_u64(data.bound);
        buf.put_u64(data.owner);
        buf.put_u64(data.messages.len() as u64);
        for (seq, record) in &data.messages {
            buf.put_u64(*seq);
            buf.put_u32(record.len() as u32);
            buf.put_slice(record);
        }
        buf.put_u64(data.returns.len() as u64);
        for (seq, count) in &data.returns {
            buf.put_u64(*seq);
            buf.put_u32(*count);
        }
        buf.to_vec()
    }

    async fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        let mut b = snapshot;
        let truncated = || "quorum queue snapshot truncated".to_string();
        if b.len() < 24 {
            return Err(truncated());
        }
        let mut fresh = QueueData {
            bound: b.get_u64(),
            owner: b.get_u64(),
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
        if b.has_remaining() {
            if b.len() < 8 {
                return Err(truncated());
            }
            let count = b.get_u64();
            for _ in 0..count {
                if b.len() < 12 {
                    return Err(truncated());
                }
                let (seq, returns) = (b.get_u64(), b.get_u32());
                fresh.returns.insert(seq, returns);
            }
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
            QuorumCommand::Claim,
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
            QuorumCommand::Returned { seqs: vec![7, 9] },
            QuorumCommand::Returned { seqs: vec![9, 11] },
            QuorumCommand::Remove { seqs: vec![7] },
            QuorumCommand::RemoveFrom { from: 10 },
        ];
        let mut state = QuorumState::default();
        for (i, c) in commands.iter().enumerate() {
            let stamp = (42, i as u64);
            let bytes = c.encode(stamp);
            assert_eq!(QuorumCommand::decode(&bytes).unwrap(), (c.clone(), stamp));
            assert_eq!(state.apply(&bytes).await, stamp_bytes(stamp));
        }
        {
            let data = lock(&state.data);
            assert_eq!(data.messages.keys().copied().collect::<Vec<_>>(), [9]);
            assert_eq!(data.bound, 13, "removal never lowers the bound");
            assert_eq!(data.bytes, 4);
            assert_eq!(
                data.returns
                    .iter()
                    .map(|(s, c)| (*s, *c))
                    .collect::<Vec<_>>(),
                [(9, 2)],
                "returns count per stored message, and go with it"
            );
        }
        let mut copy = QuorumState::default();
        copy.restore(&state.snapshot()).await.unwrap();
        {
            let (a, b) = (lock(&state.data), lock(&copy.data));
            assert_eq!(a.messages, b.messages);
            assert_eq!((a.bound, a.bytes, a.owner), (b.bound, b.bytes, b.owner));
            assert_eq!(a.returns, b.returns, "delivery counts survive a snapshot");
        }
        // A snapshot from before delivery counts were kept (it ends after the messages)
        // restores with none; one cut inside the counts is refused.
        let full = state.snapshot();
        let mut old = QuorumState::default();
        old.restore(&full[..full.len() - 20]).await.unwrap();
        assert_eq!(lock(&old.data).messages, lock(&state.data).messages);
        assert!(lock(&old.data).returns.is_empty());
        assert!(old.restore(&full[..full.len() - 3]).await.is_err());
        // Another leadership claims the queue: the first one's commands no longer apply.
        assert_eq!(
            copy.apply(&QuorumCommand::Claim.encode((43, 0))).await,
            stamp_bytes((43, 0))
        );
        let stale = QuorumCommand::Remove { seqs: vec![9] }.encode((42, 99));
        assert!(
            copy.apply(&stale).await.is_empty(),
            "a stale command is refused"
        );
        assert_eq!(lock(&copy.data).messages.len(), 1, "and changes nothing");
        let current = QuorumCommand::Remove { seqs: vec![9] }.encode((43, 1));
        assert_eq!(copy.apply(&current).await, stamp_bytes((43, 1)));
        assert!(lock(&copy.data).messages.is_empty());
        // A batch applies each of its commands and answers with its own stamp.
        let parts: Vec<Vec<u8>> = (2..5)
            .map(|t| {
                QuorumCommand::Enqueue {
                    seq: 20 + t,
                    record: Bytes::from_static(b"batched"),
                }
                .encode((43, t))
            })
            .collect();
        let batch = encode_batch((43, 4), &parts);
        assert_eq!(copy.apply(&batch).await, stamp_bytes((43, 4)));
        assert_eq!(
            lock(&copy.data)
                .messages
                .keys()
                .copied()
                .collect::<Vec<_>>(),
            [22, 23, 24]
        );
        // A stale leadership's batch changes nothing and answers nothing.
        let stale = encode_batch(
            (42, 7),
            &[QuorumCommand::Remove { seqs: vec![22] }.encode((42, 7))],
        );
        assert!(copy.apply(&stale).await.is_empty());
        assert_eq!(lock(&copy.data).messages.len(), 3);
        let mut torn = batch.clone();
        torn.truncate(batch.len() - 3);
        assert!(
            copy.apply(&torn).await.is_empty(),
            "a torn batch is refused"
        );
        assert!(QuorumCommand::decode(&[REMOVE, 1, 2]).is_err());
        let mut odd = QuorumCommand::Remove { seqs: vec![1] }.encode((1, 1));
        odd.pop();
        assert!(QuorumCommand::decode(&odd).is_err());
        assert!(QuorumCommand::decode(&[]).is_err());
    }
}
