//! `warren-cluster`: openraft type configuration, the raft log store on top of
//! [`warren_storage`]'s shared write-ahead log, the queue and metadata state machines, and the raft
//! network over tonic.
//!
//! Empty until the cluster issue lands; it depends on `storage` and `proto` only, as
//! `../shared/DESIGN.md` §2 requires.
