//! Cluster membership: adding and removing nodes.
//!
//! The cluster's members are the voters of the metadata group; its raft membership (with each
//! member's address) is the authority, replicated like everything else. A node joins when an
//! operator adds it: it starts with `cluster.join = true` and the members' addresses in its
//! configuration, and waits; [`Broker::add_member`] makes it a learner of the metadata group
//! (it receives the definitions), then a voter. Existing quorum queues keep their replicas, as
//! in RabbitMQ; new ones may be placed on the new node. A node that holds no replica of a
//! quorum queue forwards its clients' use of it to a replica.
//!
//! [`Broker::remove_member`] first moves each quorum queue replica off the node (to a member
//! that holds none of that queue, when there is one), then removes the node from the metadata
//! group. For each such queue: the new replica joins (the metadata records the grown set and
//! the new node starts the queue's group), the queue's group changes its voters, then the
//! metadata records the final set and the removed node drops its copy. Every step is
//! idempotent, so a removal interrupted by a crash is finished by running it again.

use crate::broker::Broker;
use crate::replication::{MetaOp, META_GROUP};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use warren_cluster::types::{GroupId, NodeId};

/// How long one membership change (of one group) may take, learners catching up included.
const CHANGE_WITHIN: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error("this node is not part of a cluster")]
    NotClustered,
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Precondition(String),
    #[error("{0}")]
    Unavailable(String),
}

impl Broker {
    fn clustered(&self) -> Result<&warren_cluster::node::Node, MembershipError> {
        self.cluster_node().ok_or(MembershipError::NotClustered)
    }

    /// The cluster's members (the metadata group's voters) with their raft addresses.
    pub fn cluster_members(&self) -> BTreeMap<NodeId, String> {
        self.cluster_node()
            .map(|node| node.group_members(META_GROUP))
            .unwrap_or_default()
    }

    /// Adds node `id`, reached at raft address `address`, to the cluster. The node must be
    /// running (started with `cluster.join = true`): this returns once it has caught up with
    /// the metadata and votes.
    pub async fn add_member(
        self: &Arc<Broker>,
        id: NodeId,
        address: &str,
    ) -> Result<(), MembershipError> {
        let node = self.clustered()?;
        if id == 0 {
            return Err(MembershipError::Invalid("node ids start at 1".into()));
        }
        if address.parse::<std::net::SocketAddr>().is_err() && !address.contains(':') {
            return Err(MembershipError::Invalid(format!(
                "'{address}' is not a host:port raft address"
            )));
        }
        let mut voters: BTreeSet<NodeId> = self.cluster_members().into_keys().collect();
        if voters.contains(&id) {
            return Err(MembershipError::Precondition(format!(
                "node {id} is already a member"
            )));
        }
        voters.insert(id);
        let addresses = BTreeMap::from([(id, address.to_string())]);
        node.change_voters(META_GROUP, voters, addresses, CHANGE_WITHIN)
            .await
            .map_err(MembershipError::Unavailable)?;
        tracing::info!(node = id, %address, "member added to the cluster");
        Ok(())
    }

    /// Removes node `id` from the cluster, moving its quorum queue replicas to other members
    /// first. Its process should be stopped (before or after): it no longer takes part.
    pub async fn remove_member(self: &Arc<Broker>, id: NodeId) -> Result<(), MembershipError> {
        let node = self.clustered()?;
        let members = self.cluster_members();
        if !members.contains_key(&id) {
            return Err(MembershipError::NotFound(format!(
                "node {id} is not a member (members: {:?})",
                members.keys().collect::<Vec<_>>()
            )));
        }
        if members.len() == 1 {
            return Err(MembershipError::Precondition(
                "the last member of a cluster cannot be removed".into(),
            ));
        }
        for q in self.quorum_queues() {
            if q.decl.replicas.contains(&id) {
                self.move_replica_off(node, &q.decl.vhost, &q.decl.name, id, &members)
                    .await?;
            }
        }
        let voters: BTreeSet<NodeId> = members.keys().copied().filter(|m| *m != id).collect();
        node.change_voters(META_GROUP, voters, BTreeMap::new(), CHANGE_WITHIN)
            .await
            .map_err(MembershipError::Unavailable)?;
        self.forget_classic_queues_of(id).await;
        tracing::info!(node = id, "member removed from the cluster");
        Ok(())
    }

    /// Moves queue `name`'s replica off node `gone`, to a member without one if any.
    async fn move_replica_off(
        self: &Arc<Broker>,
        node: &warren_cluster::node::Node,
        vhost: &str,
        name: &str,
        gone: NodeId,
        members: &BTreeMap<NodeId, String>,
    ) -> Result<(), MembershipError> {
        let Some(q) = self.quorum_queue(vhost, name) else {
            return Ok(());
        };
        let replicas: BTreeSet<NodeId> = q.decl.replicas.iter().copied().collect();
        let spare = members
            .keys()
            .copied()
            .find(|m| *m != gone && !replicas.contains(m));
        let mut target: BTreeSet<NodeId> =
            replicas.iter().copied().filter(|r| *r != gone).collect();
        if target.is_empty() && spare.is_none() {
            return Err(MembershipError::Precondition(format!(
                "node {gone} holds the only replica of queue '{name}' in vhost '{vhost}' and no other member can take it"
            )));
        }
        if let Some(spare) = spare {
            target.insert(spare);
            // The new replica starts the queue's group before the group adds it.
            let grown: BTreeSet<NodeId> = replicas.iter().copied().chain([spare]).collect();
            self.propose_replicas(node, vhost, name, &grown).await?;
        }
        let addresses: BTreeMap<NodeId, String> = target
            .iter()
            .filter_map(|id| members.get(id).map(|a| (*id, a.clone())))
            .collect();
        node.change_voters(
            GroupId(q.decl.group),
            target.clone(),
            addresses,
            CHANGE_WITHIN,
        )
        .await
        .map_err(|e| {
            MembershipError::Unavailable(format!(
                "moving queue '{name}' in vhost '{vhost}' off node {gone}: {e}"
            ))
        })?;
        self.propose_replicas(node, vhost, name, &target).await?;
        tracing::info!(%vhost, queue = %name, from = gone, replicas = ?target, "quorum queue replica moved");
        Ok(())
    }

    /// Rebuilds queue `name`'s replica on node `id` from the other replicas (it was fenced
    /// after a storage error, or its copy is otherwise not to be trusted): the queue's group
    /// drops `id` from its voters, the metadata records the replicas without it (node `id`
    /// drops its copy and its fence), then with it again (it starts an empty replica), and the
    /// group takes it back: a learner until it has caught up (from the leader's log or a
    /// snapshot), then a voter. Like the other changes, running it again after a failure
    /// finishes it.
    pub async fn repair_replica(
        self: &Arc<Broker>,
        vhost: &str,
        name: &str,
        id: NodeId,
    ) -> Result<(), MembershipError> {
        let node = self.clustered()?;
        let Some(q) = self.quorum_queue(vhost, name) else {
            return Err(MembershipError::Precondition(format!(
                "queue '{name}' in vhost '{vhost}' is not a quorum queue"
            )));
        };
        let replicas: BTreeSet<NodeId> = q.decl.replicas.iter().copied().collect();
        if !replicas.contains(&id) {
            return Err(MembershipError::Invalid(format!(
                "node {id} holds no replica of queue '{name}' (replicas: {:?})",
                q.decl.replicas
            )));
        }
        let others: BTreeSet<NodeId> = replicas.iter().copied().filter(|r| *r != id).collect();
        if others.is_empty() {
            return Err(MembershipError::Precondition(format!(
                "node {id} holds the only replica of queue '{name}': there is nothing to rebuild it from"
            )));
        }
        let members = self.cluster_members();
        let addresses = |ids: &BTreeSet<NodeId>| -> BTreeMap<NodeId, String> {
            ids.iter()
                .filter_map(|i| members.get(i).map(|a| (*i, a.clone())))
                .collect()
        };
        let group = GroupId(q.decl.group);
        let failed = |step: &str, e: String| {
            MembershipError::Unavailable(format!(
                "repairing node {id}'s replica of queue '{name}': {step}: {e}"
            ))
        };
        node.change_voters(group, others.clone(), addresses(&others), CHANGE_WITHIN)
            .await
            .map_err(|e| failed("removing it from the group", e))?;
        self.propose_replicas(node, vhost, name, &others).await?;
        self.propose_replicas(node, vhost, name, &replicas).await?;
        node.change_voters(group, replicas.clone(), addresses(&replicas), CHANGE_WITHIN)
            .await
            .map_err(|e| failed("adding it back", e))?;
        tracing::info!(%vhost, queue = %name, node = id, "quorum queue replica rebuilt from the others");
        Ok(())
    }

    async fn propose_replicas(
        self: &Arc<Broker>,
        node: &warren_cluster::node::Node,
        vhost: &str,
        name: &str,
        replicas: &BTreeSet<NodeId>,
    ) -> Result<(), MembershipError> {
        let op = MetaOp::SetQuorumReplicas {
            vhost: vhost.to_string(),
            name: name.to_string(),
            replicas: replicas.iter().copied().collect(),
        };
        self.replicate(node, op)
            .await
            .map(drop)
            .map_err(|r| MembershipError::Unavailable(r.text))
    }
}
