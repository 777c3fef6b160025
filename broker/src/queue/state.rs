//! `QueueState`: a queue's logic with no I/O of its own. Persistence goes through the
//! [`MessageStore`] it is given (a test uses an in-memory one); what must reach consumers or
//! other queues comes out as [`Effect`]s for the actor to carry out; time is a parameter.
//!
//! Ready messages live in memory up to a window (`memory_messages_max`, `memory_bytes_max`); for
//! a durable queue the rest stay only in the log (`paged`) and are read back in order as the
//! window drains, so memory does not grow with the backlog. Every paged message has a seq above
//! every message in memory (ready or unacked): the paged tail is exactly the stored messages with
//! `seq >= paged.from`.

use super::args::{Overflow, QueueArgs};
use super::store::MessageStore;
use super::{ConsumerSpec, Refusal, SettleAction};
use crate::amqp::ShortStr;
use crate::delivery::{ChannelRef, EventSender};
use crate::error::BrokerError;
use crate::message::{Message, StoredMessage};
use crate::FastMap;
use std::collections::VecDeque;
use std::sync::Arc;
use warren_storage::Lsn;

/// A message in the queue.
#[derive(Clone, Debug)]
pub struct Entry {
    pub seq: u64,
    pub message: Arc<Message>,
    pub enqueued_at_ms: u64,
    pub redelivered: bool,
    /// Times it went back to the queue after a delivery.
    pub delivery_count: u32,
    /// Whether the store holds it (and must be told when it is settled).
    pub stored: bool,
}

#[derive(Debug)]
struct Unacked {
    entry: Entry,
    owner: ChannelRef,
    consumer: Option<ShortStr>,
}

#[derive(Debug)]
struct Consumer {
    spec: ConsumerSpec,
    unacked: u32,
    /// Deliveries sent but not yet written to the consumer's socket.
    in_transit: u32,
    /// Paused from the admin plane: receives nothing until resumed.
    paused: bool,
}

/// A consumer as the admin plane shows it.
#[derive(Clone, Debug)]
pub struct ConsumerView {
    pub owner: ChannelRef,
    pub tag: ShortStr,
    pub ack_required: bool,
    pub exclusive: bool,
    pub prefetch: u32,
    pub priority: i64,
    pub unacked: u32,
    pub paused: bool,
}

/// Why a message left the queue without being acked (RabbitMQ's `x-death` reasons).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeathReason {
    Rejected,
    Expired,
    Maxlen,
    DeliveryLimit,
}

impl DeathReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DeathReason::Rejected => "rejected",
            DeathReason::Expired => "expired",
            DeathReason::Maxlen => "maxlen",
            DeathReason::DeliveryLimit => "delivery_limit",
        }
    }
}

/// What the actor must do after a state change.
#[derive(Debug)]
pub enum Effect {
    Deliver {
        events: EventSender,
        owner: ChannelRef,
        consumer_tag: ShortStr,
        entry: Entry,
        ack_required: bool,
    },
    DeadLetter {
        message: Arc<Message>,
        reason: DeathReason,
    },
    ConsumerCancelled {
        events: EventSender,
        owner: ChannelRef,
        consumer_tag: ShortStr,
    },
}

#[derive(Debug, PartialEq, Eq)]
pub enum PublishOutcome {
    /// Accepted; durable once this LSN is (if it was written).
    Accepted(Option<Lsn>),
    /// Refused by `x-overflow = reject-publish`.
    Rejected,
}

/// Limits that come from the broker's configuration, not the queue's arguments.
#[derive(Clone, Copy, Debug)]
pub struct QueueLimits {
    pub memory_messages_max: usize,
    pub memory_bytes_max: u64,
    pub flow_window: u32,
}

#[derive(Debug, Default, Clone, Copy)]
struct Paged {
    from: u64,
    count: u64,
    bytes: u64,
}

#[derive(Debug)]
pub struct QueueState {
    args: QueueArgs,
    limits: QueueLimits,
    store: Option<Arc<dyn MessageStore>>,
    /// Ready messages in memory, one deque per priority level, each in seq order.
    levels: Vec<VecDeque<Entry>>,
    memory_count: u64,
    memory_bytes: u64,
    paged: Paged,
    unacked: FastMap<u64, Unacked>,
    /// In registration order (single active consumer takes the first).
    consumers: Vec<Consumer>,
    round_robin: usize,
    next_seq: u64,
    /// Messages below this seq were recovered from the log at start: delivered with
    /// `redelivered = true`, and transient ones among them are dropped.
    recovered_below: u64,
    /// Deliveries paused from the admin plane (publishes are still accepted).
    paused: bool,
}

impl QueueState {
    /// A queue with no messages, or one recovering what `store` holds.
    pub fn new(args: QueueArgs, limits: QueueLimits, store: Option<Arc<dyn MessageStore>>) -> Self {
        let levels = args.max_priority.map_or(1, |p| p as usize + 1);
        let (stored, bound) = store.as_ref().map_or((0, 0), |s| s.live());
        QueueState {
            args,
            limits,
            store,
            levels: (0..levels).map(|_| VecDeque::new()).collect(),
            memory_count: 0,
            memory_bytes: 0,
            paged: Paged {
                from: 0,
                count: stored,
                bytes: 0,
            },
            unacked: FastMap::default(),
            consumers: Vec::new(),
            round_robin: 0,
            next_seq: bound,
            recovered_below: bound,
            paused: false,
        }
    }

    pub fn args(&self) -> &QueueArgs {
        &self.args
    }

    pub fn ready(&self) -> u64 {
        self.memory_count + self.paged.count
    }

    pub fn unacked(&self) -> u64 {
        self.unacked.len() as u64
    }

    pub fn consumer_count(&self) -> u64 {
        self.consumers.len() as u64
    }

    fn ready_bytes(&self) -> u64 {
        self.memory_bytes + self.paged.bytes
    }

    fn level_of(&self, message: &Message) -> usize {
        (message.priority as usize).min(self.levels.len() - 1)
    }

    /// Whether messages may wait in the store beyond the memory window. Not for a priority
    /// queue (its order is not the log's): it then reads everything stored back at once.
    fn paging_allowed(&self) -> bool {
        self.levels.len() == 1 && self.store.is_some()
    }

    fn memory_full(&self) -> bool {
        self.memory_count as usize >= self.limits.memory_messages_max
            || self.memory_bytes >= self.limits.memory_bytes_max
    }

    fn over_limits(&self, extra_messages: u64, extra_bytes: u64) -> bool {
        self.args
            .max_length
            .is_some_and(|max| self.ready() + extra_messages > max)
            || self
                .args
                .max_length_bytes
                .is_some_and(|max| self.ready_bytes() + extra_bytes > max)
    }

    /// Accepts a published message.
    pub fn publish(
        &mut self,
        message: Arc<Message>,
        now_ms: u64,
        out: &mut Vec<Effect>,
    ) -> Result<PublishOutcome, BrokerError> {
        if self.args.overflow != Overflow::DropHead && self.over_limits(1, message.body_bytes()) {
            if self.args.overflow == Overflow::RejectPublishDlx {
                out.push(Effect::DeadLetter {
                    message,
                    reason: DeathReason::Maxlen,
                });
            }
            return Ok(PublishOutcome::Rejected);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let persist = self
            .store
            .as_ref()
            .is_some_and(|s| message.persistent || s.keeps_transient());
        let page = self.paging_allowed() && (self.paged.count > 0 || self.memory_full());
        let mut lsn = None;
        if persist || page {
            let store = self
                .store
                .as_ref()
                .expect("persist or page implies a store");
            lsn = Some(store.append(
                seq,
                &StoredMessage {
                    message: Message::clone(&message),
                    enqueued_at_ms: now_ms,
                    transient: !persist,
                },
            )?);
        }
        if page {
            if self.paged.count == 0 {
                self.paged.from = seq;
            }
            self.paged.count += 1;
            self.paged.bytes += message.body_bytes();
        } else {
            self.push_ready(Entry {
                seq,
                message,
                enqueued_at_ms: now_ms,
                redelivered: false,
                delivery_count: 0,
                stored: persist,
            });
        }
        if self.args.overflow == Overflow::DropHead {
            while self.over_limits(0, 0) {
                match self.pop_head()? {
                    Some(entry) => self.discard(entry, DeathReason::Maxlen, out)?,
                    None => break,
                }
            }
        }
        Ok(PublishOutcome::Accepted(if persist { lsn } else { None }))
    }

    fn push_ready(&mut self, entry: Entry) {
        let level = self.level_of(&entry.message);
        self.memory_count += 1;
        self.memory_bytes += entry.message.body_bytes();
        let deque = &mut self.levels[level];
        // Requeued messages go back to their original position.
        if deque.back().is_none_or(|last| last.seq < entry.seq) {
            deque.push_back(entry);
        } else {
            let at = deque.partition_point(|e| e.seq < entry.seq);
            deque.insert(at, entry);
        }
    }

    /// Reads paged messages back while the memory window has room for half of it.
    fn page_in(&mut self) -> Result<(), BrokerError> {
        // Batches may be all transient leftovers of an earlier run (dropped, not kept): read on
        // until something is in memory or nothing is paged, or a non-empty queue would look
        // empty to its consumers.
        while self.paged.count > 0 {
            if !self.page_in_batch()? || self.memory_count > 0 {
                break;
            }
        }
        Ok(())
    }

    /// Reads one batch of paged messages back; `false` if the window has no room for one.
    fn page_in_batch(&mut self) -> Result<bool, BrokerError> {
        let want = if self.paging_allowed() {
            let room = self
                .limits
                .memory_messages_max
                .saturating_sub(self.memory_count as usize);
            if room < self.limits.memory_messages_max / 2 {
                return Ok(false);
            }
            room.max(1)
        } else {
            usize::MAX
        };
        let store = Arc::clone(self.store.as_ref().expect("paged messages imply a store"));
        let batch = store.read_from(self.paged.from, want)?;
        if batch.is_empty() {
            tracing::error!(
                paged = self.paged.count,
                from = self.paged.from,
                "queue's paged messages are missing from the log"
            );
            self.paged = Paged::default();
            return Ok(false);
        }
        let mut dropped = Vec::new();
        for (seq, stored) in batch {
            self.paged.from = seq + 1;
            self.paged.count = self.paged.count.saturating_sub(1);
            self.paged.bytes = self.paged.bytes.saturating_sub(stored.message.body_bytes());
            let recovered = seq < self.recovered_below;
            if stored.transient && recovered {
                dropped.push(seq);
                continue;
            }
            let delivery_count = store.delivery_count(seq);
            self.push_ready(Entry {
                seq,
                message: Arc::new(stored.message),
                enqueued_at_ms: stored.enqueued_at_ms,
                redelivered: recovered || delivery_count > 0,
                delivery_count,
                stored: true,
            });
        }
        if !dropped.is_empty() {
            store.remove(&dropped)?;
        }
        Ok(true)
    }

    fn head_level(&self) -> Option<usize> {
        (0..self.levels.len())
            .rev()
            .find(|&l| !self.levels[l].is_empty())
    }

    fn pop_head(&mut self) -> Result<Option<Entry>, BrokerError> {
        self.page_in()?;
        let Some(level) = self.head_level() else {
            return Ok(None);
        };
        let entry = self.levels[level].pop_front().expect("level not empty");
        self.memory_count -= 1;
        self.memory_bytes -= entry.message.body_bytes();
        Ok(Some(entry))
    }

    fn deadline(&self, entry: &Entry) -> Option<u64> {
        let ttl = match (self.args.message_ttl_ms, entry.message.expiration_ms) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b)?,
        };
        Some(entry.enqueued_at_ms.saturating_add(ttl))
    }

    /// Drops expired messages at the heads; returns the next time one expires.
    pub fn expire(
        &mut self,
        now_ms: u64,
        out: &mut Vec<Effect>,
    ) -> Result<Option<u64>, BrokerError> {
        self.page_in()?;
        let mut next = None::<u64>;
        for level in 0..self.levels.len() {
            while let Some(head) = self.levels[level].front() {
                match self.deadline(head) {
                    Some(deadline) if deadline < now_ms => {
                        let entry = self.levels[level].pop_front().expect("head exists");
                        self.memory_count -= 1;
                        self.memory_bytes -= entry.message.body_bytes();
                        self.discard(entry, DeathReason::Expired, out)?;
                        if self.levels[level].is_empty() {
                            self.page_in()?;
                        }
                    }
                    Some(deadline) => {
                        next = Some(next.map_or(deadline, |n| n.min(deadline)));
                        break;
                    }
                    None => break,
                }
            }
        }
        Ok(next.map(|n| n + 1))
    }

    /// Removes a message for good: dead-letters it if the queue has a dead-letter exchange.
    fn discard(
        &mut self,
        entry: Entry,
        reason: DeathReason,
        out: &mut Vec<Effect>,
    ) -> Result<(), BrokerError> {
        if entry.stored {
            if let Some(store) = &self.store {
                store.remove(&[entry.seq])?;
            }
        }
        if self.args.dead_letter_exchange.is_some() {
            out.push(Effect::DeadLetter {
                message: entry.message,
                reason,
            });
        }
        Ok(())
    }

    fn can_receive(&self, consumer: &Consumer) -> bool {
        if consumer.paused || consumer.in_transit >= self.limits.flow_window {
            return false;
        }
        consumer.spec.no_ack
            || ((consumer.spec.prefetch == 0 || consumer.unacked < consumer.spec.prefetch)
                && consumer.spec.channel_credit.has_room())
    }

    /// The consumer to receive the next message: the single active one, or the
    /// highest-priority one with credit, round-robin among equals.
    fn pick(&mut self) -> Option<usize> {
        if self.consumers.is_empty() {
            return None;
        }
        if self.args.single_active_consumer {
            return self.can_receive(&self.consumers[0]).then_some(0);
        }
        let n = self.consumers.len();
        let mut best: Option<usize> = None;
        for k in 0..n {
            let i = (self.round_robin + k) % n;
            if self.can_receive(&self.consumers[i])
                && best.is_none_or(|b| {
                    self.consumers[i].spec.priority > self.consumers[b].spec.priority
                })
            {
                best = Some(i);
            }
        }
        if let Some(i) = best {
            self.round_robin = (i + 1) % n;
        }
        best
    }

    /// Hands ready messages to consumers with credit.
    pub fn deliver(&mut self, now_ms: u64, out: &mut Vec<Effect>) -> Result<(), BrokerError> {
        loop {
            if self.ready() == 0 || self.paused {
                return Ok(());
            }
            let Some(index) = self.pick() else {
                return Ok(());
            };
            let no_ack = self.consumers[index].spec.no_ack;
            if !no_ack && !self.consumers[index].spec.channel_credit.try_reserve() {
                return Ok(());
            }
            self.expire(now_ms, out)?;
            let Some(entry) = self.pop_head()? else {
                if !no_ack {
                    self.consumers[index].spec.channel_credit.release(1);
                }
                return Ok(());
            };
            let consumer = &mut self.consumers[index];
            consumer.in_transit += 1;
            let spec = &consumer.spec;
            let effect = Effect::Deliver {
                events: spec.events.clone(),
                owner: spec.owner,
                consumer_tag: spec.tag.clone(),
                entry: entry.clone(),
                ack_required: !no_ack,
            };
            if no_ack {
                if entry.stored {
                    if let Some(store) = &self.store {
                        store.remove(&[entry.seq])?;
                    }
                }
            } else {
                consumer.unacked += 1;
                let owner = spec.owner;
                let tag = spec.tag.clone();
                self.unacked.insert(
                    entry.seq,
                    Unacked {
                        entry,
                        owner,
                        consumer: Some(tag),
                    },
                );
            }
            out.push(effect);
        }
    }

    /// `basic.get`: the head message, if any, with the number left.
    pub fn get(
        &mut self,
        owner: ChannelRef,
        no_ack: bool,
        now_ms: u64,
        out: &mut Vec<Effect>,
    ) -> Result<Option<(Entry, u64)>, BrokerError> {
        self.expire(now_ms, out)?;
        let Some(entry) = self.pop_head()? else {
            return Ok(None);
        };
        if no_ack {
            if entry.stored {
                if let Some(store) = &self.store {
                    store.remove(&[entry.seq])?;
                }
            }
        } else {
            self.unacked.insert(
                entry.seq,
                Unacked {
                    entry: entry.clone(),
                    owner,
                    consumer: None,
                },
            );
        }
        Ok(Some((entry, self.ready())))
    }

    pub fn consume(
        &mut self,
        spec: ConsumerSpec,
        queue_name: &str,
        vhost: &str,
    ) -> Result<(), Refusal> {
        let exclusive_use = || {
            Refusal::access_refused(format!(
                "queue '{queue_name}' in vhost '{vhost}' in exclusive use"
            ))
        };
        if spec.exclusive && !self.consumers.is_empty() {
            return Err(exclusive_use());
        }
        if self.consumers.iter().any(|c| c.spec.exclusive) {
            return Err(exclusive_use());
        }
        self.consumers.push(Consumer {
            spec,
            unacked: 0,
            in_transit: 0,
            paused: false,
        });
        Ok(())
    }

    /// Removes a consumer; its unacked messages stay with its channel.
    pub fn cancel(&mut self, owner: ChannelRef, tag: &ShortStr) -> bool {
        let before = self.consumers.len();
        self.consumers
            .retain(|c| !(c.spec.owner == owner && c.spec.tag == *tag));
        before != self.consumers.len()
    }

    pub fn credit(&mut self, owner: ChannelRef, tag: &ShortStr, count: u32) {
        if let Some(c) = self
            .consumers
            .iter_mut()
            .find(|c| c.spec.owner == owner && c.spec.tag == *tag)
        {
            c.in_transit = c.in_transit.saturating_sub(count);
        }
    }

    /// Settles deliveries of `owner`'s channel.
    pub fn settle(
        &mut self,
        owner: ChannelRef,
        seqs: &[u64],
        action: SettleAction,
        out: &mut Vec<Effect>,
    ) -> Result<u64, BrokerError> {
        let (mut removed, mut returned) = (Vec::new(), Vec::new());
        let mut settled = 0;
        let mut sorted = seqs.to_vec();
        sorted.sort_unstable();
        for seq in sorted {
            let Some(unacked) = self.unacked.remove(&seq) else {
                continue;
            };
            if unacked.owner != owner {
                // Not this channel's delivery (cannot happen through the channel's own tag
                // table); leave it where it was.
                self.unacked.insert(seq, unacked);
                continue;
            }
            settled += 1;
            if let Some(tag) = &unacked.consumer {
                if let Some(c) = self
                    .consumers
                    .iter_mut()
                    .find(|c| c.spec.owner == owner && c.spec.tag == *tag)
                {
                    c.unacked = c.unacked.saturating_sub(1);
                }
            }
            let mut entry = unacked.entry;
            match action {
                SettleAction::Ack => {
                    if entry.stored {
                        removed.push(entry.seq);
                    }
                }
                SettleAction::Requeue => {
                    entry.redelivered = true;
                    entry.delivery_count += 1;
                    if self
                        .args
                        .delivery_limit
                        .is_some_and(|limit| u64::from(entry.delivery_count) > limit)
                    {
                        self.discard(entry, DeathReason::DeliveryLimit, out)?;
                    } else {
                        if entry.stored {
                            returned.push(entry.seq);
                        }
                        self.push_ready(entry);
                    }
                }
                SettleAction::Discard => self.discard(entry, DeathReason::Rejected, out)?,
            }
        }
        if let Some(store) = &self.store {
            if !removed.is_empty() {
                store.remove(&removed)?;
            }
            if !returned.is_empty() {
                store.returned(&returned)?;
            }
        }
        Ok(settled)
    }

    /// A channel closed: its consumers go, its unacked messages return to the queue.
    pub fn channel_closed(
        &mut self,
        owner: ChannelRef,
        out: &mut Vec<Effect>,
    ) -> Result<(), BrokerError> {
        self.consumers.retain(|c| c.spec.owner != owner);
        self.requeue_all_of(owner, out)
    }

    /// `basic.recover`: the channel's unacked messages return to the queue.
    pub fn requeue_all_of(
        &mut self,
        owner: ChannelRef,
        out: &mut Vec<Effect>,
    ) -> Result<(), BrokerError> {
        let seqs: Vec<u64> = self
            .unacked
            .iter()
            .filter(|(_, u)| u.owner == owner)
            .map(|(s, _)| *s)
            .collect();
        self.settle(owner, &seqs, SettleAction::Requeue, out)?;
        Ok(())
    }

    /// Drops every ready message; returns how many.
    pub fn purge(&mut self) -> Result<u64, BrokerError> {
        let count = self.ready();
        let mut stored = Vec::new();
        for level in &mut self.levels {
            stored.extend(level.drain(..).filter(|e| e.stored).map(|e| e.seq));
        }
        if let Some(store) = &self.store {
            stored.sort_unstable();
            store.remove(&stored)?;
            if self.paged.count > 0 {
                store.remove_from(self.paged.from)?;
            }
        }
        self.memory_count = 0;
        self.memory_bytes = 0;
        self.paged = Paged::default();
        Ok(count)
    }

    /// The queue is being deleted: every stored message goes; consumers are told.
    pub fn delete(&mut self, out: &mut Vec<Effect>) -> Result<u64, BrokerError> {
        let count = self.ready();
        if let Some(store) = &self.store {
            store.remove_from(0)?;
        }
        for c in self.consumers.drain(..) {
            if c.spec.cancel_notify {
                out.push(Effect::ConsumerCancelled {
                    events: c.spec.events.clone(),
                    owner: c.spec.owner,
                    consumer_tag: c.spec.tag.clone(),
                });
            }
        }
        Ok(count)
    }

    /// Pauses or resumes deliveries to consumers (`basic.get` and publishes still work).
    pub fn set_paused(&mut self, paused: bool) {
        self.paused = paused;
    }

    /// Pauses or resumes the consumers with this tag; how many there were.
    pub fn set_consumer_paused(&mut self, tag: &str, paused: bool) -> u64 {
        let mut n = 0;
        for c in self
            .consumers
            .iter_mut()
            .filter(|c| c.spec.tag.as_str() == tag)
        {
            c.paused = paused;
            n += 1;
        }
        n
    }

    pub fn consumer_views(&self) -> Vec<ConsumerView> {
        self.consumers
            .iter()
            .map(|c| ConsumerView {
                owner: c.spec.owner,
                tag: c.spec.tag.clone(),
                ack_required: !c.spec.no_ack,
                exclusive: c.spec.exclusive,
                prefetch: c.spec.prefetch,
                priority: c.spec.priority,
                unacked: c.unacked,
                paused: c.paused,
            })
            .collect()
    }

    /// The first `count` ready messages in delivery order, without taking them: those in
    /// memory (highest priority first), then the paged tail read from the store. Changes
    /// nothing (no page-in, no expiry).
    pub fn peek(&self, count: usize) -> Result<Vec<Entry>, BrokerError> {
        let mut out: Vec<Entry> = self
            .levels
            .iter()
            .rev()
            .flat_map(|level| level.iter())
            .take(count)
            .cloned()
            .collect();
        if out.len() < count && self.paged.count > 0 {
            let store = self.store.as_ref().expect("paged messages imply a store");
            let mut from = self.paged.from;
            while out.len() < count {
                let batch = store.read_from(from, (count - out.len()).max(64))?;
                if batch.is_empty() {
                    break;
                }
                for (seq, stored) in batch {
                    from = seq + 1;
                    let recovered = seq < self.recovered_below;
                    if (stored.transient && recovered) || out.len() >= count {
                        continue;
                    }
                    let delivery_count = store.delivery_count(seq);
                    out.push(Entry {
                        seq,
                        message: Arc::new(stored.message),
                        enqueued_at_ms: stored.enqueued_at_ms,
                        redelivered: recovered || delivery_count > 0,
                        delivery_count,
                        stored: true,
                    });
                }
            }
        }
        Ok(out)
    }

    /// Whether any consumer is on a channel of this connection's (for exclusive checks).
    pub fn has_consumers(&self) -> bool {
        !self.consumers.is_empty()
    }

    /// Channels with consumers, to tell them when the queue is gone.
    pub fn consumer_owners(&self) -> impl Iterator<Item = ChannelRef> + '_ {
        self.consumers.iter().map(|c| c.spec.owner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::amqp::BasicProperties;
    use crate::delivery::{ChannelCredit, ConnId};
    use crate::queue::store::MemoryStore;
    use bytes::Bytes;
    use proptest::prelude::*;

    const OWNER: ChannelRef = ChannelRef {
        conn: ConnId(1),
        channel: 1,
        epoch: 1,
    };

    fn limits(memory: usize) -> QueueLimits {
        QueueLimits {
            memory_messages_max: memory,
            memory_bytes_max: u64::MAX,
            flow_window: 1000,
        }
    }

    fn message(body: &str, persistent: bool, priority: u8) -> Arc<Message> {
        let properties = BasicProperties {
            delivery_mode: Some(if persistent { 2 } else { 1 }),
            priority: Some(priority),
            ..Default::default()
        };
        Arc::new(
            Message::new(
                "".into(),
                "q".into(),
                properties.encode(),
                Bytes::copy_from_slice(body.as_bytes()),
            )
            .unwrap(),
        )
    }

    fn body(entry: &Entry) -> String {
        String::from_utf8(entry.message.body.to_vec()).unwrap()
    }

    fn durable(args: QueueArgs, memory: usize) -> (QueueState, Arc<MemoryStore>) {
        let store = Arc::new(MemoryStore::default());
        let state = QueueState::new(
            args,
            limits(memory),
            Some(store.clone() as Arc<dyn MessageStore>),
        );
        (state, store)
    }

    fn spec(
        tag: &str,
        prefetch: u32,
        priority: i64,
    ) -> (
        ConsumerSpec,
        tokio::sync::mpsc::UnboundedReceiver<crate::delivery::ConnEvent>,
    ) {
        let (events, rx) = tokio::sync::mpsc::unbounded_channel();
        (
            ConsumerSpec {
                owner: OWNER,
                tag: tag.into(),
                events,
                no_ack: false,
                exclusive: false,
                priority,
                prefetch,
                channel_credit: Arc::new(ChannelCredit::default()),
                cancel_notify: true,
            },
            rx,
        )
    }

    fn delivered_to(out: &[Effect]) -> Vec<(String, String)> {
        out.iter()
            .filter_map(|e| match e {
                Effect::Deliver {
                    consumer_tag,
                    entry,
                    ..
                } => Some((consumer_tag.to_string(), body(entry))),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn peek_reads_in_delivery_order_across_memory_and_log_and_changes_nothing() {
        let (mut q, _store) = durable(QueueArgs::default(), 4);
        let mut out = Vec::new();
        for i in 0..20 {
            q.publish(message(&i.to_string(), true, 0), 0, &mut out)
                .unwrap();
        }
        let (memory, paged) = (q.memory_count, q.paged);
        let peeked: Vec<String> = q.peek(12).unwrap().iter().map(body).collect();
        let expected: Vec<String> = (0..12).map(|i| i.to_string()).collect();
        assert_eq!(peeked, expected, "memory window, then the paged tail");
        assert_eq!(
            (q.memory_count, q.paged.from, q.paged.count),
            (memory, paged.from, paged.count)
        );
        assert_eq!(q.peek(100).unwrap().len(), 20);
        for i in 0..20 {
            let (entry, _) = q.get(OWNER, true, 0, &mut out).unwrap().unwrap();
            assert_eq!(body(&entry), i.to_string(), "peek took nothing");
        }

        let args = QueueArgs {
            max_priority: Some(5),
            ..QueueArgs::default()
        };
        let mut q = QueueState::new(args, limits(100), None);
        for (b, priority) in [("low", 0), ("high", 5), ("mid", 2), ("high2", 5)] {
            q.publish(message(b, false, priority), 0, &mut out).unwrap();
        }
        let peeked: Vec<String> = q.peek(10).unwrap().iter().map(body).collect();
        assert_eq!(peeked, ["high", "high2", "mid", "low"]);
    }

    #[test]
    fn a_paused_queue_or_consumer_receives_nothing_until_resumed() {
        let mut q = QueueState::new(QueueArgs::default(), limits(100), None);
        let mut out = Vec::new();
        let (a, _rx_a) = spec("a", 0, 0);
        let (b, _rx_b) = spec("b", 0, 0);
        q.consume(a, "q", "/").unwrap();
        q.consume(b, "q", "/").unwrap();
        q.set_paused(true);
        for i in 0..4 {
            q.publish(message(&i.to_string(), false, 0), 0, &mut out)
                .unwrap();
        }
        q.deliver(0, &mut out).unwrap();
        assert!(delivered_to(&out).is_empty());
        assert_eq!(q.ready(), 4);
        assert_eq!(q.set_consumer_paused("a", true), 1);
        q.set_paused(false);
        q.deliver(0, &mut out).unwrap();
        let got = delivered_to(&out);
        assert_eq!(got.len(), 4);
        assert!(got.iter().all(|(tag, _)| tag == "b"), "{got:?}");
        let views = q.consumer_views();
        assert!(views.iter().find(|v| v.tag.as_str() == "a").unwrap().paused);
        assert_eq!(q.set_consumer_paused("nobody", true), 0);
    }

    #[test]
    fn paging_keeps_memory_bounded_and_order_intact() {
        let (mut q, store) = durable(QueueArgs::default(), 4);
        let mut out = Vec::new();
        for i in 0..50 {
            q.publish(message(&i.to_string(), true, 0), 0, &mut out)
                .unwrap();
            assert!(
                q.memory_count <= 4,
                "memory window exceeded: {}",
                q.memory_count
            );
        }
        assert_eq!(q.ready(), 50);
        assert_eq!(store.messages.lock().unwrap().len(), 50);
        for i in 0..50 {
            let (entry, left) = q.get(OWNER, true, 0, &mut out).unwrap().unwrap();
            assert_eq!(body(&entry), i.to_string());
            assert_eq!(left, 49 - i as u64);
            assert!(q.memory_count <= 4);
        }
        assert!(
            store.messages.lock().unwrap().is_empty(),
            "no_ack gets remove from the store"
        );
    }

    #[test]
    fn transient_messages_in_a_paging_queue_are_dropped_on_recovery() {
        let (mut q, store) = durable(QueueArgs::default(), 2);
        let mut out = Vec::new();
        for (i, persistent) in [true, true, true, false, true].into_iter().enumerate() {
            q.publish(message(&i.to_string(), persistent, 0), 0, &mut out)
                .unwrap();
        }
        // "Restart": a new state over the same store.
        let mut q = QueueState::new(
            QueueArgs::default(),
            limits(2),
            Some(store.clone() as Arc<dyn MessageStore>),
        );
        let mut got = Vec::new();
        while let Some((entry, _)) = q.get(OWNER, true, 0, &mut out).unwrap() {
            assert!(entry.redelivered, "recovered messages are redelivered");
            got.push(body(&entry));
        }
        assert_eq!(got, vec!["0", "1", "2", "4"]);
        assert!(store.messages.lock().unwrap().is_empty());
        // New messages after recovery continue above every recovered seq.
        q.publish(message("new", true, 0), 0, &mut out).unwrap();
        let (entry, _) = q.get(OWNER, true, 0, &mut out).unwrap().unwrap();
        assert!(!entry.redelivered);
        assert!(entry.seq >= 5);
    }

    #[test]
    fn a_recovered_queue_whose_first_pages_are_all_transient_is_not_empty() {
        // Found by the model test: 14 transient messages paged behind a window of 3, then one
        // persistent message, then a restart. The first page read back holds only transient
        // leftovers (dropped); the persistent message must still be found.
        let (mut q, store) = durable(QueueArgs::default(), 3);
        let mut out = Vec::new();
        for i in 0..14 {
            q.publish(message(&i.to_string(), false, 0), 0, &mut out)
                .unwrap();
        }
        q.publish(message("14", true, 0), 0, &mut out).unwrap();
        let mut q = QueueState::new(
            QueueArgs::default(),
            limits(3),
            Some(store.clone() as Arc<dyn MessageStore>),
        );
        let (entry, left) = q
            .get(OWNER, true, 0, &mut out)
            .unwrap()
            .expect("the persistent message");
        assert_eq!((body(&entry), left), ("14".to_string(), 0));
        assert!(store.messages.lock().unwrap().is_empty());
    }

    #[test]
    fn consumers_share_by_priority_then_round_robin_within_prefetch() {
        let (mut q, _store) = durable(QueueArgs::default(), 100);
        let (a, _ra) = spec("a", 2, 0);
        let (b, _rb) = spec("b", 2, 0);
        let (c, _rc) = spec("c", 1, 5);
        q.consume(a, "q", "/").unwrap();
        q.consume(b, "q", "/").unwrap();
        q.consume(c, "q", "/").unwrap();
        let mut out = Vec::new();
        for i in 0..6 {
            q.publish(message(&i.to_string(), true, 0), 0, &mut out)
                .unwrap();
        }
        q.deliver(0, &mut out).unwrap();
        let got = delivered_to(&out);
        // c has the highest priority and takes one (its prefetch); a and b alternate.
        assert_eq!(got[0], ("c".into(), "0".into()));
        let rest: Vec<&str> = got[1..].iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(rest, vec!["a", "b", "a", "b"]);
        assert_eq!(q.ready(), 1, "prefetch limits hold the last one back");
    }

    #[test]
    fn requeue_returns_to_the_original_position_and_counts() {
        let args = QueueArgs {
            delivery_limit: Some(1),
            dead_letter_exchange: Some("dlx".into()),
            ..QueueArgs::default()
        };
        let (mut q, store) = durable(args, 100);
        let mut out = Vec::new();
        for i in 0..3 {
            q.publish(message(&i.to_string(), true, 0), 0, &mut out)
                .unwrap();
        }
        let (first, _) = q.get(OWNER, false, 0, &mut out).unwrap().unwrap();
        let (second, _) = q.get(OWNER, false, 0, &mut out).unwrap().unwrap();
        q.settle(
            OWNER,
            &[second.seq, first.seq],
            SettleAction::Requeue,
            &mut out,
        )
        .unwrap();
        let (again, _) = q.get(OWNER, false, 0, &mut out).unwrap().unwrap();
        assert_eq!(
            (body(&again), again.redelivered, again.delivery_count),
            ("0".into(), true, 1)
        );
        // Second return exceeds the limit of 1: dead-lettered, gone from the store.
        q.settle(OWNER, &[again.seq], SettleAction::Requeue, &mut out)
            .unwrap();
        assert!(out.iter().any(|e| matches!(
            e,
            Effect::DeadLetter {
                reason: DeathReason::DeliveryLimit,
                ..
            }
        )));
        assert!(!store.messages.lock().unwrap().contains_key(&again.seq));
        let (next, _) = q.get(OWNER, true, 0, &mut out).unwrap().unwrap();
        assert_eq!(body(&next), "1");
    }

    #[test]
    fn ttl_and_length_limits() {
        let args = QueueArgs {
            message_ttl_ms: Some(100),
            max_length: Some(2),
            dead_letter_exchange: Some("dlx".into()),
            ..QueueArgs::default()
        };
        let mut q = QueueState::new(args, limits(100), None);
        let mut out = Vec::new();
        for i in 0..3 {
            q.publish(message(&i.to_string(), false, 0), 1000, &mut out)
                .unwrap();
        }
        assert_eq!(q.ready(), 2);
        assert!(matches!(
            out.as_slice(),
            [Effect::DeadLetter {
                reason: DeathReason::Maxlen,
                ..
            }]
        ));
        out.clear();
        assert_eq!(q.expire(1050, &mut out).unwrap(), Some(1101));
        assert!(out.is_empty());
        assert_eq!(q.expire(1101, &mut out).unwrap(), None);
        assert_eq!(out.len(), 2);
        assert_eq!(q.ready(), 0);

        let reject = QueueArgs {
            max_length: Some(1),
            overflow: Overflow::RejectPublish,
            ..QueueArgs::default()
        };
        let mut q = QueueState::new(reject, limits(100), None);
        assert!(matches!(
            q.publish(message("a", false, 0), 0, &mut out).unwrap(),
            PublishOutcome::Accepted(None)
        ));
        assert_eq!(
            q.publish(message("b", false, 0), 0, &mut out).unwrap(),
            PublishOutcome::Rejected
        );
    }

    #[test]
    fn priorities_deliver_highest_first_fifo_within_a_level() {
        let args = QueueArgs {
            max_priority: Some(5),
            ..QueueArgs::default()
        };
        let (mut q, store) = durable(args.clone(), 100);
        let mut out = Vec::new();
        for (b, p) in [("a", 1), ("b", 9), ("c", 3), ("d", 9)] {
            q.publish(message(b, true, p), 0, &mut out).unwrap();
        }
        let mut q = QueueState::new(args, limits(100), Some(store as Arc<dyn MessageStore>));
        let mut got = Vec::new();
        while let Some((e, _)) = q.get(OWNER, true, 0, &mut out).unwrap() {
            got.push(body(&e));
        }
        assert_eq!(got, vec!["b", "d", "c", "a"], "also after recovery");
    }

    #[derive(Debug, Clone)]
    enum Op {
        Publish(bool),
        Get,
        AckOldest,
        RequeueNewest,
        Restart,
    }

    proptest! {
        // Cheap (about 0.1 ms a case) and it has found a real bug: run many cases.
        #![proptest_config(ProptestConfig::with_cases(4096))]

        /// Against a model: ready messages always come out in seq order (requeued ones at their
        /// original position), across paging and restarts; nothing is lost or duplicated.
        #[test]
        fn order_survives_paging_requeue_and_restart(
            ops in proptest::collection::vec(prop_oneof![
                4 => any::<bool>().prop_map(Op::Publish),
                3 => Just(Op::Get),
                2 => Just(Op::AckOldest),
                1 => Just(Op::RequeueNewest),
                1 => Just(Op::Restart),
            ], 1..120),
        ) {
            let (mut q, store) = durable(QueueArgs::default(), 3);
            let mut out = Vec::new();
            let mut next = 0u32;
            // Model: ready bodies (by publish number) and unacked ones.
            let mut ready: std::collections::BTreeSet<u32> = Default::default();
            let mut persistent: std::collections::BTreeSet<u32> = Default::default();
            let mut unacked: Vec<(u32, u64)> = Vec::new();
            for op in ops {
                match op {
                    Op::Publish(p) => {
                        q.publish(message(&next.to_string(), p, 0), 0, &mut out).unwrap();
                        ready.insert(next);
                        if p { persistent.insert(next); }
                        next += 1;
                    }
                    Op::Get => {
                        let got = q.get(OWNER, false, 0, &mut out).unwrap();
                        let expected = ready.iter().next().copied();
                        prop_assert_eq!(got.as_ref().map(|(e, _)| body(e).parse::<u32>().unwrap()), expected);
                        if let Some((e, _)) = got {
                            ready.remove(&expected.unwrap());
                            unacked.push((expected.unwrap(), e.seq));
                        }
                    }
                    Op::AckOldest => {
                        if !unacked.is_empty() {
                            let (n, seq) = unacked.remove(0);
                            q.settle(OWNER, &[seq], SettleAction::Ack, &mut out).unwrap();
                            persistent.remove(&n);
                        }
                    }
                    Op::RequeueNewest => {
                        if let Some((n, seq)) = unacked.pop() {
                            q.settle(OWNER, &[seq], SettleAction::Requeue, &mut out).unwrap();
                            ready.insert(n);
                        }
                    }
                    Op::Restart => {
                        // Unacked persistent messages come back; transient ones are gone.
                        for (n, _) in unacked.drain(..) {
                            ready.insert(n);
                        }
                        ready.retain(|n| persistent.contains(n));
                        q = QueueState::new(QueueArgs::default(), limits(3), Some(store.clone() as Arc<dyn MessageStore>));
                    }
                }
            }
            let mut rest = Vec::new();
            while let Some((e, _)) = q.get(OWNER, true, 0, &mut out).unwrap() {
                rest.push(body(&e).parse::<u32>().unwrap());
            }
            prop_assert_eq!(rest, ready.into_iter().collect::<Vec<_>>());
        }
    }
}
