//! `warren.queues.v1.Queues`, the serving side: what another node forwards to a quorum queue
//! led here is applied to this node's handle of the queue, as a local client's command would
//! be. (Should leadership have moved meanwhile, the handle forwards it on.)

use super::router::{action_of, decode_message, encode_message};
use crate::amqp::ShortStr;
use crate::broker::Broker;
use crate::delivery::{ChannelCredit, ChannelRef, ConfirmTarget, ConfirmToken, ConnEvent};
use crate::queue::{ConsumerSpec, QueueCommand, QueueHandle};
use std::pin::Pin;
use std::sync::{Arc, Weak};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};
use warren_proto::queues::queues_server::{Queues, QueuesServer};
use warren_proto::queues::{
    channel_down, channel_up, CallReply, CallRequest, Cancelled, ChannelDown, ChannelUp, Delivered,
    ForwardConfirm, ForwardPublish, GetEmpty, QueueRef, Subscribed,
};

type Down<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[derive(Debug, Clone)]
pub struct QueuesService {
    broker: Weak<Broker>,
}

impl QueuesService {
    pub fn server(broker: &Arc<Broker>) -> QueuesServer<QueuesService> {
        QueuesServer::new(QueuesService {
            broker: Arc::downgrade(broker),
        })
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX)
    }

    fn broker(&self) -> Result<Arc<Broker>, Status> {
        self.broker
            .upgrade()
            .ok_or_else(|| Status::unavailable("node stopping"))
    }
}

fn queue_of(broker: &Broker, queue: Option<QueueRef>) -> Result<Arc<QueueHandle>, Status> {
    let q = queue.ok_or_else(|| Status::invalid_argument("the first item names the queue"))?;
    broker
        .vhost(&q.vhost)
        .and_then(|v| v.queue(&q.queue))
        .ok_or_else(|| Status::not_found(format!("no queue '{}' in vhost '{}'", q.queue, q.vhost)))
}

/// A channel identity on this node for a forwarded publisher or channel.
fn forwarded_owner(broker: &Broker) -> ChannelRef {
    ChannelRef {
        conn: broker.next_conn_id(),
        channel: 1,
        epoch: 0,
    }
}

#[tonic::async_trait]
impl Queues for QueuesService {
    type PublishStream = Down<ForwardConfirm>;
    type ChannelStream = Down<ChannelDown>;

    async fn publish(
        &self,
        request: Request<Streaming<ForwardPublish>>,
    ) -> Result<Response<Self::PublishStream>, Status> {
        let broker = self.broker()?;
        let mut items = request.into_inner();
        let first = items
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("no publish"))?;
        let handle = queue_of(&broker, first.queue.clone())?;
        let owner = forwarded_owner(&broker);
        let (events, mut confirms) = mpsc::unbounded_channel();
        let (down, down_rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            // The first item only names the queue.
            let mut next = None;
            drop(first);
            loop {
                let item = match next.take() {
                    Some(item) => item,
                    None => match items.message().await {
                        Ok(Some(item)) => item,
                        _ => break,
                    },
                };
                let target = ConfirmTarget {
                    events: events.clone(),
                    owner,
                    token: ConfirmToken::Publish(item.id),
                };
                let Some(message) = decode_message(item.message) else {
                    target.send(false);
                    continue;
                };
                let command = QueueCommand::Publish {
                    message: Arc::new(message),
                    confirm: Some(target),
                };
                if let Err(crate::queue::QueueGone) = handle.send(command).await {
                    break;
                }
            }
        });
        tokio::spawn(async move {
            while let Some(event) = confirms.recv().await {
                if let ConnEvent::Confirm {
                    token: ConfirmToken::Publish(id),
                    ok,
                    ..
                } = event
                {
                    if down.send(Ok(ForwardConfirm { id, ok })).is_err() {
                        break;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::UnboundedReceiverStream::new(down_rx),
        )))
    }

    async fn channel(
        &self,
        request: Request<Streaming<ChannelUp>>,
    ) -> Result<Response<Self::ChannelStream>, Status> {
        let broker = self.broker()?;
        let mut ups = request.into_inner();
        let first = ups
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("no open"))?;
        let Some(channel_up::Op::Open(queue)) = first.op else {
            return Err(Status::invalid_argument(
                "a channel stream starts with open",
            ));
        };
        let handle = queue_of(&broker, Some(queue))?;
        let owner = forwarded_owner(&broker);
        let (events, mut events_rx) = mpsc::unbounded_channel::<ConnEvent>();
        let (down, down_rx) = mpsc::unbounded_channel::<Result<ChannelDown, Status>>();
        let credit = Arc::new(ChannelCredit::default());
        // Deliveries and cancellations, to the consumer's node.
        let d = down.clone();
        tokio::spawn(async move {
            while let Some(event) = events_rx.recv().await {
                let out = match event {
                    ConnEvent::Deliver(delivery) => {
                        channel_down::Event::Delivered(delivered(&delivery, false))
                    }
                    ConnEvent::ConsumerCancelled { consumer_tag, .. } => {
                        channel_down::Event::Cancelled(Cancelled {
                            tag: consumer_tag.as_str().to_string(),
                        })
                    }
                    _ => continue,
                };
                if d.send(Ok(ChannelDown { event: Some(out) })).is_err() {
                    break;
                }
            }
        });
        // Commands from the consumer's node, in order; the end of the stream closes the
        // channel here (its unsettled messages are requeued).
        tokio::spawn(async move {
            while let Ok(Some(up)) = ups.message().await {
                let Some(op) = up.op else { continue };
                let sent = match op {
                    channel_up::Op::Open(_) => Ok(()),
                    channel_up::Op::Subscribe(s) => {
                        let tag = s.tag.clone();
                        let spec = ConsumerSpec {
                            owner,
                            tag: ShortStr::from(s.tag.as_str()),
                            events: events.clone(),
                            no_ack: s.no_ack,
                            exclusive: s.exclusive,
                            priority: s.priority,
                            prefetch: s.prefetch,
                            channel_credit: Arc::clone(&credit),
                            cancel_notify: true,
                        };
                        let result = handle
                            .ask(|reply| QueueCommand::Consume { spec, reply })
                            .await;
                        let (code, text) = match result {
                            Ok(Ok(())) => (0, String::new()),
                            Ok(Err(r)) => (r.code as u32, r.text),
                            Err(_) => (404, "the queue is gone".to_string()),
                        };
                        let reply = channel_down::Event::Subscribed(Subscribed { tag, code, text });
                        let _ = down.send(Ok(ChannelDown { event: Some(reply) }));
                        Ok(())
                    }
                    channel_up::Op::Get(g) => {
                        let result = handle
                            .ask(|reply| QueueCommand::Get {
                                owner,
                                no_ack: g.no_ack,
                                events: events.clone(),
                                reply,
                            })
                            .await;
                        let event = match result {
                            Ok(Some(delivery)) => {
                                channel_down::Event::Delivered(delivered(&delivery, true))
                            }
                            _ => channel_down::Event::GetEmpty(GetEmpty {}),
                        };
                        let _ = down.send(Ok(ChannelDown { event: Some(event) }));
                        Ok(())
                    }
                    channel_up::Op::Settle(s) => {
                        handle
                            .send(QueueCommand::Settle {
                                owner,
                                seqs: s.seqs,
                                action: action_of(s.action),
                            })
                            .await
                    }
                    channel_up::Op::Credit(c) => {
                        handle
                            .send(QueueCommand::Credit {
                                owner,
                                tag: ShortStr::from(c.tag.as_str()),
                                count: c.count,
                            })
                            .await
                    }
                    channel_up::Op::Cancel(c) => {
                        handle
                            .send(QueueCommand::Cancel {
                                owner,
                                tag: ShortStr::from(c.tag.as_str()),
                                reply: None,
                            })
                            .await
                    }
                    channel_up::Op::Recover(_) => {
                        handle.send(QueueCommand::Recover { owner }).await
                    }
                    channel_up::Op::Kick(_) => handle.send(QueueCommand::Kick).await,
                };
                if sent.is_err() {
                    break;
                }
            }
            let _ = handle.send(QueueCommand::ChannelClosed { owner }).await;
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::UnboundedReceiverStream::new(down_rx),
        )))
    }

    async fn call(&self, request: Request<CallRequest>) -> Result<Response<CallReply>, Status> {
        let broker = self.broker()?;
        let request = request.into_inner();
        if request.op == 5 {
            let queue = request.queue.unwrap_or_default();
            broker
                .transfer_leadership(&queue.vhost, &queue.queue, request.to)
                .await
                .map_err(Status::unavailable)?;
            return Ok(Response::new(CallReply::default()));
        }
        let handle = queue_of(&broker, request.queue)?;
        let gone = || Status::not_found("the queue is gone");
        let (first, second) = match request.op {
            1 | 2 => handle
                .ask(|reply| QueueCommand::Touch {
                    renew: request.op == 1,
                    reply,
                })
                .await
                .map_err(|_| gone())?
                .map_err(|r| Status::unavailable(r.text))?,
            3 => (
                handle
                    .ask(|reply| QueueCommand::Purge { reply })
                    .await
                    .map_err(|_| gone())?,
                0,
            ),
            4 => (handle.ready(), handle.consumers()),
            other => return Err(Status::invalid_argument(format!("unknown call {other}"))),
        };
        Ok(Response::new(CallReply {
            first,
            second,
            code: 0,
            text: String::new(),
        }))
    }
}

fn delivered(d: &crate::delivery::Delivery, is_get: bool) -> Delivered {
    Delivered {
        tag: d
            .consumer_tag
            .as_ref()
            .map(|t| t.as_str().to_string())
            .unwrap_or_default(),
        is_get,
        seq: d.seq,
        message: encode_message(&d.message),
        redelivered: d.redelivered,
        ack_required: d.ack_required,
        delivery_count: d.delivery_count,
        message_count: d.message_count,
    }
}
