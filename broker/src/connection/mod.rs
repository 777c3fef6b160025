//! One task per client connection (plus one writer task).
//!
//! - this module: the handshake (protocol header, start/start-ok, tune/tune-ok, open), the
//!   frame loop, heartbeats, events from queues, closing in both directions;
//! - [`channel`]: per-channel state (publish assembly, confirms, transactions, unacked tags);
//! - [`methods`]: the handlers of every channel method.
//!
//! Output is gathered in one buffer per loop turn and handed to the writer task, so replies,
//! deliveries and confirms of one turn leave in one `write`. The writer returns consumers' flow
//! credit to their queues once the bytes are written: a slow socket slows its consumers' queues
//! down instead of filling memory.

pub mod channel;
pub mod methods;

use crate::amqp::constants::{ReplyCode, FRAME_MIN_SIZE, PROTOCOL_HEADER};
use crate::amqp::frame::{self, Frame, FrameError};
use crate::amqp::method::{self as m, Method};
use crate::amqp::{FieldTable, FieldValue, ShortStr};
use crate::auth;
use crate::broker::{Broker, ConnectionEntry};
use crate::delivery::{ChannelRef, ChannelView, ConnEvent, ConnId, ConnectionStats, EventSender};
use crate::queue::{QueueCommand, QueueHandle};
use crate::refusal::Refusal;
use crate::vhost::Vhost;
use crate::FastMap;
use bytes::{Bytes, BytesMut};
use channel::Channel;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// How long we wait for `close-ok` after sending `connection.close`.
const CLOSE_OK_TIMEOUT: Duration = Duration::from_secs(3);
/// Events handled per loop turn before the socket gets a turn.
const EVENTS_PER_TURN: usize = 1024;

/// The queues one (exchange, routing key) routes to.
type RouteTargets = Arc<[Arc<QueueHandle>]>;

/// Flow credit to hand back to a queue once deliveries are written.
#[derive(Debug)]
struct CreditReturn {
    queue: Arc<QueueHandle>,
    owner: ChannelRef,
    tag: ShortStr,
    count: u32,
}

#[derive(Debug)]
struct OutChunk {
    /// Written in order, with one vectored write (large bodies are their messages' own bytes).
    pieces: Vec<Bytes>,
    credits: Vec<CreditReturn>,
}

/// What the client said it understands (`capabilities` in its `client_properties`).
#[derive(Debug, Default, Clone, Copy)]
pub struct ClientCapabilities {
    pub consumer_cancel_notify: bool,
    pub connection_blocked: bool,
    pub authentication_failure_close: bool,
}

/// Why the loop stopped.
#[derive(Debug, PartialEq, Eq)]
enum Stop {
    Continue,
    /// Close handshake finished or the socket must go now.
    Now,
}

pub struct Connection {
    broker: Arc<Broker>,
    id: ConnId,
    user: String,
    vhost: Arc<Vhost>,
    frame_max: usize,
    channel_max: u16,
    capabilities: ClientCapabilities,
    channels: FastMap<u16, Channel>,
    epoch: u32,
    out: frame::Output,
    credits: Vec<CreditReturn>,
    writer: mpsc::UnboundedSender<OutChunk>,
    events: EventSender,
    /// We sent `connection.close` and wait for `close-ok` until this instant.
    closing_until: Option<Instant>,
    /// A publish arrived while the disk alarm was on: stop reading until it clears.
    paused: bool,
    /// Permission answers already computed, per access kind (indexed by `Access as usize`):
    /// resource → allowed. Looked up without allocating on every publish.
    permission_cache: [HashMap<String, bool>; 3],
    /// Routing decisions by (exchange, routing key), valid at the vhost generation stored with
    /// them: a publish to a known route takes no lock on the vhost.
    route_cache: FastMap<(ShortStr, ShortStr), (u64, RouteTargets)>,
    stats: Arc<ConnectionStats>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.id)
            .field("user", &self.user)
            .field("vhost", &self.vhost.name)
            .finish()
    }
}

/// Serves one accepted socket until it closes, in the connection's tracing span.
pub async fn serve(broker: Arc<Broker>, socket: TcpStream, peer: SocketAddr) {
    let id = broker.next_conn_id();
    let span = tracing::info_span!("connection", id = id.0, %peer);
    tracing::Instrument::instrument(serve_in_span(broker, socket, peer, id), span).await
}

async fn serve_in_span(broker: Arc<Broker>, socket: TcpStream, peer: SocketAddr, id: ConnId) {
    let _ = socket.set_nodelay(true);
    let (mut reader, mut writer) = socket.into_split();
    let mut inbuf = BytesMut::with_capacity(64 * 1024);
    let timeout = Duration::from_millis(broker.config.amqp.handshake_timeout_ms);
    let handshake = tokio::time::timeout(
        timeout,
        handshake(&broker, &mut reader, &mut writer, &mut inbuf, peer),
    )
    .await;
    let opened = match handshake {
        Ok(Ok(opened)) => opened,
        Ok(Err(reason)) => {
            tracing::info!(%reason, "connection refused during handshake");
            let _ = writer.shutdown().await;
            return;
        }
        Err(_) => {
            tracing::info!("handshake timed out");
            return;
        }
    };
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    let stats = Arc::new(ConnectionStats::default());
    let writer_task = tokio::spawn(write_loop(writer, out_rx, Arc::clone(&stats)));
    tracing::info!(user = %opened.user, vhost = %opened.vhost.name, "connection opened");
    broker.register_connection(
        id,
        ConnectionEntry {
            events: events_tx.clone(),
            user: opened.user.clone(),
            vhost: opened.vhost.name.clone(),
            peer: peer.to_string(),
            blocked_notify: opened.capabilities.connection_blocked,
            client_name: opened.client[0].clone(),
            client_product: opened.client[1].clone(),
            client_version: opened.client[2].clone(),
            connected_at_ms: crate::queue::actor::now_ms(),
            stats: Arc::clone(&stats),
        },
    );
    let mut connection = Connection {
        broker: Arc::clone(&broker),
        id,
        user: opened.user,
        vhost: opened.vhost,
        frame_max: opened.frame_max,
        channel_max: opened.channel_max,
        capabilities: opened.capabilities,
        channels: FastMap::default(),
        epoch: 0,
        out: frame::Output::default(),
        credits: Vec::new(),
        writer: out_tx,
        events: events_tx,
        closing_until: None,
        paused: false,
        permission_cache: Default::default(),
        route_cache: FastMap::default(),
        stats,
    };
    connection
        .run(reader, inbuf, events_rx, opened.heartbeat_s)
        .await;
    connection.cleanup().await;
    broker.unregister_connection(id);
    drop(connection);
    let _ = writer_task.await;
    tracing::info!("connection closed");
}

struct Opened {
    user: String,
    vhost: Arc<Vhost>,
    frame_max: usize,
    channel_max: u16,
    heartbeat_s: u16,
    capabilities: ClientCapabilities,
    /// `connection_name`, `product`, `version` from the client properties.
    client: [String; 3],
}

async fn read_frame(
    reader: &mut OwnedReadHalf,
    inbuf: &mut BytesMut,
    frame_max: usize,
) -> Result<Frame, String> {
    loop {
        match frame::parse(inbuf, frame_max) {
            Ok(Some(frame)) => return Ok(frame),
            Ok(None) => {}
            Err(e) => return Err(e.to_string()),
        }
        match reader.read_buf(inbuf).await {
            Ok(0) => return Err("client closed the socket".into()),
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

async fn send_method(
    writer: &mut OwnedWriteHalf,
    channel: u16,
    method: Method,
) -> Result<(), String> {
    let mut buf = BytesMut::new();
    frame::put_method(&mut buf, channel, &method);
    writer.write_all(&buf).await.map_err(|e| e.to_string())
}

/// Closes during the handshake with a reply code, waiting briefly for `close-ok`.
async fn refuse(
    writer: &mut OwnedWriteHalf,
    reader: &mut OwnedReadHalf,
    inbuf: &mut BytesMut,
    refusal: &Refusal,
    method: (u16, u16),
) -> String {
    let _ = send_method(
        writer,
        0,
        m::ConnectionClose {
            reply_code: refusal.code as u16,
            reply_text: ShortStr::new(&refusal.reply_text()),
            class_id: method.0,
            method_id: method.1,
        }
        .into(),
    )
    .await;
    let _ = tokio::time::timeout(
        CLOSE_OK_TIMEOUT,
        read_frame(reader, inbuf, FRAME_MIN_SIZE as usize),
    )
    .await;
    refusal.reply_text()
}

fn server_properties() -> FieldTable {
    let mut capabilities = FieldTable::new();
    for name in [
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "connection.blocked",
        "consumer_priorities",
        "authentication_failure_close",
        "per_consumer_qos",
        "direct_reply_to",
    ] {
        capabilities.insert(name, FieldValue::Bool(true));
    }
    let mut p = FieldTable::new();
    p.insert("capabilities", FieldValue::Table(capabilities));
    p.insert("cluster_name", FieldValue::string("warren"));
    p.insert(
        "copyright",
        FieldValue::string("Copyright (c) the Warren authors"),
    );
    p.insert(
        "information",
        FieldValue::string("Warren: an AMQP 0-9-1 broker that confirms only what is on disk"),
    );
    p.insert("platform", FieldValue::string("Rust"));
    p.insert("product", FieldValue::string("Warren"));
    p.insert("version", FieldValue::string(env!("CARGO_PKG_VERSION")));
    p
}

fn client_capabilities(properties: &FieldTable) -> ClientCapabilities {
    let Some(FieldValue::Table(c)) = properties.get("capabilities") else {
        return ClientCapabilities::default();
    };
    let flag = |name| c.get(name).and_then(|v| v.as_bool()).unwrap_or(false);
    ClientCapabilities {
        consumer_cancel_notify: flag("consumer_cancel_notify"),
        connection_blocked: flag("connection.blocked"),
        authentication_failure_close: flag("authentication_failure_close"),
    }
}

async fn handshake(
    broker: &Arc<Broker>,
    reader: &mut OwnedReadHalf,
    writer: &mut OwnedWriteHalf,
    inbuf: &mut BytesMut,
    peer: SocketAddr,
) -> Result<Opened, String> {
    while inbuf.len() < 8 {
        if reader.read_buf(inbuf).await.map_err(|e| e.to_string())? == 0 {
            return Err("closed before the protocol header".into());
        }
    }
    if &inbuf[..8] != PROTOCOL_HEADER {
        // The spec's answer to a header we do not speak: ours, then close.
        let _ = writer.write_all(PROTOCOL_HEADER).await;
        return Err(format!("bad protocol header {:?}", &inbuf[..8]));
    }
    let _ = inbuf.split_to(8);
    send_method(
        writer,
        0,
        m::ConnectionStart {
            version_major: 0,
            version_minor: 9,
            server_properties: server_properties(),
            mechanisms: Bytes::from_static(b"PLAIN AMQPLAIN"),
            locales: Bytes::from_static(b"en_US"),
        }
        .into(),
    )
    .await?;
    let min_frame = FRAME_MIN_SIZE as usize;
    let start_ok = match read_frame(reader, inbuf, min_frame).await? {
        Frame::Method(0, Method::ConnectionStartOk(s)) => s,
        other => return Err(format!("expected connection.start-ok, got {other:?}")),
    };
    let capabilities = client_capabilities(&start_ok.client_properties);
    let client = ["connection_name", "product", "version"].map(|key| {
        start_ok
            .client_properties
            .get(key)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string()
    });
    let mechanism = start_ok.mechanism.as_str().to_string();
    let credentials = auth::parse_credentials(&mechanism, &start_ok.response);
    let user = match credentials {
        None => {
            let refusal = Refusal::access_refused(format!(
                "Login was refused using authentication mechanism {mechanism}. For details see the broker logfile."
            ));
            return Err(refuse(writer, reader, inbuf, &refusal, (10, 11)).await);
        }
        Some((user, password)) => {
            let mut known = broker.user(&user);
            if known.is_none() {
                // A user just added on another node of the cluster may not be applied here yet.
                broker.catch_up().await;
                known = broker.user(&user);
            }
            let valid = known.as_ref().is_some_and(|u| u.check_password(&password));
            let loopback_only = broker.config.default_user.loopback_users.contains(&user);
            if !valid {
                tracing::warn!(%user, %mechanism, "authentication failed");
                let refusal = Refusal::access_refused(format!(
                    "Login was refused using authentication mechanism {mechanism}. For details see the broker logfile."
                ));
                if capabilities.authentication_failure_close {
                    return Err(refuse(writer, reader, inbuf, &refusal, (10, 11)).await);
                }
                return Err(refusal.reply_text());
            }
            if loopback_only && !peer.ip().is_loopback() {
                let refusal = Refusal::access_refused(format!(
                    "User '{user}' can only connect via localhost"
                ));
                return Err(refuse(writer, reader, inbuf, &refusal, (10, 11)).await);
            }
            user
        }
    };
    let config = &broker.config.amqp;
    send_method(
        writer,
        0,
        m::ConnectionTune {
            channel_max: config.channel_max,
            frame_max: config.frame_max_bytes,
            heartbeat: config.heartbeat_s,
        }
        .into(),
    )
    .await?;
    let tune_ok = match read_frame(reader, inbuf, min_frame).await? {
        Frame::Method(0, Method::ConnectionTuneOk(t)) => t,
        other => return Err(format!("expected connection.tune-ok, got {other:?}")),
    };
    let frame_max = match tune_ok.frame_max {
        0 => config.frame_max_bytes,
        n if n > config.frame_max_bytes || n < FRAME_MIN_SIZE => {
            let refusal = Refusal::new(
                ReplyCode::NotAllowed,
                format!(
                    "frame_max={n} outside the range {FRAME_MIN_SIZE}..={}",
                    config.frame_max_bytes
                ),
            );
            return Err(refuse(writer, reader, inbuf, &refusal, (10, 31)).await);
        }
        n => n,
    } as usize;
    let channel_max = match tune_ok.channel_max {
        0 => config.channel_max,
        n => n.min(config.channel_max),
    };
    let open = match read_frame(reader, inbuf, frame_max).await? {
        Frame::Method(0, Method::ConnectionOpen(o)) => o,
        other => return Err(format!("expected connection.open, got {other:?}")),
    };
    let vhost_name = open.virtual_host.as_str();
    if broker.vhost(vhost_name).is_none() {
        // A vhost just added on another node of the cluster may not be applied here yet.
        broker.catch_up().await;
    }
    let vhost = match broker.vhost(vhost_name) {
        Some(v) if broker.has_vhost_access(&user, vhost_name) => v,
        Some(_) => {
            let refusal = Refusal::new(
                ReplyCode::NotAllowed,
                format!("access to vhost '{vhost_name}' refused for user '{user}'"),
            );
            return Err(refuse(writer, reader, inbuf, &refusal, (10, 40)).await);
        }
        None => {
            let refusal = Refusal::new(
                ReplyCode::NotAllowed,
                format!("vhost {vhost_name} not found"),
            );
            return Err(refuse(writer, reader, inbuf, &refusal, (10, 40)).await);
        }
    };
    send_method(writer, 0, m::ConnectionOpenOk::default().into()).await?;
    Ok(Opened {
        user,
        vhost,
        frame_max,
        channel_max,
        heartbeat_s: tune_ok.heartbeat,
        capabilities,
        client,
    })
}

async fn write_loop(
    mut writer: OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<OutChunk>,
    stats: Arc<ConnectionStats>,
) {
    let mut batch: Vec<OutChunk> = Vec::new();
    let size = |chunk: &OutChunk| chunk.pieces.iter().map(Bytes::len).sum::<usize>();
    while let Some(first) = rx.recv().await {
        let mut bytes = size(&first);
        batch.push(first);
        while bytes < 1 << 20 {
            match rx.try_recv() {
                Ok(chunk) => {
                    bytes += size(&chunk);
                    batch.push(chunk);
                }
                Err(_) => break,
            }
        }
        let pieces: Vec<&Bytes> = batch.iter().flat_map(|c| &c.pieces).collect();
        if frame::write_pieces(&mut writer, &pieces).await.is_err() {
            return;
        }
        ConnectionStats::add(&stats.sent_bytes, bytes as u64);
        for chunk in batch.drain(..) {
            for credit in chunk.credits {
                let command = QueueCommand::Credit {
                    owner: credit.owner,
                    tag: credit.tag,
                    count: credit.count,
                };
                if let Err(command) = credit.queue.try_send(command) {
                    let queue = credit.queue;
                    tokio::spawn(async move {
                        let _ = queue.send(command).await;
                    });
                }
            }
        }
    }
    let _ = writer.shutdown().await;
}

impl Connection {
    async fn run(
        &mut self,
        mut reader: OwnedReadHalf,
        mut inbuf: BytesMut,
        mut events: mpsc::UnboundedReceiver<ConnEvent>,
        heartbeat_s: u16,
    ) {
        let heartbeat = Duration::from_secs(heartbeat_s.into());
        let mut last_received = Instant::now();
        let mut last_sent = Instant::now();
        let tick_every = if heartbeat_s > 0 {
            heartbeat / 2
        } else {
            Duration::from_secs(3600)
        };
        let mut ticker = tokio::time::interval(tick_every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Frames pipelined behind connection.open arrived with it.
        if !inbuf.is_empty() && self.process_input(&mut inbuf).await == Stop::Now {
            self.flush();
            return;
        }
        self.flush();
        loop {
            let close_deadline = self.closing_until;
            let stop = tokio::select! {
                read = reader.read_buf(&mut inbuf), if !self.paused => match read {
                    Ok(0) | Err(_) => Stop::Now,
                    Ok(n) => {
                        ConnectionStats::add(&self.stats.received_bytes, n as u64);
                        last_received = Instant::now();
                        self.process_input(&mut inbuf).await
                    }
                },
                event = events.recv() => match event {
                    Some(event) => {
                        let mut stop = self.on_event(event).await;
                        let mut n = 1;
                        while stop == Stop::Continue && n < EVENTS_PER_TURN {
                            match events.try_recv() {
                                Ok(event) => stop = self.on_event(event).await,
                                Err(_) => break,
                            }
                            n += 1;
                        }
                        stop
                    }
                    None => Stop::Now,
                },
                _ = ticker.tick(), if heartbeat_s > 0 => {
                    // A connection we stopped reading (disk alarm) cannot be blamed for silence.
                    if self.paused {
                        last_received = Instant::now();
                    }
                    if last_received.elapsed() > heartbeat * 2 {
                        tracing::warn!(timeout_s = heartbeat_s, "missed heartbeats from client; closing");
                        Stop::Now
                    } else {
                        if last_sent.elapsed() >= tick_every {
                            frame::put_heartbeat(&mut self.out);
                        }
                        Stop::Continue
                    }
                },
                _ = tokio::time::sleep_until(close_deadline.unwrap_or_else(Instant::now)), if close_deadline.is_some() => {
                    Stop::Now
                },
            };
            if !self.out.is_empty() || !self.credits.is_empty() {
                last_sent = Instant::now();
            }
            self.stats.channels.store(
                self.channels.len() as u64,
                std::sync::atomic::Ordering::Relaxed,
            );
            self.flush();
            if stop == Stop::Now {
                return;
            }
        }
    }

    /// Sends confirms and everything buffered to the writer.
    fn flush(&mut self) {
        let mut acks = Vec::new();
        for (id, channel) in self.channels.iter_mut() {
            if channel.closing {
                continue;
            }
            acks.clear();
            channel.confirms.drain(&mut acks);
            for (delivery_tag, multiple, ack) in acks.drain(..) {
                let method: Method = if ack {
                    m::BasicAck {
                        delivery_tag,
                        multiple,
                    }
                    .into()
                } else {
                    m::BasicNack {
                        delivery_tag,
                        multiple,
                        requeue: false,
                    }
                    .into()
                };
                frame::put_method(&mut self.out, *id, &method);
            }
        }
        if self.out.is_empty() && self.credits.is_empty() {
            return;
        }
        let chunk = OutChunk {
            pieces: self.out.take(),
            credits: std::mem::take(&mut self.credits),
        };
        let _ = self.writer.send(chunk);
    }

    async fn process_input(&mut self, inbuf: &mut BytesMut) -> Stop {
        loop {
            match frame::parse(inbuf, self.frame_max) {
                Ok(Some(frame)) => {
                    let stop = self.on_frame(frame).await;
                    if stop == Stop::Now {
                        return stop;
                    }
                    if self.paused {
                        return Stop::Continue;
                    }
                }
                Ok(None) => return Stop::Continue,
                Err(error) => return self.frame_error(error),
            }
        }
    }

    fn frame_error(&mut self, error: FrameError) -> Stop {
        tracing::warn!(%error, "malformed frame");
        let (class, method) = match &error {
            FrameError::Decode { .. } => (0, 0),
            _ => (0, 0),
        };
        self.send_connection_close(
            &Refusal::new(error.reply_code(), error.to_string()),
            (class, method),
        );
        // The stream is out of step: nothing more can be read from it.
        Stop::Now
    }

    fn send_connection_close(&mut self, refusal: &Refusal, method: (u16, u16)) {
        if self.closing_until.is_some() {
            return;
        }
        tracing::info!(code = refusal.code as u16, text = %refusal.text, "closing connection");
        frame::put_method(
            &mut self.out,
            0,
            &m::ConnectionClose {
                reply_code: refusal.code as u16,
                reply_text: ShortStr::new(&refusal.reply_text()),
                class_id: method.0,
                method_id: method.1,
            }
            .into(),
        );
        self.closing_until = Some(Instant::now() + CLOSE_OK_TIMEOUT);
    }

    fn send_channel_close(&mut self, channel: u16, refusal: &Refusal, method: (u16, u16)) {
        tracing::info!(channel, code = refusal.code as u16, text = %refusal.text, "closing channel");
        frame::put_method(
            &mut self.out,
            channel,
            &m::ChannelClose {
                reply_code: refusal.code as u16,
                reply_text: ShortStr::new(&refusal.reply_text()),
                class_id: method.0,
                method_id: method.1,
            }
            .into(),
        );
    }

    /// Answers a failed method: a channel close, or a connection close for connection-level
    /// codes (as RabbitMQ decides).
    async fn fail(&mut self, channel: u16, refusal: Refusal, method: (u16, u16)) -> Stop {
        if refusal.code.is_connection_level() || channel == 0 {
            self.send_connection_close(&refusal, method);
            return Stop::Continue;
        }
        self.send_channel_close(channel, &refusal, method);
        if let Some(mut ch) = self.channels.remove(&channel) {
            self.release_channel(&mut ch).await;
            ch.closing = true;
            self.channels.insert(channel, ch);
        }
        Stop::Continue
    }

    async fn on_frame(&mut self, frame: Frame) -> Stop {
        if self.closing_until.is_some() {
            // Closing: only the close handshake matters now.
            return match frame {
                Frame::Method(0, Method::ConnectionCloseOk(_)) => Stop::Now,
                Frame::Method(0, Method::ConnectionClose(_)) => {
                    frame::put_method(&mut self.out, 0, &m::ConnectionCloseOk {}.into());
                    Stop::Now
                }
                _ => Stop::Continue,
            };
        }
        let channel = frame.channel();
        if channel == 0 {
            return match frame {
                Frame::Heartbeat(_) => Stop::Continue,
                Frame::Method(0, method) => self.on_connection_method(method),
                _ => {
                    let refusal =
                        Refusal::new(ReplyCode::CommandInvalid, "content frame on channel 0");
                    self.fail(0, refusal, (0, 0)).await
                }
            };
        }
        if let Frame::Heartbeat(_) = frame {
            let refusal = Refusal::new(
                ReplyCode::FrameError,
                format!("heartbeat frame on channel {channel}"),
            );
            return self.fail(0, refusal, (0, 0)).await;
        }
        if channel > self.channel_max {
            let refusal = Refusal::new(
                ReplyCode::ChannelError,
                format!("channel {channel} exceeds channel_max {}", self.channel_max),
            );
            return self.fail(0, refusal, (20, 10)).await;
        }
        let Some(ch) = self.channels.get(&channel) else {
            return match frame {
                Frame::Method(_, Method::ChannelOpen(_)) => {
                    self.epoch = self.epoch.wrapping_add(1);
                    let owner = ChannelRef {
                        conn: self.id,
                        channel,
                        epoch: self.epoch,
                    };
                    self.channels.insert(channel, Channel::new(owner));
                    frame::put_method(&mut self.out, channel, &m::ChannelOpenOk::default().into());
                    Stop::Continue
                }
                _ => {
                    let refusal = Refusal::new(
                        ReplyCode::ChannelError,
                        format!("expected 'channel.open' on channel {channel}"),
                    );
                    self.fail(0, refusal, (0, 0)).await
                }
            };
        };
        if ch.closing {
            match frame {
                Frame::Method(_, Method::ChannelCloseOk(_)) => {
                    self.channels.remove(&channel);
                }
                Frame::Method(_, Method::ChannelClose(_)) => {
                    frame::put_method(&mut self.out, channel, &m::ChannelCloseOk {}.into());
                    self.channels.remove(&channel);
                }
                _ => {}
            }
            return Stop::Continue;
        }
        let method_id = match &frame {
            Frame::Method(_, method) => method.id(),
            _ => (60, 40),
        };
        match self.on_channel_frame(channel, frame).await {
            Ok(()) => Stop::Continue,
            Err(refusal) => self.fail(channel, refusal, method_id).await,
        }
    }

    fn on_connection_method(&mut self, method: Method) -> Stop {
        match method {
            Method::ConnectionClose(close) => {
                tracing::info!(code = close.reply_code, text = %close.reply_text, "client closed the connection");
                frame::put_method(&mut self.out, 0, &m::ConnectionCloseOk {}.into());
                Stop::Now
            }
            Method::ConnectionUpdateSecret(update) => {
                let password = String::from_utf8_lossy(&update.new_secret).into_owned();
                let valid = self
                    .broker
                    .user(&self.user)
                    .is_some_and(|u| u.check_password(&password));
                if valid {
                    frame::put_method(&mut self.out, 0, &m::ConnectionUpdateSecretOk {}.into());
                } else {
                    self.send_connection_close(
                        &Refusal::access_refused("new secret was refused"),
                        (10, 70),
                    );
                }
                Stop::Continue
            }
            // A client may tell us it is blocked or unblocked; nothing to do.
            Method::ConnectionBlocked(_) | Method::ConnectionUnblocked(_) => Stop::Continue,
            other => {
                let refusal = Refusal::new(
                    ReplyCode::CommandInvalid,
                    format!("unexpected {} on channel 0", other.name()),
                );
                self.send_connection_close(&refusal, other.id());
                Stop::Continue
            }
        }
    }

    async fn on_event(&mut self, event: ConnEvent) -> Stop {
        match event {
            ConnEvent::Deliver(delivery) => self.deliver(delivery),
            ConnEvent::DirectReply { owner, message } => self.deliver_direct_reply(owner, message),
            ConnEvent::Confirm { owner, token, ok } => self.on_confirm(owner, token, ok),
            ConnEvent::ConsumerCancelled {
                owner,
                consumer_tag,
            } => {
                if let Some(ch) = self.channels.get_mut(&owner.channel) {
                    if ch.owner == owner
                        && !ch.closing
                        && ch.consumers.remove(&consumer_tag).is_some()
                    {
                        frame::put_method(
                            &mut self.out,
                            owner.channel,
                            &m::BasicCancel {
                                consumer_tag,
                                nowait: true,
                            }
                            .into(),
                        );
                    }
                }
            }
            ConnEvent::ForceClose { code, text } => {
                let code = match code {
                    320 => ReplyCode::ConnectionForced,
                    _ => ReplyCode::InternalError,
                };
                self.send_connection_close(&Refusal::new(code, text), (0, 0));
            }
            ConnEvent::Blocked(reason) => {
                if self.capabilities.connection_blocked {
                    let method: Method = match &reason {
                        Some(r) => m::ConnectionBlocked {
                            reason: ShortStr::new(r),
                        }
                        .into(),
                        None => m::ConnectionUnblocked {}.into(),
                    };
                    frame::put_method(&mut self.out, 0, &method);
                }
                if reason.is_none() {
                    self.paused = false;
                }
            }
            ConnEvent::Inspect(reply) => {
                let mut views: Vec<ChannelView> = self
                    .channels
                    .iter()
                    .map(|(number, ch)| ch.view(*number))
                    .collect();
                views.sort_by_key(|v| v.number);
                let _ = reply.send(views);
            }
        }
        Stop::Continue
    }

    /// The connection is over: every channel's consumers and unacked deliveries go back to their
    /// queues, and exclusive queues are deleted.
    async fn cleanup(&mut self) {
        let channels: Vec<u16> = self.channels.keys().copied().collect();
        for id in channels {
            if let Some(mut ch) = self.channels.remove(&id) {
                self.release_channel(&mut ch).await;
            }
        }
        self.broker
            .connection_closed(self.id, &self.vhost.name)
            .await;
    }

    /// Tells every queue the channel touched that it is gone (consumers cancelled, unacked
    /// requeued in their original position).
    async fn release_channel(&mut self, ch: &mut Channel) {
        for queue in ch.queues_involved() {
            let _ = queue
                .send(QueueCommand::ChannelClosed { owner: ch.owner })
                .await;
        }
        ch.consumers.clear();
        ch.unacked.clear();
        ch.publish = channel::PublishState::Idle;
    }
}
