//! `warren-perf`: a load generator in the spirit of RabbitMQ's PerfTest.
//!
//! - [`client`]: a lean AMQP client on Warren's codec.
//! - [`body`]: the message body (producer, sequence number, send time, padding).
//!
//! Producers publish (persistent by default) with a window of unconfirmed publishes; consumers
//! ack every message or every K-th with `multiple`. Every body carries its producer and sequence
//! number, so the run ends with a loss and duplicate count; it also carries its send time, so
//! consumers measure end-to-end latency (same process, same clock). Confirm latency is measured
//! per publish. Figures: rates, latency percentiles (HdrHistogram), the broker's CPU time per
//! message (from `/proc/PID/stat` when `--broker-pid` is given), as JSON.

pub mod body;
pub mod client;

use anyhow::Context;
use bytes::Bytes;
use client::{Reader, Target};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::VecDeque;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use warren_broker::amqp::frame::Frame;
use warren_broker::amqp::method::{self as m, Method};
use warren_broker::amqp::{BasicProperties, FieldTable, FieldValue};

#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct Options {
    /// Broker address.
    #[arg(long, default_value = "127.0.0.1:5672")]
    pub addr: String,
    #[arg(long, default_value = "guest")]
    pub user: String,
    #[arg(long, default_value = "guest")]
    #[serde(skip)]
    pub password: String,
    #[arg(long, default_value = "/")]
    pub vhost: String,
    #[arg(long, default_value_t = 1)]
    pub producers: u16,
    #[arg(long, default_value_t = 1)]
    pub consumers: u16,
    /// Message body size in octets (at least 16).
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// Publish with delivery_mode 1 instead of 2.
    #[arg(long)]
    pub transient: bool,
    /// Unconfirmed publishes each producer keeps in flight (publisher confirms); 0 disables
    /// confirms.
    #[arg(long, default_value_t = 100)]
    pub confirm: u64,
    /// Consumer prefetch (basic.qos); 0 = unlimited.
    #[arg(long, default_value_t = 1000)]
    pub prefetch: u16,
    /// Ack every K-th message with multiple=true (1 = every message individually).
    #[arg(long, default_value_t = 1)]
    pub multi_ack: u64,
    /// Consume with no_ack.
    #[arg(long)]
    pub auto_ack: bool,
    #[arg(long, default_value = "perf")]
    pub queue: String,
    /// classic or quorum.
    #[arg(long, default_value = "classic")]
    pub queue_type: String,
    /// Extra queue arguments, `name=value` (integers are sent as integers). Repeatable.
    #[arg(long = "queue-arg")]
    pub queue_args: Vec<String>,
    /// Exchange to publish to ("" = the default exchange, routing to the queue).
    #[arg(long, default_value = "")]
    pub exchange: String,
    /// Run for this many seconds (unless --messages is given).
    #[arg(long, default_value_t = 10.0)]
    pub duration_s: f64,
    /// Messages per producer; overrides --duration-s.
    #[arg(long)]
    pub messages: Option<u64>,
    /// Publish rate per producer, messages/s (0 = as fast as possible).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Publish everything first, then start the consumers and drain the backlog.
    #[arg(long)]
    pub drain: bool,
    /// PID of the broker process, to report its CPU time per message.
    #[arg(long)]
    pub broker_pid: Option<u32>,
    /// A label for the report.
    #[arg(long, default_value = "")]
    pub label: String,
}

#[derive(Debug, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Latency {
        Latency {
            count: h.len(),
            p50_us: h.value_at_quantile(0.5),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub options: Options,
    pub published: u64,
    pub confirmed: u64,
    pub nacked: u64,
    pub received: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub redelivered: u64,
    pub publish_seconds: f64,
    pub publish_rate: f64,
    pub consume_seconds: f64,
    pub consume_rate: f64,
    pub confirm_latency: Latency,
    pub end_to_end_latency: Latency,
    pub broker_cpu_seconds: Option<f64>,
    pub broker_cpu_us_per_message: Option<f64>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// Shared counters, read by the progress line and the end of the run.
#[derive(Default)]
struct Counters {
    published: AtomicU64,
    confirmed: AtomicU64,
    nacked: AtomicU64,
    received: AtomicU64,
    publishers_done: AtomicU64,
}

/// Per producer: which sequence numbers were received (a bitset), to count losses and
/// duplicates at the end.
struct Seen {
    bits: Vec<Vec<u64>>,
    duplicates: u64,
    redelivered: u64,
}

impl Seen {
    fn mark(&mut self, producer: u16, seq: u64, redelivered: bool) {
        let bits = &mut self.bits[producer as usize];
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if bits.len() <= word {
            bits.resize(word + 1, 0);
        }
        if bits[word] & (1 << bit) != 0 {
            self.duplicates += 1;
        }
        bits[word] |= 1 << bit;
        if redelivered {
            self.redelivered += 1;
        }
    }

    fn has(&self, producer: u16, seq: u64) -> bool {
        self.bits[producer as usize]
            .get((seq / 64) as usize)
            .is_some_and(|w| w & (1 << (seq % 64)) != 0)
    }
}

fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // Linux reports clock ticks; USER_HZ is 100 on every mainstream configuration.
    Some((utime + stime) / 100.0)
}

fn queue_arguments(options: &Options) -> anyhow::Result<FieldTable> {
    let mut table = FieldTable::new();
    if options.queue_type != "classic" {
        table.insert("x-queue-type", FieldValue::string(&options.queue_type));
    }
    for arg in &options.queue_args {
        let (name, value) = arg
            .split_once('=')
            .with_context(|| format!("--queue-arg {arg}: expected name=value"))?;
        let value = match value.parse::<i64>() {
            Ok(i) => FieldValue::I64(i),
            Err(_) => FieldValue::string(value),
        };
        table.insert(name, value);
    }
    Ok(table)
}

async fn setup(target: &Target, options: &Options) -> anyhow::Result<()> {
    let (mut reader, mut writer) = client::connect(target).await?;
    writer.method(m::QueueDeclare {
        queue: options.queue.as_str().into(),
        durable: true,
        arguments: queue_arguments(options)?,
        ..Default::default()
    });
    writer.flush().await?;
    reader
        .expect("queue.declare-ok", |m| {
            matches!(m, Method::QueueDeclareOk(_))
        })
        .await?;
    writer.method(m::QueuePurge {
        queue: options.queue.as_str().into(),
        ..Default::default()
    });
    if !options.exchange.is_empty() {
        writer.method(m::QueueBind {
            queue: options.queue.as_str().into(),
            exchange: options.exchange.as_str().into(),
            routing_key: options.queue.as_str().into(),
            ..Default::default()
        });
    }
    writer.flush().await?;
    reader
        .expect("queue.purge-ok", |m| matches!(m, Method::QueuePurgeOk(_)))
        .await?;
    if !options.exchange.is_empty() {
        reader
            .expect("queue.bind-ok", |m| matches!(m, Method::QueueBindOk(_)))
            .await?;
    }
    Ok(())
}

/// Publish times of unconfirmed messages, by delivery tag.
#[derive(Default)]
struct InFlight {
    sent: VecDeque<(u64, u64)>,
}

async fn confirm_reader(
    mut reader: Reader,
    inflight: Arc<Mutex<InFlight>>,
    counters: Arc<Counters>,
    latency: Arc<Mutex<Histogram<u64>>>,
    room: Arc<tokio::sync::Notify>,
    started: Instant,
) -> anyhow::Result<()> {
    loop {
        let frame = reader.next().await?;
        let (tag, multiple, ok) = match frame {
            Frame::Method(_, Method::BasicAck(a)) => (a.delivery_tag, a.multiple, true),
            Frame::Method(_, Method::BasicNack(n)) => (n.delivery_tag, n.multiple, false),
            _ => continue,
        };
        let now = started.elapsed().as_micros() as u64;
        let mut done = Vec::new();
        {
            let mut inflight = inflight.lock().expect("not poisoned");
            if multiple {
                while inflight.sent.front().is_some_and(|(t, _)| *t <= tag) {
                    done.push(inflight.sent.pop_front().expect("front exists").1);
                }
            } else if let Some(at) = inflight.sent.iter().position(|(t, _)| *t == tag) {
                done.push(inflight.sent.remove(at).expect("position exists").1);
            }
        }
        let mut h = latency.lock().expect("not poisoned");
        for sent in &done {
            let _ = h.record(now.saturating_sub(*sent).max(1));
        }
        drop(h);
        let counter = if ok {
            &counters.confirmed
        } else {
            &counters.nacked
        };
        counter.fetch_add(done.len() as u64, Ordering::Relaxed);
        room.notify_one();
    }
}

#[allow(clippy::too_many_arguments)]
async fn producer(
    id: u16,
    target: Target,
    options: Arc<Options>,
    counters: Arc<Counters>,
    latency: Arc<Mutex<Histogram<u64>>>,
    stop: Arc<AtomicBool>,
    started: Instant,
) -> anyhow::Result<u64> {
    let (mut reader, mut writer) = client::connect(&target).await?;
    let confirms = options.confirm > 0;
    if confirms {
        writer.method(m::ConfirmSelect::default());
        writer.flush().await?;
        reader
            .expect("confirm.select-ok", |m| {
                matches!(m, Method::ConfirmSelectOk(_))
            })
            .await?;
    }
    let inflight = Arc::new(Mutex::new(InFlight::default()));
    let room = Arc::new(tokio::sync::Notify::new());
    let acks = tokio::spawn(confirm_reader(
        reader,
        Arc::clone(&inflight),
        Arc::clone(&counters),
        latency,
        Arc::clone(&room),
        started,
    ));
    let properties: Bytes = BasicProperties {
        delivery_mode: Some(if options.transient { 1 } else { 2 }),
        ..Default::default()
    }
    .encode();
    // The default exchange routes by queue name; a named exchange has the queue bound with it.
    let routing_key = options.queue.as_str();
    let publish: Method = m::BasicPublish {
        exchange: options.exchange.as_str().into(),
        routing_key: routing_key.into(),
        ..Default::default()
    }
    .into();
    // Bodies differ only in their header (the rest is zeros): it is written per message, and
    // the rest is one shared buffer, sent from where it lies rather than copied per message
    // (at 64 KiB that copy was a fifth of the load generator's CPU, on cores the broker needs).
    let mut head = [0u8; body::HEADER_BYTES];
    let tail = Bytes::from(vec![0u8; options.size.saturating_sub(body::HEADER_BYTES)]);
    let limit = options.messages.unwrap_or(u64::MAX);
    let mut seq = 0u64;
    let interval = (options.rate > 0).then(|| Duration::from_secs_f64(1.0 / options.rate as f64));
    let mut next_at = tokio::time::Instant::now();
    while seq < limit && !stop.load(Ordering::Relaxed) {
        if confirms {
            loop {
                let waiting = inflight.lock().expect("not poisoned").sent.len() as u64;
                if waiting < options.confirm {
                    break;
                }
                room.notified().await;
            }
        }
        if let Some(interval) = interval {
            tokio::time::sleep_until(next_at).await;
            next_at += interval;
        }
        // A batch per write: up to the window's room (or 64 without confirms).
        let room_now = if confirms {
            options.confirm - inflight.lock().expect("not poisoned").sent.len() as u64
        } else {
            64
        };
        let batch = room_now
            .min(limit - seq)
            .min(if interval.is_some() { 1 } else { 256 })
            .max(1);
        for _ in 0..batch {
            let now = started.elapsed().as_micros() as u64;
            body::write(&mut head, id, seq, now);
            if confirms {
                inflight
                    .lock()
                    .expect("not poisoned")
                    .sent
                    .push_back((seq + 1, now));
            }
            writer
                .out
                .put_content_parts(1, &publish, &properties, &head, &tail, client::FRAME_MAX);
            seq += 1;
        }
        writer.flush().await?;
        counters.published.fetch_add(batch, Ordering::Relaxed);
    }
    if confirms {
        while !inflight.lock().expect("not poisoned").sent.is_empty() {
            if acks.is_finished() {
                break;
            }
            tokio::select! {
                _ = room.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    }
    acks.abort();
    counters.publishers_done.fetch_add(1, Ordering::Relaxed);
    Ok(seq)
}

async fn consumer(
    target: Target,
    options: Arc<Options>,
    counters: Arc<Counters>,
    latency: Arc<Mutex<Histogram<u64>>>,
    seen: Arc<Mutex<Seen>>,
    expected_tx: Arc<tokio::sync::watch::Sender<u64>>,
    started: Instant,
) -> anyhow::Result<()> {
    // The target is set once the producers finish; whichever consumer receives the last
    // message touches the watch so the others wake up too (a watch remembers the change, so a
    // consumer about to wait cannot miss it).
    let mut expected = expected_tx.subscribe();
    let (mut reader, mut writer) = client::connect(&target).await?;
    writer.method(m::BasicQos {
        prefetch_count: options.prefetch,
        ..Default::default()
    });
    writer.method(m::BasicConsume {
        queue: options.queue.as_str().into(),
        no_ack: options.auto_ack,
        ..Default::default()
    });
    writer.flush().await?;
    let mut unacked = 0u64;
    let mut pending_deliver: Option<(u64, bool)> = None;
    let mut local = histogram();
    loop {
        if counters.received.load(Ordering::Relaxed) >= *expected.borrow_and_update() {
            break;
        }
        let frame = tokio::select! {
            frame = reader.next() => frame?,
            // The producers finished: the target is known now.
            _ = expected.changed() => continue,
        };
        match frame {
            Frame::Method(_, Method::BasicDeliver(d)) => {
                pending_deliver = Some((d.delivery_tag, d.redelivered));
            }
            Frame::Body(_, chunk) => {
                let Some((tag, redelivered)) = pending_deliver else {
                    continue;
                };

                // Bodies up to frame_max arrive in one frame; the header is at the start.
                if let Some((producer, seq, sent)) = body::read(&chunk) {
                    pending_deliver = None;
                    let now = started.elapsed().as_micros() as u64;
                    let _ = local.record(now.saturating_sub(sent).max(1));
                    seen.lock()
                        .expect("not poisoned")
                        .mark(producer, seq, redelivered);
                    let received = counters.received.fetch_add(1, Ordering::Relaxed) + 1;
                    if received >= *expected_tx.borrow() {
                        expected_tx.send_modify(|_| {});
                    }
                    if !options.auto_ack {
                        unacked += 1;
                        if unacked >= options.multi_ack {
                            writer.method(m::BasicAck {
                                delivery_tag: tag,
                                multiple: options.multi_ack > 1,
                            });
                            unacked = 0;
                        }
                    }
                }
            }
            _ => {}
        }
        // Acks go out once every frame already received is handled: one write per read.
        if !reader.has_buffered_frame() {
            writer.flush().await?;
        }
    }
    writer.flush().await?;
    latency.lock().expect("not poisoned").add(&local).ok();
    Ok(())
}

/// The options' defaults, as `warren-perf` with no flags.
pub fn default_options() -> Options {
    #[derive(clap::Parser)]
    struct Defaults {
        #[command(flatten)]
        options: Options,
    }
    <Defaults as clap::Parser>::parse_from(["warren-perf"]).options
}

/// Runs one scenario and returns its report.
pub async fn run(options: Options) -> anyhow::Result<Report> {
    let target = Target {
        addr: options.addr.clone(),
        user: options.user.clone(),
        password: options.password.clone(),
        vhost: options.vhost.clone(),
    };
    anyhow::ensure!(
        options.size >= body::HEADER_BYTES,
        "--size must be at least 16"
    );
    anyhow::ensure!(
        !options.drain || options.messages.is_some(),
        "--drain needs --messages"
    );
    setup(&target, &options).await?;
    let options = Arc::new(options);
    let counters = Arc::new(Counters::default());
    let confirm_latency = Arc::new(Mutex::new(histogram()));
    let e2e_latency = Arc::new(Mutex::new(histogram()));
    let seen = Arc::new(Mutex::new(Seen {
        bits: vec![Vec::new(); options.producers as usize],
        duplicates: 0,
        redelivered: 0,
    }));
    let stop = Arc::new(AtomicBool::new(false));
    let expected_tx = Arc::new(tokio::sync::watch::channel(u64::MAX).0);
    let cpu_before = options.broker_pid.and_then(cpu_seconds);
    let started = Instant::now();

    let start_consumers = |counters: &Arc<Counters>| {
        (0..options.consumers)
            .map(|_| {
                tokio::spawn(consumer(
                    target.clone(),
                    Arc::clone(&options),
                    Arc::clone(counters),
                    Arc::clone(&e2e_latency),
                    Arc::clone(&seen),
                    Arc::clone(&expected_tx),
                    started,
                ))
            })
            .collect::<Vec<_>>()
    };
    let mut consumers = if options.drain {
        Vec::new()
    } else {
        start_consumers(&counters)
    };
    let producers: Vec<_> = (0..options.producers)
        .map(|id| {
            tokio::spawn(producer(
                id,
                target.clone(),
                Arc::clone(&options),
                Arc::clone(&counters),
                Arc::clone(&confirm_latency),
                Arc::clone(&stop),
                started,
            ))
        })
        .collect();
    let progress = tokio::spawn(progress_line(Arc::clone(&counters), started));
    if options.messages.is_none() {
        let stop = Arc::clone(&stop);
        let duration = Duration::from_secs_f64(options.duration_s);
        tokio::spawn(async move {
            tokio::time::sleep(duration).await;
            stop.store(true, Ordering::Relaxed);
        });
    }
    let mut published = 0;
    let mut published_each = Vec::new();
    for p in producers {
        let sent = p.await??;
        published_each.push(sent);
        published += sent;
    }
    let publish_seconds = started.elapsed().as_secs_f64();
    // Consumers stop once they have everything that was published and not refused.
    let nacked = counters.nacked.load(Ordering::Relaxed);
    expected_tx.send_replace(published - nacked);
    let consume_started = Instant::now();
    if options.drain {
        consumers = start_consumers(&counters);
    }
    let drain_timeout = Duration::from_secs(60);
    for c in consumers {
        match tokio::time::timeout(drain_timeout, c).await {
            Ok(result) => result??,
            Err(_) => eprintln!("consumers did not receive everything within {drain_timeout:?}"),
        }
    }
    progress.abort();
    let consume_seconds = if options.drain {
        consume_started.elapsed().as_secs_f64()
    } else {
        started.elapsed().as_secs_f64()
    };
    let cpu = match (cpu_before, options.broker_pid.and_then(cpu_seconds)) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let seen = seen.lock().expect("not poisoned");
    let confirmed = counters.confirmed.load(Ordering::Relaxed);
    let received = counters.received.load(Ordering::Relaxed);
    // Every publish of every producer that was not nacked must have been received.
    let mut lost = 0u64;
    for (producer, sent) in published_each.iter().enumerate() {
        let producer = producer as u16;
        for seq in 0..*sent {
            if !seen.has(producer, seq) {
                lost += 1;
            }
        }
    }
    let lost = lost.saturating_sub(nacked);
    let confirm_latency = Latency::of(&confirm_latency.lock().expect("not poisoned"));
    let end_to_end_latency = Latency::of(&e2e_latency.lock().expect("not poisoned"));
    Ok(Report {
        published,
        confirmed,
        nacked,
        received,
        lost,
        duplicates: seen.duplicates,
        redelivered: seen.redelivered,
        publish_seconds,
        publish_rate: published as f64 / publish_seconds,
        consume_seconds,
        consume_rate: received as f64 / consume_seconds,
        confirm_latency,
        end_to_end_latency,
        broker_cpu_seconds: cpu,
        broker_cpu_us_per_message: cpu.map(|c| c * 1e6 / published.max(1) as f64),
        options: Arc::try_unwrap(options).unwrap_or_else(|o| (*o).clone()),
    })
}

async fn progress_line(counters: Arc<Counters>, started: Instant) {
    if !std::io::stderr().is_terminal() {
        return;
    }
    let mut last = (0u64, 0u64, 0u64);
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let now = (
            counters.published.load(Ordering::Relaxed),
            counters.confirmed.load(Ordering::Relaxed),
            counters.received.load(Ordering::Relaxed),
        );
        eprint!(
            "\r{:>5.0}s  published {:>8}/s  confirmed {:>8}/s  received {:>8}/s   ",
            started.elapsed().as_secs_f64(),
            now.0 - last.0,
            now.1 - last.1,
            now.2 - last.2
        );
        last = now;
    }
}
