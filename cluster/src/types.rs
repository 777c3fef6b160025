//! The openraft type configuration shared by every raft group of a node (queues and metadata).
//!
//! Commands and replies are opaque bytes here: each state machine (a quorum queue's
//! `QueueState`, the cluster metadata) encodes its own, so this crate needs no knowledge of
//! AMQP.

use serde::{Deserialize, Serialize};
use std::io::Cursor;

/// A command to a group's state machine, encoded by the state machine's owner.
///
/// Serialized as one byte string, not as a sequence of `u8`s: bincode then copies it in one
/// go instead of one serde call per byte (that per-byte pass was 40% of a busy quorum queue
/// leader's CPU). Both forms are the same bytes in bincode (a length, then the bytes), so logs
/// written before the change read back unchanged. Held as `Bytes`, so the copies openraft and
/// the log store make of an entry (replication, the recent-entries cache) share one buffer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command(pub bytes::Bytes);

/// A state machine's answer to one applied entry (empty for blank and membership entries).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply(#[serde(with = "serde_bytes")] pub Vec<u8>);

#[cfg(test)]
mod tests {
    use super::*;

    /// What the log held before commands were byte strings.
    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct PerByte(Vec<u8>);

    #[test]
    fn a_command_encodes_as_it_did_when_it_was_a_sequence_of_bytes() {
        for len in [0usize, 1, 250, 251, 300, 70_000] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let old = crate::codec::encode(&PerByte(bytes.clone()));
            let new = crate::codec::encode(&Command(bytes.clone().into()));
            assert_eq!(old, new, "length {len}");
            let back: Command = crate::codec::decode(&old).expect("decodes");
            assert_eq!(back.0, bytes);
            let reply: Reply = crate::codec::decode(&old).expect("decodes");
            assert_eq!(reply.0, bytes);
        }
    }
}

openraft::declare_raft_types!(
    /// Warren's raft types.
    pub TypeConfig:
        D = Command,
        R = Reply,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type NodeId = u64;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, openraft::BasicNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, openraft::BasicNode>;

/// A raft group's id on this node: the log stream its entries live in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct GroupId(pub u64);

/// One raft group's handle.
pub type GroupRaft = openraft::Raft<TypeConfig>;

/// Why `raft`'s group stopped, if it failed (openraft's `Fatal`: a storage error, a panic in
/// its core) rather than being shut down or still running.
pub fn failure(raft: &GroupRaft) -> Option<String> {
    match &raft.metrics().borrow().running_state {
        Ok(()) | Err(openraft::error::Fatal::Stopped) => None,
        Err(fatal) => Some(fatal.to_string()),
    }
}

/// What a group reports of its membership and leadership (a watch of it follows changes).
pub type ServerMetrics = openraft::metrics::RaftServerMetrics<NodeId, openraft::BasicNode>;
