//! The node's handle of a quorum queue: one task that owns the handle's inbox and sends each
//! command where the queue is served — the local queue actor while this node leads the queue's
//! raft group, the leading node (over `warren.queues.v1.Queues`) otherwise.
//!
//! - Leading here: the actor is the single-node queue actor with a [`RaftStore`] (every
//!   message and settlement goes through the group). It is started once this node's replica has
//!   applied everything committed, so the backlog it loads is complete; messages stored before
//!   are delivered with `redelivered = true`, as after a restart.
//! - Led elsewhere: publishes go over one ordered stream per leader, each confirmed once the
//!   leader's actor confirmed it; each client channel that consumes or gets opens one stream that
//!   carries its consumers, gets and settlements (the leader requeues what it left unsettled
//!   when the stream ends).
//! - No leader known (an election, or this node is cut off from the majority): the inbox is
//!   not read, so publishers wait on it as on any full queue.
//!
//! When the leader changes, consumers attached through this node are cancelled with
//! `basic.cancel` (clients re-consume, as with RabbitMQ's `x-cancel-on-ha-failover`), and
//! publishes not yet confirmed are nacked.
//!
//! The same router serves other nodes' view of a classic queue ([`Kind::Classic`]): always led
//! elsewhere, by the queue's home node. While the home node cannot be reached, publishes to the
//! queue are nacked (not held: a classic queue has no other replica to wait for) and consumes
//! are refused with 404, as RabbitMQ answers for a queue whose home node is down.

use super::state::SharedData;
use super::store::RaftStore;
use crate::amqp::ShortStr;
use crate::broker::Broker;
use crate::delivery::{ChannelRef, ConfirmTarget, ConnEvent, Delivery, EventSender};
use crate::message::{Message, StoredMessage};
use crate::queue::{QueueCommand, QueueHandle, Refusal, SettleAction};
use crate::vhost::Vhost;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot, watch};
use warren_cluster::types::{GroupId, NodeId};
use warren_proto::queues::queues_client::QueuesClient;
use warren_proto::queues::{
    channel_down, channel_up, CallRequest, Cancel, ChannelDown, ChannelUp, Credit, ForwardPublish,
    Get, Kick, QueueRef, Recover, Settle, Subscribe,
};

/// What a router serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A quorum queue: served by its raft group's leader.
    Quorum,
    /// A classic queue homed on another node: served there.
    Classic { home: NodeId },
}

/// Where commands go.
enum Target {
    /// No leader known: commands wait in the inbox.
    Nowhere,
    /// The actor of this node's leadership in `term`.
    Local {
        term: u64,
        actor: mpsc::Sender<QueueCommand>,
        store: Arc<RaftStore>,
    },
    /// Node `node`'s leadership in `term`.
    Remote {
        node: NodeId,
        term: u64,
        publisher: Option<Publisher>,
        channels: HashMap<ChannelRef, RemoteChannel>,
    },
}

/// Settle actions on the wire.
pub fn action_code(action: SettleAction) -> u32 {
    match action {
        SettleAction::Ack => 0,
        SettleAction::Requeue => 1,
        SettleAction::Discard => 2,
    }
}

pub fn action_of(code: u32) -> SettleAction {
    match code {
        0 => SettleAction::Ack,
        1 => SettleAction::Requeue,
        _ => SettleAction::Discard,
    }
}

/// How messages travel between nodes.
pub fn encode_message(message: &Message) -> Vec<u8> {
    StoredMessage {
        message: message.clone(),
        enqueued_at_ms: 0,
        transient: false,
    }
    .encode()
    .into()
}

pub fn decode_message(bytes: Vec<u8>) -> Option<Message> {
    StoredMessage::decode(bytes.into()).ok().map(|s| s.message)
}

#[derive(Debug)]
pub struct Router {
    pub broker: Arc<Broker>,
    pub vhost: Arc<Vhost>,
    pub handle: Arc<QueueHandle>,
    pub group: GroupId,
    pub data: SharedData,
    pub inbox: mpsc::Receiver<QueueCommand>,
    pub stop: watch::Receiver<bool>,
    /// The queue's replicas (they change when members are removed).
    pub replicas: watch::Receiver<Vec<NodeId>>,
    /// Set when this node's replica fails.
    pub fence: super::Fence,
    pub kind: Kind,
}

/// Where the router learns which node serves the queue.
enum Source {
    /// This node holds a replica: its raft group knows the leader.
    Replica(
        warren_cluster::types::GroupRaft,
        watch::Receiver<warren_cluster::types::ServerMetrics>,
    ),
    /// This node holds none: it forwards to a replica (which forwards to the leader), the
    /// next one whenever the current one cannot be reached.
    Forwarder { replicas: Vec<NodeId>, at: usize },
}

impl Source {
    fn of(node: &warren_cluster::node::Node, group: GroupId, replicas: &[NodeId]) -> Source {
        match node.groups().get(group) {
            Some(raft) => {
                let metrics = raft.server_metrics();
                Source::Replica(raft, metrics)
            }
            None => Source::Forwarder {
                replicas: replicas
                    .iter()
                    .copied()
                    .filter(|r| *r != node.id())
                    .collect(),
                at: rand::random::<usize>(),
            },
        }
    }

    /// The serving node and its leadership's term (0 for a replica forwarded to).
    fn leader(&mut self) -> Option<(NodeId, u64)> {
        match self {
            Source::Replica(_, metrics) => {
                let m = metrics.borrow_and_update();
                m.current_leader.map(|l| (l, m.vote.leader_id().term))
            }
            Source::Forwarder { replicas, at } => {
                (!replicas.is_empty()).then(|| (replicas[*at % replicas.len()], 0))
            }
        }
    }

    /// Why the replica's raft group stopped, if it failed (rather than being shut down).
    fn failure(&self) -> Option<String> {
        match self {
            Source::Replica(raft, _) => warren_cluster::types::failure(raft),
            Source::Forwarder { .. } => None,
        }
    }

    async fn changed(&mut self) -> bool {
        match self {
            Source::Replica(_, metrics) => metrics.changed().await.is_ok(),
            Source::Forwarder { .. } => std::future::pending().await,
        }
    }
}

/// How long the router waits before trying an unreachable leader again (unless raft reports
/// news sooner).
const RETRY_UNREACHABLE: std::time::Duration = std::time::Duration::from_millis(200);

/// How long a new leader waits for a majority to confirm its leadership before it serves.
const LEADING_CHECK: std::time::Duration = std::time::Duration::from_secs(2);

struct Running {
    r: Router,
    target: Target,
    /// Commands taken from the inbox that could not be sent yet, in order.
    held: VecDeque<QueueCommand>,
    retry_at: Option<tokio::time::Instant>,
    /// Consumers registered through this node while it leads: cancelled when it stops leading.
    local_consumers: Vec<(ChannelRef, ShortStr, EventSender)>,
    /// Told when a stream to the serving node fails.
    trouble: mpsc::UnboundedSender<()>,
}

impl Router {
    pub async fn run(self) {
        let Some(node) = self.broker.cluster_node().cloned() else {
            return;
        };
        let mut stop = self.stop.clone();
        let mut replicas = self.replicas.clone();
        let group = self.group;
        let mut source = Source::of(&node, group, &replicas.borrow_and_update());
        let (trouble, mut troubles) = mpsc::unbounded_channel();
        let mut running = Running {
            r: self,
            target: Target::Nowhere,
            held: VecDeque::new(),
            retry_at: None,
            local_consumers: Vec::new(),
            trouble,
        };
        loop {
            let leader = source.leader();
            let raft = match &source {
                Source::Replica(raft, _) => Some(raft.clone()),
                Source::Forwarder { .. } => None,
            };
            running.follow(leader, node.id(), raft.as_ref()).await;
            let routed = !matches!(running.target, Target::Nowhere);
            if routed && running.retry_at.is_none() && !running.held.is_empty() {
                let held = std::mem::take(&mut running.held);
                for command in held {
                    if running.retry_at.is_some() {
                        running.held.push_back(command);
                    } else {
                        running.dispatch(command, &node).await;
                    }
                }
            }
            let accepting = routed && running.retry_at.is_none() && running.held.is_empty();
            let retry_at = running.retry_at;
            tokio::select! {
                _ = stop.changed() => break,
                changed = source.changed() => {
                    if !changed {
                        // The replica's raft group stopped: removed from this node (the
                        // replicas change follows), or failed.
                        if let Some(reason) = source.failure() {
                            running.r.fence.set(running.r.handle.name(), reason);
                            node.stop_group(group).await;
                        }
                        source = Source::of(&node, group, &replicas.borrow());
                        running.retarget(Target::Nowhere);
                    }
                    running.retry_at = None;
                }
                changed = replicas.changed() => {
                    if changed.is_err() { break }
                    source = Source::of(&node, group, &replicas.borrow_and_update());
                    running.retarget(Target::Nowhere);
                }
                Some(()) = troubles.recv() => {
                    // A stream to the node served from failed: forward to the next replica.
                    if let Source::Forwarder { at, .. } = &mut source {
                        *at = at.wrapping_add(1);
                        running.retarget(Target::Nowhere);
                    }
                }
                _ = async { tokio::time::sleep_until(retry_at.expect("guarded")).await },
                    if retry_at.is_some() => running.retry_at = None,
                command = running.r.inbox.recv(), if accepting => match command {
                    Some(command) => running.dispatch(command, &node).await,
                    None => break,
                },
            }
        }
        for command in running.held.drain(..) {
            refuse(command, "the queue is being deleted");
        }
        running.retarget(Target::Nowhere);
        running.r.inbox.close();
        while let Ok(command) = running.r.inbox.try_recv() {
            refuse(command, "the queue is being deleted");
        }
    }
}

/// Answers a command that cannot be served (a nack, an empty get, a refused consume).
fn refuse(command: QueueCommand, why: &str) {
    match command {
        QueueCommand::Publish {
            confirm: Some(c), ..
        } => c.send(false),
        // A channel error (406), not a connection error: the client may consume again.
        QueueCommand::Consume { reply, .. } => {
            let _ = reply.send(Err(Refusal::precondition(why.to_string())));
        }
        QueueCommand::Get { reply, .. } => {
            let _ = reply.send(None);
        }
        QueueCommand::Cancel {
            reply: Some(reply), ..
        } => {
            let _ = reply.send(());
        }
        QueueCommand::Delete { reply, .. } => {
            let _ = reply.send(Err(Refusal::internal(why.to_string())));
        }
        QueueCommand::Peek { reply, .. } => {
            let _ = reply.send(Err(Refusal::internal(why.to_string())));
        }
        QueueCommand::Take { reply, .. } => {
            let _ = reply.send(Err(Refusal::internal(why.to_string())));
        }
        // The other replies are dropped: the caller sees the queue as gone.
        _ => {}
    }
}

impl Running {
    /// Moves to the target `leader` (a node and its term) implies, if it is not the current
    /// one. A leadership is a node *and* a term: a node that lost leadership and won it back
    /// (which the metrics watch may show as one unchanged leader) serves from a new actor, as
    /// what the queue holds may have changed in between.
    async fn follow(
        &mut self,
        leader: Option<(NodeId, u64)>,
        me: NodeId,
        raft: Option<&warren_cluster::types::GroupRaft>,
    ) {
        let same = match (&self.target, leader) {
            (Target::Nowhere, None) => true,
            (Target::Local { term, .. }, Some((l, t))) => l == me && *term == t,
            (Target::Remote { node, term, .. }, Some((l, t))) => *node == l && *term == t,
            _ => false,
        };
        if same {
            return;
        }
        let next = match leader {
            None => Target::Nowhere,
            Some((l, term)) if l == me => {
                let Some(raft) = raft else {
                    return self.retarget(Target::Nowhere);
                };
                // The queue is claimed for this leadership before the actor loads it: the
                // claim's entry applied here means everything committed before it is applied
                // too, and fences off what earlier leaderships may still propose. That needs
                // a majority; without one (this node is cut off), try again shortly rather
                // than wait here for good.
                let Some(node) = self.r.broker.cluster_node() else {
                    return self.retarget(Target::Nowhere);
                };
                let timing = node.config();
                let lease = std::time::Duration::from_millis(
                    timing
                        .election_timeout_min_ms
                        .saturating_sub(timing.heartbeat_ms),
                );
                let store = Arc::new(RaftStore::new(
                    raft.clone(),
                    (Arc::clone(&self.r.broker.wal), self.r.group),
                    self.r.data.clone(),
                    lease,
                    node.groups().holds().watch(self.r.group),
                ));
                let claimed = tokio::time::timeout(LEADING_CHECK, store.claim()).await;
                if !matches!(claimed, Ok(true)) {
                    store.abandon();
                    tracing::info!("leading the queue's group, but no majority confirms it yet");
                    self.retarget(Target::Nowhere);
                    self.retry_at = Some(tokio::time::Instant::now() + RETRY_UNREACHABLE);
                    return;
                }
                {
                    let (tx, rx) = mpsc::channel(self.r.broker.config.limits.queue_inbox_max);
                    crate::queue::actor::serve(
                        Arc::clone(&self.r.broker),
                        Arc::clone(&self.r.vhost),
                        Arc::clone(&self.r.handle),
                        rx,
                        Some(Arc::clone(&store) as Arc<dyn crate::queue::store::MessageStore>),
                    );
                    tracing::info!(queue = %self.r.handle.name(), "leading the quorum queue here");
                    Target::Local {
                        term,
                        actor: tx,
                        store,
                    }
                }
            }
            Some((l, term)) => Target::Remote {
                node: l,
                term,
                publisher: None,
                channels: HashMap::new(),
            },
        };
        self.retarget(next);
    }

    /// Switches targets, cancelling what was attached through the old one. (Only `follow`
    /// calls it with a target other than the current one.)
    fn retarget(&mut self, next: Target) {
        if !matches!((&self.target, &next), (Target::Nowhere, Target::Nowhere)) {
            // A new target: what was held goes to it at once.
            self.retry_at = None;
        }
        let old = std::mem::replace(&mut self.target, next);
        match old {
            Target::Nowhere => {}
            Target::Local { actor, store, .. } => {
                drop(actor);
                store.abandon();
                for (owner, consumer_tag, events) in self.local_consumers.drain(..) {
                    let _ = events.send(ConnEvent::ConsumerCancelled {
                        owner,
                        consumer_tag,
                    });
                }
            }
            Target::Remote {
                publisher,
                channels,
                ..
            } => {
                if let Some(p) = publisher {
                    p.fail_all();
                }
                for (_, channel) in channels {
                    channel.close();
                }
            }
        }
    }

    async fn dispatch(&mut self, command: QueueCommand, node: &warren_cluster::node::Node) {
        match &mut self.target {
            Target::Nowhere => refuse(command, "the quorum queue has no leader"),
            Target::Local { actor, .. } => {
                match &command {
                    QueueCommand::Consume { spec, .. } => self.local_consumers.push((
                        spec.owner,
                        spec.tag.clone(),
                        spec.events.clone(),
                    )),
                    QueueCommand::Cancel { owner, tag, .. } => self
                        .local_consumers
                        .retain(|(o, t, _)| !(o == owner && t == tag)),
                    QueueCommand::ChannelClosed { owner } => {
                        self.local_consumers.retain(|(o, _, _)| o != owner)
                    }
                    _ => {}
                }
                if let Err(mpsc::error::SendError(command)) = actor.send(command).await {
                    refuse(command, "the quorum queue's leader stopped here");
                }
            }
            Target::Remote { node: leader, .. } => {
                let leader = *leader;
                self.dispatch_remote(command, node, leader).await;
            }
        }
    }

    async fn dispatch_remote(
        &mut self,
        command: QueueCommand,
        node: &warren_cluster::node::Node,
        leader: NodeId,
    ) {
        let queue = QueueRef {
            vhost: self.r.vhost.name.clone(),
            queue: self.r.handle.name().to_string(),
        };
        let channel = match node.channel_to(leader) {
            Ok(c) => c,
            Err(e) => return refuse(command, &e),
        };
        let client = || {
            QueuesClient::new(channel.clone())
                .max_decoding_message_size(usize::MAX)
                .max_encoding_message_size(usize::MAX)
        };
        let Target::Remote {
            publisher,
            channels,
            ..
        } = &mut self.target
        else {
            return refuse(command, "the quorum queue's leader changed");
        };
        match command {
            QueueCommand::Publish { message, confirm } => {
                if publisher.as_ref().is_none_or(|p| p.is_broken()) {
                    match Publisher::open(client(), queue, self.trouble.clone()).await {
                        Ok(p) => *publisher = Some(p),
                        Err(status) if matches!(self.r.kind, Kind::Classic { .. }) => {
                            tracing::info!(%status, home = leader, "the queue's home node is unreachable: publish nacked");
                            let _ = self.trouble.send(());
                            return refuse(
                                QueueCommand::Publish { message, confirm },
                                "the queue's home node is unreachable",
                            );
                        }
                        Err(status) => {
                            // Held, not nacked: sent once the leader (or a new one) answers.
                            tracing::debug!(%status, leader, "the queue's leader is unreachable");
                            let _ = self.trouble.send(());
                            self.held
                                .push_back(QueueCommand::Publish { message, confirm });
                            self.retry_at = Some(tokio::time::Instant::now() + RETRY_UNREACHABLE);
                            return;
                        }
                    }
                }
                let p = publisher.as_mut().expect("just opened");
                p.send(&message, confirm).await;
            }
            QueueCommand::Consume { spec, reply } => {
                self.channel_for(spec.owner, leader, client(), queue)
                    .subscribe(spec, reply);
            }
            QueueCommand::Get {
                owner,
                no_ack,
                events: _,
                reply,
            } => {
                self.channel_for(owner, leader, client(), queue)
                    .get(no_ack, reply);
            }
            QueueCommand::Settle {
                owner,
                seqs,
                action,
            } => {
                if let Some(ch) = channels.get(&owner) {
                    ch.up(channel_up::Op::Settle(Settle {
                        seqs,
                        action: action_code(action),
                    }));
                }
            }
            QueueCommand::Credit { owner, tag, count } => {
                if let Some(ch) = channels.get(&owner) {
                    ch.up(channel_up::Op::Credit(Credit {
                        tag: tag.as_str().to_string(),
                        count,
                    }));
                }
            }
            QueueCommand::Cancel { owner, tag, reply } => {
                if let Some(ch) = channels.get(&owner) {
                    ch.forget(&tag);
                    ch.up(channel_up::Op::Cancel(Cancel {
                        tag: tag.as_str().to_string(),
                    }));
                }
                if let Some(reply) = reply {
                    let _ = reply.send(());
                }
            }
            QueueCommand::Kick => {
                for ch in channels.values() {
                    ch.up(channel_up::Op::Kick(Kick {}));
                }
            }
            QueueCommand::Recover { owner } => {
                if let Some(ch) = channels.get(&owner) {
                    ch.up(channel_up::Op::Recover(Recover {}));
                }
            }
            QueueCommand::ChannelClosed { owner } => {
                if let Some(ch) = channels.remove(&owner) {
                    ch.close_quietly();
                }
            }
            QueueCommand::Touch { renew, reply } => {
                let op = if renew { 1 } else { 2 };
                let counts = match (call(client(), queue.clone(), op).await, self.r.kind) {
                    (Some(counts), _) => Ok(counts),
                    // RabbitMQ's answer for a queue whose home node is down.
                    (None, Kind::Classic { home }) => Err(home_down(home, &queue)),
                    // A replica answers for the quorum queue while its leader changes.
                    (None, Kind::Quorum) => Ok((self.r.handle.ready(), self.r.handle.consumers())),
                };
                let _ = reply.send(counts);
            }
            QueueCommand::Purge { reply } => {
                let purged = call(client(), queue, 3).await.map_or(0, |(n, _)| n);
                let _ = reply.send(purged);
            }
            other => refuse(
                other,
                &format!("this operation is served by node {leader}, which serves the queue"),
            ),
        }
    }

    fn channel_for(
        &mut self,
        owner: ChannelRef,
        leader: NodeId,
        client: QueuesClient<tonic::transport::Channel>,
        queue: QueueRef,
    ) -> &RemoteChannel {
        let Target::Remote { channels, .. } = &mut self.target else {
            unreachable!("remote target checked by the caller");
        };
        let broken = channels.get(&owner).is_some_and(|c| c.is_broken());
        if broken {
            channels.remove(&owner);
        }
        channels.entry(owner).or_insert_with(|| {
            tracing::debug!(
                ?owner,
                leader,
                "channel stream to the quorum queue's leader"
            );
            let unreachable = match self.r.kind {
                Kind::Quorum => Refusal::precondition(
                    "the quorum queue's leader changed or is unreachable; consume again",
                ),
                Kind::Classic { home } => home_down(home, &queue),
            };
            RemoteChannel::open(
                client,
                queue,
                owner,
                Arc::clone(&self.r.handle),
                self.trouble.clone(),
                unreachable,
            )
        })
    }
}

/// RabbitMQ's refusal for a classic queue whose home node cannot be reached.
fn home_down(home: NodeId, queue: &QueueRef) -> Refusal {
    Refusal::not_found(format!(
        "home node {home} of queue '{}' in vhost '{}' is down or inaccessible",
        queue.queue, queue.vhost
    ))
}

async fn call(
    mut client: QueuesClient<tonic::transport::Channel>,
    queue: QueueRef,
    op: u32,
) -> Option<(u64, u64)> {
    let reply = client
        .call(CallRequest {
            queue: Some(queue),
            op,
            to: 0,
        })
        .await
        .ok()?
        .into_inner();
    (reply.code == 0).then_some((reply.first, reply.second))
}

/// Publishes to a queue led elsewhere: one ordered stream, confirms matched by id.
struct Publisher {
    up: mpsc::Sender<ForwardPublish>,
    next_id: u64,
    pending: Arc<Mutex<HashMap<u64, ConfirmTarget>>>,
    broken: Arc<std::sync::atomic::AtomicBool>,
}

fn guard<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Publisher {
    /// Opens the stream (its first item names the queue and carries no message); fails if the
    /// leader cannot be reached, before any publish is committed to it.
    async fn open(
        mut client: QueuesClient<tonic::transport::Channel>,
        queue: QueueRef,
        trouble: mpsc::UnboundedSender<()>,
    ) -> Result<Publisher, tonic::Status> {
        let (tx, rx) = mpsc::channel(4096);
        let hello = ForwardPublish {
            queue: Some(queue),
            id: 0,
            message: Vec::new(),
        };
        tx.send(hello).await.expect("the receiver is alive");
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        let mut confirms = client.publish(stream).await?.into_inner();
        let pending: Arc<Mutex<HashMap<u64, ConfirmTarget>>> = Arc::default();
        let broken = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (p, b) = (Arc::clone(&pending), Arc::clone(&broken));
        tokio::spawn(async move {
            loop {
                match confirms.message().await {
                    Ok(Some(c)) => {
                        if let Some(target) = guard(&p).remove(&c.id) {
                            target.send(c.ok);
                        }
                    }
                    Ok(None) => break,
                    Err(status) => {
                        tracing::info!(%status, "forwarded publishes cut off");
                        let _ = trouble.send(());
                        break;
                    }
                }
            }
            b.store(true, std::sync::atomic::Ordering::Relaxed);
            // Their fate is unknown: nacked, the publisher decides.
            for (_, target) in guard(&p).drain() {
                target.send(false);
            }
        });
        Ok(Publisher {
            up: tx,
            next_id: 1,
            pending,
            broken,
        })
    }

    fn is_broken(&self) -> bool {
        self.broken.load(std::sync::atomic::Ordering::Relaxed) || self.up.is_closed()
    }

    async fn send(&mut self, message: &Message, confirm: Option<ConfirmTarget>) {
        let id = self.next_id;
        self.next_id += 1;
        if let Some(c) = confirm {
            guard(&self.pending).insert(id, c);
        }
        let item = ForwardPublish {
            queue: None,
            id,
            message: encode_message(message),
        };
        if self.up.send(item).await.is_err() {
            if let Some(c) = guard(&self.pending).remove(&id) {
                c.send(false);
            }
        }
    }

    fn fail_all(self) {
        for (_, target) in guard(&self.pending).drain() {
            target.send(false);
        }
    }
}

/// What a channel stream's reader needs.
#[derive(Default)]
struct ChannelShared {
    subscribing: HashMap<String, (oneshot::Sender<Result<(), Refusal>>, EventSender)>,
    consumers: HashMap<String, EventSender>,
    gets: VecDeque<oneshot::Sender<Option<Delivery>>>,
    closed: bool,
    /// What a consume waiting for its answer gets if the stream ends.
    unreachable: Option<Refusal>,
}

/// One client channel's use of a queue led elsewhere.
struct RemoteChannel {
    up: mpsc::UnboundedSender<ChannelUp>,
    owner: ChannelRef,
    shared: Arc<Mutex<ChannelShared>>,
}

impl RemoteChannel {
    fn open(
        mut client: QueuesClient<tonic::transport::Channel>,
        queue: QueueRef,
        owner: ChannelRef,
        handle: Arc<QueueHandle>,
        trouble: mpsc::UnboundedSender<()>,
        unreachable: Refusal,
    ) -> RemoteChannel {
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = tx.send(ChannelUp {
            op: Some(channel_up::Op::Open(queue)),
        });
        let shared = Arc::new(Mutex::new(ChannelShared {
            unreachable: Some(unreachable),
            ..Default::default()
        }));
        let s = Arc::clone(&shared);
        tokio::spawn(async move {
            let stream = tokio_stream::wrappers::UnboundedReceiverStream::new(rx);
            match client.channel(stream).await {
                Ok(response) => {
                    let mut down = response.into_inner();
                    loop {
                        match down.message().await {
                            Ok(Some(event)) => on_down(&s, owner, &handle, event),
                            Ok(None) => break,
                            Err(status) => {
                                tracing::info!(%status, "forwarded channel cut off");
                                let _ = trouble.send(());
                                break;
                            }
                        }
                    }
                }
                Err(status) => {
                    tracing::info!(%status, "forwarding a channel failed");
                    let _ = trouble.send(());
                }
            }
            close_shared(&s, owner, true);
        });
        RemoteChannel {
            up: tx,
            owner,
            shared,
        }
    }

    fn is_broken(&self) -> bool {
        guard(&self.shared).closed || self.up.is_closed()
    }

    fn up(&self, op: channel_up::Op) {
        let _ = self.up.send(ChannelUp { op: Some(op) });
    }

    fn subscribe(
        &self,
        spec: crate::queue::ConsumerSpec,
        reply: oneshot::Sender<Result<(), Refusal>>,
    ) {
        let tag = spec.tag.as_str().to_string();
        guard(&self.shared)
            .subscribing
            .insert(tag.clone(), (reply, spec.events.clone()));
        self.up(channel_up::Op::Subscribe(Subscribe {
            tag,
            no_ack: spec.no_ack,
            exclusive: spec.exclusive,
            priority: spec.priority,
            prefetch: spec.prefetch,
        }));
    }

    fn get(&self, no_ack: bool, reply: oneshot::Sender<Option<Delivery>>) {
        guard(&self.shared).gets.push_back(reply);
        self.up(channel_up::Op::Get(Get { no_ack }));
    }

    fn forget(&self, tag: &ShortStr) {
        guard(&self.shared).consumers.remove(tag.as_str());
    }

    /// The leader changed: consumers are cancelled, waiting gets answered empty.
    fn close(self) {
        close_shared(&self.shared, self.owner, true);
    }

    /// The client channel closed: nothing to tell it.
    fn close_quietly(self) {
        close_shared(&self.shared, self.owner, false);
    }
}

fn close_shared(shared: &Mutex<ChannelShared>, owner: ChannelRef, notify: bool) {
    let mut s = guard(shared);
    s.closed = true;
    let refusal = s
        .unreachable
        .clone()
        .unwrap_or_else(|| Refusal::precondition("the queue's server is unreachable"));
    for (_, (reply, _)) in s.subscribing.drain() {
        let _ = reply.send(Err(refusal.clone()));
    }
    for reply in s.gets.drain(..) {
        let _ = reply.send(None);
    }
    for (tag, events) in s.consumers.drain() {
        if notify {
            let _ = events.send(ConnEvent::ConsumerCancelled {
                owner,
                consumer_tag: ShortStr::from(tag.as_str()),
            });
        }
    }
}

fn on_down(
    shared: &Mutex<ChannelShared>,
    owner: ChannelRef,
    handle: &Arc<QueueHandle>,
    event: ChannelDown,
) {
    let mut s = guard(shared);
    match event.event {
        Some(channel_down::Event::Delivered(d)) => {
            let Some(message) = decode_message(d.message) else {
                tracing::error!("undecodable message forwarded by the queue's leader");
                return;
            };
            let delivery = Delivery {
                owner,
                consumer_tag: (!d.is_get).then(|| ShortStr::from(d.tag.as_str())),
                queue: Arc::clone(handle),
                seq: d.seq,
                message: Arc::new(message),
                redelivered: d.redelivered,
                ack_required: d.ack_required,
                delivery_count: d.delivery_count,
                message_count: d.message_count,
            };
            if d.is_get {
                if let Some(reply) = s.gets.pop_front() {
                    let _ = reply.send(Some(delivery));
                }
            } else if let Some(events) = s
                .consumers
                .get(&d.tag)
                .or_else(|| s.subscribing.get(&d.tag).map(|(_, events)| events))
            {
                // A delivery may overtake the consume's answer (both come from the leader's
                // queue actor, on different paths): the connection handles it after consume-ok.
                let _ = events.send(ConnEvent::Deliver(delivery));
            }
        }
        Some(channel_down::Event::Subscribed(r)) => {
            if let Some((reply, events)) = s.subscribing.remove(&r.tag) {
                if r.code == 0 {
                    s.consumers.insert(r.tag, events);
                    let _ = reply.send(Ok(()));
                } else {
                    let code = crate::replication::reply_code(r.code as u16);
                    let _ = reply.send(Err(Refusal::new(code, r.text)));
                }
            }
        }
        Some(channel_down::Event::GetEmpty(_)) => {
            if let Some(reply) = s.gets.pop_front() {
                let _ = reply.send(None);
            }
        }
        Some(channel_down::Event::Cancelled(c)) => {
            if let Some(events) = s.consumers.remove(&c.tag) {
                let _ = events.send(ConnEvent::ConsumerCancelled {
                    owner,
                    consumer_tag: ShortStr::from(c.tag.as_str()),
                });
            }
        }
        None => {}
    }
}
