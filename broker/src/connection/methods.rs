//! The channel methods: exchange, queue, basic, confirm and tx classes, and publish assembly.

use super::channel::{BodyParts, Channel, ConsumerEntry, Mode, PublishState, TxPublish, Unacked};
use super::{Connection, CreditReturn};
use crate::amqp::constants::ReplyCode;
use crate::amqp::frame::{self, Frame};
use crate::amqp::method::{self as m, Method};
use crate::amqp::properties::{BasicProperties, ContentHeader};
use crate::amqp::{FieldTable, ShortStr};
use crate::auth::Access;
use crate::broker::{ExchangeDeclare, QueueDeclare};
use crate::delivery::{
    ChannelRef, ConfirmTarget, ConfirmToken, ConnEvent, ConnId, ConnectionStats, Delivery,
};
use crate::exchange::{Binding, Destination};
use crate::message::Message;
use crate::queue::{ConsumerSpec, QueueCommand, SettleAction};
use crate::refusal::Refusal;
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::Arc;

/// The pseudo-queue of direct reply-to.
pub const REPLY_TO: &str = "amq.rabbitmq.reply-to";
const REPLY_TO_PREFIX: &str = "amq.rabbitmq.reply-to.";

fn unexpected(text: impl Into<String>) -> Refusal {
    Refusal::new(ReplyCode::UnexpectedFrame, text)
}

/// The resource name permissions are checked against (RabbitMQ calls the default exchange
/// `amq.default`).
fn exchange_resource(name: &str) -> &str {
    if name.is_empty() {
        "amq.default"
    } else {
        name
    }
}

fn random_tag(prefix: &str) -> ShortStr {
    let name = crate::broker::server_named();
    ShortStr::new(&format!("{prefix}{}", &name["amq.gen-".len()..]))
}

/// Encodes a direct reply-to address: connection, channel and its epoch.
fn reply_to_address(owner: ChannelRef) -> String {
    format!(
        "{REPLY_TO_PREFIX}{}.{}.{}",
        owner.conn.0, owner.channel, owner.epoch
    )
}

fn parse_reply_to_address(key: &str) -> Option<ChannelRef> {
    let rest = key.strip_prefix(REPLY_TO_PREFIX)?;
    let mut parts = rest.split('.');
    let conn = parts.next()?.parse().ok()?;
    let channel = parts.next()?.parse().ok()?;
    let epoch = parts.next()?.parse().ok()?;
    Some(ChannelRef {
        conn: ConnId(conn),
        channel,
        epoch,
    })
}

impl Connection {
    fn channel(&mut self, id: u16) -> &mut Channel {
        self.channels
            .get_mut(&id)
            .expect("the frame loop checked the channel exists")
    }

    fn reply(&mut self, channel: u16, method: impl Into<Method>) {
        frame::put_method(&mut self.out, channel, &method.into());
    }

    fn check(&mut self, access: Access, resource: &str) -> Result<(), Refusal> {
        let cache = &mut self.permission_cache[access as usize];
        let allowed = match cache.get(resource) {
            Some(allowed) => *allowed,
            None => {
                let allowed = self
                    .broker
                    .check(&self.user, &self.vhost.name, access, resource)
                    .is_ok();
                cache.insert(resource.to_string(), allowed);
                allowed
            }
        };
        if allowed {
            Ok(())
        } else {
            Err(Refusal::access_refused(format!(
                "{} access to {resource} in vhost '{}' refused for user '{}'",
                access.name(),
                self.vhost.name,
                self.user
            )))
        }
    }

    pub(super) async fn on_channel_frame(&mut self, id: u16, frame: Frame) -> Result<(), Refusal> {
        let state = std::mem::take(&mut self.channel(id).publish);
        match (state, frame) {
            (PublishState::Idle, Frame::Method(_, method)) => self.on_method(id, method).await,
            (PublishState::AwaitingHeader(method), Frame::Header(_, header)) => {
                let max = self.broker.config.limits.message_bytes_max;
                if header.body_size > max {
                    return Err(Refusal::precondition(format!(
                        "message size {} is larger than configured max size {max}",
                        header.body_size
                    )));
                }
                if header.body_size == 0 {
                    return self
                        .publish_complete(id, method, header, Bytes::new())
                        .await;
                }
                self.channel(id).publish = PublishState::AwaitingBody {
                    method,
                    header,
                    body: BodyParts::Empty,
                };
                Ok(())
            }
            (
                PublishState::AwaitingBody {
                    method,
                    header,
                    mut body,
                },
                Frame::Body(_, chunk),
            ) => {
                body.push(chunk);
                let received = body.len() as u64;
                if received > header.body_size {
                    return Err(unexpected(format!(
                        "body of {received} octets exceeds the announced {}",
                        header.body_size
                    )));
                }
                if received == header.body_size {
                    return self
                        .publish_complete(id, method, header, body.into_bytes())
                        .await;
                }
                self.channel(id).publish = PublishState::AwaitingBody {
                    method,
                    header,
                    body,
                };
                Ok(())
            }
            (PublishState::Idle, _) => Err(unexpected("content frame without a publish")),
            (PublishState::AwaitingHeader(_), _) => Err(unexpected(
                "expected content header for class 60, got non content header frame instead",
            )),
            (PublishState::AwaitingBody { .. }, _) => Err(unexpected(
                "expected content body, got non content body frame instead",
            )),
        }
    }

    async fn on_method(&mut self, id: u16, method: Method) -> Result<(), Refusal> {
        match method {
            Method::ChannelOpen(_) => Err(Refusal::new(
                ReplyCode::ChannelError,
                "second 'channel.open' seen",
            )),
            Method::ChannelClose(_) => {
                if let Some(mut ch) = self.channels.remove(&id) {
                    self.release_channel(&mut ch).await;
                }
                self.reply(id, m::ChannelCloseOk {});
                Ok(())
            }
            Method::ChannelCloseOk(_) => Ok(()),
            Method::ChannelFlow(flow) => {
                if !flow.active {
                    // RabbitMQ 3.x refuses to stop deliveries this way.
                    return Err(Refusal::new(ReplyCode::NotImplemented, "active=false"));
                }
                self.reply(id, m::ChannelFlowOk { active: true });
                Ok(())
            }
            Method::ChannelFlowOk(_) => Ok(()),
            Method::ExchangeDeclare(d) => self.exchange_declare(id, d).await,
            Method::ExchangeDelete(d) => {
                self.check(Access::Configure, exchange_resource(d.exchange.as_str()))?;
                self.broker
                    .exchange_delete(&self.vhost.name, d.exchange.as_str(), d.if_unused)
                    .await?;
                if !d.nowait {
                    self.reply(id, m::ExchangeDeleteOk {});
                }
                Ok(())
            }
            Method::ExchangeBind(b) => {
                let route = (b.destination, b.source, b.routing_key, b.arguments);
                self.exchange_binding(id, route, true, b.nowait).await
            }
            Method::ExchangeUnbind(b) => {
                let route = (b.destination, b.source, b.routing_key, b.arguments);
                self.exchange_binding(id, route, false, b.nowait).await
            }
            Method::QueueDeclare(d) => self.queue_declare(id, d).await,
            Method::QueueBind(b) => {
                let binding =
                    self.queue_binding(b.queue, b.exchange, b.routing_key, b.arguments)?;
                self.broker.bind(&self.vhost.name, self.id, binding).await?;
                if !b.nowait {
                    self.reply(id, m::QueueBindOk {});
                }
                Ok(())
            }
            Method::QueueUnbind(b) => {
                let binding =
                    self.queue_binding(b.queue, b.exchange, b.routing_key, b.arguments)?;
                self.broker
                    .unbind(&self.vhost.name, self.id, binding)
                    .await?;
                self.reply(id, m::QueueUnbindOk {});
                Ok(())
            }
            Method::QueuePurge(p) => {
                self.check(Access::Read, p.queue.as_str())?;
                let count = self
                    .broker
                    .queue_purge(&self.vhost.name, self.id, p.queue.as_str())
                    .await?;
                if !p.nowait {
                    self.reply(
                        id,
                        m::QueuePurgeOk {
                            message_count: count.min(u32::MAX as u64) as u32,
                        },
                    );
                }
                Ok(())
            }
            Method::QueueDelete(d) => {
                self.check(Access::Configure, d.queue.as_str())?;
                let count = self
                    .broker
                    .queue_delete(
                        &self.vhost.name,
                        self.id,
                        d.queue.as_str(),
                        d.if_unused,
                        d.if_empty,
                    )
                    .await?;
                if !d.nowait {
                    self.reply(
                        id,
                        m::QueueDeleteOk {
                            message_count: count.min(u32::MAX as u64) as u32,
                        },
                    );
                }
                Ok(())
            }
            Method::BasicQos(q) => {
                if q.prefetch_size != 0 {
                    return Err(Refusal::new(
                        ReplyCode::NotImplemented,
                        format!("prefetch_size!=0 ({})", q.prefetch_size),
                    ));
                }
                let ch = self.channel(id);
                if q.global {
                    ch.credit.set_limit(q.prefetch_count.into());
                    let queues = ch.queues_involved();
                    for queue in queues {
                        let _ = queue.try_send(QueueCommand::Kick);
                    }
                } else {
                    ch.consumer_prefetch = q.prefetch_count.into();
                }
                self.reply(id, m::BasicQosOk {});
                Ok(())
            }
            Method::BasicConsume(c) => self.basic_consume(id, c).await,
            Method::BasicCancel(c) => {
                let ch = self.channel(id);
                let owner = ch.owner;
                if let Some(consumer) = ch.consumers.remove(&c.consumer_tag) {
                    let _ = consumer
                        .queue
                        .ask(|reply| QueueCommand::Cancel {
                            owner,
                            tag: c.consumer_tag.clone(),
                            reply: Some(reply),
                        })
                        .await;
                } else if ch.reply_to_consumer.as_ref() == Some(&c.consumer_tag) {
                    ch.reply_to_consumer = None;
                }
                if !c.nowait {
                    self.reply(
                        id,
                        m::BasicCancelOk {
                            consumer_tag: c.consumer_tag,
                        },
                    );
                }
                Ok(())
            }
            Method::BasicPublish(p) => self.basic_publish(id, p),
            Method::BasicGet(g) => self.basic_get(id, g).await,
            Method::BasicAck(a) => {
                self.settle(id, a.delivery_tag, a.multiple, SettleAction::Ack)
                    .await
            }
            Method::BasicReject(r) => {
                let action = if r.requeue {
                    SettleAction::Requeue
                } else {
                    SettleAction::Discard
                };
                self.settle(id, r.delivery_tag, false, action).await
            }
            Method::BasicNack(n) => {
                let action = if n.requeue {
                    SettleAction::Requeue
                } else {
                    SettleAction::Discard
                };
                self.settle(id, n.delivery_tag, n.multiple, action).await
            }
            Method::BasicRecover(_) | Method::BasicRecoverAsync(_) => {
                let is_async = matches!(method, Method::BasicRecoverAsync(_));
                self.settle(id, 0, true, SettleAction::Requeue).await?;
                if !is_async {
                    self.reply(id, m::BasicRecoverOk {});
                }
                Ok(())
            }
            Method::ConfirmSelect(c) => {
                let ch = self.channel(id);
                if ch.mode == Mode::Transactional {
                    return Err(Refusal::precondition(
                        "cannot switch from tx to confirm mode",
                    ));
                }
                ch.mode = Mode::Confirm;
                if !c.nowait {
                    self.reply(id, m::ConfirmSelectOk {});
                }
                Ok(())
            }
            Method::TxSelect(_) => {
                let ch = self.channel(id);
                if ch.mode == Mode::Confirm {
                    return Err(Refusal::precondition(
                        "cannot switch from confirm to tx mode",
                    ));
                }
                ch.mode = Mode::Transactional;
                self.reply(id, m::TxSelectOk {});
                Ok(())
            }
            Method::TxCommit(_) => self.tx_commit(id).await,
            Method::TxRollback(_) => {
                let ch = self.channel(id);
                if ch.mode != Mode::Transactional {
                    return Err(Refusal::precondition("channel is not transactional"));
                }
                ch.tx.publishes.clear();
                for (taken, _) in std::mem::take(&mut ch.tx.settles) {
                    ch.unacked.extend(taken);
                }
                self.reply(id, m::TxRollbackOk {});
                Ok(())
            }
            other => Err(Refusal::new(
                ReplyCode::CommandInvalid,
                format!("{} is not a client method", other.name()),
            )),
        }
    }

    async fn exchange_declare(&mut self, id: u16, d: m::ExchangeDeclare) -> Result<(), Refusal> {
        let name = d.exchange.as_str().to_string();
        if name.is_empty() && !d.passive {
            return Err(Refusal::access_refused(
                "operation not permitted on the default exchange",
            ));
        }
        if !d.passive {
            self.check(Access::Configure, exchange_resource(&name))?;
            if let Some(alternate) = d
                .arguments
                .get("alternate-exchange")
                .and_then(|v| v.as_str())
            {
                let alternate = alternate.to_string();
                self.check(Access::Write, &alternate)?;
            }
        }
        self.broker
            .exchange_declare(
                &self.vhost.name,
                ExchangeDeclare {
                    name,
                    kind: d.kind.as_str().to_string(),
                    passive: d.passive,
                    durable: d.durable,
                    auto_delete: d.auto_delete,
                    internal: d.internal,
                    arguments: d.arguments,
                },
            )
            .await?;
        if !d.nowait {
            self.reply(id, m::ExchangeDeclareOk {});
        }
        Ok(())
    }

    /// `exchange.bind` / `exchange.unbind` of (destination, source, routing key, arguments).
    async fn exchange_binding(
        &mut self,
        id: u16,
        (destination, source, routing_key, arguments): (ShortStr, ShortStr, ShortStr, FieldTable),
        bind: bool,
        nowait: bool,
    ) -> Result<(), Refusal> {
        self.check(Access::Write, exchange_resource(destination.as_str()))?;
        self.check(Access::Read, exchange_resource(source.as_str()))?;
        let binding = Binding {
            source: source.as_str().to_string(),
            destination: Destination::Exchange(destination.as_str().to_string()),
            routing_key: routing_key.as_str().to_string(),
            arguments: arguments.encode().to_vec(),
        };
        let vhost = self.vhost.name.clone();
        if bind {
            self.broker.bind(&vhost, self.id, binding).await?;
            if !nowait {
                self.reply(id, m::ExchangeBindOk {});
            }
        } else {
            self.broker.unbind(&vhost, self.id, binding).await?;
            if !nowait {
                self.reply(id, m::ExchangeUnbindOk {});
            }
        }
        Ok(())
    }

    fn queue_binding(
        &mut self,
        queue: ShortStr,
        exchange: ShortStr,
        routing_key: ShortStr,
        arguments: FieldTable,
    ) -> Result<Binding, Refusal> {
        self.check(Access::Write, queue.as_str())?;
        self.check(Access::Read, exchange_resource(exchange.as_str()))?;
        Ok(Binding {
            source: exchange.as_str().to_string(),
            destination: Destination::Queue(queue.as_str().to_string()),
            routing_key: routing_key.as_str().to_string(),
            arguments: arguments.encode().to_vec(),
        })
    }

    async fn queue_declare(&mut self, id: u16, d: m::QueueDeclare) -> Result<(), Refusal> {
        let mut name = d.queue.as_str().to_string();
        if name.is_empty() && !d.passive {
            name = crate::broker::server_named();
        }
        if name == REPLY_TO {
            let method = m::QueueDeclareOk {
                queue: d.queue,
                message_count: 0,
                consumer_count: 0,
            };
            self.reply(id, method);
            return Ok(());
        }
        if !d.passive {
            self.check(Access::Configure, &name)?;
            if let Some(dlx) = d
                .arguments
                .get("x-dead-letter-exchange")
                .and_then(|v| v.as_str())
            {
                let dlx = dlx.to_string();
                self.check(Access::Write, exchange_resource(&dlx))?;
            }
        }
        let (name, messages, consumers) = self
            .broker
            .queue_declare(
                &self.vhost.name,
                self.id,
                QueueDeclare {
                    name,
                    passive: d.passive,
                    durable: d.durable,
                    exclusive: d.exclusive,
                    auto_delete: d.auto_delete,
                    arguments: d.arguments,
                },
            )
            .await?;
        if !d.nowait {
            self.reply(
                id,
                m::QueueDeclareOk {
                    queue: ShortStr::new(&name),
                    message_count: messages.min(u32::MAX as u64) as u32,
                    consumer_count: consumers.min(u32::MAX as u64) as u32,
                },
            );
        }
        Ok(())
    }

    async fn basic_consume(&mut self, id: u16, c: m::BasicConsume) -> Result<(), Refusal> {
        let tag = if c.consumer_tag.is_empty() {
            random_tag("amq.ctag-")
        } else {
            c.consumer_tag.clone()
        };
        {
            let ch = self.channel(id);
            if ch.consumers.contains_key(&tag) || ch.reply_to_consumer.as_ref() == Some(&tag) {
                return Err(Refusal::new(
                    ReplyCode::NotAllowed,
                    format!("attempt to reuse consumer tag '{tag}'"),
                ));
            }
        }
        if c.queue.as_str() == REPLY_TO {
            if !c.no_ack {
                return Err(Refusal::precondition("reply consumer cannot acknowledge"));
            }
            self.channel(id).reply_to_consumer = Some(tag.clone());
            if !c.nowait {
                self.reply(id, m::BasicConsumeOk { consumer_tag: tag });
            }
            return Ok(());
        }
        self.check(Access::Read, c.queue.as_str())?;
        let queue = self
            .broker
            .queue_for(&self.vhost.name, c.queue.as_str(), self.id)?;
        let priority = c
            .arguments
            .get("x-priority")
            .map(|v| {
                v.as_i64().ok_or_else(|| {
                    Refusal::precondition("invalid arg 'x-priority': not an integer")
                })
            })
            .transpose()?
            .unwrap_or(0);
        let events = self.events.clone();
        let cancel_notify = self.capabilities.consumer_cancel_notify;
        let ch = self.channel(id);
        let spec = ConsumerSpec {
            owner: ch.owner,
            tag: tag.clone(),
            events,
            no_ack: c.no_ack,
            exclusive: c.exclusive,
            priority,
            prefetch: ch.consumer_prefetch,
            channel_credit: Arc::clone(&ch.credit),
            cancel_notify,
        };
        // The consumer is known to the channel before the queue can deliver to it.
        ch.consumers.insert(
            tag.clone(),
            ConsumerEntry {
                queue: Arc::clone(&queue),
                no_ack: c.no_ack,
            },
        );
        let answer = queue
            .ask(|reply| QueueCommand::Consume { spec, reply })
            .await
            .unwrap_or_else(|_| {
                Err(Refusal::not_found(format!(
                    "no queue '{}' in vhost '{}'",
                    c.queue, self.vhost.name
                )))
            });
        if let Err(refusal) = answer {
            self.channel(id).consumers.remove(&tag);
            return Err(refusal);
        }
        if !c.nowait {
            self.reply(id, m::BasicConsumeOk { consumer_tag: tag });
        }
        Ok(())
    }

    fn basic_publish(&mut self, id: u16, p: m::BasicPublish) -> Result<(), Refusal> {
        if p.immediate {
            return Err(Refusal::new(ReplyCode::NotImplemented, "immediate=true"));
        }
        let exchange = p.exchange.as_str();
        self.check(Access::Write, exchange_resource(exchange))?;
        if !exchange.is_empty() {
            let state = self.vhost.read();
            match state.exchanges.get(exchange) {
                None => {
                    return Err(Refusal::not_found(format!(
                        "no exchange '{exchange}' in vhost '{}'",
                        self.vhost.name
                    )))
                }
                Some(x) if x.decl.internal => {
                    return Err(Refusal::access_refused(format!(
                        "cannot publish to internal exchange '{exchange}' in vhost '{}'",
                        self.vhost.name
                    )))
                }
                Some(_) => {}
            }
        }
        if self.broker.is_disk_blocked() {
            // Finish this publish, then stop reading until the alarm clears.
            self.paused = true;
        }
        self.channel(id).publish = PublishState::AwaitingHeader(p);
        Ok(())
    }

    async fn publish_complete(
        &mut self,
        id: u16,
        method: m::BasicPublish,
        header: ContentHeader,
        body: Bytes,
    ) -> Result<(), Refusal> {
        ConnectionStats::add(&self.stats.published, 1);
        crate::statistics::GlobalCounters::add(&self.broker.totals.published, 1);
        let mut properties = BasicProperties::decode(header.properties.clone())
            .map_err(|e| Refusal::new(ReplyCode::SyntaxError, e.to_string()))?;
        if let Some(user_id) = &properties.user_id {
            if user_id.as_str() != self.user {
                return Err(Refusal::precondition(format!(
                    "user_id property set to '{user_id}' but authenticated user was '{}'",
                    self.user
                )));
            }
        }
        let mut raw_properties = header.properties;
        if properties.reply_to.as_ref().map(|r| r.as_str()) == Some(REPLY_TO) {
            let ch = self.channel(id);
            if ch.reply_to_consumer.is_none() {
                return Err(Refusal::precondition("fast reply consumer does not exist"));
            }
            properties.reply_to = Some(ShortStr::new(&reply_to_address(ch.owner)));
            raw_properties = properties.encode();
        }
        let message = Arc::new(Message::with_decoded(
            method.exchange,
            method.routing_key,
            raw_properties,
            body,
            &properties,
        ));
        let ch = self.channel(id);
        match ch.mode {
            Mode::Transactional => {
                ch.tx.publishes.push(TxPublish {
                    message,
                    mandatory: method.mandatory,
                });
                Ok(())
            }
            Mode::Confirm => {
                self.route(id, message, method.mandatory, true, None).await;
                Ok(())
            }
            Mode::Normal => {
                self.route(id, message, method.mandatory, false, None).await;
                Ok(())
            }
        }
    }

    /// Routes a message and hands it to its queues. Returns how many queues will answer the
    /// given commit token.
    async fn route(
        &mut self,
        id: u16,
        message: Arc<Message>,
        mandatory: bool,
        confirm: bool,
        commit: Option<u64>,
    ) -> u32 {
        let exchange = message.exchange.as_str();
        let routing_key = message.routing_key.as_str();
        let owner = self.channel(id).owner;
        if exchange.is_empty() && routing_key.starts_with(REPLY_TO_PREFIX) {
            let delivered = parse_reply_to_address(routing_key)
                .and_then(|target| {
                    let events = self.broker.connection_events(target.conn)?;
                    events
                        .send(ConnEvent::DirectReply {
                            owner: target,
                            message: Arc::clone(&message),
                        })
                        .ok()
                })
                .is_some();
            if !delivered && mandatory {
                self.basic_return(id, &message);
            }
            if confirm {
                self.channel(id).confirms.publish(0);
            }
            return 0;
        }
        let (queues, reached) = self.route_cached(&message);
        if !reached && mandatory {
            self.basic_return(id, &message);
        }
        let token = if let Some(commit) = commit {
            Some(ConfirmToken::TxCommit(commit))
        } else if confirm {
            Some(ConfirmToken::Publish(
                self.channel(id).confirms.publish(queues.len() as u32),
            ))
        } else {
            None
        };
        let mut answering = 0;
        for queue in queues.iter() {
            let target = token.map(|token| ConfirmTarget {
                events: self.events.clone(),
                owner,
                token,
            });
            let sent = queue
                .send(QueueCommand::Publish {
                    message: Arc::clone(&message),
                    confirm: target,
                })
                .await;
            match (sent, token) {
                (Ok(()), _) => answering += 1,
                // The queue was deleted meanwhile: as if unroutable there.
                (Err(_), Some(ConfirmToken::Publish(seq))) => {
                    self.channel(id).confirms.answer(seq, true)
                }
                (Err(_), _) => {}
            }
        }
        answering
    }

    /// The queues a message routes to, from the route cache while the vhost's topology has not
    /// changed, and whether the application's routes reached one (not only a wire tap).
    fn route_cached(&mut self, message: &Message) -> (Arc<[Arc<crate::queue::QueueHandle>]>, bool) {
        /// Routes remembered per connection before the cache starts over.
        const ROUTE_CACHE_MAX: usize = 1024;
        let generation = self.vhost.generation();
        let key = (message.exchange.clone(), message.routing_key.clone());
        if let Some((at, queues)) = self.route_cache.get(&key) {
            if *at == generation {
                // Cached routes saw no tap: every queue was reached by the application's routes.
                return (Arc::clone(queues), !queues.is_empty());
            }
        }
        let headers = || message.decode_properties().headers;
        let routed = self
            .vhost
            .route(
                message.exchange.as_str(),
                message.routing_key.as_str(),
                &headers,
            )
            .unwrap_or_default();
        let queues: Arc<[Arc<crate::queue::QueueHandle>]> = routed.queues.into();
        if routed.cacheable {
            if self.route_cache.len() >= ROUTE_CACHE_MAX {
                self.route_cache.clear();
            }
            self.route_cache
                .insert(key, (generation, Arc::clone(&queues)));
        }
        (queues, routed.reached)
    }

    fn basic_return(&mut self, id: u16, message: &Message) {
        let method: Method = m::BasicReturn {
            reply_code: ReplyCode::NoRoute as u16,
            reply_text: ShortStr::from_static("NO_ROUTE"),
            exchange: message.exchange.clone(),
            routing_key: message.routing_key.clone(),
        }
        .into();
        self.out.put_content(
            id,
            &method,
            &message.properties,
            &message.body,
            self.frame_max,
        );
    }

    async fn tx_commit(&mut self, id: u16) -> Result<(), Refusal> {
        let ch = self.channel(id);
        if ch.mode != Mode::Transactional {
            return Err(Refusal::precondition("channel is not transactional"));
        }
        let publishes = std::mem::take(&mut ch.tx.publishes);
        let settles = std::mem::take(&mut ch.tx.settles);
        ch.tx.commits += 1;
        let commit = ch.tx.commits;
        ch.tx.committing = Some((commit, u32::MAX, false));
        let mut answering = 0u32;
        for p in publishes {
            answering += self
                .route(id, p.message, p.mandatory, false, Some(commit))
                .await;
        }
        for (taken, action) in settles {
            self.settle_taken(id, taken, action).await;
        }
        let ch = self.channel(id);
        match &mut ch.tx.committing {
            Some((c, remaining, _)) if *c == commit => {
                // Answers may already have arrived (they count down from u32::MAX).
                let arrived = u32::MAX - *remaining;
                *remaining = answering.saturating_sub(arrived);
                if *remaining == 0 {
                    ch.tx.committing = None;
                    self.reply(id, m::TxCommitOk {});
                }
            }
            _ => {}
        }
        Ok(())
    }

    pub(super) fn on_confirm(&mut self, owner: ChannelRef, token: ConfirmToken, ok: bool) {
        let Some(ch) = self.channels.get_mut(&owner.channel) else {
            return;
        };
        if ch.owner != owner || ch.closing {
            return;
        }
        match token {
            ConfirmToken::Publish(seq) => ch.confirms.answer(seq, ok),
            ConfirmToken::TxCommit(commit) => {
                if let Some((c, remaining, _)) = &mut ch.tx.committing {
                    if *c == commit {
                        *remaining -= 1;
                        if *remaining == 0 {
                            ch.tx.committing = None;
                            frame::put_method(
                                &mut self.out,
                                owner.channel,
                                &m::TxCommitOk {}.into(),
                            );
                        }
                    }
                }
            }
        }
    }

    async fn basic_get(&mut self, id: u16, g: m::BasicGet) -> Result<(), Refusal> {
        self.check(Access::Read, g.queue.as_str())?;
        let queue = self
            .broker
            .queue_for(&self.vhost.name, g.queue.as_str(), self.id)?;
        let owner = self.channel(id).owner;
        let events = self.events.clone();
        let answer = queue
            .ask(|reply| QueueCommand::Get {
                owner,
                no_ack: g.no_ack,
                events,
                reply,
            })
            .await
            .ok()
            .flatten();
        match answer {
            None => self.reply(id, m::BasicGetEmpty::default()),
            Some(delivery) => {
                let tag = self.channel(id).track_delivery(&delivery, false);
                let method: Method = m::BasicGetOk {
                    delivery_tag: tag,
                    redelivered: delivery.redelivered,
                    exchange: delivery.message.exchange.clone(),
                    routing_key: delivery.message.routing_key.clone(),
                    message_count: delivery.message_count,
                }
                .into();
                self.out.put_content(
                    id,
                    &method,
                    &delivery.message.properties,
                    &delivery.message.body,
                    self.frame_max,
                );
            }
        }
        Ok(())
    }

    async fn settle(
        &mut self,
        id: u16,
        tag: u64,
        multiple: bool,
        action: SettleAction,
    ) -> Result<(), Refusal> {
        let ch = self.channel(id);
        let Some(taken) = ch.take_unacked(tag, multiple) else {
            return Err(Refusal::precondition(format!("unknown delivery tag {tag}")));
        };
        if ch.mode == Mode::Transactional && tag != 0 {
            // Held until commit (and out of `unacked`, so they cannot be settled twice).
            ch.tx.settles.push((taken, action));
            return Ok(());
        }
        self.settle_taken(id, taken, action).await;
        Ok(())
    }

    async fn settle_taken(&mut self, id: u16, taken: Vec<(u64, Unacked)>, action: SettleAction) {
        let ch = self.channel(id);
        let owner = ch.owner;
        let mut by_queue: HashMap<
            crate::queue::QueueId,
            (Arc<crate::queue::QueueHandle>, Vec<u64>),
        > = HashMap::new();
        let mut credit = 0u32;
        for (_, u) in taken {
            if u.from_consumer {
                credit += 1;
            }
            by_queue
                .entry(u.queue.id)
                .or_insert_with(|| (Arc::clone(&u.queue), Vec::new()))
                .1
                .push(u.seq);
        }
        let was_full = credit > 0 && ch.credit.release(credit);
        let kick = if was_full {
            ch.queues_involved()
        } else {
            Vec::new()
        };
        for (_, (queue, seqs)) in by_queue {
            let _ = queue
                .send(QueueCommand::Settle {
                    owner,
                    seqs,
                    action,
                })
                .await;
        }
        for queue in kick {
            let _ = queue.send(QueueCommand::Kick).await;
        }
    }

    pub(super) fn deliver(&mut self, delivery: Delivery) {
        let owner = delivery.owner;
        let Some(tag) = delivery.consumer_tag.clone() else {
            return;
        };
        let live = self
            .channels
            .get(&owner.channel)
            .is_some_and(|ch| ch.owner == owner && !ch.closing);
        if !live {
            // The queue requeues it when it learns the channel closed.
            return;
        }
        let ch = self.channel(owner.channel);
        if !ch.consumers.contains_key(&tag) {
            // Delivered after basic.cancel: give it straight back.
            if delivery.ack_required {
                let queue = Arc::clone(&delivery.queue);
                let command = QueueCommand::Settle {
                    owner,
                    seqs: vec![delivery.seq],
                    action: SettleAction::Requeue,
                };
                if let Err(command) = queue.try_send(command) {
                    tokio::spawn(async move {
                        let _ = queue.send(command).await;
                    });
                }
                let _ = ch.credit.release(1);
            }
            return;
        }
        let delivery_tag = ch.track_delivery(&delivery, true);
        let method: Method = m::BasicDeliver {
            consumer_tag: tag.clone(),
            delivery_tag,
            redelivered: delivery.redelivered,
            exchange: delivery.message.exchange.clone(),
            routing_key: delivery.message.routing_key.clone(),
        }
        .into();
        self.out.put_content(
            owner.channel,
            &method,
            &delivery.message.properties,
            &delivery.message.body,
            self.frame_max,
        );
        match self.credits.last_mut() {
            Some(last)
                if last.queue.id == delivery.queue.id && last.owner == owner && last.tag == tag =>
            {
                last.count += 1
            }
            _ => self.credits.push(CreditReturn {
                queue: delivery.queue,
                owner,
                tag,
                count: 1,
            }),
        }
    }

    pub(super) fn deliver_direct_reply(&mut self, owner: ChannelRef, message: Arc<Message>) {
        let Some(ch) = self.channels.get_mut(&owner.channel) else {
            return;
        };
        if ch.owner != owner || ch.closing {
            return;
        }
        let Some(tag) = ch.reply_to_consumer.clone() else {
            return;
        };
        let delivery_tag = ch.next_tag();
        let method: Method = m::BasicDeliver {
            consumer_tag: tag,
            delivery_tag,
            redelivered: false,
            exchange: message.exchange.clone(),
            routing_key: message.routing_key.clone(),
        }
        .into();
        self.out.put_content(
            owner.channel,
            &method,
            &message.properties,
            &message.body,
            self.frame_max,
        );
    }
}
