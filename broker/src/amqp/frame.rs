//! Frames: `type:u8 channel:u16 size:u32 payload frame-end(0xCE)`.

use super::constants::{
    FRAME_BODY, FRAME_END, FRAME_HEADER, FRAME_HEARTBEAT, FRAME_METHOD, FRAME_OVERHEAD,
};
use super::method::Method;
use super::properties::ContentHeader;
use super::wire::CodecError;
use bytes::{Buf, BufMut, Bytes, BytesMut};

#[derive(Clone, Debug, PartialEq)]
pub enum Frame {
    Method(u16, Method),
    Header(u16, ContentHeader),
    Body(u16, Bytes),
    Heartbeat(u16),
}

impl Frame {
    pub fn channel(&self) -> u16 {
        match self {
            Frame::Method(channel, _)
            | Frame::Header(channel, _)
            | Frame::Body(channel, _)
            | Frame::Heartbeat(channel) => *channel,
        }
    }
}

/// Why a frame could not be read. Every case is a connection error (RabbitMQ closes the
/// connection; the reply code is given by [`FrameError::reply_code`]).
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame size {size} exceeds the negotiated frame_max {frame_max}")]
    TooLarge { size: usize, frame_max: usize },
    #[error("frame end octet is {found:#04x}, expected 0xce")]
    BadEnd { found: u8 },
    #[error("unknown frame type {kind}")]
    UnknownType { kind: u8 },
    #[error("cannot decode {what}: {source}")]
    Decode {
        what: &'static str,
        channel: u16,
        #[source]
        source: CodecError,
    },
}

impl FrameError {
    /// The reply code RabbitMQ sends for this failure.
    pub fn reply_code(&self) -> super::constants::ReplyCode {
        use super::constants::ReplyCode;
        match self {
            FrameError::Decode {
                source: CodecError::UnknownMethod { .. },
                ..
            } => ReplyCode::CommandInvalid,
            FrameError::Decode { .. } => ReplyCode::SyntaxError,
            _ => ReplyCode::FrameError,
        }
    }
}

/// Parses one frame off the front of `buf`, or `Ok(None)` if it holds only part of one.
/// `frame_max` bounds the whole frame, header and end octet included (as negotiated in tune).
pub fn parse(buf: &mut BytesMut, frame_max: usize) -> Result<Option<Frame>, FrameError> {
    if buf.len() < 7 {
        return Ok(None);
    }
    let kind = buf[0];
    let channel = u16::from_be_bytes([buf[1], buf[2]]);
    let size = u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]) as usize;
    if size + FRAME_OVERHEAD > frame_max {
        return Err(FrameError::TooLarge {
            size: size + FRAME_OVERHEAD,
            frame_max,
        });
    }
    if buf.len() < size + FRAME_OVERHEAD {
        buf.reserve(size + FRAME_OVERHEAD - buf.len());
        return Ok(None);
    }
    let end = buf[7 + size];
    if end != FRAME_END {
        return Err(FrameError::BadEnd { found: end });
    }
    buf.advance(7);
    let payload = buf.split_to(size).freeze();
    buf.advance(1);
    let decode_error = |what, source| FrameError::Decode {
        what,
        channel,
        source,
    };
    let frame = match kind {
        FRAME_METHOD => Frame::Method(
            channel,
            Method::decode(payload).map_err(|e| decode_error("method frame", e))?,
        ),
        FRAME_HEADER => Frame::Header(
            channel,
            ContentHeader::decode(payload).map_err(|e| decode_error("content header", e))?,
        ),
        FRAME_BODY => Frame::Body(channel, payload),
        FRAME_HEARTBEAT => Frame::Heartbeat(channel),
        kind => return Err(FrameError::UnknownType { kind }),
    };
    Ok(Some(frame))
}

/// Appends a frame with the given type and channel whose payload `fill` writes.
fn put_frame(buf: &mut BytesMut, kind: u8, channel: u16, fill: impl FnOnce(&mut BytesMut)) {
    buf.put_u8(kind);
    buf.put_u16(channel);
    let at = buf.len();
    buf.put_u32(0);
    fill(buf);
    let size = (buf.len() - at - 4) as u32;
    buf[at..at + 4].copy_from_slice(&size.to_be_bytes());
    buf.put_u8(FRAME_END);
}

pub fn put_method(buf: &mut BytesMut, channel: u16, method: &Method) {
    put_frame(buf, FRAME_METHOD, channel, |b| method.encode(b));
}

pub fn put_header(buf: &mut BytesMut, channel: u16, header: &ContentHeader) {
    put_frame(buf, FRAME_HEADER, channel, |b| header.encode(b));
}

pub fn put_heartbeat(buf: &mut BytesMut) {
    put_frame(buf, FRAME_HEARTBEAT, 0, |_| {});
}

/// Appends `body` as body frames no larger than `frame_max`.
pub fn put_body(buf: &mut BytesMut, channel: u16, body: &[u8], frame_max: usize) {
    let chunk_max = frame_max - FRAME_OVERHEAD;
    for chunk in body.chunks(chunk_max.max(1)) {
        put_frame(buf, FRAME_BODY, channel, |b| b.put_slice(chunk));
    }
}

/// Appends a method with content: the method, the header and the body frames.
pub fn put_content(
    buf: &mut BytesMut,
    channel: u16,
    method: &Method,
    properties: &Bytes,
    body: &[u8],
    frame_max: usize,
) {
    put_method(buf, channel, method);
    put_header(
        buf,
        channel,
        &ContentHeader {
            body_size: body.len() as u64,
            properties: properties.clone(),
        },
    );
    put_body(buf, channel, body, frame_max);
}
