//! What queues send to connections: deliveries, publisher confirms, consumer cancellations.
//!
//! Each connection has one unbounded event inbox. It is unbounded on purpose — a queue must never
//! wait on a connection (connections wait on queues' bounded inboxes, and a cycle would deadlock)
//! — and it is bounded in practice: deliveries by each consumer's credit (prefetch and the flow
//! window), confirms by the publishes the connection itself sent.

use crate::amqp::ShortStr;
use crate::message::Message;
use crate::queue::QueueHandle;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// A connection's id, unique for the broker process's lifetime.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// One opening of a channel of one connection. `epoch` tells apart successive openings of the
/// same channel number, so a delivery meant for a closed channel never reaches its successor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelRef {
    pub conn: ConnId,
    pub channel: u16,
    pub epoch: u32,
}

pub type EventSender = mpsc::UnboundedSender<ConnEvent>;

#[derive(Debug)]
pub enum ConnEvent {
    Deliver(Delivery),
    /// A queue's answer to a publish made in confirm mode or in a transaction.
    Confirm {
        owner: ChannelRef,
        token: ConfirmToken,
        ok: bool,
    },
    /// A reply published to `amq.rabbitmq.reply-to.*` for a direct reply-to consumer.
    DirectReply {
        owner: ChannelRef,
        message: Arc<Message>,
    },
    /// The queue went away under the consumer (server-sent `basic.cancel`).
    ConsumerCancelled {
        owner: ChannelRef,
        consumer_tag: ShortStr,
    },
    /// Close the connection with this reply (shutdown, admin, exclusive-queue loss).
    ForceClose {
        code: u16,
        text: String,
    },
    /// Free disk space fell below, or rose back above, the limit.
    Blocked(Option<String>),
    /// The admin plane asks for the connection's channels.
    Inspect(oneshot::Sender<Vec<ChannelView>>),
}

/// A channel as the admin plane shows it.
#[derive(Clone, Debug)]
pub struct ChannelView {
    pub number: u16,
    /// `normal`, `confirm` or `transactional`.
    pub mode: &'static str,
    pub unacked: u64,
    pub prefetch: u32,
    pub consumers: u64,
}

/// A connection's counters, shared with the admin plane (written by the connection's tasks
/// only).
#[derive(Debug, Default)]
pub struct ConnectionStats {
    pub received_bytes: AtomicU64,
    pub sent_bytes: AtomicU64,
    pub published: AtomicU64,
    pub channels: AtomicU64,
    pub publish_rate: crate::statistics::Rate,
}

impl ConnectionStats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// What a confirm answers: a publisher-confirm sequence number, or a transaction's commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfirmToken {
    Publish(u64),
    TxCommit(u64),
}

/// Where a queue sends its answer to one publish.
#[derive(Clone, Debug)]
pub struct ConfirmTarget {
    pub events: EventSender,
    pub owner: ChannelRef,
    pub token: ConfirmToken,
}

impl ConfirmTarget {
    pub fn send(&self, ok: bool) {
        // A closed connection no longer needs its confirm.
        let _ = self.events.send(ConnEvent::Confirm {
            owner: self.owner,
            token: self.token,
            ok,
        });
    }
}

/// A message handed to a consumer, or answering `basic.get`.
#[derive(Debug)]
pub struct Delivery {
    pub owner: ChannelRef,
    /// `None` for `basic.get`.
    pub consumer_tag: Option<ShortStr>,
    pub queue: Arc<QueueHandle>,
    pub seq: u64,
    pub message: Arc<Message>,
    pub redelivered: bool,
    /// Whether the client must settle it (not `no_ack`).
    pub ack_required: bool,
    /// Times delivered before (for `x-delivery-count`).
    pub delivery_count: u32,
    /// Ready messages left, for `basic.get-ok`.
    pub message_count: u32,
}

/// The channel-wide prefetch (`basic.qos` with `global = true`), shared by every queue that
/// delivers to the channel's consumers.
#[derive(Debug, Default)]
pub struct ChannelCredit {
    limit: AtomicU32,
    used: AtomicU32,
}

impl ChannelCredit {
    pub fn set_limit(&self, limit: u32) {
        self.limit.store(limit, Ordering::Release);
    }

    pub fn limit(&self) -> u32 {
        self.limit.load(Ordering::Acquire)
    }

    /// Takes one unit of credit; `false` when the channel is at its limit (0 = unlimited).
    pub fn try_reserve(&self) -> bool {
        let limit = self.limit();
        if limit == 0 {
            self.used.fetch_add(1, Ordering::AcqRel);
            return true;
        }
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used < limit).then_some(used + 1)
            })
            .is_ok()
    }

    pub fn has_room(&self) -> bool {
        let limit = self.limit();
        limit == 0 || self.used.load(Ordering::Acquire) < limit
    }

    /// Returns `n` units; `true` if the channel was full before (queues should be told).
    pub fn release(&self, n: u32) -> bool {
        let before = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                Some(used.saturating_sub(n))
            })
            .unwrap_or(0);
        let limit = self.limit();
        limit != 0 && before >= limit
    }
}
