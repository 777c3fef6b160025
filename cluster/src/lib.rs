//! `warren-cluster`: replication with openraft (0.9, `storage-v2`).
//!
//! Module map:
//! - [`types`]: the openraft type configuration every group shares; commands and replies are
//!   opaque bytes the state machines encode.
//! - [`log_store`]: a group's raft log as one stream of the node's shared write-ahead log, so
//!   one fdatasync serves every group (and every classic durable queue) at once.
//! - [`state_machine`]: openraft's bookkeeping around a [`state_machine::ReplicatedState`]
//!   (a quorum queue's state, the cluster metadata), with snapshots in the log's key-value
//!   namespace.
//!
//! - [`network`]: raft RPCs over tonic, one connection per peer multiplexed by group, and the
//!   server side routing each request to its group.
//!
//! - [`node`]: a node's groups, its configuration, and proposals forwarded to a group's leader.
//! - [`membership`]: adding and removing a group's voters, and the node's address book.
//! - [`handover`]: moving a group's leadership to a chosen member (the old leader holds still
//!   while the new one is elected).
//!
//! The state machines themselves (cluster metadata, quorum queues) live in the broker, which
//! implements [`state_machine::ReplicatedState`] for them. This crate depends on `storage` and `proto` only
//! (`../shared/DESIGN.md` §2).

// openraft's traits return its `StorageError` (224 bytes); the helpers that feed them return it
// too rather than convert twice.
#![allow(clippy::result_large_err)]

mod codec;
pub mod handover;
pub mod log_store;
pub mod membership;
pub mod network;
pub mod node;
pub mod state_machine;
pub mod types;
