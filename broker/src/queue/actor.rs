//! The queue's task: drains its inbox in batches, applies each command to [`QueueState`], then
//! carries out the effects — deliveries to connections, dead letters to other queues, and one
//! durability wait per batch for the confirms of persistent publishes (so one fdatasync confirms
//! a whole batch, across queues, through the log's group commit).

use super::dead_letter::dead_lettered;
use super::state::{Effect, PublishOutcome, QueueLimits, QueueState};
use super::store::MessageStore;
use super::{QueueArgs, QueueCommand, QueueCounters, QueueDecl, QueueHandle, QueueId, Refusal};
use crate::amqp::FieldValue;
use crate::broker::Broker;
use crate::delivery::{ConfirmTarget, ConnEvent, Delivery};
use crate::message::Message;
use crate::vhost::Vhost;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;
use warren_storage::Lsn;

/// Commands applied before effects are carried out and confirms are scheduled.
const BATCH_MAX: usize = 256;

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn spawn(
    broker: Arc<Broker>,
    vhost: Arc<Vhost>,
    id: QueueId,
    decl: QueueDecl,
    args: QueueArgs,
    store: Option<Arc<dyn MessageStore>>,
) -> Arc<QueueHandle> {
    let (tx, rx) = mpsc::channel(broker.config.limits.queue_inbox_max);
    let counters = Arc::new(QueueCounters::default());
    let handle = Arc::new(QueueHandle::new(id, decl, args.clone(), counters, tx));
    serve(broker, vhost, Arc::clone(&handle), rx, store);
    handle
}

/// Runs a queue's actor for an existing handle on the inbox `rx` (a quorum queue's leader
/// serves the node's handle of the queue this way, with the raft group as its store). The
/// actor stops when `rx` closes, or when the queue is deleted.
pub fn serve(
    broker: Arc<Broker>,
    vhost: Arc<Vhost>,
    handle: Arc<QueueHandle>,
    rx: mpsc::Receiver<QueueCommand>,
    store: Option<Arc<dyn MessageStore>>,
) {
    let limits = &broker.config.limits;
    let args = handle.args.clone();
    let counters = &handle.counters;
    let state = QueueState::new(
        args.clone(),
        QueueLimits {
            memory_messages_max: limits.queue_memory_messages_max,
            memory_bytes_max: limits.queue_memory_bytes_max,
            flow_window: limits.consumer_flow_window,
        },
        store.clone(),
    );
    counters.ready.store(state.ready(), Ordering::Relaxed);
    let actor = Actor {
        broker,
        vhost,
        handle: Arc::clone(&handle),
        state,
        store,
        rx,
        durable_confirms: Vec::new(),
        confirm_lsn: None,
        had_consumers: false,
        last_used_ms: now_ms(),
        next_expiry_ms: None,
        fenced: false,
        deleting: false,
        held_back: false,
        effects: Vec::new(),
    };
    // The span is attached to the future (never entered across an `.await`).
    let span =
        tracing::info_span!("queue", vhost = %actor.vhost.name, queue = %actor.handle.name());
    tokio::spawn(tracing::Instrument::instrument(actor.run(), span));
}

struct Actor {
    broker: Arc<Broker>,
    vhost: Arc<Vhost>,
    handle: Arc<QueueHandle>,
    state: QueueState,
    store: Option<Arc<dyn MessageStore>>,
    rx: mpsc::Receiver<QueueCommand>,
    /// Confirms waiting for `confirm_lsn` to be durable.
    durable_confirms: Vec<ConfirmTarget>,
    confirm_lsn: Option<Lsn>,
    had_consumers: bool,
    last_used_ms: u64,
    next_expiry_ms: Option<u64>,
    /// A storage failure stopped this queue from accepting messages.
    fenced: bool,
    /// A quorum queue's deletion (it expired) was proposed; the cluster will stop this actor.
    deleting: bool,
    /// Deliveries are held back until the store allows them again (a quorum queue's leader
    /// whose lease ran out): the actor looks again every [`HELD_BACK_RETRY_MS`].
    held_back: bool,
    effects: Vec<Effect>,
}

/// How often a held-back queue asks its store again whether it may deliver.
const HELD_BACK_RETRY_MS: u64 = 50;

#[derive(PartialEq, Eq)]
enum Flow {
    Continue,
    Stop,
}

impl Actor {
    async fn run(mut self) {
        loop {
            let timer = self.next_timer_ms();
            let first = match timer {
                Some(at) => {
                    let wait = Duration::from_millis(at.saturating_sub(now_ms()));
                    tokio::select! {
                        command = self.rx.recv() => match command {
                            Some(command) => Some(command),
                            // Every sender is gone (a quorum queue's leadership moved).
                            None => {
                                self.stop();
                                return;
                            }
                        },
                        _ = tokio::time::sleep(wait) => None,
                    }
                }
                None => match self.rx.recv().await {
                    Some(command) => Some(command),
                    None => {
                        self.stop();
                        return;
                    }
                },
            };
            let mut flow = Flow::Continue;
            if let Some(command) = first {
                flow = self.apply(command);
                let mut n = 1;
                while flow == Flow::Continue && n < BATCH_MAX {
                    match self.rx.try_recv() {
                        Ok(command) => flow = self.apply(command),
                        Err(_) => break,
                    }
                    n += 1;
                }
            }
            if flow == Flow::Continue {
                flow = self.after_batch();
            }
            if flow == Flow::Stop {
                self.stop();
                return;
            }
        }
    }

    fn next_timer_ms(&self) -> Option<u64> {
        let expires = self
            .state
            .args()
            .expires_ms
            .filter(|_| self.state.consumer_count() == 0 && !self.deleting)
            .map(|ms| self.last_used_ms + ms);
        let held_back = self.held_back.then(|| now_ms() + HELD_BACK_RETRY_MS);
        [self.next_expiry_ms, expires, held_back]
            .into_iter()
            .flatten()
            .min()
    }

    fn may_deliver(&self) -> bool {
        self.store.as_ref().is_none_or(|s| s.may_deliver())
    }

    fn fence(&mut self, error: crate::error::BrokerError) {
        if let crate::error::BrokerError::Storage(warren_storage::StorageError::NoSpace {
            ..
        }) = &error
        {
            // Retryable: this publish is refused (nacked), the disk alarm blocks publishers,
            // and the queue keeps serving.
            tracing::warn!(%error, "disk full: publish refused");
            return;
        }
        if !self.fenced {
            tracing::error!(%error, "queue fenced after a storage failure: publishes are refused");
        }
        self.fenced = true;
    }

    fn apply(&mut self, command: QueueCommand) -> Flow {
        let now = now_ms();
        let owner_name = self.handle.name().to_string();
        match command {
            QueueCommand::Publish { message, confirm } => {
                self.handle
                    .counters
                    .published
                    .fetch_add(1, Ordering::Relaxed);
                self.publish(message, confirm, now);
            }
            QueueCommand::Consume { spec, reply } => {
                self.last_used_ms = now;
                let result = self.state.consume(spec, &owner_name, &self.vhost.name);
                if result.is_ok() {
                    self.had_consumers = true;
                }
                let _ = reply.send(result);
            }
            QueueCommand::Cancel { owner, tag, reply } => {
                self.state.cancel(owner, &tag);
                if let Some(reply) = reply {
                    let _ = reply.send(());
                }
            }
            QueueCommand::Settle {
                owner,
                seqs,
                action,
            } => match self.state.settle(owner, &seqs, action, &mut self.effects) {
                Ok(n) => {
                    if action == super::SettleAction::Ack {
                        self.handle.counters.acked.fetch_add(n, Ordering::Relaxed);
                        crate::statistics::GlobalCounters::add(&self.broker.totals.acked, n);
                    }
                }
                Err(e) => self.fence(e),
            },
            QueueCommand::Credit { owner, tag, count } => self.state.credit(owner, &tag, count),
            QueueCommand::Kick => {}
            QueueCommand::Get {
                owner,
                no_ack,
                events: _,
                reply,
            } => {
                self.last_used_ms = now;
                if !self.may_deliver() {
                    let _ = reply.send(None);
                    return Flow::Continue;
                }
                match self.state.get(owner, no_ack, now, &mut self.effects) {
                    Ok(Some((entry, remaining))) => {
                        let message =
                            self.with_delivery_count(&entry.message, entry.delivery_count);
                        let _ = reply.send(Some(Delivery {
                            owner,
                            consumer_tag: None,
                            queue: Arc::clone(&self.handle),
                            seq: entry.seq,
                            message,
                            redelivered: entry.redelivered,
                            ack_required: !no_ack,
                            delivery_count: entry.delivery_count,
                            message_count: remaining.min(u32::MAX as u64) as u32,
                        }));
                    }
                    Ok(None) => {
                        let _ = reply.send(None);
                    }
                    Err(e) => {
                        self.fence(e);
                        let _ = reply.send(None);
                    }
                }
            }
            QueueCommand::ChannelClosed { owner } => {
                if let Err(e) = self.state.channel_closed(owner, &mut self.effects) {
                    self.fence(e);
                }
            }
            QueueCommand::Recover { owner } => {
                if let Err(e) = self.state.requeue_all_of(owner, &mut self.effects) {
                    self.fence(e);
                }
            }
            QueueCommand::Purge { reply } => match self.state.purge() {
                Ok(n) => {
                    let _ = reply.send(n);
                }
                Err(e) => {
                    self.fence(e);
                    let _ = reply.send(0);
                }
            },
            QueueCommand::Delete {
                if_unused,
                if_empty,
                reply,
            } => {
                let vhost = &self.vhost.name;
                if if_unused && self.state.consumer_count() > 0 {
                    let _ = reply.send(Err(Refusal::precondition(format!(
                        "queue '{owner_name}' in vhost '{vhost}' in use"
                    ))));
                    return Flow::Continue;
                }
                if if_empty && self.state.ready() > 0 {
                    let _ = reply.send(Err(Refusal::precondition(format!(
                        "queue '{owner_name}' in vhost '{vhost}' not empty"
                    ))));
                    return Flow::Continue;
                }
                let result = self.delete();
                let _ = reply.send(result.map_err(Refusal::from));
                return Flow::Stop;
            }
            QueueCommand::Touch { renew, reply } => {
                if renew {
                    self.last_used_ms = now;
                }
                let _ = reply.send(Ok((self.state.ready(), self.state.consumer_count())));
            }
            QueueCommand::Pause { paused, reply } => {
                self.state.set_paused(paused);
                self.handle.counters.paused.store(paused, Ordering::Relaxed);
                tracing::info!(paused, "deliveries paused or resumed from the admin plane");
                let _ = reply.send(());
            }
            QueueCommand::PauseConsumer { tag, paused, reply } => {
                let n = self.state.set_consumer_paused(&tag, paused);
                let _ = reply.send(n);
            }
            QueueCommand::Peek { count, reply } => {
                let _ = reply.send(self.state.peek(count).map_err(Refusal::from));
            }
            QueueCommand::Take {
                owner,
                count,
                settle,
                reply,
            } => {
                let _ = reply.send(self.take(owner, count, settle, now));
            }
            QueueCommand::Inspect { reply } => {
                let _ = reply.send(super::QueueInspection {
                    consumers: self.state.consumer_views(),
                });
            }
        }
        Flow::Continue
    }

    /// Takes up to `count` messages for the admin plane as deliveries of `owner`, settling
    /// them at once when asked. Returns them and the number left ready.
    fn take(
        &mut self,
        owner: crate::delivery::ChannelRef,
        count: usize,
        settle: Option<super::SettleAction>,
        now: u64,
    ) -> Result<(Vec<super::state::Entry>, u64), Refusal> {
        let mut taken = Vec::new();
        while taken.len() < count {
            match self.state.get(owner, false, now, &mut self.effects) {
                Ok(Some((entry, _))) => taken.push(entry),
                Ok(None) => break,
                Err(e) => {
                    let refusal = Refusal::internal(e.to_string());
                    self.fence(e);
                    return Err(refusal);
                }
            }
        }
        if let Some(action) = settle {
            let seqs: Vec<u64> = taken.iter().map(|e| e.seq).collect();
            match self.state.settle(owner, &seqs, action, &mut self.effects) {
                Ok(n) if action == super::SettleAction::Ack => {
                    self.handle.counters.acked.fetch_add(n, Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(e) => {
                    let refusal = Refusal::internal(e.to_string());
                    self.fence(e);
                    return Err(refusal);
                }
            }
        }
        Ok((taken, self.state.ready()))
    }

    fn publish(&mut self, message: Arc<Message>, confirm: Option<ConfirmTarget>, now: u64) {
        if self.fenced {
            if let Some(c) = confirm {
                c.send(false);
            }
            return;
        }
        match self.state.publish(message, now, &mut self.effects) {
            Ok(PublishOutcome::Accepted(Some(lsn))) => {
                self.confirm_lsn = Some(self.confirm_lsn.map_or(lsn, |l| l.max(lsn)));
                if let Some(c) = confirm {
                    self.durable_confirms.push(c);
                }
            }
            Ok(PublishOutcome::Accepted(None)) => {
                if let Some(c) = confirm {
                    c.send(true);
                }
            }
            Ok(PublishOutcome::Rejected) => {
                if let Some(c) = confirm {
                    c.send(false);
                }
            }
            Err(e) => {
                self.fence(e);
                if let Some(c) = confirm {
                    c.send(false);
                }
            }
        }
    }

    fn delete(&mut self) -> Result<u64, crate::error::BrokerError> {
        let count = self.state.delete(&mut self.effects)?;
        self.broker.forget_queue(&self.vhost, &self.handle)?;
        self.broker.classic_queue_stopped(&self.handle);
        self.run_effects();
        tracing::debug!(messages = count, "queue deleted");
        Ok(count)
    }

    fn after_batch(&mut self) -> Flow {
        let now = now_ms();
        match self.state.expire(now, &mut self.effects) {
            Ok(next) => self.next_expiry_ms = next,
            Err(e) => self.fence(e),
        }
        let was_held_back = self.held_back;
        self.held_back = !self.may_deliver();
        if self.held_back != was_held_back {
            tracing::info!(
                held_back = self.held_back,
                "deliveries held back (this node cannot be sure it still leads) or resumed"
            );
        }
        let delivered = if self.held_back {
            Ok(())
        } else {
            self.state.deliver(now, &mut self.effects)
        };
        if let Err(e) = delivered {
            self.fence(e);
        }
        self.schedule_confirms();
        self.run_effects();
        let counters = &self.handle.counters;
        counters.ready.store(self.state.ready(), Ordering::Relaxed);
        counters
            .unacked
            .store(self.state.unacked(), Ordering::Relaxed);
        counters
            .consumers
            .store(self.state.consumer_count(), Ordering::Relaxed);
        let consumers = self.state.consumer_count();
        let auto_deleted = self.handle.decl.auto_delete && self.had_consumers && consumers == 0;
        let expired = self
            .state
            .args()
            .expires_ms
            .is_some_and(|ms| consumers == 0 && now >= self.last_used_ms + ms);
        if (auto_deleted || expired) && self.broker.is_quorum(&self.vhost, &self.handle) {
            // A quorum queue is deleted through the cluster's metadata, on every node.
            if !self.deleting {
                self.deleting = true;
                tracing::info!("quorum queue expired: proposing its deletion");
                let broker = Arc::clone(&self.broker);
                let (vhost, name) = (self.vhost.name.clone(), self.handle.name().to_string());
                tokio::spawn(async move { broker.delete_expired_quorum(&vhost, &name).await });
            }
            return Flow::Continue;
        }
        if auto_deleted || expired {
            tracing::debug!(auto_deleted, expired, "queue deletes itself");
            if let Err(error) = self.delete() {
                tracing::error!(%error, "deleting the queue failed");
            }
            return Flow::Stop;
        }
        Flow::Continue
    }

    /// One durability wait for every persistent publish of the batch.
    fn schedule_confirms(&mut self) {
        let Some(lsn) = self.confirm_lsn.take() else {
            return;
        };
        let targets = std::mem::take(&mut self.durable_confirms);
        if targets.is_empty() {
            return;
        }
        let store = self
            .store
            .as_ref()
            .expect("a durable confirm implies a store");
        store.on_durable(
            lsn,
            Box::new(move |ok| {
                for target in targets {
                    target.send(ok);
                }
            }),
        );
    }

    fn with_delivery_count(&self, message: &Arc<Message>, delivery_count: u32) -> Arc<Message> {
        let counts = self.state.args().delivery_limit.is_some()
            || self.state.args().queue_type == super::args::QueueType::Quorum;
        if delivery_count == 0 || !counts {
            return Arc::clone(message);
        }
        let mut properties = message.decode_properties();
        let mut headers = properties.headers.take().unwrap_or_default();
        headers.insert("x-delivery-count", FieldValue::I64(delivery_count.into()));
        properties.headers = Some(headers);
        Arc::new(Message {
            properties: properties.encode(),
            ..Message::clone(message)
        })
    }

    fn run_effects(&mut self) {
        let effects = std::mem::take(&mut self.effects);
        let mut delivered = 0;
        for effect in effects {
            match effect {
                Effect::Deliver {
                    events,
                    owner,
                    consumer_tag,
                    entry,
                    ack_required,
                } => {
                    delivered += 1;
                    let message = self.with_delivery_count(&entry.message, entry.delivery_count);
                    let _ = events.send(ConnEvent::Deliver(Delivery {
                        owner,
                        consumer_tag: Some(consumer_tag),
                        queue: Arc::clone(&self.handle),
                        seq: entry.seq,
                        message,
                        redelivered: entry.redelivered,
                        ack_required,
                        delivery_count: entry.delivery_count,
                        message_count: 0,
                    }));
                }
                Effect::ConsumerCancelled {
                    events,
                    owner,
                    consumer_tag,
                } => {
                    let _ = events.send(ConnEvent::ConsumerCancelled {
                        owner,
                        consumer_tag,
                    });
                }
                Effect::DeadLetter { message, reason } => self.dead_letter(&message, reason),
            }
        }
        self.handle
            .counters
            .delivered
            .fetch_add(delivered, Ordering::Relaxed);
        crate::statistics::GlobalCounters::add(&self.broker.totals.delivered, delivered);
    }

    fn dead_letter(&mut self, message: &Message, reason: super::state::DeathReason) {
        let args = self.state.args();
        let Some(exchange) = args.dead_letter_exchange.clone() else {
            return;
        };
        let copy = Arc::new(dead_lettered(
            message,
            reason,
            self.handle.name(),
            &exchange,
            args.dead_letter_routing_key.as_deref(),
            now_ms() / 1000,
        ));
        let headers = || copy.decode_properties().headers;
        let Some(routed) = self
            .vhost
            .route(&exchange, copy.routing_key.as_str(), &headers)
        else {
            tracing::debug!(%exchange, "dead-letter exchange does not exist; message dropped");
            return;
        };
        for queue in routed.queues {
            if queue.id == self.handle.id {
                // Dead-lettering into itself: apply directly (its own inbox may be full).
                let now = now_ms();
                if let Err(e) = self.state.publish(Arc::clone(&copy), now, &mut Vec::new()) {
                    self.fence(e);
                }
                continue;
            }
            let command = QueueCommand::Publish {
                message: Arc::clone(&copy),
                confirm: None,
            };
            if let Err(command) = queue.try_send(command) {
                // Never wait on another queue's inbox from here: that could form a cycle.
                tokio::spawn(async move {
                    let _ = queue.send(command).await;
                });
            }
        }
    }

    /// The queue is gone: answer whatever is still in the inbox.
    fn stop(&mut self) {
        self.rx.close();
        while let Ok(command) = self.rx.try_recv() {
            match command {
                // As for an unroutable message: nothing holds it, and nothing will.
                QueueCommand::Publish {
                    confirm: Some(c), ..
                } => c.send(!self.fenced),
                QueueCommand::Consume { reply, .. } => {
                    let _ = reply.send(Err(Refusal::not_found(format!(
                        "no queue '{}' in vhost '{}'",
                        self.handle.name(),
                        self.vhost.name
                    ))));
                }
                _ => {}
            }
        }
        self.schedule_confirms();
    }
}
