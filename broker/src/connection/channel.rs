//! A channel's state: the publish being assembled, publisher confirms, the transaction buffer,
//! delivery tags of unacked deliveries, and consumers.

use crate::amqp::method::BasicPublish;
use crate::amqp::properties::ContentHeader;
use crate::amqp::ShortStr;
use crate::delivery::{ChannelCredit, ChannelRef, Delivery};
use crate::message::Message;
use crate::queue::{QueueHandle, SettleAction};
use crate::FastMap;
use bytes::{Bytes, BytesMut};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Assembling a publish: method, then content header, then body frames.
#[derive(Debug, Default)]
pub enum PublishState {
    #[default]
    Idle,
    AwaitingHeader(BasicPublish),
    AwaitingBody {
        method: BasicPublish,
        header: ContentHeader,
        body: BodyParts,
    },
}

/// Body frames received so far: one frame is kept as is (no copy), more are joined.
#[derive(Debug, Default)]
pub enum BodyParts {
    #[default]
    Empty,
    One(Bytes),
    Many(BytesMut),
}

impl BodyParts {
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn len(&self) -> usize {
        match self {
            BodyParts::Empty => 0,
            BodyParts::One(b) => b.len(),
            BodyParts::Many(b) => b.len(),
        }
    }

    pub fn push(&mut self, chunk: Bytes) {
        *self = match std::mem::take(self) {
            BodyParts::Empty => BodyParts::One(chunk),
            BodyParts::One(first) => {
                let mut joined = BytesMut::with_capacity(first.len() + chunk.len());
                joined.extend_from_slice(&first);
                joined.extend_from_slice(&chunk);
                BodyParts::Many(joined)
            }
            BodyParts::Many(mut joined) => {
                joined.extend_from_slice(&chunk);
                BodyParts::Many(joined)
            }
        }
    }

    pub fn into_bytes(self) -> Bytes {
        match self {
            BodyParts::Empty => Bytes::new(),
            BodyParts::One(b) => b,
            BodyParts::Many(b) => b.freeze(),
        }
    }
}

/// Publisher confirms (`confirm.select`): which sequence numbers await their queues, and which
/// are decided but not yet told to the client.
#[derive(Debug, Default)]
pub struct Confirms {
    pub next_seq: u64,
    /// seq → (queues still to answer, whether any refused).
    pending: BTreeMap<u64, (u32, bool)>,
    /// seq → ack (true) or nack (false), decided but not sent.
    decided: BTreeMap<u64, bool>,
}

impl Confirms {
    pub fn new() -> Confirms {
        Confirms {
            next_seq: 1,
            ..Confirms::default()
        }
    }

    /// Assigns the next sequence number to a publish routed to `queues` queues.
    pub fn publish(&mut self, queues: u32) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        if queues == 0 {
            self.decided.insert(seq, true);
        } else {
            self.pending.insert(seq, (queues, false));
        }
        seq
    }

    /// Marks a publish as refused before it reached any queue.
    pub fn refuse(&mut self, seq: u64) {
        self.pending.remove(&seq);
        self.decided.insert(seq, false);
    }

    pub fn answer(&mut self, seq: u64, ok: bool) {
        let Some((remaining, refused)) = self.pending.get_mut(&seq) else {
            return;
        };
        *remaining -= 1;
        *refused |= !ok;
        if *remaining == 0 {
            let refused = *refused;
            self.pending.remove(&seq);
            self.decided.insert(seq, !refused);
        }
    }

    /// The acks and nacks to send now, coalesced: `(delivery_tag, multiple, ack)`.
    pub fn drain(&mut self, out: &mut Vec<(u64, bool, bool)>) {
        if self.decided.is_empty() {
            return;
        }
        let low_pending = self.pending.keys().next().copied().unwrap_or(self.next_seq);
        let below: Vec<(u64, bool)> = self
            .decided
            .range(..low_pending)
            .map(|(s, a)| (*s, *a))
            .collect();
        if !below.is_empty() {
            if below.iter().all(|(_, ack)| *ack) {
                // Everything below the lowest pending seq is decided: one multiple ack.
                let last = below.last().expect("not empty").0;
                if below.len() == 1 {
                    out.push((last, false, true));
                } else {
                    out.push((last, true, true));
                }
            } else {
                out.extend(below.iter().map(|(s, ack)| (*s, false, *ack)));
            }
            for (s, _) in &below {
                self.decided.remove(s);
            }
        }
        out.extend(self.decided.iter().map(|(s, ack)| (*s, false, *ack)));
        self.decided.clear();
    }

    pub fn is_idle(&self) -> bool {
        self.pending.is_empty() && self.decided.is_empty()
    }
}

/// A publish held by an open transaction.
#[derive(Debug)]
pub struct TxPublish {
    pub message: Arc<Message>,
    pub mandatory: bool,
}

#[derive(Debug, Default)]
pub struct Transaction {
    pub publishes: Vec<TxPublish>,
    /// Settles held until commit: the deliveries are out of `Channel::unacked` (so a tag cannot
    /// be settled twice) and go back there on rollback.
    pub settles: Vec<(Vec<(u64, Unacked)>, SettleAction)>,
    /// A commit waiting for its publishes' queues: (commit id, answers outstanding, refused).
    pub committing: Option<(u64, u32, bool)>,
    pub commits: u64,
}

/// A delivery the client has not settled yet.
#[derive(Debug)]
pub struct Unacked {
    pub queue: Arc<QueueHandle>,
    pub seq: u64,
    /// Consumer deliveries count against the channel's prefetch; `basic.get` ones do not.
    pub from_consumer: bool,
}

#[derive(Debug)]
pub struct ConsumerEntry {
    pub queue: Arc<QueueHandle>,
    pub no_ack: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Normal,
    Confirm,
    Transactional,
}

#[derive(Debug)]
pub struct Channel {
    pub owner: ChannelRef,
    /// We sent `channel.close` and wait for `close-ok`; everything else is dropped.
    pub closing: bool,
    pub publish: PublishState,
    pub mode: Mode,
    pub confirms: Confirms,
    pub tx: Transaction,
    pub next_delivery_tag: u64,
    pub unacked: BTreeMap<u64, Unacked>,
    pub consumers: FastMap<ShortStr, ConsumerEntry>,
    /// The consumer tag of this channel's direct reply-to consumer.
    pub reply_to_consumer: Option<ShortStr>,
    /// `basic.qos` with `global = false`: the prefetch of consumers created from now on.
    pub consumer_prefetch: u32,
    pub credit: Arc<ChannelCredit>,
}

impl Channel {
    /// What the admin plane shows of this channel.
    pub fn view(&self, number: u16) -> crate::delivery::ChannelView {
        crate::delivery::ChannelView {
            number,
            mode: match self.mode {
                Mode::Normal => "normal",
                Mode::Confirm => "confirm",
                Mode::Transactional => "transactional",
            },
            unacked: self.unacked.len() as u64,
            prefetch: self.credit.limit(),
            consumers: self.consumers.len() as u64,
        }
    }

    pub fn new(owner: ChannelRef) -> Channel {
        Channel {
            owner,
            closing: false,
            publish: PublishState::Idle,
            mode: Mode::Normal,
            confirms: Confirms::new(),
            tx: Transaction::default(),
            next_delivery_tag: 1,
            unacked: BTreeMap::new(),
            consumers: FastMap::default(),
            reply_to_consumer: None,
            consumer_prefetch: 0,
            credit: Arc::new(ChannelCredit::default()),
        }
    }

    /// The next delivery tag of this channel.
    pub fn next_tag(&mut self) -> u64 {
        let tag = self.next_delivery_tag;
        self.next_delivery_tag += 1;
        tag
    }

    /// Assigns a delivery its tag; one the client must settle is remembered under it.
    pub fn track_delivery(&mut self, delivery: &Delivery, from_consumer: bool) -> u64 {
        let tag = self.next_tag();
        if delivery.ack_required {
            self.unacked.insert(
                tag,
                Unacked {
                    queue: Arc::clone(&delivery.queue),
                    seq: delivery.seq,
                    from_consumer,
                },
            );
        }
        tag
    }

    /// Takes the unacked deliveries a settle names: `tag` alone, or every one up to `tag` when
    /// `multiple` (`tag = 0` with `multiple` means all). `None` if the tag is unknown.
    pub fn take_unacked(&mut self, tag: u64, multiple: bool) -> Option<Vec<(u64, Unacked)>> {
        if multiple {
            let upto = if tag == 0 { u64::MAX } else { tag };
            if tag != 0
                && !self.unacked.contains_key(&tag)
                && self.unacked.range(..=upto).next().is_none()
            {
                return None;
            }
            let rest = self.unacked.split_off(&upto.saturating_add(1));
            let taken = std::mem::replace(&mut self.unacked, rest);
            Some(taken.into_iter().collect())
        } else {
            self.unacked.remove(&tag).map(|u| vec![(tag, u)])
        }
    }

    /// Every queue this channel has consumers on or unacked deliveries from.
    pub fn queues_involved(&self) -> Vec<Arc<QueueHandle>> {
        let mut queues: Vec<Arc<QueueHandle>> = Vec::new();
        let held = self
            .tx
            .settles
            .iter()
            .flat_map(|(taken, _)| taken.iter().map(|(_, u)| &u.queue));
        let all = self
            .consumers
            .values()
            .map(|c| &c.queue)
            .chain(self.unacked.values().map(|u| &u.queue))
            .chain(held);
        for q in all {
            if !queues.iter().any(|x| x.id == q.id) {
                queues.push(Arc::clone(q));
            }
        }
        queues
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confirms_coalesce_in_order() {
        let mut c = Confirms::new();
        let a = c.publish(1);
        let b = c.publish(2);
        let unroutable = c.publish(0);
        let d = c.publish(1);
        let mut out = Vec::new();
        c.drain(&mut out);
        // Only the unroutable one is decided, above a pending one: sent alone.
        assert_eq!(out, vec![(unroutable, false, true)]);
        out.clear();
        c.answer(b, true);
        c.answer(b, true);
        c.answer(a, true);
        c.drain(&mut out);
        // a and b decided, d pending: one multiple ack up to b.
        assert_eq!(out, vec![(b, true, true)]);
        out.clear();
        c.answer(d, false);
        c.drain(&mut out);
        assert_eq!(out, vec![(d, false, false)]);
        assert!(c.is_idle());
    }

    #[test]
    fn multiple_settle_takes_everything_up_to_the_tag() {
        let mut ch = Channel::new(ChannelRef {
            conn: crate::delivery::ConnId(1),
            channel: 1,
            epoch: 0,
        });
        assert!(ch.take_unacked(5, false).is_none());
        assert!(ch.take_unacked(5, true).is_none());
    }
}
