//! A total-queue checker in the spirit of Jepsen's: publishers number their messages and
//! record which were confirmed; consumers record what they received and whether it was marked
//! redelivered. At the end every confirmed message must have been received (`lost` = 0),
//! nothing must have been received that was never published (`unexpected` = 0), and a message
//! received twice must carry `redelivered` on its repeats.
//!
//! Publishers and consumers against a cluster reconnect to the next node when their node dies,
//! and consumers consume again when the broker cancels them (`basic.cancel`).

use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Default)]
struct Records {
    published: BTreeSet<u64>,
    confirmed: BTreeSet<u64>,
    nacked: BTreeSet<u64>,
    received: HashMap<u64, u32>,
    /// Received again without `redelivered`.
    unmarked_repeats: BTreeSet<u64>,
    /// Each reception: (node index in the consumer's list, redelivered, delivery tag, when).
    history: HashMap<u64, Vec<(usize, bool, u64, String)>>,
    /// What the consumer did, with when.
    trail: Vec<String>,
}

/// The time of day (UTC) as the brokers' logs print it.
fn clock() -> String {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let day = since.as_secs() % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        day / 3600,
        day / 60 % 60,
        day % 60,
        since.subsec_millis()
    )
}

impl Records {
    fn note(&mut self, what: String) {
        self.trail.push(format!("{} {what}", clock()));
    }
}

/// What a run established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub published: usize,
    pub confirmed: usize,
    pub nacked: usize,
    pub delivered: usize,
    pub lost: Vec<u64>,
    pub unexpected: Vec<u64>,
    pub duplicated: usize,
    pub unmarked_repeats: Vec<u64>,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "published {} confirmed {} nacked {} delivered {} lost {} unexpected {} duplicated {} unmarked repeats {}",
            self.published,
            self.confirmed,
            self.nacked,
            self.delivered,
            self.lost.len(),
            self.unexpected.len(),
            self.duplicated,
            self.unmarked_repeats.len()
        )
    }
}

#[derive(Debug, Clone, Default)]
pub struct Oracle(Arc<Mutex<Records>>);

impl Oracle {
    fn records(&self) -> std::sync::MutexGuard<'_, Records> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn confirmed_count(&self) -> usize {
        self.records().confirmed.len()
    }

    /// How many ids in `range` were confirmed.
    pub fn confirmed_in(&self, range: std::ops::Range<u64>) -> usize {
        self.records().confirmed.range(range).count()
    }

    /// Whether every confirmed message has been received.
    pub fn all_confirmed_received(&self) -> bool {
        let r = self.records();
        r.confirmed.iter().all(|id| r.received.contains_key(id))
    }

    /// What the consumer did, and how the first repeats without `redelivered` were received
    /// (for a failure's message).
    pub fn details(&self) -> String {
        let r = self.records();
        let mut out = format!("consumer trail:\n  {}\n", r.trail.join("\n  "));
        for id in r.unmarked_repeats.iter().take(5) {
            out.push_str(&format!(
                "id {id} received (node index, redelivered, delivery tag, at): {:?}\n",
                r.history.get(id)
            ));
        }
        out
    }

    pub fn report(&self) -> Report {
        let r = self.records();
        Report {
            published: r.published.len(),
            confirmed: r.confirmed.len(),
            nacked: r.nacked.len(),
            delivered: r.received.len(),
            lost: r
                .confirmed
                .iter()
                .filter(|id| !r.received.contains_key(id))
                .copied()
                .collect(),
            unexpected: r
                .received
                .keys()
                .filter(|id| !r.published.contains(id))
                .copied()
                .collect(),
            duplicated: r.received.values().map(|n| (*n as usize) - 1).sum(),
            unmarked_repeats: r.unmarked_repeats.iter().copied().collect(),
        }
    }
}

fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2)
}

async fn connect(url: &str) -> Option<Connection> {
    tokio::time::timeout(
        Duration::from_secs(5),
        Connection::connect(url, ConnectionProperties::default()),
    )
    .await
    .ok()?
    .ok()
}

/// How long the checker waits for one AMQP method's reply before it gives up on the node
/// (a consume may wait through an election; a dead connection never answers).
const REPLY_WITHIN: Duration = Duration::from_secs(10);

/// A lapin call's result within [`REPLY_WITHIN`].
async fn bounded<T>(call: impl std::future::Future<Output = lapin::Result<T>>) -> Option<T> {
    tokio::time::timeout(REPLY_WITHIN, call).await.ok()?.ok()
}

/// Closes a connection, not waiting for long: lapin may wait for ever for the close-ok of a
/// connection whose broker was killed.
async fn close(connection: Connection) {
    let _ =
        tokio::time::timeout(Duration::from_secs(1), connection.close(200, "done".into())).await;
}

/// Publishes ids `from..to` to `queue` with confirms (a window of `window` in flight),
/// through `urls[0]` first and the next on any failure, until done or `stop`.
pub async fn publish(
    oracle: Oracle,
    urls: Vec<String>,
    queue: String,
    ids: std::ops::Range<u64>,
    window: usize,
    stop: Arc<AtomicBool>,
) {
    let mut next = ids.start;
    let mut at = 0usize;
    while next < ids.end && !stop.load(Ordering::Relaxed) {
        let url = &urls[at % urls.len()];
        at += 1;
        let Some(connection) = connect(url).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Some(channel) = bounded(connection.create_channel()).await else {
            continue;
        };
        if bounded(channel.confirm_select(ConfirmSelectOptions::default()))
            .await
            .is_none()
        {
            continue;
        }
        let mut in_flight = std::collections::VecDeque::new();
        let mut failed = false;
        while next < ids.end && !stop.load(Ordering::Relaxed) && !failed {
            let id = next;
            next += 1;
            oracle.records().published.insert(id);
            match bounded(channel.basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                id.to_string().as_bytes(),
                persistent(),
            ))
            .await
            {
                Some(confirm) => in_flight.push_back((id, confirm)),
                None => failed = true,
            }
            while in_flight.len() >= window || (failed && !in_flight.is_empty()) {
                let (id, confirm) = in_flight.pop_front().expect("non-empty");
                // An answer that never comes leaves the outcome unknown (not confirmed).
                match bounded(confirm).await {
                    Some(c) if c.is_ack() => {
                        oracle.records().confirmed.insert(id);
                    }
                    Some(_) => {
                        oracle.records().nacked.insert(id);
                    }
                    None => failed = true,
                }
            }
        }
        for (id, confirm) in in_flight {
            match bounded(confirm).await {
                Some(c) if c.is_ack() => {
                    oracle.records().confirmed.insert(id);
                }
                Some(_) => {
                    oracle.records().nacked.insert(id);
                }
                None => {}
            }
        }
        close(connection).await;
    }
}

/// Consumes `queue` (prefetch 200, each message acked) through `urls[0]` first and the next
/// whenever the connection fails or the broker cancels the consumer, until `stop`.
pub async fn consume(oracle: Oracle, urls: Vec<String>, queue: String, stop: Arc<AtomicBool>) {
    let mut at = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let node = at % urls.len();
        let url = &urls[node];
        let Some(connection) = connect(url).await else {
            oracle
                .records()
                .note(format!("node {node}: cannot connect"));
            at += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Some(channel) = bounded(connection.create_channel()).await else {
            oracle.records().note(format!("node {node}: no channel"));
            at += 1;
            continue;
        };
        let _ = bounded(channel.basic_qos(200, BasicQosOptions::default())).await;
        let Some(mut consumer) = bounded(channel.basic_consume(
            queue.as_str().into(),
            "oracle".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ))
        .await
        else {
            oracle
                .records()
                .note(format!("node {node}: consume refused or unanswered"));
            at += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        oracle.records().note(format!("node {node}: consuming"));
        loop {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let next = tokio::time::timeout(Duration::from_millis(200), consumer.next()).await;
            let delivery = match next {
                // lapin does not always end a consumer's stream when its connection dies (a
                // SIGKILLed broker): ask the connection itself.
                Err(_) if !connection.status().connected() || !channel.status().connected() => {
                    oracle
                        .records()
                        .note(format!("node {node}: connection lost"));
                    break;
                }
                Err(_) => continue,
                Ok(Some(Ok(d))) => d,
                // Cancelled by the broker, or the connection failed: consume again.
                Ok(other) => {
                    let why = match other {
                        None => "cancelled".to_string(),
                        Some(Err(e)) => e.to_string(),
                        Some(Ok(_)) => unreachable!("matched above"),
                    };
                    oracle
                        .records()
                        .note(format!("node {node}: consumer ended: {why}"));
                    break;
                }
            };
            if let Some(id) = std::str::from_utf8(&delivery.data)
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
            {
                let mut r = oracle.records();
                let at = clock();
                r.history.entry(id).or_default().push((
                    node,
                    delivery.redelivered,
                    delivery.delivery_tag,
                    at,
                ));
                let seen = r.received.entry(id).or_insert(0);
                *seen += 1;
                if *seen > 1 && !delivery.redelivered {
                    r.unmarked_repeats.insert(id);
                }
            }
            // lapin may never finish sending an ack on a connection whose broker was killed.
            if bounded(delivery.acker.ack(BasicAckOptions::default()))
                .await
                .is_none()
            {
                oracle.records().note(format!("node {node}: ack failed"));
                break;
            }
        }
        close(connection).await;
    }
}
