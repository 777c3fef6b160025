//! Bad input on the wire, spoken with our own codec over a plain socket: each case must get the
//! reply code RabbitMQ sends (DESIGN §1 guarantee 6), and the broker must stay up.

use bytes::{BufMut, BytesMut};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use warren_broker::amqp::frame::{self, Frame};
use warren_broker::amqp::method::{self as m, Method};
use warren_broker::amqp::{FieldTable, FieldValue};
use warren_tests::Warren;

struct Raw {
    socket: TcpStream,
    inbuf: BytesMut,
}

impl Raw {
    fn connect(warren: &Warren) -> Raw {
        let socket = TcpStream::connect(warren.addr).expect("connect");
        socket
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        Raw {
            socket,
            inbuf: BytesMut::new(),
        }
    }

    fn send_raw(&mut self, bytes: &[u8]) {
        self.socket.write_all(bytes).expect("write");
    }

    fn send(&mut self, channel: u16, method: impl Into<Method>) {
        let mut buf = BytesMut::new();
        frame::put_method(&mut buf, channel, &method.into());
        self.send_raw(&buf);
    }

    /// The next frame, or `None` when the server closed the socket.
    fn read(&mut self) -> Option<Frame> {
        loop {
            if let Some(frame) =
                frame::parse(&mut self.inbuf, 1 << 20).expect("server frames parse")
            {
                return Some(frame);
            }
            let mut chunk = [0u8; 4096];
            match self.socket.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.inbuf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    /// Opens a connection with PLAIN (or the given mechanism and response) and `heartbeat`.
    fn open(warren: &Warren, heartbeat: u16) -> Raw {
        Raw::open_with(warren, "PLAIN", b"\0guest\0guest", heartbeat)
    }

    /// Connects, reads `connection.start` and answers it with `mechanism` and `response`,
    /// advertising the client capability `capability`.
    fn start(
        warren: &Warren,
        mechanism: &str,
        response: &[u8],
        capability: &str,
    ) -> (Raw, m::ConnectionStart) {
        let mut raw = Raw::connect(warren);
        raw.send_raw(b"AMQP\x00\x00\x09\x01");
        let Some(Frame::Method(0, Method::ConnectionStart(start))) = raw.read() else {
            panic!("no connection.start")
        };
        let mut caps = FieldTable::new();
        caps.insert(capability, FieldValue::Bool(true));
        let mut props = FieldTable::new();
        props.insert("capabilities", FieldValue::Table(caps));
        raw.send(
            0,
            m::ConnectionStartOk {
                client_properties: props,
                mechanism: mechanism.into(),
                response: bytes::Bytes::copy_from_slice(response),
                locale: "en_US".into(),
            },
        );
        (raw, start)
    }

    fn open_with(warren: &Warren, mechanism: &str, response: &[u8], heartbeat: u16) -> Raw {
        let (mut raw, start) =
            Raw::start(warren, mechanism, response, "authentication_failure_close");
        let FieldValue::Table(caps) = start
            .server_properties
            .get("capabilities")
            .expect("capabilities")
            .clone()
        else {
            panic!("capabilities is a table")
        };
        for cap in [
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
            assert_eq!(
                caps.get(cap),
                Some(&FieldValue::Bool(true)),
                "capability {cap}"
            );
        }
        match raw.read() {
            Some(Frame::Method(0, Method::ConnectionTune(tune))) => {
                assert_eq!(tune.frame_max, 131_072);
                assert_eq!(tune.channel_max, 2047);
                assert_eq!(tune.heartbeat, 60);
            }
            other => panic!("expected tune, got {other:?}"),
        }
        raw.send(
            0,
            m::ConnectionTuneOk {
                channel_max: 2047,
                frame_max: 131_072,
                heartbeat,
            },
        );
        raw.send(
            0,
            m::ConnectionOpen {
                virtual_host: "/".into(),
                ..Default::default()
            },
        );
        match raw.read() {
            Some(Frame::Method(0, Method::ConnectionOpenOk(_))) => raw,
            other => panic!("expected open-ok, got {other:?}"),
        }
    }

    fn open_channel(&mut self, channel: u16) {
        self.send(channel, m::ChannelOpen::default());
        match self.read() {
            Some(Frame::Method(c, Method::ChannelOpenOk(_))) if c == channel => {}
            other => panic!("expected channel.open-ok, got {other:?}"),
        }
    }

    /// Reads until a connection or channel close; returns (channel, reply code).
    fn expect_close(&mut self) -> (u16, u16) {
        loop {
            match self.read() {
                Some(Frame::Method(0, Method::ConnectionClose(c))) => {
                    self.send(0, m::ConnectionCloseOk {});
                    return (0, c.reply_code);
                }
                Some(Frame::Method(ch, Method::ChannelClose(c))) => return (ch, c.reply_code),
                Some(_) => continue,
                None => panic!("socket closed without a close method"),
            }
        }
    }
}

fn broker_still_serves(warren: &Warren) {
    let mut raw = Raw::open(warren, 0);
    raw.open_channel(1);
}

#[test]
fn malformed_and_out_of_order_frames_get_rabbitmq_codes() {
    let warren = Warren::start();

    // A frame whose end octet is wrong: 501 FRAME_ERROR.
    let mut raw = Raw::open(&warren, 0);
    let mut buf = BytesMut::new();
    frame::put_method(
        &mut buf,
        0,
        &m::ConnectionBlocked { reason: "x".into() }.into(),
    );
    let last = buf.len() - 1;
    buf[last] = 0;
    raw.send_raw(&buf);
    assert_eq!(raw.expect_close(), (0, 501));

    // A frame above frame_max: 501.
    let mut raw = Raw::open(&warren, 0);
    raw.open_channel(1);
    let mut buf = BytesMut::new();
    buf.put_u8(3);
    buf.put_u16(1);
    buf.put_u32(200_000);
    raw.send_raw(&buf);
    assert_eq!(raw.expect_close(), (0, 501));

    // An unknown class/method: 503 COMMAND_INVALID.
    let mut raw = Raw::open(&warren, 0);
    raw.send_raw(b"\x01\x00\x00\x00\x00\x00\x04\x00\x63\x00\x01\xce");
    assert_eq!(raw.expect_close(), (0, 503));

    // Arguments that do not decode (a field table with an unknown type): 502 SYNTAX_ERROR.
    let mut raw = Raw::open(&warren, 0);
    raw.open_channel(1);
    let mut payload = BytesMut::new();
    payload.put_slice(b"\x00\x32\x00\x0a\x00\x00\x01q\x00");
    payload.put_slice(b"\x00\x00\x00\x03\x01kZ");
    let mut buf = BytesMut::new();
    buf.put_u8(1);
    buf.put_u16(1);
    buf.put_u32(payload.len() as u32);
    buf.put_slice(&payload);
    buf.put_u8(0xce);
    raw.send_raw(&buf);
    assert_eq!(raw.expect_close(), (0, 502));

    // A method on a channel that was never opened: 504 CHANNEL_ERROR.
    let mut raw = Raw::open(&warren, 0);
    raw.send(5, m::QueueDeclare::default());
    assert_eq!(raw.expect_close(), (0, 504));

    // channel.open twice: 504.
    let mut raw = Raw::open(&warren, 0);
    raw.open_channel(1);
    raw.send(1, m::ChannelOpen::default());
    assert_eq!(raw.expect_close(), (0, 504));

    // A content header without a publish: 505 UNEXPECTED_FRAME.
    let mut raw = Raw::open(&warren, 0);
    raw.open_channel(1);
    let mut buf = BytesMut::new();
    frame::put_header(
        &mut buf,
        1,
        &warren_broker::amqp::properties::ContentHeader {
            body_size: 1,
            properties: warren_broker::amqp::BasicProperties::default().encode(),
        },
    );
    raw.send_raw(&buf);
    assert_eq!(raw.expect_close(), (0, 505));

    // A method where a body was expected: 505.
    let mut raw = Raw::open(&warren, 0);
    raw.open_channel(1);
    raw.send(
        1,
        m::BasicPublish {
            routing_key: "q".into(),
            ..Default::default()
        },
    );
    raw.send(1, m::QueueDeclare::default());
    assert_eq!(raw.expect_close(), (0, 505));

    // A heartbeat on a channel other than 0: 501.
    let mut raw = Raw::open(&warren, 0);
    raw.send_raw(b"\x08\x00\x01\x00\x00\x00\x00\xce");
    assert_eq!(raw.expect_close(), (0, 501));

    // basic.qos with prefetch_size: 540, connection-level as in RabbitMQ.
    let mut raw = Raw::open(&warren, 0);
    raw.open_channel(1);
    raw.send(
        1,
        m::BasicQos {
            prefetch_size: 10,
            ..Default::default()
        },
    );
    assert_eq!(raw.expect_close(), (0, 540));

    broker_still_serves(&warren);
}

#[test]
fn amqplain_authenticates_and_wrong_credentials_get_403() {
    let warren = Warren::start();
    let mut table = FieldTable::new();
    table.insert("LOGIN", FieldValue::string("guest"));
    table.insert("PASSWORD", FieldValue::string("guest"));
    let encoded = table.encode();
    let mut raw = Raw::open_with(&warren, "AMQPLAIN", &encoded[4..], 0);
    raw.open_channel(1);

    let (mut raw, _) = Raw::start(
        &warren,
        "PLAIN",
        b"\0guest\0nope",
        "authentication_failure_close",
    );
    assert_eq!(raw.expect_close(), (0, 403));
}

#[test]
fn missed_client_heartbeats_close_the_socket() {
    let warren = Warren::start();
    let mut raw = Raw::open(&warren, 1);
    // The server counts silence from the last frame it read: channel.open, sent after this.
    let started = Instant::now();
    raw.open_channel(1);
    let mut heartbeats = 0;
    // We send nothing: the server sends heartbeats, then gives up on us.
    loop {
        match raw.read() {
            Some(Frame::Heartbeat(0)) => heartbeats += 1,
            Some(other) => panic!("unexpected {other:?}"),
            None => break,
        }
    }
    let elapsed = started.elapsed();
    assert!(heartbeats >= 1, "the server sent heartbeats");
    assert!(
        elapsed >= Duration::from_secs(2) && elapsed < Duration::from_secs(8),
        "closed after {elapsed:?} (2 missed intervals of 1 s)"
    );
    broker_still_serves(&warren);
}

#[test]
fn disk_alarm_blocks_publishers() {
    // A free-space minimum no disk meets: the alarm is on from the start.
    let warren = Warren::start_with(&["--disk-free-bytes-min", "18446744073709551615"]);
    let (mut raw, _) = Raw::start(&warren, "PLAIN", b"\0guest\0guest", "connection.blocked");
    assert!(matches!(
        raw.read(),
        Some(Frame::Method(0, Method::ConnectionTune(_)))
    ));
    raw.send(
        0,
        m::ConnectionTuneOk {
            channel_max: 0,
            frame_max: 131_072,
            heartbeat: 0,
        },
    );
    raw.send(
        0,
        m::ConnectionOpen {
            virtual_host: "/".into(),
            ..Default::default()
        },
    );
    let mut blocked = false;
    let mut opened = false;
    while !(blocked && opened) {
        match raw.read() {
            Some(Frame::Method(0, Method::ConnectionOpenOk(_))) => opened = true,
            Some(Frame::Method(0, Method::ConnectionBlocked(b))) => {
                assert_eq!(b.reason.as_str(), "low on disk");
                blocked = true;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // A publish is accepted, then the connection is no longer read: no confirm comes back.
    raw.open_channel(1);
    raw.send(1, m::ConfirmSelect::default());
    assert!(matches!(
        raw.read(),
        Some(Frame::Method(1, Method::ConfirmSelectOk(_)))
    ));
    let mut buf = BytesMut::new();
    frame::put_content(
        &mut buf,
        1,
        &m::BasicPublish {
            routing_key: "nowhere".into(),
            ..Default::default()
        }
        .into(),
        &warren_broker::amqp::BasicProperties::default().encode(),
        b"x",
        131_072,
    );
    raw.send_raw(&buf);
    raw.send(1, m::ConfirmSelect::default());
    raw.socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let mut chunk = [0u8; 64];
    match raw.socket.read(&mut chunk) {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) => {}
        other => panic!("a blocked connection answered: {other:?}"),
    }
}

#[test]
fn frames_pipelined_behind_connection_open_are_served() {
    let warren = Warren::start();
    let (mut raw, _) = Raw::start(&warren, "PLAIN", b"\0guest\0guest", "publisher_confirms");
    assert!(matches!(
        raw.read(),
        Some(Frame::Method(0, Method::ConnectionTune(_)))
    ));
    // tune-ok, open and channel.open in one write, without waiting for open-ok.
    let mut buf = BytesMut::new();
    frame::put_method(
        &mut buf,
        0,
        &m::ConnectionTuneOk {
            channel_max: 0,
            frame_max: 131_072,
            heartbeat: 0,
        }
        .into(),
    );
    frame::put_method(
        &mut buf,
        0,
        &m::ConnectionOpen {
            virtual_host: "/".into(),
            ..Default::default()
        }
        .into(),
    );
    frame::put_method(&mut buf, 1, &m::ChannelOpen::default().into());
    raw.send_raw(&buf);
    assert!(matches!(
        raw.read(),
        Some(Frame::Method(0, Method::ConnectionOpenOk(_)))
    ));
    assert!(matches!(
        raw.read(),
        Some(Frame::Method(1, Method::ChannelOpenOk(_)))
    ));
}
