//! Classic queues on a cluster: each lives on one node, its *home* (the node whose client
//! declared it), and every node knows it, as in RabbitMQ.
//!
//! - The declaration goes through the metadata group ([`MetaOp::DeclareClassicQueue`]), with
//!   the home node and a fresh id (`uid`), so a classic queue's name is taken cluster-wide: a
//!   second declaration anywhere is checked against it (406 if inequivalent, 405 if another
//!   connection holds it exclusively) and answered with its counts.
//! - The home node creates the queue (its messages, on its own log, as on a single node).
//!   Every other node registers a stand-in handle served by a router ([`Kind::Classic`]) that
//!   forwards publishes, consumers, gets and settlements to the home node over the nodes'
//!   queue-forwarding service, the way quorum queues reach their leader. So bindings to the
//!   queue are replicated like any other, and a publish on any node reaches it.
//! - Deletion (`queue.delete`, an exclusive owner's connection closing, auto-delete, expiry)
//!   removes the queue on its home node and proposes [`MetaOp::DeleteClassicQueue`] naming the
//!   `uid`, so every node drops its stand-in and the bindings to it, and a later queue of the
//!   same name is never mistaken for it.
//!
//! Restart: the home node loads its durable queues from its own definitions before the
//! metadata group replays, so the replayed bindings find them. A transient or exclusive queue
//! of an earlier run of this node (which the restart lost) is deleted cluster-wide when its
//! declaration is replayed; a queue of this node that the cluster deleted while the node was
//! away is deleted here once the node has caught up ([`Broker::settle_classic_queues`]).
//!
//! A node down (its process gone or cut off): its durable queues wait for it (their clients
//! get 404 "home node ... is down or inaccessible"), while the metadata group's leader deletes
//! its transient and exclusive queues cluster-wide once it has not heard from the node for
//! `cluster.node_down_after_ms` ([`Broker::watch_for_down_nodes`]), as RabbitMQ does at a
//! node-down. A node cut off but alive deletes its own copies when it hears of the deletions.

use crate::amqp::FieldTable;
use crate::broker::{Broker, QueueDeclare};
use crate::delivery::ConnId;
use crate::queue::{QueueArgs, QueueCommand, QueueCounters, QueueDecl, QueueHandle, QueueId};
use crate::quorum::router::{Kind, Router};
use crate::refusal::Refusal;
use crate::replication::{MetaOk, MetaOp};
use crate::vhost::Vhost;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use warren_cluster::types::{GroupId, NodeId};

/// A classic queue as the metadata group holds it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClassicDecl {
    pub vhost: String,
    pub name: String,
    /// The node that holds the queue.
    pub home: NodeId,
    /// Tells this queue apart from an earlier or later one of the same name.
    pub uid: u64,
    pub durable: bool,
    pub auto_delete: bool,
    /// The owning connection (on `home`) of an exclusive queue.
    pub exclusive_owner: Option<u64>,
    /// Wire encoding of the arguments table.
    pub arguments: Vec<u8>,
    /// The run of the home node's process that declared it: a later run never creates it (its
    /// transient state, and its exclusive owner, died with that run).
    pub incarnation: u64,
}

impl ClassicDecl {
    /// The declaration as `queue.declare` would ask for it.
    fn as_declare(&self) -> QueueDeclare {
        QueueDeclare {
            name: self.name.clone(),
            passive: false,
            durable: self.durable,
            exclusive: self.exclusive_owner.is_some(),
            auto_delete: self.auto_delete,
            arguments: FieldTable::decode(self.arguments.clone().into()).unwrap_or_default(),
        }
    }

    /// The queue's declaration on a node: `owner` is the exclusive owner as that node sees it.
    fn queue_decl(&self, owner: Option<ConnId>) -> QueueDecl {
        QueueDecl {
            vhost: self.vhost.clone(),
            name: self.name.clone(),
            durable: self.durable,
            auto_delete: self.auto_delete,
            exclusive_owner: owner,
            arguments: self.arguments.clone(),
            stream: None,
            uid: self.uid,
        }
    }
}

/// The owner other nodes see for an exclusive queue: no connection of theirs, so each gets
/// 405 RESOURCE_LOCKED, as RabbitMQ answers any connection but the owner.
const ELSEWHERE: ConnId = ConnId(u64::MAX);

/// Every node's registry of the cluster's classic queues.
#[derive(Debug)]
pub struct ClassicQueues {
    entries: Mutex<BTreeMap<(String, String), Entry>>,
    /// This run of the process.
    incarnation: u64,
    /// Set once this node, after its start, has caught up with the metadata group and deleted
    /// its queues that the cluster no longer holds.
    settled: AtomicBool,
    /// Serialises what applying declarations and deletions does to the node's queues with
    /// the start's settling.
    serial: tokio::sync::Mutex<()>,
}

impl Default for ClassicQueues {
    fn default() -> ClassicQueues {
        ClassicQueues {
            entries: Mutex::default(),
            incarnation: rand::random(),
            settled: AtomicBool::new(false),
            serial: tokio::sync::Mutex::new(()),
        }
    }
}

#[derive(Debug)]
struct Entry {
    decl: ClassicDecl,
    /// Set on the nodes other than the home node.
    proxy: Option<Proxy>,
    /// The home node is proposing the queue's deletion.
    deleting: bool,
}

#[derive(Debug)]
struct Proxy {
    handle: Arc<QueueHandle>,
    stop: watch::Sender<bool>,
    /// Kept so the router's replicas watch stays open.
    _home: watch::Sender<Vec<NodeId>>,
}

impl Proxy {
    fn stop(self) -> Arc<QueueHandle> {
        let _ = self.stop.send(true);
        self.handle
    }
}

type Key = (String, String);

fn key(vhost: &str, name: &str) -> Key {
    (vhost.to_string(), name.to_string())
}

impl ClassicQueues {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Key, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// How long the home node waits before proposing a deletion again (no majority).
const RETRY_DELETE: Duration = Duration::from_secs(1);

impl Broker {
    /// The cluster's classic queue `name` of `vhost`, as the metadata group holds it.
    pub fn classic_queue(&self, vhost: &str, name: &str) -> Option<ClassicDecl> {
        self.classic
            .lock()
            .get(&key(vhost, name))
            .map(|e| e.decl.clone())
    }

    /// Every classic queue of the cluster.
    pub fn classic_queues(&self) -> Vec<ClassicDecl> {
        self.classic
            .lock()
            .values()
            .map(|e| e.decl.clone())
            .collect()
    }

    fn me(&self) -> NodeId {
        self.cluster_node().map_or(0, |n| n.id())
    }

    /// Whether `handle` is the real queue homed here (rather than a stand-in, a quorum queue,
    /// or an earlier queue of the same name).
    fn is_home_queue(&self, vhost: &Vhost, handle: &QueueHandle, uid: u64) -> bool {
        handle.decl.uid == uid
            && !self.is_quorum(vhost, handle)
            && !self
                .classic
                .lock()
                .values()
                .any(|e| e.proxy.as_ref().is_some_and(|p| p.handle.id == handle.id))
    }

    /// Proposes a new classic queue homed on this node (for connection `conn`).
    pub(crate) async fn propose_classic_queue(
        &self,
        node: &warren_cluster::node::Node,
        conn: ConnId,
        vhost: &str,
        d: &QueueDeclare,
    ) -> Result<(), Refusal> {
        let decl = ClassicDecl {
            vhost: vhost.to_string(),
            name: d.name.clone(),
            home: node.id(),
            uid: rand::random::<u64>() | 1,
            durable: d.durable,
            auto_delete: d.auto_delete,
            exclusive_owner: d.exclusive.then_some(conn.0),
            arguments: d.arguments.encode().to_vec(),
            incarnation: self.classic.incarnation,
        };
        self.replicate(node, MetaOp::DeclareClassicQueue(decl))
            .await
            .map(drop)
    }

    /// Applies a classic queue's declaration on this node. The answer depends only on the
    /// replicated state (every node gives the same): the queue is new, or the same one again,
    /// or it is checked against the queue of that name.
    pub(crate) async fn declare_classic_here(
        self: &Arc<Broker>,
        decl: ClassicDecl,
    ) -> Result<MetaOk, Refusal> {
        let vhost = self
            .vhost(&decl.vhost)
            .ok_or_else(|| Refusal::not_found(format!("no vhost '{}'", decl.vhost)))?;
        let requested = decl.as_declare();
        let _serial = self.classic.serial.lock().await;
        if let Some(q) = self.quorum_queue(&decl.vhost, &decl.name) {
            crate::broker::check_equivalent(&q.handle.decl, &requested, &decl.vhost)?;
            return Ok(MetaOk::Created(false));
        }
        {
            let mut entries = self.classic.lock();
            if let Some(e) = entries.get(&key(&decl.vhost, &decl.name)) {
                if e.decl.uid == decl.uid {
                    return Ok(MetaOk::Created(false));
                }
                let owner = |d: &ClassicDecl| (d.home, d.exclusive_owner);
                if e.decl.exclusive_owner.is_some() && owner(&e.decl) != owner(&decl) {
                    return Err(crate::broker::locked(&decl.name, &decl.vhost));
                }
                let current = e.decl.queue_decl(e.decl.exclusive_owner.map(ConnId));
                crate::broker::check_equivalent(&current, &requested, &decl.vhost)?;
                return Ok(MetaOk::Created(false));
            }
            entries.insert(
                key(&decl.vhost, &decl.name),
                Entry {
                    decl: decl.clone(),
                    proxy: None,
                    deleting: false,
                },
            );
        }
        let me = self.me();
        // A queue of this name that the metadata no longer holds: once this node has settled,
        // one deleted while it was away, which goes. Before, it may be a later queue of the
        // name that the log replayed so far does not reach yet: it stays, and the start
        // settles it.
        if let Some(existing) = vhost.queue(&decl.name) {
            let settled = self.classic.settled.load(Ordering::Acquire);
            if settled && (existing.decl.uid != decl.uid || decl.home != me) {
                self.drop_stale_queue(&vhost, &existing).await;
            }
        }
        if decl.home != me {
            self.install_proxy(&vhost, &decl);
        } else if vhost.queue(&decl.name).is_some() {
            // Loaded from this node's definitions at start.
        } else if decl.incarnation != self.classic.incarnation {
            // Declared by an earlier run of this node and lost with it (a transient or
            // exclusive queue, or one whose creation the crash cut short).
            tracing::info!(vhost = %decl.vhost, queue = %decl.name, "a classic queue of this node did not survive its restart: deleting it cluster-wide");
            self.set_deleting(&decl, true);
            self.propose_deletion_until_done(decl);
        } else {
            let args = QueueArgs::parse(&requested.arguments).map_err(Refusal::precondition)?;
            let mut ddl = self.ddl_lock().await;
            let queue = decl.queue_decl(decl.exclusive_owner.map(ConnId));
            if let Err(refusal) = self.create_queue(&vhost, &mut ddl, queue, args).await {
                tracing::error!(vhost = %decl.vhost, queue = %decl.name, %refusal, "creating a classic queue homed here failed");
                return Err(refusal);
            }
        }
        Ok(MetaOk::Created(true))
    }

    /// Deletes a local queue the cluster's metadata does not hold (its messages go with it).
    /// Queues declared before the node was clustered (uid 0) are kept.
    async fn drop_stale_queue(&self, vhost: &Vhost, handle: &Arc<QueueHandle>) {
        if handle.decl.uid == 0 || self.is_quorum(vhost, handle) {
            return;
        }
        let stale_proxy = {
            let mut entries = self.classic.lock();
            entries.values_mut().find_map(|e| {
                e.proxy
                    .take_if(|p| p.handle.id == handle.id)
                    .map(|p| p.stop())
            })
        };
        if stale_proxy.is_some() {
            self.forget_proxy(vhost, handle);
            return;
        }
        tracing::warn!(vhost = %vhost.name, queue = %handle.name(), "deleting a classic queue the cluster deleted while this node was away");
        handle.delete_now().await;
    }

    /// Registers the stand-in of a queue homed on another node, served by a router.
    fn install_proxy(self: &Arc<Broker>, vhost: &Arc<Vhost>, decl: &ClassicDecl) {
        if vhost.queue(&decl.name).is_some() {
            if self.classic.settled.load(Ordering::Acquire) {
                tracing::warn!(vhost = %decl.vhost, queue = %decl.name, home = decl.home, "a queue of this node declared before it was clustered has the name of the cluster's queue: it stays, and this node does not route to the cluster's");
            }
            return;
        }
        let queue = decl.queue_decl(decl.exclusive_owner.map(|_| ELSEWHERE));
        let args = QueueArgs::parse(&queue.arguments()).unwrap_or_default();
        let (tx, rx) = mpsc::channel(self.config.limits.queue_inbox_max);
        let handle = Arc::new(QueueHandle::new(
            QueueId(self.next_queue_id()),
            queue,
            args,
            Arc::new(QueueCounters::default()),
            tx,
        ));
        let (stop, stop_rx) = watch::channel(false);
        let (home, home_rx) = watch::channel(vec![decl.home]);
        let router = Router {
            broker: Arc::clone(self),
            vhost: Arc::clone(vhost),
            handle: Arc::clone(&handle),
            group: GroupId(0),
            data: Default::default(),
            inbox: rx,
            stop: stop_rx,
            replicas: home_rx,
            fence: Default::default(),
            kind: Kind::Classic { home: decl.home },
        };
        let span = tracing::info_span!("classic", vhost = %decl.vhost, queue = %decl.name, home = decl.home);
        tokio::spawn(tracing::Instrument::instrument(router.run(), span));
        vhost
            .write()
            .queues
            .insert(decl.name.clone(), Arc::clone(&handle));
        if let Some(e) = self.classic.lock().get_mut(&key(&decl.vhost, &decl.name)) {
            e.proxy = Some(Proxy {
                handle,
                stop,
                _home: home,
            });
        }
    }

    /// Removes a stopped stand-in from its vhost, with the bindings to it.
    fn forget_proxy(&self, vhost: &Vhost, handle: &QueueHandle) {
        if let Err(error) = self.forget_queue(vhost, handle) {
            tracing::error!(%error, queue = %handle.name(), "removing the bindings of a deleted queue failed");
        }
    }

    /// Applies a classic queue's deletion on this node: the home node deletes the queue, the
    /// others their stand-in. A deletion naming another `uid` than the queue's changes nothing.
    pub(crate) async fn delete_classic_here(&self, vhost_name: &str, name: &str, uid: u64) {
        let _serial = self.classic.serial.lock().await;
        let entry = {
            let mut entries = self.classic.lock();
            match entries.get(&key(vhost_name, name)) {
                Some(e) if e.decl.uid == uid => entries.remove(&key(vhost_name, name)),
                _ => None,
            }
        };
        let (Some(entry), Some(vhost)) = (entry, self.vhost(vhost_name)) else {
            return;
        };
        if let Some(proxy) = entry.proxy {
            let handle = proxy.stop();
            self.forget_proxy(&vhost, &handle);
        } else if let Some(handle) = vhost.queue(name) {
            if self.is_home_queue(&vhost, &handle, uid) {
                handle.delete_now().await;
            }
        }
        tracing::debug!(vhost = %vhost_name, queue = %name, "classic queue deleted");
    }

    /// Forgets every classic queue of a vhost being deleted (the queues themselves are deleted
    /// with the vhost); returns the stopped stand-ins.
    pub(crate) fn drop_classic_vhost(&self, vhost: &str) -> Vec<Arc<QueueHandle>> {
        let mut entries = self.classic.lock();
        let keys: Vec<Key> = entries
            .keys()
            .filter(|(v, _)| v == vhost)
            .cloned()
            .collect();
        keys.into_iter()
            .filter_map(|k| entries.remove(&k)?.proxy.map(Proxy::stop))
            .collect()
    }

    /// Deletes a classic queue cluster-wide (`queue.delete` on a clustered node). On its home
    /// node the queue judges `if-unused` and `if-empty` itself and is deleted at once; elsewhere
    /// they are judged by the home node's counts. Returns the messages deleted.
    pub(crate) async fn delete_classic_queue(
        self: &Arc<Broker>,
        node: &warren_cluster::node::Node,
        vhost: &Vhost,
        handle: &Arc<QueueHandle>,
        decl: ClassicDecl,
        if_unused: bool,
        if_empty: bool,
    ) -> Result<u64, Refusal> {
        let op = MetaOp::DeleteClassicQueue {
            vhost: decl.vhost.clone(),
            name: decl.name.clone(),
            uid: decl.uid,
        };
        if decl.home == node.id() && self.is_home_queue(vhost, handle, decl.uid) {
            self.set_deleting(&decl, true);
            let deleted = handle
                .ask(|reply| QueueCommand::Delete {
                    if_unused,
                    if_empty,
                    reply,
                })
                .await
                .unwrap_or(Ok(0));
            let count = match deleted {
                Ok(count) => count,
                Err(refusal) => {
                    self.set_deleting(&decl, false);
                    return Err(refusal);
                }
            };
            if let Err(refusal) = self.replicate(node, op).await {
                tracing::warn!(queue = %decl.name, %refusal, "the queue is deleted here; the cluster learns it once it can");
                self.propose_deletion_until_done(decl);
            }
            return Ok(count);
        }
        let (ready, consumers) = handle.counts().await;
        if if_unused && consumers > 0 {
            return Err(Refusal::precondition(format!(
                "queue '{}' in vhost '{}' in use",
                decl.name, decl.vhost
            )));
        }
        if if_empty && ready > 0 {
            return Err(Refusal::precondition(format!(
                "queue '{}' in vhost '{}' not empty",
                decl.name, decl.vhost
            )));
        }
        self.replicate(node, op).await.map(|_| ready)
    }

    fn set_deleting(&self, decl: &ClassicDecl, deleting: bool) {
        if let Some(e) = self.classic.lock().get_mut(&key(&decl.vhost, &decl.name)) {
            if e.decl.uid == decl.uid {
                e.deleting = deleting;
            }
        }
    }

    /// A queue homed here stopped by itself (auto-delete, expiry, or its exclusive owner's
    /// `queue.delete`): the cluster is told, unless the deletion came from it.
    pub(crate) fn classic_queue_stopped(self: &Arc<Broker>, handle: &QueueHandle) {
        let me = self.me();
        let decl = {
            let mut entries = self.classic.lock();
            let Some(e) = entries.get_mut(&key(&handle.decl.vhost, handle.name())) else {
                return;
            };
            if e.decl.uid != handle.decl.uid || e.decl.home != me || e.deleting || e.proxy.is_some()
            {
                return;
            }
            e.deleting = true;
            e.decl.clone()
        };
        self.propose_deletion_until_done(decl);
    }

    /// Proposes a deletion of a queue homed here until the metadata group has it.
    fn propose_deletion_until_done(self: &Arc<Broker>, decl: ClassicDecl) {
        let broker = Arc::downgrade(self);
        tokio::spawn(async move {
            let op = MetaOp::DeleteClassicQueue {
                vhost: decl.vhost.clone(),
                name: decl.name.clone(),
                uid: decl.uid,
            };
            loop {
                let Some(b) = broker.upgrade() else { return };
                let still = b
                    .classic_queue(&decl.vhost, &decl.name)
                    .is_some_and(|c| c.uid == decl.uid);
                let Some(node) = b.cluster_node().filter(|_| still) else {
                    return;
                };
                match b.replicate(node, op.clone()).await {
                    Ok(_) => return,
                    Err(refusal) => {
                        tracing::info!(queue = %decl.name, %refusal, "proposing the queue's deletion again shortly")
                    }
                }
                drop(b);
                tokio::time::sleep(RETRY_DELETE).await;
            }
        });
    }

    /// Makes this node's classic queues agree with `target` (a snapshot of the metadata):
    /// queues it lacks are deleted here, queues it has are declared.
    pub(crate) async fn reconcile_classic(
        self: &Arc<Broker>,
        target: &BTreeMap<(String, String), ClassicDecl>,
    ) {
        for c in self.classic_queues() {
            if target.get(&key(&c.vhost, &c.name)).map(|t| t.uid) != Some(c.uid) {
                self.delete_classic_here(&c.vhost, &c.name, c.uid).await;
            }
        }
        // Queues of this node the metadata no longer holds. Not at start: the snapshot this
        // node stored may be older than its queues (a queue declared after it is declared again
        // by the log that follows); the start settles them once caught up.
        let settled = self.classic.settled.load(Ordering::Acquire);
        let serial = self.classic.serial.lock().await;
        for name in self.vhost_names().into_iter().filter(|_| settled) {
            let Some(vhost) = self.vhost(&name) else {
                continue;
            };
            let local: Vec<Arc<QueueHandle>> = vhost.read().queues.values().cloned().collect();
            for handle in local {
                let held = target
                    .get(&key(&name, handle.name()))
                    .is_some_and(|t| t.uid == handle.decl.uid);
                if !held && self.classic_queue(&name, handle.name()).is_none() {
                    self.drop_stale_queue(&vhost, &handle).await;
                }
            }
        }
        drop(serial);
        for decl in target.values() {
            if let Err(refusal) = self.declare_classic_here(decl.clone()).await {
                tracing::warn!(queue = %decl.name, %refusal, "reconcile: classic queue");
            }
        }
    }

    /// Called once this node's own queues are loaded and the metadata it had is replayed. Once
    /// the node has caught up with the metadata group (which needs a majority), queues of this
    /// node that the cluster deleted meanwhile (or whose vhost it deleted) are deleted here.
    pub(crate) fn settle_classic_queues(self: &Arc<Broker>) {
        let broker = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(b) = broker.upgrade() else { return };
                let Some(node) = b.cluster_node() else { return };
                if b.replicate(node, MetaOp::Barrier).await.is_ok() {
                    break;
                }
                drop(b);
                tokio::time::sleep(RETRY_DELETE).await;
            }
            let Some(b) = broker.upgrade() else { return };
            let serial = b.classic.serial.lock().await;
            for vhost in b.take_preloaded() {
                let queues: Vec<Arc<QueueHandle>> = vhost.read().queues.values().cloned().collect();
                for handle in queues {
                    b.drop_stale_queue(&vhost, &handle).await;
                }
            }
            for name in b.vhost_names() {
                let Some(vhost) = b.vhost(&name) else {
                    continue;
                };
                let local: Vec<Arc<QueueHandle>> = vhost.read().queues.values().cloned().collect();
                for handle in local {
                    let held = b
                        .classic_queue(&name, handle.name())
                        .is_some_and(|c| c.uid == handle.decl.uid);
                    if !held {
                        b.drop_stale_queue(&vhost, &handle).await;
                    }
                }
            }
            // Stand-ins whose name a stale queue held until now.
            let me = b.me();
            for decl in b.classic_queues() {
                if let Some(vhost) = b.vhost(&decl.vhost).filter(|_| decl.home != me) {
                    b.install_proxy(&vhost, &decl);
                }
            }
            b.classic.settled.store(true, Ordering::Release);
            drop(serial);
        });
    }

    /// On the metadata group's leader, every second: a member unheard for
    /// `cluster.node_down_after_ms` (counted from this node's election at the earliest) is
    /// down, and its transient and exclusive classic queues are deleted cluster-wide.
    pub(crate) fn watch_for_down_nodes(self: &Arc<Broker>) {
        let broker = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut leading_since = None;
            let mut down = std::collections::BTreeSet::new();
            loop {
                tick.tick().await;
                let Some(b) = broker.upgrade() else { return };
                let Some(node) = b.cluster_node() else { return };
                let Some(raft) = node.groups().get(crate::replication::META_GROUP) else {
                    continue;
                };
                let me = node.id();
                if raft.metrics().borrow().current_leader != Some(me) {
                    leading_since = None;
                    down.clear();
                    continue;
                }
                let now = tokio::time::Instant::now();
                let since = *leading_since.get_or_insert(now);
                let after = Duration::from_millis(node.config().node_down_after_ms);
                for member in warren_cluster::membership::voters(&raft) {
                    if member == me {
                        continue;
                    }
                    let heard = node.last_heard(member).map_or(since, |h| h.max(since));
                    if now.duration_since(heard) < after {
                        if down.remove(&member) {
                            tracing::info!(node = member, "node is back");
                        }
                        continue;
                    }
                    if down.insert(member) {
                        tracing::warn!(node = member, unheard = ?now.duration_since(heard), "node is down: its transient and exclusive classic queues are deleted");
                    }
                    b.delete_transient_queues_of(node, member).await;
                }
            }
        });
    }

    /// Deletes cluster-wide the transient and exclusive classic queues homed on `home`.
    async fn delete_transient_queues_of(&self, node: &warren_cluster::node::Node, home: NodeId) {
        for decl in self.classic_queues() {
            if decl.home != home || (decl.durable && decl.exclusive_owner.is_none()) {
                continue;
            }
            let op = MetaOp::DeleteClassicQueue {
                vhost: decl.vhost.clone(),
                name: decl.name.clone(),
                uid: decl.uid,
            };
            match self.replicate(node, op).await {
                Ok(_) => {
                    tracing::info!(vhost = %decl.vhost, queue = %decl.name, home, "deleted a transient queue of a down node")
                }
                Err(refusal) => {
                    tracing::warn!(queue = %decl.name, %refusal, "could not delete a transient queue of a down node")
                }
            }
        }
    }

    /// Deletes cluster-wide the classic queues homed on a node that left the cluster.
    pub(crate) async fn forget_classic_queues_of(&self, gone: NodeId) {
        let Some(node) = self.cluster_node() else {
            return;
        };
        for decl in self.classic_queues() {
            if decl.home != gone {
                continue;
            }
            let op = MetaOp::DeleteClassicQueue {
                vhost: decl.vhost.clone(),
                name: decl.name.clone(),
                uid: decl.uid,
            };
            if let Err(refusal) = self.replicate(node, op).await {
                tracing::warn!(queue = %decl.name, %refusal, "could not delete a queue of the removed node");
            }
        }
    }
}
