//! `warren-proto`: the `.proto` definitions of Warren's admin plane and raft RPCs, and the tonic and
//! prost types generated from them.
//!
//! Nothing lives here yet: the admin service arrives with the admin-plane issue and the raft RPCs
//! with the cluster issue. The crate exists now so that the workspace has its final shape and the
//! dependency rules of `../shared/DESIGN.md` §2 (this crate depends on nothing of ours) are
//! checked from the first commit.
