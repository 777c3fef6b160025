//! Changing who votes in a group: nodes join as learners (the leader replicates the log or a
//! snapshot to them until they have caught up), then the voter set is replaced in one joint
//! consensus change (openraft's `change_membership`). Runs at the group's leader; other nodes
//! forward the change over the `ChangeMembership` RPC.
//!
//! Also the node's address book: how this node reaches each member. Configured addresses
//! win (a node may reach its peers through a proxy or another interface); members that joined
//! later are reached at the address recorded in the group's membership.

use crate::types::{NodeId, TypeConfig};
use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::{BasicNode, Raft};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};

/// Member id → raft address, shared by every group of a node.
#[derive(Debug, Clone, Default)]
pub struct AddressBook(Arc<RwLock<BTreeMap<NodeId, String>>>);

impl AddressBook {
    pub fn new(configured: BTreeMap<NodeId, String>) -> AddressBook {
        AddressBook(Arc::new(RwLock::new(configured)))
    }

    pub fn get(&self, id: NodeId) -> Option<String> {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .cloned()
    }

    /// Records addresses of members this node has no address for (known ones are kept).
    pub fn learn<'a>(&self, addresses: impl IntoIterator<Item = (NodeId, &'a str)>) {
        let mut book = self.0.write().unwrap_or_else(|e| e.into_inner());
        for (id, addr) in addresses {
            book.entry(id).or_insert_with(|| addr.to_string());
        }
    }
}

/// How one attempt at a membership change ended.
#[derive(Debug)]
pub enum Outcome {
    Done,
    /// This node does not lead the group (the leader it knows of, if any).
    NotLeader(Option<NodeId>),
    /// Worth trying again (another change in progress, a learner not caught up yet, ...).
    Failed(String),
}

/// The group's voters as this node last saw them.
pub fn voters(raft: &Raft<TypeConfig>) -> BTreeSet<NodeId> {
    raft.metrics()
        .borrow()
        .membership_config
        .membership()
        .voter_ids()
        .collect()
}

/// Every node of the group's membership (voters and learners) with its recorded address.
pub fn nodes(raft: &Raft<TypeConfig>) -> BTreeMap<NodeId, String> {
    raft.metrics()
        .borrow()
        .membership_config
        .membership()
        .nodes()
        .map(|(id, node)| (*id, node.addr.clone()))
        .collect()
}

fn outcome<E: std::fmt::Display>(
    error: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>,
    what: E,
) -> Outcome {
    match error {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            Outcome::NotLeader(f.leader_id)
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(
            ChangeMembershipError::InProgress(e),
        )) => Outcome::Failed(format!(
            "{what}: another membership change is in progress: {e}"
        )),
        other => Outcome::Failed(format!("{what}: {other}")),
    }
}

/// At the leader: makes `voters` the group's voters. New members are added as learners at
/// `addresses` first; openraft returns once each learner has caught up and, finally, once the
/// new voter set is committed. Members left out are removed from the group.
pub async fn apply_voters(
    raft: &Raft<TypeConfig>,
    voters: &BTreeSet<NodeId>,
    addresses: &BTreeMap<NodeId, String>,
) -> Outcome {
    if voters.is_empty() {
        return Outcome::Failed("a group needs at least one voter".into());
    }
    let known = nodes(raft);
    for id in voters {
        if known.contains_key(id) {
            continue;
        }
        let Some(addr) = addresses.get(id) else {
            return Outcome::Failed(format!("no raft address for node {id}"));
        };
        if let Err(e) = raft.add_learner(*id, BasicNode::new(addr), true).await {
            return outcome(e, format_args!("adding node {id} as a learner"));
        }
    }
    if *voters == self::voters(raft) {
        return Outcome::Done;
    }
    match raft.change_membership(voters.clone(), false).await {
        Ok(_) => Outcome::Done,
        Err(e) => outcome(e, "changing the voters"),
    }
}
