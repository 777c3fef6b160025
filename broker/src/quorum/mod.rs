//! Quorum queues on a cluster: a queue whose messages are a raft group's log, replicated on
//! every member (or three of them on larger clusters), served by the group's leader.
//!
//! - [`state`]: the replicated state (where in the log each stored message is) and the
//!   commands that change it.
//! - [`store`]: the leader's message store — the single-node queue actor runs unchanged on it,
//!   its appends and removals proposed to the group, its confirms sent once committed.
//! - [`router`]: each node's handle of the queue: to the local actor while this node leads, to
//!   the leading node otherwise.
//! - [`forward`]: the gRPC service that serves what other nodes forward.
//!
//! A quorum queue is declared and deleted through the metadata group (`replication`), so every
//! node registers it, and the replicas start its raft group, in the same order.
//!
//! A storage error in one replica (a record that fails its checksum, a failed read or write)
//! fences that replica only ([`Fence`]): its raft group is out of service, the error is logged
//! and reported by the admin plane, and the node goes on serving the queue's clients through
//! the other replicas, and every other queue as before.

pub mod forward;
pub mod router;
pub mod state;
pub mod store;

use crate::broker::Broker;
use crate::exchange::Destination;
use crate::queue::{QueueArgs, QueueCounters, QueueDecl, QueueHandle, QueueId, Refusal};
use crate::vhost::Vhost;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tokio::sync::{mpsc, watch};
use warren_cluster::types::{GroupId, NodeId};

/// Raft groups of quorum queues live above the metadata group's id.
const GROUP_BASE: u64 = crate::replication::META_GROUP.0 + 1;

/// How many replicas a new quorum queue gets on a large cluster (all members on up to this
/// many nodes).
pub const REPLICAS: usize = 3;

/// A quorum queue as the metadata group holds it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct QuorumDecl {
    pub vhost: String,
    pub name: String,
    /// Wire encoding of the arguments table.
    pub arguments: Vec<u8>,
    pub group: u64,
    /// The members holding a replica (changed by membership changes).
    pub replicas: Vec<NodeId>,
    /// The replica that initializes the queue's group: the first of the replicas chosen at
    /// declaration (a replica added later never initializes the group, it is brought in).
    /// 0 (nobody) once the replicas changed: the group exists, and a replica that dropped its
    /// copy and rejoins (a repair) must not initialize a second one.
    pub bootstrap: NodeId,
}

/// A fresh group id for a new queue (random: proposers need not agree on a counter; a clash
/// in 2^40 is refused at declaration).
pub fn new_group_id() -> u64 {
    use rand::Rng;
    GROUP_BASE + rand::thread_rng().gen_range(0..(1u64 << 40))
}

/// The replicas of a new queue: every member up to [`REPLICAS`], else that many starting at a
/// random member.
pub fn choose_replicas(members: &[NodeId]) -> Vec<NodeId> {
    use rand::Rng;
    if members.len() <= REPLICAS {
        return members.to_vec();
    }
    let start = rand::thread_rng().gen_range(0..members.len());
    let mut chosen: Vec<NodeId> = (0..REPLICAS)
        .map(|i| members[(start + i) % members.len()])
        .collect();
    chosen.sort_unstable();
    chosen
}

/// Starts this node's replica of a queue's raft group; a replica that cannot start (its log
/// or state cannot be read) is fenced.
async fn start_replica(
    node: &warren_cluster::node::Node,
    decl: &QuorumDecl,
    data: &state::SharedData,
    fence: &Fence,
) {
    let replica = state::QuorumState { data: data.clone() };
    if let Err(error) = node
        .start_group(
            GroupId(decl.group),
            &decl.replicas,
            Some(decl.bootstrap),
            replica,
        )
        .await
    {
        fence.set(&decl.name, format!("its raft group did not start: {error}"));
    }
}

/// Why this node's replica of a quorum queue is out of service, if it is.
#[derive(Debug, Clone, Default)]
pub struct Fence(Arc<std::sync::Mutex<Option<String>>>);

impl Fence {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes this node's replica of `queue` out of service for `reason`.
    pub fn set(&self, queue: &str, reason: String) {
        tracing::error!(
            %queue,
            %reason,
            "replica of the quorum queue fenced after a storage error: the queue is served \
             through the other replicas; the replica's log is left as it is for inspection"
        );
        *self.lock() = Some(reason);
    }

    /// The replica is gone (this node no longer holds one).
    fn clear(&self) {
        *self.lock() = None;
    }

    pub fn reason(&self) -> Option<String> {
        self.lock().clone()
    }
}

/// This node's part of one quorum queue.
#[derive(Debug)]
pub struct QuorumQueue {
    pub decl: QuorumDecl,
    pub handle: Arc<QueueHandle>,
    stop: Arc<watch::Sender<bool>>,
    /// The replicas, as the router follows them.
    replicas: Arc<watch::Sender<Vec<NodeId>>>,
    /// What this node's replica holds (empty on a node without one).
    data: state::SharedData,
    /// Set when this node's replica is out of service.
    pub fence: Fence,
}

impl QuorumQueue {
    pub fn group(&self) -> GroupId {
        GroupId(self.decl.group)
    }
}

impl Broker {
    /// Registers a quorum queue on this node (applying its declaration): its handle, its raft
    /// group when this node is a replica, and the router serving the handle.
    pub(crate) async fn declare_quorum_here(
        self: &Arc<Broker>,
        decl: QuorumDecl,
    ) -> Result<(), Refusal> {
        let vhost = self
            .vhost(&decl.vhost)
            .ok_or_else(|| Refusal::not_found(format!("no vhost '{}'", decl.vhost)))?;
        if let Some(existing) = vhost.queue(&decl.name) {
            let arguments =
                crate::amqp::FieldTable::decode(decl.arguments.clone().into()).unwrap_or_default();
            crate::queue::args::equivalent(&existing.decl.arguments(), &arguments).map_err(
                |text| {
                    Refusal::precondition(format!(
                        "{text} (queue '{}' in vhost '{}')",
                        decl.name, decl.vhost
                    ))
                },
            )?;
            return Ok(());
        }
        if self
            .quorum_queues()
            .iter()
            .any(|q| q.decl.group == decl.group)
        {
            return Err(Refusal::internal("raft group id clash; declare again"));
        }
        let Some(node) = self.cluster_node().cloned() else {
            return Err(Refusal::internal("a quorum queue needs a cluster"));
        };
        let arguments =
            crate::amqp::FieldTable::decode(decl.arguments.clone().into()).unwrap_or_default();
        let args = QueueArgs::parse(&arguments).map_err(Refusal::precondition)?;
        let queue_decl = QueueDecl {
            vhost: decl.vhost.clone(),
            name: decl.name.clone(),
            durable: true,
            auto_delete: false,
            exclusive_owner: None,
            arguments: decl.arguments.clone(),
            stream: None,
            uid: 0,
        };
        let (tx, rx) = mpsc::channel(self.config.limits.queue_inbox_max);
        let handle = Arc::new(QueueHandle::new(
            QueueId(self.next_queue_id()),
            queue_decl,
            args,
            Arc::new(QueueCounters::default()),
            tx,
        ));
        let data = state::SharedData::default();
        let group = GroupId(decl.group);
        let fence = Fence::default();
        if decl.replicas.contains(&node.id()) {
            start_replica(&node, &decl, &data, &fence).await;
        }
        let (stop, stop_rx) = watch::channel(false);
        let (replicas, replicas_rx) = watch::channel(decl.replicas.clone());
        let router = router::Router {
            broker: Arc::clone(self),
            vhost: Arc::clone(&vhost),
            handle: Arc::clone(&handle),
            group,
            data: data.clone(),
            inbox: rx,
            stop: stop_rx,
            replicas: replicas_rx,
            fence: fence.clone(),
            kind: router::Kind::Quorum,
        };
        let span = tracing::info_span!("quorum", vhost = %decl.vhost, queue = %decl.name);
        tokio::spawn(tracing::Instrument::instrument(router.run(), span));
        vhost
            .write()
            .queues
            .insert(decl.name.clone(), Arc::clone(&handle));
        self.register_quorum(Arc::new(QuorumQueue {
            decl,
            handle,
            stop: Arc::new(stop),
            replicas: Arc::new(replicas),
            data,
            fence,
        }));
        Ok(())
    }

    /// Applies a change of a quorum queue's replicas on this node: a node that gained a
    /// replica starts the queue's group (it waits for the group's leader to bring it in); one
    /// that lost its replica stops the group and drops its log; every node's router follows.
    pub(crate) async fn set_quorum_replicas_here(
        &self,
        vhost: &str,
        name: &str,
        replicas: Vec<NodeId>,
    ) -> Result<(), Refusal> {
        let Some(q) = self.quorum_queue(vhost, name) else {
            return Err(Refusal::not_found(format!(
                "no quorum queue '{name}' in vhost '{vhost}'"
            )));
        };
        let Some(node) = self.cluster_node().cloned() else {
            return Err(Refusal::internal("a quorum queue needs a cluster"));
        };
        let mut decl = q.decl.clone();
        decl.replicas = replicas;
        decl.bootstrap = 0;
        let me = node.id();
        let (had, has) = (q.decl.replicas.contains(&me), decl.replicas.contains(&me));
        if has && !had {
            start_replica(&node, &decl, &q.data, &q.fence).await;
        }
        if had && !has {
            node.stop_group(q.group()).await;
            q.fence.clear();
            if let Err(error) = warren_cluster::log_store::destroy(&self.wal, q.group()) {
                tracing::error!(%error, queue = %name, "dropping the queue's raft log failed");
            }
            *state::lock(&q.data) = state::QueueData::default();
        }
        tracing::info!(%vhost, queue = %name, replicas = ?decl.replicas, "quorum queue replicas changed");
        let _ = q.replicas.send(decl.replicas.clone());
        self.replace_quorum(Arc::new(QuorumQueue {
            decl,
            handle: Arc::clone(&q.handle),
            stop: Arc::clone(&q.stop),
            replicas: Arc::clone(&q.replicas),
            data: q.data.clone(),
            fence: q.fence.clone(),
        }));
        Ok(())
    }

    /// Removes a quorum queue from this node (applying its deletion): the router stops, the
    /// raft group stops and its log is dropped, bindings to it go.
    pub(crate) async fn delete_quorum_here(
        &self,
        vhost_name: &str,
        name: &str,
    ) -> Result<u64, Refusal> {
        let Some(q) = self.unregister_quorum(vhost_name, name) else {
            return Ok(0);
        };
        let ready = q.handle.ready();
        let _ = q.stop.send(true);
        if let Some(node) = self.cluster_node() {
            node.stop_group(q.group()).await;
            if let Err(error) = warren_cluster::log_store::destroy(&self.wal, q.group()) {
                tracing::error!(%error, queue = %name, "dropping the queue's raft log failed");
            }
        }
        if let Some(vhost) = self.vhost(vhost_name) {
            let mut state = vhost.write();
            if state
                .queues
                .get(name)
                .is_some_and(|h| Arc::ptr_eq(h, &q.handle))
            {
                state.queues.remove(name);
            }
            let gone = Destination::Queue(name.to_string());
            self.remove_bindings_to(&mut state, vhost_name, &gone)?;
        }
        tracing::info!(vhost = %vhost_name, queue = %name, "quorum queue deleted");
        Ok(ready)
    }

    /// Proposes the deletion of a quorum queue that expired (`x-expires`), as its leader saw.
    pub(crate) async fn delete_expired_quorum(&self, vhost: &str, name: &str) {
        let Some(node) = self.proposer() else {
            return;
        };
        let op = crate::replication::MetaOp::DeleteQuorumQueue {
            vhost: vhost.to_string(),
            name: name.to_string(),
        };
        if let Err(refusal) = self.replicate(node, op).await {
            tracing::warn!(%vhost, queue = %name, %refusal, "deleting an expired quorum queue failed");
        }
    }

    /// The quorum queue `name` of `vhost`, if it is one.
    pub fn quorum_queue(&self, vhost: &str, name: &str) -> Option<Arc<QuorumQueue>> {
        self.quorum_queues()
            .into_iter()
            .find(|q| q.decl.vhost == vhost && q.decl.name == name)
    }

    /// Moves the leadership of quorum queue `name` to node `to` (a replica), waiting until it
    /// leads. A node that holds no working replica of the queue (none, or a fenced one) asks
    /// `to` to do it.
    pub async fn transfer_leadership(
        self: &Arc<Broker>,
        vhost: &str,
        name: &str,
        to: u64,
    ) -> Result<(), String> {
        let timeout = std::time::Duration::from_secs(10);
        let (Some(node), Some(q)) = (self.cluster_node(), self.quorum_queue(vhost, name)) else {
            return Err(format!(
                "queue '{name}' in vhost '{vhost}' is not a quorum queue of a cluster"
            ));
        };
        if node.groups().get(q.group()).is_some() {
            return node.transfer_leadership(q.group(), to, timeout).await;
        }
        if to == node.id() {
            return Err(format!(
                "this node holds no working replica of queue '{name}'"
            ));
        }
        let mut request = tonic::Request::new(warren_proto::queues::CallRequest {
            queue: Some(warren_proto::queues::QueueRef {
                vhost: vhost.into(),
                queue: name.into(),
            }),
            op: 5,
            to,
        });
        request.set_timeout(timeout + std::time::Duration::from_secs(5));
        let channel = node.channel_to(to)?;
        warren_proto::queues::queues_client::QueuesClient::new(channel)
            .call(request)
            .await
            .map(drop)
            .map_err(|status| format!("node {to}: {}", status.message()))
    }

    /// Whether `handle` is a quorum queue's (replicated rather than local).
    pub fn is_quorum(&self, vhost: &Vhost, handle: &QueueHandle) -> bool {
        self.quorum_queue(&vhost.name, handle.name())
            .is_some_and(|q| q.handle.id == handle.id)
    }
}
