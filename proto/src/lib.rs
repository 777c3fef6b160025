//! `warren-proto`: the `.proto` definitions of Warren's gRPC services and the tonic and prost
//! types generated from them (by `build.rs`, with a vendored `protoc`).
//!
//! - [`admin`]: `warren.admin.v1.Admin`, the admin plane (the control bus): statistics,
//!   declarations, test messages, peek, pause/resume, wire taps, detours, definitions.
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptors, for gRPC server reflection.
//!
//! - [`raft`]: `warren.raft.v1.Raft`, raft RPCs between nodes (payloads encoded by the cluster
//!   crate).
//! - [`queues`]: `warren.queues.v1.Queues`, quorum queue publishes, consumers and gets
//!   forwarded to the node leading the queue.
//!
//! This crate depends on nothing of ours
//! (`../shared/DESIGN.md` §2).

/// `warren.admin.v1`.
pub mod admin {
    #![allow(missing_debug_implementations, clippy::all)]
    tonic::include_proto!("warren.admin.v1");
}

/// `warren.raft.v1`: raft RPCs between nodes.
pub mod raft {
    #![allow(missing_debug_implementations, clippy::all)]
    tonic::include_proto!("warren.raft.v1");
}

/// `warren.queues.v1`: quorum queue operations forwarded to the node leading the queue.
pub mod queues {
    #![allow(missing_debug_implementations, clippy::all)]
    tonic::include_proto!("warren.queues.v1");
}

/// Message bodies in JSON output: UTF-8 text (invalid sequences replaced).
pub fn body_as_text<S: serde::Serializer>(body: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&String::from_utf8_lossy(body))
}

/// Descriptors of every service here, for `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("warren_descriptor");
