//! Queues: each one is a task (the actor, [`actor`]) that owns its state ([`state`]) and serves
//! commands from a bounded inbox.
//!
//! - [`args`]: the `x-` arguments.
//! - [`state`]: `QueueState`, the queue's logic without I/O: ready messages (by priority, with a
//!   tail left on disk), unacked messages, consumers and their credit, TTL, length limits,
//!   dead-lettering decisions.
//! - [`store`]: the queue's messages in the write-ahead log (its own stream).
//! - [`actor`]: the task: applies commands, persists, sends deliveries and confirms.
//! - [`dead_letter`]: the `x-death` header RabbitMQ writes.

pub mod actor;
pub mod args;
pub mod dead_letter;
pub mod state;
pub mod store;

use crate::amqp::{FieldTable, ShortStr};
use crate::delivery::{ChannelCredit, ChannelRef, ConfirmTarget, ConnId, EventSender};
use crate::message::Message;
pub use crate::refusal::Refusal;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

pub use args::QueueArgs;

/// A queue's id, unique within the broker process (the durable ones also own a log stream).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueId(pub u64);

/// A queue's declaration: what `queue.declare` set, persisted for durable queues.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct QueueDecl {
    pub vhost: String,
    pub name: String,
    pub durable: bool,
    pub auto_delete: bool,
    /// The owning connection of an exclusive queue (never persisted as such: exclusive queues
    /// are not durable in effect).
    #[serde(skip)]
    pub exclusive_owner: Option<ConnId>,
    /// The arguments in their wire encoding.
    pub arguments: Vec<u8>,
    /// The log stream holding the queue's messages (durable queues).
    pub stream: Option<u64>,
    /// On a cluster, the id the metadata group gave this classic queue's declaration (0 for a
    /// quorum queue, or a queue declared while the node was not clustered): tells the queue
    /// apart from an earlier one of the same name.
    pub uid: u64,
}

impl QueueDecl {
    pub fn arguments(&self) -> FieldTable {
        FieldTable::decode(self.arguments.clone().into()).unwrap_or_default()
    }
}

/// Figures the actor publishes for readers that must not wait on it (passive declare, stats).
#[derive(Debug, Default)]
pub struct QueueCounters {
    pub ready: AtomicU64,
    pub unacked: AtomicU64,
    pub consumers: AtomicU64,
    pub published: AtomicU64,
    pub delivered: AtomicU64,
    pub acked: AtomicU64,
    pub publish_rate: crate::statistics::Rate,
    pub deliver_rate: crate::statistics::Rate,
    pub ack_rate: crate::statistics::Rate,
    /// Deliveries paused from the admin plane.
    pub paused: std::sync::atomic::AtomicBool,
}

impl QueueCounters {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// The handle everyone else holds: the inbox and the declaration.
#[derive(Debug)]
pub struct QueueHandle {
    pub id: QueueId,
    pub decl: QueueDecl,
    pub args: QueueArgs,
    pub counters: Arc<QueueCounters>,
    inbox: mpsc::Sender<QueueCommand>,
}

/// The actor has stopped (the queue was deleted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueGone;

impl QueueHandle {
    pub fn new(
        id: QueueId,
        decl: QueueDecl,
        args: QueueArgs,
        counters: Arc<QueueCounters>,
        inbox: mpsc::Sender<QueueCommand>,
    ) -> QueueHandle {
        QueueHandle {
            id,
            decl,
            args,
            counters,
            inbox,
        }
    }

    pub fn name(&self) -> &str {
        &self.decl.name
    }

    /// Sends a command, waiting for room in the inbox (this is the publishers' backpressure).
    pub async fn send(&self, command: QueueCommand) -> Result<(), QueueGone> {
        self.inbox.send(command).await.map_err(|_| QueueGone)
    }

    /// Sends without waiting; used where waiting could form a cycle.
    pub fn try_send(&self, command: QueueCommand) -> Result<(), QueueCommand> {
        self.inbox.try_send(command).map_err(|e| match e {
            mpsc::error::TrySendError::Full(c) | mpsc::error::TrySendError::Closed(c) => c,
        })
    }

    pub fn is_closed(&self) -> bool {
        self.inbox.is_closed()
    }

    /// Sends a command and waits for its reply.
    pub async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> QueueCommand,
    ) -> Result<T, QueueGone> {
        let (tx, rx) = oneshot::channel();
        self.send(make(tx)).await?;
        rx.await.map_err(|_| QueueGone)
    }

    pub fn ready(&self) -> u64 {
        QueueCounters::get(&self.counters.ready)
    }

    pub fn consumers(&self) -> u64 {
        QueueCounters::get(&self.counters.consumers)
    }

    /// Deletes the queue whatever it holds; returns once its server stopped it (or was gone).
    pub async fn delete_now(&self) {
        let _ = self
            .ask(|reply| QueueCommand::Delete {
                if_unused: false,
                if_empty: false,
                reply,
            })
            .await;
    }

    /// Ready messages and consumers as the queue's server counts them, without renewing its
    /// `x-expires` lease; this handle's own counters when the server cannot answer.
    pub async fn counts(&self) -> (u64, u64) {
        self.ask(|reply| QueueCommand::Touch {
            renew: false,
            reply,
        })
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_else(|| (self.ready(), self.consumers()))
    }
}

/// A consumer as `basic.consume` registered it.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    pub owner: ChannelRef,
    pub tag: ShortStr,
    pub events: EventSender,
    pub no_ack: bool,
    pub exclusive: bool,
    pub priority: i64,
    /// Per-consumer prefetch (`basic.qos` with `global = false`); 0 = unlimited.
    pub prefetch: u32,
    /// Channel-wide prefetch (`global = true`).
    pub channel_credit: Arc<ChannelCredit>,
    /// Whether the client understands a server-sent `basic.cancel`.
    pub cancel_notify: bool,
}

/// How a client settled deliveries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SettleAction {
    Ack,
    /// `basic.reject`/`nack` with `requeue = true`, or a channel that closed.
    Requeue,
    /// `basic.reject`/`nack` with `requeue = false`: dead-letter (reason `rejected`) or drop.
    Discard,
}

pub enum QueueCommand {
    Publish {
        message: Arc<Message>,
        confirm: Option<ConfirmTarget>,
    },
    Consume {
        spec: ConsumerSpec,
        reply: oneshot::Sender<Result<(), Refusal>>,
    },
    Cancel {
        owner: ChannelRef,
        tag: ShortStr,
        reply: Option<oneshot::Sender<()>>,
    },
    Settle {
        owner: ChannelRef,
        seqs: Vec<u64>,
        action: SettleAction,
    },
    /// Deliveries written to a consumer's socket: return flow credit.
    Credit {
        owner: ChannelRef,
        tag: ShortStr,
        count: u32,
    },
    /// The channel's shared prefetch has room again.
    Kick,
    Get {
        owner: ChannelRef,
        no_ack: bool,
        events: EventSender,
        reply: oneshot::Sender<Option<crate::delivery::Delivery>>,
    },
    /// The channel closed: cancel its consumers and requeue its unacked messages.
    ChannelClosed {
        owner: ChannelRef,
    },
    /// `basic.recover`: redeliver (requeue) the channel's unacked messages.
    Recover {
        owner: ChannelRef,
    },
    Purge {
        reply: oneshot::Sender<u64>,
    },
    Delete {
        if_unused: bool,
        if_empty: bool,
        reply: oneshot::Sender<Result<u64, Refusal>>,
    },
    /// A declare (or passive declare) touched the queue: counts for `declare-ok`, and an
    /// `x-expires` reset.
    Touch {
        /// A re-declaration renews the `x-expires` lease; a passive one does not.
        renew: bool,
        /// Ready messages and consumers; refused when the queue's server cannot be reached.
        reply: oneshot::Sender<Result<(u64, u64), Refusal>>,
    },
    /// Admin: pause or resume deliveries to every consumer.
    Pause {
        paused: bool,
        reply: oneshot::Sender<()>,
    },
    /// Admin: pause or resume the consumers with this tag; replies how many matched.
    PauseConsumer {
        tag: String,
        paused: bool,
        reply: oneshot::Sender<u64>,
    },
    /// Admin: the first `count` ready messages, left where they are.
    Peek {
        count: usize,
        reply: oneshot::Sender<Result<Vec<state::Entry>, Refusal>>,
    },
    /// Admin: up to `count` messages taken as unacked deliveries of `owner` (settled later
    /// with [`QueueCommand::Settle`]); with `settle`, settled at once.
    Take {
        owner: ChannelRef,
        count: usize,
        settle: Option<SettleAction>,
        reply: oneshot::Sender<Result<(Vec<state::Entry>, u64), Refusal>>,
    },
    /// Admin: the consumers.
    Inspect {
        reply: oneshot::Sender<QueueInspection>,
    },
}

/// What [`QueueCommand::Inspect`] tells.
#[derive(Debug, Clone)]
pub struct QueueInspection {
    pub consumers: Vec<state::ConsumerView>,
}

impl std::fmt::Debug for QueueCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            QueueCommand::Publish { .. } => "Publish",
            QueueCommand::Consume { .. } => "Consume",
            QueueCommand::Cancel { .. } => "Cancel",
            QueueCommand::Settle { .. } => "Settle",
            QueueCommand::Credit { .. } => "Credit",
            QueueCommand::Kick => "Kick",
            QueueCommand::Get { .. } => "Get",
            QueueCommand::ChannelClosed { .. } => "ChannelClosed",
            QueueCommand::Recover { .. } => "Recover",
            QueueCommand::Purge { .. } => "Purge",
            QueueCommand::Delete { .. } => "Delete",
            QueueCommand::Touch { .. } => "Touch",
            QueueCommand::Pause { .. } => "Pause",
            QueueCommand::PauseConsumer { .. } => "PauseConsumer",
            QueueCommand::Peek { .. } => "Peek",
            QueueCommand::Take { .. } => "Take",
            QueueCommand::Inspect { .. } => "Inspect",
        };
        f.write_str(name)
    }
}
