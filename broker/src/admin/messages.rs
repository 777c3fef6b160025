//! Test messages and looking inside queues: publish without a client connection, peek, get
//! with ack or requeue, and move messages between queues.
//!
//! Messages the admin plane takes from a queue are unacked deliveries of a channel of its own
//! (connection id 0, which no client connection has). If the call is abandoned half-way — the
//! client goes away — a guard closes that channel, and the queue requeues whatever it still
//! holds for it: nothing is lost to a dropped call.

use super::convert::{properties_from_proto, properties_to_proto};
use crate::amqp::ShortStr;
use crate::broker::Broker;
use crate::delivery::{ChannelRef, ConfirmTarget, ConfirmToken, ConnEvent, ConnId};
use crate::message::Message;
use crate::queue::state::Entry;
use crate::queue::{QueueCommand, QueueHandle, SettleAction};
use crate::statistics::GlobalCounters;
use bytes::Bytes;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;
use tonic::Status;
use warren_proto::admin as proto;

/// Body bytes returned per message when the request does not say.
const BODY_PREVIEW_DEFAULT: usize = 4096;
/// Messages moved per round trip.
const MOVE_BATCH: usize = 256;
/// Most messages one peek or get returns.
const LIST_MAX: usize = 10_000;

static NEXT_EPOCH: AtomicU32 = AtomicU32::new(1);

/// A channel of the admin plane's own.
fn admin_channel() -> ChannelRef {
    ChannelRef {
        conn: ConnId(0),
        channel: 0,
        epoch: NEXT_EPOCH.fetch_add(1, Ordering::Relaxed),
    }
}

/// Requeues what `owner` still holds in `queue` unless disarmed.
struct HeldGuard {
    queue: Arc<QueueHandle>,
    owner: ChannelRef,
}

impl Drop for HeldGuard {
    fn drop(&mut self) {
        let command = QueueCommand::ChannelClosed { owner: self.owner };
        if let Err(command) = self.queue.try_send(command) {
            let queue = Arc::clone(&self.queue);
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    let _ = queue.send(command).await;
                });
            }
        }
    }
}

fn name_ok(what: &str, name: &str) -> Result<(), Status> {
    if name.len() > 255 {
        return Err(Status::invalid_argument(format!(
            "{what} longer than 255 bytes"
        )));
    }
    Ok(())
}

pub fn queue(broker: &Broker, vhost: &str, name: &str) -> Result<Arc<QueueHandle>, Status> {
    let v = broker
        .vhost(vhost)
        .ok_or_else(|| Status::not_found(format!("no vhost '{vhost}'")))?;
    v.queue(name)
        .ok_or_else(|| Status::not_found(format!("no queue '{name}' in vhost '{vhost}'")))
}

fn message_info(entry: &Entry, body_bytes_max: u32) -> proto::MessageInfo {
    let m = &entry.message;
    let limit = if body_bytes_max == 0 {
        BODY_PREVIEW_DEFAULT
    } else {
        body_bytes_max as usize
    };
    let body = m.body.slice(..m.body.len().min(limit));
    proto::MessageInfo {
        exchange: m.exchange.as_str().to_string(),
        routing_key: m.routing_key.as_str().to_string(),
        properties: Some(properties_to_proto(&m.decode_properties())),
        body_truncated: body.len() < m.body.len(),
        body: body.to_vec(),
        body_bytes: m.body.len() as u64,
        redelivered: entry.redelivered,
        delivery_count: entry.delivery_count,
    }
}

/// Hands each message to its queue, all before any answer is awaited (so one group commit
/// serves them); with `confirm`, waits for every answer. Says per item whether it was accepted;
/// a queue gone before it took the message answers `gone_accepts` (true for a publish, as for
/// a client's unroutable message; false for a move, so the source keeps the message).
async fn enqueue(
    items: &[(&Arc<QueueHandle>, &Arc<Message>)],
    confirm: bool,
    gone_accepts: bool,
) -> Vec<bool> {
    let owner = admin_channel();
    let (events, mut answers) = mpsc::unbounded_channel();
    let mut accepted = vec![!confirm; items.len()];
    let mut expected = 0;
    for (i, (queue, message)) in items.iter().enumerate() {
        let target = confirm.then(|| ConfirmTarget {
            events: events.clone(),
            owner,
            token: ConfirmToken::Publish(i as u64),
        });
        let command = QueueCommand::Publish {
            message: Arc::clone(message),
            confirm: target,
        };
        match queue.send(command).await {
            Ok(()) => expected += usize::from(confirm),
            Err(_) => accepted[i] = gone_accepts,
        }
    }
    drop(events);
    for _ in 0..expected {
        match answers.recv().await {
            Some(ConnEvent::Confirm {
                token: ConfirmToken::Publish(i),
                ok,
                ..
            }) => accepted[i as usize] = ok,
            Some(_) => {}
            None => break,
        }
    }
    accepted
}

/// The reply of a peek or get.
fn message_list(entries: &[Entry], body_bytes_max: u32, remaining: u64) -> proto::MessageList {
    proto::MessageList {
        messages: entries
            .iter()
            .map(|e| message_info(e, body_bytes_max))
            .collect(),
        remaining,
    }
}

pub async fn publish(
    broker: &Broker,
    request: proto::PublishRequest,
) -> Result<proto::PublishReply, Status> {
    name_ok("exchange name", &request.exchange)?;
    name_ok("routing key", &request.routing_key)?;
    let vhost = broker
        .vhost(&request.vhost)
        .ok_or_else(|| Status::not_found(format!("no vhost '{}'", request.vhost)))?;
    let limit = broker.config.limits.message_bytes_max;
    if request.body.len() as u64 > limit {
        return Err(Status::invalid_argument(format!(
            "message body of {} bytes exceeds the limit of {limit} bytes",
            request.body.len()
        )));
    }
    let properties = properties_from_proto(&request.properties.unwrap_or_default());
    let message = Arc::new(Message::with_decoded(
        ShortStr::new(&request.exchange),
        ShortStr::new(&request.routing_key),
        properties.encode(),
        Bytes::from(request.body),
        &properties,
    ));
    let headers = || properties.headers.clone();
    let routed = vhost
        .route(&request.exchange, &request.routing_key, &headers)
        .ok_or_else(|| {
            Status::not_found(format!(
                "no exchange '{}' in vhost '{}'",
                request.exchange, request.vhost
            ))
        })?;
    GlobalCounters::add(&broker.totals.published, 1);
    let items: Vec<_> = routed.queues.iter().map(|q| (q, &message)).collect();
    let confirmed = enqueue(&items, request.wait_for_confirm, true)
        .await
        .into_iter()
        .all(|ok| ok);
    tracing::debug!(exchange = %request.exchange, queues = routed.queues.len(), "test message published from the admin plane");
    Ok(proto::PublishReply {
        routed_queues: routed.queues.iter().map(|q| q.name().to_string()).collect(),
        confirmed: request.wait_for_confirm && confirmed,
    })
}

pub async fn peek(
    broker: &Broker,
    request: proto::PeekRequest,
) -> Result<proto::MessageList, Status> {
    let q = queue(broker, &request.vhost, &request.queue)?;
    let count = (request.count as usize).min(LIST_MAX);
    let entries = q
        .ask(|reply| QueueCommand::Peek { count, reply })
        .await
        .map_err(|_| Status::not_found("the queue was deleted"))?
        .map_err(super::status::from_refusal)?;
    Ok(message_list(&entries, request.body_bytes_max, q.ready()))
}

pub async fn get(
    broker: &Broker,
    request: proto::GetRequest,
) -> Result<proto::MessageList, Status> {
    let q = queue(broker, &request.vhost, &request.queue)?;
    let owner = admin_channel();
    let settle = if request.requeue {
        SettleAction::Requeue
    } else {
        SettleAction::Ack
    };
    let count = (request.count as usize).min(LIST_MAX);
    let _guard = HeldGuard {
        queue: Arc::clone(&q),
        owner,
    };
    let (entries, remaining) = q
        .ask(|reply| QueueCommand::Take {
            owner,
            count,
            settle: Some(settle),
            reply,
        })
        .await
        .map_err(|_| Status::not_found("the queue was deleted"))?
        .map_err(super::status::from_refusal)?;
    Ok(message_list(&entries, request.body_bytes_max, remaining))
}

/// Moves ready messages from `source` to `destination`: each batch is taken as unacked, handed
/// to the destination, and acked at the source once the destination confirmed it (after fsync
/// for a persistent message in a durable queue); refused ones are requeued at the source.
pub async fn move_messages(
    broker: &Broker,
    request: proto::MoveMessagesRequest,
) -> Result<proto::MessageCount, Status> {
    let source = queue(broker, &request.vhost, &request.source)?;
    let destination = queue(broker, &request.vhost, &request.destination)?;
    if source.id == destination.id {
        return Err(Status::invalid_argument(
            "source and destination are the same queue",
        ));
    }
    let limit = if request.count == 0 {
        u64::MAX
    } else {
        request.count
    };
    let owner = admin_channel();
    let _guard = HeldGuard {
        queue: Arc::clone(&source),
        owner,
    };
    let mut moved = 0u64;
    while moved < limit {
        let want = (limit - moved).min(MOVE_BATCH as u64) as usize;
        let (entries, _) = source
            .ask(|reply| QueueCommand::Take {
                owner,
                count: want,
                settle: None,
                reply,
            })
            .await
            .map_err(|_| Status::not_found("the source queue was deleted"))?
            .map_err(super::status::from_refusal)?;
        if entries.is_empty() {
            break;
        }
        let items: Vec<_> = entries.iter().map(|e| (&destination, &e.message)).collect();
        let answers = enqueue(&items, true, false).await;
        let (accepted, refused): (Vec<_>, Vec<_>) =
            entries.iter().zip(answers).partition(|(_, ok)| *ok);
        let accepted: Vec<u64> = accepted.into_iter().map(|(e, _)| e.seq).collect();
        let refused: Vec<u64> = refused.into_iter().map(|(e, _)| e.seq).collect();
        moved += accepted.len() as u64;
        let settle = |seqs: Vec<u64>, action| QueueCommand::Settle {
            owner,
            seqs,
            action,
        };
        let _ = source.send(settle(accepted, SettleAction::Ack)).await;
        if !refused.is_empty() {
            let _ = source.send(settle(refused, SettleAction::Requeue)).await;
            return Err(Status::failed_precondition(format!(
                "queue '{}' refused messages after {moved} were moved",
                request.destination
            )));
        }
    }
    tracing::info!(source = %request.source, destination = %request.destination, moved, "messages moved from the admin plane");
    Ok(proto::MessageCount { messages: moved })
}
