//! A quorum queue's replicated state: where in the raft log each stored message is, by seq, as
//! every replica applies the log. The messages themselves stay in the log, which is kept from
//! the release cursor on (see [`QueueData::release_cursor`]). The leader's queue actor appends
//! and removes through [`super::store::RaftStore`]; the commands below are what reaches the
//! raft log.
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

/// Where a stored message is: the raft entry that enqueued it (the message stays in the log,
/// which is kept from the oldest such entry on) and its record's length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loc {
    pub index: u64,
    pub len: u32,
}

/// The messages a quorum queue holds (ready or delivered but unsettled), by where they are in
/// the log: memory holds a few dozen bytes per message, whatever its size, on every replica.
#[derive(Debug, Default)]
pub struct QueueData {
    pub messages: BTreeMap<u64, Loc>,
    /// The log entries that enqueued stored messages, with how many each (only those with
    /// some: a message left unsettled for long costs no more than the others).
    entries: BTreeMap<u64, u32>,
    /// One past the highest seq ever enqueued (a new leader numbers on from here).
    pub bound: u64,
    pub bytes: u64,
    /// The leadership that last claimed the queue: only its commands apply (0: none yet).
    pub owner: u64,
    /// The claims since the release cursor's: (entry, leadership), the first one in force at
    /// the cursor (at entry 0 when it came with a snapshot).
    claims: Vec<(u64, u64)>,
    /// How many times each message went back to the queue unsettled (only those that did):
    /// its delivery count, which `x-delivery-limit` checks, kept across leaders.
    pub returns: BTreeMap<u64, u32>,
}

impl QueueData {
    fn insert(&mut self, seq: u64, loc: Loc) {
        self.remove(seq);
        self.bound = self.bound.max(seq + 1);
        self.bytes += u64::from(loc.len);
        self.messages.insert(seq, loc);
        *self.entries.entry(loc.index).or_default() += 1;
    }

    fn remove(&mut self, seq: u64) {
        let Some(old) = self.messages.remove(&seq) else {
            return;
        };
        self.bytes -= u64::from(old.len);
        self.returns.remove(&seq);
        if let std::collections::btree_map::Entry::Occupied(mut count) =
            self.entries.entry(old.index)
        {
            *count.get_mut() -= 1;
            if *count.get() == 0 {
                count.remove();
            }
        }
    }

    fn returned(&mut self, seq: u64) {
        if self.messages.contains_key(&seq) {
            *self.returns.entry(seq).or_default() += 1;
        }
    }

    /// The last entry a snapshot may cover: the one before the oldest entry a stored message
    /// is in (`None`: no message is stored, every applied entry may be covered).
    pub fn release_cursor(&self) -> Option<u64> {
        self.entries.first_key_value().map(|(index, _)| index - 1)
    }

    fn claim(&mut self, index: u64, owner: u64) {
        self.owner = owner;
        self.claims.push((index, owner));
        // Claims before the one in force at the cursor can no longer matter.
        let cursor = self.release_cursor().unwrap_or(index);
        let at = self
            .claims
            .iter()
            .rposition(|(i, _)| *i <= cursor)
            .unwrap_or(0);
        self.claims.drain(..at);
    }

    /// The leadership that owned the queue once entry `index` was applied.
    fn owner_at(&self, index: u64) -> u64 {
        self.claims
            .iter()
            .rev()
            .find(|(i, _)| *i <= index)
            .map_or(0, |(_, owner)| *owner)
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
    /// The length of the command once encoded.
    pub fn encoded_len(&self) -> usize {
        17 + match self {
            QuorumCommand::Enqueue { record, .. } => 8 + record.len(),
            QuorumCommand::Remove { seqs } | QuorumCommand::Returned { seqs } => 8 * seqs.len(),
            QuorumCommand::RemoveFrom { .. } => 8,
            QuorumCommand::Claim => 0,
        }
    }

    pub fn encode(&self, stamp: Stamp) -> Vec<u8> {
        let mut buf = Vec::with_capacity(self.encoded_len());
        self.encode_into(stamp, &mut buf);
        buf
    }

    /// Appends the encoded command to `buf` (an enqueued record is copied once, here).
    fn encode_into(&self, stamp: Stamp, buf: &mut Vec<u8>) {
        let start = buf.len();
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
        debug_assert_eq!(buf.len() - start, self.encoded_len());
    }

    /// Decodes a command; an enqueued record is a slice of `bytes`, not a copy.
    pub fn decode(bytes: &Bytes) -> Result<(QuorumCommand, Stamp), String> {
        let mut b = &bytes[..];
        if b.len() < 17 {
            return Err("quorum command shorter than its header".into());
        }
        let tag = b.get_u8();
        let stamp = (b.get_u64(), b.get_u64());
        Self::decode_body(tag, bytes.slice(17..)).map(|c| (c, stamp))
    }

    fn decode_body(tag: u8, body: Bytes) -> Result<QuorumCommand, String> {
        let mut b = &body[..];
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
                    record: body.slice(8..),
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

/// Several commands of one leadership in one raft entry (the leader's proposer sends what
/// queued up while it was busy as one entry): a tag, the stamp of the last command, then each
/// command, encoded, with its length. Fewer, larger entries cost openraft and the log far less
/// than one entry per message. Each command is encoded straight into the batch.
pub fn encode_batch(stamp: Stamp, commands: &[(Stamp, QuorumCommand)]) -> Vec<u8> {
    let body: usize = commands.iter().map(|(_, c)| 4 + c.encoded_len()).sum();
    let mut buf = Vec::with_capacity(17 + body);
    buf.put_u8(BATCH);
    buf.put_u64(stamp.0);
    buf.put_u64(stamp.1);
    for (at, command) in commands {
        buf.put_u32(command.encoded_len() as u32);
        command.encode_into(*at, &mut buf);
    }
    buf
}

/// A batch: its stamp and its commands, each encoded.
type Batch = (Stamp, Vec<Bytes>);

/// A batch's stamp and commands (slices of `bytes`); `None` if `bytes` is not a batch.
fn split_batch(bytes: &Bytes) -> Option<Result<Batch, String>> {
    let mut b = &bytes[..];
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
        let at = bytes.len() - b.len();
        parts.push(bytes.slice(at..at + len));
        b.advance(len);
    }
    Some(Ok((stamp, parts)))
}

impl QuorumState {
    /// Applies one command; its stamp, or nothing when it was fenced off or undecodable.
    fn apply_one(&self, index: u64, command: &Bytes) -> Vec<u8> {
        let (command, stamp) = match QuorumCommand::decode(command) {
            Ok(decoded) => decoded,
            Err(error) => {
                tracing::error!(%error, "undecodable quorum queue entry skipped");
                return Vec::new();
            }
        };
        let mut data = lock(&self.data);
        if let QuorumCommand::Claim = command {
            data.claim(index, stamp.0);
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
            QuorumCommand::Enqueue { seq, record } => data.insert(
                seq,
                Loc {
                    index,
                    len: record.len() as u32,
                },
            ),
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
    async fn apply(&mut self, index: u64, command: &Bytes) -> Vec<u8> {
        match split_batch(command) {
            None => self.apply_one(index, command),
            Some(Err(error)) => {
                tracing::error!(%error, "undecodable quorum queue batch skipped");
                Vec::new()
            }
            Some(Ok((stamp, parts))) => {
                // Every command applies (or is fenced off) on its own; the batch answers with
                // its stamp only if all applied.
                let mut all = true;
                for part in parts {
                    all &= !self.apply_one(index, &part).is_empty();
                }
                if all {
                    stamp_bytes(stamp)
                } else {
                    Vec::new()
                }
            }
        }
    }

    /// The queue as of its release cursor: the format's mark, the bound and the leadership
    /// that owned the queue at the cursor. No message: every message stored at the cursor was
    /// enqueued after it (so were their delivery counts), and the log after the cursor, which
    /// is kept, enqueues them again when a replica replays it.
    fn snapshot(&self) -> Vec<u8> {
        let data = lock(&self.data);
        let cursor = data.release_cursor().unwrap_or(u64::MAX);
        let mut buf = BytesMut::with_capacity(24);
        buf.put_u64(SNAPSHOT_MARK);
        buf.put_u64(data.bound);
        buf.put_u64(data.owner_at(cursor));
        buf.to_vec()
    }

    fn release_cursor(&self) -> Option<u64> {
        lock(&self.data).release_cursor()
    }

    async fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        let mut b = snapshot;
        if b.len() < 24 {
            return Err("quorum queue snapshot truncated".into());
        }
        if b.get_u64() != SNAPSHOT_MARK {
            // The earlier form held the messages themselves.
            return Err(
                "quorum queue snapshot in a format from before messages stayed in the log".into(),
            );
        }
        let (bound, owner) = (b.get_u64(), b.get_u64());
        *lock(&self.data) = QueueData {
            bound,
            owner,
            claims: vec![(0, owner)],
            ..QueueData::default()
        };
        Ok(())
    }
}

/// Opens a quorum queue snapshot (ASCII "WQSNAP" and a format number; the earlier format began
/// with the queue's bound, which never comes near this).
const SNAPSHOT_MARK: u64 = u64::from_be_bytes(*b"WQSNAP\0\x02");

/// The records of messages that entry `command` enqueued, with their seqs (a leader reads its
/// stored messages back from the log with this).
pub fn enqueued(command: &Bytes) -> Result<Vec<(u64, Bytes)>, String> {
    let parts = match split_batch(command) {
        None => vec![command.clone()],
        Some(batch) => batch?.1,
    };
    let mut out = Vec::new();
    for part in parts {
        if part.first() == Some(&ENQUEUE) {
            if let (QuorumCommand::Enqueue { seq, record }, _) = QuorumCommand::decode(&part)? {
                out.push((seq, record));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(data: &QueueData) -> Vec<u64> {
        data.messages.keys().copied().collect()
    }

    fn enqueue(seq: u64, record: &'static [u8], stamp: Stamp) -> Vec<u8> {
        enqueue_command(seq, record).encode(stamp)
    }

    fn enqueue_command(seq: u64, record: &'static [u8]) -> QuorumCommand {
        QuorumCommand::Enqueue {
            seq,
            record: Bytes::from_static(record),
        }
    }

    /// Applies `entries` (the log, from index 1) from `from` on.
    async fn replay(state: &mut QuorumState, entries: &[Bytes], from: u64) -> Vec<Vec<u8>> {
        let mut replies = Vec::new();
        for (i, entry) in entries.iter().enumerate() {
            let index = i as u64 + 1;
            if index >= from {
                replies.push(state.apply(index, entry).await);
            }
        }
        replies
    }

    /// The snapshot at the release cursor, restored, plus the log after the cursor replayed:
    /// the same state as the one that applied the whole log.
    async fn rebuilt(state: &QuorumState, entries: &[Bytes]) -> QuorumState {
        let cursor = state.release_cursor().unwrap_or(entries.len() as u64);
        let mut copy = QuorumState::default();
        copy.restore(&state.snapshot()).await.unwrap();
        replay(&mut copy, entries, cursor + 1).await;
        {
            let (a, b) = (lock(&state.data), lock(&copy.data));
            assert_eq!(a.messages, b.messages, "from cursor {cursor}");
            assert_eq!((a.bound, a.bytes, a.owner), (b.bound, b.bytes, b.owner));
            assert_eq!(a.returns, b.returns, "delivery counts");
            assert_eq!(a.release_cursor(), b.release_cursor());
        }
        copy
    }

    #[tokio::test]
    async fn the_state_knows_where_messages_are_and_a_snapshot_at_its_cursor_plus_the_log_rebuilds_it(
    ) {
        let batch = encode_batch(
            (42, 3),
            &[
                ((42, 2), enqueue_command(9, b"nine")),
                ((42, 3), enqueue_command(12, b"twelve")),
            ],
        );
        let commands: Vec<Vec<u8>> = vec![
            QuorumCommand::Claim.encode((42, 0)),
            enqueue(7, b"seven", (42, 1)),
            batch,
            QuorumCommand::Returned { seqs: vec![7, 9] }.encode((42, 4)),
            QuorumCommand::Returned { seqs: vec![9, 11] }.encode((42, 5)),
            QuorumCommand::Remove { seqs: vec![7] }.encode((42, 6)),
            QuorumCommand::RemoveFrom { from: 10 }.encode((42, 7)),
        ];
        for (i, c) in commands.iter().enumerate().filter(|(i, _)| *i != 2) {
            let decoded = QuorumCommand::decode(&Bytes::from(c.clone())).unwrap();
            let again = QuorumCommand::decode(&Bytes::from(decoded.0.encode(decoded.1)));
            assert_eq!(again.as_ref(), Ok(&decoded));
            assert_eq!(decoded.1, (42, if i > 2 { i as u64 + 1 } else { i as u64 }));
        }
        let mut entries: Vec<Bytes> = commands.into_iter().map(Bytes::from).collect();
        let mut state = QuorumState::default();
        let replies = replay(&mut state, &entries, 1).await;
        assert!(
            replies.iter().all(|r| !r.is_empty()),
            "every command applies"
        );
        {
            let data = lock(&state.data);
            assert_eq!(ids(&data), [9]);
            assert_eq!(data.messages[&9], Loc { index: 3, len: 4 });
            assert_eq!(data.bound, 13, "removal never lowers the bound");
            assert_eq!(data.bytes, 4);
            let returns: Vec<(u64, u32)> = data.returns.iter().map(|(s, c)| (*s, *c)).collect();
            assert_eq!(
                returns,
                [(9, 2)],
                "counted per stored message, and go with it"
            );
            assert_eq!(
                data.release_cursor(),
                Some(2),
                "entry 3 holds the oldest message"
            );
        }
        // The entry that enqueued a message gives its record back.
        assert_eq!(
            enqueued(&entries[2]).unwrap(),
            [
                (9, Bytes::from_static(b"nine")),
                (12, Bytes::from_static(b"twelve"))
            ]
        );
        assert_eq!(enqueued(&entries[3]).unwrap(), []);
        rebuilt(&state, &entries).await;

        // Another leadership claims the queue: the first one's commands no longer apply, and
        // a snapshot at the cursor (before the claim) still lets them apply up to the claim.
        entries.push(QuorumCommand::Claim.encode((43, 0)).into());
        entries.push(
            QuorumCommand::Remove { seqs: vec![9] }
                .encode((42, 99))
                .into(),
        );
        entries.push(enqueue(20, b"twenty", (43, 1)).into());
        let mut state = QuorumState::default();
        let replies = replay(&mut state, &entries, 1).await;
        assert!(replies[8].is_empty(), "a stale command is refused");
        assert_eq!(ids(&lock(&state.data)), [9, 20], "and changes nothing");
        assert_eq!(lock(&state.data).owner, 43);
        rebuilt(&state, &entries).await;

        // Settling the oldest message moves the cursor on to the next one's entry; settling
        // everything moves it to the end.
        entries.push(
            QuorumCommand::Remove { seqs: vec![9] }
                .encode((43, 2))
                .into(),
        );
        replay(&mut state, &entries, 11).await;
        assert_eq!(state.release_cursor(), Some(9));
        let copy = rebuilt(&state, &entries).await;
        assert_eq!(lock(&copy.data).owner, 43);
        entries.push(
            QuorumCommand::Remove { seqs: vec![20] }
                .encode((43, 3))
                .into(),
        );
        replay(&mut state, &entries, 12).await;
        assert_eq!(state.release_cursor(), None);
        let copy = rebuilt(&state, &entries).await;
        assert_eq!(lock(&copy.data).bound, 21);
        assert_eq!(lock(&copy.data).claims, [(0, 43)]);

        // A stale leadership's batch changes nothing and answers nothing; a torn one is refused.
        let stale = encode_batch((42, 7), &[((42, 7), enqueue_command(30, b"x"))]);
        let mut shared = copy.clone();
        assert!(shared.apply(13, &stale.into()).await.is_empty());
        assert!(lock(&copy.data).messages.is_empty());
        let mut torn = encode_batch((43, 9), &[((43, 9), enqueue_command(30, b"x"))]);
        torn.truncate(torn.len() - 1);
        assert!(shared.apply(13, &torn.into()).await.is_empty());
        assert!(lock(&copy.data).messages.is_empty());

        // Undecodable commands, and a snapshot of the earlier format (it held the messages).
        assert!(QuorumCommand::decode(&Bytes::from_static(&[REMOVE, 1, 2])).is_err());
        let mut odd = QuorumCommand::Remove { seqs: vec![1] }.encode((1, 1));
        odd.pop();
        assert!(QuorumCommand::decode(&odd.into()).is_err());
        assert!(QuorumCommand::decode(&Bytes::new()).is_err());
        let mut old = BytesMut::new();
        old.put_u64(13);
        old.put_u64(42);
        old.put_u64(0);
        assert!(QuorumState::default().restore(&old).await.is_err());
    }
}
