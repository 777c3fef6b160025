//! The openraft type configuration shared by every raft group of a node (queues and metadata).
//!
//! Commands and replies are opaque bytes here: each state machine (a quorum queue's
//! `QueueState`, the cluster metadata) encodes its own, so this crate needs no knowledge of
//! AMQP.

use serde::{Deserialize, Serialize};
use std::io::Cursor;

/// A command to a group's state machine, encoded by the state machine's owner.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command(pub Vec<u8>);

/// A state machine's answer to one applied entry (empty for blank and membership entries).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply(pub Vec<u8>);

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

/// What a group reports of its membership and leadership (a watch of it follows changes).
pub type ServerMetrics = openraft::metrics::RaftServerMetrics<NodeId, openraft::BasicNode>;
