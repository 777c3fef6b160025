//! Cluster metadata through raft: vhosts, users, permissions, exchanges, bindings between
//! exchanges, and detours are changed by proposing a [`MetaOp`] to the metadata group; every
//! node applies the committed op to its own broker with the same code a single node runs, so
//! every replica reaches the same definitions in the same order.
//!
//! How a change flows: a channel or the admin plane calls the usual `Broker` method; on a
//! clustered node that method proposes the op (forwarded to the group's leader wherever it
//! is), waits until the entry is committed (fsync'd on a majority) and applied on this node,
//! and answers with the leader's result. When a node applies an entry, the same method runs
//! inside [`APPLYING`], which makes it act locally instead of proposing again.
//!
//! Classic queues are declared through the group too, with their home node (`classic`): each
//! lives on its home node, and every other node forwards to it.
//!
//! Reads that miss (a passive declare of an exchange or a connection to a vhost that this node
//! has not applied yet) first catch up with the leader ([`Broker::catch_up`]), so a change
//! confirmed on one node is visible on every node that is asked about it afterwards.

use crate::amqp::constants::ReplyCode;
use crate::amqp::FieldTable;
use crate::auth::{Permission, User};
use crate::broker::{Broker, ExchangeDeclare};
use crate::exchange::{Binding, Destination};
use crate::quorum::QuorumDecl;
use crate::refusal::Refusal;
use crate::vhost::Detour;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Weak};
use std::time::Duration;
use warren_cluster::node::Node;
use warren_cluster::state_machine::ReplicatedState;
use warren_cluster::types::{GroupId, NodeId};

/// The metadata group's id (and log stream). Durable classic queues take streams counted up
/// from 1, raft groups live far above them.
pub const META_GROUP: GroupId = GroupId(1 << 48);

/// How long a definition change may wait for the metadata group (a leader, a majority).
pub const META_DEADLINE: Duration = Duration::from_secs(15);

/// How long a committed metadata change waits for the other members to apply it.
const VISIBLE_WAIT: Duration = Duration::from_secs(1);

tokio::task_local! {
    /// Set while a node applies a committed op: the broker acts locally.
    static APPLYING: ();
}

/// Whether the current task is applying a committed metadata op.
pub fn applying() -> bool {
    APPLYING.try_with(|_| ()).is_ok()
}

/// A change to the cluster's definitions.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum MetaOp {
    /// Changes nothing: its index tells a node how far to catch up.
    Barrier,
    /// Creates the default vhost, user and permission if the cluster has no vhost and no user.
    EnsureDefaults {
        vhost: String,
        user: User,
        permission: Permission,
    },
    AddVhost(String),
    DeleteVhost(String),
    PutUser(User),
    DeleteUser(String),
    SetPermission(Permission),
    ClearPermission {
        user: String,
        vhost: String,
    },
    DeclareExchange {
        vhost: String,
        name: String,
        kind: String,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        /// Wire encoding of the arguments table.
        arguments: Vec<u8>,
    },
    /// Unconditional: `if-unused` is checked by the proposing node.
    DeleteExchange {
        vhost: String,
        name: String,
    },
    Bind {
        vhost: String,
        binding: Binding,
    },
    Unbind {
        vhost: String,
        binding: Binding,
    },
    StartDetour {
        vhost: String,
        detour: Detour,
    },
    StopDetour {
        vhost: String,
        source: String,
        destination: Destination,
    },
    DeclareQuorumQueue(crate::quorum::QuorumDecl),
    /// Unconditional: `if-unused` and `if-empty` are checked by the proposing node.
    DeleteQuorumQueue {
        vhost: String,
        name: String,
    },
    /// A classic queue homed on `decl.home`.
    DeclareClassicQueue(crate::classic::ClassicDecl),
    /// Unconditional: `if-unused` and `if-empty` are checked by the proposing node. Only the
    /// queue with this `uid` is deleted.
    DeleteClassicQueue {
        vhost: String,
        name: String,
        uid: u64,
    },
    /// A quorum queue's replicas changed (a member is being removed).
    SetQuorumReplicas {
        vhost: String,
        name: String,
        replicas: Vec<NodeId>,
    },
}

/// What an applied op answers.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum MetaOk {
    Done,
    /// For adds that may find the thing already there.
    Created(bool),
}

type MetaReply = Result<MetaOk, (u16, String)>;

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(value, bincode::config::standard())
        .expect("metadata always encodes")
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    bincode::serde::decode_from_slice(bytes, bincode::config::standard())
        .map(|(v, _)| v)
        .map_err(|e| e.to_string())
}

/// The reply code with this number (541 INTERNAL_ERROR for one not refused by operations).
pub fn reply_code(code: u16) -> ReplyCode {
    use ReplyCode::*;
    [
        NotFound,
        AccessRefused,
        ResourceLocked,
        PreconditionFailed,
        SyntaxError,
        CommandInvalid,
        NotAllowed,
        NotImplemented,
        ConnectionForced,
    ]
    .into_iter()
    .find(|c| *c as u16 == code)
    .unwrap_or(InternalError)
}

/// Everything the metadata group holds, as a snapshot carries it.
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq)]
pub struct Replicated {
    pub vhosts: BTreeSet<String>,
    pub users: BTreeMap<String, User>,
    pub permissions: BTreeMap<(String, String), Permission>,
    /// `(vhost, name)` → the declaration op.
    pub exchanges: BTreeMap<(String, String), MetaOpExchange>,
    pub bindings: BTreeSet<(String, Binding)>,
    pub detours: BTreeSet<(String, Detour)>,
    /// `(vhost, name)` → the quorum queue.
    pub quorum_queues: BTreeMap<(String, String), crate::quorum::QuorumDecl>,
    /// `(vhost, name)` → the classic queue.
    pub classic_queues: BTreeMap<(String, String), crate::classic::ClassicDecl>,
}

/// An exchange's declaration as replicated.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MetaOpExchange {
    pub kind: String,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: Vec<u8>,
}

/// The metadata group's state machine: the node's broker.
#[derive(Debug)]
pub struct MetaState {
    broker: Weak<Broker>,
}

impl MetaState {
    pub fn new(broker: &Arc<Broker>) -> MetaState {
        MetaState {
            broker: Arc::downgrade(broker),
        }
    }
}

impl ReplicatedState for MetaState {
    async fn apply(&mut self, _index: u64, command: &bytes::Bytes) -> Vec<u8> {
        let reply: MetaReply = match (self.broker.upgrade(), decode::<MetaOp>(command)) {
            (Some(broker), Ok(op)) => APPLYING
                .scope((), async move { broker.apply_meta(op).await })
                .await
                .map_err(|r| (r.code as u16, r.text)),
            (None, _) => Err((ReplyCode::InternalError as u16, "node stopping".into())),
            (_, Err(e)) => {
                tracing::error!(error = %e, "undecodable metadata entry skipped");
                Err((ReplyCode::InternalError as u16, e))
            }
        };
        encode(&reply)
    }

    fn snapshot(&self) -> Vec<u8> {
        let state = self
            .broker
            .upgrade()
            .map(|b| b.replicated_definitions())
            .unwrap_or_default();
        encode(&state)
    }

    async fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        let target: Replicated = decode(snapshot)?;
        let broker = self.broker.upgrade().ok_or("node stopping")?;
        APPLYING
            .scope((), async move { broker.reconcile(target).await })
            .await;
        Ok(())
    }
}

impl Broker {
    /// The cluster node, when this broker is clustered and the caller is not applying a
    /// committed op (then the change must be proposed rather than made).
    pub(crate) fn proposer(&self) -> Option<&Node> {
        if applying() {
            None
        } else {
            self.cluster_node()
        }
    }

    /// Proposes `op`, waits until it is applied on this node, and returns the leader's answer.
    pub(crate) async fn replicate(&self, node: &Node, op: MetaOp) -> Result<MetaOk, Refusal> {
        let unavailable = |e: warren_cluster::node::ProposeError| {
            tracing::warn!(error = %e, "cluster metadata unavailable");
            Refusal::internal(format!("cluster metadata unavailable: {e}"))
        };
        let proposed = node
            .propose(META_GROUP, encode(&op), META_DEADLINE)
            .await
            .map_err(unavailable)?;
        node.wait_applied(META_GROUP, proposed.index, META_DEADLINE)
            .await
            .map_err(unavailable)?;
        if !matches!(op, MetaOp::Barrier) {
            // Visible on every member before the client hears `*-ok`, as RabbitMQ's
            // definitions are: a binding confirmed through one node routes a publish through
            // another at once. A member down or cut off is not waited for beyond a moment.
            let behind = node
                .await_applied_everywhere(META_GROUP, proposed.index, VISIBLE_WAIT)
                .await;
            if !behind.is_empty() {
                tracing::debug!(
                    ?behind,
                    index = proposed.index,
                    "members not caught up with a metadata change"
                );
            }
        }
        let reply: MetaReply = decode(&proposed.reply).map_err(Refusal::internal)?;
        reply.map_err(|(code, text)| Refusal::new(reply_code(code), text))
    }

    /// On a clustered node, applies everything the metadata group committed so far (one
    /// round trip to the leader). Called before answering "not found".
    pub async fn catch_up(&self) {
        if let Some(node) = self.proposer() {
            if let Err(refusal) = self.replicate(node, MetaOp::Barrier).await {
                tracing::debug!(%refusal, "could not catch up with the metadata group");
            }
        }
    }

    async fn apply_meta(self: &Arc<Broker>, op: MetaOp) -> Result<MetaOk, Refusal> {
        use crate::broker::Added;
        let created = |a: Added| MetaOk::Created(a == Added::Created);
        match op {
            MetaOp::Barrier => Ok(MetaOk::Done),
            MetaOp::EnsureDefaults {
                vhost,
                user,
                permission,
            } => {
                if self.vhost_names().is_empty() && self.users().is_empty() {
                    self.add_vhost(&vhost).await?;
                    self.put_user(user).await?;
                    self.set_permission(permission).await?;
                    tracing::info!(%vhost, "created the cluster's default user and vhost");
                    Ok(MetaOk::Created(true))
                } else {
                    Ok(MetaOk::Created(false))
                }
            }
            MetaOp::AddVhost(name) => self.add_vhost(&name).await.map(created),
            MetaOp::DeleteVhost(name) => self.delete_vhost(&name).await.map(|_| MetaOk::Done),
            MetaOp::PutUser(user) => self.put_user(user).await.map(|_| MetaOk::Done),
            MetaOp::DeleteUser(name) => self.delete_user(&name).await.map(|_| MetaOk::Done),
            MetaOp::SetPermission(p) => self.set_permission(p).await.map(|_| MetaOk::Done),
            MetaOp::ClearPermission { user, vhost } => self
                .clear_permission(&user, &vhost)
                .await
                .map(|_| MetaOk::Done),
            MetaOp::DeclareExchange {
                vhost,
                name,
                kind,
                durable,
                auto_delete,
                internal,
                arguments,
            } => {
                let arguments = FieldTable::decode(arguments.into()).unwrap_or_default();
                let d = ExchangeDeclare {
                    name,
                    kind,
                    passive: false,
                    durable,
                    auto_delete,
                    internal,
                    arguments,
                };
                self.exchange_declare(&vhost, d).await.map(|_| MetaOk::Done)
            }
            MetaOp::DeleteExchange { vhost, name } => self
                .exchange_delete(&vhost, &name, false)
                .await
                .map(|_| MetaOk::Done),
            MetaOp::Bind { vhost, binding } => self
                .bind(&vhost, crate::delivery::ConnId(0), binding)
                .await
                .map(|_| MetaOk::Done),
            MetaOp::Unbind { vhost, binding } => self
                .unbind(&vhost, crate::delivery::ConnId(0), binding)
                .await
                .map(|_| MetaOk::Done),
            MetaOp::StartDetour { vhost, detour } => {
                self.start_detour(&vhost, detour).await.map(created)
            }
            MetaOp::StopDetour {
                vhost,
                source,
                destination,
            } => self
                .stop_detour(&vhost, &source, &destination)
                .await
                .map(|_| MetaOk::Done),
            MetaOp::DeclareQuorumQueue(decl) => {
                self.declare_quorum_here(decl).await.map(|_| MetaOk::Done)
            }
            MetaOp::DeleteQuorumQueue { vhost, name } => self
                .delete_quorum_here(&vhost, &name)
                .await
                .map(|_| MetaOk::Done),
            MetaOp::DeclareClassicQueue(decl) => self.declare_classic_here(decl).await,
            MetaOp::DeleteClassicQueue { vhost, name, uid } => {
                self.delete_classic_here(&vhost, &name, uid).await;
                Ok(MetaOk::Done)
            }
            MetaOp::SetQuorumReplicas {
                vhost,
                name,
                replicas,
            } => self
                .set_quorum_replicas_here(&vhost, &name, replicas)
                .await
                .map(|_| MetaOk::Done),
        }
    }

    /// What this node holds of the replicated definitions.
    pub fn replicated_definitions(&self) -> Replicated {
        let mut out = Replicated::default();
        for user in self.users() {
            out.users.insert(user.name.clone(), user);
        }
        for p in self.permissions() {
            out.permissions
                .insert((p.vhost.clone(), p.user.clone()), p.clone());
        }
        let quorum = self.quorum_queues();
        for q in &quorum {
            out.quorum_queues
                .insert((q.decl.vhost.clone(), q.decl.name.clone()), q.decl.clone());
        }
        for c in self.classic_queues() {
            out.classic_queues
                .insert((c.vhost.clone(), c.name.clone()), c);
        }
        let classic = &out.classic_queues;
        let replicated_destination = |vhost: &str, d: &Destination| match d {
            Destination::Exchange(_) => true,
            Destination::Queue(q) => {
                classic.contains_key(&(vhost.to_string(), q.clone()))
                    || quorum
                        .iter()
                        .any(|x| x.decl.vhost == vhost && x.decl.name == *q)
            }
        };
        for name in self.vhost_names() {
            let Some(vhost) = self.vhost(&name) else {
                continue;
            };
            out.vhosts.insert(name.clone());
            let state = vhost.read();
            for x in state.exchanges.values() {
                if !crate::broker::is_standard_exchange(x.name()) {
                    let d = &x.decl;
                    out.exchanges.insert(
                        (name.clone(), x.name().to_string()),
                        MetaOpExchange {
                            kind: d.kind.clone(),
                            durable: d.durable,
                            auto_delete: d.auto_delete,
                            internal: d.internal,
                            arguments: d.arguments.clone(),
                        },
                    );
                }
                for b in x.bindings() {
                    if replicated_destination(&name, &b.destination) {
                        out.bindings.insert((name.clone(), b.clone()));
                    }
                }
            }
            for d in state.detours.values().flatten() {
                out.detours.insert((name.clone(), d.clone()));
            }
        }
        out
    }

    /// Makes this node's replicated definitions equal to `target` (a snapshot installed from
    /// the leader): removes what it lacks, adds what it has.
    async fn reconcile(self: &Arc<Broker>, target: Replicated) {
        let current = self.replicated_definitions();
        let log = |what: &str, r: Refusal| tracing::warn!(%what, refusal = %r, "reconcile");
        for (vhost, d) in current.detours.difference(&target.detours) {
            if let Err(r) = self.stop_detour(vhost, &d.source, &d.destination).await {
                log("detour", r);
            }
        }
        for (vhost, b) in current.bindings.difference(&target.bindings) {
            if let Err(r) = self
                .unbind(vhost, crate::delivery::ConnId(0), b.clone())
                .await
            {
                log("binding", r);
            }
        }
        for (key, q) in &current.quorum_queues {
            match target.quorum_queues.get(key) {
                Some(t) if t == q => {}
                // The same queue with other replicas: moved, not recreated.
                Some(t)
                    if QuorumDecl {
                        replicas: q.replicas.clone(),
                        bootstrap: q.bootstrap,
                        ..t.clone()
                    } == *q =>
                {
                    if let Err(r) = self
                        .set_quorum_replicas_here(&key.0, &key.1, t.replicas.clone())
                        .await
                    {
                        log("quorum queue", r);
                    }
                }
                _ => {
                    if let Err(r) = self.delete_quorum_here(&key.0, &key.1).await {
                        log("quorum queue", r);
                    }
                }
            }
        }
        for ((vhost, name), x) in &current.exchanges {
            if target.exchanges.get(&(vhost.clone(), name.clone())) != Some(x) {
                if let Err(r) = self.exchange_delete(vhost, name, false).await {
                    log("exchange", r);
                }
            }
        }
        for key in current.permissions.keys() {
            if !target.permissions.contains_key(key) {
                if let Err(r) = self.clear_permission(&key.1, &key.0).await {
                    log("permission", r);
                }
            }
        }
        for name in current.users.keys() {
            if !target.users.contains_key(name) {
                if let Err(r) = self.delete_user(name).await {
                    log("user", r);
                }
            }
        }
        for name in current.vhosts.difference(&target.vhosts) {
            if let Err(r) = self.delete_vhost(name).await {
                log("vhost", r);
            }
        }
        for name in &target.vhosts {
            if let Err(r) = self.add_vhost(name).await {
                log("vhost", r);
            }
        }
        for (name, user) in target.users {
            if current.users.get(&name) != Some(&user) {
                if let Err(r) = self.put_user(user).await {
                    log("user", r);
                }
            }
        }
        for (key, p) in target.permissions {
            if current.permissions.get(&key) != Some(&p) {
                if let Err(r) = self.set_permission(p).await {
                    log("permission", r);
                }
            }
        }
        for ((vhost, name), x) in target.exchanges {
            let d = ExchangeDeclare {
                name,
                kind: x.kind,
                passive: false,
                durable: x.durable,
                auto_delete: x.auto_delete,
                internal: x.internal,
                arguments: FieldTable::decode(x.arguments.into()).unwrap_or_default(),
            };
            if let Err(r) = self.exchange_declare(&vhost, d).await {
                log("exchange", r);
            }
        }
        self.reconcile_classic(&target.classic_queues).await;
        let now = self.replicated_definitions().quorum_queues;
        for (key, q) in target.quorum_queues {
            if now.get(&key) != Some(&q) {
                if let Err(r) = self.declare_quorum_here(q).await {
                    log("quorum queue", r);
                }
            }
        }
        for (vhost, b) in target.bindings {
            if let Err(r) = self.bind(&vhost, crate::delivery::ConnId(0), b).await {
                log("binding", r);
            }
        }
        for (vhost, d) in target.detours {
            if let Err(r) = self.start_detour(&vhost, d).await {
                log("detour", r);
            }
        }
    }
}

/// Starts serving the raft RPCs on this node's cluster address (from the members list).
pub async fn serve_node(
    broker: &Arc<Broker>,
    node: &Node,
) -> Result<(), crate::error::BrokerError> {
    let addr = node.config().own_address().to_string();
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|e| crate::error::BrokerError::Cluster(format!("binding {addr}: {e}")))?;
    let groups = node.groups().clone();
    let queues = crate::quorum::forward::QueuesService::server(broker);
    tracing::info!(node = node.id(), %addr, "cluster listener up");
    tokio::spawn(async move {
        // TCP_NODELAY on every accepted connection: the builder's own `tcp_nodelay` applies only
        // to listeners it binds itself. Without it, the server's small HTTP/2 frames (window
        // updates, replies) wait behind Nagle for the peer's delayed ACK, ~40 ms each time: a
        // quorum queue's large AppendEntries took 50 ms to commit instead of a few.
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let served = tonic::transport::Server::builder()
            .add_service(warren_cluster::network::RaftService::new(groups))
            .add_service(queues)
            .serve_with_incoming(incoming)
            .await;
        if let Err(error) = served {
            tracing::error!(%error, "cluster listener stopped");
        }
    });
    Ok(())
}

impl Broker {
    /// Makes sure the cluster has the default user and vhost (when it has no user and no vhost
    /// at all) and the users, vhosts and permissions this node's configuration lists. Waits,
    /// retrying, until the metadata group has a majority.
    pub(crate) async fn ensure_cluster_access(&self) {
        let Some(node) = self.cluster_node() else {
            return;
        };
        let d = &self.config.default_user;
        let mut ops = vec![MetaOp::EnsureDefaults {
            vhost: d.vhost.clone(),
            user: User::with_password(&d.user, &d.password, vec!["administrator".into()]),
            permission: Permission {
                user: d.user.clone(),
                vhost: d.vhost.clone(),
                configure: ".*".into(),
                write: ".*".into(),
                read: ".*".into(),
            },
        }];
        ops.extend(self.config.vhosts.iter().cloned().map(MetaOp::AddVhost));
        for u in &self.config.users {
            let unchanged = self
                .user(&u.name)
                .is_some_and(|c| c.tags == u.tags && c.check_password(&u.password));
            if !unchanged {
                ops.push(MetaOp::PutUser(User::with_password(
                    &u.name,
                    &u.password,
                    u.tags.clone(),
                )));
            }
        }
        ops.extend(self.config.permissions.iter().map(|p| {
            MetaOp::SetPermission(Permission {
                user: p.user.clone(),
                vhost: p.vhost.clone(),
                configure: p.configure.clone(),
                write: p.write.clone(),
                read: p.read.clone(),
            })
        }));
        for op in ops {
            loop {
                match self.replicate(node, op.clone()).await {
                    Ok(_) => break,
                    Err(r) if r.code == ReplyCode::InternalError => {
                        tracing::info!(refusal = %r, "waiting for a majority of the cluster");
                    }
                    Err(r) => {
                        tracing::warn!(refusal = %r, ?op, "configured access refused");
                        break;
                    }
                }
            }
        }
    }
}
